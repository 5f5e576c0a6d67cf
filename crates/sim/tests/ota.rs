//! OTA rollouts end to end in the simulator: the real node and the real OTA plugin on every
//! node, classic unicast and broadcast with pmesh and stock receivers, mixed meshes, pmesh's
//! protocol with crashes and late joiners, and the figures the bench prints.

use pmesh_ota::OtaStore;
use pmesh_ota::bounds::pipelined_lower_bound_s;
use pmesh_sim::ota::{self, ByteSize, OfferAt, OtaFigures, OtaMode, OtaScenario, Receivers};
use pmesh_sim::report::Report;
use pmesh_sim::scenario::{Dur, Span, Traffic};
use pmesh_sim::{Action, Scenario, Sim, TimedEvent, Topology};

/// A mesh without generated traffic, fixed 5 ms links at 2 Mbit/s.
fn mesh(nodes: u32, topology: Topology) -> Scenario {
    let mut sc = Scenario {
        name: "ota-test".into(),
        nodes,
        topology,
        duration: Dur::secs(3600),
        traffic: Traffic {
            broadcast_every: None,
            single_every: None,
            ..Traffic::default()
        },
        ..Scenario::default()
    };
    sc.link.latency_ms = Span::fixed(5.0);
    sc
}

fn rollout(mode: OtaMode, receivers: Receivers, kib: u64) -> OtaScenario {
    OtaScenario {
        mode,
        receivers,
        image_bytes: Some(ByteSize(kib << 10)),
        give_up_after: Dur::secs(300),
        ..OtaScenario::default()
    }
}

fn run(sc: Scenario, o: OtaScenario) -> (Sim<ota::OtaApp>, Report, OtaFigures) {
    let mut sim = ota::build(sc, o).unwrap();
    let report = ota::run(&mut sim, |_| {});
    let f = ota::figures(&report).expect("the report has OTA figures");
    (sim, report, f)
}

/// Every target boots `expected` (what a stock node flashes for a compressed classic offer
/// is the gzip file itself).
fn assert_all_booted(sim: &Sim<ota::OtaApp>, expected: &[u8]) {
    for id in sim.app().targets() {
        let booted = sim.app().sink(id).unwrap().booted();
        assert_eq!(booted.as_deref(), Some(expected), "node {id}");
    }
}

fn image(sim: &Sim<ota::OtaApp>) -> Vec<u8> {
    sim.app().image().source.bytes().to_vec()
}

#[test]
fn pmesh_rollout_carries_each_chunk_once_per_link() {
    let (sim, report, f) = run(
        mesh(13, Topology::Tree { fanout: 3 }),
        rollout(OtaMode::Pmesh, Receivers::Pmesh, 96),
    );
    assert_eq!(
        (f.targets, f.completed),
        (12, 12),
        "{}",
        ota::summary(&report)
    );
    // Compressed: chunks span as many image bytes as deflate into 3 KiB (the planner the
    // distributor runs), not a fixed 4 KiB.
    let img = image(&sim);
    let spans = pmesh_ota::pmesh::Spans::plan(
        &mut pmesh_ota::MemorySource::new(img.clone()),
        img.len() as u64,
        pmesh_ota::offer::PMESH_COMPRESSED_CHUNK,
    )
    .unwrap();
    assert_eq!(f.chunks, spans.count());
    assert_eq!(f.optimum_link_tx, 12 * u64::from(f.chunks));
    assert_eq!(
        f.data_link_tx, f.optimum_link_tx,
        "loss-free: every edge carries every chunk once"
    );
    assert!(f.control_share < 0.05, "{}", f.control_share);
    assert_eq!(f.depth, 2);
    assert!(f.completion_s.unwrap() >= f.lower_bound_s.unwrap());
    assert!(
        f.wire_bytes_per_image_byte < 1.0,
        "compressed: {}",
        f.wire_bytes_per_image_byte
    );
    assert!(f.peak_tracking_bytes > 0 && f.peak_tracking_bytes <= f.tracking_budget_bytes);
    assert_eq!(report.invariants.violations_total, 0);
    assert_all_booted(&sim, &image(&sim));
}

