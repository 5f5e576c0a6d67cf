//! The WiFi station model: painlessMesh's `StationScan` (painlessMeshSTA.cpp) and the radio it
//! runs on, for every simulated node.
//!
//! A station scans (`scan_time`), keeps the APs in range that are up, on its side of any
//! partition, not already in its tree (it has a route to them) and not blocklisted, ranks them
//! by a noisy RSSI, strongest first, and works down that list: associate (`assoc_time`; refused
//! when the AP already has `max_stations` stations or is gone), dial TCP (refused while the AP
//! refuses connects, or with probability `connect_fail`; retried after each delay of
//! `tcp_retry`, then the AP is blocklisted for `blocklist` and WiFi reconnects after
//! `wifi_reconnect`). Linked, it rescans every `connected_scan_interval` (half `scan_interval`
//! while a root is expected and not in its tree), and when a rescan finds APs outside its tree
//! it drops its uplink with painlessMesh's probability (the reconfiguration rule, driven by the
//! `stability` that `layout::syncLayout` keeps). A link that ends, or an AP whose beacon is
//! gone (`beacon_timeout` after it crashed or a partition put it out of reach), sends the
//! station to the next AP of its last scan, as the reference's `connectToAP()` does.
//!
//! **Interface.** The engine owns time, the event queue, the links and the nodes. It lends
//! what a station call may use as an [`Env`] (the clock, the scenario, the layout, the shared
//! random stream, the queue, and a read-only [`NodeView`] of the nodes), delivers the timers
//! the stations schedule ([`WifiEvent`]) back to [`Stations::on_event`], tells the stations
//! what happened to their nodes and links (boot, crash, topology changes, a link lost, a
//! handshake failed), and carries out the [`LinkRequest`]s they return: the station model never
//! opens, closes or breaks a connection itself.
//!
//! Determinism: the calls draw from the engine's random stream and push on its queue in
//! exactly the order the engine would have inline, so a scenario's report is unchanged by
//! where this code lives.

use crate::clock::{SEC, SimTime};
use crate::link::LinkId;
use crate::queue::EventQueue;
use crate::report::WifiReport;
use crate::rng::SimRng;
use crate::scenario::Scenario;
use crate::topology::Layout;

/// A station timer: scheduled on the engine's queue, handed back to [`Stations::on_event`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum WifiEvent {
    /// A step of node `node`'s station; ignored unless `epoch_gen` is still the station's.
    Step {
        node: usize,
        epoch_gen: u64,
        step: StaStep,
    },
    /// Does the station of `node` (in boot `boot`) still hear the beacon of `ap`?
    BeaconCheck { node: usize, boot: u32, ap: usize },
}

impl WifiEvent {
    /// The node whose station the event is for.
    pub(crate) fn node(&self) -> usize {
        match *self {
            WifiEvent::Step { node, .. } | WifiEvent::BeaconCheck { node, .. } => node,
        }
    }
}

/// A step of a station's connect sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StaStep {
    Scan,
    ScanDone,
    AssocDone { ap: usize },
    Dial { ap: usize, attempt: u32 },
}

/// What a station asks the engine to do to the links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkRequest {
    /// Open a TCP connection from the station to `ap`; report it with [`Stations::linked`].
    Open { ap: usize },
    /// The station's node closes its uplink connection `link` (the reconfiguration rule).
    Close { link: LinkId },
    /// The AP's beacon is gone: the station's end of `link` dies with its WiFi (the AP side
    /// finds out by timeout); then report it with [`Stations::link_lost`].
    WifiLost { link: LinkId },
}

/// What the station model reads of the engine's nodes (indexes, not ids).
pub(crate) trait NodeView {
    /// Whether node `idx` is up.
    fn up(&self, idx: usize) -> bool;
    /// Node `idx`'s boot count.
    fn boots(&self, idx: usize) -> u32;
    /// Node `idx`'s id.
    fn id(&self, idx: usize) -> u32;
    /// Whether node `idx` (up) has a route to node `id`: the reference's "already in my tree".
    fn routes_to(&self, idx: usize, id: u32) -> bool;
    /// Nodes in the mesh as node `idx` knows it.
    fn mesh_size(&self, idx: usize) -> usize;
}

