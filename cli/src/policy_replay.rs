//! `holdfast policy replay FILE.wasm --history H [--config C] [--prefix P]`: what would this
//! policy have decided on traffic the cluster really served?
//!
//! Two copies of the history's backup run every recorded entry through `core::apply` and the
//! server's policy host: the first as recorded (its own bindings — apply is deterministic, so
//! this is what the cluster decided), the second with FILE.wasm deployed and bound, enforcing,
//! at P (`core::apply_between`, before the first entry). Per entry it compares, for locks under
//! P: who was granted (and with what lease), denials with their reasons, and lock-delays set.
//! It reports each difference (the first ones in full) and, per top-level prefix, wait times
//! from queueing to grant before and after.
//!
//! The clients' requests are replayed as recorded, whatever the candidate answered: after the
//! first different decision the two histories drift (a recorded release may name a hold the
//! candidate never granted; such commands are counted, not hidden). The numbers are the
//! candidate's decisions on the recorded demand, not a simulation of clients reacting to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use holdfast_core::{Applied, BindMode, Command, Entry, Event, Outcome, Rejection, State};
use holdfast_server::policy::ApplyPolicies;

/// The name the candidate is deployed under in the replay's copy of the state.
const CANDIDATE_NAME: &str = "replay-candidate";
/// Differences printed in full; the rest are counted.
const DIFFERENCES_SHOWN: usize = 20;

/// One run over the history.
struct Run {
    state: State,
    policies: ApplyPolicies,
    /// When each (lock, session) started waiting.
    queued_at: BTreeMap<(String, u64), u64>,
    /// Wait times (ms) by group (top-level prefix).
    waits: BTreeMap<String, Vec<u64>>,
    grants: u64,
    denials: u64,
    faults: u64,
    /// Commands refused for another reason than a policy denial (drift after a difference).
    refused: u64,
}

/// The decisions of one entry for the locks under the prefix, comparable between runs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decisions {
    /// (lock, session, lease ms)
    grants: BTreeSet<(String, u64, u64)>,
    denial: Option<String>,
    /// (lock, delayed until ms)
    lock_delays: BTreeSet<(String, u64)>,
}

