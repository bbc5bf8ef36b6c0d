//! The simulated backends: per backend, a latency range its answers are drawn from
//! (seeded), and optionally a tail of slow requests on every backend alike; waited
//! out in this process (simulated) or by a TCP backend on 127.0.0.1 (loopback).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cloudmap_resolver::{Instance, StaticDiscovery};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::Service;

use test_support::backend::{Backend as LoopbackBackend, Behaviour, Pool};

/// Per backend, the latency range of its answers in microseconds: [lo, hi); and the
/// slow requests every backend has alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) name: &'static str,
    pub(crate) ranges: &'static [(u64, u64)],
    pub(crate) tail: Option<Tail>,
}

/// Slow requests: one answer in `one_in` (drawn from the same seeded generator, on
/// whichever backend) takes `us` microseconds instead of its range's latency. The
/// slowness is the request's, not the backend's: the same request sent again, to
/// any backend, is as fast as the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    pub(crate) one_in: u64,
    pub(crate) us: u64,
}

impl Shape {
    /// The usual answer of the first backend: the middle of its range.
    pub(crate) fn usual(&self) -> Duration {
        let (lo, hi) = self.ranges[0];
        Duration::from_micros(lo.midpoint(hi))
    }
}

pub(crate) const FAST: (u64, u64) = (1_000, 4_000);

/// The balancer shapes (`measure::table`'s `simulation.json` and `loopback.json`).
pub(crate) const SHAPES: [Shape; 3] = [
    Shape {
        name: "all_fast",
        ranges: &[FAST; 8],
        tail: None,
    },
    Shape {
        name: "one_slow",
        ranges: &[FAST, FAST, FAST, FAST, FAST, FAST, FAST, (150_000, 150_001)],
        tail: None,
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
        tail: None,
    },
];

/// The backends of a shape: each answer's latency, drawn from a seeded generator,
/// waited out in this process (simulated) or by a loopback TCP backend (`wire`).
#[derive(Clone)]
pub(crate) struct Backends {
    pub(crate) shape: Shape,
    rng: Arc<Mutex<SmallRng>>,
    /// Requests each backend was sent (hedges and cancelled ones included).
    pub(crate) served: Arc<Vec<AtomicU64>>,
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
    pub(crate) fn new(shape: Shape) -> Self {
        Backends {
            shape,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(12))),
            served: Arc::new(shape.ranges.iter().map(|_| AtomicU64::new(0)).collect()),
            wire: None,
        }
    }

    /// The same, each backend a TCP server on 127.0.0.1 told its latency per request.
    pub(crate) async fn on_loopback(shape: Shape) -> Self {
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
    pub(crate) fn answer(&self, i: usize) -> impl Future<Output = ()> + Send + 'static + use<> {
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
        let mut rng = self.rng.lock().unwrap();
        // Shapes without a tail draw once per answer, as they always have.
        if let Some(tail) = self.shape.tail
            && rng.random_range(0..tail.one_in) == 0
        {
            return Duration::from_micros(tail.us);
        }
        Duration::from_micros(rng.random_range(lo..hi.max(lo + 1)))
    }

    /// Backend `i` as a tower service.
    pub(crate) fn service(&self, i: usize) -> Backend {
        Backend {
            backends: self.clone(),
            i,
        }
    }

    /// Every request the backends were sent.
    pub(crate) fn sent(&self) -> u64 {
        self.served.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The backends as instances of `shared/web`, instance id = backend index.
    pub(crate) fn registry(&self) -> StaticDiscovery {
        (0..self.shape.ranges.len()).fold(StaticDiscovery::new(), |r, i| {
            let addr = self.addr(i);
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
}

#[derive(Clone)]
pub(crate) struct Backend {
    backends: Backends,
    i: usize,
}

pub(crate) type BoxFut = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

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
