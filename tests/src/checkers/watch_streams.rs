//! Checker 6, watch streams: along each node's stream (across the watcher's reconnections)
//! revisions strictly increase; a stream skips no revision that another stream shows unless the
//! node said so (OUT_OF_RANGE, a compaction gap); and streams that share a revision show the
//! same events for it.

use std::collections::BTreeMap;

use holdfast_proto::v1 as pb;

use crate::history::{History, StreamItem};

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    // revision → (node, events) of the first stream that showed it.
    let mut seen: BTreeMap<u64, (u64, &Vec<pb::WatchEvent>)> = BTreeMap::new();
    for stream in &history.streams {
        let mut last: Option<u64> = None;
        for item in &stream.items {
            match item {
                StreamItem::Revision(revision, events) => {
                    if let Some(last) = last
                        && *revision <= last
                    {
                        violations.push(format!(
                            "node {}'s stream went from revision {last} to {revision}",
                            stream.node
                        ));
                    }
                    last = Some(*revision);
                    match seen.get(revision) {
                        Some((node, first)) if *first != events => violations.push(format!(
                            "revision {revision}: node {}'s stream shows {events:?}, node {node}'s {first:?}",
                            stream.node
                        )),
                        Some(_) => {}
                        None => {
                            seen.insert(*revision, (stream.node, events));
                        }
                    }
                }
                StreamItem::Compacted { oldest, .. } => {
                    // The watcher resumes at `oldest`; nothing in between is a silent gap.
                    last = Some(last.unwrap_or(0).max(oldest.saturating_sub(1)));
                }
            }
        }
    }
    // Silent gaps: a revision some stream showed, inside another stream's span, missing there
    // without a compaction gap covering it.
    for stream in &history.streams {
        let mut revisions = Vec::new();
        let mut holes = Vec::new();
        for item in &stream.items {
            match item {
                StreamItem::Revision(revision, _) => revisions.push(*revision),
                StreamItem::Compacted { requested, oldest } => holes.push((*requested, *oldest)),
            }
        }
        let Some(last) = revisions.last() else {
            continue;
        };
        for revision in seen.range(stream.from..=*last).map(|(r, _)| *r) {
            let missing = revisions.binary_search(&revision).is_err();
            let explained = holes
                .iter()
                .any(|(from, to)| revision >= *from && revision < *to);
            if missing && !explained {
                violations.push(format!(
                    "node {}'s stream skipped revision {revision} without a compaction error",
                    stream.node
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use holdfast_proto::v1::EventKind::Acquired;

    use super::*;
    use crate::history::{WatchStream, event};

    fn stream(node: u64, items: Vec<StreamItem>) -> WatchStream {
        WatchStream {
            node,
            from: 1,
            items,
        }
    }

    fn at(revision: u64, token: u64) -> StreamItem {
        StreamItem::Revision(revision, vec![event(Acquired, "a", 1, token)])
    }

    fn history(streams: Vec<WatchStream>) -> History {
        History {
            streams,
            ..History::default()
        }
    }

    #[test]
    fn agreeing_streams_with_an_explicit_gap_pass() {
        let h = history(vec![
            stream(1, vec![at(3, 3), at(5, 5), at(9, 9)]),
            stream(
                2,
                vec![
                    at(3, 3),
                    StreamItem::Compacted {
                        requested: 4,
                        oldest: 7,
                    },
                    at(9, 9),
                ],
            ),
        ]);
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn a_silent_gap_a_step_back_and_a_disagreement_are_caught() {
        let h = history(vec![
            stream(1, vec![at(3, 3), at(5, 5), at(9, 9)]),
            stream(2, vec![at(3, 3), at(9, 9)]),
            stream(3, vec![at(3, 4), at(5, 5), at(5, 5)]),
        ]);
        let violations = check(&h);
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert!(
            violations
                .iter()
                .any(|v| v.contains("from revision 5 to 5"))
        );
        assert!(violations.iter().any(|v| v.contains("skipped revision 5")));
        assert!(violations.iter().any(|v| v.starts_with("revision 3:")));
    }
}
