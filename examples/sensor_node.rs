//! A sensor node: joins the mesh and broadcasts what an Alteriom ESP node sends — a
//! SensorPackage (200) every `--every` seconds and an EnhancedStatusPackage (604) every 30 s,
//! the status filled with this node's real counters.
//!
//! ```sh
//! cargo run -p pmesh-examples --example sensor_node -- --id 42 --connect 127.0.0.1:5555
//! # options: --id N  --connect HOST:PORT (repeatable)  --listen ADDR|none  --every SECONDS
//! ```

use std::time::{Duration, Instant};

use pmesh_net::{MeshBuilder, NetConfig};
use pmesh_node::{Config, Node};
use pmesh_proto::Routing;
use pmesh_proto::packages::{EnhancedStatusPackage, Generation, SensorPackage};

/// This host's temperature in °C if the kernel exposes one, else a plausible made-up value.
fn temperature(tick: u32) -> f64 {
    std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map_or(21.0 + f64::from(tick % 10) / 10.0, |milli| milli / 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    pmesh_examples::init_logging();
    let opts = pmesh_examples::options();
    let id: u32 = pmesh_examples::option(&opts, "id").map_or(Ok(42), |s| s.parse())?;
    let every: u64 = pmesh_examples::option(&opts, "every").map_or(Ok(10), |s| s.parse())?;
    let connect = pmesh_examples::options_named(&opts, "connect");
    let listen = match pmesh_examples::option(&opts, "listen").as_deref() {
        None | Some("none") => None,
        Some(a) => Some(a.parse()?),
    };
    anyhow::ensure!(
        listen.is_some() || !connect.is_empty(),
        "give --connect HOST:PORT (or --listen ADDR)"
    );
    let net = NetConfig {
        listen,
        connect,
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::without_plugins(Config::new(id)), net).spawn()?;
    let h = mesh.handle();
    let start = Instant::now();
    let mut tick = 0u32;
    let mut ticker = tokio::time::interval(Duration::from_secs(every.max(1)));
    let mut last_status = None::<Instant>;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        tick += 1;
        let s = h.snapshot().await?;
        if s.nodes.is_empty() {
            println!("not connected yet");
            continue;
        }
        let mut p = SensorPackage::new(id);
        p.sid = id;
        p.temp = temperature(tick);
        p.hum = 45.0 + f64::from(tick % 7);
        p.press = 1013.25;
        p.bat = 100;
        p.ts = s.mesh_time / 1_000_000; // painlessMesh nodes without NTP stamp mesh seconds
        match h.send_frame(Routing::Broadcast, 0, p.to_json()).await {
            Ok(()) => println!(
                "sent sensor reading {:.1} °C to {} nodes",
                p.temp,
                s.nodes.len()
            ),
            Err(e) => println!("send failed: {e}"),
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            last_status = Some(Instant::now());
            let mut st = EnhancedStatusPackage::new(Generation::Head, id);
            st.uptime = start.elapsed().as_secs() as u32;
            st.fw = "pmesh-example".into();
            st.nodes = s.nodes.len().min(u16::MAX as usize) as u16;
            st.conns = s.links.len().min(255) as u8;
            st.msg_rx = s.node_stats.frames_in as u32;
            st.msg_tx = s.node_stats.frames_out as u32;
            st.msg_drop = (s.node_stats.dropped_invalid + s.node_stats.dropped_no_route) as u32;
            if let Err(e) = h.send_frame(Routing::Broadcast, 0, st.to_json()).await {
                println!("status send failed: {e}");
            }
        }
    }
    h.shutdown().await;
    tokio::task::spawn_blocking(move || mesh.join()).await?;
    Ok(())
}
