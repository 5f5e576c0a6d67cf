//! The discrete-event engine: one virtual clock, one event queue, the real `pmesh_node::Node`
//! per simulated node, TCP links, faults, generated traffic and the invariant checks. Nothing
//! ticks: every event is a delivery, a node deadline, a WiFi step or a scenario action, so cost
//! grows with what happens, not with nodes × time.
//!
//! The WiFi station model (scan, rank, associate, dial, retries, blocklist, reconfiguration,
//! beacon loss) is `station.rs`: the engine delivers its timers, tells it what happened to the
//! nodes and links, and carries out the link requests it returns.

use std::collections::BTreeMap;
use std::time::Instant as WallInstant;

use bytes::Bytes;
use pmesh_node::{Config, ConnId, Direction, Event, Instant, Node, Plugin, Transmit};

use crate::app::{Boot, CoreOnly, NodeHandle, SimApp};
use crate::clock::{NodeClock, SimTime, secs};
use crate::link::{AP, Link, LinkId, STA};
use crate::report::{self, Convergence, Report, Violation};
use crate::rng::SimRng;
use crate::scenario::{Action, Dur, Scenario, TimedEvent};
use crate::sniff;
use crate::station::{self, LinkRequest, NodeView, Stations, WifiEvent};
use crate::topology::Layout;

mod invariants;
mod traffic;

use traffic::tag_id;

/// Violations kept in the report (all are counted).
const MAX_VIOLATIONS: usize = 1_000;
/// Progress callbacks at most this often (events).
const PROGRESS_EVERY: u64 = 1 << 15;
/// Formation is checked this long after a new connection (simulated µs).
const FORMATION_CHECK_DELAY: SimTime = 50_000;

/// A scheduled thing.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// A node boots (first boot or restart).
    Boot { node: usize, boot: u32 },
    /// The node's `poll_timeout` deadline.
    NodeTimer { node: usize, boot: u32 },
    /// The head of the lane `side` sends on `link` arrives.
    Deliver { link: LinkId, side: usize },
    /// The AP accepts a dialled connection.
    Accept { link: LinkId },
    /// The station's connect completes.
    Connected { link: LinkId },
    /// FIN or RST reaches `side`.
    PeerClosed { link: LinkId, side: usize },
    /// A WiFi station timer (`station.rs`).
    Wifi(WifiEvent),
    /// Scenario event `idx`.
    Scenario { idx: usize },
    /// Generate a broadcast (`single = false`) or a SINGLE.
    Traffic { single: bool },
    /// Is cycle `idx` still there after the grace period?
    CycleCheck { idx: usize },
    /// Broadcast `idx`'s delivery window is over.
    BroadcastCheck { idx: usize },
    /// Sample the mesh-time spread.
    TimeSample,
    /// Has the mesh formed (one component)?
    FormationCheck,
}

impl From<WifiEvent> for Ev {
    fn from(ev: WifiEvent) -> Ev {
        Ev::Wifi(ev)
    }
}

struct SimNode<P: Plugin> {
    id: u32,
    node: Option<Node<P>>,
    boots: u32,
    clock: NodeClock,
    drift_ppb: i64,
    timer_at: Option<SimTime>,
    links: Vec<LinkId>,
}

impl<P: Plugin> SimNode<P> {
    fn up(&self) -> bool {
        self.node.is_some()
    }
}

/// The nodes as the station model sees them.
impl<P: Plugin> NodeView for Vec<SimNode<P>> {
    fn up(&self, idx: usize) -> bool {
        self[idx].up()
    }

    fn boots(&self, idx: usize) -> u32 {
        self[idx].boots
    }

    fn id(&self, idx: usize) -> u32 {
        self[idx].id
    }

    fn routes_to(&self, idx: usize, id: u32) -> bool {
        self[idx]
            .node
            .as_ref()
            .is_some_and(|n| n.route(id).is_some())
    }

    fn mesh_size(&self, idx: usize) -> usize {
        self[idx].node.as_ref().map_or(0, |n| n.mesh_size())
    }
}

struct BroadcastTrack {
    sender: usize,
    sent_at: SimTime,
    expected: Vec<bool>,
    received: Vec<u8>,
}

struct SingleTrack {
    dest: usize,
    hops: u32,
    delivered: u8,
    loop_reported: bool,
}

