//! A node's disk in the simulation: the Raft log, vote and snapshot in memory, with the crash
//! model of the real one (`server::raft::log_store`). An append is readable at once and durable
//! only after the next fsync, which a flusher task completes after the disk's latency; the
//! vote, truncations and purges are durable when they return; the commit index is never logged
//! (the real store writes it without the WAL), so a crash loses it. A crash drops everything
//! not yet durable: the node restarts from what was.
//!
//! Faults: a slow disk (every fsync takes `slow_fsync_ms` more) and a failed fsync (the next
//! one reports an I/O error, as EIO would; openraft then stops the node).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use holdfast_server::raft::snapshot_file::StoredSnapshot;
use holdfast_server::raft::storage::SnapshotStore;
use holdfast_server::raft::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use tokio::sync::mpsc;

/// What one fsync takes on a healthy simulated disk.
pub const FSYNC_MS: u64 = 1;

/// One node's disk, shared by its incarnations (a restart opens it again).
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<Platters>>);

#[derive(Default)]
struct Platters {
    /// Durable: survives a crash.
    synced: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    purged: Option<LogId>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// The log as the running incarnation reads it: `synced` plus appends not yet synced.
    log: BTreeMap<u64, Entry>,
    /// Indexes appended since the last fsync.
    unsynced: BTreeSet<u64>,
    /// Lost on a crash (never logged).
    committed: Option<LogId>,
    /// Bumped by every start: a handle of an earlier incarnation does nothing.
    incarnation: u64,
    slow_fsync_ms: u64,
    fail_next_fsync: bool,
    fsyncs: u64,
    lost_on_crash: u64,
}

impl Disk {
    fn platters(&self) -> MutexGuard<'_, Platters> {
        self.0.lock().expect("disk lock")
    }

    /// Opens the disk for a new incarnation of its node, as after a power loss: what was not
    /// durable is gone. Spawns the flusher on the calling (node's) runtime.
    pub fn open(&self) -> SimLog {
        let mut platters = self.platters();
        platters.incarnation += 1;
        let lost = platters.unsynced.len() as u64;
        platters.lost_on_crash += lost;
        platters.log = platters.synced.clone();
        platters.unsynced.clear();
        platters.committed = None;
        let (flusher, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(self.clone(), platters.incarnation, pending));
        SimLog {
            disk: self.clone(),
            incarnation: platters.incarnation,
            flusher,
        }
    }

    pub fn set_slow(&self, extra_ms: u64) {
        self.platters().slow_fsync_ms = extra_ms;
    }

    pub fn fail_next_fsync(&self) {
        self.platters().fail_next_fsync = true;
    }

    /// (fsyncs, entries lost to crashes) so far.
    pub fn counters(&self) -> (u64, u64) {
        let platters = self.platters();
        (platters.fsyncs, platters.lost_on_crash)
    }
}

impl SnapshotStore for Disk {
    fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        Ok(self
            .platters()
            .snapshot
            .clone()
            .map(|(meta, data)| StoredSnapshot { meta, data }))
    }

    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        self.platters().snapshot = Some((meta.clone(), data.to_vec()));
        Ok(())
    }
}

/// Syncs once per batch of pending appends (like the real flusher thread), after the disk's
/// latency, then reports each append durable, in order.
async fn run_flusher(
    disk: Disk,
    incarnation: u64,
    mut pending: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
) {
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = pending.try_recv() {
            batch.push(next);
        }
        let delay = FSYNC_MS + disk.platters().slow_fsync_ms;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let synced = {
            let mut platters = disk.platters();
            if platters.incarnation != incarnation {
                return;
            }
            platters.fsyncs += 1;
            if std::mem::take(&mut platters.fail_next_fsync) {
                Err("injected: the disk reported EIO".to_owned())
            } else {
                let platters = &mut *platters;
                for index in std::mem::take(&mut platters.unsynced) {
                    if let Some(entry) = platters.log.get(&index) {
                        platters.synced.insert(index, entry.clone());
                    }
                }
                Ok(())
            }
        };
        for callback in batch {
            let result = synced
                .clone()
                .map_err(|e| io::Error::other(format!("fsync of the raft log failed: {e}")));
            callback.io_completed(result);
        }
    }
}

