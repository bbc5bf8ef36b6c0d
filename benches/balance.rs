//! Load-aware selection against blind picks and tower's own balancers, on a
//! simulated clock and on loopback.
//!
//! **The simulation** (printed, and written to `criterion/balance/simulation.json`
//! for `scripts/bench-report`): a deterministic discrete-event run on tokio's paused
//! clock. 64 callers make 5,000 calls in all, each as soon as its last one
//! returned, and the last 4,000 are measured: the first 1,000 are the warm-up every
//! balancer needs (the first 64 calls leave before any answer is known, so 8 of them
//! go to a slow backend whatever the balancer); a backend answers after a latency drawn from its shape (seeded), and
//! time moves only when every caller waits, so the latencies are exact and a run
//! takes milliseconds. Each balancer's own pick logic runs unchanged: ours through
//! `Resolver::call` (RoundRobin, Random, WeightedRandom with equal weights,
//! LeastLoaded), tower 0.5's `p2c::Balance` over `PeakEwma` (default RTT 30 ms,
//! decay 10 s) and over `PendingRequests`. Shapes:
//!
//! - `all_fast`: 8 backends answering in 1-4 ms (uniform per request);
//! - `one_slow`: the same with one of the 8 at 150 ms;
//! - `mixed`: tower's own balance example: 10 backends answering in [0, max) with
//!   max 1, 5, 10, 10, 10, 100, 100, 100, 500, 1000 ms.
//!
//! Reported: p50, p99, p999 of the call latency (request to answer, failover
//! included), and the last backend's share (the slow one) over the whole run.
//! Tokio's timer counts whole milliseconds, so latencies are rounded up to them.
//!
//! **On loopback** (written to `criterion/balance/loopback.json`): the same shapes,
//! balancers and counts against one TCP backend on 127.0.0.1 per range
//! (`test_support::backend`), each request carrying the latency drawn for it, on the
//! real clock with two worker threads: what the simulation leaves out (sockets, the
//! scheduler, timers firing late) is in these rows, and so is the machine's noise.
//! Here each caller calls once every [`PERIOD`] (at once when its last call was
//! late), so every balancer is offered the same 8,000 calls a second. Called back to
//! back, as in the simulation, the load would depend on the balancer: one that keeps
//! callers off the slow backend gets more calls through on the same two cores, and
//! pays for them in CPU time and scheduling delay (round-robin had the lowest median
//! with one slow backend of 8, because most of its callers sat waiting on that one).
//! Each row is the median of [`ROUNDS`] runs, interleaved with the other balancers'
//! so that the machine's slow moments fall on all of them; the file also records how
//! far each percentile moved between runs (`spread`), the noise `scripts/bench-report`
//! allows when it compares two loopback rows. About a minute under
//! `cargo bench`; criterion's test mode runs `one_slow` once with 128 calls, to show
//! the rows work.
//!
//! **Pick cost** (criterion): `balance/pick/*` is one pick-and-call with a service
//! that answers at once: `least_loaded` is `Resolver::call` with
//! `Selection::LeastLoaded` (pick, in-flight count, RTT sample, outlier
//! bookkeeping), `round_robin` the same call with the default selection,
//! `tower_peak_ewma` and `tower_pending` tower's `ready().call()` on a
//! `p2c::Balance` of 8 ready services.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, Instance, Resolver, ResolverOptions, Selection, StaticDiscovery,
};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::{Service, ServiceExt};

use test_support::backend::{Backend as LoopbackBackend, Behaviour, Pool};
use test_support::bench::{now_or_block, report_fallbacks, runtime};

const CALLERS: usize = 64;
const CALLS: u64 = 4_000;
const WARM_UP: u64 = 1_000;
const TOWER_DEFAULT_RTT: Duration = Duration::from_millis(30);
const TOWER_DECAY: Duration = Duration::from_secs(10);
/// On loopback, how often each caller calls: 64 callers offer 8,000 calls a second,
/// a third of what two cores carry through this harness called back to back.
const PERIOD: Duration = Duration::from_millis(8);
/// On loopback, runs per row (the row is their median).
const ROUNDS: usize = 5;

/// Per backend, the latency range of its answers in microseconds: [lo, hi).
#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    ranges: &'static [(u64, u64)],
}

const FAST: (u64, u64) = (1_000, 4_000);
const SHAPES: [Shape; 3] = [
    Shape {
        name: "all_fast",
        ranges: &[FAST; 8],
    },
    Shape {
        name: "one_slow",
        ranges: &[FAST, FAST, FAST, FAST, FAST, FAST, FAST, (150_000, 150_001)],
    },
    Shape {
        name: "mixed",
        ranges: &[
            (0, 1_000),
            (0, 5_000),
            (0, 10_000),
            (0, 10_000),
            (0, 10_000),
            (0, 100_000),
            (0, 100_000),
            (0, 100_000),
            (0, 500_000),
            (0, 1_000_000),
        ],
    },
];

