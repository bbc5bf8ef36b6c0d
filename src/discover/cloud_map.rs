//! `CloudMapDiscovery`: Cloud Map's DiscoverInstances and DiscoverInstancesRevision.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, OnceLock};

use aws_sdk_servicediscovery as sd;
use sd::config::endpoint::{DefaultResolver, EndpointFuture, Params, ResolveEndpoint};
use sd::config::interceptors::BeforeTransmitInterceptorContextMut;
use sd::config::retry::RetryConfig;
use sd::config::{ConfigBag, Intercept, RuntimeComponents};
use sd::types::HealthStatusFilter;

use super::{BoxFuture, Discover, DiscoverRequest, Discovered};
pub(crate) use crate::discover::aws_errors::map_error;
use crate::discover::health_filter::HealthFilter;
use crate::discover::instance::{HealthStatus, Instance};
use crate::error::{Error, ErrorKind};
use crate::util::warn_once::WarnOnce;

/// Reads instances from AWS Cloud Map's DiscoverInstances API.
///
/// Query parameters, optional parameters and the health filter are sent to the API,
/// which applies them; so is the owner account of a namespace shared from another
/// account (`OwnerAccount`, on DiscoverInstancesRevision too). A custom endpoint URL
/// is honoured for every operation, whether the SDK takes it from the `SdkConfig` or
/// one for Cloud Map alone (`AWS_ENDPOINT_URL_SERVICEDISCOVERY`, a profile's
/// `services` section): the SDK would otherwise send DiscoverInstances to `data-` +
/// the endpoint's host (`http://data-127.0.0.1:4566`), which does not resolve for
/// LocalStack, moto or a VPC endpoint, so with a custom endpoint the prefix is undone.
///
/// The SDK's own retries are turned off (one attempt per call): the resolver retries
/// each key's refreshes itself, with jittered exponential backoff, while it serves the
/// last good answer. The SDK's standard mode would otherwise make up to 3 attempts
/// of a throttled call, multiplying the load on a quota that is already spent.
/// The SDK's clock-skew correction still holds: a call refused because this
/// machine's clock is off teaches the client the registry's time, and the
/// resolver's retry of it is signed with that time.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{CloudMapDiscovery, Resolver};
///
/// let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk)).build()?;
/// let ep = resolver.resolve("shared", "logs").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CloudMapDiscovery {
    client: sd::Client,
    /// Where calls go, for error messages: the configured endpoint URL, or the
    /// regional default.
    endpoint: Arc<str>,
    /// The custom endpoint URL the SDK resolved for this client, noted at its first
    /// call (`NoteEndpoint`): it may come from the environment or a profile for
    /// Cloud Map alone, which `SdkConfig::endpoint_url` does not show.
    custom_url: Arc<OnceLock<String>>,
    /// A misconfiguration found by `new` (which cannot fail without breaking
    /// `Resolver::builder(CloudMapDiscovery::new(&sdk))`), reported by
    /// [`ResolverBuilder::build`](crate::ResolverBuilder::build) through
    /// [`Discover::validate`] and by every call.
    config_error: Option<Error>,
    /// Answers already warned about, so that a bad one is logged once, not on
    /// every refresh (as skipped instances are).
    warned: WarnOnce,
}

