//! `holdfast-bench`: issue #6's scenarios against Holdfast or etcd.
//!
//! - `run`: one scenario against a running cluster (`--endpoints`).
//! - `compare`: starts a 3-member etcd cluster, a 3-server ZooKeeper ensemble and a 3-node
//!   Holdfast cluster on 127.0.0.1 (fsync on, default settings), runs S1 (1 and 64 clients),
//!   S2 (16) against all three and S3 (64) against etcd and Holdfast, alternately (etcd,
//!   ZooKeeper, Holdfast, etcd, ...), then S4 (kill -9 of the leader under S1 with 16 clients,
//!   5 times each, etcd and Holdfast), and prints the table with the ratio to the best anchor,
//!   targets, CPU per 1k ops, entries per fsync and RSS. `scripts/bench-compare` installs etcd
//!   and ZooKeeper and builds this.
//! - `scale`: N sessions holding M locks in a 3-node Holdfast cluster: RSS per held lock,
//!   snapshot size and time, restart (replay) time.

mod procs;
mod report;
mod scale;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use procs::LocalCluster;
use report::Point;
use workload::{Scenario, System};

/// jemalloc, as the server binary uses: the harness's own malloc/free is a share of the machine
/// that every system under test competes with, so the same cheaper allocator serves all three.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "holdfast-bench",
    about = "Lock benchmarks: Holdfast, etcd and ZooKeeper side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One scenario against a running cluster.
    Run(RunArgs),
    /// Start etcd, ZooKeeper and Holdfast clusters and run every scenario against each.
    Compare(CompareArgs),
    /// Many sessions and held locks in one Holdfast cluster: memory, snapshot, restart.
    Scale(scale::ScaleArgs),
}

#[derive(Args)]
struct Timing {
    /// Seconds measured per point.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds run before measuring (samples dropped).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print JSON (one object per point) instead of text.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = System::Holdfast)]
    system: System,
    /// Comma-separated client addresses of every member.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Scenario::Cycles)]
    scenario: Scenario,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[command(flatten)]
    timing: Timing,
}

#[derive(Args)]
struct CompareArgs {
    /// The `holdfast` binary (a release build).
    #[arg(long)]
    holdfast_bin: PathBuf,
    /// The `etcd` binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// The `java` that runs ZooKeeper.
    #[arg(long, default_value = "/usr/bin/java")]
    java_bin: PathBuf,
    /// ZooKeeper's class path (Debian's `zookeeper` package).
    #[arg(long, default_value = "/usr/share/java/zookeeper.jar")]
    zookeeper_classpath: String,
    /// Alternations per scenario (each point is run this many times per system; the table
    /// shows the median run by throughput).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Leader kills per system in S4 (0 = skip S4).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Only these points, e.g. `S1x1,S3x64` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra flags for every `holdfast serve` (experiments; the table is for the defaults),
    /// e.g. `--holdfast-flag=--election-timeout-max-ms=300`.
    #[arg(long = "holdfast-flag", allow_hyphen_values = true)]
    holdfast_flags: Vec<String>,
    #[command(flatten)]
    timing: Timing,
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Cycles => "S1",
        Scenario::Handoff => "S2",
        Scenario::Keepalive => "S3",
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let work = async {
            match cli.command {
                Command::Run(args) => run(args).await,
                Command::Compare(args) => compare(args).await,
                Command::Scale(args) => scale::run(args).await,
            }
        };
        // Ctrl-C / SIGTERM end the work future, which drops the clusters it started and so
        // kills their processes (by pid) instead of leaving them running.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = work => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the clusters it started are stopped"),
            _ = terminate.recv() => bail!("terminated; the clusters it started are stopped"),
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let samples = workload::run(
        args.system,
        &args.endpoints,
        args.scenario,
        args.clients,
        Duration::from_secs(args.timing.warmup),
        Duration::from_secs(args.timing.duration),
    )
    .await?;
    let point = Point::from_samples(args.system, scenario_name(args.scenario), &samples);
    print_point(&point, args.timing.output);
    Ok(())
}

