//! Tests of the policy host: the example modules (built by `scripts/build-policies`), a
//! differential test against the built-in FIFO through `holdfast_core::apply`, and hostile
//! modules written in WAT that must be rejected at compile or give the documented fallback.

use holdfast_core::VecMap;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use holdfast_core::{
    AcquireRequest, AdmitDecision, AdmitInput, BuiltinFifo, Command, Counters, Entry, Event,
    HolderView, LeaseDecision, Mode, NextInput, PolicyRuntime, SessionId, State, WaiterView, apply,
};
use wasmtime::Engine;

use super::ModuleCache;
use super::engine::{POLICY_LIST_MAX, POLICY_MODULE_BYTES_MAX, policy_engine};
use super::guest::GuestFault;
use super::module::{AbiError, Hook, PolicyError, PolicyModule};
use super::runtime::{POLICY_ERROR_REASON, WasmPolicy};

/// One engine for every test (the pool reserves address space per engine).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| policy_engine().expect("policy engine"))
}

/// Bytes of an example policy module built by `scripts/build-policies`.
fn example_bytes(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/holdfast/target"));
    let path = target
        .join("wasm32v1-none/release")
        .join(format!("holdfast_policy_{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read example policy {}: {error}; run scripts/build-policies first",
            path.display()
        )
    })
}

fn example(name: &str) -> Arc<PolicyModule> {
    Arc::new(PolicyModule::compile(engine(), &example_bytes(name)).expect("example compiles"))
}

fn no_config() -> Arc<[u8]> {
    Arc::from(&b""[..])
}

fn request(session_id: SessionId, name: &str, mode: Mode, priority: i32) -> AcquireRequest {
    AcquireRequest {
        session_id,
        request_id: 1,
        name: name.to_string(),
        mode,
        max_holders: 0,
        wait_timeout_ms: 1_000,
        priority,
        value: Vec::new(),
    }
}

fn waiter(session_id: SessionId, priority: i32, queued_at_ms: u64) -> WaiterView {
    WaiterView {
        session_id,
        mode: Mode::Exclusive,
        priority,
        queued_at_ms,
    }
}

fn holder(session_id: SessionId) -> HolderView {
    HolderView {
        session_id,
        token: 5,
        mode: Mode::Exclusive,
        since_ms: 1,
        lease_expires_at_ms: None,
        value: Vec::new(),
        granted_by: None,
    }
}

#[test]
fn example_modules_compile_with_their_hooks() {
    let expected: [(&str, &[Hook]); 5] = [
        (
            "fifo",
            &[Hook::Init, Hook::Admit, Hook::ChooseNext, Hook::LeaseFor],
        ),
        ("priority", &[Hook::Init, Hook::Admit, Hook::ChooseNext]),
        ("tenant_quota", &[Hook::Init, Hook::Admit]),
        (
            "lease_rules",
            &[Hook::Init, Hook::LeaseFor, Hook::OnSessionExpire],
        ),
        ("election_preference", &[Hook::Init, Hook::Elect]),
    ];
    let mut cache = ModuleCache::new();
    for (name, hooks) in expected {
        let bytes = example_bytes(name);
        let module = cache.get_or_compile(engine(), &bytes).expect("compiles");
        assert_eq!(
            module.hooks().iter().copied().collect::<Vec<_>>(),
            hooks,
            "{name}"
        );
        assert_eq!(
            module.name(),
            format!("holdfast-policy-{}", name.replace('_', "-"))
        );
        // Cached by hash: the same bytes give the same compiled module.
        let again = cache.get_or_compile(engine(), &bytes).expect("cached");
        assert!(Arc::ptr_eq(&module, &again));
        assert!(cache.get(&module.sha256()).is_some());
    }
    assert_eq!(cache.len(), 5);
}

#[test]
fn missing_hook_runs_builtin_without_instantiating() {
    // election-preference exports neither admit, choose_next nor lease_for.
    let mut policy = WasmPolicy::new(example("election_preference"), no_config());
    let request = request(1, "a", Mode::Exclusive, 0);
    let labels = VecMap::new();
    let holders = [holder(9)];
    let waiters = [waiter(2, 0, 0), waiter(3, 0, 0)];
    let input = admit_input(&request, &labels, &[], &waiters);
    assert_eq!(policy.admit(&input), AdmitDecision::Admit);
    assert_eq!(policy.lease_for(&input), LeaseDecision::default());
    let next = next_input(&[], &waiters);
    assert_eq!(policy.choose_next(&next), vec![0]);
    assert_eq!(
        policy.choose_next(&next_input(&holders, &waiters)),
        Vec::<usize>::new()
    );
    assert!(!policy.instantiated());
    assert_eq!(policy.fault_count(), 0);
}

