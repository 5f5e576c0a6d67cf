//! A staged campaign ([`pmesh_ota::campaign::Campaign`]) driven against the simulator: every
//! node runs the real `pmesh_node::Node` and `pmesh_ota::Ota` plugin, the gateway (node 1)
//! offers the image wave by wave, and the campaign judges each node from what the simulator
//! observes of it.
//!
//! What is modelled, and how:
//!
//! - **Waves as offers.** A pmesh offer names a role and a hardware, not a node list, so each
//!   node gets the OTA role `wave<k>` of its campaign wave before it boots (the campaign's
//!   assignment is a seeded shuffle, known in advance) and wave `k` is an offer to role
//!   `wave<k>`. A new offer replaces the gateway's previous rollout: a straggler of the
//!   previous wave still downloading then fails its transfer deadline.
//! - **Transfers.** A node's download progress (its plugin's `Progress` events) is fed as
//!   [`TransferOutcome::Downloading`], its `Installed` as [`TransferOutcome::Applied`]; the
//!   node then reboots into the image (a crash and a restart scheduled in the engine).
//! - **Reports.** Every `report_every`, each fleet node that is up and in the gateway's node
//!   list reports the version its store records as current, its boot counter (counted here:
//!   every reboot is one the driver scheduled) and a constant free heap.
//! - **The bad image.** A fixed share of the nodes (a hash of the id) crash-loops when it
//!   runs the new image: `crash_after` after each boot into it, it crashes and boots again.
//! - **Revert.** [`Action::Revert`] puts the node's previous [`InstalledImage`] back in its
//!   store and reboots it: it runs the old image again and stops crash-looping. No node-side
//!   confirm-or-revert protocol exists yet: the node does not revert by itself, the driver
//!   does it on the campaign's order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pmesh_node::Instant;
use pmesh_ota::campaign::{
    Action, Campaign, HaltReason, HealthGate, NodePhase, NodeReport, Plan, Status, Threshold,
    TransferOutcome, Waves,
};
use pmesh_ota::{ApplyPolicy, InstalledImage, MemoryStore, Offer, OtaStore};
use serde::Serialize;

use super::app::{HARDWARE, OtaApp};
use super::image::Image;
use super::scenario::{ByteSize, OtaScenario};
use crate::Sim;
use crate::clock::{SEC, SimTime, secs};
use crate::scenario::{Action as SimAction, Dur, Scenario, Topology, Traffic};

/// The version every node runs before the campaign.
pub const OLD_VERSION: &str = "1.0.0";
/// The version the campaign rolls out.
pub const NEW_VERSION: &str = "2.0.0";
/// Free heap every report carries (the simulator does not model heap).
const FREE_HEAP: u32 = 100_000;

/// One simulated campaign's parameters.
#[derive(Clone, Debug)]
pub struct CampaignSetup {
    /// Fleet size (targets); the mesh has one more node, the gateway (node 1).
    pub fleet: u32,
    /// Tree fan-out of the mesh.
    pub fanout: u32,
    /// Scenario seed, also the campaign's assignment seed.
    pub seed: u64,
    /// Waves, as the operator writes them (`5%,20%,100%`).
    pub waves: String,
    /// Error threshold per wave (`5%`).
    pub max_failures: String,
    /// Share of the nodes that crash-loop on the new image (0 for a good image).
    pub bad_share: f64,
    /// Image size, bytes (synthetic firmware, compressed pmesh chunks).
    pub image_bytes: u64,
    /// The health gate.
    pub gate: HealthGate,
    /// Period of the nodes' reports.
    pub report_every: Duration,
    /// Down time of a reboot.
    pub reboot: Duration,
    /// Up time of a crash-looping node before it crashes again.
    pub crash_after: Duration,
    /// Simulated time after the campaign halted or finished, so reverts complete.
    pub settle: Duration,
    /// Give up at this simulated time.
    pub limit: Duration,
}

