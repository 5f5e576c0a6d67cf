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
//! - **Firmware reports.** A stock node running the Alteriom status package broadcasts an
//!   EnhancedStatus (604, or 203 in Phase 1/2 meshes) whose `fwMD5` is the MD5 of the image it
//!   runs. A node whose latest report names the offered image is *done*: no pass is started
//!   for it, covered or not. A node reporting another image is not done, and after a pass
//!   covered it that report undoes the coverage (the node failed its MD5 check, or rolled
//!   back: the next scheduled announce starts a pass for it) when two things hold:
//!   - the report came at least [`REPORT_GRACE`] after that pass settled (a node installs
//!     on the last chunk but runs, and reports, the old image until it reboots 2 s later);
//!   - the image it reports is one some node was seen to update *from*: that node reported
//!     it and later reported the offered image. A status carries no role, so this is how a
//!     target is told from a node of another role, which reports its own firmware forever
//!     and must not restart the flood at every announce.
//!
//!   Reports without `fwMD5` (pmesh nodes leave it out unless configured) change nothing.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::time::Duration;

use pmesh_node::Instant;

/// The default push pace, bytes per second of Data frames leaving the distributor. Chosen
/// from the relay queues measured by `pmesh bench ota --modes push-stock` (see
/// docs/BENCHMARKS.md): at 250,000 B/s no relay on the simulated 2 Mbit/s links holds more
/// than a few frames, while unlimited pace queues most of the image at the first relays.
pub const DEFAULT_PUSH_RATE: u64 = 250_000;

/// How long after a pass's last chunk a dropped node still counts as having missed it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How long after a pass settled a node's report of another firmware is still taken as
/// stale (sent before its reboot into the new image, or delayed in the mesh).
pub const REPORT_GRACE: Duration = Duration::from_secs(10);

/// Nodes remembered as covered, and nodes whose reports are remembered (larger meshes: the
/// rest are treated as uncovered and unreported).
const MAX_NODES: usize = 4096;

/// Firmware MD5s remembered as ones targets update from (searched linearly).
const MAX_UPGRADED_FROM: usize = 16;

/// A firmware MD5 as reported (16 bytes, parsed from hex).
pub(crate) type Md5 = [u8; 16];

/// Parses 32 hex digits (either case) into an MD5; None for anything else.
pub(crate) fn parse_md5(text: &[u8]) -> Option<Md5> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A node's latest firmware report.
#[derive(Clone, Copy, Debug)]
struct Report {
    md5: Md5,
    at: Instant,
}

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
    pub covered: Vec<u32>,
    /// Nodes whose latest EnhancedStatus reports the offered image's MD5: installed.
    pub installed: Vec<u32>,
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

/// What the distributor knows of one node (one map for both, which keeps the firmware small).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// When the last pass that covered it settled.
    covered: Option<Instant>,
    /// Its latest firmware report.
    report: Option<Report>,
}

/// Per-offer push state.
#[derive(Clone, Debug)]
pub(crate) struct PushState {
    pub pace: PushPace,
    pub pass: Option<Pass>,
    /// The offered image's MD5 (None if the offer's text is not one: reports then never match).
    offered: Option<Md5>,
    /// Nodes some finished pass covered, or that reported their firmware.
    seen: BTreeMap<u32, Seen>,
    /// Images nodes were seen to update from (reported, then the offered one reported).
    upgraded_from: Vec<Md5>,
    /// Passes started.
    pub passes: u32,
}

impl PushState {
    pub fn new(pace: PushPace, offered_md5: &str) -> Self {
        PushState {
            pace,
            pass: None,
            offered: parse_md5(offered_md5.as_bytes()),
            seen: BTreeMap::new(),
            upgraded_from: Vec::new(),
            passes: 0,
        }
    }

    /// True if a pass should start now: none yet, or a node in `nodes` needs one.
    pub fn wants_pass(&self, nodes: &[u32]) -> bool {
        self.pass.is_none() && (self.passes == 0 || nodes.iter().any(|&n| self.needs(n)))
    }

    /// Nodes in `nodes` that still need a pass.
    pub fn uncovered(&self, nodes: &[u32]) -> usize {
        nodes.iter().filter(|&&n| self.needs(n)).count()
    }

    /// Whether this report names the offered image.
    fn is_offered(&self, r: Option<Report>) -> bool {
        r.is_some_and(|r| Some(r.md5) == self.offered)
    }

    /// Whether node `n` needs a pass: not done (reporting the offered image), and either no
    /// pass covered it or its report since says the coverage did not take (see the module
    /// doc for the rule).
    fn needs(&self, n: u32) -> bool {
        let seen = self.seen.get(&n).copied().unwrap_or_default();
        if self.is_offered(seen.report) {
            return false;
        }
        let Some(settled) = seen.covered else {
            return true;
        };
        seen.report
            .is_some_and(|r| r.at >= settled + REPORT_GRACE && self.upgraded_from.contains(&r.md5))
    }

    /// The entry of node `n`, made if there is room.
    fn entry(&mut self, n: u32) -> Option<&mut Seen> {
        if self.seen.len() >= MAX_NODES && !self.seen.contains_key(&n) {
            return None;
        }
        Some(self.seen.entry(n).or_default())
    }

