//! Policy deployment and bindings: validation in apply, longest-prefix routing, activation at
//! the next entry, rollback, shadow comparisons, faults counted per binding, and the counters
//! policies see. Deployed modules are minimal ABI-v1 modules; the `Routed` host answers with
//! native policies by policy name, so these tests exercise `apply`, not wasm.

use std::cell::Cell;

use super::{Routed, assert_text, run_hosted};
use crate::{
    AdmitDecision, AdmitInput, BuiltinFifo, LeaseDecision, NextInput, PolicyRuntime, limits,
};

/// Denies every request with `reason`; refuses any config but "" and "ok".
struct Deny(&'static str);

impl PolicyRuntime for Deny {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Deny {
            reason: self.0.to_string(),
        }
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
    fn init(&mut self, config: &[u8], _prefix: &str) -> Result<(), String> {
        match config {
            b"" | b"ok" => Ok(()),
            _ => Err("config must be ok".to_string()),
        }
    }
}

/// Denies a tenant that already holds `max` locks under the binding's prefix.
struct Quota {
    max: u32,
}

impl PolicyRuntime for Quota {
    fn admit(&mut self, input: &AdmitInput<'_>) -> AdmitDecision {
        let counters = &input.counters;
        if counters.tenant_holds >= self.max {
            return AdmitDecision::Deny {
                reason: format!(
                    "tenant {} holds {} (principal holds {}, waits {})",
                    counters.tenant,
                    counters.tenant_holds,
                    counters.principal_holds,
                    counters.principal_waits
                ),
            };
        }
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
}

/// Grants the last waiter first (LIFO) and gives 5 s leases.
struct Lifo;

impl PolicyRuntime for Lifo {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        if input.holders.is_empty() && !input.waiters.is_empty() {
            vec![input.waiters.len() - 1]
        } else {
            Vec::new()
        }
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision {
            lease_ms: 5_000,
            lock_delay_ms: 0,
        }
    }
}

/// Reports a guest failure on every call and answers with the fallbacks, as the wasm host does;
/// its `lease_for` answers beyond the limits (a fault `apply` itself catches).
#[derive(Default)]
struct Faulty {
    faults: Cell<u64>,
}

impl PolicyRuntime for Faulty {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        self.faults.set(self.faults.get() + 1);
        AdmitDecision::Deny {
            reason: "POLICY_ERROR".to_string(),
        }
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        self.faults.set(self.faults.get() + 1);
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision {
            lease_ms: limits::LEASE_MS_MAX + 1,
            lock_delay_ms: 0,
        }
    }
    fn fault_count(&self) -> u64 {
        self.faults.get()
    }
}

fn host(policies: Vec<(&str, Box<dyn PolicyRuntime>)>) -> Routed {
    let mut host = Routed::default();
    for (name, policy) in policies {
        host.by_policy.insert(name.to_string(), policy);
    }
    host
}

#[test]
fn bindings_route_by_longest_prefix_from_the_next_entry() {
    let mut host = host(vec![
        ("deny", Box::new(Deny("secure area"))),
        ("lifo", Box::new(Lifo)),
    ]);
    let out = run_hosted(
        &mut host,
        "
        open
        deploy deny
        deploy lifo
        acquire 1 secure/a
        bind secure/ deny
        acquire 1 secure/b
        acquire 1 securex
        bind secure/open/ builtin
        acquire 1 secure/open/c
        ?bindings
        unbind secure/
        acquire 1 secure/d
        unbind secure/
        ",
    );
    assert_text(
        &out,
        r#"
        #1 => opened s1 ttl=10000
           + session-opened s1
        #2 => deployed deny@1 created=true
           + policy-deployed deny@1
        #3 => deployed lifo@1 created=true
           + policy-deployed lifo@1
        #4 => acquired t4
           + acquired secure/a s1 t4 x
        #5 => bound "secure/" deny@1 Enforce
           + policy-bound "secure/" deny@1 Enforce
        #6 => rejected PolicyDenied { reason: "secure area", policy: "deny", version: 1, prefix: "secure/" }
        #7 => acquired t7
           + acquired securex s1 t7 x
        #8 => bound "secure/open/" builtin@0 Enforce
           + policy-bound "secure/open/" builtin@0 Enforce
        #9 => acquired t9
           + acquired secure/open/c s1 t9 x
        ?bindings => "secure/" Enforce deny@1 config="" at=5 faults=[] disagree=0/0; "secure/open/" Enforce builtin@0 config="" at=8 faults=[] disagree=0/0
        #10 => unbound "secure/" Enforce
           + policy-unbound "secure/" Enforce
        #11 => acquired t11
           + acquired secure/d s1 t11 x
        #12 => rejected NotBound { prefix: "secure/", mode: Enforce }
        "#,
    );
}

