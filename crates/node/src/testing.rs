//! An in-memory mesh in virtual time, for tests (feature `testing`).
//!
//! [`Harness`] runs any number of real [`Node`]s against each other, the way quinn-proto's
//! `Pair` runs two endpoints: it carries the bytes each node transmits to the other end of its
//! link after the link's latency, fires each node's timers when they are due, and records every
//! event with the (global) time it happened. Nothing is random and nothing reads a clock, so a
//! test replays exactly.
//!
//! Each node has its own [`Clock`]: its local [`Instant`] is `offset + t + t * drift_ppm / 10^6`
//! for global time `t`, so mesh-time agreement is tested between clocks that really differ.
//! Links model a TCP connection between a station (the dialler) and an AP: per-direction
//! latency, in-order delivery, a close that reaches the peer one latency later, and failures
//! that nobody notices (a silent link, a crashed node) for the timeouts to find.
//!
//! This is a test tool, not the simulator: it has no bandwidth model, no WiFi scanning and no
//! reconnection (`pmesh-sim` does those).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use bytes::Bytes;

use crate::event::{ConnId, Direction, Event, Transmit};
use crate::node::Node;
use crate::plugin::Plugin;
use crate::time::Instant;

/// A node's local clock as a function of global virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Local time at global time zero, µs.
    pub offset_us: u64,
    /// Rate error in parts per million (positive: the clock runs fast). Must exceed -10^6.
    pub drift_ppm: i32,
}

impl Clock {
    /// A clock `offset_us` ahead of global time, without drift.
    pub fn offset(offset_us: u64) -> Self {
        Clock {
            offset_us,
            drift_ppm: 0,
        }
    }

    /// The local time at global time `global_us`.
    pub fn local(&self, global_us: u64) -> Instant {
        let drift = i128::from(global_us) * i128::from(self.drift_ppm) / 1_000_000;
        let local = i128::from(self.offset_us) + i128::from(global_us) + drift;
        Instant::from_micros(local.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// The earliest global time at which the local clock reads `local` or later.
    pub fn global_at_or_after(&self, local: Instant) -> u64 {
        let target = local.as_micros();
        if self.local(0).as_micros() >= target {
            return 0;
        }
        let rate = 1_000_000i128 + i128::from(self.drift_ppm);
        let mut g = ((i128::from(target) - i128::from(self.offset_us)) * 1_000_000 / rate)
            .clamp(0, i128::from(u64::MAX)) as u64;
        while self.local(g).as_micros() < target {
            g += 1;
        }
        while g > 0 && self.local(g - 1).as_micros() >= target {
            g -= 1;
        }
        g
    }
}

/// The state of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Carrying bytes both ways.
    Up,
    /// Closed by one side (or broken); the other side has been or will be told.
    Closed,
    /// Swallowing everything in both directions without either side noticing.
    Silent,
}

/// One TCP connection between two nodes. Its [`ConnId`] is the same on both sides.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// The dialling node (its side is [`Direction::Station`]).
    pub station: usize,
    /// The accepting node (its side is [`Direction::Ap`]).
    pub ap: usize,
    /// Connection id, on both nodes.
    pub conn: ConnId,
    /// One-way latency station → AP, µs.
    pub latency_to_ap: u64,
    /// One-way latency AP → station, µs.
    pub latency_to_station: u64,
    /// Current state.
    pub state: LinkState,
    /// Global time the link was closed or broken, µs.
    pub closed_at: Option<u64>,
}

impl Link {
    /// The node at the other end from `node`.
    pub fn peer_of(&self, node: usize) -> usize {
        if node == self.station {
            self.ap
        } else {
            self.station
        }
    }
}

#[derive(Debug)]
enum Delivery {
    Bytes { link: usize, to: usize, data: Bytes },
    Disconnect { link: usize, to: usize },
}

/// One node of the harness with its clock and what it reported.
pub struct SimNode<P: Plugin> {
    /// The node under test.
    pub node: Node<P>,
    /// Its local clock.
    pub clock: Clock,
    /// Every event it emitted, with the global time (µs) it was drained at.
    pub events: Vec<(u64, Event<P::Event>)>,
    /// Crashed nodes take no input and send nothing.
    pub crashed: bool,
}

/// Counters of the harness itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HarnessStats {
    /// Byte chunks delivered to a node.
    pub deliveries: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Byte chunks lost to a silent or closed link or a crashed node.
    pub lost: u64,
    /// Timer calls made.
    pub timeouts: u64,
}

/// Many nodes, their links and a virtual clock. See the module docs.
pub struct Harness<P: Plugin = ()> {
    now: u64,
    nodes: Vec<SimNode<P>>,
    links: Vec<Link>,
    queue: BTreeMap<(u64, u64), Delivery>,
    /// Each live node's next timer as (global time, node), and per node its entry there.
    timers: BTreeSet<(u64, usize)>,
    timer_of: Vec<Option<u64>>,
    seq: u64,
    steps_at_now: u32,
    stats: HarnessStats,
}