const BALANCERS: [&str; 6] = [
    "round_robin",
    "random",
    "weighted_random",
    "least_loaded",
    "tower_p2c_peak_ewma",
    "tower_p2c_pending",
];

/// The backends of a shape: each answer's latency, drawn from a seeded generator,
/// waited out in this process (simulated) or by a loopback TCP backend (`wire`).
#[derive(Clone)]
struct Backends {
    shape: Shape,
    rng: Arc<Mutex<SmallRng>>,
    served: Arc<Vec<AtomicU64>>,
    wire: Option<Wire>,
}

/// Loopback backends, one per range, and the connections to them.
#[derive(Clone)]
struct Wire {
    pool: Pool,
    addrs: Arc<Vec<SocketAddr>>,
    _servers: Arc<Vec<LoopbackBackend>>,
}

impl Backends {
    fn new(shape: Shape) -> Self {
        Backends {
            shape,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(12))),
            served: Arc::new(shape.ranges.iter().map(|_| AtomicU64::new(0)).collect()),
            wire: None,
        }
    }

    /// The same, each backend a TCP server on 127.0.0.1 told its latency per request.
    async fn on_loopback(shape: Shape) -> Self {
        let mut servers = Vec::new();
        for _ in shape.ranges {
            servers.push(LoopbackBackend::start(Behaviour::Delay(Duration::ZERO)).await);
        }
        let addrs = servers.iter().map(LoopbackBackend::addr).collect();
        Backends {
            wire: Some(Wire {
                pool: Pool::default(),
                addrs: Arc::new(addrs),
                _servers: Arc::new(servers),
            }),
            ..Backends::new(shape)
        }
    }

    /// Where backend `i` is registered: its loopback address, or a made-up one.
    fn addr(&self, i: usize) -> SocketAddrV4 {
        let port = match &self.wire {
            Some(w) => w.addrs[i].port(),
            None => 1000 + i as u16,
        };
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    /// One answer of backend `i`.
    fn answer(&self, i: usize) -> impl Future<Output = ()> + Send + 'static + use<> {
        let d = self.latency(i);
        let wire = self.wire.clone();
        async move {
            match wire {
                Some(w) => w
                    .pool
                    .request_taking(w.addrs[i], d)
                    .await
                    .expect("the loopback backend answers"),
                // Tokio rounds a sleep up to the next millisecond, even a zero one.
                None if d.is_zero() => {}
                None => tokio::time::sleep(d).await,
            }
        }
    }

    fn latency(&self, i: usize) -> Duration {
        self.served[i].fetch_add(1, Ordering::Relaxed);
        let (lo, hi) = self.shape.ranges[i];
        let us = self.rng.lock().unwrap().random_range(lo..hi.max(lo + 1));
        Duration::from_micros(us)
    }

    /// Backend `i` as a tower service.
    fn service(&self, i: usize) -> Backend {
        Backend {
            backends: self.clone(),
            i,
        }
    }
}

#[derive(Clone)]
struct Backend {
    backends: Backends,
    i: usize,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

impl Service<()> for Backend {
    type Response = ();
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> BoxFut {
        let answer = self.backends.answer(self.i);
        Box::pin(async move {
            answer.await;
            Ok(())
        })
    }
}

fn registry(backends: &Backends) -> StaticDiscovery {
    (0..backends.shape.ranges.len()).fold(StaticDiscovery::new(), |r, i| {
        let addr = backends.addr(i);
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("{i}"))
                .ipv4(*addr.ip())
                .port(addr.port())
                .attribute("weight", "1"),
        )
    })
}

fn selection(name: &str) -> Option<Selection> {
    Some(match name {
        "round_robin" => Selection::RoundRobin,
        "random" => Selection::Random,
        "weighted_random" => Selection::WeightedRandom {
            attribute: "weight".into(),
        },
        "least_loaded" => Selection::LeastLoaded,
        _ => return None,
    })
}

fn resolver(backends: &Backends, selection: Selection) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.selection = selection;
    opts.seed = Some(12);
    Resolver::builder(registry(backends))
        .options(opts)
        .build()
        .unwrap()
}

type SharedService = Arc<tokio::sync::Mutex<Box<dyn CloneService>>>;

/// A tower balancer as the callers share it.
trait CloneService: Send {
    fn ready_call(&mut self) -> Pin<Box<dyn Future<Output = BoxFut> + Send + '_>>;
}

