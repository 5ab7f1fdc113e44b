//! Seeded random command streams applied to three replicas. After every entry the three must
//! return equal `Applied` values, hold byte-identical snapshots and pass `check_invariants()`.
//! One replica is rebuilt from a snapshot partway through, as a follower installing a snapshot
//! would be. The policy is a deterministic "chaos" policy: it denies, leases, delays, reorders
//! and answers garbage, as a buggy wasm module might, so the fallbacks are exercised too.
//! Failures print the seed; rerun one with `determinism_for_seed(seed)`.

use std::collections::{BTreeMap, BTreeSet};

use super::SplitMix64;
use crate::{
    AcquireRequest, AdmitDecision, AdmitInput, Applied, BuiltinFifo, Command, ElectDecision,
    ElectInput, Entry, Event, FencingToken, LeaseDecision, LeaveReason, Mode, NextInput, Outcome,
    PolicyRuntime, ReleaseReason, SessionId, State, apply,
};

const ENTRY_COUNT: u64 = 5_000;
const LOCK_NAMES: [&str; 8] = ["a", "b", "c", "d", "queue/1", "queue/2", "rw", "sem"];

/// Stateless: every decision is a hash of its input, so replicas (and a replica restored from
/// a snapshot) decide alike.
struct ChaosPolicy;

fn mix(values: &[u64]) -> u64 {
    let mut random = SplitMix64::new(
        values
            .iter()
            .fold(0x243F_6A88_85A3_08D3, |acc, v| acc.rotate_left(17) ^ v),
    );
    random.next_u64()
}

impl PolicyRuntime for ChaosPolicy {
    fn admit(&mut self, input: &AdmitInput<'_>) -> AdmitDecision {
        if mix(&[input.log_index, input.request.session_id, 1]) % 100 < 4 {
            AdmitDecision::Deny {
                reason: "chaos".repeat(100),
            }
        } else {
            AdmitDecision::Admit
        }
    }

    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        let roll = mix(&[input.log_index, input.waiters.len() as u64, 2]);
        let len = input.waiters.len();
        match roll % 10 {
            0 => vec![len, 0],                     // out of range
            1 => vec![0, 0],                       // duplicate
            2 => (0..len).collect(),               // everyone at once
            3 => Vec::new(),                       // nobody (invalid when the lock is free)
            4 => (0..len).rev().take(1).collect(), // the newest waiter, if it fits
            5 => vec![usize::MAX],                 // nonsense
            _ => BuiltinFifo.choose_next(input),
        }
    }

    fn lease_for(&mut self, input: &AdmitInput<'_>) -> LeaseDecision {
        let roll = mix(&[input.log_index, input.request.session_id, 3]);
        match roll % 20 {
            0..=2 => LeaseDecision {
                lease_ms: 100 + roll % 3_000,
                lock_delay_ms: 0,
            },
            3..=5 => LeaseDecision {
                lease_ms: 0,
                lock_delay_ms: 100 + roll % 2_000,
            },
            6 => LeaseDecision {
                lease_ms: u64::MAX,
                lock_delay_ms: u64::MAX,
            },
            _ => LeaseDecision::default(),
        }
    }

    /// Locks under "queue/" are bound to this policy (entry 2), so they run as elections:
    /// preemptions now and later, re-evaluations, and invalid answers.
    fn elect(&mut self, input: &ElectInput<'_>) -> Option<ElectDecision> {
        let roll = mix(&[input.log_index, input.candidates.len() as u64, 4]);
        let last = input.candidates.len().saturating_sub(1);
        Some(match roll % 8 {
            0 => ElectDecision::Elect {
                winner: input.candidates.len() + 1,
                preempt_grace_ms: 0,
            },
            1 => ElectDecision::KeepIncumbent {
                reevaluate_at_ms: Some(input.now_ms),
            },
            2 => ElectDecision::Elect {
                winner: last,
                preempt_grace_ms: 0,
            },
            3 => ElectDecision::Elect {
                winner: 0,
                preempt_grace_ms: 500 + roll % 2_000,
            },
            4 => ElectDecision::KeepIncumbent {
                reevaluate_at_ms: Some(input.now_ms + 300 + roll % 1_000),
            },
            5 => ElectDecision::KeepIncumbent {
                reevaluate_at_ms: None,
            },
            _ => ElectDecision::Elect {
                winner: 0,
                preempt_grace_ms: 0,
            },
        })
    }
}