struct OpenCycle {
    links: Vec<LinkId>,
    nodes: Vec<u32>,
    since: SimTime,
    open: bool,
}

/// What a progress callback sees.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Simulated time now, µs.
    pub sim_now: SimTime,
    /// Simulated time the run will end at, µs.
    pub sim_end: SimTime,
    /// Events so far.
    pub events: u64,
    /// Nodes up.
    pub nodes_up: usize,
    /// The application's progress line.
    pub app: Option<&'a str>,
}

/// A simulation: build it from a scenario, run it, read the report.
pub struct Sim<A: SimApp = CoreOnly> {
    sc: Scenario,
    app: A,
    now: SimTime,
    end: SimTime,
    queue: crate::queue::EventQueue<Ev>,
    nodes: Vec<SimNode<A::Plugin>>,
    links: Vec<Link>,
    layout: Layout,
    rng: SimRng,
    events: u64,
    // counters
    by_type: BTreeMap<i32, crate::report::Traffic>,
    total: crate::report::Traffic,
    drops: BTreeMap<&'static str, u64>,
    stations: Stations,
    time_adjustments: u64,
    retired_stats: Vec<pmesh_node::NodeStats>,
    max_buffered: u64,
    // invariants and measurements
    last_change: SimTime,
    epoch: Option<(String, SimTime)>,
    convergence: Vec<Convergence>,
    convergence_checks: u64,
    formed_at: Option<SimTime>,
    formation_check_pending: bool,
    last_new_connection: SimTime,
    late_joiners: Vec<u32>,
    violations: Vec<Violation>,
    violations_total: u64,
    cycles: Vec<OpenCycle>,
    longest_cycle: SimTime,
    broadcasts: Vec<BroadcastTrack>,
    broadcast_expected: u64,
    broadcast_delivered: u64,
    broadcast_duplicates: u64,
    broadcast_checks: u64,
    singles: Vec<SingleTrack>,
    singles_delivered: u64,
    single_hops: u64,
    time_samples: Vec<(f64, Option<u64>)>,
    scratch: Vec<Bytes>,
}

impl<A: SimApp> std::fmt::Debug for Sim<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("scenario", &self.sc.name)
            .field("now", &self.now)
            .field("events", &self.events)
            .finish()
    }
}

impl Sim<CoreOnly> {
    /// A simulation of nodes without plugins.
    pub fn new(scenario: Scenario) -> Result<Self, String> {
        Sim::with_app(scenario, CoreOnly)
    }
}

impl<A: SimApp> Sim<A> {
    /// A simulation whose nodes run `app`'s plugin.
    pub fn with_app(scenario: Scenario, app: A) -> Result<Self, String> {
        scenario.validate()?;
        let sc = scenario;
        let mut rng_layout = SimRng::stream(sc.seed, 1);
        let layout = Layout::build(&sc, &mut rng_layout);
        let mut rng_clock = SimRng::stream(sc.seed, 2);
        let drift_ppb = (sc.clock.drift_ppm * 1000.0) as i64;
        let nodes = (0..sc.nodes as usize)
            .map(|i| SimNode {
                id: i as u32 + 1,
                node: None,
                boots: 0,
                clock: NodeClock::new(0, 0, 0),
                drift_ppb: rng_clock.signed(drift_ppb),
                timer_at: None,
                links: Vec::new(),
            })
            .collect();
        let end = sc.duration.micros();
        let mut sim = Sim {
            app,
            now: 0,
            end,
            queue: Default::default(),
            nodes,
            links: Vec::new(),
            layout,
            rng: SimRng::stream(sc.seed, 3),
            events: 0,
            by_type: BTreeMap::new(),
            total: Default::default(),
            drops: BTreeMap::new(),
            stations: Stations::new(sc.nodes as usize),
            time_adjustments: 0,
            retired_stats: Vec::new(),
            max_buffered: 0,
            last_change: 0,
            epoch: Some(("start".into(), 0)),
            convergence: Vec::new(),
            convergence_checks: 0,
            formed_at: None,
            formation_check_pending: false,
            last_new_connection: 0,
            late_joiners: Vec::new(),
            violations: Vec::new(),
            violations_total: 0,
            cycles: Vec::new(),
            longest_cycle: 0,
            broadcasts: Vec::new(),
            broadcast_expected: 0,
            broadcast_delivered: 0,
            broadcast_duplicates: 0,
            broadcast_checks: 0,
            singles: Vec::new(),
            singles_delivered: 0,
            single_hops: 0,
            time_samples: Vec::new(),
            scratch: Vec::new(),
            sc,
        };
        let late = sim.sc.late_joiners();
        sim.late_joiners = late.clone();
        let jitter = sim.sc.wifi.boot_jitter.micros();
        for i in 0..sim.nodes.len() {
            if late.binary_search(&(i as u32 + 1)).is_err() {
                let at = sim.rng.range(0, jitter);
                sim.queue.push(at, Ev::Boot { node: i, boot: 1 });
            }
        }
        for (idx, e) in sim.sc.events.iter().enumerate() {
            sim.queue.push(e.at.micros(), Ev::Scenario { idx });
        }
        let start = sim.sc.traffic.start.micros();
        if sim.sc.traffic.broadcast_every.is_some() {
            sim.queue.push(start, Ev::Traffic { single: false });
        }
        if sim.sc.traffic.single_every.is_some() {
            sim.queue.push(start, Ev::Traffic { single: true });
        }
        let every = sim.sc.invariants.time_sample_every.micros();
        if every > 0 {
            sim.queue.push(every, Ev::TimeSample);
        }
        Ok(sim)
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.sc
    }

