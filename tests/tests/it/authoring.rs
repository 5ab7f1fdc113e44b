//! The policy author's journey outside this repository, as docs/policy-abi.md "Writing your
//! first policy" tells it: `holdfast policy new` in a directory of its own, the generated
//! native tests, `holdfast policy build` (and what it says about a module it refuses),
//! `holdfast policy test` on the generated scenario, then deploy to a 3-node cluster, bind in
//! shadow, compare, enforce (the deny reason reaches `holdfast lock`) and roll back.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::cluster::Cluster;

use crate::support::holdfast_cli;

/// Every step here is one command; none may take longer (the builds are the slow ones).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the two queued waiters wait: longer than the rest of the journey on a busy
/// machine (they are aborted at the end).
const WAITER_TIMEOUT_MS: u64 = 120_000;

async fn run(mut command: tokio::process::Command, what: &str) -> Output {
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(STEP_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {STEP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    eprintln!(
        "--- {what}: {} in {:?}\n{}{}",
        output.status,
        started.elapsed(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `cargo ARGS` in the generated crate, with its own target directory (the shared one of the
/// project stays free of test crates).
fn cargo(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command =
        tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .kill_on_drop(true);
    command
}

/// `holdfast ARGS` run in `dir` to its end (its output is printed, labelled with ARGS).
async fn holdfast(cluster: &Cluster, dir: &Path, args: &[&str]) -> Output {
    run(cli(cluster, args, dir), &args.join(" ")).await
}

fn cli(cluster: &Cluster, args: &[&str], dir: &Path) -> tokio::process::Command {
    let mut command = holdfast_cli(cluster);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_crate_outside_the_repo_goes_from_new_to_enforced_and_back() {
    let cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let work = cluster.dir().join("author");
    std::fs::create_dir_all(&work).unwrap();
    let sdk = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../policy-sdk");

    // new: a crate of its own, on the SDK by path.
    let sdk_arg = sdk.to_str().unwrap();
    let output = holdfast(
        &cluster,
        &work,
        &["policy", "new", "queue-cap", "--sdk", sdk_arg],
    )
    .await;
    assert!(output.status.success());
    let crate_dir = work.join("queue-cap");
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "scenarios/basic.scenario",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} not generated");
    }
    let again = holdfast(
        &cluster,
        &work,
        &["policy", "new", "queue-cap", "--sdk", sdk_arg],
    )
    .await;
    assert!(!again.status.success() && text(&again).contains("not empty"));

    // The generated native tests pass as generated.
    let output = run(cargo(&crate_dir, &["test", "--quiet"]), "cargo test").await;
    assert!(output.status.success());
    assert!(text(&output).contains("3 passed"), "{}", text(&output));

    // build: the pinned target and flags, then a node's deploy checks.
    let output = holdfast(&cluster, &crate_dir, &["policy", "build"]).await;
    assert!(output.status.success());
    let module = crate_dir.join("target/wasm32v1-none/release/queue_cap.wasm");
    let built = text(&output);
    assert!(
        built.contains(&format!("ok   {}", module.display()))
            && built.contains("hooks init,admit,choose_next"),
        "{built}"
    );
    let module_bytes = std::fs::read(&module).unwrap();

    // A module the cluster would refuse is refused here, with what to change.
    let source = crate_dir.join("src/lib.rs");
    let original = std::fs::read_to_string(&source).unwrap();
    // The reason now formats a float: float instructions the optimizer cannot remove.
    let with_float = original.replace(
        "AdmitReply::deny(format!(",
        "AdmitReply::deny(format!(\"{} \", req.now_ms as f64 / 7.0) + &format!(",
    );
    assert_ne!(
        with_float, original,
        "the template changed: update this edit"
    );
    std::fs::write(&source, with_float).unwrap();
    let output = holdfast(&cluster, &crate_dir, &["policy", "build"]).await;
    let refused = text(&output);
    assert!(
        !output.status.success()
            && refused.contains("FAIL")
            && refused.contains("what to change")
            && refused.contains("floats"),
        "{refused}"
    );
    std::fs::write(&source, original).unwrap();
    let output = holdfast(&cluster, &crate_dir, &["policy", "build"]).await;
    assert!(output.status.success());
    assert_eq!(
        std::fs::read(&module).unwrap(),
        module_bytes,
        "the same source builds the same module"
    );

    // test: the generated scenario passes against the built module.
    let module_arg = module.to_str().unwrap();
    let output = holdfast(
        &cluster,
        &crate_dir,
        &[
            "policy",
            "test",
            module_arg,
            "--scenario",
            "scenarios/basic.scenario",
        ],
    )
    .await;
    assert!(output.status.success());
    assert!(text(&output).contains("0 expectation(s) failed"));

    // record: a backup, then the log, while the rest of the journey runs on the cluster, until
    // Ctrl-C once the waiters below have queued (not a duration: a deploy on a busy machine
    // takes seconds).
    let history = crate_dir.join("history");
    let history_arg = history.to_str().unwrap().to_owned();
    let mut recording = cli(
        &cluster,
        &["record", "--out", &history_arg, "--duration", "120s"],
        &crate_dir,
    );
    recording
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let recording = recording.spawn().expect("record starts");
    let recording_pid = recording.id().expect("record runs");
    let snapshot = history.join("snapshot.hfb");
    for _ in 0..600 {
        if snapshot.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(snapshot.is_file(), "record took no backup in 30 s");

    // deploy, then bind in shadow: the built-in keeps deciding, disagreements are counted.
    let config = crate_dir.join("queue.conf");
    std::fs::write(&config, "max_waiters = 1\n").unwrap();
    let config_arg = config.to_str().unwrap();
    for args in [
        &["policy", "deploy", module_arg, "--name", "queue-cap"][..],
        &[
            "policy",
            "bind",
            "jobs/",
            "queue-cap",
            "--config",
            config_arg,
            "--shadow",
        ],
    ] {
        assert!(holdfast(&cluster, &crate_dir, args).await.status.success());
    }
    let client = cluster.client();
    let holder = client.open_session(30_000, "holder").await.unwrap();
    holder
        .acquire("jobs/nightly", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    // Two waiters: the second is one more than max_waiters, and under shadow it still queues.
    let mut waiters = Vec::new();
    let mut waiters_sessions = Vec::new();
    for name in ["first", "second"] {
        let session = std::sync::Arc::new(client.open_session(30_000, name).await.unwrap());
        let waiting = std::sync::Arc::clone(&session);
        waiters.push(tokio::spawn(async move {
            waiting
                .acquire("jobs/nightly", LockMode::Exclusive, WAITER_TIMEOUT_MS)
                .await
        }));
        crate::support::wait_for_lock(&client, "jobs/nightly", |lock| {
            lock.is_some_and(|l| l.waiters.iter().any(|w| w.session_id == session.id))
        })
        .await;
        waiters_sessions.push(session);
    }
    let output = holdfast(&cluster, &crate_dir, &["-o", "json", "policy", "list"]).await;
    let listed = text(&output);
    assert!(
        listed.contains(r#""mode":"shadow""#) && listed.contains(r#""disagreements":1"#),
        "{listed}"
    );

    // Ctrl-C: the recording takes what the node it reads had applied, which is everything
    // once the cluster has converged.
    cluster.wait_converged(&cluster.ids()).await;
    // By its pid: the child this test started and has not yet waited for.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &recording_pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let recorded = tokio::time::timeout(STEP_TIMEOUT, recording.wait_with_output())
        .await
        .expect("record stops on Ctrl-C")
        .expect("record's output");
    eprintln!("--- record: {}\n{}", recorded.status, text(&recorded));
    assert!(recorded.status.success(), "{}", text(&recorded));

    // replay: the recorded traffic under the candidate, beside what the cluster decided.
    let output = holdfast(
        &cluster,
        &crate_dir,
        &[
            "policy",
            "replay",
            module_arg,
            "--history",
            &history_arg,
            "--prefix",
            "jobs/",
            "--config",
            config_arg,
        ],
    )
    .await;
    let replayed = text(&output);
    assert!(
        output.status.success()
            && replayed.contains("candidate: denied: jobs/nightly already has 1 waiters")
            && replayed.contains("recorded:  nothing")
            && replayed.contains("candidate  grants 1  denials 1"),
        "{replayed}"
    );

    // enforce: the same binding decides, and its reason reaches the CLI.
    let output = holdfast(
        &cluster,
        &crate_dir,
        &[
            "policy",
            "bind",
            "jobs/",
            "queue-cap",
            "--config",
            config_arg,
        ],
    )
    .await;
    assert!(output.status.success());
    let output = holdfast(
        &cluster,
        &crate_dir,
        &["lock", "jobs/nightly", "--timeout", "5s", "--", "true"],
    )
    .await;
    let denied = text(&output);
    assert!(
        !output.status.success()
            && denied.contains("max_waiters = 1")
            && denied.contains("queue-cap@1"),
        "{denied}"
    );
    // Programs get it structured: a PolicyDenial in the status details.
    let fourth = client.open_session(30_000, "fourth").await.unwrap();
    let status = fourth
        .acquire("jobs/nightly", LockMode::Exclusive, 5_000)
        .await
        .expect_err("denied by the policy");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let denial = holdfast_proto::policy_denial(&status).expect("a PolicyDenial detail");
    assert_eq!(
        (
            denial.policy.as_str(),
            denial.version,
            denial.prefix.as_str()
        ),
        ("queue-cap", 1, "jobs/")
    );
    assert!(denial.reason.contains("max_waiters = 1"), "{denial:?}");

    // A grant names the policy that decided it, in Describe and in the watch event.
    let first_waiter = waiters_sessions[0].id;
    holder.close().await.unwrap();
    crate::support::wait_for_lock(&client, "jobs/nightly", |lock| {
        lock.is_some_and(|l| l.holders.iter().any(|h| h.session_id == first_waiter))
    })
    .await;
    let lock = client.describe("jobs/nightly").await.unwrap().lock.unwrap();
    assert_eq!(
        (
            lock.holders[0].policy.as_str(),
            lock.holders[0].policy_version
        ),
        ("queue-cap", 1),
        "{lock:?}"
    );
    let mut events = client.watch("jobs/", 1).await.unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = events.message().await.unwrap().expect("the watch goes on");
            if let Some(event) = response.events.into_iter().find(|e| {
                e.kind == holdfast_proto::v1::EventKind::Acquired as i32
                    && e.session_id == first_waiter
            }) {
                return event;
            }
        }
    })
    .await
    .expect("the grant's watch event");
    assert_eq!(
        (granted.policy.as_str(), granted.policy_version),
        ("queue-cap", 1)
    );

    // roll back: without the binding, the built-in queues the request again.
    for args in [
        &["policy", "unbind", "jobs/"][..],
        &["policy", "unbind", "jobs/", "--shadow"],
    ] {
        assert!(holdfast(&cluster, &crate_dir, args).await.status.success());
    }
    let third = client.open_session(30_000, "third").await.unwrap();
    let queued = third
        .acquire("jobs/nightly", LockMode::Exclusive, 300)
        .await
        .unwrap_or_else(|e| panic!("queues, then times out; not {e:?}"));
    assert!(queued.is_none(), "the lock is held: {queued:?}");
    for waiter in waiters {
        waiter.abort();
    }
}