/// What the engine lends the station model for one call.
pub(crate) struct Env<'a, E> {
    /// Simulated time now.
    pub now: SimTime,
    /// The scenario (`wifi`, `link.connect_fail`, `roots`).
    pub sc: &'a Scenario,
    /// Who hears whom, positions, the AP station limit.
    pub layout: &'a Layout,
    /// The engine's random stream (RSSI noise, refused connects, the reconfiguration draw).
    pub rng: &'a mut SimRng,
    /// The engine's event queue (station timers go on it as [`WifiEvent`]s).
    pub queue: &'a mut EventQueue<E>,
    /// The nodes.
    pub nodes: &'a dyn NodeView,
}

/// Where a station's uplink stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Uplink {
    None,
    Associating { ap: usize },
    Dialing { ap: usize },
    Linked { ap: usize, link: LinkId },
}

impl Uplink {
    fn ap(self) -> Option<usize> {
        match self {
            Uplink::None => None,
            Uplink::Associating { ap } | Uplink::Dialing { ap } | Uplink::Linked { ap, .. } => {
                Some(ap)
            }
        }
    }
}

/// A node's WiFi station (painlessMesh's `StationScan` plus the radio).
#[derive(Debug)]
struct Station {
    uplink: Uplink,
    epoch_gen: u64,
    candidates: Vec<usize>,
    blocked: Vec<(usize, SimTime)>,
    /// painlessMesh's `stability` (per node, volatile): +25 per NODE_SYNC that changed nothing
    /// and per scan that found no unknown AP, halved at every topology change (`syncLayout`).
    stability: u32,
    /// The node's `topology_changes` counter when `stability` last took its changes into account.
    changes_seen: u64,
}

impl Station {
    fn new() -> Self {
        Station {
            uplink: Uplink::None,
            epoch_gen: 0,
            candidates: Vec::new(),
            blocked: Vec::new(),
            stability: 0,
            changes_seen: 0,
        }
    }
}

/// The WiFi layer of every node: its station, the stations associated with its soft AP, until
/// when it refuses TCP connects, and the partition group it is in.
#[derive(Debug)]
pub(crate) struct Stations {
    stations: Vec<Station>,
    /// Stations holding a slot of each node's soft AP (from association to disconnect).
    ap_clients: Vec<u32>,
    refuse_until: Vec<SimTime>,
    /// Nodes in different groups do not hear each other (a partition).
    groups: Vec<u32>,
    report: WifiReport,
}

impl Stations {
    /// The WiFi layer of `nodes` nodes, all down, none partitioned.
    pub(crate) fn new(nodes: usize) -> Self {
        Stations {
            stations: (0..nodes).map(|_| Station::new()).collect(),
            ap_clients: vec![0; nodes],
            refuse_until: vec![0; nodes],
            groups: vec![0; nodes],
            report: WifiReport::default(),
        }
    }

    /// The WiFi counters so far.
    pub(crate) fn report(&self) -> &WifiReport {
        &self.report
    }

    // --- what happens to the nodes ---------------------------------------------------------

    /// Node `idx` booted: a fresh station, no station on its AP. Its first scan starts with
    /// [`Stations::start`].
    pub(crate) fn boot(&mut self, idx: usize) {
        self.stations[idx] = Station::new();
        self.ap_clients[idx] = 0;
    }

    /// Starts node `idx`'s station: its first scan, now.
    pub(crate) fn start<E: From<WifiEvent>>(&mut self, env: &mut Env<'_, E>, idx: usize) {
        self.schedule(env, idx, 0, StaStep::Scan);
    }

