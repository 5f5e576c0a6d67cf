//! Bridge configuration: broker connection, topic prefixes, publish interval, streams, alert
//! thresholds and where durable state lives.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pmesh_fwdir::FirmwareDir;

use crate::http::HttpLimits;

/// Everything the bridge needs to know; [`BridgeConfig::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The MQTT broker and how to reach it.
    pub broker: BrokerConfig,
    /// Base topic (default `mesh`): `mesh/status/...`, `mesh/bridge/...`, `mesh/command/...`.
    pub prefix: String,
    /// The older gateway convention's prefix (default `painlessMesh`): `painlessMesh/to/<id>`.
    pub legacy_prefix: String,
    /// Home Assistant discovery prefix (default `homeassistant`).
    pub ha_prefix: String,
    /// How often the status snapshot (nodes, topology, metrics, alerts, health) is published.
    pub publish_interval: Duration,
    /// Which streams are on.
    pub streams: Streams,
    /// Alert thresholds.
    pub alerts: AlertThresholds,
    /// Directory for durable state (outbox of events and alerts, session counter, OTA
    /// campaign marker). `None` keeps the outbox in memory only (lost on restart).
    pub state_dir: Option<PathBuf>,
    /// Most events and alerts held while the broker is unreachable (oldest dropped beyond, counted).
    pub outbox_capacity: usize,
    /// `fsync` the outbox after every append (survives power loss, not only a process crash).
    pub outbox_fsync: bool,
    /// Where to serve Prometheus `/metrics` (None = not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Connection cap and timeouts of the `/metrics` server.
    pub metrics_http: HttpLimits,
    /// Where `ota/start`'s `image_path` names are read from; `None` refuses `image_path`
    /// (images then come inline, `image_base64`).
    pub firmware_dir: Option<FirmwareDir>,
    /// Where timestamps come from.
    pub clock: ClockSource,
    /// Capacity of the gateway → bridge message queue (excess mesh messages are dropped, counted).
    pub input_queue: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            broker: BrokerConfig::default(),
            prefix: "mesh".into(),
            legacy_prefix: "painlessMesh".into(),
            ha_prefix: "homeassistant".into(),
            publish_interval: Duration::from_secs(30),
            streams: Streams::default(),
            alerts: AlertThresholds::default(),
            state_dir: None,
            outbox_capacity: 10_000,
            outbox_fsync: false,
            metrics_addr: None,
            metrics_http: HttpLimits::default(),
            firmware_dir: None,
            clock: ClockSource::System,
            input_queue: 16_384,
        }
    }
}

/// The broker connection.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// Port (1883 plain, 8883 TLS by convention).
    pub port: u16,
    /// MQTT client id (default `pmesh-bridge`).
    pub client_id: String,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password (sent only with a username).
    pub password: Option<String>,
    /// TLS, if the broker speaks it.
    pub tls: Option<TlsOptions>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest MQTT packet the broker accepts (its `max_packet_size` / `message_size_limit`).
    /// No publish exceeds it: larger snapshots are paged. Default 256 KiB.
    pub max_packet_size: usize,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (kept short so state is back within seconds of a broker restart).
    pub reconnect_max: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "pmesh-bridge".into(),
            username: None,
            password: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            max_packet_size: 256 * 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

impl BrokerConfig {
    /// Reads `mqtt://[user[:pass]@]host[:port]` or `mqtts://...` (TLS with the system roots
    /// unless a CA file is given later). The default port is 1883, or 8883 for `mqtts`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("broker URL {url:?} has no scheme (mqtt:// or mqtts://)"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "unsupported broker URL scheme {other:?} (use mqtt or mqtts)"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let mut cfg = BrokerConfig::default();
        if let Some(auth) = auth {
            let (u, p) = match auth.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (auth, None),
            };
            cfg.username = Some(u.to_string());
            cfg.password = p.map(str::to_string);
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unterminated [ipv6] host")?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("broker URL {url:?} has no host"));
        }
        cfg.host = host;
        cfg.port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("bad port {p:?} in broker URL"))?,
            None if tls => 8883,
            None => 1883,
        };
        if tls {
            cfg.tls = Some(TlsOptions::default());
        }
        Ok(cfg)
    }
}

