//! A fleet of resolvers sharing one Cloud Map account's quota, on simulated time.
//!
//! Every process is a real `Resolver` with its own seed; they share one simulated
//! registry that throttles as Cloud Map does (DiscoverInstances 1,000/s with a 2,000
//! burst, DiscoverInstancesRevision 3,000/s). Each process resolves 20 services at a
//! 5 s TTL for 10 simulated minutes while one registration changes every minute. The
//! same fleet is then run as a naive client that re-fetches every service every TTL.
//!
//! ```text
//! cargo run --release --example fleet_sim            # 1,000 processes
//! cargo run --release --example fleet_sim -- 5000    # 5,000 processes
//! FLEET_ONLY=defaults,rolling cargo run --release --example fleet_sim -- 1000 5000
//! ```
//!
//! Beyond 1,000 processes a last row runs `Scenario::rolling_start`: the fleet guide's
//! recommended settings and a start spread over 60 s (the goal `tests/integration/
//! fleet.rs` asserts). The `window3`, `window10` and `window60` rows run the defaults
//! with the account refusing every call for 3, 10 or 60 s from minute 3 and a change
//! in the middle of the window (`Scenario::throttled`, issue 24); their last column
//! is the oldest answer served after the window, when every key had been confirmed
//! after it, and when 99% of the processes had the window's change, all in seconds
//! after its end. `FLEET_ONLY` picks rows (`defaults`, `per-key`, `naive`, `tuned`,
//! `rolling`, `window3`, `window10`, `window60`, `ttl60`); `FLEET_SPREAD`, `FLEET_EVERY`,
//! `FLEET_SECS` and `FLEET_STARTUP_WAIT` (seconds) override the start spread, the resolve
//! interval, the duration and the resolvers' `startup_wait` of every row;
//! `FLEET_QUOTA_DIV=k` divides the account's quotas by `k` (n processes then behave
//! per process as n × k would against the whole quota: a quick look at a large row);
//! `FLEET_DETAIL` prints calls per minute, each change's spread (the last processes
//! to fetch it: seconds after the change, and when they had first loaded the key),
//! how long cold resolves took and the first cold failures.
//!
//! The simulation is `test_support::fleet`; the assertions on these numbers live in
//! `tests/integration/fleet.rs`; see the fleet guide
//! (`cloudmap_resolver::guide::fleet`, "Running a fleet") for what the columns mean.

use std::time::Duration;

