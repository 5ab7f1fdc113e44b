//! `holdfast-sim`: runs simulated clusters, one seed each, and reports every seed whose history
//! breaks a checker (`scripts/simulate` builds it in release and runs it).
//!
//!   holdfast-sim --seeds 1000            # seeds drawn from the clock, on every core
//!   holdfast-sim --seed 42               # one seed, again: the same history, byte for byte
//!   holdfast-sim --seed 42 --history h   # … and writes that history to the file h

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use holdfast_sim::{Bug, Config, Report, run};

#[derive(Parser)]
#[command(about = "Deterministic simulation of Holdfast clusters")]
struct Args {
    /// How many seeds to run (consecutive, from --first-seed).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a --seeds run (default: from the clock).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Run this one seed only, and print its violations.
    #[arg(long)]
    seed: Option<u64>,
    /// Fault phase per seed, in simulated seconds.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Seeds run at once (each on its own thread).
    #[arg(long)]
    jobs: Option<usize>,
    /// With --seed: write the run's history to this file.
    #[arg(long)]
    history: Option<std::path::PathBuf>,
    /// Re-introduce a past bug (stale-grant, leader-restore) to see the simulator find it.
    #[arg(long, value_parser = parse_bug)]
    plant: Option<Bug>,
}

fn parse_bug(name: &str) -> Result<Bug, String> {
    Bug::ALL
        .into_iter()
        .find(|bug| bug.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
            format!("unknown bug {name:?}; planted bugs: {}", names.join(", "))
        })
}

fn config(seed: u64, args: &Args) -> Config {
    Config {
        duration: Duration::from_secs(args.duration_s),
        plant: args.plant,
        ..Config::new(seed)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HOLDFAST_SIM_LOG"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_timer(SimTime)
        .init();
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let report = run(config(seed, &args));
        println!("{}", report.summary());
        print!("{}", report.violations_text());
        if let Some(path) = &args.history {
            std::fs::write(path, report.history_text())?;
            println!("history written to {}", path.display());
        }
        println!("{}", Stats::of(&report).line());
        anyhow::ensure!(report.violation_count() == 0, "seed {seed} failed");
        return Ok(());
    }
    run_seeds(&args)
}

/// Runs seeds `--first-seed ..` each in a process of its own (`--seed S`), `--jobs` at a time
/// (a failing seed's process ends; the others go on), each as its replay will run it.
fn run_seeds(args: &Args) -> anyhow::Result<()> {
    let first = args.first_seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let exe = std::env::current_exe()?;
    let started = std::time::Instant::now();
    let next = AtomicU64::new(first);
    let end = first + args.seeds;
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let mut child = std::process::Command::new(&exe);
                    child
                        .args(["--seed", &seed.to_string()])
                        .args(["--duration-s", &args.duration_s.to_string()])
                        .stderr(std::process::Stdio::null());
                    if let Some(bug) = args.plant {
                        child.args(["--plant", bug.name()]);
                    }
                    let (passed, out) = match child.output() {
                        Ok(output) => (
                            output.status.success(),
                            String::from_utf8_lossy(&output.stdout).into_owned(),
                        ),
                        Err(error) => (false, format!("seed {seed}: cannot run: {error}\n")),
                    };
                    let stats = out.lines().find_map(Stats::parse);
                    if !passed && stats.is_none() {
                        println!("FAILED seed {seed}: the run ended without a report (it crashed)");
                    } else if !passed {
                        let report: String = out
                            .lines()
                            .filter(|line| !line.starts_with(Stats::PREFIX))
                            .map(|line| format!("{line}\n"))
                            .collect();
                        print!("FAILED {report}");
                        let plant = args
                            .plant
                            .map_or(String::new(), |b| format!(" --plant {}", b.name()));
                        println!("replay: scripts/simulate --seed {seed}{plant}");
                    }
                    totals.lock().expect("totals").add(seed, passed, stats);
                }
            });
        }
    });
    let totals = totals.into_inner().expect("totals");
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} seeds ({}..{}) in {:.0} s on {jobs} processes at a time: {:.0} seeds/hour · {:.2} simulated hours · {} operations · {} faults {:?} · {} unsynced entries lost to crashes",
        totals.seeds,
        first,
        end - 1,
        wall,
        totals.seeds as f64 * 3_600.0 / wall.max(0.001),
        totals.simulated_ms as f64 / 3_600_000.0,
        totals.ops,
        totals.faults.values().sum::<u64>(),
        totals.faults,
        totals.lost,
    );
    if totals.failed.is_empty() {
        println!("0 failing seeds");
        Ok(())
    } else {
        println!("failing seeds: {:?}", totals.failed);
        anyhow::bail!("{} seeds failed", totals.failed.len())
    }
}

/// What a `--seed` run tells the `--seeds` run that started it: its last line of output.
#[derive(Default)]
struct Stats {
    simulated_ms: u64,
    ops: u64,
    lost: u64,
    faults: BTreeMap<String, u64>,
}

impl Stats {
    const PREFIX: &str = "stats:";

    fn of(report: &Report) -> Stats {
        Stats {
            simulated_ms: report.simulated.as_millis() as u64,
            ops: report.history.ops.len() as u64,
            lost: report.disk.1,
            faults: report
                .fault_kinds()
                .into_iter()
                .map(|(kind, count)| (format!("{kind:?}"), count as u64))
                .collect(),
        }
    }

    fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "{} {} {} {} {}",
            Stats::PREFIX,
            self.simulated_ms,
            self.ops,
            self.lost,
            faults.join(",")
        )
    }

    fn parse(line: &str) -> Option<Stats> {
        let mut fields = line.strip_prefix(Stats::PREFIX)?.split_whitespace();
        let mut number = || fields.next()?.parse::<u64>().ok();
        let (simulated_ms, ops, lost) = (number()?, number()?, number()?);
        let faults = fields
            .next()
            .unwrap_or("")
            .split(',')
            .filter_map(|pair| {
                let (kind, count) = pair.split_once('=')?;
                Some((kind.to_owned(), count.parse().ok()?))
            })
            .collect();
        Some(Stats {
            simulated_ms,
            ops,
            lost,
            faults,
        })
    }
}

/// Log lines carry simulated time (two runs of a seed log the same lines).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{:>10.3}ms", elapsed.as_secs_f64() * 1_000.0),
            None => write!(w, "{:>12}", "-"),
        }
    }
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    simulated_ms: u64,
    ops: u64,
    faults: BTreeMap<String, u64>,
    lost: u64,
    failed: Vec<u64>,
}

impl Totals {
    fn add(&mut self, seed: u64, passed: bool, stats: Option<Stats>) {
        self.seeds += 1;
        if let Some(stats) = stats {
            self.simulated_ms += stats.simulated_ms;
            self.ops += stats.ops;
            self.lost += stats.lost;
            for (kind, count) in stats.faults {
                *self.faults.entry(kind).or_default() += count;
            }
        }
        if !passed {
            self.failed.push(seed);
        }
    }
}
