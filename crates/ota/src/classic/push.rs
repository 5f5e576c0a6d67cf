//! The classic **push** broadcast's bookkeeping: the pace, the passes, and which nodes a
//! finished pass is known to have reached.
//!
//! Stock painlessMesh receivers tell the distributor almost nothing: in broadcast mode they
//! send no request unless they miss a chunk (then a request whose `from` is the Data's
//! `dest`, 0 for a push), and they never report progress or success. What the distributor
//! does see is the mesh's node list. So the rules are:
//!
//! - **A pass** floods Data 0…n−1 in order, `routing` 2, `dest` 0, `broadcasted:true`, one
//!   frame every `frame bytes / rate` (the pace: painlessMesh relays queue without limit,
//!   so the rate must stay below what the slowest link drains). It starts right after an
//!   announce, so every node that will take it has recorded the MD5 first.
//! - **Coverage.** A node is *covered* when it was in the mesh from the pass's start until
//!   [`SETTLE`] after its last chunk was sent (a stock node reboots 2 s after installing, so
//!   a drop later than that is taken as the install's reboot, not a loss). A node that joined,
//!   left or came back during a pass is not covered by it.
//! - **Another pass** starts right after a scheduled announce (every 60 s by default) that
//!   finds a node in the mesh no pass covered yet — a late joiner, a node that crashed or
//!   lost its link mid-pass. Not at once when a pass settles: the nodes that just installed
//!   reboot then, and their children would lose the new pass's chunks. So a node that
//!   missed a pass installs at most one announce interval plus one pass later (or sooner,
//!   by its fallback requests, if it only missed a few chunks).
//! - **Requests** during a push: a stock node that missed a chunk (out of sequence in
//!   broadcast mode) asks for its next part with `from` 0 and `broadcasted:false`; the chunk
//!   is flooded back with `broadcasted:false`, so it reaches the requester whatever its id
//!   and nodes still following the pass ignore it. `broadcasted:true` requests (a stock
//!   root, or a pmesh receiver driving) are ignored while a pass runs: the pass brings the
//!   chunk anyway.

use alloc::collections::BTreeSet;
use core::time::Duration;

use pmesh_node::Instant;

/// The default push pace, bytes per second of Data frames leaving the distributor. Chosen
/// from the relay queues measured by `pmesh bench ota --modes push-stock` (see
/// docs/BENCHMARKS.md): at 250,000 B/s no relay on the simulated 2 Mbit/s links holds more
/// than a few frames, while unlimited pace queues most of the image at the first relays.
pub const DEFAULT_PUSH_RATE: u64 = 250_000;

/// How long after a pass's last chunk a dropped node still counts as having missed it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Nodes remembered as covered (larger meshes: the rest are treated as uncovered).
const MAX_NODES: usize = 4096;

/// The pace of a push broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushPace {
    /// Data frame bytes per second leaving the distributor; 0 floods as fast as the links
    /// take it (everything is queued at once).
    pub bytes_per_sec: u64,
}

impl Default for PushPace {
    fn default() -> Self {
        PushPace {
            bytes_per_sec: DEFAULT_PUSH_RATE,
        }
    }
}

impl PushPace {
    /// No pacing.
    pub const UNLIMITED: PushPace = PushPace { bytes_per_sec: 0 };

    /// The time one frame of `len` bytes takes at this pace (zero when unlimited).
    pub fn interval(self, len: usize) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((len as u64).saturating_mul(1_000_000) / self.bytes_per_sec)
    }
}

/// Where a push offer stands (what the distributor can tell about stock nodes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushProgress {
    /// Passes started.
    pub passes: u32,
    /// The part the running pass floods next, if a pass runs.
    pub running: Option<u32>,
    /// Nodes some finished pass covered (in the mesh for all of it): every chunk was
    /// flooded past them in order.
    pub covered: alloc::vec::Vec<u32>,
}

/// A running pass.
#[derive(Clone, Debug)]
pub(crate) struct Pass {
    /// Next part to flood (`no_part` when all are sent).
    pub next: u32,
    /// When the next part is due, or when the pass settles once all are sent.
    pub due: Instant,
    /// Nodes in the mesh since the pass started.
    steady: BTreeSet<u32>,
}

/// Per-offer push state.
#[derive(Clone, Debug)]
pub(crate) struct PushState {
    pub pace: PushPace,
    pub pass: Option<Pass>,
    /// Nodes some finished pass covered.
    covered: BTreeSet<u32>,
    /// Passes started.
    pub passes: u32,
}

impl PushState {
    pub fn new(pace: PushPace) -> Self {
        PushState {
            pace,
            pass: None,
            covered: BTreeSet::new(),
            passes: 0,
        }
    }

    /// True if a pass should start now: none yet, or a node in `nodes` is covered by none.
    pub fn wants_pass(&self, nodes: &[u32]) -> bool {
        self.pass.is_none() && (self.passes == 0 || nodes.iter().any(|n| !self.covered.contains(n)))
    }

    /// Nodes in `nodes` no finished pass covered.
    pub fn uncovered(&self, nodes: &[u32]) -> usize {
        nodes.iter().filter(|n| !self.covered.contains(n)).count()
    }

    /// What this state tells.
    pub fn progress(&self) -> PushProgress {
        PushProgress {
            passes: self.passes,
            running: self.pass.as_ref().map(|p| p.next),
            covered: self.covered.iter().copied().collect(),
        }
    }

    /// Starts a pass at `now` with these nodes in the mesh.
    pub fn start(&mut self, now: Instant, nodes: &[u32]) {
        self.passes += 1;
        self.pass = Some(Pass {
            next: 0,
            due: now,
            steady: nodes.iter().copied().take(MAX_NODES).collect(),
        });
    }

    /// The mesh changed: nodes gone now did not stay for the running pass.
    pub fn on_topology(&mut self, nodes: &[u32]) {
        if let Some(p) = &mut self.pass {
            p.steady.retain(|n| nodes.contains(n));
        }
    }

    /// The pass has settled: its steady nodes are covered. Returns how many it covered.
    pub fn finish(&mut self) -> usize {
        let Some(p) = self.pass.take() else { return 0 };
        let n = p.steady.len();
        for id in p.steady {
            if self.covered.len() >= MAX_NODES {
                break;
            }
            self.covered.insert(id);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_needs_presence_for_the_whole_pass() {
        let mut s = PushState::new(PushPace::default());
        assert!(s.wants_pass(&[]), "the first pass always runs");
        s.start(Instant::ZERO, &[1, 2, 3]);
        assert!(!s.wants_pass(&[1, 2, 3]), "one pass at a time");
        s.on_topology(&[1, 3]); // 2 dropped
        s.on_topology(&[1, 2, 3, 4]); // 2 back, 4 joined
        assert_eq!(s.finish(), 2);
        assert_eq!(s.uncovered(&[1, 2, 3, 4]), 2);
        assert!(s.wants_pass(&[1, 2, 3, 4]));
        assert!(!s.wants_pass(&[1, 3]), "covered nodes need no pass");
    }

    #[test]
    fn pace_interval() {
        assert_eq!(
            PushPace::default().interval(2_500),
            Duration::from_millis(10)
        );
        assert_eq!(PushPace::UNLIMITED.interval(2_500), Duration::ZERO);
    }
}