#[test]
fn classic_unicast_updates_pmesh_and_stock_receivers() {
    for receivers in [Receivers::Pmesh, Receivers::Stock] {
        let mut o = rollout(OtaMode::Unicast, receivers, 24);
        // Stock ESP32 nodes flash what they are served: no gzip for them.
        o.compressed = receivers == Receivers::Pmesh;
        let (sim, report, f) = run(mesh(7, Topology::Tree { fanout: 2 }), o);
        let s = ota::summary(&report);
        assert_eq!((f.targets, f.completed), (6, 6), "{receivers:?}: {s}");
        // No loss: every chunk is requested once by every receiver and crosses every hop
        // of its path once: k·Σhᵢ, with Σhᵢ = 1+1+2+2+2+2.
        assert_eq!(f.unicast_link_tx, u64::from(f.chunks) * 10);
        assert_eq!(f.data_link_tx, f.unicast_link_tx, "{receivers:?}: {s}");
        assert!(f.data_tx_ratio > 1.6, "unicast costs more than the optimum");
        assert!(
            f.control_share > 0.05,
            "a request per chunk per hop: {}",
            f.control_share
        );
        assert_eq!(f.repair_bytes, None, "repair is a pmesh-protocol figure");
        assert_all_booted(&sim, &image(&sim));
        for id in sim.app().targets() {
            let cur = sim.app().store(id).unwrap().current_image().unwrap();
            assert_eq!(cur.role, "sensor");
        }
    }
}

#[test]
fn classic_broadcast_with_pmesh_receivers_starts_with_the_distributor_as_root() {
    let (sim, report, f) = run(
        mesh(10, Topology::Tree { fanout: 3 }),
        rollout(OtaMode::Broadcast, Receivers::Pmesh, 24),
    );
    assert_eq!(f.completed, 9, "{}", ota::summary(&report));
    // Each flooded chunk crosses every tree edge once; a second driver may overlap a little.
    assert!(f.data_link_tx >= f.optimum_link_tx);
    assert!(f.data_tx_ratio < 1.2, "{}", f.data_tx_ratio);
    assert_all_booted(&sim, &image(&sim));
}

#[test]
fn stock_broadcast_never_starts_when_the_distributor_is_root() {
    let (_, report, f) = run(
        mesh(10, Topology::Tree { fanout: 3 }),
        rollout(OtaMode::Broadcast, Receivers::Stock, 24),
    );
    let s = ota::section(&report).unwrap();
    assert_eq!(f.completed, 0, "{}", ota::summary(&report));
    assert_eq!(
        f.data_link_tx, 0,
        "no stock node requests: only the root would"
    );
    assert_eq!(f.lower_bound_s, None, "no data frame, no bound");
    assert_eq!((s.stuck, f.stuck), (9, 9));
    assert_eq!(s.stopped.as_deref(), Some("stalled"));
    assert!(ota::summary(&report).contains("stuck: 9"));
}

#[test]
fn stock_broadcast_runs_when_a_stock_root_wants_the_image() {
    let mut sc = mesh(10, Topology::Tree { fanout: 3 });
    sc.roots = vec![2];
    let mut o = rollout(OtaMode::Broadcast, Receivers::Stock, 24);
    o.compressed = false;
    let (sim, report, f) = run(sc, o);
    assert_eq!(f.completed, 9, "{}", ota::summary(&report));
    assert_eq!(
        f.data_link_tx, f.optimum_link_tx,
        "one request per chunk, each flood once per edge"
    );
    assert_all_booted(&sim, &image(&sim));
}

#[test]
fn mixed_mesh_broadcast_and_pmesh_through_stock_relays() {
    // Classic broadcast: pmesh receivers drive the flood for everyone, stock nodes take
    // the chunks in sequence.
    let mut o = rollout(OtaMode::Broadcast, Receivers::Mixed, 24);
    o.compressed = false;
    o.stock_nodes = vec![3, 5, 8];
    let (sim, report, f) = run(mesh(10, Topology::Tree { fanout: 3 }), o);
    assert_eq!(f.completed, 9, "{}", ota::summary(&report));
    assert_eq!(ota::section(&report).unwrap().stock_targets, 3);
    assert_all_booted(&sim, &image(&sim));

    // pmesh mode: the stock node in the middle of a chain cannot install a pmesh rollout,
    // but forwards it to the pmesh nodes behind it.
    let mut o = rollout(OtaMode::Pmesh, Receivers::Mixed, 24);
    o.stock_nodes = vec![3];
    let (sim, report, f) = run(mesh(5, Topology::Chain), o);
    assert_eq!(sim.app().targets(), vec![2, 4, 5]);
    assert_eq!(f.completed, 3, "{}", ota::summary(&report));
    assert_eq!(sim.app().sink(3).unwrap().booted(), None);
    assert_all_booted(&sim, &image(&sim));
}

