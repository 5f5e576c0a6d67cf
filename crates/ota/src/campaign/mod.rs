//! Staged campaigns: rolling one image out to a fleet in waves, with health gates.
//!
//! # Why
//!
//! An offer goes to every matching node at once, and nothing checks that the new firmware
//! works: one bad image takes the whole fleet down in seconds. A campaign gives the image to
//! a small wave first, watches every node of it come back and stay healthy, and only then
//! widens; a wave with too many failures halts the campaign and sends the nodes still on
//! trial back to their previous image.
//!
//! # The rules
//!
//! - **Waves** ([`Waves`]) are cumulative: `1,10%,50%,100%` covers 1 node, then 10 % of the
//!   fleet in total, and so on; explicit node lists (`[1001 1002]`) are waves of exactly those
//!   nodes. Nodes are assigned by a seeded shuffle of the sorted fleet (see `assign.rs` for
//!   why not sorted ids); waves that add no node on a small fleet are dropped. A last wave
//!   below 100 % leaves nodes out, and [`Action::Finished`] says how many.
//! - **Thresholds** per wave: `max_failures` ([`Threshold`], a count or a percentage of the
//!   wave, rounded down) — one failure more halts the campaign; `min_success` (default: every
//!   node not allowed to fail) — the next wave starts as soon as that many nodes of the
//!   current wave are confirmed, while its stragglers are still watched (a late failure counts
//!   against its own wave). A plan whose success threshold plus allowed failures exceeds a
//!   wave's size is refused ([`PlanError::Contradictory`]), so every wave either reaches its
//!   success threshold or crosses its error threshold: none can stall with all its nodes
//!   settled.
//! - **The health gate** ([`HealthGate`]) per node: transfer progress at least every
//!   `transfer_deadline` from its wave's start (a node offline then fails instead of stalling
//!   the wave); after apply, a report running the new version within `return_deadline`;
//!   then `soak` of health: reports at most `max_silence` apart, free heap at or above
//!   `heap_floor`, the boot counter rising at most `max_reboots` times, the custom metric (if
//!   bounded) within bounds. Passing it confirms the node.
//! - **Halt** (threshold crossed, or the operator's abort): [`Action::Halted`], then
//!   [`Action::Revert`] for every node of a started wave still on trial (and failed nodes that
//!   may still run the image), then [`Action::Cancel`] for those not yet applied. A halt is
//!   final. **Pause** lets the running wave finish its gates but starts no new wave; **resume**
//!   starts the next one if the current wave passed meanwhile.
//!
//! # The phases
//!
//! `Pending → Downloading → Verified → Applied → Trial → Confirmed`, or `Failed(reason)` from
//! any of them ([`FailReason`]: transfer failed, never came back, version mismatch, reverted
//! itself, heap floor, reboot loop, metric out of bounds, went silent), or `Reverted` after a
//! halt told the node to revert and it came back on another version.
//!
//! # Sans-IO
//!
//! Inputs carry their [`Instant`](pmesh_node::Instant): [`Campaign::handle_report`]
//! ([`NodeReport`]), [`Campaign::handle_transfer`] ([`TransferOutcome`]),
//! [`Campaign::handle_tick`]; the operator's [`Campaign::pause`], [`Campaign::resume`],
//! [`Campaign::abort`]. Outputs are polled: [`Campaign::poll_action`], and
//! [`Campaign::poll_timeout`] for the next deadline. Bad input gets an [`InputError`] and is
//! counted ([`Campaign::rejected`]); versions are kept as 64-bit hashes, so no report can
//! grow the campaign's memory. [`Campaign::to_bytes`] / [`Campaign::from_bytes`] save and
//! restore the whole state (a gateway restart resumes where it was).

mod assign;
mod machine;
mod node;
mod persist;
mod plan;
mod rules;

/// A mesh node id.
pub type NodeId = u32;

pub use machine::{Action, Campaign, HaltReason, InputError, Status, TransferOutcome};
pub use node::{FailReason, NodePhase, NodeReport};
pub use persist::DecodeError;
pub use plan::{
    HealthGate, MAX_WAVES, MetricBounds, Plan, PlanError, Span, Threshold, WaveSpec, Waves,
};
