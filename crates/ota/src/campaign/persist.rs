//! Saving and restoring a campaign: a small explicit, versioned, little-endian format.
//!
//! `"PMCA"`, format version (u8), then the target version, the gate, the status, the waves
//! (thresholds, start time, node lists), every node's state, the nodes left out, the queued
//! actions and the refusal counter. Every length is checked against the bytes that remain
//! before anything is allocated, so a corrupt or hostile file gets a [`DecodeError`], never a
//! panic or a huge allocation.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use pmesh_node::Instant;

use super::NodeId;
use super::machine::{Action, Campaign, HaltReason, Status, Wave};
use super::node::{FailReason, NodePhase, NodeState};
use super::plan::{HealthGate, MetricBounds};

const MAGIC: &[u8; 4] = b"PMCA";
const FORMAT: u8 = 1;

/// Why saved campaign bytes could not be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a saved campaign (wrong magic).
    NotACampaign,
    /// A format version this build does not know.
    Version(u8),
    /// The bytes end early.
    Truncated,
    /// A tag or value outside its range (what).
    Invalid(&'static str),
    /// Bytes left after the end.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotACampaign => f.write_str("not a saved pmesh campaign"),
            DecodeError::Version(v) => write!(f, "campaign format {v}, this build reads {FORMAT}"),
            DecodeError::Truncated => f.write_str("saved campaign is truncated"),
            DecodeError::Invalid(what) => write!(f, "saved campaign has an invalid {what}"),
            DecodeError::TrailingBytes => f.write_str("saved campaign has bytes after its end"),
        }
    }
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(v.is_some() as u8);
        self.u32(v.unwrap_or(0));
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.u8(v.is_some() as u8);
        self.u64(v.unwrap_or(0));
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn ids(&mut self, ids: &[NodeId]) {
        self.u32(ids.len() as u32);
        ids.iter().for_each(|&i| self.u32(i));
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag")),
        }
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, DecodeError> {
        let some = self.flag()?;
        let v = self.u32()?;
        Ok(some.then_some(v))
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        let some = self.flag()?;
        let v = self.u64()?;
        Ok(some.then_some(v))
    }
    /// A count of items of at least `min` bytes each, checked against what remains.
    fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.count(1)?;
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| DecodeError::Invalid("target version"))
    }
    fn ids(&mut self) -> Result<Vec<NodeId>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
}

fn reason_code(r: FailReason) -> u8 {
    use FailReason as F;
    match r {
        F::TransferFailed => 0,
        F::NeverCameBack => 1,
        F::VersionMismatch => 2,
        F::RevertedItself => 3,
        F::HeapFloor => 4,
        F::RebootLoop => 5,
        F::MetricOutOfBounds => 6,
        F::WentSilent => 7,
    }
}

fn reason_of(code: u8) -> Result<FailReason, DecodeError> {
    use FailReason as F;
    Ok(match code {
        0 => F::TransferFailed,
        1 => F::NeverCameBack,
        2 => F::VersionMismatch,
        3 => F::RevertedItself,
        4 => F::HeapFloor,
        5 => F::RebootLoop,
        6 => F::MetricOutOfBounds,
        7 => F::WentSilent,
        _ => return Err(DecodeError::Invalid("failure reason")),
    })
}

fn put_phase(w: &mut W, p: NodePhase) {
    let (tag, reason) = match p {
        NodePhase::Pending => (0, 0),
        NodePhase::Downloading => (1, 0),
        NodePhase::Verified => (2, 0),
        NodePhase::Applied => (3, 0),
        NodePhase::Trial => (4, 0),
        NodePhase::Confirmed => (5, 0),
        NodePhase::Reverted => (6, 0),
        NodePhase::Failed(r) => (7, reason_code(r)),
    };
    w.u8(tag);
    w.u8(reason);
}

fn get_phase(r: &mut R<'_>) -> Result<NodePhase, DecodeError> {
    let (tag, reason) = (r.u8()?, r.u8()?);
    Ok(match tag {
        0 => NodePhase::Pending,
        1 => NodePhase::Downloading,
        2 => NodePhase::Verified,
        3 => NodePhase::Applied,
        4 => NodePhase::Trial,
        5 => NodePhase::Confirmed,
        6 => NodePhase::Reverted,
        7 => NodePhase::Failed(reason_of(reason)?),
        _ => return Err(DecodeError::Invalid("node phase")),
    })
}

