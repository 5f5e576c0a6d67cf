//! What the demo's simulated nodes run, and what the demo reads from them.
//!
//! Every node runs the real OTA plugin ([`pmesh_ota::Ota`], over in-memory flash that survives
//! its crashes) beside the real status plugin ([`StatusPlugin`]: an EnhancedStatusPackage 604
//! sent SINGLE to the gateway every 30 s, as `pmesh node --status-every` does). From the
//! gateway's (node 1) events the application keeps what a real gateway hands its MQTT bridge:
//! user messages processed there and packages no plugin handled (the status reports among them).
//!
//! Firmware campaigns (the demo's own rollout and those started over MQTT) are offered by the
//! gateway's OTA plugin; their progress is read from the receivers' own OTA events and turned
//! into the bridge's [`OtaProgress`] reports.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use pmesh_bridge::{OtaMode, OtaProgress};
use pmesh_node::{Event, Instant, StatusConfig, StatusPlugin, StatusTarget};
use pmesh_ota::{
    ApplyPolicy, MemorySink, MemorySource, MemoryStore, Mode, Offer, Ota, OtaConfig, OtaEvent,
    Refusal, TransferId,
};
use pmesh_proto::Envelope;
use pmesh_sim::app::{Boot, NodeHandle, SimApp};
use pmesh_sim::clock::{SEC, SimTime};

/// The gateway: node 1 of the simulation (the root of the mesh).
pub const GATEWAY: u32 = 1;
/// Role of every node but the gateway (what campaigns must target).
pub const ROLE: &str = "sensor";
/// Hardware of every node but the gateway.
pub const HARDWARE: &str = "ESP32";
/// Firmware version the nodes report before any update.
pub const FIRMWARE: &str = "pmesh-demo-1.0";
/// Largest image a campaign may carry: every simulated node keeps its flash in memory.
pub const MAX_IMAGE: u64 = 4 << 20;
/// Most captured messages and packages held between two reads (oldest dropped beyond).
const INBOX_CAP: usize = 4096;
/// A campaign that made no progress for this long (simulated) ends; the nodes still short of
/// the image are reported failed.
const STALL: SimTime = 120 * SEC;

/// Something the gateway received that its bridge is told about.
#[derive(Clone, Debug)]
pub enum Captured {
    /// A user message (SINGLE to the gateway, or a BROADCAST).
    Message {
        /// Origin node.
        from: u32,
        /// Payload.
        msg: Vec<u8>,
        /// BROADCAST (true) or SINGLE.
        broadcast: bool,
    },
    /// A package no plugin handled (status reports 604/203/204 among them).
    Package(Envelope),
}

/// The gateway's captures, kept by the application until the runner takes them.
#[derive(Debug, Default)]
pub struct Inbox {
    items: VecDeque<Captured>,
    /// Items dropped because the inbox was full.
    pub dropped: u64,
}

impl Inbox {
    fn push(&mut self, c: Captured) {
        if self.items.len() >= INBOX_CAP {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(c);
    }
}

/// The plugin every simulated node runs: the OTA plugin beside the status plugin (none on the
/// gateway).
pub type DemoNode = (Ota<MemorySink, MemoryStore>, Option<StatusPlugin<OtaEvent>>);

/// Hands a node's counters to its status plugin (reported as msgRx/msgTx/msgDrop).
pub fn set_node_stats(node: &mut DemoNode, stats: pmesh_node::NodeStats) {
    if let Some(s) = &mut node.1 {
        s.set_node_stats(stats);
    }
}

/// Firmware bytes a node put on its links as a distributor: pmesh CHUNK frames and classic
/// chunks served.
pub fn ota_bytes_sent(node: &DemoNode) -> u64 {
    let ota = &node.0;
    ota.pmesh().stats().data_bytes_sent + ota.classic_stats().bytes_served
}

/// A firmware campaign to start.
#[derive(Clone, Debug)]
pub struct CampaignSpec {
    /// Id reported to the bridge.
    pub id: u64,
    /// How the firmware travels.
    pub mode: OtaMode,
    /// The image.
    pub image: Vec<u8>,
    /// Compressed transfer.
    pub compressed: bool,
    /// Version text (pmesh manifests).
    pub version: String,
}

/// Where one node is in a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Expected to update; nothing heard yet.
    Waiting,
    /// Receiving: chunks held, chunks in the image.
    Receiving(u32, u32),
    /// Installed the image (or already ran it).
    Done,
    /// Failed or refused.
    Failed,
}

