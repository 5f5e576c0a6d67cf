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
        rows.push(speed_row(&args, n)?);
    }
    if !args.no_time_sync {
        for rate_discipline in [false, true] {
            rows.push(time_sync_row(&args, rate_discipline)?);
        }
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_speed(&args, &rows);
    print_time_sync(&rows);
    Ok(ExitCode::SUCCESS)
}

/// One speed run: `n` nodes on the radio model for `args.duration`, no traffic.
fn speed_row(args: &Args, n: u32) -> anyhow::Result<Value> {
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
    Ok(json!({
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
        "radio_graph_components": f(&r, &["radio", "graph_components"]),
        "components_at_end": r["convergence"].as_array().and_then(|c| c.last()).map(|c| c["components"].clone()).unwrap_or(Value::Null),
        "time_sync_spread_ms": r["time_sync"]["spread_us"].as_u64().map(|u| u as f64 / 1000.0),
        "violations": f(&r, &["invariants", "violations_total"]),
    }))
}

/// One time-sync run on the 50-node tree, with or without the rate discipline.
fn time_sync_row(args: &Args, rate_discipline: bool) -> anyhow::Result<Value> {
    let mut extra: Vec<String> = [
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
        "--time-sample-every",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if rate_discipline {
        extra.push("--rate-discipline".into());
    }
    let algorithm = if rate_discipline {
        "rate discipline (optional, off by default)"
    } else {
        "reference"
    };
    if !args.json {
        eprintln!(
            "pmesh bench sim: time sync ({algorithm}), 50-node tree, 1-20 ms links, ±100 ppm, {} ...",
            args.duration
        );
    }
    let r = run_sim(&extra)?;
    let samples: Vec<(f64, u64)> = r["time_sync"]["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s[0].as_f64()?, s[1].as_u64()?)))
        .collect();
    let simulated = r["simulated_s"].as_f64().unwrap_or(0.0);
    // The second half of the run: formation and the first syncs are over.
    let mut late: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= simulated / 2.0)
        .map(|&(_, s)| s)
        .collect();
    late.sort_unstable();
    let ms = |u: Option<&u64>| u.map(|&u| u as f64 / 1000.0);
    Ok(json!({
        "run": "time_sync",
        "algorithm": algorithm,
        "rate_discipline": rate_discipline,
        "nodes": 50,
        "topology": f(&r, &["topology"]),
        "simulated_s": simulated,
        "spread_ms": r["time_sync"]["spread_us"].as_u64().map(|u| u as f64 / 1000.0),
        "target_ms": r["time_sync"]["target_us"].as_u64().map(|u| u as f64 / 1000.0),
        "second_half_min_ms": ms(late.first()),
        "second_half_median_ms": ms(late.get(late.len() / 2)),
        "second_half_max_ms": ms(late.last()),
        "spread_ms_per_minute": samples.iter().filter(|(t, _)| *t > 0.0 && (*t as u64).is_multiple_of(60)).map(|&(_, s)| s as f64 / 1000.0).collect::<Vec<_>>(),
        "adjustments": f(&r, &["time_sync", "adjustments"]),
        "wall_s": f(&r, &["wall", "seconds"]),
        "violations": f(&r, &["invariants", "violations_total"]),
    }))
}

/// The speed runs' table and the 1,000-node verdict.
fn print_speed(args: &Args, rows: &[Value]) {
    println!(
        "| nodes | simulated | events | wall | events/s | sim-s per wall-s | peak RSS | NODE_SYNC bytes | radio graph components | formed | components at end | mesh-time spread |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r["run"] == "speed") {
        println!(
            "| {} | {:.0} s | {} | {:.2} s | {:.0} | {:.1} | {:.1} MiB | {:.1} MiB | {} | {} | {} | {} |",
            r["nodes"],
            r["simulated_s"].as_f64().unwrap_or(0.0),
            r["events"],
            r["wall_s"].as_f64().unwrap_or(0.0),
            r["events_per_s"].as_f64().unwrap_or(0.0),
            r["sim_s_per_wall_s"].as_f64().unwrap_or(0.0),
            r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["node_sync_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["radio_graph_components"],
            r["formed_at_s"]
                .as_f64()
                .map_or("never".to_string(), |t| format!("{t:.1} s")),
            r["components_at_end"],
            r["time_sync_spread_ms"]
                .as_f64()
                .map_or("-".to_string(), |t| format!("{t:.2} ms")),
        );
    }
    if let Some(big) = rows
        .iter()
        .find(|r| r["run"] == "speed" && r["nodes"] == 1000)
    {
        let wall = big["wall_s"].as_f64().unwrap_or(f64::INFINITY);
        let rss = big["peak_rss_bytes"].as_f64().unwrap_or(f64::INFINITY) / 1048576.0;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!();
        println!(
            "1,000 nodes, {} simulated: wall {wall:.2} s (target <= 30 s: {}), peak RSS {rss:.1} MiB (target <= 1024 MiB: {})",
            args.duration,
            verdict(wall <= 30.0),
            verdict(rss <= 1024.0),
        );
    }
}

/// The time-sync runs' table and their spread per minute.
fn print_time_sync(rows: &[Value]) {
    let syncs: Vec<&Value> = rows.iter().filter(|r| r["run"] == "time_sync").collect();
    if let Some(t) = syncs.first() {
        println!();
        println!(
            "time sync, 50-node tree (fan-out 3), 1-20 ms links, ±100 ppm drift, {:.0} s, spread of mesh time across nodes (reference accuracy target {} ms):",
            t["simulated_s"].as_f64().unwrap_or(0.0),
            t["target_ms"],
        );
        println!();
        println!(
            "| algorithm | at the end | second half: min | median | max (sampled every 1 s) | target | met at the end |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|");
        let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2} ms"));
        for t in &syncs {
            let target = t["target_ms"].as_f64().unwrap_or(0.0);
            let met = t["spread_ms"].as_f64().is_some_and(|s| s <= target);
            println!(
                "| {} | {} | {} | {} | {} | {target} ms | {} |",
                t["algorithm"].as_str().unwrap_or("-"),
                ms(&t["spread_ms"]),
                ms(&t["second_half_min_ms"]),
                ms(&t["second_half_median_ms"]),
                ms(&t["second_half_max_ms"]),
                if met { "yes" } else { "NO" },
            );
        }
        for t in &syncs {
            let per_min: Vec<String> = t["spread_ms_per_minute"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_f64().map_or("-".into(), |x| format!("{x:.1}")))
                .collect();
            println!(
                "spread at each minute, ms ({}): {}",
                t["algorithm"].as_str().unwrap_or("-"),
                per_min.join(", ")
            );
        }
    }
}