impl CampaignSetup {
    /// The issue's campaign on `fleet` nodes: waves 5 %, 20 %, 100 %, `--max-failures 5%`,
    /// 30 % of the nodes crash-looping on the image when `bad`.
    pub fn issue(fleet: u32, bad: bool) -> Self {
        CampaignSetup {
            fleet,
            fanout: 6,
            seed: 15,
            waves: "5%,20%,100%".into(),
            max_failures: "5%".into(),
            bad_share: if bad { 0.3 } else { 0.0 },
            image_bytes: 256 * 1024,
            gate: HealthGate {
                transfer_deadline: Duration::from_secs(600),
                return_deadline: Duration::from_secs(120),
                soak: Duration::from_secs(300),
                max_silence: Duration::from_secs(60),
                heap_floor: 20_000,
                max_reboots: 2,
                metric: None,
            },
            report_every: Duration::from_secs(10),
            reboot: Duration::from_secs(3),
            crash_after: Duration::from_secs(20),
            settle: Duration::from_secs(60),
            limit: Duration::from_secs(3 * 3600),
        }
    }

    /// Whether node `id` crash-loops on the new image (a fixed hash of the id).
    pub fn is_bad(&self, id: u32) -> bool {
        let h = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.seed;
        ((h >> 32) % 10_000) as f64 / 10_000.0 < self.bad_share
    }
}

/// One wave's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WaveOutcome {
    /// Nodes in the wave.
    pub nodes: u32,
    /// Started (its offer made).
    pub started: bool,
    /// Confirmed nodes.
    pub confirmed: u32,
    /// Failed nodes.
    pub failed: u32,
    /// Reverted nodes (told to revert after the halt, back on the old version).
    pub reverted: u32,
    /// Nodes that never applied (pending, downloading or verified at the end).
    pub not_applied: u32,
}

/// What a simulated campaign did.
#[derive(Clone, Debug, Serialize)]
pub struct CampaignOutcome {
    /// `finished`, `halted`, or `stuck` (the limit came first).
    pub outcome: String,
    /// The wave that halted, and its failures against the allowed.
    pub halted: Option<(u32, u32, u32)>,
    /// Simulated seconds the mesh took to form (the campaign starts then).
    pub formed_s: f64,
    /// Simulated seconds from the campaign's start to its halt or finish.
    pub duration_s: Option<f64>,
    /// Per wave.
    pub waves: Vec<WaveOutcome>,
    /// Nodes that ever booted the new image.
    pub ran_new: u32,
    /// Nodes that ever booted the new image outside the first wave.
    pub ran_new_outside_first_wave: u32,
    /// Nodes that crash-looped on it.
    pub crash_looped: u32,
    /// Nodes running the new image at the end without being confirmed.
    pub unconfirmed_on_new: u32,
    /// Nodes the campaign told to revert.
    pub told_to_revert: u32,
    /// Of those, nodes back on the old version at the end.
    pub back_on_old: u32,
    /// Reboots the driver scheduled (installs, crash loops, reverts).
    pub reboots: u32,
    /// Offers the gateway made, and those it refused.
    pub offers: u32,
    /// Offers refused by the gateway's plugin.
    pub offers_refused: u32,
    /// Inputs the campaign refused.
    pub rejected: u64,
    /// pmesh data bytes sent (chunk frames, every node).
    pub data_bytes: u64,
    /// pmesh control bytes sent.
    pub control_bytes: u64,
}

/// What the driver knows of one node.
#[derive(Clone, Debug, Default)]
struct Tracked {
    /// Boot counter as the node reports it.
    boots: u32,
    /// Latest download progress fed to the campaign.
    done: u32,
    applied: bool,
    /// Booted the new image at least once.
    ran_new: bool,
    crash_looped: bool,
    /// The next crash of a crash loop.
    next_crash: Option<SimTime>,
    told_to_revert: bool,
    /// A reboot the driver scheduled ends then.
    down_until: SimTime,
    /// The image it ran before the campaign (its store's record).
    old: InstalledImage,
}

/// The campaign and the simulation it drives.
struct Driver {
    setup: CampaignSetup,
    sim: Sim<OtaApp>,
    c: Campaign,
    image: Image,
    gateway: u32,
    nodes: BTreeMap<u32, Tracked>,
    started_at: SimTime,
    over_at: Option<SimTime>,
    started: BTreeSet<u32>,
    reboots: u32,
    offers: u32,
    offers_refused: u32,
}

