//! Per-decision cost of a policy module in the policy host, against the built-in FIFO:
//! `cargo run --release -p holdfast-server --example policy_cost [-- FILE.wasm [ITERATIONS]]`
//! (default: the example `fifo` module built by scripts/build-policies, 20,000 iterations).
//!
//! Each iteration is what one log entry pays: a fresh `WasmPolicy` (fresh instance on first
//! use, never reused across entries) asked `admit`, then `lease_for` and `choose_next` on the
//! same instance. Prints mean and p50/p99 microseconds per step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_core::{
    AcquireRequest, AdmitInput, BindMode, BuiltinFifo, Command, Counters, HolderView, Mode,
    NextInput, Outcome, PolicyRuntime, State, VecMap, WaiterView,
};
use holdfast_server::policy::{ApplyPolicies, PolicyModule, WasmPolicy, policy_engine};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"));
        target.join("wasm32v1-none/release/holdfast_policy_fifo.wasm")
    });
    let iterations: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let wasm = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "reading {}: {e} (run scripts/build-policies)",
            path.display()
        )
    })?;
    let engine = policy_engine().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let started = Instant::now();
    let module = Arc::new(PolicyModule::compile(&engine, &wasm)?);
    println!(
        "module {} ({} bytes, hooks {:?}): compiled in {:.1} ms",
        module.name(),
        wasm.len(),
        module.hooks(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let request = AcquireRequest {
        session_id: 9,
        request_id: 0,
        name: "bench/lock".to_string(),
        mode: Mode::Exclusive,
        max_holders: 0,
        wait_timeout_ms: 1_000,
        priority: 0,
        value: Vec::new(),
    };
    let labels = VecMap::from_iter([("tenant".to_string(), "bench".to_string())]);
    let waiters: Vec<WaiterView> = (1..=4)
        .map(|session_id| WaiterView {
            session_id,
            mode: Mode::Exclusive,
            priority: 0,
            queued_at_ms: session_id,
        })
        .collect();
    let holders: Vec<HolderView> = Vec::new();
    let empty = State::default();
    let admit = AdmitInput {
        request: &request,
        principal: "bench",
        labels: &labels,
        holders: holders.clone(),
        waiters: waiters.clone(),
        state: &empty,
        counters: Counters::default(),
        now_ms: 10,
        log_index: 11,
    };
    let next = NextInput {
        name: "bench/lock",
        holders: &holders,
        waiters: &waiters,
        max_holders: 1,
        state: &empty,
        now_ms: 10,
        log_index: 11,
    };

    let mut builtin = vec![Duration::ZERO; iterations];
    for sample in &mut builtin {
        let started = Instant::now();
        let mut policy = BuiltinFifo;
        std::hint::black_box(policy.admit(&admit));
        std::hint::black_box(policy.lease_for(&admit));
        std::hint::black_box(policy.choose_next(&next));
        *sample = started.elapsed();
    }
    report(
        "builtin FIFO, admit + lease_for + choose_next",
        &mut builtin,
    );

    let config: Arc<[u8]> = Arc::from(&b""[..]);
    let (mut first, mut lease, mut choose, mut total) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for _ in 0..iterations {
        let begin = Instant::now();
        let mut policy = WasmPolicy::new(Arc::clone(&module), Arc::clone(&config));
        std::hint::black_box(policy.admit(&admit));
        let admitted = Instant::now();
        std::hint::black_box(policy.lease_for(&admit));
        let leased = Instant::now();
        std::hint::black_box(policy.choose_next(&next));
        let chosen = Instant::now();
        assert_eq!(policy.fault_count(), 0, "{:?}", policy.last_fault());
        drop(policy);
        first.push(admitted - begin);
        lease.push(leased - admitted);
        choose.push(chosen - leased);
        total.push(Instant::now() - begin);
    }
    report("wasm: fresh instance + admit", &mut first);
    report("wasm: lease_for (same instance)", &mut lease);
    report("wasm: choose_next (same instance)", &mut choose);
    report(
        "wasm: one entry's three decisions, instance dropped",
        &mut total,
    );

    // Whole entries through core::apply with the apply loop's policy host: an uncontended
    // try-lock + release cycle (two entries), unbound (built-in FIFO) vs the module bound at
    // the root.
    for bound in [false, true] {
        let mut state = State::default();
        let mut policies = ApplyPolicies::new()?;
        let mut apply =
            |state: &mut State, command: Command| policies.apply_next(state, 1_000, command);
        if bound {
            let deploy = Command::DeployPolicy {
                name: "bench".into(),
                wasm: wasm.clone(),
            };
            apply(&mut state, deploy);
            let bind = Command::BindPolicy {
                prefix: String::new(),
                policy: "bench".into(),
                version: 0,
                config: Vec::new(),
                mode: BindMode::Enforce,
            };
            apply(&mut state, bind);
        }
        let open = Command::OpenSession {
            ttl_ms: 3_600_000,
            principal: "bench".into(),
            labels: BTreeMap::new(),
        };
        let Outcome::SessionOpened { session_id, .. } = apply(&mut state, open).outcome else {
            anyhow::bail!("open failed");
        };
        let mut cycles = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let begin = Instant::now();
            let acquire = Command::Acquire(AcquireRequest {
                session_id,
                ..request.clone()
            });
            let Outcome::Acquired { token, .. } = apply(&mut state, acquire).outcome else {
                anyhow::bail!("acquire failed");
            };
            let release = Command::Release {
                session_id,
                request_id: 0,
                name: request.name.clone(),
                token,
            };
            apply(&mut state, release);
            cycles.push(begin.elapsed());
        }
        assert_eq!(state.policy_fault_count(), 0);
        let what = if bound {
            "apply: acquire + release entries, wasm at root"
        } else {
            "apply: acquire + release entries, builtin FIFO"
        };
        report(what, &mut cycles);
    }
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{what:<52} mean {mean:>8.2} µs  p50 {:>8.2} µs  p99 {:>8.2} µs",
        micros(samples[samples.len() / 2]),
        micros(samples[samples.len() * 99 / 100])
    );
}
