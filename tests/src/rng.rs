//! Deterministic pseudo-random numbers for tests and benchmarks: the same seed gives the same
//! numbers on every machine and in every run, so that a failure replays from its seed and a
//! benchmark fills its maps alike each time.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood 2014, as `java.util.SplittableRandom`
//! and the seeding of the xoshiro family use it): a 64-bit counter stepped by the golden ratio
//! and mixed into each output. Every seed works, 0 included, and the outputs pass BigCrush,
//! which is more than frame fuzzing and map filling ask for. It is not for anything secret.
//!
//! Nothing here depends on the crate's other modules, so that any crate's tests can use it.

/// SplitMix64: one addition and a mix per output. The sequence of a seed is fixed: benchmarks
/// and replayed test seeds depend on it.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The golden ratio in 64 bits, the counter's step.
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator whose first output is the mix of `seed` plus one step.
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0). The modulo's bias is below 2^-50 for the small `n` of
    /// tests, far beneath anything a test could notice.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// One of `items` (not empty), each as likely as the others.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
