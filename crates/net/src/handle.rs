//! The thread-safe side of a running mesh: commands, snapshots and event subscriptions.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use pmesh_node::{Direction, Event, Instant, Node, NodeStats, Plugin, SendError};
use pmesh_proto::Routing;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::stats::{CloseReason, NetStats};

/// A closure run on the mesh thread against the node.
pub(crate) type Job<P> = Box<dyn FnOnce(&mut Node<P>, Instant) + Send>;

/// Requests answered at once, even while calls wait for congested queues to drain.
pub(crate) enum Query {
    Snapshot(oneshot::Sender<Snapshot>),
    Shutdown,
}

/// Something that happened in the mesh, as subscribers and hooks see it.
#[derive(Debug)]
pub enum MeshEvent<E> {
    /// An event of the node (messages, connections, topology, time, plugin events).
    Node(Event<E>),
    /// A TCP link opened (the node learns the neighbour's id with its first NODE_SYNC).
    LinkUp {
        /// The node's connection id.
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
        /// Who dialled.
        direction: Direction,
    },
    /// A TCP link closed.
    LinkDown {
        /// The node's connection id.
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
        /// The neighbour's id (0 if it never synced).
        node_id: u32,
        /// Why.
        reason: CloseReason,
    },
}

/// Why a request to the mesh failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshError {
    /// The mesh has stopped.
    Closed,
    /// The node refused the send.
    Send(SendError),
}

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshError::Closed => f.write_str("the mesh node has stopped"),
            MeshError::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MeshError {}

/// One TCP link in a [`Snapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct LinkInfo {
    /// Connection id.
    pub conn: u64,
    /// The neighbour's node id (0 until its first NODE_SYNC).
    pub node_id: u32,
    /// The peer's address.
    pub peer: String,
    /// `station` (we dialled) or `ap` (it dialled us).
    pub direction: &'static str,
    /// Seconds since the link opened.
    pub age_s: f64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes waiting to be written.
    pub queued_bytes: u64,
    /// Frames from this peer the node could not parse.
    pub frames_invalid: u64,
    /// Frames from this peer cut at the frame cap.
    pub frames_oversized: u64,
}

/// Serializes counters as a JSON object of `name: value` in list order (the `node_stats` key
/// of [`Snapshot`]: the same names as [`NodeStats`]'s fields).
fn counters_map<S: serde::Serializer>(stats: &NodeStats, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(stats.counters().map(|c| (c.name, c.value)))
}

/// The state of a running node at one moment (for `pmesh nodes`/`topology`, the MQTT bridge,
/// metrics).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// This node's id.
    pub node_id: u32,
    /// Announces `root:true`.
    pub root: bool,
    /// Announces time authority.
    pub time_authority: bool,
    /// Seconds since the runtime started.
    pub uptime_s: f64,
    /// Mesh time now (u32 µs, wrapping).
    pub mesh_time: u32,
    /// Offset of mesh time from the local clock (u32, wrapping).
    pub time_offset: u32,
    /// The address the listener is bound to, if any.
    pub listen: Option<SocketAddr>,
    /// Every other reachable node, pre-order (`getNodeList(false)`).
    pub nodes: Vec<u32>,
    /// The tree as this node sees it (`subConnectionJson`).
    pub tree: serde_json::Value,
    /// TCP links, synced or not.
    pub links: Vec<LinkInfo>,
    /// The node's protocol counters (JSON: one key per [`NodeStats::counters`] entry).
    #[serde(serialize_with = "counters_map")]
    pub node_stats: NodeStats,
    /// The runtime's counters.
    pub net_stats: NetStats,
}

/// A cheap, cloneable, thread-safe handle on a running mesh node.
pub struct MeshHandle<P: Plugin> {
    pub(crate) calls: mpsc::Sender<Job<P>>,
    pub(crate) queries: mpsc::Sender<Query>,
    pub(crate) events: broadcast::Sender<Arc<MeshEvent<P::Event>>>,
    pub(crate) node_id: u32,
    pub(crate) local_addr: Option<SocketAddr>,
}

impl<P: Plugin> Clone for MeshHandle<P> {
    fn clone(&self) -> Self {
        MeshHandle {
            calls: self.calls.clone(),
            queries: self.queries.clone(),
            events: self.events.clone(),
            node_id: self.node_id,
            local_addr: self.local_addr,
        }
    }
}

impl<P: Plugin> fmt::Debug for MeshHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshHandle")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl<P> MeshHandle<P>
where
    P: Plugin + 'static,
    P::Event: Send + Sync + 'static,
{
    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The address the listener is bound to, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Runs `f` on the mesh thread with the node and the current time, then sends what it
    /// queued. This is how applications and plugins' owners (OTA offers, status packages)
    /// act on the node. The next command waits while a send queue `f` filled is above its
    /// high-water mark, so a loop of calls is paced by the slowest link it feeds.
    pub async fn call<R, F>(&self, f: F) -> Result<R, MeshError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Node<P>, Instant) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job<P> = Box::new(move |node, now| {
            let _ = tx.send(f(node, now));
        });
        self.calls.send(job).await.map_err(|_| MeshError::Closed)?;
        rx.await.map_err(|_| MeshError::Closed)
    }

    /// Sends a SINGLE message to `dest` along the tree.
    pub async fn send_single(&self, dest: u32, msg: Vec<u8>) -> Result<(), MeshError> {
        self.call(move |n, now| n.send_single(now, dest, msg))
            .await?
            .map_err(MeshError::Send)
    }

    /// Sends a BROADCAST to every node (and, with `include_self`, to this node's subscribers).
    pub async fn send_broadcast(&self, msg: Vec<u8>, include_self: bool) -> Result<(), MeshError> {
        self.call(move |n, now| n.send_broadcast(now, msg, include_self))
            .await?
            .map_err(MeshError::Send)
    }

    /// Sends a package this node builds (JSON with its own `routing`).
    pub async fn send_frame(
        &self,
        routing: Routing,
        dest: u32,
        json: Vec<u8>,
    ) -> Result<(), MeshError> {
        self.call(move |n, now| n.send_frame(now, routing, dest, json))
            .await?
            .map_err(MeshError::Send)
    }

    /// The node's state now (answered at once, also while calls wait on flow control).
    pub async fn snapshot(&self) -> Result<Snapshot, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(Query::Snapshot(tx))
            .await
            .map_err(|_| MeshError::Closed)?;
        rx.await.map_err(|_| MeshError::Closed)
    }

    /// Subscribes to events from now on. A subscriber that falls more than the channel's
    /// capacity behind gets `RecvError::Lagged(n)`: it missed `n` events. Use
    /// [`crate::MeshBuilder::on_event`] where no event may be missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MeshEvent<P::Event>>> {
        self.events.subscribe()
    }

    /// Asks the mesh to shut down: links are flushed briefly and closed, the thread ends.
    pub async fn shutdown(&self) {
        let _ = self.queries.send(Query::Shutdown).await;
    }

    /// True once the mesh thread has stopped.
    pub fn is_closed(&self) -> bool {
        self.queries.is_closed()
    }
}