#[test]
fn a_bound_policy_decides_handoff_and_lease_and_rollback_restores_fifo() {
    let mut host = host(vec![("lifo", Box::new(Lifo))]);
    let out = run_hosted(
        &mut host,
        "
        open
        open
        open
        open
        deploy lifo
        bind - lifo
        acquire 1 l
        acquire 2 l wait=60000
        acquire 3 l wait=60000
        release 1 l 7
        bind - builtin
        acquire 1 l wait=60000
        release 3 l 10
        ",
    );
    assert_text(
        &out,
        r#"
        #1 => opened s1 ttl=10000
           + session-opened s1
        #2 => opened s2 ttl=10000
           + session-opened s2
        #3 => opened s3 ttl=10000
           + session-opened s3
        #4 => opened s4 ttl=10000
           + session-opened s4
        #5 => deployed lifo@1 created=true
           + policy-deployed lifo@1
        #6 => bound "" lifo@1 Enforce
           + policy-bound "" lifo@1 Enforce
        #7 => acquired t7 lease=5000
           + acquired l s1 t7 x lease=5000
        #8 => queued pos=0
           + queued l s2 pos=0
        #9 => queued pos=1
           + queued l s3 pos=1
        #10 => released t7 @10
           + released l s1 t7 Released
           + acquired l s3 t10 x lease=5000
        #11 => bound "" builtin@0 Enforce
           + policy-bound "" builtin@0 Enforce
        #12 => queued pos=1
           + queued l s1 pos=1
        #13 => released t10 @13
           + released l s3 t10 Released
           + acquired l s2 t13 x
        "#,
    );
}

