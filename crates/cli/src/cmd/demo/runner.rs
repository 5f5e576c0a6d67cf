//! The simulation thread: steps the simulator's virtual clock to follow the wall clock (times
//! `speed`), carries the bridge's requests into the mesh and reports what the gateway sees.
//!
//! The simulator's application state is single-threaded (`Rc`), so the whole simulation lives
//! on this thread; it talks to the rest of the demo through two channels only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};

use pmesh_bridge::{LinkStats, OtaProgress};
use pmesh_node::NodeStats;
use pmesh_proto::NodeTree;
use pmesh_sim::clock::{SEC, SimTime, secs};
use pmesh_sim::{Scenario, Sim};
use tokio::sync::mpsc::Sender;

use super::app::{self, CampaignSpec, Captured, DemoApp, GATEWAY};

/// How often the simulation catches up with the wall clock and reports.
const TICK: Duration = Duration::from_millis(100);
/// Gateway counters to the bridge this often (simulated).
const STATS_EVERY: SimTime = 5 * SEC;
/// Every node's counters to its status plugin this often (simulated).
const NODE_STATS_EVERY: SimTime = 10 * SEC;
/// Formation checks this often (simulated).
const FORM_CHECK_EVERY: SimTime = SEC;
/// Longest wait for the whole mesh to form (simulated): a node out of everyone's range
/// would otherwise hold the rollout back for ever.
pub const FORM_TIMEOUT: SimTime = 300 * SEC;

/// What the bridge asks of the simulated mesh.
#[derive(Debug)]
pub enum Command {
    /// A SINGLE from the gateway.
    Send {
        /// Destination.
        dest: u32,
        /// Payload.
        msg: Vec<u8>,
    },
    /// A BROADCAST from the gateway.
    Broadcast {
        /// Payload.
        msg: Vec<u8>,
    },
    /// Start a campaign.
    OtaStart(CampaignSpec),
    /// Abort a campaign.
    OtaAbort(u64),
}

/// A running campaign, as the display shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignView {
    /// Id.
    pub id: u64,
    /// `pmesh`, `broadcast` or `unicast`.
    pub mode: &'static str,
    /// Image bytes.
    pub image_bytes: u64,
    /// Targets.
    pub targets: usize,
    /// Targets updated.
    pub done: usize,
    /// Targets failed.
    pub failed: usize,
    /// Chunks the targets hold, of all they need.
    pub chunks: (u64, u64),
    /// Simulated seconds since the offer (to its end once ended).
    pub elapsed_s: f64,
    /// Ended (and aborted?).
    pub ended: Option<bool>,
}

/// The state of the demo after a tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Simulated seconds.
    pub sim_s: f64,
    /// Nodes in the gateway's mesh, the gateway included.
    pub known: usize,
    /// Nodes simulated.
    pub nodes: u32,
    /// When the mesh formed (simulated seconds), if it did.
    pub formed_s: Option<f64>,
    /// The running or last campaign.
    pub campaign: Option<CampaignView>,
    /// Captured messages dropped because the gateway's inbox was full.
    pub inbox_dropped: u64,
}

/// What the simulation thread reports.
#[derive(Debug)]
pub enum Update {
    /// The gateway's tree changed.
    Topology(NodeTree),
    /// The gateway's counters and its links'.
    Stats(NodeStats, Vec<LinkStats>),
    /// A message or package reached the gateway.
    Captured(Captured),
    /// Campaign progress.
    Ota(OtaProgress),
    /// The mesh formed (every node in one mesh, every node list complete) at this simulated
    /// second: the demo's rollout may start.
    Formed(f64),
    /// The mesh did not form within [`FORM_TIMEOUT`]; the rollout goes to the nodes the
    /// gateway reaches.
    NotFormed {
        /// Simulated seconds.
        after_s: f64,
        /// Nodes in the gateway's mesh, the gateway included.
        known: usize,
    },
    /// A line for the user.
    Note(String),
    /// The state after a tick.
    Tick(Tick),
}

/// What the gateway's validation reads (written by this thread).
#[derive(Debug, Default)]
pub struct Shared {
    /// Nodes the gateway reaches (itself excluded).
    pub nodes: Mutex<Vec<u32>>,
    /// The running campaign.
    pub campaign: Mutex<Option<u64>>,
}

