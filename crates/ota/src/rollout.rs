//! A distributor's view of one rollout, node by node, and the rule that says when it is done.
//!
//! [`RolloutView`] is sans-IO: it is fed the plugin's own [`OtaEvent`]s (pmesh targets report
//! their progress and phase, which the distributor raises as [`OtaEvent::NodeProgress`]) and,
//! for classic offers, what the distributor saw of each requester (classic receivers never
//! report; the distributor only sees their requests) and of its push passes. [`rollout_done`]
//! is the pure rule over that view. pmesh-net's `run_push` subscribes to the node's events and
//! feeds one view per push; the simulator and tests can feed one the same way in virtual time.
//!
//! This is one transfer as its distributor sees it; a staged [`crate::campaign`] sits above
//! (waves, health gates, its own per-node phases from apply to confirmation).
//!
//! Text appears only at the edges: [`RolloutPhase::name`] and [`RefusalCode::name`] are what JSON
//! and MQTT payloads carry, and [`RolloutPhase::parse`] reads them back.

use alloc::collections::BTreeMap;
use core::time::Duration;

use pmesh_node::Instant;

use crate::classic::PushProgress;
use crate::event::{Mode, OtaEvent, Phase, Refusal, TransferId};

/// Why a target refused or failed a rollout, as its progress report carries it (the wire code
/// of a [`Refusal`]; the details stay on the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The image is for another role.
    WrongRole,
    /// The image is for other hardware.
    WrongHardware,
    /// The node already runs the image.
    AlreadyCurrent,
    /// The image does not fit the node's firmware slot.
    TooLarge,
    /// The node cannot decompress the image.
    UnknownCompression,
    /// The offer is malformed (or was cancelled).
    BadOffer,
    /// The written image does not have the announced hash.
    HashMismatch,
    /// Another transfer is in progress.
    Busy,
    /// The node's firmware storage failed.
    Io,
    /// The compressed stream is damaged.
    Codec,
    /// Signed firmware: the node does not trust the image.
    Untrusted,
    /// A code this version does not know.
    Other(u8),
}

impl RefusalCode {
    /// The reason a [`Phase::Failed`] code stands for (see [`Refusal::wire_code`]).
    pub fn from_wire(code: u8) -> Self {
        match code {
            1 => RefusalCode::WrongRole,
            2 => RefusalCode::WrongHardware,
            3 => RefusalCode::AlreadyCurrent,
            4 => RefusalCode::TooLarge,
            5 => RefusalCode::UnknownCompression,
            6 => RefusalCode::BadOffer,
            7 => RefusalCode::HashMismatch,
            8 => RefusalCode::Busy,
            9 => RefusalCode::Io,
            10 => RefusalCode::Codec,
            11 => RefusalCode::Untrusted,
            other => RefusalCode::Other(other),
        }
    }

    /// The name JSON and MQTT payloads carry (`hash_mismatch`, ...; `unknown` for
    /// [`RefusalCode::Other`]).
    pub fn name(self) -> &'static str {
        match self {
            RefusalCode::WrongRole => "wrong_role",
            RefusalCode::WrongHardware => "wrong_hardware",
            RefusalCode::AlreadyCurrent => "already_current",
            RefusalCode::TooLarge => "too_large",
            RefusalCode::UnknownCompression => "unknown_compression",
            RefusalCode::BadOffer => "bad_offer",
            RefusalCode::HashMismatch => "hash_mismatch",
            RefusalCode::Busy => "busy",
            RefusalCode::Io => "io",
            RefusalCode::Codec => "codec",
            RefusalCode::Untrusted => "untrusted",
            RefusalCode::Other(_) => "unknown",
        }
    }

    /// The inverse of [`RefusalCode::name`] (`unknown` and names this version does not know
    /// read as `Other(0)`).
    pub fn parse(name: &str) -> Self {
        (1..=11)
            .map(RefusalCode::from_wire)
            .find(|r| r.name() == name)
            .unwrap_or(RefusalCode::Other(0))
    }
}