/// What the generator remembers to produce plausible (and implausible) commands.
struct Generator {
    random: SplitMix64,
    now_ms: u64,
    sessions: Vec<SessionId>,
    tokens: Vec<FencingToken>,
    /// Current holds as the events told them: (session, lock, token).
    holds: Vec<(SessionId, String, FencingToken)>,
    next_request_id: u64,
    used_request_ids: Vec<u64>,
}

impl Generator {
    fn session(&mut self) -> SessionId {
        if self.sessions.is_empty() || self.random.percent(3) {
            return self.random.below(ENTRY_COUNT + 10);
        }
        let recent = self.sessions.len().saturating_sub(40);
        *self.random.pick(&self.sessions[recent..])
    }

    fn lock_name(&mut self) -> String {
        match self.random.below(100) {
            0 => String::new(),
            1 => "x".repeat(crate::limits::LOCK_NAME_BYTES_MAX + 1),
            _ => self.random.pick(&LOCK_NAMES).to_string(),
        }
    }

    fn request_id(&mut self) -> u64 {
        match self.random.below(10) {
            0..=2 => 0,
            3 if !self.used_request_ids.is_empty() => *self.random.pick(&self.used_request_ids), // retry
            _ => {
                self.next_request_id += 1;
                self.used_request_ids.push(self.next_request_id);
                self.next_request_id
            }
        }
    }

    fn token(&mut self, log_index: u64) -> FencingToken {
        match self.random.below(10) {
            0 => log_index,
            1 => self.random.below(log_index + 1),
            _ if !self.tokens.is_empty() => {
                let recent = self.tokens.len().saturating_sub(30);
                *self.random.pick(&self.tokens[recent..])
            }
            _ => 0,
        }
    }

    fn entry(&mut self, log_index: u64) -> Entry {
        self.now_ms += match self.random.below(100) {
            0..=29 => 0,
            30..=97 => self.random.below(300),
            _ => self.random.below(8_000),
        };
        // Occasionally an entry stamped in the past (e.g. a Raft blank entry with time 0).
        let now_ms = if self.random.percent(3) {
            self.random.below(self.now_ms + 1)
        } else {
            self.now_ms
        };
        let command = match self.random.below(100) {
            0..=9 => self.open_session(),
            10..=12 => Command::CloseSession {
                session_id: self.session(),
            },
            13..=27 => self.tick(),
            28..=64 => Command::Acquire(self.acquire()),
            65..=86 => self.release(log_index),
            87..=92 => Command::CancelWait {
                session_id: self.session(),
                name: self.lock_name(),
            },
            93..=95 => self.proclaim(log_index),
            _ => Command::Noop,
        };
        Entry {
            log_index,
            now_ms,
            command,
        }
    }

    fn proclaim(&mut self, log_index: u64) -> Command {
        let value = self.random.pick(&["a", "bb", ""]).as_bytes().to_vec();
        if !self.holds.is_empty() && self.random.percent(70) {
            let (session_id, name, token) = self.random.pick(&self.holds).clone();
            return Command::Proclaim {
                session_id,
                name,
                token,
                value,
            };
        }
        Command::Proclaim {
            session_id: self.session(),
            name: self.lock_name(),
            token: self.token(log_index),
            value,
        }
    }

