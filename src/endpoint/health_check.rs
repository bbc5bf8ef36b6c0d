//! Active health checks: a probe per endpoint (TCP connect, or an HTTP/1.1 GET of a
//! path), and what its results make of the endpoint.
//!
//! The probe itself and the per-endpoint bookkeeping live here; which endpoints are
//! probed, and when, is the resolver's background task (`resolver/health.rs`), which
//! walks the keys in use. A probe's verdict goes through the outlier detector
//! (`outlier/`: `probe_down`, `probe_up`), so an endpoint found down is skipped as
//! an ejected one is, inside the same share cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::lock::lock;

/// An active health check: what the resolver sends each endpoint of the keys in use,
/// from the background, to find endpoints that stopped serving before a request
/// does (and for callers of `resolve` and `lease`, whose requests the resolver never
/// sees). Opt-in, with [`ResolverBuilder::health_check`](crate::ResolverBuilder::health_check).
///
/// Defaults: a probe every 5 s per endpoint (jittered, spread over the interval),
/// a 1 s timeout, down after 2 failed probes in a row, up after 1 passed one.
/// [`build`](crate::ResolverBuilder::build) refuses with
/// [`InvalidInput`](crate::ErrorKind::InvalidInput) a zero interval or timeout, a
/// count of 0, an HTTP path that does not start with `/` or holds a space or a
/// control character, and a `Host` that is empty or holds one.
///
/// Only endpoints with an IP address and a port are probed: a CNAME or alias
/// instance (a host name, see [`Endpoint::host`](crate::Endpoint::host)) or one
/// with no port is not, and is never found down by the health check (a warning
/// names each such endpoint once). Its health is the registry's and the passive
/// outlier detection's alone.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::HealthCheck;
///
/// let tcp = HealthCheck::tcp().interval(Duration::from_secs(1));
/// let http = HealthCheck::http("/healthz")
///     .host("web.internal")
///     .timeout(Duration::from_millis(500))
///     .unhealthy_after(3)
///     .healthy_after(2);
/// assert_ne!(tcp, http);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    pub(crate) kind: Kind,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_after: u32,
    pub(crate) healthy_after: u32,
    pub(crate) host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    Http {
        path: String,
    },
    /// `grpc.health.v1.Health/Check` for `service` ("": the server as a whole).
    #[cfg(feature = "tonic")]
    Grpc {
        service: String,
    },
}

impl HealthCheck {
    fn new(kind: Kind) -> Self {
        HealthCheck {
            kind,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 1,
            host: None,
        }
    }

    /// Healthy when a TCP connection to the endpoint's address opens.
    pub fn tcp() -> Self {
        HealthCheck::new(Kind::Tcp)
    }

    /// Healthy when an HTTP/1.1 `GET path` sent to the endpoint's address answers
    /// with a 2xx or 3xx status. The `Host` header is the address unless
    /// [`host`](Self::host) sets it. The path starts with `/` and holds no space or
    /// control character.
    pub fn http(path: impl Into<String>) -> Self {
        HealthCheck::new(Kind::Http { path: path.into() })
    }

    /// Healthy when the endpoint's gRPC health service (`grpc.health.v1.Health/Check`,
    /// over plain HTTP/2) answers `SERVING` for the service set with
    /// [`service`](Self::service), by default the empty name (the server as a
    /// whole). Any other status, an error (`NOT_FOUND` for a service the server
    /// does not know, `UNIMPLEMENTED` without the health service) or no answer
    /// within the timeout fails the probe.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{HealthCheck, Resolver, StaticDiscovery};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new())
    ///     .health_check(HealthCheck::grpc().service("shop.Cart"))
    ///     .build()?;
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc() -> Self {
        HealthCheck::new(Kind::Grpc {
            service: String::new(),
        })
    }

