//! The sans-IO node: connections, routing, node sync, time sync and plugin dispatch.
//!
//! Every input is a method call carrying the time (`handle_*`); every output is drained by the
//! host (`poll_*`). Nothing here reads a clock, touches a socket or spawns a thread, and all
//! iteration orders are deterministic, so a seed replays a run exactly.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::{OnceCell, RefCell};
use core::fmt;

use bytes::Bytes;
use pmesh_proto::message::{time_type, types, write_sync_trailer};
use pmesh_proto::tree::{FlatTree, write_tree_fields};
use pmesh_proto::{
    Envelope, FrameDecoder, FrameError, Message, NodeSync, NodeTree, Routing, TimeMessage,
    UserMessage, encode_frame,
};

use crate::config::{Config, FrameBudget, MAX_RATE_PPB, RATE_BASELINE};
use crate::event::{ConnId, Direction, DropReason, Event, FrameDropReason, Transmit};
use crate::ntp;
use crate::plugin::{ConnectionChange, Context, Handled, Incoming, Neighbour, Plugin};
use crate::stats::NodeStats;
use crate::time::{Instant, earliest};

/// Why a send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No connection leads to the destination.
    NoRoute,
    /// The connection does not exist (any more).
    UnknownConnection,
    /// NEIGHBOUR routing needs a connection: use a per-connection send.
    NeedsConnection,
    /// The frame exceeds the configured frame cap, so peers would drop it.
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NoRoute => "no route to the destination",
            SendError::UnknownConnection => "unknown connection",
            SendError::NeedsConnection => "neighbour routing needs a connection",
            SendError::TooLarge => "frame larger than the frame cap",
        })
    }
}

/// The deadline of a forced NODE_SYNC: the earliest instant, so it fires on the next timer run.
const FORCED: Instant = Instant::ZERO;

/// Replies held at once, across all links; beyond it the oldest is dropped (bounded memory).
const MAX_HELD_REPLIES: usize = 16;

/// A TIME_SYNC or TIME_DELAY reply waiting out the hold before it is sent
/// (see [`Config::time_reply_hold`]).
#[derive(Debug)]
struct HeldReply {
    due: Instant,
    conn: ConnId,
    request: TimeMessage,
    received_at: u32,
}

/// Per-connection state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) direction: Direction,
    /// The neighbour's id; 0 until its first NODE_SYNC.
    pub(crate) node_id: u32,
    /// The tree the neighbour last reported (`{nodeId:0}` until synced), flat: compared,
    /// searched and routed by as one array, and its JSON goes as it is into every NODE_SYNC we
    /// send to the others.
    tree: FlatTree,
    /// `tree` as a [`NodeTree`], built when first lent out (`neighbour_tree`).
    view: OnceCell<TreeView>,
    framer: FrameDecoder,
    node_sync_at: Option<Instant>,
    sync_timeout_at: Option<Instant>,
    /// Until when a link the peer opened may stay without its first NODE_SYNC
    /// ([`Config::handshake_timeout`]); cleared by that NODE_SYNC.
    handshake_by: Option<Instant>,
    /// A forced sync came while a request was unanswered: send it when the reply arrives.
    resync_after_reply: bool,
    /// Since when this link has sent only trees showing a loop (see `ignore_looped_sync`).
    loop_since: Option<Instant>,
    /// The last tree showed a cycle through us and this link whose agreed cut is elsewhere,
    /// closing at this neighbour of ours (the node above us in that tree): while the cycle is
    /// confirmed, no BROADCAST crosses the link (see [`Core::carries_broadcasts`]). Cleared by
    /// a tree without a loop.
    broadcast_hold: Option<u32>,
    /// Next run of this link's time-sync task; `None` until the first NODE_SYNC, as the
    /// reference creates the task only then.
    time_sync_at: Option<Instant>,
    /// The last TIME_SYNC request sent on this link: its `t0` and [`Core::time_steps`] then
    /// (the rate discipline uses only replies to it, taken within one time base).
    time_request: Option<(u32, u32)>,
    /// What is left of this link's [`Config::time_frame_budget`].
    time_budget: TokenBucket,
}

/// A token bucket in millionths of a frame, refilled from the time of the last take.
#[derive(Debug)]
struct TokenBucket {
    micro_tokens: u64,
    at: Instant,
}

impl TokenBucket {
    const ONE: u64 = 1_000_000;

    fn full(budget: FrameBudget, now: Instant) -> Self {
        TokenBucket {
            micro_tokens: u64::from(budget.burst) * Self::ONE,
            at: now,
        }
    }

    /// Takes one frame's token at `now`; false when the budget is spent.
    fn take(&mut self, budget: FrameBudget, now: Instant) -> bool {
        let elapsed_us = now.saturating_since(self.at).as_micros() as u64;
        let cap = u64::from(budget.burst) * Self::ONE;
        // µs × frames/s = millionths of a frame.
        let refill = elapsed_us.saturating_mul(u64::from(budget.per_second));
        self.micro_tokens = self.micro_tokens.saturating_add(refill).min(cap);
        self.at = self.at.max(now);
        if self.micro_tokens >= Self::ONE {
            self.micro_tokens -= Self::ONE;
            true
        } else {
            false
        }
    }
}

impl Conn {
    fn synced(&self) -> bool {
        self.node_id != 0
    }

    /// The link's tree no longer shows a loop: the grace and any broadcast hold end.
    fn loop_cleared(&mut self) {
        self.loop_since = None;
        self.broadcast_hold = None;
    }

    fn next_deadline(&self) -> Option<Instant> {
        earliest(
            earliest(self.node_sync_at, self.sync_timeout_at),
            earliest(self.time_sync_at, self.handshake_by),
        )
    }

    /// Takes `tree` as the neighbour's tree; the old one is left in `tree` (a scratch buffer).
    fn swap_tree(&mut self, tree: &mut FlatTree) {
        core::mem::swap(&mut self.tree, tree);
        self.view = OnceCell::new();
    }

    /// The neighbour's tree as a [`NodeTree`] (built on first use, kept until it changes).
    fn view(&self) -> &TreeView {
        self.view.get_or_init(|| TreeView {
            tree: self.tree.to_tree(),
        })
    }
}

/// A neighbour's tree as a [`NodeTree`], for the APIs that lend one out
/// ([`Node::neighbour_tree`], `Context::neighbour_tree`).
#[derive(Debug)]
pub(crate) struct TreeView {
    pub(crate) tree: NodeTree,
}

/// `findRoute` for every id at once: `(node id, index of the first connection whose tree holds
/// it)`, sorted by id. Rebuilt (in place) on the first lookup after the connections or their
/// trees change; a sorted vector rather than a map, so a rebuild is one sort of one buffer.
#[derive(Debug, Default)]
struct RouteIndex {
    valid: bool,
    entries: Vec<(u32, u32)>,
}

impl RouteIndex {
    fn rebuild(&mut self, conns: &[Conn]) {
        self.entries.clear();
        for (k, c) in conns.iter().enumerate() {
            self.entries.extend(c.tree.ids().map(|id| (id, k as u32)));
        }
        // By id, then connection order; keeping the first of each id is `findRoute`'s answer.
        self.entries.sort_unstable();
        self.entries.dedup_by_key(|e| e.0);
        // A direct neighbour's id routes to its own link (the first one), whatever another
        // link's tree claims (issue 11: a claim must not steal a direct neighbour's traffic).
        for (k, c) in conns.iter().enumerate().rev().filter(|(_, c)| c.synced()) {
            if let Ok(at) = self.entries.binary_search_by_key(&c.node_id, |e| e.0) {
                self.entries[at].1 = k as u32;
            }
        }
        self.valid = true;
    }
}

