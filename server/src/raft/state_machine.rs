//! The state machine as openraft sees it: `holdfast-core`'s `State` in memory, applied entry by
//! entry, with canonical snapshots persisted through a `storage::SnapshotStore` (a file beside
//! rocksdb for `holdfast serve`).
//!
//! Restart = load the last snapshot, then openraft replays the log from the snapshot's index up
//! to the saved commit index. Nothing of the state machine is written per entry: a snapshot is
//! the only persisted form, and the log behind it is purged only after it is durable.

use std::io;
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use holdfast_core::{Command, State};
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tokio::sync::watch;

use super::snapshot_file::{self, StoredSnapshot};
use super::storage::SnapshotStore;
use super::types::{LogId, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::guard::{Checkpoints, TEST_DIVERGE_ENV};
use crate::policy::ApplyPolicies;
use crate::waiters::Waiters;
use crate::watch::WatchHub;

/// The applied state plus the Raft bookkeeping that travels with it.
#[derive(Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// What the rest of the node reads: the applied state, apply progress and blocked waiters.
pub struct Shared {
    pub applied: RwLock<Applied>,
    /// The index of the last applied entry; read paths wait on it.
    pub applied_index: watch::Sender<u64>,
    pub waiters: Waiters,
    pub watch: WatchHub,
    /// State digests at checkpoint entries (the determinism guard).
    pub checkpoints: std::sync::Mutex<Checkpoints>,
    /// Decision latency of this replica's policy hooks (metrics and the console).
    pub policy_latency: Arc<crate::metrics::PolicyMetrics>,
    /// Held while a snapshot is written (`write_snapshot`: a build or a backup export): the
    /// state has one frozen view at a time.
    snapshot_writer: std::sync::Mutex<()>,
}

impl Shared {
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.applied.read().expect("state lock").state)
    }
}

pub struct StateMachineStore {
    shared: Arc<Shared>,
    snapshots: Arc<dyn SnapshotStore>,
    /// The wasm policy engine and compiled modules of this replica's apply loop.
    policies: ApplyPolicies,
    /// Record the state digest after every entry whose index is a multiple of this.
    checkpoint_every: u64,
    /// TEST ONLY ([`TEST_DIVERGE_ENV`]): perturb the state after applying this entry.
    diverge_at: Option<u64>,
    /// This node's id, for metrics labels.
    node_id: u64,
    metrics: crate::metrics::ApplyMetrics,
}

impl StateMachineStore {
    /// Loads the last persisted snapshot, if any, as the starting state. Records a checkpoint
    /// digest every `checkpoint_every` entries (0 = never).
    pub fn open(
        snapshots: Arc<dyn SnapshotStore>,
        checkpoint_every: u64,
        node_id: u64,
    ) -> io::Result<StateMachineStore> {
        let mut applied = Applied::default();
        if let Some(stored) = snapshots.load()? {
            applied.state = State::from_snapshot_bytes(&stored.data).map_err(io::Error::other)?;
            applied.last_applied = stored.meta.last_log_id;
            applied.membership = stored.meta.last_membership;
        }
        let (applied_index, _) = watch::channel(applied.state.applied_index());
        let start_index = applied.state.applied_index();
        let policy_latency = Arc::new(crate::metrics::PolicyMetrics::new(node_id));
        let shared = Arc::new(Shared {
            applied: RwLock::new(applied),
            applied_index,
            waiters: Waiters::default(),
            watch: WatchHub::new(start_index),
            checkpoints: Default::default(),
            policy_latency: Arc::clone(&policy_latency),
            snapshot_writer: std::sync::Mutex::new(()),
        });
        let diverge_at = std::env::var(TEST_DIVERGE_ENV)
            .ok()
            .and_then(|index| index.parse().ok());
        if let Some(index) = diverge_at {
            tracing::warn!(
                index,
                "{TEST_DIVERGE_ENV} is set: this replica will diverge on purpose"
            );
        }
        let policies = ApplyPolicies::new()
            .map_err(io::Error::other)?
            .with_metrics(policy_latency);
        Ok(StateMachineStore {
            shared,
            snapshots,
            policies,
            checkpoint_every,
            diverge_at,
            node_id,
            metrics: crate::metrics::ApplyMetrics::new(node_id),
        })
    }