fn instant(t: SimTime) -> Instant {
    Instant::from_micros(t)
}

fn plan(setup: &CampaignSetup) -> Result<Plan, String> {
    let waves: Waves = setup.waves.parse().map_err(|e| format!("waves: {e}"))?;
    let max: Threshold = setup
        .max_failures
        .parse()
        .map_err(|e| format!("max failures: {e}"))?;
    let mut p = Plan::new(waves, max);
    p.gate = setup.gate;
    Ok(p)
}

/// The mesh: a tree of `fleet + 1` nodes, no background traffic.
fn scenario(setup: &CampaignSetup) -> Scenario {
    Scenario {
        name: format!("campaign-{}", setup.fleet),
        seed: setup.seed,
        nodes: setup.fleet + 1,
        topology: Topology::Tree {
            fanout: setup.fanout,
        },
        duration: Dur::secs(setup.limit.as_secs()),
        traffic: Traffic {
            broadcast_every: None,
            single_every: None,
            ..Traffic::default()
        },
        ..Scenario::default()
    }
}

/// Runs one campaign to its halt or finish (plus `settle`), or to `limit`.
pub fn run_campaign(setup: &CampaignSetup) -> Result<CampaignOutcome, String> {
    let mut d = Driver::build(setup)?;
    d.run();
    Ok(d.outcome())
}

impl Driver {
    fn build(setup: &CampaignSetup) -> Result<Driver, String> {
        let sc = scenario(setup);
        let ota = OtaScenario {
            image_bytes: Some(ByteSize(setup.image_bytes)),
            ..OtaScenario::default()
        };
        let image = Image::load(&ota, sc.seed)?;
        let mut app = OtaApp::new(&sc, ota, image.clone())?;
        let fleet: Vec<u32> = (2..=setup.fleet + 1).collect();
        let plan = plan(setup)?;
        // The assignment is a seeded shuffle: known before the nodes boot.
        let probe = Campaign::new(&plan, NEW_VERSION, &fleet, setup.seed, Instant::ZERO)
            .map_err(|e| format!("plan: {e}"))?;
        for (k, wave) in probe.waves().enumerate() {
            for &id in wave {
                app.set_ota_role(id, &format!("wave{k}"));
            }
        }
        let mut nodes = BTreeMap::new();
        for (id, k, _) in probe.nodes() {
            let old = InstalledImage {
                role: format!("wave{k}"),
                hardware: HARDWARE.into(),
                version: OLD_VERSION.into(),
                ..InstalledImage::default()
            };
            let mut store: MemoryStore = app.store(id).ok_or("no store")?.clone();
            store.set_current_image(&old).map_err(|e| e.to_string())?;
            nodes.insert(
                id,
                Tracked {
                    old,
                    ..Tracked::default()
                },
            );
        }
        let mut sim = Sim::with_app(sc, app)?;
        let formed = super::run_until_formed(&mut sim, 1800 * SEC)
            .ok_or("the mesh did not form within 30 min")?;
        let c = Campaign::new(&plan, NEW_VERSION, &fleet, setup.seed, instant(formed))
            .map_err(|e| format!("plan: {e}"))?;
        let mut d = Driver {
            setup: setup.clone(),
            sim,
            c,
            image,
            gateway: 1,
            nodes,
            started_at: formed,
            over_at: None,
            started: BTreeSet::new(),
            reboots: 0,
            offers: 0,
            offers_refused: 0,
        };
        d.reports(formed); // every node's baseline: the old version
        Ok(d)
    }

    fn run(&mut self) {
        let limit = self.setup.limit.as_micros() as SimTime;
        let every = self.setup.report_every.as_micros() as SimTime;
        let settle = self.setup.settle.as_micros() as SimTime;
        let mut next_report = self.sim.now() + every;
        while self.sim.now() < limit {
            let now = self.sim.now();
            self.actions(now);
            self.transfers(now);
            self.crash_loops(now);
            if now >= next_report {
                self.reports(now);
                next_report += every;
            }
            self.c.handle_tick(instant(now));
            self.actions(now);
            if self.over_at.is_some_and(|t| now >= t + settle) {
                break;
            }
            self.sim.run_until(now + SEC);
        }
    }