impl From<&Refusal> for RefusalCode {
    fn from(r: &Refusal) -> Self {
        RefusalCode::from_wire(r.wire_code())
    }
}

/// Where one node is in a rollout, as the distributor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RolloutPhase {
    /// pmesh: receiving chunks.
    Receiving,
    /// pmesh: every chunk written and the hash checked; waiting for the apply time.
    Verified,
    /// pmesh: the image is committed; the node reboots into it.
    Installed,
    /// pmesh: the node refused or failed.
    Failed(RefusalCode),
    /// Classic: the node asked for chunks and was not yet served all of them.
    Requesting,
    /// Classic: the node was served every chunk (on request, or by a push pass it was in the
    /// mesh for); it then checks the MD5 and installs silently.
    Served,
}

impl RolloutPhase {
    /// The phase a pmesh progress report's [`Phase`] stands for.
    pub fn of_report(p: Phase) -> Self {
        match p {
            Phase::Distribute => RolloutPhase::Receiving,
            Phase::Verified => RolloutPhase::Verified,
            Phase::Applied => RolloutPhase::Installed,
            Phase::Failed(code) => RolloutPhase::Failed(RefusalCode::from_wire(code)),
        }
    }

    /// `receiving`, `verified`, `installed`, `failed`, `requesting` or `served`: the `state`
    /// of JSON and MQTT payloads (a failure's reason goes next to it, [`RefusalCode::name`]).
    pub fn name(self) -> &'static str {
        match self {
            RolloutPhase::Receiving => "receiving",
            RolloutPhase::Verified => "verified",
            RolloutPhase::Installed => "installed",
            RolloutPhase::Failed(_) => "failed",
            RolloutPhase::Requesting => "requesting",
            RolloutPhase::Served => "served",
        }
    }

    /// Reads a `state` (and, for `failed`, its `reason`) back; None for an unknown state.
    pub fn parse(state: &str, reason: Option<&str>) -> Option<Self> {
        Some(match state {
            "receiving" => RolloutPhase::Receiving,
            "verified" => RolloutPhase::Verified,
            "installed" => RolloutPhase::Installed,
            "failed" => {
                RolloutPhase::Failed(reason.map_or(RefusalCode::Other(0), RefusalCode::parse))
            }
            "requesting" => RolloutPhase::Requesting,
            "served" => RolloutPhase::Served,
            _ => return None,
        })
    }

    /// The node needs nothing more from the distributor: installed, failed, or served all.
    pub fn finished(self) -> bool {
        matches!(
            self,
            RolloutPhase::Installed | RolloutPhase::Failed(_) | RolloutPhase::Served
        )
    }

    /// The failure's reason, if the node failed.
    pub fn failure(self) -> Option<RefusalCode> {
        match self {
            RolloutPhase::Failed(r) => Some(r),
            _ => None,
        }
    }
}

/// One node in a [`RolloutView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutNode {
    /// Chunks it holds (pmesh) or was served (classic).
    pub done: u32,
    /// Chunks in the image.
    pub total: u32,
    /// Its phase.
    pub phase: RolloutPhase,
    /// Classic: requests answered for it (duplicates included); None for pmesh targets and
    /// for nodes a push pass covered without their asking.
    pub requests: Option<u64>,
    /// Classic: when it last asked.
    pub last_request: Option<Instant>,
}

/// What the distributor knows of one rollout, per node. See the module docs.
#[derive(Clone, Debug)]
pub struct RolloutView {
    id: TransferId,
    chunks: u32,
    nodes: BTreeMap<u32, RolloutNode>,
    served_union: u32,
    push: Option<PushProgress>,
}

impl RolloutView {
    /// An empty view of transfer `id` of `chunks` chunks.
    pub fn new(id: TransferId, chunks: u32) -> Self {
        RolloutView {
            id,
            chunks,
            nodes: BTreeMap::new(),
            served_union: 0,
            push: None,
        }
    }

