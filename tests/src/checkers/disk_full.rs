//! Checker 8, disk full. Holdfast's documented behaviour is fail-stop: a node whose log write
//! or fsync fails (e.g. ENOSPC) stops with exit code 74 having acknowledged nothing it had not
//! persisted; one that cannot open its storage (rocksdb on a full disk) exits 125 with the
//! reason; both recover from the data dir when restarted after space returns. (A running node
//! often keeps going on a full disk: rocksdb preallocates its WAL.) So: no node exits by itself
//! with any other code (a crash); no node fail-stops without a full disk; and
//! after the run every node — the ones that fail-stopped included — reached the same applied
//! index and state digest. Acknowledged writes surviving is `lost_acks`'s job.

use crate::history::History;

/// `holdfast serve`'s exit code for a fail-stop (server `cli::EXIT_FAIL_STOP`).
pub const EXIT_FAIL_STOP: i32 = 74;
/// `holdfast serve`'s exit code when it cannot start, e.g. rocksdb cannot open on a full disk
/// (server `cli::EXIT_ERROR`).
pub const EXIT_CANNOT_START: i32 = 125;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    for exit in &history.exits {
        match (exit.code, exit.disk_full) {
            (Some(EXIT_FAIL_STOP | EXIT_CANNOT_START), true) => {}
            (Some(EXIT_FAIL_STOP), false) => violations.push(format!(
                "node {} fail-stopped at {} ms without a full disk",
                exit.node,
                exit.at / 1_000
            )),
            (code, _) => violations.push(format!(
                "node {} exited by itself at {} ms with {code:?} (a crash, not a fail-stop)",
                exit.node,
                exit.at / 1_000
            )),
        }
    }
    let mut digests = history.final_digests.iter();
    if let Some((first_node, first)) = digests.next() {
        for (node, view) in digests {
            if view != first {
                violations.push(format!(
                    "after the run node {node} is at {view:?}, node {first_node} at {first:?}"
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NodeExit;

    fn exit(code: Option<i32>, disk_full: bool) -> NodeExit {
        NodeExit {
            node: 2,
            at: 5_000_000,
            code,
            disk_full,
        }
    }

    #[test]
    fn a_fail_stop_on_a_full_disk_then_agreement_passes() {
        let mut history = History::default();
        history.exits.push(exit(Some(EXIT_FAIL_STOP), true));
        for node in 1..=3 {
            history.final_digests.insert(node, (40, "abc".into()));
        }
        assert_eq!(check(&history), Vec::<String>::new());
    }

    #[test]
    fn a_crash_an_unexplained_fail_stop_and_a_laggard_are_caught() {
        let mut history = History::default();
        history.exits.push(exit(None, true));
        history.exits.push(exit(Some(EXIT_FAIL_STOP), false));
        history.final_digests.insert(1, (40, "abc".into()));
        history.final_digests.insert(2, (31, "def".into()));
        let violations = check(&history);
        assert_eq!(violations.len(), 3, "{violations:?}");
    }
}
