//! Prometheus metrics (`--metrics-listen ADDR` serves `/metrics`) and the gRPC health status.
//!
//! Every series carries a `node` label (a `holdfast dev` process runs three nodes behind one
//! listener). Counters and histograms are recorded where things happen (apply, the log's
//! flusher); gauges are sampled once a second by [`run_sampler`] from the [`NodeSample`] the
//! node hands it, which also sets the `grpc.health.v1` status: SERVING only while the node
//! knows a leader (and, as the leader, hears from a quorum) and has applied everything it
//! knows to be committed. The names are listed in `docs/operations.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_core::{Applied, Command, Event, LeaveReason, ReleaseReason};
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often gauges are sampled and the health status refreshed.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;

/// Installs the process-wide Prometheus recorder and returns the handle that renders it (the
/// node's HTTP listener, `crate::console`, serves it as `GET /metrics`). Call once per process,
/// inside the tokio runtime: it starts the recorder's upkeep task.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    const SECONDS: &[f64] = &[
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];
    const COUNTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_per_fsync".to_string()), COUNTS)?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("installing the metrics recorder: {error}"))?;
    // What the exporter's own listener did: drain histogram samples into their buckets.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(RECORDER_UPKEEP_S)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// How often the recorder's histogram samples are drained into buckets.
pub const RECORDER_UPKEEP_S: u64 = 5;

/// How many recent durations [`Recent`] keeps.
pub const RECENT_SAMPLES: usize = 1_024;

/// The last [`RECENT_SAMPLES`] durations of something (a node's fsyncs, one policy hook's
/// decisions), for the console's percentiles of what happens now (the Prometheus histograms
/// add up everything since start).
#[derive(Default)]
pub struct Recent {
    inner: Mutex<RecentRing>,
}

#[derive(Default)]
struct RecentRing {
    /// Microseconds, at most `RECENT_SAMPLES`; `next` is the slot written next once full.
    micros: Vec<u64>,
    next: usize,
    total: u64,
}

/// Percentiles of the durations a [`Recent`] holds, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Recorded since start.
    pub count: u64,
    /// Over the last [`RECENT_SAMPLES`] (or fewer).
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Recent {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut ring = self.inner.lock().expect("recent durations lock");
        ring.total += 1;
        if ring.micros.len() < RECENT_SAMPLES {
            ring.micros.push(micros);
        } else {
            let next = ring.next;
            ring.micros[next] = micros;
            ring.next = (next + 1) % RECENT_SAMPLES;
        }
    }

    /// None before the first duration.
    pub fn summary(&self) -> Option<LatencySummary> {
        let (mut micros, count) = {
            let ring = self.inner.lock().expect("recent durations lock");
            (ring.micros.clone(), ring.total)
        };
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
        (!micros.is_empty()).then(|| LatencySummary {
            count,
            samples: micros.len() as u64,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        })
    }
}

/// Metric handles of one node's apply loop, registered once (recording through a handle
/// costs an atomic add; looking a series up by name and labels costs far more).
pub struct ApplyMetrics {
    node: String,
    applied: BTreeMap<&'static str, Counter>,
    apply_seconds: Histogram,
    grants: Counter,
    handoffs: Counter,
    queued: Counter,
    releases: BTreeMap<&'static str, Counter>,
    left_queue: BTreeMap<&'static str, Counter>,
    expiries: Counter,
    /// The longest an entry took from asking for the state lock to releasing it (waiting
    /// behind readers and the snapshot writer, then applying).
    stall_max: MaxGauge,
    /// The longest `holdfast_core::apply` of one entry.
    apply_max: MaxGauge,
}

/// A gauge holding the largest duration recorded since start.
struct MaxGauge {
    nanos: std::sync::atomic::AtomicU64,
    gauge: metrics::Gauge,
}

impl MaxGauge {
    fn new(gauge: metrics::Gauge) -> MaxGauge {
        MaxGauge {
            nanos: std::sync::atomic::AtomicU64::new(0),
            gauge,
        }
    }

    fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let before = self
            .nanos
            .fetch_max(nanos, std::sync::atomic::Ordering::Relaxed);
        if nanos > before {
            self.gauge.set(took.as_secs_f64());
        }
    }
}

impl ApplyMetrics {
    pub fn new(node: u64) -> ApplyMetrics {
        let node = node.to_string();
        let label = || node.clone();
        ApplyMetrics {
            applied: COMMANDS
                .iter()
                .map(|command| {
                    let counter = counter!(
                        "holdfast_applied_entries_total",
                        "node" => label(),
                        "command" => *command
                    );
                    (*command, counter)
                })
                .collect(),
            apply_seconds: histogram!("holdfast_apply_seconds", "node" => label()),
            grants: counter!("holdfast_lock_grants_total", "node" => label()),
            handoffs: counter!("holdfast_lock_handoffs_total", "node" => label()),
            queued: counter!("holdfast_lock_queued_total", "node" => label()),
            releases: RELEASE_REASONS
                .iter()
                .map(|reason| {
                    let counter = counter!(
                        "holdfast_lock_releases_total",
                        "node" => label(),
                        "reason" => *reason
                    );
                    (*reason, counter)
                })
                .collect(),
            left_queue: LEAVE_REASONS
                .iter()
                .map(|reason| {
                    let counter = counter!(
                        "holdfast_lock_left_queue_total",
                        "node" => label(),
                        "reason" => *reason
                    );
                    (*reason, counter)
                })
                .collect(),
            expiries: counter!("holdfast_session_expiries_total", "node" => label()),
            stall_max: MaxGauge::new(gauge!("holdfast_apply_stall_max_seconds", "node" => label())),
            apply_max: MaxGauge::new(gauge!("holdfast_apply_max_seconds", "node" => label())),
            node,
        }
    }

    /// Records how long one entry held up the apply loop: waiting for the state lock plus
    /// applying. Keeps the longest since start (`holdfast_apply_stall_max_seconds`).
    pub fn record_stall(&self, took: Duration) {
        self.stall_max.record(took);
    }

    /// Records what one applied entry did: its command, its events (grants, releases by
    /// reason, expiries, policy faults and disagreements) and how long apply took.
    pub fn record(&self, command: &Command, applied: &Applied, took: Duration) {
        // `.get`: a metrics table that missed a new variant must not stop apply.
        if let Some(counter) = self.applied.get(command_name(command)) {
            counter.increment(1);
        }
        self.apply_seconds.record(took.as_secs_f64());
        self.apply_max.record(took);
        for event in &applied.events {
            match event {
                Event::Acquired {
                    name, session_id, ..
                } => {
                    self.grants.increment(1);
                    // A grant to anyone but the entry's own acquirer came from the queue.
                    let own = matches!(command, Command::Acquire(request)
                        if request.session_id == *session_id && request.name == *name);
                    if !own {
                        self.handoffs.increment(1);
                    }
                }
                Event::Released { reason, .. } => {
                    if let Some(counter) = self.releases.get(release_reason(*reason)) {
                        counter.increment(1);
                    }
                }
                Event::Queued { .. } => self.queued.increment(1),
                Event::LeftQueue { reason, .. } => {
                    if let Some(counter) = self.left_queue.get(leave_reason(*reason)) {
                        counter.increment(1);
                    }
                }
                Event::SessionExpired { .. } => self.expiries.increment(1),
                // Rare: looked up by name.
                Event::PolicyFault { hook, .. } => counter!(
                    "holdfast_policy_faults_total",
                    "node" => self.node.clone(),
                    "hook" => hook.clone()
                )
                .increment(1),
                Event::PolicyDisagreement { hook, .. } => counter!(
                    "holdfast_policy_disagreements_total",
                    "node" => self.node.clone(),
                    "hook" => hook.clone()
                )
                .increment(1),
                _ => {}
            }
        }
    }
}