    /// Applies policies with compiled modules shared with the other nodes of this process
    /// (the simulator's; see `policy::cache::SharedModules`).
    pub fn with_shared_modules(
        mut self,
        modules: Arc<crate::policy::cache::SharedModules>,
    ) -> StateMachineStore {
        self.policies =
            ApplyPolicies::sharing(modules).with_metrics(Arc::clone(&self.shared.policy_latency));
        self
    }

    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

/// Persists `data` (canonical state bytes) as the data dir's snapshot at `meta`, the starting
/// state of a node restored from a backup (`crate::backup`).
pub fn write_restored(db: &rocksdb::DB, meta: SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
    snapshot_file::save(db, &meta, &data)
}

/// Records encoded per hold of the state lock while a snapshot is written: apply waits at most
/// this long behind the writer (≈ 0.5 ms of encoding; 4,096 held the lock up to 26 ms at 1M
/// locks on this 2-core machine with three nodes busy, `holdfast-bench scale`).
const SNAPSHOT_CHUNK_RECORDS: usize = 1_024;

/// Debug builds compare the maintained digest with a recompute after every this many entries.
const DEBUG_DIGEST_CHECK_EVERY: u64 = 64;

/// A snapshot written by `write_snapshot`.
pub struct Written {
    pub stored: StoredSnapshot,
    /// The cluster time of the state written.
    pub now_ms: u64,
    /// The longest `write_snapshot` held the state lock.
    pub longest_hold: std::time::Duration,
}

/// Encodes the applied state as a snapshot without stalling apply: the state is frozen in O(1)
/// and written a chunk at a time, the lock released between chunks so entries keep applying
/// (`holdfast_core::SnapshotWriter`). One at a time (a build waits for an export and the other
/// way round). Should a snapshot be installed meanwhile, starts again from the installed state.
/// Blocks for seconds on a large state: call it on the blocking pool.
pub fn write_snapshot(shared: &Shared) -> Written {
    let _one_at_a_time = shared.snapshot_writer.lock().expect("snapshot writer lock");
    let mut longest = std::time::Duration::ZERO;
    let mut with_state = |f: &mut dyn FnMut(&mut Applied)| {
        let mut applied = shared.applied.write().expect("state lock");
        let started = std::time::Instant::now();
        f(&mut applied);
        longest = longest.max(started.elapsed());
    };
    'frozen: loop {
        let mut frozen = None;
        with_state(&mut |applied| {
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            let now_ms = applied.state.now_ms();
            frozen = Some((meta, now_ms, applied.state.begin_snapshot()));
        });
        let (meta, now_ms, mut writer) = frozen.expect("frozen above");
        loop {
            let mut written = Ok(false);
            with_state(&mut |applied| {
                written = applied
                    .state
                    .write_snapshot_chunk(&mut writer, SNAPSHOT_CHUNK_RECORDS);
            });
            writer.absorb();
            match written {
                Ok(false) => {}
                Ok(true) => {
                    let data = writer.into_bytes();
                    return Written {
                        stored: StoredSnapshot { meta, data },
                        now_ms,
                        longest_hold: longest,
                    };
                }
                Err(abandoned) => {
                    tracing::info!(%abandoned, "snapshot starts again from the installed state");
                    continue 'frozen;
                }
            }
        }
    }
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    snapshots: Arc<dyn SnapshotStore>,
    node_id: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (shared, snapshots, node_id) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.snapshots),
            self.node_id,
        );
        // Encoding and persisting a large state takes seconds (≈ 1 s per 80 MB here): off the
        // runtime's worker threads, or Raft's own tasks (heartbeats) starve and followers
        // start an election — seen loading 900k locks with holdfast-bench scale. Apply goes on
        // meanwhile: the state is written a chunk at a time from a frozen view.
        crate::blocking::offload(move || {
            let started = std::time::Instant::now();
            let Written {
                stored,
                longest_hold,
                ..
            } = write_snapshot(&shared);
            // Pair check: what we persist must decode to a valid state.
            debug_assert!(State::from_snapshot_bytes(&stored.data).is_ok());
            snapshots.save(&stored.meta, &stored.data)?;
            let took = started.elapsed();
            crate::metrics::record_snapshot_built(node_id, stored.data.len(), took, longest_hold);
            tracing::info!(
                last_log_id = ?stored.meta.last_log_id,
                bytes = stored.data.len(),
                took_ms = took.as_millis() as u64,
                longest_apply_hold_us = longest_hold.as_micros() as u64,
                "snapshot built"
            );
            Ok(Snapshot {
                meta: stored.meta,
                snapshot: stored.data,
            })
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.shared.applied.read().expect("state lock");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_index = entry.log_id.index;
            let log_id = entry.log_id;
            let (core_entry, membership) = super::types::core_entry(entry);
            let entered = std::time::Instant::now();
            let (result, state_now_ms, retired) = {
                let mut applied = self.shared.applied.write().expect("state lock");
                let _span = tracing::trace_span!("apply", log_index).entered();
                // Index 0 is openraft's initial (membership or blank) entry; the state machine starts at 0.
                let (result, retired) = if log_index == 0 {
                    assert!(
                        matches!(core_entry.command, Command::Noop),
                        "log index 0 carries no client command"
                    );
                    let applied = holdfast_core::Applied {
                        outcome: holdfast_core::Outcome::None,
                        events: Vec::new(),
                    };
                    (applied, None)
                } else {
                    // A fresh policy host per entry: no instance outlives its entry. Its
                    // instances are dropped below, once the lock is released and the
                    // proposer answered: their memory reset is off both.
                    let mut host = self.policies.for_entry();
                    let started = std::time::Instant::now();
                    let result = holdfast_core::apply(&mut applied.state, &core_entry, &mut host);
                    self.metrics
                        .record(&core_entry.command, &result, started.elapsed());
                    (result, Some(host.retire()))
                };
                if cfg!(debug_assertions) {
                    if let Err(broken) = applied.state.check_invariants() {
                        panic!("state invariant broken after applying entry {log_index}: {broken}");
                    }
                    // Every 64th entry: a recompute hashes every record (unoptimized SHA-256
                    // in a debug build), which after every entry slowed the cluster tests.
                    assert!(
                        !log_index.is_multiple_of(DEBUG_DIGEST_CHECK_EVERY)
                            || applied.state.digest() == applied.state.digest_from_scratch(),
                        "maintained state digest is not the recomputed one after entry {log_index}"
                    );
                }
                if self.diverge_at == Some(log_index) {
                    applied.state.perturb_for_divergence_test();
                }
                if self.checkpoint_every > 0 && log_index % self.checkpoint_every == 0 {
                    let digest = applied.state.digest();
                    self.shared
                        .checkpoints
                        .lock()
                        .expect("checkpoints lock")
                        .record(log_index, digest);
                }
                if let Some(membership) = membership {
                    applied.membership = StoredMembership::new(Some(log_id), membership);
                }
                applied.last_applied = Some(log_id);
                (result, applied.state.now_ms(), retired)
            };
            self.metrics.record_stall(entered.elapsed());
            self.shared.waiters.on_events(log_index, &result.events);
            self.shared.watch.publish(log_index, &result.events);
            self.shared.applied_index.send_replace(log_index);
            if let Some(responder) = responder {
                responder.send(Response {
                    log_index,
                    now_ms: state_now_ms,
                    outcome: result.outcome,
                });
            }
            drop(retired);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            snapshots: Arc::clone(&self.snapshots),
            node_id: self.node_id,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = State::from_snapshot_bytes(&snapshot).map_err(io::Error::other)?;
        crate::metrics::record_snapshot(self.node_id, snapshot.len());
        self.snapshots.save(meta, &snapshot)?;
        let index = {
            let mut applied = self.shared.applied.write().expect("state lock");
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            self.shared.waiters.on_snapshot(&applied.state);
            self.shared.watch.reset(applied.state.applied_index());
            applied.state.applied_index()
        };
        self.shared.applied_index.send_replace(index);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshots.load()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}