/// A campaign the gateway runs.
#[derive(Debug)]
pub struct Campaign {
    /// Id reported to the bridge.
    pub id: u64,
    /// Mode.
    pub mode: OtaMode,
    /// Image bytes.
    pub image_bytes: u64,
    /// The transfer on the mesh.
    pub transfer: TransferId,
    /// MD5 of the served bytes (classic cancel).
    served_md5: String,
    /// Per target.
    pub nodes: BTreeMap<u32, NodeState>,
    /// Simulated time of the offer.
    pub started: SimTime,
    /// Simulated time of the last progress.
    last_progress: SimTime,
    /// Simulated time it ended, and whether it was aborted.
    pub ended: Option<(SimTime, bool)>,
}

impl Campaign {
    /// Targets that installed the image.
    pub fn done(&self) -> usize {
        self.count(|s| s == NodeState::Done)
    }

    /// Targets that failed.
    pub fn failed(&self) -> usize {
        self.count(|s| s == NodeState::Failed)
    }

    /// Chunks the targets hold and chunks they need in all (a target that has not reported
    /// yet counts as holding none of `chunks`).
    pub fn chunks(&self, chunks: u32) -> (u64, u64) {
        let (mut held, mut total) = (0u64, 0u64);
        for s in self.nodes.values() {
            let (h, t) = match *s {
                NodeState::Waiting | NodeState::Failed => (0, chunks),
                NodeState::Receiving(d, t) => (d.min(t), t),
                NodeState::Done => (chunks, chunks),
            };
            held += u64::from(h);
            total += u64::from(t);
        }
        (held, total)
    }

    fn count(&self, f: impl Fn(NodeState) -> bool) -> usize {
        self.nodes.values().filter(|s| f(**s)).count()
    }

    fn terminal(&self) -> bool {
        self.nodes
            .values()
            .all(|s| matches!(s, NodeState::Done | NodeState::Failed))
    }
}

/// One node's persistent state (its "flash").
#[derive(Debug)]
struct Flash {
    sink: MemorySink,
    store: MemoryStore,
}

/// The demo's [`SimApp`].
#[derive(Debug)]
pub struct DemoApp {
    flash: Vec<Flash>,
    inbox: Inbox,
    status_every: Duration,
    rate_limit: Option<u32>,
    /// Progress reports for the bridge, drained by the runner.
    pub out: Vec<OtaProgress>,
    /// The running or last campaign.
    pub campaign: Option<Campaign>,
    /// Chunks per image of the current campaign (for the overall bar).
    pub chunks: u32,
}

impl DemoApp {
    /// The application for `nodes` nodes; status reports every `status_every`; pmesh OTA data
    /// capped at `rate_limit` bytes/s per link.
    pub fn new(nodes: u32, status_every: Duration, rate_limit: Option<u32>) -> Self {
        DemoApp {
            flash: (0..nodes)
                .map(|_| Flash {
                    sink: MemorySink::new(MAX_IMAGE),
                    store: MemoryStore::new(),
                })
                .collect(),
            inbox: Inbox::default(),
            status_every,
            rate_limit,
            out: Vec::new(),
            campaign: None,
            chunks: 0,
        }
    }

    /// Takes what the gateway captured since the last call, and how many were dropped so far.
    pub fn take_captured(&mut self) -> (Vec<Captured>, u64) {
        let inbox = &mut self.inbox;
        (inbox.items.drain(..).collect(), inbox.dropped)
    }

    /// A campaign is running.
    pub fn running(&self) -> bool {
        self.campaign.as_ref().is_some_and(|c| c.ended.is_none())
    }