/// SplitMix64: a tiny deterministic generator, so the node needs no RNG crate on `no_std`.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// State of the optional frequency discipline ([`Config::rate_discipline`]).
#[derive(Debug, Default)]
struct RateState {
    /// Rate of the adopted time against the local clock, minus one, in parts per billion.
    ppb: i64,
    /// Local instant (µs) from which `ppb` runs; the correction before it is in `time_offset`.
    since: u64,
    /// The sample the next estimate is measured from: its link, local instant (µs) and
    /// adopted time minus local clock (u32, wrapping).
    anchor: Option<(ConnId, u64, u32)>,
}

/// Where a plugin event sits among the core's events: the event itself waits in
/// `Node::plugin_events`, so the core (and a plugin's [`Context`]) is not typed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PluginSlot;

/// Everything but the plugin, so a plugin can borrow it mutably through a [`Context`].
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) cfg: Config,
    conns: Vec<Conn>,
    time_offset: u32,
    /// The optional frequency discipline ([`Config::rate_discipline`]).
    rate: RateState,
    /// Offset steps applied so far (wrapping): a reply to a request sent before the latest step
    /// measured across two time bases.
    time_steps: u32,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event<PluginSlot>>,
    /// Plugin slots dropped from the front of `events` (queue full) whose events are still at
    /// the front of `Node::plugin_events`; trimmed at the end of every input.
    plugin_slots_dropped: usize,
    held_replies: Vec<HeldReply>,
    /// Where each node id leads; rebuilt lazily after topology changes.
    routes: RefCell<RouteIndex>,
    /// The tree of the NODE_SYNC being handled; its buffers are reused from frame to frame
    /// (swapped with the neighbour's stored tree when that changes).
    sync_scratch: FlatTree,
    /// Plugin callbacks owed after the current input is processed.
    pending_changes: Vec<ConnectionChange>,
    pub(crate) rng: Rng,
    stats: NodeStats,
}

/// A painlessMesh node. See the crate docs for the calling convention.
#[derive(Debug)]
pub struct Node<P: Plugin = ()> {
    core: Core,
    plugin: P,
    /// The plugin's events, in order; each has a [`PluginSlot`] in the core's queue.
    plugin_events: VecDeque<P::Event>,
}

impl Node<()> {
    /// A node without plugins.
    pub fn without_plugins(cfg: Config) -> Self {
        Node::new(cfg, ())
    }
}

impl<P: Plugin> Node<P> {
    /// A node with `plugin` on top.
    pub fn new(cfg: Config, plugin: P) -> Self {
        let seed = cfg.seed;
        Node {
            core: Core {
                cfg,
                conns: Vec::new(),
                time_offset: 0,
                rate: RateState::default(),
                time_steps: 0,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                plugin_slots_dropped: 0,
                held_replies: Vec::new(),
                routes: RefCell::new(RouteIndex::default()),
                sync_scratch: FlatTree::leaf(0),
                pending_changes: Vec::new(),
                rng: Rng(seed),
                stats: NodeStats::default(),
            },
            plugin,
            plugin_events: VecDeque::new(),
        }
    }

    // --- inputs -------------------------------------------------------------------------

    /// A TCP connection was established. `Station`: we dialled (NODE_SYNC goes out at once);
    /// `Ap`: the peer dialled us (our first NODE_SYNC after [`Config::ap_first_sync_delay`]).
    pub fn handle_connect(&mut self, conn: ConnId, now: Instant, direction: Direction) {
        if self.core.conn_state(conn).is_some() {
            return;
        }
        let first_sync = match direction {
            Direction::Station => now,
            Direction::Ap => now + self.core.cfg.ap_first_sync_delay,
        };
        self.core.conns.push(Conn {
            id: conn,
            direction,
            node_id: 0,
            tree: FlatTree::leaf(0),
            view: OnceCell::new(),
            framer: FrameDecoder::new(self.core.cfg.max_frame),
            node_sync_at: Some(first_sync),
            sync_timeout_at: None,
            handshake_by: (direction == Direction::Ap
                && !self.core.cfg.handshake_timeout.is_zero())
            .then(|| now + self.core.cfg.handshake_timeout),
            time_sync_at: None,
            loop_since: None,
            broadcast_hold: None,
            resync_after_reply: false,
            time_request: None,
            time_budget: TokenBucket::full(self.core.cfg.time_frame_budget, now),
        });
        self.core.invalidate_routes();
        self.after_input(now);
    }

    /// Bytes arrived on a connection at `now` (the socket arrival time).
    pub fn handle_bytes(&mut self, conn: ConnId, now: Instant, data: &[u8]) {
        let Some(idx) = self.core.index(conn) else {
            return;
        };
        self.core.stats.bytes_in += data.len() as u64;
        let mut frames = Vec::new();
        self.core.conns[idx].framer.push(data, |f| frames.push(f));
        for frame in frames {
            match frame {
                Ok(raw) => self.handle_frame(conn, now, raw),
                Err(FrameError::Oversized { .. }) => {
                    self.core.drop_frame(conn, FrameDropReason::Oversized)
                }
            }
            if self.core.conn_state(conn).is_none() {
                break; // closed by a frame
            }
        }
        self.after_input(now);
    }