fn admit_input<'a>(
    request: &'a AcquireRequest,
    labels: &'a VecMap<String, String>,
    holders: &'a [HolderView],
    waiters: &'a [WaiterView],
) -> AdmitInput<'a> {
    AdmitInput {
        request,
        principal: "alice",
        labels,
        holders: holders.to_vec(),
        waiters: waiters.to_vec(),
        state: empty_state(),
        counters: Counters::default(),
        now_ms: 20,
        log_index: 7,
    }
}

fn next_input<'a>(holders: &'a [HolderView], waiters: &'a [WaiterView]) -> NextInput<'a> {
    NextInput {
        name: "a",
        holders,
        waiters,
        max_holders: 1,
        state: empty_state(),
        now_ms: 20,
        log_index: 7,
    }
}

/// A state without sessions, for hand-built inputs (holders and waiters without identity).
fn empty_state() -> &'static State {
    static EMPTY: OnceLock<State> = OnceLock::new();
    EMPTY.get_or_init(State::default)
}

#[test]
fn priority_module_grants_the_higher_priority_waiter() {
    let waiters = [waiter(2, 1, 0), waiter(3, 9, 10)];
    let input = next_input(&[], &waiters);
    assert_eq!(BuiltinFifo.choose_next(&input), vec![0]);
    let mut policy = WasmPolicy::new(example("priority"), no_config());
    assert_eq!(policy.choose_next(&input), vec![1]);
    assert!(policy.instantiated());
    assert_eq!(policy.fault_count(), 0);
}

#[test]
fn waiter_lists_are_truncated_keeping_the_first() {
    let mut waiters: Vec<WaiterView> = (0..300).map(|i| waiter(i + 10, 0, i)).collect();
    waiters[100].priority = 5;
    waiters[280].priority = 10;
    let (list, truncated) = super::requests::waiters(empty_state(), &waiters);
    assert_eq!(list.len(), POLICY_LIST_MAX);
    assert_eq!(truncated as usize, 300 - POLICY_LIST_MAX);
    assert_eq!(list.last().map(|waiter| waiter.session_id), Some(10 + 255));
    // The priority module only sees the first 256: the best of those wins, not waiter 280.
    let input = next_input(&[], &waiters);
    let config: Arc<[u8]> = Arc::from(&b"aging_ms = 0\n"[..]);
    let mut policy = WasmPolicy::new(example("priority"), config);
    assert_eq!(policy.choose_next(&input), vec![100]);
    assert_eq!(policy.fault_count(), 0);
}

#[test]
fn tenant_quota_module_denies_sessions_without_tenant() {
    let request = request(1, "a", Mode::Exclusive, 0);
    let labels = VecMap::new();
    let input = admit_input(&request, &labels, &[], &[]);
    let mut policy = WasmPolicy::new(example("tenant_quota"), no_config());
    match policy.admit(&input) {
        AdmitDecision::Deny { reason } => {
            assert!(reason.contains("tenant"), "{reason}");
            assert_ne!(reason, POLICY_ERROR_REASON);
        }
        admitted => panic!("tenant-quota admitted a session without tenant: {admitted:?}"),
    }
    assert_eq!(policy.fault_count(), 0);
    // With a tenant label and no limits it admits.
    let labels = VecMap::from_iter([("tenant".to_string(), "acme".to_string())]);
    let mut policy = WasmPolicy::new(example("tenant_quota"), no_config());
    assert_eq!(
        policy.admit(&admit_input(&request, &labels, &[], &[])),
        AdmitDecision::Admit
    );
    assert_eq!(policy.fault_count(), 0);
}

// ---- differential test ------------------------------------------------------------------

/// xorshift64*: small, seeded, deterministic.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const DIFFERENTIAL_ENTRIES: u64 = 2_500;
const LOCKS: [&str; 4] = ["a", "b", "rw", "sem"];

