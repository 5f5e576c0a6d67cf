//! `pmesh ota ...`: firmware distribution from the command line.
//!
//! `pmesh ota push FILE` offers an image to the mesh and follows the rollout, either through a
//! running node's control endpoint (`--control`, the default: the node distributes) or from a
//! temporary node of its own that joins the mesh (`--connect HOST:PORT`). Both modes run the
//! same follower ([`pmesh_net::ota::run_push`]) and print the same progress: bars per node and
//! in total on a terminal, plain lines otherwise, JSON lines with `--json`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pmesh_net::control::ControlClient;
use pmesh_net::firmware::{FileSink, FileStore};
use pmesh_net::ota::{
    NodeOta, NodeView, Outcome, PushItem, PushMode, PushOptions, Summary, refusal_help,
};
use pmesh_net::{MeshBuilder, NetConfig};
use pmesh_node::{Config, Node};
use pmesh_ota::{Ota, OtaConfig, RolloutPhase};
use serde_json::{Value, json};

use crate::cmd::control::ControlArgs;
use crate::cmd::node::parse_duration;

/// `pmesh ota` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Offer a firmware file to the mesh and follow the rollout.
    Push(Box<PushArgs>),
    /// Show a running node's OTA state (installed image, transfer, offers, counters).
    Status(StatusArgs),
    /// Withdraw the offers a running node makes (after `push --keep`).
    Cancel(CancelArgs),
    /// Sign a firmware image into a bundle (offline, with a key from `pmesh key gen`).
    Sign(Box<crate::cmd::sign::SignArgs>),
    /// Verify a bundle against trusted public keys: print its manifest or why it is refused.
    Verify(crate::cmd::sign::VerifyArgs),
}

/// Protocol of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Classic, chosen at the offer: the broadcast push (stock nodes take it unasked) unless
    /// exactly one target is named with --expect, then unicast.
    Auto,
    /// painlessMesh OTA (types 10/11/12): stock nodes and pmesh nodes; nodes do not report.
    Classic,
    /// pmesh's protocol: pmesh nodes only; pipelined, resumable, nodes report progress.
    Pmesh,
}

/// Arguments of `pmesh ota push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The firmware image.
    #[arg(value_name = "FILE")]
    file: std::path::PathBuf,
    /// Role of the nodes to update (compared exactly, as painlessMesh does).
    #[arg(long)]
    role: String,
    /// Hardware of the nodes to update (`ESP32`, `ESP8266`, or a pmesh node's --ota-hardware).
    #[arg(long)]
    hardware: String,
    /// Protocol.
    #[arg(long, value_enum, default_value = "auto")]
    mode: ModeArg,
    /// Classic broadcast mode: the distributor floods every Data chunk in order to the whole
    /// mesh (a push; stock painlessMesh receivers take it without asking).
    #[arg(long)]
    broadcast: bool,
    /// Classic broadcast (and auto, when it broadcasts): Data bytes per second the push floods; keep it at or below the
    /// slowest link's rate, as painlessMesh relays queue without limit (0: unlimited)
    /// [default: 250000].
    #[arg(long, value_name = "BYTES_PER_S")]
    pace: Option<u64>,
    /// Compress: classic serves a gzip of the image (ESP8266 boot loaders flash gzip; stock
    /// ESP32s cannot); pmesh deflates each chunk.
    #[arg(long)]
    compressed: bool,
    /// Install even on nodes that already run this image.
    #[arg(long)]
    forced: bool,
    /// Version text carried by pmesh manifests and recorded by the nodes.
    #[arg(long, value_name = "TEXT", default_value = "")]
    fw_version: String,
    /// Bytes per chunk [default: classic 1024; pmesh 4096 image bytes, or with --compressed at
    /// most 3072 DEFLATE bytes, each chunk spanning as many image bytes as fit].
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    chunk_size: u32,
    /// Give up after this long (the offer is withdrawn).
    #[arg(long, default_value = "30m")]
    timeout: String,
    /// Quiet time before the rollout counts as done (no new target, no request)
    /// [default: pmesh 3s, classic 10s, classic broadcast 20s].
    #[arg(long)]
    settle: Option<String>,
    /// A node that must finish (waited for even if it never reports); repeatable.
    #[arg(long, value_name = "ID")]
    expect: Vec<u32>,
    /// pmesh: each target installs as soon as it has verified the image [default: all install
    /// together once every target has verified it].
    #[arg(long)]
    apply_on_verify: bool,
    /// pmesh: lead time of the common install time.
    #[arg(long, default_value = "2s")]
    apply_delay: String,
    /// Keep offering after this command ends (`--control` only; stop with `pmesh ota cancel`).
    #[arg(long, conflicts_with = "connect")]
    keep: bool,
    #[command(flatten)]
    control: ControlArgs,
    /// Join the mesh as a temporary node through this node (`host:port`) instead of using a
    /// running node's control endpoint.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "control")]
    connect: Option<String>,
    /// Node id of the temporary node [default: random].
    #[arg(long, value_name = "ID", requires = "connect")]
    id: Option<u32>,
    /// Cap on pmesh OTA bytes per second per link from the temporary node.
    #[arg(long, value_name = "BYTES_PER_S", requires = "connect")]
    rate_limit: Option<u32>,
    /// How long the temporary node waits to join the mesh.
    #[arg(long, default_value = "30s", requires = "connect")]
    join_timeout: String,
    /// A trusted public key: a file of key lines, or the line itself; repeatable. The FILE
    /// must then be a bundle signed by one of them (checked here first, expiry included).
    /// With --connect the temporary node trusts exactly these and verifies the bundle before
    /// announcing it; through --control the node verifies it against its own keys as well.
    #[arg(long, value_name = "PUB")]
    trusted: Vec<String>,
    /// With --connect and no --trusted: let the temporary node offer a plain (unsigned) image.
    /// Without it, such a node refuses to, as a `pmesh node` without keys does.
    #[arg(long, requires = "connect", conflicts_with = "trusted")]
    allow_unsigned: bool,
    /// Print progress as JSON lines (one per item) instead of bars or text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pmesh ota status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    control: ControlArgs,
}

