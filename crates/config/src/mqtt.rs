//! `[mqtt]`: the MQTT bridge of a gateway node (`pmesh node --mqtt`), resolved into
//! [`BridgeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pmesh_bridge::{AlertThresholds, BridgeConfig, BrokerConfig, Streams, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::{Host, MqttFlags, parse_setting};

/// `[mqtt]` in pmesh.toml.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_id: Option<String>,
    prefix: Option<String>,
    legacy_prefix: Option<String>,
    ha_prefix: Option<String>,
    interval: Option<String>,
    state_dir: Option<String>,
    metrics_listen: Option<String>,
    max_packet_size: Option<usize>,
    outbox_capacity: Option<usize>,
    outbox_fsync: Option<bool>,
    #[serde(default)]
    streams: StreamsSection,
    #[serde(default)]
    alerts: AlertsSection,
}

/// `[mqtt.streams]`: each stream on or off (all on by default).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsSection {
    nodes: Option<bool>,
    topology: Option<bool>,
    metrics: Option<bool>,
    alerts: Option<bool>,
    node_state: Option<bool>,
    mesh_messages: Option<bool>,
    legacy_gateway: Option<bool>,
    commands: Option<bool>,
    events: Option<bool>,
    ha_discovery: Option<bool>,
}

/// `[mqtt.alerts]`: alert thresholds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    partition_share: Option<f64>,
    low_memory_kb: Option<u32>,
    high_loss_percent: Option<u32>,
    node_offline: Option<bool>,
}

fn check_prefix(p: &str, what: &str) -> anyhow::Result<()> {
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
        bail!("{what} '{p}' must be a topic without wildcards (+, #) or leading/trailing '/'");
    }
    Ok(())
}

/// Resolves the bridge configuration from flags over `[mqtt]` over defaults; `None` when no
/// broker URL is given (the bridge is off). `env_password` is `$PMESH_MQTT_PASSWORD`; `host`
/// reads the TLS files and gives the default state directory.
pub fn resolve_mqtt(
    args: &MqttFlags,
    file: &MqttSection,
    node_id: u32,
    env_password: Option<String>,
    host: &dyn Host,
) -> anyhow::Result<Option<BridgeConfig>> {
    let metrics = args
        .metrics_listen
        .clone()
        .or_else(|| file.metrics_listen.clone());
    let Some(url) = args.url.clone().or_else(|| file.url.clone()) else {
        if metrics.is_some() {
            bail!("--metrics-listen serves the bridge's metrics: it needs --mqtt (or [mqtt] url)");
        }
        return Ok(None);
    };
    let broker = broker(args, file, &url, node_id, env_password, host)?;
    let mut cfg = BridgeConfig {
        broker,
        ..BridgeConfig::default()
    };
    topics_and_interval(&mut cfg, args, file)?;
    cfg.state_dir = match args.state_dir.as_deref().or(file.state_dir.as_deref()) {
        Some("none") => None,
        Some(d) => Some(PathBuf::from(d)),
        None => Some(
            host.default_id_file()
                .parent()
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(format!("bridge-{node_id}")),
        ),
    };
    if let Some(c) = file.outbox_capacity {
        if c == 0 {
            bail!("[mqtt] outbox_capacity must be at least 1");
        }
        cfg.outbox_capacity = c;
    }
    cfg.outbox_fsync = file.outbox_fsync.unwrap_or(cfg.outbox_fsync);
    cfg.metrics_addr = match metrics {
        Some(a) => Some(a.parse::<SocketAddr>().with_context(|| {
            format!("--metrics-listen '{a}' is not an address like 127.0.0.1:9464")
        })?),
        None => None,
    };
    cfg.streams = file.streams.resolve();
    cfg.alerts = file.alerts.resolve()?;
    Ok(Some(cfg))
}

