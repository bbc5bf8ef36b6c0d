//! Hashing: the Fx hash for cache keys, SplitMix64 for mixing and stateless draws,
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

/// The Fx hash (rustc's): a multiply and a rotate a word. Keys come from the
/// program's own code, not from attackers, so a keyed hash buys nothing here and
/// would cost the warm path its margin.
pub(crate) struct FxHasher(pub(crate) u64);

impl FxHasher {
    #[inline]
    pub(crate) fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    pub(crate) fn str(&mut self, s: &str) {
        let bytes = s.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        self.word(tail_word(chunks.remainder()));
        // The length ends the string, so ("ab", "c") and ("a", "bc") differ.
        self.word(bytes.len() as u64);
    }
}

/// The last 0 to 7 bytes of a string as one word, read in place (as foldhash and
/// wyhash do). Copying them into a zeroed buffer first would cost a `memcpy` call and a
/// failed store-to-load forward per string on the warm path (guarded by
/// `benches/warm.rs`).
/// Every byte is read, so with the length hashed after it equal words mean equal
/// tails.
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    match n {
        0 => 0,
        1..=3 => u64::from(rest[0]) | u64::from(rest[n / 2]) << 8 | u64::from(rest[n - 1]) << 16,
        _ => {
            let lo = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let hi = u32::from_le_bytes([rest[n - 4], rest[n - 3], rest[n - 2], rest[n - 1]]);
            u64::from(lo) | u64::from(hi) << 32
        }
    }
}

/// A hasher for keys that are hashes already (mixed by `splitmix64`): it passes the
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
