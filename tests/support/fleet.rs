//! A fleet of resolvers against one simulated Cloud Map account, on simulated time.
//!
//! Shared by `tests/fleet.rs` (the assertions) and `examples/fleet_sim.rs` (the report
//! table). Every resolver is a real [`Resolver`] with its own seed; they share one
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
//! - per registration change, how long until 99% of the resolvers had fetched it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, Discover, DiscoverRequest, Discovered, Error, ErrorKind, Instance, Resolver,
    ResolverOptions,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

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
pub(crate) enum Client {
    /// A real `Resolver` with these options (each process gets its own seed).
    Resolver(Box<ResolverOptions>),
    /// What a fleet does without this crate: every process re-fetches every service
    /// every TTL exactly (DiscoverInstances only: no jitter, no revision, no backoff),
    /// keeping its last good answer when throttled.
    Naive,
}

/// One simulation run.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Processes in the fleet.
    pub(crate) resolvers: usize,
    /// Services each process resolves.
    pub(crate) services: usize,
    /// The TTL a naive client re-fetches at (resolvers take theirs from `Client`).
    pub(crate) ttl: Duration,
    /// Simulated time.
    pub(crate) duration: Duration,
    /// How often callers in each process resolve each service.
    pub(crate) resolve_every: Duration,
    /// Processes start spread evenly at random over this window (a deploy).
    pub(crate) start_spread: Duration,
    /// One registration change (one service, round robin) this often.
    pub(crate) change_every: Duration,
    /// Seed of the scenario (start times); resolver `i` is seeded `seed + i`.
    pub(crate) seed: u64,
    /// The account's DiscoverInstances bucket: refill per second, burst.
    pub(crate) discover_quota: (u32, u32),
    /// The account's DiscoverInstancesRevision bucket: refill per second, burst.
    pub(crate) revision_quota: (u32, u32),
    /// Who resolves.
    pub(crate) client: Client,
    /// The report's name for this run.
    pub(crate) label: String,
}

impl Scenario {
    /// The scenario: `resolvers` processes, 20 services, TTL 5 s, 10 minutes,
    /// a change a minute, Cloud Map's default quotas, callers resolving every service
    /// every 2 s (more than twice a TTL, so every answer is used before its refresh).
    pub(crate) fn new(resolvers: usize, client: Client) -> Self {
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
            label: match &client {
                Client::Resolver(_) => "resolver defaults".to_owned(),
                Client::Naive => "naive fixed interval".to_owned(),
            },
            client,
        }
    }

    /// Runs the scenario on a fresh current-thread runtime with a paused clock.
    pub(crate) fn run(&self) -> Report {
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
        let mut at = start + self.change_every / 2;
        let mut service = 0;
        while at < start + self.duration {
            tokio::time::sleep_until(at).await;
            registry.change(service % self.services, at);
            service += 1;
            at += self.change_every;
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

fn service_name(i: usize) -> String {
    format!("svc-{i:02}")
}

fn service_index(name: &str) -> usize {
    name.strip_prefix("svc-")
        .and_then(|n| n.parse().ok())
        .expect("a simulated service name")
}

/// The account's throttle: a token bucket, refilled continuously.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new((rate, burst): (u32, u32), now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Calls of one operation, in total and per simulated second.
#[derive(Debug, Default, Clone)]
pub(crate) struct Calls {
    pub(crate) offered: u64,
    pub(crate) admitted: u64,
    /// Admitted calls in each simulated second.
    pub(crate) admitted_per_second: Vec<u64>,
    /// Offered calls in each simulated second.
    pub(crate) offered_per_second: Vec<u64>,
}

impl Calls {
    fn count(&mut self, second: usize, admitted: bool) {
        self.offered += 1;
        if self.offered_per_second.len() <= second {
            self.offered_per_second.resize(second + 1, 0);
        }
        self.offered_per_second[second] += 1;
        if admitted {
            self.admitted += 1;
            if self.admitted_per_second.len() <= second {
                self.admitted_per_second.resize(second + 1, 0);
            }
            self.admitted_per_second[second] += 1;
        }
    }

    /// Offered and admitted calls in simulated seconds `from..to`.
    pub(crate) fn between(&self, from: usize, to: usize) -> (u64, u64) {
        let sum = |v: &[u64]| v.iter().skip(from).take(to - from).sum::<u64>();
        (
            sum(&self.offered_per_second),
            sum(&self.admitted_per_second),
        )
    }

    pub(crate) fn throttled(&self) -> u64 {
        self.offered - self.admitted
    }

    /// Throttled calls as a share of offered ones.
    pub(crate) fn throttled_share(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.throttled() as f64 / self.offered as f64
        }
    }
}

/// Durations in 10 ms buckets (the last one open-ended), with the exact maximum.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

const HIST_STEP_MS: u64 = 10;
const HIST_BUCKETS: usize = 60_000; // 10 minutes

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; HIST_BUCKETS],
            count: 0,
            max: Duration::ZERO,
        }
    }

    fn record(&mut self, d: Duration) {
        let i = ((d.as_millis() as u64) / HIST_STEP_MS).min(HIST_BUCKETS as u64 - 1);
        self.buckets[i as usize] += 1;
        self.count += 1;
        self.max = self.max.max(d);
    }

    /// The `q` quantile (0..=1), to the bucket's upper edge.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let edge = Duration::from_millis((i as u64 + 1) * HIST_STEP_MS);
                return edge.min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