/// One incarnation's handle on the disk: openraft's log storage.
#[derive(Clone)]
pub struct SimLog {
    disk: Disk,
    incarnation: u64,
    flusher: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
}

impl SimLog {
    /// The disk, if this handle's incarnation is still the running one.
    fn platters(&self) -> io::Result<MutexGuard<'_, Platters>> {
        let platters = self.disk.platters();
        if platters.incarnation != self.incarnation {
            return Err(io::Error::other("this incarnation of the node has crashed"));
        }
        Ok(platters)
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let platters = self.platters()?;
        let entries: Vec<Entry> = platters
            .log
            .range(bounds)
            .map(|(_, entry)| entry.clone())
            .collect();
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.platters()?.vote)
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = SimLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let platters = self.platters()?;
        let last = platters.log.values().next_back().map(|entry| entry.log_id);
        Ok(LogState {
            last_purged_log_id: platters.purged,
            last_log_id: last.or(platters.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.platters()?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.platters()?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.platters()?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = <TypeConfig as RaftTypeConfig>::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut platters = self.platters()?;
            for entry in entries {
                let index = entry.log_id.index;
                platters.log.insert(index, entry);
                platters.unsynced.insert(index);
            }
        }
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("the log flusher has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut platters = self.platters()?;
        platters.log.split_off(&from);
        platters.synced.split_off(&from);
        platters.unsynced.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut platters = self.platters()?;
        let keep_from = log_id.index + 1;
        platters.log = platters.log.split_off(&keep_from);
        platters.synced = platters.synced.split_off(&keep_from);
        platters.unsynced = platters.unsynced.split_off(&keep_from);
        platters.purged = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use holdfast_server::raft::state_machine::StateMachineStore;
    use openraft::StorageError;
    use openraft::async_runtime::Oneshot;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::alias::OneshotOf;

    use super::*;

    struct SimBuilder;

    impl StoreBuilder<TypeConfig, SimLog, StateMachineStore, ()> for SimBuilder {
        async fn build(&self) -> Result<((), SimLog, StateMachineStore), StorageError<TypeConfig>> {
            let disk = Disk::default();
            let state_machine =
                StateMachineStore::open(Arc::new(disk.clone()), 0, 1).expect("state machine");
            Ok(((), disk.open(), state_machine))
        }
    }

    /// openraft's storage conformance suite, as the rocksdb store passes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(SimBuilder)
            .await
            .expect("openraft storage suite");
    }

    /// A restart keeps what was synced and loses what was not.
    #[tokio::test]
    async fn a_crash_loses_only_unsynced_appends() {
        let disk = Disk::default();
        let mut log = disk.open();
        let entry = |index| Entry {
            log_id: LogId {
                leader_id: openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            },
            payload: openraft::EntryPayload::Blank,
        };
        let channel = <OneshotOf<TypeConfig> as Oneshot>::channel::<io::Result<()>>;
        let (flushed, synced) = channel();
        log.append([entry(1), entry(2)], IOFlushed::signal(flushed))
            .await
            .unwrap();
        synced.await.unwrap().unwrap();
        disk.set_slow(1_000);
        let (flushed, _never) = channel();
        log.append([entry(3)], IOFlushed::signal(flushed))
            .await
            .unwrap();
        assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 3);
        let mut restarted = disk.open();
        let kept: Vec<u64> = restarted
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|entry| entry.log_id.index)
            .collect();
        assert_eq!(kept, [1, 2]);
        assert_eq!(disk.counters().1, 1);
        assert!(
            log.try_get_log_entries(0..).await.is_err(),
            "the crashed incarnation is fenced"
        );
    }
}
