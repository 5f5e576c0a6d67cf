//! Maps the host's monotonic clock onto the node's [`pmesh_node::Instant`] (µs since an epoch).

use std::time::Duration;

use pmesh_node::Instant;

/// A monotonic clock whose epoch is the moment it was created.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// Now, as a node instant.
    pub fn now(&self) -> Instant {
        self.instant(std::time::Instant::now())
    }

    /// A host instant as a node instant (instants before the epoch map to the epoch).
    pub fn instant(&self, at: std::time::Instant) -> Instant {
        Instant::from_micros(at.saturating_duration_since(self.epoch).as_micros() as u64)
    }

    /// A node instant as a host instant (for timers).
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.epoch + Duration::from_micros(at.as_micros())
    }

    /// Time since the clock started.
    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_std() {
        let c = Clock::new();
        let later = std::time::Instant::now() + Duration::from_millis(1500);
        let n = c.instant(later);
        assert!(n.as_micros() >= 1_500_000);
        let back = c.to_std(n);
        let diff = if back > later {
            back - later
        } else {
            later - back
        };
        assert!(diff < Duration::from_micros(1));
    }

    #[test]
    fn before_epoch_is_zero() {
        let before = std::time::Instant::now();
        let c = Clock::new();
        assert_eq!(c.instant(before), Instant::ZERO);
    }
}
