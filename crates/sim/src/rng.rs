//! The simulator's random numbers.
//!
//! pmesh-node's SplitMix64 rather than `rand`: the report must be byte-identical for a seed
//! across builds and dependency upgrades, and `rand`'s `StdRng` does not promise value
//! stability between versions. SplitMix64 is tiny, fast and good enough for placement,
//! latencies and fault timing.

use pmesh_node::SplitMix64;

/// A seeded generator.
#[derive(Clone, Debug)]
pub struct SimRng(SplitMix64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SimRng(SplitMix64::new(seed))
    }

    /// An independent stream derived from this seed and a label (so adding one use of
    /// randomness does not shift every other one).
    pub fn stream(seed: u64, label: u64) -> Self {
        let mut r = SimRng::new(seed ^ label.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next_u64();
        r
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below(hi - lo + 1)
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform in `[-m, m]` for a signed magnitude.
    pub fn signed(&mut self, m: i64) -> i64 {
        if m <= 0 {
            0
        } else {
            self.range(0, 2 * m as u64) as i64 - m
        }
    }
}
