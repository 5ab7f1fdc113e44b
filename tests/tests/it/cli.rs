//! The `holdfast lock` command: mutual exclusion for shell scripts, exit codes, and SIGTERM to
//! the command when the session is lost.

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_proto::v1::BindMode;
use holdfast_tests::cluster::{Cluster, holdfast_bin};
use tokio::process::Command;

use crate::support::holdfast_cli;

const LOOPS: usize = 4;
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_command_serializes_shell_loops() {
    let cluster = Cluster::start(3).await;
    let file = cluster.dir().join("shared.txt");
    let mut loops = Vec::new();
    for id in 0..LOOPS {
        // Each critical section writes two lines with a pause in between: any overlap interleaves.
        let body = format!(
            "echo \"begin {id} $HOLDFAST_FENCING_TOKEN\" >> {f}; sleep 0.05; echo \"end {id}\" >> {f}",
            f = file.display()
        );
        let script = format!(
            "for i in $(seq {ROUNDS}); do \"$HOLDFAST\" lock cli/file -- sh -c '{body}' || exit 1; done"
        );
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(script).env("HOLDFAST", holdfast_bin());
        shell.env(
            "HOLDFAST_ENDPOINTS",
            cluster
                .ids()
                .into_iter()
                .map(|id| cluster.addr(id).to_owned())
                .collect::<Vec<_>>()
                .join(","),
        );
        shell.env("RUST_LOG", "warn").kill_on_drop(true);
        loops.push(shell.spawn().expect("sh"));
    }
    for mut child in loops {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("loops finish")
            .unwrap();
        assert!(status.success(), "a loop failed: {status:?}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * LOOPS * ROUNDS, "{text}");
    let mut last_token = 0u64;
    for pair in lines.chunks(2) {
        let begin: Vec<&str> = pair[0].split_whitespace().collect();
        assert_eq!(begin[0], "begin", "{text}");
        assert_eq!(
            pair[1],
            format!("end {}", begin[1]),
            "interleaved critical sections:\n{text}"
        );
        let token: u64 = begin[2].parse().unwrap();
        assert!(
            token > last_token,
            "fencing tokens must increase: {token} after {last_token}"
        );
        last_token = token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_command_exit_codes() {
    let mut cluster = Cluster::start(3).await;
    // The command's own exit code passes through.
    let status = holdfast_cli(&cluster)
        .args(["lock", "cli/code", "--", "sh", "-c", "exit 7"])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7));

    // Not granted in time: 124.
    let client = cluster.client();
    let holder = client.open_session(60_000, "holder").await.unwrap();
    holder
        .acquire("cli/busy", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let status = holdfast_cli(&cluster)
        .args(["lock", "cli/busy", "--timeout", "300ms", "--", "true"])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(124));

    // Session lost while the command runs (the whole cluster is gone): SIGTERM to the command,
    // exit 75, well before the command would have finished.
    let marker = cluster.dir().join("terminated");
    let script = format!(
        "trap 'touch {}; exit 143' TERM; sleep 60 & wait",
        marker.display()
    );
    let mut running = holdfast_cli(&cluster)
        .args(["lock", "cli/lost", "--ttl", "3s", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let mut started = false;
    for _ in 0..100 {
        if client.describe("cli/lost").await.unwrap().lock.is_some() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started, "holdfast lock never took the lock");
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("exits after loss")
        .unwrap();
    assert_eq!(status.code(), Some(75));
    assert!(marker.exists(), "the command did not receive SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elect_command_leads_until_interrupted_then_resigns() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let mut leader = holdfast_cli(&cluster)
        .args(["elect", "cli/election", "alpha"])
        .spawn()
        .unwrap();
    let mut elected = None;
    for _ in 0..200 {
        if let Some(leadership) = client.leader("cli/election").await.unwrap() {
            elected = Some(leadership);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(elected.expect("holdfast elect was elected").value, b"alpha");
    let pid = leader.id().expect("running").to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status().await;
    let status = tokio::time::timeout(Duration::from_secs(20), leader.wait())
        .await
        .expect("exits on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        client.leader("cli/election").await.unwrap().is_none(),
        "resigned on Ctrl-C"
    );
}

/// `holdfast revoke NAME TOKEN` (an admin call): ends another session's hold; without the
/// admin permission it is refused. (Regression: its TOKEN argument once collided with the
/// global `--token` flag and the command panicked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_command_ends_a_hold() {
    let cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let client = cluster.client();
    let session = client.open_session(30_000, "holder").await.unwrap();
    let hold = session
        .acquire("cli/revoked", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let output = holdfast_cli(&cluster)
        .args(["revoke", "cli/revoked", &hold.token.to_string()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("revoked"), "{text}");
    let lock = client.describe("cli/revoked").await.unwrap().lock;
    assert!(lock.is_none(), "still held: {lock:?}");
    // The same token again: no longer a hold.
    let again = holdfast_cli(&cluster)
        .args(["revoke", "cli/revoked", &hold.token.to_string()])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success(), "{again:?}");
}

/// `holdfast lock --label` and `--priority` reach the policies: tenant-quota denies a session
/// without a `tenant` label and admits one with it; priority hands the lock to the waiter
/// started with the higher `--priority`, though it queued second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_command_passes_labels_and_priority_to_policies() {
    let cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let client = cluster.client();
    for (name, module, prefix, config) in [
        ("quota", "tenant_quota", "t/", ""),
        ("prio", "priority", "p/", "aging_ms = 0\n"),
    ] {
        client
            .deploy_policy(name, &holdfast_tests::policy_wasm(module))
            .await
            .unwrap();
        crate::policies::bind(&client, prefix, name, config, BindMode::Enforce)
            .await
            .unwrap();
    }

    let output = holdfast_cli(&cluster)
        .args(["lock", "t/x", "--timeout", "0s", "--", "true"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(125) && stderr.contains("tenant"),
        "{output:?}"
    );
    let status = holdfast_cli(&cluster)
        .args([
            "lock",
            "t/x",
            "--label",
            "tenant=acme",
            "--timeout",
            "0s",
            "--",
            "true",
        ])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "a tenant label admits");

    let holder = client.open_session(60_000, "holder").await.unwrap();
    let hold = holder
        .acquire("p/q", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    let order = cluster.dir().join("order");
    let mut waiting = Vec::new();
    for (priority, word) in [("1", "low"), ("9", "high")] {
        let script = format!("echo {word} >> {}", order.display());
        let child = holdfast_cli(&cluster)
            .args([
                "lock",
                "p/q",
                "--priority",
                priority,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .spawn()
            .unwrap();
        waiting.push(child);
        let queued = u32::try_from(waiting.len()).unwrap();
        crate::support::wait_for_lock(&client, "p/q", |lock| {
            lock.is_some_and(|l| l.waiters.len() as u32 == queued)
        })
        .await;
    }
    let lock = client.describe("p/q").await.unwrap().lock.unwrap();
    let priorities: Vec<i32> = lock.waiters.iter().map(|w| w.priority).collect();
    assert_eq!(
        priorities,
        [1, 9],
        "queue order with the requested priorities"
    );
    holder.release(&hold).await.unwrap();
    for mut child in waiting {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the waiters finish")
            .unwrap();
        assert!(status.success());
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "high\nlow\n");
}

/// `holdfast dev --nodes 5` runs five voters; the same data dir refuses another size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_runs_five_nodes() {
    let base = (0..50)
        .map(|_| holdfast_tests::cluster::free_port())
        .find(|&base| {
            base < u16::MAX - 5
                && (base..base + 5)
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .expect("5 free consecutive ports");
    let dir = std::env::temp_dir().join(format!("holdfast-dev5-{}-{base}", std::process::id()));
    let dev = |nodes: &str| {
        let mut command = Command::new(holdfast_bin());
        command
            .args(["dev", "--nodes", nodes, "--base-port", &base.to_string()])
            .args([
                "--metrics-listen",
                "off",
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        command
    };
    let mut running = dev("5").spawn().unwrap();
    let endpoints: Vec<String> = (base..base + 5).map(|p| format!("127.0.0.1:{p}")).collect();
    let client = holdfast_client::Client::connect(&endpoints).unwrap();
    let mut voters = 0;
    for _ in 0..200 {
        if let Ok(members) = client.members().await {
            voters = members.members.iter().filter(|m| m.voter).count();
            if voters == 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(voters, 5, "five voters");
    let session = client.open_session(10_000, "dev5").await.unwrap();
    assert!(
        session
            .acquire("dev5/lock", LockMode::Exclusive, 0)
            .await
            .unwrap()
            .is_some()
    );
    running.kill().await.unwrap();
    let output = dev("3").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--nodes 5"),
        "{output:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `holdfast elect --label zone=... --priority N` reaches election-preference: with the
/// incumbent gone, the candidate with the higher `--priority` in the preferred zone is elected,
/// though it started campaigning second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elect_command_passes_labels_and_priority_to_policies() {
    let cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let client = cluster.client();
    client
        .deploy_policy("zones", &holdfast_tests::policy_wasm("election_preference"))
        .await
        .unwrap();
    crate::policies::bind(
        &client,
        "e/",
        "zones",
        "preferred_zones = eu, us\n",
        BindMode::Enforce,
    )
    .await
    .unwrap();
    let incumbent = client
        .open_session_with_labels(60_000, "incumbent", &[("zone", "eu")])
        .await
        .unwrap();
    let leadership = incumbent
        .campaign("e/leader", b"incumbent", 0)
        .await
        .unwrap()
        .expect("nobody leads");
    let mut candidates = Vec::new();
    for (priority, value) in [("1", "low"), ("9", "high")] {
        let child = holdfast_cli(&cluster)
            .args([
                "elect",
                "e/leader",
                value,
                "--label",
                "zone=eu",
                "--priority",
                priority,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        candidates.push(child);
        let queued = candidates.len();
        crate::support::wait_for_lock(&client, "e/leader", |lock| {
            lock.is_some_and(|l| l.waiters.len() == queued)
        })
        .await;
    }
    let lock = client.describe("e/leader").await.unwrap().lock.unwrap();
    let priorities: Vec<i32> = lock.waiters.iter().map(|w| w.priority).collect();
    assert_eq!(priorities, [1, 9]);
    incumbent.resign(&leadership).await.unwrap();
    let mut elected = None;
    for _ in 0..200 {
        if let Some(leader) = client.leader("e/leader").await.unwrap()
            && leader.value != b"incumbent"
        {
            elected = Some(leader.value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(elected.as_deref(), Some(&b"high"[..]));
    for mut candidate in candidates {
        candidate.kill().await.unwrap();
    }
}
