//! The mesh thread: one single-threaded tokio runtime that owns the node, its links and their
//! queues, and drives the node from sockets, timers and commands.
//!
//! All state lives in one `State` behind `Rc<RefCell<..>>`; tasks borrow it only between
//! awaits, so no lock is ever held across IO. After every input (bytes, connect, disconnect,
//! timer, command) `State::flush` moves the node's transmits into the links' send queues and
//! its events into logs, hooks and subscribers, then re-arms the timer task.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pmesh_node::{
    ConnId, Direction, Event, FrameDropReason, Instant, Node, Plugin, SplitMix64, Transmit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::{AbortHandle, LocalSet};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::NetConfig;
use crate::handle::{Job, LinkInfo, MeshEvent, MeshHandle, Query, Snapshot};
use crate::stats::{CloseReason, LogLimit, NetStats, suppressed_note};

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 256;
/// First size of a link's read buffer; it doubles up to `NetConfig::read_buffer` while reads
/// fill it, so idle links stay small.
const INITIAL_READ_BUFFER: usize = 4096;
/// How long shutdown waits for send queues to drain before closing links.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);
/// Longest list of node ids printed in one topology log line.
const MAX_LOGGED_IDS: usize = 20;

/// A synchronous observer of every event, run on the mesh thread.
type Hook<E> = Box<dyn FnMut(&MeshEvent<E>) + Send>;

/// Builds the node on the mesh thread.
type MakeNode<P> = Box<dyn FnOnce() -> Node<P> + Send>;

/// Configures and starts a [`Mesh`].
pub struct MeshBuilder<P: Plugin> {
    node_id: u32,
    make_node: MakeNode<P>,
    cfg: NetConfig,
    hooks: Vec<Hook<P::Event>>,
    event_capacity: usize,
}

impl<P: Plugin> std::fmt::Debug for MeshBuilder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("node_id", &self.node_id)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<P> MeshBuilder<P>
where
    P: Plugin + Send + 'static,
    P::Event: Send + Sync + Debug + 'static,
{
    /// A mesh running `node` with these runtime settings.
    pub fn new(node: Node<P>, cfg: NetConfig) -> Self {
        let node_id = node.id();
        Self::with_node_fn(node_id, cfg, move || node)
    }
}

