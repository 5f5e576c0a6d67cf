//! Hostile clients against a real `pmesh node --mqtt` gateway and a real Mosquitto (issue 11):
//! `ota/start` naming files it must not read (items 2 and 3), and idle sockets against
//! `/metrics` under a low descriptor limit (item 5). The MQTT-only attacks (oversize and
//! retained requests) are in pmesh-bridge's tests/hostile.rs.

mod mqtt_support;
mod net_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt_support::*;
use net_support::*;
use serde_json::json;

/// A gateway's id and ports.
fn gateway_spec(id: u32, config: Option<std::path::PathBuf>) -> NodeSpec {
    NodeSpec {
        id,
        port: free_port(),
        connect: vec![],
        root: true,
        config,
    }
}

/// Asks `ota/start` for `name`; returns the response (transaction = the name).
fn ota_start(sub: &Sub, prefix: &str, name: &str) -> serde_json::Value {
    sub.publish(
        &format!("{prefix}/bridge/request/ota/start"),
        &json!({"image_path": name, "role": "sensor", "transaction": name}).to_string(),
    );
    sub.wait(&format!("{prefix}/bridge/response/ota/start"), 10, |m| {
        m.json()["transaction"] == name
    })
    .json()
}

/// `/dev/zero`, `../../etc/shadow`, links out of the firmware directory, a directory, a FIFO,
/// a 1 GiB file and a missing one are each refused with their reason; the gateway's memory
/// does not grow; a file inside is accepted; without a firmware directory `image_path` is
/// refused altogether.
#[test]
fn image_paths_stay_inside_the_firmware_directory() {
    let dir = TempDir::new("gw-image-paths");
    let broker = Broker::start(&dir);
    let sub = Sub::connect(broker.port, "#");
    let fw = dir.0.join("firmware");
    std::fs::create_dir_all(fw.join("sub")).unwrap();
    std::fs::write(dir.0.join("secret.bin"), b"not firmware").unwrap();
    std::fs::write(fw.join("fw.bin"), vec![7u8; 8192]).unwrap();
    std::os::unix::fs::symlink("../secret.bin", fw.join("escape")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", fw.join("zero")).unwrap();
    std::os::unix::fs::symlink("fw.bin", fw.join("current")).unwrap();
    std::fs::File::create(fw.join("huge.bin"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(fw.join("pipe"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = start_gateway(
        &dir,
        gateway_spec(801, None),
        &[
            "--mqtt".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--mqtt-state-dir".into(),
            "none".into(),
            "--firmware-dir".into(),
            fw.display().to_string(),
            "--metrics-listen".into(),
            metrics.clone(),
        ],
    );
    sub.wait("mesh/bridge/state", 15, |m| m.json()["state"] == "online");
    let rss_before = gw.rss_kb();
    let refused = [
        ("/dev/zero", "absolute path"),
        ("../../etc/shadow", "'..' is not allowed"),
        ("zero", "outside the firmware directory"),
        ("escape", "outside the firmware directory"),
        ("sub", "a directory: only regular files"),
        ("pipe", "a FIFO: only regular files"),
        ("huge.bin", "1073741824 bytes, over the 16777216-byte limit"),
        ("missing.bin", "no such file"),
    ];
    for (name, why) in refused {
        let r = ota_start(&sub, "mesh", name);
        assert_eq!(r["status"], "error", "{name}: {r}");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains(why), "{name}: {err}");
        assert!(!err.contains("not firmware"), "nothing of the file leaks");
    }
    let rss_after = gw.rss_kb();
    eprintln!("gateway RSS {rss_before} kB before the refused requests, {rss_after} kB after");
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew from {rss_before} to {rss_after} kB"
    );
    assert_eq!(
        metric(
            &scrape(&metrics),
            r#"pmesh_bridge_requests_rejected_total{reason="image_path"}"#
        ),
        Some(refused.len() as f64)
    );
    // Nothing was started, and a file inside (through a link inside) is accepted.
    assert!(
        sub.on("mesh/bridge/event")
            .iter()
            .all(|m| m.json()["type"] != "ota_requested")
    );
    let r = ota_start(&sub, "mesh", "current");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["data"]["size"], 8192);
    sub.publish("mesh/bridge/request/ota/abort", r#"{"transaction":"a"}"#);
    sub.wait("mesh/bridge/response/ota/abort", 10, |m| {
        m.json()["transaction"] == "a"
    });

    // No firmware directory: image_path is refused, whatever it names.
    let _bare = start_gateway(
        &dir,
        gateway_spec(802, None),
        &[
            "--mqtt".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--mqtt-state-dir".into(),
            "none".into(),
            "--mqtt-prefix".into(),
            "bare".into(),
        ],
    );
    sub.wait("bare/bridge/state", 15, |m| m.json()["state"] == "online");
    let r = ota_start(&sub, "bare", "fw.bin");
    assert_eq!(r["status"], "error");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("the gateway has no firmware directory"),
        "{r}"
    );
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the attacker saw.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    /// Sockets opened.
    opened: AtomicUsize,
    /// Sockets the server closed after holding them 4 s or more: timed out (it closes the
    /// ones over its cap at once).
    timed_out: AtomicUsize,
}

/// Keeps `n` idle sockets open to `addr` until `a.stop`, re-opening each one the server closes
/// (an attacker holding every socket it can).
fn hold_idle_sockets(addr: String, n: usize, a: Arc<Attack>) {
    let mut socks: Vec<(TcpStream, Instant)> = Vec::new();
    while !a.stop.load(Ordering::Relaxed) {
        // Still open: nothing to read yet. Closed: end of stream or reset.
        socks.retain_mut(|(s, since)| {
            let mut b = [0u8; 1];
            let open =
                matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if !open && since.elapsed() >= Duration::from_secs(4) {
                a.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            open
        });
        while socks.len() < n {
            let Ok(s) = TcpStream::connect(&addr) else {
                break;
            };
            s.set_nonblocking(true).unwrap();
            socks.push((s, Instant::now()));
            a.opened.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Under `ulimit -n 256`, hundreds of idle sockets held against `/metrics` (re-opened as soon
/// as the server closes them) leave the mesh listener and the control endpoint working: a new
/// node joins and `pmesh nodes` answers. `/metrics` serves again once the attack stops.
#[test]
fn idle_metrics_sockets_leave_the_mesh_and_the_control_endpoint_working() {
    const FD_LIMIT: u32 = 256;
    const IDLE: usize = 365;
    let dir = TempDir::new("gw-metrics-fds");
    let broker = Broker::start(&dir);
    let sub = Sub::connect(broker.port, "mesh/bridge/#");
    let fast = dir.file("fast.toml", FAST_TIMERS);
    let metrics = format!("127.0.0.1:{}", free_port());
    let spec = gateway_spec(901, Some(fast.clone()));
    let gw_port = spec.port;
    let gw = start_gateway_with(
        &dir,
        spec,
        &[
            "--mqtt".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--mqtt-state-dir".into(),
            "none".into(),
            "--metrics-listen".into(),
            metrics.clone(),
        ],
        &[],
        Some(FD_LIMIT),
    );
    sub.wait("mesh/bridge/state", 15, |m| m.json()["state"] == "online");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        nofile.split_whitespace().nth(3) == Some("256"),
        "the gateway runs under the low limit: {nofile}"
    );
    let at_rest = open_fds(gw.pid());

    let attack = Arc::new(Attack::default());
    let attacker = {
        let (addr, a) = (metrics.clone(), attack.clone());
        std::thread::spawn(move || hold_idle_sockets(addr, IDLE, a))
    };
    // The attack is on: every socket opened, the server holding its cap of them.
    wait_until(Duration::from_secs(10), "the attack under way", || {
        attack.opened.load(Ordering::Relaxed) >= IDLE && open_fds(gw.pid()) >= at_rest + 16
    });
    let attacked_fds = open_fds(gw.pid());

    // A new node joins through the mesh listener, and the control endpoint answers.
    let joiner = NodeProc::start(
        &dir,
        NodeSpec {
            id: 902,
            port: free_port(),
            connect: vec![gw_port],
            root: false,
            config: Some(fast),
        },
    );
    let control_answers = || {
        let (ok, out, err) = gw.cli(&["nodes"]);
        assert!(ok, "pmesh nodes under attack: {out}{err}");
        out
    };
    wait_until(
        Duration::from_secs(20),
        "node 902 in the gateway's mesh",
        || gw.nodes() == BTreeSet::from([902]),
    );
    assert!(control_answers().contains("902"));
    assert_eq!(joiner.nodes(), BTreeSet::from([901]));
    // Still so once the server has timed out the sockets it held and the attacker took the
    // slots again.
    wait_until(Duration::from_secs(15), "held sockets timed out", || {
        attack.timed_out.load(Ordering::Relaxed) >= 16
    });
    assert!(control_answers().contains("902"));
    assert_eq!(gw.nodes(), BTreeSet::from([902]));
    let log = gw.log_text();
    assert!(
        !log.contains("Too many open files"),
        "the gateway ran out of descriptors:\n{log}"
    );
    attack.stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let opened = attack.opened.load(Ordering::Relaxed);
    eprintln!(
        "{opened} idle sockets opened against /metrics; the gateway held {at_rest} descriptors at rest, {attacked_fds} under attack (limit {FD_LIMIT})"
    );

    // /metrics serves again, and says what it refused and timed out.
    let mut text = String::new();
    wait_until(Duration::from_secs(15), "a scrape answered", || {
        text = scrape(&metrics);
        text.lines().next().is_some_and(|l| l.contains(" 200 "))
    });
    let refused = metric(
        &text,
        r#"pmesh_bridge_http_connections_total{outcome="refused"}"#,
    )
    .unwrap_or(0.0);
    assert!(refused >= (IDLE - 16) as f64, "refused {refused}\n{text}");
    assert!(
        metric(
            &text,
            r#"pmesh_bridge_http_connections_total{outcome="timed_out"}"#
        )
        .is_some_and(|t| t >= 16.0),
        "{text}"
    );
    assert!(open_fds(gw.pid()) < attacked_fds);
    // The bridge's own health says it too.
    sub.publish("mesh/bridge/request/health", r#"{"transaction":"h"}"#);
    let h = sub.wait("mesh/bridge/response/health", 10, |m| {
        m.json()["transaction"] == "h"
    });
    let http = &h.json()["data"]["metricsHttp"];
    assert!(http["refused"].as_f64() >= Some(refused), "{http}");
    assert!(http["timed_out"].as_i64() >= Some(16), "{http}");
}
