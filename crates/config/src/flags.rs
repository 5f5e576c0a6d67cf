//! The command line's values, as the CLI hands them over (clap stays in the CLI).

use std::path::PathBuf;

/// `pmesh node`'s flags that override the file (each `None`/`false`/empty when not given).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--id`
    pub id: Option<u32>,
    /// `--listen` (`none`: only dial out)
    pub listen: Option<String>,
    /// `--connect` (replaces `[node] connect` when not empty)
    pub connect: Vec<String>,
    /// `--root`
    pub root: bool,
    /// `--time-authority`
    pub time_authority: bool,
    /// `--rate-discipline`
    pub rate_discipline: bool,
    /// `--control` (`none`: no control endpoint)
    pub control: Option<String>,
    /// `--ota-role`
    pub ota_role: Option<String>,
    /// `--ota-stock`
    pub ota_stock: bool,
    /// `--ota-hardware`
    pub ota_hardware: Option<String>,
    /// `--ota-dir`
    pub ota_dir: Option<PathBuf>,
    /// `--ota-exec`
    pub ota_exec: Option<PathBuf>,
    /// `--ota-max-size`
    pub ota_max_size: Option<u64>,
    /// `--firmware-dir`
    pub firmware_dir: Option<PathBuf>,
    /// `--trusted-key` (come before `[ota] trusted_keys`)
    pub trusted_key: Vec<String>,
    /// `--allow-unsigned`
    pub allow_unsigned: bool,
    /// `--status-every`
    pub status_every: Option<String>,
    /// The `--mqtt*` and `--metrics-listen` flags.
    pub mqtt: MqttFlags,
}

/// `pmesh node`'s MQTT flags (each overrides the same key of `[mqtt]`).
#[derive(Clone, Debug, Default)]
pub struct MqttFlags {
    /// `--mqtt`: the broker URL.
    pub url: Option<String>,
    /// `--mqtt-user`
    pub user: Option<String>,
    /// `--mqtt-password`
    pub password: Option<String>,
    /// `--mqtt-ca`
    pub ca: Option<PathBuf>,
    /// `--mqtt-cert`
    pub cert: Option<PathBuf>,
    /// `--mqtt-key`
    pub key: Option<PathBuf>,
    /// `--mqtt-client-id`
    pub client_id: Option<String>,
    /// `--mqtt-prefix`
    pub prefix: Option<String>,
    /// `--mqtt-interval`
    pub interval: Option<String>,
    /// `--mqtt-state-dir` (`none`: memory only)
    pub state_dir: Option<String>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
}
