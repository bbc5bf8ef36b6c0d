//! The feeder of a balanced tonic channel: a change stream's changes handed to
//! the channel's queue ([`feed_balance_channel`]), and, for a
//! [`GrpcChannel`](super::GrpcChannel) (`mod.rs`), whether the channel has an
//! endpoint to send to.

use std::collections::HashMap;

use tokio::sync::mpsc::Sender;
use tokio::sync::watch as state;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::Endpoint as TonicEndpoint;

use crate::endpoint::Endpoint;
use crate::watch::{Change, Item, Watch};

/// Feeds a balanced channel's change queue (from
/// `tonic::transport::Channel::balance_channel`) from a change stream, building
/// each inserted endpoint's tonic `Endpoint` with `make` (`None` leaves it out, and
/// takes out the one it replaces). Keys are instance ids. Every change is handed
/// over, one of attributes or health only too, since `make` may read them: tonic
/// then replaces that endpoint and its connection (a
/// [`GrpcChannel`](super::GrpcChannel) keeps it). Returns when the channel
/// is dropped, or the stream ends. Registry errors are logged and skipped: the
/// channel keeps the endpoints it has.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use cloudmap_resolver::{feed_balance_channel, Instance, Resolver, StaticDiscovery};
/// use tonic::transport::{Channel, Endpoint};
///
/// let registry = StaticDiscovery::new().with_instance("shared", "orders",
///     Instance::new("i-1").ipv4("127.0.0.1".parse()?).port(50051));
/// let resolver = Resolver::builder(registry).build()?;
/// let (channel, sender) = Channel::balance_channel::<String>(64);
/// tokio::spawn(feed_balance_channel(resolver.watch("shared", "orders"), sender, |ep| {
///     let addr = ep.socket_addr()?;
///     Some(Endpoint::from_shared(format!("http://{addr}")).ok()?
///         .http2_keep_alive_interval(Duration::from_secs(30)))
/// }));
/// # drop(channel);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub async fn feed_balance_channel<F>(
    watch: Watch,
    sender: Sender<TonicChange<String, TonicEndpoint>>,
    make: F,
) where
    F: FnMut(&Endpoint) -> Option<TonicEndpoint>,
{
    feed(watch.zone_view(), sender, make, false, None).await;
}

/// Whether a [`GrpcChannel`](super::GrpcChannel) has endpoints, as its feeder
/// last saw.
#[derive(Debug, Clone)]
pub(super) enum Status {
    /// No answer nor error yet: requests wait for one.
    Starting,
    /// The channel has been handed at least one endpoint.
    Serving,
    /// None: the answer had no endpoint the channel can dial, or discovery fails
    /// (the reason, for the requests' `UNAVAILABLE` status).
    NoEndpoint(String),
}

/// [`feed_balance_channel`], reporting to `status` whether the channel has an
/// endpoint: after each answer's changes (an empty answer included) and each
/// discovery error.
///
/// With `by_address`, `make` reads only an endpoint's address and port (a
/// [`GrpcChannel`](super::GrpcChannel)'s settings), so a change of anything else
/// (attributes, health) is not handed to the channel: tonic replaces the endpoint
/// of a key inserted again, dropping its connection and dialling anew.
pub(super) async fn feed<F>(
    mut watch: Watch,
    sender: Sender<TonicChange<String, TonicEndpoint>>,
    mut make: F,
    by_address: bool,
    status: Option<state::Sender<Status>>,
) where
    F: FnMut(&Endpoint) -> Option<TonicEndpoint>,
{
    // The endpoints handed to the channel, by instance id, and not taken out since.
    let mut held: HashMap<String, Endpoint> = HashMap::new();
    let report = |held: &HashMap<String, Endpoint>, why: Option<String>| {
        if let Some(status) = &status {
            let now = match why {
                _ if !held.is_empty() => Status::Serving,
                Some(why) => Status::NoEndpoint(why),
                None => Status::NoEndpoint(
                    "the registry's answer has no endpoint this gRPC channel can dial".into(),
                ),
            };
            status.send_replace(now);
        }
    };
    // The error the stream yielded last, until an answer follows it: a stream
    // ends only after a final one (a gone resolver, an invalid name), which is
    // then the requests' reason rather than the end itself.
    let mut failed: Option<String> = None;
    loop {
        let next = tokio::select! {
            next = std::future::poll_fn(|cx| watch.poll_item(cx)) => next,
            _ = sender.closed() => return,
        };
        let change = match next {
            None => {
                let why = match failed {
                    Some(why) => format!("the service's change stream ended: {why}"),
                    None => "the service's change stream ended".into(),
                };
                report(&held, Some(why));
                return;
            }
            Some(Item::Synced) => {
                failed = None;
                report(&held, None);
                continue;
            }
            Some(Item::Change(Err(err))) => {
                tracing::warn!(error = %err, "discovery failing; the gRPC channel keeps its endpoints");
                report(&held, Some(format!("no endpoint: discovery failed: {err}")));
                failed = Some(err.to_string());
                continue;
            }
            Some(Item::Change(Ok(change))) => change,
        };
        failed = None;
        let id = change.instance_id().to_owned();
        let endpoint = match &change {
            // The channel dials this address already (`Endpoint`'s equality is
            // the instance id, address and port): its connection stays.
            Change::Insert(ep) if by_address && held.get(&id) == Some(ep) => continue,
            Change::Insert(ep) => make(ep).map(|made| (made, ep.clone())),
            Change::Remove(_) => None,
        };
        let out = match endpoint {
            Some((endpoint, ep)) => {
                held.insert(id.clone(), ep);
                TonicChange::Insert(id, endpoint)
            }
            // Only what the channel holds is taken out: a removal of an endpoint it
            // never had (one `make` left out) would only take a place in its queue.
            None if held.remove(&id).is_some() => TonicChange::Remove(id),
            None => continue,
        };
        // Serving as soon as an endpoint is to be queued, before the send: the
        // channel's queue is read only by requests sent to it, and while it has no
        // endpoint a `GrpcChannel` fails them at once, so a send waiting on a full
        // queue then would wait for good. A request let through early waits in
        // the channel for the change it reads itself. Going down to none waits for
        // the answer's end (`Synced`), so that a replaced endpoint does not fail
        // requests in between.
        if !held.is_empty() {
            report(&held, None);
        }
        if sender.send(out).await.is_err() {
            return;
        }
    }
}
