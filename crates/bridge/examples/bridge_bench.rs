//! MQTT bridge benchmark at 1,000 simulated nodes (issue 6 targets):
//! full snapshot published and acknowledged (p99 ≤ 50 ms on loopback Mosquitto), `/metrics`
//! rendered (≤ 50 ms), process RSS (≤ 50 MB), idle MQTT traffic per node per interval.
//!
//! `cargo run --release -p pmesh-bridge --example bridge_bench [-- NODES ROUNDS]`
//! Starts its own Mosquitto (/usr/sbin/mosquitto) on a free port, or the embedded broker
//! when Mosquitto is missing (said in the output).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmesh_bridge::{Bridge, Gateway, GatewayError, OtaStart};
use pmesh_proto::{Envelope, NodeTree};

struct NoGateway;
impl Gateway for NoGateway {
    fn send_single(&self, _: u32, _: Vec<u8>) -> Result<(), GatewayError> {
        Ok(())
    }
    fn send_broadcast(&self, _: Vec<u8>) -> Result<(), GatewayError> {
        Ok(())
    }
    fn ota_start(&self, _: OtaStart) -> Result<(), GatewayError> {
        Ok(())
    }
    fn ota_abort(&self, _: u64) -> Result<(), GatewayError> {
        Ok(())
    }
}

/// A tree of `n` nodes with fan-out 4 (ids 1000+i), gateway on top.
fn tree(n: u32) -> NodeTree {
    fn build(id: u32, n: u32) -> NodeTree {
        let kids = (1..=4)
            .map(|k| (id - 1000) * 4 + k)
            .filter(|c| *c < n)
            .map(|c| build(1000 + c, n))
            .collect();
        NodeTree {
            node_id: id,
            subs: kids,
            ..Default::default()
        }
    }
    build(1000, n)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: u32 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("pmesh-bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = None;
    let broker = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )?;
        child = Some(
            std::process::Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf)
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        "Mosquitto (loopback)"
    } else {
        pmesh_bridge::embedded::start(port, 1 << 20)?;
        "embedded rumqttd (Mosquitto not installed)"
    };

    let mut cfg = pmesh_bridge::BridgeConfig::default();
    cfg.broker.port = port;
    cfg.broker.client_id = "bench".into();
    cfg.publish_interval = Duration::from_secs(1);
    cfg.streams.ha_discovery = false;
    let bridge = Bridge::spawn(cfg, 1000, Arc::new(NoGateway))?;
    anyhow::ensure!(
        bridge.wait_online(Duration::from_secs(10)).await,
        "bridge did not come online"
    );
    bridge.topology(tree(nodes));
    for i in 0..nodes {
        let id = 1000 + i;
        let pkg = format!(
            r#"{{"from":{id},"routing":2,"type":604,"status":0,"uptime":3600,"mem":120,"wifi":0,"fw":"1.2.3","fwMD5":"abc","nodes":{nodes},"conns":2,"msgRx":10,"msgTx":9,"msgDrop":0,"latency":3,"loss":0,"throughput":0,"alerts":0,"lastErr":""}}"#
        );
        bridge.package(Envelope::parse(pkg.as_bytes(), 32).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. Full snapshot: nodes, topology, metrics, alerts and every node's state + availability.
    let mut times = Vec::new();
    let mut publishes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        publishes = bridge.publish_snapshot().await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(publishes > 0, "snapshot not acknowledged");
    }
    let (p50, p99, max) = (
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        pct(&mut times, 1.0),
    );

    // 2. /metrics rendering.
    let mut rt = Vec::new();
    let mut size = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        size = bridge.metrics().render().len();
        rt.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (m50, m99) = (pct(&mut rt, 0.5), pct(&mut rt, 0.99));

    // 3. Idle traffic: what a subscriber to everything receives per 1 s interval, mesh unchanged.
    let mut o = rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", port);
    o.set_max_packet_size(1 << 24, 1 << 24);
    let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
    c.subscribe("mesh/#", rumqttc::QoS::AtMostOnce).await?;
    let counted = Arc::new(Mutex::new((0u64, 0u64, false)));
    let c2 = counted.clone();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                let mut g = c2.lock().unwrap();
                if g.2 && !p.retain {
                    g.0 += 1;
                    g.1 += (p.topic.len() + p.payload.len()) as u64;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await; // retained burst passes
    counted.lock().unwrap().2 = true;
    let secs = 10;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (msgs, bytes, _) = *counted.lock().unwrap();
    let per_interval = bytes as f64 / secs as f64;
    let rss = pmesh_bridge::rss_bytes().unwrap_or(0) as f64 / 1048576.0;

    println!("MQTT bridge benchmark: {nodes} nodes, {rounds} rounds, broker: {broker}");
    println!(
        "full snapshot ({publishes} QoS 1 publishes) published and acknowledged: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 <= 50 ms)"
    );
    println!("/metrics render ({size} bytes): p50 {m50:.2} ms, p99 {m99:.2} ms (target <= 50 ms)");
    println!(
        "process RSS (bench process = bridge + 1,000-node model + test client): {rss:.1} MB (target <= 50 MB)"
    );
    println!(
        "idle traffic per interval: {:.0} messages, {:.0} bytes = {:.1} bytes per node per interval (status/nodes + topology + metrics + alerts + health; node states only on change)",
        msgs as f64 / secs as f64,
        per_interval,
        per_interval / f64::from(nodes)
    );
    bridge.shutdown().await;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
