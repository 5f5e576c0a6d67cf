//! `pmesh bench campaign`: staged campaigns (issue 15) in the simulator — the real node and
//! OTA plugin per node, the gateway offering wave by wave, the campaign judging each node
//! from what the simulator observes. Three runs: a crash-looping image on a staged plan
//! (where does it halt, how many nodes ever ran it, do they all revert), and a good image on
//! the staged plan against all at once (time to finish, bytes on the links).

use std::process::ExitCode;
use std::time::Instant as WallInstant;

use pmesh_sim::ota::campaign::{CampaignOutcome, CampaignSetup, run_campaign};

/// Arguments of `pmesh bench campaign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fleet size (the mesh has one more node: the gateway).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Waves of the staged runs (cumulative).
    #[arg(long, default_value = "5%,20%,100%")]
    waves: String,
    /// Error threshold per wave.
    #[arg(long, default_value = "5%")]
    max_failures: String,
    /// Share of the nodes that crash-loop on the bad image.
    #[arg(long, default_value_t = 0.3)]
    bad_share: f64,
    /// Scenario and assignment seed.
    #[arg(long, default_value_t = 15)]
    seed: u64,
    /// Image size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    image_bytes: u64,
}

fn setup(a: &Args, waves: &str, bad: bool) -> CampaignSetup {
    let mut s = CampaignSetup::issue(a.nodes, bad);
    s.waves = waves.into();
    s.max_failures = a.max_failures.clone();
    s.bad_share = if bad { a.bad_share } else { 0.0 };
    s.seed = a.seed;
    s.image_bytes = a.image_bytes;
    s
}

fn row(label: &str, o: &CampaignOutcome, wall_s: f64) {
    let waves: Vec<String> = o
        .waves
        .iter()
        .map(|w| {
            format!(
                "{}{}:{}c/{}f/{}r",
                w.nodes,
                if w.started { "" } else { "(not started)" },
                w.confirmed,
                w.failed,
                w.reverted
            )
        })
        .collect();
    let halt = o.halted.map_or("-".into(), |(w, f, a)| {
        format!("wave {w} ({f} failures > {a} allowed)")
    });
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
        o.outcome,
        halt,
        o.duration_s.map_or("-".into(), |s| format!("{s:.0}")),
        waves.join(" "),
        o.ran_new,
        o.crash_looped,
        format_args!("{}/{}", o.back_on_old, o.told_to_revert),
        o.data_bytes as f64 / 1e6,
        o.control_bytes as f64 / 1e6,
        wall_s
    );
}

/// Runs the benchmark.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let runs = [
        ("bad image, staged", a.waves.as_str(), true),
        ("good image, staged", a.waves.as_str(), false),
        ("good image, all at once", "100%", false),
    ];
    println!(
        "{} nodes, waves {}, --max-failures {}, seed {}, image {} B, bad share {}",
        a.nodes, a.waves, a.max_failures, a.seed, a.image_bytes, a.bad_share
    );
    println!(
        "| run | outcome | halted in | time to halt/finish (sim s) | waves (nodes: confirmed/failed/reverted) | ran new image | crash-looped | back on old / told to revert | data MB | control MB | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    for (label, waves, bad) in runs {
        let s = setup(&a, waves, bad);
        let wall = WallInstant::now();
        let o = run_campaign(&s).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        row(label, &o, wall.elapsed().as_secs_f64());
        ok &= o.outcome != "stuck" && o.back_on_old == o.told_to_revert;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
