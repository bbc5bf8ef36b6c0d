//! The merged answers: Route 53 answers at most 8 random records per query, so every
//! record seen is kept until its own TTL runs out and picks spread over the whole
//! service, not just the last 8.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// The merged answers of every name looked up.
#[derive(Debug, Default)]
pub(super) struct Merged {
    pub(super) names: HashMap<String, Seen>,
    /// When to drop the names whose records have all expired.
    next_sweep: Option<Instant>,
}

impl Merged {
    /// Every `every`, drops expired records and the names left without any.
    pub(super) fn sweep(&mut self, now: Instant, every: Duration) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.names.retain(|_, seen| {
            seen.expire(now);
            !seen.is_empty()
        });
        self.next_sweep = Some(until(now, every));
    }
}

/// Every record seen at one name, each until its own TTL runs out.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// A/AAAA records at the name.
    addresses: BTreeMap<IpAddr, Instant>,
    /// SRV records at the name, by (target, port).
    srv: BTreeMap<(String, u16), SrvSeen>,
    /// A/AAAA records of SRV targets, by (target, address).
    targets: BTreeMap<(String, IpAddr), Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SrvSeen {
    priority: u16,
    weight: u16,
    until: Instant,
}

const LOWEST_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const HIGHEST_IP: IpAddr = IpAddr::V6(Ipv6Addr::new(
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
));

pub(super) fn until(now: Instant, ttl: Duration) -> Instant {
    // `clamp_ttl` keeps TTLs under 137 years, so this cannot overflow in practice;
    // should it, the entry expires at once rather than the process panicking.
    now.checked_add(ttl).unwrap_or(now)
}

impl Seen {
    pub(super) fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.srv.is_empty() && self.targets.is_empty()
    }

    /// Adds or refreshes the answer's addresses; the newest TTL wins. With merging
    /// off the answer replaces what was seen.
    pub(super) fn merge_addresses(
        &mut self,
        addrs: &[AddrRecord],
        now: Instant,
        opts: &DnsOptions,
    ) {
        if !opts.merge_answers {
            self.addresses.clear();
        }
        for a in addrs {
            self.addresses
                .insert(a.ip, until(now, opts.clamp_ttl(a.ttl)));
        }
    }

    /// Drops the addresses of the families the name was just answered NODATA for:
    /// a random 8 of N proves nothing about the records left out, but NODATA says
    /// there is no record of the type at all, so what was merged of it is gone (as
    /// an empty answer empties the set), and a "then" preference does not serve
    /// the family it fell back from.
    pub(super) fn forget_families(&mut self, absent: &[RecordType]) {
        for t in absent {
            let v4 = *t == RecordType::A;
            self.addresses.retain(|ip, _| ip.is_ipv4() != v4);
        }
    }

    /// As [`merge_addresses`](Self::merge_addresses), for SRV records and their targets.
    pub(super) fn merge_srv(&mut self, answer: &SrvAnswer, now: Instant, opts: &DnsOptions) {
        if !opts.merge_answers {
            self.srv.clear();
            self.targets.clear();
        }
        // A target the answer says has no address has no endpoint now: what was
        // seen of it is not served on until its TTL (its instance is gone).
        for gone in &answer.gone {
            self.srv.retain(|(target, _), _| target != gone);
            self.targets.retain(|(target, _), _| target != gone);
        }
        // A target answered NODATA for a family has no address of it now, as
        // for a name's own addresses (`forget_families`).
        for (gone, types) in &answer.absent {
            for t in types {
                let v4 = *t == RecordType::A;
                self.targets
                    .retain(|(target, ip), _| target != gone || ip.is_ipv4() != v4);
            }
        }
        for s in &answer.srv {
            self.srv.insert(
                (s.target.clone(), s.port),
                SrvSeen {
                    priority: s.priority,
                    weight: s.weight,
                    until: until(now, opts.clamp_ttl(s.ttl)),
                },
            );
        }
        for (target, a) in &answer.targets {
            self.targets
                .insert((target.clone(), a.ip), until(now, opts.clamp_ttl(a.ttl)));
        }
    }

    /// Drops every record whose TTL has run out by `now`.
    /// How long an answer served from these records may be kept: until the first
    /// of them runs out (a record merged from an earlier answer may run out before
    /// the latest answer's TTL does).
    pub(super) fn fresh_for(&self, now: Instant) -> Option<Duration> {
        self.addresses
            .values()
            .copied()
            .chain(self.srv.values().map(|s| s.until))
            .chain(self.targets.values().copied())
            .min()
            .map(|first| first.saturating_duration_since(now))
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.addresses.retain(|_, until| *until > now);
        self.srv.retain(|_, s| s.until > now);
        self.targets.retain(|_, until| *until > now);
    }

    /// One instance per address, its id the address.
    pub(super) fn address_instances(&self, default_port: Option<u16>) -> Vec<Instance> {
        self.addresses
            .keys()
            .map(|ip| {
                let inst = with_ip(Instance::new(ip.to_string()), *ip);
                match default_port {
                    Some(p) => inst.port(p),
                    None => inst,
                }
            })
            .collect()
    }

    /// One instance per SRV record with an address, lowest priority first. Its id is
    /// the target's name, with `:port` when the target is seen on several ports and
    /// `/address` when it has several addresses of a family.
    pub(super) fn srv_instances(&self) -> Vec<Instance> {
        let mut ports: HashMap<&str, usize> = HashMap::new();
        for (target, _) in self.srv.keys() {
            *ports.entry(target.as_str()).or_default() += 1;
        }
        let mut out: Vec<(u16, Instance)> = Vec::new();
        for ((target, port), s) in &self.srv {
            let ips: Vec<IpAddr> = self
                .targets
                .range((target.clone(), LOWEST_IP)..=(target.clone(), HIGHEST_IP))
                .map(|((_, ip), _)| *ip)
                .collect();
            if ips.is_empty() {
                continue;
            }
            let id = if ports.get(target.as_str()).copied().unwrap_or(0) > 1 {
                format!("{target}:{port}")
            } else {
                target.clone()
            };
            let make = |id: String| {
                Instance::new(id)
                    .port(*port)
                    .attribute(ATTR_SRV_PRIORITY, s.priority.to_string())
                    .attribute(ATTR_SRV_WEIGHT, s.weight.to_string())
            };
            let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
            let v6 = ips.len() - v4;
            if v4 <= 1 && v6 <= 1 {
                // One address per family: one instance, as Cloud Map registers it.
                let inst = ips.iter().fold(make(id), |inst, ip| with_ip(inst, *ip));
                out.push((s.priority, inst));
            } else {
                for ip in ips {
                    out.push((s.priority, with_ip(make(format!("{id}/{ip}")), ip)));
                }
            }
        }
        out.sort_by_key(|(priority, _)| *priority);
        out.into_iter().map(|(_, inst)| inst).collect()
    }
}

