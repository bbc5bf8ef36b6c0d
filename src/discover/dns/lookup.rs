//! The DNS queries behind `DnsDiscovery` and the records they return: SRV with
//! their targets, A/AAAA by family preference, and negative answers told apart from
//! failures.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::options::{DnsOptions, IpPreference};
use crate::error::{Error, ErrorKind};

/// The DNS clients: one over every name server, and one per server when there are
/// several.
#[derive(Clone)]
pub(super) struct Client {
    /// hickory's pool: parallel queries, fastest server first, the next server
    /// after a timeout.
    pool: TokioResolver,
    /// One client per name server, when there are several. The pool ends a query
    /// at the first SERVFAIL or REFUSED from any server, so one failing server made
    /// every lookup fail though the others answer; such an answer is asked of each
    /// server in turn before it counts.
    each: Arc<[TokioResolver]>,
}

pub(super) fn build_client(
    servers: &[NameServerConfig],
    opts: &DnsOptions,
) -> Result<Client, Error> {
    opts.validate()?;
    let pool = build_one(servers.to_vec(), opts)?;
    let each = if servers.len() > 1 {
        servers
            .iter()
            .map(|s| build_one(vec![s.clone()], opts))
            .collect::<Result<_, _>>()?
    } else {
        Arc::default()
    };
    Ok(Client { pool, each })
}

fn build_one(servers: Vec<NameServerConfig>, opts: &DnsOptions) -> Result<TokioResolver, Error> {
    let config = ResolverConfig::from_name_servers(servers);
    let mut ropts = ResolverOpts::default();
    // This crate's cache, with its TTL clamps and serve-stale, is the only cache.
    ropts.cache_size = 0;
    ropts.timeout = opts.timeout;
    ropts.attempts = opts.retries;
    ropts.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(ropts)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Unavailable, "cannot build the DNS client", e))
}

impl Client {
    /// Looks `name` up through the pool; an error answer (SERVFAIL, REFUSED, ...)
    /// is asked of each server in turn, and the first other outcome is the answer.
    /// At most one query more per server, and only after an error answer.
    async fn lookup(&self, name: &Name, rtype: RecordType) -> Result<Lookup, NetError> {
        let error_answer = |r: &Result<Lookup, NetError>| {
            matches!(r, Err(NetError::Dns(DnsError::ResponseCode(_))))
        };
        let mut outcome = self.pool.lookup(name.clone(), rtype).await;
        for one in self.each.iter() {
            if !error_answer(&outcome) {
                break;
            }
            outcome = one.lookup(name.clone(), rtype).await;
        }
        outcome
    }

    /// Whether `name` has a CNAME record: a chain the client stopped following at
    /// `name` did not end there.
    async fn is_alias(&self, name: &Name) -> bool {
        match self.pool.lookup(name.clone(), RecordType::CNAME).await {
            Ok(found) => found
                .answers()
                .iter()
                .any(|r| r.name == *name && matches!(r.data, RData::CNAME(_))),
            Err(_) => false,
        }
    }
}

/// How many names of a CNAME chain the DNS client (hickory-resolver) follows before
/// it gives up and reports NODATA.
const MAX_CNAME_CHAIN: usize = 8;

/// A DNS query's outcome, with negative answers told apart from failures.
pub(super) enum Found {
    Records(Records),
    /// The name exists but has no records of the type (NODATA), with the negative
    /// TTL when the answer carried an SOA record.
    NoData(Option<u32>),
    NxDomain,
}

/// The records of an answer that matter here.
pub(super) struct Records {
    pub(super) answers: Vec<Record>,
    pub(super) additionals: Vec<Record>,
}

impl Records {
    /// The shortest TTL of the CNAME records that led to the answer, if any.
    pub(super) fn chain_ttl(&self) -> u32 {
        self.answers
            .iter()
            .filter(|r| matches!(r.data, RData::CNAME(_)))
            .map(|r| r.ttl)
            .min()
            .unwrap_or(u32::MAX)
    }
}

pub(super) async fn query(client: &Client, name: &Name, rtype: RecordType) -> Result<Found, Error> {
    match client.lookup(name, rtype).await {
        Ok(lookup) => Ok(Found::Records(Records {
            answers: lookup.answers().to_vec(),
            additionals: lookup.additionals().to_vec(),
        })),
        Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain,
            ..
        }))) => Ok(Found::NxDomain),
        Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NoError,
            negative_ttl,
            soa,
            query: end,
            ..
        }))) => {
            // The DNS client follows at most 8 CNAME records, then reports the
            // alias it stopped at as NODATA: a loop or too long a chain read as
            // "the service has no records", which emptied the merged set and
            // replaced a warm key's answer with none. A real NODATA comes with the
            // zone's SOA (RFC 2308) and ends at a name that is no alias, so only a
            // negative answer without an SOA costs one CNAME query more.
            if soa.is_none() && client.is_alias(end.name()).await {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "DNS {rtype} query for {name}: the CNAME chain does not end ({} is \
                         still an alias after the {MAX_CNAME_CHAIN} names the DNS client \
                         follows: a loop, or too long a chain)",
                        end.name()
                    ),
                ));
            }
            Ok(Found::NoData(negative_ttl))
        }
        Err(e) => Err(Error::with_source(
            ErrorKind::Unavailable,
            format!("DNS {rtype} query for {name} failed"),
            e,
        )),
    }
}

