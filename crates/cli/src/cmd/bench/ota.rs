//! `pmesh bench ota`: classic unicast, classic broadcast (pmesh and stock receivers), the
//! classic push broadcast and pmesh's protocol side by side on the same simulated meshes,
//! with every figure next to its optimum or lower bound, and issue 4's and issue 12's
//! targets checked at the end. Every row reports the peak send queue of any relay (and of
//! the distributor): stock painlessMesh relays queue in RAM without limit.
//!
//! Every row is one simulation (`pmesh_sim::ota`): the real node and OTA code on every node,
//! the same seed, topology and link model for every mode. A crash row repeats its loss-free
//! row with 5 % of the targets (at least one) crashing at times spread over 20–70 % of the
//! loss-free transfer time, each booting again 2 s later.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant as WallInstant;

use anyhow::{Context as _, bail};
use pmesh_sim::ota::{self, ByteSize, Image, OfferAt, OtaFigures, OtaMode, OtaScenario, Receivers};
use pmesh_sim::scenario::{Dur, Span, Traffic};
use pmesh_sim::{Scenario, Topology};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which matrix: `quick` (fan-out 3 and chain at 10 and 50 nodes, about half a minute),
    /// `stock` (issue 12: unicast, push and pmesh to stock receivers on chain, fan-out 3/6/10
    /// and radio at 10, 50, 100 nodes),
    /// `targets` (the pmesh rows issue 4's targets need, 1,000 nodes included), `full` (every
    /// mode on chain, fan-out 3/6/10 and radio at 10, 50, 100 nodes, pmesh also at 1,000).
    #[arg(long, value_enum, default_value = "quick")]
    preset: Preset,
    /// Topologies instead of the preset's: chain, fanout-3, fanout-6, fanout-10, radio (comma-separated).
    #[arg(long, value_delimiter = ',')]
    topology: Vec<String>,
    /// Node counts instead of the preset's (comma-separated).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<u32>,
    /// Extra node counts run in pmesh mode only (the preset's: 1000 for targets and full).
    #[arg(long, value_delimiter = ',')]
    pmesh_nodes: Vec<u32>,
    /// Variants instead of the preset's: unicast, unicast-stock, broadcast, broadcast-stock,
    /// broadcast-mixed, push-stock, push-stock-unlimited, push-mixed, pmesh, pmesh-signed
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Pace of the push variants instead of theirs, Data bytes per second (0 unlimited).
    #[arg(long)]
    push_rate: Option<u64>,
    /// Faults: none, crash or both (push crash rows also have late joiners).
    #[arg(long, value_enum, default_value = "both")]
    faults: Faults,
    /// Image file (default: the first --image-bytes of the running pmesh executable).
    #[arg(long)]
    image: Option<PathBuf>,
    /// How much of the image file to use (all of --image when given without this).
    #[arg(long)]
    image_bytes: Option<String>,
    /// Send images uncompressed.
    #[arg(long)]
    uncompressed: bool,
    /// Bytes per chunk instead of each mode's default: classic 1,024 served bytes; pmesh 4,096
    /// image bytes, compressed at most 3,072 DEFLATE bytes (chunks then span a variable
    /// number of image bytes).
    #[arg(long)]
    chunk_bytes: Option<u32>,
    /// Link bandwidth per direction, kbit/s (every link).
    #[arg(long, default_value_t = 2000.0)]
    bandwidth_kbit: f64,
    /// One-way link latency, ms (every link).
    #[arg(long, default_value_t = 10.0)]
    latency_ms: f64,
    /// Give up on a run whose mesh has not formed by this simulated time.
    #[arg(long, default_value = "15m")]
    form_timeout: String,
    /// Seed (topology of the radio model, crash choices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulations run at once (wall times are per run; more jobs than free cores inflate them).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print one JSON object per row instead of the table.
    #[arg(long)]
    json: bool,
    /// Print the table as Markdown (for docs/BENCHMARKS.md).
    #[arg(long)]
    markdown: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    Quick,
    Stock,
    Targets,
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Faults {
    None,
    Crash,
    Both,
}

/// A mode and the receivers it runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    mode: OtaMode,
    receivers: Receivers,
    /// A signed rollout (pmesh): every node checks signature, pages, chunks.
    signed: bool,
    /// Push mode: Data bytes per second (0 unlimited).
    push_rate: Option<u64>,
}

