//! `pmesh node`: a mesh node on this host, joined to a painlessMesh over TCP.
//!
//! Settings come from flags, then `--config pmesh.toml`, then the reference's defaults (flags
//! win): [`pmesh_config`] reads the file and resolves them ([`Args::flags`] hands it the
//! flags; [`resolve_settings`]). The node runs on its own thread ([`pmesh_net::Mesh`]); this thread serves the local
//! control endpoint and waits for SIGINT/SIGTERM.
//!
//! Every node runs the OTA plugin: it relays pmesh rollouts and can distribute images
//! (`pmesh ota push --control`). With `--ota-role` it also receives images for that role and
//! hardware into `--ota-dir`, where "installing" means: the verified image is committed as
//! `images/<role>-<hardware>-<sha256>.bin` with a JSON record, `current.bin`/`current.json`
//! point at it, and the `--ota-exec` program (if any) is run with its path. The running
//! program is never replaced. With `--status-every` (or `[status]`) the node also sends
//! Alteriom EnhancedStatusPackages (`pmesh_node::StatusPlugin`, beside the OTA plugin).
//! With `--mqtt URL` (or `[mqtt]`) the node is also the mesh's MQTT gateway: the bridge runs in
//! this process ([`mqtt`]).

pub mod fds;
pub mod mqtt;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub use pmesh_config::parse_duration;
use pmesh_config::{FileConfig, Flags, OtaSettings, Settings, SystemHost};
use pmesh_net::control::{ControlListener, ControlServer};
use pmesh_net::firmware::{self, FileSink, FileStore};
use pmesh_net::ota::{NodeOta, OtaLogger};
use pmesh_net::{MeshBuilder, MeshEvent, MeshHandle};
use pmesh_node::{Event, Node, Plugin, StatusPlugin};
use pmesh_ota::{InstalledImage, Ota, OtaEvent, OtaStore, TransferId};
use tracing::{info, warn};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Node id (1..=4294967295). Default: from this host's MAC, as ESP nodes derive theirs
    /// (last four bytes, big-endian), else a random id persisted in the state directory.
    #[arg(long, value_name = "ID")]
    pub id: Option<u32>,
    /// Address to accept mesh connections on [default: 0.0.0.0:5555]; `none` to only dial out.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Dial this node as its station (`host:port`, e.g. an ESP's AP `10.x.y.1:5555`); repeatable.
    #[arg(long = "connect", value_name = "HOST:PORT")]
    pub connect: Vec<String>,
    /// Announce `root:true` (the gateway of a mesh usually is its root).
    #[arg(long)]
    pub root: bool,
    /// Announce time authority: neighbours adopt this node's clock.
    #[arg(long)]
    pub time_authority: bool,
    /// Also discipline the rate of the mesh time this node adopts, not only its offset (not in
    /// the reference; off by default; nothing changes on the wire).
    #[arg(long)]
    pub rate_discipline: bool,
    /// Configuration file (TOML; see docs/user-guide.md). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Local control endpoint for `pmesh send/nodes/topology`: a socket path, `unix:PATH`,
    /// `127.0.0.1:PORT`, or `none` [default: $XDG_RUNTIME_DIR/pmesh/node.sock].
    #[arg(long, value_name = "ADDR")]
    pub control: Option<String>,
    /// Log format: `text` or `json` (one object per line).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter in tracing's env-filter syntax, e.g. `info` or `pmesh_net=debug`
    /// [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Receive firmware for this role (painlessMesh's `role`); without it the node only relays
    /// and distributes OTA.
    #[arg(long, value_name = "ROLE")]
    pub ota_role: Option<String>,
    /// With --ota-role: take classic OTA exactly as a stock painlessMesh node does, bugs
    /// included (broadcast waits unless root, in-order chunks only, the wrong-`from`
    /// fallback), and no pmesh protocol: a stand-in for unmodified fleets when testing
    /// distributors.
    #[arg(long)]
    pub ota_stock: bool,
    /// Hardware name compared with offers [default: linux-<arch>, e.g. linux-aarch64].
    #[arg(long, value_name = "HW")]
    pub ota_hardware: Option<String>,
    /// Directory for received images, progress and the installed-image record
    /// [default: $XDG_STATE_HOME/pmesh/ota].
    #[arg(long, value_name = "DIR")]
    pub ota_dir: Option<PathBuf>,
    /// Program run after an image is installed, with the image path as its argument and
    /// PMESH_OTA_* variables (see docs/user-guide.md).
    #[arg(long, value_name = "PROGRAM")]
    pub ota_exec: Option<PathBuf>,
    /// Largest image accepted, in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub ota_max_size: Option<u64>,
    /// The firmware directory: the only place a remote request (MQTT `ota/start` with
    /// `image_path`) may read firmware from, by a name inside it [default: none, and
    /// `image_path` is refused].
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Trust firmware signed by this key: a `pmesh-ed25519-pub ...` line or a file of them
    /// (`pmesh key gen`). Repeat for more keys; any key makes signatures required: unsigned,
    /// unknown-key, forged, rolled-back or tampered rollouts are neither installed nor relayed.
    #[arg(long, value_name = "PUB")]
    pub trusted_key: Vec<String>,
    /// Without a trusted key, take part in (and relay) unsigned pmesh rollouts; without this
    /// flag (or `[ota] allow_unsigned = true`) such a node refuses every pmesh rollout.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Broadcast an Alteriom EnhancedStatusPackage (604) this often, e.g. `30s`, so bridges
    /// monitor this node like the ESP nodes [default: off].
    #[arg(long, value_name = "DURATION")]
    pub status_every: Option<String>,
    /// MQTT bridge and Prometheus metrics.
    #[command(flatten)]
    pub mqtt: Box<mqtt::MqttArgs>,
}