/// Runs the simulation until `stop`; returns the last tick.
pub fn run(
    sc: Scenario,
    app: DemoApp,
    speed: f64,
    commands: Receiver<Command>,
    updates: Sender<Update>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<Tick, String> {
    let nodes = sc.nodes;
    let mut sim = Sim::with_app(sc, app)?;
    let send = |u: Update| updates.blocking_send(u).is_ok();
    let start = WallInstant::now();
    let mut last_tree: Option<NodeTree> = None;
    let mut next_stats = 0;
    let mut next_node_stats = NODE_STATS_EVERY;
    let mut next_form_check = FORM_CHECK_EVERY;
    let mut formed_s = None;
    let mut gave_up_forming = false;
    let mut ota_reported = 0;
    let mut tick = None;
    while !stop.load(Ordering::Relaxed) {
        let tick_start = WallInstant::now();
        for cmd in commands.try_iter() {
            handle(&mut sim, cmd, &send);
        }
        let target = (start.elapsed().as_secs_f64() * speed * SEC as f64) as SimTime;
        sim.run_until(target.max(sim.now()));
        let now = sim.now();
        sim.app_mut().check_stall(now);

        // Nodes boot within the first seconds; the gateway too.
        let Some(gw) = sim.node(GATEWAY) else {
            pace(tick_start);
            continue;
        };
        let tree = gw.tree();
        let known = gw.node_list(true).len();
        if last_tree.as_ref() != Some(&tree) {
            *shared.nodes.lock().unwrap_or_else(|e| e.into_inner()) = gw.node_list(false);
            last_tree = Some(tree.clone());
            if !send(Update::Topology(tree)) {
                break;
            }
        }
        let ota_sent = app::ota_bytes_sent(gw.plugin());
        if ota_sent > ota_reported {
            let bytes = ota_sent - ota_reported;
            ota_reported = ota_sent;
            if !send(Update::Ota(OtaProgress::BytesSent { bytes })) {
                break;
            }
        }
        if now >= next_stats {
            next_stats = now + STATS_EVERY;
            let links = sim
                .link_bytes(GATEWAY)
                .into_iter()
                .map(|(peer, sent, received)| LinkStats {
                    peer,
                    bytes_in: received,
                    bytes_out: sent,
                    delay_us: None,
                })
                .collect();
            if !send(Update::Stats(gw.stats(), links)) {
                break;
            }
        }
        if now >= next_node_stats {
            next_node_stats = now + NODE_STATS_EVERY;
            for id in sim.nodes_up() {
                sim.with_node(id, |h| {
                    let stats = h.node.stats();
                    h.node
                        .with_plugin(h.now, |p, _| app::set_node_stats(p, stats));
                });
            }
        }
        if formed_s.is_none() && now >= next_form_check {
            next_form_check = now + FORM_CHECK_EVERY;
            if pmesh_sim::ota::formed(&sim) {
                formed_s = Some(secs(now));
                if !send(Update::Formed(secs(now))) {
                    break;
                }
            } else if now >= FORM_TIMEOUT && !gave_up_forming {
                gave_up_forming = true;
                if !send(Update::NotFormed {
                    after_s: secs(now),
                    known,
                }) {
                    break;
                }
            }
        }
        let (captured, inbox_dropped) = sim.app_mut().take_captured();
        let progress = std::mem::take(&mut sim.app_mut().out);
        let ok = captured.into_iter().all(|c| send(Update::Captured(c)))
            && progress.into_iter().all(|p| send(Update::Ota(p)));
        if !ok {
            break;
        }
        let app = sim.app();
        *shared.campaign.lock().unwrap_or_else(|e| e.into_inner()) = app
            .campaign
            .as_ref()
            .filter(|c| c.ended.is_none())
            .map(|c| c.id);
        let t = Tick {
            sim_s: secs(now),
            known,
            nodes,
            formed_s,
            campaign: app.campaign.as_ref().map(|c| CampaignView {
                id: c.id,
                mode: c.mode.as_str(),
                image_bytes: c.image_bytes,
                targets: c.nodes.len(),
                done: c.done(),
                failed: c.failed(),
                chunks: c.chunks(app.chunks),
                elapsed_s: secs(c.ended.map_or(now, |(t, _)| t) - c.started),
                ended: c.ended.map(|(_, aborted)| aborted),
            }),
            inbox_dropped,
        };
        if !send(Update::Tick(t.clone())) {
            break;
        }
        tick = Some(t);
        pace(tick_start);
    }
    tick.ok_or_else(|| "the simulation stopped before its first step".into())
}

/// Sleeps out the rest of the tick that began at `start`.
fn pace(start: WallInstant) {
    if let Some(rest) = TICK.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
}

/// Carries out one request of the bridge.
fn handle(sim: &mut Sim<DemoApp>, cmd: Command, send: &impl Fn(Update) -> bool) {
    match cmd {
        Command::Send { dest, msg } => {
            let r = sim.with_node(GATEWAY, |h| h.node.send_single(h.now, dest, msg));
            if let Some(Err(e)) = r {
                send(Update::Note(format!("send to node {dest} failed: {e:?}")));
            }
        }
        Command::Broadcast { msg } => {
            let r = sim.with_node(GATEWAY, |h| h.node.send_broadcast(h.now, msg, false));
            if let Some(Err(e)) = r {
                send(Update::Note(format!("broadcast failed: {e:?}")));
            }
        }
        Command::OtaStart(spec) => {
            let id = spec.id;
            let targets = sim
                .node(GATEWAY)
                .map(|n| n.node_list(false))
                .unwrap_or_default();
            if let Err(e) = DemoApp::start(sim, spec, targets) {
                // The bridge already answered the request: report the failure as progress.
                send(Update::Note(format!("campaign {id} could not start: {e}")));
                send(Update::Ota(OtaProgress::NodeFailed {
                    campaign: id,
                    node: GATEWAY,
                    reason: e,
                }));
                send(Update::Ota(OtaProgress::Finished {
                    campaign: id,
                    aborted: false,
                }));
            }
        }
        Command::OtaAbort(id) => {
            if let Err(e) = DemoApp::abort(sim, id) {
                send(Update::Note(format!("abort: {e}")));
            }
        }
    }
}
