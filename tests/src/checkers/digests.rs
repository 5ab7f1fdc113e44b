//! Replicas agree at every checkpoint: at each determinism-guard checkpoint index that two or
//! more nodes were seen at (`Cluster.Status`, polled through the run), their state digests are
//! equal. With policies bound, this is where a nondeterministic guest — or host — would show.

use std::collections::BTreeMap;

use crate::history::History;

/// Checkpoint index → node → digest, for indexes seen on two or more nodes.
fn shared_indexes(history: &History) -> BTreeMap<u64, BTreeMap<u64, &str>> {
    let mut by_index: BTreeMap<u64, BTreeMap<u64, &str>> = BTreeMap::new();
    for checkpoint in &history.checkpoints {
        by_index
            .entry(checkpoint.index)
            .or_default()
            .insert(checkpoint.node, &checkpoint.digest);
    }
    by_index.retain(|_, nodes| nodes.len() >= 2);
    by_index
}

pub fn check(history: &History) -> Vec<String> {
    shared_indexes(history)
        .into_iter()
        .filter(|(_, nodes)| nodes.values().any(|d| Some(d) != nodes.values().next()))
        .map(|(index, nodes)| format!("checkpoint {index}: replicas disagree: {nodes:?}"))
        .collect()
}

/// How many checkpoint indexes were compared (seen on two or more nodes).
pub fn compared(history: &History) -> usize {
    shared_indexes(history).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Checkpoint;

    fn at(node: u64, index: u64, digest: &str) -> Checkpoint {
        Checkpoint {
            node,
            index,
            digest: digest.to_owned(),
        }
    }

    #[test]
    fn equal_digests_pass_and_count() {
        let history = History {
            checkpoints: vec![at(1, 1000, "a"), at(2, 1000, "a"), at(3, 2000, "b")],
            ..History::default()
        };
        assert_eq!(check(&history), Vec::<String>::new());
        assert_eq!(compared(&history), 1, "2000 was seen on one node only");
    }

    #[test]
    fn a_differing_replica_is_caught() {
        let history = History {
            checkpoints: vec![at(1, 1000, "a"), at(2, 1000, "a"), at(3, 1000, "x")],
            ..History::default()
        };
        let violations = check(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("checkpoint 1000"), "{violations:?}");
    }
}