    /// Node `idx` crashed (and is down): the slot it held on its AP is freed, the stations on
    /// its own AP lose its beacon after `beacon_timeout`, and its station stops.
    pub(crate) fn crashed<E: From<WifiEvent>>(&mut self, env: &mut Env<'_, E>, idx: usize) {
        if let Uplink::Dialing { ap } | Uplink::Linked { ap, .. } = self.stations[idx].uplink {
            self.ap_clients[ap] = self.ap_clients[ap].saturating_sub(1);
        }
        for s in 0..self.stations.len() {
            if env.nodes.up(s) && self.stations[s].uplink.ap() == Some(idx) {
                let boot = env.nodes.boots(s);
                env.queue.push(
                    env.now + env.sc.wifi.beacon_timeout.micros(),
                    WifiEvent::BeaconCheck {
                        node: s,
                        boot,
                        ap: idx,
                    }
                    .into(),
                );
            }
        }
        let sta = &mut self.stations[idx];
        *sta = Station {
            epoch_gen: sta.epoch_gen + 1,
            ..Station::new()
        };
        self.ap_clients[idx] = 0;
    }

    /// Node `idx`'s `topology_changes` counter is now `changes`: `layout::syncLayout` halves
    /// `stability` at every topology change the node sees (a NODE_SYNC that changed a
    /// neighbour's tree, or a synced connection dropped).
    pub(crate) fn topology_changes(&mut self, idx: usize, changes: u64) {
        let sta = &mut self.stations[idx];
        let halvings = changes - sta.changes_seen;
        sta.changes_seen = changes;
        sta.stability = sta
            .stability
            .checked_shr(halvings.min(32) as u32)
            .unwrap_or(0);
    }

    /// Node `idx` handled `unchanged` NODE_SYNCs that changed nothing: painlessMesh's
    /// stability grows by 25 for each.
    pub(crate) fn unchanged_syncs(&mut self, idx: usize, unchanged: u32) {
        let sta = &mut self.stations[idx];
        sta.stability = (sta.stability + 25 * unchanged).min(1000);
    }

    // --- what happens to the links ---------------------------------------------------------

    /// Whether node `idx`'s station is linked to `ap` over `link`.
    pub(crate) fn is_linked(&self, idx: usize, ap: usize, link: LinkId) -> bool {
        self.stations[idx].uplink == (Uplink::Linked { ap, link })
    }

