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
use crate::report::percentile;

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
    /// A policy module to deploy and bind at the root ("") before loading, e.g. the
    /// tenant-quota example (every session has a `tenant` label: one of `TENANTS`).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The bound policy's config.
    #[arg(long, default_value = "")]
    policy_config: String,
}

/// Sessions are spread over this many tenants (`tenant` label `t-0` .. `t-9`).
const TENANTS: u64 = 10;
/// `Cluster.Status` calls timed once the locks are loaded.
const STATUS_CALLS: usize = 500;

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

/// Clients of the side load that runs while the backup is exported.
const SIDE_LOAD_CLIENTS: u64 = 16;
/// How long the side load runs before the export starts.
const SIDE_LOAD_WARMUP_MS: u64 = 500;

/// Acquires fresh locks (`scale/side/...`, try-locks) from `SIDE_LOAD_CLIENTS` clients until
/// `stop`; returns the latencies (µs) of those that started after the warm-up.
async fn side_load(
    channel: Channel,
    ids: Arc<Vec<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<u64>> {
    let begun = Instant::now();
    let tasks: Vec<_> = (0..SIDE_LOAD_CLIENTS)
        .map(|client| {
            let (channel, ids, stop) = (channel.clone(), Arc::clone(&ids), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut locks = pb::locks_client::LocksClient::new(channel);
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = pb::AcquireRequest {
                        session_id: ids[(client * 7_919 + n) as usize % ids.len()],
                        request_id: 0,
                        name: format!("scale/side/{client}/{n}"),
                        mode: pb::LockMode::Exclusive as i32,
                        max_holders: 0,
                        wait_timeout_ms: 0,
                        priority: 0,
                    };
                    let started = Instant::now();
                    locks.acquire(request).await?;
                    if started.duration_since(begun) >= Duration::from_millis(SIDE_LOAD_WARMUP_MS) {
                        latencies.push(started.elapsed().as_micros() as u64);
                    }
                    n += 1;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// What the load saw: every acquire's latency, and when each `PROGRESS_EVERY_LOCKS`-th
/// acquire completed.
#[derive(Default)]
struct Progress {
    done: std::sync::atomic::AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
    /// (acquires done, seconds since the load began).
    marks: std::sync::Mutex<Vec<(u64, f64)>>,
}

impl Progress {
    /// Records one acquire; returns how many are done.
    fn record(&self, took: Duration, since_start: Duration) -> u64 {
        self.latencies_us
            .lock()
            .expect("latencies lock")
            .push(took.as_micros() as u64);
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if done.is_multiple_of(PROGRESS_EVERY_LOCKS) {
            let mut marks = self.marks.lock().expect("marks lock");
            marks.push((done, since_start.as_secs_f64()));
        }
        done
    }

    /// Prints the acquire latencies and the rate over the first and the last
    /// `PROGRESS_EVERY_LOCKS` acquires.
    fn report(&self, total: u64) {
        let mut latencies = self.latencies_us.lock().expect("latencies lock").clone();
        latencies.sort_unstable();
        let ms = |p| percentile(&latencies, p) as f64 / 1e3;
        println!(
            "acquire latency while loading: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
            ms(0.50),
            ms(0.99),
            ms(0.999),
            latencies.last().copied().unwrap_or(0) as f64 / 1e3
        );
        let mut marks = self.marks.lock().expect("marks lock").clone();
        marks.sort_by_key(|(done, _)| *done);
        let at = |done: u64| {
            marks
                .iter()
                .find(|(count, _)| *count == done)
                .map(|(_, seconds)| *seconds)
        };
        let window = PROGRESS_EVERY_LOCKS;
        if total >= 2 * window
            && let (Some(first), Some(before_last), Some(last)) =
                (at(window), at(total - window), at(total))
        {
            let (first_rate, last_rate) =
                (window as f64 / first, window as f64 / (last - before_last));
            println!(
                "load rate: first {window} locks {first_rate:.0}/s, last {window} {last_rate:.0}/s ({:.0}% of the first)",
                100.0 * last_rate / first_rate
            );
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

    if let Some(path) = &args.policy {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let admin = Client::connect(&endpoints)?;
        let deployed = admin.deploy_policy("scale-policy", &wasm).await?;
        admin
            .bind_policy(pb::BindPolicyRequest {
                prefix: String::new(),
                policy: "scale-policy".to_string(),
                version: deployed.version,
                config: args.policy_config.clone().into_bytes(),
                mode: pb::BindMode::Enforce as i32,
            })
            .await?;
        println!(
            "policy {} bound at the root, config {:?}",
            path.display(),
            args.policy_config
        );
    }

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
                    labels: [("tenant".to_string(), format!("t-{}", k % TENANTS))].into(),
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
    let (side_channel, side_ids) = (channel.clone(), Arc::clone(&ids));
    let sessions = args.sessions;
    let loading = Instant::now();
    let progress = Arc::new(Progress::default());
    let recorder = Arc::clone(&progress);
    let acquired = load(args.locks, args.concurrency, move |j| {
        let locks = pb::locks_client::LocksClient::<Channel>::new(channel.clone());
        let session_id = ids[(j % sessions) as usize];
        let progress = Arc::clone(&recorder);
        async move {
            let started = Instant::now();
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
            let done = progress.record(started.elapsed(), loading.elapsed());
            if done.is_multiple_of(PROGRESS_EVERY_LOCKS) {
                println!(
                    "  {done} locks acquired, {:.1} s",
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

    progress.report(args.locks);
    let client = Client::connect(&endpoints)?;
    let status = client.status(leader).await?;
    println!(
        "leader applied index {}, {} sessions",
        status.applied_index, status.session_count
    );
    let mut status_us = Vec::with_capacity(STATUS_CALLS);
    for _ in 0..STATUS_CALLS {
        let started = Instant::now();
        client.status(leader).await?;
        status_us.push(started.elapsed().as_micros() as u64);
    }
    status_us.sort_unstable();
    println!(
        "Cluster.Status on the leader, {STATUS_CALLS} calls: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&status_us, 0.50) as f64 / 1e3,
        percentile(&status_us, 0.99) as f64 / 1e3
    );
    // Let a last snapshot and the metrics sampler catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = cluster.rss_bytes();
    for (index, (before, after)) in rss_before.iter().zip(&rss_after).enumerate() {
        let page =
            procs::scrape(&cluster.metrics_addrs().context("holdfast serves metrics")?[index])
                .await?;
        let ms = |name| procs::metric(&page, name).map_or(f64::NAN, |s| s * 1e3);
        println!(
            "node {}: rss {:.0} MiB -> {:.0} MiB ({:.0} bytes per held lock, sessions included); last snapshot {:.1} MiB built in {:.2} s, holding the state lock {:.1} ms at most; longest apply stall {:.1} ms (longest apply {:.1} ms)",
            index + 1,
            mib(*before),
            mib(*after),
            after.saturating_sub(*before) as f64 / args.locks as f64,
            procs::metric(&page, "holdfast_snapshot_bytes")
                .map_or(f64::NAN, |b| b / f64::from(1 << 20)),
            procs::metric(&page, "holdfast_snapshot_build_seconds").unwrap_or(f64::NAN),
            ms("holdfast_snapshot_lock_hold_seconds"),
            ms("holdfast_apply_stall_max_seconds"),
            ms("holdfast_apply_max_seconds"),
        );
    }

    // A backup export writes the whole state from a frozen view, a chunk at a time, with the
    // writer a snapshot build uses: acquires on fresh locks meanwhile show what apply and
    // clients see while a 1M-lock snapshot is written on the leader.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let side = tokio::spawn(side_load(side_channel, side_ids, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(SIDE_LOAD_WARMUP_MS)).await;
    let started = Instant::now();
    // From the leader, whose apply answers the acquires.
    let on_leader = Client::connect(&[&endpoints[leader]])?;
    let (header, _) = on_leader.snapshot().await.context("exporting a backup")?;
    let export = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut during = side.await??;
    during.sort_unstable();
    println!(
        "backup export (holdfast snapshot save): {:.1} MiB in {:.2} s; {} acquires meanwhile: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
        mib(header.size_bytes),
        export.as_secs_f64(),
        during.len(),
        percentile(&during, 0.50) as f64 / 1e3,
        percentile(&during, 0.99) as f64 / 1e3,
        percentile(&during, 0.999) as f64 / 1e3,
        during.last().copied().unwrap_or(0) as f64 / 1e3,
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
