//! The async runtime openraft runs on: tokio, with randomness that a simulation can seed.
//!
//! openraft draws its election timeouts from `AsyncRuntime::thread_rng`. In a node that is the
//! thread's own entropy; `noodle-sim` calls [`seed_thread_rng`] so that the same seed gives the
//! same elections, which is what makes a failing simulation seed reproducible.

use openraft::{AsyncRuntime, TokioRuntime};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes every later draw of openraft's randomness on this thread come from `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// The thread's seeded generator if a simulation set one, else the thread's entropy.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        SEEDED.with(|r| match r.borrow_mut().as_mut() {
            Some(rng) => rng.next_u64(),
            None => rand08::thread_rng().next_u64(),
        })
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        SEEDED.with(|r| match r.borrow_mut().as_mut() {
            Some(rng) => rng.fill_bytes(dest),
            None => rand08::thread_rng().fill_bytes(dest),
        })
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A random 128-bit number from [`ThreadRng`] (seeded in a simulation).
pub(crate) fn random_u128() -> u128 {
    let mut rng = ThreadRng;
    u128::from(rng.next_u64()) | (u128::from(rng.next_u64()) << 64)
}

/// tokio, as openraft's `TokioRuntime`, but with [`ThreadRng`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Runtime;

type Tokio = TokioRuntime;

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: Send + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + Send> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: Send> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: Send> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        Tokio::spawn(future)
    }
    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + Send>(duration: Duration, f: F) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, f)
    }
    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        f: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, f)
    }
    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }
    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }
    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: Send,
    {
        Tokio::oneshot()
    }
}
