//! What a cached key costs in memory, counted by a counting global allocator: every
//! byte the cache holds for a key (index entry, slot, snapshot, parsed endpoints,
//! the capacity tracker's entry, the key's refresher task), net of what was freed.
//!
//! This binary holds a single test, so no other test thread allocates while the
//! count runs (the allocator's counters are process-wide).

use std::alloc::System;

use cloudmap_resolver::Resolver;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[path = "../benches/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 10_000;

/// Net bytes held per key after `KEYS` keys with `endpoints` endpoints each are
/// loaded (endpoints carry an address, a port and two attributes, as in the
/// benchmarks).
fn bytes_per_key(endpoints: usize) -> usize {
    let rt = common::runtime();
    let resolver = Resolver::builder(common::Synthetic { endpoints })
        .capacity(KEYS as u64 * 2)
        .build()
        .unwrap();
    let names: Vec<String> = (0..KEYS).map(|i| format!("svc-{i}")).collect();
    rt.block_on(resolver.resolve("shared", "warm-up")).unwrap();
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for name in &names {
            resolver.resolve("shared", name).await.unwrap();
        }
    });
    assert_eq!(resolver.cached_keys(), KEYS + 1);
    let s = region.change();
    let held = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    drop(resolver);
    usize::try_from(held).unwrap() / KEYS
}

#[test]
fn bytes_per_cached_key() {
    let one = bytes_per_key(1);
    let eight = bytes_per_key(8);
    let per_endpoint = (eight - one) / 7;
    println!("bytes per cached key with 8 endpoints: {eight}");
    println!("bytes per cached key with 1 endpoint: {one}");
    println!("bytes per additional endpoint: {per_endpoint}");
    // A bound, not a measurement: catches a key that starts costing far more.
    assert!(eight < 16 * 1024, "{eight} bytes per key");
    assert!(one < eight);
}
