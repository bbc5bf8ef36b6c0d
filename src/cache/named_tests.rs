//! Every path a lookup's error leaves by names the key: a registry failing a cold
//! load (through each lookup), the failure remembered for its backoff, an answer
//! past its max-stale age, a throttled cold load at the end of `startup_wait`, the
//! rate limit's refusal, callers sharing one load, a source's panic, a call's
//! deadline, bad names, and the static source's not-found answers. Before, each
//! error's text was the source's alone ("DiscoverInstances: ..."), naming no key.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::cache::pacing::is_cap_refusal;
use crate::{BoxFuture, Discover, DiscoverRequest, Discovered, Error, ErrorKind};
use crate::{Instance, RateLimit, Resolver, StaticDiscovery};

const ANSWER: u8 = 0;
const DOWN: u8 = 1;
const THROTTLED: u8 = 2;
const PANIC: u8 = 3;

/// The foreign error a failing registry's `Error` keeps as its source.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset")
    }
}

impl std::error::Error for Reset {}

/// A registry answering as `StaticDiscovery` does, `delay` later, or failing as
/// `mode` says, with texts that name no key (as Cloud Map's seldom do).
#[derive(Debug)]
struct Registry {
    answers: StaticDiscovery,
    mode: AtomicU8,
    delay: Duration,
    calls: AtomicU64,
}

impl Discover for Registry {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.delay).await;
            match self.mode.load(Ordering::Relaxed) {
                DOWN => Err(Error::with_source(
                    ErrorKind::Unavailable,
                    "DiscoverInstances: ServiceUnavailable: try again later",
                    Reset,
                )),
                THROTTLED => Err(Error::new(
                    ErrorKind::Throttled,
                    "DiscoverInstances: RequestLimitExceeded: Rate exceeded",
                )),
                PANIC => panic!("{}", "a\nvery long panic ".repeat(10_000)),
                _ => self.answers.discover(req).await,
            }
        })
    }
}

fn registry(mode: u8, delay: Duration) -> Arc<Registry> {
    let mut answers = StaticDiscovery::new();
    for svc in ["web", "api"] {
        let inst = Instance::new("i-1").ipv4([10, 0, 0, 1].into()).port(80);
        answers = answers.with_instance("shared", svc, inst);
    }
    Arc::new(Registry {
        answers,
        mode: AtomicU8::new(mode),
        delay,
        calls: AtomicU64::new(0),
    })
}

