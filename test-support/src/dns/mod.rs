//! A real DNS server on loopback (hickory-server in this process) answering from a
//! table the test changes as it goes, with faults on command: SERVFAIL, REFUSED,
//! dropped queries, and Route 53's "a random 8 of N records" answers. CNAME records
//! are followed within the table, as an authoritative server follows them within its
//! zone, and negative answers carry the zone's SOA record once one is set. [`zone`]
//! is the static zone the benchmarks measure hickory's cache against.

pub mod zone;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
pub use hickory_server::proto::rr::RecordType;
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;

/// How the server answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the table: records, NODATA for a known name without records of the type,
    /// NXDOMAIN for an unknown name.
    Answer,
    ServFail,
    Refused,
    /// Reads the query and never answers.
    Drop,
}

struct Table {
    records: BTreeMap<(String, RecordType), Vec<Record>>,
    /// Names that exist without records (answered NODATA).
    names: BTreeSet<String>,
    mode: Mode,
    /// Answer at most this many records of a set, picked at random (Route 53's
    /// multivalue answers).
    sample: Option<(usize, SmallRng)>,
    /// Which of SRV targets' records (A, AAAA) to put in the additional section.
    additional: Vec<RecordType>,
    /// Follow CNAME records within the table (an alias into the server's own zone);
    /// when false, answer the first CNAME only (an alias out of it), and the client
    /// asks for the target itself.
    chase: bool,
    /// The SOA record negative answers (NXDOMAIN, NODATA) carry in their authority
    /// section, as RFC 2308 has authoritative servers do.
    soa: Option<Record>,
    /// Answer queries over UDP (the default); when false, only over TCP.
    udp: bool,
    /// How many queries arrived over TCP.
    tcp_queries: usize,
    queries: Vec<(String, RecordType)>,
}

/// The most CNAME records one answer follows: a chain longer than this, or a loop,
/// is answered as far as it was followed.
const MAX_CHASE: usize = 16;

#[derive(Clone)]
struct Handler(Arc<Mutex<Table>>);

/// The server; it stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    _server: Server<Handler>,
}

fn key(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        n + "."
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_str(&key(name)).expect("test names are valid")
}

