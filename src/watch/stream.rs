//! [`Watch`]: the `Stream` a caller polls.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::follow::{follow, Item, Sent};
use super::Change;
use crate::cache::key::KeyRef;
use crate::cache::named::Named;
use crate::cache::Cache;
use crate::discover::DiscoverRequest;
use crate::error::{Error, ErrorKind};

/// How many items wait for a slow reader before the follower waits too (it then
/// diffs against the newest answer when it goes on, so nothing is lost). Each
/// answer's changes are followed by one marker of the answer's end, so this holds
/// 128 answers of one change each.
const BUFFER: usize = 256;

/// A stream of [`Change`]s to one service's endpoints: first the current endpoints
/// as [`Change::Insert`], then each change as the resolver's background refresher
/// sees it. Made by [`Resolver::watch`](crate::Resolver::watch) and
/// [`Query::watch`](crate::Query::watch).
///
/// The stream is driven by the refresher, not by requests: a program that never
/// resolves the service still sees its changes, about one TTL after they happen
/// (health-only changes at the next full refresh, as for `resolve`). Every watch of
/// one key shares the cache's answer and its single registry call per refresh. A
/// failing registry never produces removals: the last good answer holds (serve
/// stale); once it is older than `max_stale` the stream yields one `Err` and goes
/// on trying. A service (or namespace) the registry says is gone, once no answer
/// is served for it, has its endpoints removed before that `Err`. It ends only after an `InvalidInput` error (or, for a held
/// [`Service`](crate::Service) whose resolver is gone, a `ResolverDropped` one). Dropping the last watch
/// of a key lets its refreshes stop (unless the key is being resolved).
///
/// A `Watch` keeps its resolver's cache alive, and must be polled within a Tokio
/// runtime (polled elsewhere it yields one `Configuration` error and ends). It
/// follows its key on the runtime of its first poll; once that runtime has shut
/// down (a resolver kept in a `static`, one runtime per test), the next poll in
/// another runtime goes on there, from the changes already yielded: none is lost
/// or repeated.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use std::time::Duration;
/// use cloudmap_resolver::{Change, Instance, Resolver, StaticDiscovery};
/// use futures::StreamExt;
///
/// let ip = "127.0.0.1".parse().unwrap();
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(8080));
/// let resolver = Resolver::builder(registry.clone()).ttl(Duration::from_secs(1)).build()?;
/// let mut changes = resolver.watch("shared", "web");
/// assert!(matches!(changes.next().await, Some(Ok(Change::Insert(ep))) if ep.instance_id() == "a"));
///
/// registry.register("shared", "web", Instance::new("b").ipv4(ip).port(8081));
/// registry.deregister("shared", "web", "a");
/// // Seen at the next refresh, within one TTL: nobody has to resolve the service.
/// assert!(matches!(changes.next().await, Some(Ok(Change::Insert(ep))) if ep.instance_id() == "b"));
/// assert!(matches!(changes.next().await, Some(Ok(Change::Remove(ep))) if ep.instance_id() == "a"));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)
/// #     .build().unwrap().block_on(run()).unwrap();
/// ```
#[must_use = "a Watch does nothing unless polled"]
pub struct Watch {
    state: State,
    /// Report the zone-aware view (for balancers; see [`Watch::zone_view`]).
    zone_view: bool,
}

enum State {
    /// Not polled yet: the follower starts on the first poll, inside the runtime.
    Idle(Arc<Cache>, DiscoverRequest),
    Running {
        rx: mpsc::Receiver<Item>,
        task: JoinHandle<()>,
        /// What a follower lost with its runtime needs to go on: the key, and
        /// what the stream has been sent (`follow`).
        cache: Arc<Cache>,
        req: DiscoverRequest,
        sent: Sent,
    },
    /// Yields this error once, then ends (a held handle whose resolver is gone).
    Failed(Error),
    Done,
}

impl Watch {
    pub(crate) fn new(cache: Arc<Cache>, request: DiscoverRequest) -> Self {
        Watch {
            state: State::Idle(cache, request),
            zone_view: false,
        }
    }

