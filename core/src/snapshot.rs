//! Canonical snapshot bytes and the state digest.
//!
//! Format: one version byte ([`SNAPSHOT_FORMAT_VERSION`]) followed by the bincode 2 encoding
//! (standard config: little-endian, varint integers) of [`State`]. Every collection in `State`
//! is ordered, so equal states give equal bytes on every replica. The digest replicas compare
//! is not a hash of these bytes but a multiset hash of the state's records, kept current by
//! `apply` (see `state/records.rs`). Decoding is paired with
//! `check_invariants`: a snapshot that decodes but describes an impossible state is refused.
//! Changing `State`'s shape is a format change: bump the version byte.

use sha2::{Digest, Sha256};

use crate::model::{FencingToken, RequestId, SessionId};
use crate::state::records::{Record, Records, Sum, record_hash};
use crate::state::{HEADER_TAG, Recorded, State};

/// First byte of every snapshot. Bump on any change to `State`'s serialized shape.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 3;

/// Why snapshot bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot is empty")]
    Empty,
    #[error("snapshot format version {found} is not supported (expected {expected})")]
    UnsupportedVersion { found: u8, expected: u8 },
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot has {count} trailing bytes")]
    TrailingBytes { count: usize },
    #[error("snapshot decodes to an invalid state: {0}")]
    Invalid(String),
}

impl State {
    /// Canonical bytes of the state: the version byte, then bincode. Equal states give equal
    /// bytes.
    ///
    /// # Panics
    /// If the state does not serialize, which would be a bug (every field is plain data).
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![SNAPSHOT_FORMAT_VERSION];
        bincode::serde::encode_into_std_write(self, &mut bytes, bincode::config::standard())
            .expect("state serializes");
        assert!(bytes.len() > 1 && bytes[0] == SNAPSHOT_FORMAT_VERSION);
        bytes
    }

    /// Decodes [`State::to_snapshot_bytes`] output and checks the invariants. Never panics on
    /// bad input, and (up to 256 MiB) never allocates more than a small multiple of the input's
    /// size, whatever length prefixes it holds.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<State, SnapshotError> {
        let (&version, body) = bytes.split_first().ok_or(SnapshotError::Empty)?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let (mut state, read) = decode_bounded(body)?;
        state.rebuild_derived();
        if read != body.len() {
            return Err(SnapshotError::TrailingBytes {
                count: body.len() - read,
            });
        }
        state.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(state)
    }

    /// The state digest: what replicas compare to detect divergence. SHA-256 over the format
    /// version, the header record (applied index, cluster time, fault count) and the
    /// collections' multiset hashes (`state/records.rs`), which `apply` keeps current: O(1).
    /// Equal states give equal digests whatever history built them.
    pub fn digest(&self) -> [u8; 32] {
        self.digest_of(self.record_sums())
    }

    /// The digest recomputed from every record, O(state): an explicit check that the digest
    /// `apply` maintains is the digest of the state it holds.
    pub fn digest_from_scratch(&self) -> [u8; 32] {
        let mut sessions = self.sessions.recompute();
        sessions.add(&self.session_parts_from_scratch());
        self.digest_of([
            sessions,
            self.locks.recompute(),
            self.deadlines.recompute(),
            self.policies.recompute(),
            self.bindings.recompute(),
        ])
    }

    fn record_sums(&self) -> [Sum; 5] {
        let mut sessions = self.sessions.sum();
        sessions.add(&self.session_parts);
        [
            sessions,
            self.locks.sum(),
            self.deadlines.sum(),
            self.policies.sum(),
            self.bindings.sum(),
        ]
    }

    fn digest_of(&self, sums: [Sum; 5]) -> [u8; 32] {
        let header = (self.applied_index, self.now_ms, self.policy_fault_count);
        let mut hasher = Sha256::new();
        hasher.update([SNAPSHOT_FORMAT_VERSION]);
        hasher.update(record_hash(HEADER_TAG, &(), &header).to_bytes());
        for sum in sums {
            hasher.update(sum.to_bytes());
        }
        hasher.finalize().into()
    }

    /// Folds the records changed since the last call into the digest. `apply` calls it once
    /// per entry; anything else that changes records (tests) calls it before reading the
    /// digest.
    /// Recomputes what is derived from the records and not in the snapshot bytes: per-principal
    /// session counts, policy counters, hold and wait totals, the sessions' parts of the digest.
    pub(crate) fn rebuild_derived(&mut self) {
        self.sessions_by_principal = self.count_sessions_by_principal();
        self.counts = self.all_counts_from_scratch();
        self.stakes = self.stakes_from_scratch();
        self.session_parts = self.session_parts_from_scratch();
    }

    /// A part of a session began (`added`) or ended: adds or subtracts its digest record.
    pub(crate) fn session_part(&mut self, part: SessionPart<'_>, added: bool) {
        let hash = part.hash();
        if added {
            self.session_parts.add(&hash);
        } else {
            self.session_parts.sub(&hash);
        }
    }

    /// The digest sum of every session's parts, from scratch: O(sessions' parts).
    pub(crate) fn session_parts_from_scratch(&self) -> Sum {
        let mut sum = Sum::default();
        for (&id, session) in &self.sessions {
            let holds =
                (session.holds.iter()).map(|(name, &token)| SessionPart::Hold(id, name, token));
            let waits = (session.waiting.iter()).map(|name| SessionPart::Wait(id, name));
            let recent = (session.recent.iter())
                .map(|(&request_id, recorded)| SessionPart::Recent(id, request_id, recorded));
            for part in holds.chain(waits).chain(recent) {
                sum.add(&part.hash());
            }
        }
        sum
    }

    fn is_settled(&self) -> bool {
        self.sessions.is_settled()
            && self.locks.is_settled()
            && self.deadlines.is_settled()
            && self.policies.is_settled()
            && self.bindings.is_settled()
    }

    pub(crate) fn settle(&mut self) {
        self.sessions.settle();
        self.locks.settle();
        self.deadlines.settle();
        self.policies.settle();
        self.bindings.settle();
    }
}

