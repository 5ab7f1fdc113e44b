//! openraft's async runtime: tokio, with a random number generator the simulator can seed.
//!
//! openraft draws each election timeout from `AsyncRuntime::thread_rng()`. On tokio that is the
//! thread's OS-seeded generator, which no seed reaches: two runs of one simulated schedule
//! would elect different leaders. Here a thread may be given a seed
//! ([`seed_thread_rng`]); the simulator, which runs every node on one thread, does so, and each
//! draw then comes from that seed's sequence. Unseeded threads (every thread of
//! `holdfast serve`) draw from a generator seeded by the OS, as before. Everything else is
//! openraft's `TokioRuntime`.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::TokioRuntime;
use openraft::async_runtime::AsyncRuntime;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;

thread_local! {
    /// The next seed of this thread's draws, when the thread was given one.
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, `thread_rng()` on this thread draws from the sequence of `seed` (`None`: from
/// the OS again).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.set(seed);
}

/// SplitMix64's step: the next seed of the sequence.
fn next_seed(seed: u64) -> u64 {
    let z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// tokio, with a seedable `thread_rng` (see the module documentation).
#[derive(Debug)]
pub struct Runtime(TokioRuntime);

impl AsyncRuntime for Runtime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match SEED.get() {
            Some(seed) => {
                SEED.set(Some(next_seed(seed)));
                SmallRng::seed_from_u64(seed)
            }
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Runtime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt as _;

    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        let draw = || -> Vec<u64> {
            (0..4)
                .map(|_| Runtime::thread_rng().random_range(150..300))
                .collect()
        };
        seed_thread_rng(Some(7));
        let first = draw();
        seed_thread_rng(Some(7));
        assert_eq!(draw(), first);
        seed_thread_rng(Some(8));
        assert_ne!(draw(), first);
        seed_thread_rng(None);
    }
}