/// Arguments of `pmesh ota cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Only this transfer (the id `push` printed) [default: every offer of the node].
    #[arg(long, value_name = "ID")]
    transfer: Option<u32>,
}

/// Runs the command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Push(args) => push(*args),
        Command::Status(args) => {
            let v = one_request(&args.control, "ota_status", json!({}))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel(args) => {
            let params = match args.transfer {
                Some(t) => json!({ "transfer": t }),
                None => json!({}),
            };
            let v = one_request(&args.control, "ota_cancel", params)?;
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign(args) => crate::cmd::sign::sign(*args),
        Command::Verify(args) => crate::cmd::sign::verify(args),
    }
}

fn one_request(control: &ControlArgs, cmd: &str, params: Value) -> anyhow::Result<Value> {
    let addr = control.addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = ControlClient::connect(&addr).await?;
        c.request(cmd, params).await
    })
    .map_err(anyhow::Error::from)
}

fn options(args: &PushArgs) -> anyhow::Result<PushOptions> {
    // The distributing process may run elsewhere (another working directory): absolute path.
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("bad path {}", args.file.display()))?;
    let meta =
        std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", file.display());
    }
    if meta.len() == 0 {
        bail!("{} is empty", file.display());
    }
    let mut o = PushOptions::new(file, &args.role, &args.hardware);
    o.mode = match args.mode {
        ModeArg::Classic | ModeArg::Auto => PushMode::Classic,
        ModeArg::Pmesh => PushMode::Pmesh,
    };
    o.auto = args.mode == ModeArg::Auto && !args.broadcast;
    if args.broadcast && o.mode == PushMode::Pmesh {
        bail!("--broadcast is a classic mode; the pmesh protocol always pushes along the tree");
    }
    o.broadcast = args.broadcast;
    o.pace = args.pace;
    o.compressed = args.compressed;
    o.forced = args.forced;
    o.version = args.fw_version.clone();
    o.chunk_size = args.chunk_size;
    o.timeout_s = parse_duration(&args.timeout)
        .context("--timeout")?
        .as_secs_f64();
    o.settle_s = args
        .settle
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--settle")?
        .map(|d| d.as_secs_f64());
    o.expect = args.expect.clone();
    o.keep = args.keep;
    o.apply_on_verify = args.apply_on_verify;
    o.apply_delay_s = parse_duration(&args.apply_delay)
        .context("--apply-delay")?
        .as_secs_f64();
    Ok(o)
}

