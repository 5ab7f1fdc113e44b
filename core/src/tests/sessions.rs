//! Sessions and time: expiry, renewal, close, wait timeouts, unknown sessions.

use super::check;

#[test]
fn wait_timeout_via_tick() {
    check(
        "
        @1000 open
        open
        acquire 1 a
        acquire 2 a wait=500 req=1
        ?next
        @1499 tick 1 2
        @1500 tick
        acquire 2 a wait=500 req=1
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => queued pos=0
               + queued a s2 pos=0
            ?next => Some(1500)
            #5 => ok
            #6 => ok
               + left a s2 TimedOut
            #7 => rejected WaitTimedOut { name: "a" }
            ?lock a => x/1 holders=[s1:t3] waiters=[]
        "#,
    );
}

#[test]
fn session_expiry_releases_holds_and_hands_off() {
    check(
        "
        @0 open ttl=3000
        open ttl=60000
        acquire 1 a
        acquire 2 b
        acquire 1 b wait=60000
        acquire 2 a wait=60000 req=9
        @2999 tick 2
        @3000 tick 2
        acquire 2 a req=9
        ?session 1
        ?lock a
        ?lock b
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => opened s2 ttl=60000
               + session-opened s2
            #3 => acquired t3
               + acquired a s1 t3 x
            #4 => acquired t4
               + acquired b s2 t4 x
            #5 => queued pos=0
               + queued b s1 pos=0
            #6 => queued pos=0
               + queued a s2 pos=0
            #7 => ok
            #8 => ok
               + left b s1 SessionExpired
               + released a s1 t3 SessionExpired
               + session-expired s1
               + acquired a s2 t8 x
            #9 => acquired t8
            ?session 1 => none
            ?lock a => x/1 holders=[s2:t8] waiters=[]
            ?lock b => x/1 holders=[s2:t4] waiters=[]
        "#,
    );
}

#[test]
fn renewal_via_tick_prevents_expiry() {
    check(
        "
        @0 open ttl=3000
        acquire 1 a
        @2000 tick 1
        @4000 tick 1
        @6000 tick 1
        @8999 tick
        ?session 1
        @9000 tick
        ?session 1
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => acquired t2
               + acquired a s1 t2 x
            #3 => ok
            #4 => ok
            #5 => ok
            #6 => ok
            ?session 1 => expires=9000 holds=[("a", 2)] waiting=[]
            #7 => ok
               + released a s1 t2 SessionExpired
               + session-expired s1
            ?session 1 => none
        "#,
    );
}

#[test]
fn renewal_riding_a_late_tick_still_saves_the_session() {
    // The tick was due at 3000 but was only proposed at 3500, carrying s1's keepalive.
    check(
        "
        @0 open ttl=3000
        open ttl=3000
        @3500 tick 1
        ?session 1
        ?session 2
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => opened s2 ttl=3000
               + session-opened s2
            #3 => ok
               + session-expired s2
            ?session 1 => expires=6500 holds=[] waiting=[]
            ?session 2 => none
        "#,
    );
}

#[test]
fn close_session_releases_and_hands_off_without_lock_delay() {
    check(
        "
        open
        open
        open
        acquire 1 a
        acquire 1 b shared
        acquire 2 a wait=1000
        acquire 3 b shared
        acquire 3 a wait=1000
        close 1
        close 1
        ?lock a
        ?lock b
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => opened s2 ttl=10000
               + session-opened s2
            #3 => opened s3 ttl=10000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => acquired t5
               + acquired b s1 t5 s
            #6 => queued pos=0
               + queued a s2 pos=0
            #7 => acquired t7
               + acquired b s3 t7 s
            #8 => queued pos=1
               + queued a s3 pos=1
            #9 => closed s1
               + released a s1 t4 SessionClosed
               + released b s1 t5 SessionClosed
               + session-closed s1
               + acquired a s2 t9 x
            #10 => rejected UnknownSession { session_id: 1 }
            ?lock a => x/1 holders=[s2:t9] waiters=[0:s3:x]
            ?lock b => s/1024 holders=[s3:t7] waiters=[]
        "#,
    );
}

#[test]
fn unknown_session_changes_nothing() {
    check(
        "
        open
        acquire 7 a
        release 7 a 1
        cancel 7 a
        close 7
        acquire 1 a wait=1000
        cancel 1 a
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=10000
               + session-opened s1
            #2 => rejected UnknownSession { session_id: 7 }
            #3 => rejected UnknownSession { session_id: 7 }
            #4 => rejected UnknownSession { session_id: 7 }
            #5 => rejected UnknownSession { session_id: 7 }
            #6 => acquired t6
               + acquired a s1 t6 x
            #7 => rejected NotWaiting { name: "a", session_id: 1 }
            ?lock a => x/1 holders=[s1:t6] waiters=[]
        "#,
    );
}

#[test]
fn time_never_goes_backwards() {
    check(
        "
        @5000 open ttl=2000
        @1000 noop
        ?session 1
        @6999 noop
        @7000 noop
        ",
        r#"
            #1 => opened s1 ttl=2000
               + session-opened s1
            #2 => ok
            ?session 1 => expires=7000 holds=[] waiting=[]
            #3 => ok
            #4 => ok
               + session-expired s1
        "#,
    );
}