    /// Starts a campaign from the gateway to `targets`. On refusal nothing is running and the
    /// reason is returned (the caller reports it).
    pub fn start(
        sim: &mut pmesh_sim::Sim<DemoApp>,
        spec: CampaignSpec,
        targets: Vec<u32>,
    ) -> Result<(), String> {
        if sim.app().running() {
            return Err("a campaign is already running".into());
        }
        let mut offer = Offer::new(ROLE, HARDWARE, MemorySource::new(spec.image.clone()))
            .compressed(spec.compressed)
            .version(spec.version.clone());
        offer = match spec.mode {
            OtaMode::Fixed(Mode::ClassicUnicast) => offer,
            // As a pmesh gateway does: the distributor pushes the flood in order.
            OtaMode::Fixed(Mode::ClassicBroadcast) | OtaMode::Auto => {
                offer.push(pmesh_ota::classic::PushPace::default())
            }
            OtaMode::Fixed(Mode::Pmesh) => offer.pmesh().apply(ApplyPolicy::OnVerify),
        };
        let served = if spec.compressed && spec.mode != OtaMode::Fixed(Mode::Pmesh) {
            pmesh_ota::codec::gzip(&spec.image)
        } else {
            spec.image.clone()
        };
        let classic_chunks = served
            .len()
            .div_ceil(pmesh_ota::offer::CLASSIC_CHUNK as usize)
            .max(1) as u32;
        let (result, pmesh_chunks) = sim
            .with_node(GATEWAY, |h| {
                h.node.with_plugin(h.now, |(ota, _), ctx| {
                    let result = ota.offer(ctx, offer);
                    // pmesh: as the distributor cut the image (compressed chunks vary).
                    (result, ota.pmesh().status().map(|s| s.total))
                })
            })
            .ok_or("the gateway is down")?;
        let transfer =
            result.map_err(|e: Refusal| format!("the gateway refused the offer: {e}"))?;
        let chunks = match spec.mode {
            OtaMode::Fixed(Mode::Pmesh) => pmesh_chunks.unwrap_or(classic_chunks),
            _ => classic_chunks,
        };
        let now = sim.now();
        let app = sim.app_mut();
        app.chunks = chunks;
        app.out.push(OtaProgress::Started {
            campaign: spec.id,
            targets: targets.clone(),
        });
        app.campaign = Some(Campaign {
            id: spec.id,
            mode: spec.mode,
            image_bytes: spec.image.len() as u64,
            transfer,
            served_md5: pmesh_ota::codec::md5_hex(&served),
            nodes: targets
                .into_iter()
                .map(|n| (n, NodeState::Waiting))
                .collect(),
            started: now,
            last_progress: now,
            ended: None,
        });
        Ok(())
    }

    /// Aborts the running campaign `id`.
    pub fn abort(sim: &mut pmesh_sim::Sim<DemoApp>, id: u64) -> Result<(), String> {
        let Some(c) = sim.app().campaign.as_ref().filter(|c| c.ended.is_none()) else {
            return Err(format!("campaign {id} is not running"));
        };
        if c.id != id {
            return Err(format!(
                "campaign {id} is not running (campaign {} is)",
                c.id
            ));
        }
        let (mode, md5) = (c.mode, c.served_md5.clone());
        sim.with_node(GATEWAY, |h| {
            h.node.with_plugin(h.now, |(ota, _), ctx| match mode {
                OtaMode::Fixed(Mode::Pmesh) => ota.cancel_pmesh(ctx),
                _ => ota.cancel_classic(&md5),
            })
        });
        let now = sim.now();
        sim.app_mut().end(now, true);
        Ok(())
    }

    /// Ends a campaign that stopped progressing; call now and then.
    pub fn check_stall(&mut self, now: SimTime) {
        let stalled = self
            .campaign
            .as_ref()
            .is_some_and(|c| c.ended.is_none() && now > c.last_progress + STALL);
        if stalled {
            self.end(now, false);
        }
    }

    fn end(&mut self, now: SimTime, aborted: bool) {
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        if c.ended.is_some() {
            return;
        }
        if !aborted {
            for (&node, s) in c.nodes.iter_mut() {
                if !matches!(s, NodeState::Done | NodeState::Failed) {
                    *s = NodeState::Failed;
                    self.out.push(OtaProgress::NodeFailed {
                        campaign: c.id,
                        node,
                        reason: format!(
                            "no progress for {} s: the node did not get the image",
                            STALL / SEC
                        ),
                    });
                }
            }
        }
        c.ended = Some((now, aborted));
        self.out.push(OtaProgress::Finished {
            campaign: c.id,
            aborted,
        });
    }

