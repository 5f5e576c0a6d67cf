//! # pmesh-config
//!
//! `pmesh.toml`, the configuration file of `pmesh node` (docs/user-guide.md): its sections
//! ([`FileConfig`]), reading text into them ([`FileConfig::from_toml`]) and printing them back
//! ([`FileConfig::to_toml`]), the checks, and the resolve of flags over file over defaults
//! into the typed settings the node runs with ([`Settings::resolve`]).
//!
//! **Why a crate of its own, not a module of pmesh-net.** The `[mqtt]` section resolves into
//! [`pmesh_bridge::BridgeConfig`] (and `[ota] firmware_dir` into the bridge's
//! [`pmesh_bridge::FirmwareDir`]), while pmesh-net, the node runtime, is kept free of MQTT,
//! TLS and HTTP (see the `pmesh node --mqtt` glue in the CLI). The CLI's binary crate is out of
//! reach of the fuzz crate; this library is what both use: `pmesh node` with the real machine,
//! the `node_config` fuzz target with a stand-in.
//!
//! What is not here: the command-line flags themselves (clap stays in the CLI, which hands
//! their values over as [`Flags`]), reading the file from disk, and every other touch of the
//! machine, which goes through [`Host`] ([`SystemHost`] is the real one): deriving the node id,
//! reading trusted-key files, opening the firmware directory, reading TLS files,
//! `$PMESH_MQTT_PASSWORD`. The order of the checks, and so which error a bad file gets
//! first, is the one `pmesh node` has always had.

#![warn(missing_docs)]

mod duration;
mod file;
mod flags;
mod host;
mod mqtt;
mod ota;
mod settings;

pub use duration::{MAX_DURATION, parse_duration, parse_setting};
pub use file::{
    FileConfig, LimitsSection, LogSection, NodeSection, RetrySection, StatusSection, TimersSection,
};
pub use flags::{Flags, MqttFlags};
pub use host::{Host, SystemHost, read_trusted};
pub use mqtt::{AlertsSection, MqttSection, StreamsSection, resolve_mqtt};
pub use ota::{OtaSection, OtaSettings};
pub use settings::Settings;
