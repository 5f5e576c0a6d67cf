//! Runnable examples of pmesh's library API (see the `[[example]]` targets in Cargo.toml):
//!
//! - `gateway`: a root node that joins an ESP painlessMesh and prints what it hears,
//!   decoding Alteriom sensor and status packages;
//! - `sensor_node`: a node that broadcasts SensorPackage (200) and EnhancedStatusPackage (604)
//!   frames the way an Alteriom ESP node does;
//! - `ota_sender`: a node that offers a firmware file to the mesh (pmesh or classic OTA) and
//!   prints each node's progress.
//!
//! This library only holds the small helpers both share.

#![warn(missing_docs)]

/// Reads `--name value` pairs (repeatable) from the command line; the examples take a handful
/// of options and need no argument parser.
pub fn options() -> Vec<(String, String)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.chunks(2)
        .filter_map(|c| match c {
            [k, v] => k.strip_prefix("--").map(|k| (k.to_owned(), v.clone())),
            _ => None,
        })
        .collect()
}

/// The value of `--name`, if given (the last one wins).
pub fn option(opts: &[(String, String)], name: &str) -> Option<String> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Every value of a repeatable `--name`.
pub fn options_named(opts: &[(String, String)], name: &str) -> Vec<String> {
    opts.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Logs to stderr at `info` (or `RUST_LOG`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
