//! Data-driven tests of the state machine. Most tests are a script of commands, one log entry
//! per line, and the expected rendering of what `apply` returned, checked by [`check`]. After
//! every entry the harness also runs `check_invariants()` and a snapshot round trip.
//!
//! Script syntax (one entry per line; `#` starts a comment; log indexes count from 1):
//!
//! ```text
//! @5000                       optional prefix on any line: cluster time of this and later entries
//! open [ttl=N] [principal=P] [k:v ...]       default ttl=10000
//! close S
//! acquire S NAME [shared] [max=N] [wait=N] [req=N] [prio=N]    default exclusive try-lock
//! release S NAME TOKEN [req=N]
//! cancel S NAME
//! tick [S ...]                (sessions renewed)
//! noop
//! deploy NAME [module=M]      a minimal ABI-v1 module whose metadata name is M (default NAME)
//! bind PREFIX POLICY [v=N] [config=TEXT] [shadow]     PREFIX "-" = ""
//! unbind PREFIX [shadow]
//! ?lock NAME  ?session S  ?token NAME TOKEN  ?next  ?faults  ?bindings  ?policies
//!                             queries: rendered, not applied
//! ```

mod bindings;
mod determinism;
mod limits;
mod locks;
mod policies;
mod sessions;
mod snapshot;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{
    AcquireRequest, Applied, BindMode, BoundModule, BuiltinFifo, Command, Entry, Event, LockView,
    Mode, Outcome, PolicyHost, PolicyRuntime, State, apply,
};

/// Runs `script` with the built-in FIFO policy and compares the rendering with `expect`.
pub(crate) fn check(script: &str, expect: &str) {
    check_with(&mut BuiltinFifo, script, expect);
}

/// Runs `script` with `policy` and compares the rendering with `expect` (whitespace at line
/// ends and blank lines ignored).
pub(crate) fn check_with(policy: &mut dyn PolicyRuntime, script: &str, expect: &str) {
    assert_text(&run(policy, script), expect);
}

/// Runs `script` and returns its rendering.
pub(crate) fn run(policy: &mut dyn PolicyRuntime, script: &str) -> String {
    run_hosted(&mut One(policy), script)
}

/// Runs `script` with a policy host and returns its rendering.
pub(crate) fn run_hosted(host: &mut dyn PolicyHost, script: &str) -> String {
    let mut harness = Harness::new(host);
    for line in script.lines() {
        harness.line(line);
    }
    harness.out
}

/// One runtime decides for every lock, bound or not.
struct One<'a>(&'a mut dyn PolicyRuntime);

impl PolicyHost for One<'_> {
    fn runtime(&mut self, _module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime {
        self.0
    }
}

/// A host that runs native policies by deployed policy name, the built-in FIFO where nothing
/// is bound, and refuses to prepare modules whose metadata name is `unpreparable`.
#[derive(Default)]
pub(crate) struct Routed {
    pub(crate) by_policy: BTreeMap<String, Box<dyn PolicyRuntime>>,
    builtin: BuiltinFifo,
}

impl PolicyHost for Routed {
    fn prepare(&mut self, _sha256: &[u8; 32], wasm: &[u8]) -> Result<(), String> {
        let unpreparable = b"name=unpreparable";
        if wasm.windows(unpreparable.len()).any(|w| w == unpreparable) {
            return Err("the engine refused it".to_string());
        }
        Ok(())
    }

    fn runtime(&mut self, module: Option<&BoundModule<'_>>) -> &mut dyn PolicyRuntime {
        match module {
            None => &mut self.builtin,
            Some(module) => self
                .by_policy
                .get_mut(module.policy)
                .unwrap_or_else(|| panic!("no native policy for {}", module.policy))
                .as_mut(),
        }
    }
}

/// A minimal module that passes the ABI v1 checks, with metadata name `name` (its hooks are
/// never run: test hosts answer natively).
pub(crate) fn test_module(name: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "holdfast_abi_v1"))
  (func (export "holdfast_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "holdfast_admit") (param i32 i32) (result i64) (i64.const 0))
  (@custom "holdfast:policy-abi-version" "1")
  (@custom "holdfast:policy-meta" "abi=1\nname={name}\nversion=1.0.0\nhooks=admit\n"))"#
    );
    wat::parse_str(&text).expect("test module WAT")
}