fn put_reason(w: &mut W, r: HaltReason) {
    let (tag, a, b) = match r {
        HaltReason::TooManyFailures { failures, allowed } => (0, failures, allowed),
        HaltReason::Aborted => (1, 0, 0),
    };
    w.u8(tag);
    w.u32(a);
    w.u32(b);
}

fn get_reason(r: &mut R<'_>) -> Result<HaltReason, DecodeError> {
    let (tag, a, b) = (r.u8()?, r.u32()?, r.u32()?);
    Ok(match tag {
        0 => HaltReason::TooManyFailures {
            failures: a,
            allowed: b,
        },
        1 => HaltReason::Aborted,
        _ => return Err(DecodeError::Invalid("halt reason")),
    })
}

fn put_status(w: &mut W, s: Status) {
    match s {
        Status::Running => w.u8(0),
        Status::Paused => w.u8(1),
        Status::Halted { wave, reason } => {
            w.u8(2);
            w.u32(wave);
            put_reason(w, reason);
        }
        Status::Finished => w.u8(3),
    }
}

fn get_status(r: &mut R<'_>) -> Result<Status, DecodeError> {
    Ok(match r.u8()? {
        0 => Status::Running,
        1 => Status::Paused,
        2 => Status::Halted {
            wave: r.u32()?,
            reason: get_reason(r)?,
        },
        3 => Status::Finished,
        _ => return Err(DecodeError::Invalid("status")),
    })
}

fn put_gate(w: &mut W, g: &HealthGate) {
    for d in [
        g.transfer_deadline,
        g.return_deadline,
        g.soak,
        g.max_silence,
    ] {
        w.u64(d.as_micros() as u64);
    }
    w.u32(g.heap_floor);
    w.u32(g.max_reboots);
    w.u8(g.metric.is_some() as u8);
    let m = g.metric.unwrap_or(MetricBounds { min: 0, max: 0 });
    w.u64(m.min as u64);
    w.u64(m.max as u64);
}

fn get_gate(r: &mut R<'_>) -> Result<HealthGate, DecodeError> {
    let transfer_deadline = Duration::from_micros(r.u64()?);
    let return_deadline = Duration::from_micros(r.u64()?);
    let soak = Duration::from_micros(r.u64()?);
    let max_silence = Duration::from_micros(r.u64()?);
    let (heap_floor, max_reboots) = (r.u32()?, r.u32()?);
    let some = r.flag()?;
    let m = MetricBounds {
        min: r.u64()? as i64,
        max: r.u64()? as i64,
    };
    Ok(HealthGate {
        transfer_deadline,
        return_deadline,
        soak,
        max_silence,
        heap_floor,
        max_reboots,
        metric: some.then_some(m),
    })
}

fn put_action(w: &mut W, a: &Action) {
    match a {
        Action::StartWave { wave, nodes } => {
            w.u8(0);
            w.u32(*wave);
            w.ids(nodes);
        }
        Action::Revert { nodes } => {
            w.u8(1);
            w.ids(nodes);
        }
        Action::Cancel { nodes } => {
            w.u8(2);
            w.ids(nodes);
        }
        Action::Halted { wave, reason } => {
            w.u8(3);
            w.u32(*wave);
            put_reason(w, *reason);
        }
        Action::Finished {
            confirmed,
            failed,
            left_out,
        } => {
            w.u8(4);
            [*confirmed, *failed, *left_out]
                .into_iter()
                .for_each(|v| w.u32(v));
        }
    }
}

fn get_action(r: &mut R<'_>) -> Result<Action, DecodeError> {
    Ok(match r.u8()? {
        0 => Action::StartWave {
            wave: r.u32()?,
            nodes: r.ids()?,
        },
        1 => Action::Revert { nodes: r.ids()? },
        2 => Action::Cancel { nodes: r.ids()? },
        3 => Action::Halted {
            wave: r.u32()?,
            reason: get_reason(r)?,
        },
        4 => Action::Finished {
            confirmed: r.u32()?,
            failed: r.u32()?,
            left_out: r.u32()?,
        },
        _ => return Err(DecodeError::Invalid("action")),
    })
}

