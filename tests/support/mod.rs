//! Shared test infrastructure: a moto server (Cloud Map), a fault-injecting proxy in
//! front of it, helpers to build registries there, and a DNS server on loopback.
#![allow(dead_code, unreachable_pub)]

pub mod counting;
pub mod dns;
pub mod http;
pub mod moto;
pub mod net;
pub mod proxy;
