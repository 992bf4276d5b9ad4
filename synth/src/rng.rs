//! Seeding and drawing: every random choice of a sample comes from one ChaCha8 stream
//! keyed by a mix of (seed, index), so a sample never depends on what other samples,
//! threads or machines did.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a bijective 64-bit mixer.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One 64-bit key for (seed, index, purpose); `purpose` separates independent streams.
pub(crate) fn mix_seed(seed: u64, index: u64, purpose: u64) -> u64 {
    let a = splitmix64(seed ^ 0x5851_f42d_4c95_7f2d);
    let b = splitmix64(a ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
    splitmix64(b ^ purpose.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7))
}

/// A uniform value in [0, 1) derived from (seed, index, purpose) without a stream.
pub(crate) fn unit_hash(seed: u64, index: u64, purpose: u64) -> f32 {
    (mix_seed(seed, index, purpose) >> 40) as f32 / (1u64 << 24) as f32
}

/// A deterministic stream of random choices.
pub(crate) struct Draw(ChaCha8Rng);

impl Draw {
    /// The stream for sample `index` of catalog `seed`.
    pub fn new(seed: u64, index: u64) -> Draw {
        Draw(ChaCha8Rng::seed_from_u64(mix_seed(seed, index, 1)))
    }

    /// A raw 32-bit value (used to seed procedural noise).
    pub fn bits(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// -1 or +1 with equal odds.
    pub fn sign(&mut self) -> f32 {
        if self.chance(0.5) {
            1.0
        } else {
            -1.0
        }
    }

    /// Uniform index in 0..n (n > 0).
    pub fn index(&mut self, n: usize) -> usize {
        ((u64::from(self.0.next_u32()) * n as u64) >> 32) as usize
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    /// One of `items`, with the given integer weights.
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| *w).sum();
        let mut ticket = self.index(total as usize) as u32;
        for (item, w) in items {
            if ticket < *w {
                return *item;
            }
            ticket -= w;
        }
        items[items.len() - 1].0
    }
}
