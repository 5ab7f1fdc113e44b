//! The Python example (examples/python, on the client package in clients/python) takes and
//! releases a lock on a live cluster. The client's own tests (pytest) run from scripts/test.

use holdfast_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_example_takes_and_releases_a_lock() {
    let cluster = Cluster::start(3).await;
    // scripts/test provides a venv with the client installed (scripts/python-env).
    let python = std::env::var("HOLDFAST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let repo = holdfast_tests::repo_root();
    let run = tokio::process::Command::new(&python)
        .arg(repo.join("examples/python/lock_example.py"))
        .args([
            "--endpoint",
            cluster.addr(cluster.ids()[1]),
            "--lock",
            "python/it",
        ])
        .output()
        .await
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "example failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("fencing token") && stdout.contains("token is now stale"),
        "{stdout}"
    );
}