impl CloudMapDiscovery {
    /// A source using this SDK configuration (region, credentials, endpoint URL),
    /// with one attempt per call whatever its retry configuration says.
    ///
    /// A configuration that cannot work (no region, no credentials provider, an
    /// endpoint URL without `http://` or `https://`) is reported as
    /// [`Configuration`](ErrorKind::Configuration) by
    /// [`ResolverBuilder::build`](crate::ResolverBuilder::build).
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        // The custom endpoint is read where the SDK resolves it, not from `sdk`: an
        // endpoint URL for Cloud Map alone (`AWS_ENDPOINT_URL_SERVICEDISCOVERY`, a
        // profile's `services` section) is applied when the client is built, and
        // `sdk.endpoint_url()` does not show it.
        let custom_url = Arc::new(OnceLock::new());
        let config = client_config(sdk)
            .endpoint_resolver(NoteEndpoint::new(custom_url.clone()))
            .interceptor(KeepEndpointHost {
                url: custom_url.clone(),
            });
        let client = sd::Client::from_conf(config.build());
        let config_error = config_error(
            sdk.region().is_some(),
            sdk.credentials_provider().is_some(),
            sdk.endpoint_url(),
        );
        CloudMapDiscovery {
            endpoint: endpoint_of(sdk.endpoint_url(), sdk.region()),
            custom_url,
            client,
            config_error,
            warned: WarnOnce::default(),
        }
    }

    /// A source using an SDK client you built yourself. The `data-` host prefix is
    /// not undone for it: give its configuration a custom endpoint through
    /// [`new`](Self::new) instead. Its retry configuration is kept: each SDK retry is
    /// one more registry call, on top of the resolver's own (see [`new`](Self::new)).
    pub fn from_client(client: sd::Client) -> Self {
        // The client's configuration does not tell its credentials provider or
        // endpoint URL; only the region is checked.
        let region = client.config().region().cloned();
        let config_error = config_error(region.is_some(), true, None);
        CloudMapDiscovery {
            endpoint: endpoint_of(None, region.as_ref()),
            custom_url: Arc::new(OnceLock::new()),
            client,
            config_error,
            warned: WarnOnce::default(),
        }
    }
}

/// The SDK client configuration every registry client of this crate starts from:
/// the `SdkConfig`'s region, credentials and endpoint URL, with one attempt per call
/// (the crate retries itself, with jittered backoff). `CloudMapDiscovery` adds the
/// `data-` prefix fix on top; self-registration (`register/`) uses it as is.
pub(crate) fn client_config(sdk: &aws_config::SdkConfig) -> sd::config::Builder {
    let retry = sdk
        .retry_config()
        .cloned()
        .unwrap_or_else(RetryConfig::standard)
        .with_max_attempts(1);
    let config = sd::config::Builder::from(sdk).retry_config(retry);
    // The SDK client panics when built without a behavior version (an `SdkConfig`
    // made with `SdkConfig::builder()` has none): take the latest then.
    if sdk.behavior_version().is_none() {
        config.behavior_version(aws_config::BehaviorVersion::latest())
    } else {
        config
    }
}

/// The endpoint URL calls go to, for messages.
fn endpoint_of(url: Option<&str>, region: Option<&sd::config::Region>) -> Arc<str> {
    match (url, region) {
        (Some(url), _) => url.into(),
        (None, Some(region)) => {
            format!("https://data-servicediscovery.{region}.amazonaws.com").into()
        }
        (None, None) => "the default endpoint (no region)".into(),
    }
}

/// What makes this configuration unusable, if anything: checked without a network
/// call, so `build()` fails at once instead of the first resolve reporting an outage.
pub(crate) fn config_error(
    has_region: bool,
    has_credentials: bool,
    endpoint_url: Option<&str>,
) -> Option<Error> {
    let message = if !has_region {
        "no AWS region configured: set AWS_REGION (or a profile's region), or \
         SdkConfig::builder().region(..)"
            .to_owned()
    } else if !has_credentials {
        "no credentials provider in the SDK configuration: load it with \
         aws_config::load_defaults, or set .credentials_provider(..)"
            .to_owned()
    } else if let Some(url) = endpoint_url.filter(|u| !has_http_scheme(u)) {
        match url.split_once("://") {
            Some((scheme, _)) => format!(
                "endpoint URL `{url}` has the scheme `{scheme}`: use `http://` or `https://`"
            ),
            None => format!(
                "endpoint URL `{url}` has no scheme: write `http://{url}` or `https://{url}`"
            ),
        }
    } else {
        return None;
    };
    Some(Error::new(ErrorKind::Configuration, message))
}

/// Whether a URL starts with `http://` or `https://`, in any case: schemes are
/// case-insensitive (RFC 3986), and the SDK calls `HTTP://host` as `http://host`.
fn has_http_scheme(url: &str) -> bool {
    let starts = |prefix: &str| {
        url.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts("http://") || starts("https://")
}

impl CloudMapDiscovery {
    /// Where calls go, for messages: the custom endpoint the SDK resolved, if any.
    fn endpoint(&self) -> &str {
        self.custom_url.get().map_or(&self.endpoint, String::as_str)
    }
}

impl fmt::Debug for CloudMapDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudMapDiscovery").finish_non_exhaustive()
    }
}

fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

/// The SDK's endpoint resolver, noting the custom endpoint URL it is given (the
/// same for every call of a client) for `KeepEndpointHost` and messages. The
/// registry writer (`register/`) notes it too, for its messages.
#[derive(Debug)]
pub(crate) struct NoteEndpoint {
    inner: DefaultResolver,
    url: Arc<OnceLock<String>>,
}

impl NoteEndpoint {
    /// A resolver that notes the custom endpoint URL into `url`.
    pub(crate) fn new(url: Arc<OnceLock<String>>) -> Self {
        NoteEndpoint {
            inner: DefaultResolver::new(),
            url,
        }
    }
}

impl ResolveEndpoint for NoteEndpoint {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        if let Some(url) = params.endpoint() {
            self.url.get_or_init(|| url.to_owned());
        }
        ResolveEndpoint::resolve_endpoint(&self.inner, params)
    }
}

/// Undoes the SDK's `data-` host prefix for a custom endpoint (noted by
/// `NoteEndpoint` when the call's endpoint was resolved, before signing).
#[derive(Debug)]
struct KeepEndpointHost {
    url: Arc<OnceLock<String>>,
}

impl Intercept for KeepEndpointHost {
    fn name(&self) -> &'static str {
        "cloudmap_resolver::KeepEndpointHost"
    }

    // Before signing, so that the signature covers the host actually contacted.
    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), Box<dyn StdError + Send + Sync>> {
        let Some(host) = self.url.get().and_then(|url| host_of(url)) else {
            return Ok(());
        };
        let request = context.request_mut();
        let uri = request.uri();
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(());
        };
        if let Some(tail) = rest
            .strip_prefix("data-")
            .and_then(|r| r.strip_prefix(host))
        {
            let fixed = format!("{scheme}://{host}{tail}");
            request.set_uri(fixed)?;
        }
        Ok(())
    }
}

fn health_filter(h: HealthFilter) -> HealthStatusFilter {
    match h {
        HealthFilter::Healthy => HealthStatusFilter::Healthy,
        HealthFilter::Unhealthy => HealthStatusFilter::Unhealthy,
        HealthFilter::All => HealthStatusFilter::All,
        HealthFilter::HealthyOrElseAll => HealthStatusFilter::HealthyOrElseAll,
    }
}

fn instance_of(summary: &sd::types::HttpInstanceSummary) -> Option<Instance> {
    let id = summary.instance_id().filter(|s| !s.is_empty())?;
    let health = match summary.health_status() {
        None | Some(sd::types::HealthStatus::Healthy) => HealthStatus::Healthy,
        Some(sd::types::HealthStatus::Unhealthy) => HealthStatus::Unhealthy,
        Some(_) => HealthStatus::Unknown,
    };
    let mut inst = Instance::new(id).health(health);
    for (k, v) in summary.attributes().into_iter().flatten() {
        inst = inst.attribute(k.clone(), v.clone());
    }
    Some(inst)
}

/// The instances of an answer; one without an id is skipped, with a warning given
/// once per key rather than on every refresh.
fn instances_of(
    summaries: &[sd::types::HttpInstanceSummary],
    request: &DiscoverRequest,
    warned: &WarnOnce,
) -> Vec<Instance> {
    let mut without_id = false;
    let instances = summaries
        .iter()
        .filter_map(|s| {
            let inst = instance_of(s);
            without_id |= inst.is_none();
            inst
        })
        .collect();
    if without_id
        && warned.first_time((
            &request.namespace,
            &request.service,
            request.owner(),
            "without an id",
        ))
    {
        tracing::warn!(
            namespace = %request.namespace,
            owner_account = request.owner(),
            service = %request.service,
            "skipping instance without an id"
        );
    }
    instances
}