#[test]
fn deploy_validates_versions_and_evicts_the_oldest_unbound() {
    let mut host = host(vec![("p", Box::new(Lifo))]);
    let mut script = String::from(
        "
        deploy Bad
        deploy builtin
        deploy p module=unpreparable
        deploy p module=v1
        deploy p module=v1
        bind - p v=1
        ",
    );
    for version in 2..=limits::POLICY_VERSIONS_KEPT + 1 {
        script.push_str(&format!("deploy p module=v{version}\n"));
    }
    script.push_str("?policies\nbind - p v=2\n");
    let out = run_hosted(&mut host, &script);
    assert!(
        out.contains(r#"#1 => rejected InvalidArgument { field: "name""#),
        "{out}"
    );
    assert!(
        out.contains(r#"#2 => rejected InvalidArgument { field: "name""#),
        "{out}"
    );
    assert!(
        out.contains(
            r#"#3 => rejected InvalidArgument { field: "wasm", reason: "the engine refused it" }"#
        ),
        "{out}"
    );
    assert!(out.contains("#4 => deployed p@1 created=true"), "{out}");
    assert!(out.contains("#5 => deployed p@1 created=false"), "{out}");
    // Version 1 is bound, so the ninth deploy forgets version 2 instead.
    let kept: Vec<String> = std::iter::once(1)
        .chain(3..=limits::POLICY_VERSIONS_KEPT + 1)
        .map(|version| format!("p@{version} "))
        .collect();
    let policies = out
        .lines()
        .find(|line| line.starts_with("?policies"))
        .expect("policies query");
    for version in &kept {
        assert!(policies.contains(version.as_str()), "{policies}");
    }
    assert!(!policies.contains("p@2 "), "{policies}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains(r#"rejected UnknownPolicy { name: "p", version: 2 }"#),
        "{out}"
    );
}

#[test]
fn deploy_refuses_modules_that_break_the_abi() {
    let mut harness_host = Routed::default();
    let mut harness = super::Harness::new(&mut harness_host);
    for (wasm, expect) in [
        (b"\0asm garbage".to_vec(), "not valid"),
        (
            vec![0; limits::POLICY_MODULE_BYTES_MAX + 1],
            "more than the",
        ),
        (
            wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap(),
            "missing export",
        ),
    ] {
        let applied = harness.apply(crate::Command::DeployPolicy {
            name: "bad".to_string(),
            wasm,
        });
        let rendered = super::render_outcome(&applied.outcome);
        assert!(
            rendered.contains("InvalidArgument") && rendered.contains(expect),
            "{rendered}"
        );
    }
    assert!(harness.state.policies().is_empty());
}

#[test]
fn bind_checks_policy_version_config_and_init() {
    let mut host = host(vec![("deny", Box::new(Deny("no")))]);
    let big = "x".repeat(limits::POLICY_CONFIG_BYTES_MAX + 1);
    let out = run_hosted(
        &mut host,
        &format!(
            "
            bind - nope
            deploy deny
            bind - deny v=2
            bind - builtin v=1
            bind - deny config=bad
            bind - deny config={big}
            bind - deny config=ok
            ?bindings
            "
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(r#"UnknownPolicy { name: "nope", version: 0 }"#),
        "{out}"
    );
    assert!(
        lines[3].contains(r#"UnknownPolicy { name: "deny", version: 2 }"#),
        "{out}"
    );
    assert!(
        lines[4].contains(r#"UnknownPolicy { name: "builtin", version: 1 }"#),
        "{out}"
    );
    assert!(
        lines[5]
            .contains(r#"field: "config", reason: "policy deny@1 refused it: config must be ok""#),
        "{out}"
    );
    assert!(lines[6].contains(r#"field: "config""#), "{out}");
    assert!(lines[7].contains(r#"bound "" deny@1 Enforce"#), "{out}");
}

#[test]
fn shadow_counts_disagreements_without_changing_decisions() {
    let mut host = host(vec![("deny", Box::new(Deny("shadow says no")))]);
    let out = run_hosted(
        &mut host,
        "
        open
        deploy deny
        bind app/ deny shadow
        acquire 1 app/x
        acquire 1 other
        ?bindings
        ",
    );
    assert_text(
        &out,
        r#"
        #1 => opened s1 ttl=10000
           + session-opened s1
        #2 => deployed deny@1 created=true
           + policy-deployed deny@1
        #3 => bound "app/" deny@1 Shadow
           + policy-bound "app/" deny@1 Shadow
        #4 => acquired t4
           + policy-disagreement app/x "app/" deny@1 admit
           + acquired app/x s1 t4 x
        #5 => acquired t5
           + acquired other s1 t5 x
        ?bindings => "app/" Shadow deny@1 config="" at=3 faults=[] disagree=1/2
        "#,
    );
}

#[test]
fn faults_are_counted_on_the_binding_with_an_event() {
    let mut host = host(vec![("faulty", Box::new(Faulty::default()))]);
    let out = run_hosted(
        &mut host,
        "
        open
        deploy faulty
        acquire 1 f
        bind f faulty
        acquire 1 f2
        ?bindings
        ?faults
        ",
    );
    assert!(
        out.contains(r#"#5 => rejected PolicyDenied { reason: "POLICY_ERROR", policy: "faulty", version: 1, prefix: "f" }"#),
        "{out}"
    );
    assert!(
        out.contains(r#"+ policy-fault f2 "f" faulty@1 Enforce admit"#),
        "{out}"
    );
    assert!(out.contains("faults=[admit:1]"), "{out}");
    assert!(out.contains("?faults => 1"), "{out}");
}

#[test]
fn out_of_range_leases_count_as_faults_of_the_binding() {
    let mut host = host(vec![("faulty", Box::new(Faulty::default()))]);
    let out = run_hosted(
        &mut host,
        "
        open
        open
        acquire 1 f
        acquire 2 f wait=60000
        deploy faulty
        bind f faulty
        release 1 f 3
        ?bindings
        ",
    );
    // The handoff's choose_next faulted (FIFO used) and its lease was clamped.
    assert!(
        out.contains(&format!(
            "acquired f s2 t7 x lease={}",
            limits::LEASE_MS_MAX
        )),
        "{out}"
    );
    assert!(out.contains("faults=[choose_next:1,lease_for:1]"), "{out}");
}

#[test]
fn policies_see_counts_under_their_prefix() {
    let mut host = host(vec![("quota", Box::new(Quota { max: 2 }))]);
    let out = run_hosted(
        &mut host,
        "
        open principal=a tenant:t1
        open principal=b tenant:t1
        open principal=c tenant:t2
        acquire 1 elsewhere
        deploy quota
        bind q/ quota
        acquire 1 q/1
        acquire 2 q/2
        acquire 2 q/3
        acquire 3 q/4
        release 1 q/1 7
        acquire 2 q/3
        ",
    );
    assert!(
        out.contains(r#"#9 => rejected PolicyDenied { reason: "tenant t1 holds 2 (principal holds 1, waits 0)", policy: "quota", version: 1, prefix: "q/" }"#),
        "{out}"
    );
    assert!(out.contains("#10 => acquired t10"), "{out}");
    assert!(out.contains("#12 => acquired t12"), "{out}");
}

/// Admits everything, replacing the requested priority with 7.
struct Reprioritize;

impl PolicyRuntime for Reprioritize {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::AdmitWithPriority { priority: 7 }
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
}

#[test]
fn admit_may_replace_the_requested_priority() {
    let mut host = host(vec![("reprioritize", Box::new(Reprioritize))]);
    let mut harness = super::Harness::new(&mut host);
    for line in [
        "open",
        "open",
        "deploy reprioritize",
        "bind q/ reprioritize",
        "acquire 1 q/a",
        "acquire 2 q/a wait=60000 prio=1",
        "acquire 2 other wait=60000 prio=1",
    ] {
        harness.line(line);
    }
    let waiters = harness.state.lock("q/a").expect("held").waiters;
    assert_eq!(waiters[0].priority, 7, "{waiters:?}");
    assert!(
        harness
            .state
            .lock("other")
            .is_some_and(|lock| lock.waiters.is_empty())
    );
}

/// Chooses the lock-delay of expiring holds: `delay` each, or a list of the wrong length.
struct ExpiryDelay {
    delay: u64,
    wrong_length: bool,
}

impl PolicyRuntime for ExpiryDelay {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision {
            lease_ms: 0,
            lock_delay_ms: 100,
        }
    }
    fn on_session_expire(&mut self, input: &crate::ExpireInput<'_>) -> Option<Vec<u64>> {
        let count = input.held.len() + usize::from(self.wrong_length);
        Some(vec![self.delay; count])
    }
}

#[test]
fn on_session_expire_chooses_the_lock_delay_of_each_binding_s_holds() {
    let mut host = host(vec![
        (
            "delay",
            Box::new(ExpiryDelay {
                delay: 5_000,
                wrong_length: false,
            }),
        ),
        (
            "broken",
            Box::new(ExpiryDelay {
                delay: 5_000,
                wrong_length: true,
            }),
        ),
    ]);
    let out = run_hosted(
        &mut host,
        "
        deploy delay
        deploy broken
        bind pay/ delay
        bind batch/ broken
        open ttl=2000
        acquire 5 pay/a
        acquire 5 pay/b
        acquire 5 batch/x
        acquire 5 free
        @3000 tick
        ?lock pay/a
        ?lock pay/b
        ?lock batch/x
        ?lock free
        ?bindings
        ",
    );
    // The bound policy's 5 s replace the 100 ms chosen at grant; the broken answer is a fault
    // and keeps the grant-time 100 ms; unbound locks had no lock-delay.
    assert!(
        out.contains("?lock pay/a => x/1 holders=[] waiters=[] delayed-until=8000"),
        "{out}"
    );
    assert!(
        out.contains("?lock pay/b => x/1 holders=[] waiters=[] delayed-until=8000"),
        "{out}"
    );
    assert!(
        out.contains("?lock batch/x => x/1 holders=[] waiters=[] delayed-until=3100"),
        "{out}"
    );
    assert!(out.contains("?lock free => none"), "{out}");
    assert!(out.contains("faults=[on_session_expire:1]"), "{out}");
}

/// Elects the highest priority (earliest on ties); preempts a leader of lower priority at
/// once; answers nonsense for locks named "*/broken".
struct HighestPriority;

impl PolicyRuntime for HighestPriority {
    fn admit(&mut self, _input: &AdmitInput<'_>) -> AdmitDecision {
        AdmitDecision::Admit
    }
    fn choose_next(&mut self, input: &NextInput<'_>) -> Vec<usize> {
        BuiltinFifo.choose_next(input)
    }
    fn lease_for(&mut self, _input: &AdmitInput<'_>) -> LeaseDecision {
        LeaseDecision::default()
    }
    fn elect(&mut self, input: &crate::ElectInput<'_>) -> Option<crate::ElectDecision> {
        if input.election.ends_with("/broken") {
            return Some(crate::ElectDecision::Elect {
                winner: 99,
                preempt_grace_ms: 0,
            });
        }
        let (best, candidate) = input
            .candidates
            .iter()
            .enumerate()
            .max_by_key(|(index, c)| (c.priority, std::cmp::Reverse(*index)))?;
        Some(match &input.incumbent {
            Some(incumbent) if incumbent.priority >= candidate.priority => {
                crate::ElectDecision::KeepIncumbent {
                    reevaluate_at_ms: None,
                }
            }
            _ => crate::ElectDecision::Elect {
                winner: best,
                preempt_grace_ms: 0,
            },
        })
    }
}

#[test]
fn an_elect_policy_runs_its_locks_as_elections() {
    let mut host = host(vec![("highest", Box::new(HighestPriority))]);
    let out = run_hosted(
        &mut host,
        "
        open
        open
        open
        open
        deploy highest
        bind e/ highest
        acquire 1 e/x wait=60000 prio=1
        acquire 2 e/x wait=60000 prio=0
        acquire 3 e/x wait=60000 prio=5
        acquire 4 e/x wait=60000 prio=3
        release 3 e/x 9
        acquire 1 e/broken wait=60000
        acquire 2 e/broken wait=60000 prio=9
        acquire 3 plain wait=60000
        acquire 4 plain wait=60000 prio=9
        ?bindings
        ",
    );
    assert_text(
        &out,
        r#"
        #1 => opened s1 ttl=10000
           + session-opened s1
        #2 => opened s2 ttl=10000
           + session-opened s2
        #3 => opened s3 ttl=10000
           + session-opened s3
        #4 => opened s4 ttl=10000
           + session-opened s4
        #5 => deployed highest@1 created=true
           + policy-deployed highest@1
        #6 => bound "e/" highest@1 Enforce
           + policy-bound "e/" highest@1 Enforce
        #7 => acquired t7
           + acquired e/x s1 t7 x
        #8 => queued pos=0
           + queued e/x s2 pos=0
        #9 => acquired t9
           + queued e/x s3 pos=1
           + released e/x s1 t7 Preempted
           + acquired e/x s3 t9 x
        #10 => queued pos=1
           + queued e/x s4 pos=1
        #11 => released t9 @11
           + released e/x s3 t9 Released
           + acquired e/x s4 t11 x
        #12 => acquired t12
           + acquired e/broken s1 t12 x
        #13 => queued pos=0
           + queued e/broken s2 pos=0
           + policy-fault e/broken "e/" highest@1 Enforce elect
        #14 => acquired t14
           + acquired plain s3 t14 x
        #15 => queued pos=0
           + queued plain s4 pos=0
        ?bindings => "e/" Enforce highest@1 config="" at=6 faults=[elect:1] disagree=0/0
        "#,
    );
}