    /// The engine opened `link` for a [`LinkRequest::Open`]: the station is linked and
    /// rescans after `connected_scan_interval`.
    pub(crate) fn linked<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        ap: usize,
        link: LinkId,
    ) {
        self.stations[idx].uplink = Uplink::Linked { ap, link };
        self.stations[idx].epoch_gen += 1; // no station timer while linked, until the next scan
        let rescan = env.sc.wifi.connected_scan_interval.micros();
        self.schedule(env, idx, rescan, StaStep::Scan);
    }

    /// The station's TCP handshake to `ap` went unanswered: a failed attempt, retried as a
    /// refused dial is.
    pub(crate) fn handshake_failed<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        ap: usize,
    ) {
        self.report.tcp_failures += 1;
        self.stations[idx].uplink = Uplink::Dialing { ap };
        self.dial_failed(env, idx, ap, 0);
    }

    /// Node `idx`'s connection `l` ended on its station side. If it was the uplink,
    /// painlessMesh drops WiFi too, and its STA_DISCONNECTED handler calls `connectToAP()`,
    /// which takes the next AP of the last scan (or, with none left, scans again).
    pub(crate) fn link_lost<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        l: LinkId,
    ) {
        if let Uplink::Linked { ap, link } = self.stations[idx].uplink
            && link == l
        {
            self.stations[idx].uplink = Uplink::None;
            self.ap_clients[ap] = self.ap_clients[ap].saturating_sub(1);
            if env.nodes.up(idx) {
                self.reconnect(env, idx);
            }
        }
    }

    // --- the radio environment -------------------------------------------------------------

    /// Puts the nodes at `idxs` in a new partition group: they no longer hear the others.
    pub(crate) fn partition(&mut self, idxs: &[usize]) {
        let g = self.groups.iter().copied().max().unwrap_or(0) + 1;
        for &i in idxs {
            self.groups[i] = g;
        }
    }

    /// Ends every partition.
    pub(crate) fn heal(&mut self) {
        self.groups.fill(0);
    }

    /// Whether nodes `a` and `b` are in the same partition group.
    pub(crate) fn same_group(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b]
    }

    /// Stations whose AP is now in another group check its beacon after `beacon_timeout`.
    pub(crate) fn check_beacons<E: From<WifiEvent>>(&mut self, env: &mut Env<'_, E>) {
        let at = env.now + env.sc.wifi.beacon_timeout.micros();
        for s in 0..self.stations.len() {
            if let Some(ap) = self.stations[s].uplink.ap()
                && self.groups[s] != self.groups[ap]
            {
                let boot = env.nodes.boots(s);
                env.queue
                    .push(at, WifiEvent::BeaconCheck { node: s, boot, ap }.into());
            }
        }
    }

    /// Node `idx`'s AP refuses TCP connects until `until`.
    pub(crate) fn refuse(&mut self, idx: usize, until: SimTime) {
        self.refuse_until[idx] = until;
    }

    /// Whether station `idx` can see the AP of node `ap` now: up, and not cut off by a
    /// partition (the layout says whether it is in range at all).
    fn visible(&self, nodes: &dyn NodeView, idx: usize, ap: usize) -> bool {
        nodes.up(ap) && self.groups[ap] == self.groups[idx]
    }

    // --- the station's timers --------------------------------------------------------------

    /// A station timer fired; what the engine must do to the links, if anything.
    pub(crate) fn on_event<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        ev: WifiEvent,
    ) -> Option<LinkRequest> {
        match ev {
            WifiEvent::Step {
                node,
                epoch_gen,
                step,
            } => {
                if self.stations[node].epoch_gen == epoch_gen && env.nodes.up(node) {
                    self.step(env, node, step)
                } else {
                    None
                }
            }
            WifiEvent::BeaconCheck { node, boot, ap } => self.beacon_check(env, node, boot, ap),
        }
    }

    fn schedule<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        delay: SimTime,
        step: StaStep,
    ) {
        let sta = &mut self.stations[idx];
        sta.epoch_gen += 1;
        let epoch_gen = sta.epoch_gen;
        env.queue.push(
            env.now + delay,
            WifiEvent::Step {
                node: idx,
                epoch_gen,
                step,
            }
            .into(),
        );
    }

    fn step<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        step: StaStep,
    ) -> Option<LinkRequest> {
        match step {
            StaStep::Scan => {
                let scan_time = env.sc.wifi.scan_time.micros();
                self.schedule(env, idx, scan_time, StaStep::ScanDone);
                None
            }
            StaStep::ScanDone => self.scan_done(env, idx),
            StaStep::AssocDone { ap } => self.assoc_done(env, idx, ap),
            StaStep::Dial { ap, attempt } => self.dial(env, idx, ap, attempt),
        }
    }

    /// A scan finished: remember its APs (`connectToAP` works from this list until the next
    /// scan), then rescan, reconsider a linked uplink, or try the first AP.
    fn scan_done<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
    ) -> Option<LinkRequest> {
        let (sc, nodes) = (env.sc, env.nodes);
        let w = &sc.wifi;
        self.report.scans += 1;
        let now = env.now;
        self.stations[idx].blocked.retain(|&(_, until)| until > now);
        let aps = self.scan(env, idx);
        let connected = matches!(self.stations[idx].uplink, Uplink::Linked { .. });
        // `isRooted(tree)`: some node in my tree announces root. The scenario says which
        // nodes do, so a route lookup answers it without cloning the tree.
        let me = nodes.id(idx);
        let rooted = connected && sc.roots.iter().any(|&r| r == me || nodes.routes_to(idx, r));
        let contains_root = w.contains_root.unwrap_or(!sc.roots.is_empty());
        // Connected: slow rescans, unless a root is expected and not in sight (spec §4).
        let connected_next = if contains_root && !rooted {
            w.scan_interval.micros() / 2
        } else {
            w.connected_scan_interval.micros()
        };
        // A station that loses its link later (reconfiguration, a closed connection, a lost
        // beacon) goes straight to the next AP on this list, unknown at the time of the scan
        // (the reference's STA_DISCONNECTED handler calls `connectToAP()`, not a new scan).
        self.stations[idx].candidates = aps;
        if self.stations[idx].candidates.is_empty() {
            let sta = &mut self.stations[idx];
            sta.stability = (sta.stability + 25).min(1000);
            let next = if connected {
                connected_next
            } else {
                w.scan_interval.micros()
            };
            self.schedule(env, idx, next, StaStep::Scan);
            None
        } else if connected {
            self.reconfigure_or_rescan(env, idx, rooted, connected_next)
        } else {
            self.try_next_candidate(env, idx);
            None
        }
    }

    /// The APs a finished scan offers station `idx`, best first: in range, visible, not
    /// already in its tree, not blocklisted; ranked by a noisy RSSI when positions are known
    /// (painlessMesh sorts its scan by RSSI).
    fn scan<E>(&self, env: &mut Env<'_, E>, idx: usize) -> Vec<usize> {
        let (layout, nodes) = (env.layout, env.nodes);
        let mut aps = Vec::new();
        for &ap in &layout.visible[idx] {
            let ap = ap as usize;
            if !self.visible(nodes, idx, ap) {
                continue;
            }
            if nodes.routes_to(idx, nodes.id(ap)) {
                continue; // already in my tree
            }
            if self.stations[idx].blocked.iter().any(|&(b, _)| b == ap) {
                continue;
            }
            aps.push(ap);
        }
        if let Some(pos) = &layout.positions
            && aps.len() > 1
        {
            let me = pos[idx];
            let sigma = env.sc.wifi.rssi_noise_db;
            let mut ranked: Vec<(f64, usize)> = aps
                .iter()
                .map(|&ap| {
                    let d = (me.0 - pos[ap].0).hypot(me.1 - pos[ap].1).max(1.0);
                    (-40.0 - 27.0 * d.log10() + sigma * env.rng.normal(), ap)
                })
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            aps = ranked.into_iter().map(|(_, ap)| ap).collect();
        }
        aps
    }

    /// A linked station's scan found APs outside its tree: painlessMesh's reconfiguration
    /// rule drops the uplink (to join the unknown nodes) with a chance that grows with
    /// `stability`; otherwise the station rescans after `rescan`.
    fn reconfigure_or_rescan<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        rooted: bool,
        rescan: SimTime,
    ) -> Option<LinkRequest> {
        let (sc, nodes) = (env.sc, env.nodes);
        let contains_root = sc.wifi.contains_root.unwrap_or(!sc.roots.is_empty());
        let mesh_size = nodes.mesh_size(idx) as u64;
        let stability = u64::from(self.stations[idx].stability);
        // With `setContainsRoot` the chance is stability/1000; without it the reference
        // divides by 2 × (1 + mesh size): "slower when part of a bigger network" (integer
        // division, as in `connectToAP`).
        let prob = if contains_root {
            stability
        } else {
            stability / (2 * (1 + mesh_size))
        };
        if sc.wifi.reconfigure && !rooted && env.rng.below(1000) < prob {
            self.report.reconfigurations += 1;
            self.stations[idx].stability = 0;
            match self.stations[idx].uplink {
                Uplink::Linked { link, .. } => Some(LinkRequest::Close { link }),
                _ => None,
            }
        } else {
            self.schedule(env, idx, rescan, StaStep::Scan);
            None
        }
    }

    fn assoc_done<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        ap: usize,
    ) -> Option<LinkRequest> {
        if self.stations[idx].uplink != (Uplink::Associating { ap }) {
            return None;
        }
        if !self.visible(env.nodes, idx, ap) || self.ap_clients[ap] >= env.layout.max_stations {
            self.report.association_failures += 1;
            self.stations[idx].uplink = Uplink::None;
            self.try_next_candidate(env, idx);
            return None;
        }
        self.report.associations += 1;
        self.ap_clients[ap] += 1;
        self.stations[idx].uplink = Uplink::Dialing { ap };
        self.dial(env, idx, ap, 0)
    }

    fn dial<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        ap: usize,
        attempt: u32,
    ) -> Option<LinkRequest> {
        if self.stations[idx].uplink != (Uplink::Dialing { ap }) {
            return None;
        }
        let connect_fail = env.sc.link.connect_fail;
        let refused = !self.visible(env.nodes, idx, ap)
            || self.refuse_until[ap] > env.now
            || (connect_fail > 0.0 && env.rng.unit() < connect_fail);
        if refused {
            self.report.tcp_failures += 1;
            self.dial_failed(env, idx, ap, attempt);
            None
        } else {
            Some(LinkRequest::Open { ap })
        }
    }

    fn try_next_candidate<E: From<WifiEvent>>(&mut self, env: &mut Env<'_, E>, idx: usize) {
        let sc = env.sc;
        let w = &sc.wifi;
        let (scan_interval, assoc) = (w.scan_interval.micros(), w.assoc_time.micros());
        let sta = &mut self.stations[idx];
        if sta.candidates.is_empty() {
            // Every candidate of the last scan failed: look again soon.
            self.schedule(env, idx, SEC.min(scan_interval), StaStep::Scan);
            return;
        }
        let ap = sta.candidates.remove(0);
        sta.uplink = Uplink::Associating { ap };
        self.schedule(env, idx, assoc, StaStep::AssocDone { ap });
    }

    fn dial_failed<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        ap: usize,
        attempt: u32,
    ) {
        let sc = env.sc;
        let w = &sc.wifi;
        if let Some(d) = w.tcp_retry.get(attempt as usize) {
            let d = d.micros();
            self.schedule(
                env,
                idx,
                d,
                StaStep::Dial {
                    ap,
                    attempt: attempt + 1,
                },
            );
        } else {
            // Retries exhausted: blocklist the AP's node, reconnect WiFi later.
            self.report.blocklisted += 1;
            let until = env.now + w.blocklist.micros();
            let sta = &mut self.stations[idx];
            sta.blocked.push((ap, until));
            sta.uplink = Uplink::None;
            self.ap_clients[ap] = self.ap_clients[ap].saturating_sub(1);
            let d = w.wifi_reconnect.micros();
            self.schedule(env, idx, d, StaStep::Scan);
        }
    }

    /// `connectToAP()` outside a scan: the next AP left on the last scan's list, else a scan.
    fn reconnect<E: From<WifiEvent>>(&mut self, env: &mut Env<'_, E>, idx: usize) {
        if self.stations[idx].candidates.is_empty() {
            self.schedule(env, idx, 0, StaStep::Scan);
        } else {
            self.try_next_candidate(env, idx);
        }
    }

    fn beacon_check<E: From<WifiEvent>>(
        &mut self,
        env: &mut Env<'_, E>,
        idx: usize,
        boot: u32,
        ap: usize,
    ) -> Option<LinkRequest> {
        if !env.nodes.up(idx)
            || env.nodes.boots(idx) != boot
            || self.stations[idx].uplink.ap() != Some(ap)
        {
            return None;
        }
        if self.visible(env.nodes, idx, ap) {
            return None;
        }
        self.report.beacon_losses += 1;
        match self.stations[idx].uplink {
            Uplink::Linked { link, .. } => Some(LinkRequest::WifiLost { link }),
            uplink => {
                if matches!(uplink, Uplink::Dialing { .. }) {
                    self.ap_clients[ap] = self.ap_clients[ap].saturating_sub(1);
                }
                self.stations[idx].uplink = Uplink::None;
                self.reconnect(env, idx);
                None
            }
        }
    }
}
