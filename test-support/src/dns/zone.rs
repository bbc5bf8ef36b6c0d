//! A static zone served by hickory-server on loopback, and a hickory resolver of that
//! server only: what `warm/hickory_cached` measures hickory's own cache against.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;

/// The one name the zone answers.
pub const NAME: &str = "logs.shared.";

/// The server; it stops when dropped.
pub struct ZoneServer {
    pub port: u16,
    _server: Server<Catalog>,
}

impl std::fmt::Debug for ZoneServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneServer")
            .field("port", &self.port)
            .finish()
    }
}

impl ZoneServer {
    /// `logs.shared.` with 8 A records (TTL 1 h), on a free UDP port of 127.0.0.1.
    pub async fn start() -> ZoneServer {
        let origin = Name::from_ascii("shared.").expect("name");
        let name = Name::from_ascii(NAME).expect("name");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(origin.clone(), origin.clone(), 1, 3600, 600, 86_400, 60);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)), 1);
        for i in 0..8 {
            let a = A(Ipv4Addr::new(10, 0, 0, i));
            zone.upsert_mut(Record::from_rdata(name.clone(), 3600, RData::A(a)), 1);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback UDP port");
        let port = socket.local_addr().expect("local address").port();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        ZoneServer {
            port,
            _server: server,
        }
    }

    /// A resolver of this server only, with its cache on (the default), IPv4 only and
    /// the hosts file off.
    pub fn resolver(&self) -> TokioResolver {
        let mut ns = NameServerConfig::udp(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for c in &mut ns.connections {
            c.port = self.port;
        }
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4Only;
        opts.use_hosts_file = ResolveHosts::Never;
        builder.build().expect("hickory resolver")
    }
}
