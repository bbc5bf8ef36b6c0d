//! A real DNS server on loopback (hickory-server in this process) answering from a
//! table the test changes as it goes, with faults on command: SERVFAIL, REFUSED,
//! dropped queries, and Route 53's "a random 8 of N records" answers. [`zone`] is the
//! static zone the benchmarks measure hickory's cache against.

pub mod zone;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
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
    queries: Vec<(String, RecordType)>,
}

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
    /// Starts a server on a free UDP port of 127.0.0.1, with an empty table.
    pub async fn start() -> DnsServer {
        let table = Arc::new(Mutex::new(Table {
            records: BTreeMap::new(),
            names: BTreeSet::new(),
            mode: Mode::Answer,
            sample: None,
            additional: vec![RecordType::A, RecordType::AAAA],
            queries: Vec::new(),
        }));
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(Handler(table.clone()));
        server.register_socket(socket);
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
        answers: Vec<Record>,
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
        let exists = self.names.contains(name) || self.records.keys().any(|(n, _)| n == name);
        if !exists {
            return Reply::Code(ResponseCode::NXDomain);
        }
        let mut answers = self
            .records
            .get(&(name.to_owned(), rtype))
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
        Reply::Records {
            answers,
            additionals,
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
                self.0.lock().unwrap().reply(&name, info.query.query_type())
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
                answers,
                additionals,
            } => {
                let response = builder.build(metadata, &answers, [], [], &additionals);
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
