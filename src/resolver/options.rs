//! The resolver's plain settings, each with its default.

use crate::cache::CacheOptions;
use crate::call::budget::RetryBudgetOptions;
use crate::call::CallOptions;
use crate::discover::health_filter::HealthFilter;
use crate::endpoint::address_policy::AddressPolicy;
use crate::endpoint::health_check::HealthCheck;
use crate::endpoint::load::LoadOptions;
use crate::endpoint::outlier::OutlierOptions;
use crate::endpoint::ParseOptions;
use crate::select::slow_start::SlowStartOptions;
use crate::select::zone::ZoneAware;
use crate::select::Selection;

/// Settings of a [`Resolver`](crate::Resolver). Every field's doc states its default
/// and its bounds.
///
/// No value can make the crate panic: [`build`](crate::ResolverBuilder::build)
/// refuses an out-of-range value with [`InvalidInput`](crate::ErrorKind::InvalidInput),
/// and durations too long to add to a clock reading saturate to "never" (about 30
/// years), so `max_stale = Duration::MAX` serves stale answers forever.
///
/// Set the common ones through [`ResolverBuilder`](crate::ResolverBuilder)'s methods,
/// or all at once with [`ResolverBuilder::options`](crate::ResolverBuilder::options).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::ResolverOptions;
///
/// let mut opts = ResolverOptions::default();
/// opts.cache.ttl = Duration::from_secs(10);
/// opts.cache.capacity = 500;
/// assert_eq!(opts.cache.max_stale, Duration::from_secs(24 * 3600));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResolverOptions {
    /// How one endpoint is picked. Default: [`Selection::RoundRobin`].
    pub selection: Selection,
    /// Which instances by health. Default: [`HealthFilter::HealthyOrElseAll`].
    pub health_filter: HealthFilter,
    /// The AWS account owning the namespaces this resolver asks about, when they are
    /// shared with this account from another one (AWS RAM): sent as `OwnerAccount`
    /// on DiscoverInstances and DiscoverInstancesRevision; a
    /// [`Query::owner_account`](crate::Query::owner_account) overrides it. Must be
    /// 12 digits. Default: none (the caller's own account).
    pub owner_account: Option<String>,
    /// Which addresses may be handed out. Default: all but link-local, unspecified,
    /// multicast, broadcast and the EC2 service addresses (`fd00:ec2::/64`); see
    /// [`AddressPolicy`].
    pub address_policy: AddressPolicy,
    /// The port for instances registered without `AWS_INSTANCE_PORT`, 1 to 65535
    /// (0 is [`InvalidInput`](crate::ErrorKind::InvalidInput) when the resolver is
    /// built). Default: none (such endpoints have no
    /// [`socket_addr`](crate::Endpoint::socket_addr)).
    pub default_port: Option<u16>,
    /// Prefer `AWS_INSTANCE_IPV6` over `AWS_INSTANCE_IPV4` when an instance has both
    /// (the other is used when the [address policy](crate::AddressPolicy) refuses
    /// the preferred one and permits it). Default: false.
    pub prefer_ipv6: bool,
    /// The cache's settings: freshness, serving stale, refreshing, pacing the
    /// registry, memory bounds. Default: [`CacheOptions::default`] (5 s TTL, served
    /// stale up to 1 day, refreshed ahead, 10,000 keys).
    pub cache: CacheOptions,
    /// Seed for selection and jitter, for reproducible tests. Default: none (seeded
    /// from the operating system).
    pub seed: Option<u64>,
    /// Defaults of [`Resolver::call`](crate::Resolver::call): attempts, timeouts.
    /// Default: [`CallOptions::default`] (8 attempts, no timeouts).
    pub call: CallOptions,
    /// Passive outlier detection. Default: [`OutlierOptions::default`] (eject after
    /// 5 consecutive failures for 30 s, growing to 300 s, at most half the endpoints).
    pub outlier: OutlierOptions,
    /// The retry budget shared by the resolver's calls. Default:
    /// [`RetryBudgetOptions::default`] (20% extra attempts plus 10 retries a second).
    pub retry_budget: RetryBudgetOptions,
    /// The budget of hedges ([`Hedge`](crate::Hedge)), apart from the retry budget:
    /// hedges ≤ `ratio` of hedged calls (each earns its share when it starts) +
    /// `min_per_second` a second over `window`.
    /// Default: [`RetryBudgetOptions::hedging`] (5% of calls plus 1 a second, over
    /// 10 s).
    pub hedge_budget: RetryBudgetOptions,
    /// Settings of [`Selection::LeastLoaded`]. Default: [`LoadOptions::default`]
    /// (10 s decay, 30 ms before the first sample, failures count as 1 s).
    pub load: LoadOptions,
    /// Slow start of endpoints that join a serving key, for every selection.
    /// Default: [`SlowStartOptions::default`] (30 s, linear, from 10%).
    pub slow_start: SlowStartOptions,
    /// With feature `metrics`: the per-endpoint series (attempts, endpoints by
    /// state) also carry an `endpoint` label, the instance id. A series per endpoint
    /// is affordable for small fleets only; off, every series is labelled by
    /// namespace and service at most. Default: `false`.
    pub metrics_endpoint_label: bool,
    /// An active health check of the endpoints of the keys in use, from the
    /// background (run on a tokio runtime: the one the resolver is built in, else
    /// the one of its first load, and again a later load's or refresh's once that
    /// runtime has shut down).
    /// Default: none (endpoints are judged by requests only).
    pub health_check: Option<HealthCheck>,
    /// Zone-aware routing: picks stay in the caller's availability zone while it
    /// has the capacity (Envoy's rule); see [`ZoneAware`]. Default: none (every
    /// zone alike).
    pub zone_aware: Option<ZoneAware>,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            selection: Selection::RoundRobin,
            health_filter: HealthFilter::HealthyOrElseAll,
            owner_account: None,
            address_policy: AddressPolicy::default(),
            default_port: None,
            prefer_ipv6: false,
            cache: CacheOptions::default(),
            seed: None,
            call: CallOptions::default(),
            outlier: OutlierOptions::default(),
            retry_budget: RetryBudgetOptions::default(),
            hedge_budget: RetryBudgetOptions::hedging(),
            load: LoadOptions::default(),
            slow_start: SlowStartOptions::default(),
            metrics_endpoint_label: false,
            health_check: None,
            zone_aware: None,
        }
    }
}

