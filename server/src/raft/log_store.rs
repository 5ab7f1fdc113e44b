//! The Raft log, vote and commit index in rocksdb, with group commit.
//!
//! Layout (one DB, shared with the snapshot store): column family `log` maps a big-endian u64
//! index to a bincode `Entry`; column family `meta` holds `vote`, `committed`, `last_purged` and
//! the current snapshot.
//!
//! Durability: `append` writes one unsynced `WriteBatch` (the entries are readable on return) and
//! hands openraft's `IOFlushed` callback to the flusher thread, which syncs the WAL once for every
//! callback queued since its last sync and only then reports the entries durable. So many
//! concurrent proposals cost one fsync, and the fsync never runs on the Raft core task.
//! `save_vote`, `truncate_after` and `purge` write synchronously: openraft treats them as
//! durable when they return. A failed fsync is reported to openraft, which stops the node.
//!
//! Reads of the log's tail (replication right after an append, apply right after a commit) are
//! answered from [`RecentLog`], the last entries appended, kept in memory.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::recent_log::RecentLog;
use super::types::{Entry, LogId, TypeConfig, Vote, codec};

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Opens (or creates) the node's rocksdb database with every column family Holdfast uses.
pub fn open_db(dir: &Path) -> io::Result<Arc<DB>> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families =
        [CF_LOG, CF_META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&options, dir, families).map_err(io::Error::other)?;
    Ok(Arc::new(db))
}

/// The Raft bookkeeping of a data dir restored from a backup (`crate::backup`): an empty log
/// that starts after `last` (purged up to it, committed up to it) and `vote`, in one synced
/// batch.
pub fn write_restored(db: &DB, last: LogId, vote: &Vote) -> io::Result<()> {
    let meta = db.cf_handle(CF_META).expect("meta column family");
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, KEY_LAST_PURGED, codec::encode(&last));
    batch.put_cf(meta, KEY_COMMITTED, codec::encode(&Some(last)));
    batch.put_cf(meta, KEY_VOTE, codec::encode(vote));
    db.write_opt(batch, &sync_write()).map_err(io::Error::other)
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn sync_write() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
    /// Shared by every clone (the log readers openraft hands to replication and apply).
    recent: Arc<Mutex<RecentLog>>,
}

impl LogStore {
    /// A store of the log in `db`, whose flusher records each fsync's duration in `fsyncs`.
    pub fn new(db: Arc<DB>, node_id: u64, fsyncs: Arc<crate::metrics::Recent>) -> LogStore {
        let (flusher, pending) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // Weak: the flusher must not keep the database open after the stores are dropped (a
        // rocksdb DB still open when the process exits crashes in its static destructors).
        let flush_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("holdfast-log-flusher".into())
            .spawn(move || run_flusher(&flush_db, &pending, node_id, fsyncs))
            .expect("spawning the log flusher thread");
        LogStore {
            db,
            flusher,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentLog> {
        self.recent.lock().expect("recent log lock")
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let bytes = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(io::Error::other)?;
        bytes.map(|b| codec::decode(&b)).transpose()
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(io::Error::other)?;
                let entry: Entry = codec::decode(&value)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// Test-only failpoint (like etcd's gofail `raftBeforeSave`): while the file this names
/// exists, every fsync of the log fails as if the disk returned EIO, so a test can make one
/// node's storage fail at a moment it chooses.
pub const TEST_FSYNC_FAIL_FILE_ENV: &str = "HOLDFAST_TEST_ONLY_FSYNC_FAIL_FILE";

/// Syncs the WAL once per batch of pending appends, then reports each append durable, in order.
fn run_flusher(
    db: &std::sync::Weak<DB>,
    pending: &mpsc::Receiver<IOFlushed<TypeConfig>>,
    node_id: u64,
    fsyncs: Arc<crate::metrics::Recent>,
) {
    let metrics = crate::metrics::FsyncMetrics::new(node_id, fsyncs);
    let fail_file = std::env::var_os(TEST_FSYNC_FAIL_FILE_ENV).map(std::path::PathBuf::from);
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let started = std::time::Instant::now();
        let synced: Result<(), String> = match db.upgrade() {
            _ if fail_file.as_ref().is_some_and(|file| file.exists()) => {
                Err(format!("injected by {TEST_FSYNC_FAIL_FILE_ENV}"))
            }
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the database was closed before the log was synced".to_owned()),
        };
        metrics.record(started.elapsed(), batch.len());
        for callback in batch {
            let result = synced
                .clone()
                .map_err(|e| io::Error::other(format!("fsync of the raft log failed: {e}")));
            callback.io_completed(result);
        }
        if let Err(e) = synced {
            tracing::error!(error = %e, "fsync of the raft log failed; openraft will stop this node");
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        if let Some(entries) = self.recent().read(start, &range) {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(io::Error::other)?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = codec::decode(&value)?;
            debug_assert_eq!(entry.log_id.index, index);
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.db
            .put_cf_opt(
                self.cf(CF_META),
                KEY_VOTE,
                codec::encode(vote),
                &sync_write(),
            )
            .map_err(io::Error::other)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not logged (openraft calls this on its core task at every commit): the memtable holds
        // it until a flush or a clean close. Losing it in a crash only means the node applies
        // less of its log at start and waits for the leader to name the commit index again.
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db
            .put_cf_opt(
                self.cf(CF_META),
                KEY_COMMITTED,
                codec::encode(&committed),
                &options,
            )
            .map_err(io::Error::other)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
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
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        let mut written = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry);
            batch.put_cf(cf, index_key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        self.db.write(batch).map_err(io::Error::other)?;
        let mut recent = self.recent();
        for (entry, len) in written {
            recent.push(entry, len);
        }
        drop(recent);
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), index_key(from), index_key(u64::MAX));
        batch.delete_cf(self.cf(CF_LOG), index_key(u64::MAX));
        self.db
            .write_opt(batch, &sync_write())
            .map_err(io::Error::other)?;
        self.recent().truncate_after(last_log_id.map(|id| id.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        tracing::debug!(upto = log_id.index, "purging the raft log");
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_LAST_PURGED, codec::encode(&log_id));
        batch.delete_range_cf(self.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.db
            .write_opt(batch, &sync_write())
            .map_err(io::Error::other)?;
        self.recent().purge(log_id.index);
        Ok(())
    }
}
