//! The SRV records of an answer and their targets' addresses: from the additional
//! section where it has them, looked up otherwise; records that cannot be an
//! endpoint are skipped with a warning, once; a target whose lookup fails is warned
//! about once per run of failures.

use hickory_resolver::proto::rr::{Name, RData};

use super::lookup::{
    additionals_suffice, address_record, host_key, lookup_addresses, pick_families,
};
use super::lookup::{Addresses, Answer, Client, Records, SrvAnswer, SrvRecord};
use super::DnsDiscovery;
use crate::error::{Error, ErrorKind};

/// What a failing target lookup's warning is remembered as, until the target answers.
const FAILING: &str = "lookup failed";

impl DnsDiscovery {
    /// The SRV records of an answer, with their targets' addresses: from the
    /// additional section where it has them, looked up (concurrently) otherwise.
    /// An answer none of whose records can be an endpoint is [`Answer::Empty`].
    pub(super) async fn resolve_srv(
        &self,
        client: &Client,
        name: &Name,
        lookup: Records,
    ) -> Result<Answer, Error> {
        let pref = self.opts.ip_preference;
        let chain_ttl = lookup.chain_ttl();
        let mut answer = SrvAnswer::default();
        // The shortest TTL of every SRV record, usable or not: how long an answer
        // without a usable one holds.
        let mut unusable_ttl: Option<u32> = None;
        let mut pending: Vec<(String, Name)> = Vec::new();
        for record in &lookup.answers {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let ttl = record.ttl.min(chain_ttl);
            unusable_ttl = Some(unusable_ttl.map_or(ttl, |t| t.min(ttl)));
            let target = host_key(&srv.target);
            if srv.target.is_root() {
                tracing::debug!(name = %name, "SRV target \".\": service not offered there");
                continue;
            }
            if srv.port == 0 {
                if self.warned.first_time((name, &target, "port 0")) {
                    tracing::warn!(name = %name, target = %target, "skipping SRV record with port 0");
                }
                continue;
            }
            answer.srv.push(SrvRecord {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: target.clone(),
                ttl,
            });
            if answer.targets.iter().any(|(t, _)| *t == target)
                || pending.iter().any(|(t, _)| *t == target)
            {
                continue;
            }
            let extra: Vec<_> = lookup
                .additionals
                .iter()
                .filter(|r| r.name == srv.target)
                .filter_map(address_record)
                .collect();
            if !additionals_suffice(&extra, pref) {
                pending.push((target, srv.target.clone()));
            } else {
                let extra = pick_families(extra, pref);
                answer
                    .targets
                    .extend(extra.into_iter().map(|a| (target.clone(), a)));
            }
        }

        let mut transient = None;
        if !pending.is_empty() {
            let mut tasks = tokio::task::JoinSet::new();
            for (target, target_name) in pending {
                let client = client.clone();
                tasks.spawn(async move {
                    let found = lookup_addresses(&client, &target_name, pref).await;
                    (target, found)
                });
            }
            while let Some(joined) = tasks.join_next().await {
                let (target, found) = match joined {
                    Ok(done) => done,
                    Err(e) => {
                        transient = Some(Error::with_source(
                            ErrorKind::Unavailable,
                            "SRV target lookup did not finish",
                            e,
                        ));
                        continue;
                    }
                };
                match found {
                    Ok(Addresses::Found(addrs, absent)) => {
                        // The target answers: a later failure starts a new run.
                        self.warned.forget((name, &target, FAILING));
                        if !absent.is_empty() {
                            answer.absent.push((target.clone(), absent));
                        }
                        answer
                            .targets
                            .extend(addrs.into_iter().map(|a| (target.clone(), a)));
                    }
                    Ok(Addresses::NoData(_) | Addresses::NxDomain) => {
                        if self.warned.first_time((name, &target, "no address")) {
                            tracing::warn!(name = %name, target = %target, "skipping SRV target without an address record");
                        }
                        answer.gone.push(target);
                    }
                    Err(e) => {
                        // Once per run of failures, not on every refresh (every
                        // backoff delay while it lasts): the cache tells the key's
                        // own staleness once too (`cache/stale_log.rs`).
                        if self.warned.first_time((name, &target, FAILING)) {
                            tracing::warn!(name = %name, target = %target, error = %e, "SRV target lookup failed");
                        }
                        transient = Some(e);
                    }
                }
            }
        }

        // Only records with an address are used; their TTLs set the answer's.
        answer
            .srv
            .retain(|s| answer.targets.iter().any(|(t, _)| *t == s.target));
        if answer.srv.is_empty() {
            if let Some(e) = transient {
                // Every target failed for a reason that may pass: keep the last
                // good answer rather than report none.
                return Err(e);
            }
            // Every record says the service has no endpoint there (target ".",
            // port 0, a target without an address): as an empty answer, so what
            // was merged from earlier answers is not served on until its TTL.
            return Ok(Answer::Empty(unusable_ttl));
        }
        answer.ttl = answer
            .srv
            .iter()
            .map(|s| s.ttl)
            .chain(answer.targets.iter().map(|(_, a)| a.ttl))
            .min();
        Ok(Answer::Srv(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::dns::IpPreference;
    use crate::discover::instance::Instance;
    use crate::discover::{Discover, DiscoverRequest, Discovered};
    use crate::util::lock::lock;
    use std::time::Duration;

    /// An SRV record that cannot be an endpoint (port 0, a target without an
    /// address) is warned about once, not on every lookup: 4 lookups gave 4 warnings
    /// of each.
    #[test]
    fn unusable_srv_records_are_warned_about_once() {
        let log = super::super::tests::logged_alone(async {
            let server = test_support::dns::DnsServer::start().await;
            let name = "api.prod.internal";
            server.add_srv(name, 1, 1, 8080, "i-1.api.prod.internal", 60);
            server.add_a("i-1.api.prod.internal", "10.0.0.1", 60);
            server.add_srv(name, 1, 1, 0, "i-2.api.prod.internal", 60);
            server.add_a("i-2.api.prod.internal", "10.0.0.2", 60);
            server.add_srv(name, 1, 1, 8080, "i-3.api.prod.internal", 60);
            server.add_empty_name("i-3.api.prod.internal");
            let dns = DnsDiscovery::with_name_servers([server.addr]);
            let req = DiscoverRequest::new("prod.internal", "api");
            for _ in 0..4 {
                let found = dns.discover(&req).await.unwrap();
                let ids: Vec<_> = found.instances.iter().map(Instance::id).collect();
                assert_eq!(ids, ["i-1.api.prod.internal"]);
            }
        });
        assert_eq!(log.matches("with port 0").count(), 1, "{log}");
        assert_eq!(log.matches("without an address record").count(), 1, "{log}");
    }

    /// A target whose lookup fails is warned about once per run of failures, not on
    /// every lookup, and again once it answered and fails anew. Before: 4 failed
    /// lookups gave 4 warnings; now 1, and a second run 1 more.
    #[test]
    fn a_failing_target_is_warned_about_once_per_run() {
        let log = super::super::tests::logged_alone(async {
            let server = test_support::dns::DnsServer::start().await;
            server.set_additional(false);
            server.set_chase(true);
            let (name, bad) = ("api.prod.internal", "i-2.api.prod.internal");
            server.add_srv(name, 1, 1, 8080, "i-1.api.prod.internal", 60);
            server.add_a("i-1.api.prod.internal", "10.0.0.1", 60);
            server.add_srv(name, 1, 1, 8080, bad, 60);
            // An alias loop: its lookup fails (not an answer of no address).
            server.add_cname(bad, "loop.api.prod.internal", 60);
            server.add_cname("loop.api.prod.internal", bad, 60);
            let dns = DnsDiscovery::with_name_servers([server.addr]);
            let req = DiscoverRequest::new("prod.internal", "api");
            let run = |n| {
                let (dns, req) = (&dns, &req);
                async move {
                    for _ in 0..n {
                        dns.discover(req).await.unwrap();
                    }
                }
            };
            run(4).await;
            server.clear(bad, test_support::dns::RecordType::CNAME);
            server.add_a(bad, "10.0.0.2", 60);
            run(1).await;
            server.clear(bad, test_support::dns::RecordType::A);
            server.add_cname(bad, "loop.api.prod.internal", 60);
            run(4).await;
        });
        assert_eq!(log.matches("SRV target lookup failed").count(), 2, "{log}");
    }

    /// An SRV record whose target the answer says has no address (the instance's
    /// A record gone) ends what was merged of that target before, as its records'
    /// TTLs would: the registry has said it has no endpoint there. Before, i-2 was
    /// served on for the rest of its 60 s TTL (2 instances); now 1.
    #[test]
    fn a_target_answered_without_an_address_leaves_the_merged_set() {
        super::super::tests::on_shared_servers(async {
            let server = test_support::dns::DnsServer::start().await;
            let name = "api.prod.internal";
            for (target, ip) in [
                ("i-1.api.prod.internal", "10.0.0.1"),
                ("i-2.api.prod.internal", "10.0.0.2"),
            ] {
                server.add_srv(name, 1, 1, 8080, target, 60);
                server.add_a(target, ip, 60);
            }
            let dns = DnsDiscovery::with_name_servers([server.addr]);
            let req = DiscoverRequest::new("prod.internal", "api");
            let ids = |found: Discovered| -> Vec<String> {
                found.instances.iter().map(|i| i.id().to_owned()).collect()
            };
            assert_eq!(ids(dns.discover(&req).await.unwrap()).len(), 2);
            server.clear("i-2.api.prod.internal", test_support::dns::RecordType::A);
            server.add_empty_name("i-2.api.prod.internal");
            assert_eq!(
                ids(dns.discover(&req).await.unwrap()),
                ["i-1.api.prod.internal"]
            );
        });
    }

    /// An SRV target whose address changed family (its A record replaced by an
    /// AAAA record) is reached at its new address: the answer that the target has
    /// no A record ends what was merged of its IPv4 address. Before, with
    /// `Ipv4ThenIpv6`, the instance kept 10.0.0.1 for the rest of its 60 s TTL.
    #[test]
    fn a_target_answered_nodata_for_a_family_leaves_the_merged_set() {
        super::super::tests::on_shared_servers(async {
            let server = test_support::dns::DnsServer::start().await;
            // Targets looked up, not read from the additional section.
            server.set_additional(false);
            let (name, target) = ("api.prod.internal", "i-1.api.prod.internal");
            server.add_srv(name, 1, 1, 8080, target, 60);
            server.add_a(target, "10.0.0.1", 60);
            let dns = DnsDiscovery::with_name_servers([server.addr])
                .ip_preference(IpPreference::Ipv4ThenIpv6);
            let req = DiscoverRequest::new("prod.internal", "api");
            let addresses = |found: Discovered| -> Vec<(Option<String>, Option<String>)> {
                found
                    .instances
                    .iter()
                    .map(|i| {
                        let attr = |k: &str| i.attribute_value(k).map(str::to_owned);
                        (attr("AWS_INSTANCE_IPV4"), attr("AWS_INSTANCE_IPV6"))
                    })
                    .collect()
            };
            let first = addresses(dns.discover(&req).await.unwrap());
            assert_eq!(first, [(Some("10.0.0.1".to_owned()), None)]);
            server.clear(target, test_support::dns::RecordType::A);
            server.add_a(target, "fd00::1", 60);
            let after = addresses(dns.discover(&req).await.unwrap());
            assert_eq!(after, [(None, Some("fd00::1".to_owned()))]);
        });
    }

    /// An SRV answer none of whose records can be an endpoint (every target ".",
    /// every port 0, every target without an address) says the service has no
    /// endpoint now, as an empty answer does: what was merged from earlier answers
    /// is not served on. Before, i-1 (seen with a 60 s TTL) was served on for the
    /// rest of its TTL, the answer cached for 60 s; now 0 instances, cached for the
    /// unusable records' 30 s.
    #[test]
    fn an_srv_answer_of_unusable_records_empties_the_merged_set() {
        super::super::tests::on_shared_servers(async {
            const NAME: &str = "api.prod.internal";
            const TARGET: &str = "i-1.api.prod.internal";
            let (name, target) = (NAME, TARGET);
            type Make = fn(&test_support::dns::DnsServer);
            let unusable: [(&str, Make); 3] = [
                ("target \".\"", |s| s.add_srv(NAME, 1, 1, 8080, ".", 30)),
                ("port 0", |s| s.add_srv(NAME, 1, 1, 0, TARGET, 30)),
                ("a target without an address", |s| {
                    s.clear(TARGET, test_support::dns::RecordType::A);
                    s.add_empty_name(TARGET);
                    s.add_srv(NAME, 1, 1, 8080, TARGET, 30);
                }),
            ];
            for (what, make_unusable) in unusable {
                let server = test_support::dns::DnsServer::start().await;
                server.add_srv(name, 1, 1, 8080, target, 60);
                server.add_a(target, "10.0.0.1", 60);
                let dns = DnsDiscovery::with_name_servers([server.addr]);
                let req = DiscoverRequest::new("prod.internal", "api");
                let found = dns.discover(&req).await.unwrap();
                assert_eq!(found.instances.len(), 1, "{what}");

                server.clear(name, test_support::dns::RecordType::SRV);
                make_unusable(&server);
                let found = dns.discover(&req).await.unwrap();
                let ids: Vec<_> = found.instances.iter().map(Instance::id).collect();
                assert_eq!(ids, Vec::<&str>::new(), "{what}");
                assert_eq!(found.ttl, Some(Duration::from_secs(30)), "{what}");
                assert!(lock(&dns.seen).names.is_empty(), "{what}");
            }
        });
    }

    /// A family missing from the additional section proves nothing (a server may add
    /// one family's records only), so a target is looked up unless the section
    /// holds what the preference asks for. Before, with only the A record added,
    /// `Ipv6ThenIpv4` served the target's IPv4 address and `Ipv4AndIpv6` missed its
    /// IPv6 one (1 address of 2); now fd00::1, and both.
    #[test]
    fn additionals_missing_a_family_the_preference_asks_for_are_looked_up() {
        use crate::discover::dns::IpPreference;
        use crate::discover::instance::{ATTR_IPV4, ATTR_IPV6};
        use std::net::IpAddr;
        super::super::tests::on_shared_servers(async {
            let server = test_support::dns::DnsServer::start().await;
            let target = "i-1.api.prod.internal";
            server.add_srv("api.prod.internal", 1, 1, 8080, target, 60);
            server.add_a(target, "10.0.0.1", 60);
            server.add_a(target, "fd00::1", 60);
            server.set_additional_types(&[test_support::dns::RecordType::A]);
            let req = DiscoverRequest::new("prod.internal", "api");
            let ips = |found: Discovered| -> Vec<IpAddr> {
                found
                    .instances
                    .iter()
                    .flat_map(|i| {
                        [ATTR_IPV4, ATTR_IPV6]
                            .into_iter()
                            .filter_map(|k| i.attribute_value(k)?.parse().ok())
                    })
                    .collect()
            };
            for (pref, want) in [
                (IpPreference::Ipv6ThenIpv4, vec!["fd00::1"]),
                (IpPreference::Ipv4AndIpv6, vec!["10.0.0.1", "fd00::1"]),
                (IpPreference::Ipv4ThenIpv6, vec!["10.0.0.1"]),
            ] {
                let dns = DnsDiscovery::with_name_servers([server.addr]).ip_preference(pref);
                let got = ips(dns.discover(&req).await.unwrap());
                let want: Vec<IpAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
                assert_eq!(got, want, "{pref:?}");
            }
            // The A record in the additional section is enough for IPv4 first: no
            // lookup of the target.
            assert_eq!(server.queries(target, test_support::dns::RecordType::A), 1);
        });
    }
}
