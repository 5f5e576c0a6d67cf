//! What resolving a configuration needs from the machine, behind one trait: the node runs
//! with [`SystemHost`]; the fuzz target and tests use stand-ins that touch nothing.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use pmesh_bridge::{FirmwareDir, TlsOptions};
use pmesh_ota::signed::TrustedKey;

/// The machine, as [`crate::Settings::resolve`] sees it.
pub trait Host {
    /// The default node-id file; its directory is the default state directory (OTA images,
    /// the bridge's outbox).
    fn default_id_file(&self) -> PathBuf;
    /// The node id when neither `--id` nor `[node] id` gives one, and how it was chosen.
    fn derive_id(&self, id_file: &Path) -> io::Result<(u32, String)>;
    /// The text of a file of trusted keys.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Opens the firmware directory (it must exist).
    fn open_firmware_dir(&self, dir: &Path) -> io::Result<FirmwareDir>;
    /// Reads the TLS files of an `mqtts://` broker: a wrong path is an error at start, not a
    /// reconnect loop.
    fn check_tls(&self, tls: &TlsOptions) -> Result<(), String>;
    /// `$PMESH_MQTT_PASSWORD`, if set and not empty.
    fn mqtt_password(&self) -> Option<String>;
}

/// This machine: files, network interfaces, environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn default_id_file(&self) -> PathBuf {
        pmesh_net::node_id::default_id_file()
    }

    fn derive_id(&self, id_file: &Path) -> io::Result<(u32, String)> {
        pmesh_net::node_id::derive(id_file).map(|(id, source)| (id, source.to_string()))
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn open_firmware_dir(&self, dir: &Path) -> io::Result<FirmwareDir> {
        FirmwareDir::open(dir)
    }

    fn check_tls(&self, tls: &TlsOptions) -> Result<(), String> {
        pmesh_bridge::tls::client_config(tls).map(drop)
    }

    fn mqtt_password(&self) -> Option<String> {
        std::env::var("PMESH_MQTT_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
    }
}

/// Trusted keys from `--trusted-key` values (or `[ota] trusted_keys`): files of key lines
/// (`#` comments and blank lines skipped), or key lines given directly.
pub fn read_trusted(host: &dyn Host, values: &[String]) -> anyhow::Result<Vec<TrustedKey>> {
    let mut keys = Vec::new();
    for v in values {
        if v.trim_start().starts_with(pmesh_ota::signed::PUBLIC_PREFIX) {
            keys.push(TrustedKey::from_text(v).map_err(|e| anyhow::anyhow!("{e}"))?);
            continue;
        }
        let text = host
            .read_to_string(Path::new(v))
            .with_context(|| format!("trusted key file {v}"))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            keys.push(TrustedKey::from_text(line).map_err(|e| anyhow::anyhow!("{v}: {e}"))?);
        }
    }
    if keys.is_empty() {
        bail!("no trusted key in {values:?}");
    }
    Ok(keys)
}