/// One registration change and how it spread.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) service: usize,
    pub(crate) version: u32,
    /// When, after the start of the run.
    pub(crate) at: Duration,
    /// Resolvers that have fetched this version (or a later one).
    pub(crate) reached: usize,
    /// When 99% of the resolvers had it, after the change.
    pub(crate) p99_after: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) label: String,
    pub(crate) resolvers: usize,
    pub(crate) seconds: f64,
    pub(crate) discover: Calls,
    pub(crate) revision: Calls,
    /// Age of the data served (since the registry last confirmed it).
    pub(crate) age: Histogram,
    /// How long the data served had been out of date (0 when current).
    pub(crate) behind: Histogram,
    pub(crate) resolves: u64,
    pub(crate) cold_failures: u64,
    pub(crate) warm_failures: u64,
    pub(crate) changes: Vec<Change>,
    /// The account's buckets, for checks.
    pub(crate) discover_quota: (u32, u32),
    pub(crate) revision_quota: (u32, u32),
}

impl Report {
    /// All calls offered to the registry (both operations).
    pub(crate) fn offered(&self) -> u64 {
        self.discover.offered + self.revision.offered
    }

    /// Throttled share of all calls offered (both operations).
    pub(crate) fn throttled_share(&self) -> f64 {
        let offered = self.offered();
        if offered == 0 {
            return 0.0;
        }
        (self.discover.throttled() + self.revision.throttled()) as f64 / offered as f64
    }

    /// The slowest change to reach 99% of resolvers; `None` if one never did.
    pub(crate) fn worst_p99_propagation(&self) -> Option<Duration> {
        self.changes
            .iter()
            .map(|c| c.p99_after)
            .try_fold(Duration::ZERO, |worst, p| p.map(|p| worst.max(p)))
    }

