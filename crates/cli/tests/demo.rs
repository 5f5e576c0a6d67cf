//! `pmesh demo` end to end: the real process with its embedded broker; an MQTT subscriber and
//! a `/metrics` scrape check what its bridge publishes while the simulated mesh forms and the
//! rollout reaches every node.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// A running `pmesh demo` whose stdout lines arrive on a channel (and are kept).
struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pmesh"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pmesh runs");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle`, waiting up to `timeout`.
    fn line_with(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits for the process to exit (up to `timeout`); returns its status and all its output.
    fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                return (status, self.seen.join("\n"));
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "pmesh demo did not exit in {timeout:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The text after `marker` up to the next space.
fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = &line[line.find(marker).expect("marker") + marker.len()..];
    rest.split_whitespace().next().unwrap_or("")
}

/// Everything published under `mesh/#`, in arrival order.
type Log = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn subscribe(port: u16) -> (Client, Log) {
    let mut o = MqttOptions::new(
        format!("demo-test-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 256);
    client
        .subscribe("mesh/#", QoS::AtLeastOnce)
        .expect("subscribe");
    let log: Log = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => l
                    .lock()
                    .unwrap()
                    .push((p.topic.clone(), p.payload.to_vec())),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, log)
}

/// JSON payloads published on `topic`.
fn payloads(log: &Log, topic: &str) -> Vec<Value> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, p)| serde_json::from_slice(p).ok())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` over a plain TCP connection; the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics response");
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    text
}

/// The value of an unlabelled sample in a Prometheus text body.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn demo_forms_the_mesh_rolls_out_and_publishes_it() {
    let mut demo = Demo::start(&[
        "--nodes",
        "12",
        "--speed",
        "5",
        "--seed",
        "3",
        "--image-size",
        "64KiB",
        "--metrics-listen",
        "127.0.0.1:0",
        "--exit-after-rollout",
        "--duration",
        "60s",
    ]);
    let wait = Duration::from_secs(30);
    let broker = demo.line_with("embedded broker on ", wait);
    let port: u16 = after(&broker, "embedded broker on 127.0.0.1:")
        .parse()
        .expect("broker port");
    let metrics = demo.line_with("/metrics: http://", wait);
    let metrics_addr = after(&metrics, "http://")
        .strip_suffix("/metrics")
        .expect("metrics URL")
        .to_string();
    demo.line_with("mosquitto_sub -h 127.0.0.1 -p", wait);
    let (_client, log) = subscribe(port);

    // The whole mesh reaches the gateway: on MQTT and in /metrics, while the demo runs.
    wait_for("status/nodes with 12 nodes", wait, || {
        payloads(&log, "mesh/status/nodes")
            .iter()
            .any(|v| v["count"] == 12)
    });
    let nodes = payloads(&log, "mesh/status/nodes");
    let last = nodes.last().expect("status/nodes");
    assert_eq!(last["count"], 12, "{last}");
    let ids: BTreeSet<u64> = last["nodes"]
        .as_array()
        .expect("node list")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(ids, (1..=12).collect(), "{last}");
    // /metrics follows the model at most every 250 ms, so it may trail the MQTT publish.
    let mut text = String::new();
    wait_for("pmesh_mesh_nodes 12 on /metrics", wait, || {
        text = scrape(&metrics_addr);
        sample(&text, "pmesh_mesh_nodes") == Some(12.0)
    });
    assert!(
        sample(&text, "pmesh_mesh_depth").is_some_and(|d| d >= 2.0),
        "the radio mesh is more than a star: {text}"
    );
    assert!(
        payloads(&log, "mesh/bridge/state")
            .iter()
            .any(|v| v["state"] == "online"),
        "bridge/state online"
    );

    // The rollout's end, in /metrics while the demo lingers (it exits 2 s after).
    wait_for("ota_finished", Duration::from_secs(60), || {
        payloads(&log, "mesh/bridge/event")
            .iter()
            .any(|e| e["type"] == "ota_finished")
    });
    // The bridge brings its metrics in line with its model every 250 ms.
    let mut text = String::new();
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        text = scrape(&metrics_addr);
        if sample(&text, "pmesh_ota_node_results_total{result=\"updated\"}") == Some(11.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sample(&text, "pmesh_ota_node_results_total{result=\"updated\"}"),
        Some(11.0),
        "{text}"
    );
    // 64 KiB of synthetic firmware, deflated per chunk: at least a third of it went out.
    assert!(
        sample(&text, "pmesh_ota_sent_bytes_total").is_some_and(|b| b > 20_000.0),
        "{text}"
    );
    // The gateway's own links carry counters.
    let link_bytes: f64 = text
        .lines()
        .filter(|l| l.starts_with("pmesh_link_sent_bytes_total{peer="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(link_bytes > 20_000.0, "{text}");

    // The rollout: every other node updated, as events and in its retained state.
    let (status, out) = demo.wait(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}; output:\n{out}");
    assert!(
        out.contains("rollout:  complete: 11/11 nodes updated, 0 failed"),
        "{out}"
    );
    let events = payloads(&log, "mesh/bridge/event");
    let kinds: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["type"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(kinds.get("ota_requested"), Some(&1), "{kinds:?}");
    assert_eq!(kinds.get("ota_started"), Some(&1), "{kinds:?}");
    let updated: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["type"] == "ota_node_result" && e["data"]["result"] == "updated")
        .filter_map(|e| e["data"]["nodeId"].as_u64())
        .collect();
    assert_eq!(updated, (2..=12).collect(), "{kinds:?}");
    assert!(
        kinds.get("ota_progress").is_some_and(|&n| n >= 11),
        "progress events for every node: {kinds:?}"
    );
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "ota_finished")
        .collect();
    assert_eq!(finished.len(), 1, "{kinds:?}");
    assert_eq!(finished[0]["data"]["result"], "finished");
    assert_eq!(finished[0]["data"]["nodesDone"], 11);
    assert_eq!(finished[0]["data"]["nodesFailed"], 0);
    for id in 2..=12 {
        let states = payloads(&log, &format!("mesh/status/node/{id}"));
        let last = states
            .last()
            .unwrap_or_else(|| panic!("no state of node {id}"));
        assert_eq!(last["update"]["state"], "updated", "node {id}: {last}");
    }
    // The nodes' status reports (EnhancedStatus 604, sent to the gateway) reached the bridge.
    let reported = (2..=12)
        .filter(|id| {
            payloads(&log, &format!("mesh/status/node/{id}"))
                .iter()
                .any(|v| v["status"]["type"] == 604 && v["status"]["fw"] == "pmesh-demo-1.0")
        })
        .count();
    assert!(
        reported >= 6,
        "only {reported} of 11 nodes' status reports seen"
    );
    // Shut down cleanly: the last word on bridge/state is offline.
    wait_for("bridge/state offline", Duration::from_secs(5), || {
        payloads(&log, "mesh/bridge/state")
            .last()
            .is_some_and(|v| v["state"] == "offline")
    });
}

#[test]
fn demo_answers_requests_through_its_gateway() {
    let mut demo = Demo::start(&[
        "--nodes",
        "8",
        "--speed",
        "5",
        "--no-ota",
        "--metrics-listen",
        "off",
        "--duration",
        "12s",
    ]);
    let wait = Duration::from_secs(30);
    let broker = demo.line_with("embedded broker on ", wait);
    let port: u16 = after(&broker, "embedded broker on 127.0.0.1:")
        .parse()
        .expect("broker port");
    let (client, log) = subscribe(port);
    wait_for("8 nodes", wait, || {
        payloads(&log, "mesh/status/nodes")
            .iter()
            .any(|v| v["count"] == 8)
    });
    let ask = |verb: &str, body: Value| {
        client
            .publish(
                format!("mesh/bridge/request/{verb}"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .expect("publish");
    };
    let answer = |verb: &str, tx: &str| -> Value {
        let topic = format!("mesh/bridge/response/{verb}");
        let mut found = None;
        wait_for(&format!("answer {tx} on {topic}"), wait, || {
            found = payloads(&log, &topic)
                .into_iter()
                .find(|v| v["transaction"] == tx);
            found.is_some()
        });
        found.unwrap()
    };
    ask(
        "send",
        serde_json::json!({"to": 5, "message": "hi", "transaction": "a"}),
    );
    let a = answer("send", "a");
    assert_eq!(a["status"], "ok", "{a}");
    ask(
        "send",
        serde_json::json!({"to": 99, "message": "hi", "transaction": "b"}),
    );
    let b = answer("send", "b");
    assert_eq!(b["status"], "error", "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or("")
            .contains("not in the mesh"),
        "{b}"
    );
    // Campaigns are checked against what the simulated nodes are.
    ask(
        "ota/start",
        serde_json::json!({"image_base64": "AAEC", "role": "lamp", "transaction": "c"}),
    );
    let c = answer("ota/start", "c");
    assert_eq!(c["status"], "error", "{c}");
    assert!(
        c["error"]
            .as_str()
            .unwrap_or("")
            .contains("role \"sensor\""),
        "{c}"
    );
    // A campaign over MQTT runs on the simulated mesh like the demo's own.
    ask(
        "ota/start",
        serde_json::json!({"image_base64": "AAECAwQFBgcICQ==", "role": "sensor", "mode": "broadcast", "transaction": "d"}),
    );
    let d = answer("ota/start", "d");
    assert_eq!(d["status"], "ok", "{d}");
    wait_for("ota_finished", wait, || {
        payloads(&log, "mesh/bridge/event")
            .iter()
            .any(|e| e["type"] == "ota_finished")
    });
    let events = payloads(&log, "mesh/bridge/event");
    let fin = events.iter().find(|e| e["type"] == "ota_finished").unwrap();
    assert_eq!(fin["data"]["nodesDone"], 7, "{fin}");
    drop(client);
    let (status, out) = demo.wait(Duration::from_secs(40));
    assert!(status.success(), "exit status {status}; output:\n{out}");
    // The summary reports the campaign started over MQTT (the demo's own rollout was off).
    assert!(
        out.contains("rollout:  complete: 7/7 nodes updated, 0 failed"),
        "{out}"
    );
}
