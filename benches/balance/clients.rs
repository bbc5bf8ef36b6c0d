//! The callers' clients, by row name: ours (`Resolver::call` with a selection, and
//! with or without a hedge) and tower's (p2c balancers, and `hedge::Hedge` over one),
//! each with its own pick logic unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cloudmap_resolver::{Endpoint, Hedge, Resolver, ResolverOptions, Selection};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::{Service, ServiceExt};

use crate::backends::{Backends, BoxFut};

const TOWER_DEFAULT_RTT: Duration = Duration::from_millis(30);
const TOWER_DECAY: Duration = Duration::from_secs(10);

/// tower's hedge: hedge past this quantile of the recorded latencies (as
/// `Hedge::percentile(0.95)`), once this many are recorded (`Hedge::percentile`
/// waits for 20 too)...
const TOWER_HEDGE_QUANTILE: f32 = 0.95;
const TOWER_HEDGE_MIN_POINTS: u64 = 20;
/// ...read from the previous period's histogram. A run lasts about a second, so a
/// period of seconds would leave tower without data for all of it; at 100 ms the
/// histogram holds some 600 answers, and the warm-up covers the first period.
const TOWER_HEDGE_PERIOD: Duration = Duration::from_millis(100);

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

pub(crate) fn resolver(backends: &Backends, selection: Selection) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.selection = selection;
    opts.seed = Some(12);
    Resolver::builder(backends.registry())
        .options(opts)
        .build()
        .unwrap()
}

/// What a row's callers call through, shared by all of them.
#[derive(Clone)]
pub(crate) enum Client {
    Ours(Resolver, Option<Hedge>),
    Tower(SharedService),
}

impl Client {
    /// The client of row `name` over `backends`. The hedged rows (`no_hedge`,
    /// `hedge_after`, `hedge_p95`) use the default selection; `hedge_after` hedges
    /// after 5 times the shape's usual answer.
    pub(crate) fn new(name: &str, backends: &Backends) -> Client {
        let hedge = match name {
            "no_hedge" => Some(None),
            "hedge_after" => Some(Some(Hedge::after(backends.shape.usual() * 5))),
            "hedge_p95" => Some(Some(Hedge::percentile(0.95))),
            _ => None,
        };
        if let Some(hedge) = hedge {
            return Client::Ours(resolver(backends, Selection::default()), hedge);
        }
        match selection(name) {
            Some(s) => Client::Ours(resolver(backends, s), None),
            None => Client::Tower(Arc::new(tokio::sync::Mutex::new(tower_client(
                name, backends,
            )))),
        }
    }

    /// One call, to its answer.
    pub(crate) async fn call(&self, backends: &Backends) {
        match self {
            Client::Ours(r, hedge) => {
                let call = r.call("shared", "web", |ep: Endpoint| {
                    let answer = backends.answer(ep.instance_id().parse().unwrap());
                    async move {
                        answer.await;
                        Ok::<_, Infallible>(())
                    }
                });
                match hedge {
                    Some(h) => call.hedge(h.clone()).await,
                    None => call.await,
                }
                .expect("answered");
            }
            Client::Tower(t) => {
                let fut = t.lock().await.ready_call().await;
                fut.await.expect("answered");
            }
        }
    }
}

pub(crate) type SharedService = Arc<tokio::sync::Mutex<Box<dyn CloneService>>>;

/// A tower balancer as the callers share it.
pub(crate) trait CloneService: Send {
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

/// tower's client of row `name`: a p2c balancer, or `tower_hedge_p95`, tower's
/// `hedge::Hedge` over the p2c + PeakEwma balancer.
pub(crate) fn tower_client(name: &str, backends: &Backends) -> Box<dyn CloneService> {
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
        "tower_hedge_p95" => {
            // Hedge clones the service it wraps (the first attempt and the hedge
            // each go through a copy): the balancer is shared behind a lock, as the
            // callers share the others.
            let balancer = Shared(Arc::new(tokio::sync::Mutex::new(tower_client(
                "tower_p2c_peak_ewma",
                backends,
            ))));
            Box::new(tower::hedge::Hedge::new(
                balancer,
                Always,
                TOWER_HEDGE_MIN_POINTS,
                TOWER_HEDGE_QUANTILE,
                TOWER_HEDGE_PERIOD,
            ))
        }
        _ => {
            let list: Vec<_> = (0..n)
                .map(|i| PendingRequests::new(backends.service(i), CompleteOnResponse::default()))
                .collect();
            Box::new(Balance::new(ServiceList::new(list)))
        }
    }
}

/// A shared tower client as a `Clone` service.
#[derive(Clone)]
struct Shared(SharedService);

impl Service<()> for Shared {
    type Response = ();
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let fut = inner.lock().await.ready_call().await;
            fut.await.map_err(|never| match never {})
        })
    }
}

/// tower's hedge policy for a request that may be sent twice: every one.
#[derive(Clone, Copy)]
struct Always;

impl tower::hedge::Policy<()> for Always {
    fn clone_request(&self, (): &()) -> Option<()> {
        Some(())
    }

    fn can_retry(&self, (): &()) -> bool {
        true
    }
}
