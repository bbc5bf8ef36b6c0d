//! Shared test infrastructure: a moto server (Cloud Map), a fault-injecting proxy in
//! front of it, and helpers to build registries there.
#![allow(dead_code, unreachable_pub)]

pub mod counting;
pub mod moto;
pub mod proxy;
