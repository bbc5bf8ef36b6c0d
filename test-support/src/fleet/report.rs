//! What a run measured: calls per operation and second, histograms of answer age and
//! staleness, change propagation, and the report table's lines.

use std::fmt;
use std::time::Duration;

/// Calls of one operation, in total and per simulated second.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    pub offered: u64,
    pub admitted: u64,
    /// Admitted calls in each simulated second.
    pub admitted_per_second: Vec<u64>,
    /// Offered calls in each simulated second.
    pub offered_per_second: Vec<u64>,
}

impl Calls {
    pub(super) fn count(&mut self, second: usize, admitted: bool) {
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
    pub fn between(&self, from: usize, to: usize) -> (u64, u64) {
        let sum = |v: &[u64]| v.iter().skip(from).take(to - from).sum::<u64>();
        (
            sum(&self.offered_per_second),
            sum(&self.admitted_per_second),
        )
    }

    pub fn throttled(&self) -> u64 {
        self.offered - self.admitted
    }

    /// Throttled calls as a share of offered ones.
    pub fn throttled_share(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.throttled() as f64 / self.offered as f64
        }
    }
}

/// Durations in 10 ms buckets (the last one open-ended), with the exact maximum.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

const HIST_STEP_MS: u64 = 10;
const HIST_BUCKETS: usize = 60_000; // 10 minutes

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            buckets: vec![0; HIST_BUCKETS],
            count: 0,
            max: Duration::ZERO,
        }
    }

    pub(super) fn record(&mut self, d: Duration) {
        let i = ((d.as_millis() as u64) / HIST_STEP_MS).min(HIST_BUCKETS as u64 - 1);
        self.buckets[i as usize] += 1;
        self.count += 1;
        self.max = self.max.max(d);
    }

    /// The `q` quantile (0..=1), to the bucket's upper edge.
    pub fn quantile(&self, q: f64) -> Duration {
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

    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// One registration change and how it spread.
#[derive(Debug, Clone)]
pub struct Change {
    pub service: usize,
    pub version: u32,
    /// When, after the start of the run.
    pub at: Duration,
    /// Resolvers that have fetched this version (or a later one).
    pub reached: usize,
    /// When 99% of the resolvers had it, after the change.
    pub p99_after: Option<Duration>,
    /// Per resolver that fetched it: how long after the change, whether by a cold
    /// load (the key's first answer in that process), and when (after the start)
    /// that process first had the key.
    pub deliveries: Vec<(Duration, bool, Duration)>,
}

/// What a run with a throttling window measured after the window.
#[derive(Debug, Clone)]
pub struct WindowReport {
    /// How long the account refused every call.
    pub length: Duration,
    /// The oldest answer served after the window (age as in [`Report::age`]).
    pub oldest_after: Duration,
    /// When every key of every process had been confirmed by the registry after
    /// the window, after its end; `None` if one never was.
    pub all_refetched: Option<Duration>,
    /// When 99% of the processes had the change made during the window, after its
    /// end; `None` if they never did.
    pub change_p99: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub label: String,
    pub resolvers: usize,
    pub seconds: f64,
    pub discover: Calls,
    pub revision: Calls,
    /// Age of the data served (since the registry last confirmed it).
    pub age: Histogram,
    /// How long the data served had been out of date (0 when current).
    pub behind: Histogram,
    pub resolves: u64,
    pub cold_failures: u64,
    pub warm_failures: u64,
    /// The first cold failures: when (after the start), which process, which service.
    pub cold_failure_log: Vec<(Duration, usize, usize)>,
    /// Per process that had every key answered: how long after its start.
    pub all_keys: Histogram,
    /// How long resolves of keys cold in their process took (answered or failed).
    pub cold_resolve: Histogram,
    pub changes: Vec<Change>,
    /// After the throttling window, if the run had one.
    pub window: Option<WindowReport>,
    /// The account's buckets, for checks.
    pub discover_quota: (u32, u32),
    pub revision_quota: (u32, u32),
}

impl Report {
    /// All calls offered to the registry (both operations).
    pub fn offered(&self) -> u64 {
        self.discover.offered + self.revision.offered
    }

    /// Throttled share of all calls offered (both operations).
    pub fn throttled_share(&self) -> f64 {
        let offered = self.offered();
        if offered == 0 {
            return 0.0;
        }
        (self.discover.throttled() + self.revision.throttled()) as f64 / offered as f64
    }

    /// The slowest change to reach 99% of resolvers; `None` if one never did.
    pub fn worst_p99_propagation(&self) -> Option<Duration> {
        self.changes
            .iter()
            .map(|c| c.p99_after)
            .try_fold(Duration::ZERO, |worst, p| p.map(|p| worst.max(p)))
    }

    /// The slowest process to have every key answered, after its start; `None` if
    /// one never did.
    pub fn slowest_all_keys(&self) -> Option<Duration> {
        (self.all_keys.count() == self.resolvers as u64).then(|| self.all_keys.max())
    }

    /// The table's header line, matching [`Report`]'s `Display`.
    pub fn header() -> String {
        format!(
            "{:<24} {:>6} | {:>17} {:>6} | {:>17} {:>6} | {:>6} | {:>22} | {:>22} | {:>9} | {:>11} | {:>11} | {:>19}",
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
            "all keys s",
            "99% seen s",
            "window old/all/99% s"
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
        let all_keys = match self.slowest_all_keys() {
            Some(d) => secs(d),
            None => format!("never ({})", self.resolvers as u64 - self.all_keys.count()),
        };
        write!(
            f,
            "{:<24} {:>6} | {:>8.0}/{:>8.0} {:>5.1}% | {:>8.0}/{:>8.0} {:>5.1}% | {:>5.1}% | {:>22} | {:>22} | {:>9} | {:>11} | {:>11} | {:>19}",
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
            all_keys,
            prop,
            match &self.window {
                None => "-".to_owned(),
                Some(w) => {
                    let or_never = |d: Option<Duration>| d.map_or("never".to_owned(), secs);
                    format!(
                        "{}/{}/{}",
                        secs(w.oldest_after),
                        or_never(w.all_refetched),
                        or_never(w.change_p99)
                    )
                }
            },
        )
    }
}
