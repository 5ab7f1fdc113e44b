//! `deploy/`: the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and the rules, the Grafana dashboard and the metrics table of
//! docs/operations.md name only metrics the server exports — the `holdfast_*` names registered
//! in `server/src` (histograms also as `_bucket`, `_sum`, `_count`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Every `holdfast_<lowercase, digits, _>` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("holdfast_") {
        let before = rest[..at].chars().next_back();
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        // Part of a longer identifier (e.g. `x_holdfast_y`) or a crate path (`holdfast_core`)
        // is not a metric; metric names have a second underscore-separated word.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        names.insert(word.trim_end_matches('_').to_owned());
    }
    names
}

/// The metric names the server registers: string literals `"holdfast_..."` in its sources.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![repo().join("server/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("server sources") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for literal in text.split("\"holdfast_").skip(1) {
                    if let Some(end) = literal.find('"') {
                        names.insert(format!("holdfast_{}", &literal[..end]));
                    }
                }
            }
        }
    }
    names
}

fn unexported(file: &str) -> Vec<String> {
    let exported = exported();
    let text = std::fs::read_to_string(repo().join(file)).expect(file);
    metric_names(&text)
        .into_iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !exported.contains(name) && !exported.contains(base)
        })
        .collect()
}

#[test]
fn the_server_exports_what_this_test_reads() {
    let exported = exported();
    for name in [
        "holdfast_raft_leader_id",
        "holdfast_wal_fsync_seconds",
        "holdfast_sessions_limit",
    ] {
        assert!(exported.contains(name), "{name} not found in {exported:?}");
    }
    assert_eq!(
        metric_names("rate(holdfast_wal_fsync_seconds_bucket[5m]) holdfast_core::x"),
        BTreeSet::from([
            "holdfast_wal_fsync_seconds_bucket".to_owned(),
            "holdfast_core".to_owned()
        ])
    );
}

#[test]
fn alerts_dashboard_and_docs_name_only_exported_metrics() {
    for file in [
        "deploy/prometheus/holdfast-alerts.yml",
        "deploy/prometheus/holdfast-alerts.test.yml",
        "deploy/grafana/holdfast-dashboard.json",
        "docs/operations.md",
    ] {
        let missing = unexported(file);
        assert!(
            missing.is_empty(),
            "{file} names metrics the server does not export: {missing:?}"
        );
    }
}

#[test]
fn the_dashboard_is_grafana_json_over_prometheus() {
    let path = repo().join("deploy/grafana/holdfast-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    assert!(
        queries
            .iter()
            .all(|q| q.contains("holdfast_") || q.contains("up{"))
    );
}

/// promtool comes with Debian's `prometheus` package, which scripts/setup installs.
fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("running promtool (scripts/setup installs Debian's prometheus package)")
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "holdfast-alerts.yml"]);
    assert!(checked.status.success(), "{checked:?}");
    let tested = promtool(&["test", "rules", "holdfast-alerts.test.yml"]);
    let output = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success() && output.contains("SUCCESS"),
        "{output}\n{}",
        String::from_utf8_lossy(&tested.stderr)
    );
}
