//! Lock throughput benchmark: N clients, each with its own session and its own lock (no
//! contention), run acquire + release cycles for a fixed time against a running cluster, then
//! print cycles/s and per-cycle latency percentiles.
//!
//! Run against `holdfast dev` (release build for meaningful numbers):
//!     cargo run --release -p holdfast-client --example bench -- --clients 64 --seconds 10
//! Flags: --clients N (default 1), --seconds S (default 10), --endpoints a:1,b:2 (default dev).

use std::time::{Duration, Instant};

use holdfast_client::{Client, DEV_ENDPOINTS, LockMode};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = flag(&args, "--clients").map_or(Ok(1), |v| v.parse())?;
    let seconds: u64 = flag(&args, "--seconds").map_or(Ok(10), |v| v.parse())?;
    let endpoints: Vec<String> = match flag(&args, "--endpoints") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => DEV_ENDPOINTS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let client = Client::connect(&endpoints)?;
    let run_id = std::process::id();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for index in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let session = client.open_session(30_000, "bench").await?;
            let name = format!("bench/{run_id}/{index}");
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
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?.map_err(|e| e.to_string())?);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "clients={clients} seconds={seconds} cycles={} cycles/s={:.0} ops/s={:.0} cycle latency p50={}us p99={}us max={}us",
        all.len(),
        all.len() as f64 / seconds as f64,
        2.0 * all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}