/// An address record as used: the address and its TTL in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AddrRecord {
    pub(super) ip: IpAddr,
    pub(super) ttl: u32,
}

pub(super) fn address_record(r: &Record) -> Option<AddrRecord> {
    let ip = match &r.data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(a) => IpAddr::V6(a.0),
        _ => return None,
    };
    Some(AddrRecord { ip, ttl: r.ttl })
}

/// Keeps the families `pref` asks for: for the "then" preferences, the first family
/// that has any address.
pub(super) fn pick_families(addrs: Vec<AddrRecord>, pref: IpPreference) -> Vec<AddrRecord> {
    let (order, first_only) = pref.plan();
    let family = |a: &AddrRecord, t: RecordType| match t {
        RecordType::A => a.ip.is_ipv4(),
        _ => a.ip.is_ipv6(),
    };
    if first_only {
        for &t in order {
            let picked: Vec<_> = addrs.iter().filter(|a| family(a, t)).copied().collect();
            if !picked.is_empty() {
                return picked;
            }
        }
        return Vec::new();
    }
    addrs
        .into_iter()
        .filter(|a| order.iter().any(|&t| family(a, t)))
        .collect()
}

/// Whether the additional section's addresses of one SRV target answer `pref` as
/// its own queries would. A family missing there proves nothing (a server may add
/// one family's records and not the other's), so the section is enough only when
/// it holds the first family asked for, or for both families, both.
pub(super) fn additionals_suffice(extra: &[AddrRecord], pref: IpPreference) -> bool {
    let (order, first_only) = pref.plan();
    let has = |t: &RecordType| {
        extra.iter().any(|a| match t {
            RecordType::A => a.ip.is_ipv4(),
            _ => a.ip.is_ipv6(),
        })
    };
    if first_only {
        order.first().is_some_and(has)
    } else {
        order.iter().all(has)
    }
}

pub(super) enum Addresses {
    /// The addresses, and the record types answered NODATA: the name has no address
    /// of those families now.
    Found(Vec<AddrRecord>, Vec<RecordType>),
    NoData(Option<u32>),
    NxDomain,
}

/// The A/AAAA records at `name`, as `pref` asks.
pub(super) async fn lookup_addresses(
    client: &Client,
    name: &Name,
    pref: IpPreference,
) -> Result<Addresses, Error> {
    let (order, first_only) = pref.plan();
    let mut found = Vec::new();
    let mut negative = None;
    let mut absent = Vec::new();
    for &rtype in order {
        match query(client, name, rtype).await? {
            Found::NxDomain => return Ok(Addresses::NxDomain),
            Found::NoData(t) => {
                negative = min_opt(negative, t);
                absent.push(rtype);
            }
            Found::Records(records) => {
                let chain = records.chain_ttl();
                let before = found.len();
                found.extend(
                    records
                        .answers
                        .iter()
                        .filter(|r| r.record_type() == rtype)
                        .filter_map(address_record)
                        .map(|a| AddrRecord {
                            ttl: a.ttl.min(chain),
                            ..a
                        }),
                );
                if first_only && found.len() > before {
                    break;
                }
            }
        }
    }
    if found.is_empty() {
        return Ok(Addresses::NoData(negative));
    }
    Ok(Addresses::Found(found, absent))
}

pub(super) fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A host name as an instance id and map key: lower case, no trailing dot.
pub(super) fn host_key(name: &Name) -> String {
    let s = name.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(trimmed) => trimmed.to_owned(),
        None => s,
    }
}

/// What one lookup found.
pub(super) enum Answer {
    /// No records of any kind asked for, with the shortest negative TTL.
    Empty(Option<u32>),
    /// The addresses, and the record types answered NODATA.
    Addresses(Vec<AddrRecord>, Vec<RecordType>),
    Srv(SrvAnswer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SrvRecord {
    pub(super) priority: u16,
    pub(super) weight: u16,
    pub(super) port: u16,
    pub(super) target: String,
    pub(super) ttl: u32,
}

#[derive(Debug, Default)]
pub(super) struct SrvAnswer {
    pub(super) srv: Vec<SrvRecord>,
    /// Addresses of SRV targets, by target.
    pub(super) targets: Vec<(String, AddrRecord)>,
    /// SRV targets the answer says have no address (NODATA or NXDOMAIN).
    pub(super) gone: Vec<String>,
    /// SRV targets with an address, and the record types they were answered NODATA
    /// for: no address of those families now.
    pub(super) absent: Vec<(String, Vec<RecordType>)>,
    /// The shortest TTL of the records used.
    pub(super) ttl: Option<u32>,
}