/// Free memory for status reports: `MemAvailable` from /proc/meminfo, in KiB.
fn mem_available_kb() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb.min(u64::from(u32::MAX)) as u32)
}

/// Reads a configuration file (see [`FileConfig`]).
pub fn load_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    FileConfig::from_toml(&text)
        .with_context(|| format!("invalid configuration in {}", path.display()))
}

impl Args {
    /// The flags that override the file, for [`Settings::resolve`].
    pub fn flags(&self) -> Flags {
        Flags {
            id: self.id,
            listen: self.listen.clone(),
            connect: self.connect.clone(),
            root: self.root,
            time_authority: self.time_authority,
            rate_discipline: self.rate_discipline,
            control: self.control.clone(),
            ota_role: self.ota_role.clone(),
            ota_stock: self.ota_stock,
            ota_hardware: self.ota_hardware.clone(),
            ota_dir: self.ota_dir.clone(),
            ota_exec: self.ota_exec.clone(),
            ota_max_size: self.ota_max_size,
            firmware_dir: self.firmware_dir.clone(),
            trusted_key: self.trusted_key.clone(),
            allow_unsigned: self.allow_unsigned,
            status_every: self.status_every.clone(),
            mqtt: self.mqtt.flags(),
        }
    }
}

/// Resolves flags over the file over defaults on this machine ([`Settings::resolve`]), and
/// sizes the metrics endpoint's connection cap from the file descriptor limit.
pub fn resolve_settings(args: &Args, file: FileConfig) -> anyhow::Result<Settings> {
    let mut settings = Settings::resolve(&args.flags(), file, &SystemHost)?;
    if let Some(m) = settings.mqtt.as_mut() {
        m.metrics_http.max_connections =
            fds::metrics_connections(fds::soft_limit(), settings.net.max_connections);
    }
    Ok(settings)
}

