//! Virtual time: the simulator's one global clock, and each node's local clock derived from it
//! with a random initial offset and a constant drift.

use pmesh_node::Instant;

/// Simulated time in microseconds since the start of the run (the one global clock).
pub type SimTime = u64;

/// Microseconds per second.
pub const SEC: SimTime = 1_000_000;
/// Microseconds per millisecond.
pub const MS: SimTime = 1_000;

/// Seconds as a float, for reports.
pub fn secs(t: SimTime) -> f64 {
    t as f64 / SEC as f64
}

/// A node's local monotonic clock (`micros()` on an ESP): it starts at an arbitrary value when
/// the node boots and runs `drift` parts per billion fast (negative: slow) against simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeClock {
    boot_sim: SimTime,
    boot_local: u64,
    drift_ppb: i64,
}

const BILLION: i128 = 1_000_000_000;

impl NodeClock {
    /// A clock that reads `boot_local` at simulated time `boot_sim`.
    pub fn new(boot_sim: SimTime, boot_local: u64, drift_ppb: i64) -> Self {
        // Keep the rate positive whatever the scenario says.
        NodeClock {
            boot_sim,
            boot_local,
            drift_ppb: drift_ppb.clamp(-500_000_000, 500_000_000),
        }
    }

    /// Drift in parts per billion.
    pub fn drift_ppb(&self) -> i64 {
        self.drift_ppb
    }

    /// The local clock at simulated time `t` (clamped to the boot value before boot).
    pub fn local(&self, t: SimTime) -> Instant {
        let d = t.saturating_sub(self.boot_sim) as i128;
        let local = self.boot_local as i128 + d + d * self.drift_ppb as i128 / BILLION;
        Instant::from_micros(local.max(0) as u64)
    }

    /// The earliest simulated time at which the local clock reads at least `deadline`.
    pub fn sim_at(&self, deadline: Instant) -> SimTime {
        let want = deadline.as_micros() as i128 - self.boot_local as i128;
        if want <= 0 {
            return self.boot_sim;
        }
        let rate = BILLION + self.drift_ppb as i128;
        let mut d = (want * BILLION / rate).max(0) as u64;
        // Integer rounding: step until the forward mapping reaches the deadline (at most a few).
        while self.local(self.boot_sim + d) < deadline {
            d += 1;
        }
        while d > 0 && self.local(self.boot_sim + d - 1) >= deadline {
            d -= 1;
        }
        self.boot_sim + d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_inverse() {
        let c = NodeClock::new(5 * SEC, 1_000, 100_000); // +100 ppm
        assert_eq!(c.local(5 * SEC).as_micros(), 1_000);
        assert_eq!(c.local(15 * SEC).as_micros(), 1_000 + 10 * SEC + 1_000);
        for dl in [1_000u64, 1_001, 77_777, 10 * SEC + 1_999, 10 * SEC + 2_000] {
            let t = c.sim_at(Instant::from_micros(dl));
            assert!(c.local(t).as_micros() >= dl);
            assert!(t == 5 * SEC || c.local(t - 1).as_micros() < dl);
        }
        let slow = NodeClock::new(0, 0, -100_000);
        assert_eq!(slow.local(10 * SEC).as_micros(), 10 * SEC - 1_000);
        let dl = 10 * SEC - 1_000;
        let t = slow.sim_at(Instant::from_micros(dl));
        assert!(slow.local(t).as_micros() >= dl && slow.local(t - 1).as_micros() < dl);
        assert!(t.abs_diff(10 * SEC) <= 1);
    }
}
