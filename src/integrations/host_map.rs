//! Which host names are Cloud Map services ([`HostMap`]): what the HTTP integrations
//! (reqwest, hyper, tower) ask before a name goes to the registry.

use std::fmt;
use std::sync::Arc;

use crate::error::ErrorKind;

type MapFn = dyn Fn(&str) -> Option<(String, String)> + Send + Sync;

/// Which host names are Cloud Map services, and which namespace and service each one
/// names. Names that are not services go to the system's DNS resolver unchanged.
///
/// The default maps no name at all: list your namespaces with
/// [`namespaces`](Self::namespaces), so that only names under them are looked up in
/// the registry. [`any`](Self::any) lets the registry claim every dotted name,
/// public ones included, and is an explicit opt-in.
///
/// Host names are matched in ASCII lowercase, without a trailing dot, whichever
/// integration asks: a host name is case-insensitive, and reqwest's URL parser
/// lowercases it anyway, so `http://WEB.Shared/` is the service `web` in namespace
/// `shared` through reqwest, hyper and tower alike (one cache key, not two). Cloud
/// Map's API compares names exactly (an HTTP namespace may hold services whose names
/// differ only by case), so a service or namespace with capitals in its name is not
/// reached through a host name as written: map to its exact name with
/// [`from_fn`](Self::from_fn), which receives the lowercased host, or call the
/// resolver with the name. An IP address literal is never a service,
/// whatever the rule and however it is spelt (`10.1.2.3`, `2852039166`,
/// `0xa9fea9fe`, `0251.0376.0251.0376`, `[::1]`): a host with a colon or bracket, or
/// whose last label is a number (decimal, octal or `0x` hex, which URL parsers read
/// as IPv4), goes to the client unchanged and never reaches the registry.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::HostMap;
///
/// let listed = HostMap::namespaces(["shared"]);
/// assert_eq!(listed.service("web.shared."), Some(("shared".into(), "web".into())));
/// assert_eq!(listed.service("www.example.com"), None);
///
/// assert_eq!(HostMap::default().service("web.shared"), None, "nothing until listed");
///
/// let any = HostMap::any();
/// assert_eq!(any.service("api.prod.internal"), Some(("prod.internal".into(), "api".into())));
/// assert_eq!(any.service("localhost"), None);
/// assert_eq!(any.service("10.1.2.3"), None, "an address is never a service");
///
/// let custom = HostMap::from_fn(|host| {
///     let svc = host.strip_suffix(".svc.local")?;
///     Some(("shared".to_owned(), svc.to_owned()))
/// });
/// assert_eq!(custom.service("web.svc.local"), Some(("shared".into(), "web".into())));
/// ```
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "reqwest", feature = "hyper", feature = "tower")))
)]
#[derive(Clone)]
pub struct HostMap(Rule);

#[derive(Clone)]
enum Rule {
    Any,
    Namespaces(Arc<[String]>),
    Fn(Arc<MapFn>),
}

impl HostMap {
    /// Every name with a dot is tried as `service.namespace` (the first label is the
    /// service, the rest the namespace, as Cloud Map names DNS records); names the
    /// registry does not know (namespace or service not found, or not a valid Cloud
    /// Map name) then go to the system's DNS resolver. Names without a dot, such as
    /// `localhost`, go there directly.
    ///
    /// **Warning**: the registry then decides where every dotted name goes. A
    /// namespace named like a public domain (`example.com`, created by anyone who can
    /// create namespaces in the account) captures requests for
    /// `http://www.example.com/`, credentials and all. Prefer
    /// [`namespaces`](Self::namespaces); use this only when every client request is
    /// for a service. Each name that is not a service also costs one registry call
    /// per [`negative_ttl`](crate::CacheOptions::negative_ttl), and a registry
    /// outage fails it.
    pub fn any() -> Self {
        HostMap(Rule::Any)
    }

    /// Only `service.namespace` for the given namespaces (compared without regard to
    /// ASCII case); every other name goes to the system's DNS resolver without asking
    /// the registry. An empty list is the [default](Self::default): no name is a
    /// service.
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = namespaces
            .into_iter()
            .map(|s| s.into().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        HostMap(Rule::Namespaces(list.into()))
    }

    /// Your own rule: `Some((namespace, service))` for a service, `None` for a name
    /// that goes to the system's DNS resolver. It receives the name in ASCII
    /// lowercase, without a trailing dot.
    pub fn from_fn(f: impl Fn(&str) -> Option<(String, String)> + Send + Sync + 'static) -> Self {
        HostMap(Rule::Fn(Arc::new(f)))
    }

