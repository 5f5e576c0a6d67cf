//! `pmesh bench sim`: simulator speed at 50, 200 and 1,000 nodes (radio model, 10 simulated
//! minutes of formation, node sync and time sync) and time-sync accuracy on a 50-node tree.
//!
//! Each run is a separate `pmesh sim --json` process, so its peak memory (VmHWM) is its own.

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Arguments of `pmesh bench sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mesh sizes for the speed runs (radio model).
    #[arg(long, value_delimiter = ',', default_value = "50,200,1000")]
    pub sizes: Vec<u32>,
    /// Simulated time per run.
    #[arg(long, default_value = "10m")]
    pub duration: String,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the time-sync accuracy run.
    #[arg(long)]
    pub no_time_sync: bool,
    /// One JSON object per row instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn run_sim(extra: &[String]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the pmesh binary")?;
    let out = Command::new(exe)
        .arg("sim")
        .arg("--json")
        .args(extra)
        .output()
        .context("running pmesh sim")?;
    // Exit code 1 means invariant violations: the report is still printed and they are shown.
    if !out.status.success() && out.status.code() != Some(1) {
        bail!(
            "pmesh sim {} failed: {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the pmesh sim report")
}

fn f(v: &Value, path: &[&str]) -> Value {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.clone()
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let extra: Vec<String> = [
            "--nodes",
            &n.to_string(),
            "--topology",
            "radio",
            "--duration",
            &args.duration,
            "--seed",
            &args.seed.to_string(),
            "--no-traffic",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !args.json {
            eprintln!(
                "pmesh bench sim: {n} nodes, radio model, {} simulated ...",
                args.duration
            );
        }
        let r = run_sim(&extra)?;
        rows.push(json!({
            "run": "speed",
            "nodes": n,
            "topology": f(&r, &["topology"]),
            "simulated_s": f(&r, &["simulated_s"]),
            "events": f(&r, &["events"]),
            "wall_s": f(&r, &["wall", "seconds"]),
            "events_per_s": f(&r, &["wall", "events_per_s"]),
            "sim_s_per_wall_s": f(&r, &["wall", "sim_s_per_wall_s"]),
            "peak_rss_bytes": f(&r, &["wall", "peak_rss_bytes"]),
            "frames": f(&r, &["traffic", "frames"]),
            "bytes": f(&r, &["traffic", "bytes"]),
            "node_sync_bytes": r["by_type"]["NODE_SYNC_REQUEST"]["bytes"].as_u64().unwrap_or(0) + r["by_type"]["NODE_SYNC_REPLY"]["bytes"].as_u64().unwrap_or(0),
            "formed_at_s": f(&r, &["formed_at_s"]),
            "components_at_end": r["convergence"].as_array().and_then(|c| c.last()).map(|c| c["components"].clone()).unwrap_or(Value::Null),
            "time_sync_spread_ms": r["time_sync"]["spread_us"].as_u64().map(|u| u as f64 / 1000.0),
            "violations": f(&r, &["invariants", "violations_total"]),
        }));
    }
    if !args.no_time_sync {
        let extra: Vec<String> = [
            "--nodes",
            "50",
            "--topology",
            "tree",
            "--fanout",
            "3",
            "--latency-ms",
            "1,20",
            "--drift-ppm",
            "100",
            "--duration",
            &args.duration,
            "--seed",
            &args.seed.to_string(),
            "--no-traffic",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !args.json {
            eprintln!(
                "pmesh bench sim: time sync, 50-node tree, 1-20 ms links, ±100 ppm, {} ...",
                args.duration
            );
        }
        let r = run_sim(&extra)?;
        let samples: Vec<Value> = r["time_sync"]["samples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        rows.push(json!({
            "run": "time_sync",
            "nodes": 50,
            "topology": f(&r, &["topology"]),
            "simulated_s": f(&r, &["simulated_s"]),
            "spread_ms": r["time_sync"]["spread_us"].as_u64().map(|u| u as f64 / 1000.0),
            "target_ms": r["time_sync"]["target_us"].as_u64().map(|u| u as f64 / 1000.0),
            "spread_ms_per_minute": samples.iter().map(|s| s[1].as_u64().map(|u| u as f64 / 1000.0)).collect::<Vec<_>>(),
            "adjustments": f(&r, &["time_sync", "adjustments"]),
            "wall_s": f(&r, &["wall", "seconds"]),
            "violations": f(&r, &["invariants", "violations_total"]),
        }));
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "| nodes | simulated | events | wall | events/s | sim-s per wall-s | peak RSS | NODE_SYNC bytes | formed | components at end | mesh-time spread |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r["run"] == "speed") {
        println!(
            "| {} | {:.0} s | {} | {:.2} s | {:.0} | {:.1} | {:.1} MiB | {:.1} MiB | {} | {} | {} |",
            r["nodes"],
            r["simulated_s"].as_f64().unwrap_or(0.0),
            r["events"],
            r["wall_s"].as_f64().unwrap_or(0.0),
            r["events_per_s"].as_f64().unwrap_or(0.0),
            r["sim_s_per_wall_s"].as_f64().unwrap_or(0.0),
            r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["node_sync_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["formed_at_s"]
                .as_f64()
                .map_or("never".to_string(), |t| format!("{t:.1} s")),
            r["components_at_end"],
            r["time_sync_spread_ms"]
                .as_f64()
                .map_or("-".to_string(), |t| format!("{t:.2} ms")),
        );
    }
    if let Some(t) = rows.iter().find(|r| r["run"] == "time_sync") {
        println!();
        println!(
            "time sync, 50-node tree (fan-out 3), 1-20 ms links, ±100 ppm drift, {:.0} s: spread {} (reference accuracy target {} ms)",
            t["simulated_s"].as_f64().unwrap_or(0.0),
            t["spread_ms"]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.2} ms")),
            t["target_ms"],
        );
        let per_min: Vec<String> = t["spread_ms_per_minute"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_f64().map_or("-".into(), |x| format!("{x:.1}")))
            .collect();
        println!("spread at each minute, ms: {}", per_min.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
