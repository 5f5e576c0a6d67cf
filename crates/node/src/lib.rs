//! # pmesh-node
//!
//! A painlessMesh node as a plain state machine (the sans-IO shape of quinn-proto and str0m):
//!
//! ```text
//! node.handle_connect(conn, now, Direction::Station | Direction::Ap)
//! node.handle_bytes(conn, now, &bytes)      // raw TCP bytes; framing is inside
//! node.handle_disconnect(conn, now)
//! node.handle_timeout(now)
//! node.send_single(now, dest, msg) / send_broadcast / send_frame / start_delay_meas
//! node.poll_transmit() -> Option<Transmit>  // bytes to write, connections to close
//! node.poll_event()    -> Option<Event>     // Received, NewConnection, Dropped, TimeAdjusted, ...
//! node.poll_timeout()  -> Option<Instant>   // next deadline
//! ```
//!
//! The node implements the reference's behaviour (spec §4, §5): node sync (station side at once,
//! AP side after 10 s, every 60 s, 10 s reply timeout, forced re-sync on topology change, `subs`
//! without the receiver's branch, connection order), tree-ness rules, routing (SINGLE by
//! subtree, BROADCAST to every other synced link and locally, NEIGHBOUR local only, unknown
//! types by `routing`), time sync (adoption rule, NTP offset, /4 softening, 85x rejection,
//! 5 ms completion, 200 ms retry, 60 s cadence) and TIME_DELAY. Frames that are relayed go out
//! as the exact bytes that came in.
//!
//! Where it deliberately differs from the reference (time replies held 1 ms, time authority in
//! replies, loops cut on one agreed link, forced syncs coalesced per link) is listed with the
//! reasons in `docs/compatibility/node.md`.
//!
//! Time is injected ([`Instant`]), randomness comes from [`Config::seed`], and iteration
//! order is deterministic. `no_std` + `alloc`. With the `testing` feature, `testing::Harness`
//! runs many nodes against each other in virtual time.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod config;
pub mod event;
pub mod node;
pub mod ntp;
pub mod plugin;
pub mod rng;
pub mod stats;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use config::{Config, FrameBudget};
pub use event::{ConnId, Direction, DropReason, Event, FrameDropReason, Transmit};
pub use node::{Node, SendError};
pub use plugin::{ConnectionChange, Context, Handled, Incoming, MapEvents, Neighbour, Plugin};
pub use pmesh_proto as proto;
pub use rng::SplitMix64;
pub use stats::{Counter, CounterKind, NodeStats};
pub use status::{StatusConfig, StatusPlugin, StatusTarget};
pub use time::Instant;
