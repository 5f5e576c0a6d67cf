//! The campaign state machine: observations in, actions out.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use pmesh_node::Instant;

use super::NodeId;
use super::assign::assign;
use super::node::{Change, FailReason, NodePhase, NodeReport, NodeState, version_hash};
use super::plan::{HealthGate, Plan, PlanError};

/// What the host saw of a node's transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The node started receiving the image.
    Downloading,
    /// The node has the whole image and its hash matched.
    Verified,
    /// The node committed the image and reboots into it.
    Applied,
    /// The transfer was abandoned for this node.
    Failed,
}

/// Why a campaign halted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltReason {
    /// The wave's failures crossed its error threshold.
    TooManyFailures {
        /// Failed nodes in the wave.
        failures: u32,
        /// Failures the wave tolerates.
        allowed: u32,
    },
    /// The operator aborted.
    Aborted,
}

/// What the campaign asks of the host, from [`Campaign::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Offer the image to these nodes now.
    StartWave {
        /// Wave index (0-based, after empty waves were dropped).
        wave: u32,
        /// Its nodes.
        nodes: Vec<NodeId>,
    },
    /// Tell these nodes to go back to their previous image (after a halt or abort).
    Revert {
        /// Nodes on trial, and failed nodes that may still run the new image.
        nodes: Vec<NodeId>,
    },
    /// Stop the transfer to these nodes (they have not applied the image).
    Cancel {
        /// Nodes still pending, downloading or verified in started waves.
        nodes: Vec<NodeId>,
    },
    /// The campaign stopped for good.
    Halted {
        /// The wave whose threshold was crossed (the latest started one for an abort).
        wave: u32,
        /// Why.
        reason: HaltReason,
    },
    /// Every wave passed and every node of them settled.
    Finished {
        /// Confirmed nodes.
        confirmed: u32,
        /// Failed nodes (within the thresholds).
        failed: u32,
        /// Fleet nodes no wave covers (the last wave was below 100 %).
        left_out: u32,
    },
}

/// The campaign's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waves advance as they pass.
    Running,
    /// The operator paused: the running wave continues, no new wave starts.
    Paused,
    /// Stopped for good (threshold or abort).
    Halted {
        /// The wave.
        wave: u32,
        /// Why.
        reason: HaltReason,
    },
    /// Done.
    Finished,
}

/// Why an input was refused. Refusals are counted ([`Campaign::rejected`]) and change nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputError {
    /// The node is not in the campaign's fleet.
    UnknownNode(NodeId),
    /// A transfer outcome for a node whose wave has not started.
    WaveNotStarted(NodeId),
    /// A transfer outcome that does not follow the node's phase (Applied after Failed, …).
    OutOfOrder(NodeId),
    /// Pause, resume or abort in a state where it means nothing (resume a halted campaign).
    NotNow,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::UnknownNode(n) => write!(f, "node {n} is not in this campaign"),
            InputError::WaveNotStarted(n) => write!(f, "node {n}'s wave has not started"),
            InputError::OutOfOrder(n) => write!(f, "transfer outcome out of order for node {n}"),
            InputError::NotNow => f.write_str("not possible in the campaign's current state"),
        }
    }
}

/// One wave's fixed parameters and progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wave {
    pub nodes: Vec<NodeId>,
    pub allowed_failures: u32,
    pub required_success: u32,
    pub started_at: Option<Instant>,
}

/// A staged rollout of one image to a fleet (see the [module docs](super)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    pub(crate) target: String,
    pub(crate) gate: HealthGate,
    pub(crate) waves: Vec<Wave>,
    pub(crate) nodes: BTreeMap<NodeId, NodeState>,
    pub(crate) left_out: Vec<NodeId>,
    /// Index of the latest started wave.
    pub(crate) current: u32,
    pub(crate) status: Status,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) rejected: u64,
}

impl Campaign {
    /// A campaign of `plan` for version `target` on `fleet`, waves assigned with `seed`
    /// (a seeded shuffle of the sorted fleet: reproducible, independent of the order of
    /// `fleet`, and a sample of the fleet rather than its lowest ids, which follow MAC
    /// addresses and so manufacturing batches). Queues wave 0's [`Action::StartWave`] at `at`.
    pub fn new(
        plan: &Plan,
        target: &str,
        fleet: &[NodeId],
        seed: u64,
        at: Instant,
    ) -> Result<Self, PlanError> {
        let a = assign(plan, fleet, seed)?;
        let mut waves = Vec::with_capacity(a.waves.len());
        let mut nodes = BTreeMap::new();
        for (i, list) in a.waves.into_iter().enumerate() {
            let size = list.len() as u32;
            let allowed = plan.max_failures.allowed(size);
            let required = plan
                .min_success
                .map_or(size - allowed, |t| t.required(size));
            if required + allowed > size {
                return Err(PlanError::Contradictory);
            }
            for &n in &list {
                nodes.insert(n, NodeState::new(i as u32, at));
            }
            waves.push(Wave {
                nodes: list,
                allowed_failures: allowed,
                required_success: required,
                started_at: None,
            });
        }
        let mut c = Campaign {
            target: target.into(),
            gate: plan.gate,
            waves,
            nodes,
            left_out: a.left_out,
            current: 0,
            status: Status::Running,
            actions: VecDeque::new(),
            rejected: 0,
        };
        c.start_wave(0, at);
        c.evaluate(at);
        Ok(c)
    }

    pub(crate) fn start_wave(&mut self, wave: u32, at: Instant) {
        let w = &mut self.waves[wave as usize];
        w.started_at = Some(at);
        for id in &w.nodes {
            // The transfer deadline runs from here.
            self.nodes.get_mut(id).unwrap().since = at;
        }
        self.current = wave;
        self.actions.push_back(Action::StartWave {
            wave,
            nodes: w.nodes.clone(),
        });
    }

