//! The example scenarios in `scenarios/` parse, and the small ones run clean.

use pmesh_sim::{Scenario, Sim};

/// Loads a scenario file. Tables the engine does not know (an application's own section,
/// such as OTA's `[ota]`) are the application's to parse and are set aside here.
fn load(name: &str) -> Scenario {
    const ENGINE_TABLES: [&str; 7] = [
        "topology",
        "link",
        "clock",
        "wifi",
        "traffic",
        "invariants",
        "events",
    ];
    let path = format!("{}/../../scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    table.retain(|k, v| !v.is_table() || ENGINE_TABLES.contains(&k));
    Scenario::from_toml(&toml::to_string(&table).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_example_scenario_parses() {
    let dir = format!("{}/../../scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(path.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 4, "found {n} scenarios in {dir}");
}

#[test]
fn default_file_is_the_built_in_default() {
    assert_eq!(load("default.toml"), Scenario::default());
}

#[test]
fn tree_partition_runs_clean_and_recovers() {
    let r = Sim::new(load("tree-partition.toml")).unwrap().run();
    assert_eq!(r.invariants.violations, vec![], "{}", r.summary());
    let last = r.convergence.last().unwrap();
    assert_eq!(last.components, 1, "{:?}", r.convergence);
    assert!(r.messages.broadcast_expected > 1_000);
    assert_eq!(
        r.messages.broadcast_delivered,
        r.messages.broadcast_expected
    );
}

#[test]
fn traffic_can_be_switched_off() {
    let mut sc = load("time-sync-tree.toml");
    sc.duration = pmesh_sim::scenario::Dur::secs(120);
    let r = Sim::new(sc).unwrap().run();
    assert_eq!(r.messages.broadcasts_sent + r.messages.singles_sent, 0);
    assert!(!r.by_type.contains_key("BROADCAST") && !r.by_type.contains_key("SINGLE"));
}