    /// The transfer.
    pub fn id(&self) -> TransferId {
        self.id
    }

    /// Chunks in the image.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// One node, if it reported or requested.
    pub fn node(&self, node: u32) -> Option<&RolloutNode> {
        self.nodes.get(&node)
    }

    /// Every node that reported or requested, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (u32, &RolloutNode)> {
        self.nodes.iter().map(|(n, s)| (*n, s))
    }

    /// Some node failed.
    pub fn any_failed(&self) -> bool {
        self.nodes.values().any(|s| s.phase.failure().is_some())
    }

    /// Feeds one event of the distributing node's plugin. Returns the node whose state changed
    /// (progress, phase), if any; other events and other transfers change nothing.
    pub fn on_event(&mut self, ev: &OtaEvent) -> Option<u32> {
        match ev {
            OtaEvent::NodeProgress {
                id,
                node,
                done,
                phase,
                ..
            } if *id == self.id => self.report(*node, *done, *phase).then_some(*node),
            _ => None,
        }
    }

    /// A pmesh target's report (from [`OtaEvent::NodeProgress`], or the distributor's table
    /// after a subscriber missed events). True if the node's state changed.
    pub fn report(&mut self, node: u32, done: u32, phase: Phase) -> bool {
        let total = self.chunks;
        // A node reports the chunks it still holds for the rollout: none once it installed
        // (the partial image became the installed one), but it had them all.
        let done = match phase {
            Phase::Verified | Phase::Applied => total,
            _ => done,
        };
        self.set(node, done, RolloutPhase::of_report(phase), None, None)
    }

    /// A classic requester as the distributor's ledger has it: `requests` answered, `parts`
    /// distinct chunks served, the last at `last_at`. True if its chunks, phase or request
    /// count changed (a later `last_at` alone is recorded, not a change).
    pub fn served(&mut self, node: u32, requests: u64, parts: u32, last_at: Instant) -> bool {
        let phase = if parts >= self.chunks {
            RolloutPhase::Served
        } else {
            RolloutPhase::Requesting
        };
        self.set(node, parts, phase, Some(requests), Some(last_at))
    }

    /// Classic: distinct chunks served to anyone (in broadcast mode every chunk served to one
    /// node was flooded to the whole mesh).
    pub fn set_served_union(&mut self, chunks: u32) {
        self.served_union = chunks;
    }

    /// Classic push: the distributor's passes. Nodes a finished pass covered that never asked
    /// for anything count as served. Returns the nodes that changed.
    pub fn set_push(&mut self, push: Option<PushProgress>) -> alloc::vec::Vec<u32> {
        let mut changed = alloc::vec::Vec::new();
        for &node in push.iter().flat_map(|p| p.covered.iter()) {
            let asked = self.nodes.get(&node).is_some_and(|s| s.requests.is_some());
            if !asked && self.set(node, self.chunks, RolloutPhase::Served, None, None) {
                changed.push(node);
            }
        }
        // A stock node whose EnhancedStatus names the offered image says it runs it.
        for &node in push.iter().flat_map(|p| p.installed.iter()) {
            let requests = self.nodes.get(&node).and_then(|s| s.requests);
            if self.set(node, self.chunks, RolloutPhase::Installed, requests, None) {
                changed.push(node);
            }
        }
        self.push = push;
        changed
    }

    fn set(
        &mut self,
        node: u32,
        done: u32,
        phase: RolloutPhase,
        requests: Option<u64>,
        last_request: Option<Instant>,
    ) -> bool {
        let new = RolloutNode {
            done,
            total: self.chunks,
            phase,
            requests,
            last_request,
        };
        let changed = self.nodes.get(&node).is_none_or(|old| {
            old.done != new.done || old.phase != new.phase || old.requests != new.requests
        });
        self.nodes.insert(node, new);
        changed
    }
}