pub(crate) fn assert_text(actual: &str, expect: &str) {
    if normalize(actual) != normalize(expect) {
        panic!(
            "rendering differs.\n--- expected ---\n{}\n--- actual ---\n{}",
            normalize(expect),
            normalize(actual)
        );
    }
}

fn normalize(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("\n")
}

/// Applies entries to one state, checking invariants and snapshots after each.
pub(crate) struct Harness<'p> {
    pub(crate) state: State,
    host: &'p mut dyn PolicyHost,
    pub(crate) now_ms: u64,
    pub(crate) out: String,
}

impl<'p> Harness<'p> {
    pub(crate) fn new(host: &'p mut dyn PolicyHost) -> Harness<'p> {
        Harness {
            state: State::default(),
            host,
            now_ms: 0,
            out: String::new(),
        }
    }

    /// Applies one command as the next log entry, renders the result into `out`.
    pub(crate) fn apply(&mut self, command: Command) -> Applied {
        let log_index = self.state.applied_index() + 1;
        let entry = Entry {
            log_index,
            now_ms: self.now_ms,
            command,
        };
        let applied = apply(&mut self.state, &entry, self.host);
        if let Err(broken) = self.state.check_invariants() {
            panic!(
                "invariant broken after entry {log_index}: {broken}\n{:#?}",
                self.state
            );
        }
        // Round-trip the snapshot after every entry of a short script; after every 64th in the
        // long ones (the limit tests build a thousand waiters or holds).
        if log_index <= 256 || log_index.is_multiple_of(64) {
            let bytes = self.state.to_snapshot_bytes();
            let restored = State::from_snapshot_bytes(&bytes).expect("snapshot decodes");
            assert_eq!(restored, self.state);
            assert_eq!(restored.to_snapshot_bytes(), bytes);
            assert_eq!(self.state.digest(), self.state.digest_from_scratch());
            assert_eq!(restored.digest(), self.state.digest());
        }
        writeln!(
            self.out,
            "#{log_index} => {}",
            render_outcome(&applied.outcome)
        )
        .unwrap();
        for event in &applied.events {
            writeln!(self.out, "   + {}", render_event(event)).unwrap();
        }
        applied
    }

    pub(crate) fn line(&mut self, line: &str) {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if let Some(time) = words.first().and_then(|word| word.strip_prefix('@')) {
            self.now_ms = time.parse().expect("@time");
            words.remove(0);
        }
        let Some((&verb, args)) = words.split_first() else {
            return;
        };
        if let Some(query) = verb.strip_prefix('?') {
            let rendered = self.query(query, args);
            writeln!(
                self.out,
                "?{} => {rendered}",
                words.join(" ").trim_start_matches('?')
            )
            .unwrap();
            return;
        }
        let command = parse_command(verb, args);
        self.apply(command);
    }

    fn query(&self, query: &str, args: &[&str]) -> String {
        match query {
            "lock" => self
                .state
                .lock(args[0])
                .map_or("none".to_string(), |lock| render_lock(&lock)),
            "session" => match self.state.session(number(args[0])) {
                None => "none".to_string(),
                Some(session) => format!(
                    "expires={} holds={:?} waiting={:?}",
                    session.expires_at_ms, session.holds, session.waiting
                ),
            },
            "token" => format!("{:?}", self.state.check_token(args[0], number(args[1]))),
            "next" => format!("{:?}", self.state.next_deadline_ms()),
            "faults" => format!("{}", self.state.policy_fault_count()),
            "bindings" => {
                let bindings: Vec<String> = self
                    .state
                    .bindings()
                    .iter()
                    .map(|b| {
                        let faults: Vec<String> =
                            b.faults.iter().map(|(h, n)| format!("{h}:{n}")).collect();
                        format!(
                            "{:?} {:?} {}@{} config={:?} at={} faults=[{}] disagree={}/{}",
                            b.prefix,
                            b.mode,
                            b.policy,
                            b.version,
                            String::from_utf8_lossy(&b.config),
                            b.bound_at,
                            faults.join(","),
                            b.disagreements,
                            b.compared
                        )
                    })
                    .collect();
                bindings.join("; ")
            }
            "policies" => {
                let policies: Vec<String> = self
                    .state
                    .policies()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}@{} at={} meta={}",
                            p.name, p.version, p.deployed_at, p.meta_name
                        )
                    })
                    .collect();
                policies.join("; ")
            }
            other => panic!("unknown query ?{other}"),
        }
    }
}

