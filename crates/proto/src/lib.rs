//! # pmesh-proto
//!
//! The painlessMesh wire protocol as the reference speaks it (`docs/spec/painlessmesh-wire.md`):
//! NUL framing with a size cap ([`framing`]), a JSON reader that accepts what stock relays emit
//! ([`json`]), the routing header and typed core messages ([`message`]), NodeTree ([`tree`]),
//! classic OTA ([`ota`]) and the Alteriom packages ([`packages`]). Big NODE_SYNC frames can be
//! decoded directly with [`NodeSync::parse_frame`], skipping the JSON value tree.
//!
//! `no_std` + `alloc`: no sockets, clocks or threads, so it runs on an ESP32 as well as on Linux.
//! Serialization is hand-written where the reference's field order and omission rules must be
//! matched byte for byte.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod base64;
pub mod framing;
pub mod json;
pub mod message;
pub mod ota;
pub mod packages;
mod sync_scan;
pub mod tree;

pub use framing::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError, encode_frame};
pub use json::DEFAULT_MAX_DEPTH;
pub use message::{DecodeError, Envelope, Message, NodeSync, Routing, TimeMessage, UserMessage};
pub use packages::{Generation, Package};
pub use tree::NodeTree;