    /// The connection closed (by the peer or the network).
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        self.core.remove_conn(conn, DropReason::Disconnected, false);
        self.after_input(now);
    }

    /// Closes a connection on the application's request.
    pub fn close(&mut self, conn: ConnId, now: Instant) {
        self.core.remove_conn(conn, DropReason::Closed, true);
        self.after_input(now);
    }

    /// Timers: call when [`Node::poll_timeout`]'s deadline has passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.after_input(now);
    }

    // --- outputs ------------------------------------------------------------------------

    /// Next thing to write or close.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop_front()
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<P::Event>> {
        self.trim_plugin_events();
        loop {
            match self.core.events.pop_front()?.split_plugin() {
                Ok(core_event) => return Some(core_event),
                // Every slot has its event (pushed together by `Context::emit`, dropped
                // together through `plugin_slots_dropped`); a missing one is skipped.
                Err(PluginSlot) => {
                    if let Some(e) = self.plugin_events.pop_front() {
                        return Some(Event::Plugin(e));
                    }
                    debug_assert!(false, "a plugin slot without its event");
                }
            }
        }
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.plugin.poll_timeout();
        for c in &self.core.conns {
            t = earliest(t, c.next_deadline());
        }
        for h in &self.core.held_replies {
            t = earliest(t, Some(h.due));
        }
        t
    }

    // --- application API ----------------------------------------------------------------

    /// `sendSingle`: a SINGLE message to `dest` along the tree.
    pub fn send_single(
        &mut self,
        now: Instant,
        dest: u32,
        msg: impl Into<Vec<u8>>,
    ) -> Result<(), SendError> {
        let frame = UserMessage {
            ty: types::SINGLE,
            dest,
            from: self.id(),
            msg: msg.into(),
        };
        let r = self.core.send_frame(Routing::Single, dest, frame.to_json());
        self.after_input(now);
        r
    }

    /// `sendBroadcast`: a BROADCAST to every node. With `include_self` the application also
    /// receives it as a [`Event::Received`].
    pub fn send_broadcast(
        &mut self,
        now: Instant,
        msg: impl Into<Vec<u8>>,
        include_self: bool,
    ) -> Result<(), SendError> {
        let frame = UserMessage {
            ty: types::BROADCAST,
            dest: 0,
            from: self.id(),
            msg: msg.into(),
        };
        let r = self.core.send_frame(Routing::Broadcast, 0, frame.to_json());
        if include_self && r.is_ok() {
            self.core.push_event(Event::Received {
                from: frame.from,
                msg: frame.msg,
                broadcast: true,
            });
        }
        self.after_input(now);
        r
    }

    /// Sends a package this node builds (a native plugin package with its own `routing`).
    pub fn send_frame(
        &mut self,
        now: Instant,
        routing: Routing,
        dest: u32,
        json: Vec<u8>,
    ) -> Result<(), SendError> {
        let r = self.core.send_frame(routing, dest, json);
        self.after_input(now);
        r
    }

    /// `startDelayMeas`: measures the one-way delay to `dest`; the result comes as [`Event::Delay`].
    pub fn start_delay_meas(&mut self, now: Instant, dest: u32) -> Result<(), SendError> {
        let msg = TimeMessage {
            ty: types::TIME_DELAY,
            dest,
            from: self.id(),
            time_type: time_type::REQUEST,
            t0: self.core.mesh_time(now),
            t1: 0,
            t2: 0,
        };
        let r = self.core.send_frame(Routing::Single, dest, msg.to_json());
        self.after_input(now);
        r
    }

    /// Runs `f` with the plugin and a context, so the application can drive the plugin
    /// (offer firmware, say) and have its sends go out.
    pub fn with_plugin<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut P, &mut Context<'_, P::Event>) -> R,
    ) -> R {
        let plugin = &mut self.plugin;
        let r = in_context(&mut self.core, &mut self.plugin_events, now, |ctx| {
            f(plugin, ctx)
        });
        self.after_input(now);
        r
    }

    /// The plugin, read-only.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// Sets `root` and re-syncs the topology.
    pub fn set_root(&mut self, now: Instant, root: bool) {
        self.core.cfg.root = root;
        self.core.force_node_sync(now, None);
        self.after_input(now);
    }

    /// Sets time authority and re-syncs the topology.
    pub fn set_time_authority(&mut self, now: Instant, authority: bool) {
        self.core.cfg.time_authority = authority;
        self.core.force_node_sync(now, None);
        self.after_input(now);
    }

    // --- queries ------------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> u32 {
        self.core.cfg.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }

    /// Mesh time at `now`: the local clock as u32 plus the offset (`getNodeTime`).
    pub fn mesh_time(&self, now: Instant) -> u32 {
        self.core.mesh_time(now)
    }

    /// The current time offset (u32, wrapping). With [`Config::rate_discipline`] the mesh
    /// time also carries a rate correction accrued since the last adjustment, not included here.
    pub fn time_offset(&self) -> u32 {
        self.core.time_offset
    }

    /// Sets the time offset, so that `mesh_time(now) = now + offset` (the reference's public
    /// `timeOffset` member). Neighbours learn the new time at their next time sync. Any rate
    /// estimate of [`Config::rate_discipline`] is discarded.
    pub fn set_time_offset(&mut self, offset: u32) {
        self.core.time_offset = offset;
        self.core.rate = RateState::default();
        self.core.time_steps = self.core.time_steps.wrapping_add(1);
    }

    /// The frequency correction in use, parts per billion (0 unless
    /// [`Config::rate_discipline`] is on and a rate has been measured).
    pub fn rate_correction_ppb(&self) -> i64 {
        self.core.rate.ppb
    }

    /// `isRoot()`: this node announces `root:true`.
    pub fn is_root(&self) -> bool {
        self.core.cfg.root
    }

    /// `layout::isRooted(asNodeTree())`: this node or any node it can reach is root.
    pub fn is_rooted(&self) -> bool {
        self.core.cfg.root
            || self
                .core
                .conns
                .iter()
                .any(|c| c.synced() && c.tree.is_rooted())
    }

    /// Number of nodes in this node's view, itself included (`layout::size(asNodeTree())`).
    pub fn mesh_size(&self) -> usize {
        1 + self
            .core
            .conns
            .iter()
            .filter(|c| c.synced())
            .map(|c| c.tree.size())
            .sum::<usize>()
    }

    /// `getNodeList(include_self)`: every reachable node, pre-order.
    pub fn node_list(&self, include_self: bool) -> Vec<u32> {
        self.core.node_list(include_self)
    }

    /// `asNodeTree`: this node and every synced neighbour's tree, in connection order.
    pub fn tree(&self) -> NodeTree {
        self.core.tree()
    }

    /// `subConnectionJson(pretty)`.
    pub fn sub_connection_json(&self, pretty: bool) -> Vec<u8> {
        let tree = self.tree();
        if pretty {
            tree.to_json_pretty()
        } else {
            tree.to_json()
        }
    }

    /// `isConnected(id)`: a route to `id` exists.
    pub fn is_connected(&self, id: u32) -> bool {
        self.core.route(id).is_some()
    }

    /// The connection a SINGLE to `id` leaves by (`findRoute`).
    pub fn route(&self, id: u32) -> Option<ConnId> {
        self.core.route(id)
    }

    /// Connections, synced or not, in connection order.
    pub fn neighbours(&self) -> impl Iterator<Item = Neighbour> + '_ {
        self.core.conns.iter().map(|c| Neighbour {
            conn: c.id,
            node_id: c.node_id,
            direction: c.direction,
        })
    }

    /// The tree a connection's neighbour last reported.
    pub fn neighbour_tree(&self, conn: ConnId) -> Option<&NodeTree> {
        self.core.conn(conn).map(|v| &v.tree)
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.core.stats
    }

    /// Bytes of partial frames held across all connections (bounded by the frame cap each).
    pub fn buffered_bytes(&self) -> usize {
        self.core.conns.iter().map(|c| c.framer.buffered()).sum()
    }

    /// Approximate heap and inline memory held by the protocol state, in bytes: connections,
    /// the neighbours' trees and their cached JSON, the last NODE_SYNC frames, partial frames,
    /// the route index, held replies and the undrained transmit and event queues. The
    /// plugin's own state is not included. Meant for simulator reports, not for accounting.
    pub fn state_bytes(&self) -> usize {
        self.core.state_bytes() + self.plugin_events.capacity() * core::mem::size_of::<P::Event>()
    }

    // --- internals ----------------------------------------------------------------------

    fn handle_frame(&mut self, conn: ConnId, now: Instant, raw: Bytes) {
        let json = &raw[..raw.len() - 1];
        // A NODE_SYNC carrying exactly the tree we hold (the steady state) skips parsing.
        // (Only on a synced link: the first NODE_SYNC is always checked in full.)
        if let Some(idx) = self.core.index(conn) {
            let c = &self.core.conns[idx];
            if let Some(ty) = same_tree_sync(&raw, c.tree.json()).filter(|_| c.synced()) {
                self.core.stats.frames_in += 1;
                self.core.node_sync_unchanged(idx, now, ty);
                return;
            }
        }
        // Plain NODE_SYNC frames (the bulk of the traffic after a topology change) go through
        // the direct reader, into the scratch tree; anything unusual falls through to the
        // general decoder below.
        let max_depth = self.core.cfg.max_depth;
        if let Some(header) =
            NodeSync::parse_frame_flat(json, max_depth, &mut self.core.sync_scratch)
        {
            self.core.stats.frames_in += 1;
            self.core.handle_node_sync(conn, now, header.ty);
            return;
        }
        let env = match Envelope::parse(json, self.core.cfg.max_depth) {
            Ok(env) => env,
            Err(_) => {
                self.core.drop_frame(conn, FrameDropReason::Invalid);
                return;
            }
        };
        self.core.stats.frames_in += 1;
        let me = self.id();
        let forwards = match env.routing {
            Routing::Single => env.dest != me,
            Routing::Broadcast => true,
            _ => false,
        };
        if forwards && !self.admit(conn, now, &env, &raw) {
            self.core.drop_frame(conn, FrameDropReason::ForwardRefused);
            return;
        }
        match env.routing {
            Routing::Single if env.dest != me => {
                match self.core.route(env.dest) {
                    Some(out) => {
                        self.core.stats.forwarded += 1;
                        self.core.queue(out, raw);
                    }
                    None => self.core.drop_frame(conn, FrameDropReason::NoRoute),
                }
                return;
            }
            Routing::Broadcast => {
                if self
                    .core
                    .index(conn)
                    .is_some_and(|i| self.core.broadcast_held(i))
                {
                    // Held in the loop grace: the frame also comes the other way round.
                    self.core.drop_frame(conn, FrameDropReason::BroadcastHeld);
                    return;
                }
                let targets: Vec<ConnId> = self
                    .core
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|&(i, c)| c.id != conn && self.core.carries_broadcasts(i))
                    .map(|(_, c)| c.id)
                    .collect();
                for t in targets {
                    self.core.stats.forwarded += 1;
                    self.core.queue(t, raw.clone());
                }
            }
            _ => {}
        }
        self.process_locally(conn, now, env, raw);
    }

    /// Asks the plugin whether a frame this node would forward may go on (core types always).
    fn admit(&mut self, conn: ConnId, now: Instant, env: &Envelope, raw: &Bytes) -> bool {
        if matches!(
            env.ty,
            types::TIME_DELAY
                | types::TIME_SYNC
                | types::NODE_SYNC_REQUEST
                | types::NODE_SYNC_REPLY
        ) {
            return true;
        }
        let neighbour = self.core.conn_state(conn).map_or(0, |c| c.node_id);
        let incoming = Incoming {
            conn,
            neighbour,
            envelope: env,
            raw,
        };
        let plugin = &mut self.plugin;
        in_context(&mut self.core, &mut self.plugin_events, now, |ctx| {
            plugin.admit(ctx, &incoming)
        })
    }

    fn process_locally(&mut self, conn: ConnId, now: Instant, env: Envelope, raw: Bytes) {
        if matches!(env.ty, types::TIME_DELAY | types::TIME_SYNC)
            && !self.core.time_budget(conn, now)
        {
            self.core.drop_frame(conn, FrameDropReason::TimeOverBudget);
            return;
        }
        match env.ty {
            types::TIME_DELAY
            | types::TIME_SYNC
            | types::NODE_SYNC_REQUEST
            | types::NODE_SYNC_REPLY => match env.decode_core() {
                Message::NodeSyncRequest(sync) | Message::NodeSyncReply(sync) => {
                    self.core.sync_scratch = FlatTree::from_tree(&sync.tree);
                    self.core.handle_node_sync(conn, now, sync.ty);
                }
                Message::TimeSync(t) => self.core.handle_time_sync(conn, now, t),
                Message::TimeDelay(t) => self.core.handle_time_delay(conn, now, t),
                _ => {}
            },
            types::CONTROL => self.core.drop_frame(conn, FrameDropReason::Unhandled),
            ty => {
                let neighbour = self.core.conn_state(conn).map_or(0, |c| c.node_id);
                let incoming = Incoming {
                    conn,
                    neighbour,
                    envelope: &env,
                    raw: &raw,
                };
                let plugin = &mut self.plugin;
                let handled = in_context(&mut self.core, &mut self.plugin_events, now, |ctx| {
                    plugin.on_frame(ctx, &incoming)
                });
                if ty == types::SINGLE || ty == types::BROADCAST {
                    if let Message::Single(m) | Message::Broadcast(m) = env.decode_core() {
                        self.core.push_event(Event::Received {
                            from: m.from,
                            msg: m.msg,
                            broadcast: ty == types::BROADCAST,
                        });
                    }
                } else if handled == Handled::No {
                    self.core.push_event(Event::Package { envelope: env, raw });
                }
            }
        }
    }

    /// Runs due timers and owed plugin callbacks; called at the end of every input.
    fn after_input(&mut self, now: Instant) {
        // Bounded: each pass either fires a timer (which re-arms in the future) or stops.
        for _ in 0..64 {
            self.core.run_timers(now);
            let changes = core::mem::take(&mut self.core.pending_changes);
            let plugin = &mut self.plugin;
            for change in changes {
                in_context(&mut self.core, &mut self.plugin_events, now, |ctx| {
                    plugin.on_connection(ctx, change)
                });
            }
            if plugin.poll_timeout().is_some_and(|t| t <= now) {
                in_context(&mut self.core, &mut self.plugin_events, now, |ctx| {
                    plugin.on_timeout(ctx)
                });
            }
            let timers_due = self
                .core
                .conns
                .iter()
                .any(|c| c.next_deadline().is_some_and(|t| t <= now))
                || self.core.held_replies.iter().any(|h| h.due <= now);
            if !timers_due && self.core.pending_changes.is_empty() {
                break;
            }
        }
        self.trim_plugin_events();
    }

    /// Drops the plugin events whose slots the core dropped (its queue was full).
    fn trim_plugin_events(&mut self) {
        let n = core::mem::take(&mut self.core.plugin_slots_dropped);
        self.plugin_events.drain(..n.min(self.plugin_events.len()));
    }
}