/// Generates plausible commands, learning sessions and holds from the events.
struct Commands {
    random: XorShift,
    now_ms: u64,
    sessions: Vec<SessionId>,
    holds: Vec<(SessionId, String, u64)>,
    request_id: u64,
}

impl Commands {
    fn session(&mut self) -> SessionId {
        if self.sessions.is_empty() {
            return 1;
        }
        *self.random.pick(&self.sessions)
    }

    fn entry(&mut self, log_index: u64) -> Entry {
        self.now_ms += self.random.below(400);
        self.request_id += 1;
        let command = match self.random.below(100) {
            0..=9 => Command::OpenSession {
                ttl_ms: 2_000 + self.random.below(8_000),
                principal: self.random.pick(&["alice", "bob"]).to_string(),
                labels: BTreeMap::new(),
            },
            10..=24 => Command::Tick {
                renewed: self
                    .sessions
                    .iter()
                    .copied()
                    .filter(|_| self.random.below(100) < 80)
                    .collect(),
            },
            25..=69 => {
                let name = self.random.pick(&LOCKS).to_string();
                let shared = (name == "rw" || name == "sem") && self.random.below(10) < 7;
                Command::Acquire(AcquireRequest {
                    session_id: self.session(),
                    request_id: self.request_id,
                    mode: if shared {
                        Mode::Shared
                    } else {
                        Mode::Exclusive
                    },
                    max_holders: if name == "sem" { 3 } else { 0 },
                    wait_timeout_ms: match self.random.below(5) {
                        0 => 0,
                        _ => 1 + self.random.below(5_000),
                    },
                    priority: self.random.below(5) as i32,
                    value: Vec::new(),
                    name,
                })
            }
            70..=91 if !self.holds.is_empty() => {
                let (session_id, name, token) = self.random.pick(&self.holds).clone();
                Command::Release {
                    session_id,
                    request_id: self.request_id,
                    name,
                    token,
                }
            }
            70..=95 => Command::CancelWait {
                session_id: self.session(),
                name: self.random.pick(&LOCKS).to_string(),
            },
            _ => Command::CloseSession {
                session_id: self.session(),
            },
        };
        Entry {
            log_index,
            now_ms: self.now_ms,
            command,
        }
    }

    fn observe(&mut self, events: &[Event]) {
        for event in events {
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
                } => self.holds.push((*session_id, name.clone(), *token)),
                Event::Released {
                    session_id, name, ..
                } => self
                    .holds
                    .retain(|(id, held, _)| !(id == session_id && held == name)),
                _ => {}
            }
        }
    }
}

#[test]
fn fifo_module_matches_builtin_fifo_through_apply() {
    let module = example("fifo");
    let mut commands = Commands {
        random: XorShift(0x9E37_79B9_7F4A_7C15),
        now_ms: 1_000,
        sessions: Vec::new(),
        holds: Vec::new(),
        request_id: 0,
    };
    let (mut native, mut wasm) = (State::default(), State::default());
    let (mut instantiated, mut grants) = (0u32, 0u32);
    let started = Instant::now();
    for log_index in 1..=DIFFERENTIAL_ENTRIES {
        let entry = commands.entry(log_index);
        let expected = apply(&mut native, &entry, &mut BuiltinFifo);
        let mut policy = WasmPolicy::new(Arc::clone(&module), no_config());
        let actual = apply(&mut wasm, &entry, &mut policy as &mut dyn PolicyRuntime);
        assert_eq!(actual, expected, "entry {log_index}: {entry:?}");
        assert_eq!(
            policy.fault_count(),
            0,
            "entry {log_index}: {:?}",
            policy.last_fault()
        );
        assert!(
            wasm.to_snapshot_bytes() == native.to_snapshot_bytes(),
            "entry {log_index}: snapshots differ"
        );
        instantiated += u32::from(policy.instantiated());
        grants += expected
            .events
            .iter()
            .filter(|event| matches!(event, Event::Acquired { .. }))
            .count() as u32;
        commands.observe(&expected.events);
    }
    eprintln!(
        "differential: {DIFFERENTIAL_ENTRIES} entries, {instantiated} used wasm, {grants} grants, \
         {:?} (debug build)",
        started.elapsed()
    );
    // The stream must really exercise the module (admit, handoffs, leases).
    assert!(
        instantiated >= 800,
        "only {instantiated} entries called the module"
    );
    assert!(grants >= 300, "only {grants} grants");
}