impl Decisions {
    fn render(&self) -> String {
        let mut parts: Vec<String> = self
            .grants
            .iter()
            .map(|(lock, session, lease)| match lease {
                0 => format!("{lock} granted to session {session}"),
                lease => format!("{lock} granted to session {session} (lease {lease} ms)"),
            })
            .collect();
        if let Some(reason) = &self.denial {
            parts.push(format!("denied: {reason}"));
        }
        parts.extend(
            self.lock_delays
                .iter()
                .map(|(lock, until)| format!("{lock} delayed until {until} ms")),
        );
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

impl Run {
    fn new(state: State) -> anyhow::Result<Run> {
        Ok(Run {
            state,
            policies: ApplyPolicies::new()?,
            queued_at: BTreeMap::new(),
            waits: BTreeMap::new(),
            grants: 0,
            denials: 0,
            faults: 0,
            refused: 0,
        })
    }

    fn apply(&mut self, entry: &Entry, prefix: &str) -> Decisions {
        let Applied { outcome, events } =
            holdfast_core::apply(&mut self.state, entry, &mut self.policies.for_entry());
        let now = self.state.now_ms();
        let mut decisions = Decisions::default();
        let mut touched = BTreeSet::new();
        for event in &events {
            match event {
                Event::Queued {
                    name, session_id, ..
                } if name.starts_with(prefix) => {
                    self.queued_at.insert((name.clone(), *session_id), now);
                }
                Event::Acquired {
                    name,
                    session_id,
                    lease_ms,
                    ..
                } if name.starts_with(prefix) => {
                    let since = self
                        .queued_at
                        .remove(&(name.clone(), *session_id))
                        .unwrap_or(now);
                    self.waits
                        .entry(group(name))
                        .or_default()
                        .push(now.saturating_sub(since));
                    self.grants += 1;
                    decisions
                        .grants
                        .insert((name.clone(), *session_id, *lease_ms));
                }
                Event::LeftQueue {
                    name, session_id, ..
                } => {
                    self.queued_at.remove(&(name.clone(), *session_id));
                }
                Event::Released { name, .. } if name.starts_with(prefix) => {
                    touched.insert(name.clone());
                }
                Event::PolicyFault { name, .. } if name.starts_with(prefix) => self.faults += 1,
                _ => {}
            }
        }
        for name in touched {
            if let Some(until) = self
                .state
                .lock(&name)
                .and_then(|lock| lock.delayed_until_ms)
            {
                decisions.lock_delays.insert((name, until));
            }
        }
        let under_prefix = match &entry.command {
            Command::Acquire(request) => request.name.starts_with(prefix),
            Command::Release { name, .. } | Command::CancelWait { name, .. } => {
                name.starts_with(prefix)
            }
            _ => false,
        };
        match outcome {
            Outcome::Rejected(Rejection::PolicyDenied { reason, .. }) if under_prefix => {
                self.denials += 1;
                decisions.denial = Some(reason);
            }
            Outcome::Rejected(Rejection::WouldBlock { .. }) => {}
            Outcome::Rejected(_) if under_prefix => self.refused += 1,
            _ => {}
        }
        decisions
    }
}

/// The top-level prefix a lock's wait times are reported under: up to its first `/`.
fn group(name: &str) -> String {
    match name.find('/') {
        Some(end) => name[..=end].to_owned(),
        None => name.to_owned(),
    }
}

/// p50/p90/p99/max of `values` (sorted here), as text.
fn percentiles(values: &mut [u64]) -> String {
    if values.is_empty() {
        return "no grants".to_owned();
    }
    values.sort_unstable();
    let at = |q: usize| values[(values.len() - 1) * q / 100];
    format!(
        "n={} p50={} p90={} p99={} max={} ms",
        values.len(),
        at(50),
        at(90),
        at(99),
        values[values.len() - 1]
    )
}

/// One entry the two runs decided differently.
struct Difference {
    index: u64,
    now_ms: u64,
    command: String,
    recorded: Decisions,
    candidate: Decisions,
}

/// What a replay found.
struct Report {
    entries: usize,
    snapshot_index: u64,
    differences: Vec<Difference>,
    recorded: Run,
    candidate: Run,
}

/// Replays `history` as recorded and with `wasm` bound, enforcing, at `prefix`.
fn replay(
    wasm: Vec<u8>,
    history: crate::history::History,
    config: Vec<u8>,
    prefix: &str,
) -> anyhow::Result<Report> {
    let mut recorded = Run::new(history.state.clone())?;
    let mut candidate = Run::new(history.state)?;
    for command in [
        Command::DeployPolicy {
            name: CANDIDATE_NAME.to_owned(),
            wasm,
        },
        Command::BindPolicy {
            prefix: prefix.to_owned(),
            policy: CANDIDATE_NAME.to_owned(),
            version: 0,
            config,
            mode: BindMode::Enforce,
        },
    ] {
        let applied = holdfast_core::apply_between(
            &mut candidate.state,
            command,
            &mut candidate.policies.for_entry(),
        );
        if let Outcome::Rejected(rejection) = applied.outcome {
            bail!("the candidate was refused: {rejection}");
        }
    }
    let mut differences = Vec::new();
    for entry in &history.entries {
        let before = recorded.apply(entry, prefix);
        let after = candidate.apply(entry, prefix);
        if before != after {
            differences.push(Difference {
                index: entry.log_index,
                now_ms: entry.now_ms,
                command: summary(&entry.command),
                recorded: before,
                candidate: after,
            });
        }
    }
    Ok(Report {
        entries: history.entries.len(),
        snapshot_index: history.snapshot_index,
        differences,
        recorded,
        candidate,
    })
}

pub fn run(
    wasm_path: &Path,
    history_dir: &Path,
    config: Option<&Path>,
    prefix: &str,
) -> anyhow::Result<ExitCode> {
    let wasm =
        std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let config = crate::commands::read_config(config)?;
    let history = crate::history::load(history_dir)?;
    let mut report = replay(wasm, history, config, prefix)?;
    println!(
        "replayed {} entries ({}..={}) after the backup at index {}, candidate bound at {prefix:?}",
        report.entries,
        report.snapshot_index + 1,
        report.snapshot_index + report.entries as u64,
        report.snapshot_index
    );
    for difference in report.differences.iter().take(DIFFERENCES_SHOWN) {
        println!(
            "entry {} at {} ms: {}\n  recorded:  {}\n  candidate: {}",
            difference.index,
            difference.now_ms,
            difference.command,
            difference.recorded.render(),
            difference.candidate.render()
        );
    }
    if report.differences.len() > DIFFERENCES_SHOWN {
        println!(
            "... and {} more",
            report.differences.len() - DIFFERENCES_SHOWN
        );
    }
    println!(
        "{} of {} entries decided differently under {prefix:?}",
        report.differences.len(),
        report.entries
    );
    for (label, run) in [
        ("recorded", &report.recorded),
        ("candidate", &report.candidate),
    ] {
        println!(
            "{label:<9}  grants {}  denials {}  policy faults {}  refused after drift {}",
            run.grants, run.denials, run.faults, run.refused
        );
    }
    let groups: BTreeSet<String> = report
        .recorded
        .waits
        .keys()
        .chain(report.candidate.waits.keys())
        .cloned()
        .collect();
    for group in groups {
        let mut before = report.recorded.waits.remove(&group).unwrap_or_default();
        let mut after = report.candidate.waits.remove(&group).unwrap_or_default();
        println!("wait for {group:?}");
        println!("  recorded:  {}", percentiles(&mut before));
        println!("  candidate: {}", percentiles(&mut after));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for a command.
fn summary(command: &Command) -> String {
    match command {
        Command::Acquire(request) => format!(
            "session {} acquires {} ({:?}, wait {} ms)",
            request.session_id, request.name, request.mode, request.wait_timeout_ms
        ),
        Command::Release {
            session_id, name, ..
        } => format!("session {session_id} releases {name}"),
        Command::CloseSession { session_id } => format!("session {session_id} closes"),
        Command::Tick { renewed } => format!("tick ({} renewals)", renewed.len()),
        Command::CancelWait { session_id, name } => {
            format!("session {session_id} stops waiting for {name}")
        }
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use holdfast_core::{AcquireRequest, Command, Entry, Mode, State};
    use holdfast_server::policy::ApplyPolicies;

    use super::replay;
    use crate::history::History;

    /// The example module `name`, built by scripts/build-policies (which scripts/test runs
    /// before the unit tests).
    fn example(name: &str) -> Vec<u8> {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || std::path::PathBuf::from("target"),
            std::path::PathBuf::from,
        );
        let path = target.join(format!("wasm32v1-none/release/holdfast_policy_{name}.wasm"));
        std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; run scripts/build-policies first",
                path.display()
            )
        })
    }

    /// A history in memory: a state at index 1, then a session opened (id 2), a batch lock
    /// taken, and a tick after the session's TTL that expires it.
    fn history() -> History {
        let mut state = State::default();
        ApplyPolicies::new()
            .unwrap()
            .apply_next(&mut state, 1_000, Command::Noop);
        let entries = vec![
            Entry {
                log_index: 2,
                now_ms: 1_000,
                command: Command::OpenSession {
                    ttl_ms: 5_000,
                    principal: "batch".to_owned(),
                    labels: BTreeMap::new(),
                },
            },
            Entry {
                log_index: 3,
                now_ms: 1_100,
                command: Command::Acquire(AcquireRequest {
                    session_id: 2,
                    request_id: 1,
                    name: "batch/nightly".to_owned(),
                    mode: Mode::Exclusive,
                    max_holders: 0,
                    wait_timeout_ms: 0,
                    priority: 0,
                    value: Vec::new(),
                }),
            },
            Entry {
                log_index: 4,
                now_ms: 20_000,
                command: Command::Tick {
                    renewed: Vec::new(),
                },
            },
        ];
        History {
            snapshot_index: 1,
            state,
            entries,
        }
    }

    #[test]
    fn a_candidate_with_leases_and_lock_delays_is_told_apart_entry_by_entry() {
        let config = b"lease_ms.batch/ = 30000\nlock_delay_ms.batch/ = 5000\n".to_vec();
        let report = replay(example("lease_rules"), history(), config, "batch/").unwrap();
        let found: Vec<(u64, String, String)> = report
            .differences
            .iter()
            .map(|d| (d.index, d.recorded.render(), d.candidate.render()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    3,
                    "batch/nightly granted to session 2".to_owned(),
                    "batch/nightly granted to session 2 (lease 30000 ms)".to_owned()
                ),
                (
                    4,
                    "nothing".to_owned(),
                    "batch/nightly delayed until 25000 ms".to_owned()
                ),
            ]
        );
        assert_eq!((report.recorded.grants, report.candidate.grants), (1, 1));

        // The recorded policy against itself: nothing differs.
        let same = replay(example("fifo"), history(), Vec::new(), "batch/").unwrap();
        assert!(same.differences.is_empty());
    }
}