/// When an `offer_at = "formed"` rollout offers: the time of the offer action `build` adds.
fn formed_offer_time(sc: &Scenario, o: &OtaScenario) -> Dur {
    let sim = ota::build(sc.clone(), o.clone()).unwrap();
    sim.scenario()
        .events
        .iter()
        .find(|e| matches!(e.action, Action::App { .. }))
        .expect("build adds the offer")
        .at
}

/// 20 nodes on slow links, 10 % of the targets crash while chunks flow.
fn crash_scenario() -> (Scenario, OtaScenario) {
    let mut sc = mesh(20, Topology::Tree { fanout: 3 });
    sc.link.bandwidth_kbit = Span::fixed(200.0);
    let mut o = rollout(OtaMode::Pmesh, Receivers::Pmesh, 192);
    o.crash_share = 0.1;
    o.crash_window = [Dur::secs(2), Dur::secs(5)];
    o.down_for = Dur::secs(2);
    (sc, o)
}

#[test]
fn crash_mid_transfer_resumes_from_neighbours() {
    let (sc, o) = crash_scenario();
    let (sim, report, f) = run(sc, o);
    let s = ota::section(&report).unwrap();
    let text = ota::summary(&report);
    assert_eq!(s.crashed_targets, 2, "{text}");
    assert_eq!(f.depth, 3, "offered once formed: {text}");
    assert_eq!(f.completed, 19, "{text}");
    assert_eq!(f.restarts_from_zero, 0, "{text}");
    assert!(
        s.resumes >= 1,
        "a crashed target resumed from a chunk > 0: {text}"
    );
    let repair = f.repair_bytes.unwrap();
    assert!(repair > 0, "{text}");
    assert!(
        f.repair_bytes_from_neighbour.unwrap() as f64 >= 0.95 * repair as f64,
        "{text}"
    );
    // Each crashed target began its image once and resumed it.
    for id in sim.app().targets() {
        let st = sim.app().sink(id).unwrap().stats();
        assert_eq!(st.begins, 1, "node {id}");
        if !sim.app().resumes(id).is_empty() {
            assert!(st.resumes >= 1, "node {id}");
        }
    }
    assert_all_booted(&sim, &image(&sim));
}

#[test]
fn same_scenario_same_report() {
    let (sc, o) = crash_scenario();
    let (_, a, _) = run(sc.clone(), o.clone());
    let (_, b, _) = run(sc, o);
    assert_eq!(a.deterministic_json(), b.deterministic_json());
}

#[test]
fn late_joiner_completes() {
    let mut sc = mesh(10, Topology::Tree { fanout: 3 });
    sc.link.bandwidth_kbit = Span::fixed(200.0);
    let mut o = rollout(OtaMode::Pmesh, Receivers::Pmesh, 128);
    // Node 10 is off when the image is offered and boots 3 s into the transfer.
    sc.events.push(TimedEvent {
        at: Dur::secs(3600),
        action: Action::Join { node: 10 },
    });
    let t = formed_offer_time(&sc, &o);
    sc.events[0].at = Dur(t.micros() + 3_000_000);
    o.offer_at = OfferAt::At(t);
    let (sim, report, f) = run(sc, o);
    assert_eq!(f.completed, 9, "{}", ota::summary(&report));
    assert!(sim.node(10).is_some());
    let transfer = report.app.as_ref().unwrap()["ota"]["install_s"][0]
        .as_f64()
        .unwrap();
    assert!(
        transfer > 3.0,
        "the others were still receiving when node 10 booted"
    );
    assert_eq!(
        sim.app().sink(10).unwrap().booted().as_deref(),
        Some(&image(&sim)[..])
    );
}

