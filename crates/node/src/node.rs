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
use crate::rng::SplitMix64;
use crate::stats::NodeStats;
use crate::time::{Instant, earliest};

mod sync;
mod timesync;

use sync::same_tree_sync;

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
    pub(crate) rng: SplitMix64,
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
                rng: SplitMix64::new(seed),
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