/// A snapshot being written from the state as it was at [`State::begin_snapshot`], a chunk at
/// a time, while `apply` goes on between chunks. Each collection keeps the values, as of the
/// freeze, of the records that change before the writer reaches them (`state/records.rs`), so
/// the bytes are exactly [`State::to_snapshot_bytes`] of the frozen state.
#[derive(Debug)]
pub struct SnapshotWriter {
    bytes: Vec<u8>,
    /// What the last chunks wrote, not yet moved to `bytes` ([`SnapshotWriter::absorb`]): a
    /// chunk is written into this small buffer while apply waits, and the big one grows (and
    /// copies itself, tens of MB at a time) after the state lock is released.
    pending: Vec<u8>,
    /// The next field of `State` to write (see `write_snapshot_chunk`).
    stage: usize,
    applied_index: u64,
    policy_fault_count: u64,
}

/// The state a snapshot was being written from was replaced (a snapshot was installed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the state was replaced while its snapshot was being written")]
pub struct SnapshotAbandoned;

impl SnapshotWriter {
    /// The log index of the last entry the snapshot includes.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Moves what the chunks wrote so far into the snapshot. Call it between chunks, outside
    /// the state lock; the result is the same whether or not it is called.
    pub fn absorb(&mut self) {
        self.bytes.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    /// The snapshot bytes, once `write_snapshot_chunk` returned `Ok(true)`.
    pub fn into_bytes(mut self) -> Vec<u8> {
        assert_eq!(self.stage, SNAPSHOT_STAGES, "snapshot not fully written");
        self.absorb();
        self.bytes
    }
}

/// The collections of `State` written a chunk at a time, in field order.
const SNAPSHOT_STAGES: usize = 5;

impl State {
    /// Freezes the state for a snapshot: O(1). Write it with
    /// [`State::write_snapshot_chunk`] until that returns `Ok(true)`; entries may be applied
    /// between chunks. One snapshot at a time.
    pub fn begin_snapshot(&mut self) -> SnapshotWriter {
        assert!(self.is_settled(), "snapshot begun inside an entry");
        self.sessions.freeze();
        self.locks.freeze();
        self.deadlines.freeze();
        self.policies.freeze();
        self.bindings.freeze();
        let mut bytes = vec![SNAPSHOT_FORMAT_VERSION];
        // `State`'s field order: applied_index, now_ms, sessions, locks, deadlines,
        // policy_fault_count, policies, bindings (the derived fields are skipped).
        encode_field(&self.applied_index, &mut bytes);
        encode_field(&self.now_ms, &mut bytes);
        SnapshotWriter {
            bytes,
            pending: Vec::new(),
            stage: 0,
            applied_index: self.applied_index,
            policy_fault_count: self.policy_fault_count,
        }
    }

