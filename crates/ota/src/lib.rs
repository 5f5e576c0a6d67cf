//! # pmesh-ota
//!
//! Mesh-wide firmware distribution for pmesh, as sans-IO plugins on [`pmesh_node::Node`]:
//!
//! - **Classic OTA** ([`classic`]), wire-compatible with painlessMesh (types 10/11/12): a
//!   distributor, pmesh's receiver (out-of-order chunks, own-id requests, a broadcast mode
//!   that starts, real gzip), and the stock receiver's behaviour, bugs included, for
//!   simulating mixed meshes.
//! - **pmesh's own protocol** ([`pmesh`], types 710–716): a checked manifest, a pipelined
//!   and windowed push along the tree, per-receiver chunk bitmaps, repair from the nearest
//!   holder, resume after reboot, progress reports, coordinated apply, a rate cap.
//! - **Firmware I/O** ([`io`]): source, sink and store traits, with in-memory versions.
//! - **Staged campaigns** ([`campaign`]): waves, thresholds and per-node health gates as a
//!   sans-IO state machine, with save/restore.
//! - **Rollout view** ([`rollout`]): a distributor's per-node view of a rollout, fed with
//!   the plugin's own events, and the pure rule that says when a rollout is done.
//! - **The arithmetic** ([`bounds`]): the optimum and the pipelined lower bound every figure
//!   is printed next to.
//!
//! ```text
//! let ota = Ota::new(OtaConfig::new("sensor", "ESP32"), MemorySink::new(4 << 20), MemoryStore::new());
//! let mut node = Node::new(Config::new(id), ota);
//! node.with_plugin(now, |ota, ctx| ota.offer(ctx, Offer::new("sensor", "ESP32", image).pmesh()));
//! // node.poll_event() -> Event::Plugin(OtaEvent::NodeProgress { .. }) on the distributor,
//! //                      Event::Plugin(OtaEvent::Progress { .. }) on receivers.
//! ```
//!
//! `no_std` + `alloc`: no clocks, threads or files; time comes from the node's context.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod b85;
pub mod bitmap;
pub mod bounds;
pub mod campaign;
pub mod classic;
pub mod codec;
pub mod event;
pub mod io;
pub mod offer;
pub mod plugin;
pub mod pmesh;
pub mod rollout;
#[cfg(feature = "signature")]
pub mod signed;

pub use bitmap::ChunkBitmap;
pub use event::{Mode, OtaEvent, Phase, Refusal, TransferId};
pub use io::{
    FirmwareSink, FirmwareSource, InstalledImage, IoError, MemorySink, MemorySource, MemoryStore,
    OtaStore, SinkStats, TransferRecord,
};
pub use offer::{ApplyPolicy, Offer, Protocol};
pub use plugin::{ClassicReceiverKind, Ota, OtaConfig};
pub use pmesh::{FrameKind, PmeshTuning};
pub use rollout::{DoneInput, RefusalCode, RolloutNode, RolloutPhase, RolloutView, rollout_done};