impl DnsServer {
    /// Starts a server on a free port of 127.0.0.1, UDP and TCP, with an empty
    /// table. Answers too large for UDP are truncated there (TC), as by any server.
    pub async fn start() -> DnsServer {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts a server on a free port of `ip` (`::1` for the IPv6 tests), UDP and TCP.
    pub async fn start_on(ip: IpAddr) -> DnsServer {
        let table = Arc::new(Mutex::new(Table {
            records: BTreeMap::new(),
            names: BTreeSet::new(),
            mode: Mode::Answer,
            sample: None,
            additional: vec![RecordType::A, RecordType::AAAA],
            chase: true,
            soa: None,
            udp: true,
            tcp_queries: 0,
            queries: Vec::new(),
        }));
        // A UDP port whose TCP twin is free too: a few tries, then UDP only.
        let mut bound = None;
        for _ in 0..20 {
            let socket = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
            let addr = socket.local_addr().unwrap();
            let tcp = tokio::net::TcpListener::bind(addr).await.ok();
            let done = tcp.is_some();
            bound = Some((socket, addr, tcp));
            if done {
                break;
            }
        }
        let (socket, addr, tcp) = bound.expect("at least one try");
        let mut server = Server::new(Handler(table.clone()));
        server.register_socket(socket);
        if let Some(listener) = tcp {
            server.register_listener(listener, std::time::Duration::from_secs(5), 65_535);
        }
        DnsServer {
            addr,
            table,
            _server: server,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut self.table.lock().unwrap())
    }

    fn add(&self, name: &str, ttl: u32, data: RData) {
        let rtype = data.record_type();
        let record = Record::from_rdata(fqdn(name), ttl, data);
        self.with(|t| {
            t.records
                .entry((key(name), rtype))
                .or_default()
                .push(record);
        });
    }

    pub fn add_a(&self, name: &str, ip: &str, ttl: u32) {
        let data = match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add(name, ttl, data);
    }

    pub fn add_srv(
        &self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
        ttl: u32,
    ) {
        self.add(
            name,
            ttl,
            RData::SRV(SRV::new(priority, weight, port, fqdn(target))),
        );
    }

    /// Makes `name` an alias of `target`. Queries of other types at `name` are
    /// answered with this record followed by what the table holds at `target`
    /// (followed on while `target` is an alias too; see [`DnsServer::set_chase`]).
    pub fn add_cname(&self, name: &str, target: &str, ttl: u32) {
        self.add(name, ttl, RData::CNAME(CNAME(fqdn(target))));
    }

    /// Whether CNAME records are followed within the table (the default) or only
    /// the first one is answered, leaving the client to ask for its target.
    pub fn set_chase(&self, on: bool) {
        self.with(|t| t.chase = on);
    }

    /// Negative answers (NXDOMAIN, NODATA) carry an SOA record of `zone` with this
    /// TTL and MINIMUM: by RFC 2308 the negative answer is cached for the lower.
    pub fn set_soa(&self, zone: &str, ttl: u32, minimum: u32) {
        let origin = fqdn(zone);
        let soa = SOA::new(
            origin.clone(),
            origin.clone(),
            1,
            3600,
            600,
            86_400,
            minimum,
        );
        self.with(|t| t.soa = Some(Record::from_rdata(origin, ttl, RData::SOA(soa))));
    }

    /// Removes every record of `rtype` at `name`.
    pub fn clear(&self, name: &str, rtype: RecordType) {
        self.with(|t| t.records.remove(&(key(name), rtype)));
    }

    /// Makes `name` exist with no records: NODATA for every type.
    pub fn add_empty_name(&self, name: &str) {
        self.with(|t| t.names.insert(key(name)));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.with(|t| t.mode = mode);
    }

    /// Answers at most `n` records of a set, a random choice from an RNG seeded
    /// with `seed`.
    pub fn sample(&self, n: usize, seed: u64) {
        self.with(|t| t.sample = Some((n, SmallRng::seed_from_u64(seed))));
    }

    pub fn set_additional(&self, on: bool) {
        let types = if on {
            vec![RecordType::A, RecordType::AAAA]
        } else {
            Vec::new()
        };
        self.with(|t| t.additional = types);
    }

    /// Puts only SRV targets' records of these types in the additional section, as
    /// a server that adds one family's records and not the other's.
    pub fn set_additional_types(&self, types: &[RecordType]) {
        self.with(|t| t.additional = types.to_vec());
    }

    /// Whether queries over UDP are answered (the default) or dropped unread, as
    /// by a name server reached over TCP only.
    pub fn set_udp(&self, on: bool) {
        self.with(|t| t.udp = on);
    }

    /// How many queries arrived over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.with(|t| t.tcp_queries)
    }

    /// How many queries of `rtype` for `name` arrived.
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        let k = key(name);
        self.with(|t| {
            t.queries
                .iter()
                .filter(|(n, r)| *n == k && *r == rtype)
                .count()
        })
    }

    /// How many queries arrived in all.
    pub fn total_queries(&self) -> usize {
        self.with(|t| t.queries.len())
    }
}

/// What the table says to a query.
enum Reply {
    Drop,
    Code(ResponseCode),
    Records {
        /// NOERROR, or NXDOMAIN for a name (or an alias's target) that does not exist.
        code: ResponseCode,
        answers: Vec<Record>,
        /// The SOA record of a negative answer.
        soa: Vec<Record>,
        additionals: Vec<Record>,
    },
}

