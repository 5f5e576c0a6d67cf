//! `pmesh demo`: pmesh without hardware. A simulated mesh (the real node and OTA code in the
//! simulator, about 50 nodes in the radio model) runs in real time behind a gateway, and the
//! gateway's real MQTT bridge publishes it: to an embedded broker unless `--mqtt` names one,
//! with Prometheus `/metrics`. Once the mesh has formed, the demo asks the bridge for a
//! firmware rollout over MQTT (`bridge/request/ota/start`, as an operator would) and shows it
//! reaching every node.
//!
//! - [`app`]: what the simulated nodes run (OTA and status plugins, the gateway's tap).
//! - [`runner`]: the simulation thread (virtual clock follows the wall clock × speed).
//! - [`gateway`]: the bridge's requests into the simulated mesh.
//! - [`ui`]: progress bars or plain lines.

mod app;
mod gateway;
mod runner;
mod ui;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use pmesh_bridge::{Bridge, BridgeConfig, BridgeHandle, BrokerConfig, OtaProgress};
use pmesh_sim::Scenario;
use pmesh_sim::ota::ByteSize;
use pmesh_sim::scenario::Dur;
use serde_json::json;

use app::{Captured, DemoApp, GATEWAY, MAX_IMAGE, ROLE};
use runner::{Shared, Tick, Update};
use ui::Ui;

/// Arguments of `pmesh demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated nodes, the gateway (node 1) included.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub nodes: u32,
    /// Seed (node placement in the radio model, everything random in the simulation).
    #[arg(long, short = 's', default_value_t = 1)]
    pub seed: u64,
    /// Simulated seconds per wall-clock second (10 runs the mesh ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Publish to this MQTT broker, `mqtt://[user[:password]@]host[:port]`, instead of
    /// starting an embedded one.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Port of the embedded broker on 127.0.0.1 [default: a free port].
    #[arg(long, value_name = "PORT", conflicts_with = "mqtt")]
    pub broker_port: Option<u16>,
    /// Base topic.
    #[arg(long, value_name = "PREFIX", default_value = "mesh")]
    pub mqtt_prefix: String,
    /// Serve Prometheus metrics on http://ADDR/metrics (port 0: a free port; `off`: none)
    /// [default: 127.0.0.1:9464, or a free port when that one is taken].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Stop after this much wall-clock time, e.g. 90s or 5m [default: run until Ctrl-C].
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Stop once the demo's rollout has ended; the exit status is 1 unless every node updated.
    #[arg(long, conflicts_with = "no_ota")]
    pub exit_after_rollout: bool,
    /// How the rollout travels: `pmesh` (pmesh's broadcast OTA: the image is pushed once down
    /// the tree, pipelined, each node passing chunks on as they arrive), `broadcast` (classic
    /// painlessMesh broadcast OTA: chunks flooded to every node) or `unicast` (classic
    /// painlessMesh: every node pulls every chunk from the gateway).
    #[arg(long, value_name = "MODE", default_value = "pmesh", value_parser = ["pmesh", "broadcast", "unicast"])]
    pub ota_mode: String,
    /// Firmware image to roll out [default: synthetic firmware of --image-size bytes].
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Size of the synthetic image, or how much of --image to use (at most 4MiB)
    /// [default: 512KiB synthetic, all of --image].
    #[arg(long, value_name = "SIZE")]
    pub image_size: Option<String>,
    /// Cap on pmesh OTA data per link, bytes per second (`off`: none). The cap that keeps a
    /// real mesh usable during a rollout; it also makes the rollout last long enough to watch.
    #[arg(long, value_name = "SIZE", default_value = "12KiB")]
    pub ota_rate: String,
    /// No rollout: the mesh, the bridge and the metrics only.
    #[arg(long)]
    pub no_ota: bool,
    /// How often each node sends its status report (EnhancedStatus 604) to the gateway,
    /// simulated time.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub status_every: String,
}

/// Where `/metrics` is served unless `--metrics-listen` says otherwise.
const DEFAULT_METRICS: &str = "127.0.0.1:9464";
/// Size of the synthetic image.
const DEFAULT_IMAGE: u64 = 512 << 10;

