//! The SRV records of an answer and their targets' addresses: from the additional
//! section where it has them, looked up otherwise; records that cannot be an
//! endpoint are skipped with a warning, once.

use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use super::lookup::{address_record, host_key, lookup_addresses, pick_families};
use super::lookup::{Addresses, Records, SrvAnswer, SrvRecord};
use super::DnsDiscovery;
use crate::error::{Error, ErrorKind};

impl DnsDiscovery {
    /// The SRV records of an answer, with their targets' addresses: from the
    /// additional section where it has them, looked up (concurrently) otherwise.
    pub(super) async fn resolve_srv(
        &self,
        client: &TokioResolver,
        name: &Name,
        lookup: Records,
    ) -> Result<SrvAnswer, Error> {
        let pref = self.opts.ip_preference;
        let chain_ttl = lookup.chain_ttl();
        let mut answer = SrvAnswer::default();
        let mut pending: Vec<(String, Name)> = Vec::new();
        for record in &lookup.answers {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
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
                ttl: record.ttl.min(chain_ttl),
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
            let extra = pick_families(extra, pref);
            if extra.is_empty() {
                pending.push((target, srv.target.clone()));
            } else {
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
                    Ok(Addresses::Found(addrs)) => answer
                        .targets
                        .extend(addrs.into_iter().map(|a| (target.clone(), a))),
                    Ok(Addresses::NoData(_) | Addresses::NxDomain) => {
                        if self.warned.first_time((name, &target, "no address")) {
                            tracing::warn!(name = %name, target = %target, "skipping SRV target without an address record");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(name = %name, target = %target, error = %e, "SRV target lookup failed");
                        transient = Some(e);
                    }
                }
            }
        }

        // Only records with an address are used; their TTLs set the answer's.
        answer
            .srv
            .retain(|s| answer.targets.iter().any(|(t, _)| *t == s.target));
        if answer.srv.is_empty()
            && let Some(e) = transient
        {
            // Every target failed for a reason that may pass: keep the last
            // good answer rather than report none.
            return Err(e);
        }
        answer.ttl = answer
            .srv
            .iter()
            .map(|s| s.ttl)
            .chain(answer.targets.iter().map(|(_, a)| a.ttl))
            .min();
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::instance::Instance;
    use crate::discover::{Discover, DiscoverRequest};

    /// An SRV record that cannot be an endpoint (port 0, a target without an
    /// address) is warned about once, not on every lookup: 4 lookups gave 4 warnings
    /// of each.
    #[test]
    fn unusable_srv_records_are_warned_about_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = crate::util::logged::logged(|| {
            rt.block_on(async {
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
        });
        assert_eq!(log.matches("with port 0").count(), 1, "{log}");
        assert_eq!(log.matches("without an address record").count(), 1, "{log}");
    }
}