    fn release(&mut self, log_index: u64) -> Command {
        // Now and then an administrator's revoke instead, of a live hold or a stale token.
        if self.random.percent(8) {
            if !self.holds.is_empty() && self.random.percent(70) {
                let (_, name, token) = self.random.pick(&self.holds).clone();
                return Command::Revoke { name, token };
            }
            return Command::Revoke {
                name: self.lock_name(),
                token: self.token(log_index),
            };
        }
        let request_id = self.request_id();
        if !self.holds.is_empty() && self.random.percent(60) {
            let (session_id, name, token) = self.random.pick(&self.holds).clone();
            return Command::Release {
                session_id,
                request_id,
                name,
                token,
            };
        }
        Command::Release {
            session_id: self.session(),
            request_id,
            name: self.lock_name(),
            token: self.token(log_index),
        }
    }

    fn open_session(&mut self) -> Command {
        let ttl_ms = match self.random.below(20) {
            0 => 0,
            1 => u64::MAX,
            _ => 2_000 + self.random.below(8_000),
        };
        let principal = self.random.pick(&["alice", "bob", "carol", ""]).to_string();
        let mut labels = std::collections::BTreeMap::new();
        if self.random.percent(30) {
            let zone = self.random.pick(&["eu", "us"]).to_string();
            // A tenant too (no extra draw: the stream stays as it was), for the counters.
            labels.insert("tenant".to_string(), format!("t-{zone}"));
            labels.insert("zone".to_string(), zone);
        }
        Command::OpenSession {
            ttl_ms,
            principal,
            labels,
        }
    }

    fn tick(&mut self) -> Command {
        let renewed = self
            .sessions
            .iter()
            .copied()
            .filter(|_| self.random.percent(75))
            .collect();
        Command::Tick { renewed }
    }

    fn acquire(&mut self) -> AcquireRequest {
        let name = self.lock_name();
        let shared = name == "rw" || name == "sem" || self.random.percent(15);
        AcquireRequest {
            session_id: self.session(),
            request_id: self.request_id(),
            mode: if shared && self.random.percent(80) {
                Mode::Shared
            } else {
                Mode::Exclusive
            },
            max_holders: if name == "sem" {
                3
            } else {
                *self.random.pick(&[0, 0, 0, 2])
            },
            wait_timeout_ms: match self.random.below(10) {
                0..=2 => 0,
                3 => u64::MAX,
                _ => 1 + self.random.below(5_000),
            },
            priority: self.random.below(5) as i32,
            value: self.random.pick(&["", "", "candidate"]).as_bytes().to_vec(),
            name,
        }
    }

    /// Learns session ids and tokens from what the entry produced.
    fn observe(&mut self, applied: &Applied) {
        for event in &applied.events {
            match event {
                Event::SessionOpened { session_id, .. } => self.sessions.push(*session_id),
                Event::SessionClosed { session_id, .. }
                | Event::SessionExpired { session_id, .. } => {
                    self.sessions.retain(|id| id != session_id);
                }
                Event::Acquired {
                    token,
                    session_id,
                    name,
                    ..
                } => {
                    self.tokens.push(*token);
                    self.holds.push((*session_id, name.clone(), *token));
                }
                Event::Released {
                    session_id, name, ..
                } => {
                    self.holds
                        .retain(|(id, held, _)| !(id == session_id && held == name));
                }
                _ => {}
            }
        }
    }
}

/// Rebuilds holders and waiters from the events alone and checks them against the state (the
/// events are complete), and checks fencing tokens the way a client would: per lock, a grant's
/// token is never below an earlier one and never equal to one whose hold already ended.
#[derive(Default)]
struct EventModel {
    holders: BTreeSet<(String, SessionId, FencingToken)>,
    waiters: BTreeSet<(String, SessionId)>,
    /// Per lock: highest token granted, highest token whose hold ended.
    tokens: BTreeMap<String, (FencingToken, FencingToken)>,
}

