//! Canonical snapshot bytes and the state digest.
//!
//! Format: one version byte ([`SNAPSHOT_FORMAT_VERSION`]) followed by the bincode 2 encoding
//! (standard config: little-endian, varint integers) of [`State`]. Every collection in `State`
//! is ordered, so equal states give equal bytes on every replica, and the digest (sha256 of
//! the bytes) can be compared across nodes to detect divergence. Decoding is paired with
//! `check_invariants`: a snapshot that decodes but describes an impossible state is refused.
//! Changing `State`'s shape is a format change: bump the version byte.

use std::io::Write as _;

use sha2::{Digest, Sha256};

use crate::state::State;

/// First byte of every snapshot. Bump on any change to `State`'s serialized shape.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 2;

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
        state.sessions_by_principal = state.count_sessions_by_principal();
        if read != body.len() {
            return Err(SnapshotError::TrailingBytes {
                count: body.len() - read,
            });
        }
        state.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(state)
    }

    /// sha256 of [`State::to_snapshot_bytes`]: what replicas compare to detect divergence.
    /// Streamed into the hasher: the encoding of a large state (tens of MB at a million locks)
    /// is never held in memory, and the apply loop, which digests every checkpoint, does not
    /// copy it around.
    ///
    /// # Panics
    /// If the state does not serialize, which would be a bug (see `to_snapshot_bytes`).
    pub fn digest(&self) -> [u8; 32] {
        /// Bytes buffered between the encoder's small writes and the hasher.
        const DIGEST_BUFFER_BYTES: usize = 64 << 10;
        let mut hasher = std::io::BufWriter::with_capacity(DIGEST_BUFFER_BYTES, Sha256::new());
        hasher
            .write_all(&[SNAPSHOT_FORMAT_VERSION])
            .expect("hashing does not fail");
        bincode::serde::encode_into_std_write(self, &mut hasher, bincode::config::standard())
            .expect("state serializes");
        let hasher = hasher.into_inner().expect("hashing does not fail");
        hasher.finalize().into()
    }
}

/// Decodes with bincode's allocation limit set from the input's size. bincode claims against
/// the limit the in-memory size of what it decodes: a byte string claims its length, an
/// integer its width (at most 8 bytes here, for at least 1 byte of varint input). So a valid
/// snapshot claims at most 8 bytes per input byte, and a corrupt length prefix cannot make
/// bincode allocate more than a small multiple of the input (for inputs up to 256 MiB; larger
/// snapshots decode without a limit).
fn decode_bounded(body: &[u8]) -> Result<(State, usize), SnapshotError> {
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
