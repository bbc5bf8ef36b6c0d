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
//! About a minute under `cargo bench`; criterion's test mode runs `one_slow` with
//! 128 calls, to show the rows work.
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

/// One run: call latencies in microseconds, sorted, and each backend's count.
/// `calls` are measured after `warm_up`.
fn run(
    shape: Shape,
    balancer: &str,
    mode: Mode,
    (warm_up, calls): (u64, u64),
) -> (Vec<u64>, Vec<u64>) {
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
    let (latencies, backends) = rt.block_on(async {
        let backends = match mode {
            Mode::Simulated => Backends::new(shape),
            Mode::Loopback => Backends::on_loopback(shape).await,
        };
        let issued = Arc::new(AtomicU64::new(0));
        let mut callers = tokio::task::JoinSet::new();
        let ours = selection(balancer).map(|s| resolver(&backends, s));
        let theirs: Option<SharedService> = ours
            .is_none()
            .then(|| Arc::new(tokio::sync::Mutex::new(tower_balancer(balancer, &backends))));
        for _ in 0..CALLERS {
            let (ours, theirs, backends, issued) = (
                ours.clone(),
                theirs.clone(),
                backends.clone(),
                issued.clone(),
            );
            callers.spawn(async move {
                let mut took = Vec::new();
                loop {
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
        (all, backends)
    });
    let mut latencies = latencies;
    latencies.sort_unstable();
    let served = backends
        .served
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    (latencies, served)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// Runs every shape and balancer in `mode`, prints the table and writes it to
/// `criterion/balance/<file>` for `scripts/bench-report`.
fn table(mode: Mode, shapes: &[Shape], counts: (u64, u64), file: &str) {
    let mut out: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let (warm_up, calls) = counts;
    println!("balance, {mode:?}: {CALLERS} callers, {calls} calls measured after {warm_up}; ms");
    println!(
        "{:<10} {:<20} {:>8} {:>8} {:>8} {:>11}",
        "shape", "balancer", "p50", "p99", "p999", "last share"
    );
    for &shape in shapes {
        for balancer in BALANCERS {
            let (lat, served) = run(shape, balancer, mode, counts);
            let total: u64 = served.iter().sum();
            let last = *served.last().unwrap() as f64 / total as f64;
            let (p50, p99, p999) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
            );
            println!(
                "{:<10} {:<20} {p50:>8.2} {p99:>8.2} {p999:>8.2} {:>10.2}%",
                shape.name,
                balancer,
                last * 100.0
            );
            out.entry(shape.name.to_owned()).or_default().insert(
                balancer.to_owned(),
                serde_json::json!({ "p50": p50, "p99": p99, "p999": p999, "last_share": last }),
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
        "simulation.json",
    );
    // On the real clock the loopback rows take about a minute; criterion's test mode
    // (`cargo test --benches`, no `--bench`) runs one shape briefly, to show they work.
    if std::env::args().any(|a| a == "--bench") {
        table(Mode::Loopback, &SHAPES, (WARM_UP, CALLS), "loopback.json");
    } else {
        table(Mode::Loopback, &SHAPES[1..2], (64, 128), "loopback.json");
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
