//! What the in-memory fakes beside the drivers (`FakeIncus`, `FakeEdge`, `FakeUnits`,
//! `ScriptedProbe`) share: their state behind one lock that a panicking test cannot
//! poison.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A fake's state, safe to share between threads.
#[derive(Debug, Default)]
pub(crate) struct FakeState<S>(Mutex<S>);

impl<S> FakeState<S> {
    /// `state`, behind the lock.
    pub(crate) fn new(state: S) -> FakeState<S> {
        FakeState(Mutex::new(state))
    }

    /// The state. A test that panicked while holding the lock must not hide it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