/// Sets up logging: text or JSON lines on stderr, filtered like `RUST_LOG`.
pub fn init_logging(format: Option<&str>, filter: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).with_context(|| format!("invalid log filter '{f}'"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format.unwrap_or("text") {
        "text" => builder.try_init(),
        "json" => builder.json().flatten_event(true).try_init(),
        other => bail!("unknown log format '{other}' (text or json)"),
    };
    // A second init (tests calling run twice) keeps the first subscriber.
    let _ = result;
    Ok(())
}

/// Runs the command.
/// Says at start which firmware this node takes (docs/ota.md, "Signed firmware").
fn log_trust(t: &pmesh_ota::pmesh::TrustConfig) {
    if !t.keys.is_empty() {
        let ids: Vec<String> = t
            .keys
            .iter()
            .map(|k| pmesh_ota::codec::hex(&k.id().0))
            .collect();
        info!(keys = ?ids, "OTA: signed firmware required (trusted keys)");
    } else if t.allow_unsigned {
        warn!(
            "OTA: no trusted key and --allow-unsigned: unsigned pmesh rollouts are installed and relayed"
        );
    } else {
        warn!(
            "OTA: no trusted key: every pmesh rollout is refused (configure --trusted-key, or --allow-unsigned)"
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(p) => load_config(p)?,
        None => FileConfig::default(),
    };
    init_logging(
        args.log_format.as_deref().or(file.log.format()),
        args.log.as_deref().or(file.log.filter()),
    )?;
    let fd = fds::raise_soft_limit();
    let settings = resolve_settings(&args, file)?;
    let soft = fd.soft.unwrap_or(u64::MAX);
    info!(soft = ?fd.soft, hard = ?fd.hard, raised_from = ?fd.raised_from,
        metrics_connections = fds::metrics_connections(soft, settings.net.max_connections),
        "file descriptors");
    if soft < fds::reserved(settings.net.max_connections) + fds::METRICS_MAX as u64 {
        warn!(
            soft,
            reserved = fds::reserved(settings.net.max_connections),
            "the file descriptor limit is low for a gateway; raise it (ulimit -n, LimitNOFILE=)"
        );
    }
    if let Some(d) = &settings.ota.firmware_dir {
        info!(dir = %d.path().display(), used = settings.mqtt.is_some(),
            "firmware directory (MQTT ota/start image_path names)");
    }
    for section in settings.file.other.keys() {
        warn!(
            section,
            "configuration section not used by `pmesh node`; ignored"
        );
    }
    let o = &settings.ota;
    let (sink, store) = if o.receive {
        let (sink, store) = firmware::open_dir(
            &o.dir,
            &o.config.role,
            &o.config.hardware,
            o.max_image_bytes,
        )
        .with_context(|| format!("cannot use the OTA directory {}", o.dir.display()))?;
        let current = store.current_image();
        let resumable = store
            .load_transfer()
            .map(|t| (t.have.count(), t.have.len()));
        info!(role = %o.config.role, hardware = %o.config.hardware, dir = %o.dir.display(),
            max_image_bytes = o.max_image_bytes, exec = ?o.exec,
            current_version = current.as_ref().map(|c| c.version.as_str()),
            current_sha256 = current.as_ref().map(|c| c.sha256.as_str()),
            resumable_chunks = ?resumable,
            "OTA: receiving images");
        (sink, store)
    } else {
        info!("OTA: relaying and distributing only (no --ota-role)");
        (FileSink::disabled(), FileStore::disabled())
    };
    log_trust(&o.config.trust);
    let mut config = o.config.clone();
    // Expired signed manifests are refused by this node, relays included.
    config.trust.wall_clock = pmesh_net::ota::wall_clock();
    let trust = config.trust.clone();
    let ota = NodeOta::new(Ota::new(config, sink, store));
    let status = settings.status.clone().map(|cfg| {
        info!(interval_s = cfg.interval.as_secs_f64(), target = ?cfg.target, firmware = %cfg.firmware,
            "status reports on (EnhancedStatusPackage)");
        StatusPlugin::new(cfg, pmesh_node::Instant::ZERO)
    });
    let refresh = settings
        .status
        .as_ref()
        .map(|c| (c.interval / 2).clamp(Duration::from_secs(1), Duration::from_secs(5)));
    // `Option<StatusPlugin>`: `pmesh node` runs the same plugin type with status reports off.
    let node = Node::new(settings.node.clone(), (ota, status));
    let installer = Installer::new(settings.node.node_id, o);
    let mut logger = OtaLogger::default();
    let bridge = settings
        .mqtt
        .clone()
        .map(|cfg| mqtt::MqttBridge::new(cfg, settings.node.node_id).with_trust(trust));
    let bridge_hook = bridge.as_ref().map(|b| b.hook::<OtaEvent>());
    let bridge_routes = bridge.as_ref().map(mqtt::MqttBridge::routes);
    serve(
        settings,
        node,
        move |b| {
            let b = b.on_event(move |ev| {
                if let MeshEvent::Node(Event::Plugin(e)) = ev {
                    logger.log(e);
                    if let OtaEvent::Installed { id, image } = e {
                        installer.installed(*id, image);
                    }
                }
            });
            match bridge_hook {
                Some(hook) => b.on_event(hook),
                None => b,
            }
        },
        move |server| match bridge_routes {
            // The same commands; pushes are also shown on MQTT.
            Some(routes) => routes(server),
            None => pmesh_net::ota::routes(server),
        },
        move |h| {
            // Status reports carry the node's counters and free memory: refresh them.
            if let Some(every) = refresh {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        let mem = mem_available_kb();
                        let res = h
                            .call(move |node, now| {
                                let stats = node.stats();
                                node.with_plugin(now, |(_, status), _| {
                                    if let Some(s) = status {
                                        s.set_node_stats(stats);
                                        s.set_free_memory_kb(mem);
                                    }
                                });
                            })
                            .await;
                        if res.is_err() {
                            break;
                        }
                    }
                });
            }
            bridge.map(|b| b.start(h)).transpose()
        },
    )
}