    /// The radio layout (positions, who sees whom).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The application, mutably.
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// Simulated time now, µs.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The node with this id, if it is up.
    pub fn node(&self, id: u32) -> Option<&Node<A::Plugin>> {
        self.nodes
            .get((id as usize).wrapping_sub(1))
            .and_then(|n| n.node.as_ref())
    }

    /// Ids of the nodes that are up.
    pub fn nodes_up(&self) -> Vec<u32> {
        self.nodes.iter().filter(|n| n.up()).map(|n| n.id).collect()
    }

    /// The node's local clock now.
    pub fn local_now(&self, id: u32) -> Option<Instant> {
        self.nodes
            .get((id as usize).wrapping_sub(1))
            .filter(|n| n.up())
            .map(|n| n.clock.local(self.now))
    }

    /// Runs `f` on a node that is up and delivers whatever it sends.
    pub fn with_node<R>(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut NodeHandle<'_, A::Plugin>) -> R,
    ) -> Option<R> {
        let idx = (id as usize).checked_sub(1)?;
        let n = self.nodes.get_mut(idx)?;
        let local = n.clock.local(self.now);
        let node = n.node.as_mut()?;
        let r = f(&mut NodeHandle {
            id,
            sim_now: self.now,
            now: local,
            node,
        });
        self.drain(idx);
        Some(r)
    }

    /// The links of node `id` that are open and synced on its side, each as (the peer's id,
    /// bytes this node sent on the link, bytes the peer sent on it): a gateway's link counters.
    pub fn link_bytes(&self, id: u32) -> Vec<(u32, u64, u64)> {
        let Some(idx) = (id as usize)
            .checked_sub(1)
            .filter(|&i| i < self.nodes.len())
        else {
            return Vec::new();
        };
        self.nodes[idx]
            .links
            .iter()
            .filter_map(|&l| self.links.get(l))
            .filter_map(|link| {
                let side = link.side_of(idx);
                let other = 1 - side;
                (!link.dead && link.open[side] && link.synced[side]).then(|| {
                    let peer = self.nodes[link.ends[other]].id;
                    (peer, link.lanes[side].bytes, link.lanes[other].bytes)
                })
            })
            .collect()
    }

    /// Sizes of the connected components now (connections both ends synced, nodes up),
    /// largest first, with each component's node ids.
    pub fn components_now(&self) -> Vec<Vec<u32>> {
        let comp = self.components();
        let mut groups: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (i, &c) in comp.iter().enumerate() {
            if c != usize::MAX {
                groups.entry(c).or_default().push(self.nodes[i].id);
            }
        }
        let mut v: Vec<Vec<u32>> = groups.into_values().collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v
    }

    /// Invariant violations so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Runs to the scenario's end (or until the application is finished).
    pub fn run(&mut self) -> Report {
        self.run_with_progress(|_| {})
    }

