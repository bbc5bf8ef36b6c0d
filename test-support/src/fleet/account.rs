//! The simulated account: the registry's truth, its throttle (a token bucket per
//! operation), and the measurements taken as resolvers call it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, Discover, DiscoverRequest, Discovered, Error, ErrorKind, Instance,
};
use std::sync::Arc;
use tokio::time::Instant;

use super::report::{Calls, Change, Histogram, Report, WindowReport};
use super::{service_index, version_port, Scenario, INSTANCES};

/// The account's throttle: a token bucket, refilled continuously.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new((rate, burst): (u32, u32), now: Instant) -> Self {
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

/// The simulated account: the registry's truth, its throttle, and the measurements.
#[derive(Debug)]
pub(super) struct Registry {
    pub(super) state: Mutex<State>,
}

#[derive(Debug)]
pub(super) struct State {
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
    /// The first cold failures: when (after the start), which resolver, which service.
    cold_failure_log: Vec<(Duration, usize, usize)>,
    /// Per (resolver, service): when (after the start) it was first fetched.
    loaded_at: Vec<Duration>,
    /// Per (resolver, service): whether a resolve ever succeeded there.
    warm: Vec<bool>,
    /// Per resolver: when it started, and how many of its keys have been answered.
    started: Vec<Instant>,
    warm_keys: Vec<usize>,
    /// Per resolver that had every key answered: how long after its start.
    all_keys: Histogram,
    /// How long resolves of cold keys took (answered or not).
    cold_resolve: Histogram,
    changes: Vec<Change>,
    /// The throttling window set on the account: every call inside it is refused.
    window: Option<(Instant, Instant)>,
    /// Oldest answer served after the window.
    oldest_after: Duration,
    /// Per (resolver, service): whether the registry confirmed it after the window.
    refetched: Vec<bool>,
    refetched_count: usize,
    /// When every key had been confirmed after the window, after its end.
    all_refetched: Option<Duration>,
}

impl Registry {
    pub(super) fn new(sc: &Scenario, now: Instant) -> Self {
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
                cold_failure_log: Vec::new(),
                loaded_at: vec![Duration::ZERO; keys],
                warm: vec![false; keys],
                started: vec![now; sc.resolvers],
                warm_keys: vec![0; sc.resolvers],
                all_keys: Histogram::new(),
                cold_resolve: Histogram::new(),
                changes: Vec::new(),
                window: sc.throttle.map(|w| (now + w.at, now + w.at + w.length)),
                oldest_after: Duration::ZERO,
                refetched: vec![false; keys],
                refetched_count: 0,
                all_refetched: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolver `resolver` starts (its callers' first round) at `at`.
    pub(super) fn starts(&self, resolver: usize, at: Instant) {
        self.lock().started[resolver] = at;
    }

    /// Re-registers one instance of `service` with a new version: the revision moves.
    pub(super) fn change(&self, service: usize, now: Instant) {
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
            deliveries: Vec::new(),
        });
    }

    pub(super) fn discover(&self, resolver: usize, service: usize) -> Result<Discovered, Error> {
        let now = Instant::now();
        let mut st = self.lock();
        let second = st.second(now);
        let admitted = !st.in_window(now) && st.discover_bucket.take(now);
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

    pub(super) fn revision(&self, resolver: usize, service: usize) -> Result<Option<i64>, Error> {
        let now = Instant::now();
        let mut st = self.lock();
        let second = st.second(now);
        let admitted = !st.in_window(now) && st.revision_bucket.take(now);
        st.revision.count(second, admitted);
        if !admitted {
            return Err(throttled("DiscoverInstancesRevision"));
        }
        let version = st.version[service];
        let key = resolver * st.services + service;
        if st.held[key] == Some(version) {
            // The resolver's data is confirmed current without a full fetch.
            st.confirm(key, now);
        }
        Ok(Some(i64::from(version)))
    }

    /// A caller in `resolver` was served `version` of `service` (`None`: it failed).
    pub(super) fn served(
        &self,
        resolver: usize,
        service: usize,
        version: Option<u32>,
        took: Duration,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        let key = resolver * st.services + service;
        if !st.warm[key] {
            st.cold_resolve.record(took);
        }
        st.resolves += 1;
        let Some(v) = version else {
            if st.warm[key] {
                st.warm_failures += 1;
            } else {
                st.cold_failures += 1;
                if st.cold_failure_log.len() < 200 {
                    let at = now.duration_since(st.start);
                    st.cold_failure_log.push((at, resolver, service));
                }
            }
            return;
        };
        if !st.warm[key] {
            st.warm[key] = true;
            st.warm_keys[resolver] += 1;
            if st.warm_keys[resolver] == st.services {
                let took = now.duration_since(st.started[resolver]);
                st.all_keys.record(took);
            }
        }
        let age = now.duration_since(st.confirmed[key]);
        st.age.record(age);
        if st.window.is_some_and(|(_, end)| now >= end) {
            st.oldest_after = st.oldest_after.max(age);
        }
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

    fn in_window(&self, now: Instant) -> bool {
        self.window
            .is_some_and(|(from, until)| now >= from && now < until)
    }

    /// The registry confirmed what `key` holds at `now`.
    fn confirm(&mut self, key: usize, now: Instant) {
        self.confirmed[key] = now;
        let Some((_, end)) = self.window.filter(|&(_, end)| now >= end) else {
            return;
        };
        if !self.refetched[key] {
            self.refetched[key] = true;
            self.refetched_count += 1;
            if self.refetched_count == self.refetched.len() {
                self.all_refetched = Some(now.duration_since(end));
            }
        }
    }

    fn deliver(&mut self, resolver: usize, service: usize, version: u32, now: Instant) {
        let key = resolver * self.services + service;
        let cold = self.held[key].is_none();
        if cold {
            self.loaded_at[key] = now.duration_since(self.start);
        }
        let loaded_at = self.loaded_at[key];
        let before = self.held[key].unwrap_or(0);
        self.held[key] = Some(version);
        self.confirm(key, now);
        if version <= before {
            return;
        }
        let need = (self.resolvers * 99).div_ceil(100);
        for c in self.changes.iter_mut().filter(|c| c.service == service) {
            if c.version > before && c.version <= version {
                let after = now.duration_since(self.start).saturating_sub(c.at);
                c.deliveries.push((after, cold, loaded_at));
                c.reached += 1;
                if c.reached == need {
                    c.p99_after = Some(now.duration_since(self.start) - c.at);
                }
            }
        }
    }

    pub(super) fn report(&self, sc: &Scenario) -> Report {
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
            cold_failure_log: self.cold_failure_log.clone(),
            all_keys: self.all_keys.clone(),
            cold_resolve: self.cold_resolve.clone(),
            changes: self.changes.clone(),
            window: sc.throttle.map(|w| {
                let end = w.at + w.length;
                WindowReport {
                    length: w.length,
                    oldest_after: self.oldest_after,
                    all_refetched: self.all_refetched,
                    // The change made during the window: when 99% of the processes
                    // had it, after the window's end.
                    change_p99: self
                        .changes
                        .iter()
                        .find(|c| c.at >= w.at && c.at < end)
                        .and_then(|c| c.p99_after.map(|p| (c.at + p).saturating_sub(end))),
                }
            }),
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
pub(super) struct SimSource {
    pub(super) registry: Arc<Registry>,
    pub(super) resolver: usize,
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
