//! What the callers saw, and the operation every call runs: it records the endpoint
//! it was given, then sends a GET if that is a loopback socket address.

use super::*;

/// What the callers saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) calls: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) attempts: AtomicU64,
    /// Attempts on an address the default policy refuses (judged by `refused`).
    pub(crate) refused_addr: AtomicU64,
    /// Attempts on one of the `DENIED` instances, whatever its address.
    pub(crate) denied_ids: AtomicU64,
    /// Attempts on a host-name endpoint (none is registered that may be used).
    pub(crate) host_names: AtomicU64,
    /// Distinct endpoints behind the three counts above.
    pub(crate) bad: Mutex<BTreeSet<String>>,
    /// The first few failed calls.
    pub(crate) failures: Mutex<Vec<String>>,
}

impl Tally {
    pub(crate) fn note_failure(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 10 {
            f.push(what);
        }
    }

    pub(crate) fn figures(&self) -> Figures {
        Figures {
            calls: self.calls.load(Relaxed),
            failed: self.failed.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
        }
    }
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Figures {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) attempts: u64,
}

/// The operation: records the endpoint, then sends a GET if it is a loopback socket
/// address. Nothing else is ever connected to.
pub(crate) async fn attempt(ep: Endpoint, tally: Arc<Tally>) -> Result<(), String> {
    tally.attempts.fetch_add(1, Relaxed);
    let refused_addr = match (ep.ip(), ep.host()) {
        (Some(ip), _) => refused(ip),
        (None, Some(host)) => ip_literal(host).is_some_and(refused),
        (None, None) => false,
    };
    let denied_id = DENIED.iter().any(|(id, ..)| *id == ep.instance_id());
    let host_name = ep.host().is_some();
    for (hit, counter) in [
        (refused_addr, &tally.refused_addr),
        (denied_id, &tally.denied_ids),
        (host_name, &tally.host_names),
    ] {
        if hit {
            counter.fetch_add(1, Relaxed);
        }
    }
    if refused_addr || denied_id || host_name {
        let mut bad = tally.bad.lock().unwrap();
        if bad.len() < 32 {
            bad.insert(format!("{ep} (host {:?})", ep.host()));
        }
    }
    match ep.socket_addr() {
        Some(addr) if addr.ip().is_loopback() => get_ok(addr).await,
        _ => Err(format!("{ep}: not attempted, not a loopback address")),
    }
}