/// The broker: URL, credentials, client id, packet limit, TLS.
fn broker(
    args: &MqttFlags,
    file: &MqttSection,
    url: &str,
    node_id: u32,
    env_password: Option<String>,
    host: &dyn Host,
) -> anyhow::Result<BrokerConfig> {
    let mut broker = BrokerConfig::from_url(url)
        .map_err(anyhow::Error::msg)
        .context("--mqtt")?;
    if let Some(u) = args.user.clone().or_else(|| file.username.clone()) {
        broker.username = Some(u);
    }
    if let Some(p) = args
        .password
        .clone()
        .or(env_password)
        .or_else(|| file.password.clone())
    {
        broker.password = Some(p);
    }
    if broker.password.is_some() && broker.username.is_none() {
        bail!("an MQTT password needs a user name (--mqtt-user or [mqtt] username)");
    }
    broker.client_id = args
        .client_id
        .clone()
        .or_else(|| file.client_id.clone())
        .unwrap_or_else(|| format!("pmesh-{node_id}"));
    if broker.client_id.is_empty() {
        bail!("the MQTT client id must not be empty");
    }
    if let Some(m) = file.max_packet_size {
        if m < 1024 {
            bail!("[mqtt] max_packet_size must be at least 1024 bytes");
        }
        broker.max_packet_size = m;
    }
    let ca = args.ca.clone().or_else(|| file.ca.clone());
    let cert = args.cert.clone().or_else(|| file.cert.clone());
    let key = args.key.clone().or_else(|| file.key.clone());
    match &mut broker.tls {
        Some(tls) => {
            *tls = TlsOptions {
                ca_file: ca,
                client_cert: cert,
                client_key: key,
            };
            host.check_tls(tls)
                .map_err(anyhow::Error::msg)
                .context("MQTT TLS")?;
        }
        None if ca.is_some() || cert.is_some() || key.is_some() => {
            bail!("TLS options (--mqtt-ca/--mqtt-cert/--mqtt-key) need an mqtts:// broker URL")
        }
        None => {}
    }
    Ok(broker)
}

/// Topic prefixes and the publish interval.
fn topics_and_interval(
    cfg: &mut BridgeConfig,
    args: &MqttFlags,
    file: &MqttSection,
) -> anyhow::Result<()> {
    if let Some(p) = args.prefix.clone().or_else(|| file.prefix.clone()) {
        check_prefix(&p, "--mqtt-prefix")?;
        cfg.prefix = p;
    }
    if let Some(p) = &file.legacy_prefix {
        check_prefix(p, "[mqtt] legacy_prefix")?;
        cfg.legacy_prefix = p.clone();
    }
    if let Some(p) = &file.ha_prefix {
        check_prefix(p, "[mqtt] ha_prefix")?;
        cfg.ha_prefix = p.clone();
    }
    if let Some(i) = args.interval.as_deref().or(file.interval.as_deref()) {
        let i = parse_setting(i).context("--mqtt-interval / [mqtt] interval")?;
        if i < Duration::from_secs(1) {
            bail!("the MQTT publish interval must be at least 1s");
        }
        cfg.publish_interval = i;
    }
    Ok(())
}

impl StreamsSection {
    fn resolve(&self) -> Streams {
        let d = Streams::default();
        Streams {
            nodes: self.nodes.unwrap_or(d.nodes),
            topology: self.topology.unwrap_or(d.topology),
            metrics: self.metrics.unwrap_or(d.metrics),
            alerts: self.alerts.unwrap_or(d.alerts),
            node_state: self.node_state.unwrap_or(d.node_state),
            mesh_messages: self.mesh_messages.unwrap_or(d.mesh_messages),
            legacy_gateway: self.legacy_gateway.unwrap_or(d.legacy_gateway),
            commands: self.commands.unwrap_or(d.commands),
            events: self.events.unwrap_or(d.events),
            ha_discovery: self.ha_discovery.unwrap_or(d.ha_discovery),
        }
    }
}

