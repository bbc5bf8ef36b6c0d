//! Warning once about the same registry entry, not on every refresh.

use std::fmt;
use std::sync::Arc;

use crate::util::lock::lock;

/// Remembers which warnings about registry entries were already given, as hashes of
/// what the warning is about (key, instance id, the problem with its value), so that
/// the same bad entry is logged once, not on every refresh, and again when it changes.
///
/// Bounded: after [`WarnOnce::CAPACITY`] distinct warnings it forgets them all and
/// starts over, so at worst a warning is repeated once per that many. Clones share
/// the memory. The hasher is randomly keyed, so a registry cannot aim collisions at it
/// to silence a warning.
#[derive(Clone, Default)]
pub(crate) struct WarnOnce(Arc<std::sync::Mutex<WarnedSet>>);

#[derive(Default)]
struct WarnedSet {
    seen: std::collections::HashSet<u64>,
    hasher: std::hash::RandomState,
}

impl WarnOnce {
    /// How many distinct warnings are remembered before starting over.
    pub(crate) const CAPACITY: usize = 4096;

    /// Whether a warning about `what` has not been given yet; records it.
    pub(crate) fn first_time(&self, what: impl std::hash::Hash) -> bool {
        use std::hash::BuildHasher;
        let mut set = lock(&self.0);
        let h = set.hasher.hash_one(what);
        if set.seen.len() >= Self::CAPACITY && !set.seen.contains(&h) {
            set.seen.clear();
        }
        set.seen.insert(h)
    }

    /// Forgets a warning about `what`, so that it is given again the next time: for
    /// a fault that passed (a run of failures ended), whose next run is news.
    pub(crate) fn forget(&self, what: impl std::hash::Hash) {
        use std::hash::BuildHasher;
        let mut set = lock(&self.0);
        let h = set.hasher.hash_one(what);
        set.seen.remove(&h);
    }
}

impl fmt::Debug for WarnOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarnOnce").finish_non_exhaustive()
    }
}

/// Memory of past warnings is not part of what parsing does.
impl PartialEq for WarnOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WarnOnce {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_memory_is_bounded() {
        let w = WarnOnce::default();
        for n in 0..(WarnOnce::CAPACITY * 3) {
            w.first_time(n);
        }
        assert!(w.0.lock().unwrap().seen.len() <= WarnOnce::CAPACITY);
    }
}
