//! A fleet of resolvers against one simulated Cloud Map account, on simulated time.
//!
//! Shared by the integration tests' `fleet` module (the assertions) and
//! `examples/fleet_sim.rs` (the report table). Every resolver is a real [`Resolver`] with its own seed; they share one
//! [`Registry`] that throttles as the account does: a token bucket of 1,000/s with a
//! 2,000 burst for DiscoverInstances and 3,000/s for DiscoverInstancesRevision,
//! answering `Throttled` (`RequestLimitExceeded`) beyond it. The runtime's clock is
//! paused, so ten simulated minutes take as long as the work in them, not ten minutes.
//!
//! What is measured, and where:
//! - calls offered and admitted, per operation and per simulated second (the registry);
//! - the age of every answer served: time since the registry last confirmed the data
//!   the resolver holds (a full fetch, or a revision call that matched it);
//! - how long a served answer had been out of date: 0 when it matches the registry,
//!   else the time since the registry changed away from it;
//! - resolve failures, split into cold keys (never answered yet in that process) and
//!   warm ones;
//! - per registration change, how long until 99% of the resolvers had fetched it, and
//!   when each fetched it (and when it had first loaded the key);
//! - how long each resolve of a cold key took, and the first cold failures (when,
//!   which process, which service).
//!
//! Files: `report.rs` (what a run measured), `account.rs` (the simulated registry and
//! its throttle), `clients.rs` (the processes that resolve: real resolvers or the naive
//! loop).

mod account;
mod clients;
mod report;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudmap_resolver::{Resolver, ResolverOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use account::{Registry, SimSource};
use clients::{Caller, Naive};
pub use report::{Calls, Change, Histogram, Report, WindowReport};

/// The namespace every simulated service lives in.
const NAMESPACE: &str = "fleet";
/// Instances per service.
const INSTANCES: u8 = 3;
/// Version `v` of a service is served on port `BASE_PORT + v`.
const BASE_PORT: u16 = 8000;

fn version_port(version: u32) -> u16 {
    BASE_PORT + u16::try_from(version).expect("a few versions per run")
}

/// How the processes of the fleet find their services.
#[derive(Debug, Clone)]
pub enum Client {
    /// A real `Resolver` with these options (each process gets its own seed).
    Resolver(Box<ResolverOptions>),
    /// What a fleet does without this crate: every process re-fetches every service
    /// every TTL exactly (DiscoverInstances only: no jitter, no revision, no backoff),
    /// keeping its last good answer when throttled.
    Naive,
}

/// A throttling window set on the simulated account: from `at` after the start, for
/// `length`, every call is refused as `RequestLimitExceeded`; a registration change
/// is made in its middle.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub at: Duration,
    pub length: Duration,
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Processes in the fleet.
    pub resolvers: usize,
    /// Services each process resolves.
    pub services: usize,
    /// The TTL a naive client re-fetches at (resolvers take theirs from `Client`).
    pub ttl: Duration,
    /// Simulated time.
    pub duration: Duration,
    /// How often callers in each process resolve each service.
    pub resolve_every: Duration,
    /// Processes start spread evenly at random over this window (a deploy).
    pub start_spread: Duration,
    /// One registration change (one service, round robin) this often.
    pub change_every: Duration,
    /// Seed of the scenario (start times); resolver `i` is seeded `seed + i`.
    pub seed: u64,
    /// The account's DiscoverInstances bucket: refill per second, burst.
    pub discover_quota: (u32, u32),
    /// The account's DiscoverInstancesRevision bucket: refill per second, burst.
    pub revision_quota: (u32, u32),
    /// A throttling window, if any (`Report::window` measures what follows it).
    pub throttle: Option<Window>,
    /// Who resolves.
    pub client: Client,
    /// The report's name for this run.
    pub label: String,
}

impl Scenario {
    /// The scenario: `resolvers` processes, 20 services, TTL 5 s, 10 minutes,
    /// a change a minute, Cloud Map's default quotas, callers resolving every service
    /// every 2 s (more than twice a TTL, so every answer is used before its refresh).
    pub fn new(resolvers: usize, client: Client) -> Self {
        Scenario {
            resolvers,
            services: 20,
            ttl: Duration::from_secs(5),
            duration: Duration::from_secs(600),
            resolve_every: Duration::from_secs(3),
            start_spread: Duration::from_secs(1),
            change_every: Duration::from_secs(60),
            seed: 7,
            discover_quota: (1000, 2000),
            revision_quota: (3000, 3000),
            throttle: None,
            label: match &client {
                Client::Resolver(_) => "resolver defaults".to_owned(),
                Client::Naive => "naive fixed interval".to_owned(),
            },
            client,
        }
    }