impl<P> MeshBuilder<P>
where
    P: Plugin + 'static,
    P::Event: Send + Sync + Debug + 'static,
{
    /// A mesh whose node (with id `node_id`) is built by `make_node` on the mesh thread, for
    /// plugins that cannot move between threads (state shared through `Rc`, say).
    pub fn with_node_fn(
        node_id: u32,
        cfg: NetConfig,
        make_node: impl FnOnce() -> Node<P> + Send + 'static,
    ) -> Self {
        MeshBuilder {
            node_id,
            make_node: Box::new(make_node),
            cfg,
            hooks: Vec::new(),
            event_capacity: 1024,
        }
    }

    /// Calls `hook` on the mesh thread for every event, in order, none missed. Keep it short:
    /// the node waits for it. (Subscribers of [`MeshHandle::subscribe`] may lag and miss events.)
    pub fn on_event(mut self, hook: impl FnMut(&MeshEvent<P::Event>) + Send + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Events buffered per subscriber before it lags (default 1,024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Binds the listener (so address errors surface here) and starts the mesh thread.
    pub fn spawn(self) -> io::Result<Mesh<P>> {
        let listener = match self.cfg.listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let local_addr = listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (call_tx, call_rx) = mpsc::channel(256);
        let (query_tx, query_rx) = mpsc::channel(64);
        let (ev_tx, _) = broadcast::channel(self.event_capacity);
        let node_id = self.node_id;
        let handle = MeshHandle {
            calls: call_tx,
            queries: query_tx,
            events: ev_tx.clone(),
            node_id,
            local_addr,
        };
        let MeshBuilder {
            make_node,
            cfg,
            hooks,
            ..
        } = self;
        let thread = thread::Builder::new()
            .name(format!("pmesh-{node_id}"))
            .spawn(move || {
                let node = make_node();
                if node.id() != node_id {
                    warn!(
                        expected = node_id,
                        built = node.id(),
                        "the node was built with another id than announced"
                    );
                }
                let local = LocalSet::new();
                local.block_on(
                    &rt,
                    run(
                        node,
                        cfg,
                        hooks,
                        listener,
                        local_addr,
                        Inbox {
                            calls: call_rx,
                            queries: query_rx,
                            events: ev_tx,
                        },
                    ),
                );
            })?;
        Ok(Mesh {
            handle,
            thread: Some(thread),
        })
    }
}

/// A node running on its own thread. Dropping it (and every [`MeshHandle`]) stops the node.
pub struct Mesh<P: Plugin> {
    handle: MeshHandle<P>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<P: Plugin> std::fmt::Debug for Mesh<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("handle", &self.handle)
            .finish()
    }
}

impl<P> Mesh<P>
where
    P: Plugin + 'static,
    P::Event: Send + Sync + Debug + 'static,
{
    /// A handle for commands, snapshots and events.
    pub fn handle(&self) -> MeshHandle<P> {
        self.handle.clone()
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.handle.local_addr
    }

    /// Shuts the node down and waits for its thread to end.
    pub fn shutdown_blocking(mut self) {
        let _ = self.handle.queries.blocking_send(Query::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits (blocking) until the mesh thread has ended, after a shutdown request.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<P: Plugin> Drop for Mesh<P> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.queries.try_send(Query::Shutdown);
        }
    }
}

// --- state -------------------------------------------------------------------------------

/// Lets a dialer learn how its link ended.
#[derive(Debug, Default)]
struct LinkWatch {
    closed: Notify,
    synced: Cell<bool>,
}

struct Link {
    peer: SocketAddr,
    direction: Direction,
    opened: std::time::Instant,
    node_id: u32,
    /// Frames waiting for the writer (the writer holds the batch it is writing).
    out: VecDeque<Bytes>,
    /// Bytes queued here or in the writer's batch, not yet written.
    queued: usize,
    /// `queued` passed the high-water mark and has not yet fallen to half of it.
    congested: bool,
    /// Since when the writer has had bytes to write without writing any (None: idle or progressing).
    stuck_since: Option<std::time::Instant>,
    wake_writer: Rc<Notify>,
    drained: Rc<Notify>,
    watch: Rc<LinkWatch>,
    tasks: Vec<AbortHandle>,
    bytes_in: u64,
    bytes_out: u64,
    frames_invalid: u64,
    frames_oversized: u64,
}

struct State<P: Plugin> {
    node: Node<P>,
    clock: Clock,
    cfg: NetConfig,
    links: BTreeMap<ConnId, Link>,
    next_conn: u64,
    stats: NetStats,
    events: broadcast::Sender<Arc<MeshEvent<P::Event>>>,
    hooks: Vec<Hook<P::Event>>,
    timer: Rc<Notify>,
    armed: Option<Instant>,
    known_nodes: BTreeSet<u32>,
    local_addr: Option<SocketAddr>,
    logs: LogLimits,
}

/// Rate limits of the warnings a peer can trigger at will (one per connection).
#[derive(Debug, Default)]
struct LogLimits {
    max_connections: LogLimit,
    unsynced_per_address: LogLimit,
    /// Faults on links that never synced (handshake timeouts, refused duplicates, ...).
    unsynced_drops: LogLimit,
}

type Shared<P> = Rc<RefCell<State<P>>>;

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Station => "station",
        Direction::Ap => "ap",
    }
}

