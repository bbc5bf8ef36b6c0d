//! Self-registration and drain: the one part of the crate that writes to the registry.
//!
//! `registration.rs` checks an instance (`attributes.rs`, and discover's name rules),
//! looks its names up once (`lookup.rs`), registers it and waits on the operation
//! (`operation.rs`: deadline, retries, GetOperation polling); `registered.rs` is the
//! handle that sets its health and drains it, sending a write again while its
//! `InstanceNotFound` may mean "not propagated yet" (`propagation.rs`).

use std::sync::{Arc, OnceLock};

use aws_sdk_servicediscovery as sd;
use sd::config::{ProvideCredentials, SharedCredentialsProvider};

use crate::discover::cloud_map::{client_config, config_error, NoteEndpoint};
use crate::error::Error;

pub(crate) mod attributes;
pub(crate) mod lookup;
pub(crate) mod operation;
pub(crate) mod propagation;
pub(crate) mod registered;
pub(crate) mod registration;

/// The registry client registration writes with: the same SDK configuration as
/// `CloudMapDiscovery` (region, credentials, endpoint URL, one attempt per call),
/// without its `data-` host fix, which only DiscoverInstances and
/// DiscoverInstancesRevision need (the SDK's endpoint prefix is set on those two
/// operations only; `tests/integration/register/` checks the host every write
/// operation is sent to).
#[derive(Clone)]
pub(crate) struct Writer {
    pub(crate) client: sd::Client,
    /// Where calls go, for error messages.
    pub(crate) endpoint: CalledAt,
    /// A configuration that cannot work, reported by every call.
    pub(crate) config_error: Option<Error>,
    credentials: Option<SharedCredentialsProvider>,
}

impl Writer {
    pub(crate) fn new(sdk: &aws_config::SdkConfig) -> Self {
        // The custom endpoint is read where the SDK resolves it, as
        // `CloudMapDiscovery` reads it: one for Cloud Map alone
        // (`AWS_ENDPOINT_URL_SERVICEDISCOVERY`, a profile's `services` section) is
        // applied when the client is built, and `sdk.endpoint_url()` does not show it.
        let resolved = Arc::new(OnceLock::new());
        let client = sd::Client::from_conf(
            client_config(sdk)
                .endpoint_resolver(NoteEndpoint::new(resolved.clone()))
                .build(),
        );
        let configured: Arc<str> = match (sdk.endpoint_url(), sdk.region()) {
            (Some(url), _) => url.into(),
            (None, Some(region)) => {
                format!("https://servicediscovery.{region}.amazonaws.com").into()
            }
            (None, None) => "the default endpoint (no region)".into(),
        };
        Writer {
            client,
            endpoint: CalledAt {
                configured,
                resolved,
            },
            config_error: config_error(
                sdk.region().is_some(),
                sdk.credentials_provider().is_some(),
                sdk.endpoint_url(),
            ),
            credentials: sdk.credentials_provider(),
        }
    }

    /// The caller's account, when its credentials name it (`AWS_ACCOUNT_ID`, a
    /// profile's `aws_account_id`, SSO and role credentials): the owner the
    /// namespace look-up checks when none is named. `None` when they do not say or
    /// fail to load (the registry calls then report the failure).
    pub(crate) async fn caller_account(&self) -> Option<String> {
        let creds = self
            .credentials
            .as_ref()?
            .provide_credentials()
            .await
            .ok()?;
        creds.account_id().map(|a| a.as_str().to_owned())
    }
}

/// Where the writer's calls go, for error messages: the custom endpoint URL the SDK
/// resolved for the client (noted when a call's endpoint is resolved, before it is
/// sent, so an error of that call names it), else the `SdkConfig`'s endpoint URL or
/// the regional endpoint.
#[derive(Clone)]
pub(crate) struct CalledAt {
    configured: Arc<str>,
    resolved: Arc<OnceLock<String>>,
}

impl CalledAt {
    pub(crate) fn url(&self) -> &str {
        self.resolved.get().map_or(&self.configured, String::as_str)
    }
}