impl<S> CloneService for S
where
    S: Service<(), Response = (), Error = tower::BoxError> + Send,
    S::Future: Send + 'static,
{
    // Yields the answer's future on purpose: the balancer is locked while it picks,
    // and the answer is awaited after the lock is let go.
    #[allow(clippy::async_yields_async)]
    fn ready_call(&mut self) -> Pin<Box<dyn Future<Output = BoxFut> + Send + '_>> {
        Box::pin(async move {
            let fut = self.ready().await.expect("ready").call(());
            Box::pin(async move {
                fut.await.expect("answered");
                Ok(())
            }) as BoxFut
        })
    }
}

fn tower_balancer(name: &str, backends: &Backends) -> Box<dyn CloneService> {
    let n = backends.shape.ranges.len();
    match name {
        "tower_p2c_peak_ewma" => {
            let decay = TOWER_DECAY.as_nanos() as f64;
            let list: Vec<_> = (0..n)
                .map(|i| {
                    PeakEwma::new(
                        backends.service(i),
                        TOWER_DEFAULT_RTT,
                        decay,
                        CompleteOnResponse::default(),
                    )
                })
                .collect();
            Box::new(Balance::new(ServiceList::new(list)))
        }
        _ => {
            let list: Vec<_> = (0..n)
                .map(|i| PendingRequests::new(backends.service(i), CompleteOnResponse::default()))
                .collect();
            Box::new(Balance::new(ServiceList::new(list)))
        }
    }
}

/// Where a run's backends answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In this process, on tokio's paused clock: exact and fast.
    Simulated,
    /// TCP backends on 127.0.0.1, on the real clock.
    Loopback,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    /// Call latency percentiles in ms.
    p50: f64,
    p99: f64,
    p999: f64,
    /// The last backend's share of every call, warm-up included.
    last_share: f64,
    /// Calls a second over the whole run, warm-up included.
    rate: f64,
}

/// One run: `calls` measured after `warm_up`.
fn run(shape: Shape, balancer: &str, mode: Mode, (warm_up, calls): (u64, u64)) -> Figures {
    let rt = match mode {
        Mode::Simulated => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build(),
        Mode::Loopback => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .expect("runtime");
    let (latencies, backends, elapsed) = rt.block_on(async {
        let backends = match mode {
            Mode::Simulated => Backends::new(shape),
            Mode::Loopback => Backends::on_loopback(shape).await,
        };
        let began = tokio::time::Instant::now();
        let issued = Arc::new(AtomicU64::new(0));
        let mut callers = tokio::task::JoinSet::new();
        let ours = selection(balancer).map(|s| resolver(&backends, s));
        let theirs: Option<SharedService> = ours
            .is_none()
            .then(|| Arc::new(tokio::sync::Mutex::new(tower_balancer(balancer, &backends))));
        for caller in 0..CALLERS {
            // Loopback callers start spread over one period and keep to it.
            let mut pace = (mode == Mode::Loopback).then(|| {
                let offset = PERIOD * caller as u32 / CALLERS as u32;
                let mut pace =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, PERIOD);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                pace
            });
            let (ours, theirs, backends, issued) = (
                ours.clone(),
                theirs.clone(),
                backends.clone(),
                issued.clone(),
            );
            callers.spawn(async move {
                let mut took = Vec::new();
                loop {
                    if let Some(pace) = &mut pace {
                        pace.tick().await;
                    }
                    let nth = issued.fetch_add(1, Ordering::Relaxed);
                    if nth >= warm_up + calls {
                        break;
                    }
                    let start = tokio::time::Instant::now();
                    if let Some(r) = &ours {
                        let b = &backends;
                        r.call("shared", "web", |ep: Endpoint| {
                            let answer = b.answer(ep.instance_id().parse().unwrap());
                            async move {
                                answer.await;
                                Ok::<_, Infallible>(())
                            }
                        })
                        .await
                        .expect("answered");
                    } else if let Some(t) = &theirs {
                        let fut = t.lock().await.ready_call().await;
                        fut.await.expect("answered");
                    }
                    if nth >= warm_up {
                        took.push(start.elapsed().as_micros() as u64);
                    }
                }
                took
            });
        }
        let mut all = Vec::new();
        while let Some(took) = callers.join_next().await {
            all.extend(took.expect("caller"));
        }
        (all, backends, began.elapsed())
    });
    let mut latencies = latencies;
    latencies.sort_unstable();
    let served: Vec<u64> = backends
        .served
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = served.iter().sum();
    Figures {
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        last_share: *served.last().unwrap() as f64 / total as f64,
        rate: total as f64 / elapsed.as_secs_f64(),
    }
}

/// Each figure's median over runs (the upper middle one of an even count).
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        p50: mid(|f| f.p50),
        p99: mid(|f| f.p99),
        p999: mid(|f| f.p999),
        last_share: mid(|f| f.last_share),
        rate: mid(|f| f.rate),
    }
}