    /// The table's header line, matching [`Report`]'s `Display`.
    pub(crate) fn header() -> String {
        format!(
            "{:<24} {:>6} | {:>17} {:>6} | {:>17} {:>6} | {:>6} | {:>22} | {:>22} | {:>9} | {:>11}",
            "client",
            "procs",
            "DI offered/admit",
            "thr%",
            "DIR offered/admit",
            "thr%",
            "thr%",
            "age p50/p99/max s",
            "behind p50/p99/max s",
            "fail w/c",
            "99% seen s"
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_s = |n: u64| n as f64 / self.seconds;
        let prop = match self.worst_p99_propagation() {
            Some(d) => secs(d),
            None => {
                let reached = self.changes.iter().filter(|c| c.p99_after.is_some());
                format!("never ({}/{})", reached.count(), self.changes.len())
            }
        };
        write!(
            f,
            "{:<24} {:>6} | {:>8.0}/{:>8.0} {:>5.1}% | {:>8.0}/{:>8.0} {:>5.1}% | {:>5.1}% | {:>22} | {:>22} | {:>9} | {:>11}",
            self.label,
            self.resolvers,
            per_s(self.discover.offered),
            per_s(self.discover.admitted),
            100.0 * self.discover.throttled_share(),
            per_s(self.revision.offered),
            per_s(self.revision.admitted),
            100.0 * self.revision.throttled_share(),
            100.0 * self.throttled_share(),
            format!(
                "{}/{}/{}",
                secs(self.age.quantile(0.5)),
                secs(self.age.quantile(0.99)),
                secs(self.age.max())
            ),
            format!(
                "{}/{}/{}",
                secs(self.behind.quantile(0.5)),
                secs(self.behind.quantile(0.99)),
                secs(self.behind.max())
            ),
            format!("{}/{}", self.warm_failures, self.cold_failures),
            prop,
        )
    }
}

/// The simulated account: the registry's truth, its throttle, and the measurements.
#[derive(Debug)]
struct Registry {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    start: Instant,
    services: usize,
    resolvers: usize,
    discover_bucket: Bucket,
    revision_bucket: Bucket,
    discover: Calls,
    revision: Calls,
    /// Current version (and revision) of each service.
    version: Vec<u32>,
    /// `superseded[s][v]`: when version `v` of service `s` stopped being current.
    superseded: Vec<Vec<Instant>>,
    /// Per (resolver, service): the version the registry last handed out to it.
    held: Vec<Option<u32>>,
    /// Per (resolver, service): when the registry last confirmed what it holds.
    confirmed: Vec<Instant>,
    age: Histogram,
    behind: Histogram,
    resolves: u64,
    cold_failures: u64,
    warm_failures: u64,
    /// Per (resolver, service): whether a resolve ever succeeded there.
    warm: Vec<bool>,
    changes: Vec<Change>,
}

impl Registry {
    fn new(sc: &Scenario, now: Instant) -> Self {
        let keys = sc.resolvers * sc.services;
        Registry {
            state: Mutex::new(State {
                start: now,
                services: sc.services,
                resolvers: sc.resolvers,
                discover_bucket: Bucket::new(sc.discover_quota, now),
                revision_bucket: Bucket::new(sc.revision_quota, now),
                discover: Calls::default(),
                revision: Calls::default(),
                version: vec![1; sc.services],
                superseded: vec![Vec::new(); sc.services],
                held: vec![None; keys],
                confirmed: vec![now; keys],
                age: Histogram::new(),
                behind: Histogram::new(),
                resolves: 0,
                cold_failures: 0,
                warm_failures: 0,
                warm: vec![false; keys],
                changes: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-registers one instance of `service` with a new version: the revision moves.
    fn change(&self, service: usize, now: Instant) {
        let mut st = self.lock();
        let old = st.version[service];
        // superseded[s][v] for v = 1.. is pushed in order.
        st.superseded[service].push(now);
        debug_assert_eq!(st.superseded[service].len(), old as usize);
        st.version[service] = old + 1;
        let at = now.duration_since(st.start);
        st.changes.push(Change {
            service,
            version: old + 1,
            at,
            reached: 0,
            p99_after: None,
        });
    }

    fn discover(&self, resolver: usize, service: usize) -> Result<Discovered, Error> {
        let now = Instant::now();
        let mut st = self.lock();
        let second = st.second(now);
        let admitted = st.discover_bucket.take(now);
        st.discover.count(second, admitted);
        if !admitted {
            return Err(throttled("DiscoverInstances"));
        }
        let version = st.version[service];
        st.deliver(resolver, service, version, now);
        let instances = (0..INSTANCES)
            .map(|i| {
                // The port carries the version, so a caller can tell cheaply which
                // answer it was served.
                Instance::new(format!("i-{i}"))
                    .ipv4(std::net::Ipv4Addr::new(10, service as u8, 0, i))
                    .port(version_port(version))
            })
            .collect();
        let mut found = Discovered::new(instances);
        found.revision = Some(i64::from(version));
        Ok(found)
    }

    fn revision(&self, resolver: usize, service: usize) -> Result<Option<i64>, Error> {
        let now = Instant::now();
        let mut st = self.lock();
        let second = st.second(now);
        let admitted = st.revision_bucket.take(now);
        st.revision.count(second, admitted);
        if !admitted {
            return Err(throttled("DiscoverInstancesRevision"));
        }
        let version = st.version[service];
        let key = resolver * st.services + service;
        if st.held[key] == Some(version) {
            // The resolver's data is confirmed current without a full fetch.
            st.confirmed[key] = now;
        }
        Ok(Some(i64::from(version)))
    }

    /// A caller in `resolver` was served `version` of `service` (`None`: it failed).
    fn served(&self, resolver: usize, service: usize, version: Option<u32>) {
        let now = Instant::now();
        let mut st = self.lock();
        let key = resolver * st.services + service;
        st.resolves += 1;
        let Some(v) = version else {
            if st.warm[key] {
                st.warm_failures += 1;
            } else {
                st.cold_failures += 1;
            }
            return;
        };
        st.warm[key] = true;
        let age = now.duration_since(st.confirmed[key]);
        st.age.record(age);
        let behind = if v >= st.version[service] {
            Duration::ZERO
        } else {
            now.duration_since(st.superseded[service][v as usize - 1])
        };
        st.behind.record(behind);
    }
}

impl State {
    fn second(&self, now: Instant) -> usize {
        now.duration_since(self.start).as_secs() as usize
    }

    fn deliver(&mut self, resolver: usize, service: usize, version: u32, now: Instant) {
        let key = resolver * self.services + service;
        let before = self.held[key].unwrap_or(0);
        self.held[key] = Some(version);
        self.confirmed[key] = now;
        if version <= before {
            return;
        }
        let need = (self.resolvers * 99).div_ceil(100);
        for c in self.changes.iter_mut().filter(|c| c.service == service) {
            if c.version > before && c.version <= version {
                c.reached += 1;
                if c.reached == need {
                    c.p99_after = Some(now.duration_since(self.start) - c.at);
                }
            }
        }
    }

    fn report(&self, sc: &Scenario) -> Report {
        Report {
            label: sc.label.clone(),
            resolvers: self.resolvers,
            seconds: sc.duration.as_secs_f64(),
            discover: self.discover.clone(),
            revision: self.revision.clone(),
            age: self.age.clone(),
            behind: self.behind.clone(),
            resolves: self.resolves,
            cold_failures: self.cold_failures,
            warm_failures: self.warm_failures,
            changes: self.changes.clone(),
            discover_quota: sc.discover_quota,
            revision_quota: sc.revision_quota,
        }
    }
}

fn throttled(op: &str) -> Error {
    Error::new(
        ErrorKind::Throttled,
        format!("{op}: RequestLimitExceeded (simulated)"),
    )
}

/// One process's view of the registry: the `Discover` a resolver is built over.
#[derive(Debug, Clone)]
struct SimSource {
    registry: Arc<Registry>,
    resolver: usize,
}

impl Discover for SimSource {
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        let service = service_index(request.service());
        // The call happens when the future runs, as a network call would.
        Box::pin(async move { self.registry.discover(self.resolver, service) })
    }

    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        let service = service_index(request.service());
        Box::pin(async move { self.registry.revision(self.resolver, service) })
    }
}

/// The naive client: a fixed-interval loop and the last good answers.
#[derive(Debug)]
struct Naive {
    source: SimSource,
    held: Mutex<Vec<Option<u32>>>,
}

impl Naive {
    async fn refresh(self: Arc<Self>, names: Arc<[String]>, first: Instant, every: Duration) {
        let mut next = first;
        loop {
            tokio::time::sleep_until(next).await;
            for (s, name) in names.iter().enumerate() {
                let req = DiscoverRequest::new(NAMESPACE, name.as_str());
                if let Ok(found) = self.source.discover(&req).await {
                    let v = found.revision.map(|r| r as u32);
                    self.held.lock().unwrap_or_else(PoisonError::into_inner)[s] = v;
                }
            }
            next += every;
        }
    }
}

/// The callers in one process: every `every`, resolve every service once.
struct Caller {
    registry: Arc<Registry>,
    names: Arc<[String]>,
    resolver: usize,
    every: Duration,
    first: Instant,
}

impl Caller {
    async fn run_resolver(self, resolver: Resolver) {
        let mut next = self.first;
        loop {
            tokio::time::sleep_until(next).await;
            for (s, name) in self.names.iter().enumerate() {
                let served = match resolver.resolve(NAMESPACE, name).await {
                    Ok(ep) => Some(u32::from(
                        ep.port().expect("simulated instances have a port") - BASE_PORT,
                    )),
                    Err(_) => None,
                };
                self.registry.served(self.resolver, s, served);
            }
            next += self.every;
        }
    }

    async fn run_naive(self, naive: Arc<Naive>) {
        let mut next = self.first;
        loop {
            tokio::time::sleep_until(next).await;
            for s in 0..self.names.len() {
                let served = naive.held.lock().unwrap_or_else(PoisonError::into_inner)[s];
                self.registry.served(self.resolver, s, served);
            }
            next += self.every;
        }
    }
}