pub(super) fn with_ip(inst: Instance, ip: IpAddr) -> Instance {
    match ip {
        IpAddr::V4(v4) => inst.ipv4(v4),
        IpAddr::V6(v6) => inst.ipv6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::dns::lookup::SrvRecord;
    use crate::discover::dns::tests::a;
    use crate::discover::instance::{ATTR_IPV4, ATTR_IPV6, ATTR_PORT};

    fn ids(v: &[Instance]) -> Vec<&str> {
        v.iter().map(Instance::id).collect()
    }

    #[test]
    fn merged_addresses_expire_after_their_own_ttl() {
        let opts = DnsOptions {
            min_ttl: Duration::ZERO,
            ..DnsOptions::default()
        };
        let t0 = Instant::now();
        let mut seen = Seen::default();
        seen.merge_addresses(&[a("10.0.0.1", 10), a("10.0.0.2", 10)], t0, &opts);
        let t5 = t0 + Duration::from_secs(5);
        seen.merge_addresses(&[a("10.0.0.2", 10), a("10.0.0.3", 10)], t5, &opts);
        seen.expire(t5);
        assert_eq!(
            ids(&seen.address_instances(None)),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            "the second answer adds to the first"
        );
        seen.expire(t0 + Duration::from_secs(10));
        assert_eq!(
            ids(&seen.address_instances(None)),
            ["10.0.0.2", "10.0.0.3"],
            "10.0.0.1 leaves when its own TTL runs out; 10.0.0.2 was refreshed"
        );
        seen.expire(t5 + Duration::from_secs(10));
        assert!(seen.is_empty());
    }

    /// An answer served from merged records is kept no longer than the first of
    /// them runs out: 10.0.0.1 (TTL 10 at t0) bounds the answer at t5 to 5 s, though
    /// the latest answer says 60 s.
    #[test]
    fn merged_answers_are_fresh_until_their_first_record_runs_out() {
        let opts = DnsOptions {
            min_ttl: Duration::ZERO,
            ..DnsOptions::default()
        };
        let t0 = Instant::now();
        let mut seen = Seen::default();
        assert_eq!(seen.fresh_for(t0), None);
        seen.merge_addresses(&[a("10.0.0.1", 10)], t0, &opts);
        let t5 = t0 + Duration::from_secs(5);
        seen.merge_addresses(&[a("10.0.0.2", 60)], t5, &opts);
        assert_eq!(seen.fresh_for(t5), Some(Duration::from_secs(5)));
        seen.expire(t0 + Duration::from_secs(10));
        assert_eq!(
            seen.fresh_for(t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(55))
        );
    }

    #[test]
    fn sweeps_forget_names_whose_records_expired() {
        let opts = DnsOptions::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        let mut merged = Merged::default();
        let mut short = Seen::default();
        short.merge_addresses(&[a("10.0.0.1", 10)], t0, &opts);
        let mut long = Seen::default();
        long.merge_addresses(&[a("10.0.0.2", 300)], t0, &opts);
        merged.names.insert("short.ns.".into(), short);
        merged.names.insert("long.ns.".into(), long);
        merged.sweep(t0, every);
        assert_eq!(merged.names.len(), 2);
        // Not due yet: nothing is swept even though `short` has expired.
        merged.sweep(t0 + Duration::from_secs(20), every);
        assert_eq!(merged.names.len(), 2);
        merged.sweep(t0 + every, every);
        assert!(merged.names.is_empty(), "both expired by the second sweep");
    }

    #[test]
    fn address_instances_carry_the_default_port() {
        let opts = DnsOptions::default();
        let mut seen = Seen::default();
        seen.merge_addresses(
            &[a("10.0.0.1", 60), a("fd00::1", 60)],
            Instant::now(),
            &opts,
        );
        let with = seen.address_instances(Some(8080));
        assert_eq!(with[0].attribute_value(ATTR_IPV4), Some("10.0.0.1"));
        assert_eq!(with[1].attribute_value(ATTR_IPV6), Some("fd00::1"));
        assert!(with
            .iter()
            .all(|i| i.attribute_value(ATTR_PORT) == Some("8080")));
        let without = seen.address_instances(None);
        assert!(without
            .iter()
            .all(|i| i.attribute_value(ATTR_PORT).is_none()));
    }

    fn srv(target: &str, port: u16, priority: u16, weight: u16) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_owned(),
            ttl: 60,
        }
    }

    #[test]
    fn srv_instances_ids_ports_and_attributes() {
        let opts = DnsOptions::default();
        let answer = SrvAnswer {
            srv: vec![
                srv("i-2.api.ns", 9090, 2, 5),
                srv("i-1.api.ns", 8080, 1, 1),
                srv("multi.api.ns", 1000, 1, 1),
                srv("multi.api.ns", 2000, 1, 1),
                srv("many.api.ns", 3000, 1, 1),
                srv("noaddr.api.ns", 4000, 1, 1),
            ],
            targets: vec![
                ("i-1.api.ns".into(), a("10.0.0.1", 60)),
                ("i-1.api.ns".into(), a("fd00::1", 60)),
                ("i-2.api.ns".into(), a("10.0.0.2", 60)),
                ("multi.api.ns".into(), a("10.0.0.3", 60)),
                ("many.api.ns".into(), a("10.0.0.4", 60)),
                ("many.api.ns".into(), a("10.0.0.5", 60)),
            ],
            ttl: Some(60),
            gone: Vec::new(),
            absent: Vec::new(),
        };
        let mut seen = Seen::default();
        seen.merge_srv(&answer, Instant::now(), &opts);
        let got = seen.srv_instances();
        assert_eq!(
            ids(&got),
            [
                "i-1.api.ns",
                "many.api.ns/10.0.0.4",
                "many.api.ns/10.0.0.5",
                "multi.api.ns:1000",
                "multi.api.ns:2000",
                "i-2.api.ns",
            ],
            "priority 1 first; a target without an address is left out"
        );
        let i1 = &got[0];
        assert_eq!(i1.attribute_value(ATTR_IPV4), Some("10.0.0.1"));
        assert_eq!(i1.attribute_value(ATTR_IPV6), Some("fd00::1"));
        assert_eq!(i1.attribute_value(ATTR_PORT), Some("8080"));
        let i2 = &got[5];
        assert_eq!(i2.attribute_value(ATTR_PORT), Some("9090"));
        assert_eq!(i2.attribute_value(ATTR_SRV_PRIORITY), Some("2"));
        assert_eq!(i2.attribute_value(ATTR_SRV_WEIGHT), Some("5"));
    }

    #[test]
    fn srv_records_leave_with_their_ttl_or_their_addresses() {
        let opts = DnsOptions::default();
        let t0 = Instant::now();
        let mut seen = Seen::default();
        let mut first = SrvAnswer {
            srv: vec![srv("a.ns", 80, 1, 1), srv("b.ns", 80, 1, 1)],
            targets: vec![
                ("a.ns".into(), a("10.0.0.1", 60)),
                ("b.ns".into(), a("10.0.0.2", 5)),
            ],
            ttl: Some(5),
            gone: Vec::new(),
            absent: Vec::new(),
        };
        first.srv[1].ttl = 60;
        seen.merge_srv(&first, t0, &opts);
        seen.expire(t0 + Duration::from_secs(5));
        assert_eq!(
            ids(&seen.srv_instances()),
            ["a.ns"],
            "b.ns's address expired, so it has no endpoint"
        );
        seen.expire(t0 + Duration::from_secs(60));
        assert!(seen.is_empty());
    }
}