fn print_point(point: &Point, output: Output) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(point).expect("serializable")),
        Output::Text => println!(
            "{:<8} {} x{:<3} {}  {}",
            format!("{:?}", point.system).to_lowercase(),
            point.scenario,
            point.clients,
            point.line(),
            point.server_line()
        ),
    }
}

/// Counters read from every member's metrics before and after a run.
struct ServerCounters {
    /// Σ over members of the last log index (Holdfast) or committed proposals (etcd).
    entries: f64,
    /// Σ over members of log fsyncs.
    fsyncs: f64,
}

async fn server_counters(cluster: &LocalCluster) -> Option<ServerCounters> {
    let (entries, fsyncs) = match cluster.system {
        System::Holdfast => (
            "holdfast_raft_last_log_index",
            "holdfast_wal_fsync_seconds_count",
        ),
        System::Etcd => (
            "etcd_server_proposals_committed_total",
            "etcd_disk_wal_fsync_duration_seconds_count",
        ),
        System::Zookeeper => return None,
    };
    let mut counters = ServerCounters {
        entries: 0.0,
        fsyncs: 0.0,
    };
    for addr in cluster.metrics_addrs()? {
        let page = procs::scrape(&addr).await.ok()?;
        counters.entries += procs::metric(&page, entries)?;
        counters.fsyncs += procs::metric(&page, fsyncs).unwrap_or(0.0);
    }
    Some(counters)
}

/// Runs one point against `cluster` and adds what the servers did meanwhile.
async fn measure(
    cluster: &mut LocalCluster,
    scenario: Scenario,
    clients: usize,
    timing: &Timing,
) -> anyhow::Result<Point> {
    cluster.wait_ready().await?;
    let cpu_before = cluster.cpu_seconds();
    let counters_before = server_counters(cluster).await;
    let samples = workload::run(
        cluster.system,
        &cluster.endpoints(),
        scenario,
        clients,
        Duration::from_secs(timing.warmup),
        Duration::from_secs(timing.duration),
    )
    .await?;
    // The counters cover warm-up and the measured window: rates use both.
    let ran = Duration::from_secs(timing.warmup + timing.duration).as_secs_f64();
    let cpu = cluster.cpu_seconds() - cpu_before;
    let counters_after = server_counters(cluster).await;
    cluster.check_running()?;
    let mut point = Point::from_samples(cluster.system, scenario_name(scenario), &samples);
    let ops_per_second = point.per_second;
    point.cpu_seconds = Some(cpu);
    point.cpu_ms_per_1k_ops = Some(cpu * 1000.0 / (ops_per_second * ran).max(1.0) * 1000.0);
    point.rss_mib = Some(
        cluster
            .rss_bytes()
            .iter()
            .map(|b| *b as f64 / (1 << 20) as f64)
            .collect(),
    );
    if let (Some(before), Some(after)) = (counters_before, counters_after) {
        let fsyncs = after.fsyncs - before.fsyncs;
        if fsyncs > 0.0 {
            point.entries_per_fsync = Some((after.entries - before.entries) / fsyncs);
            point.fsyncs_per_second = Some(fsyncs / ran);
        }
    }
    Ok(point)
}

