//! The warm path beside what users would pick instead, measured in one run so the
//! ratios hold on a noisy machine.
//!
//! Every row returns the same kind of result: one owned, cheap handle to a picked
//! endpoint (an [`Endpoint`], an `Arc` clone), or for DNS the first address of the
//! answer; criterion drops it inside the timed loop, as a caller would.
//!
//! - `warm/resolve`: `resolver.resolve("shared", "logs")` on a warm key with 8
//!   endpoints from `StaticDiscovery`, round-robin. The future is polled once with a
//!   no-op waker (a warm key is ready on the first poll), inside the runtime's
//!   context; one that is not ready would run on the runtime and be counted in the
//!   printed fallbacks, so a cold key cannot hide in the median.
//! - `warm/floor`: the least a cached pick can cost: a std `HashMap` (its default
//!   SipHash) lookup with a ready `&str` key, an `ArcSwap` load, an atomic increment
//!   over 8 endpoints and the clone of the picked endpoint.
//! - `warm/floor_fx`: the same floor with the Fx hash the resolver uses, for
//!   reference: the floor minus SipHash.
//! - `warm/moka_get`: the obvious design: a `moka::future::Cache` get with a ready
//!   key (no allocation for the key) and the same atomic round-robin pick.
//! - `warm/hickory_cached`: hickory-resolver's `lookup_ip` (IPv4 only, hosts file
//!   off) of a fully qualified name it has cached, served first by a hickory-server
//!   on 127.0.0.1 in this process; the first address of the answer.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cloudmap_resolver::{Endpoint, Resolver, StaticDiscovery};
use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::{instances, now_or_block, report_fallbacks, runtime};

const NAMESPACE: &str = "shared";
const SERVICE: &str = "logs";

/// One service's endpoints and a round-robin cursor: what the alternatives cache.
#[derive(Debug)]
struct Pool {
    endpoints: Box<[Endpoint]>,
    cursor: AtomicU64,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            endpoints: instances(n)
                .into_iter()
                .map(|i| Endpoint::from_instance(i).expect("valid instance"))
                .collect(),
            cursor: AtomicU64::new(0),
        }
    }

    #[inline]
    fn pick(&self) -> Endpoint {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.endpoints[(n % self.endpoints.len() as u64) as usize].clone()
    }
}

/// rustc's Fx hash, word at a time, as `src/key.rs` hashes key parts.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

#[inline]
fn floor_pick<S: std::hash::BuildHasher>(
    map: &HashMap<String, ArcSwap<Pool>, S>,
    key: &str,
) -> Option<Endpoint> {
    Some(map.get(key)?.load().pick())
}

fn warm(c: &mut Criterion) {
    let rt = runtime();
    let _enter = rt.enter();
    let key = format!("{NAMESPACE}/{SERVICE}");

    let registry = instances(8)
        .into_iter()
        .fold(StaticDiscovery::new(), |r, i| {
            r.with_instance(NAMESPACE, SERVICE, i)
        });
    let resolver = Resolver::builder(registry).build().expect("resolver");
    rt.block_on(resolver.resolve(NAMESPACE, SERVICE))
        .expect("cold load");

    let mut floor = HashMap::new();
    floor.insert(key.clone(), ArcSwap::from_pointee(Pool::new(8)));
    let mut floor_fx: HashMap<_, _, BuildHasherDefault<Fx>> = HashMap::default();
    floor_fx.insert(key.clone(), ArcSwap::from_pointee(Pool::new(8)));

    let moka: moka::future::Cache<String, Arc<Pool>> = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key.clone(), Arc::new(Pool::new(8))));

    let dns = rt.block_on(dns::start());
    let hickory = dns::resolver(dns.port);
    rt.block_on(hickory.lookup_ip(dns::NAME))
        .expect("hickory warms its cache");

    // Inputs go through `black_box` once, outside the timed loops: opaque to the
    // optimizer, without a per-iteration trip through memory.
    let (ns, svc, key, name) = black_box((NAMESPACE, SERVICE, key.as_str(), dns::NAME));
    let mut g = c.benchmark_group("warm");
    g.bench_function("resolve", |b| {
        b.iter(|| now_or_block(&rt, resolver.resolve(ns, svc)))
    });
    g.bench_function("floor", |b| b.iter(|| floor_pick(&floor, key)));
    g.bench_function("floor_fx", |b| b.iter(|| floor_pick(&floor_fx, key)));
    g.bench_function("moka_get", |b| {
        b.iter(|| now_or_block(&rt, moka.get(key)).map(|p| p.pick()))
    });
    g.bench_function("hickory_cached", |b| {
        b.iter(|| {
            now_or_block(&rt, hickory.lookup_ip(name))
                .ok()
                .and_then(|l| l.iter().next())
        })
    });
    g.finish();
    drop(dns);
    report_fallbacks("warm");
}

/// A DNS server on loopback for hickory-resolver to cache from.
mod dns {
    use super::*;
    use hickory_resolver::config::{
        LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::TokioResolver;
    use hickory_server::proto::rr::rdata::{A, SOA};
    use hickory_server::proto::rr::{LowerName, Name, RData, Record};
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
    use hickory_server::Server;

    pub(super) const NAME: &str = "logs.shared.";

    pub(super) struct Dns {
        pub(super) port: u16,
        _server: Server<Catalog>,
    }

    /// `logs.shared.` with 8 A records (TTL 1 h), on a free UDP port of 127.0.0.1.
    pub(super) async fn start() -> Dns {
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
        Dns {
            port,
            _server: server,
        }
    }

    /// A resolver of that server only, with its cache on (the default).
    pub(super) fn resolver(port: u16) -> TokioResolver {
        let mut ns = NameServerConfig::udp(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for c in &mut ns.connections {
            c.port = port;
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

criterion_group!(benches, warm);
criterion_main!(benches);