/// With --trusted: the file must be a bundle that verifies against those keys now.
fn verify_locally(args: &PushArgs) -> anyhow::Result<Vec<pmesh_ota::signed::TrustedKey>> {
    if args.trusted.is_empty() {
        return Ok(Vec::new());
    }
    let keys = crate::cmd::sign::read_trusted(&args.trusted)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let verdict = pmesh_ota::signed::Bundle::parse(&bytes).and_then(|b| {
        b.verify(&keys, Some(crate::cmd::sign::unix_now()))
            .map(|_| ())
    });
    if let Err(e) = verdict {
        let e = match e {
            pmesh_ota::signed::TrustError::Malformed(_)
                if !bytes.starts_with(&pmesh_ota::signed::manifest::MAGIC) =>
            {
                pmesh_ota::signed::TrustError::Unsigned
            }
            e => e,
        };
        bail!("refused: {}: {}: {e}", e.code(), args.file.display());
    }
    Ok(keys)
}

/// `pmesh ota push`.
fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let opts = options(&args)?;
    let keys = verify_locally(&args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut view = Renderer::new(args.json, opts.mode);
    let end = rt.block_on(async {
        match &args.connect {
            Some(target) => push_joined(&args, target, opts, keys, &mut view).await,
            None => push_control(&args, opts, &mut view).await,
        }
    })?;
    Ok(match end {
        End::Finished(s) if s.ok => ExitCode::SUCCESS,
        End::Finished(_) => ExitCode::from(1),
        End::Interrupted => ExitCode::from(130),
    })
}

enum End {
    Finished(Summary),
    Interrupted,
}

/// Through a running node's control endpoint: the node distributes and streams the items.
async fn push_control(
    args: &PushArgs,
    opts: PushOptions,
    view: &mut Renderer,
) -> anyhow::Result<End> {
    let addr = args.control.addr()?;
    let mut client = ControlClient::connect(&addr).await?;
    client
        .stream("ota_push", serde_json::to_value(&opts)?)
        .await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            i = client.next_item() => i,
            _ = &mut ctrl_c => {
                view.interrupted(opts.keep);
                // Closing the stream makes the node withdraw the offer (unless --keep).
                return Ok(End::Interrupted);
            }
        };
        let Some(item) = item.map_err(anyhow::Error::from)? else {
            bail!("the node closed the stream before the push finished");
        };
        let item: PushItem =
            serde_json::from_value(item).context("unexpected progress item from the node")?;
        if let Some(s) = view.item(&item) {
            return Ok(End::Finished(s));
        }
    }
}

/// A random non-zero node id for the temporary node.
fn random_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = t ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) as u32).max(1)
}