#[test]
fn expiries_due_together_fire_before_any_handoff() {
    // s1 and s2 both expire at the same tick; s2 must not be handed lock a in between.
    check(
        "
        @0 open ttl=3000
        open ttl=4000
        open ttl=60000
        acquire 1 a
        acquire 2 a wait=60000
        acquire 3 a wait=60000
        @5000 tick 3
        ?lock a
        ",
        r#"
            #1 => opened s1 ttl=3000
               + session-opened s1
            #2 => opened s2 ttl=4000
               + session-opened s2
            #3 => opened s3 ttl=60000
               + session-opened s3
            #4 => acquired t4
               + acquired a s1 t4 x
            #5 => queued pos=0
               + queued a s2 pos=0
            #6 => queued pos=1
               + queued a s3 pos=1
            #7 => ok
               + released a s1 t4 SessionExpired
               + session-expired s1
               + left a s2 SessionExpired
               + session-expired s2
               + acquired a s3 t7 x
            ?lock a => x/1 holders=[s3:t7] waiters=[]
        "#,
    );
}

#[test]
fn events_name_the_sessions_principal() {
    let mut state = crate::State::default();
    let mut policy = crate::BuiltinFifo;
    let open = crate::Command::OpenSession {
        ttl_ms: 10_000,
        principal: "alice".into(),
        labels: Default::default(),
    };
    let opened = crate::apply(
        &mut state,
        &crate::Entry {
            log_index: 1,
            now_ms: 1,
            command: open,
        },
        &mut policy,
    );
    let acquire = crate::Command::Acquire(crate::AcquireRequest {
        session_id: 1,
        request_id: 0,
        name: "a".into(),
        mode: crate::Mode::Exclusive,
        max_holders: 0,
        wait_timeout_ms: 0,
        priority: 0,
        value: Vec::new(),
    });
    let acquired = crate::apply(
        &mut state,
        &crate::Entry {
            log_index: 2,
            now_ms: 2,
            command: acquire,
        },
        &mut policy,
    );
    let close = crate::Command::CloseSession { session_id: 1 };
    let closed = crate::apply(
        &mut state,
        &crate::Entry {
            log_index: 3,
            now_ms: 3,
            command: close,
        },
        &mut policy,
    );
    let principals: Vec<String> = [opened, acquired, closed]
        .iter()
        .flat_map(|applied| applied.events.iter())
        .map(|event| match event {
            crate::Event::SessionOpened { principal, .. }
            | crate::Event::Acquired { principal, .. }
            | crate::Event::Released { principal, .. }
            | crate::Event::SessionClosed { principal, .. } => principal.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(principals, ["alice", "alice", "alice", "alice"]);
}

/// The operator's views: locks paged by name after a cursor, sessions soonest to expire first
/// (filtered, bounded by the deadlines scanned), sessions per principal.
#[test]
fn console_views_page_locks_and_order_sessions_by_expiry() {
    let mut host = super::Routed::default();
    let mut harness = super::Harness::new(&mut host);
    for line in [
        "@0 open ttl=60000 principal=alice tenant:blue",
        "open ttl=5000 principal=bob",
        "open ttl=20000 principal=alice",
        "acquire 1 jobs/a",
        "acquire 1 jobs/b",
        "acquire 2 jobs/c",
        "acquire 3 jobs/c wait=60000",
        "acquire 2 other",
    ] {
        harness.line(line);
    }
    let state = &harness.state;
    let names = |(page, more): (Vec<crate::LockView>, bool)| {
        let names: Vec<String> = page.into_iter().map(|lock| lock.name).collect();
        (names, more)
    };
    assert_eq!(
        names(state.locks_page("jobs/", None, 2)),
        (vec!["jobs/a".to_owned(), "jobs/b".to_owned()], true)
    );
    assert_eq!(
        names(state.locks_page("jobs/", Some("jobs/b"), 2)),
        (vec!["jobs/c".to_owned()], false)
    );
    // A cursor before the prefix starts at the prefix.
    assert_eq!(names(state.locks_page("jobs/", Some("a"), 1)).0, ["jobs/a"]);

    let ids = |(page, more): (Vec<crate::SessionView>, bool)| {
        let ids: Vec<u64> = page.iter().map(|session| session.session_id).collect();
        (ids, more)
    };
    // Session 2 expires first (5 s), then 3 (20 s), then 1 (60 s).
    assert_eq!(
        ids(state.sessions_by_expiry(|_, _| true, 10, 100)).0,
        [2, 3, 1]
    );
    assert_eq!(
        ids(state.sessions_by_expiry(|principal, _| principal == "alice", 10, 100)).0,
        [3, 1]
    );
    assert_eq!(
        ids(state.sessions_by_expiry(
            |_, labels| labels.get("tenant").map(String::as_str) == Some("blue"),
            10,
            100
        ))
        .0,
        [1]
    );
    let (page, more) = ids(state.sessions_by_expiry(|_, _| true, 1, 100));
    assert_eq!((page, more), (vec![2], true));
    // The scan is bounded: one deadline looked at, one session found, more left.
    assert_eq!(
        ids(state.sessions_by_expiry(|_, _| true, 10, 1)),
        (vec![2], true)
    );
    assert_eq!(
        state.sessions_per_principal(10),
        [("alice".to_owned(), 2), ("bob".to_owned(), 1)]
    );
}
