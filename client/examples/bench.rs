//! Lock benchmarks against a running cluster (release builds for meaningful numbers):
//!
//! - `--scenario cycles` (default; issue #6's S1): N clients, each with its own session and its
//!   own lock (no contention), run acquire + release cycles; prints cycles/s and per-cycle
//!   latency percentiles.
//! - `--scenario handoff` (S2): N clients (default 16) queue on ONE lock, each releasing as soon
//!   as it is granted; prints handoffs/s, the wait for a grant (p50/p99) and fairness (most /
//!   fewest grants per client).
//! - `--scenario keepalive` (S3): N sessions each sending keepalives back to back on one
//!   stream; prints keepalives/s and the answer latency.
//!
//! ```text
//! cargo run --release -p holdfast-client --example bench -- --clients 64 --seconds 10
//! ```
//!
//! Flags: --scenario, --clients N, --seconds S (default 10), --endpoints a:1,b:2 (default dev).

use std::time::{Duration, Instant};

use holdfast_client::{Client, DEV_ENDPOINTS, LockMode};
use holdfast_proto::v1 as pb;
use pb::sessions_client::SessionsClient;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let scenario = flag(&args, "--scenario").unwrap_or_else(|| "cycles".to_owned());
    let default_clients = if scenario == "handoff" { 16 } else { 1 };
    let clients: usize = flag(&args, "--clients").map_or(Ok(default_clients), |v| v.parse())?;
    let seconds: u64 = flag(&args, "--seconds").map_or(Ok(10), |v| v.parse())?;
    let endpoints: Vec<String> = match flag(&args, "--endpoints") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => DEV_ENDPOINTS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let client = Client::connect(&endpoints)?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let per_client = match scenario.as_str() {
        "cycles" => run(clients, |index| cycles(client.clone(), index, end)).await?,
        "handoff" => run(clients, |_| handoff(client.clone(), end)).await?,
        "keepalive" => run(clients, |_| keepalive(client.clone(), end)).await?,
        other => return Err(format!("unknown scenario {other:?}").into()),
    };
    let counts: Vec<usize> = per_client.iter().map(Vec::len).collect();
    let mut all: Vec<u64> = per_client.into_iter().flatten().collect();
    all.sort_unstable();
    let rate = all.len() as f64 / seconds as f64;
    let (p50, p99, max) = (
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0),
    );
    match scenario.as_str() {
        "cycles" => println!(
            "clients={clients} seconds={seconds} cycles={} cycles/s={rate:.0} ops/s={:.0} cycle latency p50={p50}us p99={p99}us max={max}us",
            all.len(),
            2.0 * rate
        ),
        "handoff" => {
            let most = counts.iter().max().copied().unwrap_or(0);
            let fewest = counts.iter().min().copied().unwrap_or(0);
            println!(
                "scenario=handoff clients={clients} seconds={seconds} handoffs={} handoffs/s={rate:.0} wait p50={p50}us p99={p99}us max={max}us fairness max/min={most}/{fewest}={:.2}",
                all.len(),
                most as f64 / fewest.max(1) as f64
            );
        }
        _ => println!(
            "scenario=keepalive sessions={clients} seconds={seconds} keepalives={} keepalives/s={rate:.0} latency p50={p50}us p99={p99}us max={max}us",
            all.len()
        ),
    }
    Ok(())
}

/// Runs `clients` copies of a task; each returns its samples (microseconds).
async fn run<F, Fut>(clients: usize, task: F) -> Result<Vec<Vec<u64>>, Box<dyn std::error::Error>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u64>, BoxError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients)
        .map(|index| tokio::spawn(task(index)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await?.map_err(|e| e.to_string())?);
    }
    Ok(results)
}

async fn cycles(client: Client, index: usize, end: Instant) -> Result<Vec<u64>, BoxError> {
    let session = client.open_session(30_000, "bench").await?;
    let name = format!("bench/{}/{index}", std::process::id());
    let mut latencies_us = Vec::new();
    while Instant::now() < end {
        let start = Instant::now();
        let hold = session
            .acquire(&name, LockMode::Exclusive, 0)
            .await?
            .ok_or("uncontended lock was busy")?;
        session.release(&hold).await?;
        latencies_us.push(start.elapsed().as_micros() as u64);
    }
    session.close().await?;
    Ok(latencies_us)
}

async fn handoff(client: Client, end: Instant) -> Result<Vec<u64>, BoxError> {
    let session = client.open_session(30_000, "bench").await?;
    let name = format!("bench/{}/shared", std::process::id());
    let mut waits_us = Vec::new();
    while Instant::now() < end {
        let start = Instant::now();
        let Some(hold) = session.acquire(&name, LockMode::Exclusive, 10_000).await? else {
            continue;
        };
        waits_us.push(start.elapsed().as_micros() as u64);
        session.release(&hold).await?;
    }
    session.close().await?;
    Ok(waits_us)
}

async fn keepalive(client: Client, end: Instant) -> Result<Vec<u64>, BoxError> {
    let session = client.open_session(30_000, "bench").await?;
    let session_id = session.id;
    let mut latencies_us = Vec::new();
    // One stream per session; the first keepalive is queued before the call so the stream
    // opens with it.
    let mut start = Instant::now();
    let (sender, mut responses) = client
        .retry(|channel| async move {
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            sender
                .try_send(pb::KeepAliveRequest { session_id })
                .expect("empty channel");
            let responses = SessionsClient::new(channel)
                .keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await?
                .into_inner();
            Ok((sender, responses))
        })
        .await?;
    loop {
        responses.message().await?.ok_or("keepalive stream ended")?;
        latencies_us.push(start.elapsed().as_micros() as u64);
        if Instant::now() >= end {
            break;
        }
        start = Instant::now();
        sender.send(pb::KeepAliveRequest { session_id }).await?;
    }
    drop(sender);
    session.close().await?;
    Ok(latencies_us)
}
