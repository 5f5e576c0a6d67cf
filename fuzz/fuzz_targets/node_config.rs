//! The node's configuration file, `pmesh.toml` as `pmesh node --config` reads it
//! (`pmesh_config`: `FileConfig::from_toml`, then `Settings::resolve` of the file over the
//! defaults, no flags), on a stand-in machine that touches nothing (no id file, no key files,
//! no TLS files; any firmware directory opens as the temporary directory).
//!
//! Input: the file's text.
//!
//! Invariants:
//! - a file is read or refused with a message, never a panic; so is its resolve;
//! - every setting that resolves is within what the node enforces: a node id, a frame cap of
//!   at least 1 KiB, a send queue limit above its high-water mark plus a frame, a listener or
//!   an uplink (each with a port), every duration at most `MAX_DURATION` (a year), status
//!   reports at most once a second, images of at least a byte, a role and hardware that are
//!   not empty, and for the MQTT bridge: a client id, topic prefixes without wildcards, a
//!   publish interval of at least 1 s, a packet limit of at least 1 KiB, an outbox of at least
//!   one message, a partition share in (0, 1], no password without a user;
//! - the reconnect schedule's delays stay within its bounds for any attempt;
//! - what reads and resolves prints back (`FileConfig::to_toml`) to text that reads again to
//!   the same configuration and resolves to the same settings, and printing that gives the
//!   same text.

#![no_main]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pmesh_bridge::{BridgeConfig, FirmwareDir, TlsOptions};
use pmesh_config::{FileConfig, Flags, Host, MAX_DURATION, Settings};
use pmesh_node::StatusTarget;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match FileConfig::from_toml(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                !e.to_string().trim().is_empty(),
                "refused without a message"
            );
            return;
        }
    };
    let settings = match Settings::resolve(&Flags::default(), file.clone(), &FuzzHost) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                !format!("{e:#}").trim().is_empty(),
                "refused without a message"
            );
            return;
        }
    };
    check_bounds(&settings);
    let printed = file
        .to_toml()
        .unwrap_or_else(|e| panic!("a configuration that resolves does not print ({e}): {file:?}"));
    let again = FileConfig::from_toml(&printed)
        .unwrap_or_else(|e| panic!("printed configuration does not read back ({e}):\n{printed}"));
    assert_eq!(
        format!("{again:?}"),
        format!("{file:?}"),
        "reads back to another configuration:\n{printed}"
    );
    let resolved = Settings::resolve(&Flags::default(), again.clone(), &FuzzHost)
        .unwrap_or_else(|e| panic!("printed configuration does not resolve ({e:#}):\n{printed}"));
    assert_eq!(
        format!("{resolved:?}"),
        format!("{settings:?}"),
        "resolves to other settings"
    );
    assert_eq!(
        again.to_toml().unwrap(),
        printed,
        "printing is not a fixed point"
    );
});

/// The machine, for the fuzzer: nothing read or written.
struct FuzzHost;

impl Host for FuzzHost {
    fn default_id_file(&self) -> PathBuf {
        PathBuf::from("/nonexistent/pmesh/node-id")
    }

    fn derive_id(&self, _id_file: &Path) -> io::Result<(u32, String)> {
        Ok((0x5eed, "the fuzz host".into()))
    }

    fn read_to_string(&self, _path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no files on the fuzz host",
        ))
    }

    fn open_firmware_dir(&self, _dir: &Path) -> io::Result<FirmwareDir> {
        static DIR: OnceLock<FirmwareDir> = OnceLock::new();
        Ok(DIR
            .get_or_init(|| FirmwareDir::open(std::env::temp_dir()).expect("the temp dir opens"))
            .clone())
    }

    fn check_tls(&self, tls: &TlsOptions) -> Result<(), String> {
        match tls.ca_file {
            Some(_) => Ok(()),
            None => Err("TLS needs a CA file (--mqtt-ca) to verify the broker".into()),
        }
    }

    fn mqtt_password(&self) -> Option<String> {
        None
    }
}

