//! Snapshots: canonical bytes, digests, and refusal of bad bytes without panicking.

use super::{Harness, SplitMix64};
use crate::{BuiltinFifo, SNAPSHOT_FORMAT_VERSION, SnapshotError, State};

const SCRIPT: &str = "
    @0 open principal=marker-principal zone:eu
    open ttl=60000
    open ttl=60000
    acquire 1 a req=1
    acquire 2 a wait=5000 req=1
    acquire 2 r shared max=3
    acquire 3 r shared max=3
    acquire 3 b
    @1000 tick 1 2 3
";

fn build(script: &str) -> State {
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    for line in script.lines() {
        harness.line(line);
    }
    harness.state
}

#[test]
fn round_trip_gives_equal_bytes_and_digest() {
    let state = build(SCRIPT);
    let bytes = state.to_snapshot_bytes();
    assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION);
    let restored = State::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.to_snapshot_bytes(), bytes);
    assert_eq!(restored.digest(), state.digest());
    // The digest apply maintained is the digest of the records, and decoding recomputes it.
    assert_eq!(state.digest(), state.digest_from_scratch());
    assert_eq!(restored.next_deadline_ms(), state.next_deadline_ms());
    assert_eq!(restored.lock("a"), state.lock("a"));
    assert_eq!(restored.session(1), state.session(1));
    // A state built independently from the same entries has the same digest.
    assert_eq!(build(SCRIPT).digest(), state.digest());
    // One more entry changes it.
    assert_ne!(build(&format!("{SCRIPT}\nnoop")).digest(), state.digest());
    assert_eq!(
        State::default().digest(),
        State::from_snapshot_bytes(&State::default().to_snapshot_bytes())
            .unwrap()
            .digest()
    );
}

#[test]
fn refuses_empty_unknown_version_truncated_and_trailing_bytes() {
    let bytes = build(SCRIPT).to_snapshot_bytes();
    assert_eq!(State::from_snapshot_bytes(&[]), Err(SnapshotError::Empty));
    let mut wrong_version = bytes.clone();
    wrong_version[0] = SNAPSHOT_FORMAT_VERSION + 1;
    assert_eq!(
        State::from_snapshot_bytes(&wrong_version),
        Err(SnapshotError::UnsupportedVersion {
            found: SNAPSHOT_FORMAT_VERSION + 1,
            expected: SNAPSHOT_FORMAT_VERSION
        })
    );
    for len in 1..bytes.len() {
        assert!(
            matches!(
                State::from_snapshot_bytes(&bytes[..len]),
                Err(SnapshotError::Decode(_))
            ),
            "prefix {len}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        State::from_snapshot_bytes(&trailing),
        Err(SnapshotError::TrailingBytes { count: 1 })
    );
}

#[test]
fn refuses_a_decodable_but_invalid_state() {
    let mut state = build(SCRIPT);
    // Move time past every session's expiry without firing the deadlines.
    state.now_ms = 10_000_000;
    let result = State::from_snapshot_bytes(&state.to_snapshot_bytes());
    assert!(
        matches!(&result, Err(SnapshotError::Invalid(reason)) if reason.contains("expiry")),
        "{result:?}"
    );

    let mut state = build(SCRIPT);
    let last = state.deadlines.keys().next_back().unwrap().clone();
    state.deadlines.remove_key(&last);
    let result = State::from_snapshot_bytes(&state.to_snapshot_bytes());
    assert!(
        matches!(&result, Err(SnapshotError::Invalid(reason)) if reason.contains("deadline")),
        "{result:?}"
    );

    let mut state = build(SCRIPT);
    let lock = state.locks.get_mut("a").unwrap();
    let hold = lock.holders.values().next().unwrap().clone();
    lock.holders.insert(2, hold);
    let result = State::from_snapshot_bytes(&state.to_snapshot_bytes());
    assert!(
        matches!(result, Err(SnapshotError::Invalid(_))),
        "{result:?}"
    );
}

#[test]
fn a_corrupt_length_prefix_is_refused_without_allocating_it() {
    let bytes = build(SCRIPT).to_snapshot_bytes();
    let marker = b"marker-principal";
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .unwrap();
    assert_eq!(bytes[at - 1] as usize, marker.len(), "varint length prefix");
    // bincode varint: 253 then a little-endian u64.
    let mut corrupt = bytes[..at - 1].to_vec();
    corrupt.push(253);
    corrupt.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    corrupt.extend_from_slice(&bytes[at..]);
    assert!(matches!(
        State::from_snapshot_bytes(&corrupt),
        Err(SnapshotError::Decode(_))
    ));
}

#[test]
fn random_bytes_and_bit_flips_never_panic() {
    let valid = build(SCRIPT).to_snapshot_bytes();
    let mut random = SplitMix64::new(0x5eed);
    for _ in 0..2_000 {
        let len = random.below(300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| random.next_u64() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            *first = SNAPSHOT_FORMAT_VERSION;
        }
        if let Ok(state) = State::from_snapshot_bytes(&bytes) {
            state.check_invariants().unwrap();
        }
    }
    for _ in 0..2_000 {
        let mut bytes = valid.clone();
        let at = 1 + random.below(valid.len() as u64 - 1) as usize;
        bytes[at] ^= 1 << random.below(8);
        if let Ok(state) = State::from_snapshot_bytes(&bytes) {
            state.check_invariants().unwrap();
        }
    }
}

#[test]
fn a_one_bit_change_to_any_record_changes_the_digest() {
    // Every kind of record: sessions, locks, deadlines, a deployed policy, bindings.
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    for line in SCRIPT.lines().chain(["deploy lifo", "bind q/ lifo v=1"]) {
        harness.line(line);
    }
    let state = harness.state;
    assert!(state.policies.len() == 1 && state.bindings.len() == 1);
    let bytes = state.to_snapshot_bytes();
    let digest = state.digest();
    let mut changed = 0;
    for at in 1..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            // Decoded without the invariant checks: a divergent replica's state need not be
            // one apply could reach.
            let Ok((mut other, _)) = crate::snapshot::decode_bounded(&flipped[1..]) else {
                continue;
            };
            other.rebuild_derived();
            if other != state {
                changed += 1;
                assert_ne!(other.digest(), digest, "bit {bit} of byte {at}");
                assert_eq!(other.digest(), other.digest_from_scratch());
            }
        }
    }
    // Most flips decode to a different state (the rest break the encoding).
    assert!(
        changed > bytes.len() * 4,
        "{changed} of {} bits",
        bytes.len() * 8
    );
}

