//! Names to ids, once per registration: ListNamespaces filtered by name, then
//! ListServices filtered by the namespace's id, and GetService to confirm the
//! namespace of a service of that name. The answers are matched here as well (moto
//! ignores the filters and returns everything), and pages are followed up to a bound.
//!
//! A namespace shared from another account (AWS RAM) is named by its owner as well:
//! two accounts can own namespaces of the same name. Its service is then referred to
//! by its ARN, as Cloud Map requires for RegisterInstance, DeregisterInstance,
//! UpdateInstanceCustomHealthStatus and GetService in a shared namespace, and
//! GetOperation takes the owner account.

use aws_sdk_servicediscovery as sd;
use sd::types::ServiceFilterName;
use sd::types::{FilterCondition, NamespaceFilter, NamespaceFilterName, ServiceFilter};

use super::operation::{send_sdk, Deadline};
use crate::error::{Error, ErrorKind};

/// Pages of ListNamespaces or ListServices read before giving up.
const MAX_PAGES: usize = 50;

/// The service instances are registered with, as the registry names it.
#[derive(Debug, Clone)]
pub(crate) struct ServiceIds {
    pub(crate) namespace_id: String,
    /// The service's id, or its ARN when the namespace is another account's.
    pub(crate) service_id: String,
    /// The namespace's owner, when it was named (GetOperation needs it).
    pub(crate) owner_account: Option<String>,
    /// Whether the service has a custom health check (`HealthCheckCustomConfig`):
    /// only then can `AWS_INIT_HEALTH_STATUS` and UpdateInstanceCustomHealthStatus be
    /// used.
    pub(crate) custom_health: bool,
}

pub(crate) async fn service_ids(
    client: &sd::Client,
    endpoint: &str,
    namespace: &str,
    service: &str,
    owner: Option<&str>,
    deadline: &Deadline<'_>,
    seed: u64,
) -> Result<ServiceIds, Error> {
    let namespace_id = namespace_id(client, endpoint, namespace, owner, deadline, seed).await?;
    let mut token: Option<String> = None;
    for page in 0..MAX_PAGES {
        let filter = ServiceFilter::builder()
            .name(ServiceFilterName::NamespaceId)
            .condition(FilterCondition::Eq)
            .values(namespace_id.as_str())
            .build()
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "ListServices filter", e))?;
        let out = send_sdk(
            "ListServices",
            endpoint,
            deadline,
            seed ^ page as u64,
            || async {
                client
                    .list_services()
                    .filters(filter.clone())
                    .set_next_token(token.clone())
                    .send()
                    .await
            },
        )
        .await?;
        // The summaries do not say their namespace, and a registry that ignores the
        // filter lists every namespace's services: GetService confirms a candidate.
        let candidates = out
            .services()
            .iter()
            .filter(|s| s.name() == Some(service))
            .filter_map(|s| match owner {
                // Another account's service is named by its ARN.
                Some(_) => s.arn(),
                None => s.id(),
            });
        for id in candidates {
            let got = send_sdk("GetService", endpoint, deadline, seed, || async {
                client.get_service().id(id).send().await
            })
            .await?;
            if let Some(s) = got
                .service()
                .filter(|s| s.namespace_id() == Some(namespace_id.as_str()))
            {
                return Ok(ServiceIds {
                    service_id: id.to_owned(),
                    owner_account: owner.map(str::to_owned),
                    namespace_id,
                    custom_health: s.health_check_custom_config().is_some(),
                });
            }
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    Err(Error::new(
        ErrorKind::ServiceNotFound,
        format!("namespace {namespace:?} ({namespace_id}) has no service {service:?}"),
    ))
}

async fn namespace_id(
    client: &sd::Client,
    endpoint: &str,
    namespace: &str,
    owner: Option<&str>,
    deadline: &Deadline<'_>,
    seed: u64,
) -> Result<String, Error> {
    let filter = NamespaceFilter::builder()
        .name(NamespaceFilterName::Name)
        .condition(FilterCondition::Eq)
        .values(namespace)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "ListNamespaces filter", e))?;
    let mut token: Option<String> = None;
    for page in 0..MAX_PAGES {
        let out = send_sdk(
            "ListNamespaces",
            endpoint,
            deadline,
            seed ^ page as u64,
            || async {
                client
                    .list_namespaces()
                    .filters(filter.clone())
                    .set_next_token(token.clone())
                    .send()
                    .await
            },
        )
        .await?;
        let found = out.namespaces().iter().find(|n| {
            let http_name = n
                .properties()
                .and_then(|p| p.http_properties())
                .and_then(|h| h.http_name());
            (n.name() == Some(namespace) || http_name == Some(namespace))
                && owner.is_none_or(|o| owned_by(n, o))
        });
        if let Some(id) = found.and_then(|n| n.id()) {
            return Ok(id.to_owned());
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    let owned = owner.map_or(String::new(), |o| format!(" owned by account {o}"));
    Err(Error::new(
        ErrorKind::NamespaceNotFound,
        format!("no namespace named {namespace:?}{owned}"),
    ))
}

/// Whether `account` owns the namespace: its `ResourceOwner`, or where the answer has
/// none, the account field of its ARN (`arn:aws:servicediscovery:REGION:ACCOUNT:...`).
fn owned_by(n: &sd::types::NamespaceSummary, account: &str) -> bool {
    match n.resource_owner() {
        Some(o) => o == account,
        None => n.arn().and_then(|a| a.split(':').nth(4)) == Some(account),
    }
}
