//! Engine-level properties: determinism, convergence, crash detection, loop-freedom and
//! broadcast delivery, each on the real node code.

use pmesh_sim::clock::SEC;
use pmesh_sim::scenario::{Dur, Traffic};
use pmesh_sim::{Action, Scenario, Sim, TimedEvent, Topology};

fn ev(at_s: u64, action: Action) -> TimedEvent {
    TimedEvent {
        at: Dur::secs(at_s),
        action,
    }
}

fn tree(nodes: u32, fanout: u32, minutes: u64) -> Scenario {
    Scenario {
        nodes,
        topology: Topology::Tree { fanout },
        duration: Dur::secs(minutes * 60),
        ..Scenario::default()
    }
}

fn radio(nodes: u32, neighbours: f64, seed: u64, minutes: u64) -> Scenario {
    Scenario {
        nodes,
        seed,
        topology: Topology::Radio {
            range_m: 50.0,
            neighbours,
            area_m: None,
            connected: true,
            positions: None,
        },
        duration: Dur::secs(minutes * 60),
        ..Scenario::default()
    }
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let mut sc = radio(40, 12.0, 9, 5);
    sc.events = vec![
        ev(120, Action::Crash { node: 7 }),
        ev(150, Action::Restart { node: 7 }),
        ev(
            200,
            Action::Partition {
                nodes: vec![1, 2, 3],
            },
        ),
        ev(230, Action::Heal),
    ];
    let a = Sim::new(sc.clone()).unwrap().run();
    let b = Sim::new(sc.clone()).unwrap().run();
    assert_eq!(a.deterministic_json(), b.deterministic_json());
    assert!(
        a.events > 1_000,
        "the run did something: {} events",
        a.events
    );
    sc.seed = 10;
    let c = Sim::new(sc).unwrap().run();
    assert_ne!(a.deterministic_json(), c.deterministic_json());
}

#[test]
fn converges_after_formation_and_after_partition_heal() {
    let mut sc = tree(25, 3, 8);
    // Node 2 and its subtree (5, 6, 7 and their children) are cut off, then reunited.
    let side: Vec<u32> = vec![2, 5, 6, 7, 14, 15, 16, 17, 18, 19, 20, 21, 22];
    sc.events = vec![
        ev(
            120,
            Action::Partition {
                nodes: side.clone(),
            },
        ),
        ev(240, Action::Heal),
    ];
    let mut sim = Sim::new(sc).unwrap();
    let r = sim.run();
    assert_eq!(r.invariants.violations, vec![], "{}", r.summary());
    assert_eq!(r.convergence.len(), 3, "{:?}", r.convergence);
    let start = &r.convergence[0];
    // A station that scanned before its parent booted rescans one scan interval (30 s) later.
    assert!(
        start.converged_after_s.is_some_and(|t| t < 70.0),
        "formation: {start:?}"
    );
    assert_eq!(start.components, 1);
    let part = &r.convergence[1];
    assert_eq!(part.components, 2, "{part:?}");
    assert!(part.converged_after_s.is_some(), "{part:?}");
    let heal = &r.convergence[2];
    assert_eq!(heal.components, 1, "{heal:?}");
    assert!(
        heal.converged_after_s.is_some_and(|t| t < 150.0),
        "{heal:?}"
    );
    // Every node knows all 25 at the end.
    for id in 1..=25 {
        assert_eq!(sim.node(id).unwrap().node_list(true).len(), 25, "node {id}");
    }
}

#[test]
fn crashed_node_leaves_every_node_list_within_the_spec_timeouts() {
    // Node 5 is interior (children 14, 15, 16). Its parent finds out only through the NODE_SYNC
    // cadence: at most one 60 s sync period plus the 10 s reply timeout, then a sync wave.
    let mut sc = tree(30, 3, 6);
    sc.traffic = Traffic {
        broadcast_every: None,
        single_every: None,
        ..Traffic::default()
    };
    sc.events = vec![ev(180, Action::Crash { node: 5 })];
    let mut sim = Sim::new(sc).unwrap();
    sim.run_until(179 * SEC);
    let knows_5 = |sim: &Sim| {
        sim.nodes_up()
            .into_iter()
            .filter(|&id| sim.node(id).unwrap().node_list(false).contains(&5))
            .count()
    };
    assert_eq!(knows_5(&sim), 29, "before the crash everyone knows node 5");
    let bound = 60 + 10 + 5; // sync period + timeout + propagation slack, seconds
    sim.run_until((180 + bound) * SEC);
    assert_eq!(
        knows_5(&sim),
        0,
        "node 5 still listed {bound} s after its crash"
    );
    let r = sim.run();
    assert_eq!(r.invariants.violations, vec![]);
}

#[test]
fn radio_mesh_never_keeps_a_cycle() {
    let mut formed = 0;
    for seed in 1..=4 {
        let mut sc = radio(60, 10.0, seed, 10);
        sc.traffic.broadcast_every = None;
        sc.traffic.single_every = None;
        sc.events = vec![
            ev(200, Action::Crash { node: 3 }),
            ev(230, Action::Restart { node: 3 }),
            ev(
                300,
                Action::Partition {
                    nodes: (1..=20).collect(),
                },
            ),
            ev(360, Action::Heal),
        ];
        let r = Sim::new(sc).unwrap().run();
        let kept: Vec<_> = r
            .invariants
            .violations
            .iter()
            .filter(|v| v.kind == "cycle-kept")
            .collect();
        assert!(kept.is_empty(), "seed {seed}: {kept:?}");
        formed += r.invariants.cycles_formed;
    }
    // Cycles do form while stations race to join each other; the protocol breaks them.
    assert!(
        formed > 0,
        "no cycle ever formed: the check was not exercised"
    );
}