    /// The `(namespace, service)` that `host` names, or `None` when it is not a service
    /// (always `None` for an IP address literal).
    pub fn service(&self, host: &str) -> Option<(String, String)> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if is_ip_literal(host) {
            return None;
        }
        // Host names are case-insensitive and reqwest's URL parser lowercases them
        // while `http::Uri` (hyper, tower) keeps them as written: lowercasing here
        // gives every integration the same key for the same URL.
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        match &self.0 {
            Rule::Any => {
                let (svc, ns) = host.split_once('.')?;
                (!svc.is_empty() && !ns.is_empty()).then(|| (ns.to_owned(), svc.to_owned()))
            }
            Rule::Namespaces(list) => {
                let (svc, ns) = host.split_once('.')?;
                (!svc.is_empty() && list.iter().any(|n| n.eq_ignore_ascii_case(ns)))
                    .then(|| (ns.to_owned(), svc.to_owned()))
            }
            Rule::Fn(f) => f(host),
        }
    }

    /// Whether a registry answer of `kind` for a mapped name means "not a service
    /// after all": only under [`any`](Self::any), which guesses.
    pub(crate) fn falls_through(&self, kind: ErrorKind) -> bool {
        matches!(self.0, Rule::Any)
            && matches!(
                kind,
                ErrorKind::NamespaceNotFound | ErrorKind::ServiceNotFound | ErrorKind::InvalidInput
            )
    }
}

/// No name is a service until you say which: `HostMap::namespaces` with an empty list.
impl Default for HostMap {
    fn default() -> Self {
        HostMap(Rule::Namespaces(Arc::from([])))
    }
}

/// Whether `host` (without a trailing dot) is an IP address literal in some spelling,
/// judged the way the WHATWG URL parser decides to read a host as IPv4: its last
/// label is a number (decimal, octal with a leading 0, or `0x` hex). Such a host is
/// read as an address (or rejected) by URL parsers and by `inet_aton`, so it must
/// never be taken for a service name. IPv6 literals hold a colon (or come bracketed).
fn is_ip_literal(host: &str) -> bool {
    if host.contains(':') || host.starts_with('[') {
        return true;
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if last.is_empty() {
        return false;
    }
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => last.bytes().all(|b| b.is_ascii_digit()),
    }
}

impl fmt::Debug for HostMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Rule::Any => f.write_str("HostMap::any()"),
            Rule::Namespaces(list) => f.debug_tuple("HostMap::namespaces").field(list).finish(),
            Rule::Fn(_) => f.write_str("HostMap::from_fn(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_splits_at_the_first_dot() {
        let m = HostMap::any();
        assert_eq!(
            m.service("web.shared"),
            Some(("shared".into(), "web".into()))
        );
        assert_eq!(
            m.service("web.shared."),
            Some(("shared".into(), "web".into()))
        );
        assert_eq!(m.service("a.b.c"), Some(("b.c".into(), "a".into())));
        for not in ["localhost", ".shared", "web.", ""] {
            assert_eq!(m.service(not), None, "{not:?}");
        }
        assert!(m.falls_through(ErrorKind::ServiceNotFound));
        assert!(!m.falls_through(ErrorKind::Unavailable));
    }

    /// IP literals in any spelling are never services, whatever the rule: a request
    /// for `http://10.1.2.3/` must not ask the registry for namespace `1.2.3`.
    #[test]
    fn ip_literals_are_never_service_names() {
        let rules = [
            HostMap::any(),
            HostMap::namespaces(["1.2.3", "254.169.254", "0.0", "0x7f", "0376.0251.0376"]),
            HostMap::from_fn(|h| Some(("shared".into(), h.into()))),
        ];
        let literals = [
            "10.1.2.3",
            "169.254.169.254",
            "169.254.169.254.",
            "2852039166",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "0.0.0.0",
            "127.1",
            "[::1]",
            "::1",
            "[fd00:ec2::254]",
            "[::ffff:169.254.169.254]",
        ];
        for m in &rules {
            for host in literals {
                assert_eq!(m.service(host), None, "{m:?} mapped {host}");
            }
            assert!(m.service("web.shared").is_some() || matches!(m.0, Rule::Namespaces(_)));
        }
        // Names that merely hold digits are still names.
        assert!(HostMap::any().service("web1.ns-2").is_some());
        assert!(HostMap::any().service("10.shared").is_some());
    }

    /// The default maps nothing: a namespace named like a public domain cannot
    /// capture `www.example.com` unless the caller opts in.
    #[test]
    fn default_maps_no_name() {
        let m = HostMap::default();
        for host in ["web.shared", "www.example.com", "a.b.c"] {
            assert_eq!(m.service(host), None, "{host}");
        }
        assert!(!m.falls_through(ErrorKind::ServiceNotFound));
        assert_eq!(format!("{m:?}"), "HostMap::namespaces([])");
    }

    #[test]
    fn namespaces_match_only_listed_ones() {
        let m = HostMap::namespaces(["Shared", "prod.internal."]);
        assert_eq!(
            m.service("web.shared"),
            Some(("shared".into(), "web".into()))
        );
        assert_eq!(
            m.service("api.prod.internal"),
            Some(("prod.internal".into(), "api".into()))
        );
        assert_eq!(
            m.service("WEB.Shared"),
            Some(("shared".into(), "web".into())),
            "host names are case-insensitive"
        );
        assert_eq!(m.service("web.other"), None);
        assert_eq!(m.service("shared"), None);
        assert!(!m.falls_through(ErrorKind::ServiceNotFound));
    }
}
