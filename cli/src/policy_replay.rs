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
    fn render(&self, who: &dyn Fn(u64) -> String) -> String {
        let mut parts: Vec<String> = self
            .grants
            .iter()
            .map(|(lock, session, lease)| match lease {
                0 => format!("{lock} granted to {}", who(*session)),
                lease => format!("{lock} granted to {} (lease {lease} ms)", who(*session)),
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

pub fn run(
    wasm_path: &Path,
    history_dir: &Path,
    config: Option<&Path>,
    prefix: &str,
) -> anyhow::Result<ExitCode> {
    let wasm =
        std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let config = match config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    let history = crate::history::load(history_dir)?;
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
    println!(
        "replaying {} entries ({}..={}) after the backup at index {}, candidate bound at {prefix:?}",
        history.entries.len(),
        history.snapshot_index + 1,
        history.snapshot_index + history.entries.len() as u64,
        history.snapshot_index
    );
    let who = |session: u64| format!("session {session}");
    let mut differences = 0usize;
    for entry in &history.entries {
        let before = recorded.apply(entry, prefix);
        let after = candidate.apply(entry, prefix);
        if before == after {
            continue;
        }
        differences += 1;
        if differences <= DIFFERENCES_SHOWN {
            println!(
                "entry {} at {} ms: {}\n  recorded:  {}\n  candidate: {}",
                entry.log_index,
                entry.now_ms,
                summary(&entry.command),
                before.render(&who),
                after.render(&who)
            );
        }
    }
    if differences > DIFFERENCES_SHOWN {
        println!("... and {} more", differences - DIFFERENCES_SHOWN);
    }
    println!(
        "{differences} of {} entries decided differently under {prefix:?}",
        history.entries.len()
    );
    for (label, run) in [("recorded", &recorded), ("candidate", &candidate)] {
        println!(
            "{label:<9}  grants {}  denials {}  policy faults {}  refused after drift {}",
            run.grants, run.denials, run.faults, run.refused
        );
    }
    let groups: BTreeSet<&String> = recorded
        .waits
        .keys()
        .chain(candidate.waits.keys())
        .collect();
    for group in groups {
        let mut before = recorded.waits.get(group).cloned().unwrap_or_default();
        let mut after = candidate.waits.get(group).cloned().unwrap_or_default();
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
