//! Instances turned into endpoints: reading the address attributes, applying the
//! address policy, and warning once per change about an instance that is skipped.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::address_policy::{ends_in_number, parse_ip_literal, AddressPolicy};
use super::state::EndpointState;
use super::{Describe, EndpointData};
use crate::discover::instance::{
    parse_port, Instance, Shown, ATTR_ALIAS, ATTR_CNAME, ATTR_IPV4, ATTR_IPV6, ATTR_PORT,
};
use crate::metrics::SkipReason;
use crate::util::warn_once::WarnOnce;

/// How instances are turned into endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParseOptions {
    pub(crate) policy: AddressPolicy,
    pub(crate) default_port: Option<u16>,
    pub(crate) prefer_ipv6: bool,
    /// What was already warned about, so a bad entry is logged once per change.
    pub(crate) warned: WarnOnce,
}

/// Why an instance could not become an endpoint: the warning's text, and the
/// reason the metrics count it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skip(pub(crate) String, pub(crate) SkipReason);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ParseOptions {
    /// Turns an instance into an endpoint, or says why it cannot be one.
    pub(crate) fn parse(&self, instance: Instance) -> Result<EndpointData, Skip> {
        let (id, attributes, health) = instance.into_parts();
        // The id is what names an endpoint across refreshes (its ejection and load
        // survive under it) and what `call` keeps distinct; an entry without one is
        // malformed, as the Cloud Map source also judges it.
        if id.is_empty() {
            return Err(Skip("no instance id".into(), SkipReason::NoInstanceId));
        }
        let get = |k: &str| attributes.get(k).map(|v| v.trim());
        let v4 = match get(ATTR_IPV4) {
            Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                Skip(
                    format!("{ATTR_IPV4} {} is not an IPv4 address", Shown(s)),
                    SkipReason::MalformedAddress,
                )
            })?),
            None => None,
        };
        let v6 = match get(ATTR_IPV6) {
            Some(s) => Some(s.parse::<Ipv6Addr>().map_err(|_| {
                Skip(
                    format!("{ATTR_IPV6} {} is not an IPv6 address", Shown(s)),
                    SkipReason::MalformedAddress,
                )
            })?),
            None => None,
        };
        let port = match get(ATTR_PORT) {
            Some(s) => Some(parse_port(s).ok_or_else(|| {
                Skip(
                    format!("{ATTR_PORT} {} is not a port (1-65535)", Shown(s)),
                    SkipReason::MalformedPort,
                )
            })?),
            None => self.default_port,
        };
        let (v4, v6) = (v4.map(IpAddr::V4), v6.map(IpAddr::V6));
        let addrs = if self.prefer_ipv6 { [v6, v4] } else { [v4, v6] };
        // The preferred family's address, unless the policy refuses it and permits
        // the other: a preference, not a condition, so that a dual-stack instance
        // under an allow list of one family's networks (or a deny list of the
        // other's) is reached at the address allowed. With neither permitted, the
        // preferred one is kept and refused below.
        let mut ip = addrs
            .into_iter()
            .flatten()
            .find(|a| self.policy.permits(*a))
            .or_else(|| addrs.into_iter().flatten().next());
        let host = match ip {
            Some(_) => None,
            None => {
                let (attr, h) = match (get(ATTR_CNAME), get(ATTR_ALIAS)) {
                    (Some(h), _) => (ATTR_CNAME, h),
                    (None, Some(h)) => (ATTR_ALIAS, h),
                    (None, None) => {
                        return Err(Skip(
                            "no address: no IPv4, IPv6, CNAME or alias attribute".into(),
                            SkipReason::NoAddress,
                        ))
                    }
                };
                if let Some(literal) = parse_ip_literal(h) {
                    // A URL parser would connect to this address, so it is judged (and
                    // handed out) as the address, never as a name.
                    ip = Some(literal);
                    None
                } else if ends_in_number(h) {
                    return Err(Skip(
                        format!(
                            "{attr} {} ends in a number but is not an IP address",
                            Shown(h)
                        ),
                        SkipReason::MalformedAddress,
                    ));
                } else if !valid_host(h) {
                    return Err(Skip(
                        format!("{attr} {} is not a DNS name", Shown(h)),
                        SkipReason::MalformedAddress,
                    ));
                } else {
                    Some(h.trim_end_matches('.').into())
                }
            }
        };
        if let Some(ip) = ip
            && !self.policy.permits(ip)
        {
            return Err(Skip(
                format!("address {ip} is refused by the address policy (special or denied)"),
                SkipReason::RefusedByPolicy,
            ));
        }
        // Named once here, for the ejection and re-admission logs.
        let name = Describe {
            id: &id,
            ip,
            host: host.as_deref(),
            port,
        }
        .to_string();
        Ok(EndpointData {
            instance_id: id.into(),
            ip,
            host,
            port,
            health,
            attributes,
            state: Arc::new(EndpointState::new(name)),
        })
    }

    /// Parses every instance, skipping the malformed ones with a warning naming them,
    /// once per change of the instance's problem (not on every refresh). An instance
    /// id listed twice is one instance, the later entry (see [`latest_per_id`]).
    pub(crate) fn parse_all(
        &self,
        namespace: &str,
        service: &str,
        instances: Vec<Instance>,
    ) -> Vec<EndpointData> {
        let instances = latest_per_id(instances);
        let mut out = Vec::with_capacity(instances.len());
        let label = Arc::new((namespace.into(), service.into()));
        for instance in instances {
            let id = instance.id().to_owned();
            match self.parse(instance) {
                Ok(mut ep) => {
                    if let Some(state) = ep.state_mut() {
                        state.service = Some(label.clone());
                    }
                    out.push(ep);
                }
                Err(why) => {
                    crate::metrics::skipped(namespace, service, why.1);
                    if self.warned.first_time((namespace, service, &id, &why.0)) {
                        tracing::warn!(
                            namespace,
                            service,
                            instance_id = %Shown(&id),
                            reason = %why,
                            "skipping instance"
                        );
                    }
                }
            }
        }
        out
    }
}