impl Discover for CloudMapDiscovery {
    fn validate(&self) -> Result<(), Error> {
        self.config_error.clone().map_or(Ok(()), Err)
    }

    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        Box::pin(async move {
            if let Some(err) = &self.config_error {
                return Err(err.clone());
            }
            let mut call = self
                .client
                .discover_instances()
                .namespace_name(&request.namespace)
                .service_name(&request.service)
                .health_status(health_filter(request.health))
                .max_results(request.max_results as i32)
                .set_owner_account(request.owner_account.clone());
            for (k, v) in &request.query {
                call = call.query_parameters(k, v);
            }
            for (k, v) in &request.optional {
                call = call.optional_parameters(k, v);
            }
            let out = call.send().await.map_err(|e| {
                map_error(
                    &format!("DiscoverInstances{}", request.owned_by()),
                    self.endpoint(),
                    e,
                )
            })?;
            let instances = instances_of(out.instances(), request, &self.warned);
            Ok(Discovered {
                instances,
                ttl: None,
                revision: out.instances_revision(),
            })
        })
    }

    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        Box::pin(async move {
            if let Some(err) = &self.config_error {
                return Err(err.clone());
            }
            let out = self
                .client
                .discover_instances_revision()
                .namespace_name(&request.namespace)
                .service_name(&request.service)
                .set_owner_account(request.owner_account.clone())
                .send()
                .await
                .map_err(|e| {
                    map_error(
                        &format!("DiscoverInstancesRevision{}", request.owned_by()),
                        self.endpoint(),
                        e,
                    )
                })?;
            Ok(out.instances_revision())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint URL without a scheme is told to add one; one with another
    /// scheme is told which schemes work (not to prefix a second one).
    #[test]
    fn endpoint_url_schemes_are_named() {
        let text = |url: &str| config_error(true, true, Some(url)).unwrap().to_string();
        assert!(text("127.0.0.1:5000").contains("has no scheme: write `http://127.0.0.1:5000`"));
        let ftp = text("ftp://127.0.0.1:1");
        assert!(ftp.contains("has the scheme `ftp`"), "{ftp}");
        assert!(!ftp.contains("http://ftp://"), "{ftp}");
        assert!(config_error(true, true, Some("https://x")).is_none());
        // Schemes are case-insensitive: `HTTP://` was refused as "the scheme `HTTP`".
        assert!(config_error(true, true, Some("HTTP://127.0.0.1:5000")).is_none());
        assert!(config_error(true, true, Some("Https://x")).is_none());
        assert!(config_error(true, true, Some("httpx://x")).is_some());
    }

    #[test]
    fn sdk_retries_are_off() {
        // The SDK's default (standard mode) makes 3 attempts per call.
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .retry_config(RetryConfig::standard())
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let source = CloudMapDiscovery::new(&sdk);
        let retry = source.client.config().retry_config().unwrap();
        assert_eq!(retry.max_attempts(), 1);
    }

    #[test]
    fn a_configuration_without_behavior_version_does_not_panic() {
        let sdk = aws_config::SdkConfig::builder().build();
        let source = CloudMapDiscovery::new(&sdk);
        assert_eq!(
            source.validate().unwrap_err().kind(),
            ErrorKind::Configuration
        );
    }

    /// An instance without an id is warned about once, not on every refresh: 4
    /// answers gave 4 warnings.
    #[test]
    fn an_instance_without_an_id_is_warned_about_once() {
        let summaries = [
            sd::types::HttpInstanceSummary::builder()
                .instance_id("a")
                .build(),
            sd::types::HttpInstanceSummary::builder()
                .attributes("AWS_INSTANCE_IPV4", "10.0.0.1")
                .build(),
        ];
        let req = DiscoverRequest::new("ns", "svc");
        let warned = WarnOnce::default();
        let log = crate::util::logged::logged(|| {
            for _ in 0..4 {
                let got = instances_of(&summaries, &req, &warned);
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].id(), "a");
            }
        });
        assert_eq!(log.matches("without an id").count(), 1, "{log}");
    }

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of("http://127.0.0.1:4566"), Some("127.0.0.1:4566"));
        assert_eq!(
            host_of("https://vpce-1.example.com/"),
            Some("vpce-1.example.com")
        );
        assert_eq!(host_of("http://u:p@h:1/x?y"), Some("h:1"));
        assert_eq!(host_of("http://"), None);
    }
}
