//! `holdfast policy test FILE.wasm --scenario FILE`: runs a scenario against a policy module
//! locally, with no cluster: the module is deployed and bound at the root of a fresh state
//! through the same `core::apply` every replica runs (so the ABI checks, `init`, the fuel budget
//! and the fallbacks are the real ones), then each scenario line is applied as one log entry and
//! its outcome and events are printed — every decision, with the deny reason when there is one.
//!
//! Scenario syntax, one command per line (`#` starts a comment):
//!
//! ```text
//! config KEY = VALUE            binding config line (all `config` lines come first)
//! open NAME [k=v ...]           open a session called NAME with labels (principal = NAME)
//! acquire NAME LOCK [shared] [wait=MS] [prio=N]    try-lock unless wait= is given
//! release NAME LOCK             release NAME's hold of LOCK
//! close NAME
//! advance MS                    let cluster time pass (an empty tick entry)
//! ... expect WORD               on any line: the outcome must start with WORD
//!                               (acquired, queued, denied, would-block, released, ...)
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use holdfast_core::{
    AcquireRequest, Applied, BindMode, Command, Event, Mode, Outcome, Rejection, State,
};

use holdfast_server::policy::ApplyPolicies;

/// Session TTL of scenario sessions: long enough that `advance` never expires them by accident.
const SCENARIO_TTL_MS: u64 = 3_600_000;

struct Scenario {
    state: State,
    policies: ApplyPolicies,
    now_ms: u64,
    sessions: BTreeMap<String, u64>,
    tokens: BTreeMap<(u64, String), u64>,
    failures: usize,
}

impl Scenario {
    fn apply(&mut self, command: Command) -> Applied {
        self.policies
            .apply_next(&mut self.state, self.now_ms, command)
    }

    fn session(&self, name: &str) -> anyhow::Result<u64> {
        self.sessions
            .get(name)
            .copied()
            .with_context(|| format!("no session called {name:?} (open it first)"))
    }
}