    /// The goal at fleet scale: `resolvers` processes with the fleet guide's
    /// recommended options for that size ([`recommended`]), started over 60 s (a
    /// rolling deploy), 6.5 simulated minutes (past the first full refreshes, and the
    /// last of six changes has a full minute to spread), callers resolving every
    /// service every 15 s (fewer resolves to simulate than every 3 s; each still
    /// finds a cold key, and a failure, the first time it asks).
    pub fn rolling_start(resolvers: usize) -> Self {
        let (ttl, full) = recommended(resolvers);
        let mut opts = ResolverOptions::default();
        opts.cache.ttl = ttl;
        opts.cache.full_refresh_interval = Some(full);
        let mut sc = Scenario::new(resolvers, Client::Resolver(Box::new(opts)));
        sc.start_spread = Duration::from_secs(60);
        sc.resolve_every = Duration::from_secs(15);
        sc.duration = Duration::from_secs(390);
        sc.label = format!("TTL {}/{} s, 60 s start", ttl.as_secs(), full.as_secs());
        sc
    }

    /// The scenario of issue 24: as [`Scenario::new`], with the account refusing every
    /// call for `window` from minute 3, and 75 s after it (a change made in the
    /// middle of the window has a minute and more to spread, and the last regular
    /// change at least 45 s).
    pub fn throttled(resolvers: usize, client: Client, window: Duration) -> Self {
        let mut sc = Scenario::new(resolvers, client);
        let at = Duration::from_secs(180);
        sc.throttle = Some(Window { at, length: window });
        sc.duration = at + window + Duration::from_secs(75);
        sc.label = format!("{}, {} s throttled", sc.label, window.as_secs());
        sc
    }

    /// Runs the scenario on a fresh current-thread runtime with a paused clock.
    pub fn run(&self) -> Report {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let report = rt.block_on(self.simulate());
        // Dropping the runtime cancels the resolvers' background refreshers.
        drop(rt);
        report
    }

    async fn simulate(&self) -> Report {
        let start = Instant::now();
        let registry = Arc::new(Registry::new(self, start));
        let names: Arc<[String]> = (0..self.services).map(service_name).collect();
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut handles = Vec::with_capacity(self.resolvers);
        for r in 0..self.resolvers {
            let offset = self.start_spread.mul_f64(rng.random::<f64>());
            registry.starts(r, start + offset);
            let source = SimSource {
                registry: registry.clone(),
                resolver: r,
            };
            let caller = Caller {
                registry: registry.clone(),
                names: names.clone(),
                resolver: r,
                every: self.resolve_every,
                first: start + offset,
            };
            let handle = match &self.client {
                Client::Resolver(opts) => {
                    let mut opts = ResolverOptions::clone(opts);
                    opts.seed = Some(self.seed.wrapping_add(r as u64));
                    let resolver = Resolver::builder(source)
                        .options(opts)
                        .build()
                        .expect("valid options");
                    tokio::spawn(caller.run_resolver(resolver))
                }
                Client::Naive => {
                    let naive = Arc::new(Naive {
                        source,
                        held: Mutex::new(vec![None; self.services]),
                    });
                    tokio::spawn(
                        naive
                            .clone()
                            .refresh(names.clone(), start + offset, self.ttl),
                    );
                    tokio::spawn(caller.run_naive(naive))
                }
            };
            handles.push(handle);
        }
        // Registration changes: at the middle of every period, so the last one still
        // has half a period to spread before the run ends.
        let mut changes: Vec<Instant> =
            std::iter::successors(Some(start + self.change_every / 2), |&at| {
                Some(at + self.change_every)
            })
            .take_while(|&at| at < start + self.duration)
            .collect();
        // And one in the middle of the throttling window.
        if let Some(w) = self.throttle {
            changes.push(start + w.at + w.length / 2);
            changes.sort();
        }
        for (service, at) in changes.into_iter().enumerate() {
            tokio::time::sleep_until(at).await;
            registry.change(service % self.services, at);
        }
        tokio::time::sleep_until(start + self.duration).await;
        for h in handles {
            h.abort();
        }
        let state = registry
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.report(self)
    }
}

/// The fleet guide (`guide::fleet`, "Recommended settings"): `ttl` and `full_refresh_interval` by fleet size, for 20
/// services a process.
pub fn recommended(processes: usize) -> (Duration, Duration) {
    let (ttl, full) = match processes {
        0..=100 => (5, 30),
        101..=1000 => (15, 120),
        1001..=5000 => (60, 300),
        _ => (120, 600),
    };
    (Duration::from_secs(ttl), Duration::from_secs(full))
}

/// The defaults with one option set, the TTL: the fleet guide's setting for a fleet
/// of thousands started at once (issue 24). Full refreshes stay at the default
/// interval, stretched by the resolver while DiscoverInstances throttles.
pub fn ttl_only(ttl: Duration) -> ResolverOptions {
    let mut opts = ResolverOptions::default();
    opts.cache.ttl = ttl;
    opts
}

fn service_name(i: usize) -> String {
    format!("svc-{i:02}")
}

fn service_index(name: &str) -> usize {
    name.strip_prefix("svc-")
        .and_then(|n| n.parse().ok())
        .expect("a simulated service name")
}
