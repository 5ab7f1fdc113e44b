//! `core::apply` on arbitrary command sequences: no panic, every invariant holds after every
//! entry, snapshots round-trip, and a deployed "module" made of fuzz bytes is refused or
//! accepted without harm. The bytes drive a small command language (one op byte, then its
//! arguments), so most inputs are plausible sequences rather than decode failures.

#![no_main]

use std::collections::BTreeMap;

use holdfast_core::{AcquireRequest, BindMode, BuiltinFifo, Command, Entry, Mode, State, apply};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn u64(&mut self) -> u64 {
        (0..3).fold(0u64, |acc, _| (acc << 8) | u64::from(self.byte()))
    }
    fn name(&mut self) -> String {
        const NAMES: [&str; 6] = ["a", "b", "q/1", "q/2", "", "x/very/long/name"];
        NAMES[usize::from(self.byte()) % NAMES.len()].to_string()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let mut state = State::default();
    let mut now_ms = 0u64;
    for log_index in 1..=64u64 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        now_ms += u64::from(input.byte()) * 10;
        let session_id = u64::from(input.byte() % 8) + 1;
        let command = match op % 12 {
            0 => Command::OpenSession {
                ttl_ms: 1_000 + input.u64() % 20_000,
                principal: "p".into(),
                labels: BTreeMap::from([("tenant".into(), "t".into())]),
            },
            1 => Command::CloseSession { session_id },
            2 => Command::Tick {
                renewed: vec![session_id, session_id + 1],
            },
            3 | 4 => Command::Acquire(AcquireRequest {
                session_id,
                request_id: u64::from(input.byte() % 4),
                name: input.name(),
                mode: if input.byte() % 3 == 0 {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                },
                max_holders: u32::from(input.byte() % 4),
                wait_timeout_ms: input.u64() % 50_000,
                priority: i32::from(input.byte() as i8),
                value: vec![1; usize::from(input.byte())],
            }),
            5 => Command::Release {
                session_id,
                request_id: u64::from(input.byte() % 4),
                name: input.name(),
                token: input.u64() % 64,
            },
            6 => Command::CancelWait {
                session_id,
                name: input.name(),
            },
            7 => Command::Proclaim {
                session_id,
                name: input.name(),
                token: input.u64() % 64,
                value: vec![2; usize::from(input.byte())],
            },
            8 => {
                let len = usize::from(input.byte()).min(input.0.len());
                let (wasm, rest) = input.0.split_at(len);
                input.0 = rest;
                Command::DeployPolicy {
                    name: "fuzz".into(),
                    wasm: wasm.to_vec(),
                }
            }
            9 => Command::BindPolicy {
                prefix: input.name(),
                policy: if input.byte() % 2 == 0 {
                    "builtin".into()
                } else {
                    "fuzz".into()
                },
                version: u64::from(input.byte() % 3),
                config: Vec::new(),
                mode: if input.byte() % 2 == 0 {
                    BindMode::Enforce
                } else {
                    BindMode::Shadow
                },
            },
            10 => Command::Revoke {
                name: input.name(),
                token: u64::from(input.byte()),
            },
            _ => Command::Unbind {
                prefix: input.name(),
                mode: BindMode::Enforce,
            },
        };
        let entry = Entry {
            log_index,
            now_ms,
            command,
        };
        apply(&mut state, &entry, &mut BuiltinFifo);
        if let Err(broken) = state.check_invariants() {
            panic!("invariant broken after {entry:?}: {broken}");
        }
    }
    let bytes = state.to_snapshot_bytes();
    let restored = State::from_snapshot_bytes(&bytes).expect("own snapshot decodes");
    assert_eq!(restored, state);
    // The digest apply maintained is the digest of the records.
    assert_eq!(state.digest(), state.digest_from_scratch());
    assert_eq!(restored.digest(), state.digest());
    // Arbitrary bytes as a snapshot: refused or valid, never a panic.
    if let Ok(decoded) = State::from_snapshot_bytes(data) {
        assert!(decoded.check_invariants().is_ok());
    }
});
