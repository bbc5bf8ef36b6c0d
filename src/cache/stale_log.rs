//! When a key's "serving the last good answer" warning and its "registry answering
//! again" note are logged: once per run of failures, not once per failed call.
//!
//! A failing registry is retried per key every backoff delay (0.5 s doubling to
//! 30 s), and a flapping one (a share of calls throttled or failing) starts a new
//! run of failures every few refreshes. Logged per failure, one key in an hour of
//! outage with `refresh_ahead = false` gave 163 warnings, and with 30% of calls
//! failing a refreshed key gave 247 "answering again" notes for 15 warnings: a
//! hundred keys flood a user's logs. Here each key warns when it starts serving a
//! stale answer, says once when an answer comes back, and a key that flaps warns
//! again at most once per [`REPEAT`].

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::lock::lock;

/// The shortest time between two of a key's stale warnings. A run of failures
/// that starts sooner is not told, nor its end; if it lasts past this, it is told
/// then (at its next failure), so the last line logged about a key never says it
/// answers while it is stale.
pub(super) const REPEAT: Duration = Duration::from_secs(300);

/// One key's log state. Both the cold path and the refresher report to it.
#[derive(Debug, Default)]
pub(super) struct StaleLog(Mutex<Told>);

#[derive(Debug, Default)]
struct Told {
    /// When the key last warned, if it has.
    warned_at: Option<Instant>,
    /// The current run of failures was warned about: its end is told.
    open: bool,
}

impl StaleLog {
    /// A failure that leaves the key serving its last good answer at `now`: whether
    /// to warn. True at most once per run of failures, and not within [`REPEAT`]
    /// of the last warning.
    pub(super) fn stale(&self, now: Instant) -> bool {
        let mut told = lock(&self.0);
        let due = told
            .warned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REPEAT);
        if told.open || !due {
            return false;
        }
        told.open = true;
        told.warned_at = Some(now);
        true
    }

    /// A failure that drops the key's answer: the run is told (its warning names
    /// the drop), so its end is told too.
    pub(super) fn dropped(&self, now: Instant) {
        let mut told = lock(&self.0);
        told.open = true;
        told.warned_at = Some(now);
    }

    /// An answer: whether to say the registry answers again (its run of failures
    /// was warned about). Ends the run.
    pub(super) fn answered(&self) -> bool {
        std::mem::take(&mut lock(&self.0).open)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::{BoxFuture, Resolver, StaticDiscovery};
    use crate::{Discover, DiscoverRequest, Discovered, Error, ErrorKind, Instance};

    /// A registry failing `share` percent of calls (`Unavailable`), drawn from a
    /// seeded sequence.
    #[derive(Debug)]
    struct Failing {
        registry: StaticDiscovery,
        share: Arc<AtomicU64>,
        draws: AtomicU64,
    }

    impl Discover for Failing {
        fn discover<'a>(
            &'a self,
            req: &'a DiscoverRequest,
        ) -> BoxFuture<'a, Result<Discovered, Error>> {
            let n = self.draws.fetch_add(1, Ordering::Relaxed);
            if crate::util::hash::splitmix64(n) % 100 < self.share.load(Ordering::Relaxed) {
                return Box::pin(async { Err(Error::new(ErrorKind::Unavailable, "down")) });
            }
            self.registry.discover(req)
        }
    }

    /// The log of `keys` keys resolved every second for an hour while `share`
    /// percent of calls fail, then two minutes of a registry answering, counted
    /// as (warnings, notes).
    fn logged_hour(keys: usize, share: u64, refresh_ahead: bool) -> (usize, usize) {
        let log = crate::util::logged::logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let names: Vec<String> = (0..keys).map(|k| format!("web{k}")).collect();
                let mut registry = StaticDiscovery::new();
                for name in &names {
                    let inst = Instance::new("a").ipv4([10, 0, 0, 1].into()).port(80);
                    registry = registry.with_instance("shared", name, inst);
                }
                let failing = Arc::new(AtomicU64::new(0));
                let source = Failing {
                    registry,
                    share: failing.clone(),
                    draws: AtomicU64::new(0),
                };
                let resolver = Resolver::builder(source)
                    .refresh_ahead(refresh_ahead)
                    .seed(7)
                    .build()
                    .unwrap();
                for name in &names {
                    resolver.resolve("shared", name).await.unwrap();
                }
                failing.store(share, Ordering::Relaxed);
                for second in 0..3720 {
                    if second == 3600 {
                        failing.store(0, Ordering::Relaxed);
                    }
                    for name in &names {
                        // Served stale throughout (max_stale is a day).
                        resolver.resolve("shared", name).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        });
        let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();
        (count(" WARN "), count(" INFO "))
    }

    /// An hour of outage: one warning and one note per key, whether its refreshes
    /// or its cold loads (`refresh_ahead = false`) meet it. Before, the cold loads
    /// warned at every backoff delay: 163 warnings in the hour for one key, 16,300
    /// for a hundred, and no note when the registry came back.
    #[test]
    fn an_outage_is_one_warning_and_one_note_per_key() {
        assert_eq!(logged_hour(1, 100, true), (1, 1));
        assert_eq!(logged_hour(1, 100, false), (1, 1));
        assert_eq!(logged_hour(100, 100, false), (100, 100));
    }

    /// A registry failing a share of calls: at most one warning per REPEAT per key
    /// (12 an hour), each with one note. Before, a refreshed key with 30% of calls
    /// failing logged 247 "answering again" notes for 15 warnings, and a key
    /// loaded cold 212 warnings.
    #[test]
    fn a_flapping_registry_warns_at_most_once_per_repeat() {
        let most = (3600 / REPEAT.as_secs()) as usize;
        for refresh_ahead in [true, false] {
            for share in [30, 80] {
                let (warnings, notes) = logged_hour(1, share, refresh_ahead);
                let case = format!("{share}% failing, refresh_ahead {refresh_ahead}");
                assert!((1..=most).contains(&warnings), "{case}: {warnings}");
                assert_eq!(notes, warnings, "{case}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_run_and_at_most_one_per_repeat() {
        let log = StaleLog::default();
        let t0 = Instant::now();
        assert!(!log.answered(), "nothing to tell before a failure");
        assert!(log.stale(t0));
        assert!(!log.stale(t0 + Duration::from_secs(30)), "same run");
        assert!(log.answered());
        assert!(!log.answered(), "told once");
        // A new run within REPEAT: neither it nor its end is told.
        let soon = t0 + Duration::from_secs(60);
        assert!(!log.stale(soon));
        assert!(!log.answered());
        // A run that starts within REPEAT and lasts past it is told then.
        assert!(!log.stale(soon + Duration::from_secs(10)));
        assert!(log.stale(t0 + REPEAT));
        assert!(log.answered());
        // A dropped answer opens the run: its end is told.
        log.dropped(t0 + REPEAT + Duration::from_secs(1));
        assert!(!log.stale(t0 + 3 * REPEAT), "the run is already told");
        assert!(log.answered());
    }
}