    /// Node `node` reported at `now` that it runs the image with this MD5.
    pub fn on_report(&mut self, node: u32, md5: Md5, now: Instant) {
        let offered = self.offered;
        let Some(seen) = self.entry(node) else { return };
        let previous = seen.report.replace(Report { md5, at: now });
        if let Some(old) = previous.map(|r| r.md5)
            && Some(md5) == offered
            && Some(old) != offered
            && !self.upgraded_from.contains(&old)
            && self.upgraded_from.len() < MAX_UPGRADED_FROM
        {
            self.upgraded_from.push(old);
        }
    }

    /// What this state tells.
    pub fn progress(&self) -> PushProgress {
        let nodes = |f: &dyn Fn(&Seen) -> bool| {
            self.seen
                .iter()
                .filter(|(_, s)| f(s))
                .map(|(n, _)| *n)
                .collect()
        };
        PushProgress {
            passes: self.passes,
            running: self.pass.as_ref().map(|p| p.next),
            covered: nodes(&|s| s.covered.is_some()),
            installed: nodes(&|s| self.is_offered(s.report)),
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

    /// The pass has settled at `now`: its steady nodes are covered. Returns how many it
    /// covered.
    pub fn finish(&mut self, now: Instant) -> usize {
        let Some(p) = self.pass.take() else { return 0 };
        let n = p.steady.len();
        for id in p.steady {
            if let Some(seen) = self.entry(id) {
                seen.covered = Some(now);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: &str = "0123456789abcdef0123456789abcdef";
    const OLD: [u8; 16] = [7; 16];
    const OTHER_ROLE: [u8; 16] = [9; 16];

    fn at(secs: u64) -> Instant {
        Instant::from_micros(secs * 1_000_000)
    }

    #[test]
    fn coverage_needs_presence_for_the_whole_pass() {
        let mut s = PushState::new(PushPace::default(), OFFERED);
        assert!(s.wants_pass(&[]), "the first pass always runs");
        s.start(Instant::ZERO, &[1, 2, 3]);
        assert!(!s.wants_pass(&[1, 2, 3]), "one pass at a time");
        s.on_topology(&[1, 3]); // 2 dropped
        s.on_topology(&[1, 2, 3, 4]); // 2 back, 4 joined
        assert_eq!(s.finish(at(1)), 2);
        assert_eq!(s.uncovered(&[1, 2, 3, 4]), 2);
        assert!(s.wants_pass(&[1, 2, 3, 4]));
        assert!(!s.wants_pass(&[1, 3]), "covered nodes need no pass");
    }

    #[test]
    fn reports_of_the_offered_image_mean_done() {
        let mut s = PushState::new(PushPace::default(), OFFERED);
        s.start(at(0), &[1, 2]);
        s.on_topology(&[1]); // 2 left mid-pass
        s.finish(at(10));
        assert!(s.wants_pass(&[1, 2]), "2 missed the pass");
        let upper = parse_md5(OFFERED.to_uppercase().as_bytes()).unwrap();
        s.on_report(2, upper, at(11));
        assert!(!s.wants_pass(&[1, 2]), "2 runs the offered image");
        assert_eq!(s.progress().installed, [2]);
        // A node no pass covered that reports another image still needs one.
        s.on_report(3, OLD, at(12));
        assert!(s.wants_pass(&[1, 2, 3]));
    }

    #[test]
    fn another_image_after_coverage_needs_grace_and_a_known_old_image() {
        let mut s = PushState::new(PushPace::default(), OFFERED);
        let offered = parse_md5(OFFERED.as_bytes()).unwrap();
        for n in [1, 2, 3, 4] {
            s.on_report(n, if n == 4 { OTHER_ROLE } else { OLD }, at(1));
        }
        s.start(at(2), &[1, 2, 3, 4]);
        s.finish(at(20));
        let nodes = [1, 2, 3, 4];
        assert!(!s.wants_pass(&nodes), "all covered");
        s.on_report(3, OLD, at(25)); // before its reboot: stale
        s.on_report(1, offered, at(26)); // 1 updated from OLD
        assert!(!s.wants_pass(&nodes), "a report within the grace is stale");
        s.on_report(4, OTHER_ROLE, at(40)); // another role: never updates
        assert!(
            !s.wants_pass(&nodes),
            "OTHER_ROLE is no image a target updated from"
        );
        s.on_report(3, OLD, at(40)); // after the grace, still OLD: its install failed
        assert!(s.wants_pass(&nodes));
        assert_eq!(s.uncovered(&nodes), 1);
        s.start(at(60), &nodes);
        s.finish(at(80));
        assert!(!s.wants_pass(&nodes), "the new pass covers 3 again");
    }

    #[test]
    fn md5_text_must_be_32_hex_digits() {
        assert_eq!(
            parse_md5(b"00112233445566778899aabbccddeeff").unwrap()[15],
            0xff
        );
        assert!(parse_md5(b"00112233445566778899aabbccddeef").is_none());
        assert!(parse_md5(b"00112233445566778899aabbccddeefg").is_none());
        assert!(parse_md5("0011223344556677889\u{e9}aabbccddeef".as_bytes()).is_none());
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
