//! What the benchmarks share (and `tests/memory.rs`, which counts the bytes they
//! time): a runtime, a synthetic registry and a way to drive a future that is ready on
//! its first poll without a scheduler in the way.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use cloudmap_resolver::{BoxFuture, Discover, DiscoverRequest, Discovered, Error, Instance};

/// A current-thread runtime: cold loads run on it (and spawn their refreshers on
/// it), but it is driven only while a cold load waits, so no background task runs
/// beside a measurement.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Polls `fut` once with a no-op waker and returns its output when it is ready, as a
/// warm `resolve` is: this measures the future's own work, not a scheduler's. A
/// future that is not ready is finished on `rt` and counted (see [`fallbacks`]), so
/// a key that went cold shows up in the output instead of skewing a number quietly.
/// Always inlined: out of line, a large future is moved into it on every call, a
/// copy the measured code does not make when awaited.
#[inline(always)]
pub fn now_or_block<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => finish(rt, fut),
    }
}

/// Kept out of line so the measured loop holds only the ready path.
#[cold]
#[inline(never)]
fn finish<F: Future>(rt: &tokio::runtime::Runtime, fut: std::pin::Pin<&mut F>) -> F::Output {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    rt.block_on(fut)
}

/// How many futures [`now_or_block`] had to finish on the runtime.
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Prints how many polls fell back to the runtime, for the benchmark's output.
pub fn report_fallbacks(what: &str) {
    println!(
        "{what}: {} call(s) were not ready on first poll and ran on the runtime",
        fallbacks()
    );
}

/// Endpoints as Cloud Map registers them for an ECS task: address, port and a few
/// attributes.
pub fn instances(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            Instance::new(format!("i-{i}"))
                .ipv4([10, 0, (i >> 8) as u8, i as u8].into())
                .port(8080)
                .attribute("stage", "prod")
                .attribute("AVAILABILITY_ZONE", "use1-az1")
        })
        .collect()
}

/// A registry that answers every service with `endpoints` fresh instances, so a
/// cache of 100,000 keys costs the source no memory of its own.
#[derive(Debug)]
pub struct Synthetic {
    pub endpoints: usize,
}

impl Discover for Synthetic {
    fn discover<'a>(
        &'a self,
        _request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        let n = self.endpoints;
        Box::pin(async move { Ok(Discovered::new(instances(n))) })
    }
}
