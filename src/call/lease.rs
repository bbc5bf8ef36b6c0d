//! [`Lease`]: an endpoint picked for the caller's own I/O, counted in flight until
//! the caller says how it went.
//!
//! What [`Call`](super::Call) does around each attempt, for callers who cannot hand
//! their I/O to `call`: the lease counts one request in flight on its endpoint
//! (least-loaded picks see it), and [`Lease::finish`] records the round-trip time
//! and the outcome (load and outlier detection). Dropped unfinished, it releases the
//! in-flight count and gives the time it was held as a round-trip sample, with no
//! outcome, as `call` does for an attempt it abandons: a caller that gives up on an
//! endpoint that hangs must still teach least-loaded picks that it is slow.

use std::fmt;
use std::ops::Deref;

use tokio::time::Instant;

use crate::endpoint::outlier::Outcome;
use crate::endpoint::record::Recorder;
use crate::endpoint::Endpoint;

/// An endpoint picked for your own I/O: derefs to [`Endpoint`], counts one request
/// in flight on it, and [`finish`](Self::finish) records how long it took and how it
/// went. Made by [`Resolver::lease`](crate::Resolver::lease) and
/// [`Query::lease`](crate::Query::lease).
///
/// Dropping a lease without finishing it counts as cancelled (a `timeout` around your
/// request, say): the request leaves the in-flight count, and the time since the
/// lease was taken is a round-trip sample of the endpoint (a lower bound of the real
/// one), as [`call`](crate::Resolver::call) takes an attempt it abandons; no failure
/// is recorded, since the caller, not the endpoint, gave up. Without the sample an
/// endpoint that hangs would stay unmeasured, the cheapest least-loaded pick.
/// Requests are counted and timed for
/// [`Selection::LeastLoaded`](crate::Selection::LeastLoaded), which reads them; with
/// every selection the outcome feeds outlier detection, as
/// [`Resolver::report`](crate::Resolver::report) does.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cloudmap_resolver::{Instance, Outcome, Resolver, Selection, StaticDiscovery};
///
/// let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let port = server.local_addr()?.port();
/// let registry = StaticDiscovery::new().with_instance("shared", "web",
///     Instance::new("i-1").ipv4("127.0.0.1".parse()?).port(port));
/// let resolver = Resolver::builder(registry).selection(Selection::LeastLoaded).build()?;
///
/// let lease = resolver.lease("shared", "web").await?;
/// assert_eq!(lease.in_flight(), 1);
/// let r = tokio::net::TcpStream::connect(lease.socket_addr().unwrap()).await;
/// lease.finish(if r.is_ok() { Outcome::Success } else { Outcome::Failure });
///
/// let lease = resolver.lease("shared", "web").await?;
/// drop(lease); // cancelled: the time it was held is a sample, not a failure
/// assert_eq!(resolver.resolve("shared", "web").await?.in_flight(), 0);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use = "a lease counts a request in flight until finished or dropped"]
pub struct Lease {
    endpoint: Endpoint,
    recorder: Recorder,
    began: Instant,
    /// Set while the lease counts its request in flight.
    counted: bool,
}

impl Lease {
    pub(crate) fn new(endpoint: Endpoint, recorder: Recorder) -> Self {
        let counted = recorder.start(&endpoint);
        Lease {
            endpoint,
            recorder,
            began: Instant::now(),
            counted,
        }
    }

    /// The leased endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Ends the request: records its round-trip time since the lease was taken
    /// (for least-loaded picks; a failure counts at least
    /// [`LoadOptions::failure_penalty`](crate::LoadOptions::failure_penalty)) and
    /// its outcome (for outlier detection).
    pub fn finish(mut self, outcome: Outcome) {
        let now = Instant::now();
        self.release();
        self.recorder
            .finish(&self.endpoint, self.began, now, outcome);
    }

    fn release(&mut self) {
        let counted = std::mem::take(&mut self.counted);
        self.recorder.end(&self.endpoint, counted);
    }
}

// Dropped unfinished (`finish` has taken `counted`): the request was given up by
// its caller, and the time since the lease was taken is a round-trip sample of the
// endpoint, a lower bound of the real one, as tower's `PeakEwma` takes a dropped
// request's and `call` an abandoned attempt's (`Attempting`). No outcome: the
// caller, not the endpoint, gave up. `counted` is set only when load is tracked, so
// a lease under another selection, or a finished one, reads no clock here.
impl Drop for Lease {
    fn drop(&mut self) {
        if self.counted {
            let now = Instant::now();
            self.release();
            self.recorder.given_up(&self.endpoint, self.began, now);
        }
    }
}

impl Deref for Lease {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("endpoint", &self.endpoint)
            .field("counted", &self.counted)
            .finish_non_exhaustive()
    }
}
