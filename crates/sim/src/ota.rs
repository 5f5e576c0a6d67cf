//! OTA rollouts in the simulator: every node runs the real `pmesh_ota::Ota` plugin (pmesh's
//! receivers or the stock painlessMesh behaviour), a distributor offers an image in classic
//! unicast, classic broadcast or pmesh mode, faults strike mid-transfer, and the report gains
//! an `ota` section with the figures `pmesh bench ota` prints.
//!
//! - [`scenario`]: the `[ota]` table and the overrides of `pmesh sim`'s `--ota*` flags ([`OtaScenario`], [`OtaOverrides`]).
//! - [`image`]: the image (a file such as the running executable, or synthetic firmware).
//! - [`app`]: the [`OtaApp`] the engine runs, and the per-node plugin wrapper that measures.
//! - [`figures`]: the link-level figures, next to their optimum and lower bound.
//!
//! ```no_run
//! use pmesh_sim::ota::{self, OtaScenario};
//! use pmesh_sim::{Scenario, Topology};
//! let sc = Scenario { nodes: 20, topology: Topology::Tree { fanout: 3 }, ..Scenario::default() };
//! let mut sim = ota::build(sc, OtaScenario::default()).unwrap();
//! let report = ota::run(&mut sim, |_| {});
//! let f = ota::figures(&report).unwrap();
//! println!("{} of {} targets in {:?} s", f.completed, f.targets, f.completion_s);
//! ```

pub mod app;
pub mod campaign;
pub mod figures;
pub mod image;
pub mod scenario;

use std::time::Instant as WallInstant;

pub use app::{NodeRole, OtaApp, OtaNode, OtaSection};
pub use figures::{OtaFigures, figures, section, summary};
pub use image::Image;
pub use scenario::{
    ApplyMode, ByteSize, OfferAt, OtaMode, OtaOverrides, OtaScenario, Receivers,
    split_scenario_toml,
};

use crate::clock::{SEC, SimTime};
use crate::report::Report;
use crate::rng::SimRng;
use crate::scenario::{Action, Dur, Scenario, TimedEvent};
use crate::{Sim, SimApp};

/// Settling time between the mesh forming and an `offer_at = "formed"` offer.
pub const SETTLE: Dur = Dur::secs(1);
/// Steps of [`run`] (simulated time between progress callbacks and stall checks).
const STEP: SimTime = SEC;

/// Builds the simulation of `ota` on the mesh `sc`: loads the image, finds the offer time
/// (with `offer_at = "formed"`, a probe run of the same scenario up to the moment the mesh
/// has formed, so the time is exact), and adds the offer and the crash/restart events of
/// `crash_share` to the scenario's own events.
pub fn build(sc: Scenario, ota: OtaScenario) -> Result<Sim<OtaApp>, String> {
    sc.validate()?;
    ota.validate(&sc)?;
    let image = Image::load(&ota, sc.seed)?;
    build_with_image(sc, ota, image)
}

/// [`build`] with an image already loaded (the bench loads it once for every run).
pub fn build_with_image(
    mut sc: Scenario,
    ota: OtaScenario,
    image: Image,
) -> Result<Sim<OtaApp>, String> {
    sc.validate()?;
    ota.validate(&sc)?;
    let offer_at = match ota.offer_at {
        OfferAt::At(t) => t,
        OfferAt::Formed => {
            let app = OtaApp::new(&sc, ota.clone(), image.clone())?;
            let mut probe = Sim::with_app(sc.clone(), app)?;
            let limit = ota.form_timeout.micros().min(sc.duration.micros());
            let formed = run_until_formed(&mut probe, limit).ok_or_else(|| {
                format!(
                    "the mesh did not form within {} (raise ota.form_timeout or set ota.offer_at to a time)",
                    Dur(limit)
                )
            })?;
            Dur(formed + SETTLE.micros())
        }
    };
    if offer_at >= sc.duration {
        return Err(format!(
            "the offer at {offer_at} is not before the end of the run ({})",
            sc.duration
        ));
    }
    let app = OtaApp::new(&sc, ota.clone(), image)?;
    sc.events.push(TimedEvent {
        at: offer_at,
        action: Action::App {
            node: ota.distributor,
            data: app::offer_action(),
        },
    });
    sc.events.extend(crash_events(&sc, &ota, &app, offer_at));
    sc.events.sort_by_key(|e| e.at);
    Sim::with_app(sc, app)
}

