//! The long fault-injection run: `scripts/torture --duration 10m --seed 7` (release build).
//! Prints the seed first and a report at the end; exits 1 if any checker found a violation.
//!
//! Flags: --duration D (fault phase, e.g. 10m, 90s; default 10m), --quiet D (default 20s),
//! --seed N (default: from the clock), --nodes 3|5, --clients N, --locks N,
//! --faults kind,kind (default all; names as printed in the report, e.g. KillLeader).

use std::process::ExitCode;
use std::time::Duration;

use holdfast_tests::history::FaultKind;
use holdfast_tests::torture::{self, ALL_FAULTS, Config};

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let value: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3_600,
        _ => return Err(format!("bad duration unit in {text:?} (s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

fn parse(args: &[String]) -> Result<Config, String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut config = Config::new(seed, Duration::from_secs(600));
    config.quiet = Duration::from_secs(20);
    // More clients and locks than the smoke run: more operations per second.
    config.clients = 16;
    config.locks = 6;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: &String| {
            text.parse::<u64>()
                .map_err(|_| format!("bad number {text:?}"))
        };
        match flag.as_str() {
            "--duration" => config.duration = parse_duration(value()?)?,
            "--quiet" => config.quiet = parse_duration(value()?)?,
            "--seed" => config.seed = number(value()?)?,
            "--nodes" => config.nodes = number(value()?)?,
            "--clients" => config.clients = number(value()?)? as usize,
            "--locks" => config.locks = number(value()?)? as usize,
            "--faults" => {
                let wanted: Vec<&str> = value()?.split(',').collect();
                config.kinds = ALL_FAULTS
                    .iter()
                    .copied()
                    .filter(|kind: &FaultKind| wanted.contains(&format!("{kind:?}").as_str()))
                    .collect();
                if config.kinds.len() != wanted.len() {
                    return Err(format!(
                        "unknown fault kind in {wanted:?}; kinds: {ALL_FAULTS:?}"
                    ));
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("torture: {error}");
            return ExitCode::from(2);
        }
    };
    println!(
        "torture: seed {} ({} nodes, {:?} of faults)",
        config.seed, config.nodes, config.duration
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(torture::run(config));
    println!("{report}");
    if report.violation_count() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
