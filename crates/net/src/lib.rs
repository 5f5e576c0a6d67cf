//! # pmesh-net
//!
//! The Linux runtime of a pmesh node: it drives a sans-IO [`pmesh_node::Node`] from tokio.
//!
//! ```text
//!             MeshHandle (Send, Clone)            mesh thread (current-thread tokio runtime)
//!  app / CLI / bridge ──calls────▶ call task ────┐   (queries: snapshots, shutdown)
//!                                                 │   ┌──────────── State ─────────────┐
//!  TCP listener ──accept──▶ link tasks ──bytes───▶├──▶│ Node<P>, links, queues, stats  │
//!  uplink dialers ──connect──▶ (reader, writer)   │   └──────┬──────────────┬──────────┘
//!  timer task ◀──── node.poll_timeout() ──────────┘          │ transmits    │ events
//!                                                  writer queues    logs, hooks, subscribers
//! ```
//!
//! - [`MeshBuilder::spawn`] starts the node on its own thread with a single-threaded tokio runtime;
//!   the node, its links and queues live there without locks. Everything else talks to it
//!   through a [`MeshHandle`] (closures run against the node, snapshots, events).
//! - Each TCP link has a reader task (bytes go to the node with their arrival time) and a
//!   writer task that writes queued frames with vectored writes, advancing precisely over
//!   partial writes. Relayed frames are the exact bytes the node received.
//! - Flow control: a link's send queue has a high-water mark; a reader whose bytes were
//!   forwarded into a queue above it stops reading until that queue drains (TCP pushes back on
//!   the sender), never waiting on its own link's queue, so a tree cannot deadlock, and never
//!   longer than `reader_pause_limit` on a peer that accepts no byte at all, so a peer that
//!   stopped reading does not hold up the others. A queue that passes the hard limit, or a
//!   peer that accepts no byte for the stall timeout, is dropped, counted and logged.
//! - Plugins: the runtime is generic over the node's plugin (`Node<P>`); plugin owners act on
//!   it through [`MeshHandle::call`] and see its events through hooks and subscriptions.
//! - Uplinks are dialled as a WiFi station would: retries after 1, 2, 4, 8, 8 s as the
//!   reference does, then a capped exponential backoff forever ([`RetrySchedule`]).
//! - [`control`] is the local control endpoint (JSON lines over a Unix socket or loopback
//!   TCP) behind `pmesh send`, `pmesh nodes`, `pmesh topology`, `pmesh events`; new request
//!   kinds are added by registering handlers.
//! - OTA: [`firmware`] has the file-backed image source, sink and store (fsync'd, atomic,
//!   resumable after a restart); [`ota`] has the plugin a Linux node runs
//!   ([`ota::NodeOta`]), the rollout follower behind `pmesh ota push` ([`ota::run_push`])
//!   and its control commands ([`ota::routes`]).

#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod firmware;
pub mod handle;
pub mod node_id;
pub mod ota;
mod runtime;
pub mod stats;

pub use clock::Clock;
pub use config::{NetConfig, RetrySchedule};
pub use handle::{LinkInfo, MeshError, MeshEvent, MeshHandle, Snapshot};
pub use runtime::{Mesh, MeshBuilder};
pub use stats::{CloseReason, NetStats};

pub use pmesh_node;