    /// The service name a gRPC check asks about (`HealthCheckRequest.service`).
    /// Default: "" (the server as a whole). Only a [`grpc`](Self::grpc) check sends
    /// it; on another check it changes nothing.
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        if let Kind::Grpc { service } = &mut self.kind {
            *service = name.into();
        }
        self
    }

    /// The `Host` header of an HTTP check: not empty, with no space or control
    /// character. Default: the endpoint's `ip:port`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How often each endpoint is probed: each round lasts the interval plus a
    /// random part of up to a quarter of it (never less: no endpoint is probed more
    /// often than this), and the probes of a round are spread evenly over it.
    /// Greater than zero. Default: 5 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long a probe may take before it counts as failed, greater than zero.
    /// Default: 1 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failed probes in a row that take an endpoint out, at least 1. Default: 2.
    pub fn unhealthy_after(mut self, n: u32) -> Self {
        self.unhealthy_after = n;
        self
    }

    /// Passed probes in a row that bring an endpoint back, at least 1. Default: 1.
    pub fn healthy_after(mut self, n: u32) -> Self {
        self.healthy_after = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(crate::Error::invalid(
                "health_check interval and timeout must be positive",
            ));
        }
        if self.unhealthy_after == 0 || self.healthy_after == 0 {
            return Err(crate::Error::invalid(
                "health_check unhealthy_after and healthy_after must be at least 1",
            ));
        }
        let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_control() || c == ' ');
        if let Kind::Http { path } = &self.kind
            && (bad(path) || !path.starts_with('/'))
        {
            return Err(crate::Error::invalid(
                "health_check path must start with '/' and hold no space or control character",
            ));
        }
        if self.host.as_deref().is_some_and(bad) {
            return Err(crate::Error::invalid(
                "health_check host must hold no space or control character",
            ));
        }
        Ok(())
    }

    /// Probes `addr` once, within the timeout.
    pub(crate) async fn probe(&self, addr: SocketAddr) -> ProbeOutcome {
        match tokio::time::timeout(self.timeout, self.exchange(addr)).await {
            Ok(true) => ProbeOutcome::Passed,
            Ok(false) => ProbeOutcome::Failed,
            Err(_) => ProbeOutcome::TimedOut,
        }
    }

    async fn exchange(&self, addr: SocketAddr) -> bool {
        match &self.kind {
            Kind::Tcp => TcpStream::connect(addr).await.is_ok(),
            Kind::Http { path } => {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return false;
                };
                let host = self.host.clone().unwrap_or_else(|| addr.to_string());
                http_get(&mut stream, path, &host).await.unwrap_or(false)
            }
            #[cfg(feature = "tonic")]
            Kind::Grpc { service } => super::grpc_probe::check(addr, service).await,
        }
    }
}

/// Sends a minimal GET and reads the status line: healthy on 200 to 399.
async fn http_get(stream: &mut TcpStream, path: &str, host: &str) -> std::io::Result<bool> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cloudmap-resolver\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line fits in far less; read no more than this of any answer.
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(status(&buf[..len]).is_some_and(|s| (200..400).contains(&s)))
}

/// The status code of an HTTP/1.x status line.
fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.trim();
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    Passed,
    Failed,
    TimedOut,
}

/// What the health check knows of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct ProbeState {
    /// Set while a probe of the endpoint runs: one in flight at a time.
    in_flight: AtomicBool,
    runs: Mutex<Runs>,
    /// Set once the resolver said the endpoint cannot be probed (no IP address
    /// and port), so that it says it once, not every round.
    unprobed: AtomicBool,
}

#[derive(Debug, Default)]
struct Runs {
    passed: u32,
    failed: u32,
}

/// What a probe's result changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Failed `unhealthy_after` times in a row (or more).
    Down,
    /// Passed `healthy_after` times in a row.
    Up,
    /// Not enough in a row to say.
    Undecided,
}

impl ProbeState {
    /// Claims the endpoint's one probe slot; false when a probe already runs.
    pub(crate) fn begin(&self) -> bool {
        !self.in_flight.swap(true, Ordering::AcqRel)
    }

    /// Whether the endpoint was not yet said to be unprobeable; records it.
    pub(crate) fn first_unprobed(&self) -> bool {
        !self.unprobed.swap(true, Ordering::Relaxed)
    }

    /// Releases the slot taken by [`begin`](Self::begin).
    pub(crate) fn end(&self) {
        self.in_flight.store(false, Ordering::Release);
    }

    /// Counts a probe's result; says whether the endpoint is now down or up.
    pub(crate) fn result(&self, passed: bool, check: &HealthCheck) -> Verdict {
        let mut runs = lock(&self.runs);
        if passed {
            runs.failed = 0;
            runs.passed = runs.passed.saturating_add(1);
            if runs.passed >= check.healthy_after {
                return Verdict::Up;
            }
        } else {
            runs.passed = 0;
            runs.failed = runs.failed.saturating_add(1);
            if runs.failed >= check.unhealthy_after {
                return Verdict::Down;
            }
        }
        Verdict::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status(b"HTTP/1.1 20"), None);
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b""), None);
    }

    #[test]
    fn verdicts_need_runs_in_a_row() {
        let check = HealthCheck::tcp().unhealthy_after(2).healthy_after(2);
        let s = ProbeState::default();
        assert_eq!(s.result(false, &check), Verdict::Undecided);
        assert_eq!(s.result(true, &check), Verdict::Undecided);
        assert_eq!(s.result(false, &check), Verdict::Undecided);
        assert_eq!(s.result(false, &check), Verdict::Down);
        assert_eq!(s.result(true, &check), Verdict::Undecided);
        assert_eq!(s.result(true, &check), Verdict::Up);
        assert!(s.begin() && !s.begin());
        s.end();
        assert!(s.begin());
    }

    #[test]
    fn checks_are_validated() {
        for bad in [
            HealthCheck::tcp().interval(Duration::ZERO),
            HealthCheck::tcp().timeout(Duration::ZERO),
            HealthCheck::tcp().unhealthy_after(0),
            HealthCheck::tcp().healthy_after(0),
            HealthCheck::http("healthz"),
            HealthCheck::http("/a b"),
            HealthCheck::http("/x\r\nX-Evil: 1"),
            HealthCheck::http("/").host("a\r\nb"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(HealthCheck::http("/healthz").host("web").validate().is_ok());
    }
}
