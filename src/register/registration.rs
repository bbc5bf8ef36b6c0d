//! `Registration`: the builder that puts this process's instance into the registry.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::attributes::{check_attributes, check_instance_id, ATTR_INIT_HEALTH};
use super::lookup::{service_ids, Owner};
use aws_sdk_servicediscovery as sd;
use sd::config::http::HttpResponse;
use sd::error::SdkError;
use sd::operation::register_instance::RegisterInstanceError;

use super::operation::{send_retrying, wait_operation, Deadline};
use super::registered::Registered;
use super::Writer;
use crate::discover::cloud_map::map_error;
use crate::discover::instance::{ATTR_IPV4, ATTR_IPV6, ATTR_PORT};
use crate::discover::names::{check_namespace, check_owner_account, check_service};
use crate::discover::namespace_label;
use crate::error::{Error, ErrorKind};

/// This process's instance, to be registered in a Cloud Map service.
///
/// Names, not ids: the namespace and service are looked up once (ListNamespaces,
/// ListServices, GetService), with [`NamespaceNotFound`](ErrorKind::NamespaceNotFound) or
/// [`ServiceNotFound`](ErrorKind::ServiceNotFound) when they do not exist. The
/// instance id, names and attributes are checked against Cloud Map's rules before any
/// call ([`InvalidInput`](ErrorKind::InvalidInput)): at most 30 custom attributes, keys
/// of 1 to 255 printable characters, values of at most 1,024, 5,000 characters in all,
/// of the reserved `AWS_` keys only the documented ones, and addresses the default
/// [`AddressPolicy`](crate::AddressPolicy) admits (see [`ipv4`](Self::ipv4)).
///
/// [`register`](Self::register) sends RegisterInstance with a `CreatorRequestId`, so
/// the retries it makes when throttled or when the registry fails are safe (a retry
/// after a lost answer that hears `DuplicateRequest` waits on the operation it names,
/// this registration's), then polls GetOperation until the operation succeeds or
/// fails, with a jittered backoff, all within the [`deadline`](Self::deadline).
///
/// The SDK configuration is used as [`CloudMapDiscovery`](crate::CloudMapDiscovery)
/// uses it: the same region, credentials and endpoint URL, one attempt per SDK call
/// (the retries are this crate's). The SDK's `data-` host prefix concerns only
/// DiscoverInstances and DiscoverInstancesRevision; the operations used here go to
/// the endpoint URL as given.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use std::time::Duration;
/// use cloudmap_resolver::Registration;
///
/// let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let registered = Registration::new(&sdk, "shared", "web", "i-0abc")
///     .ipv4("10.0.0.7".parse().unwrap())
///     .port(8080)
///     .attribute("stage", "prod")
///     .register()
///     .await?;
/// // ... serve until SIGTERM, then:
/// registered.drain(Duration::from_secs(6)).await?;
/// # Ok(()) }
/// ```
#[must_use = "nothing is registered until `register` is awaited"]
pub struct Registration {
    writer: Writer,
    namespace: String,
    service: String,
    instance_id: String,
    attributes: BTreeMap<String, String>,
    owner_account: Option<String>,
    deadline: Duration,
    seed: Option<u64>,
}

impl Registration {
    /// How long [`register`](Self::register) and the calls of [`Registered`] may take,
    /// by default: long enough for Cloud Map's operations (a few seconds) and a
    /// throttled account's backoff.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