/// The crash and restart events of `ota.crash_share`: that share of the targets (at least
/// one when the share is positive), chosen by the seed, each crashing at a time drawn from
/// `crash_window` after the offer and booting `down_for` later.
pub fn crash_events(
    sc: &Scenario,
    ota: &OtaScenario,
    app: &OtaApp,
    offer_at: Dur,
) -> Vec<TimedEvent> {
    if ota.crash_share <= 0.0 {
        return Vec::new();
    }
    let mut pool = app.targets();
    let mut rng = SimRng::stream(sc.seed, 0x07A1);
    app::shuffle(&mut pool, &mut rng);
    let k = ((ota.crash_share * pool.len() as f64).ceil() as usize).min(pool.len());
    pool.truncate(k);
    pool.sort_unstable();
    let [lo, hi] = ota.crash_window;
    let mut out = Vec::new();
    for node in pool {
        let at = offer_at.micros() + rng.range(lo.micros(), hi.micros());
        out.push(TimedEvent {
            at: Dur(at),
            action: Action::Crash { node },
        });
        out.push(TimedEvent {
            at: Dur(at + ota.down_for.micros()),
            action: Action::Restart { node },
        });
    }
    out
}

/// Steps `sim` one second at a time until every node that is up is in one component and
/// every node list is complete; returns that time. `None` if it does not happen by `limit`
/// (or the end of the run).
pub fn run_until_formed<A: SimApp>(sim: &mut Sim<A>, limit: SimTime) -> Option<SimTime> {
    let end = limit.min(sim.scenario().duration.micros());
    while sim.now() < end {
        sim.run_until(sim.now() + STEP);
        if formed(sim) {
            return Some(sim.now());
        }
    }
    None
}

/// Every node that is up (all but late joiners and crashed ones) is in one component, and
/// every node's node list names exactly that component.
pub fn formed<A: SimApp>(sim: &Sim<A>) -> bool {
    let late = sim.scenario().late_joiners();
    let expected = sim.scenario().nodes as usize - late.len();
    let comps = sim.components_now();
    let [one] = &comps[..] else { return false };
    one.len() == expected
        && one.iter().all(|&id| {
            sim.node(id)
                .is_some_and(|n| n.node_list(true).len() == one.len())
        })
}

/// What [`run`] reports after every simulated second.
#[derive(Clone, Debug)]
pub struct RunProgress {
    /// Simulated seconds now.
    pub sim_s: f64,
    /// Simulated seconds at which the run ends at the latest.
    pub end_s: f64,
    /// Events so far.
    pub events: u64,
    /// Share of the image the targets hold, 0..=1.
    pub fraction: f64,
    /// Targets that installed the image.
    pub installed: u32,
    /// Targets.
    pub targets: u32,
    /// The offer was made.
    pub offered: bool,
}

/// Runs an OTA simulation to the end: until every target installed the image, nothing
/// progressed for `give_up_after` after the offer, or the scenario's duration. Calls
/// `progress` after every simulated second. The report's `app.ota` section holds the
/// application's view plus the link-level [`OtaFigures`] (`app.ota.figures`, deterministic:
/// no wall-clock figures in it), and `wall` covers the whole run.
pub fn run(sim: &mut Sim<OtaApp>, progress: impl FnMut(&RunProgress)) -> Report {
    run_timed(sim, progress).0
}

/// [`run`], also returning the wall-clock seconds from the offer to the end of the run (the
/// rollout itself, without the mesh's formation), if an offer was scheduled.
pub fn run_timed(
    sim: &mut Sim<OtaApp>,
    mut progress: impl FnMut(&RunProgress),
) -> (Report, Option<f64>) {
    let wall = WallInstant::now();
    let events_before = sim.events();
    let end = sim.scenario().duration.micros();
    let give_up = sim.app().scenario().give_up_after.micros();
    let offer_at = sim
        .scenario()
        .events
        .iter()
        .filter(|e| matches!(&e.action, Action::App { data, .. } if *data == app::offer_action()))
        .map(|e| e.at.micros())
        .min();
    let mut rollout_wall: Option<WallInstant> = None;
    while sim.now() < end && !sim.app().finished() {
        let mut next = sim.now() + STEP;
        if let Some(t) = offer_at
            && rollout_wall.is_none()
        {
            if sim.now() + 1 >= t {
                // Everything before the offer is done: the rollout starts now.
                rollout_wall = Some(WallInstant::now());
            } else {
                next = next.min(t - 1);
            }
        }
        sim.run_until(next);
        let app = sim.app();
        if app.offered_at().is_some() && sim.now() > app.last_progress() + give_up {
            sim.app_mut().stop("stalled");
        }
        let app = sim.app();
        let targets = app.targets().len() as u32;
        progress(&RunProgress {
            sim_s: crate::clock::secs(sim.now()),
            end_s: crate::clock::secs(end),
            events: sim.events(),
            fraction: app.fraction_done(),
            installed: app.installed().len() as u32,
            targets,
            offered: app.offered_at().is_some(),
        });
    }
    let mut report = sim.run();
    let rollout_s = rollout_wall.map(|w| w.elapsed().as_secs_f64());
    let seconds = wall.elapsed().as_secs_f64();
    report.wall.seconds = seconds;
    if seconds > 0.0 {
        report.wall.events_per_s = (report.events - events_before) as f64 / seconds;
        report.wall.sim_s_per_wall_s = report.simulated_s / seconds;
    }
    figures::attach(&mut report);
    (report, rollout_s)
}
