//! A node's background loops, each started once by `server::start` and run until the node
//! stops: the leader's ticker (cluster time and keepalives into the log), a follower's
//! keepalive forwarder, the election nudger (a pre-vote as soon as the leader's lease has run
//! out), and the determinism guard (checkpoint digests compared with every other voter's).

use std::sync::Arc;
use std::time::Duration;

use holdfast_core::Command;
use openraft::async_runtime::WatchReceiver as _;

use super::{
    ELECTION_NUDGE_POLL_MS, ELECTION_NUDGE_STAGGER_MS, Node, SNAPSHOT_POLL_MS,
    SNAPSHOT_RECORDS_PER_LOG_ENTRY, TICK_IDLE_INTERVAL_MS, TICK_INTERVAL_MS,
};
use crate::raft::NodeId;
use crate::raft::network::PeerRpc;

impl Node {
    /// A follower's forwarder: sends the keepalives that arrived while its previous `Renew`
    /// call was in flight in one call (about 8 per call in S3, where each used to be its own
    /// call). One call at a time, like the leader's Ticks (see `run_ticker`).
    pub async fn run_renew_forwarder(self: Arc<Node>) {
        loop {
            self.forwards.arrived().await;
            let round = self.forwards.take();
            if round.sessions.is_empty() {
                continue;
            }
            let result = self
                .forward_renewals(&round.sessions)
                .await
                .map(|renewals| Arc::new(round.sessions.iter().copied().zip(renewals).collect()));
            round.finish(result);
        }
    }