/// The settings, checked.
#[derive(Debug)]
struct Settings {
    nodes: u32,
    seed: u64,
    speed: f64,
    mqtt: Option<BrokerConfig>,
    broker_port: u16,
    prefix: String,
    metrics: Option<SocketAddr>,
    metrics_is_default: bool,
    duration: Option<Duration>,
    exit_after_rollout: bool,
    ota: Option<RolloutSettings>,
    rate_limit: Option<u32>,
    status_every: Duration,
}

#[derive(Debug)]
struct RolloutSettings {
    mode: &'static str,
    image: Vec<u8>,
    description: String,
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    if !(2..=1000).contains(&args.nodes) {
        bail!("--nodes {}: the demo runs 2 to 1,000 nodes", args.nodes);
    }
    if !(args.speed.is_finite() && args.speed > 0.0 && args.speed <= 1000.0) {
        bail!("--speed {}: must be above 0 and at most 1000", args.speed);
    }
    let mqtt = match &args.mqtt {
        None => None,
        Some(url) => {
            let b = BrokerConfig::from_url(url)
                .map_err(anyhow::Error::msg)
                .context("--mqtt")?;
            if b.tls.is_some() {
                bail!(
                    "--mqtt {url}: the demo speaks plain mqtt:// only; for TLS brokers run `pmesh node --mqtt mqtts://... --mqtt-ca ...`"
                );
            }
            Some(b)
        }
    };
    let p = &args.mqtt_prefix;
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
        bail!(
            "--mqtt-prefix '{p}' must be a topic without wildcards (+, #) or leading/trailing '/'"
        );
    }
    let metrics = match args.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS) {
        "off" | "none" => None,
        a => Some(a.parse::<SocketAddr>().with_context(|| {
            format!("--metrics-listen '{a}' is not an address like 127.0.0.1:9464 (or off)")
        })?),
    };
    let duration = args
        .duration
        .as_deref()
        .map(super::node::parse_duration)
        .transpose()
        .context("--duration")?;
    let status_every = super::node::parse_duration(&args.status_every).context("--status-every")?;
    if status_every < Duration::from_secs(5) {
        bail!("--status-every must be at least 5s (a node sends at most one report per 5 s)");
    }
    let rate_limit = match args.ota_rate.as_str() {
        "off" | "none" => None,
        r => {
            let b = ByteSize::parse(r)
                .map_err(anyhow::Error::msg)
                .context("--ota-rate")?;
            if b.0 < 1024 {
                bail!("--ota-rate {r}: at least 1KiB per second");
            }
            Some(b.0.min(u64::from(u32::MAX)) as u32)
        }
    };
    let size = args
        .image_size
        .as_deref()
        .map(ByteSize::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--image-size")?
        .map(|b| b.0);
    let ota = if args.no_ota {
        None
    } else {
        let (image, description) = match &args.image {
            Some(path) => {
                let mut bytes = std::fs::read(path)
                    .with_context(|| format!("reading --image {}", path.display()))?;
                let whole = bytes.len();
                if let Some(size) = size {
                    bytes.truncate(size as usize);
                }
                let d = if bytes.len() < whole {
                    format!(
                        "{} (first {} of {whole} bytes)",
                        path.display(),
                        bytes.len()
                    )
                } else {
                    path.display().to_string()
                };
                (bytes, d)
            }
            None => (
                pmesh_sim::ota::image::synthetic_firmware(
                    size.unwrap_or(DEFAULT_IMAGE) as usize,
                    args.seed,
                ),
                "synthetic firmware".to_string(),
            ),
        };
        if image.is_empty() {
            bail!("the image is empty");
        }
        if image.len() as u64 > MAX_IMAGE {
            bail!(
                "the image is {} bytes; the demo keeps every node's flash in memory and takes at most 4MiB (--image-size)",
                image.len()
            );
        }
        let mode = match args.ota_mode.as_str() {
            "broadcast" => "broadcast",
            "unicast" => "unicast",
            _ => "pmesh",
        };
        Some(RolloutSettings {
            mode,
            image,
            description,
        })
    };
    Ok(Settings {
        nodes: args.nodes,
        seed: args.seed,
        speed: args.speed,
        mqtt,
        broker_port: args.broker_port.unwrap_or(0),
        prefix: args.mqtt_prefix.clone(),
        metrics,
        metrics_is_default: args.metrics_listen.is_none(),
        duration,
        exit_after_rollout: args.exit_after_rollout,
        ota,
        rate_limit,
        status_every,
    })
}