// ---- hostile modules --------------------------------------------------------------------

/// A module that follows the ABI except for what `extra` (module fields) and `hooks` (its
/// metadata list) say. `$bump` is a bump allocator from 1024.
fn wat_module(hooks: &str, extra: &str) -> Vec<u8> {
    wat_module_importing("", hooks, extra)
}

/// [`wat_module`] with `imports` (import fields) first.
fn wat_module_importing(imports: &str, hooks: &str, extra: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 1024))
  (func (export "holdfast_abi_v1"))
  (func (export "holdfast_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $len)))
    (local.get $p))
  {extra}
  (@custom "holdfast:policy-abi-version" "1")
  (@custom "holdfast:policy-meta" "abi=1\nname=hostile\nversion=0.0.0\nhooks={hooks}\n"))"#
    );
    wat::parse_str(&text).unwrap_or_else(|error| panic!("bad test WAT: {error}\n{text}"))
}

/// A module whose `admit` hook has `body` (returns the packed reply as i64).
fn admit_module(body: &str) -> Vec<u8> {
    wat_module(
        "admit",
        &format!(r#"(func (export "holdfast_admit") (param i32 i32) (result i64) {body})"#),
    )
}

/// The static-check rejection of `bytes` (not a compile failure, not acceptance).
fn abi_error(bytes: &[u8]) -> AbiError {
    match PolicyModule::compile(engine(), bytes) {
        Err(PolicyError::Abi(error)) => error,
        Err(other) => panic!("expected an ABI rejection, got {other}"),
        Ok(module) => panic!("hostile module accepted: {module:?}"),
    }
}

/// Runs `admit` on a fresh `WasmPolicy` twice; both runs must fault once and give the
/// fail-closed deny, identically. Returns the fault.
fn admit_faults(bytes: &[u8]) -> GuestFault {
    let module = Arc::new(PolicyModule::compile(engine(), bytes).expect("compiles"));
    let run = || {
        let mut policy = WasmPolicy::new(Arc::clone(&module), no_config());
        let request = request(1, "a", Mode::Exclusive, 0);
        let labels = VecMap::new();
        let decision = policy.admit(&admit_input(&request, &labels, &[], &[]));
        assert_eq!(
            decision,
            AdmitDecision::Deny {
                reason: POLICY_ERROR_REASON.to_string()
            }
        );
        assert_eq!(policy.fault_count(), 1);
        assert_eq!(policy.faults().get(&Hook::Admit), Some(&1));
        assert!(!policy.instantiated(), "a faulted instance must be dropped");
        policy.last_fault().expect("fault recorded").clone()
    };
    let first = run();
    assert_eq!(
        run(),
        first,
        "hostile module gave different results on two runs"
    );
    first.1
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let fault = admit_faults(&admit_module("(loop $l (br $l)) (unreachable)"));
    assert_eq!(fault, GuestFault::Trap("OutOfFuel".into()));
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() {
    let fault = admit_faults(&admit_module(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) (unreachable)",
    ));
    assert_eq!(fault, GuestFault::MemoryLimit);
}

#[test]
fn deep_recursion_traps() {
    let bytes = wat_module(
        "admit",
        r#"(func $down (param $n i32) (result i64) (call $down (i32.add (local.get $n) (i32.const 1))))
           (func (export "holdfast_admit") (param i32 i32) (result i64) (call $down (i32.const 0)))"#,
    );
    let fault = admit_faults(&bytes);
    assert!(matches!(fault, GuestFault::Trap(_)), "{fault:?}");
}

#[test]
fn huge_reply_length_is_refused() {
    // out_ptr 1024, out_len 1 MiB.
    let fault = admit_faults(&admit_module("(i64.const 0x0000040000100000)"));
    assert_eq!(fault, GuestFault::ReplyTooLarge(1 << 20));
}

#[test]
fn reply_pointer_out_of_bounds_is_refused() {
    // out_ptr 0xffff_ff00, out_len 4.
    let fault = admit_faults(&admit_module("(i64.const 0xffffff0000000004)"));
    assert_eq!(fault, GuestFault::ReplyOutOfBounds);
}

#[test]
fn alloc_out_of_bounds_is_refused() {
    // The allocator hands out an address past the 1-page memory.
    let bad_alloc = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "holdfast_abi_v1"))
  (func (export "holdfast_alloc") (param i32) (result i32) (i32.const 0x7fff0000))
  (func (export "holdfast_admit") (param i32 i32) (result i64) (i64.const 0))
  (@custom "holdfast:policy-abi-version" "1")
  (@custom "holdfast:policy-meta" "abi=1\nname=hostile\nversion=0\nhooks=admit\n"))"#,
    )
    .expect("WAT");
    assert_eq!(admit_faults(&bad_alloc), GuestFault::InputOutOfBounds);
}