fn number(word: &str) -> u64 {
    word.parse()
        .unwrap_or_else(|_| panic!("expected a number, got {word:?}"))
}

fn parse_command(verb: &str, args: &[&str]) -> Command {
    let mut positional = Vec::new();
    let mut options: BTreeMap<&str, &str> = BTreeMap::new();
    for arg in args {
        match arg.split_once('=') {
            Some((key, value)) => {
                options.insert(key, value);
            }
            None => positional.push(*arg),
        }
    }
    let option = |key: &str, default: u64| options.get(key).map_or(default, |value| number(value));
    match verb {
        "noop" => Command::Noop,
        "open" => Command::OpenSession {
            ttl_ms: option("ttl", 10_000),
            principal: options.get("principal").unwrap_or(&"p").to_string(),
            labels: positional
                .iter()
                .map(|label| {
                    let (key, value) = label.split_once(':').expect("label k:v");
                    (key.to_string(), value.to_string())
                })
                .collect(),
        },
        "close" => Command::CloseSession {
            session_id: number(positional[0]),
        },
        "tick" => Command::Tick {
            renewed: positional.iter().map(|id| number(id)).collect(),
        },
        "acquire" => Command::Acquire(AcquireRequest {
            session_id: number(positional[0]),
            request_id: option("req", 0),
            name: positional[1].to_string(),
            mode: if positional.contains(&"shared") {
                Mode::Shared
            } else {
                Mode::Exclusive
            },
            max_holders: u32::try_from(option("max", 0)).unwrap(),
            wait_timeout_ms: option("wait", 0),
            priority: i32::try_from(option("prio", 0)).unwrap(),
            value: options
                .get("value")
                .map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
        }),
        "release" => Command::Release {
            session_id: number(positional[0]),
            request_id: option("req", 0),
            name: positional[1].to_string(),
            token: number(positional[2]),
        },
        "proclaim" => Command::Proclaim {
            session_id: number(positional[0]),
            name: positional[1].to_string(),
            token: number(positional[2]),
            value: positional[3].as_bytes().to_vec(),
        },
        "cancel" => Command::CancelWait {
            session_id: number(positional[0]),
            name: positional[1].to_string(),
        },
        "deploy" => Command::DeployPolicy {
            name: positional[0].to_string(),
            wasm: test_module(options.get("module").unwrap_or(&positional[0])),
        },
        "bind" => Command::BindPolicy {
            prefix: prefix_arg(positional[0]),
            policy: positional[1].to_string(),
            version: option("v", 0),
            config: options
                .get("config")
                .map_or_else(Vec::new, |c| c.as_bytes().to_vec()),
            mode: bind_mode(&positional),
        },
        "unbind" => Command::Unbind {
            prefix: prefix_arg(positional[0]),
            mode: bind_mode(&positional),
        },
        "revoke" => Command::Revoke {
            name: positional[0].to_string(),
            token: positional[1].parse().expect("revoke NAME TOKEN"),
        },
        other => panic!("unknown command {other:?}"),
    }
}

fn prefix_arg(word: &str) -> String {
    if word == "-" {
        String::new()
    } else {
        word.to_string()
    }
}

fn bind_mode(positional: &[&str]) -> BindMode {
    if positional.contains(&"shadow") {
        BindMode::Shadow
    } else {
        BindMode::Enforce
    }
}

fn mode_letter(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "x",
        Mode::Shared => "s",
    }
}