/// One entry per instance id, at the place its id first appears, holding the last
/// entry listed with that id (entries without an id are kept apart, to be skipped). Cloud Map holds one instance per id (RegisterInstance
/// replaces the instance of the same id), but a source can list an id twice: moto
/// appends a re-registration after the old entry, a `Discover` of one's own may
/// merge lists. Served as two endpoints, one instance would get a double share of
/// picks and be tried twice by one `call`, which promises distinct endpoints; the
/// later entry is the newer registration, as Cloud Map would keep it.
fn latest_per_id(instances: Vec<Instance>) -> Vec<Instance> {
    let mut at: HashMap<String, usize> = HashMap::with_capacity(instances.len());
    let mut out: Vec<Instance> = Vec::with_capacity(instances.len());
    for instance in instances {
        if instance.id().is_empty() {
            // Not one instance but malformed entries, each skipped by `parse`.
            out.push(instance);
            continue;
        }
        match at.entry(instance.id().to_owned()) {
            Entry::Occupied(seen) => out[*seen.get()] = instance,
            Entry::Vacant(new) => {
                new.insert(out.len());
                out.push(instance);
            }
        }
    }
    out
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::util::logged::logged;

    fn opts() -> ParseOptions {
        ParseOptions::default()
    }

    fn one(d: EndpointData) -> Endpoint {
        Endpoint::single(d)
    }

    #[test]
    fn parses_ipv4_and_port() {
        let ep = one(opts()
            .parse(
                Instance::new("i-1")
                    .ipv4("10.0.0.1".parse().unwrap())
                    .port(80),
            )
            .unwrap());
        assert_eq!(ep.socket_addr(), Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!(ep.to_string(), "i-1@10.0.0.1:80");
    }

    #[test]
    fn ipv6_and_preference() {
        let inst = Instance::new("i")
            .ipv4("10.0.0.1".parse().unwrap())
            .ipv6("2600::1".parse().unwrap())
            .port(443);
        assert!(opts().parse(inst.clone()).unwrap().ip.unwrap().is_ipv4());
        let v6 = ParseOptions {
            prefer_ipv6: true,
            ..opts()
        };
        assert!(v6.parse(inst).unwrap().ip.unwrap().is_ipv6());
    }

    /// A dual-stack instance whose preferred address the policy refuses is reached
    /// at its other address when that one is permitted: it was skipped (no
    /// endpoint under an allow list of IPv6 networks alone).
    #[test]
    fn a_dual_stack_instance_is_reached_at_the_address_the_policy_permits() {
        let inst = Instance::new("i")
            .ipv4("10.0.0.1".parse().unwrap())
            .ipv6("2600::1".parse().unwrap())
            .port(443);
        let with = |policy: AddressPolicy, prefer_ipv6: bool| ParseOptions {
            policy,
            prefer_ipv6,
            ..opts()
        };
        let v6_only = with(
            AddressPolicy::default().allow("2600::/16".parse().unwrap()),
            false,
        );
        let ep = one(v6_only.parse(inst.clone()).unwrap());
        assert_eq!(ep.socket_addr(), Some("[2600::1]:443".parse().unwrap()));
        let no_v6 = with(
            AddressPolicy::default().deny("2600::/16".parse().unwrap()),
            true,
        );
        let ep = one(no_v6.parse(inst.clone()).unwrap());
        assert_eq!(ep.socket_addr(), Some("10.0.0.1:443".parse().unwrap()));
        // Both permitted: the preference decides; neither: skipped, naming the
        // preferred address.
        assert!(with(AddressPolicy::default(), true)
            .parse(inst.clone())
            .unwrap()
            .ip
            .unwrap()
            .is_ipv6());
        let neither = with(
            AddressPolicy::default().allow("192.168.0.0/16".parse().unwrap()),
            false,
        );
        let why = neither.parse(inst).unwrap_err();
        assert_eq!(why.1, SkipReason::RefusedByPolicy);
        assert!(why.0.contains("10.0.0.1"), "{why}");
    }

    #[test]
    fn cname_has_no_socket_addr() {
        let ep = one(opts()
            .parse(Instance::new("c").cname("api.example.com").port(443))
            .unwrap());
        assert_eq!(ep.socket_addr(), None);
        assert_eq!(ep.host(), Some("api.example.com"));
        assert_eq!(ep.port(), Some(443));
    }

    #[test]
    fn malformed_values_are_skipped() {
        let bad = [
            Instance::new("a")
                .attribute(ATTR_IPV4, "999.0.0.1")
                .port(80),
            Instance::new("b")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, "abc"),
            Instance::new("c")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, "70000"),
            Instance::new("d")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, "0"),
            Instance::new("e").attribute(ATTR_IPV6, "fe80::zz"),
            Instance::new("f").attribute("stage", "prod"),
            Instance::new("g").cname("bad host!"),
            Instance::new("h")
                .ipv4("169.254.169.254".parse().unwrap())
                .port(80),
            Instance::new("i").ipv6("fe80::1".parse().unwrap()).port(80),
        ];
        for inst in bad {
            let id = inst.id().to_owned();
            assert!(opts().parse(inst).is_err(), "{id} should be skipped");
        }
    }

    #[test]
    fn parse_all_keeps_the_good_ones() {
        let eps = opts().parse_all(
            "ns",
            "svc",
            vec![
                Instance::new("good")
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(1),
                Instance::new("bad").attribute(ATTR_PORT, "x"),
            ],
        );
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].instance_id(), "good");
    }

    /// An id listed twice (moto appends a re-registration) is one endpoint, the later
    /// entry, at the place the id first appeared: two would double its share of
    /// picks and let one `call` try it twice.
    #[test]
    fn an_instance_id_listed_twice_is_one_endpoint_the_later_entry() {
        let at = |id: &str, last: u8, port: u16| {
            Instance::new(id)
                .ipv4(Ipv4Addr::new(10, 0, 0, last))
                .port(port)
        };
        let eps = opts().parse_all(
            "ns",
            "svc",
            vec![
                at("a", 1, 80),
                at("b", 2, 80),
                at("a", 1, 80),
                at("a", 3, 81),
            ],
        );
        let got: Vec<_> = eps
            .iter()
            .map(|e| (e.instance_id().to_owned(), e.ip, e.port))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), Some(IpAddr::from([10, 0, 0, 3])), Some(81)),
                ("b".to_owned(), Some(IpAddr::from([10, 0, 0, 2])), Some(80)),
            ]
        );
        // The later entry decides, malformed or not: the instance is skipped.
        let eps = opts().parse_all(
            "ns",
            "svc",
            vec![at("a", 1, 80), Instance::new("a").attribute(ATTR_PORT, "x")],
        );
        assert!(eps.is_empty());
    }

    /// An instance without an id is a malformed registry entry: each one is skipped
    /// with a warning, never merged with the others into one endpoint.
    #[test]
    fn instances_without_an_id_are_skipped_not_merged() {
        let at = |id: &str, last: u8| {
            Instance::new(id)
                .ipv4(Ipv4Addr::new(10, 0, 0, last))
                .port(80)
        };
        let mut eps = Vec::new();
        let log = logged(|| {
            eps = opts().parse_all(
                "ns",
                "svc",
                vec![at("", 1), at("a", 2), at("", 3), at("", 4)],
            );
        });
        let ids: Vec<_> = eps.iter().map(|e| e.instance_id().to_owned()).collect();
        assert_eq!(ids, ["a"]);
        assert!(
            log.contains("skipping instance") && log.contains("no instance id"),
            "{log}"
        );
        let why = opts().parse(at("", 1)).map(|_| ()).unwrap_err();
        assert_eq!(why.1.label(), "no_instance_id");
    }

    #[test]
    fn default_port_fills_in() {
        let o = ParseOptions {
            default_port: Some(8080),
            ..opts()
        };
        let ep = o
            .parse(Instance::new("a").ipv4("10.0.0.1".parse().unwrap()))
            .unwrap();
        assert_eq!(ep.port, Some(8080));
    }

    fn cname(h: &str) -> Result<EndpointData, Skip> {
        opts().parse(Instance::new("c").cname(h).port(80))
    }

    #[test]
    fn cname_ip_literal_in_any_spelling_is_judged_as_that_address() {
        for h in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "169.254.43518",
            "169.254.169.254.",
            "0.0.0.0",
            "0",
            "[fe80::1]",
            "[fd00:ec2::254]",
            "[::ffff:169.254.169.254]",
            "::ffff:a9fe:a9fe",
        ] {
            assert!(cname(h).is_err(), "{h} must be refused");
            let alias = Instance::new("a").attribute(ATTR_ALIAS, h).port(80);
            assert!(opts().parse(alias).is_err(), "alias {h} must be refused");
        }
        // Permitted literals become IP endpoints: nothing resolves them again.
        let ep = one(cname("0x7f.1").unwrap());
        assert_eq!(ep.socket_addr(), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(ep.host(), None);
        let ep = one(cname("[::1]").unwrap());
        assert_eq!(ep.socket_addr(), Some("[::1]:80".parse().unwrap()));
        // Deny lists apply to literals too.
        let deny = ParseOptions {
            policy: AddressPolicy::default().deny("10.0.0.0/8".parse().unwrap()),
            ..opts()
        };
        assert!(deny
            .parse(Instance::new("d").cname("167772161").port(80))
            .is_err());
        // A name ending in a number that is no address is refused, as URL parsers do.
        for h in ["1.2.3.4.5", "10.0.0.256", "svc.123", "08"] {
            assert!(cname(h).is_err(), "{h} must be refused");
        }
        assert_eq!(
            one(cname("api.example.com.").unwrap()).host(),
            Some("api.example.com")
        );
    }

    #[test]
    fn ports_are_plain_digits_from_1_to_65535() {
        for bad in [
            "+80",
            "080",
            "0",
            "00",
            "-1",
            "65536",
            " 8 0",
            "8_0",
            "８０",
            "",
            "99999999999",
        ] {
            let inst = Instance::new("p")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, bad);
            assert!(opts().parse(inst).is_err(), "port {bad:?} must be refused");
        }
        for (good, want) in [("1", 1), ("80", 80), ("65535", 65535), (" 443 ", 443)] {
            let inst = Instance::new("p")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, good);
            assert_eq!(opts().parse(inst).unwrap().port, Some(want), "{good:?}");
        }
    }

    #[test]
    fn a_long_bad_value_is_cut_in_the_warning() {
        let long = "9".repeat(10_000);
        let why = opts()
            .parse(
                Instance::new("p")
                    .ipv4("10.0.0.1".parse().unwrap())
                    .attribute(ATTR_PORT, long),
            )
            .unwrap_err();
        assert!(why.0.len() < 200, "{why}");
        assert!(why.0.contains("(10000 bytes)"), "{why}");
    }

    #[test]
    fn a_bad_instance_is_warned_about_once_per_change() {
        let o = opts();
        let bad = |port: &str| {
            vec![Instance::new("b")
                .ipv4("10.0.0.1".parse().unwrap())
                .attribute(ATTR_PORT, port)]
        };
        let log = logged(|| {
            for _ in 0..4 {
                assert!(o.parse_all("ns", "svc", bad("+80")).is_empty());
            }
        });
        assert_eq!(log.matches("skipping instance").count(), 1, "{log}");
        // A changed value is a new warning; clones (one per cache) share the memory.
        let clone = o.clone();
        let log = logged(|| {
            o.parse_all("ns", "svc", bad("080"));
            clone.parse_all("ns", "svc", bad("080"));
            clone.parse_all("ns", "svc", bad("+80"));
        });
        assert_eq!(log.matches("skipping instance").count(), 1, "{log}");
        assert!(log.contains("080"), "{log}");
        // Another resolver's options warn on their own.
        let log = logged(|| {
            opts().parse_all("ns", "svc", bad("+80"));
        });
        assert_eq!(log.matches("skipping instance").count(), 1, "{log}");
    }
}