/// From a temporary node that joins the mesh through `target` and distributes itself.
async fn push_joined(
    args: &PushArgs,
    target: &str,
    opts: PushOptions,
    keys: Vec<pmesh_ota::signed::TrustedKey>,
    view: &mut Renderer,
) -> anyhow::Result<End> {
    if !target.contains(':') {
        bail!("--connect '{target}' needs a port, e.g. {target}:5555");
    }
    let join_timeout = parse_duration(&args.join_timeout).context("--join-timeout")?;
    let id = args.id.unwrap_or_else(random_id);
    if id == 0 {
        bail!("node id 0 is reserved; choose 1..=4294967295");
    }
    let mut cfg = OtaConfig::new("", "");
    cfg.pmesh_receiver = false;
    cfg.classic_receiver = pmesh_ota::ClassicReceiverKind::Off;
    cfg.pmesh.rate_limit = args.rate_limit.filter(|&r| r > 0);
    // The temporary node is the verifying side: it trusts --trusted, or with none refuses
    // plain images unless --allow-unsigned (as a `pmesh node` does).
    cfg.trust = pmesh_ota::pmesh::TrustConfig {
        keys,
        allow_unsigned: args.allow_unsigned,
        wall_clock: pmesh_net::ota::wall_clock(),
    };
    let ota = NodeOta::new(Ota::new(cfg, FileSink::disabled(), FileStore::disabled()));
    let net = NetConfig {
        listen: None,
        connect: vec![target.to_owned()],
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::new(Config::new(id), ota), net)
        .spawn()
        .context("cannot start the temporary node")?;
    let h = mesh.handle();
    view.note(&format!(
        "joining the mesh through {target} as node {id} ..."
    ));
    let joined = async {
        loop {
            let n = h.call(|node, _| node.node_list(false).len()).await?;
            if n > 0 {
                return Ok::<usize, pmesh_net::MeshError>(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let n = tokio::select! {
        r = tokio::time::timeout(join_timeout, joined) => match r {
            Ok(n) => n?,
            Err(_) => {
                h.shutdown().await;
                bail!("could not join the mesh through {target} within {join_timeout:?} (is a pmesh or painlessMesh node listening there?)");
            }
        },
        _ = &mut ctrl_c => {
            view.interrupted(false);
            h.shutdown().await;
            return Ok(End::Interrupted);
        }
    };
    view.note(&format!(
        "joined: {n} other node{}",
        if n == 1 { "" } else { "s" }
    ));

    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let push = tokio::spawn(pmesh_net::ota::run_push(h.clone(), opts, tx, async {
        let _ = stop_rx.await;
    }));
    let mut stop = Some(stop_tx);
    let mut interrupted = false;
    let mut summary = None;
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    if let Some(s) = view.item(&item) {
                        summary = Some(s);
                    }
                }
                None => break,
            },
            _ = &mut ctrl_c, if stop.is_some() => {
                interrupted = true;
                view.interrupted(false);
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
            }
        }
    }
    let res = push.await?;
    h.shutdown().await;
    tokio::task::spawn_blocking(move || mesh.join()).await?;
    match (res, summary) {
        (Err(e), _) => Err(e.into()),
        _ if interrupted => Ok(End::Interrupted),
        (Ok(s), _) => Ok(End::Finished(s)),
    }
}

// --- rendering -------------------------------------------------------------------------------

/// Shows push items: bars on a terminal, plain lines otherwise, or JSON lines.
struct Renderer {
    json: bool,
    bars: Option<MultiProgress>,
    total_bar: Option<ProgressBar>,
    node_bars: BTreeMap<u32, ProgressBar>,
    nodes: BTreeMap<u32, NodeView>,
    /// Plain mode: last 10 % step printed per node, and for the total.
    printed: BTreeMap<u32, (u32, RolloutPhase)>,
    printed_total: u32,
    mode: PushMode,
    chunks: u32,
    last_stats_line: Option<std::time::Instant>,
}

fn pct(done: u32, total: u32) -> u32 {
    (u64::from(done) * 100 / u64::from(total.max(1))) as u32
}

impl Renderer {
    fn new(json: bool, mode: PushMode) -> Renderer {
        let bars = (!json && std::io::stdout().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Renderer {
            json,
            bars,
            total_bar: None,
            node_bars: BTreeMap::new(),
            nodes: BTreeMap::new(),
            printed: BTreeMap::new(),
            printed_total: 0,
            mode,
            chunks: 0,
            last_stats_line: None,
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => println!("{text}"),
        }
    }

    fn note(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            self.line(text);
        }
    }

    fn interrupted(&self, keep: bool) {
        let text = if keep {
            "interrupted; the node keeps offering the image (--keep): `pmesh ota cancel` stops it"
        } else {
            "interrupted; the offer is withdrawn (pmesh targets that had not finished discard their partial image)"
        };
        if let Some(m) = &self.bars {
            let _ = m.clear();
        }
        eprintln!("{text}");
    }

    fn totals(&self) -> (u64, u64) {
        self.nodes.values().fold((0, 0), |(d, t), v| {
            (d + u64::from(v.done), t + u64::from(v.total))
        })
    }