    fn node_event(&mut self, node: u32, now: SimTime, ev: OtaEvent) {
        let Some(c) = self.campaign.as_mut().filter(|c| c.ended.is_none()) else {
            return;
        };
        let id = match &ev {
            OtaEvent::Accepted { id, .. }
            | OtaEvent::Progress { id, .. }
            | OtaEvent::Installed { id, .. }
            | OtaEvent::Refused { id, .. }
            | OtaEvent::Failed { id, .. } => *id,
            _ => return,
        };
        if id != c.transfer || node == GATEWAY {
            return;
        }
        let campaign = c.id;
        let state = c.nodes.entry(node).or_insert(NodeState::Waiting);
        let before = *state;
        match ev {
            OtaEvent::Accepted {
                chunks,
                resumed_from,
                ..
            } => *state = NodeState::Receiving(resumed_from, chunks),
            OtaEvent::Progress { done, total, .. } => *state = NodeState::Receiving(done, total),
            OtaEvent::Installed { .. } => *state = NodeState::Done,
            // The node already runs this image: it has what the campaign wanted.
            OtaEvent::Refused {
                reason: Refusal::AlreadyCurrent,
                ..
            } => *state = NodeState::Done,
            OtaEvent::Refused { ref reason, .. } | OtaEvent::Failed { ref reason, .. } => {
                *state = NodeState::Failed;
                self.out.push(OtaProgress::NodeFailed {
                    campaign,
                    node,
                    reason: reason.to_string(),
                });
            }
            _ => {}
        }
        let after = *state;
        if after == before {
            return;
        }
        c.last_progress = now;
        match after {
            NodeState::Receiving(done, total) => self.out.push(OtaProgress::Node {
                campaign,
                node,
                done: u64::from(done),
                total: u64::from(total),
            }),
            NodeState::Done => self.out.push(OtaProgress::NodeDone { campaign, node }),
            NodeState::Waiting | NodeState::Failed => {}
        }
        if c.terminal() {
            self.end(now, false);
        }
    }
}

impl SimApp for DemoApp {
    type Plugin = DemoNode;

    fn create_plugin(&mut self, node: u32, _boot: Boot, _seed: u64) -> DemoNode {
        let flash = &self.flash[node as usize - 1];
        let gateway = node == GATEWAY;
        let mut cfg = if gateway {
            let mut c = OtaConfig::new("gateway", "linux");
            c.classic_receiver = pmesh_ota::ClassicReceiverKind::Off;
            c
        } else {
            OtaConfig::new(ROLE, HARDWARE)
        };
        cfg.pmesh.rate_limit = self.rate_limit;
        let status = (!gateway).then(|| {
            let mut s = StatusConfig::new(FIRMWARE);
            s.interval = self.status_every;
            s.first_after = self.status_every;
            s.target = StatusTarget::Node(GATEWAY);
            // The demo's node clocks start at 0 at every boot (no initial offset).
            StatusPlugin::new(s, Instant::from_micros(0))
        });
        (
            Ota::new(cfg, flash.sink.clone(), flash.store.clone()),
            status,
        )
    }

    fn on_event(&mut self, h: &mut NodeHandle<'_, DemoNode>, event: Event<OtaEvent>) {
        match event {
            Event::Plugin(ev) => self.node_event(h.id, h.sim_now, ev),
            Event::Received {
                from,
                msg,
                broadcast,
            } if h.id == GATEWAY => self.inbox.push(Captured::Message {
                from,
                msg,
                broadcast,
            }),
            Event::Package { envelope, .. } if h.id == GATEWAY => {
                self.inbox.push(Captured::Package(envelope));
            }
            _ => {}
        }
    }