#[test]
fn broadcasts_reach_each_node_exactly_once_under_churn() {
    let mut sc = tree(30, 2, 8);
    sc.traffic.broadcast_every = Some(Dur::secs(2));
    sc.traffic.single_every = Some(Dur::secs(1));
    sc.traffic.start = Dur::secs(20);
    sc.events = vec![
        ev(60, Action::Crash { node: 4 }),
        ev(90, Action::Restart { node: 4 }),
        ev(150, Action::Reset { a: 2, b: 5 }),
        ev(200, Action::Cut { a: 1, b: 3 }),
        ev(260, Action::Crash { node: 2 }),
        ev(300, Action::Restart { node: 2 }),
        ev(
            360,
            Action::Partition {
                nodes: vec![3, 6, 7, 13, 14, 15, 16],
            },
        ),
        ev(400, Action::Heal),
    ];
    let r = Sim::new(sc).unwrap().run();
    let m = &r.messages;
    assert_eq!(r.invariants.violations, vec![], "{}", r.summary());
    assert!(
        m.broadcasts_sent > 200 && m.broadcast_expected > 2_500,
        "{m:?}"
    );
    assert_eq!(m.broadcast_delivered, m.broadcast_expected, "{m:?}");
    assert_eq!(m.broadcast_duplicates, 0);
    // SINGLEs sent along a route that just broke are lost (the protocol has no retransmission).
    assert!(m.singles_delivered > m.singles_sent * 3 / 4, "{m:?}");
}

#[test]
fn radio_broadcasts_exactly_once_under_churn() {
    let mut sc = radio(50, 16.0, 3, 8);
    sc.traffic.broadcast_every = Some(Dur::secs(3));
    sc.events = vec![
        ev(100, Action::Crash { node: 10 }),
        ev(130, Action::Restart { node: 10 }),
        ev(200, Action::Crash { node: 20 }),
        ev(330, Action::Restart { node: 20 }),
    ];
    let r = Sim::new(sc).unwrap().run();
    let dup_or_lost: Vec<_> = r
        .invariants
        .violations
        .iter()
        .filter(|v| v.kind.starts_with("broadcast"))
        .collect();
    assert!(dup_or_lost.is_empty(), "{dup_or_lost:?}");
    assert!(r.messages.broadcast_expected > 3_000, "{:?}", r.messages);
}

#[test]
fn a_stale_node_list_is_reported_with_time_and_nodes() {
    // A cut link is only noticed by the NODE_SYNC timeout, so node lists are stale for a
    // while; with a 5 s convergence bound and the next epoch 20 s later, the check must fire.
    let mut sc = tree(10, 3, 2);
    sc.invariants.convergence_bound = Dur::secs(5);
    sc.events = vec![ev(60, Action::Cut { a: 1, b: 2 }), ev(62, Action::Heal)];
    let r = Sim::new(sc).unwrap().run();
    let v = r
        .invariants
        .violations
        .iter()
        .find(|v| v.kind == "no-convergence" && v.t_us == 62 * SEC);
    // The check ran at 62 s, only 2 s after the cut: within the bound, not a violation.
    assert!(v.is_none(), "{v:?}");
    let mut sc = tree(10, 3, 2);
    sc.invariants.convergence_bound = Dur::secs(5);
    sc.traffic.broadcast_every = None;
    sc.traffic.single_every = None;
    sc.events = vec![ev(60, Action::Cut { a: 1, b: 2 }), ev(66, Action::Heal)];
    let r = Sim::new(sc).unwrap().run();
    let v = r
        .invariants
        .violations
        .iter()
        .find(|v| v.kind == "no-convergence" && v.t_us == 66 * SEC)
        .expect("stale lists reported");
    assert!(!v.nodes.is_empty());
}

#[test]
fn an_esp32_ap_takes_at_most_ten_stations() {
    // A star whose centre is an ESP32 soft-AP (MAX_CONN 10): 19 stations see only node 1, ten
    // get in, the others are refused at association and keep trying.
    let mut sc = Scenario {
        nodes: 20,
        topology: Topology::Star,
        duration: Dur::secs(180),
        ..Scenario::default()
    };
    sc.wifi.max_stations = Some(10);
    sc.events = vec![ev(90, Action::Crash { node: 3 })];
    let mut sim = Sim::new(sc).unwrap();
    let r = sim.run();
    let centre = sim.node(1).unwrap();
    let stations = centre
        .neighbours()
        .filter(|n| n.direction == pmesh_node::Direction::Ap)
        .count();
    assert_eq!(stations, 10, "{}", r.summary());
    assert!(r.wifi.association_failures > 0, "{:?}", r.wifi);
    // Node 3's crash freed a slot that another station took.
    assert!(!centre.node_list(false).contains(&3));
    assert_eq!(centre.node_list(false).len(), 10);
}
