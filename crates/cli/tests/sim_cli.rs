//! `pmesh sim` end to end: the default run, deterministic JSON, scenario files, clear errors.

use std::process::Command;

fn pmesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pmesh"))
        .args(args)
        .output()
        .expect("pmesh runs")
}

#[test]
fn default_run_prints_the_summary() {
    let out = pmesh(&["sim"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "50 nodes",
        "formation",
        "converged",
        "time sync",
        "traffic",
        "invariants    all held",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn json_report_is_deterministic_apart_from_wall() {
    let args = [
        "sim",
        "--json",
        "-n",
        "30",
        "-d",
        "3m",
        "-e",
        "at=\"90s\", action=\"crash\", node=4",
    ];
    let strip = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        for key in [
            "nodes",
            "seed",
            "simulated_s",
            "events",
            "convergence",
            "time_sync",
            "traffic",
            "by_type",
            "links",
            "invariants",
            "messages",
        ] {
            assert!(v.get(key).is_some(), "report lacks {key}");
        }
        assert!(v["wall"]["seconds"].as_f64().is_some());
        v.as_object_mut().unwrap().remove("wall");
        v
    };
    let a = strip(pmesh(&args));
    let b = strip(pmesh(&args));
    assert_eq!(a, b);
    assert_eq!(a["convergence"][1]["after"], "crash 4");
}

#[test]
fn scenario_files_and_flag_overrides() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/tree-partition.toml"
    );
    let out = pmesh(&["sim", file, "--duration", "3m", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "tree-partition");
    assert_eq!(v["nodes"], 40);
    assert_eq!(v["simulated_s"], 180.0);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = pmesh(&["sim", "--topology", "ring"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown topology \"ring\""));
    let out = pmesh(&["sim", "-e", "at=\"1m\", action=\"crash\", node=99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 99 does not exist"));
    let out = pmesh(&["sim", "/nonexistent/scenario.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading scenario"));
}