impl EventModel {
    fn observe(&mut self, applied: &Applied, state: &State) -> Result<(), String> {
        for event in &applied.events {
            match event {
                Event::Acquired {
                    name,
                    session_id,
                    token,
                    ..
                } => {
                    let (granted, ended) = self.tokens.entry(name.clone()).or_default();
                    if *token < *granted || *token <= *ended {
                        return Err(format!(
                            "token {token} on {name} after granted {granted} / ended {ended}"
                        ));
                    }
                    *granted = *token;
                    self.waiters.remove(&(name.clone(), *session_id));
                    self.holders.insert((name.clone(), *session_id, *token));
                }
                Event::Released {
                    name,
                    session_id,
                    token,
                    ..
                } => {
                    if !self.holders.remove(&(name.clone(), *session_id, *token)) {
                        return Err(format!("released a hold never granted: {event:?}"));
                    }
                    let (_, ended) = self.tokens.entry(name.clone()).or_default();
                    *ended = (*ended).max(*token);
                    if state.check_token(name, *token) == Some(*session_id) {
                        return Err(format!("ended token still passes CheckToken: {event:?}"));
                    }
                }
                Event::Queued {
                    name, session_id, ..
                } => {
                    self.waiters.insert((name.clone(), *session_id));
                }
                Event::LeftQueue {
                    name, session_id, ..
                } => {
                    self.waiters.remove(&(name.clone(), *session_id));
                }
                _ => {}
            }
        }
        let mut holders = BTreeSet::new();
        let mut waiters = BTreeSet::new();
        for lock in state.locks("", usize::MAX) {
            for holder in &lock.holders {
                holders.insert((lock.name.clone(), holder.session_id, holder.token));
            }
            for waiter in &lock.waiters {
                waiters.insert((lock.name.clone(), waiter.session_id));
            }
        }
        if holders != self.holders || waiters != self.waiters {
            return Err(
                "holders or waiters rebuilt from the events differ from the state".to_string(),
            );
        }
        Ok(())
    }
}

/// Counts what a run exercised, so the test proves its own coverage.
#[derive(Default, Debug)]
struct Coverage {
    sessions_alive_max: usize,
    acquired: u64,
    queued: u64,
    released: [u64; 6],
    left_queue: [u64; 4],
    sessions_expired: u64,
    rejected: u64,
    reentrant: u64,
    delayed_locks_seen: u64,
    shared_holders_max: usize,
}

impl Coverage {
    fn observe(&mut self, applied: &Applied, state: &State) {
        self.sessions_alive_max = self.sessions_alive_max.max(state.session_count());
        for event in &applied.events {
            match event {
                Event::Acquired { .. } => self.acquired += 1,
                Event::Queued { .. } => self.queued += 1,
                Event::Released { reason, .. } => self.released[release_index(*reason)] += 1,
                Event::LeftQueue { reason, .. } => self.left_queue[leave_index(*reason)] += 1,
                Event::SessionExpired { .. } => self.sessions_expired += 1,
                _ => {}
            }
        }
        match applied.outcome {
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Acquired {
                reentrant: true, ..
            } => self.reentrant += 1,
            _ => {}
        }
        for lock in state.locks("", usize::MAX) {
            self.delayed_locks_seen += u64::from(lock.delayed_until_ms.is_some());
            if lock.mode == Mode::Shared {
                self.shared_holders_max = self.shared_holders_max.max(lock.holders.len());
            }
        }
    }
}

fn release_index(reason: ReleaseReason) -> usize {
    match reason {
        ReleaseReason::Released => 0,
        ReleaseReason::SessionClosed => 1,
        ReleaseReason::SessionExpired => 2,
        ReleaseReason::LeaseExpired => 3,
        ReleaseReason::Preempted => 4,
        ReleaseReason::Revoked => 5,
    }
}

fn leave_index(reason: LeaveReason) -> usize {
    match reason {
        LeaveReason::TimedOut => 0,
        LeaveReason::Cancelled => 1,
        LeaveReason::SessionClosed => 2,
        LeaveReason::SessionExpired => 3,
    }
}