/// Every resolved setting is within what the node enforces.
fn check_bounds(s: &Settings) {
    let n = &s.node;
    assert_ne!(n.node_id, 0, "node id 0 resolved");
    assert!(n.max_frame >= 1024, "max_frame {}", n.max_frame);
    let net = &s.net;
    assert!(
        net.send_queue_limit >= net.send_queue_high_water + n.max_frame,
        "send queue limit below high water + frame"
    );
    assert!(
        net.listen.is_some() || !net.connect.is_empty(),
        "no listener, no uplink"
    );
    assert!(
        net.connect.iter().all(|c| c.contains(':')),
        "uplink without a port"
    );
    let o = &s.ota.config;
    let mut durations = vec![
        n.node_sync_interval,
        n.node_timeout,
        n.ap_first_sync_delay,
        n.time_sync_interval,
        n.time_sync_unsynced_interval,
        n.time_sync_retry,
        net.retry.max,
        net.connect_timeout,
        net.write_stall_timeout,
        net.reader_pause_limit,
        o.classic.request_interval,
        o.classic.broadcast_idle,
        o.classic.broadcast_jitter,
        o.announce.interval,
        o.pmesh.rewant_after,
    ];
    durations.extend(&net.retry.steps);
    check_retry(&net.retry.steps, net.retry.max, |a| net.retry.delay(a));
    if let Some(st) = &s.status {
        assert!(
            st.interval >= Duration::from_secs(1),
            "status {:?}",
            st.interval
        );
        assert!(
            st.first_after <= st.interval,
            "first report after the interval"
        );
        assert!(
            !matches!(st.target, StatusTarget::Node(0)),
            "status to node 0"
        );
        durations.push(st.interval);
    }
    assert!(s.ota.max_image_bytes >= 1, "images of 0 bytes");
    assert!(!o.hardware.is_empty(), "empty hardware");
    assert_eq!(
        s.ota.receive,
        !o.role.is_empty(),
        "receiving without a role"
    );
    if let Some(m) = &s.mqtt {
        check_bridge(m);
        durations.push(m.publish_interval);
    }
    for d in durations {
        assert!(d <= MAX_DURATION, "a duration of {d:?} resolved");
    }
}

/// The reconnect schedule's delays stay within its steps and its cap, for any attempt.
fn check_retry(steps: &[Duration], max: Duration, delay: impl Fn(usize) -> Duration) {
    let longest_step = steps
        .iter()
        .max()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    for attempt in [0, 1, 5, 16, 17, 63, 1 << 20, usize::MAX - 1] {
        let d = delay(attempt);
        assert!(d <= max.max(longest_step), "retry {attempt}: {d:?}");
    }
}

/// The bridge's resolved settings.
fn check_bridge(m: &BridgeConfig) {
    assert!(!m.broker.client_id.is_empty(), "empty client id");
    assert!(
        m.broker.max_packet_size >= 1024,
        "packet limit {}",
        m.broker.max_packet_size
    );
    assert!(
        m.broker.password.is_none() || m.broker.username.is_some(),
        "password, no user"
    );
    if let Some(tls) = &m.broker.tls {
        assert!(tls.ca_file.is_some(), "TLS without a CA");
    }
    for p in [&m.prefix, &m.legacy_prefix, &m.ha_prefix] {
        assert!(
            !p.is_empty()
                && !p.starts_with('/')
                && !p.ends_with('/')
                && !p.contains(['+', '#', '\0']),
            "topic prefix {p:?}"
        );
    }
    assert!(
        m.publish_interval >= Duration::from_secs(1),
        "publish {:?}",
        m.publish_interval
    );
    assert!(m.outbox_capacity >= 1, "outbox of 0");
    let share = m.alerts.partition_share;
    assert!(share > 0.0 && share <= 1.0, "partition share {share}");
}
