//! Paging, fuzzed requests, OTA over MQTT, Prometheus.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pmesh_bridge::{Bridge, OtaProgress};
use pmesh_proto::NodeTree;
use serde_json::{Value as J, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_snapshots_are_paged_under_the_broker_limit() {
    const LIMIT: usize = 4096;
    let broker = Broker::start(Some(LIMIT)).await;
    let sub = Sub::connect(broker.port, "mesh/status/#").await;
    let mut cfg = config(broker.port, "paging");
    cfg.broker.max_packet_size = LIMIT;
    cfg.streams.node_state = false;
    let bridge = Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    // 801 nodes: 2..=401 under the gateway, each with one child (about 7 KB of ids).
    let tree = NodeTree {
        node_id: 1,
        subs: (2..=401u32)
            .map(|i| NodeTree {
                node_id: i,
                subs: vec![NodeTree::leaf(i + 4_000_000_000)],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let expected = tree.node_list(true);
    bridge.topology(tree);
    let idx = sub
        .wait("mesh/status/nodes", 10, |m| m.json()["paged"] == true)
        .await
        .json();
    let pages = idx["pages"].as_u64().unwrap();
    assert!(pages >= 2);
    let mut ids = Vec::new();
    for p in 0..pages {
        let m = sub
            .wait(&format!("mesh/status/nodes/page/{p}"), 10, |m| {
                m.json()["snapshot"] == idx["snapshot"]
            })
            .await;
        assert!(m.payload.len() < LIMIT);
        let v = m.json();
        ids.extend(
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32),
        );
    }
    assert_eq!(ids, expected);
    assert_eq!(idx["count"], 801);
    let tidx = sub
        .wait("mesh/status/topology", 10, |m| m.json()["paged"] == true)
        .await
        .json();
    let mut edges = Vec::new();
    for p in 0..tidx["pages"].as_u64().unwrap() {
        let v = sub
            .wait(&format!("mesh/status/topology/page/{p}"), 10, |m| {
                m.json()["snapshot"] == tidx["snapshot"]
            })
            .await
            .json();
        edges.extend(v["nodes"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(edges.len(), 801);
    assert!(edges.contains(&json!({"nodeId": 4_000_000_007u32, "parent": 7})));
    // Nothing over the limit reached the broker, so the connection never dropped.
    assert_eq!(bridge.status().connections, 1);
    assert!(
        sub.all()
            .iter()
            .all(|m| m.payload.len() + m.topic.len() + 9 <= LIMIT)
    );
    // The mesh shrinks: whole messages again, stale pages cleared.
    bridge.topology(common::star(1, [2, 3]));
    sub.wait("mesh/status/nodes", 10, |m| {
        m.json()["nodes"] == json!([1, 2, 3])
    })
    .await;
    eventually(10, "stale page cleared", || {
        sub.last("mesh/status/nodes/page/1")
            .is_some_and(|m| m.payload.is_empty())
    })
    .await;
    bridge.shutdown().await;
}

/// A small deterministic generator (xorshift) so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn fuzz_payload(r: &mut Rng, i: usize) -> Vec<u8> {
    match r.next() % 9 {
        0 => Vec::new(),
        1 => (0..r.next() % 200).map(|_| r.next() as u8).collect(),
        2 => b"{\"transaction\":".to_vec(),
        3 => format!("[{i},2,3]").into_bytes(),
        4 => "{\"a\":".repeat(200).into_bytes(),
        5 => json!({"transaction": i, "to": r.next() % 5, "message": "x".repeat((r.next() % 3000) as usize)}).to_string().into_bytes(),
        6 => json!({"transaction": i, "image_base64": "!!!", "role": 5}).to_string().into_bytes(),
        7 => json!({"transaction": i, "campaign": -1, "message": {"nested": [1, {"x": null}]}}).to_string().into_bytes(),
        _ => format!("\"{i}\"").into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_are_all_answered() {
    let broker = Broker::start(None).await;
    let sub = Sub::connect(broker.port, "mesh/bridge/response/#").await;
    let gw = Arc::new(FakeGateway::default());
    let mut cfg = config(broker.port, "fuzz");
    cfg.ha_prefix = "ha-fuzz".into();
    let bridge = Bridge::spawn(cfg, 1, gw).unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    bridge.topology(common::star(1, [2, 3]));
    let verbs = [
        "info",
        "health",
        "nodes",
        "topology",
        "alerts",
        "send",
        "broadcast",
        "ota/start",
        "ota/status",
        "ota/abort",
        "publish_now",
        "resync",
        "nope",
        "ota",
        "ota/x/y",
        "%20",
        "Info",
    ];
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let n = 400;
    let mut per_topic = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let verb = r.pick(&verbs);
        let payload = fuzz_payload(&mut r, i);
        *per_topic
            .entry(format!("mesh/bridge/response/{verb}"))
            .or_default() += 1;
        sub.publish(&format!("mesh/bridge/request/{verb}"), payload)
            .await;
    }
    // The barrier: a last request, handled after all the others (one connection, in order),
    // so once it is answered any second answer to an earlier request has been published too.
    sub.publish("mesh/bridge/request/info", r#"{"transaction":"barrier"}"#)
        .await;
    *per_topic
        .entry("mesh/bridge/response/info".into())
        .or_default() += 1;
    sub.wait("mesh/bridge/response/info", 30, |m| {
        m.json()["transaction"] == "barrier"
    })
    .await;
    let all = sub.all();
    assert_eq!(all.len(), n + 1, "exactly one answer per request");
    for (topic, want) in per_topic {
        assert_eq!(
            all.iter().filter(|m| m.topic == topic).count(),
            want,
            "{topic}"
        );
    }
    for m in &all {
        let v = m.json();
        match v["status"].as_str() {
            Some("ok") => assert!(v.get("data").is_some()),
            Some("error") => assert!(v["error"].as_str().is_some_and(|e| !e.is_empty())),
            _ => panic!("bad response {v}"),
        }
    }
    assert!(bridge.status().online, "still online after the fuzz");
    assert_eq!(bridge.status().connections, 1);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_over_mqtt_and_restart_mid_campaign_leaves_nobody_updating() {
    use base64::Engine as _;
    let broker = Broker::start(None).await;
    let sub = Sub::connect(broker.port, "mesh/#").await;
    let gw = Arc::new(FakeGateway::default());
    let dir = tmpdir("ota");
    let mut cfg = config(broker.port, "ota");
    cfg.state_dir = Some(dir.clone());
    let firmware = dir.join("firmware");
    std::fs::create_dir_all(&firmware).unwrap();
    cfg.firmware_dir = Some(pmesh_bridge::FirmwareDir::open(&firmware).unwrap());
    let a = Bridge::spawn(cfg.clone(), 1, gw.clone()).unwrap();
    assert!(a.wait_online(Duration::from_secs(10)).await);
    a.topology(common::star(1, [2, 3, 4]));

    // Bad requests first: clear errors.
    sub.publish(
        "mesh/bridge/request/ota/start",
        r#"{"role":"sensor","transaction":1}"#,
    )
    .await;
    let r = sub
        .wait("mesh/bridge/response/ota/start", 5, |m| {
            m.json()["transaction"] == 1
        })
        .await
        .json();
    assert!(r["error"].as_str().unwrap().contains("image_path"));
    sub.publish(
        "mesh/bridge/request/ota/start",
        r#"{"image_path":"/nonexistent/fw.bin","role":"sensor","transaction":2}"#,
    )
    .await;
    sub.wait("mesh/bridge/response/ota/start", 5, |m| {
        m.json()["transaction"] == 2 && m.json()["status"] == "error"
    })
    .await;

    // Inline image.
    let image = b"firmware image bytes".repeat(50);
    let req = json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(&image), "role": "sensor", "hardware": "ESP32", "mode": "broadcast", "compressed": true, "transaction": 3});
    sub.publish("mesh/bridge/request/ota/start", req.to_string())
        .await;
    let r = sub
        .wait("mesh/bridge/response/ota/start", 5, |m| {
            m.json()["transaction"] == 3
        })
        .await
        .json();
    assert_eq!(r["status"], "ok", "{r}");
    let campaign = r["data"]["campaign"].as_u64().unwrap();
    let start = gw
        .calls
        .lock()
        .unwrap()
        .iter()
        .find_map(|c| {
            if let Call::OtaStart(s) = c {
                Some(s.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(
        (
            start.campaign,
            start.image.clone(),
            start.compressed,
            start.role.as_str()
        ),
        (campaign, image.clone(), true, "sensor")
    );
    assert_eq!(start.md5.len(), 32);

    // Also from the gateway's firmware directory; refused while one runs.
    std::fs::write(firmware.join("fw.bin"), &image).unwrap();
    sub.publish(
        "mesh/bridge/request/ota/start",
        json!({"image_path": "fw.bin", "role": "sensor", "transaction": 4}).to_string(),
    )
    .await;
    let r = sub
        .wait("mesh/bridge/response/ota/start", 5, |m| {
            m.json()["transaction"] == 4
        })
        .await
        .json();
    assert!(r["error"].as_str().unwrap().contains("still running"));

    a.ota(OtaProgress::Started {
        campaign,
        targets: vec![2, 3, 4],
    });
    a.ota(OtaProgress::Node {
        campaign,
        node: 2,
        done: 30,
        total: 60,
    });
    a.ota(OtaProgress::NodeDone { campaign, node: 4 });
    let n2 = sub
        .wait("mesh/status/node/2", 5, |m| {
            m.json()["update"]["progress"] == 50.0
        })
        .await
        .json();
    assert_eq!(
        n2["update"],
        json!({"state": "updating", "campaign": campaign, "progress": 50.0, "remaining": 30, "error": null})
    );
    sub.wait("mesh/bridge/event", 5, |m| {
        m.json()["type"] == "ota_progress" && m.json()["data"]["nodeId"] == 2
    })
    .await;
    sub.wait("mesh/bridge/event", 5, |m| {
        m.json()["type"] == "ota_node_result" && m.json()["data"]["nodeId"] == 4
    })
    .await;
    sub.publish("mesh/bridge/request/ota/status", "").await;
    let st = sub
        .wait("mesh/bridge/response/ota/status", 5, |_| true)
        .await
        .json();
    assert_eq!(
        (st["data"]["state"].clone(), st["data"]["nodesDone"].clone()),
        (json!("running"), json!(1))
    );

    // The gateway dies mid-campaign and comes back (after its task has stopped).
    a.kill().await;
    let b = Bridge::spawn(cfg.clone(), 1, gw.clone()).unwrap();
    assert!(b.wait_online(Duration::from_secs(10)).await);
    let ev = sub
        .wait("mesh/bridge/event", 5, |m| {
            m.json()["type"] == "ota_finished"
        })
        .await
        .json();
    assert_eq!(ev["data"]["result"], "interrupted");
    for node in [2, 3] {
        sub.wait(&format!("mesh/status/node/{node}"), 5, |m| {
            m.json()["update"]["state"] == "idle"
        })
        .await;
    }
    let tree_at = std::time::Instant::now();
    b.topology(common::star(1, [2, 3, 4]));
    // B applied the tree (its node list is out); then a snapshot the broker acknowledged: every
    // node state B holds, and everything B published before it, is retained on the broker.
    sub.wait("mesh/status/nodes", 5, |m| {
        m.at > tree_at && m.json()["nodes"] == json!([1, 2, 3, 4])
    })
    .await;
    assert!(b.publish_snapshot().await > 0);
    let late = Sub::connect(broker.port, "mesh/status/node/+").await;
    late.barrier().await; // every retained node state is recorded
    assert!(!late.all().is_empty());
    for m in late.all() {
        assert_ne!(
            m.json()["update"]["state"],
            "updating",
            "{} still shows updating after restart",
            m.topic
        );
    }

    // Abort path.
    let req = json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(&image), "role": "sensor", "transaction": 5});
    sub.publish("mesh/bridge/request/ota/start", req.to_string())
        .await;
    let c2 = sub
        .wait("mesh/bridge/response/ota/start", 5, |m| {
            m.json()["transaction"] == 5
        })
        .await
        .json()["data"]["campaign"]
        .as_u64()
        .unwrap();
    assert!(
        c2 > campaign,
        "campaign ids keep increasing across restarts"
    );
    b.ota(OtaProgress::Started {
        campaign: c2,
        targets: vec![3],
    });
    sub.wait("mesh/status/node/3", 5, |m| {
        m.json()["update"]["state"] == "updating"
    })
    .await;
    sub.publish("mesh/bridge/request/ota/abort", "{}").await;
    sub.wait("mesh/bridge/response/ota/abort", 5, |m| {
        m.json()["status"] == "ok"
    })
    .await;
    sub.wait("mesh/status/node/3", 5, |m| {
        m.json()["update"]["state"] == "idle"
    })
    .await;
    assert!(gw.calls.lock().unwrap().contains(&Call::OtaAbort(c2)));
    b.ota(OtaProgress::NodeFailed {
        campaign: c2,
        node: 3,
        reason: "late report".into(),
    });
    sub.publish("mesh/bridge/request/ota/abort", "{}").await;
    let r = sub
        .wait("mesh/bridge/response/ota/abort", 5, |m| {
            m.json()["status"] == "error"
        })
        .await
        .json();
    assert!(r["error"].as_str().unwrap().contains("no campaign"));
    b.shutdown().await;
}

fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    if !found && std::env::var("PMESH_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1") {
        panic!("PMESH_REQUIRE_PROMTOOL=1 but promtool is not installed");
    }
    found.then_some("promtool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_passes_promtool_and_drops_departed_nodes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start(None).await;
    let mut cfg = config(broker.port, "metrics");
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let bridge = Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    bridge.topology(common::star(1, 2..=5));
    bridge.message(2, b"x".to_vec(), true);
    bridge.stats(
        pmesh_node::NodeStats {
            frames_in: 10,
            bytes_in: 999,
            ..Default::default()
        },
        vec![pmesh_bridge::LinkStats {
            peer: 2,
            bytes_in: 5,
            bytes_out: 6,
            delay_us: Some(1500),
        }],
    );
    bridge.package(
        pmesh_proto::Envelope::parse(
            br#"{"from":3,"routing":2,"type":204,"heap":9000,"pktsRx":90,"pktsDrop":10}"#,
            32,
        )
        .unwrap(),
    );
    // Series follow the model within a sync period (250 ms).
    eventually(5, "metrics synced", || {
        bridge
            .metrics()
            .render()
            .contains("pmesh_node_packet_loss_ratio{node=\"3\"}")
    })
    .await;
    // Served over HTTP by axum on a port of its own.
    let (addr, _task) = bridge
        .metrics()
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    async fn get(addr: std::net::SocketAddr, accept: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }
    // What Prometheus asks for: OpenMetrics.
    let (head, om) = get(
        addr,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for want in [
        "pmesh_mesh_nodes 5",
        "pmesh_node_up{node=\"5\"} 1",
        "pmesh_gateway_bytes_total{direction=\"in\"} 999",
        "pmesh_link_delay_seconds{peer=\"2\"} 0.0015",
        "pmesh_node_packet_loss_ratio{node=\"3\"} 0.1",
        "pmesh_bridge_connected 1",
        "pmesh_node_parent{node=\"5\",parent=\"1\"} 1",
        "# EOF",
    ] {
        assert!(om.contains(want), "missing {want:?} in\n{om}");
    }
    // Anyone else: the classic text format, which promtool checks.
    let (head, body) = get(addr, "*/*").await;
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE pmesh_gateway_bytes_total counter") && !body.contains("# EOF"));
    match promtool() {
        Some(p) => {
            let mut child = std::process::Command::new(p)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("promtool check metrics: ok");
        }
        None => eprintln!(
            "NOTE: promtool not installed; skipped `promtool check metrics` (set PMESH_REQUIRE_PROMTOOL=1 to fail instead)"
        ),
    }
    bridge.topology(common::star(1, 2..=4));
    eventually(5, "node 5 series removed", || {
        !bridge.metrics().render().contains("node=\"5\"")
    })
    .await;
    let _: J = json!(null);
    bridge.shutdown().await;
}
