//! Backups: `holdfast snapshot save` from a live cluster, `inspect`, and `restore` into the data
//! dirs of a new cluster that then serves exactly the state acknowledged before the save, with
//! every new fencing token above every token the old cluster granted.

use crate::support::holdfast_cli;
use holdfast_client::LockMode;
use holdfast_proto::v1 as pb;
use holdfast_tests::cluster::Cluster;
use holdfast_tests::policy_wasm;
use tokio::process::Command;

async fn run_ok(command: &mut Command) -> String {
    let output = command.output().await.expect("running holdfast");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

async fn run_err(command: &mut Command) -> String {
    let output = command.output().await.expect("running holdfast");
    assert!(!output.status.success(), "expected a failure: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_new_cluster() {
    let mut cluster = Cluster::start_with(3, &["--allow-admin"]).await;
    let client = cluster.client();
    let session = client.open_session(60_000, "backup").await.unwrap();
    let before = session
        .acquire("backup/before", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    client
        .deploy_policy("fifo", &policy_wasm("fifo"))
        .await
        .unwrap();
    client
        .bind_policy(pb::BindPolicyRequest {
            prefix: "backup/".into(),
            policy: "fifo".into(),
            version: 0,
            config: Vec::new(),
            mode: pb::BindMode::Enforce as i32,
        })
        .await
        .unwrap();

    let file = cluster.dir().join("cluster.backup");
    let saved = json(
        &run_ok(
            holdfast_cli(&cluster)
                .args(["-o", "json", "snapshot", "save"])
                .arg(&file),
        )
        .await,
    );
    let saved_index = saved["index"].as_u64().expect("index");
    assert!(saved_index > before.token, "{saved}");

    // Acknowledged after the save: not in the backup.
    let after = session
        .acquire("backup/after", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free");
    assert!(after.token > saved_index);

    let inspected = json(
        &run_ok(
            holdfast_cli(&cluster)
                .args(["-o", "json", "snapshot", "inspect"])
                .arg(&file),
        )
        .await,
    );
    assert_eq!(inspected["index"], saved_index, "{inspected}");
    assert_eq!(inspected["holds"], 1, "{inspected}");
    assert_eq!(inspected["sessions"], 1, "{inspected}");

    // A damaged file is refused by inspect and restore alike, and restore writes nothing.
    let damaged = cluster.dir().join("damaged.backup");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let error = run_err(
        holdfast_cli(&cluster)
            .args(["snapshot", "inspect"])
            .arg(&damaged),
    )
    .await;
    assert!(error.contains("SHA-256"), "{error}");
    let unused_dir = cluster.dir().join("never-written");
    let error = run_err(
        holdfast_cli(&cluster)
            .args(["snapshot", "restore"])
            .arg(&damaged)
            .arg(format!("--data-dir={}", unused_dir.display()))
            .args(["--id=1"])
            .args(cluster.peer_flags()),
    )
    .await;
    assert!(error.contains("SHA-256"), "{error}");
    assert!(!unused_dir.exists());
    std::fs::write(&damaged, b"not a backup").unwrap();
    let error = run_err(
        holdfast_cli(&cluster)
            .args(["snapshot", "inspect"])
            .arg(&damaged),
    )
    .await;
    assert!(error.contains("not a Holdfast backup"), "{error}");

    // The old cluster is gone; restore every member from the file into new data dirs.
    let ids = cluster.ids();
    for id in &ids {
        cluster.kill(*id);
    }
    // A restore never writes over a data dir.
    let error = run_err(
        holdfast_cli(&cluster)
            .args(["snapshot", "restore"])
            .arg(&file)
            .arg(format!("--data-dir={}", cluster.data_dir(1).display()))
            .args(["--id=1"])
            .args(cluster.peer_flags()),
    )
    .await;
    assert!(error.contains("not empty"), "{error}");
    for id in &ids {
        std::fs::remove_dir_all(cluster.data_dir(*id)).unwrap();
        let restored = json(
            &run_ok(
                holdfast_cli(&cluster)
                    .args(["-o", "json", "snapshot", "restore"])
                    .arg(&file)
                    .arg(format!("--data-dir={}", cluster.data_dir(*id).display()))
                    .arg(format!("--id={id}"))
                    .args(cluster.peer_flags()),
            )
            .await,
        );
        assert!(
            restored["restored_index"].as_u64().unwrap() > after.token,
            "{restored}"
        );
    }
    for id in &ids {
        cluster.start_node(*id);
    }
    cluster.wait_leader(&ids).await;

    // The state acknowledged before the save, nothing after it.
    let client = cluster.client();
    let lock = client
        .describe("backup/before")
        .await
        .unwrap()
        .lock
        .expect("held before the backup");
    assert_eq!(lock.holders.len(), 1);
    assert_eq!(lock.holders[0].token, before.token);
    assert_eq!(lock.holders[0].session_id, session.id);
    let gone = client.describe("backup/after").await.unwrap().lock;
    assert!(gone.is_none(), "granted after the backup: {gone:?}");
    let policies = client.list_policies().await.unwrap();
    assert!(policies.policies.iter().any(|p| p.name == "fifo"));
    assert!(policies.bindings.iter().any(|b| b.prefix == "backup/"));

    // New grants are fenced above everything the old cluster granted.
    let fresh = client.open_session(10_000, "restored").await.unwrap();
    let new = fresh
        .acquire("backup/after", LockMode::Exclusive, 0)
        .await
        .unwrap()
        .expect("free in the restored cluster");
    assert!(new.token > after.token, "{} <= {}", new.token, after.token);
    cluster.wait_converged(&ids).await;
    fresh.close().await.unwrap();
}
