//! pmesh's own OTA protocol between pmesh nodes (types 710–716): a checked manifest, a
//! pipelined, windowed push along the tree, per-receiver chunk bitmaps, repair from the
//! nearest holder, resume, progress reports and coordinated apply.

pub mod agent;
pub mod spans;
pub mod trust;
pub mod wire;

pub use agent::{PmeshAgent, PmeshStats, PmeshTuning, RolloutStatus};
pub use spans::Spans;
pub use trust::{SignedRollout, TrustConfig};
pub use wire::{Compression, FrameKind, Manifest};
