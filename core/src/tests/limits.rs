//! Every limit is enforced in apply, with a rejection, never a panic.

use super::{Harness, assert_text, check, run};
use crate::{
    AcquireRequest, BuiltinFifo, Command, Entry, Mode, Outcome, Rejection, State, apply, limits,
};

#[test]
fn session_ttl_must_be_within_bounds() {
    check(
        "
        open ttl=0
        open ttl=1999
        open ttl=2000
        open ttl=3600000
        open ttl=3600001
        open ttl=18446744073709551615
        ",
        r#"
            #1 => rejected InvalidArgument { field: "ttl_ms", reason: "must be within 2000..=3600000 ms" }
            #2 => rejected InvalidArgument { field: "ttl_ms", reason: "must be within 2000..=3600000 ms" }
            #3 => opened s3 ttl=2000
               + session-opened s3
            #4 => opened s4 ttl=3600000
               + session-opened s4
            #5 => rejected InvalidArgument { field: "ttl_ms", reason: "must be within 2000..=3600000 ms" }
            #6 => rejected InvalidArgument { field: "ttl_ms", reason: "must be within 2000..=3600000 ms" }
        "#,
    );
}

#[test]
fn principal_and_labels_must_be_within_bounds() {
    let long = "p".repeat(limits::PRINCIPAL_BYTES_MAX + 1);
    let many_labels: Vec<String> = (0..=limits::LABELS_PER_SESSION_MAX)
        .map(|i| format!("k{i}:v"))
        .collect();
    let long_label = format!("k:{}", "v".repeat(limits::LABEL_BYTES_MAX + 1));
    let script = format!(
        "open principal={long}\nopen {}\nopen {long_label}\nopen principal={} zone:eu team:db\n",
        many_labels.join(" "),
        "p".repeat(limits::PRINCIPAL_BYTES_MAX)
    );
    check(
        &script,
        r#"
            #1 => rejected InvalidArgument { field: "principal", reason: "longer than 256 bytes" }
            #2 => rejected InvalidArgument { field: "labels", reason: "more than 16" }
            #3 => rejected InvalidArgument { field: "labels", reason: "empty key, or key or value over 128 bytes" }
            #4 => opened s4 ttl=10000
               + session-opened s4
        "#,
    );
}

#[test]
fn lock_name_and_max_holders_must_be_within_bounds() {
    let long = "n".repeat(limits::LOCK_NAME_BYTES_MAX + 1);
    let just_fits = "n".repeat(limits::LOCK_NAME_BYTES_MAX);
    let script = format!(
        "open\nacquire 1 {long}\nrelease 1 {long} 2\nacquire 1 {just_fits}\nacquire 1 r shared max=1025\nacquire 1 r shared max=1024\n"
    );
    let out = run(&mut BuiltinFifo, &script);
    let out = out
        .replace(&long, "<513 bytes>")
        .replace(&just_fits, "<512 bytes>");
    assert_text(
        &out,
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => rejected InvalidArgument { field: "name", reason: "must be 1..=512 bytes" }
            #3 => rejected NotHeld { name: "<513 bytes>", session_id: 1 }
            #4 => acquired t4
               + acquired <512 bytes> s1 t4 x
            #5 => rejected InvalidArgument { field: "max_holders", reason: "must be at most 1024" }
            #6 => acquired t6
               + acquired r s1 t6 s
        "#,
    );

    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    harness.line("open");
    let empty_name = AcquireRequest {
        session_id: 1,
        request_id: 0,
        name: String::new(),
        mode: Mode::Exclusive,
        max_holders: 0,
        wait_timeout_ms: 0,
        priority: 0,
        value: Vec::new(),
    };
    let applied = harness.apply(Command::Acquire(empty_name));
    assert!(
        matches!(
            applied.outcome,
            Outcome::Rejected(Rejection::InvalidArgument { .. })
        ),
        "{applied:?}"
    );
}

#[test]
fn wait_timeout_is_capped() {
    check(
        "
        @1000 open ttl=3600000
        open ttl=3600000
        acquire 1 a
        acquire 2 a wait=99999999999
        ?next
        ",
        r#"
            #1 => opened s1 ttl=3600000
               + session-opened s1
            #2 => opened s2 ttl=3600000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => queued pos=0
               + queued a s2 pos=0
            ?next => Some(3601000)
        "#,
    );
}

#[test]
fn waiters_per_lock_are_bounded() {
    let mut script = String::new();
    for _ in 0..=limits::WAITERS_PER_LOCK_MAX + 1 {
        script.push_str("open\n");
    }
    script.push_str("acquire 1 a\n");
    for session in 2..=limits::WAITERS_PER_LOCK_MAX + 2 {
        script.push_str(&format!("acquire {session} a wait=1000\n"));
    }
    let out = run(&mut BuiltinFifo, &script);
    let tail: Vec<&str> = out
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_text(
        &tail.join("\n"),
        r#"
            #2051 => queued pos=1023
               + queued a s1025 pos=1023
            #2052 => rejected LimitExceeded { limit: "waiters_per_lock_max" }
        "#,
    );
}

#[test]
fn locks_per_session_are_bounded() {
    let mut script = String::from("open ttl=3600000\n");
    for lock in 0..=limits::LOCKS_PER_SESSION_MAX {
        script.push_str(&format!("acquire 1 l{lock}\n"));
    }
    let out = run(&mut BuiltinFifo, &script);
    let tail: Vec<&str> = out
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_text(
        &tail.join("\n"),
        r#"
            #1025 => acquired t1025
               + acquired l1023 s1 t1025 x
            #1026 => rejected LimitExceeded { limit: "locks_per_session_max" }
        "#,
    );
}