impl Table {
    fn reply(&mut self, name: &str, rtype: RecordType) -> Reply {
        self.queries.push((name.to_owned(), rtype));
        match self.mode {
            Mode::Drop => return Reply::Drop,
            Mode::ServFail => return Reply::Code(ResponseCode::ServFail),
            Mode::Refused => return Reply::Code(ResponseCode::Refused),
            Mode::Answer => {}
        }
        // The CNAME chain from `name`, followed while the name at its end is an
        // alias and has no records of the type asked, up to a loop or MAX_CHASE.
        let mut chain: Vec<Record> = Vec::new();
        let mut at = name.to_owned();
        while rtype != RecordType::CNAME
            && !self.records.contains_key(&(at.clone(), rtype))
            && let Some(cname) = self.records.get(&(at.clone(), RecordType::CNAME))
            && let Some(record) = cname.first()
            && let RData::CNAME(CNAME(target)) = &record.data
        {
            chain.push(record.clone());
            let target = key(&target.to_ascii());
            let looped = chain.iter().any(|r| key(&r.name.to_ascii()) == target);
            if !self.chase || looped || chain.len() >= MAX_CHASE {
                // An answer ending at an alias is not a negative answer: no SOA.
                return Reply::Records {
                    code: ResponseCode::NoError,
                    answers: chain,
                    soa: Vec::new(),
                    additionals: Vec::new(),
                };
            }
            at = target;
        }
        let exists = self.names.contains(&at) || self.records.keys().any(|(n, _)| *n == at);
        if !exists {
            if chain.is_empty() && self.soa.is_none() {
                return Reply::Code(ResponseCode::NXDomain);
            }
            return self.nxdomain(chain);
        }
        let mut answers = self
            .records
            .get(&(at.clone(), rtype))
            .cloned()
            .unwrap_or_default();
        if let Some((n, rng)) = &mut self.sample
            && answers.len() > *n
        {
            answers = answers.choose_multiple(rng, *n).cloned().collect();
        }
        let mut additionals = Vec::new();
        if !self.additional.is_empty() && rtype == RecordType::SRV {
            for r in &answers {
                if let RData::SRV(srv) = &r.data {
                    let target = key(&srv.target.to_ascii());
                    for &t in &self.additional {
                        if let Some(rs) = self.records.get(&(target.clone(), t)) {
                            additionals.extend(rs.iter().cloned());
                        }
                    }
                }
            }
        }
        let soa = match answers.is_empty() {
            true => self.soa.iter().cloned().collect(),
            false => Vec::new(),
        };
        chain.extend(answers);
        Reply::Records {
            code: ResponseCode::NoError,
            answers: chain,
            soa,
            additionals,
        }
    }

    /// A negative answer (NXDOMAIN), with the CNAME records that led to it and the
    /// SOA record, if set.
    fn nxdomain(&self, chain: Vec<Record>) -> Reply {
        Reply::Records {
            code: ResponseCode::NXDomain,
            answers: chain,
            soa: self.soa.iter().cloned().collect(),
            additionals: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let reply = match request.request_info() {
            Ok(info) => {
                let name = key(&info.query.original().name().to_ascii());
                let mut table = self.0.lock().unwrap();
                if request.protocol() == Protocol::Udp && !table.udp {
                    table.queries.push((name, info.query.query_type()));
                    Reply::Drop
                } else {
                    if request.protocol() == Protocol::Tcp {
                        table.tcp_queries += 1;
                    }
                    table.reply(&name, info.query.query_type())
                }
            }
            Err(_) => Reply::Code(ResponseCode::FormErr),
        };
        let sent = match reply {
            Reply::Drop => {
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
            Reply::Code(code) => {
                response_handle
                    .send_response(builder.error_msg(&request.metadata, code))
                    .await
            }
            Reply::Records {
                code,
                answers,
                soa,
                additionals,
            } => {
                metadata.response_code = code;
                let response = builder.build(metadata, &answers, [], &soa, &additionals);
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|_| {
            let mut failed = Metadata::response_from_request(&request.metadata);
            failed.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: failed,
                counts: HeaderCounts::default(),
            })
        })
    }
}