    fn actions(&mut self, now: SimTime) {
        while let Some(a) = self.c.poll_action() {
            match a {
                Action::StartWave { wave, .. } => self.offer(wave),
                Action::Revert { nodes } => {
                    for id in nodes {
                        self.revert(id, now);
                    }
                }
                Action::Cancel { .. } => self.cancel(),
                Action::Halted { .. } => {
                    // Stop the rollout even if every node applied: a reverted node must not
                    // take the image again from a live offer.
                    self.cancel();
                    self.over_at.get_or_insert(now);
                }
                Action::Finished { .. } => {
                    self.over_at.get_or_insert(now);
                }
            }
        }
    }

    /// Offers the image to wave `wave`'s role.
    fn offer(&mut self, wave: u32) {
        self.started.insert(wave);
        let offer = Offer::new(format!("wave{wave}"), HARDWARE, self.image.source.clone())
            .compressed(true)
            .version(NEW_VERSION)
            .pmesh()
            .apply(ApplyPolicy::OnVerify);
        let r = self.sim.with_node(self.gateway, |h| {
            h.node.with_plugin(h.now, |p, ctx| {
                p.with_ota(ctx, |ota, ctx| ota.offer(ctx, offer))
            })
        });
        self.offers += 1;
        if !matches!(r, Some(Ok(_))) {
            self.offers_refused += 1;
        }
    }

    /// Stops the gateway's rollout (after a halt).
    fn cancel(&mut self) {
        self.sim.with_node(self.gateway, |h| {
            h.node.with_plugin(h.now, |p, ctx| {
                p.with_ota(ctx, |ota, ctx| ota.cancel_pmesh(ctx))
            })
        });
    }

    /// Crash now, boot `reboot` later; nothing if the node is already rebooting (its next
    /// boot then runs whatever its store now says), so the boot counter stays exact.
    fn reboot(&mut self, id: u32, now: SimTime) {
        let back = now + self.setup.reboot.as_micros() as SimTime;
        let Some(t) = self.nodes.get_mut(&id) else {
            return;
        };
        if now < t.down_until {
            return;
        }
        t.down_until = back;
        t.boots += 1;
        self.sim.schedule(now, SimAction::Crash { node: id });
        self.sim.schedule(back, SimAction::Restart { node: id });
        self.reboots += 1;
    }

    fn revert(&mut self, id: u32, now: SimTime) {
        let Some(t) = self.nodes.get_mut(&id) else {
            return;
        };
        t.told_to_revert = true;
        t.next_crash = None;
        let old = t.old.clone();
        if let Some(store) = self.sim.app().store(id) {
            let mut store = store.clone();
            // The in-memory store cannot fail.
            let _ = store.set_current_image(&old);
        }
        self.reboot(id, now);
    }

    /// Feeds download progress and installs to the campaign; an installed node reboots into
    /// the image (a bad one starts crash-looping).
    fn transfers(&mut self, now: SimTime) {
        let mut installed = Vec::new();
        for (&id, t) in self.nodes.iter_mut() {
            let Some((wave, phase)) = self.c.node(id) else {
                continue;
            };
            if t.applied || !self.started.contains(&wave) {
                continue;
            }
            let app = self.sim.app();
            if app.installed_at(id).is_some() {
                t.applied = true;
                installed.push(id);
                let _ = self
                    .c
                    .handle_transfer(id, TransferOutcome::Applied, instant(now));
            } else if let Some((done, _)) = app.node_progress(id)
                && done > t.done
                && matches!(phase, NodePhase::Pending | NodePhase::Downloading)
            {
                t.done = done;
                let _ = self
                    .c
                    .handle_transfer(id, TransferOutcome::Downloading, instant(now));
            }
        }
        for id in installed {
            let t = &self.nodes[&id];
            if t.told_to_revert {
                continue;
            }
            self.reboot(id, now);
            let t = self.nodes.get_mut(&id).unwrap();
            t.ran_new = true;
            if self.setup.is_bad(id) {
                t.crash_looped = true;
                let up = (self.setup.reboot + self.setup.crash_after).as_micros() as SimTime;
                t.next_crash = Some(now + up);
            }
        }
    }

