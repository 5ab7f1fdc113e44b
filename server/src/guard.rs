//! The determinism guard (DESIGN §3): every `checkpoint_every_entries` applied entries each
//! replica records the digest of its canonical state; a background task fetches the peers'
//! recent checkpoints (peer RPC `Checkpoints`) and compares them at the indexes both have.
//! Replicas that applied the same log prefix must have byte-identical state, so a mismatch
//! means a replica diverged (a nondeterministic policy host, a bug in apply, corruption): it
//! is logged as an error, counted, and shown by `Cluster.Status` until the process restarts.
//! The guard only reports; it never changes what a replica does.

use std::collections::{BTreeMap, BTreeSet};

/// Checkpoints each replica keeps (and serves to peers).
pub const CHECKPOINTS_KEPT: usize = 64;
/// How often a node compares its checkpoints with its peers'.
pub const GUARD_POLL_MS: u64 = 500;
/// Deadline of one `Checkpoints` peer call.
pub const GUARD_CALL_TIMEOUT_MS: u64 = 1_000;
/// TEST ONLY: a node started with this variable set to a log index perturbs its own state
/// right after applying that entry, so the tests can show the guard catching a divergent
/// replica. Never set it on a real cluster.
pub const TEST_DIVERGE_ENV: &str = "HOLDFAST_TEST_ONLY_DIVERGE_AT";

/// A digest disagreement with a peer at one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub index: u64,
    pub peer: u64,
    pub ours: [u8; 32],
    pub theirs: [u8; 32],
}

/// This replica's recent checkpoints and what comparing them found.
#[derive(Debug, Default)]
pub struct Checkpoints {
    recent: BTreeMap<u64, [u8; 32]>,
    /// The first mismatch found (kept: the alarm stays up).
    first_mismatch: Option<Mismatch>,
    /// Distinct (peer, index) mismatches found.
    mismatches: u64,
    reported: BTreeSet<(u64, u64)>,
}

impl Checkpoints {
    /// Records the digest of the state after applying entry `index`.
    pub fn record(&mut self, index: u64, digest: [u8; 32]) {
        self.recent.insert(index, digest);
        while self.recent.len() > CHECKPOINTS_KEPT {
            self.recent.pop_first();
        }
        let oldest = self.recent.keys().next().copied().unwrap_or(0);
        self.reported.retain(|&(_, index)| index >= oldest);
    }

    /// The kept checkpoints, oldest first.
    pub fn recent(&self) -> Vec<(u64, [u8; 32])> {
        self.recent.iter().map(|(i, d)| (*i, *d)).collect()
    }

    pub fn latest(&self) -> Option<(u64, [u8; 32])> {
        self.recent.last_key_value().map(|(i, d)| (*i, *d))
    }

    /// Compares `peer`'s checkpoints with ours at the indexes both kept. Returns the mismatches
    /// not reported before.
    pub fn compare(&mut self, peer: u64, theirs: &[(u64, [u8; 32])]) -> Vec<Mismatch> {
        let mut found = Vec::new();
        for (index, digest) in theirs {
            let Some(ours) = self.recent.get(index) else {
                continue;
            };
            if ours != digest && self.reported.insert((peer, *index)) {
                found.push(Mismatch {
                    index: *index,
                    peer,
                    ours: *ours,
                    theirs: *digest,
                });
            }
        }
        self.mismatches += found.len() as u64;
        if self.first_mismatch.is_none() {
            self.first_mismatch = found.first().cloned();
        }
        found
    }

    pub fn first_mismatch(&self) -> Option<&Mismatch> {
        self.first_mismatch.as_ref()
    }

    /// The first mismatch described for an operator (`Cluster.Status`, the console); empty
    /// while the replicas agree.
    pub fn divergence(&self) -> String {
        self.first_mismatch.as_ref().map_or_else(String::new, |m| {
            format!(
                "state digest at log index {} differs from node {}'s ({} here, {} there)",
                m.index,
                m.peer,
                crate::policy::module::hex(&m.ours),
                crate::policy::module::hex(&m.theirs)
            )
        })
    }

    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_only_common_indexes_and_reports_each_mismatch_once() {
        let mut ours = Checkpoints::default();
        for index in 1..=(CHECKPOINTS_KEPT as u64 + 2) {
            ours.record(index * 10, [index as u8; 32]);
        }
        assert_eq!(ours.recent().len(), CHECKPOINTS_KEPT);
        assert_eq!(ours.recent()[0].0, 30, "oldest two dropped");
        let mut theirs = ours.recent();
        assert!(ours.compare(2, &theirs).is_empty(), "equal digests");
        theirs.push((10_000, [9; 32])); // an index we do not have: not compared
        theirs[5].1 = [0xee; 32];
        let found = ours.compare(2, &theirs);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].index, found[0].peer), (theirs[5].0, 2));
        assert!(ours.compare(2, &theirs).is_empty(), "reported once");
        assert_eq!(ours.compare(3, &theirs).len(), 1, "per peer");
        assert_eq!(ours.mismatches(), 2);
        assert_eq!(ours.first_mismatch().map(|m| m.peer), Some(2));
    }
}