#[test]
fn sessions_are_bounded() {
    // Applied directly (no per-entry snapshot) to keep the test fast.
    let mut state = State::default();
    // Spread over principals so that SESSIONS_PER_PRINCIPAL_MAX is not what stops them.
    let open = |log_index: u64| Command::OpenSession {
        ttl_ms: 60_000,
        principal: format!("p{}", log_index % 100),
        labels: Default::default(),
    };
    for log_index in 1..=limits::SESSIONS_MAX as u64 {
        let applied = apply(
            &mut state,
            &Entry {
                log_index,
                now_ms: 0,
                command: open(log_index),
            },
            &mut BuiltinFifo,
        );
        assert_eq!(
            applied.outcome,
            Outcome::SessionOpened {
                session_id: log_index,
                ttl_ms: 60_000
            }
        );
    }
    let log_index = limits::SESSIONS_MAX as u64 + 1;
    let applied = apply(
        &mut state,
        &Entry {
            log_index,
            now_ms: 0,
            command: open(log_index),
        },
        &mut BuiltinFifo,
    );
    assert_eq!(
        applied.outcome,
        Outcome::Rejected(Rejection::LimitExceeded {
            limit: "sessions_max".to_string()
        })
    );
    assert_eq!(state.session_count(), limits::SESSIONS_MAX);
    state.check_invariants().unwrap();
}

#[test]
fn renewals_per_tick_are_bounded_but_deadlines_still_fire() {
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    harness.line("@0 open ttl=2000");
    harness.now_ms = 2000;
    let applied = harness.apply(Command::Tick {
        renewed: vec![1; limits::RENEWALS_PER_TICK_MAX + 1],
    });
    assert_text(
        &harness.out,
        r#"
            #1 => opened s1 ttl=2000
               + session-opened s1
            #2 => rejected LimitExceeded { limit: "renewals_per_tick_max" }
               + session-expired s1
        "#,
    );
    assert!(matches!(
        applied.outcome,
        Outcome::Rejected(Rejection::LimitExceeded { .. })
    ));
}

#[test]
fn cluster_time_is_clamped() {
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    harness.now_ms = u64::MAX;
    harness.line("open ttl=3600000");
    harness.line("acquire 1 a wait=3600000");
    harness.line("open");
    harness.line("acquire 3 a wait=3600000");
    assert_eq!(harness.state.now_ms(), limits::NOW_MS_MAX);
    assert_text(
        &harness.out,
        r#"
            #1 => opened s1 ttl=3600000
               + session-opened s1
            #2 => acquired t2
               + acquired a s1 t2 x
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => queued pos=0
               + queued a s3 pos=0
        "#,
    );
}

/// docs/operations.md lists every limit with its value (the table is generated from
/// limits.rs; this keeps them in step).
#[test]
fn every_limit_is_documented_with_its_value() {
    let source = include_str!("../limits.rs");
    let docs = include_str!("../../../docs/operations.md");
    let mut count = 0;
    for line in source.lines().filter(|line| line.starts_with("pub const ")) {
        let (name, rest) = line["pub const ".len()..]
            .split_once(':')
            .expect("pub const NAME: TYPE = VALUE;");
        let value = rest
            .split_once('=')
            .map(|(_, value)| value.trim().trim_end_matches(';'))
            .expect("a value");
        let row = format!("| `{name}` | `{value}` |");
        assert!(
            docs.contains(&row),
            "docs/operations.md lacks the row {row}"
        );
        count += 1;
    }
    assert!(count >= 20, "found only {count} limits");
}

#[test]
fn sessions_per_principal_are_bounded_and_a_closed_one_frees_its_slot() {
    let open = |principal: &str| Command::OpenSession {
        ttl_ms: 60_000,
        principal: principal.to_string(),
        labels: Default::default(),
    };
    let mut state = State::default();
    let mut log_index = 0;
    let mut step = |state: &mut State, command: Command| {
        log_index += 1;
        apply(
            state,
            &Entry {
                log_index,
                now_ms: 0,
                command,
            },
            &mut BuiltinFifo,
        )
        .outcome
    };
    for _ in 0..limits::SESSIONS_PER_PRINCIPAL_MAX {
        assert!(matches!(
            step(&mut state, open("tenant")),
            Outcome::SessionOpened { .. }
        ));
    }
    let refused = Outcome::Rejected(Rejection::LimitExceeded {
        limit: "sessions_per_principal_max".to_string(),
    });
    assert_eq!(step(&mut state, open("tenant")), refused);
    // Another principal is not affected.
    assert!(matches!(
        step(&mut state, open("other")),
        Outcome::SessionOpened { .. }
    ));
    // Closing one of the tenant's sessions (session 1) frees a slot.
    assert!(matches!(
        step(&mut state, Command::CloseSession { session_id: 1 }),
        Outcome::SessionClosed { .. }
    ));
    assert!(matches!(
        step(&mut state, open("tenant")),
        Outcome::SessionOpened { .. }
    ));
    assert_eq!(step(&mut state, open("tenant")), refused);
    state.check_invariants().unwrap();
    // The count is derived: a snapshot round trip rebuilds it.
    let restored = State::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert_eq!(restored, state);
}