    /// An instance `instance_id` of `service` in `namespace`, to be registered through
    /// the registry that `sdk` points at. Nothing is checked or sent until
    /// [`register`](Self::register).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance_id: impl Into<String>,
    ) -> Self {
        Registration {
            writer: Writer::new(sdk),
            namespace: namespace.into(),
            service: service.into(),
            instance_id: instance_id.into(),
            attributes: BTreeMap::new(),
            owner_account: None,
            deadline: Self::DEFAULT_DEADLINE,
            seed: None,
        }
    }

    /// The IPv4 address callers connect to (`AWS_INSTANCE_IPV4`). An address the
    /// default [`AddressPolicy`](crate::AddressPolicy) refuses, which every resolver
    /// keeping that default skips (`0.0.0.0/8`, link-local `169.254.0.0/16`,
    /// multicast, `255.255.255.255`), is refused by [`register`](Self::register)
    /// before any call ([`InvalidInput`](ErrorKind::InvalidInput), naming the address
    /// and why); loopback and private addresses are accepted. An address only a
    /// resolver with an allow list or `allow_special` admits must be registered
    /// through the AWS SDK directly.
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").ipv4("10.0.0.7".parse().unwrap());
    /// assert_eq!(r.attribute_value("AWS_INSTANCE_IPV4"), Some("10.0.0.7"));
    /// ```
    pub fn ipv4(self, ip: Ipv4Addr) -> Self {
        self.attribute(ATTR_IPV4, ip.to_string())
    }

    /// The IPv6 address callers connect to (`AWS_INSTANCE_IPV6`). An address the
    /// default [`AddressPolicy`](crate::AddressPolicy) refuses, which every resolver
    /// keeping that default skips (`::`, multicast, link-local `fe80::/10`, the EC2
    /// service addresses `fd00:ec2::/64`, and an IPv4 address the policy refuses in
    /// any IPv6 spelling it reads: mapped, compatible, translated, NAT64, 6to4,
    /// Teredo), is refused by [`register`](Self::register) before any call
    /// ([`InvalidInput`](ErrorKind::InvalidInput), naming the address and why);
    /// loopback and other unique local addresses (`fd12::7`) are accepted. An address
    /// only a resolver with an allow list or `allow_special` admits must be
    /// registered through the AWS SDK directly.
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").ipv6("2001:db8::7".parse().unwrap());
    /// assert_eq!(r.attribute_value("AWS_INSTANCE_IPV6"), Some("2001:db8::7"));
    /// ```
    pub fn ipv6(self, ip: Ipv6Addr) -> Self {
        self.attribute(ATTR_IPV6, ip.to_string())
    }

    /// The port callers connect to (`AWS_INSTANCE_PORT`).
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").port(8080);
    /// assert_eq!(r.attribute_value("AWS_INSTANCE_PORT"), Some("8080"));
    /// ```
    pub fn port(self, port: u16) -> Self {
        self.attribute(ATTR_PORT, port.to_string())
    }

    /// Sets an attribute (a later value for the same key replaces the earlier one).
    /// Custom keys (`stage`, `version`, ...) and the documented `AWS_` keys are
    /// accepted; the rules are checked by [`register`](Self::register). A host name
    /// (`AWS_INSTANCE_CNAME`, `AWS_ALIAS_DNS_NAME`) that resolvers read as an IP
    /// address the default [`AddressPolicy`](crate::AddressPolicy) refuses, in any
    /// spelling a URL parser takes (`169.254.169.254`, `0xa9fea9fe`), or that ends
    /// in a number without being an IP address (`10.0.0.256`), is refused
    /// ([`InvalidInput`](ErrorKind::InvalidInput)): every resolver would skip it.
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").attribute("stage", "prod");
    /// assert_eq!(r.attribute_value("stage"), Some("prod"));
    /// ```
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Registers the instance as unhealthy (`AWS_INIT_HEALTH_STATUS=UNHEALTHY`), for a
    /// service with a custom health check: callers that ask for healthy instances do
    /// not see it until [`Registered::set_health`] says it is ready. On a service
    /// without a custom health check, [`register`](Self::register) fails with
    /// [`CustomHealthNotFound`](ErrorKind::CustomHealthNotFound) before
    /// RegisterInstance.
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").initially_unhealthy();
    /// assert_eq!(r.attribute_value("AWS_INIT_HEALTH_STATUS"), Some("UNHEALTHY"));
    /// ```
    pub fn initially_unhealthy(self) -> Self {
        self.attribute(ATTR_INIT_HEALTH, "UNHEALTHY")
    }

    /// The account that owns the namespace, for a namespace shared with this account
    /// through AWS RAM (two accounts can own namespaces of the same name). The
    /// namespace is then looked up among that account's, and the service is named by
    /// its ARN in RegisterInstance, DeregisterInstance and
    /// UpdateInstanceCustomHealthStatus, and GetOperation carries `OwnerAccount`, as
    /// Cloud Map requires for shared namespaces. Checked by
    /// [`register`](Self::register) before any call: an AWS account id is 12 digits
    /// ([`InvalidInput`](ErrorKind::InvalidInput) otherwise). Default: none (the
    /// namespace of that name this account can see).
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").owner_account("111122223333");
    /// ```
    pub fn owner_account(mut self, account: impl Into<String>) -> Self {
        self.owner_account = Some(account.into());
        self
    }

    /// How long [`register`](Self::register) may take in all (look-ups, retries,
    /// waiting on the operation), and each later call of the [`Registered`] it
    /// returns. Default: [`DEFAULT_DEADLINE`](Self::DEFAULT_DEADLINE) (60 s). Zero is
    /// [`InvalidInput`](ErrorKind::InvalidInput).
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use std::time::Duration;
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").deadline(Duration::from_secs(10));
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Seeds the backoff jitter, for reproducible tests. Default: a random seed.
    ///
    /// ```
    /// # let sdk = aws_config::SdkConfig::builder().build();
    /// use cloudmap_resolver::Registration;
    ///
    /// let r = Registration::new(&sdk, "shared", "web", "i-1").jitter_seed(7);
    /// ```
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The value an attribute will be registered with, if set.
    pub fn attribute_value(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Checks everything, looks the names up, registers the instance and waits until
    /// its operation succeeded.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](ErrorKind::InvalidInput) for a malformed name, instance id,
    /// attribute or deadline, or an address no caller can connect to (no call made); [`Configuration`](ErrorKind::Configuration)
    /// for an SDK configuration without a region or credentials, or when the registry
    /// refuses the caller (`AccessDeniedException`, expired or unknown credentials;
    /// reported at once, not retried); [`QuotaExceeded`](ErrorKind::QuotaExceeded)
    /// when the service holds as many instances as its quota allows;
    /// [`NamespaceNotFound`](ErrorKind::NamespaceNotFound),
    /// [`ServiceNotFound`](ErrorKind::ServiceNotFound);
    /// [`CustomHealthNotFound`](ErrorKind::CustomHealthNotFound) for
    /// [`initially_unhealthy`](Self::initially_unhealthy) on a service without a custom
    /// health check; [`OperationFailed`](ErrorKind::OperationFailed) when the operation
    /// ends in `FAIL`; [`Throttled`](ErrorKind::Throttled) or
    /// [`Unavailable`](ErrorKind::Unavailable) when the registry kept refusing until
    /// the deadline or the attempt bound.
    ///
    /// A `Throttled` or `Unavailable` error after the registry accepted
    /// RegisterInstance (the wait for its operation ran out) may leave the instance
    /// registered: register again with the same instance id (it replaces the
    /// registration) before serving, or deregister it.
    pub async fn register(self) -> Result<Registered, Error> {
        if let Some(err) = &self.writer.config_error {
            return Err(err.clone());
        }
        check_namespace(&self.namespace)?;
        check_service(&self.service)?;
        check_instance_id(&self.instance_id)?;
        check_attributes(&self.attributes)?;
        if let Some(owner) = &self.owner_account {
            check_owner_account(owner)?;
        }
        if self.deadline.is_zero() {
            return Err(Error::invalid(
                "registration deadline must be more than zero",
            ));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let label = namespace_label(&self.namespace, self.owner_account.as_deref());
        let deadline = Deadline::after(self.deadline, &label, &self.service);
        let client = &self.writer.client;
        let endpoint = &self.writer.endpoint;
        let own_account = match &self.owner_account {
            Some(_) => None,
            // The credentials chain may be slow (an instance role's first load):
            // bounded by the same deadline as the registry calls.
            None => {
                deadline
                    .within(
                        "loading the caller's credentials",
                        None,
                        self.writer.caller_account(),
                    )
                    .await?
            }
        };
        let owner = match &self.owner_account {
            Some(o) => Owner::Named(o),
            None => Owner::Caller {
                account: own_account.as_deref(),
            },
        };
        let ids = service_ids(
            client,
            endpoint,
            &self.namespace,
            &self.service,
            owner,
            &deadline,
            seed,
        )
        .await?;
        if self.attributes.contains_key(ATTR_INIT_HEALTH) && !ids.custom_health {
            return Err(Error::new(
                ErrorKind::CustomHealthNotFound,
                format!(
                    "{ATTR_INIT_HEALTH} needs a custom health check, and service {:?} \
                     ({}) has none",
                    self.service, ids.service_id
                ),
            ));
        }
        // One id for every retry of this registration: Cloud Map runs it once.
        let creator_request_id = format!("cmr-{:032x}", rand::random::<u128>());
        // Whether a send failed in a way that may have reached the registry (a lost
        // answer): a retry that then hears `DuplicateRequest` names this
        // registration's operation, still running (it can run for tens of seconds
        // in a DNS namespace), which is waited on rather than sent again and again.
        let maybe_applied = AtomicBool::new(false);
        let sent = send_retrying("RegisterInstance", &deadline, seed, || async {
            let sent = client
                .register_instance()
                .service_id(&ids.service_id)
                .instance_id(&self.instance_id)
                .creator_request_id(&creator_request_id)
                .set_attributes(Some(self.attributes.clone().into_iter().collect()))
                .send()
                .await;
            match sent {
                Ok(out) => Ok(out.operation_id().map(str::to_owned)),
                Err(e) => {
                    let duplicate = duplicate_operation(&e);
                    if maybe_applied.load(Ordering::Relaxed)
                        && let Some(id) = duplicate
                    {
                        return Ok(Some(id));
                    }
                    // A `DuplicateRequest` answer is a refusal: that send was not
                    // carried out. Counted as a lost answer, the next send's
                    // `DuplicateRequest` (naming another request's operation when
                    // none of this registration's was) had `register` wait on it
                    // and report this instance registered.
                    let refused = is_duplicate(&e);
                    let err = map_error("RegisterInstance", endpoint.url(), e);
                    if err.kind() == ErrorKind::Unavailable && !refused {
                        maybe_applied.store(true, Ordering::Relaxed);
                    }
                    Err(err)
                }
            }
        })
        .await?;
        let operation_id = sent.ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "RegisterInstance: the answer has no operation id",
            )
        })?;
        wait_operation(
            client,
            endpoint,
            &operation_id,
            "RegisterInstance",
            ids.owner_account.as_deref(),
            &deadline,
            seed,
        )
        .await?;
        tracing::info!(
            namespace = %self.namespace,
            service = %self.service,
            instance_id = %self.instance_id,
            "registered"
        );
        Ok(Registered {
            writer: self.writer,
            namespace: self.namespace,
            service: self.service,
            ids,
            instance_id: self.instance_id,
            creator_request_id,
            deadline: self.deadline,
            seed,
            drained: AtomicBool::new(false),
            deregister_sent: AtomicBool::new(false),
            registered_at: tokio::time::Instant::now(),
        })
    }
}

/// The operation a `DuplicateRequest` answer names: RegisterInstance with this
/// `CreatorRequestId`, already running.
fn duplicate_operation(e: &SdkError<RegisterInstanceError, HttpResponse>) -> Option<String> {
    match e {
        SdkError::ServiceError(ctx) => match ctx.err() {
            RegisterInstanceError::DuplicateRequest(d) => d
                .duplicate_operation_id()
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the registry answered `DuplicateRequest` (with an operation id or not).
fn is_duplicate(e: &SdkError<RegisterInstanceError, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(ctx)
        if matches!(ctx.err(), RegisterInstanceError::DuplicateRequest(_)))
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("instance_id", &self.instance_id)
            .field("attributes", &self.attributes)
            .field("owner_account", &self.owner_account)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
