//! Memory of the replicated state alone, per held lock: applies `SESSIONS` OpenSession and
//! `LOCKS` Acquire entries (lock j held by session j mod SESSIONS, as `holdfast-bench scale`
//! loads them) and counts the heap bytes the state holds, rounded up to the allocator's size
//! classes (jemalloc's, which the server uses). RSS adds the allocator's and rocksdb's own
//! overheads on top: `./scripts/bench-scale` measures that.
//!
//!     cargo run --release -p holdfast-core --example state_memory [LOCKS] [SESSIONS]

// A counting allocator must implement `GlobalAlloc`, an unsafe trait; it only forwards to the
// system allocator. Measurement tool only: nothing of Holdfast itself runs under it.
#![allow(unsafe_code)]
// Timing apply is what this tool is for; the clock ban is for the state machine itself.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use holdfast_core::{AcquireRequest, BuiltinFifo, Command, Entry, Mode, State, apply};

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// jemalloc's size class for a small request: multiples of 16 up to 128, then four classes
/// per doubling.
fn size_class(size: usize) -> usize {
    match size {
        0..=8 => 8,
        9..=128 => size.div_ceil(16) * 16,
        _ => {
            let spacing = size.next_power_of_two() / 8;
            size.div_ceil(spacing) * spacing
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(size_class(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's `layout` contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(size_class(layout.size()), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<u64>());
    let locks = args.next().transpose().expect("LOCKS").unwrap_or(1_000_000);
    let sessions = args
        .next()
        .transpose()
        .expect("SESSIONS")
        .unwrap_or(100_000);
    let mut state = State::default();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut log_index = 0;
    let mut next = |command: Command| {
        log_index += 1;
        Entry {
            log_index,
            now_ms: 1_000,
            command,
        }
    };
    let mut ids = Vec::with_capacity(sessions as usize);
    for k in 0..sessions {
        let entry = next(Command::OpenSession {
            ttl_ms: 3_600_000,
            principal: format!("scale-{}", k % 100),
            labels: [("tenant".to_string(), format!("t-{}", k % 10))].into(),
        });
        apply(&mut state, &entry, &mut BuiltinFifo);
        ids.push(entry.log_index);
    }
    let after_sessions = LIVE_BYTES.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    for j in 0..locks {
        let entry = next(Command::Acquire(AcquireRequest {
            session_id: ids[(j % sessions) as usize],
            request_id: j / sessions + 1,
            name: format!("scale/{j:08}"),
            mode: Mode::Exclusive,
            max_holders: 0,
            wait_timeout_ms: 0,
            priority: 0,
            value: Vec::new(),
        }));
        apply(&mut state, &entry, &mut BuiltinFifo);
    }
    let applying = started.elapsed();
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let (lock_count, holds, _) = state.lock_counts();
    assert_eq!((lock_count as u64, holds as u64), (locks, locks));
    let snapshot = state.to_snapshot_bytes().len();
    println!(
        "{sessions} sessions: {:.0} bytes each; {locks} held locks: {:.0} bytes each, {:.0} \
         with the sessions; snapshot {:.1} MiB ({:.0} bytes per lock); apply {:.1} µs per \
         acquire",
        (after_sessions - before) as f64 / sessions as f64,
        (after - after_sessions) as f64 / locks as f64,
        (after - before) as f64 / locks as f64,
        snapshot as f64 / f64::from(1 << 20),
        snapshot as f64 / locks as f64,
        applying.as_secs_f64() * 1e6 / locks as f64,
    );
}