const COMMANDS: [&str; 12] = [
    "noop",
    "open_session",
    "close_session",
    "tick",
    "acquire",
    "release",
    "cancel_wait",
    "proclaim",
    "deploy_policy",
    "bind_policy",
    "unbind",
    "revoke",
];
const RELEASE_REASONS: [&str; 6] = [
    "released",
    "session_closed",
    "session_expired",
    "lease_expired",
    "preempted",
    "revoked",
];
const LEAVE_REASONS: [&str; 4] = [
    "timed_out",
    "cancelled",
    "session_closed",
    "session_expired",
];

/// Metric handles of one node's log flusher.
pub struct FsyncMetrics {
    seconds: Histogram,
    appends: Histogram,
    /// The same durations, kept for the node's status (`Node::status`).
    recent: Arc<Recent>,
}

impl FsyncMetrics {
    pub fn new(node: u64, recent: Arc<Recent>) -> FsyncMetrics {
        let node = node.to_string();
        FsyncMetrics {
            seconds: histogram!("holdfast_wal_fsync_seconds", "node" => node.clone()),
            appends: histogram!("holdfast_raft_appends_per_fsync", "node" => node),
            recent,
        }
    }

    /// Records one group commit of the Raft log: its fsync time and how many appends it made
    /// durable.
    pub fn record(&self, took: Duration, appends: usize) {
        self.seconds.record(took.as_secs_f64());
        self.appends.record(appends as f64);
        self.recent.record(took);
    }
}

/// Policy decision latency per hook (`holdfast_policy_decision_seconds{node,hook}`): a fresh
/// instance on the entry's first call, the wasm call, and decoding its reply.
pub struct PolicyMetrics {
    by_hook: Vec<Histogram>,
    /// The same durations per hook (in `Hook::ALL` order), for the console.
    recent: Vec<Recent>,
}

impl PolicyMetrics {
    pub fn new(node: u64) -> PolicyMetrics {
        let node = node.to_string();
        PolicyMetrics {
            by_hook: holdfast_policy_abi::Hook::ALL
                .iter()
                .map(|hook| {
                    histogram!(
                        "holdfast_policy_decision_seconds",
                        "node" => node.clone(),
                        "hook" => hook.name()
                    )
                })
                .collect(),
            recent: holdfast_policy_abi::Hook::ALL
                .iter()
                .map(|_| Recent::default())
                .collect(),
        }
    }

    pub fn record(&self, hook: holdfast_policy_abi::Hook, took: Duration) {
        if let Some(histogram) = self.by_hook.get(hook as usize) {
            histogram.record(took.as_secs_f64());
        }
        if let Some(recent) = self.recent.get(hook as usize) {
            recent.record(took);
        }
    }

    /// Recent decision latency of every hook that has decided, by hook name.
    pub fn summaries(&self) -> Vec<(&'static str, LatencySummary)> {
        holdfast_policy_abi::Hook::ALL
            .iter()
            .zip(&self.recent)
            .filter_map(|(hook, recent)| Some((hook.name(), recent.summary()?)))
            .collect()
    }
}

/// Records the size of the snapshot just built or installed.
pub fn record_snapshot(node: u64, bytes: usize) {
    gauge!("holdfast_snapshot_bytes", "node" => node.to_string()).set(bytes as f64);
}

/// A snapshot this node built: its size, how long encoding and persisting it took, and the
/// longest it held the state lock (apply waits that long at most).
pub fn record_snapshot_built(node: u64, bytes: usize, took: Duration, longest_hold: Duration) {
    record_snapshot(node, bytes);
    gauge!("holdfast_snapshot_build_seconds", "node" => node.to_string()).set(took.as_secs_f64());
    gauge!("holdfast_snapshot_lock_hold_seconds", "node" => node.to_string())
        .set(longest_hold.as_secs_f64());
}

/// What the sampler reads of one node every [`SAMPLE_INTERVAL_MS`]. The node fills it
/// (`Node::sample`): metrics are handed what they show and never reach into the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSample {
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub sessions: usize,
    pub locks: usize,
    pub holders: usize,
    pub waiters: usize,
    pub policy_faults: u64,
    pub bindings: usize,
    pub checkpoint_index: u64,
    pub digest_mismatches: u64,
    /// A leader cut off from its quorum keeps believing it leads; it answers writes with
    /// UNAVAILABLE after `QUORUM_STALE_MS`.
    pub stale_leader: bool,
    /// A follower cut off from its leader still names it until an election succeeds.
    pub stale_follower: bool,
}

