//! `Registered`: an instance in the registry, with its health updates and its way out.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_servicediscovery as sd;
use sd::config::http::HttpResponse;
use sd::error::SdkError;
use sd::operation::deregister_instance::DeregisterInstanceError;
use sd::types::CustomHealthStatus;

use super::lookup::ServiceIds;
use tokio::time::Instant;

use super::operation::{send_retrying_while, send_sdk, send_sdk_while, wait_operation, Deadline};
use super::propagation::not_propagated_yet;
use super::Writer;
use crate::discover::cloud_map::map_error;
use crate::discover::instance::{HealthStatus, Shown};
use crate::discover::namespace_label;
use crate::error::{Error, ErrorKind};

/// An instance this process registered, from [`Registration::register`](crate::Registration::register).
///
/// Take it out of the registry with [`drain`](Self::drain) when the process is told
/// to stop (SIGTERM): the crate installs no signal handler. Dropping it does *not*
/// deregister (a drop cannot wait, and a silent deregistration on an early return or a
/// panic would take a healthy instance out): an instance dropped without `drain`
/// stays registered, and a warning says so (a drain cancelled after it sent
/// DeregisterInstance may have taken the instance out: the warning then says the
/// deregistration was sent but not confirmed).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use std::time::Duration;
/// use cloudmap_resolver::{HealthStatus, Registration};
///
/// let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let registered = Registration::new(&sdk, "shared", "web", "i-0abc")
///     .ipv4("10.0.0.7".parse().unwrap())
///     .port(8080)
///     .initially_unhealthy()
///     .register()
///     .await?;
/// // warmed up: let callers in
/// registered.set_health(HealthStatus::Healthy).await?;
/// // SIGTERM: out of the registry, then wait while callers' caches let go
/// let drained = registered.drain(Duration::from_secs(6)).await?;
/// assert!(drained.deregistered());
/// # Ok(()) }
/// ```
pub struct Registered {
    pub(super) writer: Writer,
    pub(super) namespace: String,
    pub(super) service: String,
    pub(super) ids: ServiceIds,
    pub(super) instance_id: String,
    pub(super) creator_request_id: String,
    pub(super) deadline: Duration,
    pub(super) seed: u64,
    pub(super) drained: AtomicBool,
    /// Whether a drain sent DeregisterInstance (set before the send): a drain
    /// cancelled after it may have taken the instance out, and the drop's warning
    /// must not say it stays registered.
    pub(super) deregister_sent: AtomicBool,
    /// When the registration succeeded: an `InstanceNotFound` soon after may mean
    /// "not propagated yet" (`propagation.rs`).
    pub(super) registered_at: Instant,
}

/// What [`Registered::drain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    operation_id: Option<String>,
    deregistered: bool,
    waited: Duration,
}

impl Drained {
    /// Whether this drain deregistered the instance (false: it was already gone, for
    /// example deregistered by an earlier drain or by someone else, or another
    /// registration of the same instance id replaced this one).
    ///
    /// A DeregisterInstance whose answer was lost (a 5xx, a dropped connection) may
    /// have been carried out: when its retry hears `InstanceNotFound`, this drain is
    /// taken to have done it (true, without an [`operation_id`](Self::operation_id)),
    /// and when the retry hears `DuplicateRequest`, the operation it names is waited
    /// on and reported. Without a lost answer, a `DuplicateRequest` names another
    /// request's operation on the instance: it is not waited on, and
    /// DeregisterInstance is sent again, within the retries' bounds.
    ///
    /// ```
    /// # fn check(d: cloudmap_resolver::Drained) {
    /// if !d.deregistered() {
    ///     println!("the instance was already out of the registry");
    /// }
    /// # }
    /// ```
    pub fn deregistered(&self) -> bool {
        self.deregistered
    }

    /// The id of the DeregisterInstance operation, which succeeded before the wait
    /// (`None` when the instance was already gone, or when a lost answer left only
    /// `InstanceNotFound` to hear).
    ///
    /// ```
    /// # fn check(d: cloudmap_resolver::Drained) {
    /// println!("operation {:?}", d.operation_id());
    /// # }
    /// ```
    pub fn operation_id(&self) -> Option<&str> {
        self.operation_id.as_deref()
    }

