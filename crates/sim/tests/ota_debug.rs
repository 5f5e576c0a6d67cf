//! A debugging tool, not a test (ignored by default): runs an OTA scenario file and prints
//! the report, then the pmesh agent state of every node that did not end with the whole
//! image (every node with `OTA_DEBUG_ALL=1`).
//!
//! ```text
//! OTA_DEBUG_FILE=$PWD/scenarios/ota-pmesh-crash.toml \
//!     cargo test -p pmesh-sim --release --test ota_debug -- --ignored --nocapture
//! ```

use pmesh_sim::ota;

#[test]
#[ignore = "a debugging tool: set OTA_DEBUG_FILE to a scenario with an [ota] table"]
fn dump_ota_scenario() {
    let Ok(path) = std::env::var("OTA_DEBUG_FILE") else {
        eprintln!("set OTA_DEBUG_FILE to a scenario file with an [ota] table");
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (sc, o) = ota::split_scenario_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let o = o.unwrap_or_else(|| panic!("{path}: no [ota] table"));
    let mut sim = ota::build(sc, o).unwrap_or_else(|e| panic!("{path}: {e}"));
    let wall = std::time::Instant::now();
    let report = ota::run(&mut sim, |_| {});
    print!("{}", report.summary());
    print!("{}", ota::summary(&report));
    eprintln!("wall {:.1} s", wall.elapsed().as_secs_f64());
    let all = std::env::var_os("OTA_DEBUG_ALL").is_some();
    let off = sim.app().offered_at().unwrap_or(0);
    for id in 1..=sim.scenario().nodes {
        let Some(node) = sim.node(id) else {
            eprintln!("node {id}: down");
            continue;
        };
        let agent = node.plugin().ota().pmesh();
        let status = agent.status();
        if all || status.is_some_and(|s| s.have < s.total) {
            eprintln!(
                "node {id}: installed at {:?} s after the offer, {status:?}\n    {agent:?}",
                sim.app()
                    .installed_at(id)
                    .map(|t| t.saturating_sub(off) as f64 / 1e6),
            );
        }
    }
}
