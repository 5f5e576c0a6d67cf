//! `pmesh sim`: runs one simulated mesh (a scenario file and/or flags) and prints a summary, or
//! the full report with `--json`. A scenario file with an `[ota]` table (or `--ota MODE`) runs
//! a firmware rollout on that mesh; its figures join the summary and the report's `app.ota`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pmesh_sim::ota::{self, OtaScenario};
use pmesh_sim::report::Report;
use pmesh_sim::scenario::{Dur, Span};
use pmesh_sim::{Scenario, Sim, TimedEvent, Topology};

mod ota_args;
pub use ota_args::OtaArgs;

/// Arguments of `pmesh sim`. Flags override the scenario file's values.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file (TOML; see scenarios/). Without one: ~50 nodes in the radio model, 10 minutes.
    pub scenario: Option<PathBuf>,
    /// Number of nodes (ids 1..=N).
    #[arg(long, short = 'n')]
    pub nodes: Option<u32>,
    /// Topology: chain, star, tree, random-tree or radio.
    #[arg(long, short = 't')]
    pub topology: Option<String>,
    /// Children per node for `--topology tree`.
    #[arg(long)]
    pub fanout: Option<u32>,
    /// Radio range in metres (radio model).
    #[arg(long)]
    pub range: Option<f64>,
    /// Mean nodes within range of a node (radio model; sets the area).
    #[arg(long)]
    pub neighbours: Option<f64>,
    /// Simulated time to run, e.g. 10m, 90s.
    #[arg(long, short = 'd')]
    pub duration: Option<String>,
    /// Seed.
    #[arg(long, short = 's')]
    pub seed: Option<u64>,
    /// One-way link latency in ms: a value or MIN,MAX drawn per link.
    #[arg(long)]
    pub latency_ms: Option<String>,
    /// Link bandwidth per direction, kbit/s.
    #[arg(long)]
    pub bandwidth_kbit: Option<f64>,
    /// Clock drift: each node uniform in ±PPM.
    #[arg(long)]
    pub drift_ppm: Option<f64>,
    /// Turn on the nodes' optional frequency discipline (not in the reference): each node also
    /// estimates the rate of the time it adopts and runs its mesh time at that rate.
    #[arg(long)]
    pub rate_discipline: bool,
    /// Sample the mesh-time spread this often (e.g. 1s; default 60s).
    #[arg(long)]
    pub time_sample_every: Option<String>,
    /// A generated BROADCAST this often (e.g. 10s); `off` disables.
    #[arg(long)]
    pub broadcast_every: Option<String>,
    /// A generated SINGLE this often (e.g. 5s); `off` disables.
    #[arg(long)]
    pub single_every: Option<String>,
    /// No generated traffic at all.
    #[arg(long)]
    pub no_traffic: bool,
    /// Node(s) announcing root (repeatable); `--root 0` for none.
    #[arg(long)]
    pub root: Vec<u32>,
    /// A timed event, TOML inline-table syntax, e.g. --event 'at="2m", action="crash", node=5'
    /// (repeatable; actions: crash, restart, join, cut, reset, partition, heal, refuse).
    #[arg(long = "event", short = 'e')]
    pub events: Vec<String>,
    /// Print the full JSON report instead of the summary (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Print the scenario as TOML and exit (a starting point for a scenario file).
    #[arg(long)]
    pub print_scenario: bool,
    /// A firmware rollout on the simulated mesh (`--ota MODE`, `--ota-*`).
    #[command(flatten)]
    pub ota: OtaArgs,
}

/// What `pmesh sim` runs: the mesh, and the OTA rollout on it if there is one.
#[derive(Debug)]
pub struct Run {
    /// The mesh scenario.
    pub mesh: Scenario,
    /// The rollout (`[ota]` table and `--ota*` flags), if any.
    pub ota: Option<OtaScenario>,
}

/// Builds the run from the scenario file and the flags (flags win).
pub fn scenario(args: &Args) -> anyhow::Result<Run> {
    let (mut sc, file_ota) = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading scenario {}", path.display()))?;
            ota::split_scenario_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => (Scenario::default(), None),
    };
    mesh_flags(args, &mut sc)?;
    sc.validate().map_err(anyhow::Error::msg)?;
    let ota = args
        .ota
        .overrides()
        .apply(file_ota)
        .map_err(anyhow::Error::msg)?;
    if let Some(o) = &ota {
        o.validate(&sc).map_err(anyhow::Error::msg)?;
    }
    Ok(Run { mesh: sc, ota })
}

