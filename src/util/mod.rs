//! Leaf helpers every layer may use and that use no other module of the crate:
//! padding against false sharing, thread stripes, hashing, remainders without a
//! division, clock arithmetic that cannot overflow, the one way the crate takes
//! a lock, and the memory of warnings already given.

pub(crate) mod hash;
pub(crate) mod lock;
#[cfg(test)]
pub(crate) mod logged;
pub(crate) mod modulus;
pub(crate) mod pad;
pub(crate) mod stripe;
pub(crate) mod time;
pub(crate) mod warn_once;