/// Runs `--ota-exec` after each install, one at a time, on its own thread (never on the
/// mesh thread).
struct Installer {
    tx: Option<std::sync::mpsc::Sender<(TransferId, InstalledImage)>>,
}

impl Installer {
    fn new(node_id: u32, o: &OtaSettings) -> Installer {
        let Some(exec) = o.exec.clone().filter(|_| o.receive) else {
            return Installer { tx: None };
        };
        let dir = std::path::absolute(&o.dir).unwrap_or_else(|_| o.dir.clone());
        let (tx, rx) = std::sync::mpsc::channel::<(TransferId, InstalledImage)>();
        let spawned = std::thread::Builder::new()
            .name("ota-exec".into())
            .spawn(move || {
                for (id, image) in rx {
                    run_exec(&exec, &dir, node_id, id, &image);
                }
            });
        match spawned {
            Ok(_) => Installer { tx: Some(tx) },
            Err(e) => {
                warn!(error = %e, "OTA: cannot start the --ota-exec thread; installs will not run it");
                Installer { tx: None }
            }
        }
    }

    fn installed(&self, id: TransferId, image: &InstalledImage) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((id, image.clone()));
        }
    }
}

/// Runs the install hook: `PROGRAM <image path>` with `PMESH_OTA_*` variables.
fn run_exec(exec: &Path, dir: &Path, node_id: u32, id: TransferId, image: &InstalledImage) {
    let name = firmware::image_name(&image.role, &image.hardware, &image.sha256);
    let path = dir.join("images").join(format!("{name}.bin"));
    let record = dir.join("images").join(format!("{name}.json"));
    info!(exec = %exec.display(), image = %path.display(), "OTA: running the install hook");
    let started = std::time::Instant::now();
    let status = std::process::Command::new(exec)
        .arg(&path)
        .env("PMESH_OTA_IMAGE", &path)
        .env("PMESH_OTA_RECORD", &record)
        .env("PMESH_OTA_DIR", dir)
        .env("PMESH_OTA_ROLE", &image.role)
        .env("PMESH_OTA_HARDWARE", &image.hardware)
        .env("PMESH_OTA_VERSION", &image.version)
        .env("PMESH_OTA_SHA256", &image.sha256)
        .env("PMESH_OTA_MD5", &image.md5)
        .env("PMESH_OTA_MODE", id.mode.name())
        .env("PMESH_NODE_ID", node_id.to_string())
        .stdin(std::process::Stdio::null())
        .status();
    let secs = started.elapsed().as_secs_f64();
    match status {
        Ok(s) if s.success() => {
            info!(exec = %exec.display(), seconds = secs, "OTA: install hook succeeded")
        }
        Ok(s) => {
            warn!(exec = %exec.display(), status = %s, seconds = secs, "OTA: install hook failed")
        }
        Err(e) => warn!(exec = %exec.display(), error = %e, "OTA: cannot run the install hook"),
    }
}

