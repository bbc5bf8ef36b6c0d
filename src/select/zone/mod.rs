//! Zone-aware routing: [`ZoneAware`] (the caller's zone and how zones are read), the
//! resolver's [`ZoneContext`] (where the callers are, the pick counters) and the
//! per-answer zone table (`table.rs`) the picker reads.
//!
//! Envoy's rule (its `zone_aware_lb`): if the caller's zone holds at least the
//! callers' share of the admitted endpoints, every pick stays local; otherwise the
//! local zone takes (its endpoint share / its caller share) of the picks and the
//! residue goes to the zones whose endpoint share exceeds their caller share, in
//! proportion to that surplus. The table is computed when an answer is installed and
//! again when ejections or the callers' answer change (a stamp compared per pick:
//! two relaxed loads), never per pick; picking from it allocates nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::endpoint::EndpointData;
use crate::error::Error;
use crate::util::pad::CachePadded;
use crate::util::stripe::STRIPES;

mod http;
mod metadata;
pub(crate) mod table;

/// The attribute ECS writes on every instance it registers: the instance's
/// availability zone (`us-east-1a`).
pub const ATTR_AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";

/// Zone-aware routing: picks stay in the caller's availability zone while that zone
/// has the capacity, and the rest spill to zones with capacity to spare (Envoy's
/// rule; see the [zones guide](crate::guide::zones)). Set with
/// [`ResolverBuilder::zone_aware`](crate::ResolverBuilder::zone_aware).
///
/// - the zone of each endpoint is read from an instance attribute,
///   [`AVAILABILITY_ZONE`](ATTR_AVAILABILITY_ZONE) by default (what ECS writes);
/// - with fewer endpoints than [`min_endpoints`](Self::min_endpoints) (default 6,
///   Envoy's `min_cluster_size`), or an empty zone, zones are ignored;
/// - ejected and unhealthy endpoints are not capacity; an endpoint without the
///   attribute (or with an empty value) belongs to no zone and is reached only by
///   spill;
/// - without [`callers`](Self::callers) the callers are taken as spread evenly over
///   the zones that have endpoints.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery, ZoneAware};
///
/// let mut registry = StaticDiscovery::new();
/// for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"].iter().cycle().take(9).enumerate() {
///     registry = registry.with_instance("shared", "web", Instance::new(format!("i-{i}"))
///         .ipv4("127.0.0.1".parse().unwrap()).port(8000 + i as u16)
///         .attribute("AVAILABILITY_ZONE", *zone));
/// }
/// let resolver = Resolver::builder(registry)
///     .zone_aware(ZoneAware::new("us-east-1a"))
///     .build()?;
/// for _ in 0..10 {
///     let ep = resolver.resolve("shared", "web").await?;
///     assert_eq!(ep.attribute("AVAILABILITY_ZONE"), Some("us-east-1a"));
/// }
/// assert_eq!(resolver.stats().picks_local, 10);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneAware {
    zone: String,
    attribute: String,
    min_endpoints: usize,
    callers: Option<(String, String)>,
}

impl ZoneAware {
    /// The caller's zone, spelled as the registry's zone attribute spells it
    /// (`us-east-1a`; or a zone id such as `use1-az1` if that is what instances are
    /// registered with).
    pub fn new(zone: impl Into<String>) -> Self {
        ZoneAware {
            zone: zone.into(),
            attribute: ATTR_AVAILABILITY_ZONE.to_owned(),
            min_endpoints: 6,
            callers: None,
        }
    }

    /// The caller's zone from the environment: the ECS task metadata endpoint
    /// (`ECS_CONTAINER_METADATA_URI_V4` + `/task`, its `AvailabilityZone`), else EC2
    /// instance metadata (IMDSv2, `placement/availability-zone`; the base URL is
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` when set, as the AWS SDKs read it, else
    /// `http://[fd00:ec2::254]` with `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`;
    /// not asked at all with `AWS_EC2_METADATA_DISABLED=true`). Each
    /// request is bounded by a 1 s timeout. Chunked answers are read (the ECS agent
    /// sends a task's metadata over 2 KB chunked).
    ///
    /// # Errors
    ///
    /// [`Unavailable`](crate::ErrorKind::Unavailable) when neither answers in time or
    /// an answer has no zone; the message names what was tried.
    pub async fn from_environment() -> Result<ZoneAware, Error> {
        metadata::zone_from_environment(std::time::Duration::from_secs(1))
            .await
            .map(ZoneAware::new)
    }