impl<P> State<P>
where
    P: Plugin,
    P::Event: Debug,
{
    /// Moves the node's output to the links, logs and subscribers. Returns the links (other
    /// than `source`) that this input pushed above their high-water mark: the caller waits
    /// for them before producing more.
    fn flush(&mut self, now: Instant, source: Option<ConnId>) -> Vec<ConnId> {
        let mut waits = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(t) = self.node.poll_transmit() {
                progressed = true;
                match t {
                    Transmit::Send { conn, data } => {
                        self.enqueue(conn, data, now, source, &mut waits)
                    }
                    Transmit::Close { conn, reason } => {
                        self.close_link(conn, CloseReason::Node(reason), false, now)
                    }
                }
            }
            while let Some(ev) = self.node.poll_event() {
                progressed = true;
                self.on_node_event(ev);
            }
            if !progressed {
                break;
            }
        }
        let deadline = self.node.poll_timeout();
        if deadline != self.armed {
            self.armed = deadline;
            self.timer.notify_one();
        }
        waits
    }

    fn enqueue(
        &mut self,
        conn: ConnId,
        data: Bytes,
        now: Instant,
        source: Option<ConnId>,
        waits: &mut Vec<ConnId>,
    ) {
        let Some(l) = self.links.get_mut(&conn) else {
            self.stats.dropped_no_link += 1;
            return;
        };
        let len = data.len();
        if l.queued + len > self.cfg.send_queue_limit {
            self.close_link(conn, CloseReason::SendQueueFull, true, now);
            return;
        }
        if l.out.is_empty() {
            l.wake_writer.notify_one();
        }
        if l.queued == 0 {
            l.stuck_since = Some(std::time::Instant::now());
        }
        l.out.push_back(data);
        l.queued += len;
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(l.queued as u64);
        if l.queued > self.cfg.send_queue_high_water {
            l.congested = true;
            if Some(conn) != source && !waits.contains(&conn) {
                waits.push(conn);
            }
        }
    }

    /// Forgets a link: stops its tasks (closing the socket), wakes whoever waits on it, logs
    /// and counts why. `tell_node`: the node still knows the connection and must be told.
    fn close_link(&mut self, conn: ConnId, reason: CloseReason, tell_node: bool, now: Instant) {
        let Some(l) = self.links.remove(&conn) else {
            return;
        };
        for t in &l.tasks {
            t.abort();
        }
        l.drained.notify_waiters();
        l.watch.closed.notify_one();
        self.stats.count_close(reason);
        let age_s = l.opened.elapsed().as_secs_f64();
        if reason.is_fault() {
            // A peer can open and abandon unsynced links at will: those warnings are rate-limited.
            let print = match l.node_id {
                0 => self.logs.unsynced_drops.allow(
                    std::time::Instant::now(),
                    &mut self.stats.log_lines_suppressed,
                ),
                _ => Some(0),
            };
            if let Some(n) = print {
                warn!(conn = conn.0, peer = %l.peer, node_id = l.node_id, direction = direction_str(l.direction),
                    reason = %reason, queued_bytes = l.queued, age_s, bytes_in = l.bytes_in, bytes_out = l.bytes_out,
                    frames_invalid = l.frames_invalid, frames_oversized = l.frames_oversized,
                    "link dropped{}", suppressed_note(n));
            }
        } else {
            info!(conn = conn.0, peer = %l.peer, node_id = l.node_id, direction = direction_str(l.direction),
                reason = %reason, age_s, bytes_in = l.bytes_in, bytes_out = l.bytes_out, "link closed");
        }
        self.emit(MeshEvent::LinkDown {
            conn: conn.0,
            peer: l.peer,
            node_id: l.node_id,
            reason,
        });
        if tell_node {
            self.node.handle_disconnect(conn, now);
        }
    }

    /// Counts an accepted connection and decides whether to close it at once: the node is at
    /// `max_connections`, or `peer`'s address already has `max_unsynced_per_address` links
    /// without a first NODE_SYNC. Refusals are counted; their warnings are rate-limited.
    fn refuse_accept(&mut self, peer: SocketAddr) -> bool {
        self.stats.accepted += 1;
        let now = std::time::Instant::now();
        let suppressed = &mut self.stats.log_lines_suppressed;
        if self.links.len() >= self.cfg.max_connections {
            self.stats.rejected_max_connections += 1;
            if let Some(n) = self.logs.max_connections.allow(now, suppressed) {
                warn!(peer = %peer, max = self.cfg.max_connections,
                    "connection refused: too many connections{}", suppressed_note(n));
            }
            return true;
        }
        let unsynced = self
            .links
            .values()
            .filter(|l| l.node_id == 0 && l.direction == Direction::Ap && l.peer.ip() == peer.ip())
            .count();
        if unsynced >= self.cfg.max_unsynced_per_address {
            self.stats.rejected_unsynced_per_address += 1;
            if let Some(n) = self.logs.unsynced_per_address.allow(now, suppressed) {
                warn!(peer = %peer, max = self.cfg.max_unsynced_per_address,
                    "connection refused: too many connections without a NODE_SYNC from this address{}",
                    suppressed_note(n));
            }
            return true;
        }
        false
    }

    fn on_bytes(&mut self, conn: ConnId, now: Instant, data: &[u8]) -> Vec<ConnId> {
        self.node.handle_bytes(conn, now, data);
        self.stats.bytes_in += data.len() as u64;
        if let Some(l) = self.links.get_mut(&conn) {
            l.bytes_in += data.len() as u64;
        }
        self.flush(now, Some(conn))
    }

    /// Counts frames the node dropped as invalid or oversized, for the runtime and the link
    /// (`Event::FrameDropped`); the first of each kind on a link is logged.
    fn on_frames_dropped(&mut self, conn: ConnId, reason: FrameDropReason, frames: u64) {
        let max_frame = self.node.config().max_frame;
        let link = self.links.get_mut(&conn);
        match reason {
            FrameDropReason::Invalid => {
                self.stats.frames_invalid += frames;
                if let Some(l) = link {
                    if l.frames_invalid == 0 {
                        warn!(conn = conn.0, peer = %l.peer, node_id = l.node_id,
                            "peer sent a frame that is not valid JSON; dropped (further ones are only counted)");
                    }
                    l.frames_invalid += frames;
                }
            }
            FrameDropReason::Oversized => {
                self.stats.frames_oversized += frames;
                if let Some(l) = link {
                    if l.frames_oversized == 0 {
                        warn!(conn = conn.0, peer = %l.peer, node_id = l.node_id, cap = max_frame,
                            "peer sent a frame longer than the frame cap; cut (further ones are only counted)");
                    }
                    l.frames_oversized += frames;
                }
            }
            _ => debug!(
                conn = conn.0,
                reason = reason.as_str(),
                frames,
                "frames dropped"
            ),
        }
    }

    fn on_written(&mut self, conn: ConnId, n: usize) {
        self.stats.bytes_out += n as u64;
        let low_water = self.cfg.send_queue_high_water / 2;
        if let Some(l) = self.links.get_mut(&conn) {
            l.queued -= n;
            l.bytes_out += n as u64;
            l.stuck_since = (l.queued > 0).then(std::time::Instant::now);
            if l.congested && l.queued <= low_water {
                l.congested = false;
                l.drained.notify_waiters();
            }
        }
    }

    fn on_node_event(&mut self, ev: Event<P::Event>) {
        match &ev {
            Event::NewConnection { node_id, conn } => {
                if let Some(l) = self.links.get_mut(conn) {
                    l.node_id = *node_id;
                    l.watch.synced.set(true);
                    info!(node_id, conn = conn.0, peer = %l.peer, direction = direction_str(l.direction), "neighbour joined");
                }
            }
            Event::DroppedConnection {
                node_id,
                conn,
                reason,
            } => {
                debug!(
                    node_id,
                    conn = conn.0,
                    reason = reason.as_str(),
                    "node dropped connection"
                );
            }
            Event::ChangedConnections => self.log_topology(),
            Event::TimeAdjusted { offset } => {
                if offset.unsigned_abs() >= 5_000 {
                    info!(
                        offset_us = offset,
                        mesh_time = self.node.mesh_time(self.clock.now()),
                        "mesh time adjusted"
                    );
                } else {
                    debug!(offset_us = offset, "mesh time adjusted");
                }
            }
            Event::Delay { node_id, delay_us } => info!(node_id, delay_us, "delay measured"),
            Event::Received {
                from,
                msg,
                broadcast,
            } => {
                debug!(from, broadcast, bytes = msg.len(), msg = %preview(msg), "message received");
            }
            Event::Package { envelope, raw } => {
                debug!(
                    package_type = envelope.ty,
                    from = envelope.from,
                    bytes = raw.len(),
                    "package received"
                );
            }
            Event::FrameDropped {
                conn,
                reason,
                frames,
            } => self.on_frames_dropped(*conn, *reason, *frames),
            Event::Plugin(e) => debug!(event = ?e, "plugin event"),
        }
        self.emit(MeshEvent::Node(ev));
    }

    fn log_topology(&mut self) {
        let now: BTreeSet<u32> = self.node.node_list(false).into_iter().collect();
        let joined: Vec<u32> = now.difference(&self.known_nodes).copied().collect();
        let left: Vec<u32> = self.known_nodes.difference(&now).copied().collect();
        if joined.is_empty() && left.is_empty() {
            debug!(nodes = now.len(), "topology changed (same nodes)");
        } else {
            info!(nodes = now.len(), joined = %id_list(&joined), left = %id_list(&left), "topology changed");
        }
        self.known_nodes = now;
    }

    fn emit(&mut self, ev: MeshEvent<P::Event>) {
        for hook in &mut self.hooks {
            hook(&ev);
        }
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(ev));
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.clock.now();
        // As data: the text parsed again stopped at serde_json's 128 levels (64 chained nodes).
        let tree = serde_json::to_value(self.node.tree()).unwrap_or(serde_json::Value::Null);
        let cfg = self.node.config();
        Snapshot {
            node_id: self.node.id(),
            root: cfg.root,
            time_authority: cfg.time_authority,
            uptime_s: self.clock.uptime().as_secs_f64(),
            mesh_time: self.node.mesh_time(now),
            time_offset: self.node.time_offset(),
            listen: self.local_addr,
            nodes: self.node.node_list(false),
            tree,
            links: self
                .links
                .iter()
                .map(|(conn, l)| LinkInfo {
                    conn: conn.0,
                    node_id: l.node_id,
                    peer: l.peer.to_string(),
                    direction: direction_str(l.direction),
                    age_s: l.opened.elapsed().as_secs_f64(),
                    bytes_in: l.bytes_in,
                    bytes_out: l.bytes_out,
                    queued_bytes: l.queued as u64,
                    frames_invalid: l.frames_invalid,
                    frames_oversized: l.frames_oversized,
                })
                .collect(),
            node_stats: self.node.stats(),
            net_stats: self.stats,
        }
    }
}

