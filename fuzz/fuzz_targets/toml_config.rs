//! TOML configuration: the scenario files `pmesh sim FILE` reads (`scenarios/*.toml`: the mesh,
//! its links, clocks, events and an optional `[ota]` table; `pmesh_sim::ota::
//! split_scenario_toml`), and a short simulation of small valid scenarios.
//!
//! Input: the file's text.
//!
//! Invariants:
//! - a file is read or refused with a message, never a panic;
//! - what reads prints back (as `pmesh sim --print-scenario` prints it: the mesh table and the
//!   `[ota]` table) to text that reads again to the same scenario, and printing that gives the
//!   same text;
//! - a scenario that reads runs: every small one (at most 8 nodes) runs 20 simulated seconds
//!   without a panic (the engine checks its own invariants on every delivery).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmesh_sim::ota::{OtaScenario, split_scenario_toml};
use pmesh_sim::scenario::Dur;
use pmesh_sim::{Scenario, Sim};

/// Largest scenario simulated per input (larger ones are only read and printed).
const MAX_SIM_NODES: u32 = 8;
/// Simulated time per run.
const SIM_SECS: u64 = 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (scenario, ota) = match split_scenario_toml(text) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.trim().is_empty(), "refused without a message");
            return;
        }
    };
    let printed = print(&scenario, ota.as_ref());
    let (again, ota_again) = split_scenario_toml(&printed)
        .unwrap_or_else(|e| panic!("printed scenario does not read back ({e}):\n{printed}"));
    assert_eq!(
        print(&again, ota_again.as_ref()),
        printed,
        "printing is not a fixed point"
    );
    if scenario.nodes <= MAX_SIM_NODES {
        let mut short = scenario;
        short.duration = Dur::secs(SIM_SECS).min(short.duration);
        if let Ok(mut sim) = Sim::new(short) {
            let _report = sim.run();
        }
    }
});

/// The scenario as `pmesh sim --print-scenario` prints it: the mesh table, then `[ota]`.
fn print(scenario: &Scenario, ota: Option<&OtaScenario>) -> String {
    let mut table = toml::Table::try_from(scenario).expect("a scenario serializes");
    if let Some(o) = ota {
        table.insert(
            "ota".into(),
            toml::Value::try_from(o).expect("an [ota] table serializes"),
        );
    }
    toml::to_string(&table).expect("a table prints")
}