fn put_node(w: &mut W, id: NodeId, n: &NodeState) {
    w.u32(id);
    w.u32(n.wave);
    put_phase(w, n.phase);
    w.u64(n.since.as_micros());
    w.opt_u64(n.last_report.map(Instant::as_micros));
    w.opt_u32(n.boots);
    w.opt_u32(n.boots_at_apply);
    w.u32(n.trial_boots);
    w.opt_u64(n.baseline);
    w.u8(n.revert_ordered as u8);
}

/// Bytes of one saved node (the minimum `count` checks against).
const NODE_BYTES: usize = 4 + 4 + 2 + 8 + 9 + 5 + 5 + 4 + 9 + 1;

fn get_node(r: &mut R<'_>, waves: usize) -> Result<(NodeId, NodeState), DecodeError> {
    let id = r.u32()?;
    let wave = r.u32()?;
    if wave as usize >= waves {
        return Err(DecodeError::Invalid("node's wave"));
    }
    let n = NodeState {
        wave,
        phase: get_phase(r)?,
        since: Instant::from_micros(r.u64()?),
        last_report: r.opt_u64()?.map(Instant::from_micros),
        boots: r.opt_u32()?,
        boots_at_apply: r.opt_u32()?,
        trial_boots: r.u32()?,
        baseline: r.opt_u64()?,
        revert_ordered: r.flag()?,
    };
    Ok((id, n))
}

impl Campaign {
    /// The whole state as bytes (see the module's format), for [`Self::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64 + self.nodes.len() * (NODE_BYTES + 4)));
        w.0.extend_from_slice(MAGIC);
        w.u8(FORMAT);
        w.str(&self.target);
        put_gate(&mut w, &self.gate);
        put_status(&mut w, self.status);
        w.u32(self.current);
        w.u32(self.waves.len() as u32);
        for wave in &self.waves {
            w.u32(wave.allowed_failures);
            w.u32(wave.required_success);
            w.opt_u64(wave.started_at.map(Instant::as_micros));
            w.ids(&wave.nodes);
        }
        w.u32(self.nodes.len() as u32);
        self.nodes
            .iter()
            .for_each(|(&id, n)| put_node(&mut w, id, n));
        w.ids(&self.left_out);
        w.u32(self.actions.len() as u32);
        self.actions.iter().for_each(|a| put_action(&mut w, a));
        w.u64(self.rejected);
        w.0
    }

    /// Restores a campaign saved by [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = R(bytes);
        if r.take(4).map_err(|_| DecodeError::NotACampaign)? != MAGIC {
            return Err(DecodeError::NotACampaign);
        }
        match r.u8()? {
            FORMAT => {}
            v => return Err(DecodeError::Version(v)),
        }
        let target = r.str()?;
        let gate = get_gate(&mut r)?;
        let status = get_status(&mut r)?;
        let current = r.u32()?;
        let n_waves = r.count(4 + 4 + 9 + 4)?;
        let mut waves = Vec::with_capacity(n_waves);
        for _ in 0..n_waves {
            let (allowed_failures, required_success) = (r.u32()?, r.u32()?);
            let started_at = r.opt_u64()?.map(Instant::from_micros);
            waves.push(Wave {
                nodes: r.ids()?,
                allowed_failures,
                required_success,
                started_at,
            });
        }
        if current as usize >= n_waves {
            return Err(DecodeError::Invalid("current wave"));
        }
        let n_nodes = r.count(NODE_BYTES)?;
        let mut nodes = BTreeMap::new();
        for _ in 0..n_nodes {
            let (id, n) = get_node(&mut r, n_waves)?;
            nodes.insert(id, n);
        }
        if waves
            .iter()
            .flat_map(|w| &w.nodes)
            .any(|id| !nodes.contains_key(id))
        {
            return Err(DecodeError::Invalid("wave member"));
        }
        let left_out = r.ids()?;
        let n_actions = r.count(5)?;
        let actions = (0..n_actions)
            .map(|_| get_action(&mut r))
            .collect::<Result<VecDeque<_>, _>>()?;
        let rejected = r.u64()?;
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Campaign {
            target,
            gate,
            waves,
            nodes,
            left_out,
            current,
            status,
            actions,
            rejected,
        })
    }
}
