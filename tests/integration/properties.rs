//! Property tests of instance parsing and the address policy: for arbitrary attribute
//! maps (ports, IPs in every spelling, host names, weights, unicode, long values),
//! parsing never panics and every endpoint handed out passes the address policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cloudmap_resolver::{
    AddressPolicy, Endpoint, ErrorKind, Instance, Resolver, Selection, StaticDiscovery,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const KEYS: [&str; 6] = [
    "AWS_INSTANCE_IPV4",
    "AWS_INSTANCE_IPV6",
    "AWS_INSTANCE_PORT",
    "AWS_INSTANCE_CNAME",
    "AWS_ALIAS_DNS_NAME",
    "weight",
];

/// A deterministic runner: fixed seed, fixed case count, no persistence files.
fn runner() -> TestRunner {
    let config = Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
}

/// An IPv4 address spelled any way URL parsers and `inet_aton` read one.
fn ipv4_spelling() -> impl Strategy<Value = String> {
    let special = prop_oneof![
        Just(0xa9fe_a9fe_u32),
        Just(0),
        Just(0xe000_0001),
        Just(0xffff_ffff),
        Just(0x7f00_0001),
        Just(0x0a00_0001),
        Just(0xa9fe_aa02),
        any::<u32>(),
    ];
    (special, 0..8u8, any::<bool>()).prop_map(|(v, form, dot)| {
        let b = v.to_be_bytes();
        let mut s = match form {
            0 => Ipv4Addr::from(v).to_string(),
            1 => v.to_string(),
            2 => format!("0x{v:x}"),
            3 => format!("0{:o}.0{:o}.0{:o}.0{:o}", b[0], b[1], b[2], b[3]),
            4 => format!("0x{:x}.0x{:x}.0x{:x}.0x{:x}", b[0], b[1], b[2], b[3]),
            5 => format!("{}.{}.{}", b[0], b[1], u16::from_be_bytes([b[2], b[3]])),
            6 => format!("{}.{}", b[0], v & 0x00ff_ffff),
            _ => format!("[::ffff:{}]", Ipv4Addr::from(v)),
        };
        if dot && !s.ends_with(']') {
            s.push('.');
        }
        s
    })
}

/// An IPv6 address, often one carrying an IPv4 address or an EC2 service address.
fn ipv6_spelling() -> impl Strategy<Value = String> {
    let v4 = prop_oneof![Just(0xa9fe_a9fe_u32), Just(0), any::<u32>()];
    (v4, 0..9u8, any::<u128>(), any::<bool>()).prop_map(|(v4, form, any6, bracket)| {
        let v4 = u128::from(v4);
        let bits: u128 = match form {
            0 => 0xffff_0000_0000 | v4,
            1 => v4,
            2 => (0xffff_u128 << 48) | v4,
            3 => (0x0064_ff9b_u128 << 96) | v4,
            4 => (0x2002_u128 << 112) | (v4 << 80) | 1,
            5 => (0x2001_u128 << 112) | (!v4 & 0xffff_ffff),
            6 => (0xfd00_0ec2_u128 << 96) | [0x254, 0x23, 0x253, 0x123][(v4 % 4) as usize],
            7 => (0xfe80_u128 << 112) | (v4 & 0xffff),
            _ => any6,
        };
        let s = Ipv6Addr::from(bits).to_string();
        if bracket {
            format!("[{s}]")
        } else {
            s
        }
    })
}