    /// This stream as a balancer should follow it: with zone-aware routing, only
    /// the local zone's endpoints while the zone table keeps every pick local,
    /// every endpoint otherwise (see the [zones guide](crate::guide::zones)). The
    /// gRPC channel and `Watch::into_discover` follow this view;
    /// a `Watch` polled as it is reports every endpoint. Takes effect only before
    /// the first poll.
    #[cfg_attr(not(any(feature = "tonic", feature = "tower")), allow(dead_code))]
    pub(crate) fn zone_view(mut self) -> Self {
        self.zone_view = true;
        self
    }

    /// A stream that yields `err` once and ends.
    pub(crate) fn failed(err: Error) -> Self {
        Watch {
            state: State::Failed(err),
            zone_view: false,
        }
    }
}

impl Watch {
    /// The key this stream follows, before its first poll (`None` after).
    #[cfg(feature = "tonic")]
    pub(crate) fn request(&self) -> Option<&DiscoverRequest> {
        match &self.state {
            State::Idle(_, req) => Some(req),
            _ => None,
        }
    }

    /// The next item, or the mark that an answer's changes have all been sent.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self;
        if let State::Failed(..) = this.state {
            let State::Failed(err) = std::mem::replace(&mut this.state, State::Done) else {
                return Poll::Ready(None);
            };
            return Poll::Ready(Some(Item::Change(Err(err))));
        }
        if let State::Idle(..) = this.state {
            let State::Idle(cache, req) = std::mem::replace(&mut this.state, State::Done) else {
                return Poll::Ready(None);
            };
            if let Err(err) = this.start(cache, req, Sent::default()) {
                return Poll::Ready(Some(Item::Change(Err(err))));
            }
        }
        this.poll_follower(cx, true)
    }

    /// The follower's next item; `restart`: whether a follower lost with its
    /// runtime may be started again on this poll's (once a poll: one lost at once
    /// again means this runtime is shutting down too).
    fn poll_follower(&mut self, cx: &mut Context<'_>, restart: bool) -> Poll<Option<Item>> {
        let State::Running { rx, task, .. } = &mut self.state else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(None) => {}
            next => return next,
        }
        // The follower ended: after an error it gave up on (sent above), or with
        // the runtime it ran on (a resolver kept in a `static` and used from one
        // runtime per test). That one goes on, on this poll's runtime, from what
        // it had sent: the stream ends only after an error.
        let lost = matches!(std::task::ready!(Pin::new(task).poll(cx)), Err(e) if e.is_cancelled());
        let State::Running {
            cache, req, sent, ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Poll::Ready(None);
        };
        if !lost {
            return Poll::Ready(None);
        }
        if !restart {
            return Poll::Ready(Some(Item::Change(Err(Error::new(
                ErrorKind::Configuration,
                "the Tokio runtime polling this Watch is shutting down",
            )
            .for_key(Named(KeyRef::of(&req)))))));
        }
        if let Err(err) = self.start(cache, req, sent) {
            return Poll::Ready(Some(Item::Change(Err(err))));
        }
        self.poll_follower(cx, false)
    }

    /// Starts the follower on the current runtime, from what was `sent`.
    fn start(&mut self, cache: Arc<Cache>, req: DiscoverRequest, sent: Sent) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                "a Watch must be polled within a Tokio runtime",
            )
            .for_key(Named(KeyRef::of(&req)))
        })?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let follower = follow(cache.clone(), req.clone(), tx, self.zone_view, sent.clone());
        self.state = State::Running {
            rx,
            task: runtime.spawn(follower),
            cache,
            req,
            sent,
        };
        Ok(())
    }
}

impl Stream for Watch {
    type Item = Result<Change, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::task::ready!(self.poll_item(cx)) {
                Some(Item::Change(change)) => return Poll::Ready(Some(change)),
                Some(Item::Synced) => {}
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The follower would notice the closed channel too; aborting releases its
        // hold on the key (and so the key's refreshes) at once.
        if let State::Running { task, .. } = &self.state {
            task.abort();
        }
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Idle(..) => "idle",
            State::Running { .. } => "running",
            State::Failed(..) => "failed",
            State::Done => "done",
        };
        f.debug_struct("Watch")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
