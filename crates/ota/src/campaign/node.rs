//! One node's way through a campaign, and its health gate.

use pmesh_node::Instant;

use super::plan::HealthGate;

/// Why a node failed its wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The transfer was abandoned (download, verification or apply failed), or made no
    /// progress for the gate's `transfer_deadline`.
    TransferFailed,
    /// No report with the new version within the return deadline after apply.
    NeverCameBack,
    /// It came back running a version that is neither the new one nor its previous one.
    VersionMismatch,
    /// It came back on its previous version: it reverted by itself.
    RevertedItself,
    /// Free heap below the floor during the soak.
    HeapFloor,
    /// The boot counter rose more than the gate allows during the soak.
    RebootLoop,
    /// The custom metric left its bounds during the soak.
    MetricOutOfBounds,
    /// It stopped reporting during the soak (silence above the gate's maximum).
    WentSilent,
}

impl FailReason {
    /// Whether the node may be running the new image (so a halt tells it to revert).
    pub fn may_run_new_image(self) -> bool {
        !matches!(
            self,
            FailReason::TransferFailed | FailReason::RevertedItself
        )
    }
}

/// Where a node is in the campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodePhase {
    /// Assigned to a wave that has not started, or started without a transfer yet.
    Pending,
    /// Receiving the image.
    Downloading,
    /// Image received and its hash checked.
    Verified,
    /// Image applied: the node reboots into it.
    Applied,
    /// Back running the new version, soaking.
    Trial,
    /// Passed the health gate.
    Confirmed,
    /// Back on its previous image after the campaign told it to revert.
    Reverted,
    /// Failed, with the reason.
    Failed(FailReason),
}

impl NodePhase {
    /// Confirmed, reverted or failed: nothing more is expected from the node in this campaign.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            NodePhase::Confirmed | NodePhase::Reverted | NodePhase::Failed(_)
        )
    }

    /// Applied or on trial: runs (or reboots into) the new image, not yet confirmed.
    pub fn on_trial(self) -> bool {
        matches!(self, NodePhase::Applied | NodePhase::Trial)
    }
}

/// What a node reports about itself (its periodic status, or the host's view of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport<'a> {
    /// The node.
    pub node: super::NodeId,
    /// When the host received it.
    pub at: Instant,
    /// The firmware version it runs.
    pub version: &'a str,
    /// Free heap, bytes.
    pub free_heap: u32,
    /// Its boot counter.
    pub boots: u32,
    /// The optional custom metric.
    pub metric: Option<i64>,
}

/// A node's state as the campaign tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeState {
    pub wave: u32,
    pub phase: NodePhase,
    /// When the current phase began.
    pub since: Instant,
    pub last_report: Option<Instant>,
    /// Last boot counter seen.
    pub boots: Option<u32>,
    /// Boot counter seen before apply (to tell a pre-reboot report from a post-reboot one).
    pub boots_at_apply: Option<u32>,
    /// Boot counter at the start of the trial.
    pub trial_boots: u32,
    /// Hash of the version the node ran before the campaign reached it.
    pub baseline: Option<u64>,
    pub revert_ordered: bool,
}

/// What one input did to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    Phase(NodePhase),
}

/// FNV-1a 64 of a version string: the campaign keeps versions as fixed-size hashes so that
/// hostile reports cannot grow its memory.
pub(crate) fn version_hash(v: &str) -> u64 {
    v.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl NodeState {
    pub fn new(wave: u32, at: Instant) -> Self {
        NodeState {
            wave,
            phase: NodePhase::Pending,
            since: at,
            last_report: None,
            boots: None,
            boots_at_apply: None,
            trial_boots: 0,
            baseline: None,
            revert_ordered: false,
        }
    }

    pub fn enter(&mut self, phase: NodePhase, at: Instant) -> Change {
        self.phase = phase;
        self.since = at;
        Change::Phase(phase)
    }

    /// A report; `target` is the hash of the campaign's version.
    pub fn on_report(&mut self, r: &NodeReport<'_>, target: u64, gate: &HealthGate) -> Change {
        let hash = version_hash(r.version);
        let rebooted = self.boots_at_apply.is_none_or(|b| r.boots > b);
        self.boots = Some(r.boots);
        self.last_report = Some(r.at);
        if self.revert_ordered {
            return if hash != target && rebooted && self.phase.on_trial() {
                self.enter(NodePhase::Reverted, r.at)
            } else {
                Change::None
            };
        }
        match self.phase {
            NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified => {
                self.baseline = Some(hash);
                Change::None
            }
            NodePhase::Applied if hash == target && rebooted => {
                self.trial_boots = r.boots;
                let c = self.enter(NodePhase::Trial, r.at);
                match self.check(r, gate) {
                    Change::None => c,
                    fail => fail,
                }
            }
            NodePhase::Applied | NodePhase::Trial if hash != target && rebooted => {
                let reason = if Some(hash) == self.baseline {
                    FailReason::RevertedItself
                } else {
                    FailReason::VersionMismatch
                };
                self.enter(NodePhase::Failed(reason), r.at)
            }
            NodePhase::Trial => self.check(r, gate),
            _ => Change::None,
        }
    }

    /// The soak checks on a report of a node on trial.
    fn check(&mut self, r: &NodeReport<'_>, gate: &HealthGate) -> Change {
        let reason = if r.free_heap < gate.heap_floor {
            FailReason::HeapFloor
        } else if r.boots.saturating_sub(self.trial_boots) > gate.max_reboots {
            FailReason::RebootLoop
        } else if let (Some(b), Some(m)) = (gate.metric, r.metric)
            && !(b.min..=b.max).contains(&m)
        {
            FailReason::MetricOutOfBounds
        } else {
            return Change::None;
        };
        self.enter(NodePhase::Failed(reason), r.at)
    }

    /// Deadlines at `at`: return deadline, silence, end of the soak.
    pub fn on_tick(&mut self, at: Instant, gate: &HealthGate) -> Change {
        if self.revert_ordered {
            return Change::None;
        }
        match self.phase {
            NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified
                if at >= self.since + gate.transfer_deadline =>
            {
                self.enter(NodePhase::Failed(FailReason::TransferFailed), at)
            }
            NodePhase::Applied if at >= self.since + gate.return_deadline => {
                self.enter(NodePhase::Failed(FailReason::NeverCameBack), at)
            }
            NodePhase::Trial => {
                let heard = self.last_report.unwrap_or(self.since);
                if at > heard + gate.max_silence {
                    self.enter(NodePhase::Failed(FailReason::WentSilent), at)
                } else if at >= self.since + gate.soak {
                    self.enter(NodePhase::Confirmed, at)
                } else {
                    Change::None
                }
            }
            _ => Change::None,
        }
    }

    /// The next instant at which [`Self::on_tick`] may change something.
    pub fn deadline(&self, gate: &HealthGate) -> Option<Instant> {
        if self.revert_ordered {
            return None;
        }
        match self.phase {
            NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified => {
                Some(self.since + gate.transfer_deadline)
            }
            NodePhase::Applied => Some(self.since + gate.return_deadline),
            NodePhase::Trial => {
                let heard = self.last_report.unwrap_or(self.since);
                let silence = heard + gate.max_silence + core::time::Duration::from_micros(1);
                Some(silence.min(self.since + gate.soak))
            }
            _ => None,
        }
    }
}
