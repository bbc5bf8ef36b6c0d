//! What cloudmap-resolver's integration tests, benchmarks and examples share, as one
//! `publish = false` workspace crate (as hickory-dns keeps `tests/test-support`), so
//! nothing is included through `#[path]` and each piece compiles once.
//!
//! - [`moto`]: a moto server (Cloud Map) on a free loopback port, and helpers that
//!   build namespaces, services and instances there;
//! - [`proxy`]: a proxy in front of moto that counts calls and injects the faults moto
//!   cannot make (5xx, throttling, hangs);
//! - [`dns`]: DNS servers on loopback (hickory-server): a table with faults on command,
//!   and a static zone for the benchmarks;
//! - [`grpc`]: tonic-health gRPC servers on loopback, and a dial counter;
//! - [`http`]: HTTP servers on loopback for the client integrations and the soak;
//! - [`backend`]: loopback TCP backends with set delays or failures, and a pool of
//!   connections to them (load balancing);
//! - [`counting`]: a `Discover` wrapper that counts calls and fails on command;
//! - [`net`]: a loopback port that refuses connections;
//! - [`bench`]: a runtime, a synthetic registry and a first-poll driver;
//! - [`fleet`]: a fleet of resolvers against one simulated account, on paused time.

pub mod backend;
pub mod bench;
pub mod counting;
pub mod dns;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod moto;
pub mod net;
pub mod proxy;
pub mod web;