/// Calls `f` with a plugin context whose emitted events are appended to `queue`.
fn in_context<E, R>(
    core: &mut Core,
    queue: &mut VecDeque<E>,
    now: Instant,
    f: impl FnOnce(&mut Context<'_, E>) -> R,
) -> R {
    let mut emit = |e| queue.push_back(e);
    f(&mut Context {
        core,
        emit: &mut emit,
        now,
    })
}

/// If `raw` is a NODE_SYNC whose tree is exactly `tree_json` (our compact serialization of the
/// tree we hold for that link), its type: `{` + the tree's fields + `,"type":5|6,"dest":D,
/// "from":F}` + NUL, the order every stock and pmesh node writes. Such a frame decodes to the
/// stored tree (the writer's output parses back to the same tree and `nodeId` is present), so
/// it needs no parsing. Anything else returns `None` and is parsed.
fn same_tree_sync(raw: &[u8], tree_json: &[u8]) -> Option<i32> {
    let fields = tree_json.strip_suffix(b"}")?;
    let rest = raw.strip_prefix(fields)?;
    let rest = rest.strip_prefix(b",\"type\":")?;
    let (ty, rest) = match rest.split_first()? {
        (b'5', rest) => (types::NODE_SYNC_REQUEST, rest),
        (b'6', rest) => (types::NODE_SYNC_REPLY, rest),
        _ => return None,
    };
    let rest = skip_u32_digits(rest.strip_prefix(b",\"dest\":")?)?;
    let rest = skip_u32_digits(rest.strip_prefix(b",\"from\":")?)?;
    (rest == b"}\0").then_some(ty)
}

/// `r` after 1 to 10 leading ASCII digits, if it has that many.
fn skip_u32_digits(r: &[u8]) -> Option<&[u8]> {
    let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=10).contains(&n).then(|| &r[n..])
}

/// The decision of [`Core::loop_cut`].
enum LoopCut {
    /// Close the link the looping tree came on.
    This,
    /// Close this other link (ours on the cycle's chosen edge).
    Other(ConnId),
    /// The chosen edge is between two other nodes: they cut it. The cycle runs through us
    /// and closes at this neighbour of ours (the node above us in the tree), so the link may
    /// be held for broadcasts meanwhile.
    Elsewhere(u32),
    /// The tree puts us below a node that is not our neighbour (a stale tree or a lie: a
    /// node above us is linked to us), or below a neighbour whose own tree does not confirm
    /// the cycle: no link of ours is cut, and the tree is taken without the branches that
    /// place us (see `Core::prune_self_claims`).
    Claim,
}

/// Memory a lent-out [`NodeTree`] takes (each node inline plus its `subs` vector's spare room).
fn tree_bytes(tree: &NodeTree) -> usize {
    let mut total = 0;
    let mut stack = alloc::vec![tree];
    while let Some(t) = stack.pop() {
        total += t.subs.capacity() * core::mem::size_of::<NodeTree>();
        stack.extend(t.subs.iter());
    }
    total + core::mem::size_of::<NodeTree>()
}

