//! `DnsDiscovery`: the SRV and A/AAAA records Cloud Map writes for a DNS namespace,
//! looked up with hickory-resolver.
//!
//! A service in a DNS namespace has Route 53 records at `service.namespace`: SRV
//! records (`1 1 PORT instance-id.service.namespace`, with an A/AAAA record at the
//! target) for tasks reached on their own port, or A/AAAA records for tasks with
//! their own address. Route 53's multivalue answers hold at most 8 random healthy
//! records, so this source merges the answers it gets: an address stays in the set
//! until its own TTL runs out, and the set grows past 8 when the service has more.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig};
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::time::Instant;

use super::{BoxFuture, Discover, DiscoverRequest, Discovered};
use crate::discover::health_filter::HealthFilter;
use crate::discover::instance::Instance;
use crate::error::{Error, ErrorKind};
use crate::util::lock::lock;
use crate::util::warn_once::WarnOnce;

mod lookup;
mod merge;
mod options;
mod srv;

use lookup::{
    build_client, lookup_addresses, min_opt, query, AddrRecord, Addresses, Answer, Client, Found,
    SrvAnswer,
};
use merge::{Merged, Seen};
pub use options::{DnsOptions, IpPreference, RecordMode, ATTR_SRV_PRIORITY, ATTR_SRV_WEIGHT};

/// Service discovery over DNS: the SRV and A/AAAA records Cloud Map writes for a
/// service in a DNS namespace, looked up at `service.namespace`.
///
/// - **SRV first** ([`RecordMode::Auto`]): each SRV record `priority weight port
///   target` becomes an instance with that port, its id the target's name (Cloud Map
///   writes `instance-id.service.namespace`), its address the target's A/AAAA record
///   (from the answer's additional section when it holds the families
///   [`DnsOptions::ip_preference`] asks for, looked up otherwise), and
///   the attributes [`ATTR_SRV_PRIORITY`] and [`ATTR_SRV_WEIGHT`]. Where the name has
///   no SRV records, each A/AAAA record there becomes an instance, its id the
///   address, its port [`DnsOptions::default_port`].
/// - **TTLs**: an answer is cached for the shortest TTL of the records it used,
///   clamped by [`DnsOptions::min_ttl`] and [`DnsOptions::max_ttl`] (a TTL with the
///   top bit set counts as 0, as RFC 2181 says). hickory's own cache is off, so
///   these are the only TTL rules. An empty answer (NODATA) is cached for its
///   negative TTL, the lower of its SOA record's TTL and MINIMUM (RFC 2308), clamped
///   the same way, or for the resolver's [`ttl`](crate::CacheOptions::ttl) when it
///   carries no SOA. NXDOMAIN is an error, not an answer: the resolver holds it for
///   [`negative_ttl`](crate::CacheOptions::negative_ttl) (2 s) whatever the SOA
///   says, since a service may be registered at any moment; the name server (the VPC
///   resolver) caches the NXDOMAIN for the SOA's time itself, so that is one query
///   per key each `negative_ttl` answered from its cache.
/// - **Merging**: Route 53 answers at most 8 random healthy records. Every address
///   seen is kept until its own (clamped) TTL runs out, so the set grows towards the
///   whole service and picks spread over it; an address leaves the set at the first
///   lookup after its TTL, at the first answer whose SRV record names its target
///   and finds that target without an address, or at the first answer that says the
///   name (or the SRV target) has no record of its family (NODATA for A or AAAA). An empty answer (NXDOMAIN, no
///   records, or SRV records none of which can be an endpoint: target `.`, port 0,
///   a target without an address) empties the set. Turn this off with
///   [`DnsOptions::merge_answers`].
/// - **Health**: DNS answers hold the records Route 53 considers healthy (or, when
///   none is, up to 8 unhealthy ones); every instance is reported healthy.
///   [`HealthFilter::Unhealthy`] cannot be answered and is `InvalidInput`; the
///   other filters are answered by what Route 53 returns.
/// - **Attributes**: DNS records carry none, so query and optional parameters are
///   `InvalidInput`, never silently ignored; use [`CloudMapDiscovery`] for them.
/// - **Owner accounts**: DNS has no notion of who owns a namespace, so a request
///   with an [owner account](DiscoverRequest::owner_account) is `InvalidInput`.
/// - **Aliases**: CNAME records at the service name and at SRV targets are followed
///   (an SRV target that is an alias keeps its own name as the instance id), and the
///   CNAME records' TTLs count among the answer's.
/// - **Errors**: NXDOMAIN is `ServiceNotFound`; no records of any kind asked for is
///   an empty answer, which the resolver reports as `NoEndpoints`; SERVFAIL, REFUSED,
///   a timeout or no reachable server is `Unavailable` (with several name servers,
///   when every one of them fails), and so is a CNAME chain that does not end (a
///   loop, or longer than the 8 names hickory follows); the resolver keeps serving
///   its last good answer. The DNS error is the error's
///   [`source`](std::error::Error::source).
///
/// The name looked up is fully qualified (`service.namespace.`), so search domains
/// never apply. A cheap-to-clone handle: clones share the DNS client and the merged
/// answers.
///
/// [`CloudMapDiscovery`]: crate::CloudMapDiscovery
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cloudmap_resolver::{DnsDiscovery, Resolver};
///
/// let dns = Resolver::builder(DnsDiscovery::with_name_servers(["127.0.0.1:53".parse()?])).build()?;
/// let ep = dns.resolve("prod.internal", "api").await?; // looks up api.prod.internal
/// println!("{} at {:?}", ep.instance_id(), ep.socket_addr());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DnsDiscovery {
    servers: Arc<[NameServerConfig]>,
    opts: DnsOptions,
    /// The DNS client, or why it could not be built (reported by every lookup).
    client: Result<Client, Error>,
    /// Merged answers, per fully qualified name.
    seen: Arc<Mutex<Merged>>,
    /// SRV records already warned about, so that an unusable one is logged once,
    /// not on every lookup (as skipped instances are), and a failing target once
    /// per run of failures.
    warned: WarnOnce,
}

