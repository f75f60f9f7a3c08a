//! The time source of the apply engine's waits (the health gate's deadline, its pauses
//! between probes, step timings): real time, or a fake clock that tests advance without
//! sleeping.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A time source (`Sync`: shared by the apply engine across awaits).
pub trait Clock: Sync {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Waits `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// Real time: [`Instant::now`] and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock for tests: it starts at its creation and moves only when slept on (a sleep
/// returns at once, the clock having moved by its duration) or advanced.
#[derive(Debug)]
pub struct FakeClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

impl FakeClock {
    /// A clock at zero.
    pub fn new() -> FakeClock {
        FakeClock { start: Instant::now(), elapsed: Mutex::new(Duration::ZERO) }
    }

    /// Time passed on this clock since it was created.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

impl<T: Clock> Clock for &T {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        (**self).sleep(duration)
    }
}