/// What, besides the view, decides whether a rollout is done.
#[derive(Clone, Copy, Debug)]
pub struct DoneInput<'a> {
    /// The other nodes in the mesh now.
    pub mesh: &'a [u32],
    /// Nodes that must finish (waited for even if they never report).
    pub expect: &'a [u32],
    /// Time since the view last changed, or since the offer if that is shorter.
    pub quiet_for: Duration,
    /// Quiet time required before "done".
    pub settle: Duration,
}

/// The rule that ends a push (see pmesh-net's `ota` module docs for why each mode differs):
///
/// - every `expect`ed node finished and nothing changed for `settle`, and
/// - **pmesh, classic unicast**: at least one node reported or requested and every such node
///   finished (installed, failed, served all);
/// - **classic broadcast, pushed**: a pass settled, none runs, and every node in the mesh
///   was covered by one;
/// - **classic broadcast, on request**: every chunk was served to someone (each was flooded
///   to the whole mesh).
pub fn rollout_done(view: &RolloutView, input: &DoneInput<'_>) -> bool {
    let finished = |n: &u32| view.node(*n).is_some_and(|s| s.phase.finished());
    if input.quiet_for < input.settle || !input.expect.iter().all(finished) {
        return false;
    }
    match (view.id.mode, &view.push) {
        (Mode::ClassicBroadcast, Some(p)) => {
            p.passes > 0 && p.running.is_none() && input.mesh.iter().all(|n| p.covered.contains(n))
        }
        (Mode::ClassicBroadcast, None) => view.served_union >= view.chunks,
        _ => !view.nodes.is_empty() && view.nodes.values().all(|s| s.phase.finished()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn pmesh_view() -> RolloutView {
        RolloutView::new(
            TransferId {
                mode: Mode::Pmesh,
                id: 7,
            },
            10,
        )
    }

    fn input<'a>(mesh: &'a [u32], expect: &'a [u32], quiet_s: u64) -> DoneInput<'a> {
        DoneInput {
            mesh,
            expect,
            quiet_for: Duration::from_secs(quiet_s),
            settle: Duration::from_secs(3),
        }
    }

    #[test]
    fn reasons_round_trip_through_their_wire_codes_and_names() {
        for code in 0..=255u8 {
            let r = RefusalCode::from_wire(code);
            if let RefusalCode::Other(c) = r {
                assert_eq!(c, code);
                assert_eq!(r.name(), "unknown");
            } else {
                assert_eq!(RefusalCode::parse(r.name()), r, "{code}");
            }
        }
        assert_eq!(
            RefusalCode::from(&Refusal::HashMismatch {
                expected: "a".into(),
                actual: "b".into()
            }),
            RefusalCode::HashMismatch
        );
        for p in [
            RolloutPhase::Receiving,
            RolloutPhase::Verified,
            RolloutPhase::Installed,
            RolloutPhase::Failed(RefusalCode::Busy),
            RolloutPhase::Requesting,
            RolloutPhase::Served,
        ] {
            let reason = p.failure().map(RefusalCode::name);
            assert_eq!(RolloutPhase::parse(p.name(), reason), Some(p));
        }
        assert_eq!(RolloutPhase::parse("done", None), None);
    }

    #[test]
    fn pmesh_reports_become_phases_and_only_changes_count() {
        let mut v = pmesh_view();
        let id = v.id();
        let other = TransferId {
            mode: Mode::Pmesh,
            id: 8,
        };
        let progress = |id, node, done, phase| OtaEvent::NodeProgress {
            id,
            node,
            done,
            total: 10,
            phase,
        };
        assert_eq!(v.on_event(&progress(other, 2, 3, Phase::Distribute)), None);
        assert_eq!(v.on_event(&progress(id, 2, 3, Phase::Distribute)), Some(2));
        assert_eq!(v.on_event(&progress(id, 2, 3, Phase::Distribute)), None);
        // Installed nodes report the chunks they still hold (none); they had them all.
        assert_eq!(v.on_event(&progress(id, 2, 0, Phase::Applied)), Some(2));
        let s = v.node(2).unwrap();
        assert_eq!(
            (s.done, s.total, s.phase),
            (10, 10, RolloutPhase::Installed)
        );
        assert_eq!(v.on_event(&progress(id, 3, 4, Phase::Failed(7))), Some(3));
        assert_eq!(
            v.node(3).unwrap().phase,
            RolloutPhase::Failed(RefusalCode::HashMismatch)
        );
        assert!(v.any_failed());
    }

    #[test]
    fn pmesh_is_done_when_every_reporter_and_every_expected_node_finished_and_it_settled() {
        let mut v = pmesh_view();
        assert!(
            !rollout_done(&v, &input(&[2, 3], &[], 60)),
            "nobody reported"
        );
        v.report(2, 5, Phase::Distribute);
        v.report(3, 0, Phase::Applied);
        assert!(
            !rollout_done(&v, &input(&[2, 3], &[], 60)),
            "2 still receiving"
        );
        v.report(2, 10, Phase::Failed(9));
        assert!(rollout_done(&v, &input(&[2, 3], &[], 60)));
        assert!(!rollout_done(&v, &input(&[2, 3], &[], 2)), "not settled");
        assert!(
            !rollout_done(&v, &input(&[2, 3], &[4], 60)),
            "4 never reported"
        );
        v.report(4, 0, Phase::Verified);
        assert!(
            !rollout_done(&v, &input(&[2, 3], &[4], 60)),
            "4 only verified"
        );
    }

    #[test]
    fn classic_requesters_are_served_when_they_got_every_chunk() {
        let id = TransferId::classic("0000000a", false);
        let mut v = RolloutView::new(id, 4);
        let t = Instant::from_micros(1);
        assert!(v.served(5, 3, 3, t));
        assert!(
            !v.served(5, 3, 3, Instant::from_micros(9)),
            "only time moved"
        );
        assert_eq!(
            v.node(5).unwrap().last_request,
            Some(Instant::from_micros(9))
        );
        assert!(!rollout_done(&v, &input(&[5], &[], 60)));
        assert!(v.served(5, 4, 4, t));
        assert_eq!(v.node(5).unwrap().phase, RolloutPhase::Served);
        assert!(rollout_done(&v, &input(&[5], &[], 60)));
    }

    #[test]
    fn classic_push_is_done_when_a_settled_pass_covered_the_whole_mesh() {
        let id = TransferId::classic("0000000b", true);
        let mut v = RolloutView::new(id, 4);
        v.served(6, 2, 2, Instant::from_micros(1));
        let pass = |running, covered: &[u32]| PushProgress {
            passes: 1,
            running,
            covered: covered.to_vec(),
            installed: vec![],
        };
        assert_eq!(v.set_push(Some(pass(Some(3), &[]))), vec![]);
        assert!(!rollout_done(&v, &input(&[5, 6], &[], 60)), "a pass runs");
        assert_eq!(v.set_push(Some(pass(None, &[5, 6]))), vec![5]);
        // 6 asked on its own: its requests stay what the view shows of it.
        assert_eq!(v.node(6).unwrap().phase, RolloutPhase::Requesting);
        assert_eq!(v.node(5).unwrap().phase, RolloutPhase::Served);
        assert!(rollout_done(&v, &input(&[5, 6], &[], 60)));
        assert!(
            !rollout_done(&v, &input(&[5, 6, 7], &[], 60)),
            "7 joined later"
        );
        // 5's EnhancedStatus names the offered image: installed, not only served.
        let mut reported = pass(None, &[5, 6]);
        reported.installed = vec![5];
        assert_eq!(v.set_push(Some(reported)), vec![5]);
        assert_eq!(v.node(5).unwrap().phase, RolloutPhase::Installed);
        // Broadcast on request (no push): every chunk served to someone.
        let mut v = RolloutView::new(id, 4);
        v.set_served_union(3);
        assert!(!rollout_done(&v, &input(&[5], &[], 60)));
        v.set_served_union(4);
        assert!(rollout_done(&v, &input(&[5], &[], 60)));
    }
}