    fn crash_loops(&mut self, now: SimTime) {
        let due: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, t)| t.next_crash.is_some_and(|c| c <= now))
            .map(|(&id, _)| id)
            .collect();
        let up = (self.setup.reboot + self.setup.crash_after).as_micros() as SimTime;
        for id in due {
            self.reboot(id, now);
            self.nodes.get_mut(&id).unwrap().next_crash = Some(now + up);
        }
    }

    /// Every fleet node the gateway can see reports its store's version and its boots.
    fn reports(&mut self, now: SimTime) {
        let Some(gw) = self.sim.node(self.gateway) else {
            return;
        };
        let seen: BTreeSet<u32> = gw.node_list(false).into_iter().collect();
        for (&id, t) in &self.nodes {
            if !seen.contains(&id) || self.sim.node(id).is_none() {
                continue;
            }
            let version = self
                .sim
                .app()
                .store(id)
                .and_then(|s| s.current_image())
                .map(|i| i.version)
                .unwrap_or_default();
            let r = NodeReport {
                node: id,
                at: instant(now),
                version: &version,
                free_heap: FREE_HEAP,
                boots: t.boots,
                metric: None,
            };
            let _ = self.c.handle_report(&r);
        }
    }
}

impl Driver {
    fn outcome(&self) -> CampaignOutcome {
        let mut waves: Vec<WaveOutcome> = self
            .c
            .waves()
            .enumerate()
            .map(|(k, w)| WaveOutcome {
                nodes: w.len() as u32,
                started: self.started.contains(&(k as u32)),
                ..WaveOutcome::default()
            })
            .collect();
        for (_, k, phase) in self.c.nodes() {
            let w = &mut waves[k as usize];
            match phase {
                NodePhase::Confirmed => w.confirmed += 1,
                NodePhase::Failed(_) => w.failed += 1,
                NodePhase::Reverted => w.reverted += 1,
                NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified => {
                    w.not_applied += 1
                }
                NodePhase::Applied | NodePhase::Trial => {}
            }
        }
        let version = |id: u32| {
            self.sim
                .app()
                .store(id)
                .and_then(|s| s.current_image())
                .map(|i| i.version)
                .unwrap_or_default()
        };
        let first: BTreeSet<u32> = self
            .c
            .waves()
            .next()
            .unwrap_or(&[])
            .iter()
            .copied()
            .collect();
        let count = |f: &dyn Fn(u32, &Tracked) -> bool| {
            self.nodes.iter().filter(|(id, t)| f(**id, t)).count() as u32
        };
        let unconfirmed = |id: u32| {
            self.c
                .node(id)
                .is_some_and(|(_, p)| p != NodePhase::Confirmed)
        };
        let (halted, outcome) = match self.c.status() {
            Status::Halted { wave, reason } => {
                let (f, a) = match reason {
                    HaltReason::TooManyFailures { failures, allowed } => (failures, allowed),
                    HaltReason::Aborted => (0, 0),
                };
                (Some((wave, f, a)), "halted")
            }
            Status::Finished => (None, "finished"),
            _ => (None, "stuck"),
        };
        let counters = self.sim.app().section().counters;
        CampaignOutcome {
            outcome: outcome.into(),
            halted,
            formed_s: secs(self.started_at),
            duration_s: self.over_at.map(|t| secs(t - self.started_at)),
            waves,
            ran_new: count(&|_, t| t.ran_new),
            ran_new_outside_first_wave: count(&|id, t| t.ran_new && !first.contains(&id)),
            crash_looped: count(&|_, t| t.crash_looped),
            unconfirmed_on_new: count(&|id, _| version(id) == NEW_VERSION && unconfirmed(id)),
            told_to_revert: count(&|_, t| t.told_to_revert),
            back_on_old: count(&|id, t| t.told_to_revert && version(id) == OLD_VERSION),
            reboots: self.reboots,
            offers: self.offers,
            offers_refused: self.offers_refused,
            rejected: self.c.rejected(),
            data_bytes: counters.pmesh_data_bytes,
            control_bytes: counters.pmesh_control_bytes,
        }
    }
}