/// Any value a registry entry might hold.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        ipv4_spelling(),
        ipv6_spelling(),
        // Ports, good and bad.
        prop_oneof![
            (0..70_000u32).prop_map(|p| p.to_string()),
            (0..70_000u32).prop_map(|p| format!("+{p}")),
            (0..70_000u32).prop_map(|p| format!("0{p}")),
        ],
        // Host names, and names ending in numbers.
        "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){0,3}\\.?",
        // Weights.
        prop_oneof![
            Just("1e308".to_owned()),
            Just("NaN".to_owned()),
            Just("inf".to_owned()),
            Just("-1".to_owned()),
            any::<f64>().prop_map(|w| w.to_string()),
        ],
        // Unicode and long values.
        "\\PC{0,40}",
        (1..20_000usize, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    let attr = prop_oneof![
        4 => (0..KEYS.len()).prop_map(|k| KEYS[k].to_owned()),
        1 => "\\PC{0,10}",
    ];
    (
        "[a-z0-9-]{1,8}",
        proptest::collection::vec((attr, value()), 0..6),
    )
        .prop_map(|(id, attrs)| {
            attrs
                .into_iter()
                .fold(Instance::new(id), |i, (k, v)| i.attribute(k, v))
        })
}

/// Whether a host name handed out could still be read as an IP address by a URL
/// parser: it must not be (IP literals are handed out as addresses, or refused).
fn looks_like_an_address(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    host.parse::<IpAddr>().is_ok()
        || host.contains(':')
        || host.contains('[')
        || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        || last
            .strip_prefix("0x")
            .or_else(|| last.strip_prefix("0X"))
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn deny_all() -> AddressPolicy {
    AddressPolicy::default()
        .deny("0.0.0.0/0".parse().unwrap())
        .deny("::/0".parse().unwrap())
}

fn check_endpoint(ep: &Endpoint, policy: &AddressPolicy) -> Result<(), TestCaseError> {
    if let Some(ip) = ep.ip() {
        prop_assert!(policy.permits(ip), "{ep} handed out {ip}");
    }
    if let Some(host) = ep.host() {
        prop_assert!(!looks_like_an_address(host), "{ep}: host {host:?}");
    }
    prop_assert!(
        ep.ip().is_some() || ep.host().is_some(),
        "{ep} has no address"
    );
    if let Some(port) = ep.port() {
        prop_assert!(port != 0);
    }
    Ok(())
}

#[test]
fn parsing_never_panics_and_endpoints_pass_the_default_policy() {
    let policy = AddressPolicy::default();
    runner()
        .run(&instance(), |inst| {
            if let Ok(ep) = Endpoint::from_instance(inst) {
                check_endpoint(&ep, &policy)?;
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_endpoint_a_resolver_hands_out_passes_its_policy() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policies = [AddressPolicy::default(), deny_all()];
    runner()
        .run(
            &(proptest::collection::vec(instance(), 1..8), any::<bool>()),
            |(instances, weighted)| {
                for policy in &policies {
                    let registry = instances
                        .iter()
                        .fold(StaticDiscovery::new().with_service("ns", "svc"), |r, i| {
                            r.with_instance("ns", "svc", i.clone())
                        });
                    let selection = if weighted {
                        Selection::WeightedRandom {
                            attribute: "weight".into(),
                        }
                    } else {
                        Selection::RoundRobin
                    };
                    let resolver = Resolver::builder(registry)
                        .address_policy(policy.clone())
                        .selection(selection)
                        .seed(1)
                        .build()
                        .unwrap();
                    let outcome = rt.block_on(async {
                        let all = resolver.resolve_all("ns", "svc").await;
                        let one = resolver.resolve("ns", "svc").await;
                        (all, one)
                    });
                    match outcome {
                        (Ok(all), Ok(one)) => {
                            prop_assert!(all.contains(&one));
                            for ep in all.iter() {
                                check_endpoint(ep, policy)?;
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            prop_assert_eq!(e.kind(), ErrorKind::NoEndpoints, "{}", e)
                        }
                    }
                    if *policy == deny_all() {
                        // Host-name endpoints may remain; no IP endpoint may.
                        let all = rt.block_on(resolver.resolve_all("ns", "svc"));
                        if let Ok(all) = all {
                            prop_assert!(all.iter().all(|ep| ep.ip().is_none()));
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}