#[test]
fn a_snapshot_written_in_chunks_is_the_state_it_began_from() {
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    for line in SCRIPT.lines() {
        harness.line(line);
    }
    let expected = harness.state.to_snapshot_bytes();
    let mut writer = harness.state.begin_snapshot();
    assert_eq!(writer.applied_index(), harness.state.applied_index());
    // Entries between chunks change, add and remove records before and after the cursor.
    let later = [
        "open ttl=60000",
        "acquire 4 a2",
        "release 1 a 4",
        "acquire 4 zz wait=1000",
        "close 3",
        "@30000 tick 1 2 4",
        "acquire 2 b",
    ];
    let mut later = later.into_iter();
    let mut chunks = 0;
    while harness.state.write_snapshot_chunk(&mut writer, 1) != Ok(true) {
        chunks += 1;
        if let Some(line) = later.next() {
            harness.line(line);
        }
    }
    assert!(later.next().is_none() && chunks > 7, "{chunks} chunks");
    let bytes = writer.into_bytes();
    assert_eq!(bytes, expected);
    assert!(State::from_snapshot_bytes(&bytes).is_ok());
    // The next snapshot starts from the state as it is now.
    let mut writer = harness.state.begin_snapshot();
    while harness.state.write_snapshot_chunk(&mut writer, 1000) != Ok(true) {}
    assert_eq!(writer.into_bytes(), harness.state.to_snapshot_bytes());
}

#[test]
fn a_snapshot_of_a_replaced_state_is_abandoned() {
    let mut state = build(SCRIPT);
    let mut writer = state.begin_snapshot();
    assert_eq!(state.write_snapshot_chunk(&mut writer, 1), Ok(false));
    state = State::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert_eq!(
        state.write_snapshot_chunk(&mut writer, 1),
        Err(crate::SnapshotAbandoned)
    );
}

/// The fixture's state (`fixtures/snapshot_v2.hex`, written by the code of format version 2
/// before the memory work): every record kind, recorded outcomes of each kind, values.
const FIXTURE_SCRIPT: &str = "
    @0 open principal=marker-principal zone:eu tenant:acme
    open ttl=60000
    open ttl=60000 tenant:acme
    acquire 1 a req=1 value=leader-1
    acquire 2 a wait=5000 req=1 value=cand
    acquire 2 r shared max=3 req=2
    acquire 3 r shared max=3
    acquire 3 b req=7
    acquire 1 b req=2
    release 3 b 8 req=8
    acquire 1 b req=3
    deploy lifo
    bind q/ lifo v=1
    @1000 tick 1 2 3
";

/// Pokes every optional field of locks and holds (unreachable without a policy that sets
/// them) so the fixture covers their encodings.
fn fixture_state() -> State {
    let mut policy = BuiltinFifo;
    let mut harness = Harness::new(&mut policy);
    for line in FIXTURE_SCRIPT.lines() {
        harness.line(line);
    }
    let mut state = harness.state;
    let lock = state.locks.get_mut("a").unwrap();
    lock.set_preempt(Some((5_000, 2)));
    lock.set_reevaluate_at_ms(Some(7_000));
    lock.delayed_until_ms = Some(9_000);
    let hold = lock.holders.get_mut(&1).unwrap();
    hold.lease_ms = 3_000;
    hold.lease_expires_at_ms = Some(4_000);
    hold.lock_delay_ms = 1_500;
    hold.priority = -3;
    hold.granted_by = Some(Box::new(crate::GrantedBy {
        policy: "lifo".to_owned(),
        version: 1,
    }));
    state.settle();
    state
}

/// The bytes are pinned to format version 3 (version 2 plus the policy that granted each hold;
/// version 2 was pinned before the memory work, and boxed and compacted records encoded as
/// before); the digest is pinned to its definition (a change to it must be deliberate: the
/// guard compares digests across nodes; version 3 changed it, holds record their granter).
#[test]
fn the_encoding_is_format_version_3_and_the_digest_is_pinned() {
    let unhex = |hex: &str| -> Vec<u8> {
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
            .collect()
    };
    let bytes = unhex(include_str!("fixtures/snapshot_v3.hex"));
    let digest = unhex(include_str!("fixtures/state_digest.hex"));
    // On a mismatch the message carries the new fixture, for a deliberate format change.
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let state = fixture_state();
    let encoded = state.to_snapshot_bytes();
    assert!(
        encoded == bytes,
        "same state, same bytes; snapshot_v3.hex would be:\n{}",
        hex(&encoded)
    );
    assert!(
        state.digest().to_vec() == digest,
        "same state, same digest; state_digest.hex would be:\n{}",
        hex(&state.digest())
    );
    let (mut decoded, read) = crate::snapshot::decode_bounded(&bytes[1..]).unwrap();
    decoded.rebuild_derived();
    assert_eq!(read, bytes.len() - 1);
    assert_eq!(decoded.to_snapshot_bytes(), bytes);
    assert_eq!(decoded.digest().to_vec(), digest);
}