    /// How long it waited after the deregistration for callers to let go.
    ///
    /// ```
    /// # fn check(d: cloudmap_resolver::Drained) {
    /// println!("waited {:?}", d.waited());
    /// # }
    /// ```
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Registered {
    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The namespace's name, as given to [`Registration::new`](crate::Registration::new).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service's name, as given to [`Registration::new`](crate::Registration::new).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The namespace's id, as the look-up found it (`ns-...`).
    pub fn namespace_id(&self) -> &str {
        &self.ids.namespace_id
    }

    /// The service's id, as the look-up found it (`srv-...`), or its ARN for a namespace
    /// owned by another account ([`Registration::owner_account`](crate::Registration::owner_account)).
    pub fn service_id(&self) -> &str {
        &self.ids.service_id
    }

    /// The `CreatorRequestId` RegisterInstance was sent with.
    pub fn creator_request_id(&self) -> &str {
        &self.creator_request_id
    }

    /// Whether the service has a custom health check, so that
    /// [`set_health`](Self::set_health) can work.
    pub fn has_custom_health_check(&self) -> bool {
        self.ids.custom_health
    }

    /// Sets the instance's custom health status (UpdateInstanceCustomHealthStatus):
    /// `Unhealthy` to take it out of the answers of callers that ask for healthy
    /// instances without deregistering it (overloaded, warming up), `Healthy` to let
    /// them back in.
    ///
    /// Cloud Map applies the change after about 30 s (the custom health check's
    /// failure threshold), not at once; and a health change does not move the
    /// service's `DiscoverInstancesRevision`, so callers see it at their next full
    /// refresh. For a prompt way out, use [`drain`](Self::drain).
    ///
    /// # Errors
    ///
    /// [`CustomHealthNotFound`](ErrorKind::CustomHealthNotFound) when the service has
    /// no custom health check (no call made, or the registry's own answer);
    /// [`InvalidInput`](ErrorKind::InvalidInput) for
    /// [`HealthStatus::Unknown`], which cannot be set;
    /// [`InstanceNotFound`](ErrorKind::InstanceNotFound) when the instance is no
    /// longer registered, or another registration of its id replaced this one (a
    /// replacement process: its health is not this handle's to set; checked with
    /// GetInstance first, as [`drain`](Self::drain) does; GetInstance finding no
    /// entry is not enough, the update's own answer is, and within 5 s of the
    /// registration, when that answer may mean "not propagated yet", the update is
    /// sent again until then); [`Throttled`](ErrorKind::Throttled) or
    /// [`Unavailable`](ErrorKind::Unavailable) when the registry kept refusing until
    /// the deadline.
    pub async fn set_health(&self, status: HealthStatus) -> Result<(), Error> {
        let status = match status {
            HealthStatus::Healthy => CustomHealthStatus::Healthy,
            HealthStatus::Unhealthy => CustomHealthStatus::Unhealthy,
            HealthStatus::Unknown => {
                return Err(Error::invalid(
                    "a custom health status is HEALTHY or UNHEALTHY, not UNKNOWN",
                ))
            }
        };
        if !self.ids.custom_health {
            return Err(Error::new(
                ErrorKind::CustomHealthNotFound,
                format!(
                    "service {:?} ({}) has no custom health check: its instances' health \
                     cannot be set",
                    self.service, self.ids.service_id
                ),
            ));
        }
        let label = namespace_label(&self.namespace, self.ids.owner_account.as_deref());
        let deadline = Deadline::after(self.deadline, &label, &self.service);
        // The status is set by instance id: an entry another registration made
        // since (a replacement reusing the id) is not this one's to mark. No entry
        // is not proof of a deregistration (GetInstance answers `InstanceNotFound`
        // for an instance registered a moment ago): the update is sent, and its own
        // `InstanceNotFound`, once the registration is old enough, says the instance
        // is gone.
        if let Entry::Replaced(other) = self.entry(&deadline).await? {
            return Err(Error::new(
                ErrorKind::InstanceNotFound,
                format!(
                    "instance {:?} of service {:?} registered with CreatorRequestId {} was \
                     replaced by another registration of its id (CreatorRequestId {})",
                    self.instance_id,
                    self.service,
                    self.creator_request_id,
                    Shown(&other)
                ),
            ));
        }
        let (client, endpoint) = (&self.writer.client, &self.writer.endpoint);
        // Its `InstanceNotFound` right after the registration may mean "not
        // propagated yet" (a health set as soon as the instance is registered):
        // sent again then, within the update's one budget of sends, unless this
        // handle drained the instance.
        let drained = || self.drained.load(Ordering::Relaxed);
        send_sdk_while(
            "UpdateInstanceCustomHealthStatus",
            endpoint,
            &deadline,
            self.seed,
            not_propagated_yet(
                "UpdateInstanceCustomHealthStatus",
                self.registered_at,
                drained,
            ),
            || async {
                client
                    .update_instance_custom_health_status()
                    .service_id(&self.ids.service_id)
                    .instance_id(&self.instance_id)
                    .status(status.clone())
                    .send()
                    .await
            },
        )
        .await?;
        Ok(())
    }

    /// Takes the instance out of the registry and waits while callers let go:
    /// GetInstance (is the entry still this registration's?), DeregisterInstance,
    /// then GetOperation until it succeeded, then `wait`. Keep serving during the
    /// whole call; stop serving when it returns.
    ///
    /// Choosing `wait`: callers keep an answer for their cache's TTL and notice the
    /// change at their next refresh, so wait at least the callers' TTL plus their
    /// refresh interval. For [`Resolver`](crate::Resolver) callers with default
    /// settings that is the TTL + 1 s (6 s for the default TTL of 5 s). DNS callers
    /// need the records' TTL plus their resolver's cache time.
    ///
    /// An instance already gone (deregistered by an earlier drain, or by someone else)
    /// is not an error: the wait still happens, and [`Drained::deregistered`] is false.
    /// GetInstance finding no entry is not taken as proof (Cloud Map answers
    /// `InstanceNotFound` for an instance registered a moment ago, not yet
    /// propagated): DeregisterInstance is sent anyway, and its own `InstanceNotFound`
    /// says the instance was gone. Within 5 s of the registration that answer may
    /// mean "not propagated yet" too (a job that registers and drains at once): it
    /// is sent again, with backoff, until the registration is 5 s old, so a drain of
    /// an instance someone else removed that soon returns up to 5 s after the
    /// registration.
    ///
    /// Nor is an instance id registered again by another process since (a
    /// replacement after a restart, reusing the id): Cloud Map replaced this
    /// registration with that one, which keeps its own `CreatorRequestId`, and drain
    /// leaves it registered (a warning says so; [`Drained::deregistered`] is false).
    /// The check and the deregistration are two calls: a registration of the same
    /// id landing between them is still taken out, as Cloud Map offers no
    /// conditional deregistration. A caller refused GetInstance (an IAM policy
    /// without `servicediscovery:GetInstance`) deregisters by id unchecked, with a
    /// warning.
    ///
    /// # Errors
    ///
    /// [`OperationFailed`](ErrorKind::OperationFailed) when the operation ends in
    /// `FAIL`; [`Throttled`](ErrorKind::Throttled) or
    /// [`Unavailable`](ErrorKind::Unavailable) when the registry kept refusing until
    /// the deadline. No wait is made after an error: the instance may still be
    /// registered, and the call can be repeated.
    pub async fn drain(&self, wait: Duration) -> Result<Drained, Error> {
        let label = namespace_label(&self.namespace, self.ids.owner_account.as_deref());
        let deadline = Deadline::after(self.deadline, &label, &self.service);
        let (operation_id, deregistered) = match self.entry(&deadline).await? {
            // No entry is not proof of a deregistration: GetInstance answers
            // `InstanceNotFound` for an instance registered a moment ago, before the
            // registry has propagated it (a short job that registers and drains at
            // once). DeregisterInstance is sent anyway; its own `InstanceNotFound`,
            // once the registration is old enough (`propagation.rs`), is what says
            // the instance was already gone.
            Entry::Ours | Entry::Gone => self.deregister(&deadline).await?,
            Entry::Replaced(other) => {
                tracing::warn!(
                    namespace = %self.namespace,
                    service = %self.service,
                    instance_id = %self.instance_id,
                    creator_request_id = %self.creator_request_id,
                    replaced_by = %Shown(&other),
                    "not deregistering: another registration of this instance id replaced this one"
                );
                (None, false)
            }
        };
        self.drained.store(true, Ordering::Relaxed);
        tracing::info!(
            namespace = %self.namespace,
            service = %self.service,
            instance_id = %self.instance_id,
            deregistered,
            ?wait,
            "drained; waiting for callers to let go"
        );
        tokio::time::sleep(wait).await;
        Ok(Drained {
            operation_id,
            deregistered,
            waited: wait,
        })
    }

    /// Whose the registry's entry under this instance id is (GetInstance): a
    /// process that registered the same id since (a replacement after a restart)
    /// replaced this registration, and deregistering (or setting the health of)
    /// the id would reach the replacement. Cloud Map keeps the `CreatorRequestId` of the registration
    /// that made the entry, so a different one is someone else's. An entry without
    /// one, or a caller refused GetInstance (an IAM policy written before drain
    /// asked for it), is taken to be this one's: deregistering by id is what drain
    /// did before it could tell.
    async fn entry(&self, deadline: &Deadline<'_>) -> Result<Entry, Error> {
        let (client, endpoint) = (&self.writer.client, &self.writer.endpoint);
        let got = send_sdk("GetInstance", endpoint, deadline, self.seed, || async {
            client
                .get_instance()
                .service_id(&self.ids.service_id)
                .instance_id(&self.instance_id)
                .send()
                .await
        })
        .await;
        let creator = match got {
            Ok(out) => out
                .instance()
                .and_then(|i| i.creator_request_id())
                .map(str::to_owned),
            Err(e) if e.kind() == ErrorKind::InstanceNotFound => return Ok(Entry::Gone),
            Err(e) if e.kind() == ErrorKind::Configuration => {
                tracing::warn!(
                    namespace = %self.namespace,
                    service = %self.service,
                    instance_id = %self.instance_id,
                    error = %e,
                    "GetInstance refused (servicediscovery:GetInstance missing?): \
                     writing by id without checking that the entry is this registration's"
                );
                None
            }
            Err(e) => return Err(e),
        };
        Ok(match creator {
            Some(other) if other != self.creator_request_id => Entry::Replaced(other),
            _ => Entry::Ours,
        })
    }

    /// DeregisterInstance, then GetOperation until it succeeded: the operation's
    /// id, and whether this drain deregistered the instance.
    async fn deregister(&self, deadline: &Deadline<'_>) -> Result<(Option<String>, bool), Error> {
        let (client, endpoint) = (&self.writer.client, &self.writer.endpoint);
        // Whether a send of this drain failed in a way that may have reached the
        // registry (a lost answer): a retry then hears that the instance is gone, or
        // that the operation is already running, because of this drain. Without one,
        // a `DuplicateRequest` names another request's operation on the instance
        // (another process's write of the id), not this drain's: it is a refusal,
        // retried as an outage is, and waiting on that operation would report the
        // instance deregistered while it may stay registered.
        let maybe_applied = AtomicBool::new(false);
        // `InstanceNotFound` right after the registration may mean "not propagated
        // yet": sent again then, within the one budget of sends the outage
        // retries use, unless the instance is gone because of this handle (an
        // earlier drain, or this one's lost answer).
        let settled =
            || self.drained.load(Ordering::Relaxed) || maybe_applied.load(Ordering::Relaxed);
        let sent = self
            .send_deregister(
                deadline,
                &maybe_applied,
                not_propagated_yet("DeregisterInstance", self.registered_at, settled),
            )
            .await;
        let (operation_id, deregistered) = match sent {
            Ok(id) => (id, true),
            Err(e) if e.kind() == ErrorKind::InstanceNotFound => {
                (None, maybe_applied.load(Ordering::Relaxed))
            }
            Err(e) => return Err(e),
        };
        if let Some(id) = &operation_id {
            wait_operation(
                client,
                endpoint,
                id,
                "DeregisterInstance",
                self.ids.owner_account.as_deref(),
                deadline,
                self.seed,
            )
            .await?;
        }
        Ok((operation_id, deregistered))
    }

    /// DeregisterInstance, sent until answered (`send_retrying_while`, also after
    /// an error `again` lets pass): the operation's id. `maybe_applied` is set by a
    /// send that may have reached the registry.
    async fn send_deregister(
        &self,
        deadline: &Deadline<'_>,
        maybe_applied: &AtomicBool,
        again: impl Fn(&Error) -> bool,
    ) -> Result<Option<String>, Error> {
        let (client, endpoint) = (&self.writer.client, &self.writer.endpoint);
        send_retrying_while("DeregisterInstance", deadline, self.seed, again, || async {
            self.deregister_sent.store(true, Ordering::Relaxed);
            let sent = client
                .deregister_instance()
                .service_id(&self.ids.service_id)
                .instance_id(&self.instance_id)
                .send()
                .await;
            match sent {
                Ok(out) => Ok(out.operation_id().map(str::to_owned)),
                Err(e) => {
                    if maybe_applied.load(Ordering::Relaxed)
                        && let Some(id) = duplicate_operation(&e)
                    {
                        return Ok(Some(id));
                    }
                    // A `DuplicateRequest` answer is a refusal: that send was not
                    // carried out, and is no lost answer.
                    let refused = is_duplicate(&e);
                    let err = map_error("DeregisterInstance", endpoint.url(), e);
                    if err.kind() == ErrorKind::Unavailable && !refused {
                        maybe_applied.store(true, Ordering::Relaxed);
                    }
                    Err(err)
                }
            }
        })
        .await
    }
}

/// Whose the registry's entry under the instance id is (`Registered::entry`),
/// asked before a write by instance id (drain, health).
enum Entry {
    /// This registration's (or not known to be another's).
    Ours,
    /// No entry: already deregistered, or registered too recently for GetInstance
    /// to see it yet (the write is still sent).
    Gone,
    /// Another registration's, with this `CreatorRequestId`.
    Replaced(String),
}

/// The operation a `DuplicateRequest` answer names: after a lost answer, the same
/// deregistration, already running (sent by the attempt whose answer was lost).
fn duplicate_operation(e: &SdkError<DeregisterInstanceError, HttpResponse>) -> Option<String> {
    match e {
        SdkError::ServiceError(ctx) => match ctx.err() {
            DeregisterInstanceError::DuplicateRequest(d) => d
                .duplicate_operation_id()
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the registry answered `DuplicateRequest` (with an operation id or not).
fn is_duplicate(e: &SdkError<DeregisterInstanceError, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(ctx)
        if matches!(ctx.err(), DeregisterInstanceError::DuplicateRequest(_)))
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.drained.load(Ordering::Relaxed) {
            return;
        }
        if self.deregister_sent.load(Ordering::Relaxed) {
            // A drain cancelled mid-way (its caller's timeout): the registry may
            // have carried the deregistration out, or not.
            tracing::warn!(
                namespace = %self.namespace,
                service = %self.service,
                instance_id = %self.instance_id,
                "Registered dropped during drain: DeregisterInstance was sent but not \
                 confirmed, so the instance may still be registered"
            );
        } else {
            tracing::warn!(
                namespace = %self.namespace,
                service = %self.service,
                instance_id = %self.instance_id,
                "Registered dropped without drain: the instance stays registered"
            );
        }
    }
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("service_id", &self.ids.service_id)
            .field("instance_id", &self.instance_id)
            .field("drained", &self.drained.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
