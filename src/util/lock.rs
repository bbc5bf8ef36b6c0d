//! The one way the crate takes a `std` lock.
//!
//! No lock in the crate guards an invariant that a panic half-way through could
//! break in a way that matters (counters, tables rebuilt from the next registry
//! answer, a request template): a poisoned lock is used as it is, so that one
//! panicking user closure cannot turn every later resolve into a panic.

use std::sync::{LockResult, Mutex, MutexGuard};

/// The guard (or value) of a lock operation, poisoned or not.
#[inline]
pub(crate) fn recover<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Locks `m`, using it as it is if a panic poisoned it.
#[inline]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    recover(m.lock())
}