    /// The instance attribute holding an endpoint's zone: 1 to 255 printable ASCII
    /// characters ([`InvalidInput`](crate::ErrorKind::InvalidInput) otherwise, when
    /// the resolver is built). Default: `AVAILABILITY_ZONE` (what ECS writes).
    pub fn attribute(mut self, name: impl Into<String>) -> Self {
        self.attribute = name.into();
        self
    }

    /// With fewer endpoints than this in an answer, zones are ignored (a small
    /// service's zones are too small to balance by). Default: 6.
    pub fn min_endpoints(mut self, n: usize) -> Self {
        self.min_endpoints = n;
        self
    }

    /// The caller's own service (namespace, service), discovered through the same
    /// resolver: how its instances are spread over zones is how callers are spread
    /// (Envoy's local cluster). Without it callers are taken as spread evenly over
    /// the zones that have endpoints; until its answer is known, or if it lists no
    /// instance in the caller's zone, the even spread is used. The spread is taken
    /// from the plain question alone (the resolver's health filter and owner
    /// account), never from a query of the service with attributes of its own.
    /// Names breaking Cloud Map's rules are
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) when the resolver is built.
    pub fn callers(mut self, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        self.callers = Some((namespace.into(), service.into()));
        self
    }

    /// The caller's zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The zone attribute's name.
    pub fn attribute_name(&self) -> &str {
        &self.attribute
    }

    /// Fewer endpoints than this: zones ignored.
    pub fn min_endpoint_count(&self) -> usize {
        self.min_endpoints
    }

    /// The callers' service, if set.
    pub fn callers_service(&self) -> Option<(&str, &str)> {
        self.callers.as_ref().map(|(n, s)| (n.as_str(), s.as_str()))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        crate::discover::names::check_attribute(&self.attribute, "")?;
        if let Some((ns, svc)) = &self.callers {
            crate::discover::names::check_namespace(ns)?;
            crate::discover::names::check_service(svc)?;
        }
        Ok(())
    }
}

/// How many callers are in each zone, from the callers' own service.
#[derive(Debug, PartialEq)]
pub(crate) struct CallerCounts(pub(crate) BTreeMap<Box<str>, u64>);

/// One stripe's pick counters.
#[derive(Debug, Default)]
struct ZoneStripe {
    local: AtomicU64,
    spilled: AtomicU64,
}

/// What every picker of a zone-aware resolver shares: the settings, the callers'
/// spread (once known) and the pick counters.
#[derive(Debug)]
pub(crate) struct ZoneContext {
    pub(crate) opts: ZoneAware,
    callers: ArcSwapOption<CallerCounts>,
    /// Bumped when the callers' spread changes: tables computed before are stale.
    generation: CachePadded<AtomicU64>,
    stripes: [CachePadded<ZoneStripe>; STRIPES],
}

impl ZoneContext {
    pub(crate) fn new(opts: ZoneAware) -> Self {
        ZoneContext {
            opts,
            callers: ArcSwapOption::empty(),
            generation: CachePadded::new(AtomicU64::new(0)),
            stripes: Default::default(),
        }
    }

    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn callers(&self) -> Option<Arc<CallerCounts>> {
        self.callers.load_full()
    }

    /// Takes the callers' spread from an answer of the callers' key (the plain
    /// question the cache holds, `cache/held.rs`); tables are recomputed on their
    /// next pick if it changed.
    pub(crate) fn set_callers(&self, items: &[EndpointData]) {
        let mut counts = BTreeMap::<Box<str>, u64>::new();
        for ep in items {
            if let Some(zone) = self.zone_of(ep) {
                *counts.entry(zone.into()).or_default() += 1;
            }
        }
        let counts = CallerCounts(counts);
        if self.callers.load().as_deref() == Some(&counts) {
            return;
        }
        self.callers.store(Some(Arc::new(counts)));
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The endpoint's zone. An empty attribute is no zone, as a missing one is (and
    /// as an empty caller's zone means zones are ignored): it must not form a zone
    /// of its own that takes a share of the callers.
    #[inline]
    pub(crate) fn zone_of<'a>(&self, ep: &'a EndpointData) -> Option<&'a str> {
        ep.attribute(&self.opts.attribute).filter(|z| !z.is_empty())
    }

    /// Counts one zone-routed pick on stripe `s`: local or spilled.
    #[inline]
    pub(crate) fn count(&self, s: usize, local: bool) {
        // A load and a store, as the warm path's other counters (`stats.rs`).
        let stripe = &self.stripes[s % STRIPES];
        let c = if local {
            &stripe.local
        } else {
            &stripe.spilled
        };
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// (local, spilled) picks so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.stripes.iter().fold((0, 0), |(l, sp), s| {
            (l + get(&s.local), sp + get(&s.spilled))
        })
    }
}