/// Runs `node` with the runtime and the control endpoint until SIGINT/SIGTERM. `build` adds
/// to the mesh (event hooks); `routes` adds request kinds to the control endpoint (OTA
/// offers, bridge queries); `started` runs once the node runs, inside the runtime (spawn
/// background tasks there) and may start the MQTT bridge, which is stopped (offline
/// published) before the node.
pub fn serve<P>(
    settings: Settings,
    node: Node<P>,
    build: impl FnOnce(MeshBuilder<P>) -> MeshBuilder<P>,
    routes: impl FnOnce(ControlServer<P>) -> ControlServer<P>,
    started: impl FnOnce(MeshHandle<P>) -> anyhow::Result<Option<mqtt::Running>>,
) -> anyhow::Result<ExitCode>
where
    P: Plugin + Send + 'static,
    P::Event: Send + Sync + std::fmt::Debug + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let control = match &settings.control {
            Some(addr) => Some(
                ControlListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot open the control endpoint {addr}"))?,
            ),
            None => None,
        };
        let listen = settings.net.listen;
        let mesh = build(MeshBuilder::new(node, settings.net.clone()))
            .spawn()
            .with_context(|| match listen {
                Some(a) => format!("cannot listen on {a} (is another node running? use --listen)"),
                None => "cannot start the node".to_owned(),
            })?;
        let handle = mesh.handle();
        info!(
            node_id = settings.node.node_id,
            id_source = %settings.id_source,
            listen = ?mesh.local_addr(),
            control = %settings.control.as_ref().map_or("none".to_owned(), ToString::to_string),
            root = settings.node.root,
            "pmesh node running"
        );
        let bridge = match started(handle.clone()) {
            Ok(b) => b,
            Err(e) => {
                handle.shutdown().await;
                tokio::task::spawn_blocking(move || mesh.join()).await?;
                return Err(e);
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server_task = control.map(|listener| {
            let server = routes(ControlServer::new(handle.clone()));
            let mut stop = stop_rx.clone();
            tokio::spawn(server.serve(listener, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let signal = shutdown_signal().await?;
        info!(signal, "stopping");
        let _ = stop_tx.send(true);
        if let Some(t) = server_task {
            let _ = t.await;
        }
        if let Some(b) = bridge {
            b.stop().await;
        }
        handle.shutdown().await;
        tokio::task::spawn_blocking(move || mesh.join()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT or SIGTERM; returns which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            id: Some(7),
            listen: None,
            connect: vec![],
            root: false,
            time_authority: false,
            rate_discipline: false,
            config: None,
            control: None,
            log_format: None,
            log: None,
            ota_role: None,
            ota_hardware: None,
            ota_stock: false,
            ota_dir: None,
            ota_exec: None,
            ota_max_size: None,
            firmware_dir: None,
            trusted_key: vec![],
            allow_unsigned: false,
            status_every: None,
            mqtt: Box::default(),
        }
    }

    // The resolve itself is tested in pmesh-config; here: the flags reach it, and the CLI's
    // part (the metrics connection cap from the descriptor limit).
    #[test]
    fn flags_reach_the_resolve_and_the_metrics_cap_is_set() {
        let file =
            FileConfig::from_toml("[node]\nid = 99\n[mqtt]\nurl = \"mqtt://localhost\"\n").unwrap();
        let mut a = args();
        a.listen = Some("127.0.0.1:7000".into());
        a.mqtt.prefix = Some("site".into());
        let s = resolve_settings(&a, file).unwrap();
        assert_eq!(s.node.node_id, 7, "--id wins over the file");
        assert_eq!(s.net.listen, Some("127.0.0.1:7000".parse().unwrap()));
        let bridge = s.mqtt.unwrap();
        assert_eq!(bridge.prefix, "site");
        assert!((1..=fds::METRICS_MAX).contains(&bridge.metrics_http.max_connections));
        let mut a = args();
        a.id = Some(0);
        let e = resolve_settings(&a, FileConfig::default()).unwrap_err();
        assert!(format!("{e:#}").contains("reserved"), "{e:#}");
    }
}