use cloudmap_resolver::ResolverOptions;
use test_support::fleet::{recommended, ttl_only, Client, Report, Scenario};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("fleet sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() { vec![1000] } else { sizes };
    println!("{}", Report::header());
    for n in sizes {
        let mut per_key_only = ResolverOptions::default();
        per_key_only.cache.adapt_to_throttling = false;
        let (ttl, full) = recommended(n);
        let mut tuned = ResolverOptions::default();
        tuned.cache.ttl = ttl;
        tuned.cache.full_refresh_interval = Some(full);
        let (ttl, full) = (ttl.as_secs(), full.as_secs());
        let only = std::env::var("FLEET_ONLY").ok();
        let rolling = Scenario::rolling_start(n);
        let rows = [
            (
                "defaults",
                "resolver defaults".to_owned(),
                Client::Resolver(Box::default()),
            ),
            (
                "per-key",
                "per-key backoff only".to_owned(),
                Client::Resolver(Box::new(per_key_only.clone())),
            ),
            ("naive", "naive fixed interval".to_owned(), Client::Naive),
            (
                "tuned",
                format!("TTL {ttl} s, full {full} s"),
                Client::Resolver(Box::new(tuned)),
            ),
            // Issue 24: the defaults but one option, the TTL, at any start.
            (
                "ttl60",
                "TTL 60 s (one option)".to_owned(),
                Client::Resolver(Box::new(ttl_only(Duration::from_secs(60)))),
            ),
            // Beyond 1,000 processes: the same settings and a rolling start.
            ("rolling", rolling.label.clone(), rolling.client.clone()),
            // Issue 24: the defaults, the account refusing every call for 3, 10 or
            // 60 s from minute 3, a change in the middle of the window.
            ("window3", String::new(), Client::Resolver(Box::default())),
            ("window10", String::new(), Client::Resolver(Box::default())),
            ("window60", String::new(), Client::Resolver(Box::default())),
        ];
        for (name, label, client) in rows {
            if name == "rolling" && n <= 1000 {
                continue;
            }
            if only
                .as_deref()
                .is_some_and(|o| !o.split(',').any(|o| o == name))
            {
                continue;
            }
            let started = std::time::Instant::now();
            let window = name
                .strip_prefix("window")
                .map(|s| s.parse().expect("seconds"));
            let mut scenario = match window {
                _ if name == "rolling" => rolling.clone(),
                Some(secs) => Scenario::throttled(n, client, Duration::from_secs(secs)),
                None => Scenario::new(n, client),
            };
            if window.is_none() {
                scenario.label = label;
            }
            if let Ok(spread) = std::env::var("FLEET_SPREAD") {
                scenario.start_spread = Duration::from_secs(spread.parse().expect("seconds"));
            }
            if let Ok(every) = std::env::var("FLEET_EVERY") {
                scenario.resolve_every = Duration::from_secs(every.parse().expect("seconds"));
            }
            if let (Ok(wait), Client::Resolver(opts)) =
                (std::env::var("FLEET_STARTUP_WAIT"), &mut scenario.client)
            {
                opts.cache.startup_wait = Duration::from_secs(wait.parse().expect("seconds"));
            }
            if let Ok(div) = std::env::var("FLEET_QUOTA_DIV") {
                // A fleet scaled down with its account: n / div processes against a
                // div-th of the quota behave per process as n against the whole.
                let div: u32 = div.parse().expect("a divisor");
                let (d, r) = (scenario.discover_quota, scenario.revision_quota);
                scenario.discover_quota = (d.0 / div, d.1 / div);
                scenario.revision_quota = (r.0 / div, r.1 / div);
            }
            if let Ok(secs) = std::env::var("FLEET_SECS") {
                scenario.duration = Duration::from_secs(secs.parse().expect("seconds"));
            }
            let report = scenario.run();
            println!("{report}   ({:.1} s)", started.elapsed().as_secs_f64());
            if std::env::var_os("FLEET_DETAIL").is_some() {
                for m in 0..scenario.duration.as_secs() as usize / 60 {
                    let (o, a) = report.discover.between(m * 60, m * 60 + 60);
                    let (ro, ra) = report.revision.between(m * 60, m * 60 + 60);
                    println!("  minute {m}: DI {o}/{a}  DIR {ro}/{ra}");
                }
                for c in &report.changes {
                    println!(
                        "  change svc {} v{} at {:?}: reached {} p99 {:?}",
                        c.service, c.version, c.at, c.reached, c.p99_after
                    );
                    let mut d = c.deliveries.clone();
                    d.sort();
                    let cold = d.iter().filter(|x| x.1).count();
                    let late: Vec<_> = d
                        .iter()
                        .rev()
                        .take(40)
                        .map(|(a, _, l)| (a.as_secs(), l.as_secs()))
                        .collect();
                    println!("    by cold load {cold}; latest 60: {late:?}");
                }
                let h = &report.cold_resolve;
                println!(
                    "  cold resolves {}: p50 {:?} p99 {:?} p99.9 {:?} p99.99 {:?} max {:?}",
                    h.count(),
                    h.quantile(0.5),
                    h.quantile(0.99),
                    h.quantile(0.999),
                    h.quantile(0.9999),
                    h.max()
                );
                let log = &report.cold_failure_log;
                println!("  cold failures (first {}): {log:?}", log.len());
            }
        }
    }
}
