//! `[ota]`: how the node takes part in OTA, resolved into [`OtaSettings`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pmesh_ota::{ClassicReceiverKind, OtaConfig};
use serde::{Deserialize, Serialize};

use crate::{Flags, Host, parse_setting, read_trusted};

/// `[ota]`: receiving firmware, and OTA protocol timers (defaults: the reference's and
/// pmesh-ota's; shorten them only to test).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
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
    /// Resolves `--ota-*`, `--trusted-key`, `--allow-unsigned` and `--firmware-dir` over
    /// `[ota]` over defaults.
    pub fn resolve(args: &Flags, s: &OtaSection, host: &dyn Host) -> anyhow::Result<OtaSettings> {
        let mut config = s.plugin_config(args)?;
        s.timers(&mut config)?;
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
                read_trusted(host, &key_args).context("--trusted-key / [ota] trusted_keys")?
            },
            allow_unsigned: args.allow_unsigned || s.allow_unsigned.unwrap_or(false),
            // Set from the system clock when the node starts (`pmesh node`'s `run`).
            wall_clock: None,
        };
        let dir = args
            .ota_dir
            .clone()
            .or_else(|| s.dir.clone())
            .unwrap_or_else(|| {
                host.default_id_file()
                    .parent()
                    .map_or_else(|| PathBuf::from("ota"), |p| p.join("ota"))
            });
        let max_image_bytes = args
            .ota_max_size
            .or(s.max_image_bytes)
            .unwrap_or(pmesh_net::firmware::DEFAULT_CAPACITY);
        if max_image_bytes == 0 {
            bail!("--ota-max-size must be at least 1 byte");
        }
        let firmware_dir =
            match args.firmware_dir.as_ref().or(s.firmware_dir.as_ref()) {
                Some(d) => Some(host.open_firmware_dir(d).with_context(|| {
                    format!("--firmware-dir / [ota] firmware_dir {}", d.display())
                })?),
                None => None,
            };
        Ok(OtaSettings {
            config,
            receive: config_receives(args, s),
            dir,
            exec: args.ota_exec.clone().or_else(|| s.exec.clone()),
            max_image_bytes,
            firmware_dir,
        })
    }
}

/// A role was given: this node receives images.
fn config_receives(args: &Flags, s: &OtaSection) -> bool {
    args.ota_role.is_some() || s.role.is_some()
}

impl OtaSection {
    /// Role, hardware, stock or pmesh receivers, or none without a role.
    fn plugin_config(&self, args: &Flags) -> anyhow::Result<OtaConfig> {
        let role = args.ota_role.clone().or_else(|| self.role.clone());
        let hardware = args
            .ota_hardware
            .clone()
            .or_else(|| self.hardware.clone())
            .unwrap_or_else(|| format!("linux-{}", std::env::consts::ARCH));
        let receive = role.is_some();
        if role.as_deref() == Some("") || hardware.is_empty() {
            bail!("--ota-role and --ota-hardware must not be empty");
        }
        let stock = args.ota_stock || self.stock.unwrap_or(false);
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
        Ok(config)
    }

    /// The OTA protocol timers.
    fn timers(&self, config: &mut OtaConfig) -> anyhow::Result<()> {
        let set = |slot: &mut Duration, v: &Option<String>, key: &str| -> anyhow::Result<()> {
            if let Some(v) = v {
                *slot = parse_setting(v).with_context(|| format!("[ota] {key}"))?;
            }
            Ok(())
        };
        set(
            &mut config.classic.request_interval,
            &self.classic_request_interval,
            "classic_request_interval",
        )?;
        set(
            &mut config.classic.broadcast_idle,
            &self.classic_broadcast_idle,
            "classic_broadcast_idle",
        )?;
        set(
            &mut config.classic.broadcast_jitter,
            &self.classic_broadcast_jitter,
            "classic_broadcast_jitter",
        )?;
        set(
            &mut config.announce.interval,
            &self.announce_interval,
            "announce_interval",
        )?;
        set(
            &mut config.pmesh.rewant_after,
            &self.pmesh_rewant_after,
            "pmesh_rewant_after",
        )
    }
}
