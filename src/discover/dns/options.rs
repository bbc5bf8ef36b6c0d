//! What [`DnsDiscovery`](super::DnsDiscovery) looks up and how long it keeps answers.

use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;

use crate::error::Error;

/// The attribute holding an SRV record's priority, on instances found through SRV
/// records. Picks do not prefer lower priorities (RFC 2782's order): every priority
/// is picked from, as Cloud Map writes priority 1 on every record.
pub const ATTR_SRV_PRIORITY: &str = "SRV_PRIORITY";
/// The attribute holding an SRV record's weight, on instances found through SRV
/// records: `Selection::WeightedRandom { attribute: "SRV_WEIGHT".into() }` picks by it.
pub const ATTR_SRV_WEIGHT: &str = "SRV_WEIGHT";

/// A TTL of zero would make the cache refresh in a tight loop; no answer is kept for
/// less than this, whatever [`DnsOptions::min_ttl`] says.
const TTL_FLOOR: Duration = Duration::from_millis(100);

/// The longest TTL a record can carry: RFC 2181 section 8 reads a TTL with the most
/// significant bit set as zero (a broken server's value, not a long one).
pub(super) const MAX_RECORD_TTL: u32 = i32::MAX as u32;

/// Which records [`DnsDiscovery`](super::DnsDiscovery) looks up at `service.namespace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecordMode {
    /// SRV records, and A/AAAA records where the name has no SRV records. The default.
    #[default]
    Auto,
    /// SRV records only: a name without them has no endpoints.
    SrvOnly,
    /// A/AAAA records only, with [`DnsOptions::default_port`]; SRV records are not
    /// asked for.
    AddressOnly,
}

/// Which address records [`DnsDiscovery`](super::DnsDiscovery) asks for, at the service name and at SRV
/// targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IpPreference {
    /// A records only.
    Ipv4Only,
    /// AAAA records only.
    Ipv6Only,
    /// A records; AAAA records when there are no A records. The default (as
    /// hickory-resolver's), and one query for an IPv4 service.
    #[default]
    Ipv4ThenIpv6,
    /// AAAA records; A records when there are no AAAA records.
    Ipv6ThenIpv4,
    /// Both A and AAAA records: dual-stack services. An SRV target with one address
    /// of each family is one instance with both; the resolver's `prefer_ipv6` picks.
    Ipv4AndIpv6,
}

impl IpPreference {
    /// The record types to ask for, in order, and whether to stop at the first that
    /// has records.
    pub(super) fn plan(self) -> (&'static [RecordType], bool) {
        match self {
            IpPreference::Ipv4Only => (&[RecordType::A], true),
            IpPreference::Ipv6Only => (&[RecordType::AAAA], true),
            IpPreference::Ipv4ThenIpv6 => (&[RecordType::A, RecordType::AAAA], true),
            IpPreference::Ipv6ThenIpv4 => (&[RecordType::AAAA, RecordType::A], true),
            IpPreference::Ipv4AndIpv6 => (&[RecordType::A, RecordType::AAAA], false),
        }
    }
}

/// Settings of a [`DnsDiscovery`](super::DnsDiscovery). Every field's doc states its default.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::{DnsDiscovery, DnsOptions, IpPreference, RecordMode};
///
/// let mut opts = DnsOptions::default();
/// opts.records = RecordMode::AddressOnly;
/// opts.default_port = Some(8080);
/// opts.ip_preference = IpPreference::Ipv4AndIpv6;
/// opts.min_ttl = Duration::from_secs(5);
/// let dns = DnsDiscovery::with_name_servers(["10.0.0.2:53".parse().unwrap()]).with_options(opts);
/// assert_eq!(dns.options().default_port, Some(8080));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsOptions {
    /// Which records to look up. Default: [`RecordMode::Auto`] (SRV, else A/AAAA).
    pub records: RecordMode,
    /// The port of instances found through A/AAAA records (SRV records carry their
    /// own), 1 to 65535 ([`InvalidInput`](crate::ErrorKind::InvalidInput) otherwise).
    /// Default: none, in which case the resolver's
    /// [`default_port`](crate::ResolverBuilder::default_port) applies, and without
    /// one such endpoints have no [`socket_addr`](crate::Endpoint::socket_addr).
    pub default_port: Option<u16>,
    /// Which address records to ask for. Default: [`IpPreference::Ipv4ThenIpv6`].
    pub ip_preference: IpPreference,
    /// The shortest TTL an answer is cached for: lower record TTLs are raised to it.
    /// Never below 100 ms, so a zero TTL cannot make the cache refresh in a loop;
    /// and the resolver's cache keeps any source's answer at least 1 s (see
    /// [`CacheOptions::ttl`](crate::CacheOptions::ttl)), so a bound under 1 s only
    /// shortens how long a merged address is remembered. Default: 1 s.
    pub min_ttl: Duration,
    /// The longest TTL an answer is cached for and an address is remembered for:
    /// higher record TTLs are lowered to it. Default: 300 s.
    pub max_ttl: Duration,
    /// Keep every address seen in recent answers until its own TTL runs out, rather
    /// than only the last answer's: Route 53 answers at most 8 random records, so
    /// merging spreads picks over more of a large service. Default: true.
    pub merge_answers: bool,
    /// How long one DNS query may take before it is tried again: 1 ms to 1 hour
    /// ([`InvalidInput`](crate::ErrorKind::InvalidInput) otherwise). Default: 1 s.
    pub timeout: Duration,
    /// How many times a failed or timed-out query is tried again: at most 10
    /// ([`InvalidInput`](crate::ErrorKind::InvalidInput) otherwise). Default: 1.
    pub retries: usize,
}

