//! The resolve: flags over file over defaults, into what `pmesh node` runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pmesh_net::control::ControlAddr;
use pmesh_net::{NetConfig, RetrySchedule};
use pmesh_node::{Config, StatusConfig, StatusTarget};
use pmesh_proto::packages::Generation;

use crate::duration::set_duration;
use crate::{
    FileConfig, Flags, Host, NodeSection, OtaSettings, StatusSection, parse_setting, resolve_mqtt,
};

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
    /// The MQTT bridge, if a broker was given. Its `metrics_http.max_connections` is the
    /// bridge's default: the CLI sizes it from the file descriptor limit.
    pub mqtt: Option<pmesh_bridge::BridgeConfig>,
    /// The whole file, for sections read elsewhere.
    pub file: FileConfig,
}

impl Settings {
    /// Resolves flags over the file over defaults; `host` is the machine (the node id when
    /// none is given, key files, the firmware directory, TLS files, the MQTT password).
    pub fn resolve(args: &Flags, file: FileConfig, host: &dyn Host) -> anyhow::Result<Settings> {
        let (id, id_source) = node_id(args, &file.node, host)?;
        let node = node_config(args, &file, id)?;
        let net = net_config(args, &file, node.max_frame)?;
        let control = match args
            .control
            .clone()
            .or_else(|| file.node.control.clone())
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
        let ota = OtaSettings::resolve(args, &file.ota, host)?;
        let status = file.status.resolve(args.status_every.as_deref())?;
        let mut mqtt = resolve_mqtt(&args.mqtt, &file.mqtt, id, host.mqtt_password(), host)?;
        if let Some(m) = mqtt.as_mut() {
            m.firmware_dir = ota.firmware_dir.clone();
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

/// The node id and how it was chosen: `--id`, then `[node] id`, then derived by the host.
fn node_id(args: &Flags, n: &NodeSection, host: &dyn Host) -> anyhow::Result<(u32, String)> {
    let (id, id_source) = match (args.id, n.id) {
        (Some(id), _) => (id, "--id".to_owned()),
        (None, Some(id)) => (id, "configuration file".to_owned()),
        (None, None) => {
            let path: PathBuf = n.id_file.clone().unwrap_or_else(|| host.default_id_file());
            host.derive_id(&path).with_context(|| {
                format!(
                    "cannot derive a node id (pass --id, or make {} writable)",
                    path.display()
                )
            })?
        }
    };
    if id == 0 {
        bail!("node id 0 is reserved for 'unknown'; choose 1..=4294967295");
    }
    Ok((id, id_source))
}

/// The node's protocol configuration: roles, `[timers]`, `[limits] max_frame`.
fn node_config(args: &Flags, file: &FileConfig, id: u32) -> anyhow::Result<Config> {
    let n = &file.node;
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
    Ok(node)
}

/// The runtime's configuration: links, `[limits]`, `[retry]`.
fn net_config(args: &Flags, file: &FileConfig, max_frame: usize) -> anyhow::Result<NetConfig> {
    let n = &file.node;
    let mut net = NetConfig::default();
    let listen = args.listen.clone().or_else(|| n.listen.clone());
    net.listen = match listen.as_deref() {
        None => net.listen,
        Some("none") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--listen '{a}' is not an address like 0.0.0.0:5555"))?,
        ),
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
    limits(&mut net, file, max_frame)?;
    retry(&mut net, file)?;
    Ok(net)
}

/// `[limits]` of the runtime.
fn limits(net: &mut NetConfig, file: &FileConfig, max_frame: usize) -> anyhow::Result<()> {
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
    if net.send_queue_limit < net.send_queue_high_water + max_frame {
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
    )
}

/// `[retry]`: the uplinks' reconnect schedule and connect timeout.
fn retry(net: &mut NetConfig, file: &FileConfig) -> anyhow::Result<()> {
    let r = &file.retry;
    if let Some(steps) = &r.steps {
        net.retry = RetrySchedule {
            steps: steps
                .iter()
                .map(|s| parse_setting(s))
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
    )
}

impl StatusSection {
    /// Status reports from `--status-every` (`flag`) over `[status]`; `None`: no reports.
    pub fn resolve(&self, flag: Option<&str>) -> anyhow::Result<Option<StatusConfig>> {
        let Some(every) = flag.or(self.interval.as_deref()) else {
            return Ok(None);
        };
        let interval = parse_setting(every).context("--status-every / [status] interval")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemHost;
    use pmesh_ota::ClassicReceiverKind;
    use std::path::PathBuf;

    fn args() -> Flags {
        Flags {
            id: Some(7),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_are_the_reference() {
        let s = Settings::resolve(&args(), FileConfig::default(), &SystemHost).unwrap();
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
            Settings::resolve(&args(), file, &SystemHost)
                .unwrap()
                .node
                .rate_discipline
        );
        let mut a = args();
        a.rate_discipline = true;
        let s = Settings::resolve(&a, FileConfig::default(), &SystemHost).unwrap();
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
        let s = Settings::resolve(&a, file, &SystemHost).unwrap();
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
        let s = Settings::resolve(&args(), FileConfig::default(), &SystemHost).unwrap();
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
        let s = Settings::resolve(&a, file, &SystemHost).unwrap();
        assert_eq!(s.ota.config.trust.keys, [k2, k1]);
        assert!(
            s.ota.config.trust.requires_signed(),
            "keys make signatures required"
        );
        let mut a = args();
        a.allow_unsigned = true;
        let s = Settings::resolve(&a, FileConfig::default(), &SystemHost).unwrap();
        assert!(!s.ota.config.trust.requires_signed());
        let mut a = args();
        a.trusted_key = vec!["pmesh-ed25519-pub 1234".into()];
        assert!(Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err());
    }

    #[test]
    fn ota_from_file_then_flags() {
        let s = Settings::resolve(&args(), FileConfig::default(), &SystemHost).unwrap();
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
        let s = Settings::resolve(&a, file, &SystemHost).unwrap();
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
        assert!(Settings::resolve(&args(), file, &SystemHost).is_err());
        let mut a = args();
        a.ota_role = Some(String::new());
        assert!(Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err());
        let mut a = args();
        a.ota_max_size = Some(0);
        assert!(Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err());
    }

    #[test]
    fn firmware_dir_from_the_file_or_the_flag_goes_to_the_bridge() {
        let s = Settings::resolve(&args(), FileConfig::default(), &SystemHost).unwrap();
        assert!(s.ota.firmware_dir.is_none(), "none unless configured");
        let tmp = std::env::temp_dir();
        let file: FileConfig = toml::from_str(&format!(
            "[ota]\nfirmware_dir = {tmp:?}\n[mqtt]\nurl = \"mqtt://localhost\"\n"
        ))
        .unwrap();
        let s = Settings::resolve(&args(), file, &SystemHost).unwrap();
        let dir = s.ota.firmware_dir.clone().unwrap();
        assert_eq!(dir.path(), std::fs::canonicalize(&tmp).unwrap());
        let bridge = s.mqtt.unwrap();
        assert_eq!(bridge.firmware_dir, Some(dir));
        let mut a = args();
        a.firmware_dir = Some("/nonexistent/firmware".into());
        let e = Settings::resolve(&a, FileConfig::default(), &SystemHost).unwrap_err();
        assert!(format!("{e:#}").contains("--firmware-dir"), "{e:#}");
    }

    #[test]
    fn status_reports_are_opt_in() {
        let s = Settings::resolve(&args(), FileConfig::default(), &SystemHost).unwrap();
        assert!(s.status.is_none());
        let file: FileConfig =
            toml::from_str("[status]\ninterval = \"10s\"\nto = 7\npackage_type = 203").unwrap();
        let s = Settings::resolve(&args(), file, &SystemHost).unwrap();
        let c = s.status.unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.target, StatusTarget::Node(7));
        assert_eq!(c.generation, Generation::Phase2);
        assert!(c.firmware.starts_with("pmesh-"));
        let mut a = args();
        a.status_every = Some("2m".into());
        let s = Settings::resolve(&a, FileConfig::default(), &SystemHost).unwrap();
        assert_eq!(s.status.unwrap().interval, Duration::from_secs(120));
        for bad in [
            "[status]\ninterval = \"100ms\"",
            "[status]\ninterval = \"1s\"\npackage_type = 605",
            "[status]\ninterval = \"1s\"\nto = 0",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(
                Settings::resolve(&args(), file, &SystemHost).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("[node]\nlisten_addr = \"x\"").is_err());
        let file: FileConfig = toml::from_str("[timers]\nnode_timeout = \"10\"").unwrap();
        assert!(Settings::resolve(&args(), file, &SystemHost).is_err());
        let mut a = args();
        a.id = Some(0);
        assert!(Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err());
        let mut a = args();
        a.listen = Some("none".into());
        assert!(
            Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err(),
            "no listener and no uplink"
        );
        let mut a = args();
        a.connect = vec!["10.0.0.1".into()];
        assert!(
            Settings::resolve(&a, FileConfig::default(), &SystemHost).is_err(),
            "uplink without port"
        );
    }
}