#[test]
fn instantiation_trap_is_a_guest_failure() {
    // Valid, but the data segment lies past the 2-page memory: instantiation traps.
    let bytes = wat_module(
        "admit",
        r#"(data (i32.const 200000) "x")
           (func (export "holdfast_admit") (param i32 i32) (result i64) (i64.const 0))"#,
    );
    assert_eq!(admit_faults(&bytes), GuestFault::InstantiationTrap);
}

#[test]
fn undecodable_reply_is_refused() {
    let bytes = wat_module(
        "admit",
        r#"(data (i32.const 512) "\ff\ff\ff\ff")
           (func (export "holdfast_admit") (param i32 i32) (result i64) (i64.const 0x0000020000000004))"#,
    );
    assert_eq!(admit_faults(&bytes), GuestFault::Undecodable);
}

#[test]
fn unspecified_admission_is_invalid() {
    // An empty reply decodes as AdmitReply { admission: UNSPECIFIED }.
    let fault = admit_faults(&admit_module("(i64.const 0)"));
    assert!(matches!(fault, GuestFault::InvalidReply(_)), "{fault:?}");
}

#[test]
fn choose_next_index_out_of_range_gives_fifo() {
    // ChooseNextReply { grant: [7] }: field 1 packed, 1 byte.
    let bytes = wat_module(
        "choose_next",
        r#"(data (i32.const 512) "\0a\01\07")
           (func (export "holdfast_choose_next") (param i32 i32) (result i64) (i64.const 0x0000020000000003))"#,
    );
    let module = Arc::new(PolicyModule::compile(engine(), &bytes).expect("compiles"));
    let waiters = [waiter(2, 0, 0), waiter(3, 0, 0)];
    let input = next_input(&[], &waiters);
    let run = || {
        let mut policy = WasmPolicy::new(Arc::clone(&module), no_config());
        assert_eq!(policy.choose_next(&input), BuiltinFifo.choose_next(&input));
        assert_eq!(policy.faults().get(&Hook::ChooseNext), Some(&1));
        policy.last_fault().cloned()
    };
    let first = run();
    assert_eq!(
        first,
        Some((
            Hook::ChooseNext,
            GuestFault::InvalidReply("grant index out of range")
        ))
    );
    assert_eq!(run(), first);
}

#[test]
fn lease_above_limits_is_clamped_and_counted() {
    // LeaseForReply { lease_ms: u64::MAX }: field 1 varint, 10 bytes.
    let bytes = wat_module(
        "lease_for",
        r#"(data (i32.const 512) "\08\ff\ff\ff\ff\ff\ff\ff\ff\ff\01")
           (func (export "holdfast_lease_for") (param i32 i32) (result i64) (i64.const 0x000002000000000b))"#,
    );
    let module = Arc::new(PolicyModule::compile(engine(), &bytes).expect("compiles"));
    let mut policy = WasmPolicy::new(module, no_config());
    let request = request(1, "a", Mode::Exclusive, 0);
    let labels = VecMap::new();
    let decision = policy.lease_for(&admit_input(&request, &labels, &[], &[]));
    assert_eq!(decision.lease_ms, holdfast_core::limits::LEASE_MS_MAX);
    assert_eq!(policy.faults().get(&Hook::LeaseFor), Some(&1));
}

