//! What the node tells its host and application.

use alloc::vec::Vec;
use bytes::Bytes;
use pmesh_proto::Envelope;

/// Identifies one TCP connection; chosen by the host, unique while the connection lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Which side opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialled the peer (we are its WiFi station).
    Station,
    /// The peer dialled us (it is a station of our soft-AP).
    Ap,
}

/// Something for the host to do on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Write these bytes (one or more complete frames, NUL included) to the connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// Bytes to write, in order, all of them.
        data: Bytes,
    },
    /// Close the connection; the node has already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: DropReason,
    },
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The host reported the connection closed.
    Disconnected,
    /// No NODE_SYNC_REPLY within the node timeout.
    SyncTimeout,
    /// The peer is already reachable through another connection (a second path).
    AlreadyConnected,
    /// The peer's `subs` contain the peer itself (a cycle).
    LoopNeighbourInSubs,
    /// The peer's tree contains this node (a cycle through us).
    LoopContainsSelf,
    /// The peer's `nodeId` changed on an established connection.
    NodeIdChanged,
    /// The peer claims id 0 or our own id.
    InvalidNodeId,
    /// The application closed it.
    Closed,
    /// A connection the peer opened sent no valid first NODE_SYNC within
    /// `Config::handshake_timeout`.
    HandshakeTimeout,
}

impl DropReason {
    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Disconnected => "disconnected",
            DropReason::SyncTimeout => "sync_timeout",
            DropReason::AlreadyConnected => "already_connected",
            DropReason::LoopNeighbourInSubs => "loop_neighbour_in_subs",
            DropReason::LoopContainsSelf => "loop_contains_self",
            DropReason::NodeIdChanged => "node_id_changed",
            DropReason::InvalidNodeId => "invalid_node_id",
            DropReason::Closed => "closed",
            DropReason::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// Why the node dropped a frame it received (each also counted in [`crate::NodeStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameDropReason {
    /// Longer than the frame cap (`dropped_oversized`).
    Oversized,
    /// Not JSON the reference accepts, or not an object (`dropped_invalid`).
    Invalid,
    /// A SINGLE with no route to its `dest` (`dropped_no_route`).
    NoRoute,
    /// CONTROL, or an unknown type without routing that nobody handles (`dropped_unhandled`).
    Unhandled,
    /// A BROADCAST on a link held in the loop grace (`broadcasts_held`).
    BroadcastHeld,
    /// A frame to forward that a plugin refused (`Plugin::admit`; `forward_refused`).
    ForwardRefused,
    /// A TIME_SYNC or TIME_DELAY beyond its link's time-frame budget
    /// (`time_frames_over_budget`).
    TimeOverBudget,
}

impl FrameDropReason {
    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameDropReason::Oversized => "oversized",
            FrameDropReason::Invalid => "invalid",
            FrameDropReason::NoRoute => "no_route",
            FrameDropReason::Unhandled => "unhandled",
            FrameDropReason::BroadcastHeld => "broadcast_held",
            FrameDropReason::ForwardRefused => "forward_refused",
            FrameDropReason::TimeOverBudget => "time_over_budget",
        }
    }
}

/// Events for the application (painlessMesh's callbacks), plus the plugin's own events.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<E> {
    /// A SINGLE for us or a BROADCAST arrived (`onReceive`). `msg` is the payload's exact bytes.
    Received {
        /// Origin node.
        from: u32,
        /// Payload bytes (lossless; see `pmesh_proto::UserMessage::msg`).
        msg: Vec<u8>,
        /// True for BROADCAST, false for SINGLE.
        broadcast: bool,
    },
    /// A frame of a non-core type was processed locally and no plugin consumed it (`onPackage`).
    Package {
        /// The parsed frame.
        envelope: Envelope,
        /// Its raw bytes (NUL included).
        raw: Bytes,
    },
    /// A connection completed its first NODE_SYNC (`onNewConnection`).
    NewConnection {
        /// The neighbour.
        node_id: u32,
        /// Its connection.
        conn: ConnId,
    },
    /// A connection ended (`onDroppedConnection`). `node_id` is 0 if it never synced.
    DroppedConnection {
        /// The neighbour.
        node_id: u32,
        /// Its connection.
        conn: ConnId,
        /// Why.
        reason: DropReason,
    },
    /// The mesh topology as seen from here changed (`onChangedConnections`).
    ChangedConnections,
    /// The time offset was adjusted by `offset` µs (`onNodeTimeAdjusted`).
    TimeAdjusted {
        /// The adjustment applied.
        offset: i32,
    },
    /// A delay measurement completed (`onNodeDelayReceived`): one-way trip in µs.
    Delay {
        /// The node measured.
        node_id: u32,
        /// One-way delay, µs (u32 arithmetic, like the reference).
        delay_us: u32,
    },
    /// Frames received on `conn` were dropped. Consecutive drops on one connection for one
    /// reason, not yet polled, are merged into one event (`frames` of them), so a flood of bad
    /// frames costs one queued event.
    FrameDropped {
        /// The connection they came on.
        conn: ConnId,
        /// Why.
        reason: FrameDropReason,
        /// How many (at least 1).
        frames: u64,
    },
    /// An event from the node's plugin.
    Plugin(E),
}

impl<E> Event<E> {
    /// The same event with a plugin event passed through `f` (core events unchanged): how a
    /// host hands one node's events on under another plugin event type.
    pub fn map_plugin<F>(self, f: impl FnOnce(E) -> F) -> Event<F> {
        match self.split_plugin() {
            Ok(core_event) => core_event,
            Err(e) => Event::Plugin(f(e)),
        }
    }

    /// A core event under any plugin event type, or the plugin event.
    pub(crate) fn split_plugin<F>(self) -> Result<Event<F>, E> {
        Ok(match self {
            Event::Received {
                from,
                msg,
                broadcast,
            } => Event::Received {
                from,
                msg,
                broadcast,
            },
            Event::Package { envelope, raw } => Event::Package { envelope, raw },
            Event::NewConnection { node_id, conn } => Event::NewConnection { node_id, conn },
            Event::DroppedConnection {
                node_id,
                conn,
                reason,
            } => Event::DroppedConnection {
                node_id,
                conn,
                reason,
            },
            Event::ChangedConnections => Event::ChangedConnections,
            Event::TimeAdjusted { offset } => Event::TimeAdjusted { offset },
            Event::Delay { node_id, delay_us } => Event::Delay { node_id, delay_us },
            Event::FrameDropped {
                conn,
                reason,
                frames,
            } => Event::FrameDropped {
                conn,
                reason,
                frames,
            },
            Event::Plugin(e) => return Err(e),
        })
    }
}
