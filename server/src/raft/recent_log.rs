//! The tail of the Raft log in memory, so that replication and apply read what was just
//! appended without going back to rocksdb.
//!
//! On the leader every entry is read three times right after it is appended (once per
//! follower's replication stream, once by apply) and on a follower once (apply); each read was
//! a rocksdb iterator (a seek through the memtable) and a bincode decode. [`RecentLog`] keeps
//! clones of the last entries appended, at most [`RECENT_LOG_ENTRIES`] of them and
//! [`RECENT_LOG_BYTES`] of encoded size, and answers any read that starts inside it.
//!
//! Invariant: the entries held are exactly the log's entries from the first one held to the
//! last one appended, in index order with no gaps. Everything that changes the log's tail
//! (`append`, `truncate_after`, `purge`) changes it here too, under one lock, after the
//! rocksdb write; a read that starts before the first entry held goes to rocksdb.

use std::collections::VecDeque;
use std::ops::RangeBounds;

use super::types::Entry;

/// Most entries kept in memory: a few replication batches' worth at full load (openraft sends
/// at most `max_payload_entries` per AppendEntries).
pub const RECENT_LOG_ENTRIES: usize = 4096;

/// Most encoded bytes kept in memory (a policy deployment entry carries its whole module: one
/// such entry may push everything else out).
pub const RECENT_LOG_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct RecentLog {
    /// `(entry, encoded size)`, consecutive indexes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentLog {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index)
    }

    /// Records an entry just written at the end of the log. An entry that does not follow the
    /// last one held replaces whatever it overlaps (rocksdb overwrote it too) or, after a gap,
    /// starts the tail afresh.
    pub fn push(&mut self, entry: Entry, encoded_len: usize) {
        let index = entry.log_id.index;
        self.truncate_after(index.checked_sub(1));
        if self.last_index().is_some_and(|last| last + 1 != index) {
            self.clear();
        }
        self.bytes += encoded_len;
        self.entries.push_back((entry, encoded_len));
        while self.entries.len() > RECENT_LOG_ENTRIES
            || (self.bytes > RECENT_LOG_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Drops the entries after `last` (all of them for `None`).
    pub fn truncate_after(&mut self, last: Option<u64>) {
        while self
            .last_index()
            .is_some_and(|index| last.is_none_or(|last| index > last))
        {
            let (_, len) = self.entries.pop_back().expect("non-empty");
            self.bytes -= len;
        }
    }

    /// Drops the entries up to and including `upto`.
    pub fn purge(&mut self, upto: u64) {
        while self.first_index().is_some_and(|index| index <= upto) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, len)) = self.entries.pop_front() {
            self.bytes -= len;
        }
    }

    /// The entries of `range` (`start` is its first index), if the range starts inside what is
    /// held; `None` sends the read to rocksdb. Entries past the last one held do not exist.
    pub fn read(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take_while(|(entry, _)| range.contains(&entry.log_id.index))
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{RECENT_LOG_BYTES, RECENT_LOG_ENTRIES, RecentLog};
    use crate::raft::types::{Entry, TypeConfig};

    fn entry(term: u64, index: u64) -> Entry {
        openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|entries| {
            entries
                .iter()
                .map(|e| (e.log_id.committed_leader_id().term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn reads_inside_the_tail_and_sends_the_rest_to_rocksdb() {
        let mut log = RecentLog::default();
        assert_eq!(
            indexes(log.read(0, &(0..))),
            None,
            "empty: everything from rocksdb"
        );
        for index in 5..=9 {
            log.push(entry(1, index), 10);
        }
        assert_eq!(
            indexes(log.read(4, &(4..8))),
            None,
            "starts before the tail"
        );
        assert_eq!(indexes(log.read(6, &(6..8))), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(
            indexes(log.read(8, &(8..=20))),
            Some(vec![(1, 8), (1, 9)]),
            "nothing exists past the last entry"
        );
        assert_eq!(indexes(log.read(12, &(12..20))), Some(vec![]));
    }

    #[test]
    fn truncation_overwrite_gap_and_purge_keep_the_tail_exact() {
        let mut log = RecentLog::default();
        for index in 1..=6 {
            log.push(entry(1, index), 10);
        }
        log.truncate_after(Some(4));
        assert_eq!(indexes(log.read(3, &(3..))), Some(vec![(1, 3), (1, 4)]));
        // A new leader's entry overwrites index 4 (openraft truncates first; rocksdb would
        // overwrite anyway).
        log.push(entry(2, 4), 10);
        assert_eq!(indexes(log.read(3, &(3..))), Some(vec![(1, 3), (2, 4)]));
        // A gap (a snapshot installed past the tail): only the new entry is held.
        log.push(entry(2, 10), 10);
        assert_eq!(indexes(log.read(4, &(4..))), None);
        assert_eq!(indexes(log.read(10, &(10..))), Some(vec![(2, 10)]));
        log.push(entry(2, 11), 10);
        log.purge(10);
        assert_eq!(indexes(log.read(10, &(10..))), None);
        assert_eq!(indexes(log.read(11, &(11..))), Some(vec![(2, 11)]));
        log.truncate_after(None);
        assert_eq!(indexes(log.read(11, &(11..))), None);
        assert_eq!(log.bytes, 0);
    }

    #[test]
    fn the_tail_is_bounded_in_entries_and_bytes() {
        let mut log = RecentLog::default();
        let count = RECENT_LOG_ENTRIES as u64 + 10;
        for index in 1..=count {
            log.push(entry(1, index), 1);
        }
        assert_eq!(log.entries.len(), RECENT_LOG_ENTRIES);
        assert_eq!(indexes(log.read(10, &(10..11))), None);
        assert_eq!(indexes(log.read(11, &(11..12))), Some(vec![(1, 11)]));

        // One oversized entry pushes the others out but is itself kept.
        log.push(entry(1, count + 1), RECENT_LOG_BYTES + 1);
        assert_eq!(log.entries.len(), 1);
        log.push(entry(1, count + 2), 1);
        assert_eq!(
            log.entries.len(),
            1,
            "the big one goes as soon as another comes"
        );
        assert_eq!(log.bytes, 1);
    }
}