impl ResolverOptions {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        self.cache.validate()?;
        if let Some(owner) = &self.owner_account {
            crate::discover::names::check_owner_account(owner)?;
        }
        if self.default_port == Some(0) {
            // Nothing can connect to port 0; a registered port 0 is skipped as
            // malformed, so a default one must not put it back on every endpoint.
            return Err(crate::Error::invalid(
                "default port 0 cannot be connected to: use 1 to 65535",
            ));
        }
        if let Selection::WeightedRandom { attribute } = &self.selection {
            crate::discover::names::check_attribute(attribute, "")?;
        }
        self.call.validate()?;
        self.hedge_budget.validate("hedge_budget")?;
        self.outlier.validate()?;
        self.load.validate()?;
        self.slow_start.validate()?;
        if let Some(check) = &self.health_check {
            check.validate()?;
        }
        if let Some(zones) = &self.zone_aware {
            zones.validate()?;
        }
        self.retry_budget.validate("retry_budget")
    }

    /// How answers become endpoints: the address policy and the port rules.
    pub(crate) fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            policy: self.address_policy.clone(),
            default_port: self.default_port,
            prefer_ipv6: self.prefer_ipv6,
            ..ParseOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The field names of a struct, read from its pretty `Debug` (the lines at the
    /// first indent), so that a field added later is checked without being listed
    /// here.
    fn fields(debug: &str) -> Vec<String> {
        debug
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("    ")?;
                let (name, _) = rest.split_once(": ")?;
                let ident = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                ident.then(|| name.to_owned())
            })
            .collect()
    }

    /// The options table: `src/guide/options.md` where it exists, else the README's
    /// "Options and defaults" section. Every backticked name in a row's first cell
    /// counts, and so does the struct part of `call.max_attempts`.
    fn table_names() -> BTreeSet<String> {
        let root = env!("CARGO_MANIFEST_DIR");
        let text = match std::fs::read_to_string(format!("{root}/src/guide/options.md")) {
            Ok(guide) => guide,
            Err(_) => {
                let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
                let start = readme.find("## Options and defaults").unwrap();
                let rest = &readme[start + 3..];
                rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
            }
        };
        let mut names = BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap_or_default();
            for name in cell.split('`').skip(1).step_by(2) {
                names.insert(name.to_owned());
                if let Some((owner, _)) = name.split_once('.') {
                    names.insert(owner.to_owned());
                }
            }
        }
        names
    }

    /// A default port of 0 is refused when the resolver is built: it handed out
    /// endpoints at `ip:0`, which nothing can connect to (a registered port 0 is
    /// skipped as malformed), and a DNS source's made every A/AAAA record one.
    #[test]
    fn a_default_port_of_0_is_invalid_input() {
        use crate::{DnsDiscovery, ErrorKind, Resolver, StaticDiscovery};
        let e = Resolver::builder(StaticDiscovery::new())
            .default_port(0)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("default port"), "{e}");
        let dns = DnsDiscovery::with_name_servers(["127.0.0.1:53".parse().unwrap()]);
        let e = Resolver::builder(dns.default_port(0)).build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("default port"), "{e}");
        for port in [1, 65535] {
            assert!(Resolver::builder(StaticDiscovery::new())
                .default_port(port)
                .build()
                .is_ok());
        }
    }

    /// Each bound the option docs state is the one `build()` holds: the value just
    /// outside it is `InvalidInput`, the value at it is accepted.
    #[test]
    fn each_documented_bound_is_refused_outside_and_accepted_at_its_edge() {
        use std::time::Duration;

        use crate::{ErrorKind, Resolver, StaticDiscovery};
        type Set = fn(&mut ResolverOptions);
        let refused: [(&str, Set); 18] = [
            ("capacity 0", |o| o.cache.capacity = 0),
            ("backoff_base 0", |o| o.cache.backoff_base = Duration::ZERO),
            ("consecutive_failures 0", |o| {
                o.outlier.consecutive_failures = 0
            }),
            ("base_ejection_time 0", |o| {
                o.outlier.base_ejection_time = Duration::ZERO
            }),
            ("max_ejection_time < base", |o| {
                o.outlier.max_ejection_time =
                    o.outlier.base_ejection_time - Duration::from_millis(1)
            }),
            ("failure_percentage 0", |o| {
                o.outlier.failure_percentage = Some(0.0)
            }),
            ("failure_percentage > 1", |o| {
                o.outlier.failure_percentage = Some(1.01)
            }),
            ("min_requests 0", |o| o.outlier.min_requests = 0),
            ("interval 0", |o| o.outlier.interval = Duration::ZERO),
            ("retry ratio NaN", |o| o.retry_budget.ratio = f64::NAN),
            ("retry ratio < 0", |o| o.retry_budget.ratio = -0.1),
            ("retry window < 10 ms", |o| {
                o.retry_budget.window = Duration::from_millis(9)
            }),
            ("hedge window < 10 ms", |o| {
                o.hedge_budget.window = Duration::from_millis(9)
            }),
            ("attempt_timeout 0", |o| {
                o.call.attempt_timeout = Some(Duration::ZERO)
            }),
            ("health path without /", |o| {
                o.health_check = Some(HealthCheck::http("healthz"))
            }),
            ("health host empty", |o| {
                o.health_check = Some(HealthCheck::http("/healthz").host(""))
            }),
            ("zone attribute empty", |o| {
                o.zone_aware = Some(ZoneAware::new("us-east-1a").attribute(""))
            }),
            ("callers' service malformed", |o| {
                o.zone_aware = Some(ZoneAware::new("us-east-1a").callers("shared", "a b"))
            }),
        ];
        let accepted: [(&str, Set); 7] = [
            ("capacity 1", |o| o.cache.capacity = 1),
            ("max_ejection_time = base", |o| {
                o.outlier.max_ejection_time = o.outlier.base_ejection_time
            }),
            ("failure_percentage 1", |o| {
                o.outlier.failure_percentage = Some(1.0)
            }),
            ("min_requests 1", |o| o.outlier.min_requests = 1),
            ("retry ratio 0", |o| o.retry_budget.ratio = 0.0),
            ("retry window 10 ms", |o| {
                o.retry_budget.window = Duration::from_millis(10)
            }),
            ("health counts 1", |o| {
                o.health_check = Some(HealthCheck::tcp().unhealthy_after(1).healthy_after(1))
            }),
        ];
        let build = |set: Set| {
            let mut opts = ResolverOptions::default();
            set(&mut opts);
            Resolver::builder(StaticDiscovery::new())
                .options(opts)
                .build()
        };
        for (what, set) in refused {
            let e = build(set)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        }
        for (what, set) in accepted {
            assert!(build(set).is_ok(), "{what}: refused");
        }
    }

    #[test]
    fn every_option_has_a_setter_of_its_name_and_a_row_in_the_table() {
        let builder = include_str!("builder.rs");
        let has_setter = |name: &str| builder.contains(&format!("pub fn {name}("));
        let table = table_names();
        let top = fields(&format!("{:#?}", ResolverOptions::default()));
        let cache = fields(&format!("{:#?}", CacheOptions::default()));
        assert!(top.len() > 10 && cache.len() > 10, "{top:?} {cache:?}");
        let mut missing = Vec::new();
        for name in &top {
            if !has_setter(name) {
                missing.push(format!("no ResolverBuilder::{name}"));
            }
            // The cache's settings have rows of their own, checked below.
            if name != "cache" && !table.contains(name) {
                missing.push(format!("no row for `{name}`"));
            }
        }
        for name in &cache {
            if !table.contains(name) && !table.contains(&format!("cache.{name}")) {
                missing.push(format!("no row for cache setting `{name}`"));
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
