//! `pmesh sim`: runs one simulated mesh (a scenario file and/or flags) and prints a summary, or
//! the full report with `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pmesh_sim::scenario::{Dur, Span};
use pmesh_sim::{Scenario, Sim, TimedEvent, Topology};

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
}

/// Builds the scenario from the file and flags.
pub fn scenario(args: &Args) -> anyhow::Result<Scenario> {
    let mut sc = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading scenario {}", path.display()))?;
            Scenario::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Scenario::default(),
    };
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
    sc.validate().map_err(anyhow::Error::msg)?;
    Ok(sc)
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
    let sc = scenario(&args)?;
    if args.print_scenario {
        print!(
            "{}",
            toml::to_string(&sc).context("serializing the scenario")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut sim = Sim::new(sc).map_err(anyhow::Error::msg)?;
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let report = if show_progress {
        let end = sim.scenario().duration.micros();
        let bar = indicatif::ProgressBar::new(end / 1_000_000);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulating [{bar:30}] {pos}/{len} s  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let r = sim.run_with_progress(|p| {
            bar.set_position(p.sim_now / 1_000_000);
            bar.set_message(format!("{} events, {} nodes up", p.events, p.nodes_up));
        });
        bar.finish_and_clear();
        r
    } else {
        sim.run()
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(if report.invariants.violations_total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
