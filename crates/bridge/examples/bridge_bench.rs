//! MQTT bridge benchmark at 1,000 simulated nodes (issue 6 targets):
//! full snapshot published and acknowledged (p99 ≤ 50 ms on loopback Mosquitto), `/metrics`
//! rendered (≤ 50 ms), process RSS (≤ 50 MB), idle MQTT traffic per node per interval.
//!
//! `cargo run --release -p pmesh-bridge --example bridge_bench [-- NODES ROUNDS]`
//! Starts its own Mosquitto (/usr/sbin/mosquitto, default settings) on a free port, or the
//! embedded broker when Mosquitto is missing (said in the output).
//! `PMESH_BENCH_BROKER_NODELAY=1` adds `set_tcp_nodelay true` to the broker's configuration.
//!
//! The snapshot figure is printed next to the broker's CPU time per snapshot (Mosquitto is
//! single-threaded: no client can be acknowledged faster than that) and next to a peer
//! measured in the same run, in alternating blocks: a stock rumqttc client publishing the very
//! same messages (topics under `peer/`) with the same settings. CPU times do not depend on
//! how busy the machine is; wall times do (2 shared cores here).

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

/// User + system CPU seconds of a process, from /proc (Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The peer: a stock rumqttc client (`AsyncClient` + `EventLoop::poll`) with the same settings
/// as the bridge (QoS 1, retained, 4,096 in flight, TCP_NODELAY), publishing the same messages
/// under `peer/` and waiting for every PUBACK.
struct Peer {
    client: rumqttc::AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    msgs: Vec<(String, Vec<u8>)>,
}

impl Peer {
    async fn connect(port: u16, msgs: &[(String, Vec<u8>)]) -> anyhow::Result<Self> {
        let mut o = rumqttc::MqttOptions::new("bench-peer", "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(4096);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 4096);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev
                    && tx.send(()).is_err()
                {
                    return;
                }
            }
        });
        let msgs = msgs
            .iter()
            .map(|(t, p)| (format!("peer/{t}"), p.clone()))
            .collect();
        Ok(Self { client, acks, msgs })
    }

    async fn round(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for (topic, payload) in &self.msgs {
            self.client
                .publish(
                    topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                    payload.clone(),
                )
                .await?;
        }
        for _ in 0..self.msgs.len() {
            self.acks
                .recv()
                .await
                .ok_or_else(|| anyhow::anyhow!("peer connection ended"))?;
        }
        Ok(t.elapsed())
    }
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
    let broker_nodelay = std::env::var("PMESH_BENCH_BROKER_NODELAY").is_ok_and(|v| v == "1");
    let broker = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        let conf = dir.join("mosquitto.conf");
        let mut text =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        if broker_nodelay {
            text.push_str("set_tcp_nodelay true\n");
        }
        std::fs::write(&conf, text)?;
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
        if broker_nodelay {
            "Mosquitto (loopback, set_tcp_nodelay true)"
        } else {
            "Mosquitto (loopback, default settings)"
        }
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

    // The snapshot as the broker holds it (retained), for the peer.
    let snapshot_msgs = {
        let mut o = rumqttc::MqttOptions::new("bench-capture", "127.0.0.1", port);
        o.set_max_packet_size(1 << 24, 1 << 24);
        let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
        c.subscribe("mesh/status/#", rumqttc::QoS::AtMostOnce)
            .await?;
        let mut got = std::collections::BTreeMap::new();
        let quiet = Duration::from_millis(500);
        while let Ok(Ok(ev)) = tokio::time::timeout(quiet, el.poll()).await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev
                && p.retain
            {
                got.insert(p.topic.clone(), p.payload.to_vec());
            }
        }
        let _ = c.disconnect().await;
        got.into_iter().collect::<Vec<_>>()
    };

    // 1. Full snapshot: nodes, topology, metrics, alerts and every node's state + availability,
    //    in blocks alternating with the peer.
    let broker_pid = child
        .as_ref()
        .map(|c: &std::process::Child| c.id().to_string());
    let broker_cpu = || broker_pid.as_deref().and_then(cpu_seconds).unwrap_or(0.0);
    let own_cpu = || cpu_seconds("self").unwrap_or(0.0);
    let mut peer = Peer::connect(port, &snapshot_msgs).await?;
    let (mut times, mut floor) = (Vec::new(), Vec::new());
    let (mut cpu_bridge, mut cpu_broker_bridge, mut cpu_broker_floor) = (0.0, 0.0, 0.0);
    let mut publishes = 0;
    let block = 10.min(rounds.max(1));
    while times.len() < rounds {
        let (c0, b0) = (own_cpu(), broker_cpu());
        for _ in 0..block {
            let t = Instant::now();
            publishes = bridge.publish_snapshot().await;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(publishes > 0, "snapshot not acknowledged");
        }
        let (c1, b1) = (own_cpu(), broker_cpu());
        for _ in 0..block {
            floor.push(peer.round().await?.as_secs_f64() * 1e3);
        }
        cpu_bridge += c1 - c0;
        cpu_broker_bridge += b1 - b0;
        cpu_broker_floor += broker_cpu() - b1;
    }
    let n = times.len() as f64;
    let (p50, p99, max) = (
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        pct(&mut times, 1.0),
    );
    let (f50, f99) = (pct(&mut floor, 0.5), pct(&mut floor, 0.99));

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
    println!(
        "  CPU per snapshot: broker {:.1} ms (the floor: Mosquitto is single-threaded), bridge process {:.1} ms",
        cpu_broker_bridge / n * 1e3,
        cpu_bridge / n * 1e3,
    );
    println!(
        "  peer, same {} publishes from a stock rumqttc client (EventLoop::poll, 4096 in flight, TCP_NODELAY): p50 {f50:.1} ms, p99 {f99:.1} ms, broker CPU {:.1} ms (bridge/peer p50 {:.2}x)",
        snapshot_msgs.len(),
        cpu_broker_floor / n * 1e3,
        p50 / f50
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