/// Asserts that `err`'s text names `service` in `namespace`, on one line, and
/// returns the text.
#[track_caller]
fn names(err: &impl std::fmt::Display, namespace: &str, service: &str) -> String {
    let text = err.to_string();
    let key = format!("service \"{service}\" in namespace \"{namespace}\"");
    assert!(text.contains(&key), "{key} not named: {text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    text
}

/// The source kept under a named error is the registry's own, still downcast.
#[track_caller]
fn keeps_source(err: &Error) {
    let source = std::error::Error::source(err).expect("the registry's error");
    assert!(source.is::<Reset>(), "{source:?}");
}

#[tokio::test(start_paused = true)]
async fn every_lookup_of_a_failing_key_names_it() {
    let reg = registry(DOWN, Duration::ZERO);
    let r = Resolver::builder(reg.clone()).build().unwrap();

    let err = r.resolve("shared", "resolve").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = names(&err, "shared", "resolve");
    assert!(text.ends_with(": DiscoverInstances: ServiceUnavailable: try again later"));
    keeps_source(&err);
    // Within its backoff the failure is answered from memory, named the same.
    let calls = reg.calls.load(Ordering::Relaxed);
    let again = r.resolve("shared", "resolve").await.unwrap_err();
    assert_eq!(reg.calls.load(Ordering::Relaxed), calls, "remembered");
    assert_eq!(again.to_string(), text);
    keeps_source(&again);

    let err = r.resolve_all("shared", "all").await.unwrap_err();
    names(&err, "shared", "all");
    keeps_source(&err);
    let err = r.lease("shared", "lease").await.unwrap_err();
    names(&err, "shared", "lease");
    let err = r.service("shared", "held").resolve().await.unwrap_err();
    names(&err, "shared", "held");
    let err = r
        .call("shared", "call", |_| async { Ok::<_, Reset>(()) })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    names(&err, "shared", "call");
    keeps_source(err.resolve_error().unwrap());
    let mut watch = r.watch("shared", "watch");
    let err = watch.next().await.unwrap().unwrap_err();
    names(&err, "shared", "watch");
    keeps_source(&err);
}

#[tokio::test(start_paused = true)]
async fn a_query_is_named_with_its_owner_and_attributes() {
    let r = Resolver::builder(registry(DOWN, Duration::ZERO))
        .build()
        .unwrap();
    let err = r
        .query("shared", "web")
        .attribute("stage", "prod")
        .optional_attribute("AVAILABILITY_ZONE", "use1-az1")
        .owner_account("111122223333")
        .resolve()
        .await
        .unwrap_err();
    let text = names(&err, "shared", "web");
    assert!(
        text.contains(
            "(owner account 111122223333) matching stage=prod \
             preferring AVAILABILITY_ZONE=use1-az1: DiscoverInstances"
        ),
        "{text}"
    );
}

/// The serve-stale path: the last good answer is served while the registry
/// fails, and once past its max-stale age the error names the key.
#[tokio::test(start_paused = true)]
async fn an_answer_past_max_stale_fails_naming_its_key() {
    let reg = registry(ANSWER, Duration::ZERO);
    let r = Resolver::builder(reg.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .build()
        .unwrap();
    r.resolve("shared", "web").await.unwrap();
    reg.mode.store(DOWN, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.resolve("shared", "web").await.expect("served stale");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let err = r.resolve("shared", "web").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    names(&err, "shared", "web");
    keeps_source(&err);
}

/// A cold load throttled for its whole `startup_wait`, and one the client-side
/// rate limit refuses: both named, the refusal still told apart by its source.
#[tokio::test(start_paused = true)]
async fn throttled_cold_loads_name_their_key() {
    let reg = registry(THROTTLED, Duration::ZERO);
    let r = Resolver::builder(reg.clone())
        .startup_wait(Duration::from_secs(30))
        .seed(7)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = r.resolve("shared", "web").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(r.stats().cold_waits, 1, "it waited");
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(reg.calls.load(Ordering::Relaxed) > 1, "asked again");
    names(&err, "shared", "web");

    let r = Resolver::builder(registry(ANSWER, Duration::ZERO))
        .rate_limit(RateLimit::new(0.001, 1))
        .seed(7)
        .build()
        .unwrap();
    r.resolve("shared", "web").await.unwrap();
    let err = r.resolve("shared", "api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert!(is_cap_refusal(&err), "{err:?}");
    names(&err, "shared", "api");
}

/// Callers sharing one cold load each get the key named (and one call is made).
#[tokio::test(start_paused = true)]
async fn callers_sharing_a_failed_load_each_get_the_key_named() {
    let reg = registry(DOWN, Duration::from_millis(100));
    let r = Resolver::builder(reg.clone()).build().unwrap();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve("shared", "web").await })
        })
        .collect();
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        names(&err, "shared", "web");
        keeps_source(&err);
    }
    assert_eq!(reg.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_is_named_and_cut() {
    let r = Resolver::builder(registry(PANIC, Duration::ZERO))
        .build()
        .unwrap();
    let err = r.resolve("shared", "web").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = names(&err, "shared", "web");
    assert!(text.contains("panicked in the discovery source"), "{text}");
    assert!(text.len() < 1_000, "{} bytes", text.len());
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_passes_while_resolving_names_the_key() {
    let r = Resolver::builder(registry(ANSWER, Duration::from_secs(10)))
        .build()
        .unwrap();
    let err = r
        .call("shared", "web", |_| async { Ok::<_, Reset>(()) })
        .deadline(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = names(&err, "shared", "web");
    assert!(text.contains("deadline passed"), "{text}");
}

/// Bad names are refused before any call, naming the key they belong to (cut).
#[tokio::test(start_paused = true)]
async fn invalid_names_name_their_key() {
    let r = Resolver::builder(registry(ANSWER, Duration::ZERO))
        .build()
        .unwrap();
    let err = r.resolve("shared", "bad name").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    names(&err, "shared", "bad name");
    let err = r
        .query("shared", "web")
        .attribute("", "x".repeat(100_000))
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = names(&err, "shared", "web");
    assert!(text.len() < 500, "{} bytes", text.len());
}

/// The static source's not-found answers: a missing namespace's named the
/// namespace alone.
#[tokio::test(start_paused = true)]
async fn static_not_found_answers_name_the_service() {
    let r = Resolver::builder(StaticDiscovery::new()).build().unwrap();
    let err = r.resolve("nowhere", "web").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NamespaceNotFound);
    names(&err, "nowhere", "web");
}