impl Core {
    fn state_bytes(&self) -> usize {
        use core::mem::size_of;
        let conns: usize = self
            .conns
            .iter()
            .map(|c| {
                let view = c.view.get().map_or(0, |v| tree_bytes(&v.tree));
                c.tree.heap_bytes() + view + c.framer.buffered()
            })
            .sum();
        let routes = self.routes.borrow().entries.capacity() * size_of::<(u32, u32)>();
        let transmits: usize = self
            .transmits
            .iter()
            .map(|t| match t {
                Transmit::Send { data, .. } => data.len(),
                Transmit::Close { .. } => 0,
            })
            .sum();
        size_of::<Self>()
            + self.conns.capacity() * size_of::<Conn>()
            + conns
            + routes
            + self.transmits.capacity() * size_of::<Transmit>()
            + transmits
            + self.events.capacity() * size_of::<Event<PluginSlot>>()
            + self.held_replies.capacity() * size_of::<HeldReply>()
    }

    pub(crate) fn mesh_time(&self, now: Instant) -> u32 {
        now.micros_u32()
            .wrapping_add(self.time_offset)
            .wrapping_add(self.rate_term(now))
    }

    /// The rate correction accrued since `rate.since` (µs, wrapping); 0 without discipline.
    fn rate_term(&self, now: Instant) -> u32 {
        if self.rate.ppb == 0 {
            return 0;
        }
        let dt = i128::from(now.as_micros()) - i128::from(self.rate.since);
        (dt * i128::from(self.rate.ppb) / 1_000_000_000) as i64 as u32
    }

    /// Moves the accrued rate correction into `time_offset` (mesh time at `now` unchanged).
    fn fold_rate(&mut self, now: Instant) {
        self.time_offset = self.time_offset.wrapping_add(self.rate_term(now));
        self.rate.since = now.as_micros();
    }

    /// The frequency discipline's sample: a TIME_SYNC reply arrived at `now` (mesh time `t3`).
    /// Measures "adopted time − local clock", which the node's own offset steps do not change,
    /// and takes its slope against the anchor sample on the same link as the new rate.
    fn discipline_rate(&mut self, conn: ConnId, now: Instant, msg: &TimeMessage, t3: u32) {
        let Some(raw) = ntp::raw_offset(msg.t0, msg.t1, msg.t2, t3) else {
            return;
        };
        let y = t3.wrapping_add(raw as u32).wrapping_sub(now.micros_u32());
        let local = now.as_micros();
        if let Some((c, l0, y0)) = self.rate.anchor
            && c == conn
        {
            let dl = local.saturating_sub(l0);
            if dl < RATE_BASELINE.as_micros() as u64 {
                return; // keep the older anchor: a longer baseline, a better estimate
            }
            let dy = i64::from(y.wrapping_sub(y0) as i32);
            // Slope of the adopted time against the local clock: the whole correction needed,
            // whatever this node applied meanwhile (y does not include it).
            let ppb = (i128::from(dy) * 1_000_000_000 / i128::from(dl)) as i64;
            if ppb.abs() <= MAX_RATE_PPB {
                self.fold_rate(now);
                self.rate.ppb = ppb;
            }
        }
        self.rate.anchor = Some((conn, local, y));
    }

    /// Whether BROADCASTs go out on the link at `idx`: it is synced and not held.
    fn carries_broadcasts(&self, idx: usize) -> bool {
        self.conns[idx].synced() && !self.broadcast_held(idx)
    }

    /// Whether the link at `idx` is held for BROADCASTs (both ways).
    ///
    /// A link held for a loop (`broadcast_hold`, the neighbour N's tree puts us below our
    /// neighbour p) is an edge of that cycle. While our own view confirms the cycle (the link
    /// to p is up, carries broadcasts itself, and p's tree holds N), a broadcast neither goes
    /// out on the held link nor is taken from it: it cannot go round the cycle, and N's side
    /// is reached the other way round, through p. Unconfirmed (a stale tree), the link carries
    /// broadcasts as usual.
    fn broadcast_held(&self, idx: usize) -> bool {
        let c = &self.conns[idx];
        let Some(above) = c.broadcast_hold else {
            return false;
        };
        self.conns.iter().any(|o| {
            o.id != c.id
                && o.synced()
                && o.node_id == above
                && o.broadcast_hold.is_none()
                && o.tree.contains(c.node_id)
        })
    }

    /// Takes one TIME_SYNC/TIME_DELAY frame from `conn`'s budget; false when it is spent.
    fn time_budget(&mut self, conn: ConnId, now: Instant) -> bool {
        let budget = self.cfg.time_frame_budget;
        match self.index(conn) {
            Some(i) => self.conns[i].time_budget.take(budget, now),
            None => true,
        }
    }