impl fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| {
                s.connections
                    .iter()
                    .map(move |c| format!("{}/{:?}", SocketAddr::new(s.ip, c.port), c.protocol))
            })
            .collect();
        f.debug_struct("DnsDiscovery")
            .field("name_servers", &servers)
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

impl DnsDiscovery {
    /// Looks records up through these name servers, over UDP (and TCP for answers
    /// too large for UDP), with the default [`DnsOptions`].
    ///
    /// With no name servers every lookup fails as `Unavailable`.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::DnsDiscovery;
    ///
    /// // The VPC resolver is at the VPC's base address plus two, and at 169.254.169.253.
    /// let dns = DnsDiscovery::with_name_servers(["169.254.169.253:53".parse().unwrap()]);
    /// # let _ = dns;
    /// ```
    pub fn with_name_servers(servers: impl IntoIterator<Item = std::net::SocketAddr>) -> Self {
        let servers = servers
            .into_iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        Self::from_servers(servers, DnsOptions::default())
    }

    /// Looks records up through the system's name servers (`/etc/resolv.conf` on
    /// Unix): in a VPC, the Amazon-provided resolver, which answers for private DNS
    /// namespaces. The system's search domains, timeout and attempts are not used:
    /// names are fully qualified, and [`DnsOptions`] sets the rest.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when the system configuration cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run() -> Result<(), cloudmap_resolver::Error> {
    /// let dns = cloudmap_resolver::DnsDiscovery::from_system_conf()?;
    /// # let _ = dns; Ok(()) }
    /// ```
    pub fn from_system_conf() -> Result<Self, Error> {
        let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                "cannot read the system's DNS configuration",
                e,
            )
        })?;
        let (_, _, servers) = config.into_parts();
        Ok(Self::from_servers(servers, DnsOptions::default()))
    }

    fn from_servers(servers: Vec<NameServerConfig>, opts: DnsOptions) -> Self {
        let servers: Arc<[NameServerConfig]> = servers.into();
        DnsDiscovery {
            client: build_client(&servers, &opts),
            servers,
            opts,
            seen: Arc::default(),
            warned: WarnOnce::default(),
        }
    }

    /// Replaces every setting. Clones made before do not see the change.
    #[must_use]
    pub fn with_options(self, opts: DnsOptions) -> Self {
        Self::from_servers(self.servers.to_vec(), opts)
    }

    /// Which records to look up. Default: [`RecordMode::Auto`].
    #[must_use]
    pub fn records(self, mode: RecordMode) -> Self {
        let opts = DnsOptions {
            records: mode,
            ..self.opts.clone()
        };
        self.with_options(opts)
    }

    /// The port of instances found through A/AAAA records, 1 to 65535 (0 is
    /// `InvalidInput` when the resolver is built). Default: none.
    #[must_use]
    pub fn default_port(self, port: u16) -> Self {
        let opts = DnsOptions {
            default_port: Some(port),
            ..self.opts.clone()
        };
        self.with_options(opts)
    }

    /// Which address records to ask for. Default: [`IpPreference::Ipv4ThenIpv6`].
    #[must_use]
    pub fn ip_preference(self, preference: IpPreference) -> Self {
        let opts = DnsOptions {
            ip_preference: preference,
            ..self.opts.clone()
        };
        self.with_options(opts)
    }

    /// The bounds record TTLs are clamped to. Default: 1 s to 300 s.
    #[must_use]
    pub fn ttl_bounds(self, min: Duration, max: Duration) -> Self {
        let opts = DnsOptions {
            min_ttl: min,
            max_ttl: max,
            ..self.opts.clone()
        };
        self.with_options(opts)
    }

    /// The settings in use.
    pub fn options(&self) -> &DnsOptions {
        &self.opts
    }

    async fn answer(&self, req: &DiscoverRequest) -> Result<Discovered, Error> {
        check_request(req)?;
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let namespace = req.namespace.strip_suffix('.').unwrap_or(&req.namespace);
        let fqdn = format!("{}.{}.", req.service, namespace);
        let name = Name::from_ascii(&fqdn).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("{fqdn:?} is not a DNS name"),
                e,
            )
        })?;
        let key = fqdn.to_ascii_lowercase();
        let opts = &self.opts;

        let srv = match opts.records {
            RecordMode::AddressOnly => None,
            RecordMode::Auto | RecordMode::SrvOnly => {
                Some(query(client, &name, RecordType::SRV).await?)
            }
        };
        let answer = match srv {
            Some(Found::NxDomain) => return Err(self.not_found(&key, &fqdn)),
            Some(Found::Records(records)) => self.resolve_srv(client, &name, records).await?,
            Some(Found::NoData(srv_negative)) if opts.records == RecordMode::SrvOnly => {
                Answer::Empty(srv_negative)
            }
            srv => {
                let srv_negative = match srv {
                    Some(Found::NoData(t)) => t,
                    _ => None,
                };
                match lookup_addresses(client, &name, opts.ip_preference).await? {
                    Addresses::NxDomain => return Err(self.not_found(&key, &fqdn)),
                    Addresses::NoData(t) => Answer::Empty(min_opt(srv_negative, t)),
                    Addresses::Found(addrs, absent) => Answer::Addresses(addrs, absent),
                }
            }
        };

        let now = Instant::now();
        let mut merged = lock(&self.seen);
        // No record is remembered longer than the longest clamped TTL, so sweeping
        // that often forgets names nobody asks for any more.
        merged.sweep(now, opts.clamp_ttl(options::MAX_RECORD_TTL));
        let seen = &mut merged.names;
        let (mut instances, ttl) = match answer {
            Answer::Empty(negative) => {
                // No records left, or none usable: nothing seen before may be
                // served.
                seen.remove(&key);
                (Vec::new(), negative.map(|t| opts.clamp_ttl(t)))
            }
            Answer::Addresses(addrs, absent) => {
                let entry = seen.entry(key.clone()).or_default();
                entry.forget_families(&absent);
                entry.merge_addresses(&addrs, now, opts);
                entry.expire(now);
                let ttl = addrs.iter().map(|a| opts.clamp_ttl(a.ttl)).min();
                (
                    entry.address_instances(opts.default_port),
                    min_opt(ttl, entry.fresh_for(now)),
                )
            }
            Answer::Srv(srv) => {
                let entry = seen.entry(key.clone()).or_default();
                entry.merge_srv(&srv, now, opts);
                entry.expire(now);
                let ttl = srv.ttl.map(|t| opts.clamp_ttl(t));
                (entry.srv_instances(), min_opt(ttl, entry.fresh_for(now)))
            }
        };
        if seen.get(&key).is_some_and(Seen::is_empty) {
            seen.remove(&key);
        }
        drop(merged);
        instances.truncate(req.max_results as usize);
        tracing::debug!(name = %fqdn, instances = instances.len(), ttl = ?ttl, "DNS answer");
        Ok(Discovered {
            instances,
            ttl,
            revision: None,
        })
    }

    fn not_found(&self, key: &str, fqdn: &str) -> Error {
        lock(&self.seen).names.remove(key);
        Error::new(
            ErrorKind::ServiceNotFound,
            format!("no DNS records at {fqdn} (NXDOMAIN)"),
        )
    }
}

