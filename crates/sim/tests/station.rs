//! The WiFi station layer against the reference's `StationScan` (painlessMeshSTA.cpp) and
//! `layout::syncLayout`, on hand-placed radio layouts where the outcome is known.

use pmesh_sim::scenario::{Dur, Span};
use pmesh_sim::{Scenario, Sim, Topology};

/// Range 50 m, no RSSI fading, every node booting at t = 0, no generated traffic.
fn placed(positions: &[[f64; 2]], minutes: u64) -> Scenario {
    let mut sc = Scenario {
        nodes: positions.len() as u32,
        topology: Topology::Radio {
            range_m: 50.0,
            neighbours: 16.0,
            area_m: None,
            connected: true,
            positions: Some(positions.to_vec()),
        },
        duration: Dur::secs(minutes * 60),
        roots: vec![1],
        ..Scenario::default()
    };
    sc.wifi.rssi_noise_db = 0.0;
    sc.wifi.boot_jitter = Dur::secs(0);
    sc.traffic.enabled = false;
    sc.link.latency_ms = Span::fixed(5.0);
    sc
}

/// Two clusters 45 m apart at one point. Each forms its own tree at boot (every station
/// takes its strongest AP); the tops (1-2 and 5-6, mutual nearest pairs) hear only their own
/// cluster, so only node 4, a station of the rootless cluster that hears node 3 of the rooted
/// one, can join them. It does so by painlessMesh's reconfiguration: it drops its uplink with
/// probability stability/1000 and `connectToAP()` then takes the best AP of its last scan,
/// which lists only APs outside its tree then. Rescanning instead would find node 5 (10 m)
/// stronger than node 3 (45 m) and rejoin its own cluster for ever.
#[test]
fn a_rootless_cluster_joins_the_root_through_reconfiguration() {
    let sc = placed(
        &[
            [0.0, 0.0],   // 1 root
            [3.0, 0.0],   // 2
            [40.0, 0.0],  // 3 hears 4
            [85.0, 0.0],  // 4 hears 3
            [95.0, 0.0],  // 5
            [96.0, 0.0],  // 6
            [110.0, 0.0], // 7
        ],
        15,
    );
    let mut sim = Sim::new(sc).unwrap();
    sim.run_until(30 * pmesh_sim::clock::SEC);
    let parts = sim.components_now();
    assert_eq!(
        parts,
        vec![vec![4, 5, 6, 7], vec![1, 2, 3]],
        "two trees after boot"
    );
    let report = sim.run();
    assert_eq!(
        sim.components_now(),
        vec![vec![1, 2, 3, 4, 5, 6, 7]],
        "one mesh at the end; wifi {:?}",
        report.wifi
    );
    assert!(report.wifi.reconfigurations >= 1, "{:?}", report.wifi);
    assert_eq!(
        report.invariants.violations_total, 0,
        "{:?}",
        report.invariants
    );
}

#[test]
fn positions_must_match_the_nodes() {
    let mut sc = placed(&[[0.0, 0.0], [10.0, 0.0]], 1);
    sc.nodes = 3;
    let err = Sim::new(sc).unwrap_err();
    assert!(err.contains("2 given for 3 nodes"), "{err}");
    let mut sc = placed(&[[0.0, 0.0], [f64::NAN, 0.0]], 1);
    sc.nodes = 2;
    let err = Sim::new(sc).unwrap_err();
    assert!(err.contains("node 2"), "{err}");
}

/// Two pairs 200 m apart (range 50 m) can never form one mesh: the report says the radio
/// graph has two islands, and the protocol forms one mesh on each.
#[test]
fn radio_islands_are_reported_and_each_forms_its_own_mesh() {
    let mut sc = placed(&[[0.0, 0.0], [10.0, 0.0], [200.0, 0.0], [210.0, 0.0]], 3);
    // Boot jitter on: two nodes that are each other's only AP, booting and rescanning in the
    // same microsecond, dial each other at once, both close the duplicate and do it again
    // for ever (an artefact of perfectly symmetric timing; see docs/simulator.md).
    sc.wifi.boot_jitter = Scenario::default().wifi.boot_jitter;
    let r = Sim::new(sc).unwrap().run();
    let radio = r.radio.clone().expect("radio model");
    assert_eq!(radio.graph_components, 2);
    assert_eq!(radio.mean_in_range, 1.0);
    assert_eq!(r.formed_at_s, None);
    assert_eq!(r.convergence.last().unwrap().components, 2);
    assert!(r.summary().contains("2 separate radio islands"));
    // One island: the placement is connected and says so.
    let mut sc = placed(&[[0.0, 0.0], [10.0, 0.0]], 1);
    sc.wifi.boot_jitter = Scenario::default().wifi.boot_jitter;
    let r = Sim::new(sc).unwrap().run();
    assert_eq!(r.radio.unwrap().graph_components, 1);
    assert!(r.formed_at_s.is_some());
}
