//! `pmesh node`: a mesh node on this host, joined to a painlessMesh over TCP.
//!
//! Settings come from flags, then `--config pmesh.toml`, then the reference's defaults (flags
//! win). The node runs on its own thread ([`pmesh_net::Mesh`]); this thread serves the local
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pmesh_net::control::{ControlAddr, ControlListener, ControlServer};
use pmesh_net::firmware::{self, FileSink, FileStore};
use pmesh_net::ota::{NodeOta, OtaLogger};
use pmesh_net::{MeshBuilder, MeshEvent, MeshHandle, NetConfig, RetrySchedule, node_id};
use pmesh_node::{Config, Event, Node, Plugin, StatusConfig, StatusPlugin, StatusTarget};
use pmesh_ota::{
    ClassicReceiverKind, InstalledImage, Ota, OtaConfig, OtaEvent, OtaStore, TransferId,
};
use pmesh_proto::packages::Generation;
use serde::Deserialize;
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

/// The configuration file. Unknown keys inside a section are errors (typos); unknown sections
/// are kept in `other` for the parts of pmesh that read them.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// `[node]`
    #[serde(default)]
    pub node: NodeSection,
    /// `[log]`
    #[serde(default)]
    pub log: LogSection,
    /// `[timers]`
    #[serde(default)]
    pub timers: TimersSection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[retry]`
    #[serde(default)]
    pub retry: RetrySection,
    /// `[ota]`
    #[serde(default)]
    pub ota: OtaSection,
    /// `[status]`
    #[serde(default)]
    pub status: StatusSection,
    /// `[mqtt]`: the MQTT bridge.
    #[serde(default)]
    pub mqtt: mqtt::MqttSection,
    /// Sections other parts of pmesh read; kept for them.
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

/// `[node]`: identity and links.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    id: Option<u32>,
    id_file: Option<PathBuf>,
    root: Option<bool>,
    time_authority: Option<bool>,
    rate_discipline: Option<bool>,
    listen: Option<String>,
    #[serde(default)]
    connect: Vec<String>,
    control: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    format: Option<String>,
    filter: Option<String>,
}

/// `[timers]`: the protocol's timers. The defaults are the reference's; shorten them only to
/// test, since stock nodes use the reference values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersSection {
    node_sync_interval: Option<String>,
    node_timeout: Option<String>,
    ap_first_sync_delay: Option<String>,
    time_sync_interval: Option<String>,
    time_sync_unsynced_interval: Option<String>,
    time_sync_retry: Option<String>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    max_frame: Option<usize>,
    max_connections: Option<usize>,
    send_queue_high_water: Option<usize>,
    send_queue_limit: Option<usize>,
    write_stall_timeout: Option<String>,
    reader_pause_limit: Option<String>,
}

/// `[ota]`: receiving firmware, and OTA protocol timers (defaults: the reference's and
/// pmesh-ota's; shorten them only to test).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaSection {
    role: Option<String>,
    hardware: Option<String>,
    /// Receive classic OTA as a stock painlessMesh node (`--ota-stock`).
    stock: Option<bool>,
    dir: Option<PathBuf>,
    exec: Option<PathBuf>,
    max_image_bytes: Option<u64>,
    /// The firmware directory (`--firmware-dir`).
    firmware_dir: Option<PathBuf>,
    /// pmesh OTA bytes per second per link (0 or absent: no cap).
    rate_limit: Option<u32>,
    classic_request_interval: Option<String>,
    classic_broadcast_idle: Option<String>,
    classic_broadcast_jitter: Option<String>,
    announce_interval: Option<String>,
    pmesh_rewant_after: Option<String>,
    /// Trusted firmware keys: `pmesh-ed25519-pub ...` lines or files of them.
    #[serde(default)]
    trusted_keys: Vec<String>,
    /// Take part in unsigned pmesh rollouts when no key is configured.
    allow_unsigned: Option<bool>,
}

/// `[status]`: periodic status reports (Alteriom EnhancedStatusPackage).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Time between reports; absent: no reports.
    interval: Option<String>,
    /// Send to this node only (SINGLE) instead of broadcasting.
    to: Option<u32>,
    /// `fw` field [default: pmesh-<version>].
    firmware: Option<String>,
    /// 604 (default) or 203 (Alteriom Phase 1/2 meshes).
    package_type: Option<i32>,
}

impl StatusSection {
    fn resolve(&self, flag: Option<&str>) -> anyhow::Result<Option<StatusConfig>> {
        let Some(every) = flag.or(self.interval.as_deref()) else {
            return Ok(None);
        };
        let interval = parse_duration(every).context("--status-every / [status] interval")?;
        if interval < Duration::from_secs(1) {
            bail!("status reports at most once a second");
        }
        let mut cfg = StatusConfig::new(
            self.firmware
                .clone()
                .unwrap_or_else(|| format!("pmesh-{}", env!("CARGO_PKG_VERSION"))),
        );
        cfg.interval = interval;
        cfg.first_after = interval.min(Duration::from_secs(30));
        cfg.generation = match self.package_type {
            None | Some(604) => Generation::Head,
            Some(203) => Generation::Phase2,
            Some(other) => bail!("[status] package_type must be 604 or 203, not {other}"),
        };
        if let Some(to) = self.to {
            if to == 0 {
                bail!("[status] to must be a node id (1..=4294967295)");
            }
            cfg.target = StatusTarget::Node(to);
        }
        Ok(Some(cfg))
    }
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

/// How this node takes part in OTA.
#[derive(Debug)]
pub struct OtaSettings {
    /// Plugin configuration (role, hardware, receivers on or off, timers).
    pub config: OtaConfig,
    /// Receive images (a role was given).
    pub receive: bool,
    /// Directory for images and progress.
    pub dir: PathBuf,
    /// Program run after an install.
    pub exec: Option<PathBuf>,
    /// Largest image accepted.
    pub max_image_bytes: u64,
    /// Where remote requests may read firmware from, by name.
    pub firmware_dir: Option<pmesh_bridge::FirmwareDir>,
}

impl OtaSettings {
    fn resolve(args: &Args, s: &OtaSection) -> anyhow::Result<OtaSettings> {
        let role = args.ota_role.clone().or_else(|| s.role.clone());
        let hardware = args
            .ota_hardware
            .clone()
            .or_else(|| s.hardware.clone())
            .unwrap_or_else(|| format!("linux-{}", std::env::consts::ARCH));
        let receive = role.is_some();
        if role.as_deref() == Some("") || hardware.is_empty() {
            bail!("--ota-role and --ota-hardware must not be empty");
        }
        let stock = args.ota_stock || s.stock.unwrap_or(false);
        if stock && !receive {
            bail!("--ota-stock needs --ota-role (a stock receiver of which role?)");
        }
        let mut config = if stock {
            OtaConfig::stock(role.unwrap_or_default(), hardware)
        } else {
            OtaConfig::new(role.unwrap_or_default(), hardware)
        };
        if !receive {
            config.pmesh_receiver = false;
            config.classic_receiver = ClassicReceiverKind::Off;
        }
        let set = |slot: &mut Duration, v: &Option<String>, key: &str| -> anyhow::Result<()> {
            if let Some(v) = v {
                *slot = parse_duration(v).with_context(|| format!("[ota] {key}"))?;
            }
            Ok(())
        };
        set(
            &mut config.classic.request_interval,
            &s.classic_request_interval,
            "classic_request_interval",
        )?;
        set(
            &mut config.classic.broadcast_idle,
            &s.classic_broadcast_idle,
            "classic_broadcast_idle",
        )?;
        set(
            &mut config.classic.broadcast_jitter,
            &s.classic_broadcast_jitter,
            "classic_broadcast_jitter",
        )?;
        set(
            &mut config.announce.interval,
            &s.announce_interval,
            "announce_interval",
        )?;
        set(
            &mut config.pmesh.rewant_after,
            &s.pmesh_rewant_after,
            "pmesh_rewant_after",
        )?;
        config.pmesh.rate_limit = s.rate_limit.filter(|&r| r > 0);
        let key_args: Vec<String> = args
            .trusted_key
            .iter()
            .chain(&s.trusted_keys)
            .cloned()
            .collect();
        config.trust = pmesh_ota::pmesh::TrustConfig {
            keys: if key_args.is_empty() {
                Vec::new()
            } else {
                crate::cmd::sign::read_trusted(&key_args)
                    .context("--trusted-key / [ota] trusted_keys")?
            },
            allow_unsigned: args.allow_unsigned || s.allow_unsigned.unwrap_or(false),
            // Set from the system clock when the node starts (`run`).
            wall_clock: None,
        };
        let dir = args
            .ota_dir
            .clone()
            .or_else(|| s.dir.clone())
            .unwrap_or_else(|| {
                node_id::default_id_file()
                    .parent()
                    .map_or_else(|| PathBuf::from("ota"), |p| p.join("ota"))
            });
        let max_image_bytes = args
            .ota_max_size
            .or(s.max_image_bytes)
            .unwrap_or(firmware::DEFAULT_CAPACITY);
        if max_image_bytes == 0 {
            bail!("--ota-max-size must be at least 1 byte");
        }
        let firmware_dir =
            match args.firmware_dir.as_ref().or(s.firmware_dir.as_ref()) {
                Some(d) => Some(pmesh_bridge::FirmwareDir::open(d).with_context(|| {
                    format!("--firmware-dir / [ota] firmware_dir {}", d.display())
                })?),
                None => None,
            };
        Ok(OtaSettings {
            config,
            receive,
            dir,
            exec: args.ota_exec.clone().or_else(|| s.exec.clone()),
            max_image_bytes,
            firmware_dir,
        })
    }
}

/// `[retry]`: how uplinks are dialled again.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    steps: Option<Vec<String>>,
    max: Option<String>,
    connect_timeout: Option<String>,
}

impl FileConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration in {}", path.display()))
    }
}

/// Parses `250ms`, `10s`, `1.5s`, `2m`, `1h`.
///
/// Hand-written (a dozen lines) rather than a dependency for one config format.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a duration like 10s or 200ms"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => bail!("'{s}' needs a unit: ms, s, m or h"),
        other => bail!("unknown unit '{other}' in '{s}' (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(value * scale).with_context(|| format!("'{s}' is out of range"))
}

fn set_duration(slot: &mut Duration, value: &Option<String>, key: &str) -> anyhow::Result<()> {
    if let Some(v) = value {
        *slot = parse_duration(v).with_context(|| format!("[timers/limits/retry] {key}"))?;
    }
    Ok(())
}

/// Everything `pmesh node` needs, resolved from flags, file and defaults.
#[derive(Debug)]
pub struct Settings {
    /// The node's protocol configuration.
    pub node: Config,
    /// How the id was chosen (for the log).
    pub id_source: String,
    /// Runtime configuration.
    pub net: NetConfig,
    /// Control endpoint, if any.
    pub control: Option<ControlAddr>,
    /// OTA.
    pub ota: OtaSettings,
    /// Status reports, if any.
    pub status: Option<StatusConfig>,
    /// The MQTT bridge, if a broker was given.
    pub mqtt: Option<pmesh_bridge::BridgeConfig>,
    /// The whole file, for sections read elsewhere.
    pub file: FileConfig,
}

impl Settings {
    /// Resolves flags over the file over defaults.
    pub fn resolve(args: &Args, file: FileConfig) -> anyhow::Result<Settings> {
        let n = &file.node;
        let (id, id_source) = match (args.id, n.id) {
            (Some(id), _) => (id, "--id".to_owned()),
            (None, Some(id)) => (id, "configuration file".to_owned()),
            (None, None) => {
                let path = n.id_file.clone().unwrap_or_else(node_id::default_id_file);
                let (id, source) = node_id::derive(&path).with_context(|| {
                    format!(
                        "cannot derive a node id (pass --id, or make {} writable)",
                        path.display()
                    )
                })?;
                (id, source.to_string())
            }
        };
        if id == 0 {
            bail!("node id 0 is reserved for 'unknown'; choose 1..=4294967295");
        }
        let mut node = Config::new(id);
        node.root = args.root || n.root.unwrap_or(false);
        node.time_authority = args.time_authority || n.time_authority.unwrap_or(false);
        node.rate_discipline = args.rate_discipline || n.rate_discipline.unwrap_or(false);
        let t = &file.timers;
        set_duration(
            &mut node.node_sync_interval,
            &t.node_sync_interval,
            "node_sync_interval",
        )?;
        set_duration(&mut node.node_timeout, &t.node_timeout, "node_timeout")?;
        set_duration(
            &mut node.ap_first_sync_delay,
            &t.ap_first_sync_delay,
            "ap_first_sync_delay",
        )?;
        set_duration(
            &mut node.time_sync_interval,
            &t.time_sync_interval,
            "time_sync_interval",
        )?;
        set_duration(
            &mut node.time_sync_unsynced_interval,
            &t.time_sync_unsynced_interval,
            "time_sync_unsynced_interval",
        )?;
        set_duration(
            &mut node.time_sync_retry,
            &t.time_sync_retry,
            "time_sync_retry",
        )?;
        if let Some(m) = file.limits.max_frame {
            if m < 1024 {
                bail!("[limits] max_frame must be at least 1024 bytes");
            }
            node.max_frame = m;
        }

        let mut net = NetConfig::default();
        let listen = args.listen.clone().or_else(|| n.listen.clone());
        net.listen =
            match listen.as_deref() {
                None => net.listen,
                Some("none") => None,
                Some(a) => Some(a.parse::<SocketAddr>().with_context(|| {
                    format!("--listen '{a}' is not an address like 0.0.0.0:5555")
                })?),
            };
        net.connect = if args.connect.is_empty() {
            n.connect.clone()
        } else {
            args.connect.clone()
        };
        for c in &net.connect {
            if !c.contains(':') {
                bail!("uplink '{c}' needs a port, e.g. {c}:5555");
            }
        }
        if net.listen.is_none() && net.connect.is_empty() {
            bail!("with --listen none the node needs at least one --connect");
        }
        let l = &file.limits;
        if let Some(v) = l.max_connections {
            net.max_connections = v;
        }
        if let Some(v) = l.send_queue_high_water {
            net.send_queue_high_water = v;
        }
        if let Some(v) = l.send_queue_limit {
            net.send_queue_limit = v;
        }
        if net.send_queue_limit < net.send_queue_high_water + node.max_frame {
            bail!("[limits] send_queue_limit must be at least send_queue_high_water + max_frame");
        }
        set_duration(
            &mut net.write_stall_timeout,
            &l.write_stall_timeout,
            "write_stall_timeout",
        )?;
        set_duration(
            &mut net.reader_pause_limit,
            &l.reader_pause_limit,
            "reader_pause_limit",
        )?;
        let r = &file.retry;
        if let Some(steps) = &r.steps {
            net.retry = RetrySchedule {
                steps: steps
                    .iter()
                    .map(|s| parse_duration(s))
                    .collect::<anyhow::Result<_>>()
                    .context("[retry] steps")?,
                max: net.retry.max,
            };
        }
        set_duration(&mut net.retry.max, &r.max, "max")?;
        set_duration(
            &mut net.connect_timeout,
            &r.connect_timeout,
            "connect_timeout",
        )?;

        let control = match args
            .control
            .clone()
            .or_else(|| n.control.clone())
            .as_deref()
        {
            Some("none") => None,
            Some(a) => Some(
                a.parse::<ControlAddr>()
                    .map_err(anyhow::Error::msg)
                    .context("--control")?,
            ),
            None => Some(ControlAddr::default_path()),
        };
        let ota = OtaSettings::resolve(args, &file.ota)?;
        let status = file.status.resolve(args.status_every.as_deref())?;
        let mut mqtt = mqtt::resolve(
            &args.mqtt,
            &file.mqtt,
            id,
            std::env::var("PMESH_MQTT_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
        )?;
        if let Some(m) = mqtt.as_mut() {
            m.firmware_dir = ota.firmware_dir.clone();
            m.metrics_http.max_connections =
                fds::metrics_connections(fds::soft_limit(), net.max_connections);
        }
        Ok(Settings {
            node,
            id_source,
            net,
            control,
            ota,
            status,
            mqtt,
            file,
        })
    }
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
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    init_logging(
        args.log_format.as_deref().or(file.log.format.as_deref()),
        args.log.as_deref().or(file.log.filter.as_deref()),
    )?;
    let fd = fds::raise_soft_limit();
    let settings = Settings::resolve(&args, file)?;
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
        .map(|cfg| mqtt::MqttBridge::new(cfg, settings.node.node_id));
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_are_the_reference() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert_eq!(s.node.node_sync_interval, Duration::from_secs(60));
        assert_eq!(s.node.node_timeout, Duration::from_secs(10));
        assert_eq!(s.net.listen, Some("0.0.0.0:5555".parse().unwrap()));
        assert_eq!(s.net.retry, RetrySchedule::reference());
        assert!(
            !s.node.rate_discipline,
            "the reference's time sync unless asked"
        );
    }

    #[test]
    fn rate_discipline_from_the_file_or_the_flag() {
        let file: FileConfig = toml::from_str("[node]\nrate_discipline = true\n").unwrap();
        assert!(
            Settings::resolve(&args(), file)
                .unwrap()
                .node
                .rate_discipline
        );
        let mut a = args();
        a.rate_discipline = true;
        let s = Settings::resolve(&a, FileConfig::default()).unwrap();
        assert!(s.node.rate_discipline);
    }

    #[test]
    fn file_then_flags() {
        let file: FileConfig = toml::from_str(
            r#"
            [node]
            id = 99
            root = true
            listen = "127.0.0.1:6000"
            connect = ["127.0.0.1:6001"]
            [timers]
            node_sync_interval = "2s"
            node_timeout = "500ms"
            [retry]
            steps = ["100ms", "200ms"]
            max = "1s"
            [mqtt]
            url = "mqtt://localhost"
            "#,
        )
        .unwrap();
        let mut a = args();
        a.listen = Some("127.0.0.1:7000".into());
        let s = Settings::resolve(&a, file).unwrap();
        assert_eq!(s.node.node_id, 7, "--id wins over the file");
        assert!(s.node.root);
        assert_eq!(s.net.listen, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(s.net.connect, ["127.0.0.1:6001"]);
        assert_eq!(s.node.node_sync_interval, Duration::from_secs(2));
        assert_eq!(s.node.node_timeout, Duration::from_millis(500));
        assert_eq!(s.net.retry.delay(1), Duration::from_millis(200));
        assert_eq!(s.net.retry.delay(9), Duration::from_secs(1));
        assert!(s.mqtt.is_some(), "[mqtt] is read");
        assert!(!s.file.other.contains_key("mqtt"));
    }

    #[test]
    fn trusted_keys_from_file_and_flags() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert!(s.ota.config.trust.keys.is_empty());
        assert!(
            s.ota.config.trust.requires_signed(),
            "no key, no --allow-unsigned: refuse"
        );
        let k1 = pmesh_ota::signed::SigningKey::from_seed([1; 32]).public();
        let k2 = pmesh_ota::signed::SigningKey::from_seed([2; 32]).public();
        let file: FileConfig = toml::from_str(&format!(
            "[ota]\ntrusted_keys = [\"{}\"]\nallow_unsigned = true\n",
            k1.to_text()
        ))
        .unwrap();
        let mut a = args();
        a.trusted_key = vec![k2.to_text()];
        let s = Settings::resolve(&a, file).unwrap();
        assert_eq!(s.ota.config.trust.keys, [k2, k1]);
        assert!(
            s.ota.config.trust.requires_signed(),
            "keys make signatures required"
        );
        let mut a = args();
        a.allow_unsigned = true;
        let s = Settings::resolve(&a, FileConfig::default()).unwrap();
        assert!(!s.ota.config.trust.requires_signed());
        let mut a = args();
        a.trusted_key = vec!["pmesh-ed25519-pub 1234".into()];
        assert!(Settings::resolve(&a, FileConfig::default()).is_err());
    }

    #[test]
    fn ota_from_file_then_flags() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert!(!s.ota.receive, "no role: relay and distribute only");
        assert!(!s.ota.config.pmesh_receiver);
        assert_eq!(s.ota.config.classic_receiver, ClassicReceiverKind::Off);
        assert_eq!(
            s.ota.config.hardware,
            format!("linux-{}", std::env::consts::ARCH)
        );
        let file: FileConfig = toml::from_str(
            r#"
            [ota]
            role = "sensor"
            hardware = "ESP32"
            dir = "/srv/ota"
            max_image_bytes = 1000
            rate_limit = 5000
            classic_broadcast_idle = "1s"
            "#,
        )
        .unwrap();
        let mut a = args();
        a.ota_hardware = Some("ESP8266".into());
        let s = Settings::resolve(&a, file).unwrap();
        assert!(s.ota.receive && s.ota.config.pmesh_receiver);
        assert_eq!(s.ota.config.role, "sensor");
        assert_eq!(s.ota.config.hardware, "ESP8266", "the flag wins");
        assert_eq!(s.ota.dir, PathBuf::from("/srv/ota"));
        assert_eq!(s.ota.max_image_bytes, 1000);
        assert_eq!(s.ota.config.pmesh.rate_limit, Some(5000));
        assert_eq!(s.ota.config.classic.broadcast_idle, Duration::from_secs(1));
        assert!(
            !s.file.other.contains_key("ota"),
            "[ota] is read, not passed on"
        );

        assert!(toml::from_str::<FileConfig>("[ota]\nrolle = \"x\"").is_err());
        let file: FileConfig = toml::from_str("[ota]\nannounce_interval = \"soon\"").unwrap();
        assert!(Settings::resolve(&args(), file).is_err());
        let mut a = args();
        a.ota_role = Some(String::new());
        assert!(Settings::resolve(&a, FileConfig::default()).is_err());
        let mut a = args();
        a.ota_max_size = Some(0);
        assert!(Settings::resolve(&a, FileConfig::default()).is_err());
    }

    #[test]
    fn firmware_dir_from_the_file_or_the_flag_goes_to_the_bridge() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert!(s.ota.firmware_dir.is_none(), "none unless configured");
        let tmp = std::env::temp_dir();
        let file: FileConfig = toml::from_str(&format!(
            "[ota]\nfirmware_dir = {tmp:?}\n[mqtt]\nurl = \"mqtt://localhost\"\n"
        ))
        .unwrap();
        let s = Settings::resolve(&args(), file).unwrap();
        let dir = s.ota.firmware_dir.clone().unwrap();
        assert_eq!(dir.path(), std::fs::canonicalize(&tmp).unwrap());
        let bridge = s.mqtt.unwrap();
        assert_eq!(bridge.firmware_dir, Some(dir));
        assert!((1..=fds::METRICS_MAX).contains(&bridge.metrics_http.max_connections));
        let mut a = args();
        a.firmware_dir = Some("/nonexistent/firmware".into());
        let e = Settings::resolve(&a, FileConfig::default()).unwrap_err();
        assert!(format!("{e:#}").contains("--firmware-dir"), "{e:#}");
    }

    #[test]
    fn status_reports_are_opt_in() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert!(s.status.is_none());
        let file: FileConfig =
            toml::from_str("[status]\ninterval = \"10s\"\nto = 7\npackage_type = 203").unwrap();
        let s = Settings::resolve(&args(), file).unwrap();
        let c = s.status.unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.target, StatusTarget::Node(7));
        assert_eq!(c.generation, Generation::Phase2);
        assert!(c.firmware.starts_with("pmesh-"));
        let mut a = args();
        a.status_every = Some("2m".into());
        let s = Settings::resolve(&a, FileConfig::default()).unwrap();
        assert_eq!(s.status.unwrap().interval, Duration::from_secs(120));
        for bad in [
            "[status]\ninterval = \"100ms\"",
            "[status]\ninterval = \"1s\"\npackage_type = 605",
            "[status]\ninterval = \"1s\"\nto = 0",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(Settings::resolve(&args(), file).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("[node]\nlisten_addr = \"x\"").is_err());
        let file: FileConfig = toml::from_str("[timers]\nnode_timeout = \"10\"").unwrap();
        assert!(Settings::resolve(&args(), file).is_err());
        let mut a = args();
        a.id = Some(0);
        assert!(Settings::resolve(&a, FileConfig::default()).is_err());
        let mut a = args();
        a.listen = Some("none".into());
        assert!(
            Settings::resolve(&a, FileConfig::default()).is_err(),
            "no listener and no uplink"
        );
        let mut a = args();
        a.connect = vec!["10.0.0.1".into()];
        assert!(
            Settings::resolve(&a, FileConfig::default()).is_err(),
            "uplink without port"
        );
    }
}
