//! Chaos soak: 16 tasks call two services through `call` for about a minute
//! (`SOAK_SECS`, default 60) while the registry (moto behind the fault proxy) cycles
//! through ok / 503 / throttled / hanging, loopback backends are killed and restarted,
//! and instances register and deregister.
//!
//! What it holds the resolver to, printed and asserted at the end:
//! - no call fails: two "core" backends stay registered throughout and at most one is
//!   down at a time (a kill waits until every key's cached answer lists the other at
//!   its current address, and 2 s after the last restart), so every call has a live
//!   endpoint among its attempts;
//! - no attempt on an address the default policy refuses: instances at
//!   `169.254.169.254` in several spellings (IPv4, IPv4-mapped IPv6, EC2's IPv6
//!   metadata address, CNAME values that are IP literals) stay registered throughout,
//!   and the operation records every endpoint it is given, judged here independently
//!   of the crate's own policy code;
//! - resident memory grows less than 10% from the end of the first fault cycle to the
//!   end of the run;
//! - once the faults stop, every key shows a newly registered instance within 20
//!   refresh periods and serves fresh (not stale) answers;
//! - registry calls stay bounded (no refresh storm).
//!
//! Resolver settings: 1 s TTL, 1 s fetch timeout, backoff capped at 2 s, the default
//! `max_stale` (1 day), and a retry budget large enough for every call's 8 attempts:
//! the budget sheds retry load by design, which is not what this test measures.
//!
//! Run alone, with the figures: `cargo test --all-features --test soak -- --nocapture`.
//!
//! A binary of its own: it holds the resident memory of the whole process to a bound,
//! which other tests running beside it would move.
//!
//! Files: `tally.rs` (what the callers saw, and the operation that records it),
//! `judge.rs` (the address policy written out independently of the crate),
//! `chaos.rs` (the backends, their registrations and the random schedule).

mod chaos;
mod judge;
mod tally;