impl Discover for DnsDiscovery {
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        Box::pin(self.answer(request))
    }

    /// Options the DNS client was refused for (a zero timeout, too many retries),
    /// reported when the resolver is built rather than at every lookup.
    fn validate(&self) -> Result<(), Error> {
        self.client.as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

/// Rejects what DNS cannot answer, before any query.
fn check_request(req: &DiscoverRequest) -> Result<(), Error> {
    crate::discover::names::check_namespace(&req.namespace)?;
    crate::discover::names::check_service(&req.service)?;
    if !req.query.is_empty() || !req.optional.is_empty() {
        return Err(Error::invalid(
            "DNS records carry no instance attributes, so DNS discovery cannot filter by \
             query or optional parameters; use CloudMapDiscovery for attribute filters",
        ));
    }
    if let Some(owner) = req.owner() {
        return Err(Error::invalid(format!(
            "DNS has no notion of a namespace's owner account, so DNS discovery cannot \
             answer for owner account {owner}; use CloudMapDiscovery for namespaces \
             shared from another account"
        )));
    }
    if req.health == HealthFilter::Unhealthy {
        return Err(Error::invalid(
            "DNS answers hold only the records Route 53 considers healthy, so DNS discovery \
             cannot answer the health filter UNHEALTHY; use CloudMapDiscovery",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::lookup::pick_families;
    use super::*;

    /// Held by each test that runs a DNS server of its own: shared, and alone by
    /// the test of what is logged. Events emitted while tests on other threads
    /// first hit the same log sites were dropped from its capture (a third of the
    /// runs of these tests in parallel, none in sequence).
    pub(super) static SERVERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

    /// Runs `test` on a runtime of its own, holding [`SERVERS`] shared.
    pub(super) fn on_shared_servers(test: impl std::future::Future<Output = ()>) {
        let _shared = SERVERS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }

    /// Runs `test` on a runtime of its own, holding [`SERVERS`] alone, and returns
    /// what it logged.
    pub(super) fn logged_alone(test: impl std::future::Future<Output = ()>) -> String {
        let _alone = SERVERS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        crate::util::logged::logged(|| rt.block_on(test))
    }

    /// An address record, for the tests here and in `merge`.
    pub(super) fn a(ip: &str, ttl: u32) -> AddrRecord {
        AddrRecord {
            ip: ip.parse().unwrap(),
            ttl,
        }
    }

    #[test]
    fn families_follow_the_preference() {
        let both = vec![a("10.0.0.1", 1), a("fd00::1", 1)];
        let only4 = vec![a("10.0.0.1", 1)];
        let ips = |v: Vec<AddrRecord>| v.into_iter().map(|a| a.ip.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ips(pick_families(both.clone(), IpPreference::Ipv4ThenIpv6)),
            ["10.0.0.1"]
        );
        assert_eq!(
            ips(pick_families(both.clone(), IpPreference::Ipv6ThenIpv4)),
            ["fd00::1"]
        );
        assert_eq!(
            ips(pick_families(both.clone(), IpPreference::Ipv6Only)),
            ["fd00::1"]
        );
        assert_eq!(
            ips(pick_families(both, IpPreference::Ipv4AndIpv6)),
            ["10.0.0.1", "fd00::1"]
        );
        assert_eq!(
            ips(pick_families(only4.clone(), IpPreference::Ipv6ThenIpv4)),
            ["10.0.0.1"]
        );
        assert!(pick_families(only4, IpPreference::Ipv6Only).is_empty());
    }

    #[test]
    fn unanswerable_requests_are_invalid_input() {
        let q = DiscoverRequest::new("prod.internal", "api").query("stage", "prod");
        assert_eq!(
            check_request(&q).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let o = DiscoverRequest::new("prod.internal", "api").optional("az", "1");
        assert_eq!(
            check_request(&o).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let h = DiscoverRequest::new("prod.internal", "api").health(HealthFilter::Unhealthy);
        assert_eq!(
            check_request(&h).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let owned = DiscoverRequest::new("prod.internal", "api").owner_account("123456789012");
        let e = check_request(&owned).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("123456789012"), "{e}");
        let bad = DiscoverRequest::new("prod.internal", "no spaces");
        assert_eq!(
            check_request(&bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        for h in [
            HealthFilter::Healthy,
            HealthFilter::All,
            HealthFilter::HealthyOrElseAll,
        ] {
            assert!(check_request(&DiscoverRequest::new("prod.internal", "api").health(h)).is_ok());
        }
    }

    #[test]
    fn built_outside_a_runtime() {
        let dns = DnsDiscovery::with_name_servers(["127.0.0.1:53".parse().unwrap()])
            .records(RecordMode::SrvOnly)
            .default_port(80)
            .ip_preference(IpPreference::Ipv6Only)
            .ttl_bounds(Duration::from_secs(2), Duration::from_secs(20));
        assert!(dns.client.is_ok());
        let o = dns.options();
        assert_eq!(
            (
                o.records,
                o.default_port,
                o.ip_preference,
                o.min_ttl,
                o.max_ttl
            ),
            (
                RecordMode::SrvOnly,
                Some(80),
                IpPreference::Ipv6Only,
                Duration::from_secs(2),
                Duration::from_secs(20)
            )
        );
        assert!(format!("{dns:?}").contains("127.0.0.1:53"));
    }

    /// A family the name is answered NODATA for leaves the merged set: the server
    /// says there is no record of it at all. Before, after the service's A record
    /// was replaced by an AAAA record, `Ipv4ThenIpv6` served 10.0.0.1 and fd00::1
    /// for the rest of the A record's 60 s TTL (2 instances, one of a family it
    /// had fallen back from); now fd00::1 alone.
    #[test]
    fn a_family_answered_nodata_leaves_the_merged_set() {
        on_shared_servers(async {
            let server = test_support::dns::DnsServer::start().await;
            let name = "api.prod.internal";
            let req = DiscoverRequest::new("prod.internal", "api");
            for pref in [IpPreference::Ipv4ThenIpv6, IpPreference::Ipv4AndIpv6] {
                let dns = DnsDiscovery::with_name_servers([server.addr]).ip_preference(pref);
                server.clear(name, test_support::dns::RecordType::AAAA);
                server.add_a(name, "10.0.0.1", 60);
                let ids = |found: Discovered| -> Vec<String> {
                    found.instances.iter().map(|i| i.id().to_owned()).collect()
                };
                assert_eq!(ids(dns.discover(&req).await.unwrap()), ["10.0.0.1"]);
                server.clear(name, test_support::dns::RecordType::A);
                server.add_a(name, "fd00::1", 60);
                assert_eq!(
                    ids(dns.discover(&req).await.unwrap()),
                    ["fd00::1"],
                    "{pref:?}"
                );
            }
        });
    }
}
