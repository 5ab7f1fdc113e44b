//! What a fault-injection run observed: every client operation (invoke / outcome on one
//! monotonic clock), every node's watch stream (the replicated grant/release/expiry record), the
//! fenced resource, the faults, and the final linearizable read. The checkers read only this.

use std::collections::BTreeMap;

use holdfast_proto::v1 as pb;

/// Microseconds since the start of the run, on the harness's single monotonic clock.
pub type Micros = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    OpenSession,
    /// `wait_ms` 0 = try-lock.
    Acquire {
        mode: Mode,
        wait_ms: u64,
    },
    Release {
        token: u64,
    },
    /// A linearizable read of the lock.
    Describe,
    /// An append to the fenced resource, with the token of the hold the client believes it has.
    Write {
        token: u64,
        /// The client's write number, unique per client.
        seq: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Opened {
        session: u64,
    },
    Acquired {
        token: u64,
    },
    /// The session already held the lock: the answer repeats that hold's `token` (a re-entrant
    /// acquire after a release whose outcome was unknown). Not a new grant.
    Reacquired {
        token: u64,
    },
    /// Refused (busy) or the wait timed out.
    NotAcquired,
    /// The hold ended at this log index.
    Released {
        at: u64,
    },
    /// Read at `revision`: the holders' tokens then.
    Described {
        revision: u64,
        holders: Vec<u64>,
    },
    /// The fenced resource accepted (true) or rejected (false) the append.
    Written {
        accepted: bool,
    },
    /// Definitely not applied (the server refused it).
    Fail(String),
    /// May or may not have been applied (timeout, unavailable, connection lost).
    Unknown(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Fail(_) | Outcome::Unknown(_))
    }
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub session: u64,
    pub lock: String,
    pub kind: OpKind,
    pub invoke: Micros,
    pub complete: Micros,
    pub outcome: Outcome,
}

/// One item of one node's watch stream, as the harness's watcher received it.
#[derive(Clone, Debug)]
pub enum StreamItem {
    Revision(u64, Vec<pb::WatchEvent>),
    /// The node answered OUT_OF_RANGE: it no longer had `requested`; `oldest` is the oldest
    /// revision it still had (the explicit gap is `requested..oldest`).
    Compacted {
        requested: u64,
        oldest: u64,
    },
}

#[derive(Clone, Debug)]
pub struct WatchStream {
    pub node: u64,
    /// The revision the watcher first asked for.
    pub from: u64,
    pub items: Vec<StreamItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillNode,
    KillLeader,
    PauseLeader,
    PauseClient,
    IsolateLeader,
    PartitionMajority,
    PartitionBridge,
    OneWayPartition,
    Blackhole,
    SlowLinks,
    ClockJump,
    DiskFull,
    /// The simulator's (crate `holdfast-sim`): every fsync of a node's log is slow.
    SlowDisk,
    /// The simulator's: a node's next fsync fails (the node stops and is restarted).
    FailedFsync,
    /// The simulator's: links that break and heal at random (connections cut mid-call).
    LossyLinks,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail: String,
    pub start: Micros,
    /// When it was healed (None = instantaneous or healed at the end).
    pub end: Option<Micros>,
}

/// A node process that exited without the harness killing it.
#[derive(Clone, Debug)]
pub struct NodeExit {
    pub node: u64,
    pub at: Micros,
    pub code: Option<i32>,
    /// The node's disk was full (a `DiskFull` fault was active on it).
    pub disk_full: bool,
}

/// One append the fenced resource accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub token: u64,
    pub client: usize,
    /// The client's write number, unique per client.
    pub seq: u64,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub streams: Vec<WatchStream>,
    pub faults: Vec<Fault>,
    pub exits: Vec<NodeExit>,
    /// The fenced resource's append-only list per lock.
    pub resource: BTreeMap<String, Vec<Append>>,
    /// After the run: a linearizable List of every lock (revision, lock → holders' tokens).
    pub final_read: Option<(u64, BTreeMap<String, Vec<u64>>)>,
    /// When every fault had been healed and the final quiet phase began.
    pub quiet_from: Option<Micros>,
    pub end: Micros,
    /// After the run: each node's (applied index, state digest) once they stopped changing.
    pub final_digests: BTreeMap<u64, (u64, String)>,
    /// Every node's determinism-guard checkpoints as the digest poller saw them.
    pub checkpoints: Vec<Checkpoint>,
    /// The policy churn during the run.
    pub policy_changes: Vec<PolicyChange>,
    /// Holders and waiters of the priority-policy locks, read every so often.
    pub queue_samples: Vec<QueueSample>,
}

