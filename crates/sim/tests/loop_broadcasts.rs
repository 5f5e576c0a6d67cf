//! Broadcasts under transient cycles: a loop held in `Config::loop_grace` must not deliver a
//! broadcast twice (the node holds the cycle's link for broadcasts; see
//! docs/compatibility/node.md, "Loops"). Both scenarios delivered duplicates before that rule.

use pmesh_sim::{Report, Scenario, Sim};

/// Loads a scenario file (the engine's tables only), relative to the workspace root.
fn load(path: &str) -> Scenario {
    let path = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every owed broadcast delivered exactly once, and no invariant violated.
fn assert_exactly_once(r: &Report) {
    let m = &r.messages;
    assert!(m.broadcasts_sent > 100, "traffic ran: {m:?}");
    assert_eq!(m.broadcast_duplicates, 0, "{m:?}\n{:?}", r.invariants);
    assert_eq!(m.broadcast_delivered, m.broadcast_expected, "{m:?}");
    assert_eq!(r.invariants.violations_total, 0, "{:?}", r.invariants);
}

/// scenarios/radio-churn.toml (seed 3): an 11-node cycle formed after the heal stood for the
/// whole 2 s grace, and broadcast #128 went round it (105 duplicate deliveries before).
#[test]
fn radio_churn_delivers_every_broadcast_once() {
    let sc = load("scenarios/radio-churn.toml");
    assert_eq!(sc.seed, 3);
    let r = Sim::new(sc).unwrap().run();
    assert!(r.invariants.cycles_formed > 0, "the run formed a cycle");
    assert_exactly_once(&r);
}

/// scenarios/heal-stress.toml, seeds 18 and 24 (238 and 87 duplicates before).
#[test]
fn heal_stress_delivers_every_broadcast_once() {
    for seed in [18, 24] {
        let mut sc = load("scenarios/heal-stress.toml");
        sc.seed = seed;
        let r = Sim::new(sc).unwrap().run();
        assert!(
            r.invariants.cycles_formed > 0,
            "seed {seed}: a cycle formed"
        );
        assert_exactly_once(&r);
    }
}