pub fn run(wasm_path: &Path, scenario_path: &Path) -> anyhow::Result<ExitCode> {
    let wasm =
        std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let text = std::fs::read_to_string(scenario_path)
        .with_context(|| format!("reading {}", scenario_path.display()))?;
    let mut scenario = Scenario {
        state: State::default(),
        policies: ApplyPolicies::new()?,
        now_ms: 1_000,
        sessions: BTreeMap::new(),
        tokens: BTreeMap::new(),
        failures: 0,
    };
    let mut config = String::new();
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(entry) = line.strip_prefix("config ") {
            config.push_str(entry.trim());
            config.push('\n');
        } else if !line.is_empty() {
            lines.push((number + 1, line));
        }
    }
    let deployed = scenario.apply(Command::DeployPolicy {
        name: "scenario".to_string(),
        wasm,
    });
    if let Outcome::Rejected(rejection) = &deployed.outcome {
        bail!("the module was refused: {rejection}");
    }
    let bound = scenario.apply(Command::BindPolicy {
        prefix: String::new(),
        policy: "scenario".to_string(),
        version: 0,
        config: config.into_bytes(),
        mode: BindMode::Enforce,
    });
    if let Outcome::Rejected(rejection) = &bound.outcome {
        bail!("the binding was refused: {rejection}");
    }
    println!(
        "module deployed and bound at the root; {} steps",
        lines.len()
    );
    for (number, line) in lines {
        step(&mut scenario, number, line)
            .with_context(|| format!("{}:{number}: {line}", scenario_path.display()))?;
    }
    let faults = scenario.state.policy_fault_count();
    println!(
        "{} expectation(s) failed; {faults} policy fault(s) (fallbacks used)",
        scenario.failures
    );
    Ok(if scenario.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(scenario: &mut Scenario, number: usize, line: &str) -> anyhow::Result<()> {
    let (line, expect) = match line.split_once(" expect ") {
        Some((line, expect)) => (line.trim(), Some(expect.trim())),
        None => (line, None),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let options: BTreeMap<&str, &str> = words
        .iter()
        .filter_map(|word| word.split_once('='))
        .collect();
    let positional: Vec<&str> = words
        .iter()
        .copied()
        .filter(|word| !word.contains('='))
        .collect();
    let arg = |index: usize| {
        positional
            .get(index)
            .copied()
            .with_context(|| format!("missing argument {index}"))
    };
    let number_option = |key: &str| -> anyhow::Result<u64> {
        options.get(key).map_or(Ok(0), |value| {
            value.parse().with_context(|| format!("{key}="))
        })
    };
    let command = match arg(0)? {
        "open" => Command::OpenSession {
            ttl_ms: SCENARIO_TTL_MS,
            principal: arg(1)?.to_string(),
            labels: options
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        },
        "acquire" => Command::Acquire(AcquireRequest {
            session_id: scenario.session(arg(1)?)?,
            request_id: 0,
            name: arg(2)?.to_string(),
            mode: if positional.contains(&"shared") {
                Mode::Shared
            } else {
                Mode::Exclusive
            },
            max_holders: 0,
            wait_timeout_ms: number_option("wait")?,
            priority: options
                .get("prio")
                .map_or(Ok(0), |value| value.parse().context("prio="))?,
            value: Vec::new(),
        }),
        "release" => {
            let session_id = scenario.session(arg(1)?)?;
            let name = arg(2)?.to_string();
            let token = scenario
                .tokens
                .get(&(session_id, name.clone()))
                .copied()
                .with_context(|| format!("{} does not hold {name}", arg(1).unwrap_or("?")))?;
            Command::Release {
                session_id,
                request_id: 0,
                name,
                token,
            }
        }
        "close" => Command::CloseSession {
            session_id: scenario.session(arg(1)?)?,
        },
        "advance" => {
            scenario.now_ms += arg(1)?.parse::<u64>().context("advance MS")?;
            Command::Tick {
                renewed: Vec::new(),
            }
        }
        other => bail!("unknown command {other:?}"),
    };
    let applied = scenario.apply(command);
    if let (Some(name), Outcome::SessionOpened { session_id, .. }) =
        (positional.get(1), &applied.outcome)
    {
        scenario.sessions.insert((*name).to_string(), *session_id);
    }
    let names: BTreeMap<u64, String> = scenario
        .sessions
        .iter()
        .map(|(name, id)| (*id, name.clone()))
        .collect();
    let who = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("s{id}"));
    for event in &applied.events {
        match event {
            Event::Acquired {
                name,
                session_id,
                token,
                ..
            } => {
                scenario.tokens.insert((*session_id, name.clone()), *token);
            }
            Event::Released {
                name, session_id, ..
            } => {
                scenario.tokens.remove(&(*session_id, name.clone()));
            }
            _ => {}
        }
    }
    let outcome = render_outcome(&applied.outcome);
    let verdict = match expect {
        Some(word) if outcome.starts_with(word) => "  ok".to_string(),
        Some(word) => {
            scenario.failures += 1;
            format!("  EXPECTED {word}")
        }
        None => String::new(),
    };
    println!("{number:>4}  {line:<44} => {outcome}{verdict}");
    for event in &applied.events {
        if let Some(text) = render_event(event, &who) {
            println!("{:>50}{text}", "");
        }
    }
    Ok(())
}

fn render_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Acquired {
            token, lease_ms, ..
        } if *lease_ms > 0 => format!("acquired (token {token}, lease {lease_ms} ms)"),
        Outcome::Acquired { token, .. } => format!("acquired (token {token})"),
        Outcome::Queued { position } => format!("queued (position {position})"),
        Outcome::Released { token, .. } => format!("released (token {token})"),
        Outcome::SessionOpened { session_id, .. } => format!("opened (session {session_id})"),
        Outcome::SessionClosed { .. } => "closed".to_string(),
        Outcome::Rejected(Rejection::PolicyDenied { reason, .. }) => format!("denied: {reason}"),
        Outcome::Rejected(Rejection::WouldBlock { .. }) => "would-block".to_string(),
        Outcome::Rejected(rejection) => format!("rejected: {rejection}"),
        Outcome::None => "ok".to_string(),
        other => format!("{other:?}"),
    }
}

fn render_event(event: &Event, who: &dyn Fn(&u64) -> String) -> Option<String> {
    Some(match event {
        Event::Acquired {
            name,
            session_id,
            token,
            lease_ms,
            ..
        } => format!(
            "+ {name} granted to {} (token {token}{})",
            who(session_id),
            if *lease_ms > 0 {
                format!(", lease {lease_ms} ms")
            } else {
                String::new()
            }
        ),
        Event::Released {
            name,
            session_id,
            reason,
            ..
        } => format!("- {name} released by {} ({reason:?})", who(session_id)),
        Event::Queued {
            name,
            session_id,
            position,
            ..
        } => format!("~ {} queued for {name} at {position}", who(session_id)),
        Event::LeftQueue {
            name,
            session_id,
            reason,
            ..
        } => format!(
            "~ {} left the queue of {name} ({reason:?})",
            who(session_id)
        ),
        Event::PolicyFault { name, hook, .. } => {
            format!("! policy fault in {hook} deciding {name}: fallback used")
        }
        _ => return None,
    })
}
