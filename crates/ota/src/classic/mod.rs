//! Classic painlessMesh OTA (types 10/11/12, spec §6), wire-compatible with stock nodes:
//! the distributor, pmesh's receiver, and the stock receiver's behaviour for simulation.

pub mod distributor;
pub mod push;
pub mod receiver;
pub mod reference;

pub use distributor::{AnnounceSchedule, ClassicDistributor, ClassicDistributorStats};
pub use push::{DEFAULT_PUSH_RATE, PushPace, PushProgress};
pub use receiver::{ClassicReceiver, ClassicReceiverStats, ClassicTuning};
pub use reference::{ReferenceReceiver, ReferenceStats};