/// Applies the mesh flags over the file's scenario.
fn mesh_flags(args: &Args, sc: &mut Scenario) -> anyhow::Result<()> {
    if let Some(n) = args.nodes {
        sc.nodes = n;
    }
    if let Some(t) = &args.topology {
        sc.topology = match t.as_str() {
            "chain" => Topology::Chain,
            "star" => Topology::Star,
            "tree" => Topology::Tree { fanout: 3 },
            "random-tree" => Topology::RandomTree,
            "radio" => Scenario::default().topology,
            other => bail!("unknown topology {other:?} (chain, star, tree, random-tree, radio)"),
        };
    }
    if let Some(f) = args.fanout {
        match &mut sc.topology {
            Topology::Tree { fanout } => *fanout = f,
            _ => sc.topology = Topology::Tree { fanout: f },
        }
    }
    if args.range.is_some() || args.neighbours.is_some() {
        let Topology::Radio {
            range_m,
            neighbours,
            ..
        } = &mut sc.topology
        else {
            bail!("--range and --neighbours apply to the radio topology");
        };
        if let Some(r) = args.range {
            *range_m = r;
        }
        if let Some(k) = args.neighbours {
            *neighbours = k;
        }
    }
    if let Some(d) = &args.duration {
        sc.duration = Dur::parse(d).map_err(anyhow::Error::msg)?;
    }
    if let Some(s) = args.seed {
        sc.seed = s;
    }
    if let Some(l) = &args.latency_ms {
        sc.link.latency_ms = parse_span(l).context("--latency-ms")?;
    }
    if let Some(b) = args.bandwidth_kbit {
        sc.link.bandwidth_kbit = Span::fixed(b);
    }
    if let Some(p) = args.drift_ppm {
        sc.clock.drift_ppm = p;
    }
    if args.rate_discipline {
        sc.clock.rate_discipline = true;
    }
    if let Some(e) = &args.time_sample_every {
        sc.invariants.time_sample_every = Dur::parse(e).map_err(anyhow::Error::msg)?;
    }
    let every = |s: &str| -> anyhow::Result<Option<Dur>> {
        if s == "off" {
            Ok(None)
        } else {
            Ok(Some(Dur::parse(s).map_err(anyhow::Error::msg)?))
        }
    };
    if let Some(b) = &args.broadcast_every {
        sc.traffic.broadcast_every = every(b)?;
    }
    if let Some(s) = &args.single_every {
        sc.traffic.single_every = every(s)?;
    }
    if args.no_traffic {
        sc.traffic.enabled = false;
    }
    if !args.root.is_empty() {
        sc.roots = args.root.iter().copied().filter(|&r| r != 0).collect();
    }
    for e in &args.events {
        sc.events
            .push(TimedEvent::parse(e).map_err(anyhow::Error::msg)?);
    }
    sc.events.sort_by_key(|e| e.at);
    Ok(())
}

fn parse_span(s: &str) -> anyhow::Result<Span> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid number in {s:?}"))?;
    match parts[..] {
        [v] if v >= 0.0 => Ok(Span::fixed(v)),
        [a, b] if 0.0 <= a && a <= b => Ok(Span { min: a, max: b }),
        _ => bail!("expected VALUE or MIN,MAX with 0 <= MIN <= MAX, got {s:?}"),
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let run = scenario(&args)?;
    if args.print_scenario {
        print!("{}", scenario_toml(&run)?);
        return Ok(ExitCode::SUCCESS);
    }
    let bar = (!args.json && std::io::stderr().is_terminal()).then(progress_bar);
    let report = match run.ota {
        None => run_mesh(run.mesh, bar.as_ref())?,
        Some(o) => run_rollout(run.mesh, o, bar.as_ref())?,
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
        print!("{}", ota::summary(&report));
    }
    Ok(if report.invariants.violations_total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The scenario as a file would hold it (the `[ota]` table included).
fn scenario_toml(run: &Run) -> anyhow::Result<String> {
    let mut table = toml::Table::try_from(&run.mesh).context("serializing the scenario")?;
    if let Some(o) = &run.ota {
        table.insert(
            "ota".into(),
            toml::Value::try_from(o).context("serializing the [ota] table")?,
        );
    }
    Ok(toml::to_string(&table)?)
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulating [{bar:30}] {pos}/{len} s  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn run_mesh(sc: Scenario, bar: Option<&indicatif::ProgressBar>) -> anyhow::Result<Report> {
    let mut sim = Sim::new(sc).map_err(anyhow::Error::msg)?;
    let Some(bar) = bar else { return Ok(sim.run()) };
    bar.set_length(sim.scenario().duration.micros() / 1_000_000);
    Ok(sim.run_with_progress(|p| {
        bar.set_position(p.sim_now / 1_000_000);
        bar.set_message(format!("{} events, {} nodes up", p.events, p.nodes_up));
    }))
}

fn run_rollout(
    sc: Scenario,
    o: OtaScenario,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Report> {
    if let Some(bar) = bar {
        bar.set_length(sc.duration.micros() / 1_000_000);
        bar.set_message("forming the mesh to find the offer time");
    }
    let mut sim = ota::build(sc, o).map_err(anyhow::Error::msg)?;
    Ok(ota::run(&mut sim, |p| {
        if let Some(bar) = bar {
            bar.set_position(p.sim_s as u64);
            let state = if p.offered {
                format!(
                    "{}/{} installed, {:.0} % of the image held",
                    p.installed,
                    p.targets,
                    p.fraction * 100.0
                )
            } else {
                "waiting for the offer".into()
            };
            bar.set_message(format!("{} events, {state}", p.events));
        }
    }))
}