/// The simulated mesh: the default ~50-node radio model, its own generated test traffic off
/// (the nodes' status reports are the traffic), node clocks starting at 0 (so the status
/// plugin's uptime is right), and no end but the demo's.
fn scenario(s: &Settings) -> Scenario {
    let mut sc = Scenario {
        name: "demo".into(),
        seed: s.seed,
        nodes: s.nodes,
        duration: Dur::secs(100 * 365 * 24 * 3600),
        ..Scenario::default()
    };
    sc.traffic.enabled = false;
    sc.clock.initial_offset = Dur(0);
    sc
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let s = settings(&args)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(s))
}

/// Sum of `pmesh_bridge_publishes_total` over its labels.
fn publishes(bridge: &BridgeHandle) -> u64 {
    bridge
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("pmesh_bridge_publishes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Where the demo's rollout is.
#[derive(Debug, PartialEq)]
enum Rollout {
    /// None asked for.
    Off,
    /// Waiting for the mesh to form (and the bridge to be online).
    Waiting,
    /// Requested over MQTT; the answer comes on the channel.
    Requested,
    /// Running as this campaign.
    Running(u64),
    /// Ended: every target updated?
    Ended(bool),
}

/// The demo's state on the async side while it runs.
#[derive(Debug)]
struct Live {
    ui: Ui,
    rollout: Rollout,
    formed: bool,
    last: Option<Tick>,
    ended_at: Option<tokio::time::Instant>,
    /// The last campaign whose end was shown.
    noted_end: Option<u64>,
    exit_after_rollout: bool,
}

impl Live {
    /// Nothing seen yet; the rollout waits for the mesh unless `--no-ota`.
    fn new(s: &Settings) -> Live {
        Live {
            ui: Ui::new(std::io::stdout().is_terminal(), s.nodes),
            rollout: if s.ota.is_some() {
                Rollout::Waiting
            } else {
                Rollout::Off
            },
            formed: false,
            last: None,
            ended_at: None,
            noted_end: None,
            exit_after_rollout: s.exit_after_rollout,
        }
    }

    /// Hands one report of the simulation to the bridge and the display.
    fn apply(&mut self, u: Update, bridge: &BridgeHandle, nodes: u32) {
        match u {
            Update::Topology(t) => bridge.topology(t),
            Update::Stats(st, links) => bridge.stats(st, links),
            Update::Captured(Captured::Message {
                from,
                msg,
                broadcast,
            }) => bridge.message(from, msg, broadcast),
            Update::Captured(Captured::Package(env)) => bridge.package(env),
            Update::Ota(p) => {
                match &p {
                    OtaProgress::Started { campaign, targets } => self.ui.note(&format!(
                        "campaign {campaign} started: {} target nodes",
                        targets.len()
                    )),
                    OtaProgress::NodeFailed {
                        campaign,
                        node,
                        reason,
                    } => self.ui.note(&format!(
                        "campaign {campaign}: node {node} failed: {reason}"
                    )),
                    _ => {}
                }
                bridge.ota(p)
            }
            Update::Formed(at) => {
                self.formed = true;
                self.ui.note(&format!(
                    "the mesh has formed: all {nodes} nodes in one mesh after {at:.1} s (simulated)"
                ));
            }
            Update::NotFormed { after_s, known } => {
                self.formed = true;
                self.ui.note(&format!(
                    "the mesh has not fully formed after {after_s:.0} s (simulated): going on with the {known} nodes the gateway reaches"
                ));
            }
            Update::Note(n) => self.ui.note(&n),
            Update::Tick(t) => {
                if let Some(c) = &t.campaign
                    && let Some(aborted) = c.ended
                    && self.noted_end != Some(c.id)
                {
                    self.noted_end = Some(c.id);
                    let complete = !aborted && c.done == c.targets;
                    self.ui.note(&format!(
                        "campaign {} {}: {}/{} nodes updated, {} failed, in {:.1} s (simulated)",
                        c.id,
                        if aborted {
                            "aborted"
                        } else if complete {
                            "complete"
                        } else {
                            "ended"
                        },
                        c.done,
                        c.targets,
                        c.failed,
                        c.elapsed_s
                    ));
                    if self.rollout == Rollout::Running(c.id) {
                        self.rollout = Rollout::Ended(complete);
                        self.ended_at = Some(tokio::time::Instant::now());
                        if !self.exit_after_rollout {
                            self.ui
                                .note("the mesh and the bridge keep running; Ctrl-C to stop");
                        }
                    }
                }
                self.ui.tick(&t);
                self.last = Some(t);
            }
        }
    }
}

async fn run_async(s: Settings) -> anyhow::Result<ExitCode> {
    let (broker, embedded) = start_broker(&s)?;
    // The bridge, fed from the simulation thread.
    let shared = Arc::new(Shared::default());
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let gw = Arc::new(gateway::DemoGateway::new(cmd_tx, shared.clone()));
    let demo_bridge = start_bridge(&s, &broker, gw).await?;
    let request = rollout_request(&s);
    print_banner(
        &s,
        &broker,
        embedded,
        demo_bridge.metrics_addr,
        request.as_ref(),
    );

    // The simulation.
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<Update>(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let sim = {
        let sc = scenario(&s);
        let (nodes, status_every, rate) = (s.nodes, s.status_every, s.rate_limit);
        let (speed, shared, stop) = (s.speed, shared.clone(), stop.clone());
        // The simulator's state is single-threaded: it is built on its own thread.
        std::thread::Builder::new()
            .name("pmesh-demo-sim".into())
            .spawn(move || {
                let app = DemoApp::new(nodes, status_every, rate);
                runner::run(sc, app, speed, cmd_rx, up_tx, shared, stop)
            })?
    };
    let mut d = Live::new(&s);
    let DemoBridge {
        bridge,
        firmware_dir,
        ..
    } = demo_bridge;
    let why = drive(&s, &broker, &bridge, request, &mut d, &mut up_rx).await?;

    // Shut down: stop the simulation (its last reports still reach the bridge), then the
    // bridge.
    stop.store(true, Ordering::Relaxed);
    while let Some(u) = up_rx.recv().await {
        d.apply(u, &bridge, s.nodes);
    }
    let sim_result = sim
        .join()
        .map_err(|_| anyhow::anyhow!("the simulation thread panicked"))?;
    d.ui.finish();
    let published = publishes(&bridge);
    let _ = tokio::time::timeout(Duration::from_secs(3), bridge.shutdown()).await;
    let _ = std::fs::remove_dir_all(&firmware_dir);
    let last = match sim_result {
        Ok(t) => Some(t),
        Err(e) if d.last.is_none() => bail!("the simulation failed: {e}"),
        Err(e) => {
            eprintln!("pmesh demo: the simulation stopped: {e}");
            d.last.take()
        }
    };
    print_summary(&broker, embedded, why, &d, last.as_ref(), published);
    let ok = !s.exit_after_rollout || d.rollout == Rollout::Ended(true);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The broker the bridge publishes to: `--mqtt`, or an embedded one on `--broker-port`.
/// Returns it and whether it is the embedded one.
fn start_broker(s: &Settings) -> anyhow::Result<(BrokerConfig, bool)> {
    let (broker, embedded) = match s.mqtt.clone() {
        Some(b) => (b, false),
        None => {
            let addr = pmesh_bridge::embedded::start(s.broker_port, 1 << 20)
                .context("starting the embedded MQTT broker")?;
            let b = BrokerConfig {
                host: addr.ip().to_string(),
                port: addr.port(),
                ..BrokerConfig::default()
            };
            (b, true)
        }
    };
    let mut broker = broker;
    broker.client_id = format!("pmesh-demo-{}", std::process::id());

    Ok((broker, embedded))
}

/// The demo image's name in its firmware directory (the name the rollout request gives).
const IMAGE_NAME: &str = "demo-firmware.bin";

/// The running bridge, where its `/metrics` is served, and the demo's firmware directory.
struct DemoBridge {
    bridge: BridgeHandle,
    metrics_addr: Option<SocketAddr>,
    firmware_dir: PathBuf,
}

/// Starts the bridge with the demo's image in a firmware directory of its own, and serves
/// `/metrics` (on a free port when the default one is taken).
async fn start_bridge(
    s: &Settings,
    broker: &BrokerConfig,
    gw: Arc<gateway::DemoGateway>,
) -> anyhow::Result<DemoBridge> {
    // The image the rollout request names, in a firmware directory of its own (the bridge
    // reads `image_path` names only from there, as an operator's gateway would).
    let firmware_dir = std::env::temp_dir().join(format!("pmesh-demo-{}", std::process::id()));
    if let Some(o) = &s.ota {
        std::fs::create_dir_all(&firmware_dir)
            .and_then(|()| std::fs::write(firmware_dir.join(IMAGE_NAME), &o.image))
            .with_context(|| format!("writing the demo image in {}", firmware_dir.display()))?;
    }
    let cfg = BridgeConfig {
        broker: broker.clone(),
        prefix: s.prefix.clone(),
        publish_interval: Duration::from_secs(10),
        state_dir: None,
        firmware_dir: match &s.ota {
            Some(_) => Some(pmesh_bridge::FirmwareDir::open(&firmware_dir)?),
            None => None,
        },
        ..BridgeConfig::default()
    };
    let bridge = Bridge::spawn(cfg, GATEWAY, gw)?;
    let metrics_addr = match s.metrics {
        None => None,
        Some(addr) => match bridge.metrics().serve(addr).await {
            Ok((a, _task)) => Some(a),
            Err(e) if s.metrics_is_default && e.kind() == std::io::ErrorKind::AddrInUse => {
                let free: SocketAddr = ([127, 0, 0, 1], 0).into();
                let (a, _task) = bridge
                    .metrics()
                    .serve(free)
                    .await
                    .context("serving /metrics")?;
                Some(a)
            }
            Err(e) => return Err(e).with_context(|| format!("serving /metrics on {addr}")),
        },
    };

    Ok(DemoBridge {
        bridge,
        metrics_addr,
        firmware_dir,
    })
}

/// The `ota/start` request the demo publishes once the mesh has formed (none with `--no-ota`).
fn rollout_request(s: &Settings) -> Option<serde_json::Value> {
    s.ota.as_ref().map(|o| {
        json!({
            "image_path": IMAGE_NAME,
            "role": ROLE,
            "mode": o.mode,
            "compressed": true,
            "transaction": "pmesh-demo",
        })
    })
}

/// What the demo runs and how to watch it.
fn print_banner(
    s: &Settings,
    broker: &BrokerConfig,
    embedded: bool,
    metrics_addr: Option<SocketAddr>,
    request: Option<&serde_json::Value>,
) {
    let host = &broker.host;
    let port = broker.port;
    println!(
        "pmesh demo: {} simulated nodes (radio model, seed {}) behind gateway node {GATEWAY}, {}",
        s.nodes,
        s.seed,
        if s.speed == 1.0 {
            "in real time".to_string()
        } else {
            format!("at {}x real time", s.speed)
        }
    );
    if embedded {
        println!("  MQTT:     embedded broker on {host}:{port}");
    } else {
        println!("  MQTT:     broker {host}:{port}");
    }
    println!(
        "            subscribe: mosquitto_sub -h {host} -p {port} -t '{}/#' -v",
        s.prefix
    );
    match metrics_addr {
        Some(a) => println!("  /metrics: http://{a}/metrics"),
        None => println!("  /metrics: off"),
    }
    if let (Some(o), Some(req)) = (&s.ota, request) {
        println!(
            "  OTA:      once the mesh has formed, a {} rollout of {} ({} KiB) to every node, requested over MQTT:",
            o.mode,
            o.description,
            o.image.len() / 1024
        );
        println!(
            "            mosquitto_pub -h {host} -p {port} -t '{}/bridge/request/ota/start' -m '{}'",
            s.prefix, req
        );
        if o.mode == "pmesh"
            && let Some(r) = s.rate_limit
        {
            println!(
                "            (pmesh OTA data capped at {} KiB/s per link: --ota-rate)",
                r / 1024
            );
        }
    }
    println!("  Stop with Ctrl-C.");
}

/// Follows the simulation's updates, requests the rollout once the mesh has formed and the
/// bridge is online, and returns why the demo ends.
async fn drive(
    s: &Settings,
    broker: &BrokerConfig,
    bridge: &BridgeHandle,
    request: Option<serde_json::Value>,
    d: &mut Live,
    up_rx: &mut tokio::sync::mpsc::Receiver<Update>,
) -> anyhow::Result<&'static str> {
    let (resp_tx, mut resp_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let deadline = s.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let why = loop {
        if d.rollout == Rollout::Waiting && d.formed && bridge.status().online {
            d.rollout = Rollout::Requested;
            let (b, prefix, req, tx) = (
                broker.clone(),
                s.prefix.clone(),
                request.clone().unwrap_or_default(),
                resp_tx.clone(),
            );
            d.ui.note("requesting the rollout over MQTT (bridge/request/ota/start)");
            tokio::spawn(async move {
                let _ = tx.send(request_rollout(b, prefix, req).await);
            });
        }
        if s.exit_after_rollout
            && d.ended_at
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
        {
            break "the rollout ended";
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = sleep_until(deadline) => break "--duration reached",
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            r = resp_rx.recv() => match r {
                Some(Ok(id)) => {
                    d.ui.note(&format!("the bridge accepted the rollout: campaign {id}"));
                    d.rollout = Rollout::Running(id);
                }
                Some(Err(e)) => {
                    d.ui.note(&format!("the rollout request failed: {e}"));
                    d.rollout = Rollout::Ended(false);
                    d.ended_at.get_or_insert_with(tokio::time::Instant::now);
                }
                None => {}
            },
            u = up_rx.recv() => match u {
                None => break "the simulation stopped",
                Some(u) => d.apply(u, bridge, s.nodes),
            },
        }
    };
    Ok(why)
}

/// The summary printed when the demo stops.
fn print_summary(
    broker: &BrokerConfig,
    embedded: bool,
    why: &str,
    d: &Live,
    last: Option<&Tick>,
    published: u64,
) {
    let (host, port) = (&broker.host, broker.port);
    let wall = d.ui.elapsed();
    println!("pmesh demo stopped ({why}) after {wall:.1} s");
    if let Some(t) = last {
        println!(
            "  mesh:     {}/{} nodes in the gateway's mesh, {}; {:.1} s simulated",
            t.known,
            t.nodes,
            match t.formed_s {
                Some(f) => format!("formed after {f:.1} s"),
                None => "not fully formed".to_string(),
            },
            t.sim_s
        );
        match (&d.rollout, &t.campaign) {
            (_, Some(c)) => println!(
                "  rollout:  {}: {}/{} nodes updated, {} failed, {:.1} s (simulated), {} mode, {} KiB",
                match c.ended {
                    Some(true) => "aborted",
                    Some(false) if c.done == c.targets => "complete",
                    Some(false) => "ended",
                    None => "still running",
                },
                c.done,
                c.targets,
                c.failed,
                c.elapsed_s,
                c.mode,
                c.image_bytes / 1024
            ),
            (Rollout::Off, None) => println!("  rollout:  off (--no-ota)"),
            (_, None) => println!("  rollout:  not started"),
        }
        if t.inbox_dropped > 0 {
            println!(
                "  note:     {} messages to the gateway dropped (the demo fell behind)",
                t.inbox_dropped
            );
        }
    }
    println!(
        "  MQTT:     {published} messages published to {host}:{port}{}",
        if embedded { " (embedded broker)" } else { "" }
    );
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Publishes the rollout request on `<prefix>/bridge/request/ota/start` as an operator's MQTT
/// client would, and waits for the bridge's answer; returns the campaign id.
async fn request_rollout(
    broker: BrokerConfig,
    prefix: String,
    request: serde_json::Value,
) -> Result<u64, String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(
        format!("pmesh-demo-operator-{}", std::process::id()),
        broker.host.clone(),
        broker.port,
    );
    if let Some(u) = &broker.username {
        o.set_credentials(u.clone(), broker.password.clone().unwrap_or_default());
    }
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 16);
    let response = format!("{prefix}/bridge/response/ota/start");
    let topic = format!("{prefix}/bridge/request/ota/start");
    client
        .subscribe(response.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(
                            topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            request.to_string().into_bytes(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == response => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).map_err(|e| e.to_string())?;
                    if v.get("transaction").and_then(|t| t.as_str()) != Some("pmesh-demo") {
                        continue;
                    }
                    if v.get("status").and_then(|s| s.as_str()) != Some("ok") {
                        return Err(v
                            .get("error")
                            .and_then(|e| e.as_str())
                            .unwrap_or("error")
                            .to_string());
                    }
                    return v
                        .pointer("/data/campaign")
                        .and_then(|c| c.as_u64())
                        .ok_or_else(|| format!("the answer names no campaign: {v}"));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("MQTT: {e}")),
            }
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| Err("no answer from the bridge within 15 s".into()));
    let _ = client.disconnect().await;
    // Let the disconnect go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    r
}
