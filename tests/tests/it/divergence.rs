//! The determinism guard: a replica that diverges (here on purpose, through the test-only
//! HOLDFAST_TEST_ONLY_DIVERGE_AT setting) is reported by every node within one checkpoint
//! interval, while a healthy cluster reports nothing.

use std::time::Duration;

use holdfast_client::LockMode;
use holdfast_tests::browser::Browser;
use holdfast_tests::cluster::{Cluster, ClusterOptions};
use tokio::time::Instant;

const CHECKPOINT_EVERY: u64 = 10;
/// The server's `guard::GUARD_POLL_MS` (this crate does not link the server).
const GUARD_POLL_MS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_divergent_replica_raises_the_alarm_within_one_checkpoint() {
    let mut cluster = Cluster::start_opts(ClusterOptions {
        size: 3,
        extra_args: vec![format!("--checkpoint-every-entries={CHECKPOINT_EVERY}")],
        http: true,
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    let session = client.open_session(30_000, "guard").await.unwrap();
    let churn = |rounds: usize| {
        let session = &session;
        async move {
            for _ in 0..rounds {
                let hold = session
                    .acquire("guard/lock", LockMode::Exclusive, 0)
                    .await
                    .unwrap()
                    .expect("free");
                session.release(&hold).await.unwrap();
            }
        }
    };
    churn(3 * CHECKPOINT_EVERY as usize).await;
    let (applied, _) = cluster.wait_converged(&cluster.ids()).await;
    // Healthy: checkpoints taken and compared, no alarm anywhere.
    tokio::time::sleep(Duration::from_millis(2 * GUARD_POLL_MS)).await;
    for id in cluster.ids() {
        let status = cluster.client_of(id).status(0).await.unwrap();
        assert!(status.checkpoint_index >= CHECKPOINT_EVERY, "{status:?}");
        assert_eq!(status.digest_mismatches, 0, "node {id}: {status:?}");
        assert!(status.divergence.is_empty(), "node {id}: {status:?}");
    }

    // Node 3 restarts set to perturb its state right after an entry a little ahead.
    let diverge_at = applied + 5;
    cluster.set_env(3, "HOLDFAST_TEST_ONLY_DIVERGE_AT", &diverge_at.to_string());
    cluster.restart(3);
    cluster.wait_leader(&cluster.ids()).await;
    // The perturbation comes right after applying `diverge_at`, before that entry's own
    // checkpoint (if it is one): the first checkpoint at or after it differs.
    let first_checkpoint_after = diverge_at.div_ceil(CHECKPOINT_EVERY) * CHECKPOINT_EVERY;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut alarmed = Vec::new();
    while alarmed.len() < 3 {
        churn(2).await;
        alarmed.clear();
        for id in cluster.ids() {
            if let Ok(status) = cluster.client_of(id).status(0).await
                && !status.divergence.is_empty()
            {
                alarmed.push((id, status.divergence));
            }
        }
        assert!(
            Instant::now() < deadline,
            "alarm not raised on every node: {alarmed:?}\n{}",
            cluster.logs_hint()
        );
    }
    // Every node names the first checkpoint after the divergence; 1 and 2 blame node 3.
    let at = format!("log index {first_checkpoint_after} ");
    for (id, divergence) in &alarmed {
        assert!(divergence.contains(&at), "node {id}: {divergence}");
        if *id != 3 {
            assert!(divergence.contains("node 3"), "node {id}: {divergence}");
        }
    }

    // The console's cluster page cannot miss it: a red banner across the top, naming node 3.
    let browser = tokio::task::block_in_place(Browser::start).expect("a headless Chromium");
    let url = format!("http://{}/console#/cluster", cluster.http_addr(1));
    tokio::task::block_in_place(|| {
        browser.goto(&url)?;
        browser.wait_for(
            "const alarm = document.getElementById('alarm'); \
             return !alarm.hidden && alarm.textContent.includes('DETERMINISM GUARD') \
             && alarm.textContent.includes('node 3') \
             && document.getElementById('digests').textContent === 'DISAGREE'",
            Duration::from_secs(10),
        )?;
        browser.screenshot(&crate::console::screenshots_dir().join("7-cluster-divergence.png"))
    })
    .expect("the console shows the determinism guard's alarm");
}
