//! Every integration test that can share a process, in one binary: one module per
//! area, each as it was a test binary of its own before. One binary links the crate,
//! tokio, hyper and the AWS SDK once instead of once per file, and one moto server
//! serves every module (each test works in namespaces of its own, see
//! `test_support::moto::unique`).
//!
//! Three tests stay binaries of their own because they measure the whole process:
//! `tests/alloc.rs` and `tests/memory.rs` install a counting global allocator, and
//! `tests/soak` holds resident memory to a bound.
//!
//! Run one area: `cargo test --all-features --test integration failover::`.

mod balance;
mod cloud_map;
mod contract;
mod deadline;
mod dns;
mod ejection_spread;
mod failover;
mod fleet;
mod health;
mod hedging;
mod ipv6;
mod local_registry;
mod owner_account;
mod prop_options;
mod properties;
mod register;
mod resilience;
mod runtimes;
mod service;
mod service_churn;
mod startup_wait;
mod watch;
mod zone_callers;
mod zone_capacity;
mod zone_retries;
mod zones;

#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "tonic")]
mod grpc;
#[cfg(all(feature = "hyper", feature = "tower"))]
mod http2;
#[cfg(feature = "hyper")]
mod hyper;
#[cfg(all(feature = "reqwest", feature = "tower"))]
mod no_tls;
#[cfg(feature = "reqwest")]
mod redirect;
#[cfg(feature = "reqwest")]
mod request_timeout;
#[cfg(feature = "reqwest")]
mod reqwest;
#[cfg(feature = "tower")]
mod tower;
#[cfg(feature = "tower")]
mod watch_tower;
#[cfg(feature = "tower")]
mod zone_balancers;

/// Every kind of host rule: the namespace list (`shared`), any name, and a
/// function (`svc.ns`). For the tests that hold each integration's host mapping
/// to one behaviour under all of them.
#[cfg(any(feature = "hyper", feature = "tower"))]
fn host_rules() -> [cloudmap_resolver::HostMap; 3] {
    use cloudmap_resolver::HostMap;
    [
        HostMap::namespaces(["shared"]),
        HostMap::any(),
        HostMap::from_fn(|host| {
            let (svc, ns) = host.split_once('.')?;
            Some((ns.to_owned(), svc.to_owned()))
        }),
    ]
}