/// How far one percentile moved from run to run: (largest - smallest) / median.
/// `scripts/bench-report` reads a difference between two loopback rows smaller
/// than this as no difference.
fn spread(runs: &[Figures], f: fn(&Figures) -> f64) -> f64 {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    });
    (hi - lo) / f(&median(runs))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// Runs every shape and balancer in `mode` `rounds` times (each row the median of
/// its runs, the rounds interleaved), prints the table and writes it to
/// `criterion/balance/<file>` for `scripts/bench-report`.
fn table(mode: Mode, shapes: &[Shape], counts: (u64, u64), rounds: usize, file: &str) {
    let (warm_up, calls) = counts;
    let mut runs: BTreeMap<(&str, &str), Vec<Figures>> = BTreeMap::new();
    for _ in 0..rounds {
        for &shape in shapes {
            for balancer in BALANCERS {
                let figures = run(shape, balancer, mode, counts);
                runs.entry((shape.name, balancer))
                    .or_default()
                    .push(figures);
            }
        }
    }
    println!(
        "balance, {mode:?}: {CALLERS} callers, {calls} calls measured after {warm_up}, \
         median of {rounds} run(s); ms"
    );
    println!(
        "{:<10} {:<20} {:>8} {:>8} {:>8} {:>11} {:>9}",
        "shape", "balancer", "p50", "p99", "p999", "last share", "calls/s"
    );
    let mut out: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for &shape in shapes {
        for balancer in BALANCERS {
            let r = &runs[&(shape.name, balancer)];
            let f = median(r);
            println!(
                "{:<10} {:<20} {:>8.2} {:>8.2} {:>8.2} {:>10.2}% {:>9.0}",
                shape.name,
                balancer,
                f.p50,
                f.p99,
                f.p999,
                f.last_share * 100.0,
                f.rate
            );
            out.entry(shape.name.to_owned()).or_default().insert(
                balancer.to_owned(),
                serde_json::json!({
                    "p50": f.p50, "p99": f.p99, "p999": f.p999,
                    "last_share": f.last_share, "calls_per_s": f.rate, "runs": r.len(),
                    // One run has no spread to speak of (the simulation is exact).
                    "spread": (r.len() > 1).then(|| serde_json::json!({
                        "p50": spread(r, |f| f.p50),
                        "p99": spread(r, |f| f.p99),
                        "p999": spread(r, |f| f.p999),
                    })),
                }),
            );
        }
    }
    // target/<profile>/deps/balance-<hash> -> target/criterion/balance/
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion/balance")));
    if let Some(dir) = dir {
        let _ = std::fs::create_dir_all(&dir);
        let text = serde_json::to_string_pretty(&out).expect("json");
        let _ = std::fs::write(dir.join(file), text);
    }
}

fn balance(c: &mut Criterion) {
    table(
        Mode::Simulated,
        &SHAPES,
        (WARM_UP, CALLS),
        1,
        "simulation.json",
    );
    // On the real clock the loopback rows take about a minute; criterion's test mode
    // (`cargo test --benches`, no `--bench`) runs one shape briefly, to show they work.
    if std::env::args().any(|a| a == "--bench") {
        table(
            Mode::Loopback,
            &SHAPES,
            (WARM_UP, CALLS),
            ROUNDS,
            "loopback.json",
        );
    } else {
        table(Mode::Loopback, &SHAPES[1..2], (64, 128), 1, "loopback.json");
    }
    let rt = runtime();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("balance");
    for (name, sel) in [
        ("round_robin", Selection::RoundRobin),
        ("least_loaded", Selection::LeastLoaded),
    ] {
        let r = resolver(&Backends::new(SHAPES[0]), sel);
        rt.block_on(r.resolve("shared", "web")).expect("cold load");
        g.bench_function(format!("pick/{name}"), |b| {
            let (ns, svc) = black_box(("shared", "web"));
            b.iter(|| {
                now_or_block(
                    &rt,
                    r.call(ns, svc, |ep| async move { Ok::<_, Infallible>(ep) })
                        .into_future(),
                )
            })
        });
    }
    // Tower's balancers over services that answer at once.
    let immediate = Backends::new(Shape {
        name: "immediate",
        ranges: &[(0, 1); 8],
    });
    for name in ["tower_p2c_peak_ewma", "tower_p2c_pending"] {
        let mut svc = tower_balancer(name, &immediate);
        g.bench_function(format!("pick/{name}"), |b| {
            b.iter(|| {
                let fut = now_or_block(&rt, svc.ready_call());
                now_or_block(&rt, fut)
            })
        });
    }
    g.finish();
    report_fallbacks("balance");
}

criterion_group!(benches, balance);
criterion_main!(benches);