/// TLS settings (rustls). Without `ca_file` the platform's web PKI roots are not loaded: give
/// the CA that signed the broker's certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require client certificates.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// Each stream on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streams {
    /// `<prefix>/status/nodes`.
    pub nodes: bool,
    /// `<prefix>/status/topology`.
    pub topology: bool,
    /// `<prefix>/status/metrics`.
    pub metrics: bool,
    /// `<prefix>/status/alerts` and alert events.
    pub alerts: bool,
    /// Retained `<prefix>/status/node/<id>` and its `/availability`.
    pub node_state: bool,
    /// Every mesh message on `<prefix>/from/<nodeId>`.
    pub mesh_messages: bool,
    /// `painlessMesh/to/#` → mesh, mesh → `painlessMesh/from/<id>`.
    pub legacy_gateway: bool,
    /// `<prefix>/command/<verb>` → `<prefix>/response/<verb>`.
    pub commands: bool,
    /// `<prefix>/bridge/event`.
    pub events: bool,
    /// Home Assistant device discovery.
    pub ha_discovery: bool,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            nodes: true,
            topology: true,
            metrics: true,
            alerts: true,
            node_state: true,
            mesh_messages: true,
            legacy_gateway: true,
            commands: true,
            events: true,
            ha_discovery: true,
        }
    }
}

/// When alerts are raised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertThresholds {
    /// PARTITION when the node count falls by at least this share of the count before the drop
    /// (0.25 = a quarter of the mesh vanished at once).
    pub partition_share: f64,
    /// LOW_MEMORY when a node reports less free heap than this, in KiB.
    pub low_memory_kb: u32,
    /// HIGH_LOSS when a node reports at least this packet loss, in percent.
    pub high_loss_percent: u32,
    /// Raise NODE_OFFLINE when a known node leaves the mesh.
    pub node_offline: bool,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            partition_share: 0.25,
            low_memory_kb: 10,
            high_loss_percent: 20,
            node_offline: true,
        }
    }
}

/// Where wall-clock timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// The system clock, trusted once it reads later than 2024-01-01 (a board without RTC or
    /// NTP boots in 1970); before that, payloads carry `"timestamp":null,"clockSet":false`.
    System,
    /// Never trust the clock (for tests and for gateways known to lack time).
    Unset,
}

/// 2024-01-01T00:00:00Z in ms: a system clock earlier than this has not been set.
pub const CLOCK_SET_AFTER_MS: u64 = 1_704_067_200_000;

impl ClockSource {
    /// Epoch milliseconds, or None when the clock is not set.
    pub fn now_ms(self) -> Option<u64> {
        match self {
            ClockSource::Unset => None,
            ClockSource::System => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64;
                (ms >= CLOCK_SET_AFTER_MS).then_some(ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let c = BrokerConfig::from_url("mqtt://u:p@broker.local:1884").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker.local", 1884));
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert!(c.tls.is_none());
        let c = BrokerConfig::from_url("mqtts://h").unwrap();
        assert_eq!(c.port, 8883);
        assert!(c.tls.is_some());
        let c = BrokerConfig::from_url("mqtt://[::1]:1999").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1999));
        assert!(BrokerConfig::from_url("http://x").is_err());
        assert!(BrokerConfig::from_url("mqtt://h:notaport").is_err());
        assert!(BrokerConfig::from_url("h:1883").is_err());
    }

    #[test]
    fn unset_clock_gives_no_timestamp() {
        assert_eq!(ClockSource::Unset.now_ms(), None);
        assert!(
            ClockSource::System
                .now_ms()
                .is_some_and(|t| t >= CLOCK_SET_AFTER_MS)
        );
    }
}
