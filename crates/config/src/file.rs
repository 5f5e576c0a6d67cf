//! The sections of pmesh.toml, as read: every value still as written (durations as text).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mqtt::MqttSection;
use crate::ota::OtaSection;

/// The configuration file. Unknown keys inside a section are errors (typos); unknown sections
/// are kept in `other` for the parts of pmesh that read them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
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
    pub mqtt: MqttSection,
    /// Sections other parts of pmesh read; kept for them.
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

impl FileConfig {
    /// Reads a configuration from TOML text: a syntax error, a key that no section has (a
    /// typo) or a value of the wrong type is an error naming it. Values are checked when
    /// resolved ([`crate::Settings::resolve`]).
    pub fn from_toml(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML text that [`FileConfig::from_toml`] reads back to the same
    /// configuration (keys that were absent stay absent).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// `[node]`: identity and links.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub(crate) id: Option<u32>,
    pub(crate) id_file: Option<PathBuf>,
    pub(crate) root: Option<bool>,
    pub(crate) time_authority: Option<bool>,
    pub(crate) rate_discipline: Option<bool>,
    pub(crate) listen: Option<String>,
    #[serde(default)]
    pub(crate) connect: Vec<String>,
    pub(crate) control: Option<String>,
}

/// `[log]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub(crate) format: Option<String>,
    pub(crate) filter: Option<String>,
}

impl LogSection {
    /// `format`: `text` or `json` (checked when logging starts).
    pub fn format(&self) -> Option<&str> {
        self.format.as_deref()
    }

    /// `filter`, in tracing's env-filter syntax (checked when logging starts).
    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }
}

/// `[timers]`: the protocol's timers. The defaults are the reference's; shorten them only to
/// test, since stock nodes use the reference values.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimersSection {
    pub(crate) node_sync_interval: Option<String>,
    pub(crate) node_timeout: Option<String>,
    pub(crate) ap_first_sync_delay: Option<String>,
    pub(crate) time_sync_interval: Option<String>,
    pub(crate) time_sync_unsynced_interval: Option<String>,
    pub(crate) time_sync_retry: Option<String>,
}

/// `[limits]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub(crate) max_frame: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) send_queue_high_water: Option<usize>,
    pub(crate) send_queue_limit: Option<usize>,
    pub(crate) write_stall_timeout: Option<String>,
    pub(crate) reader_pause_limit: Option<String>,
}

/// `[retry]`: how uplinks are dialled again.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub(crate) steps: Option<Vec<String>>,
    pub(crate) max: Option<String>,
    pub(crate) connect_timeout: Option<String>,
}

/// `[status]`: periodic status reports (Alteriom EnhancedStatusPackage).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Time between reports; absent: no reports.
    pub(crate) interval: Option<String>,
    /// Send to this node only (SINGLE) instead of broadcasting.
    pub(crate) to: Option<u32>,
    /// `fw` field [default: pmesh-<version>].
    pub(crate) firmware: Option<String>,
    /// 604 (default) or 203 (Alteriom Phase 1/2 meshes).
    pub(crate) package_type: Option<i32>,
}
