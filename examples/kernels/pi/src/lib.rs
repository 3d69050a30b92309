//! Monte Carlo estimate of pi: each item is a seed; its output counts the
//! random points of the unit square (from a PRNG of its own, so every
//! architecture draws the same points) that fall inside the quarter circle.
//! The module reduce sums the counts and gives the estimate.

use serde::{Deserialize, Serialize};

/// Points drawn per seed: about 20 ms of interpreted work.
pub const SAMPLES: u64 = 100_000;

/// One seed's count, or several seeds' after the reduce.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Count {
    /// Points inside the quarter circle.
    pub inside: u64,
    /// Points drawn.
    pub samples: u64,
    /// 4 * inside / samples.
    pub pi: f64,
}

/// SplitMix64 (Steele, Lea and Flood): tiny, and the same on every platform.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1) from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn count(inside: u64, samples: u64) -> Count {
    Count {
        inside,
        samples,
        pi: 4.0 * inside as f64 / samples as f64,
    }
}

/// The kernel: SAMPLES points from `seed`.
pub fn estimate(seed: u64) -> Count {
    let mut rng = SplitMix64::new(seed);
    let mut inside = 0;
    for _ in 0..SAMPLES {
        let (x, y) = (rng.next_f64(), rng.next_f64());
        if x * x + y * y < 1.0 {
            inside += 1;
        }
    }
    count(inside, SAMPLES)
}

/// The reduce: counts add up (associative, as the ABI asks).
pub fn combine(counts: Vec<Count>) -> Count {
    let (inside, samples) = counts
        .iter()
        .fold((0, 0), |(i, s), c| (i + c.inside, s + c.samples));
    count(inside, samples)
}

musketeer_guest::map!(estimate);
musketeer_guest::reduce!(combine);
