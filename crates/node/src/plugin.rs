//! Plugins: sans-IO behaviours on top of the node (OTA, status reports, user packages), in the
//! way libp2p behaviours sit on a swarm. A plugin sees frames processed locally, connection
//! changes and its own timers, and acts through a [`Context`]; it never touches IO either.

use alloc::vec::Vec;
use bytes::Bytes;
use pmesh_proto::{Envelope, NodeTree, Routing};

use crate::event::{ConnId, Direction};
use crate::node::{Core, SendError};
use crate::time::Instant;

/// Whether a plugin consumed a frame (if not, the node emits [`crate::Event::Package`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The plugin handled the frame.
    Yes,
    /// Not for this plugin.
    No,
}

/// A frame being processed locally.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Connection it arrived on.
    pub conn: ConnId,
    /// The neighbour on that connection (0 if not yet synced).
    pub neighbour: u32,
    /// The parsed frame.
    pub envelope: &'a Envelope,
    /// The raw frame, NUL included.
    pub raw: &'a Bytes,
}

/// A change of the node's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionChange {
    /// A neighbour completed its first NODE_SYNC.
    New {
        /// Its connection.
        conn: ConnId,
        /// Its id.
        node_id: u32,
    },
    /// A synced neighbour is gone.
    Dropped {
        /// Its former connection.
        conn: ConnId,
        /// Its id.
        node_id: u32,
    },
    /// Some neighbour's tree changed (nodes joined or left somewhere).
    Topology,
}

/// A behaviour driven by the node.
pub trait Plugin {
    /// Events this plugin reports to the application.
    type Event;

    /// A frame of any type other than the core types 3–7 was processed locally (after the
    /// node forwarded it, if it travels further).
    fn on_frame(&mut self, _ctx: &mut Context<'_, Self::Event>, _frame: &Incoming<'_>) -> Handled {
        Handled::No
    }

    /// A frame is about to be forwarded by this node (SINGLE to another node, or BROADCAST):
    /// `false` drops it here, neither forwarded nor processed locally (counted in
    /// `forward_refused`). Lets a plugin check what it relays, e.g. an OTA manifest's
    /// signature before it floods on.
    fn admit(&mut self, _ctx: &mut Context<'_, Self::Event>, _frame: &Incoming<'_>) -> bool {
        true
    }

    /// Connections changed.
    fn on_connection(&mut self, _ctx: &mut Context<'_, Self::Event>, _change: ConnectionChange) {}

    /// Called when [`Plugin::poll_timeout`]'s deadline has passed.
    fn on_timeout(&mut self, _ctx: &mut Context<'_, Self::Event>) {}

    /// The plugin's next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// The plugin-less node.
impl Plugin for () {
    type Event = core::convert::Infallible;
}

/// Two plugins side by side sharing one event type; both see every frame, the first to
/// handle it wins the "handled" answer.
impl<A, B> Plugin for (A, B)
where
    A: Plugin,
    B: Plugin<Event = A::Event>,
{
    type Event = A::Event;

    fn on_frame(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> Handled {
        let a = self.0.on_frame(ctx, frame);
        let b = self.1.on_frame(ctx, frame);
        if a == Handled::Yes || b == Handled::Yes {
            Handled::Yes
        } else {
            Handled::No
        }
    }

    fn admit(&mut self, ctx: &mut Context<'_, Self::Event>, frame: &Incoming<'_>) -> bool {
        self.0.admit(ctx, frame) && self.1.admit(ctx, frame)
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, Self::Event>, change: ConnectionChange) {
        self.0.on_connection(ctx, change);
        self.1.on_connection(ctx, change);
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, Self::Event>) {
        let now = ctx.now();
        if self.0.poll_timeout().is_some_and(|t| t <= now) {
            self.0.on_timeout(ctx);
        }
        if self.1.poll_timeout().is_some_and(|t| t <= now) {
            self.1.on_timeout(ctx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        crate::time::earliest(self.0.poll_timeout(), self.1.poll_timeout())
    }
}

/// A neighbour as plugins see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Its connection.
    pub conn: ConnId,
    /// Its id (0 until its first NODE_SYNC).
    pub node_id: u32,
    /// Who dialled whom.
    pub direction: Direction,
}

/// What a plugin may do and see while it is called.
#[derive(Debug)]
pub struct Context<'a, E> {
    pub(crate) core: &'a mut Core<E>,
    pub(crate) now: Instant,
}

impl<E> Context<'_, E> {
    /// The current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.core.cfg.node_id
    }

    /// This node is configured as root.
    pub fn is_root(&self) -> bool {
        self.core.cfg.root
    }

    /// Mesh time now (u32 µs).
    pub fn mesh_time(&self) -> u32 {
        self.core.mesh_time(self.now)
    }

    /// Sends a frame this node originates: SINGLE along the tree to `dest`, BROADCAST to every
    /// synced neighbour, NEIGHBOUR not allowed here (use [`Context::send_to_conn`]).
    pub fn send(&mut self, routing: Routing, dest: u32, json: Vec<u8>) -> Result<(), SendError> {
        self.core.send_frame(routing, dest, json)
    }

    /// Sends a frame to one neighbour connection.
    pub fn send_to_conn(&mut self, conn: ConnId, json: Vec<u8>) -> Result<(), SendError> {
        self.core.send_to_conn(conn, json)
    }

    /// Sends already-framed bytes (NUL included) to one neighbour connection.
    pub fn send_raw_to_conn(&mut self, conn: ConnId, frame: Bytes) -> Result<(), SendError> {
        self.core.send_raw_to_conn(conn, frame)
    }

    /// Synced neighbours, in connection order.
    pub fn neighbours(&self) -> impl Iterator<Item = Neighbour> + '_ {
        self.core.neighbours()
    }

    /// The tree a neighbour last reported.
    pub fn neighbour_tree(&self, conn: ConnId) -> Option<&NodeTree> {
        self.core.conn(conn).map(|c| &c.tree)
    }

    /// The connection leading to `node_id`, if reachable.
    pub fn route(&self, node_id: u32) -> Option<ConnId> {
        self.core.route(node_id)
    }

    /// This node's view of the mesh (`asNodeTree`).
    pub fn tree(&self) -> NodeTree {
        self.core.tree()
    }

    /// Every node reachable, pre-order, optionally with this one first.
    pub fn node_list(&self, include_self: bool) -> Vec<u32> {
        self.core.node_list(include_self)
    }

    /// A pseudo-random number from the node's seeded generator.
    pub fn random(&mut self) -> u64 {
        self.core.rng.next()
    }

    /// Reports an event to the application.
    pub fn emit(&mut self, event: E) {
        self.core.push_event(crate::Event::Plugin(event));
    }

    /// Largest frame peers accept (the configured cap).
    pub fn max_frame(&self) -> usize {
        self.core.cfg.max_frame
    }
}