    /// The next action for the host, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest instant at which a [`Self::handle_tick`] can change something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let started = self.waves.iter().take(self.current as usize + 1);
        if self.is_over() {
            return None;
        }
        let ids = started.flat_map(|w| &w.nodes);
        ids.filter_map(|id| self.nodes[id].deadline(&self.gate))
            .min()
    }

    /// Halted or finished: no deadline matters any more (cancelled nodes stay as they were).
    fn is_over(&self) -> bool {
        matches!(self.status, Status::Halted { .. } | Status::Finished)
    }

    /// The campaign's state.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The version being rolled out.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The waves' node lists, in order.
    pub fn waves(&self) -> impl Iterator<Item = &[NodeId]> {
        self.waves.iter().map(|w| w.nodes.as_slice())
    }

    /// Index of the latest started wave.
    pub fn current_wave(&self) -> u32 {
        self.current
    }

    /// A node's wave and phase.
    pub fn node(&self, node: NodeId) -> Option<(u32, NodePhase)> {
        self.nodes.get(&node).map(|n| (n.wave, n.phase))
    }

    /// Every node with its wave and phase, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, u32, NodePhase)> + '_ {
        self.nodes.iter().map(|(&id, n)| (id, n.wave, n.phase))
    }

    /// Fleet nodes no wave covers.
    pub fn left_out(&self) -> &[NodeId] {
        &self.left_out
    }

    /// Inputs refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn refuse<T>(&mut self, e: InputError) -> Result<T, InputError> {
        self.rejected += 1;
        Err(e)
    }

    /// A node's report.
    pub fn handle_report(&mut self, r: &NodeReport<'_>) -> Result<(), InputError> {
        let target = version_hash(&self.target);
        let gate = self.gate;
        let Some(n) = self.nodes.get_mut(&r.node) else {
            return self.refuse(InputError::UnknownNode(r.node));
        };
        let change = n.on_report(r, target, &gate);
        self.after(change, r.at);
        Ok(())
    }

    /// A transfer outcome for a node.
    pub fn handle_transfer(
        &mut self,
        node: NodeId,
        outcome: TransferOutcome,
        at: Instant,
    ) -> Result<(), InputError> {
        let Some(n) = self.nodes.get(&node) else {
            return self.refuse(InputError::UnknownNode(node));
        };
        if self.waves[n.wave as usize].started_at.is_none() {
            return self.refuse(InputError::WaveNotStarted(node));
        }
        use NodePhase as P;
        use TransferOutcome as T;
        let next = match (n.phase, outcome) {
            (P::Pending, T::Downloading) => P::Downloading,
            (P::Pending | P::Downloading, T::Verified) => P::Verified,
            (P::Pending | P::Downloading | P::Verified, T::Applied) => P::Applied,
            (P::Pending | P::Downloading | P::Verified, T::Failed) => {
                P::Failed(FailReason::TransferFailed)
            }
            (P::Downloading, T::Downloading) | (P::Verified, T::Verified) => {
                // Progress: restarts the transfer deadline.
                self.nodes.get_mut(&node).unwrap().since = at;
                return Ok(());
            }
            _ => return self.refuse(InputError::OutOfOrder(node)),
        };
        let halted = matches!(self.status, Status::Halted { .. });
        let n = self.nodes.get_mut(&node).unwrap();
        if next == P::Applied {
            n.boots_at_apply = n.boots;
            // Applied despite the Cancel (a race with the host): it must go back too.
            if halted {
                n.revert_ordered = true;
                self.actions.push_back(Action::Revert {
                    nodes: alloc::vec![node],
                });
            }
        }
        let change = n.enter(next, at);
        self.after(change, at);
        Ok(())
    }

    /// Time passes: deadlines (transfer progress, return, silence, soak end) are checked at
    /// `at` for the nodes of started waves; nothing once the campaign halted or finished.
    pub fn handle_tick(&mut self, at: Instant) {
        if self.is_over() {
            return;
        }
        let gate = self.gate;
        let mut changed = false;
        for w in self.waves.iter().take(self.current as usize + 1) {
            for id in &w.nodes {
                let n = self.nodes.get_mut(id).unwrap();
                changed |= n.on_tick(at, &gate) != Change::None;
            }
        }
        if changed {
            self.evaluate(at);
        }
    }

    fn after(&mut self, change: Change, at: Instant) {
        if change != Change::None {
            self.evaluate(at);
        }
    }

    /// Pauses: the running wave goes on, no further wave starts.
    pub fn pause(&mut self) -> Result<(), InputError> {
        match self.status {
            Status::Running => {
                self.status = Status::Paused;
                Ok(())
            }
            _ => self.refuse(InputError::NotNow),
        }
    }

    /// Resumes a paused campaign; a wave that passed meanwhile starts the next one at `at`.
    pub fn resume(&mut self, at: Instant) -> Result<(), InputError> {
        match self.status {
            Status::Paused => {
                self.status = Status::Running;
                self.evaluate(at);
                Ok(())
            }
            _ => self.refuse(InputError::NotNow),
        }
    }

    /// Aborts: halts with [`HaltReason::Aborted`], reverting and cancelling as a halt does.
    pub fn abort(&mut self) -> Result<(), InputError> {
        match self.status {
            Status::Running | Status::Paused => {
                self.halt(self.current, HaltReason::Aborted);
                Ok(())
            }
            _ => self.refuse(InputError::NotNow),
        }
    }
}
