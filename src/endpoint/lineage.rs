//! Which answer of a key is the newest, for the ejection share cap (`outlier/`).
//!
//! A caller may keep an [`Endpoint`](super::Endpoint) picked from an old answer and
//! report its failures long after: the cap must count the endpoints the key serves
//! now, not those of that answer. So every answer of a key holds the key's one
//! [`Lineage`], which names its newest answer. [`Lineages`] hands a key's lineage
//! to the key's next answer even after the key was evicted and loaded again, for
//! as long as any answer of it is held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::EndpointSet;
use crate::discover::DiscoverRequest;
use crate::util::lock::lock;

/// The newest answer of one key, shared by all of the key's answers.
#[derive(Debug, Default)]
pub(crate) struct Lineage(Mutex<Weak<EndpointSet>>);

impl Lineage {
    /// Names `set` the newest answer.
    pub(super) fn set(&self, set: &Arc<EndpointSet>) {
        *lock(&self.0) = Arc::downgrade(set);
    }

    /// The newest answer, while one is held.
    pub(super) fn newest(&self) -> Option<Arc<EndpointSet>> {
        lock(&self.0).upgrade()
    }
}

/// Key to lineage. Weak: the answers own their lineage, so a key none of whose
/// answers is held any more starts a new one.
#[derive(Debug, Default)]
pub(crate) struct Lineages {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<DiscoverRequest, Weak<Lineage>>,
    prune_at: usize,
}

impl Lineages {
    /// The lineage of `key`: the one its held answers share, or a new one.
    pub(crate) fn of(&self, key: &DiscoverRequest) -> Arc<Lineage> {
        let mut table = lock(&self.table);
        if let Some(lineage) = table.map.get(key).and_then(Weak::upgrade) {
            return lineage;
        }
        let lineage = Arc::new(Lineage::default());
        table.map.insert(key.clone(), Arc::downgrade(&lineage));
        if table.map.len() > table.prune_at {
            // Drop the keys no answer is held of; amortized by doubling.
            table.map.retain(|_, w| w.strong_count() > 0);
            table.prune_at = (table.map.len() * 2).max(1024);
        }
        lineage
    }
}