    /// Runs to the end, calling `progress` now and then.
    pub fn run_with_progress(&mut self, mut progress: impl FnMut(&Progress<'_>)) -> Report {
        let wall = WallInstant::now();
        let end = self.end;
        self.run_until_inner(end, &mut progress);
        self.finish(wall.elapsed().as_secs_f64())
    }

    /// Schedules a scenario `action` at `at` (not before now) while the run is under way: a
    /// host driving the simulation (a campaign crashing a node that boots a bad image, say)
    /// adds events the scenario could not know in advance. The action joins the scenario's
    /// event list, so the report's epochs show it like any other.
    pub fn schedule(&mut self, at: SimTime, action: Action) {
        let at = at.max(self.now);
        let idx = self.sc.events.len();
        self.sc.events.push(TimedEvent {
            at: Dur(at),
            action,
        });
        self.queue.push(at, Ev::Scenario { idx });
    }

    /// Advances simulated time to `t` (processing every event before it).
    pub fn run_until(&mut self, t: SimTime) {
        self.run_until_inner(t.min(self.end), &mut |_| {});
    }

    fn run_until_inner(&mut self, t: SimTime, progress: &mut dyn FnMut(&Progress<'_>)) {
        while let Some(at) = self.queue.peek_time() {
            if at > t || self.app.finished() {
                break;
            }
            let (at, ev) = self.queue.pop().expect("peeked");
            self.now = at;
            self.events += 1;
            self.dispatch(ev);
            if self.events.is_multiple_of(PROGRESS_EVERY) {
                let app = self.app.progress();
                let up = self.nodes.iter().filter(|n| n.up()).count();
                progress(&Progress {
                    sim_now: self.now,
                    sim_end: self.end,
                    events: self.events,
                    nodes_up: up,
                    app: app.as_deref(),
                });
            }
        }
        if !self.app.finished() {
            self.now = self.now.max(t);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Boot { node, boot } => self.boot(node, boot),
            Ev::NodeTimer { node, boot } => {
                let n = &mut self.nodes[node];
                if n.boots != boot || n.timer_at != Some(self.now) {
                    return;
                }
                n.timer_at = None;
                let local = n.clock.local(self.now);
                if let Some(nd) = n.node.as_mut() {
                    nd.handle_timeout(local);
                    self.drain(node);
                }
            }
            Ev::Deliver { link, side } => self.deliver(link, side),
            Ev::Accept { link } => self.accept(link),
            Ev::Connected { link } => self.connected(link),
            Ev::PeerClosed { link, side } => self.peer_closed(link, side),
            Ev::Wifi(ev) => {
                let (stations, mut env) = self.wifi();
                if let Some(request) = stations.on_event(&mut env, ev) {
                    self.link_request(ev.node(), request);
                }
            }
            Ev::Scenario { idx } => self.scenario_event(idx),
            Ev::Traffic { single } => self.traffic(single),
            Ev::CycleCheck { idx } => self.cycle_check(idx),
            Ev::BroadcastCheck { idx } => self.broadcast_check(idx),
            Ev::FormationCheck => {
                self.formation_check_pending = false;
                self.check_formation();
            }
            Ev::TimeSample => {
                let (spread, _) = self.time_spread();
                self.time_samples.push((secs(self.now), spread));
                let every = self.sc.invariants.time_sample_every.micros();
                self.queue.push(self.now + every, Ev::TimeSample);
            }
        }
    }

    // --- nodes ----------------------------------------------------------------------------

    fn boot(&mut self, idx: usize, boot: u32) {
        let n = &mut self.nodes[idx];
        if n.up() || n.boots + 1 != boot {
            return;
        }
        n.boots = boot;
        let boot_local = self.rng.below(self.sc.clock.initial_offset.micros().max(1));
        n.clock = NodeClock::new(self.now, boot_local, n.drift_ppb);
        let id = n.id;
        let mut cfg = Config::new(id);
        cfg.root = self.sc.roots.contains(&id);
        cfg.time_authority = self.sc.time_authority.contains(&id);
        cfg.rate_discipline = self.sc.clock.rate_discipline;
        cfg.seed = self.sc.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (u64::from(id) << 20)
            ^ u64::from(boot);
        let kind = if boot == 1 {
            Boot::First
        } else {
            Boot::Restart
        };
        let plugin = self.app.create_plugin(id, kind, cfg.seed);
        let n = &mut self.nodes[idx];
        n.node = Some(Node::new(cfg, plugin));
        n.timer_at = None;
        self.stations.boot(idx);
        self.last_change = self.now;
        self.drain(idx);
        let (stations, mut env) = self.wifi();
        stations.start(&mut env, idx);
    }

    fn crash(&mut self, idx: usize) {
        let Some(node) = self.nodes[idx].node.take() else {
            return;
        };
        self.retired_stats.push(node.stats());
        drop(node);
        self.app.on_crash(self.nodes[idx].id, self.now);
        let links = std::mem::take(&mut self.nodes[idx].links);
        for l in links {
            let link = &mut self.links[l];
            let side = link.side_of(idx);
            link.open[side] = false;
            link.synced[side] = false;
            link.purge();
            if !link.open[1 - side] {
                link.dead = true;
            }
            self.edge_removed(l);
        }
        // Its AP slot upstream is freed; stations associated with its AP lose its beacon.
        let (stations, mut env) = self.wifi();
        stations.crashed(&mut env, idx);
        self.nodes[idx].timer_at = None;
        self.last_change = self.now;
        self.prune_broadcast_expectations();
    }

    /// Drains a node's outputs (until handling its events, the application's part included,
    /// leaves none) and reschedules its timer.
    fn drain(&mut self, idx: usize) {
        loop {
            if !self.flush_transmits(idx) {
                return;
            }
            let mut events = Vec::new();
            if let Some(node) = self.nodes[idx].node.as_mut() {
                self.stations
                    .topology_changes(idx, node.stats().topology_changes);
                while let Some(e) = node.poll_event() {
                    events.push(e);
                }
            }
            if events.is_empty() {
                break;
            }
            for e in events {
                self.node_event(idx, e);
            }
        }
        let n = &mut self.nodes[idx];
        let Some(node) = n.node.as_ref() else { return };
        if let Some(deadline) = node.poll_timeout() {
            let at = n.clock.sim_at(deadline).max(self.now);
            if n.timer_at.is_none_or(|t| at < t) {
                n.timer_at = Some(at);
                let boot = n.boots;
                self.queue.push(at, Ev::NodeTimer { node: idx, boot });
            }
        }
    }

    /// Sends or closes whatever the node queued; false if the node is down.
    fn flush_transmits(&mut self, idx: usize) -> bool {
        loop {
            let Some(node) = self.nodes[idx].node.as_mut() else {
                return false;
            };
            let Some(t) = node.poll_transmit() else {
                return true;
            };
            match t {
                Transmit::Send { conn, data } => self.link_send(idx, conn.0 as LinkId, data),
                Transmit::Close { conn, .. } => self.link_close(idx, conn.0 as LinkId),
            }
        }
    }

    /// One event from node `idx`: the engine's accounting, then the application's turn. What
    /// the application does on a plugin event is drained at once (as it always was); on a core
    /// event, by the loop in `drain`.
    fn node_event(&mut self, idx: usize, e: Event<<A::Plugin as Plugin>::Event>) {
        let plugin_event = matches!(e, Event::Plugin(_));
        self.account(idx, &e);
        let n = &mut self.nodes[idx];
        let local = n.clock.local(self.now);
        if let Some(node) = n.node.as_mut() {
            self.app.on_event(
                &mut NodeHandle {
                    id: n.id,
                    sim_now: self.now,
                    now: local,
                    node,
                },
                e,
            );
            if plugin_event {
                self.drain(idx);
            }
        }
    }

    /// The engine's own bookkeeping for a node event (links, formation, drops, deliveries).
    fn account(&mut self, idx: usize, e: &Event<<A::Plugin as Plugin>::Event>) {
        match *e {
            Event::NewConnection { conn, .. } => {
                let l = conn.0 as LinkId;
                if let Some(link) = self.links.get_mut(l) {
                    let side = link.side_of(idx);
                    let was_edge = link.synced[0] || link.synced[1];
                    link.synced[side] = true;
                    self.last_change = self.now;
                    if !was_edge {
                        self.edge_added(l);
                    }
                    if self.formed_at.is_none() && !self.formation_check_pending {
                        // Formation can only complete at a new connection; check once things
                        // have settled for a moment (a component walk per connection costs O(N)).
                        self.formation_check_pending = true;
                        self.queue
                            .push(self.now + FORMATION_CHECK_DELAY, Ev::FormationCheck);
                    }
                    self.last_new_connection = self.now;
                }
            }
            Event::DroppedConnection { reason, .. } => {
                *self.drops.entry(reason.as_str()).or_default() += 1;
            }
            Event::ChangedConnections => self.last_change = self.now,
            Event::TimeAdjusted { .. } => self.time_adjustments += 1,
            Event::Received {
                ref msg, broadcast, ..
            } => self.received(idx, msg, broadcast),
            Event::Plugin(_)
            | Event::Package { .. }
            | Event::Delay { .. }
            | Event::FrameDropped { .. } => {}
        }
    }

    // --- links ----------------------------------------------------------------------------

    fn link_send(&mut self, idx: usize, l: LinkId, data: Bytes) {
        let Some(link) = self.links.get_mut(l) else {
            return;
        };
        let side = link.side_of(idx);
        if !link.open[side] {
            return;
        }
        // Count frames by type (a Send may carry several frames).
        let mut syncs = 0;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let end = memchr::memchr(0, rest).map_or(rest.len(), |p| p + 1);
            let frame = &rest[..end];
            let json = frame.strip_suffix(&[0]).unwrap_or(frame);
            if !json.is_empty() {
                let ty = sniff::frame_type(json);
                let t = self.by_type.entry(ty).or_default();
                t.frames += 1;
                t.bytes += frame.len() as u64;
                syncs += u32::from(ty == 5 || ty == 6);
                self.total.frames += 1;
                self.total.bytes += frame.len() as u64;
                if ty == 9
                    && let Some(id) = tag_id(json)
                    && let Some(s) = self.singles.get_mut(id)
                {
                    s.hops += 1;
                    if s.hops > self.nodes.len() as u32 && !s.loop_reported {
                        s.loop_reported = true;
                        let hops = s.hops;
                        let from = self.nodes[idx].id;
                        self.violation(
                            "forwarding-loop",
                            vec![from],
                            format!(
                                "SINGLE #{id} forwarded {hops} times, more than there are nodes"
                            ),
                        );
                    }
                }
            }
            rest = &rest[end..];
        }
        let link = &mut self.links[l];
        if let Some(arrive) = link.send(side, self.now, data, syncs)
            && !link.lanes[side].scheduled
        {
            link.lanes[side].scheduled = true;
            self.queue.push(arrive, Ev::Deliver { link: l, side });
        }
    }

    fn deliver(&mut self, l: LinkId, side: usize) {
        let now = self.now;
        let link = &mut self.links[l];
        link.lanes[side].scheduled = false;
        let mut chunks = std::mem::take(&mut self.scratch);
        let mut syncs = 0;
        while let Some(&(at, _, _)) = link.lanes[side].inflight.front() {
            if at > now {
                break;
            }
            let (_, data, s) = link.lanes[side].inflight.pop_front().expect("front");
            chunks.push(data);
            syncs += s;
        }
        if let Some(&(at, _, _)) = link.lanes[side].inflight.front() {
            link.lanes[side].scheduled = true;
            self.queue.push(at, Ev::Deliver { link: l, side });
        }
        let recv = 1 - side;
        let to = link.ends[recv];
        let open = link.open[recv] && !link.blackhole;
        let stale_boot = link.boots[recv] != self.nodes[to].boots;
        if !open {
            // A node that rebooted answers data for a connection it never had with RST.
            if stale_boot && self.nodes[to].up() && link.open[side] && !link.blackhole {
                let latency = link.latency;
                self.queue
                    .push(now + latency, Ev::PeerClosed { link: l, side });
                link.open[recv] = false;
            }
            chunks.clear();
            self.scratch = chunks;
            return;
        }
        let n = &mut self.nodes[to];
        let local = n.clock.local(now);
        if let Some(node) = n.node.as_mut() {
            let changes_before = node.stats().topology_changes;
            for c in chunks.drain(..) {
                node.handle_bytes(ConnId(l as u64), local, &c);
            }
            // The station's stability counts the NODE_SYNCs that changed nothing.
            let changed = node.stats().topology_changes - changes_before;
            let unchanged = u64::from(syncs).saturating_sub(changed) as u32;
            self.stations.unchanged_syncs(to, unchanged);
            self.max_buffered = self.max_buffered.max(node.buffered_bytes() as u64);
            self.drain(to);
        }
        chunks.clear();
        self.scratch = chunks;
    }

    /// The node at `idx` closed the connection (it already forgot it).
    fn link_close(&mut self, idx: usize, l: LinkId) {
        let Some(link) = self.links.get_mut(l) else {
            return;
        };
        let side = link.side_of(idx);
        if !link.open[side] {
            return;
        }
        link.open[side] = false;
        link.synced[side] = false;
        let other = 1 - side;
        if link.open[other] && !link.blackhole {
            let at = link.drain_time(side, self.now);
            self.queue.push(
                at,
                Ev::PeerClosed {
                    link: l,
                    side: other,
                },
            );
        } else {
            link.dead = true;
        }
        self.nodes[idx].links.retain(|&x| x != l);
        self.edge_removed(l);
        if side == STA {
            let (stations, mut env) = self.wifi();
            stations.link_lost(&mut env, idx, l);
        }
    }

    fn peer_closed(&mut self, l: LinkId, side: usize) {
        let link = &mut self.links[l];
        if !link.open[side] {
            return;
        }
        let idx = link.ends[side];
        if link.boots[side] != self.nodes[idx].boots {
            return;
        }
        link.open[side] = false;
        link.synced[side] = false;
        link.dead = true;
        link.purge();
        self.nodes[idx].links.retain(|&x| x != l);
        self.edge_removed(l);
        let n = &mut self.nodes[idx];
        let local = n.clock.local(self.now);
        if let Some(node) = n.node.as_mut() {
            node.handle_disconnect(ConnId(l as u64), local);
            self.drain(idx);
        }
        if side == STA {
            let (stations, mut env) = self.wifi();
            stations.link_lost(&mut env, idx, l);
        }
    }

    fn accept(&mut self, l: LinkId) {
        let link = &self.links[l];
        let ap = link.ends[AP];
        if link.dead
            || link.blackhole
            || !self.nodes[ap].up()
            || link.boots[AP] != self.nodes[ap].boots
        {
            self.links[l].dead = true;
            return;
        }
        let link = &mut self.links[l];
        link.open[AP] = true;
        link.connected[AP] = true;
        self.nodes[ap].links.push(l);
        let n = &mut self.nodes[ap];
        let local = n.clock.local(self.now);
        if let Some(node) = n.node.as_mut() {
            node.handle_connect(ConnId(l as u64), local, Direction::Ap);
            self.drain(ap);
        }
    }

    fn connected(&mut self, l: LinkId) {
        let link = &self.links[l];
        let sta = link.ends[STA];
        let ap = link.ends[AP];
        if link.boots[STA] != self.nodes[sta].boots || !self.nodes[sta].up() {
            return;
        }
        if !self.stations.is_linked(sta, ap, l) {
            return;
        }
        if link.dead || !link.open[AP] {
            // The SYN went unanswered: a failed attempt.
            self.links[l].dead = true;
            let (stations, mut env) = self.wifi();
            stations.handshake_failed(&mut env, sta, ap);
            return;
        }
        let link = &mut self.links[l];
        link.open[STA] = true;
        link.connected[STA] = true;
        self.nodes[sta].links.push(l);
        let n = &mut self.nodes[sta];
        let local = n.clock.local(self.now);
        if let Some(node) = n.node.as_mut() {
            node.handle_connect(ConnId(l as u64), local, Direction::Station);
            self.drain(sta);
        }
    }

    fn open_link(&mut self, sta: usize, ap: usize) -> LinkId {
        let lat = &self.sc.link.latency_ms;
        let latency = (lat.min + (lat.max - lat.min) * self.rng.unit()) * 1000.0;
        let bw = &self.sc.link.bandwidth_kbit;
        let kbit = bw.min + (bw.max - bw.min) * self.rng.unit();
        let bytes_per_sec = (kbit * 1000.0 / 8.0) as u64;
        let boots = [self.nodes[sta].boots, self.nodes[ap].boots];
        let l = self.links.len();
        self.links.push(Link::new(
            sta,
            ap,
            latency.round() as SimTime,
            bytes_per_sec,
            boots,
        ));
        let latency = self.links[l].latency;
        self.queue.push(self.now + latency, Ev::Accept { link: l });
        self.queue
            .push(self.now + 2 * latency, Ev::Connected { link: l });
        l
    }

    fn find_link(&self, a: usize, b: usize) -> Option<LinkId> {
        self.nodes[a].links.iter().copied().find(|&l| {
            let k = &self.links[l];
            !k.dead && (k.ends == [a, b] || k.ends == [b, a])
        })
    }

    // --- WiFi stations ---------------------------------------------------------------------

    /// The station model and what it may use of the engine, for one call.
    fn wifi(&mut self) -> (&mut Stations, station::Env<'_, Ev>) {
        let env = station::Env {
            now: self.now,
            sc: &self.sc,
            layout: &self.layout,
            rng: &mut self.rng,
            queue: &mut self.queue,
            nodes: &self.nodes,
        };
        (&mut self.stations, env)
    }

    /// Carries out what node `idx`'s station asked of the links.
    fn link_request(&mut self, idx: usize, request: LinkRequest) {
        match request {
            LinkRequest::Open { ap } => {
                let l = self.open_link(idx, ap);
                let (stations, mut env) = self.wifi();
                stations.linked(&mut env, idx, ap, l);
            }
            LinkRequest::Close { link } => {
                // The reconfiguration rule: the node drops its uplink to join unknown nodes.
                let local = self.nodes[idx].clock.local(self.now);
                if let Some(n) = self.nodes[idx].node.as_mut() {
                    n.close(ConnId(link as u64), local);
                }
                self.drain(idx);
            }
            LinkRequest::WifiLost { link } => {
                // The station's TCP dies with its WiFi; the AP side (if alive) finds out by timeout.
                let lk = &mut self.links[link];
                if lk.open[STA] {
                    lk.open[STA] = false;
                    lk.synced[STA] = false;
                    if !lk.open[AP] {
                        lk.dead = true;
                    }
                    self.nodes[idx].links.retain(|&x| x != link);
                    self.edge_removed(link);
                    let n = &mut self.nodes[idx];
                    let local = n.clock.local(self.now);
                    if let Some(node) = n.node.as_mut() {
                        node.handle_disconnect(ConnId(link as u64), local);
                    }
                    self.drain(idx);
                }
                let (stations, mut env) = self.wifi();
                stations.link_lost(&mut env, idx, link);
            }
        }
    }

    // --- scenario events -------------------------------------------------------------------

    fn scenario_event(&mut self, idx: usize) {
        let action = self.sc.events[idx].action.clone();
        if !matches!(action, Action::App { .. } | Action::Refuse { .. }) {
            self.close_epoch();
            self.epoch = Some((action.describe(), self.now));
        }
        let ix = |id: u32| id as usize - 1;
        match action {
            Action::Crash { node } => self.crash(ix(node)),
            Action::Restart { node } | Action::Join { node } => {
                let i = ix(node);
                if !self.nodes[i].up() {
                    let boot = self.nodes[i].boots + 1;
                    let at = self.now + self.rng.range(0, self.sc.wifi.boot_jitter.micros());
                    self.queue.push(at, Ev::Boot { node: i, boot });
                }
            }
            Action::Cut { a, b } => {
                if let Some(l) = self.find_link(ix(a), ix(b)) {
                    self.links[l].blackhole = true;
                    self.links[l].purge();
                    self.edge_removed(l);
                }
            }
            Action::Reset { a, b } => {
                if let Some(l) = self.find_link(ix(a), ix(b)) {
                    self.links[l].purge();
                    for side in [STA, AP] {
                        if self.links[l].open[side] {
                            self.queue.push(self.now, Ev::PeerClosed { link: l, side });
                        }
                    }
                }
            }
            Action::Partition { nodes } => {
                let idxs: Vec<usize> = nodes.into_iter().map(ix).collect();
                self.stations.partition(&idxs);
                for l in 0..self.links.len() {
                    let k = &self.links[l];
                    if !k.dead && !self.stations.same_group(k.ends[0], k.ends[1]) {
                        self.links[l].blackhole = true;
                        self.links[l].purge();
                        self.edge_removed(l);
                    }
                }
                let (stations, mut env) = self.wifi();
                stations.check_beacons(&mut env);
            }
            Action::Heal => self.stations.heal(),
            Action::Refuse { node, duration } => {
                self.stations.refuse(ix(node), self.now + duration.micros());
            }
            Action::App { node, data } => {
                let i = ix(node);
                let n = &mut self.nodes[i];
                let local = n.clock.local(self.now);
                if let Some(nd) = n.node.as_mut() {
                    self.app.on_action(
                        &mut NodeHandle {
                            id: node,
                            sim_now: self.now,
                            now: local,
                            node: nd,
                        },
                        &data,
                    );
                    self.drain(i);
                }
            }
        }
        self.prune_broadcast_expectations();
    }
}
