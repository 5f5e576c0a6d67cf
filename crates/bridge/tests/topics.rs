//! Every topic the bridge promises, checked by a real subscriber on a real broker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pmesh_bridge::{Bridge, ClockSource, ha};
use pmesh_proto::{Envelope, NodeTree};
use serde_json::json;

fn tree() -> NodeTree {
    // 1 (gateway) ─ 2 ─ 3 (root:true), 1 ─ 4
    let mut three = NodeTree::leaf(3);
    three.root = true;
    NodeTree {
        node_id: 1,
        subs: vec![
            NodeTree {
                node_id: 2,
                subs: vec![three],
                ..Default::default()
            },
            NodeTree::leaf(4),
        ],
        ..Default::default()
    }
}

const LOW_MEM_604: &str = r#"{"from":3,"routing":2,"type":604,"status":0,"uptime":3600,"mem":5,"wifi":0,"fw":"1.2.3","fwMD5":"abc","nodes":4,"conns":1,"msgRx":10,"msgTx":9,"msgDrop":0,"latency":3,"loss":0,"throughput":0,"alerts":0,"lastErr":""}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_checked_by_a_real_subscriber() {
    let broker = Broker::start(None).await;
    let sub = Sub::connect(broker.port, "#").await;
    let gw = Arc::new(FakeGateway::default());
    let bridge = Bridge::spawn(config(broker.port, "topics"), 1, gw.clone()).unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    let session = bridge.status().session;
    bridge.topology(tree());
    bridge.message(2, b"hello".to_vec(), false);
    bridge.package(Envelope::parse(LOW_MEM_604.as_bytes(), 32).unwrap());

    // Bridge state, info, health.
    let st = sub
        .wait("mesh/bridge/state", 5, |m| {
            m.retain || m.json()["state"] == "online"
        })
        .await
        .json();
    assert_eq!(st, json!({"state": "online", "session": session}));
    let info = sub.wait("mesh/bridge/info", 5, |_| true).await.json();
    assert_eq!(info["gatewayNodeId"], 1);
    assert_eq!(info["config"]["publishInterval"], 600.0);
    assert!(
        info["timestamp"].as_u64().unwrap() > 1_704_067_200_000,
        "epoch ms"
    );
    sub.wait("mesh/bridge/health", 5, |m| {
        m.json()["mqtt"]["connected"] == true
    })
    .await;

    // Status topics, documented shapes with true values.
    let nodes = sub
        .wait("mesh/status/nodes", 5, |m| m.json()["count"] == 4)
        .await
        .json();
    assert_eq!(nodes["nodes"], json!([1, 2, 3, 4]));
    assert!(nodes["timestamp"].is_u64());
    let topo = sub
        .wait("mesh/status/topology", 5, |m| m.json()["subs"].is_array())
        .await
        .json();
    assert_eq!(topo["nodeId"], 1);
    assert_eq!(
        topo["subs"][0]["subs"][0],
        json!({"nodeId": 3, "root": true})
    );
    let metrics = sub
        .wait("mesh/status/metrics", 5, |m| {
            m.json()["nodeCount"] == 4 && m.json()["freeHeap"].is_u64()
        })
        .await
        .json();
    assert_eq!(
        metrics["rootNodeId"], 3,
        "the node flagged root, not a guess"
    );
    assert_eq!(metrics["freeHeapKB"], 5, "root node's reported heap");
    assert_eq!(metrics["messages"]["receivedSingle"], 1);
    let alerts = sub
        .wait("mesh/status/alerts", 5, |m| {
            m.json()["alerts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await
        .json();
    assert_eq!(alerts["alerts"][0]["type"], "LOW_MEMORY");
    assert_eq!(alerts["alerts"][0]["severity"], "critical");
    assert_eq!(alerts["alerts"][0]["nodeId"], 3);

    // Per-node state and availability, retained.
    let n3 = sub
        .wait("mesh/status/node/3", 5, |m| {
            m.json()["status"]["freeHeapKB"] == 5
        })
        .await
        .json();
    assert_eq!(
        (
            n3["parent"].clone(),
            n3["hops"].clone(),
            n3["online"].clone()
        ),
        (json!(2), json!(2), json!(true))
    );
    assert_eq!(n3["status"]["fw"], "1.2.3");
    assert_eq!(n3["update"]["state"], "idle");
    sub.wait("mesh/status/node/4/availability", 5, |m| {
        m.json() == json!({"state": "online"})
    })
    .await;

    // Events.
    let ev = sub
        .wait("mesh/bridge/event", 5, |m| {
            m.json()["type"] == "alert_raised"
        })
        .await
        .json();
    assert_eq!(ev["data"]["type"], "LOW_MEMORY");
    assert_eq!(
        ev["data"]["id"], ev["seq"],
        "alert id is its raise event's sequence number"
    );
    assert_eq!(
        sub.on("mesh/bridge/event")
            .iter()
            .filter(|m| m.json()["type"] == "node_joined")
            .count(),
        3
    );

    // Mesh messages, both conventions.
    assert_eq!(sub.wait("mesh/from/2", 5, |_| true).await.payload, b"hello");
    assert_eq!(
        sub.wait("painlessMesh/from/2", 5, |_| true).await.payload,
        b"hello"
    );

    // Home Assistant discovery, checked against HA's required keys.
    for (topic, who) in [
        ("homeassistant/device/pmesh_node_3/config", "node"),
        ("homeassistant/device/pmesh_gateway_1/config", "gateway"),
    ] {
        let m = sub
            .wait(topic, 5, |m| m.retain || !m.payload.is_empty())
            .await;
        assert_eq!(
            ha::check_device_config(&m.json()),
            Vec::<String>::new(),
            "{who} discovery"
        );
    }
    let before = sub.on("homeassistant/device/pmesh_node_2/config").len();
    sub.publish("homeassistant/status", "online").await;
    eventually(5, "HA re-announce", || {
        sub.on("homeassistant/device/pmesh_node_2/config").len() > before
    })
    .await;

    // Commands on mesh/command/<verb> → mesh/response/<verb>.
    sub.publish("mesh/command/getNodes", r#"{"transaction":7}"#)
        .await;
    let r = sub.wait("mesh/response/getNodes", 5, |_| true).await.json();
    assert_eq!(
        (
            r["status"].clone(),
            r["transaction"].clone(),
            r["data"]["nodes"].clone()
        ),
        (json!("ok"), json!(7), json!([1, 2, 3, 4]))
    );
    sub.publish("mesh/command/getTopology", "").await;
    assert_eq!(
        sub.wait("mesh/response/getTopology", 5, |_| true)
            .await
            .json()["data"]["nodeId"],
        1
    );
    let n_before = sub.on("mesh/status/nodes").len();
    sub.publish("mesh/command/publishNow", "").await;
    sub.wait("mesh/response/publishNow", 5, |m| {
        m.json()["status"] == "ok"
    })
    .await;
    eventually(5, "publishNow snapshot", || {
        sub.on("mesh/status/nodes").len() > n_before
    })
    .await;
    sub.publish("mesh/command/broadcast", "hi all").await;
    sub.wait("mesh/response/broadcast", 5, |m| m.json()["status"] == "ok")
        .await;
    sub.publish("mesh/command/reboot", "").await;
    assert_eq!(
        sub.wait("mesh/response/reboot", 5, |_| true).await.json()["status"],
        "error"
    );

    // bridge/request/<verb> → bridge/response/<verb>.
    sub.publish(
        "mesh/bridge/request/send",
        r#"{"to":4,"message":"x","transaction":"t1"}"#,
    )
    .await;
    let r = sub
        .wait("mesh/bridge/response/send", 5, |_| true)
        .await
        .json();
    assert_eq!(
        (r["status"].clone(), r["transaction"].clone()),
        (json!("ok"), json!("t1"))
    );
    sub.publish("mesh/bridge/request/nodes", "{}").await;
    assert_eq!(
        sub.wait("mesh/bridge/response/nodes", 5, |_| true)
            .await
            .json()["data"]["count"],
        4
    );
    sub.publish("mesh/bridge/request/frobnicate", r#"{"transaction":9}"#)
        .await;
    let r = sub
        .wait("mesh/bridge/response/frobnicate", 5, |_| true)
        .await
        .json();
    assert_eq!(
        (r["status"].clone(), r["transaction"].clone()),
        (json!("error"), json!(9))
    );
    assert!(r["error"].as_str().unwrap().contains("unknown request"));
    sub.publish("mesh/bridge/request/info", "{not json").await;
    let r = sub
        .wait("mesh/bridge/response/info", 5, |_| true)
        .await
        .json();
    assert!(r["error"].as_str().unwrap().starts_with("invalid JSON"));

    // Legacy gateway convention.
    sub.publish("painlessMesh/to/3", "yo").await;
    sub.publish("painlessMesh/to/broadcast", "all").await;
    sub.publish("painlessMesh/to/gateway", "getNodes").await;
    assert_eq!(
        sub.wait("painlessMesh/from/gateway", 5, |_| true)
            .await
            .json(),
        json!([2, 3, 4])
    );
    eventually(5, "gateway calls", || gw.calls.lock().unwrap().len() >= 4).await;
    let calls = gw.calls.lock().unwrap().clone();
    assert!(calls.contains(&Call::Broadcast(b"hi all".to_vec())));
    assert!(calls.contains(&Call::Single(4, b"x".to_vec())));
    assert!(calls.contains(&Call::Single(3, b"yo".to_vec())));
    assert!(calls.contains(&Call::Broadcast(b"all".to_vec())));

    // A node leaves: availability offline, node_left, NODE_OFFLINE alert; metrics series gone.
    assert!(
        bridge
            .metrics()
            .render()
            .contains("pmesh_node_up{node=\"4\"} 1")
    );
    let mut t = tree();
    t.subs.pop();
    bridge.topology(t);
    sub.wait("mesh/status/node/4/availability", 5, |m| {
        m.json() == json!({"state": "offline"})
    })
    .await;
    sub.wait("mesh/bridge/event", 5, |m| {
        m.json()["type"] == "node_left" && m.json()["data"]["nodeId"] == 4
    })
    .await;
    sub.wait("mesh/bridge/event", 5, |m| {
        m.json()["type"] == "alert_raised" && m.json()["data"]["type"] == "NODE_OFFLINE"
    })
    .await;
    sub.wait("mesh/status/nodes", 5, |m| {
        m.json()["nodes"] == json!([1, 2, 3])
    })
    .await;
    eventually(5, "per-node series removed", || {
        !bridge.metrics().render().contains("node=\"4\"")
    })
    .await;

    // Retained flags as a late subscriber sees them.
    let late = Sub::connect(broker.port, "#").await;
    late.barrier().await; // every retained message is recorded
    let retained: std::collections::BTreeSet<String> = late
        .all()
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| m.topic)
        .collect();
    for t in [
        "mesh/bridge/state",
        "mesh/bridge/info",
        "mesh/bridge/health",
        "mesh/status/nodes",
        "mesh/status/topology",
        "mesh/status/metrics",
        "mesh/status/alerts",
        "mesh/status/node/3",
        "mesh/status/node/3/availability",
        "homeassistant/device/pmesh_node_3/config",
    ] {
        assert!(
            retained.contains(t),
            "{t} not retained; retained: {retained:?}"
        );
    }
    for t in [
        "mesh/bridge/event",
        "mesh/from/2",
        "mesh/bridge/response/send",
    ] {
        assert!(!retained.contains(t), "{t} must not be retained");
    }

    bridge.shutdown().await;
    sub.wait("mesh/bridge/state", 5, |m| {
        m.json() == json!({"state": "offline", "session": session})
    })
    .await;
    // The bridge hears its own offline state echoed back while it stops: that is not a stale
    // will to correct, so what stays retained, and the last word the subscriber saw, is offline.
    // Shutdown returns once the broker acknowledged all the bridge published (a correction
    // included), so the subscriber's barrier comes after any of it.
    sub.barrier().await;
    let late = Sub::connect(broker.port, "mesh/bridge/state").await;
    let kept = late.wait("mesh/bridge/state", 5, |m| m.retain).await.json();
    assert_eq!(kept, json!({"state": "offline", "session": session}));
    assert_eq!(
        sub.last("mesh/bridge/state").map(|m| m.json()),
        Some(json!({"state": "offline", "session": session}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_clock_says_so_instead_of_faking_dates() {
    let broker = Broker::start(None).await;
    let sub = Sub::connect(broker.port, "mesh/#").await;
    let mut cfg = config(broker.port, "noclock");
    cfg.clock = ClockSource::Unset;
    let bridge = Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    bridge.topology(common::star(1, [2]));
    for t in [
        "mesh/status/nodes",
        "mesh/status/metrics",
        "mesh/bridge/event",
        "mesh/status/node/2",
        "mesh/bridge/health",
    ] {
        let v = sub.wait(t, 5, |_| true).await.json();
        assert_eq!(
            (v["timestamp"].clone(), v["clockSet"].clone()),
            (json!(null), json!(false)),
            "{t}: {v}"
        );
    }
    bridge.shutdown().await;
}

/// A pmesh node's own status report (`pmesh_node::StatusPlugin`) is read like Alteriom's, and
/// a field the node left out (free memory) stays unknown: no invented value, no alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmesh_status_reports_are_read_without_invented_values() {
    use pmesh_node::{Config, Instant, Node, StatusConfig, StatusPlugin};
    let broker = Broker::start(None).await;
    let sub = Sub::connect(broker.port, "mesh/#").await;
    let bridge = Bridge::spawn(
        config(broker.port, "pmesh-status"),
        1,
        Arc::new(FakeGateway::default()),
    )
    .unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    bridge.topology(tree());

    // Node 4 started 90 s ago and reports with what it knows.
    let mut cfg = StatusConfig::new("pmesh-0.1.0");
    cfg.firmware_md5 = Some("0123456789abcdef0123456789abcdef".into());
    let mut node: Node<StatusPlugin> = Node::new(
        Config::new(4),
        StatusPlugin::new(cfg, Instant::from_micros(0)),
    );
    let now = Instant::from_micros(90_000_000);
    let stats = node.stats();
    let report = node.with_plugin(now, |p, ctx| {
        p.set_node_stats(stats);
        p.build_report(ctx)
    });
    bridge.package(Envelope::parse(&report, 32).unwrap());

    let state = sub
        .wait("mesh/status/node/4", 5, |m| !m.json()["status"].is_null())
        .await
        .json();
    let status = &state["status"];
    assert_eq!(status["type"], 604);
    assert_eq!(status["uptime"], 90);
    assert_eq!(status["fw"], "pmesh-0.1.0");
    assert_eq!(status["fwMD5"], "0123456789abcdef0123456789abcdef");
    assert_eq!(status["nodes"], 1, "a node alone knows only itself");
    assert_eq!(status["msgRx"], 0);
    assert!(
        status.get("freeHeapKB").is_none(),
        "memory unknown: {status}"
    );
    assert!(status.get("wifi").is_none(), "signal unknown: {status}");
    // No LOW_MEMORY for a node that never said how much memory it has.
    bridge.publish_snapshot().await;
    let alerts = sub.wait("mesh/status/alerts", 5, |_| true).await.json();
    assert_eq!(alerts["alerts"], json!([]));
    assert!(
        sub.on("mesh/bridge/event")
            .iter()
            .all(|m| m.json()["type"] != "alert_raised")
    );
    bridge.shutdown().await;
}