fn determinism_for_seed(seed: u64) -> (Coverage, u64) {
    let mut generator = Generator {
        random: SplitMix64::new(seed),
        now_ms: 0,
        sessions: Vec::new(),
        tokens: Vec::new(),
        holds: Vec::new(),
        next_request_id: 0,
        used_request_ids: Vec::new(),
    };
    let mut replicas = [State::default(), State::default(), State::default()];
    let mut coverage = Coverage::default();
    let mut model = EventModel::default();
    let restore_at = ENTRY_COUNT / 3 + generator.random.below(ENTRY_COUNT / 3);
    // Its own stream, so the commands are the same as before the digest checks existed.
    let mut digest_checks = SplitMix64::new(seed ^ 0x00D1_6E57);
    let mut digests_recomputed = 0;
    let mut frozen: Option<(crate::SnapshotWriter, Vec<u8>)> = None;
    let mut snapshots_written = 0;
    for log_index in 1..=ENTRY_COUNT {
        // The first two entries deploy a module and bind "queue/" to it (the host answers with
        // ChaosPolicy for every binding), so those locks are elections.
        let entry = match log_index {
            1 => Entry {
                log_index,
                now_ms: 0,
                command: Command::DeployPolicy {
                    name: "chaos".to_string(),
                    wasm: super::test_module("chaos"),
                },
            },
            2 => Entry {
                log_index,
                now_ms: 0,
                command: Command::BindPolicy {
                    prefix: "queue/".to_string(),
                    policy: "chaos".to_string(),
                    version: 0,
                    config: Vec::new(),
                    mode: crate::BindMode::Enforce,
                },
            },
            _ => generator.entry(log_index),
        };
        let results: Vec<Applied> = replicas
            .iter_mut()
            .map(|state| apply(state, &entry, &mut ChaosPolicy as &mut dyn PolicyRuntime))
            .collect();
        assert!(
            results[0] == results[1] && results[1] == results[2],
            "seed {seed:#x}: replicas answered differently at entry {log_index}"
        );
        if let Err(broken) = replicas[0].check_invariants() {
            panic!(
                "seed {seed:#x}: invariant broken after entry {log_index} ({entry:?}): {broken}"
            );
        }
        let bytes = replicas[0].to_snapshot_bytes();
        for (replica, state) in replicas.iter().enumerate().skip(1) {
            assert!(
                state.to_snapshot_bytes() == bytes,
                "seed {seed:#x}: replica {replica} diverged at entry {log_index}"
            );
        }
        // Replica 1 writes snapshots a few records per entry while entries keep coming: each
        // must be the bytes of the state when it began.
        match &mut frozen {
            None if digest_checks.below(200) == 0 => {
                let writer = replicas[1].begin_snapshot();
                frozen = Some((writer, replicas[1].to_snapshot_bytes()));
            }
            None => {}
            Some((writer, _)) => {
                let records = 1 + digest_checks.below(4) as usize;
                let written = replicas[1].write_snapshot_chunk(writer, records);
                if digest_checks.below(2) == 0 {
                    writer.absorb();
                }
                if written == Ok(true) {
                    let (writer, expected) = frozen.take().expect("matched Some");
                    snapshots_written += 1;
                    assert!(
                        writer.into_bytes() == expected,
                        "seed {seed:#x}: snapshot written while applying differs (entry {log_index})"
                    );
                }
            }
        }
        let digest = replicas[0].digest();
        assert!(
            replicas.iter().all(|state| state.digest() == digest),
            "seed {seed:#x}: maintained digests differ at entry {log_index}"
        );
        if digest_checks.below(50) == 0 {
            digests_recomputed += 1;
            check_counters_by_scan(&replicas[0], seed, log_index);
            assert!(
                replicas[0].digest_from_scratch() == digest,
                "seed {seed:#x}: maintained digest is not the recomputed one at entry {log_index}"
            );
        }
        if log_index == restore_at {
            replicas[2] = State::from_snapshot_bytes(&bytes).unwrap_or_else(|error| {
                panic!("seed {seed:#x}: snapshot at {log_index} refused: {error}")
            });
            assert!(
                replicas[2].digest() == digest && replicas[2].digest_from_scratch() == digest,
                "seed {seed:#x}: restored digest differs at entry {log_index}"
            );
        }
        if let Err(broken) = model.observe(&results[0], &replicas[0]) {
            panic!("seed {seed:#x}: after entry {log_index} ({entry:?}): {broken}");
        }
        generator.observe(&results[0]);
        coverage.observe(&results[0], &replicas[0]);
    }
    assert!(
        digests_recomputed > 0,
        "seed {seed:#x}: no digest recomputed"
    );
    assert!(
        snapshots_written > 3,
        "seed {seed:#x}: {snapshots_written} snapshots written while applying"
    );
    assert_eq!(
        replicas[0].digest(),
        replicas[0].digest_from_scratch(),
        "seed {seed:#x}: final digest"
    );
    (coverage, replicas[0].policy_fault_count())
}