#[test]
fn disallowed_import_is_rejected() {
    let bytes = wat_module_importing(r#"(import "env" "clock" (func (result i64)))"#, "", "");
    assert!(matches!(
        abi_error(&bytes),
        AbiError::DisallowedImport { module, name } if module == "env" && name == "clock"
    ));
}

#[test]
fn debug_log_import_is_allowed() {
    let bytes = wat_module_importing(
        r#"(import "holdfast" "debug_log" (func $log (param i32 i32)))"#,
        "admit",
        r#"(func (export "holdfast_admit") (param i32 i32) (result i64)
             (call $log (i32.const 0) (i32.const 100000))
             (call $log (i32.const -1) (i32.const 4))
             (i64.const 0x0000020000000002))
           (data (i32.const 512) "\08\01")"#,
    );
    let module = Arc::new(PolicyModule::compile(engine(), &bytes).expect("compiles"));
    let mut policy = WasmPolicy::new(module, no_config());
    let request = request(1, "a", Mode::Exclusive, 0);
    let labels = VecMap::new();
    assert_eq!(
        policy.admit(&admit_input(&request, &labels, &[], &[])),
        AdmitDecision::Admit
    );
    assert_eq!(policy.fault_count(), 0);
}

#[test]
fn missing_abi_marker_is_rejected() {
    let bytes = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func (export "holdfast_alloc") (param i32) (result i32) (i32.const 0))
  (@custom "holdfast:policy-abi-version" "1")
  (@custom "holdfast:policy-meta" "abi=1\nname=x\nversion=0\nhooks=\n"))"#,
    )
    .expect("WAT");
    assert!(matches!(
        abi_error(&bytes),
        AbiError::MissingExport("holdfast_abi_v1")
    ));
}

#[test]
fn start_function_is_rejected() {
    let bytes = wat_module("", "(func $s) (start $s)");
    assert!(matches!(abi_error(&bytes), AbiError::StartFunction));
}

#[test]
fn garbage_bytes_are_rejected() {
    assert!(matches!(
        abi_error(b"not wasm at all"),
        AbiError::Invalid(_)
    ));
    assert!(matches!(abi_error(b""), AbiError::Invalid(_)));
}

#[test]
fn oversize_module_is_rejected() {
    // A valid module plus a custom section that takes it past the limit.
    let mut bytes = wat_module("", "");
    let payload_len = POLICY_MODULE_BYTES_MAX;
    let name = b"padding";
    let section_len = 1 + name.len() + payload_len;
    bytes.push(0); // custom section id
    let mut value = section_len;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.resize(bytes.len() + payload_len, 0);
    assert!(matches!(
        abi_error(&bytes),
        AbiError::TooLarge { len, .. } if len == bytes.len()
    ));
}

#[test]
fn float_and_simd_instructions_are_rejected() {
    let float = admit_module("(drop (f32.const 1.5)) (i64.const 0)");
    assert!(matches!(abi_error(&float), AbiError::Invalid(_)));
    let simd = admit_module("(drop (v128.const i32x4 0 0 0 0)) (i64.const 0)");
    assert!(matches!(abi_error(&simd), AbiError::Invalid(_)));
    // Sign-extension (not in Wasm 1.0) too.
    let sign_ext = admit_module("(drop (i32.extend8_s (i32.const 1))) (i64.const 0)");
    assert!(matches!(abi_error(&sign_ext), AbiError::Invalid(_)));
}

#[test]
fn metadata_must_match_exported_hooks() {
    let bytes = wat_module(
        "admit,elect",
        r#"(func (export "holdfast_admit") (param i32 i32) (result i64) (i64.const 0))"#,
    );
    assert!(matches!(abi_error(&bytes), AbiError::HooksMismatch { .. }));
}

#[test]
fn oversize_memory_is_rejected() {
    let bytes = wat::parse_str(
        r#"(module
  (memory (export "memory") 257)
  (func (export "holdfast_abi_v1"))
  (func (export "holdfast_alloc") (param i32) (result i32) (i32.const 0))
  (@custom "holdfast:policy-abi-version" "1")
  (@custom "holdfast:policy-meta" "abi=1\nname=x\nversion=0\nhooks=\n"))"#,
    )
    .expect("WAT");
    assert!(matches!(
        abi_error(&bytes),
        AbiError::MemoryTooLarge { pages: 257, .. }
    ));
}

