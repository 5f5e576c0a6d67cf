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
    let out = pmesh(&[
        "sim",
        "-n",
        "5",
        "--ota",
        "pmesh",
        "--ota-image",
        "/dev/zero",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is larger than 67108864 bytes"));
    let out = pmesh(&["sim", "/nonexistent/scenario.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading scenario"));
}

/// Every scenario file the repository ships runs through `pmesh sim FILE`, OTA ones included:
/// the invariants hold, and a rollout's figures are in the report (every target installs, as
/// the files' comments promise) and in the summary.
#[test]
fn every_shipped_scenario_runs_through_the_cli() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} scenario files in {dir}", files.len());
    let mut rollouts = 0;
    for path in &files {
        let file = path.to_str().unwrap();
        let out = pmesh(&["sim", file, "--json"]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(v["invariants"]["violations_total"], 0, "{file}");
        let Some(figures) = v["app"]["ota"]["figures"].as_object() else {
            assert!(
                !file.contains("/ota-"),
                "{file}: no OTA figures in the report"
            );
            continue;
        };
        rollouts += 1;
        assert!(figures["targets"].as_u64().unwrap() > 0, "{file}");
        assert_eq!(figures["completed"], figures["targets"], "{file}");
        let summary = pmesh(&["sim", file]);
        let text = String::from_utf8_lossy(&summary.stdout);
        assert!(text.contains("installed "), "{file}: {text}");
        assert!(text.contains("data link transmissions"), "{file}: {text}");
    }
    assert_eq!(rollouts, 4, "the four ota-*.toml files ran their rollouts");
}

#[test]
fn ota_flags_run_a_rollout_without_a_file() {
    let out = pmesh(&[
        "sim",
        "-n",
        "13",
        "-t",
        "tree",
        "--ota",
        "pmesh",
        "--ota-image-bytes",
        "64KiB",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["app"]["ota"]["figures"]["completed"], 12);
    let out = pmesh(&["sim", "--ota-crash-share", "0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ota-* flags need --ota MODE"));
}
