//! Any language: the Python example (stubs generated from proto/ with grpcio-tools) takes and
//! releases a lock on a live cluster.

use holdfast_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_example_takes_and_releases_a_lock() {
    let cluster = Cluster::start(3).await;
    // scripts/test provides a venv with grpcio (scripts/python-env); plain python3 otherwise.
    let python = std::env::var("HOLDFAST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let repo = holdfast_tests::repo_root();
    let stubs = cluster.dir().join("python-stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let protos: Vec<String> = [
        "common",
        "sessions",
        "locks",
        "cluster",
        "watch",
        "elections",
    ]
    .iter()
    .map(|p| format!("holdfast/v1/{p}.proto"))
    .collect();
    let generated = tokio::process::Command::new(&python)
        .current_dir(repo.join("proto"))
        .args(["-m", "grpc_tools.protoc", "-I", "."])
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args(&protos)
        .output()
        .await
        .expect("running python");
    assert!(
        generated.status.success(),
        "generating stubs failed (is grpcio-tools installed? scripts/python-env): {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let run = tokio::process::Command::new(&python)
        .arg(repo.join("examples/python/lock_example.py"))
        .args([
            "--endpoint",
            cluster.addr(cluster.ids()[1]),
            "--lock",
            "python/it",
        ])
        .env("PYTHONPATH", &stubs)
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