/// The most [`DnsOptions::retries`] may be: the DNS client retries a query that
/// fails at once within one poll, so the count must be small for a fetch's
/// timeout to stay in charge.
const MAX_RETRIES: usize = 10;

impl DnsOptions {
    /// Refuses a timeout or a retry count the DNS client cannot work with: a zero
    /// timeout fails every try at once, so the client would retry without ever
    /// yielding to the timer that bounds a fetch; a huge one overflows its clock.
    pub(super) fn validate(&self) -> Result<(), Error> {
        let timeouts = Duration::from_millis(1)..=Duration::from_secs(3600);
        if !timeouts.contains(&self.timeout) {
            return Err(Error::invalid(format!(
                "DNS timeout must be from 1 ms to 1 hour, not {:?}",
                self.timeout
            )));
        }
        if self.default_port == Some(0) {
            // Every A/AAAA record would become an instance at port 0, each skipped
            // as a malformed registry entry: no endpoints, and warnings blaming DNS.
            return Err(Error::invalid(
                "DNS default port 0 cannot be connected to: use 1 to 65535",
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(Error::invalid(format!(
                "DNS retries must be at most {MAX_RETRIES}, not {}",
                self.retries
            )));
        }
        Ok(())
    }
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            records: RecordMode::Auto,
            default_port: None,
            ip_preference: IpPreference::Ipv4ThenIpv6,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            merge_answers: true,
            timeout: Duration::from_secs(1),
            retries: 1,
        }
    }
}

impl DnsOptions {
    /// A record TTL clamped by the bounds, as the time to cache or remember it.
    pub(super) fn clamp_ttl(&self, secs: u32) -> Duration {
        clamp_ttl(secs, self.min_ttl, self.max_ttl)
    }
}

pub(super) fn clamp_ttl(secs: u32, min: Duration, max: Duration) -> Duration {
    // `max(min)` keeps `clamp` from panicking when the bounds are set the wrong way
    // round; the ceiling keeps `Instant + ttl` from overflowing.
    let secs = if secs > MAX_RECORD_TTL { 0 } else { secs };
    let min = min.max(TTL_FLOOR);
    Duration::from_secs(u64::from(secs))
        .clamp(min, max.max(min))
        .min(Duration::from_secs(u64::from(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::dns::merge::until;
    use tokio::time::Instant;

    #[test]
    fn ttl_is_clamped_and_never_zero() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(clamp_ttl(1, min, max), Duration::from_secs(5));
        assert_eq!(clamp_ttl(30, min, max), Duration::from_secs(30));
        assert_eq!(clamp_ttl(86_400, min, max), Duration::from_secs(60));
        assert_eq!(clamp_ttl(0, Duration::ZERO, max), TTL_FLOOR);
        // Bounds the wrong way round do not panic: the minimum wins.
        assert_eq!(clamp_ttl(30, max, min), Duration::from_secs(60));
        // A TTL with the top bit set is read as zero (RFC 2181 section 8), not as
        // 68 years: before, 2^31 s was cached for the 60 s maximum; now the 5 s
        // minimum.
        assert_eq!(clamp_ttl(1 << 31, min, max), Duration::from_secs(5));
        assert_eq!(clamp_ttl(u32::MAX, min, max), Duration::from_secs(5));
        assert_eq!(clamp_ttl(MAX_RECORD_TTL, min, max), Duration::from_secs(60));
        // Huge bounds stay addable to an Instant.
        let huge = clamp_ttl(MAX_RECORD_TTL, Duration::MAX, Duration::MAX);
        assert_eq!(huge, Duration::from_secs(u64::from(u32::MAX)));
        let now = Instant::now();
        assert!(until(now, huge) >= now);
    }
}
