//! Policies deployed to a live 3-node cluster: every node makes the same decisions (tenant
//! quota admission, priority handoff), rollback restores FIFO, shadow mode counts
//! disagreements without deciding, a node restarted from a snapshot taken after the deploy
//! decides like the others, hostile modules are refused at deploy while the cluster serves,
//! and a module that fails only in apply gives its fallback and a fault count.

use std::sync::Arc;

use holdfast_client::{Client, LockMode, Session};
use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::Cluster;
use holdfast_tests::{hostile, policy_wasm};
use tonic::Code;

use crate::support::wait_for_lock;

const ADMIN: &str = "--allow-admin";

/// Binds `policy` (newest version) at `prefix` with `config` (shared with the CLI tests).
pub(crate) async fn bind(
    client: &Client,
    prefix: &str,
    policy: &str,
    config: &str,
    mode: pb::BindMode,
) -> Result<pb::BindPolicyResponse, tonic::Status> {
    client
        .bind_policy(pb::BindPolicyRequest {
            prefix: prefix.to_owned(),
            policy: policy.to_owned(),
            version: 0,
            config: config.as_bytes().to_vec(),
            mode: mode as i32,
        })
        .await
}

/// While `holder` holds `name`, queues each of `waiters` (session, priority) in order (each
/// queued before the next arrives), then releases; every waiter releases as soon as it is
/// granted. Returns the waiters' session ids in grant order.
async fn handoff_order(
    client: &Client,
    holder: &Session,
    name: &str,
    waiters: &[(Arc<Session>, i32)],
) -> Vec<u64> {
    let hold = holder
        .acquire(name, LockMode::Exclusive, 0)
        .await
        .expect("acquire")
        .expect("free");
    let mut tasks = Vec::new();
    for (queued, (session, priority)) in waiters.iter().enumerate() {
        let session = Arc::clone(session);
        let priority = *priority;
        let lock_name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let hold = session
                .acquire_with_priority(&lock_name, LockMode::Exclusive, 30_000, priority)
                .await
                .expect("queued acquire")
                .expect("granted before the wait timed out");
            session.release(&hold).await.expect("release");
            (hold.token, session.id)
        }));
        wait_for_lock(client, name, |lock| {
            lock.is_some_and(|lock| lock.waiters.len() == queued + 1)
        })
        .await;
    }
    holder.release(&hold).await.expect("release");
    let mut granted = Vec::new();
    for task in tasks {
        granted.push(task.await.expect("waiter task"));
    }
    granted.sort();
    granted
        .into_iter()
        .map(|(_, session_id)| session_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_quota_and_priority_decide_alike_on_every_node() {
    let cluster = Cluster::start_with(3, &[ADMIN]).await;
    let client = cluster.client();

    let quota = client
        .deploy_policy("tenant-quota", &policy_wasm("tenant_quota"))
        .await
        .expect("deploy tenant-quota");
    assert_eq!((quota.version, quota.created), (1, true));
    let again = client
        .deploy_policy("tenant-quota", &policy_wasm("tenant_quota"))
        .await
        .expect("redeploy");
    assert_eq!((again.version, again.created), (1, false));
    client
        .deploy_policy("priority", &policy_wasm("priority"))
        .await
        .expect("deploy priority");

    let refused = bind(
        &client,
        "tenants/",
        "tenant-quota",
        "max_holds = lots\n",
        pb::BindMode::Enforce,
    )
    .await
    .expect_err("init refuses a bad config");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("refused"), "{refused:?}");
    bind(
        &client,
        "tenants/",
        "tenant-quota",
        "max_holds = 1\nprefixes = tenants/{tenant}/\n",
        pb::BindMode::Enforce,
    )
    .await
    .expect("bind tenant-quota");
    bind(
        &client,
        "jobs/",
        "priority",
        "aging_ms = 0\n",
        pb::BindMode::Enforce,
    )
    .await
    .expect("bind priority");

    // Admission by tenant: one hold each, only under the tenant's own prefix.
    let alice = client
        .open_session_with_labels(30_000, "alice", &[("tenant", "acme")])
        .await
        .unwrap();
    let bob = client
        .open_session_with_labels(30_000, "bob", &[("tenant", "acme")])
        .await
        .unwrap();
    let carol = client.open_session(30_000, "carol").await.unwrap();
    let held = alice
        .acquire("tenants/acme/a", LockMode::Exclusive, 0)
        .await
        .expect("within quota");
    assert!(held.is_some());
    for (session, name, says) in [
        (&bob, "tenants/acme/b", "limit"),
        (&alice, "tenants/globex/x", "tenants/globex/x"),
        (&carol, "tenants/acme/c", "tenant"),
    ] {
        let denied = session
            .acquire(name, LockMode::Exclusive, 0)
            .await
            .expect_err("denied by tenant-quota");
        assert_eq!(denied.code(), Code::PermissionDenied, "{name}: {denied:?}");
        assert!(denied.message().contains(says), "{name}: {denied:?}");
    }
    assert!(
        carol
            .acquire("free/x", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .is_some(),
        "unbound locks use the built-in FIFO"
    );

    // Priority handoff: the highest priority first, not arrival order.
    let holder = client.open_session(30_000, "holder").await.unwrap();
    let mut waiters = Vec::new();
    for priority in [1, 5, 3] {
        let session = client.open_session(30_000, "waiter").await.unwrap();
        waiters.push((Arc::new(session), priority));
    }
    let ids: Vec<u64> = waiters.iter().map(|(s, _)| s.id).collect();
    let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
    assert_eq!(order, vec![ids[1], ids[2], ids[0]], "priority order");

    // Rollback to the built-in FIFO: arrival order again.
    bind(&client, "jobs/", "builtin", "", pb::BindMode::Enforce)
        .await
        .expect("rollback");
    let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
    assert_eq!(order, ids, "FIFO after rollback");

    // Shadow: priority evaluated beside FIFO, decisions stay FIFO, disagreements counted.
    bind(
        &client,
        "jobs/",
        "priority",
        "aging_ms = 0\n",
        pb::BindMode::Shadow,
    )
    .await
    .expect("bind shadow");
    let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
    assert_eq!(order, ids, "shadow mode does not change decisions");
    let described = client.describe_policy("jobs/q").await.unwrap();
    let shadow = described.shadow.expect("shadow binding");
    assert_eq!(shadow.policy, "priority");
    assert!(
        shadow.disagreements >= 1 && shadow.compared >= shadow.disagreements,
        "{shadow:?}"
    );
    assert_eq!(described.enforce.expect("enforce").policy, "builtin");

    // Every node reached the same state, counters included.
    cluster.wait_converged(&cluster.ids()).await;
    let mut views = Vec::new();
    for id in cluster.ids() {
        let list = cluster.client_of(id).list_policies().await.unwrap();
        views.push((list.bindings, list.policies, list.policy_fault_count));
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
}

/// What the refusal of each corpus module must say (the reason it was built for).
fn refusal(what: &str) -> &'static str {
    match what {
        "garbage bytes" => "magic header not detected",
        "empty module bytes" | "truncated wasm header" => "unexpected end-of-file",
        "oversize module" => "policy_module_bytes_max",
        "missing ABI marker export" => "missing export holdfast_abi_v1",
        "missing ABI version section" => "holdfast:policy-abi-version",
        "missing metadata section" => "holdfast:policy-meta",
        "metadata lists a hook that is not exported" => "differ from exported hooks",
        "disallowed import (WASI)" => "disallowed import wasi_snapshot_preview1.fd_write",
        "start function" => "start function",
        "float NaN tricks" => "floating-point instruction disallowed",
        "SIMD instruction" => "SIMD",
        "shared memory (threads)" => "threads must be enabled",
        "declared memory above the limit" => "more than the 256-page limit",
        "unknown export" => "unexpected export holdfast_secret",
        "hook with the wrong signature" => "must have type (i32, i32) -> i64",
        "infinite loop in admit" | "infinite loop in holdfast_alloc" => "OutOfFuel",
        "memory bomb in admit" => "hook admit failed on a sample input (memory limit)",
        "deep recursion in admit" => "StackOverflow",
        "huge reply (10 MiB)" => "reply too large",
        "reply outside memory" => "reply out of bounds",
        "reply that is not protobuf" => "undecodable reply",
        "trap in init" => "hook init failed on a sample input (trap: UnreachableCodeReached)",
        "choose_next grants a waiter index out of range" => {
            "choose_next failed on a sample input (invalid reply)"
        }
        other => panic!("no expected refusal for corpus module {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_modules_are_refused_at_deploy_while_the_cluster_serves() {
    let cluster = Cluster::start_with(3, &[ADMIN]).await;
    let client = cluster.client();
    let session = client.open_session(30_000, "steady").await.unwrap();
    let corpus = hostile::corpus();
    assert!(corpus.len() >= 20, "corpus of {}", corpus.len());
    for (what, wasm) in &corpus {
        let refused = client.deploy_policy("hostile", wasm).await.expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
        let expect = refusal(what);
        assert!(
            refused.message().contains(expect),
            "{what}: {refused:?}, expected {expect:?}"
        );
        // Other locks keep working between deploys.
        let hold = session
            .acquire("steady/lock", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .expect("steady lock is free");
        session.release(&hold).await.unwrap();
    }
    assert!(client.list_policies().await.unwrap().policies.is_empty());

    // A module that fails only in apply: deny POLICY_ERROR there, a fault counted on the
    // binding, and the lock table unharmed.
    client
        .deploy_policy("fragile", &hostile::trap_on_long_input())
        .await
        .expect("passes the deploy checks");
    bind(&client, "fragile/", "fragile", "", pb::BindMode::Enforce)
        .await
        .unwrap();
    assert!(
        session
            .acquire("fragile/short", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .is_some()
    );
    let long = format!("fragile/{}", "x".repeat(450));
    let denied = session
        .acquire(&long, LockMode::Exclusive, 0)
        .await
        .expect_err("admit traps");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("POLICY_ERROR"), "{denied:?}");
    let list = client.list_policies().await.unwrap();
    let binding = &list.bindings[0];
    assert_eq!(
        binding.faults,
        vec![pb::HookFaults {
            hook: "admit".to_owned(),
            count: 1
        }]
    );
    assert_eq!(list.policy_fault_count, 1);
    assert!(client.describe(&long).await.unwrap().lock.is_none());
    cluster.wait_converged(&cluster.ids()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_administration_needs_the_admin_flag() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let refused = client
        .deploy_policy("fifo", &policy_wasm("fifo"))
        .await
        .expect_err("no --allow-admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = bind(&client, "", "builtin", "", pb::BindMode::Enforce)
        .await
        .expect_err("no --allow-admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Reading is not administration.
    assert!(client.list_policies().await.unwrap().bindings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_from_a_snapshot_after_deploy_decides_like_the_others() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            ADMIN,
            "--snapshot-every-entries=20",
            "--snapshot-keep-entries=5",
        ],
    )
    .await;
    let client = cluster.client();
    client
        .deploy_policy("priority", &policy_wasm("priority"))
        .await
        .unwrap();
    bind(
        &client,
        "jobs/",
        "priority",
        "aging_ms = 0\n",
        pb::BindMode::Enforce,
    )
    .await
    .unwrap();
    let holder = client.open_session(60_000, "holder").await.unwrap();
    let mut waiters = Vec::new();
    for priority in [2, 7, 4] {
        let session = client.open_session(60_000, "waiter").await.unwrap();
        waiters.push((Arc::new(session), priority));
    }
    let ids: Vec<u64> = waiters.iter().map(|(s, _)| s.id).collect();
    // Enough entries for snapshots well after the deploy and bind.
    for _ in 0..3 {
        let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
        assert_eq!(order, vec![ids[1], ids[2], ids[0]]);
    }
    cluster.wait_converged(&cluster.ids()).await;

    // Node 3 restarts from its own snapshot (which holds the module and the binding) and
    // replays the log behind it; then it decides with the others.
    cluster.kill(3);
    let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
    assert_eq!(order, vec![ids[1], ids[2], ids[0]]);
    cluster.restart(3);
    cluster.wait_converged(&cluster.ids()).await;
    let order = handoff_order(&client, &holder, "jobs/q", &waiters).await;
    assert_eq!(order, vec![ids[1], ids[2], ids[0]]);
    cluster.wait_converged(&cluster.ids()).await;
    let restarted = cluster.client_of(3).list_policies().await.unwrap();
    assert_eq!(restarted.policies.len(), 1);
    assert_eq!(restarted.bindings[0].policy, "priority");
}

async fn run_cli(args: &[&str], endpoints: Option<String>) -> std::process::Output {
    let mut command = tokio::process::Command::new(holdfast_tests::cluster::holdfast_bin());
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    if let Some(endpoints) = endpoints {
        command.env("HOLDFAST_ENDPOINTS", endpoints);
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("holdfast finishes")
        .expect("holdfast runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_test_runs_scenarios_locally_and_fails_on_a_broken_expectation() {
    let module = |name: &str| {
        holdfast_tests::policy_wasm_path(name)
            .to_str()
            .expect("UTF-8 path")
            .to_owned()
    };
    for (policy, scenario, decision) in [
        ("priority", "priority", "jobs/q granted to high"),
        (
            "tenant_quota",
            "tenant-quota",
            "tenant acme holds 1 locks, its limit is 1",
        ),
    ] {
        let scenario =
            holdfast_tests::repo_root().join(format!("examples/scenarios/{scenario}.scenario"));
        let output = run_cli(
            &[
                "policy",
                "test",
                &module(policy),
                "--scenario",
                scenario.to_str().unwrap(),
            ],
            None,
        )
        .await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{policy}: {stdout}\n{output:?}");
        assert!(stdout.contains(decision), "{policy}: {stdout}");
        assert!(stdout.contains("0 expectation(s) failed"), "{stdout}");
    }

    // FIFO order where the scenario expects priority order: exit code 1, the line flagged.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("wrong.scenario");
    std::fs::write(
        &scenario,
        "open a\nopen b\nacquire a l\nacquire b l expect acquired\n",
    )
    .unwrap();
    let output = run_cli(
        &[
            "policy",
            "test",
            &module("fifo"),
            "--scenario",
            scenario.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("would-block  EXPECTED acquired"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_cli_deploys_binds_and_lists() {
    let cluster = Cluster::start_with(3, &[ADMIN]).await;
    let endpoints = Some(
        cluster
            .ids()
            .into_iter()
            .map(|id| cluster.addr(id).to_owned())
            .collect::<Vec<_>>()
            .join(","),
    );
    let module = holdfast_tests::policy_wasm_path("lease_rules")
        .to_str()
        .expect("UTF-8 path")
        .to_owned();
    let config = cluster.dir().join("lease.conf");
    std::fs::write(&config, "lease_ms.batch/ = 30000\n").unwrap();
    for args in [
        vec!["policy", "deploy", module.as_str(), "--name", "lease-rules"],
        vec![
            "policy",
            "bind",
            "batch/",
            "lease-rules@1",
            "--config",
            config.to_str().unwrap(),
        ],
    ] {
        let output = run_cli(&args, endpoints.clone()).await;
        assert!(output.status.success(), "{args:?}: {output:?}");
    }
    let output = run_cli(&["-o", "json", "policy", "list"], endpoints.clone()).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(r#""policy":"lease-rules""#), "{stdout}");
    assert!(stdout.contains(r#""prefix":"batch/""#), "{stdout}");
    let output = run_cli(&["policy", "describe", "batch/nightly"], endpoints.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("enforced by") && stdout.contains("lease-rules@1"),
        "{stdout}"
    );

    // The bound policy decides the lease: batch locks end after 30 s.
    let session = cluster
        .client()
        .open_session(30_000, "batch")
        .await
        .unwrap();
    let hold = session
        .acquire("batch/nightly", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(hold.lease_ms, 30_000);
    let other = session
        .acquire("other/lock", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(other.lease_ms, 0);
}