impl AlertsSection {
    fn resolve(&self) -> anyhow::Result<AlertThresholds> {
        let d = AlertThresholds::default();
        let a = AlertThresholds {
            partition_share: self.partition_share.unwrap_or(d.partition_share),
            low_memory_kb: self.low_memory_kb.unwrap_or(d.low_memory_kb),
            high_loss_percent: self.high_loss_percent.unwrap_or(d.high_loss_percent),
            node_offline: self.node_offline.unwrap_or(d.node_offline),
        };
        if !(a.partition_share > 0.0 && a.partition_share <= 1.0) {
            bail!("[mqtt.alerts] partition_share must be in (0, 1]");
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemHost;

    fn section(text: &str) -> MqttSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_without_url() {
        let r = resolve_mqtt(
            &MqttFlags::default(),
            &MqttSection::default(),
            7,
            None,
            &SystemHost,
        )
        .unwrap();
        assert!(r.is_none());
        let a = MqttFlags {
            metrics_listen: Some("127.0.0.1:9464".into()),
            ..MqttFlags::default()
        };
        assert!(resolve_mqtt(&a, &MqttSection::default(), 7, None, &SystemHost).is_err());
    }

    #[test]
    fn defaults_file_then_flags() {
        let a = MqttFlags {
            url: Some("mqtt://broker:1884".into()),
            ..MqttFlags::default()
        };
        let c = resolve_mqtt(&a, &MqttSection::default(), 7, None, &SystemHost)
            .unwrap()
            .unwrap();
        assert_eq!((c.broker.host.as_str(), c.broker.port), ("broker", 1884));
        assert_eq!(c.prefix, "mesh");
        assert_eq!(c.publish_interval, Duration::from_secs(30));
        assert_eq!(c.broker.client_id, "pmesh-7");
        assert_eq!(c.streams, Streams::default());
        assert!(
            c.state_dir
                .as_ref()
                .is_some_and(|d| d.ends_with("bridge-7"))
        );

        let file = section(
            r#"
            url = "mqtt://u@file:1"
            password = "from-file"
            prefix = "site1"
            interval = "10s"
            state_dir = "none"
            metrics_listen = "127.0.0.1:9999"
            [streams]
            ha_discovery = false
            legacy_gateway = false
            [alerts]
            partition_share = 0.5
            "#,
        );
        let c = resolve_mqtt(&MqttFlags::default(), &file, 7, None, &SystemHost)
            .unwrap()
            .unwrap();
        assert_eq!(c.broker.host, "file");
        assert_eq!(c.broker.username.as_deref(), Some("u"));
        assert_eq!(c.broker.password.as_deref(), Some("from-file"));
        assert_eq!(c.prefix, "site1");
        assert_eq!(c.publish_interval, Duration::from_secs(10));
        assert!(c.state_dir.is_none());
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert!(!c.streams.ha_discovery && !c.streams.legacy_gateway && c.streams.nodes);
        assert_eq!(c.alerts.partition_share, 0.5);

        // Flags win; the environment's password beats the file's.
        let a = MqttFlags {
            url: Some("mqtt://flag".into()),
            user: Some("v".into()),
            prefix: Some("p2".into()),
            interval: Some("2s".into()),
            ..MqttFlags::default()
        };
        let c = resolve_mqtt(&a, &file, 7, Some("from-env".into()), &SystemHost)
            .unwrap()
            .unwrap();
        assert_eq!(c.broker.host, "flag");
        assert_eq!(c.broker.username.as_deref(), Some("v"));
        assert_eq!(c.broker.password.as_deref(), Some("from-env"));
        assert_eq!(c.prefix, "p2");
        assert_eq!(c.publish_interval, Duration::from_secs(2));
    }

    #[test]
    fn rejects_bad_settings() {
        let url = |u: &str| MqttFlags {
            url: Some(u.into()),
            ..MqttFlags::default()
        };
        let none = MqttSection::default();
        assert!(resolve_mqtt(&url("http://x"), &none, 7, None, &SystemHost).is_err());
        let mut a = url("mqtt://x");
        a.ca = Some("/ca.pem".into());
        assert!(
            resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err(),
            "CA without mqtts"
        );
        let mut a = url("mqtts://x");
        a.ca = Some("/nonexistent/ca.pem".into());
        assert!(
            resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err(),
            "unreadable CA"
        );
        assert!(
            resolve_mqtt(&url("mqtts://x"), &none, 7, None, &SystemHost).is_err(),
            "TLS without CA"
        );
        let mut a = url("mqtt://x");
        a.prefix = Some("mesh/#".into());
        assert!(resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err());
        let mut a = url("mqtt://x");
        a.interval = Some("100ms".into());
        assert!(resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err());
        let mut a = url("mqtt://x");
        a.password = Some("p".into());
        assert!(
            resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err(),
            "password, no user"
        );
        let mut a = url("mqtt://x");
        a.metrics_listen = Some("localhost".into());
        assert!(resolve_mqtt(&a, &none, 7, None, &SystemHost).is_err());
        assert!(toml::from_str::<MqttSection>("urll = \"x\"").is_err());
        assert!(toml::from_str::<MqttSection>("[streams]\nnodez = true").is_err());
    }
}
