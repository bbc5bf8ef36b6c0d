//! The processes of the fleet: callers resolving through a real `Resolver`, or the
//! naive fixed-interval client this crate replaces.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudmap_resolver::{Discover, DiscoverRequest, Resolver};
use tokio::time::Instant;

use super::account::{Registry, SimSource};
use super::{BASE_PORT, NAMESPACE};

/// The naive client: a fixed-interval loop and the last good answers.
#[derive(Debug)]
pub(super) struct Naive {
    pub(super) source: SimSource,
    pub(super) held: Mutex<Vec<Option<u32>>>,
}

impl Naive {
    pub(super) async fn refresh(
        self: Arc<Self>,
        names: Arc<[String]>,
        first: Instant,
        every: Duration,
    ) {
        let mut next = first;
        loop {
            tokio::time::sleep_until(next).await;
            for (s, name) in names.iter().enumerate() {
                let req = DiscoverRequest::new(NAMESPACE, name.as_str());
                if let Ok(found) = self.source.discover(&req).await {
                    let v = found.revision.map(|r| r as u32);
                    self.held.lock().unwrap_or_else(PoisonError::into_inner)[s] = v;
                }
            }
            next += every;
        }
    }
}

/// The callers in one process: every `every`, resolve every service once.
pub(super) struct Caller {
    pub(super) registry: Arc<Registry>,
    pub(super) names: Arc<[String]>,
    pub(super) resolver: usize,
    pub(super) every: Duration,
    pub(super) first: Instant,
}

impl Caller {
    pub(super) async fn run_resolver(self, resolver: Resolver) {
        let mut next = self.first;
        loop {
            tokio::time::sleep_until(next).await;
            for (s, name) in self.names.iter().enumerate() {
                let asked = Instant::now();
                let served = match resolver.resolve(NAMESPACE, name).await {
                    Ok(ep) => Some(u32::from(
                        ep.port().expect("simulated instances have a port") - BASE_PORT,
                    )),
                    Err(_) => None,
                };
                self.registry
                    .served(self.resolver, s, served, asked.elapsed());
            }
            next += self.every;
        }
    }

    pub(super) async fn run_naive(self, naive: Arc<Naive>) {
        let mut next = self.first;
        loop {
            tokio::time::sleep_until(next).await;
            for s in 0..self.names.len() {
                let served = naive.held.lock().unwrap_or_else(PoisonError::into_inner)[s];
                self.registry
                    .served(self.resolver, s, served, Duration::ZERO);
            }
            next += self.every;
        }
    }
}