#[test]
fn holders_and_waiters_carry_their_sessions_principal_and_labels() {
    let mut state = State::default();
    let open = Command::OpenSession {
        ttl_ms: 10_000,
        principal: "alice".to_string(),
        labels: BTreeMap::from([("tenant".to_string(), "acme".to_string())]),
    };
    let entry = Entry {
        log_index: 1,
        now_ms: 5,
        command: open,
    };
    apply(&mut state, &entry, &mut BuiltinFifo);
    let (list, truncated) = super::requests::waiters(&state, &[waiter(1, 0, 0), waiter(9, 0, 0)]);
    assert_eq!(truncated, 0);
    assert_eq!(list[0].principal, "alice");
    assert_eq!(
        list[0].labels,
        vec![holdfast_proto::policy::v1::Label {
            key: "tenant".to_string(),
            value: "acme".to_string()
        }]
    );
    assert_eq!(
        (list[1].principal.as_str(), list[1].labels.len()),
        ("", 0),
        "a session that is gone has no identity"
    );
}

/// Entries through `core::apply` with the apply loop's own policy host.
struct Applying {
    state: State,
    policies: super::ApplyPolicies,
    now_ms: u64,
}

impl Applying {
    fn new() -> Applying {
        Applying {
            state: State::default(),
            policies: super::ApplyPolicies::new().expect("policy engine"),
            now_ms: 1_000,
        }
    }

    fn apply(&mut self, command: Command) -> holdfast_core::Outcome {
        self.policies
            .apply_next(&mut self.state, self.now_ms, command)
            .outcome
    }

    fn bind(&mut self, prefix: &str, policy: &str, config: &str) {
        let outcome = self.apply(Command::BindPolicy {
            prefix: prefix.to_string(),
            policy: policy.to_string(),
            version: 0,
            config: config.as_bytes().to_vec(),
            mode: holdfast_core::BindMode::Enforce,
        });
        assert!(
            matches!(outcome, holdfast_core::Outcome::PolicyBound { .. }),
            "{outcome:?}"
        );
    }
}

#[test]
fn lease_rules_on_session_expire_applies_the_current_lock_delay_rules() {
    let mut cluster = Applying::new();
    let deployed = cluster.apply(Command::DeployPolicy {
        name: "lease-rules".to_string(),
        wasm: example_bytes("lease_rules"),
    });
    assert!(
        matches!(deployed, holdfast_core::Outcome::PolicyDeployed { .. }),
        "{deployed:?}"
    );
    cluster.bind(
        "payments/",
        "lease-rules",
        "lock_delay_ms.payments/ = 1000\n",
    );
    let holdfast_core::Outcome::SessionOpened { session_id, .. } =
        cluster.apply(Command::OpenSession {
            ttl_ms: 2_000,
            principal: "p".to_string(),
            labels: BTreeMap::new(),
        })
    else {
        panic!("open");
    };
    let granted = cluster.apply(Command::Acquire(request(
        session_id,
        "payments/ledger",
        Mode::Exclusive,
        0,
    )));
    assert!(
        matches!(granted, holdfast_core::Outcome::Acquired { .. }),
        "{granted:?}"
    );
    // The rules change after the grant; the expiry applies the current ones (5 s, not 1 s).
    cluster.bind(
        "payments/",
        "lease-rules",
        "lock_delay_ms.payments/ = 5000\n",
    );
    cluster.now_ms = 10_000;
    cluster.apply(Command::Tick {
        renewed: Vec::new(),
    });
    let lock = cluster
        .state
        .lock("payments/ledger")
        .expect("kept by its lock-delay");
    assert_eq!(lock.delayed_until_ms, Some(15_000));
    assert_eq!(cluster.state.policy_fault_count(), 0);
}