const VARIANTS: [(&str, Variant); 10] = [
    (
        "unicast",
        Variant {
            mode: OtaMode::Unicast,
            receivers: Receivers::Pmesh,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "unicast-stock",
        Variant {
            mode: OtaMode::Unicast,
            receivers: Receivers::Stock,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "broadcast",
        Variant {
            mode: OtaMode::Broadcast,
            receivers: Receivers::Pmesh,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "broadcast-stock",
        Variant {
            mode: OtaMode::Broadcast,
            receivers: Receivers::Stock,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "broadcast-mixed",
        Variant {
            mode: OtaMode::Broadcast,
            receivers: Receivers::Mixed,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "push-stock",
        Variant {
            mode: OtaMode::Push,
            receivers: Receivers::Stock,
            signed: false,
            push_rate: Some(pmesh_ota::classic::DEFAULT_PUSH_RATE),
        },
    ),
    (
        "push-stock-unlimited",
        Variant {
            mode: OtaMode::Push,
            receivers: Receivers::Stock,
            signed: false,
            push_rate: Some(0),
        },
    ),
    (
        "push-mixed",
        Variant {
            mode: OtaMode::Push,
            receivers: Receivers::Mixed,
            signed: false,
            push_rate: Some(pmesh_ota::classic::DEFAULT_PUSH_RATE),
        },
    ),
    (
        "pmesh",
        Variant {
            mode: OtaMode::Pmesh,
            receivers: Receivers::Pmesh,
            signed: false,
            push_rate: None,
        },
    ),
    (
        "pmesh-signed",
        Variant {
            mode: OtaMode::Pmesh,
            receivers: Receivers::Pmesh,
            signed: true,
            push_rate: None,
        },
    ),
];

fn variant(name: &str) -> anyhow::Result<Variant> {
    VARIANTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .with_context(|| {
            let names: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
            format!("unknown mode {name:?} (one of {})", names.join(", "))
        })
}

fn topology(name: &str) -> anyhow::Result<Topology> {
    Ok(match name {
        "chain" => Topology::Chain,
        "radio" => Scenario::default().topology,
        other => match other.strip_prefix("fanout-").map(str::parse::<u32>) {
            Some(Ok(f)) if f > 0 => Topology::Tree { fanout: f },
            _ => bail!("unknown topology {other:?} (chain, fanout-3, fanout-6, fanout-10, radio)"),
        },
    })
}

/// Share of the targets that crash in a crash row.
const CRASH_SHARE: f64 = 0.05;
/// Crash times spread over this part of the loss-free transfer.
const CRASH_WINDOW: [f64; 2] = [0.2, 0.7];
/// A crashed node boots again after this.
const DOWN_FOR: Dur = Dur::secs(2);

/// Push crash rows also have late joiners: this share of the nodes (at least one), the
/// highest ids, switched off until halfway through the loss-free transfer.
const LATE_SHARE: f64 = 0.02;

/// Adds the late joiners' `join` events; how many.
fn late_joiners(sc: &mut Scenario, offer_at: Dur, transfer_s: f64) -> u32 {
    let count = ((LATE_SHARE * f64::from(sc.nodes)).round() as u32).clamp(1, sc.nodes - 2);
    let at = Dur(offer_at.0 + (0.5 * transfer_s * 1e6) as u64);
    for node in (sc.nodes - count + 1)..=sc.nodes {
        sc.events.push(pmesh_sim::scenario::TimedEvent {
            at,
            action: pmesh_sim::scenario::Action::Join { node },
        });
    }
    count
}

/// A crash row's timing from its loss-free row: offer time and transfer duration (s), or
/// why there is none.
type CrashTiming = Result<(Dur, f64), String>;

/// One simulation to run.
#[derive(Clone, Debug)]
struct Job {
    label: &'static str,
    variant: Variant,
    topology: String,
    nodes: u32,
    crash: bool,
}

/// A finished row (or why the run could not be made).
#[derive(Clone, Debug)]
struct Row {
    job: Job,
    figures: Result<OtaFigures, String>,
    /// The loss-free row's offer time and transfer duration (for its crash row).
    offer_at: Option<Dur>,
    transfer_s: Option<f64>,
}

/// Every topology a preset can run.
const ALL_TOPOLOGIES: &[&str] = &["chain", "fanout-3", "fanout-6", "fanout-10", "radio"];

/// What a preset runs: topologies, node counts, extra pmesh-only node counts, variants.
struct Matrix {
    topologies: Vec<String>,
    nodes: Vec<u32>,
    pmesh_nodes: Vec<u32>,
    labels: Vec<&'static str>,
}

impl Matrix {
    /// The preset's matrix.
    fn of(preset: Preset) -> Matrix {
        let (topologies, nodes, pmesh_nodes, labels): (&[&str], &[u32], &[u32], Vec<&str>) =
            match preset {
                Preset::Quick => (
                    &["chain", "fanout-3"],
                    &[10, 50],
                    &[],
                    vec![
                        "unicast",
                        "broadcast",
                        "broadcast-stock",
                        "push-stock",
                        "pmesh",
                    ],
                ),
                Preset::Stock => (
                    ALL_TOPOLOGIES,
                    &[10, 50, 100],
                    &[],
                    vec![
                        "unicast-stock",
                        "push-stock",
                        "push-stock-unlimited",
                        "push-mixed",
                        "pmesh",
                    ],
                ),
                Preset::Targets => (ALL_TOPOLOGIES, &[10, 50, 100], &[1000], vec!["pmesh"]),
                Preset::Full => (
                    ALL_TOPOLOGIES,
                    &[10, 50, 100],
                    &[1000],
                    VARIANTS.iter().map(|(n, _)| *n).collect(),
                ),
            };
        Matrix {
            topologies: topologies.iter().map(|t| t.to_string()).collect(),
            nodes: nodes.to_vec(),
            pmesh_nodes: pmesh_nodes.to_vec(),
            labels: labels
                .iter()
                .map(|l| VARIANTS.iter().find(|(n, _)| n == l).expect("known").0)
                .collect(),
        }
    }

    /// The preset's matrix with the flags' overrides, checked.
    fn from_args(args: &Args) -> anyhow::Result<Matrix> {
        let mut m = Matrix::of(args.preset);
        if !args.topology.is_empty() {
            m.topologies = args.topology.clone();
        }
        if !args.nodes.is_empty() {
            m.nodes = args.nodes.clone();
        }
        if !(args.pmesh_nodes.is_empty() && args.nodes.is_empty()) {
            m.pmesh_nodes = args.pmesh_nodes.clone();
        }
        if !args.modes.is_empty() {
            m.labels = Vec::new();
            for mode in &args.modes {
                variant(mode)?;
                let label = VARIANTS.iter().find(|(n, _)| n == mode).expect("checked").0;
                m.labels.push(label);
            }
        }
        for t in &m.topologies {
            topology(t)?;
        }
        if m.nodes.iter().chain(&m.pmesh_nodes).any(|&n| n < 2) {
            bail!("a rollout needs at least 2 nodes");
        }
        if !(args.bandwidth_kbit > 0.0 && args.latency_ms >= 0.0) {
            bail!("--bandwidth-kbit must be positive and --latency-ms non-negative");
        }
        Ok(m)
    }

    /// The loss-free jobs, in table order.
    fn jobs(&self) -> Vec<Job> {
        let mut base = Vec::new();
        for t in &self.topologies {
            for &n in &self.nodes {
                for &l in &self.labels {
                    base.push((l, t.clone(), n));
                }
            }
            if self.labels.contains(&"pmesh") {
                for &n in &self.pmesh_nodes {
                    base.push(("pmesh", t.clone(), n));
                }
            }
        }
        base.into_iter()
            .map(|(l, t, n)| Job {
                label: l,
                variant: variant(l).expect("checked"),
                topology: t,
                nodes: n,
                crash: false,
            })
            .collect()
    }
}

/// The image: a real compiled binary unless told otherwise.
fn load_image(args: &Args) -> anyhow::Result<Image> {
    let (path, limit) = match &args.image {
        Some(p) => (p.clone(), args.image_bytes.as_deref()),
        None => (
            std::env::current_exe().context("finding the running executable")?,
            Some(args.image_bytes.as_deref().unwrap_or("1MiB")),
        ),
    };
    let limit = limit
        .map(|s| ByteSize::parse(s).map_err(anyhow::Error::msg))
        .transpose()?;
    Image::from_file(&path, limit.map(|b| b.0)).map_err(anyhow::Error::msg)
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let matrix = Matrix::from_args(&args)?;
    let image = load_image(&args)?;
    let gz = pmesh_ota::codec::gzip(image.source.bytes()).len();
    let jobs = matrix.jobs();
    let want_crash = args.faults != Faults::None;
    let total = jobs.len() * (1 + usize::from(want_crash));
    let setup = Setup {
        image: image.clone(),
        form_timeout: Dur::parse(&args.form_timeout).map_err(anyhow::Error::msg)?,
        compressed: !args.uncompressed,
        chunk_bytes: args.chunk_bytes,
        bandwidth_kbit: args.bandwidth_kbit,
        latency_ms: args.latency_ms,
        seed: args.seed,
        push_rate: args.push_rate,
    };
    eprintln!(
        "pmesh bench ota: {} runs; image {} (gzip {:.1} % of it); links {} kbit/s, {} ms; seed {}",
        total,
        image.description,
        100.0 * gz as f64 / image.len() as f64,
        args.bandwidth_kbit,
        args.latency_ms,
        args.seed
    );
    let started = WallInstant::now();
    let rows = run_rows(&setup, jobs, &args, total);
    eprintln!(
        "pmesh bench ota: {} runs in {:.1} s",
        total,
        started.elapsed().as_secs_f64()
    );
    if args.json {
        print_json(&rows, &image)?;
    } else {
        print_text(&rows, &args, &image, gz);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the loss-free jobs, then (with crash faults) each again with crashes timed from its
/// loss-free run; the rows in table order (a loss-free row before its crash row).
fn run_rows(setup: &Setup, jobs: Vec<Job>, args: &Args, total: usize) -> Vec<Row> {
    let done = Mutex::new(0usize);
    let loss_free = run_all(setup, jobs, args.jobs, &done, total);
    if args.faults == Faults::None {
        return loss_free;
    }
    let crash_jobs: Vec<(Job, CrashTiming)> = loss_free
        .iter()
        .map(|r| {
            let mut j = r.job.clone();
            j.crash = true;
            let d = r.transfer_s.unwrap_or(60.0).max(1.0);
            let timing = match (&r.figures, r.offer_at) {
                (Ok(_), Some(o)) => Ok((o, d)),
                (Err(e), _) => Err(format!("its loss-free run failed: {e}")),
                (Ok(_), None) => Err("its loss-free run made no offer".into()),
            };
            (j, timing)
        })
        .collect();
    let crashed = run_all_crash(setup, crash_jobs, args.jobs, &done, total);
    let mut rows = Vec::new();
    for (a, b) in loss_free.into_iter().zip(crashed) {
        if args.faults != Faults::Crash {
            rows.push(a);
        }
        rows.push(b);
    }
    rows
}

/// One JSON object per row.
fn print_json(rows: &[Row], image: &Image) -> anyhow::Result<()> {
    for r in rows {
        let mut v = match &r.figures {
            Ok(f) => serde_json::to_value(f)?,
            Err(e) => serde_json::json!({
                "mode": r.job.variant.mode.name(),
                "receivers": r.job.variant.receivers.name(),
                "topology": r.job.topology,
                "nodes": r.job.nodes,
                "faults": if r.job.crash { "crash" } else { "none" },
                "error": e,
            }),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("variant".into(), r.job.label.into());
            o.insert("image".into(), image.description.clone().into());
        }
        println!("{}", serde_json::to_string(&v)?);
    }
    Ok(())
}

/// The table, the rows that did not run, and the checks.
fn print_text(rows: &[Row], args: &Args, image: &Image, gz: usize) {
    println!(
        "image: {} — gzip {:.1} % of it; every link {} kbit/s per direction, {} ms one way; seed {}",
        image.description,
        100.0 * gz as f64 / image.len() as f64,
        args.bandwidth_kbit,
        args.latency_ms,
        args.seed
    );
    println!();
    print!("{}", table(rows, args.markdown));
    for r in rows {
        if let Err(e) = &r.figures {
            println!(
                "{} {} N={} {}: did not run: {e}",
                r.job.label,
                r.job.topology,
                r.job.nodes,
                if r.job.crash { "crash" } else { "none" }
            );
        }
    }
    println!();
    let figures: Vec<&OtaFigures> = rows
        .iter()
        .filter_map(|r| r.figures.as_ref().ok())
        .collect();
    print!("{}", checks(&figures, args.markdown));
    print!("{}", push_checks(&figures, args.markdown));
}

/// What every run shares.
#[derive(Clone, Debug)]
struct Setup {
    image: Image,
    form_timeout: Dur,
    compressed: bool,
    chunk_bytes: Option<u32>,
    bandwidth_kbit: f64,
    latency_ms: f64,
    seed: u64,
    push_rate: Option<u64>,
}

fn scenario(setup: &Setup, job: &Job) -> anyhow::Result<(Scenario, OtaScenario)> {
    let mut sc = Scenario {
        name: format!("bench-ota-{}-{}-{}", job.label, job.topology, job.nodes),
        seed: setup.seed,
        nodes: job.nodes,
        topology: topology(&job.topology)?,
        duration: Dur::secs(4 * 3600),
        traffic: Traffic {
            broadcast_every: None,
            single_every: None,
            ..Traffic::default()
        },
        ..Scenario::default()
    };
    sc.link.bandwidth_kbit = Span::fixed(setup.bandwidth_kbit);
    sc.link.latency_ms = Span::fixed(setup.latency_ms);
    let o = OtaScenario {
        mode: job.variant.mode,
        receivers: job.variant.receivers,
        compressed: setup.compressed,
        chunk_bytes: setup.chunk_bytes,
        signed: job.variant.signed,
        push_rate: push_rate(setup, job).map(ByteSize),
        ..OtaScenario::default()
    };
    Ok((sc, o))
}

/// The pace of a push row: `--push-rate`, else the variant's.
fn push_rate(setup: &Setup, job: &Job) -> Option<u64> {
    let v = job.variant.push_rate?;
    Some(setup.push_rate.unwrap_or(v))
}

/// Runs one row; a run that cannot be made becomes a row that says why.
fn one(
    setup: &Setup,
    job: &Job,
    crash: Option<CrashTiming>,
    done: &Mutex<usize>,
    total: usize,
) -> Row {
    let result = match crash {
        Some(Err(e)) => Err(anyhow::anyhow!(e)),
        Some(Ok(c)) => try_one(setup, job, Some(c), done, total),
        None => try_one(setup, job, None, done, total),
    };
    result.unwrap_or_else(|e| {
        let mut n = done.lock().expect("not poisoned");
        *n += 1;
        eprintln!(
            "[{:>3}/{total}] {} {} N={} {}: did not run: {e:#}",
            *n,
            job.label,
            job.topology,
            job.nodes,
            if job.crash { "crash" } else { "none" }
        );
        Row {
            job: job.clone(),
            figures: Err(format!("{e:#}")),
            offer_at: None,
            transfer_s: None,
        }
    })
}

fn try_one(
    setup: &Setup,
    job: &Job,
    crash: Option<(Dur, f64)>,
    done: &Mutex<usize>,
    total: usize,
) -> anyhow::Result<Row> {
    let (mut sc, mut o) = scenario(setup, job)?;
    let mut late = 0;
    if let Some((offer_at, transfer_s)) = crash
        && job.variant.mode == OtaMode::Push
    {
        late = late_joiners(&mut sc, offer_at, transfer_s);
    }
    if let Some((offer_at, transfer_s)) = crash {
        o.offer_at = OfferAt::At(offer_at);
        o.crash_share = CRASH_SHARE;
        o.crash_window = [
            Dur((CRASH_WINDOW[0] * transfer_s * 1e6) as u64),
            Dur((CRASH_WINDOW[1] * transfer_s * 1e6) as u64),
        ];
        o.down_for = DOWN_FOR;
    }
    let label = format!(
        "{} {} N={} {}",
        job.label,
        job.topology,
        job.nodes,
        if job.crash { "crash" } else { "none" }
    );
    let wall = WallInstant::now();
    o.form_timeout = setup.form_timeout;
    let mut sim = ota::build_with_image(sc, o, setup.image.clone()).map_err(anyhow::Error::msg)?;
    let tty = std::io::stderr().is_terminal();
    let mut last = WallInstant::now();
    let (report, rollout_wall) = ota::run_timed(&mut sim, |p| {
        if tty && last.elapsed().as_millis() >= 500 {
            last = WallInstant::now();
            eprint!(
                "\r  {label}: {:.0} s simulated, {:.0} %, {}/{} installed   ",
                p.sim_s,
                100.0 * p.fraction,
                p.installed,
                p.targets
            );
        }
    });
    let mut f = ota::figures(&report).context("the run produced no OTA figures")?;
    f.faults = if job.crash {
        format!(
            "crash 5 % ({} node{}){}",
            f.crashed_targets,
            if f.crashed_targets == 1 { "" } else { "s" },
            if late > 0 {
                format!(" + {late} late")
            } else {
                String::new()
            }
        )
    } else {
        "none".into()
    };
    f.topology = job.topology.clone();
    f.rollout_wall_s = rollout_wall;
    f.push_rate = push_rate(setup, job);
    let offer_at = sim.app().offered_at().map(Dur);
    let transfer_s = f.completion_s.or_else(|| {
        // Not every target finished: the time to the last progress anyone made.
        let (o, p) = (sim.app().offered_at()?, sim.app().last_progress());
        (p > o).then(|| (p - o) as f64 / 1e6)
    });
    let mut n = done.lock().expect("not poisoned");
    *n += 1;
    if tty {
        eprint!("\r\x1b[2K");
    }
    eprintln!(
        "[{:>3}/{total}] {label}: {}/{} installed{}, {:.1} s wall",
        *n,
        f.completed,
        f.targets,
        f.completion_s
            .map_or(String::new(), |c| format!(" in {c:.1} s")),
        wall.elapsed().as_secs_f64()
    );
    Ok(Row {
        job: job.clone(),
        figures: Ok(f),
        offer_at,
        transfer_s,
    })
}

fn run_all(
    setup: &Setup,
    jobs: Vec<Job>,
    threads: usize,
    done: &Mutex<usize>,
    total: usize,
) -> Vec<Row> {
    parallel(jobs, threads, |j| one(setup, j, None, done, total))
}

fn run_all_crash(
    setup: &Setup,
    jobs: Vec<(Job, CrashTiming)>,
    threads: usize,
    done: &Mutex<usize>,
    total: usize,
) -> Vec<Row> {
    parallel(jobs, threads, |(j, c)| {
        one(setup, j, Some(c.clone()), done, total)
    })
}

/// Runs `f` over `items` on `threads` threads; results in input order.
fn parallel<T: Sync, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().expect("not poisoned");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().expect("not poisoned")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

fn opt_f(v: Option<f64>, prec: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.prec$}"))
}

fn opt_u(v: Option<u64>) -> String {
    v.map_or("—".into(), |x| x.to_string())
}

/// The table: the columns, plus the ratios that compare them.
fn table(rows: &[Row], markdown: bool) -> String {
    let head = [
        "mode",
        "pace_B/s",
        "receivers",
        "topology",
        "nodes",
        "image_bytes",
        "chunk_bytes",
        "faults",
        "targets",
        "completed",
        "stuck",
        "data_link_tx",
        "optimum_link_tx",
        "tx/opt",
        "control_bytes",
        "data_bytes",
        "ctl/data",
        "completion_s",
        "lower_bound_s",
        "/bound",
        "store_forward_s",
        "repair_bytes",
        "repair_bytes_from_neighbour",
        "wire_bytes_per_image_byte",
        "peak_tracking_bytes",
        "peak_relay_queue_bytes",
        "peak_distributor_queue_bytes",
        "wall_s",
        "rollout_wall_s",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let Ok(f) = &r.figures else {
                let mut cells = vec!["—".to_string(); head.len()];
                cells[0] = r.job.variant.mode.name().into();
                cells[2] = r.job.variant.receivers.name().into();
                cells[3] = r.job.topology.clone();
                cells[4] = r.job.nodes.to_string();
                cells[7] = if r.job.crash { "crash" } else { "none" }.into();
                cells[9] = "did not run".into();
                return cells;
            };
            vec![
                f.mode.clone(),
                match f.push_rate {
                    None => "—".into(),
                    Some(0) => "unlimited".into(),
                    Some(r) => r.to_string(),
                },
                f.receivers.clone(),
                f.topology.clone(),
                f.nodes.to_string(),
                f.image_bytes.to_string(),
                f.chunk_bytes.to_string(),
                f.faults.clone(),
                f.targets.to_string(),
                f.completed.to_string(),
                f.stuck.to_string(),
                f.data_link_tx.to_string(),
                f.optimum_link_tx.to_string(),
                format!("{:.3}", f.data_tx_ratio),
                f.control_bytes.to_string(),
                f.data_bytes.to_string(),
                format!("{:.2} %", 100.0 * f.control_share),
                opt_f(f.completion_s, 2),
                opt_f(f.lower_bound_s, 2),
                opt_f(f.bound_ratio, 2),
                opt_f(f.store_forward_s, 2),
                opt_u(f.repair_bytes),
                opt_u(f.repair_bytes_from_neighbour),
                format!("{:.3}", f.wire_bytes_per_image_byte),
                f.peak_tracking_bytes.to_string(),
                f.peak_relay_queue_bytes.to_string(),
                f.peak_distributor_queue_bytes.to_string(),
                opt_f(f.wall_s, 1),
                opt_f(f.rollout_wall_s, 1),
            ]
        })
        .collect();
    let mut out = String::new();
    if markdown {
        out += &format!("| {} |\n", head.join(" | "));
        out += &format!("|{}\n", "---|".repeat(head.len()));
        for r in &body {
            out += &format!("| {} |\n", r.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.push('\n');
        s
    };
    out += &line(head.iter().map(|s| s.to_string()).collect());
    for r in body {
        out += &line(r);
    }
    out
}

/// Issue 4's targets, each marked met or not met with the figure that decides it (and issue
/// 13's signed-rollout costs).
fn checks(rows: &[&OtaFigures], markdown: bool) -> String {
    let pmesh: Vec<&OtaFigures> = rows.iter().copied().filter(|f| f.mode == "pmesh").collect();
    let (clean, crashed): (Vec<&OtaFigures>, Vec<&OtaFigures>) =
        pmesh.iter().copied().partition(|f| f.faults == "none");
    let mut out = String::new();
    loss_free_checks(&mut out, markdown, &clean);
    crash_checks(&mut out, markdown, &crashed);
    footprint_checks(&mut out, markdown, &pmesh);
    signed_checks(&mut out, markdown, rows, &pmesh);
    out
}

/// pmesh loss-free: data transmissions, control share, completion against the bound.
fn loss_free_checks(out: &mut String, markdown: bool, clean: &[&OtaFigures]) {
    worst_within(
        out,
        markdown,
        "pmesh loss-free: data_link_tx / optimum <= 1.01",
        clean,
        |f| f.data_tx_ratio,
        1.01,
        |x| format!("worst {x:.4}"),
    );
    worst_within(
        out,
        markdown,
        "pmesh loss-free: control <= 3 % of data",
        clean,
        |f| f.control_share,
        0.03,
        |x| format!("worst {:.2} %", 100.0 * x),
    );
    let at50: Vec<&OtaFigures> = clean.iter().copied().filter(|f| f.nodes == 50).collect();
    worst_within(
        out,
        markdown,
        "pmesh loss-free, N = 50: completion <= 1.15 x lower bound",
        &at50,
        |f| f.bound_ratio.unwrap_or(f64::INFINITY),
        1.15,
        |x| format!("worst x{x:.3}"),
    );
}

/// pmesh with crashes: completion, resume, repair from neighbours.
fn crash_checks(out: &mut String, markdown: bool, crashed: &[&OtaFigures]) {
    let id = push_row_id;
    let incomplete: Vec<String> = crashed
        .iter()
        .filter(|f| f.completed < f.targets)
        .map(|f| format!("{} ({}/{})", id(f), f.completed, f.targets))
        .collect();
    verdict_line(
        out,
        markdown,
        "pmesh with crashes: every target completes",
        crashed.len(),
        incomplete.is_empty(),
        if incomplete.is_empty() {
            format!("{} runs, all complete", crashed.len())
        } else {
            format!("incomplete: {}", incomplete.join(", "))
        },
    );
    let zero: u32 = crashed.iter().map(|f| f.restarts_from_zero).sum();
    let crashed_targets: u32 = crashed.iter().map(|f| f.crashed_targets).sum();
    verdict_line(
        out,
        markdown,
        "pmesh with crashes: no restart from chunk 0",
        crashed.len(),
        zero == 0,
        format!("{zero} restarts from chunk 0 among {crashed_targets} crashed targets"),
    );
    let (rep, nb) = crashed.iter().fold((0u64, 0u64), |(a, b), f| {
        (
            a + f.repair_bytes.unwrap_or(0),
            b + f.repair_bytes_from_neighbour.unwrap_or(0),
        )
    });
    let w = crashed
        .iter()
        .filter(|f| f.repair_bytes.unwrap_or(0) > 0)
        .map(|f| {
            (
                f.repair_bytes_from_neighbour.unwrap_or(0) as f64
                    / f.repair_bytes.unwrap_or(1) as f64,
                id(f),
            )
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    verdict_line(
        out,
        markdown,
        "pmesh with crashes: >= 95 % of repair bytes from a 1-hop neighbour",
        crashed.len(),
        w.as_ref().is_none_or(|(x, _)| *x >= 0.95),
        format!(
            "{nb} of {rep} repair bytes overall{}",
            w.map_or(String::new(), |(x, at)| format!(
                "; lowest share {:.1} % ({at})",
                100.0 * x
            ))
        ),
    );
}

/// pmesh: wire bytes with compression, tracking memory, the 1,000-node rollout's wall time.
fn footprint_checks(out: &mut String, markdown: bool, pmesh: &[&OtaFigures]) {
    let comp: Vec<&OtaFigures> = pmesh.iter().copied().filter(|f| f.compressed).collect();
    worst_within(
        out,
        markdown,
        "wire bytes per image byte <= 1.0 with compression (pmesh)",
        &comp,
        |f| f.wire_bytes_per_image_byte,
        1.0,
        |x| format!("worst {x:.3}"),
    );
    let over = pmesh
        .iter()
        .map(|f| {
            (
                f.peak_tracking_bytes as f64 / f.tracking_budget_bytes as f64,
                format!(
                    "{} B of {} B ({})",
                    f.peak_tracking_bytes,
                    f.tracking_budget_bytes,
                    push_row_id(f)
                ),
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    verdict_line(
        out,
        markdown,
        "peak tracking <= 4 KiB + 1 bit per chunk (pmesh)",
        pmesh.len(),
        over.as_ref().is_none_or(|(x, _)| *x <= 1.0),
        over.map_or(String::new(), |(_, d)| format!("largest {d}")),
    );
    let big: Vec<&OtaFigures> = pmesh.iter().copied().filter(|f| f.nodes >= 1000).collect();
    let worst = |key: &dyn Fn(&OtaFigures) -> f64| {
        big.iter()
            .map(|f| (key(f), push_row_id(f)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let w = worst(&|f| f.rollout_wall_s.unwrap_or(f64::INFINITY));
    let formation = worst(&|f| f.wall_s.unwrap_or(0.0) - f.rollout_wall_s.unwrap_or(0.0));
    verdict_line(
        out,
        markdown,
        "1,000-node pmesh rollout (offer to last install): wall <= 60 s",
        big.len(),
        w.as_ref().is_none_or(|(x, _)| *x <= 60.0),
        w.map_or(String::new(), |(x, at)| {
            format!(
                "slowest {x:.1} s ({at}); forming the mesh before the offer took up to {:.1} s more",
                formation.map_or(0.0, |f| f.0)
            )
        }),
    );
}

/// Signed rollouts (issue 13) against the unsigned row of the same run.
fn signed_checks(out: &mut String, markdown: bool, rows: &[&OtaFigures], pmesh: &[&OtaFigures]) {
    let pairs: Vec<(f64, f64, String)> = rows
        .iter()
        .filter(|f| f.mode == "pmesh-signed" && f.nodes == 50)
        .filter_map(|s| {
            let u = pmesh.iter().find(|u| {
                (&u.topology, u.nodes, &u.faults, u.image_bytes)
                    == (&s.topology, s.nodes, &s.faults, s.image_bytes)
            })?;
            let wire = |f: &OtaFigures| (f.data_bytes + f.control_bytes) as f64;
            // A signed row that did not complete fails the check (it is not left out).
            let time = match (s.completion_s, u.completion_s) {
                (Some(s), Some(u)) => s / u - 1.0,
                _ => f64::INFINITY,
            };
            Some((wire(s) / wire(u) - 1.0, time, push_row_id(s)))
        })
        .collect();
    let most = |k: fn(&(f64, f64, String)) -> f64| {
        pairs
            .iter()
            .map(|p| (k(p), p.2.clone()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    for (name, w, bound) in [
        (
            "signed vs unsigned pmesh, N = 50: <= 1 % more wire bytes",
            most(|p| p.0),
            0.01,
        ),
        (
            "signed vs unsigned pmesh, N = 50: <= 2 % more completion time",
            most(|p| p.1),
            0.02,
        ),
    ] {
        verdict_line(
            out,
            markdown,
            name,
            pairs.len(),
            w.as_ref().is_none_or(|(x, _)| *x <= bound),
            w.map_or(String::new(), |(x, at)| {
                format!("worst {:+.2} % ({at})", 100.0 * x)
            }),
        );
    }
}

/// A check line: the verdict, or "not measured" when no row decides it.
fn verdict_line(
    out: &mut String,
    markdown: bool,
    name: &str,
    rows: usize,
    ok: bool,
    detail: String,
) {
    let verdict = if rows == 0 {
        "not measured (no such rows)"
    } else if ok {
        "met"
    } else {
        "NOT MET"
    };
    if markdown {
        *out += &format!("- {name}: **{verdict}** — {detail}\n");
    } else {
        *out += &format!("{name}: {verdict} — {detail}\n");
    }
}

/// A row's name in the push checks.
fn push_row_id(f: &OtaFigures) -> String {
    format!("{} N={} {}", f.topology, f.nodes, f.faults)
}

/// One "worst row within a bound" check: the largest `key` over `rows` against `bound`,
/// shown with `show` next to the row it came from.
fn worst_within(
    out: &mut String,
    markdown: bool,
    name: &str,
    rows: &[&OtaFigures],
    key: impl Fn(&OtaFigures) -> f64,
    bound: f64,
    show: impl Fn(f64) -> String,
) {
    let w = rows
        .iter()
        .map(|f| (key(f), push_row_id(f)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    verdict_line(
        out,
        markdown,
        name,
        rows.len(),
        w.as_ref().is_none_or(|(x, _)| *x <= bound),
        w.map_or(String::new(), |(x, at)| format!("{} ({at})", show(x))),
    );
}

/// Issue 12's targets for the classic push broadcast to stock receivers.
fn push_checks(rows: &[&OtaFigures], markdown: bool) -> String {
    let id = push_row_id;
    let push: Vec<&OtaFigures> = rows.iter().copied().filter(|f| f.mode == "push").collect();
    let clean: Vec<&OtaFigures> = push
        .iter()
        .copied()
        .filter(|f| f.faults == "none")
        .collect();
    let crashed: Vec<&OtaFigures> = push
        .iter()
        .copied()
        .filter(|f| f.faults != "none")
        .collect();
    let mut out = String::new();
    let short: Vec<String> = push
        .iter()
        .filter(|f| f.completed < f.targets)
        .map(|f| format!("{} ({}/{})", id(f), f.completed, f.targets))
        .collect();
    verdict_line(
        &mut out,
        markdown,
        "push: every target installs (loss-free, and with crashes and late joiners)",
        push.len(),
        short.is_empty(),
        if short.is_empty() {
            format!("{} runs, all complete", push.len())
        } else {
            format!("incomplete: {}", short.join(", "))
        },
    );
    let select = |keep: &dyn Fn(&OtaFigures) -> bool| -> Vec<&OtaFigures> {
        clean.iter().copied().filter(|f| keep(f)).collect()
    };
    worst_within(
        &mut out,
        markdown,
        "push loss-free on trees: data_link_tx <= 1.05 x (N-1)·k",
        &select(&|f| f.topology != "radio"),
        |f| f.data_tx_ratio,
        1.05,
        |x| format!("worst {x:.4}"),
    );
    worst_within(
        &mut out,
        markdown,
        "push loss-free, radio N = 50: data_link_tx / optimum <= 1.064",
        &select(&|f| f.topology == "radio" && f.nodes == 50),
        |f| f.data_tx_ratio,
        1.064,
        |x| format!("worst {x:.4}"),
    );
    worst_within(
        &mut out,
        markdown,
        "push unlimited pace: completion <= 1.5 x store-and-forward of the same frames",
        &select(&|f| f.push_rate == Some(0)),
        |f| {
            f.completion_s
                .zip(f.store_forward_s)
                .map_or(f64::INFINITY, |(c, s)| c / s)
        },
        1.5,
        |x| format!("worst x{x:.3}"),
    );
    let paced: Vec<(f64, String)> = clean
        .iter()
        .filter(|f| f.nodes == 50 && f.push_rate.is_some_and(|r| r > 0) && f.receivers == "stock")
        .filter_map(|f| {
            let u = rows.iter().find(|u| {
                u.mode == "unicast"
                    && u.receivers == "stock"
                    && u.faults == "none"
                    && u.topology == f.topology
                    && u.nodes == f.nodes
            })?;
            let speedup = u.completion_s? / f.completion_s?;
            Some((speedup, id(f)))
        })
        .collect();
    let w = paced.iter().min_by(|a, b| a.0.total_cmp(&b.0));
    verdict_line(
        &mut out,
        markdown,
        "push default pace, N = 50: >= 10 x faster than unicast to the same stock nodes",
        paced.len(),
        w.is_none_or(|(x, _)| *x >= 10.0),
        w.map_or(String::new(), |(x, at)| format!("slowest x{x:.1} ({at})")),
    );
    // What crashes and late joiners cost: the largest extra time and data bytes of any row.
    let extra: Vec<(f64, f64, String)> = crashed
        .iter()
        .filter_map(|c| {
            let base = clean.iter().find(|f| {
                f.topology == c.topology
                    && f.nodes == c.nodes
                    && f.push_rate == c.push_rate
                    && f.receivers == c.receivers
            })?;
            let bytes = c.data_bytes as f64 / base.data_bytes.max(1) as f64 - 1.0;
            Some((c.completion_s? - base.completion_s?, bytes, id(c)))
        })
        .collect();
    let t = extra.iter().max_by(|a, b| a.0.total_cmp(&b.0));
    let b = extra.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some(t), Some(b)) = (t, b) {
        verdict_line(
            &mut out,
            markdown,
            "push with crashes and late joiners: extra over the loss-free row (reported)",
            extra.len(),
            true,
            format!(
                "most time +{:.1} s ({}); most data bytes +{:.0} % ({})",
                t.0,
                t.2,
                100.0 * b.1,
                b.2
            ),
        );
    }
    let q = push
        .iter()
        .map(|f| (f.peak_relay_queue_bytes, id(f)))
        .max_by_key(|a| a.0);
    if let Some((b, at)) = q {
        verdict_line(
            &mut out,
            markdown,
            "push: peak relay send queue (reported)",
            push.len(),
            true,
            format!("largest {b} B ({at})"),
        );
    }
    out
}
