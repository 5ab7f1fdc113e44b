//! The scale test: `--sessions` sessions holding `--locks` locks (lock j held by session
//! j mod sessions) in a fresh 3-node cluster, loaded through the leader with `--concurrency`
//! requests in flight. Reports the load rate, each node's RSS before and after (and per held
//! lock), the snapshot size and build time (from the nodes' metrics), the time to export a
//! backup, and the restart time of a killed follower (open rocksdb, load the snapshot, replay
//! the log after it, catch up).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use holdfast_client::Client;
use holdfast_proto::v1 as pb;
use tonic::transport::Channel;

use crate::procs::{self, LocalCluster};

/// Sessions live this long without keepalives (the server's maximum TTL).
const SCALE_SESSION_TTL_MS: u64 = 3_600_000;
/// How long a restarted node gets to catch up.
const RESTART_TIMEOUT_MS: u64 = 600_000;
/// Print the loading progress every this many locks.
const PROGRESS_EVERY_LOCKS: u64 = 100_000;

#[derive(Args)]
pub struct ScaleArgs {
    /// The `holdfast` binary (a release build).
    #[arg(long)]
    holdfast_bin: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    #[arg(long, default_value_t = 1_000_000)]
    locks: u64,
    /// Requests in flight while loading.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Extra flags for every `holdfast serve`, e.g.
    /// `--holdfast-flag=--checkpoint-every-entries=100000`.
    #[arg(long = "holdfast-flag", allow_hyphen_values = true)]
    holdfast_flags: Vec<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Attempts per request while loading: a leader change answers UNAVAILABLE, and the
/// requests are idempotent (request ids), so they are retried.
const ATTEMPTS: u32 = 50;
/// Pause between attempts.
const RETRY_PAUSE_MS: u64 = 200;

/// Calls `call` until it succeeds, fails with anything but UNAVAILABLE, or `ATTEMPTS` ran out.
async fn with_retries<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

/// Runs `count` calls of `call(k)` for k in 0..count, `concurrency` at a time; returns the
/// elapsed time.
async fn load<F, Fut>(count: u64, concurrency: u64, call: F) -> anyhow::Result<Duration>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let call = Arc::new(call);
    let tasks: Vec<_> = (0..concurrency)
        .map(|first| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut k = first;
                while k < count {
                    call(k).await?;
                    k += concurrency;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.sessions == 0 || args.locks == 0 {
        bail!("--sessions and --locks must be > 0");
    }
    let mut flags = vec!["--allow-admin"];
    flags.extend(args.holdfast_flags.iter().map(String::as_str));
    println!("3 nodes, flags: {}", flags.join(" "));
    let mut cluster = LocalCluster::holdfast_with(&args.holdfast_bin, 3, &flags)?;
    let leader = cluster.wait_ready().await?;
    let endpoints = cluster.endpoints();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = cluster.rss_bytes();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", endpoints[leader]))?
        .connect()
        .await?;

    let ids = Arc::new(std::sync::Mutex::new(vec![0u64; args.sessions as usize]));
    let opened = {
        let (channel, ids) = (channel.clone(), Arc::clone(&ids));
        load(args.sessions, args.concurrency, move |k| {
            let sessions = pb::sessions_client::SessionsClient::new(channel.clone());
            let ids = Arc::clone(&ids);
            async move {
                let request = pb::OpenSessionRequest {
                    ttl_ms: SCALE_SESSION_TTL_MS,
                    principal: format!("scale-{}", k % 100),
                    labels: Default::default(),
                };
                // Not idempotent: a retried open after a lost answer leaves one extra session.
                let response = with_retries(|| {
                    let (mut sessions, request) = (sessions.clone(), request.clone());
                    async move { sessions.open(request).await }
                })
                .await?
                .into_inner();
                ids.lock().expect("ids lock")[k as usize] = response.session_id;
                Ok(())
            }
        })
        .await?
    };
    println!(
        "opened {} sessions in {:.1} s ({:.0}/s)",
        args.sessions,
        opened.as_secs_f64(),
        args.sessions as f64 / opened.as_secs_f64()
    );
    let ids: Arc<Vec<u64>> = Arc::new(ids.lock().expect("ids lock").clone());
    let sessions = args.sessions;
    let loading = Instant::now();
    let acquired = load(args.locks, args.concurrency, move |j| {
        let locks = pb::locks_client::LocksClient::<Channel>::new(channel.clone());
        let session_id = ids[(j % sessions) as usize];
        async move {
            let request = pb::AcquireRequest {
                session_id,
                request_id: j / sessions + 1,
                name: format!("scale/{j:08}"),
                mode: pb::LockMode::Exclusive as i32,
                max_holders: 0,
                wait_timeout_ms: 0,
                priority: 0,
            };
            let response = with_retries(|| {
                let (mut locks, request) = (locks.clone(), request.clone());
                async move { locks.acquire(request).await }
            })
            .await?
            .into_inner();
            if response.status != pb::AcquireStatus::Acquired as i32 {
                bail!("scale/{j:08} was not granted: {response:?}");
            }
            if j > 0 && j % PROGRESS_EVERY_LOCKS == 0 {
                println!(
                    "  {j} locks acquired, {:.1} s",
                    loading.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
    })
    .await?;
    println!(
        "acquired {} locks in {:.1} s ({:.0}/s)",
        args.locks,
        acquired.as_secs_f64(),
        args.locks as f64 / acquired.as_secs_f64()
    );

    let client = Client::connect(&endpoints)?;
    let status = client.status(leader).await?;
    println!(
        "leader applied index {}, {} sessions",
        status.applied_index, status.session_count
    );
    // Let a last snapshot and the metrics sampler catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = cluster.rss_bytes();
    for (index, (before, after)) in rss_before.iter().zip(&rss_after).enumerate() {
        let page = procs::scrape(&cluster.metrics_addrs()[index]).await?;
        println!(
            "node {}: rss {:.0} MiB -> {:.0} MiB ({:.0} bytes per held lock, sessions included); last snapshot {:.1} MiB built in {:.2} s",
            index + 1,
            mib(*before),
            mib(*after),
            after.saturating_sub(*before) as f64 / args.locks as f64,
            procs::metric(&page, "holdfast_snapshot_bytes")
                .map_or(f64::NAN, |b| b / f64::from(1 << 20)),
            procs::metric(&page, "holdfast_snapshot_build_seconds").unwrap_or(f64::NAN),
        );
    }

    let started = Instant::now();
    let (header, _) = client.snapshot().await.context("exporting a backup")?;
    println!(
        "backup export (holdfast snapshot save): {:.1} MiB in {:.2} s",
        mib(header.size_bytes),
        started.elapsed().as_secs_f64()
    );

    // Restart a follower: open rocksdb, load the snapshot, replay the log after it, catch up.
    let follower = (leader + 1) % endpoints.len();
    let target = client.status(leader).await?.applied_index;
    cluster.kill(follower);
    let started = Instant::now();
    cluster.start(follower)?;
    let single = Client::connect(&[&endpoints[follower]])?;
    loop {
        if let Ok(status) = single.status(0).await
            && status.applied_index >= target
        {
            break;
        }
        cluster.check_running()?;
        if started.elapsed() > Duration::from_millis(RESTART_TIMEOUT_MS) {
            bail!(
                "node {} did not catch up within {RESTART_TIMEOUT_MS} ms",
                follower + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "restart of node {} (kill -9, start, applied up to index {target}): {:.2} s; rss {:.0} MiB",
        follower + 1,
        started.elapsed().as_secs_f64(),
        mib(cluster.rss_bytes()[follower])
    );
    Ok(())
}
