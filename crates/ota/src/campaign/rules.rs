//! The campaign's rules: when a wave passes, when the campaign halts, what a halt does.

use alloc::vec::Vec;

use pmesh_node::Instant;

use super::machine::{Action, Campaign, HaltReason, Status};
use super::node::NodePhase;

/// A wave's tally.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub confirmed: u32,
    pub failed: u32,
}

impl Campaign {
    pub(crate) fn tally(&self, wave: usize) -> Tally {
        let mut t = Tally::default();
        for id in &self.waves[wave].nodes {
            match self.nodes[id].phase {
                NodePhase::Confirmed => t.confirmed += 1,
                NodePhase::Failed(_) => t.failed += 1,
                _ => {}
            }
        }
        t
    }

    /// Applies the rules after a change at `at`: halts on a crossed threshold (any started
    /// wave: a late failure in an earlier wave counts against that wave), starts the next
    /// wave once the current one has its confirmations, finishes when all is settled.
    pub(crate) fn evaluate(&mut self, at: Instant) {
        if !matches!(self.status, Status::Running | Status::Paused) {
            return;
        }
        for i in 0..=self.current as usize {
            let (failures, allowed) = (self.tally(i).failed, self.waves[i].allowed_failures);
            if failures > allowed {
                self.halt(i as u32, HaltReason::TooManyFailures { failures, allowed });
                return;
            }
        }
        if self.status != Status::Running {
            return;
        }
        // A wave that needs no confirmation (max_failures 100 %) passes at once.
        loop {
            let cur = self.current as usize;
            if self.tally(cur).confirmed < self.waves[cur].required_success {
                return;
            }
            if cur + 1 == self.waves.len() {
                if self.nodes.values().all(|n| n.phase.is_settled()) {
                    self.finish();
                }
                return;
            }
            self.start_wave(self.current + 1, at);
        }
    }

    fn finish(&mut self) {
        let (mut confirmed, mut failed) = (0, 0);
        for n in self.nodes.values() {
            match n.phase {
                NodePhase::Confirmed => confirmed += 1,
                NodePhase::Failed(_) => failed += 1,
                _ => {}
            }
        }
        self.status = Status::Finished;
        let left_out = self.left_out.len() as u32;
        self.actions.push_back(Action::Finished {
            confirmed,
            failed,
            left_out,
        });
    }

    /// Stops for good: every node of a started wave that runs the new image unconfirmed (on
    /// trial, or failed in a way that may leave it on the image) is told to revert; those not
    /// yet applied are cancelled.
    pub(crate) fn halt(&mut self, wave: u32, reason: HaltReason) {
        self.status = Status::Halted { wave, reason };
        self.actions.push_back(Action::Halted { wave, reason });
        let (mut revert, mut cancel) = (Vec::new(), Vec::new());
        for w in self.waves.iter().take(self.current as usize + 1) {
            for id in &w.nodes {
                let n = self.nodes.get_mut(id).unwrap();
                match n.phase {
                    NodePhase::Applied | NodePhase::Trial => revert.push(*id),
                    NodePhase::Failed(r) if r.may_run_new_image() => revert.push(*id),
                    NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified => {
                        cancel.push(*id);
                        continue;
                    }
                    _ => continue,
                }
                n.revert_ordered = true;
            }
        }
        revert.sort_unstable();
        cancel.sort_unstable();
        if !revert.is_empty() {
            self.actions.push_back(Action::Revert { nodes: revert });
        }
        if !cancel.is_empty() {
            self.actions.push_back(Action::Cancel { nodes: cancel });
        }
    }
}