    /// Shows one item; returns the summary at the end.
    fn item(&mut self, item: &PushItem) -> Option<Summary> {
        if self.json {
            println!("{}", serde_json::to_string(item).unwrap_or_default());
            return match item {
                PushItem::Finished(s) => Some(s.clone()),
                _ => None,
            };
        }
        match item {
            PushItem::Offered {
                transfer,
                mode,
                distributor,
                file,
                image_bytes,
                sha256,
                md5,
                chunks,
                mesh_nodes,
            } => {
                self.chunks = *chunks;
                self.line(&format!(
                    "offering {file} ({image_bytes} bytes, sha256 {}) from node {distributor}: mode {}, transfer {transfer}, {chunks} chunks{}; {} other node{} in the mesh",
                    &sha256[..sha256.len().min(16)],
                    mode.name(),
                    md5.as_deref().map_or(String::new(), |m| format!(", md5 {m}")),
                    mesh_nodes.len(),
                    if mesh_nodes.len() == 1 { "" } else { "s" },
                ));
                if self.mode == PushMode::Classic {
                    self.line("classic OTA: nodes do not report progress; shown is what this node served each requester (stock nodes install and reboot silently after the last chunk)");
                }
                if let Some(m) = &self.bars {
                    let bar = m.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {percent:>3}% {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    bar.set_prefix("total");
                    bar.set_message("waiting for nodes");
                    self.total_bar = Some(bar);
                }
                None
            }
            PushItem::Node(v) => {
                self.node(v);
                None
            }
            PushItem::Stats(s) => {
                let (done, total) = self.totals();
                let finished = self.nodes.values().filter(|v| v.finished()).count();
                let sent = match self.mode {
                    PushMode::Pmesh => format!("{:.1} MB sent", s.data_bytes_sent as f64 / 1e6),
                    PushMode::Classic => format!(
                        "{} requests, {:.1} MB served",
                        s.requests_answered,
                        s.bytes_served as f64 / 1e6
                    ),
                };
                let msg = format!(
                    "{finished}/{} nodes finished, {sent}, {} in mesh, {:.0} s",
                    self.nodes.len(),
                    s.mesh_nodes,
                    s.elapsed_s
                );
                if let Some(bar) = &self.total_bar {
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(msg);
                } else {
                    let p = pct(done as u32, total as u32);
                    let due = self
                        .last_stats_line
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                    if total > 0 && (p / 10 > self.printed_total / 10 || due) {
                        self.printed_total = p;
                        self.last_stats_line = Some(std::time::Instant::now());
                        println!("total {p:>3}% ({done}/{total} chunks): {msg}");
                    }
                }
                None
            }
            PushItem::Finished(s) => {
                self.finish(s);
                Some(s.clone())
            }
        }
    }

    fn node(&mut self, v: &NodeView) {
        self.nodes.insert(v.node, v.clone());
        let state = match (v.phase.failure(), v.requests) {
            (Some(r), _) => format!("{} ({})", v.phase.name(), r.name()),
            (None, Some(n)) => format!("{} · {n} requests", v.phase.name()),
            _ => v.phase.name().to_owned(),
        };
        if let Some(m) = &self.bars {
            let bar = self.node_bars.entry(v.node).or_insert_with(|| {
                let b = m.add(ProgressBar::new(u64::from(v.total)));
                b.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.set_prefix(v.node.to_string());
                b
            });
            bar.set_length(u64::from(v.total));
            bar.set_position(u64::from(v.done));
            bar.set_message(state);
            if v.finished() {
                bar.finish();
            }
            return;
        }
        let p = pct(v.done, v.total);
        let last = self.printed.get(&v.node).copied();
        let changed =
            last.is_none_or(|(last_p, last_phase)| p / 10 > last_p / 10 || v.phase != last_phase);
        if changed {
            self.printed.insert(v.node, (p, v.phase));
            println!(
                "node {:>10} {p:>3}% ({}/{} chunks) {state}",
                v.node, v.done, v.total
            );
        }
    }

    fn finish(&mut self, s: &Summary) {
        if let Some(m) = &self.bars {
            for b in self.node_bars.values() {
                b.finish();
            }
            if let Some(b) = &self.total_bar {
                b.finish();
            }
            let _ = m.clear();
        }
        print!("{}", summary_text(s, self.mode));
    }
}

/// The summary printed at the end of a push.
pub fn summary_text(s: &Summary, mode: PushMode) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let finished =
        |in_phase: fn(RolloutPhase) -> bool| s.nodes.iter().filter(|v| in_phase(v.phase)).count();
    let head = match s.outcome {
        Outcome::Done => "done",
        Outcome::Timeout => "timed out",
        Outcome::Cancelled => "cancelled",
        Outcome::Replaced => "replaced by another offer on the node",
        Outcome::Stopped => "the node stopped",
    };
    let what = match mode {
        PushMode::Pmesh => format!(
            "{} installed, {} failed, {} unfinished of {} reporting targets",
            finished(|p| p == RolloutPhase::Installed),
            finished(|p| p.failure().is_some()),
            s.nodes.iter().filter(|v| !v.finished()).count(),
            s.nodes.len()
        ),
        PushMode::Classic => format!(
            "{} of {} requesting nodes served every chunk",
            finished(|p| p == RolloutPhase::Served),
            s.nodes.len()
        ),
    };
    let _ = writeln!(out, "{head} after {:.1} s: {what}", s.elapsed_s);
    if !s.nodes.is_empty() {
        let _ = writeln!(
            out,
            "{:>10}  {:<10}  {:>15}  NOTE",
            "NODE", "STATE", "CHUNKS"
        );
        for v in &s.nodes {
            let note = match (v.phase.failure(), v.requests, v.idle_s) {
                (Some(r), _, _) => format!("{}: {}", r.name(), refusal_help(r)),
                (None, Some(n), Some(idle)) if !v.finished() => {
                    format!("{n} requests, last {idle:.0} s ago")
                }
                (None, Some(n), _) => format!("{n} requests"),
                _ => String::new(),
            };
            let row = format!(
                "{:>10}  {:<10}  {:>15}  {note}",
                v.node,
                v.phase.name(),
                format!("{}/{}", v.done, v.total)
            );
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }
    if !s.missing.is_empty() {
        let _ = writeln!(
            out,
            "expected but never {}: {}",
            if mode == PushMode::Pmesh {
                "reported"
            } else {
                "requested"
            },
            ids(&s.missing)
        );
    }
    if !s.silent.is_empty() {
        let _ = writeln!(
            out,
            "{} other node{} never {} (other role or hardware, image already current, {}or out of reach): {}",
            s.silent.len(),
            if s.silent.len() == 1 { "" } else { "s" },
            if mode == PushMode::Pmesh {
                "reported"
            } else {
                "requested"
            },
            if mode == PushMode::Pmesh {
                "stock painlessMesh nodes, "
            } else {
                ""
            },
            ids(&s.silent)
        );
    }
    if s.still_offered {
        let _ = writeln!(
            out,
            "the node keeps offering the image (--keep); `pmesh ota cancel` stops it"
        );
    }
    let _ = writeln!(out, "note: {}", s.note);
    out
}

fn ids(v: &[u32]) -> String {
    let mut s: Vec<String> = v.iter().take(30).map(u32::to_string).collect();
    if v.len() > 30 {
        s.push(format!("… {} more", v.len() - 30));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmesh_ota::RefusalCode;

    fn view(node: u32, done: u32, phase: RolloutPhase) -> NodeView {
        NodeView {
            node,
            done,
            total: 10,
            phase,
            requests: None,
            idle_s: None,
        }
    }

    #[test]
    fn summary_names_who_did_not_finish_and_why() {
        let s = Summary {
            outcome: Outcome::Timeout,
            ok: false,
            elapsed_s: 12.0,
            nodes: vec![
                view(2, 10, RolloutPhase::Installed),
                view(3, 4, RolloutPhase::Receiving),
                view(4, 10, RolloutPhase::Failed(RefusalCode::HashMismatch)),
            ],
            silent: vec![9],
            missing: vec![5],
            still_offered: false,
            note: "n".into(),
        };
        let t = summary_text(&s, PushMode::Pmesh);
        assert!(t.starts_with(
            "timed out after 12.0 s: 1 installed, 1 failed, 1 unfinished of 3 reporting targets"
        ));
        assert!(t.contains("receiving"), "{t}");
        assert!(t.contains("hash_mismatch: the written image"), "{t}");
        assert!(t.contains("expected but never reported: 5"), "{t}");
        assert!(t.contains("1 other node never reported"), "{t}");
    }

    #[test]
    fn random_ids_are_never_zero() {
        for _ in 0..100 {
            assert_ne!(random_id(), 0);
        }
    }
}