/// The counters apply keeps, as a policy sees them.
fn counters_kept(state: &State, prefix: &str, session_id: SessionId) -> crate::Counters {
    let (principal, tenant, name) = state.stakes_under(prefix, session_id);
    crate::Counters {
        principal_holds: principal.holds as u32,
        principal_waits: principal.waits as u32,
        tenant: name.to_string(),
        tenant_holds: tenant.holds as u32,
        tenant_waits: tenant.waits as u32,
    }
}

/// The policy counters apply maintains, against the definition: a scan of every session's
/// holds and waits under the prefix, for each counted prefix and every live session.
fn check_counters_by_scan(state: &State, seed: u64, log_index: u64) {
    for prefix in state.counts.keys() {
        for (&session_id, session) in &state.sessions {
            let tenant = session.labels.get("tenant").cloned().unwrap_or_default();
            let mut expected = crate::Counters {
                tenant: tenant.clone(),
                ..crate::Counters::default()
            };
            for other in state.sessions.values() {
                let holds = other.holds.keys().filter(|n| n.starts_with(prefix)).count() as u32;
                let waits = other
                    .waiting
                    .iter()
                    .filter(|n| n.starts_with(prefix))
                    .count() as u32;
                if other.principal == session.principal {
                    expected.principal_holds += holds;
                    expected.principal_waits += waits;
                }
                if !tenant.is_empty() && other.labels.get("tenant") == Some(&tenant) {
                    expected.tenant_holds += holds;
                    expected.tenant_waits += waits;
                }
            }
            assert_eq!(
                counters_kept(state, prefix, session_id),
                expected,
                "seed {seed:#x}: counters of session {session_id} under {prefix:?} at entry {log_index}"
            );
        }
    }
}

#[test]
fn three_replicas_stay_byte_identical() {
    for seed in [1, 0xC0FFEE, 0xDEAD_BEEF, 42, 7_777] {
        let (coverage, policy_faults) = determinism_for_seed(seed);
        let context = format!("seed {seed:#x}: {coverage:?}");
        assert!(coverage.sessions_alive_max >= 16, "{context}");
        assert!(
            coverage.acquired > 200 && coverage.queued > 100 && coverage.rejected > 500,
            "{context}"
        );
        assert!(
            coverage.released.iter().all(|count| *count > 0),
            "every release reason: {context}"
        );
        assert!(
            coverage.left_queue.iter().all(|count| *count > 0),
            "every leave reason: {context}"
        );
        assert!(
            coverage.sessions_expired > 0 && coverage.reentrant > 0,
            "{context}"
        );
        assert!(
            coverage.delayed_locks_seen > 0 && coverage.shared_holders_max >= 2,
            "{context}"
        );
        assert!(policy_faults > 0, "{context}");
    }
}