    fn progress(&self) -> Option<String> {
        let c = self.campaign.as_ref()?;
        Some(format!(
            "OTA {} {}/{} nodes",
            c.mode.as_str(),
            c.done(),
            c.nodes.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmesh_sim::scenario::Dur;
    use pmesh_sim::{Scenario, Sim, Topology};

    fn sim(nodes: u32) -> Sim<DemoApp> {
        let mut sc = Scenario {
            nodes,
            topology: Topology::Tree { fanout: 2 },
            duration: Dur::secs(3600),
            ..Scenario::default()
        };
        sc.traffic.enabled = false;
        sc.clock.initial_offset = Dur(0);
        let app = DemoApp::new(nodes, Duration::from_secs(30), None);
        let mut sim = Sim::with_app(sc, app).unwrap();
        assert!(pmesh_sim::ota::run_until_formed(&mut sim, 300 * SEC).is_some());
        sim
    }

    fn spec(id: u64, mode: OtaMode, bytes: usize) -> CampaignSpec {
        CampaignSpec {
            id,
            mode,
            image: pmesh_sim::ota::image::synthetic_firmware(bytes, id),
            compressed: true,
            version: format!("v{id}"),
        }
    }

    /// Runs until the campaign ends (at most `limit` simulated seconds).
    fn run_campaign(sim: &mut Sim<DemoApp>, limit: u64) {
        let end = sim.now() + limit * SEC;
        while sim.app().running() && sim.now() < end {
            sim.run_until(sim.now() + SEC);
            let now = sim.now();
            sim.app_mut().check_stall(now);
        }
    }

    #[test]
    fn a_rollout_reports_every_target_to_the_bridge() {
        let mut sim = sim(7);
        let mut targets = sim.node(GATEWAY).unwrap().node_list(false);
        targets.sort_unstable();
        assert_eq!(targets, (2..=7).collect::<Vec<_>>());
        DemoApp::start(
            &mut sim,
            spec(9, OtaMode::Fixed(Mode::Pmesh), 40 << 10),
            targets,
        )
        .unwrap();
        assert!(
            DemoApp::start(
                &mut sim,
                spec(10, OtaMode::Fixed(Mode::Pmesh), 1024),
                vec![2]
            )
            .is_err(),
            "one campaign at a time"
        );
        run_campaign(&mut sim, 300);
        let c = sim.app().campaign.as_ref().unwrap();
        assert_eq!(c.ended.map(|(_, aborted)| aborted), Some(false));
        assert_eq!((c.done(), c.failed()), (6, 0));
        let k = sim.app().chunks;
        let (held, total) = c.chunks(k);
        assert_eq!(held, total);
        assert_eq!(total, 6 * u64::from(k), "six targets hold every chunk");
        assert!(k > 1, "40 KiB of synthetic firmware takes several chunks");

        let out = &sim.app().out;
        assert_eq!(
            out.first(),
            Some(&OtaProgress::Started {
                campaign: 9,
                targets: (2..=7).collect()
            })
        );
        assert_eq!(
            out.last(),
            Some(&OtaProgress::Finished {
                campaign: 9,
                aborted: false
            })
        );
        let mut done = Vec::new();
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for p in out {
            match p {
                OtaProgress::Node {
                    campaign: 9,
                    node,
                    done,
                    total,
                } if *total == u64::from(k) => {
                    let prev = last.insert(*node, *done).unwrap_or(0);
                    assert!(*done >= prev, "node {node} went back from {prev} to {done}");
                }
                OtaProgress::NodeDone { campaign: 9, node } => done.push(*node),
                OtaProgress::Started { .. } | OtaProgress::Finished { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        done.sort_unstable();
        assert_eq!(done, (2..=7).collect::<Vec<_>>());
        assert_eq!(last.len(), 6, "every target reported progress");
    }

    #[test]
    fn status_reports_and_messages_reach_the_gateway_inbox() {
        let mut sim = sim(5);
        sim.run_until(sim.now() + 40 * SEC);
        let (captured, dropped) = sim.app_mut().take_captured();
        assert_eq!(dropped, 0);
        let mut from: Vec<u32> = captured
            .iter()
            .filter_map(|c| match c {
                Captured::Package(env) if env.ty == 604 => Some(env.from),
                _ => None,
            })
            .collect();
        from.sort_unstable();
        from.dedup();
        assert_eq!(from, vec![2, 3, 4, 5]);
        assert!(sim.app_mut().take_captured().0.is_empty(), "taken once");

        // A user message to the gateway is captured too.
        sim.with_node(4, |h| h.node.send_single(h.now, GATEWAY, "hello"))
            .unwrap()
            .unwrap();
        sim.run_until(sim.now() + SEC);
        let (captured, _) = sim.app_mut().take_captured();
        assert!(captured.iter().any(|c| matches!(
            c,
            Captured::Message { from: 4, msg, broadcast: false } if msg == b"hello"
        )));
    }

    #[test]
    fn an_aborted_campaign_ends_and_another_can_start() {
        let mut sim = sim(5);
        let targets = sim.node(GATEWAY).unwrap().node_list(false);
        DemoApp::start(
            &mut sim,
            // Large enough to be still running after half a second of the paced push.
            spec(1, OtaMode::Fixed(Mode::ClassicBroadcast), 1 << 20),
            targets.clone(),
        )
        .unwrap();
        sim.run_until(sim.now() + SEC / 2);
        assert!(DemoApp::abort(&mut sim, 2).is_err(), "not the running one");
        DemoApp::abort(&mut sim, 1).unwrap();
        assert!(!sim.app().running());
        assert_eq!(
            sim.app().out.last(),
            Some(&OtaProgress::Finished {
                campaign: 1,
                aborted: true
            })
        );
        assert!(DemoApp::abort(&mut sim, 1).is_err(), "already ended");
        DemoApp::start(
            &mut sim,
            spec(2, OtaMode::Fixed(Mode::ClassicUnicast), 8 << 10),
            targets,
        )
        .unwrap();
        run_campaign(&mut sim, 600);
        let c = sim.app().campaign.as_ref().unwrap();
        assert_eq!((c.id, c.done(), c.failed()), (2, 4, 0));
    }
}
