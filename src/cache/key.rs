//! The one cache key: what a caller asks for (namespace, service, query and
//! optional parameters, health filter, and the account owning the namespace when it
//! is shared from another one), hashed and compared without allocating.
//!
//! [`Key`] is the form callers build (a `Query`, a `Call`): names borrowed, parameters
//! owned and kept sorted. [`KeyRef`] is its borrowed view, the form the cache hashes
//! and compares. The owned form an entry keeps is the source-facing
//! [`DiscoverRequest`], made from a `KeyRef` in one place ([`KeyRef::to_request`]).

use std::borrow::Cow;

use crate::discover::health_filter::HealthFilter;
use crate::discover::{insert_sorted, DiscoverRequest};
use crate::util::hash::{fold, name_hash, short_words};

// Arbitrary constants (more digits of pi), one for each part of a key.
const NAMES: u64 = 0x082E_FA98_EC4E_6C89;
const QUERY: u64 = 0x4528_21E6_38D0_1377;
const OPTIONAL: u64 = 0xBE54_66CF_34E9_0C6C;
const OWNER: u64 = 0xC0AC_29B7_C97C_50DD;

/// A borrowed cache key: what a `resolve` call asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRef<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) service: &'a str,
    pub(crate) query: &'a [(String, String)],
    pub(crate) optional: &'a [(String, String)],
    pub(crate) health: HealthFilter,
    /// The account owning the namespace (`OwnerAccount`); `None` for the caller's own.
    pub(crate) owner: Option<&'a str>,
}

impl<'a> KeyRef<'a> {
    pub(crate) fn plain(namespace: &'a str, service: &'a str, health: HealthFilter) -> Self {
        KeyRef {
            namespace,
            service,
            query: &[],
            optional: &[],
            health,
            owner: None,
        }
    }

    /// The same key for a namespace owned by `owner` (`None`: the caller's account).
    #[inline]
    pub(crate) fn owned_by(self, owner: Option<&'a str>) -> Self {
        KeyRef { owner, ..self }
    }

    /// The key an owned question asks (the inverse of [`to_request`](Self::to_request)).
    pub(crate) fn of(req: &'a DiscoverRequest) -> Self {
        KeyRef {
            namespace: &req.namespace,
            service: &req.service,
            query: &req.query,
            optional: &req.optional,
            health: req.health,
            owner: req.owner_account.as_deref(),
        }
    }

    /// A 64-bit hash, well mixed in every bit (shards take the high bits, the map
    /// the low ones). The two names are hashed apart and joined with the health
    /// filter in one fold, so the common key (no parameters, no owner) costs three
    /// multiplies, two of them side by side; parameters and owner, each under its
    /// own constant (so a parameter required and one preferred differ), are folded
    /// in after.
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        let mut h = fold(
            name_hash(self.namespace) ^ NAMES,
            name_hash(self.service) ^ self.health as u64,
        );
        for (k, v) in self.query {
            h = fold(h ^ name_hash(k), name_hash(v) ^ QUERY);
        }
        for (k, v) in self.optional {
            h = fold(h ^ name_hash(k), name_hash(v) ^ OPTIONAL);
        }
        // Nothing for the common key without an owner, so its hash costs no more.
        if let Some(owner) = self.owner {
            h = fold(h ^ OWNER, name_hash(owner));
        }
        h
    }

    #[inline]
    pub(crate) fn matches(&self, req: &DiscoverRequest) -> bool {
        self.health == req.health
            && self.owner == req.owner_account.as_deref()
            && same_name(self.namespace, &req.namespace)
            && same_name(self.service, &req.service)
            && same_params(self.query, &req.query)
            && same_params(self.optional, &req.optional)
    }

    pub(crate) fn to_request(self) -> DiscoverRequest {
        let mut req = DiscoverRequest::new(self.namespace, self.service).health(self.health);
        req.query = self.query.to_vec();
        req.optional = self.optional.to_vec();
        req.owner_account = self.owner.map(str::to_owned);
        req
    }
}

/// A key as a caller builds it: the names borrowed from the caller, the parameters
/// owned (sorted by key, so equal queries make equal keys).
#[derive(Debug, Clone)]
pub(crate) struct Key<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) service: &'a str,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) optional: Vec<(String, String)>,
    pub(crate) health: HealthFilter,
    /// The account owning the namespace: borrowed from the resolver's default, or
    /// owned when a query sets its own.
    pub(crate) owner: Option<Cow<'a, str>>,
}

impl<'a> Key<'a> {
    /// A key without parameters.
    pub(crate) fn plain(namespace: &'a str, service: &'a str, health: HealthFilter) -> Self {
        Key {
            namespace,
            service,
            query: Vec::new(),
            optional: Vec::new(),
            health,
            owner: None,
        }
    }

    /// The same key for a namespace owned by `owner` (`None`: the caller's account).
    pub(crate) fn owned_by(self, owner: Option<&'a str>) -> Self {
        Key {
            owner: owner.map(Cow::Borrowed),
            ..self
        }
    }

    /// Adds a query parameter (must match), keeping the list sorted.
    pub(crate) fn require(&mut self, key: String, value: String) {
        insert_sorted(&mut self.query, key, value);
    }

