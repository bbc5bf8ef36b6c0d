//! Leaf helpers every layer may use and that use no other module of the crate:
//! padding against false sharing, thread stripes, hashing, remainders without a
//! division, clock arithmetic that cannot overflow, and the one way the crate
//! takes a lock.

pub(crate) mod hash;
pub(crate) mod lock;
#[cfg(test)]
pub(crate) mod logged;
pub(crate) mod modulus;
pub(crate) mod pad;
pub(crate) mod stripe;
pub(crate) mod time;
