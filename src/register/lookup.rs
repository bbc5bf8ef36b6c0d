//! Names to ids, once per registration: ListNamespaces filtered by name, then
//! ListServices filtered by the namespace's id (its ARN when shared), and GetService
//! to confirm the namespace of a service of that name. The answers are matched here
//! as well (moto ignores the filters and returns everything), and pages are followed
//! up to a bound.
//!
//! Without a named owner, only the caller's own namespaces are candidates: the
//! `RESOURCE_OWNER = SELF` filter asks for them, and the answer is checked too (against
//! the caller's account when its credentials name it; otherwise namespaces of the
//! name with more than one owner are refused as ambiguous).
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
use super::CalledAt;
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
    endpoint: &CalledAt,
    namespace: &str,
    service: &str,
    owners: Owner<'_>,
    deadline: &Deadline<'_>,
    seed: u64,
) -> Result<ServiceIds, Error> {
    let (namespace_id, namespace_arn) =
        namespace_id(client, endpoint, namespace, &owners, deadline, seed).await?;
    let owner = owners.named();
    // A namespace shared from another account is named by its ARN: by its id,
    // ListServices lists none of its services (ServiceFilter, `NAMESPACE_ID`).
    let listed_by = match (owner, &namespace_arn) {
        (Some(_), Some(arn)) => arn.as_str(),
        _ => namespace_id.as_str(),
    };
    let mut token: Option<String> = None;
    for page in 0..MAX_PAGES {
        let filter = ServiceFilter::builder()
            .name(ServiceFilterName::NamespaceId)
            .condition(FilterCondition::Eq)
            .values(listed_by)
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

/// The namespace's id, and its ARN when the answer gives it.
async fn namespace_id(
    client: &sd::Client,
    endpoint: &CalledAt,
    namespace: &str,
    owner: &Owner<'_>,
    deadline: &Deadline<'_>,
    seed: u64,
) -> Result<(String, Option<String>), Error> {
    let by_name = NamespaceFilter::builder()
        .name(NamespaceFilterName::Name)
        .condition(FilterCondition::Eq)
        .values(namespace)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "ListNamespaces filter", e))?;
    // Without a named owner, only this account's own namespaces: a namespace of the
    // same name shared from another account must not receive this instance.
    let mut filters = vec![by_name];
    if let Owner::Caller { .. } = owner {
        filters.push(
            NamespaceFilter::builder()
                .name(NamespaceFilterName::ResourceOwner)
                .condition(FilterCondition::Eq)
                .values("SELF")
                .build()
                .map_err(|e| {
                    Error::with_source(ErrorKind::InvalidInput, "ListNamespaces filter", e)
                })?,
        );
    }
    // (id, owner, ARN) of every namespace of that name the answers list and `owner`
    // admits.
    let mut found: Vec<(String, Option<String>, Option<String>)> = Vec::new();
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
                    .set_filters(Some(filters.clone()))
                    .set_next_token(token.clone())
                    .send()
                    .await
            },
        )
        .await?;
        for n in out.namespaces() {
            let http_name = n
                .properties()
                .and_then(|p| p.http_properties())
                .and_then(|h| h.http_name());
            let named = n.name() == Some(namespace) || http_name == Some(namespace);
            if let (true, Some(id)) = (named && owner.admits(n), n.id()) {
                found.push((
                    id.to_owned(),
                    owner_of(n).map(str::to_owned),
                    n.arn().map(str::to_owned),
                ));
            }
        }
        // A named owner's namespace is unique; the caller's own are checked whole.
        if matches!(owner, Owner::Named(_)) && !found.is_empty() {
            break;
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    let mut owners: Vec<&str> = found.iter().filter_map(|(_, o, _)| o.as_deref()).collect();
    owners.sort_unstable();
    owners.dedup();
    if owners.len() > 1 {
        // The registry did not keep to the caller's own namespaces (moto ignores the
        // filter) and the credentials do not name the caller's account: which one is
        // the caller's cannot be told, and guessing could register into another
        // account's namespace.
        return Err(Error::new(
            ErrorKind::Configuration,
            format!(
                "namespaces named {namespace:?} are owned by accounts {}: name the owner \
                 with Registration::owner_account",
                owners.join(", ")
            ),
        ));
    }
    if let Some((id, _, arn)) = found.into_iter().next() {
        return Ok((id, arn));
    }
    let owned = match owner {
        Owner::Named(o) => format!(" owned by account {o}"),
        Owner::Caller { account: Some(a) } => format!(" owned by this account ({a})"),
        Owner::Caller { account: None } => " owned by this account".to_owned(),
    };
    Err(Error::new(
        ErrorKind::NamespaceNotFound,
        format!("no namespace named {namespace:?}{owned}"),
    ))
}

/// Whose namespace an instance is registered in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner<'a> {
    /// Another account's, shared through AWS RAM (`Registration::owner_account`).
    Named(&'a str),
    /// The caller's own; its account when the credentials name it.
    Caller { account: Option<&'a str> },
}

impl Owner<'_> {
    fn named(&self) -> Option<&str> {
        match self {
            Owner::Named(o) => Some(o),
            Owner::Caller { .. } => None,
        }
    }

    /// Whether a listed namespace may be the one: a named owner's; the caller's
    /// account's when it is known (the registry may ignore the `SELF` filter).
    fn admits(&self, n: &sd::types::NamespaceSummary) -> bool {
        match self {
            Owner::Named(o) | Owner::Caller { account: Some(o) } => owned_by(n, o),
            Owner::Caller { account: None } => true,
        }
    }
}

/// The namespace's owner: its `ResourceOwner`, or where the answer has none, the
/// account field of its ARN (`arn:aws:servicediscovery:REGION:ACCOUNT:...`).
fn owner_of(n: &sd::types::NamespaceSummary) -> Option<&str> {
    n.resource_owner()
        .or_else(|| n.arn().and_then(|a| a.split(':').nth(4)))
        .filter(|o| !o.is_empty())
}

/// Whether `account` owns the namespace.
fn owned_by(n: &sd::types::NamespaceSummary, account: &str) -> bool {
    owner_of(n) == Some(account)
}