    /// Adds an optional parameter (preferred), keeping the list sorted.
    pub(crate) fn prefer(&mut self, key: String, value: String) {
        insert_sorted(&mut self.optional, key, value);
    }

    /// The borrowed view the cache looks up.
    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            namespace: self.namespace,
            service: self.service,
            query: &self.query,
            optional: &self.optional,
            health: self.health,
            owner: self.owner.as_deref(),
        }
    }
}

/// `a == b` for names, inline: Cloud Map's names are short, and up to 16 bytes
/// are read as the two words the key hash reads ([`short_words`]), which with
/// equal lengths decide equality without a call to `memcmp` (which was an eighth
/// of a warm `resolve`'s time, for two names).
#[inline(always)]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len()
        && match a.len() {
            0..=16 => short_words(a) == short_words(b),
            _ => a == b,
        }
}

/// Slice equality, without the out-of-line element loop when both are empty: the
/// common key has no parameters, and the comparison runs on every warm `resolve`
/// (its cost is guarded by `benches/warm.rs`).
#[inline]
fn same_params(a: &[(String, String)], b: &[(String, String)]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_equality_does() {
        let names = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "abcdefg",
            "abcdefgh",
            "abcdefghi",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "bbcd",
            "abce",
            "abcdefgi",
            "bbcdefghijklmnop",
            "abcdefghijklmnoq",
            "abcdefgxijklmnop",
        ];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

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

    #[test]
    fn owners_make_distinct_keys() {
        let own = KeyRef::plain("ns", "svc", HealthFilter::All);
        let a = own.owned_by(Some("111111111111"));
        let b = own.owned_by(Some("222222222222"));
        assert_eq!(own.owned_by(None).hash(), own.hash());
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), own.hash());
        let req = a.to_request();
        assert_eq!(req.owner(), Some("111111111111"));
        assert!(a.matches(&req));
        assert!(!b.matches(&req));
        assert!(!own.matches(&req));
        assert!(!a.matches(&own.to_request()));
        let mut key = Key::plain("ns", "svc", HealthFilter::All).owned_by(Some("111111111111"));
        key.require("stage".into(), "prod".into());
        assert_eq!(key.as_ref().owner, Some("111111111111"));
    }

    #[test]
    fn every_byte_counts() {
        let base = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        for len in 0..=base.len() {
            let s = &base[..len];
            for i in 0..len {
                let mut changed = s.as_bytes().to_vec();
                changed[i] ^= 1;
                let changed = String::from_utf8(changed).unwrap();
                for (a, b) in [
                    (
                        KeyRef::plain(s, "svc", HealthFilter::All),
                        KeyRef::plain(&changed, "svc", HealthFilter::All),
                    ),
                    (
                        KeyRef::plain("ns", s, HealthFilter::All),
                        KeyRef::plain("ns", &changed, HealthFilter::All),
                    ),
                ] {
                    assert_ne!(a.hash(), b.hash(), "{s:?} vs {changed:?}");
                }
            }
        }
    }

    /// Names are told apart by where they end and which part they are, and a
    /// parameter required differs from the same one preferred.
    #[test]
    fn parts_of_a_key_hash_apart() {
        let plain = |ns, svc| KeyRef::plain(ns, svc, HealthFilter::All).hash();
        assert_ne!(plain("ab", "c"), plain("a", "bc"));
        assert_ne!(plain("ns", "svc"), plain("svc", "ns"));
        assert_ne!(plain("", "x"), plain("x", ""));
        let q = vec![("stage".to_owned(), "prod".to_owned())];
        let required = KeyRef {
            query: &q,
            ..KeyRef::plain("ns", "svc", HealthFilter::All)
        };
        let preferred = KeyRef {
            optional: &q,
            ..KeyRef::plain("ns", "svc", HealthFilter::All)
        };
        assert_ne!(required.hash(), preferred.hash());
        let swapped = vec![("prod".to_owned(), "stage".to_owned())];
        let other = KeyRef {
            query: &swapped,
            ..required
        };
        assert_ne!(required.hash(), other.hash());
    }

    /// The bits the index and the memo use are spread evenly over keys that
    /// differ in a digit or two, as services named in a series do: the shard
    /// (the top 6 bits), the memo way (the low 4), hashbrown's tag (the top 7) and
    /// its bucket in a small table (the low 8).
    #[test]
    fn hashes_spread_over_every_bit_range() {
        let names: Vec<String> = (0..16_384).map(|i| format!("svc-{i}")).collect();
        let hashes: Vec<u64> = names
            .iter()
            .map(|s| KeyRef::plain("shared", s, HealthFilter::HealthyOrElseAll).hash())
            .collect();
        for (what, buckets, bits) in [
            (
                "shard",
                64,
                hashes.iter().map(|h| h >> 58).collect::<Vec<_>>(),
            ),
            ("memo way", 16, hashes.iter().map(|h| h & 15).collect()),
            ("tag", 128, hashes.iter().map(|h| h >> 57).collect()),
            ("bucket", 256, hashes.iter().map(|h| h & 255).collect()),
        ] {
            let mut count = vec![0usize; buckets];
            for b in bits {
                count[b as usize] += 1;
            }
            let mean = hashes.len() / buckets;
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            assert!(
                *lo * 2 > mean && *hi < mean * 2,
                "{what}: {lo}..{hi} per bucket, mean {mean}"
            );
        }
    }
}
