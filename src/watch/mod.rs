//! Change streams: [`Watch`], computed from the successive answers the cache's
//! background refresher installs for a key.
//!
//! A stream is a task (`follow.rs`) holding the key as watched (`cache::Watched`),
//! woken by each installed answer, diffing it against what it reported before
//! (`diff.rs`) and sending the [`Change`]s to the [`Watch`] the caller polls
//! (`stream.rs`). Requests play no part: the refresher keeps a watched key fresh
//! with nobody resolving it, and stops when the last stream is dropped. Registry
//! failures never show as removals: only answers are diffed.

mod diff;
mod follow;
#[cfg(feature = "tonic")]
pub(crate) use follow::Item;
mod stream;

pub use stream::Watch;

use crate::endpoint::Endpoint;

/// One change of a service's endpoints, as a [`Watch`] reports it.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Change, Instance, Resolver, StaticDiscovery};
/// use futures::StreamExt;
///
/// let registry = StaticDiscovery::new().with_instance("shared", "web",
///     Instance::new("a").ipv4("127.0.0.1".parse().unwrap()).port(8080));
/// let resolver = Resolver::builder(registry).build()?;
/// let mut changes = resolver.watch("shared", "web");
/// match changes.next().await.unwrap()? {
///     Change::Insert(ep) => assert_eq!(ep.instance_id(), "a"),
///     other => panic!("expected the current endpoint first, got {other:?}"),
/// }
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A new endpoint, or one whose address, attributes or health changed (the
    /// same instance id: it replaces the endpoint reported before).
    Insert(Endpoint),
    /// An endpoint the registry no longer lists (as last reported).
    Remove(Endpoint),
}

impl Change {
    /// The endpoint inserted or removed.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{Change, Endpoint, Instance};
    ///
    /// let ep = Endpoint::from_instance(Instance::new("i-1").ipv4("10.0.0.1".parse().unwrap()).port(80)).unwrap();
    /// assert_eq!(Change::Remove(ep.clone()).endpoint(), &ep);
    /// ```
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            Change::Insert(ep) | Change::Remove(ep) => ep,
        }
    }

    /// The instance id of the endpoint inserted or removed: the key a balancer
    /// keeps its services by.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{Change, Endpoint, Instance};
    ///
    /// let ep = Endpoint::from_instance(Instance::new("i-1").ipv4("10.0.0.1".parse().unwrap()).port(80)).unwrap();
    /// assert_eq!(Change::Insert(ep).instance_id(), "i-1");
    /// ```
    pub fn instance_id(&self) -> &str {
        self.endpoint().instance_id()
    }
}
