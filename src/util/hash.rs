//! Hashing: folded multiplies for cache keys, SplitMix64 for stateless draws,
//! and a pass-through hasher for maps keyed by hashes already mixed.

use std::hash::Hasher;

/// SplitMix64's output function over a Weyl sequence: a fast, well-mixed,
/// stateless generator, so draws need no lock and no shared RNG state.
#[inline]
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The high and low halves of the full product, folded together: one wide
/// multiply mixes every bit of both operands into every bit of the result (as in
/// foldhash and wyhash).
#[inline]
pub(crate) fn fold(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    (full as u64) ^ ((full >> 64) as u64)
}

// Arbitrary constants (digits of pi), so that no zero operand folds away.
const K0: u64 = 0x243F_6A88_85A3_08D3;
const K1: u64 = 0x1319_8A2E_0370_7344;
const K2: u64 = 0xA409_3822_299F_31D0;

/// One name's hash: a name of up to 16 bytes is read as two words and folded once;
/// a longer one is folded 16 bytes at a time. Names are hashed apart, so a key's
/// names are hashed side by side, not one after another: a warm `resolve` waits
/// on one multiply per name and one to join them, not on a chain of multiplies
/// per word (`benches/warm.rs`). Keys come from the program's own code, not from
/// attackers, so a keyed hash would buy nothing here.
#[inline]
pub(crate) fn name_hash(s: &str) -> u64 {
    let b = s.as_bytes();
    let n = b.len();
    let (lo, hi) = match n {
        0..=16 => short_words(b),
        _ => {
            let mut acc = K2;
            // Whole chunks short of the last byte: what they leave is 1 to 16 bytes,
            // all inside the last 16 bytes read below (overlapping the chunks).
            for c in b[..n - 1].chunks_exact(16) {
                acc = fold(word(c) ^ K0, word(&c[8..]) ^ acc);
            }
            let last = &b[n - 16..];
            (word(last) ^ acc, word(&last[8..]))
        }
    };
    // The length ends the name, so ("ab", "c") and ("a", "bc") differ.
    fold(lo ^ K0, hi ^ K1 ^ n as u64)
}

/// Up to 16 bytes as two words, every byte read (in place, as foldhash does:
/// copying them into a zeroed buffer first would cost a `memcpy` call and a failed
/// store-to-load forward per name). With the length beside them, equal words mean
/// equal bytes, so the cache's name comparison reads them too (`cache/key.rs`).
#[inline(always)]
pub(crate) fn short_words(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    match n {
        8..=16 => (word(b), word(&b[n - 8..])),
        4..=7 => (u64::from(half(b)), u64::from(half(&b[n - 4..]))),
        1..=3 => (
            u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
            0,
        ),
        _ => (0, 0),
    }
}

/// The first 8 bytes of `b`, little-endian.
#[inline(always)]
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The first 4 bytes of `b`, little-endian.
#[inline(always)]
fn half(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A hasher for keys that are hashes already (mixed by `fold`): it passes the
/// `u64` through.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