pub(crate) fn render_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::None => "ok".to_string(),
        Outcome::SessionOpened { session_id, ttl_ms } => {
            format!("opened s{session_id} ttl={ttl_ms}")
        }
        Outcome::SessionClosed { session_id } => format!("closed s{session_id}"),
        Outcome::Acquired {
            token,
            lease_ms,
            reentrant,
        } => {
            let lease = if *lease_ms > 0 {
                format!(" lease={lease_ms}")
            } else {
                String::new()
            };
            let reentrant = if *reentrant { " reentrant" } else { "" };
            format!("acquired t{token}{lease}{reentrant}")
        }
        Outcome::Queued { position } => format!("queued pos={position}"),
        Outcome::Released { token, released_at } => format!("released t{token} @{released_at}"),
        Outcome::WaitCancelled => "wait-cancelled".to_string(),
        Outcome::Proclaimed { token } => format!("proclaimed t{token}"),
        Outcome::PolicyDeployed {
            name,
            version,
            created,
            ..
        } => format!("deployed {name}@{version} created={created}"),
        Outcome::PolicyBound {
            prefix,
            policy,
            version,
            mode,
        } => format!("bound {prefix:?} {policy}@{version} {mode:?}"),
        Outcome::PolicyUnbound { prefix, mode } => format!("unbound {prefix:?} {mode:?}"),
        Outcome::Rejected(rejection) => format!("rejected {rejection:?}"),
    }
}

pub(crate) fn render_event(event: &Event) -> String {
    match event {
        Event::SessionOpened { session_id, .. } => format!("session-opened s{session_id}"),
        Event::SessionClosed { session_id, .. } => format!("session-closed s{session_id}"),
        Event::SessionExpired { session_id, .. } => format!("session-expired s{session_id}"),
        Event::Acquired {
            name,
            session_id,
            token,
            mode,
            lease_ms,
            value,
            ..
        } => {
            let lease = if *lease_ms > 0 {
                format!(" lease={lease_ms}")
            } else {
                String::new()
            };
            let value = if value.is_empty() {
                String::new()
            } else {
                format!(" value={}", String::from_utf8_lossy(value))
            };
            format!(
                "acquired {name} s{session_id} t{token} {}{lease}{value}",
                mode_letter(*mode)
            )
        }
        Event::Proclaimed {
            name,
            session_id,
            token,
            value,
            ..
        } => format!(
            "proclaimed {name} s{session_id} t{token} value={}",
            String::from_utf8_lossy(value)
        ),
        Event::Released {
            name,
            session_id,
            token,
            reason,
            ..
        } => {
            format!("released {name} s{session_id} t{token} {reason:?}")
        }
        Event::Queued {
            name,
            session_id,
            position,
            ..
        } => format!("queued {name} s{session_id} pos={position}"),
        Event::LeftQueue {
            name,
            session_id,
            reason,
            ..
        } => format!("left {name} s{session_id} {reason:?}"),
        Event::PolicyDeployed { name, version } => format!("policy-deployed {name}@{version}"),
        Event::PolicyBound {
            prefix,
            policy,
            version,
            mode,
        } => format!("policy-bound {prefix:?} {policy}@{version} {mode:?}"),
        Event::PolicyUnbound { prefix, mode } => format!("policy-unbound {prefix:?} {mode:?}"),
        Event::PolicyFault {
            name,
            prefix,
            policy,
            version,
            mode,
            hook,
        } => format!("policy-fault {name} {prefix:?} {policy}@{version} {mode:?} {hook}"),
        Event::PolicyDisagreement {
            name,
            prefix,
            policy,
            version,
            hook,
        } => format!("policy-disagreement {name} {prefix:?} {policy}@{version} {hook}"),
    }
}

fn render_lock(lock: &LockView) -> String {
    let holders: Vec<String> = lock
        .holders
        .iter()
        .map(|holder| {
            let lease = holder
                .lease_expires_at_ms
                .map_or(String::new(), |at| format!(" lease-until={at}"));
            let value = if holder.value.is_empty() {
                String::new()
            } else {
                format!("={}", String::from_utf8_lossy(&holder.value))
            };
            format!("s{}:t{}{value}{lease}", holder.session_id, holder.token)
        })
        .collect();
    let waiters: Vec<String> = lock
        .waiters
        .iter()
        .map(|waiter| {
            format!(
                "{}:s{}:{}",
                waiter.position,
                waiter.session_id,
                mode_letter(waiter.mode)
            )
        })
        .collect();
    let delayed = lock
        .delayed_until_ms
        .map_or(String::new(), |until| format!(" delayed-until={until}"));
    format!(
        "{}/{} holders=[{}] waiters=[{}]{delayed}",
        mode_letter(lock.mode),
        lock.max_holders,
        holders.join(" "),
        waiters.join(" ")
    )
}

/// splitmix64: a tiny seeded PRNG for tests (the crate has no randomness).
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `percent`/100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[self.below(items.len() as u64) as usize]
    }
}