#[test]
fn figures_follow_the_arithmetic() {
    // 3-node chain, uncompressed pmesh, 10,000 bytes in 4,096-byte chunks: k = 3.
    let mut o = rollout(OtaMode::Pmesh, Receivers::Pmesh, 0);
    o.image_bytes = Some(ByteSize(10_000));
    o.compressed = false;
    let (_, report, f) = run(mesh(3, Topology::Chain), o);
    assert_eq!(f.chunks, 3);
    assert_eq!(f.optimum_link_tx, 6, "(N−1)·k = 2·3");
    assert_eq!(f.unicast_link_tx, 9, "k·Σh = 3·(1+2)");
    assert_eq!(f.data_link_tx, 6);
    assert_eq!(f.depth, 2);
    // Z85 makes 4 bytes 5 characters: two full chunks and a 1,808-byte one, plus headers.
    let payload = (4096 / 4 * 5) * 2 + 1808 / 4 * 5;
    assert!(
        f.data_bytes > 2 * payload && f.data_bytes < 2 * payload + 6 * 200,
        "{}",
        f.data_bytes
    );
    // Lower bound with c = the mean data frame, S = k·c, B = 2 Mbit/s, d = 2, L = 5 ms.
    let c = (f.data_bytes as f64 / 6.0).round() as u64;
    let expect = pipelined_lower_bound_s(3 * c, c, 250_000.0, 2, 0.005);
    assert!(
        (f.lower_bound_s.unwrap() - expect).abs() < 1e-3,
        "{:?} vs {expect}",
        f.lower_bound_s
    );
    assert!((expect - (4.0 * c as f64 / 250_000.0 + 0.010)).abs() < 1e-9);
    assert!(f.completion_s.unwrap() >= f.lower_bound_s.unwrap());
    // Uncompressed: Z85 and JSON cost about 1.25× on the wire.
    assert!(
        (1.2..1.35).contains(&f.wire_bytes_per_image_byte),
        "{}",
        f.wire_bytes_per_image_byte
    );
    // No schedule of these exact frames beats ideal store-and-forward, and the protocol
    // comes close to it.
    let ideal = f.store_forward_s.unwrap();
    assert!(ideal >= 4.0 * 1808.0 / 250_000.0, "{ideal}");
    let done = f.completion_s.unwrap();
    assert!(
        done >= ideal - 1e-3 && done <= 1.5 * ideal,
        "{done} vs {ideal}"
    );
    assert_eq!(f.tracking_budget_bytes, 4096 + 1);
    assert!(report.app.as_ref().unwrap()["ota"]["figures"].is_object());
}

#[test]
fn scenario_files_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("ota-") && name.ends_with(".toml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, o) = ota::split_scenario_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(o.is_some(), "{name} has an [ota] table");
        seen += 1;
    }
    assert!(seen >= 3, "{seen} ota scenario files");
}

/// The example scenario files do what their comments say.
#[test]
fn example_scenarios_complete() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
    let load = |name: &str| {
        let text = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        let (sc, o) = ota::split_scenario_toml(&text).unwrap();
        run(sc, o.unwrap())
    };
    let (sim, report, f) = load("ota-late-joiner.toml");
    assert_eq!(
        (f.completed, f.targets),
        (24, 24),
        "{}",
        ota::summary(&report)
    );
    for late in [24, 25] {
        let accepted = sim.app().store(late).unwrap().current_image();
        assert!(accepted.is_some(), "late joiner {late} installed");
    }
    let (_, report, f) = load("ota-unicast-stock.toml");
    assert_eq!(
        (f.completed, f.targets),
        (19, 19),
        "{}",
        ota::summary(&report)
    );
    assert_eq!(f.data_link_tx, f.unicast_link_tx);
    let (_, report, f) = load("ota-broadcast-mixed.toml");
    let s = ota::section(&report).unwrap();
    assert_eq!((s.stock_targets, s.crashed_targets), (14, 2));
    assert_eq!(f.completed, f.targets, "{}", ota::summary(&report));
    assert_eq!(
        s.restarts_from_zero,
        1,
        "the stock node starts over: {}",
        ota::summary(&report)
    );
}