impl<P: Plugin> fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("now_us", &self.now)
            .field("nodes", &self.nodes.len())
            .field("links", &self.links)
            .field("in_flight", &self.queue.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<P: Plugin> fmt::Debug for SimNode<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNode")
            .field("id", &self.node.id())
            .field("clock", &self.clock)
            .field("events", &self.events.len())
            .field("crashed", &self.crashed)
            .finish()
    }
}

impl<P: Plugin> Default for Harness<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Steps taken at one instant before the harness declares a livelock (a timer that never
/// moves forward is a node bug).
const MAX_STEPS_AT_ONE_INSTANT: u32 = 1_000_000;

impl<P: Plugin> Harness<P> {
    /// An empty mesh at global time zero.
    pub fn new() -> Self {
        Harness {
            now: 0,
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BTreeMap::new(),
            timers: BTreeSet::new(),
            timer_of: Vec::new(),
            seq: 0,
            steps_at_now: 0,
            stats: HarnessStats::default(),
        }
    }

    /// Adds a node with its clock; returns its index.
    pub fn add_node(&mut self, node: Node<P>, clock: Clock) -> usize {
        self.nodes.push(SimNode {
            node,
            clock,
            events: Vec::new(),
            crashed: false,
        });
        self.timer_of.push(None);
        let i = self.nodes.len() - 1;
        self.refresh_timer(i);
        i
    }

    /// Opens a link: `station` dials `ap`; both learn of it now. Same latency both ways.
    pub fn connect(&mut self, station: usize, ap: usize, latency: Duration) -> usize {
        self.connect_asymmetric(station, ap, latency, latency)
    }

    /// Opens a link with a latency per direction.
    pub fn connect_asymmetric(
        &mut self,
        station: usize,
        ap: usize,
        to_ap: Duration,
        to_station: Duration,
    ) -> usize {
        assert_ne!(station, ap, "a node cannot link to itself");
        let link = self.links.len();
        let conn = ConnId(link as u64 + 1);
        self.links.push(Link {
            station,
            ap,
            conn,
            latency_to_ap: to_ap.as_micros() as u64,
            latency_to_station: to_station.as_micros() as u64,
            state: LinkState::Up,
            closed_at: None,
        });
        for (node, dir) in [(station, Direction::Station), (ap, Direction::Ap)] {
            if !self.nodes[node].crashed {
                let now = self.local_now(node);
                self.nodes[node].node.handle_connect(conn, now, dir);
                self.flush(node);
            }
        }
        link
    }

    /// Breaks a link so that both sides notice at once (a WiFi disassociation both see).
    pub fn break_link(&mut self, link: usize) {
        if self.links[link].state == LinkState::Closed {
            return;
        }
        self.links[link].state = LinkState::Closed;
        self.links[link].closed_at = Some(self.now);
        let l = self.links[link];
        for to in [l.station, l.ap] {
            self.schedule(self.now, Delivery::Disconnect { link, to });
        }
    }

    /// Makes a link swallow everything from now on, unnoticed by both sides.
    pub fn silence_link(&mut self, link: usize) {
        if self.links[link].state == LinkState::Up {
            self.links[link].state = LinkState::Silent;
        }
    }

    /// Crashes a node: it takes no more input and sends nothing; its peers are not told.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].crashed = true;
        self.refresh_timer(node);
        for l in self
            .links
            .iter_mut()
            .filter(|l| l.station == node || l.ap == node)
        {
            if l.state == LinkState::Up {
                l.state = LinkState::Silent;
            }
        }
    }

    /// Global virtual time, µs since the start.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// Global virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    /// Node `i`'s local clock now.
    pub fn local_now(&self, i: usize) -> Instant {
        self.nodes[i].clock.local(self.now)
    }

    /// Node `i`'s mesh time now.
    pub fn mesh_time(&self, i: usize) -> u32 {
        self.nodes[i].node.mesh_time(self.local_now(i))
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node<P> {
        &self.nodes[i].node
    }

    /// Node `i` with its clock and events.
    pub fn sim_node(&self, i: usize) -> &SimNode<P> {
        &self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True without nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The events node `i` emitted so far, with their global times (µs).
    pub fn events(&self, i: usize) -> &[(u64, Event<P::Event>)] {
        &self.nodes[i].events
    }

    /// Takes node `i`'s recorded events.
    pub fn take_events(&mut self, i: usize) -> Vec<(u64, Event<P::Event>)> {
        core::mem::take(&mut self.nodes[i].events)
    }

    /// All links ever opened, by index.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The harness's counters.
    pub fn stats(&self) -> HarnessStats {
        self.stats
    }

    /// Calls `f` with node `i` and its local time now (to send, measure, reconfigure), then
    /// carries out whatever the node transmitted.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node<P>, Instant) -> R) -> R {
        let now = self.local_now(i);
        let r = f(&mut self.nodes[i].node, now);
        self.flush(i);
        r
    }

    /// Runs every delivery and timer due up to and including global time `until_us`.
    pub fn run_until_us(&mut self, until_us: u64) {
        while self.step(until_us) {}
        self.now = self.now.max(until_us);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until_us(self.now + d.as_micros() as u64);
    }

    /// Runs until `done` holds (checked after every step) or `limit` of virtual time passed;
    /// returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit.as_micros() as u64;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(end) {
                self.now = end;
                return done(self);
            }
        }
    }

    /// Does the next thing due at or before `until_us`; false when nothing is.
    fn step(&mut self, until_us: u64) -> bool {
        let next_delivery = self.queue.keys().next().map(|&(at, _)| at);
        let next_timer = self.next_timer();
        let next = match (next_delivery, next_timer) {
            (Some(d), Some((t, _))) => d.min(t),
            (Some(d), None) => d,
            (None, Some((t, _))) => t,
            (None, None) => return false,
        };
        if next > until_us {
            return false;
        }
        self.advance_to(next);
        if next_delivery == Some(next) {
            let (_, delivery) = self.queue.pop_first().expect("peeked");
            self.deliver(delivery);
        } else if let Some((_, i)) = next_timer {
            self.stats.timeouts += 1;
            let now = self.local_now(i);
            self.nodes[i].node.handle_timeout(now);
            self.flush(i);
        }
        true
    }

    fn advance_to(&mut self, t: u64) {
        if t > self.now {
            self.now = t;
            self.steps_at_now = 0;
        } else {
            self.steps_at_now += 1;
            assert!(
                self.steps_at_now < MAX_STEPS_AT_ONE_INSTANT,
                "livelock at {} µs: something fires without moving forward",
                self.now
            );
        }
    }

    /// The earliest due timer over all live nodes, as (global time, node).
    fn next_timer(&self) -> Option<(u64, usize)> {
        self.timers.first().map(|&(t, i)| (t.max(self.now), i))
    }

    /// Re-reads node `i`'s deadline (after any input to it).
    fn refresh_timer(&mut self, i: usize) {
        if let Some(old) = self.timer_of[i].take() {
            self.timers.remove(&(old, i));
        }
        let n = &self.nodes[i];
        if n.crashed {
            return;
        }
        if let Some(local) = n.node.poll_timeout() {
            let at = n.clock.global_at_or_after(local);
            self.timers.insert((at, i));
            self.timer_of[i] = Some(at);
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Bytes { link, to, data } => {
                let state = self.links[link].state;
                if state == LinkState::Silent || self.nodes[to].crashed {
                    self.stats.lost += 1;
                    return;
                }
                self.stats.deliveries += 1;
                self.stats.bytes += data.len() as u64;
                let now = self.local_now(to);
                self.nodes[to]
                    .node
                    .handle_bytes(self.links[link].conn, now, &data);
                self.flush(to);
            }
            Delivery::Disconnect { link, to } => {
                if self.nodes[to].crashed {
                    return;
                }
                let now = self.local_now(to);
                self.nodes[to]
                    .node
                    .handle_disconnect(self.links[link].conn, now);
                self.flush(to);
            }
        }
    }

    fn schedule(&mut self, at: u64, delivery: Delivery) {
        self.seq += 1;
        self.queue.insert((at, self.seq), delivery);
    }

    /// Carries out node `i`'s transmits and records its events.
    fn flush(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].node.poll_transmit() {
            match t {
                Transmit::Send { conn, data } => {
                    let link = (conn.0 - 1) as usize;
                    let l = self.links[link];
                    if l.state != LinkState::Up {
                        self.stats.lost += 1;
                        continue;
                    }
                    let (to, latency) = if i == l.station {
                        (l.ap, l.latency_to_ap)
                    } else {
                        (l.station, l.latency_to_station)
                    };
                    self.schedule(self.now + latency, Delivery::Bytes { link, to, data });
                }
                Transmit::Close { conn, .. } => {
                    let link = (conn.0 - 1) as usize;
                    let l = self.links[link];
                    if l.state == LinkState::Closed {
                        continue;
                    }
                    self.links[link].state = LinkState::Closed;
                    self.links[link].closed_at = Some(self.now);
                    let (to, latency) = if i == l.station {
                        (l.ap, l.latency_to_ap)
                    } else {
                        (l.station, l.latency_to_station)
                    };
                    // Bytes already in flight to the peer arrive first (same latency, earlier
                    // sequence number); a silent link never carries the FIN either.
                    if l.state == LinkState::Up {
                        self.schedule(self.now + latency, Delivery::Disconnect { link, to });
                    }
                }
            }
        }
        let now = self.now;
        while let Some(e) = self.nodes[i].node.poll_event() {
            self.nodes[i].events.push((now, e));
        }
        self.refresh_timer(i);
    }
}