    /// Writes up to `records` more records of the frozen state (at least one, unless done).
    /// `Ok(true)`: the snapshot is complete.
    pub fn write_snapshot_chunk(
        &mut self,
        writer: &mut SnapshotWriter,
        records: usize,
    ) -> Result<bool, SnapshotAbandoned> {
        let mut budget = records.max(1);
        while writer.stage < SNAPSHOT_STAGES && budget > 0 {
            let out = &mut writer.pending;
            let done = match writer.stage {
                0 => write_stage(&mut self.sessions, out, &mut budget),
                1 => write_stage(&mut self.locks, out, &mut budget),
                2 => write_stage(&mut self.deadlines, out, &mut budget),
                3 => write_stage(&mut self.policies, out, &mut budget),
                _ => write_stage(&mut self.bindings, out, &mut budget),
            }?;
            if done {
                writer.stage += 1;
                if writer.stage == 3 {
                    encode_field(&writer.policy_fault_count, out);
                }
            }
        }
        Ok(writer.stage == SNAPSHOT_STAGES)
    }
}

/// One collection's share of a chunk; `SnapshotAbandoned` if it is no longer frozen (the
/// state was replaced).
fn write_stage<K, V, const TAG: u8>(
    records: &mut Records<K, V, TAG>,
    out: &mut Vec<u8>,
    budget: &mut usize,
) -> Result<bool, SnapshotAbandoned>
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + Record,
{
    if !records.is_frozen() {
        return Err(SnapshotAbandoned);
    }
    Ok(records.write_frozen(out, budget))
}

fn encode_field<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("snapshot field encodes");
}

/// A session's part that is a digest record of its own (tags 6, 7, 8; see
/// `Record for Box<Session>`).
pub(crate) enum SessionPart<'a> {
    /// The session holds lock `name` with this token.
    Hold(SessionId, &'a str, FencingToken),
    /// The session waits for lock `name`.
    Wait(SessionId, &'a str),
    /// The recorded outcome of one of the session's requests.
    Recent(SessionId, RequestId, &'a Recorded),
}

impl SessionPart<'_> {
    fn hash(&self) -> Sum {
        match self {
            SessionPart::Hold(id, name, token) => record_hash(6, &(id, name), token),
            SessionPart::Wait(id, name) => record_hash(7, &(id, name), &()),
            SessionPart::Recent(id, request_id, recorded) => {
                record_hash(8, &(id, request_id), recorded)
            }
        }
    }
}

/// Decodes with bincode's allocation limit set from the input's size. bincode claims against
/// the limit the in-memory size of what it decodes: a byte string claims its length, an
/// integer its width (at most 8 bytes here, for at least 1 byte of varint input). So a valid
/// snapshot claims at most 8 bytes per input byte, and a corrupt length prefix cannot make
/// bincode allocate more than a small multiple of the input (for inputs up to 256 MiB; larger
/// snapshots decode without a limit).
pub(crate) fn decode_bounded(body: &[u8]) -> Result<(State, usize), SnapshotError> {
    fn decode<const LIMIT: usize>(body: &[u8]) -> Result<(State, usize), SnapshotError> {
        let config = bincode::config::standard().with_limit::<LIMIT>();
        bincode::serde::decode_from_slice(body, config)
            .map_err(|error| SnapshotError::Decode(error.to_string()))
    }
    const CLAIMED_BYTES_PER_INPUT_BYTE_MAX: usize = 8;
    match body.len().saturating_mul(CLAIMED_BYTES_PER_INPUT_BYTE_MAX) {
        claim if claim <= 1 << 20 => decode::<{ 1 << 20 }>(body),
        claim if claim <= 1 << 24 => decode::<{ 1 << 24 }>(body),
        claim if claim <= 1 << 28 => decode::<{ 1 << 28 }>(body),
        claim if claim <= 1 << 31 => decode::<{ 1 << 31 }>(body),
        _ => decode::<{ usize::MAX }>(body),
    }
}