#[test]
fn election_preference_elects_preempts_and_respects_tenure_through_apply() {
    let mut cluster = Applying::new();
    cluster.apply(Command::DeployPolicy {
        name: "election-preference".to_string(),
        wasm: example_bytes("election_preference"),
    });
    cluster.bind(
        "leader/",
        "election-preference",
        "preferred_zones = a, b\nmin_tenure_ms = 5000\npreempt_grace_ms = 1000\n",
    );
    let open = |cluster: &mut Applying, zone: &str| {
        let holdfast_core::Outcome::SessionOpened { session_id, .. } =
            cluster.apply(Command::OpenSession {
                ttl_ms: 3_600_000,
                principal: format!("node-{zone}"),
                labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
            })
        else {
            panic!("open");
        };
        session_id
    };
    let campaign = |session_id| {
        Command::Acquire(AcquireRequest {
            wait_timeout_ms: 3_600_000,
            ..request(session_id, "leader/db", Mode::Exclusive, 0)
        })
    };
    let leader = |cluster: &Applying| {
        cluster
            .state
            .lock("leader/db")
            .and_then(|lock| lock.holders.first().map(|holder| holder.session_id))
    };
    let in_b = open(&mut cluster, "b");
    let in_c = open(&mut cluster, "c");
    let in_a = open(&mut cluster, "a");
    // A free election: the first campaigner leads at once.
    cluster.apply(campaign(in_b));
    assert_eq!(leader(&cluster), Some(in_b));
    // A worse zone joins: kept, no re-evaluation needed.
    cluster.apply(campaign(in_c));
    assert_eq!(leader(&cluster), Some(in_b));
    // A better zone joins inside b's minimum tenure: kept until the tenure ends (5 s).
    cluster.now_ms += 1_000;
    cluster.apply(campaign(in_a));
    assert_eq!(leader(&cluster), Some(in_b));
    // Tenure over: re-evaluated, preemption scheduled after the 1 s grace.
    cluster.now_ms = 1_000 + 5_000;
    cluster.apply(Command::Tick {
        renewed: Vec::new(),
    });
    assert_eq!(
        leader(&cluster),
        Some(in_b),
        "still within the grace period"
    );
    cluster.now_ms += 1_000;
    cluster.apply(Command::Tick {
        renewed: Vec::new(),
    });
    assert_eq!(leader(&cluster), Some(in_a), "zone a preempted zone b");
    let lock = cluster.state.lock("leader/db").unwrap();
    assert_eq!(
        lock.waiters
            .iter()
            .map(|w| w.session_id)
            .collect::<Vec<_>>(),
        vec![in_c],
        "the preempted leader does not campaign again by itself"
    );
    // The leader resigns: the best remaining candidate leads.
    let token = lock.holders[0].token;
    cluster.apply(Command::Release {
        session_id: in_a,
        request_id: 0,
        name: "leader/db".to_string(),
        token,
    });
    assert_eq!(leader(&cluster), Some(in_c));
    assert_eq!(cluster.state.policy_fault_count(), 0);
}

#[test]
fn one_entry_touching_more_bindings_than_the_pool_holds_does_not_exhaust_it() {
    const PREFIXES: usize = super::engine::POLICY_POOL_INSTANCES as usize + 6;
    let mut cluster = Applying::new();
    cluster.apply(Command::DeployPolicy {
        name: "priority".to_string(),
        wasm: example_bytes("priority"),
    });
    // Distinct configs: one instance per binding in an entry that uses all of them.
    for i in 0..PREFIXES {
        cluster.bind(
            &format!("p{i}/"),
            "priority",
            &format!("aging_ms = {}\n", 1_000 + i),
        );
    }
    let mut open = || {
        let holdfast_core::Outcome::SessionOpened { session_id, .. } =
            cluster.apply(Command::OpenSession {
                ttl_ms: 3_600_000,
                principal: "p".to_string(),
                labels: BTreeMap::new(),
            })
        else {
            panic!("open");
        };
        session_id
    };
    let (holder, waiter) = (open(), open());
    for i in 0..PREFIXES {
        let name = format!("p{i}/lock");
        cluster.apply(Command::Acquire(AcquireRequest {
            request_id: 0,
            ..request(holder, &name, Mode::Exclusive, 0)
        }));
        cluster.apply(Command::Acquire(AcquireRequest {
            request_id: 0,
            wait_timeout_ms: 3_600_000,
            ..request(waiter, &name, Mode::Exclusive, 0)
        }));
    }
    // One entry, PREFIXES handoffs, each under its own binding.
    cluster.apply(Command::CloseSession { session_id: holder });
    let session = cluster.state.session(waiter).expect("waiter alive");
    assert_eq!(session.holds.len(), PREFIXES);
    assert_eq!(cluster.state.policy_fault_count(), 0);
}