use chaos::Chaos;
use judge::{ip_literal, refused};
use tally::{attempt, Tally};

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudmap_resolver::{CloudMapDiscovery, Endpoint, Query, Resolver, ResolverOptions, Stats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use test_support::http::{get_ok, Backend};
use test_support::moto::{self, deregister, http_service, register, unique};
use test_support::proxy::{Fault, Proxy};

const SEED: u64 = 0x50a4_c4a0_5eed;
const TASKS: usize = 16;
const TTL: Duration = Duration::from_secs(1);
/// Between a core's restart and the next kill: a call that tried the restarting core
/// just before it came back then tries the other, and must find it up (attempts on a
/// closed loopback port fail in microseconds).
const KILL_QUIET: Duration = Duration::from_secs(2);
/// One call may not take longer than this in all; past it, it counts as failed.
const CALL_LIMIT: Duration = Duration::from_secs(20);
/// Polls of the recovery check, `RECOVERY_POLL` apart: 20 refresh periods. After a
/// throttled phase the resolver paces its refreshes (down to 0.1 calls a second,
/// doubling every 20 s), so recovery takes several TTLs (up to 7 s seen at 1 s TTL).
const RECOVERY_POLLS: u32 = 80;
const RECOVERY_POLL: Duration = Duration::from_millis(250);
/// Registry calls allowed per key and second of the run, all operations together.
/// A refresh a TTL plus retries at the backoff base come to about 3.
const REGISTRY_CALLS_PER_KEY_SECOND: f64 = 4.0;

/// One registry fault cycle, warm-up included: (fault, label, seconds).
fn cycle() -> [(Fault, &'static str, u64); 6] {
    [
        (Fault::None, "ok", 3),
        (Fault::Status(503), "503", 3),
        (Fault::None, "ok", 2),
        (Fault::Throttle, "throttled", 3),
        (Fault::None, "ok", 2),
        (Fault::Hang, "hanging", 3),
    ]
}

/// Instances the default policy refuses, registered in every service throughout.
/// None may ever reach the operation.
const DENIED: [(&str, &str, &str); 5] = [
    ("deny-v4", "AWS_INSTANCE_IPV4", "169.254.169.254"),
    (
        "deny-v4-mapped",
        "AWS_INSTANCE_IPV6",
        "::ffff:169.254.169.254",
    ),
    ("deny-ec2-v6", "AWS_INSTANCE_IPV6", "fd00:ec2::254"),
    ("deny-cname", "AWS_INSTANCE_CNAME", "169.254.169.254"),
    ("deny-cname-decimal", "AWS_INSTANCE_CNAME", "2852039166"),
];

/// One cache key: a service, with or without a query parameter.
struct Key {
    namespace: String,
    service: &'static str,
    pool: bool,
}

impl Key {
    fn query<'a>(&'a self, resolver: &'a Resolver) -> Query<'a> {
        let q = resolver.query(&self.namespace, self.service);
        if self.pool {
            q.attribute("pool", "main")
        } else {
            q
        }
    }

    fn label(&self) -> String {
        let pool = if self.pool { "?pool=main" } else { "" };
        format!("{}/{}{pool}", self.namespace, self.service)
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn registry_calls(proxy: &Proxy) -> (u64, u64) {
    (
        proxy.count("DiscoverInstances"),
        proxy.count("DiscoverInstancesRevision"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let soak_secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(20);
    let soak = Duration::from_secs(soak_secs);
    let cycle_len = Duration::from_secs(cycle().iter().map(|(.., s)| s).sum());
    // The run ends on at least this long with the registry answering.
    let tail = Duration::from_secs(4);

    let proxy = Proxy::start(moto::moto().addr).await;
    let namespaces = [unique("soak-api"), unique("soak-web")];
    let services = vec![
        http_service(&namespaces[0], "api").await,
        http_service(&namespaces[1], "web").await,
    ];
    let keys: Arc<Vec<Key>> = Arc::new(
        [(0, "api"), (1, "web")]
            .into_iter()
            .flat_map(|(ns, service)| {
                let namespace = &namespaces[ns];
                [false, true].map(|pool| Key {
                    namespace: namespace.clone(),
                    service,
                    pool,
                })
            })
            .collect(),
    );
    let mut chaos = Chaos {
        services: services.clone(),
        cores: [Backend::start().await, Backend::start().await],
        core_ids: ["core-0".to_owned(), "core-1".to_owned()],
        generation: 0,
        core_down: None,
        kill_after: Instant::now(),
        churn: Backend::start().await,
        churn_registered: true,
        rng: SmallRng::seed_from_u64(SEED),
        kills: 0,
        kills_held: 0,
        restarts: 0,
        new_ports: 0,
        registrations: 0,
        deregistrations: 0,
        churn_kills: 0,
    };
    let ports = chaos.cores.each_ref().map(Backend::port);
    for (id, port) in ["core-0", "core-1"].into_iter().zip(ports) {
        chaos.register(id, port).await;
    }
    let port = chaos.churn.port();
    chaos.register("churn", port).await;
    for (id, attr, value) in DENIED {
        for svc in &services {
            register(
                svc,
                id,
                &[(attr, value), ("AWS_INSTANCE_PORT", "80"), ("pool", "main")],
            )
            .await;
        }
    }

    let mut opts = ResolverOptions::default();
    opts.cache.ttl = TTL;
    opts.cache.fetch_timeout = Duration::from_secs(1);
    opts.cache.backoff_max = Duration::from_secs(2);
    opts.seed = Some(SEED);
    opts.call.attempt_timeout = Some(Duration::from_secs(5));
    opts.retry_budget.ratio = 7.0;
    opts.retry_budget.min_per_second = 100;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .options(opts)
        .build()
        .unwrap();

    // Every key warm, listing both cores, before the callers start.
    for key in keys.iter() {
        let mut warm = false;
        for _ in 0..40 {
            if let Ok(eps) = key.query(&resolver).resolve_all().await {
                let ids: BTreeSet<&str> = eps.iter().map(Endpoint::instance_id).collect();
                if ids.contains("core-0") && ids.contains("core-1") {
                    warm = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(warm, "{} never listed both core backends", key.label());
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let max_calls_per_task = soak_secs * 100 + 2_000;
    let callers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (resolver, tally, stop, keys) =
                (resolver.clone(), tally.clone(), stop.clone(), keys.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(SEED ^ task as u64);
                let key = &keys[task % keys.len()];
                for _ in 0..max_calls_per_task {
                    if stop.load(Relaxed) {
                        break;
                    }
                    tally.calls.fetch_add(1, Relaxed);
                    let op_tally = tally.clone();
                    let call = key
                        .query(&resolver)
                        .call(move |ep: Endpoint| attempt(ep, op_tally.clone()));
                    match tokio::time::timeout(CALL_LIMIT, call).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tally.failed.fetch_add(1, Relaxed);
                            tally.note_failure(format!("{}: {e}", key.label()));
                        }
                        Err(_) => {
                            tally.failed.fetch_add(1, Relaxed);
                            tally.timed_out.fetch_add(1, Relaxed);
                            tally.note_failure(format!(
                                "{}: no result in {CALL_LIMIT:?}",
                                key.label()
                            ));
                        }
                    }
                    let pause = rng.random_range(10..30);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();

    // The fault cycles; the first is the warm-up for the memory figure.
    let start = Instant::now();
    let stats_start = resolver.stats();
    let mut rss_warm = None;
    let mut cycles = 0;
    println!(
        "soak: {soak_secs} s, {TASKS} callers on {} keys, seed {SEED:#x}",
        keys.len()
    );
    println!(
        "phase          secs   calls  failed  attempts  DiscoverInstances  Revision  stale  kills"
    );
    let run_phase = |label: &'static str| {
        let (tally, proxy, resolver) = (tally.clone(), &proxy, resolver.clone());
        let before = (
            tally.figures(),
            registry_calls(proxy),
            resolver.stats(),
            Instant::now(),
        );
        move |kills: u64| {
            let (f0, (d0, r0), s0, t0) = before;
            let (f, (d, r), s) = (tally.figures(), registry_calls(proxy), resolver.stats());
            println!(
                "{label:<12} {:>6.1} {:>7} {:>7} {:>9} {:>18} {:>9} {:>6} {:>6}",
                t0.elapsed().as_secs_f64(),
                f.calls - f0.calls,
                f.failed - f0.failed,
                f.attempts - f0.attempts,
                d - d0,
                r - r0,
                s.stale_served - s0.stale_served,
                kills,
            );
        }
    };
    // At least one cycle, the warm-up; more while one fits before the tail.
    loop {
        for (fault, label, secs) in cycle() {
            proxy.set_fault(fault);
            let kills = chaos.kills;
            let report = run_phase(label);
            chaos
                .run_until(Instant::now() + Duration::from_secs(secs), &resolver, &keys)
                .await;
            report(chaos.kills - kills);
        }
        cycles += 1;
        if rss_warm.is_none() {
            rss_warm = Some(rss_kib());
        }
        if start.elapsed() + cycle_len + tail > soak {
            break;
        }
    }
    proxy.set_fault(Fault::None);
    let kills = chaos.kills;
    let report = run_phase("ok (tail)");
    chaos.run_until(start + soak, &resolver, &keys).await;
    report(chaos.kills - kills);
    let rss_warm = rss_warm.expect("at least one fault cycle");

    // Recovery: faults over, backends up; a new instance appears and the churn
    // instance goes; each key must show both within 20 refresh periods.
    chaos.heal().await;
    let port = chaos.churn.port();
    chaos.register("fresh", port).await;
    if chaos.churn_registered {
        chaos.deregister("churn").await;
        chaos.churn_registered = false;
    }
    let mut recovered: Vec<Option<u32>> = vec![None; keys.len()];
    for poll in 1..=RECOVERY_POLLS {
        tokio::time::sleep(RECOVERY_POLL).await;
        for (key, done) in keys.iter().zip(recovered.iter_mut()) {
            if done.is_some() {
                continue;
            }
            if let Ok(eps) = key.query(&resolver).resolve_all().await {
                let ids: BTreeSet<&str> = eps.iter().map(Endpoint::instance_id).collect();
                if ids.contains("fresh") && !ids.contains("churn") {
                    *done = Some(poll);
                }
            }
        }
        if recovered.iter().all(Option::is_some) {
            break;
        }
    }
    // Fresh answers from then on: lookups served, none of them stale.
    let before_fresh = resolver.stats();
    for _ in 0..50 {
        for key in keys.iter() {
            let _ = key.query(&resolver).resolve().await;
        }
    }
    let after_fresh = resolver.stats();
    let rss_end = rss_kib();

    stop.store(true, Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let elapsed = start.elapsed();
    let stats: Stats = resolver.stats();
    let (discover, revision) = registry_calls(&proxy);
    let f = tally.figures();
    let refused_addr = tally.refused_addr.load(Relaxed);
    let denied_ids = tally.denied_ids.load(Relaxed);
    let host_names = tally.host_names.load(Relaxed);
    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm as f64 * 100.0;
    let registry_bound =
        (REGISTRY_CALLS_PER_KEY_SECOND * keys.len() as f64 * elapsed.as_secs_f64()) as u64;
    let fresh_resolves = after_fresh.resolves - before_fresh.resolves;
    let fresh_stale = after_fresh.stale_served - before_fresh.stale_served;

    println!("--- figures over {elapsed:.1?}, {cycles} fault cycles ---");
    println!(
        "calls {} (failed {}, timed out {}), attempts {}, resolver: calls {} attempts {} retries {} budget refusals {}",
        f.calls,
        f.failed,
        tally.timed_out.load(Relaxed),
        f.attempts,
        stats.calls - stats_start.calls,
        stats.attempts - stats_start.attempts,
        stats.retries - stats_start.retries,
        stats.budget_refusals - stats_start.budget_refusals,
    );
    println!(
        "attempts on refused addresses {refused_addr}, on denied instances {denied_ids}, on host names {host_names}"
    );
    for bad in tally.bad.lock().unwrap().iter() {
        println!("  refused endpoint handed out: {bad}");
    }
    for failure in tally.failures.lock().unwrap().iter() {
        println!("  failed call: {failure}");
    }
    println!(
        "registry calls: DiscoverInstances {discover}, DiscoverInstancesRevision {revision} \
         (bound {registry_bound}); resolver: discover {} revision {} refresh failures {} stale served {}",
        stats.discover_calls,
        stats.revision_calls,
        stats.refresh_failures,
        stats.stale_served,
    );
    println!(
        "outliers: ejections {} readmissions {}; chaos: core kills {} (held {}), restarts {}, new ports {}, \
         churn kills {}, registrations {}, deregistrations {}",
        stats.ejections,
        stats.readmissions,
        chaos.kills,
        chaos.kills_held,
        chaos.restarts,
        chaos.new_ports,
        chaos.churn_kills,
        chaos.registrations,
        chaos.deregistrations,
    );
    println!(
        "backend hits: core-0 {}, core-1 {}, churn {}",
        chaos.cores[0].hits(),
        chaos.cores[1].hits(),
        chaos.churn.hits()
    );
    println!(
        "resident memory: {rss_warm} KiB after warm-up, {rss_end} KiB at the end ({growth:+.1}%)"
    );
    for (key, done) in keys.iter().zip(&recovered) {
        match done {
            Some(poll) => println!(
                "recovered {}: after {:.2?}",
                key.label(),
                RECOVERY_POLL * *poll
            ),
            None => println!("NOT recovered {}", key.label()),
        }
    }
    println!("after recovery: {fresh_resolves} resolves, {fresh_stale} stale");
    let recovered_keys = recovered.iter().filter(|r| r.is_some()).count();
    println!(
        "SOAK SUMMARY: {} calls, {} failed, {} attempts, {} on refused addresses, {} on denied instances, \
         rss {growth:+.1}%, {recovered_keys}/{} keys recovered, registry calls {}, stale serves {}",
        f.calls,
        f.failed,
        f.attempts,
        refused_addr,
        denied_ids,
        keys.len(),
        discover + revision,
        stats.stale_served - stats_start.stale_served,
    );

    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    check(
        f.calls > 0 && f.attempts >= f.calls,
        format!("callers made {} calls, {} attempts", f.calls, f.attempts),
    );
    check(
        chaos.kills > 0 && chaos.churn_kills > 0,
        "the chaos killed no backend".to_owned(),
    );
    check(
        f.failed == 0,
        format!(
            "{} of {} calls failed while a live core backend was registered",
            f.failed, f.calls
        ),
    );
    check(
        refused_addr == 0 && denied_ids == 0 && host_names == 0,
        format!(
            "endpoints the policy refuses reached the operation: {refused_addr} attempts on refused \
             addresses, {denied_ids} on denied instances, {host_names} on host names"
        ),
    );
    check(
        growth < 10.0,
        format!("resident memory grew {growth:.1}% ({rss_warm} -> {rss_end} KiB)"),
    );
    check(
        recovered_keys == keys.len(),
        format!(
            "{} of {} keys did not show the new instance within {RECOVERY_POLLS} polls",
            keys.len() - recovered_keys,
            keys.len()
        ),
    );
    check(
        fresh_resolves >= 50 * keys.len() as u64 && fresh_stale == 0,
        format!("after recovery {fresh_stale} of {fresh_resolves} resolves were stale"),
    );
    check(
        discover + revision <= registry_bound,
        format!(
            "{} registry calls exceed {registry_bound}",
            discover + revision
        ),
    );
    check(
        stats.stale_served > stats_start.stale_served,
        "no stale answer was served: the registry faults did not bite".to_owned(),
    );
    assert!(
        problems.is_empty(),
        "soak found:\n- {}",
        problems.join("\n- ")
    );
}