/// One lock's holders and waiters as one read saw them (cluster times in ms).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSample {
    pub lock: String,
    /// (session, token, granted at)
    pub holders: Vec<(u64, u64, u64)>,
    /// (session, priority, queued at)
    pub waiters: Vec<(u64, i32, u64)>,
}

/// One node's state digest at one checkpoint index (`Cluster.Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub node: u64,
    pub index: u64,
    pub digest: String,
}

/// One deploy or rebind the churn attempted during the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyChange {
    pub at: Micros,
    /// What was attempted, and its answer (the new version, or the error).
    pub what: String,
    pub accepted: bool,
}

/// Revision ranges `[from, to)` that no stream covered: every stream either had an explicit
/// compaction gap there or had not started. Checks that need the record skip them.
pub fn uncovered(history: &History) -> Vec<(u64, u64)> {
    /// One stream's first and last revision and its holes (compaction gaps).
    type Coverage = (u64, u64, Vec<(u64, u64)>);
    let mut coverage: Vec<Coverage> = Vec::new();
    for stream in &history.streams {
        // A stream covers from the revision it asked for to the last it received, but for
        // its compaction gaps.
        let mut holes = Vec::new();
        let mut last = stream.from.saturating_sub(1);
        for item in &stream.items {
            match item {
                StreamItem::Revision(revision, _) => last = *revision,
                StreamItem::Compacted { requested, oldest } => holes.push((*requested, *oldest)),
            }
        }
        coverage.push((stream.from, last, holes));
    }
    let covered_by = |revision: u64, (first, last, holes): &Coverage| {
        revision >= *first
            && revision <= *last
            && !holes
                .iter()
                .any(|(from, to)| revision >= *from && revision < *to)
    };
    // Candidate boundaries: every hole edge and stream start; a range between two consecutive
    // boundaries is covered or not as a whole.
    let mut edges: Vec<u64> = vec![1];
    for (first, last, holes) in &coverage {
        edges.push(*first);
        edges.push(last + 1);
        for (from, to) in holes {
            edges.push(*from);
            edges.push(*to);
        }
    }
    edges.sort_unstable();
    edges.dedup();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let end = coverage.iter().map(|c| c.1).max().unwrap_or(0);
    for pair in edges.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        if from > end {
            break;
        }
        if !coverage.iter().any(|c| covered_by(from, c)) {
            match gaps.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => gaps.push((from, to)),
            }
        }
    }
    gaps
}

pub fn is_uncovered(gaps: &[(u64, u64)], revision: u64) -> bool {
    gaps.iter()
        .any(|(from, to)| revision >= *from && revision < *to)
}

/// The replicated record merged from every stream: revision → events (streams that share a
/// revision must agree; `watch_streams` checks that).
pub fn merged_record(history: &History) -> BTreeMap<u64, Vec<pb::WatchEvent>> {
    let mut record = BTreeMap::new();
    for stream in &history.streams {
        for item in &stream.items {
            if let StreamItem::Revision(revision, events) = item {
                record.entry(*revision).or_insert_with(|| events.clone());
            }
        }
    }
    record
}

pub fn event_kind(event: &pb::WatchEvent) -> pb::EventKind {
    pb::EventKind::try_from(event.kind).unwrap_or(pb::EventKind::Unspecified)
}

/// For tests of the checkers: an event of `kind` on `lock`.
pub fn event(kind: pb::EventKind, lock: &str, session: u64, token: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        kind: kind as i32,
        lock: lock.to_owned(),
        session_id: session,
        token,
        mode: pb::LockMode::Exclusive as i32,
        ..pb::WatchEvent::default()
    }
}

/// For tests of the checkers: a history whose only stream is `record`.
pub fn history_with_record(record: Vec<(u64, Vec<pb::WatchEvent>)>) -> History {
    History {
        streams: vec![WatchStream {
            node: 1,
            from: 1,
            items: record
                .into_iter()
                .map(|(revision, events)| StreamItem::Revision(revision, events))
                .collect(),
        }],
        ..History::default()
    }
}

/// For tests of the checkers: a completed op.
pub fn op(client: usize, lock: &str, kind: OpKind, span: (Micros, Micros), outcome: Outcome) -> Op {
    Op {
        client,
        session: client as u64 + 1,
        lock: lock.to_owned(),
        kind,
        invoke: span.0,
        complete: span.1,
        outcome,
    }
}
