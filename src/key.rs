//! Cache keys, hashed and compared without allocating.

use crate::discover::DiscoverRequest;
use crate::filter::HealthFilter;
use crate::select::splitmix64;

/// A borrowed cache key: what a `resolve` call asks for. The owned form is the
/// [`DiscoverRequest`] a cache entry keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRef<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) service: &'a str,
    pub(crate) query: &'a [(String, String)],
    pub(crate) optional: &'a [(String, String)],
    pub(crate) health: HealthFilter,
}

impl<'a> KeyRef<'a> {
    pub(crate) fn plain(namespace: &'a str, service: &'a str, health: HealthFilter) -> Self {
        KeyRef {
            namespace,
            service,
            query: &[],
            optional: &[],
            health,
        }
    }

    /// A 64-bit hash, well mixed in every bit (shards take the high bits, the map
    /// the low ones).
    pub(crate) fn hash(&self) -> u64 {
        let mut h = FxHasher(0);
        h.str(self.namespace);
        h.str(self.service);
        for (k, v) in self.query {
            h.str(k);
            h.str(v);
        }
        h.word(0xff);
        for (k, v) in self.optional {
            h.str(k);
            h.str(v);
        }
        h.word(self.health as u64);
        splitmix64(h.0)
    }

    pub(crate) fn matches(&self, req: &DiscoverRequest) -> bool {
        self.namespace == req.namespace
            && self.service == req.service
            && self.health == req.health
            && self.query == req.query.as_slice()
            && self.optional == req.optional.as_slice()
    }

    pub(crate) fn to_request(self) -> DiscoverRequest {
        let mut req = DiscoverRequest::new(self.namespace, self.service).health(self.health);
        req.query = self.query.to_vec();
        req.optional = self.optional.to_vec();
        req
    }
}

/// The Fx hash (rustc's): a multiply and a rotate a word. Keys come from the
/// program's own code, not from attackers, so a keyed hash buys nothing here and
/// would cost the warm path its margin.
struct FxHasher(u64);

impl FxHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn str(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(tail));
        // The length ends the string, so ("ab", "c") and ("a", "bc") differ.
        self.word(bytes.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_match() {
        let q = vec![("stage".to_owned(), "prod".to_owned())];
        let a = KeyRef {
            query: &q,
            ..KeyRef::plain("ns", "svc", HealthFilter::All)
        };
        let req = a.to_request();
        assert!(a.matches(&req));
        assert_eq!(a.hash(), a.hash());
        let b = KeyRef::plain("ns", "svc", HealthFilter::All);
        assert!(!b.matches(&req));
        assert_ne!(a.hash(), b.hash());
        let c = KeyRef::plain("nss", "vc", HealthFilter::All);
        assert_ne!(b.hash(), c.hash());
        let d = KeyRef::plain("ns", "svc", HealthFilter::Healthy);
        assert_ne!(b.hash(), d.hash());
    }
}