/// S4: S1 with `clients` clients; `kills` times: kill -9 the leader, time the first lock
/// that started after the kill and succeeded, restart the member, let the cluster settle.
async fn failover(
    cluster: &mut LocalCluster,
    clients: usize,
    kills: usize,
) -> anyhow::Result<Point> {
    /// Longest wait for the first lock after a kill before the round counts as failed.
    const FIRST_LOCK_TIMEOUT_MS: u64 = 30_000;
    /// Calm time between rounds (the restarted member catches up).
    const SETTLE_MS: u64 = 3_000;
    /// Load before the first kill.
    const WARMUP_MS: u64 = 2_000;
    /// How long a client task gets to finish (close its session) after the last round.
    const CLIENT_STOP_MS: u64 = 10_000;
    /// The clients run until told to stop; their own deadline is only a backstop.
    const CLIENT_DEADLINE_MS: u64 = 3_600_000;
    let leader = cluster.wait_ready().await?;
    let endpoints = cluster.endpoints();
    let grants: workload::Grants = Default::default();
    let stop = Instant::now() + Duration::from_millis(CLIENT_DEADLINE_MS);
    let run_id = std::process::id();
    let mut tasks = Vec::new();
    for index in 0..clients {
        let mut locker = workload::Locker::open(cluster.system, &endpoints, leader, index).await?;
        let grants = grants.clone();
        let (stopper, mut stopped) = tokio::sync::watch::channel(false);
        tasks.push((
            stopper,
            tokio::spawn(async move {
                let name = format!("bench/s4/{run_id}/{index}");
                let _ = tokio::select! {
                    result = workload::cycles(&mut locker, &name, stop, stop, Some(grants)) => result.map(|_| ()),
                    _ = stopped.wait_for(|s| *s) => Ok(()),
                };
                locker.close().await;
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(WARMUP_MS)).await;
    let mut times = Vec::new();
    for _ in 0..kills {
        let leader = cluster.wait_ready().await?;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let deadline = killed_at + Duration::from_millis(FIRST_LOCK_TIMEOUT_MS);
        let first = loop {
            let first = grants
                .lock()
                .expect("grants lock")
                .iter()
                .filter(|(start, _)| *start >= killed_at)
                .map(|(_, end)| *end)
                .min();
            if let Some(first) = first {
                break Some(first);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Some(first) = first else {
            bail!("no lock succeeded within {FIRST_LOCK_TIMEOUT_MS} ms of killing the leader");
        };
        times.push((first - killed_at).as_secs_f64() * 1000.0);
        cluster.start(leader)?;
        tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    }
    for (stopper, task) in tasks {
        let _ = stopper.send(true);
        let _ = tokio::time::timeout(Duration::from_millis(CLIENT_STOP_MS), task).await;
    }
    let samples = workload::Samples {
        per_client: vec![Vec::new(); clients],
        errors: 0,
        measured: Duration::from_secs(1),
    };
    let mut point = Point::from_samples(cluster.system, "S4", &samples);
    point.failover_ms = Some(times);
    Ok(point)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    if !cfg!(feature = "etcd") || !cfg!(feature = "zookeeper") {
        // Otherwise every status call fails and the run waits 30 s for "no leader".
        bail!(
            "this holdfast-bench was built without the `etcd` and `zookeeper` features (scripts/bench-compare builds it)"
        );
    }
    if !args.etcd_bin.exists() {
        bail!(
            "{} not found: install etcd (scripts/bench-compare installs the etcd-server package)",
            args.etcd_bin.display()
        );
    }
    for part in args.zookeeper_classpath.split(':') {
        if !std::path::Path::new(part).exists() {
            bail!(
                "{part} not found: install ZooKeeper (scripts/bench-compare installs the zookeeper package)"
            );
        }
    }
    let load_before = load_average();
    let etcd = LocalCluster::etcd(&args.etcd_bin, 3).context("starting etcd")?;
    let zookeeper = LocalCluster::zookeeper(&args.java_bin, &args.zookeeper_classpath, 3)
        .context("starting ZooKeeper")?;
    let flags: Vec<&str> = args.holdfast_flags.iter().map(String::as_str).collect();
    let holdfast =
        LocalCluster::holdfast_with(&args.holdfast_bin, 3, &flags).context("starting holdfast")?;
    // Holdfast last: every row's last point is Holdfast's, the others are its anchors.
    let mut clusters = [etcd, zookeeper, holdfast];
    for cluster in &mut clusters {
        cluster.wait_ready().await?;
    }
    let points = [
        (Scenario::Cycles, 1),
        (Scenario::Cycles, 64),
        (Scenario::Handoff, 16),
        (Scenario::Keepalive, 64),
    ];
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut rows: Vec<Vec<Point>> = Vec::new();
    for (scenario, clients) in points {
        let name = format!("{}x{clients}", scenario_name(scenario));
        if !wanted(&name) {
            continue;
        }
        let mut runs: Vec<Vec<Point>> = vec![Vec::new(); clusters.len()];
        for _ in 0..args.rounds {
            for (slot, cluster) in clusters.iter_mut().enumerate() {
                if !cluster.system.runs(scenario) {
                    continue;
                }
                let point = measure(cluster, scenario, clients, &args.timing).await?;
                if args.timing.output == Output::Text {
                    print_point(&point, Output::Text);
                }
                runs[slot].push(point);
            }
        }
        rows.push(
            runs.into_iter()
                .filter(|r| !r.is_empty())
                .map(median_run)
                .collect(),
        );
    }
    if args.kills > 0 && wanted("S4x16") {
        // ZooKeeper's S4 is not run: issue #17 compares it on S1 and S2.
        let [etcd, _, holdfast] = &mut clusters;
        let etcd_point = failover(etcd, 16, args.kills).await?;
        print_point(&etcd_point, args.timing.output);
        let holdfast_point = failover(holdfast, 16, args.kills).await?;
        print_point(&holdfast_point, args.timing.output);
        rows.push(vec![etcd_point, holdfast_point]);
    }
    let load_after = load_average();
    match args.timing.output {
        Output::Json => {
            for (anchors, holdfast) in rows.iter().filter_map(|r| split(r)) {
                let (target, goal, met) = report::target(holdfast, &anchors);
                let best = report::best_anchor(&anchors);
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": holdfast.scenario, "clients": holdfast.clients,
                        "anchors": anchors, "holdfast": holdfast,
                        "best_anchor": best.map(|b| b.system),
                        "ratio": best.map(|b| report::ratio(b, holdfast)),
                        "target": target, "goal": goal, "met": met,
                    })
                );
            }
        }
        Output::Text => {
            println!();
            println!(
                "3 members each on 127.0.0.1, fsync on, default settings; {} s measured after {} s warm-up per point, {} round(s); load average before {load_before}, after {load_after}",
                args.timing.duration, args.timing.warmup, args.rounds
            );
            if !args.holdfast_flags.is_empty() {
                println!(
                    "Holdfast NOT on defaults: {}",
                    args.holdfast_flags.join(" ")
                );
            }
            let cell = |anchors: &[&Point], system: System| {
                anchors
                    .iter()
                    .find(|p| p.system == system)
                    .map_or("-".to_owned(), |p| p.line())
            };
            println!(
                "| scenario | etcd | ZooKeeper | Holdfast | ratio to best | bar | met | goal |\n|---|---|---|---|---|---|---|---|"
            );
            for (anchors, holdfast) in rows.iter().filter_map(|r| split(r)) {
                let (target, goal, met) = report::target(holdfast, &anchors);
                let ratio = report::best_anchor(&anchors)
                    .map_or(f64::NAN, |best| report::ratio(best, holdfast));
                println!(
                    "| {} x{} | {} | {} | {} | {ratio:.2}x | {target} | {} | {goal} |",
                    holdfast.scenario,
                    holdfast.clients,
                    cell(&anchors, System::Etcd),
                    cell(&anchors, System::Zookeeper),
                    holdfast.line(),
                    if met { "yes" } else { "no" }
                );
            }
            println!(
                "\n| scenario | etcd servers | ZooKeeper servers | Holdfast servers |\n|---|---|---|---|"
            );
            let servers = |anchors: &[&Point], system: System| {
                anchors
                    .iter()
                    .find(|p| p.system == system)
                    .map_or("-".to_owned(), |p| p.server_line())
            };
            for (anchors, holdfast) in rows
                .iter()
                .filter_map(|r| split(r))
                .filter(|(_, h)| h.failover_ms.is_none())
            {
                println!(
                    "| {} x{} | {} | {} | {} |",
                    holdfast.scenario,
                    holdfast.clients,
                    servers(&anchors, System::Etcd),
                    servers(&anchors, System::Zookeeper),
                    holdfast.server_line()
                );
            }
        }
    }
    Ok(())
}

/// A row's anchors and Holdfast's point (the last).
fn split(row: &[Point]) -> Option<(Vec<&Point>, &Point)> {
    let (holdfast, anchors) = row.split_last()?;
    Some((anchors.iter().collect(), holdfast))
}

/// The run with the median throughput.
fn median_run(mut runs: Vec<Point>) -> Point {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}