impl NodeSample {
    /// SERVING only while the node knows a leader it is in touch with (as the leader: hears
    /// from a quorum) and has applied everything it knows to be committed.
    pub fn serving_status(&self) -> ServingStatus {
        if self.leader.is_some()
            && !self.stale_leader
            && !self.stale_follower
            && self.applied_index >= self.committed_index
        {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

/// Sets the gauges of node `node` from `sample()` and refreshes the health status, every
/// [`SAMPLE_INTERVAL_MS`], until the task is aborted.
pub async fn run_sampler(node: u64, sample: impl Fn() -> NodeSample, health: HealthReporter) {
    let label = node.to_string();
    let mut last_status = None;
    loop {
        let sample = sample();
        let set = |name: &'static str, value: f64| {
            gauge!(name, "node" => label.clone()).set(value);
        };
        set("holdfast_raft_term", sample.term as f64);
        set("holdfast_raft_leader_id", sample.leader.unwrap_or(0) as f64);
        set(
            "holdfast_raft_is_leader",
            f64::from(u8::from(sample.is_leader)),
        );
        set("holdfast_raft_last_log_index", sample.last_log_index as f64);
        set("holdfast_raft_commit_index", sample.committed_index as f64);
        set("holdfast_raft_applied_index", sample.applied_index as f64);
        set("holdfast_sessions", sample.sessions as f64);
        set(
            "holdfast_sessions_limit",
            holdfast_core::limits::SESSIONS_MAX as f64,
        );
        set("holdfast_locks", sample.locks as f64);
        set("holdfast_lock_holders", sample.holders as f64);
        set("holdfast_lock_waiters", sample.waiters as f64);
        set("holdfast_policy_faults", sample.policy_faults as f64);
        set("holdfast_policy_bindings", sample.bindings as f64);
        set("holdfast_checkpoint_index", sample.checkpoint_index as f64);
        set(
            "holdfast_digest_mismatches",
            sample.digest_mismatches as f64,
        );
        let status = sample.serving_status();
        if last_status != Some(status) {
            health.set_service_status("", status).await;
            last_status = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS)).await;
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Noop => "noop",
        Command::OpenSession { .. } => "open_session",
        Command::CloseSession { .. } => "close_session",
        Command::Tick { .. } => "tick",
        Command::Acquire(_) => "acquire",
        Command::Release { .. } => "release",
        Command::CancelWait { .. } => "cancel_wait",
        Command::Proclaim { .. } => "proclaim",
        Command::DeployPolicy { .. } => "deploy_policy",
        Command::BindPolicy { .. } => "bind_policy",
        Command::Unbind { .. } => "unbind",
        Command::Revoke { .. } => "revoke",
    }
}

fn release_reason(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Released => "released",
        ReleaseReason::SessionClosed => "session_closed",
        ReleaseReason::SessionExpired => "session_expired",
        ReleaseReason::LeaseExpired => "lease_expired",
        ReleaseReason::Preempted => "preempted",
        ReleaseReason::Revoked => "revoked",
    }
}

fn leave_reason(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::TimedOut => "timed_out",
        LeaveReason::Cancelled => "cancelled",
        LeaveReason::SessionClosed => "session_closed",
        LeaveReason::SessionExpired => "session_expired",
    }
}

/// Parses `--metrics-listen`.
pub fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .map_err(|error| anyhow::anyhow!("--metrics-listen {text:?}: {error}"))
}

/// The handle (registered once per node) of how long a blocked Acquire waited in the queue
/// before its grant, on the node that served the call (wall time from proposing to the
/// grant's apply here).
pub fn lock_wait_seconds(node: u64) -> Histogram {
    histogram!("holdfast_lock_wait_seconds", "node" => node.to_string())
}