    fn index(&self, conn: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == conn)
    }

    fn conn_state(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == conn)
    }

    /// The neighbour's tree on `conn`, as a [`NodeTree`] in `.tree` (what
    /// `Context::neighbour_tree` lends out).
    pub(crate) fn conn(&self, conn: ConnId) -> Option<&TreeView> {
        self.conn_state(conn).map(Conn::view)
    }

    /// Counts a frame dropped on `conn` and tells the host ([`Event::FrameDropped`], merged
    /// with the last queued event when that is a drop on the same connection for the same
    /// reason).
    pub(crate) fn drop_frame(&mut self, conn: ConnId, reason: FrameDropReason) {
        let s = &mut self.stats;
        *match reason {
            FrameDropReason::Oversized => &mut s.dropped_oversized,
            FrameDropReason::Invalid => &mut s.dropped_invalid,
            FrameDropReason::NoRoute => &mut s.dropped_no_route,
            FrameDropReason::Unhandled => &mut s.dropped_unhandled,
            FrameDropReason::BroadcastHeld => &mut s.broadcasts_held,
            FrameDropReason::ForwardRefused => &mut s.forward_refused,
            FrameDropReason::TimeOverBudget => &mut s.time_frames_over_budget,
        } += 1;
        if let Some(Event::FrameDropped {
            conn: c,
            reason: r,
            frames,
        }) = self.events.back_mut()
            && *c == conn
            && *r == reason
        {
            *frames += 1;
            return;
        }
        self.push_event(Event::FrameDropped {
            conn,
            reason,
            frames: 1,
        });
    }

    pub(crate) fn push_event(&mut self, event: Event<PluginSlot>) {
        if self.events.len() >= self.cfg.max_queued_events {
            if let Some(Event::Plugin(PluginSlot)) = self.events.pop_front() {
                self.plugin_slots_dropped += 1;
            }
            self.stats.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    fn invalidate_routes(&mut self) {
        self.routes.get_mut().valid = false;
    }

    /// `findRoute`: the first connection (in connection order) whose tree contains `id`.
    pub(crate) fn route(&self, id: u32) -> Option<ConnId> {
        let mut index = self.routes.borrow_mut();
        if !index.valid {
            index.rebuild(&self.conns);
        }
        let e = &index.entries;
        let at = e.binary_search_by_key(&id, |&(node, _)| node).ok()?;
        Some(self.conns[e[at].1 as usize].id)
    }

    pub(crate) fn tree(&self) -> NodeTree {
        NodeTree {
            node_id: self.cfg.node_id,
            root: self.cfg.root,
            has_time_authority: self.cfg.time_authority,
            subs: self
                .conns
                .iter()
                .filter(|c| c.synced())
                .map(|c| c.tree.to_tree())
                .collect(),
        }
    }

    pub(crate) fn node_list(&self, include_self: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if include_self {
            out.push(self.cfg.node_id);
        }
        for c in self.conns.iter().filter(|c| c.synced()) {
            out.extend(c.tree.ids());
        }
        out
    }

    pub(crate) fn neighbours(&self) -> impl Iterator<Item = Neighbour> + '_ {
        self.conns.iter().filter(|c| c.synced()).map(|c| Neighbour {
            conn: c.id,
            node_id: c.node_id,
            direction: c.direction,
        })
    }

    fn queue(&mut self, conn: ConnId, data: Bytes) {
        self.stats.frames_out += 1;
        self.stats.bytes_out += data.len() as u64;
        self.transmits.push_back(Transmit::Send { conn, data });
    }

    pub(crate) fn send_to_conn(&mut self, conn: ConnId, json: Vec<u8>) -> Result<(), SendError> {
        self.send_raw_to_conn(conn, encode_frame(json))
    }

    pub(crate) fn send_raw_to_conn(&mut self, conn: ConnId, frame: Bytes) -> Result<(), SendError> {
        if self.conn_state(conn).is_none() {
            return Err(SendError::UnknownConnection);
        }
        if frame.len() > self.cfg.max_frame + 1 {
            return Err(SendError::TooLarge);
        }
        self.queue(conn, frame);
        Ok(())
    }

    pub(crate) fn send_frame(
        &mut self,
        routing: Routing,
        dest: u32,
        json: Vec<u8>,
    ) -> Result<(), SendError> {
        if json.len() > self.cfg.max_frame {
            return Err(SendError::TooLarge);
        }
        match routing {
            Routing::Single => {
                let conn = self.route(dest).ok_or(SendError::NoRoute)?;
                self.queue(conn, encode_frame(json));
            }
            Routing::Broadcast => {
                let frame = encode_frame(json);
                let targets: Vec<ConnId> = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| self.carries_broadcasts(i))
                    .map(|(_, c)| c.id)
                    .collect();
                for t in targets {
                    self.queue(t, frame.clone());
                }
            }
            Routing::Neighbour | Routing::None => return Err(SendError::NeedsConnection),
        }
        Ok(())
    }

    /// Forgets a connection; `notify_host` queues a Close for it.
    fn remove_conn(&mut self, conn: ConnId, reason: DropReason, notify_host: bool) {
        let Some(idx) = self.index(conn) else { return };
        let c = self.conns.remove(idx);
        self.held_replies.retain(|h| h.conn != conn);
        self.invalidate_routes();
        if notify_host {
            self.stats.closed_by_node += u64::from(reason != DropReason::Closed);
            self.transmits.push_back(Transmit::Close { conn, reason });
        }
        self.push_event(Event::DroppedConnection {
            node_id: c.node_id,
            conn,
            reason,
        });
        if c.synced() {
            self.pending_changes.push(ConnectionChange::Dropped {
                conn,
                node_id: c.node_id,
            });
            self.topology_changed(None);
        }
    }

    /// Something in the topology changed: re-sync every other connection now (`syncLayout`).
    fn topology_changed(&mut self, source: Option<ConnId>) {
        self.stats.topology_changes += 1;
        self.invalidate_routes();
        self.push_event(Event::ChangedConnections);
        self.pending_changes.push(ConnectionChange::Topology);
        self.force_node_sync_all_but(source);
    }

    /// `layout::syncLayout`: only links whose first NODE_SYNC arrived are forced; a new link
    /// keeps its own schedule (station at once, AP after 10 s).
    fn force_node_sync_all_but(&mut self, source: Option<ConnId>) {
        // "Now" is expressed as the earliest possible deadline; run_timers fires it at once.
        for c in self
            .conns
            .iter_mut()
            .filter(|c| Some(c.id) != source && c.synced())
        {
            c.node_sync_at = Some(FORCED);
        }
    }

    fn force_node_sync(&mut self, _now: Instant, source: Option<ConnId>) {
        self.force_node_sync_all_but(source);
    }

    /// Our NODE_SYNC frame for one connection: our tree without that neighbour's branch.
    fn node_sync_frame(&self, idx: usize, ty: i32) -> Bytes {
        let target = &self.conns[idx];
        let excluded = target.node_id;
        let mut out = Vec::with_capacity(
            64 + self
                .conns
                .iter()
                .map(|c| c.tree.json().len() + 1)
                .sum::<usize>(),
        );
        out.push(b'{');
        write_tree_fields(
            &mut out,
            self.cfg.node_id,
            self.cfg.root,
            self.cfg.time_authority,
            |out| {
                let mut first = true;
                for c in self
                    .conns
                    .iter()
                    .filter(|c| c.synced() && c.node_id != excluded)
                {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(c.tree.json());
                    first = false;
                }
                !first
            },
        );
        write_sync_trailer(&mut out, ty, excluded, self.cfg.node_id);
        encode_frame(out)
    }

    fn run_timers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.conns.len() {
            let c = &self.conns[i];
            let id = c.id;
            if c.sync_timeout_at.is_some_and(|t| t <= now) {
                self.remove_conn(id, DropReason::SyncTimeout, true);
                continue; // index i now holds the next connection
            }
            if c.handshake_by.is_some_and(|t| t <= now) {
                self.stats.handshake_timeouts += 1;
                self.remove_conn(id, DropReason::HandshakeTimeout, true);
                continue;
            }
            if self.cfg.coalesce_syncs
                && c.node_sync_at == Some(FORCED)
                && c.sync_timeout_at.is_some()
            {
                // A forced sync while our last request is unanswered: the reply triggers it,
                // so a burst of changes costs this link one request, built from the newest tree.
                let c = &mut self.conns[i];
                c.resync_after_reply = true;
                c.node_sync_at = Some(now + self.cfg.node_sync_interval);
            } else if c.node_sync_at.is_some_and(|t| t <= now) {
                let frame = self.node_sync_frame(i, types::NODE_SYNC_REQUEST);
                self.queue(id, frame);
                let c = &mut self.conns[i];
                c.node_sync_at = Some(now + self.cfg.node_sync_interval);
                c.sync_timeout_at = Some(now + self.cfg.node_timeout);
            }
            if self.conns[i].time_sync_at.is_some_and(|t| t <= now) {
                self.start_time_sync(i, now);
            }
            i += 1;
        }
        let mut k = 0;
        while k < self.held_replies.len() {
            if self.held_replies[k].due <= now {
                let h = self.held_replies.swap_remove(k);
                // As the reference's `reply()`: msg.type + 1, `from`/`dest` swapped.
                let reply = TimeMessage {
                    ty: h.request.ty,
                    dest: h.request.from,
                    from: h.request.dest,
                    time_type: time_type::REPLY,
                    t0: h.request.t0,
                    t1: h.received_at,
                    t2: self.mesh_time(now),
                };
                let _ = self.send_to_conn(h.conn, reply.to_json());
            } else {
                k += 1;
            }
        }
    }

    // --- node sync ----------------------------------------------------------------------

    /// A NODE_SYNC of type `ty` on `conn` whose tree is in `sync_scratch`.
    fn handle_node_sync(&mut self, conn: ConnId, now: Instant, ty: i32) {
        let Some(mut idx) = self.index(conn) else {
            return;
        };
        let me = self.cfg.node_id;
        let is_request = ty == types::NODE_SYNC_REQUEST;
        let tree_id = self.sync_scratch.node_id();
        let first = !self.conns[idx].synced();
        if first {
            if tree_id == 0 || tree_id == me {
                return self.remove_conn(conn, DropReason::InvalidNodeId, true);
            }
            if let Some(via) = self.route(tree_id).filter(|&via| via != conn) {
                if self.cfg.probe_duplicate_links {
                    self.probe_if_same_neighbour(via, tree_id);
                }
                return self.remove_conn(conn, DropReason::AlreadyConnected, true);
            }
        } else if tree_id != self.conns[idx].node_id {
            return self.remove_conn(conn, DropReason::NodeIdChanged, true);
        }
        let looped = if self.sync_scratch.subs_contain(tree_id) {
            Some(DropReason::LoopNeighbourInSubs)
        } else if self.sync_scratch.contains(me) {
            Some(DropReason::LoopContainsSelf)
        } else {
            None
        };
        if let Some(reason) = looped {
            if first {
                return self.remove_conn(conn, reason, true);
            }
            let mut hold = None;
            let mut claim = false;
            if reason == DropReason::LoopContainsSelf {
                match self.loop_cut(conn, &self.sync_scratch) {
                    LoopCut::This => return self.remove_conn(conn, reason, true),
                    LoopCut::Other(other) => {
                        self.remove_conn(other, reason, true);
                        idx = self.index(conn).expect("only the other link was removed");
                    }
                    LoopCut::Elsewhere(above) => hold = Some(above),
                    LoopCut::Claim => claim = !self.cfg.loop_grace.is_zero(),
                }
            }
            if !claim {
                self.conns[idx].broadcast_hold = hold;
                return self.ignore_looped_sync(idx, now, ty, reason);
            }
            // A claim, not a loop we can see. Within the grace it is ignored like a loop (a
            // stale tree after a cut usually clears by then); a claim that outlasts it is
            // pruned: the tree is taken without the branches rooted at our id, and the link
            // stays (the reference, and pmesh before, closed it).
            let c = &mut self.conns[idx];
            c.broadcast_hold = None;
            let since = *c.loop_since.get_or_insert(now);
            if now.saturating_since(since) < self.cfg.loop_grace {
                return self.ignore_looped_sync(idx, now, ty, reason);
            }
            self.prune_self_claims();
        } else {
            self.conns[idx].loop_cleared();
        }
        // Stock nodes omit hasTimeAuthority in replies but send it in requests (spec §4,
        // "fork asymmetry"); keep the flag from their last request instead of flapping.
        if !is_request
            && !self.sync_scratch.has_time_authority()
            && self.conns[idx].tree.has_time_authority()
        {
            self.sync_scratch.set_has_time_authority(true);
        }
        let c = &mut self.conns[idx];
        let changed = c.tree != self.sync_scratch;
        if first {
            c.node_id = tree_id;
            c.handshake_by = None;
            c.time_sync_at = Some(match c.direction {
                Direction::Station => now,
                Direction::Ap => now + self.cfg.ap_first_sync_delay,
            });
        }
        if changed {
            c.swap_tree(&mut self.sync_scratch);
        }
        if first {
            let node_id = self.conns[idx].node_id;
            self.push_event(Event::NewConnection { node_id, conn });
            self.pending_changes
                .push(ConnectionChange::New { conn, node_id });
        }
        if changed {
            self.topology_changed(Some(conn));
        }
        self.node_sync_answer(idx, now, ty, changed);
    }

    /// `node_id` came again on a new link while link `via` already reaches it. When `via` is a
    /// direct link to that very node, the node has most likely rebooted and `via` is dead (a
    /// power cut sends no FIN), yet nothing would notice before the next periodic NODE_SYNC,
    /// up to `node_sync_interval` away. Ask on `via` now, unless a request is already
    /// unanswered there, so `node_timeout` closes a dead link within seconds and the node's
    /// next attempt gets in; a live link just answers. (The reference only drops the new
    /// link, as we still do; see [`Config::probe_duplicate_links`].)
    fn probe_if_same_neighbour(&mut self, via: ConnId, node_id: u32) {
        if let Some(idx) = self.index(via) {
            let c = &mut self.conns[idx];
            if c.node_id == node_id && c.sync_timeout_at.is_none() {
                c.node_sync_at = Some(FORCED);
                self.stats.duplicate_link_probes += 1;
            }
        }
    }

    /// Drops from the tree in `sync_scratch` every branch rooted at our own id (a claim that
    /// some other node is above us; see [`LoopCut::Claim`]), and counts them.
    fn prune_self_claims(&mut self) {
        fn prune(t: &mut NodeTree, me: u32) -> u64 {
            let before = t.subs.len();
            t.subs.retain(|s| s.node_id != me);
            let mut n = (before - t.subs.len()) as u64;
            for s in &mut t.subs {
                n += prune(s, me);
            }
            n
        }
        let mut tree = self.sync_scratch.to_tree();
        self.stats.self_claims_pruned += prune(&mut tree, self.cfg.node_id);
        self.sync_scratch = FlatTree::from_tree(&tree);
    }

    /// A NODE_SYNC on an established link whose tree shows a loop that this node does not
    /// cut: its tree is not taken (so the loop does not travel on through us) and the link
    /// stays, for [`Config::loop_grace`]; we ask again when the grace is over, and a tree that
    /// still shows a loop then closes the link, as the reference would have at once.
    fn ignore_looped_sync(&mut self, idx: usize, now: Instant, ty: i32, reason: DropReason) {
        let grace = self.cfg.loop_grace;
        let c = &mut self.conns[idx];
        let since = *c.loop_since.get_or_insert(now);
        if now.saturating_since(since) >= grace {
            let id = c.id;
            return self.remove_conn(id, reason, true);
        }
        let recheck = since + grace;
        c.node_sync_at = Some(c.node_sync_at.map_or(recheck, |t| t.min(recheck)));
        self.stats.loop_syncs_ignored += 1;
        // Answer a request, stop a reply's timeout, and do not postpone the recheck.
        self.node_sync_answer(idx, now, ty, true);
    }

    /// Which link of a loop through this node to cut, when `tree` (from `conn`) contains us.
    ///
    /// The tree gives the cycle: us, the neighbour on `conn`, ..., the node `p` above us in
    /// that tree, us. Every node on a cycle sees the same one, so all agree on one edge to cut:
    /// the smallest `(min id, max id)` pair. Only that edge's two ends close it, and the rest
    /// of the ring stays up (cutting every link that shows the loop, which is what each node
    /// would do on its own, shreds a ring into single nodes). If the cycle does not close at
    /// a neighbour of ours, or at one whose own tree does not confirm it, nothing is cut here
    /// ([`LoopCut::Claim`]).
    fn loop_cut(&self, conn: ConnId, tree: &FlatTree) -> LoopCut {
        let me = self.cfg.node_id;
        let Some(path) = tree.path_to(me).filter(|p| p.len() >= 3) else {
            return LoopCut::This;
        };
        // path = [neighbour on conn, ..., p, me]
        let p = path[path.len() - 2];
        let Some(other) = self
            .conns
            .iter()
            .find(|c| c.id != conn && c.synced() && c.node_id == p)
        else {
            return LoopCut::Claim;
        };
        let key = |a: u32, b: u32| (a.min(b), a.max(b));
        let mut cycle = alloc::vec![me];
        cycle.extend_from_slice(&path);
        let cut = cycle
            .windows(2)
            .map(|w| key(w[0], w[1]))
            .min()
            .expect("3 or more edges");
        if cut == key(me, tree.node_id()) {
            LoopCut::This
        } else if cut == key(p, me) {
            // Our direct link to p closes only if p's own tree confirms the cycle (it reaches
            // the claimant the other way round); otherwise the cycle is only a claim.
            if other.tree.contains(tree.node_id()) {
                LoopCut::Other(other.id)
            } else {
                LoopCut::Claim
            }
        } else {
            LoopCut::Elsewhere(p)
        }
    }

    /// A NODE_SYNC carrying exactly the stored tree (see `same_tree_sync`): nothing changed.
    fn node_sync_unchanged(&mut self, idx: usize, now: Instant, ty: i32) {
        self.conns[idx].loop_cleared();
        self.node_sync_answer(idx, now, ty, false);
    }

    /// What follows a NODE_SYNC (`handleNodeSync` and the two package callbacks): an
    /// unchanged tree of either kind postpones our own request by one interval (the
    /// reference's `nodeSyncTask.delay()`, so in the steady state only one side asks); a
    /// request is answered at once; a reply stops the timeout.
    fn node_sync_answer(&mut self, idx: usize, now: Instant, ty: i32, changed: bool) {
        if !changed {
            self.conns[idx].node_sync_at = Some(now + self.cfg.node_sync_interval);
        }
        if ty == types::NODE_SYNC_REQUEST {
            let frame = self.node_sync_frame(idx, types::NODE_SYNC_REPLY);
            let id = self.conns[idx].id;
            self.queue(id, frame);
        } else {
            let c = &mut self.conns[idx];
            c.sync_timeout_at = None;
            if core::mem::take(&mut c.resync_after_reply) {
                c.node_sync_at = Some(FORCED);
            }
        }
    }

    // --- time sync ----------------------------------------------------------------------

    /// `ntp::adopt` for one connection.
    fn adopts_from(&self, idx: usize) -> bool {
        let c = &self.conns[idx];
        let my_sub_count = 1 + self
            .conns
            .iter()
            .filter(|o| o.synced() && o.node_id != c.node_id)
            .map(|o| o.tree.size())
            .sum::<usize>();
        ntp::adopt(
            self.cfg.node_id,
            self.cfg.time_authority,
            my_sub_count,
            c.node_id,
            c.tree.has_time_authority(),
            c.tree.size(),
        )
    }

    fn start_time_sync(&mut self, idx: usize, now: Instant) {
        let c = &self.conns[idx];
        let msg = if self.adopts_from(idx) {
            TimeMessage {
                ty: types::TIME_SYNC,
                dest: c.node_id,
                from: self.cfg.node_id,
                time_type: time_type::REQUEST,
                t0: self.mesh_time(now),
                t1: 0,
                t2: 0,
            }
        } else {
            TimeMessage {
                ty: types::TIME_SYNC,
                dest: c.node_id,
                from: self.cfg.node_id,
                time_type: time_type::SYNC_REQUEST,
                t0: 0,
                t1: 0,
                t2: 0,
            }
        };
        let id = c.id;
        if msg.time_type == time_type::REQUEST {
            self.conns[idx].time_request = Some((msg.t0, self.time_steps));
        }
        // The task's own period; a reply that completes the sync postpones it to 60 s, one
        // that does not brings it forward to 200 ms (`handleTimeSync`).
        self.conns[idx].time_sync_at = Some(now + self.cfg.time_sync_unsynced_interval);
        let _ = self.send_to_conn(id, msg.to_json());
    }

    /// Reschedules a link's time-sync task, if it exists yet (`Task::delay` /
    /// `forceNextIteration` on a task the reference has not created do nothing).
    fn delay_time_sync(&mut self, idx: usize, at: Instant) {
        if let Some(t) = self.conns[idx].time_sync_at.as_mut() {
            *t = at;
        }
    }

    /// Holds a reply to a TIME_SYNC or TIME_DELAY request for [`Config::time_reply_hold`].
    fn hold_reply(&mut self, conn: ConnId, now: Instant, request: TimeMessage) {
        let received_at = self.mesh_time(now);
        if self.held_replies.len() >= MAX_HELD_REPLIES {
            // A peer flooding requests: the oldest answer is lost, memory stays bounded.
            self.held_replies.remove(0);
        }
        self.held_replies.push(HeldReply {
            due: now + self.cfg.time_reply_hold,
            conn,
            request,
            received_at,
        });
    }

    fn handle_time_sync(&mut self, conn: ConnId, now: Instant, msg: TimeMessage) {
        let Some(idx) = self.index(conn) else { return };
        match msg.time_type {
            time_type::ERROR => self.delay_time_sync(idx, now),
            time_type::SYNC_REQUEST => {
                // "Please start": answer as if we had started ourselves.
                let reply = TimeMessage {
                    ty: types::TIME_SYNC,
                    dest: msg.from,
                    from: msg.dest,
                    time_type: time_type::REQUEST,
                    t0: self.mesh_time(now),
                    t1: 0,
                    t2: 0,
                };
                self.conns[idx].time_request = Some((reply.t0, self.time_steps));
                let _ = self.send_to_conn(conn, reply.to_json());
            }
            time_type::REQUEST => {
                // "After the response is sent I assume sync is completed."
                self.delay_time_sync(idx, now + self.cfg.time_sync_interval);
                self.hold_reply(conn, now, msg);
            }
            time_type::REPLY => {
                let t3 = self.mesh_time(now);
                if self.cfg.rate_discipline {
                    // Only the reply to this link's latest request, sent in the current time
                    // base: the reference also applies a reply whose request went out before
                    // another exchange stepped the time (two requests overlap when the parent's
                    // forced sync meets our own timer), which re-applies part of that step.
                    let current = self.conns[idx].time_request == Some((msg.t0, self.time_steps));
                    if !current {
                        self.stats.time_samples_stale += 1;
                        return;
                    }
                    self.discipline_rate(conn, now, &msg, t3);
                }
                let offset = ntp::clock_offset(msg.t0, msg.t1, msg.t2, t3);
                self.time_offset = self.time_offset.wrapping_add(offset as u32);
                if offset != 0 {
                    self.time_steps = self.time_steps.wrapping_add(1);
                }
                self.push_event(Event::TimeAdjusted { offset });
                if ntp::sync_complete(offset) {
                    self.delay_time_sync(idx, now + self.cfg.time_sync_interval);
                    // Our time moved: bring every other link's sync forward.
                    for other in self.conns.iter_mut().filter(|o| o.id != conn) {
                        if let Some(t) = other.time_sync_at.as_mut() {
                            *t = now;
                        }
                    }
                } else {
                    self.stats.time_samples_retried += 1;
                    self.delay_time_sync(idx, now + self.cfg.time_sync_retry);
                }
            }
            _ => {}
        }
    }

    fn handle_time_delay(&mut self, conn: ConnId, now: Instant, msg: TimeMessage) {
        match msg.time_type {
            // Held like a TIME_SYNC reply, so `t2 - t1` is real here too; the trip delay
            // subtracts it, so the measurement is unaffected.
            time_type::REQUEST => self.hold_reply(conn, now, msg),
            time_type::REPLY => {
                let delay_us = ntp::trip_delay(msg.t0, msg.t1, msg.t2, self.mesh_time(now));
                self.push_event(Event::Delay {
                    node_id: msg.from,
                    delay_us,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_sync_recognises_only_the_canonical_frame_of_the_stored_tree() {
        let tree = br#"{"nodeId":7,"subs":[{"nodeId":8}]}"#;
        let ok = |s: &str| same_tree_sync(&[s.as_bytes(), b"\0"].concat(), tree);
        assert_eq!(
            ok(r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":5,"dest":1,"from":7}"#),
            Some(5)
        );
        assert_eq!(
            ok(r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":6,"dest":0,"from":4294967295}"#),
            Some(6)
        );
        for other in [
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":4,"dest":1,"from":7}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":5,"dest":12345678901,"from":7}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":5,"dest":1,"from":7,"x":1}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":5,"dest":"1","from":7}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"type":5,"dest":,"from":7}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8},{"nodeId":9}],"type":5,"dest":1,"from":7}"#,
            r#"{"nodeId":7,"subs":[{"nodeId":8}],"root":true,"type":5,"dest":1,"from":7}"#,
            r#"{"type":5,"dest":1,"from":7,"nodeId":7,"subs":[{"nodeId":8}]}"#,
        ] {
            assert_eq!(ok(other), None, "{other}");
        }
        assert_eq!(
            same_tree_sync(b"{\"nodeId\":7,\"type\":5,\"dest\":1,\"from\":7}\0", b""),
            None
        );
    }
}