    /// The determinism guard's loop (`crate::guard`): every `GUARD_POLL_MS`, fetch each other
    /// voter's checkpoints and compare them with ours; a mismatch is logged as an error and
    /// kept for `Cluster.Status`.
    pub async fn run_divergence_guard(self: Arc<Node>) {
        let poll = Duration::from_millis(crate::guard::GUARD_POLL_MS);
        let timeout = Duration::from_millis(crate::guard::GUARD_CALL_TIMEOUT_MS);
        loop {
            tokio::time::sleep(poll).await;
            let others: Vec<(NodeId, String)> = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow_watched();
                let membership = metrics.membership_config.membership();
                membership
                    .voter_ids()
                    .filter(|id| *id != self.id)
                    .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
                    .collect()
            };
            for (peer, addr) in others {
                let theirs: Vec<(u64, [u8; 32])> = match self
                    .peers
                    .call(peer, Some(&addr), PeerRpc::Checkpoints, &(), timeout)
                    .await
                {
                    Ok(theirs) => theirs,
                    Err(error) => {
                        tracing::debug!(peer, %error, "determinism guard: peer unreachable");
                        continue;
                    }
                };
                let found = self
                    .shared
                    .checkpoints
                    .lock()
                    .expect("checkpoints lock")
                    .compare(peer, &theirs);
                for mismatch in found {
                    tracing::error!(
                        index = mismatch.index,
                        peer,
                        ours = %crate::policy::module::hex(&mismatch.ours),
                        theirs = %crate::policy::module::hex(&mismatch.theirs),
                        "DETERMINISM GUARD: state digest differs from a peer's at the same log \
                         index; a replica diverged"
                    );
                }
            }
        }
    }

    /// Snapshot cadence by cost (openraft's own policy is off): every `SNAPSHOT_POLL_MS`,
    /// asks for a snapshot once the entries applied since the last one reach
    /// `snapshot_due_after(floor, records)`. A small state still snapshots (and purges its log)
    /// every `floor` entries; a large one only once the log has grown in proportion to it.
    pub async fn run_snapshot_scheduler(self: Arc<Node>, floor: u64) {
        let mut poll = tokio::time::interval(Duration::from_millis(SNAPSHOT_POLL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The applied index of the last request: a build in progress is not asked for again.
        let mut requested_at = 0;
        loop {
            poll.tick().await;
            let snapshot_at = self
                .raft
                .metrics()
                .borrow_watched()
                .snapshot
                .map_or(0, |log_id| log_id.index);
            let (applied, records) = self.shared.read(|s| (s.applied_index(), s.record_count()));
            let since = applied.saturating_sub(snapshot_at.max(requested_at));
            if since < snapshot_due_after(floor, records as u64) {
                continue;
            }
            requested_at = applied;
            tracing::debug!(applied, snapshot_at, records, "snapshot due");
            if self.raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }

    /// Starts an election (with a pre-vote) as soon as the leader's lease has run out on this
    /// follower, instead of waiting for openraft's own timer. openraft starts one only at
    /// lease (`election_timeout_max`) + a random election timeout after the last contact; but
    /// voters refuse a candidate only until the lease ends, so after a leader crash that
    /// second wait was pure delay (fail-over ≈ min + max timeout). A node nudges
    /// `ELECTION_NUDGE_STAGGER_MS × (1 + id mod 4)` after the lease, so that the two survivors
    /// of a 3-node cluster do not split the vote; a node whose log is behind loses the pre-vote and
    /// changes no term, and the next one wins. openraft refuses the nudge while its own lease
    /// view says the leader is alive, so a nudge never disturbs a live leader.
    pub async fn run_election_nudger(self: Arc<Node>, lease_ms: u64, retry_ms: u64) {
        let after = Duration::from_millis(lease_ms + ELECTION_NUDGE_STAGGER_MS * (1 + self.id % 4));
        let mut poll = tokio::time::interval(Duration::from_millis(ELECTION_NUDGE_POLL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            poll.tick().await;
            let silent = self
                .leader_contact
                .lock()
                .expect("leader contact lock")
                .is_some_and(|at| at.elapsed() > after);
            if !silent || self.leader_term().is_some() {
                continue;
            }
            tracing::info!(
                silent_ms = after.as_millis() as u64,
                "no word from the leader for its lease; starting a pre-vote"
            );
            if self.raft.trigger().elect(true).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        }
    }

    /// The leader's heartbeat into the state machine: proposes a `Tick` when a deadline is due,
    /// keepalives are pending, or (while sessions exist) the idle interval has passed. One Tick
    /// at a time; the keepalives that arrive meanwhile all ride the next one. S3 (64 keepalive
    /// streams, 3 nodes on 2 cores) is CPU-bound: 1, 2 or 4 Ticks in flight gave the same
    /// keepalives/s (14–17k/s), and 4 proposed 2.6 times as many Tick entries.
    pub async fn run_ticker(self: Arc<Node>) {
        let mut interval = tokio::time::interval(Duration::from_millis(TICK_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = tokio::time::Instant::now();
        loop {
            // The interval drives deadlines and idle ticks; a keepalive wakes the ticker at
            // once (ticks then follow each other as fast as they commit).
            tokio::select! {
                biased;
                _ = interval.tick() => {}
                () = self.renewals.arrived() => {}
            }
            let Some(term) = self.leader_term() else {
                // Keepalives that joined just before this node lost leadership.
                if !self.renewals.is_empty() {
                    self.renewals.take().finish(Err(self.not_leader()));
                }
                continue;
            };
            if self.renewals.is_empty() {
                let now_ms = self.cluster_now_ms(term);
                let (due, has_sessions) = self.shared.read(|s| {
                    (
                        s.next_deadline_ms().is_some_and(|d| d <= now_ms),
                        s.session_count() > 0,
                    )
                });
                let idle_due = has_sessions
                    && last_tick.elapsed() >= Duration::from_millis(TICK_IDLE_INTERVAL_MS);
                if !due && !idle_due {
                    continue;
                }
            }
            last_tick = tokio::time::Instant::now();
            let round = self.renewals.take();
            let result = self
                .propose(Command::Tick {
                    renewed: round.sessions.clone(),
                })
                .await
                .map(|_| ());
            if let Err(e) = &result {
                tracing::debug!(error = %e, "tick not committed; the keepalives it carried fail");
            }
            round.finish(result);
        }
    }
}

/// Entries after which a snapshot is due, for a state of `records` records.
fn snapshot_due_after(floor: u64, records: u64) -> u64 {
    floor.max(records / SNAPSHOT_RECORDS_PER_LOG_ENTRY)
}