/// At most 80 characters of a payload for a log line.
fn preview(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(&msg[..msg.len().min(80)]);
    if msg.len() > 80 {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

fn id_list(ids: &[u32]) -> String {
    let mut s: Vec<String> = ids
        .iter()
        .take(MAX_LOGGED_IDS)
        .map(u32::to_string)
        .collect();
    if ids.len() > MAX_LOGGED_IDS {
        s.push(format!("… {} more", ids.len() - MAX_LOGGED_IDS));
    }
    format!("[{}]", s.join(","))
}

// --- tasks -------------------------------------------------------------------------------

/// The mesh thread's ends of the handle's channels.
struct Inbox<P: Plugin> {
    calls: mpsc::Receiver<Job<P>>,
    queries: mpsc::Receiver<Query>,
    events: broadcast::Sender<Arc<MeshEvent<P::Event>>>,
}

async fn run<P>(
    node: Node<P>,
    cfg: NetConfig,
    hooks: Vec<Hook<P::Event>>,
    listener: Option<std::net::TcpListener>,
    local_addr: Option<SocketAddr>,
    inbox: Inbox<P>,
) where
    P: Plugin + 'static,
    P::Event: Debug + 'static,
{
    let Inbox {
        calls,
        mut queries,
        events,
    } = inbox;
    let node_id = node.id();
    let clock = Clock::new();
    let shared: Shared<P> = Rc::new(RefCell::new(State {
        node,
        clock,
        cfg: cfg.clone(),
        links: BTreeMap::new(),
        next_conn: 1,
        stats: NetStats::default(),
        events,
        hooks,
        timer: Rc::new(Notify::new()),
        armed: None,
        known_nodes: BTreeSet::new(),
        local_addr,
        logs: LogLimits::default(),
    }));
    info!(node_id, listen = ?local_addr, uplinks = ?cfg.connect, "mesh node started");

    let mut background = Vec::new();
    if let Some(l) = listener {
        match TcpListener::from_std(l) {
            Ok(l) => background
                .push(tokio::task::spawn_local(acceptor(shared.clone(), l)).abort_handle()),
            Err(e) => warn!(error = %e, "cannot use the listener; accepting no connections"),
        }
    }
    for target in &cfg.connect {
        background
            .push(tokio::task::spawn_local(dialer(shared.clone(), target.clone())).abort_handle());
    }
    background.push(tokio::task::spawn_local(timer_task(shared.clone())).abort_handle());

    background.push(tokio::task::spawn_local(call_task(shared.clone(), calls)).abort_handle());
    while let Some(q) = queries.recv().await {
        match q {
            Query::Snapshot(reply) => {
                let _ = reply.send(shared.borrow().snapshot());
            }
            Query::Shutdown => break,
        }
    }

    info!(node_id, "mesh node shutting down");
    for t in background {
        t.abort();
    }
    let until = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while tokio::time::Instant::now() < until
        && shared.borrow().links.values().any(|l| l.queued > 0)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut st = shared.borrow_mut();
    let now = st.clock.now();
    let conns: Vec<ConnId> = st.links.keys().copied().collect();
    for conn in conns {
        st.close_link(conn, CloseReason::Shutdown, false, now);
    }
    info!(node_id, "mesh node stopped");
}

/// Runs the closures of [`MeshHandle::call`] in order; after each, waits while a queue it
/// filled is congested, so callers are paced by the links they feed.
async fn call_task<P>(shared: Shared<P>, mut calls: mpsc::Receiver<Job<P>>)
where
    P: Plugin,
    P::Event: Debug,
{
    while let Some(job) = calls.recv().await {
        let waits = {
            let mut st = shared.borrow_mut();
            let now = st.clock.now();
            job(&mut st.node, now);
            st.flush(now, None)
        };
        wait_drained(&shared, &waits).await;
    }
}

/// Waits until none of `conns` is congested (drained to half the high-water mark, or gone).
/// A queue whose peer has accepted nothing for `reader_pause_limit` is not waited for: a
/// peer that stopped reading must not hold up the others.
async fn wait_drained<P>(shared: &Shared<P>, conns: &[ConnId])
where
    P: Plugin,
{
    for conn in conns {
        let mut counted = false;
        loop {
            let (drained, give_up_at) = {
                let mut st = shared.borrow_mut();
                let limit = st.cfg.reader_pause_limit;
                let Some(l) = st.links.get(conn) else { break };
                if !l.congested {
                    break;
                }
                let give_up_at = l.stuck_since.map(|t| t + limit);
                if give_up_at.is_some_and(|t| t <= std::time::Instant::now()) {
                    break;
                }
                let drained = l.drained.clone();
                if !counted {
                    st.stats.reader_pauses += 1;
                    counted = true;
                }
                (drained, give_up_at)
            };
            match give_up_at {
                Some(t) => {
                    tokio::select! {
                        _ = drained.notified() => {}
                        _ = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                None => drained.notified().await,
            }
        }
    }
}

async fn acceptor<P>(shared: Shared<P>, listener: TcpListener)
where
    P: Plugin + 'static,
    P::Event: Debug + 'static,
{
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let refused = shared.borrow_mut().refuse_accept(peer);
                if !refused {
                    add_link(&shared, sock, peer, Direction::Ap);
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Keeps one uplink connected: dial, run the link until it closes, wait, dial again.
async fn dialer<P>(shared: Shared<P>, target: String)
where
    P: Plugin + 'static,
    P::Event: Debug + 'static,
{
    let (retry, connect_timeout) = {
        let st = shared.borrow();
        (st.cfg.retry.clone(), st.cfg.connect_timeout)
    };
    let mut jitter = Jitter::new(&target);
    let mut attempt = 0usize;
    loop {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(target.as_str())).await {
            Ok(Ok(sock)) => {
                let peer = match sock.peer_addr() {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(uplink = %target, error = %e, "uplink closed at once");
                        continue;
                    }
                };
                shared.borrow_mut().stats.dialled += 1;
                let watch = add_link(&shared, sock, peer, Direction::Station);
                watch.closed.notified().await;
                if watch.synced.get() {
                    attempt = 0;
                }
            }
            Ok(Err(e)) => {
                shared.borrow_mut().stats.dial_failures += 1;
                if attempt == 0 {
                    warn!(uplink = %target, error = %e, "cannot connect to uplink");
                } else {
                    debug!(uplink = %target, error = %e, attempt, "cannot connect to uplink");
                }
            }
            Err(_) => {
                shared.borrow_mut().stats.dial_failures += 1;
                warn!(uplink = %target, timeout_s = connect_timeout.as_secs_f64(), "connecting to uplink timed out");
            }
        }
        let delay = jitter.apply(retry.delay(attempt));
        attempt += 1;
        info!(uplink = %target, attempt, retry_in_s = delay.as_secs_f64(), "will dial uplink again");
        tokio::time::sleep(delay).await;
    }
}

/// ±10 % jitter on retry delays, so nodes restarted together do not dial in lockstep.
struct Jitter(SplitMix64);

impl Jitter {
    fn new(seed: &str) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(SplitMix64::new(
            seed.bytes()
                .fold(t ^ u64::from(std::process::id()), |h, b| {
                    h.rotate_left(5) ^ u64::from(b)
                }),
        ))
    }

    fn apply(&mut self, d: Duration) -> Duration {
        let permille = 900 + self.0.next_u64() % 201; // 0.900 ..= 1.100
        d * permille as u32 / 1000
    }
}

/// Registers a connected socket as a link and tells the node.
fn add_link<P>(
    shared: &Shared<P>,
    sock: TcpStream,
    peer: SocketAddr,
    direction: Direction,
) -> Rc<LinkWatch>
where
    P: Plugin + 'static,
    P::Event: Debug + 'static,
{
    // Frames are small and latency matters (time sync measures round trips): no Nagle.
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    let mut st = shared.borrow_mut();
    let conn = ConnId(st.next_conn);
    st.next_conn += 1;
    let watch = Rc::new(LinkWatch::default());
    let wake_writer = Rc::new(Notify::new());
    let clock = st.clock;
    let read_buffer = st.cfg.read_buffer.max(INITIAL_READ_BUFFER);
    let stall = st.cfg.write_stall_timeout;
    let reader = tokio::task::spawn_local(reader(shared.clone(), conn, rd, clock, read_buffer));
    let writer = tokio::task::spawn_local(writer(
        shared.clone(),
        conn,
        wr,
        wake_writer.clone(),
        clock,
        stall,
    ));
    st.links.insert(
        conn,
        Link {
            peer,
            direction,
            opened: std::time::Instant::now(),
            node_id: 0,
            out: VecDeque::new(),
            queued: 0,
            congested: false,
            stuck_since: None,
            wake_writer,
            drained: Rc::new(Notify::new()),
            watch: watch.clone(),
            tasks: vec![reader.abort_handle(), writer.abort_handle()],
            bytes_in: 0,
            bytes_out: 0,
            frames_invalid: 0,
            frames_oversized: 0,
        },
    );
    info!(conn = conn.0, peer = %peer, direction = direction_str(direction), "link up");
    st.emit(MeshEvent::LinkUp {
        conn: conn.0,
        peer,
        direction,
    });
    let now = clock.now();
    st.node.handle_connect(conn, now, direction);
    st.flush(now, None);
    watch
}

async fn reader<P>(
    shared: Shared<P>,
    conn: ConnId,
    mut rd: OwnedReadHalf,
    clock: Clock,
    max_buffer: usize,
) where
    P: Plugin,
    P::Event: Debug,
{
    // Uninitialised capacity: pages are touched only as data arrives.
    let mut buf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    loop {
        let res = rd.read_buf(&mut buf).await;
        let now = clock.now();
        let waits = {
            let mut st = shared.borrow_mut();
            if !st.links.contains_key(&conn) {
                return;
            }
            match res {
                Ok(0) => {
                    st.close_link(conn, CloseReason::PeerClosed, true, now);
                    st.flush(now, None);
                    return;
                }
                Err(e) => {
                    st.close_link(conn, CloseReason::ReadError(e.kind()), true, now);
                    st.flush(now, None);
                    return;
                }
                Ok(n) => {
                    let waits = st.on_bytes(conn, now, &buf[..n]);
                    let full = n == buf.capacity();
                    buf.clear();
                    if full && buf.capacity() < max_buffer {
                        buf.reserve((buf.capacity() * 2).min(max_buffer));
                    }
                    waits
                }
            }
        };
        wait_drained(&shared, &waits).await;
    }
}

async fn writer<P>(
    shared: Shared<P>,
    conn: ConnId,
    mut wr: OwnedWriteHalf,
    wake: Rc<Notify>,
    clock: Clock,
    stall: Duration,
) where
    P: Plugin,
    P::Event: Debug,
{
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        if batch.is_empty() {
            let idle = {
                let mut st = shared.borrow_mut();
                let Some(l) = st.links.get_mut(&conn) else {
                    return;
                };
                std::mem::swap(&mut batch, &mut l.out);
                batch.is_empty()
            };
            if idle {
                wake.notified().await;
                continue;
            }
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for (slot, b) in iov.iter_mut().zip(batch.iter()) {
            *slot = IoSlice::new(b);
            k += 1;
        }
        let res = tokio::time::timeout(stall, wr.write_vectored(&iov[..k])).await;
        let now = clock.now();
        let mut st = shared.borrow_mut();
        let reason = match res {
            Ok(Ok(n)) if n > 0 => {
                // A write may take any prefix of the batch: consume exactly `n` bytes, splitting
                // a frame if need be, so nothing is ever skipped or written twice.
                let mut left = n;
                while left > 0 {
                    let Some(front) = batch.front_mut() else {
                        break;
                    };
                    if front.len() <= left {
                        left -= front.len();
                        batch.pop_front();
                    } else {
                        front.advance(left);
                        left = 0;
                    }
                }
                st.on_written(conn, n);
                continue;
            }
            Ok(Ok(_)) => CloseReason::WriteError(io::ErrorKind::WriteZero),
            Ok(Err(e)) => CloseReason::WriteError(e.kind()),
            Err(_) => CloseReason::WriteStalled,
        };
        st.close_link(conn, reason, true, now);
        st.flush(now, None);
        return;
    }
}

async fn timer_task<P>(shared: Shared<P>)
where
    P: Plugin,
    P::Event: Debug,
{
    loop {
        let (deadline, timer, clock) = {
            let mut st = shared.borrow_mut();
            let d = st.node.poll_timeout();
            st.armed = d;
            (d, st.timer.clone(), st.clock)
        };
        let notified = timer.notified();
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(clock.to_std(d).into()) => {}
                    _ = notified => continue,
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let spinning = {
            let mut st = shared.borrow_mut();
            let now = st.clock.now();
            st.node.handle_timeout(now);
            st.flush(now, None);
            st.node.poll_timeout().is_some_and(|t| t <= now)
        };
        if spinning {
            // A deadline that stays in the past after it fired (a plugin that never clears
            // its timer) must not spin the thread.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
