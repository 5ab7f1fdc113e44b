//! One measured point (a scenario run against one system) and the comparison table.

use serde::Serialize;

use crate::workload::{Samples, System};

/// Issue #6's failover target (median of the kill → first lock OK times).
pub const FAILOVER_TARGET_MS: f64 = 450.0;

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub system: System,
    /// "S1", "S2", "S3" or "S4".
    pub scenario: String,
    pub clients: usize,
    pub seconds: f64,
    pub ops: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// S2: most / fewest grants per client.
    pub fairness: Option<f64>,
    /// CPU (user + system) of all server processes during the run, when the bench started them.
    pub cpu_seconds: Option<f64>,
    pub cpu_ms_per_1k_ops: Option<f64>,
    /// Each member's RSS after the run, MiB.
    pub rss_mib: Option<Vec<f64>>,
    /// Log entries made durable per fsync, over all members (from their metrics).
    pub entries_per_fsync: Option<f64>,
    pub fsyncs_per_second: Option<f64>,
    /// S4: each kill → first successful lock, ms.
    pub failover_ms: Option<Vec<f64>>,
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl Point {
    pub fn from_samples(system: System, scenario: &str, samples: &Samples) -> Point {
        let counts: Vec<usize> = samples.per_client.iter().map(Vec::len).collect();
        let mut all: Vec<u64> = samples.per_client.iter().flatten().copied().collect();
        all.sort_unstable();
        let seconds = samples.measured.as_secs_f64();
        let fairness = (scenario == "S2").then(|| {
            let most = counts.iter().max().copied().unwrap_or(0) as f64;
            let fewest = counts.iter().min().copied().unwrap_or(0).max(1) as f64;
            most / fewest
        });
        Point {
            system,
            scenario: scenario.to_owned(),
            clients: samples.per_client.len(),
            seconds,
            ops: all.len() as u64,
            per_second: all.len() as f64 / seconds,
            p50_us: percentile(&all, 0.50),
            p99_us: percentile(&all, 0.99),
            max_us: all.last().copied().unwrap_or(0),
            errors: samples.errors,
            fairness,
            cpu_seconds: None,
            cpu_ms_per_1k_ops: None,
            rss_mib: None,
            entries_per_fsync: None,
            fsyncs_per_second: None,
            failover_ms: None,
        }
    }

    /// One line: rate, latency, and whatever was measured about the servers.
    pub fn line(&self) -> String {
        let mut text = match &self.failover_ms {
            Some(times) => format!(
                "median {:.0} ms of {:?} ms",
                median(times),
                times.iter().map(|t| t.round() as u64).collect::<Vec<_>>()
            ),
            None => format!(
                "{:.0}/s p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
                self.per_second,
                self.p50_us as f64 / 1000.0,
                self.p99_us as f64 / 1000.0,
                self.max_us as f64 / 1000.0
            ),
        };
        if let Some(fairness) = self.fairness {
            text.push_str(&format!(" fairness {fairness:.2}"));
        }
        if self.errors > 0 {
            text.push_str(&format!(" errors {}", self.errors));
        }
        text
    }

    pub fn server_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cpu) = self.cpu_ms_per_1k_ops {
            parts.push(format!("cpu {cpu:.0} ms/1k ops"));
        }
        if let Some(cpu) = self.cpu_seconds {
            parts.push(format!("({cpu:.1} cpu-s)"));
        }
        if let Some(entries) = self.entries_per_fsync {
            parts.push(format!("{entries:.1} entries/fsync"));
        }
        if let Some(rate) = self.fsyncs_per_second {
            parts.push(format!("{rate:.0} fsync/s"));
        }
        if let Some(rss) = &self.rss_mib {
            let rss: Vec<String> = rss.iter().map(|r| format!("{r:.0}")).collect();
            parts.push(format!("rss {} MiB", rss.join("/")));
        }
        parts.join(" ")
    }
}

/// The anchor a scenario is judged against: the best of the other systems measured in the same
/// run (lowest p50 for S1 with one client, lowest median for S4, highest rate otherwise).
pub fn best_anchor<'p>(anchors: &[&'p Point]) -> Option<&'p Point> {
    let better = |a: &Point, b: &Point| match (&a.failover_ms, &b.failover_ms) {
        (Some(x), Some(y)) => median(x) < median(y),
        _ if a.scenario == "S1" && a.clients == 1 => a.p50_us < b.p50_us,
        _ => a.per_second > b.per_second,
    };
    anchors
        .iter()
        .copied()
        .reduce(|best, p| if better(p, best) { p } else { best })
}

fn anchor_of(anchors: &[&Point], system: System) -> Option<f64> {
    anchors
        .iter()
        .find(|p| p.system == system)
        .map(|p| p.p50_us as f64)
}

/// Issue #17's bar for a scenario, given the anchors measured beside Holdfast: (the bar, the
/// goal beyond it, whether the bar is met).
pub fn target(holdfast: &Point, anchors: &[&Point]) -> (String, String, bool) {
    let Some(best) = best_anchor(anchors) else {
        return (String::new(), String::new(), false);
    };
    let name = |p: &Point| format!("{:?}", p.system).to_lowercase();
    match (holdfast.scenario.as_str(), holdfast.clients) {
        ("S1", 1) => {
            let etcd = anchor_of(anchors, System::Etcd).unwrap_or(best.p50_us as f64);
            (
                format!("p50 <= etcd's {:.2} ms", etcd / 1000.0),
                format!("p50 <= 0.5 x etcd's = {:.2} ms", 0.5 * etcd / 1000.0),
                holdfast.p50_us as f64 <= etcd,
            )
        }
        ("S1", _) => (
            format!(">= 1.5 x {} = {:.0}/s", name(best), 1.5 * best.per_second),
            format!("3 x = {:.0}/s", 3.0 * best.per_second),
            holdfast.per_second >= 1.5 * best.per_second,
        ),
        ("S2", _) => {
            let fair = holdfast.fairness.unwrap_or(f64::INFINITY) <= 1.05;
            (
                format!(
                    ">= {} {:.0}/s, fairness <= 1.05",
                    name(best),
                    best.per_second
                ),
                format!("3 x = {:.0}/s", 3.0 * best.per_second),
                holdfast.per_second >= best.per_second && fair,
            )
        }
        ("S3", _) => (
            format!(">= 1.5 x {} = {:.0}/s", name(best), 1.5 * best.per_second),
            String::new(),
            holdfast.per_second >= 1.5 * best.per_second,
        ),
        ("S4", _) => {
            let median = holdfast.failover_ms.as_deref().map_or(f64::NAN, median);
            (
                format!("median <= {FAILOVER_TARGET_MS:.0} ms"),
                String::new(),
                median <= FAILOVER_TARGET_MS,
            )
        }
        _ => (String::new(), String::new(), false),
    }
}

/// The ratio shown beside a scenario: Holdfast over the anchor (throughput), or the anchor over
/// Holdfast (S1 with one client: p50; S4: time), so that > 1 always means Holdfast is better.
pub fn ratio(anchor: &Point, holdfast: &Point) -> f64 {
    match (&anchor.failover_ms, &holdfast.failover_ms) {
        (Some(e), Some(h)) => median(e) / median(h),
        _ if anchor.clients == 1 && anchor.scenario == "S1" => {
            anchor.p50_us as f64 / holdfast.p50_us.max(1) as f64
        }
        _ => holdfast.per_second / anchor.per_second.max(f64::MIN_POSITIVE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&sorted, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
