//! A gateway node: joins a painlessMesh as its root and prints what the mesh sends, decoding
//! Alteriom sensor (200) and status (203/604) packages whether they come as native packages
//! or double-encoded in a broadcast's `msg`.
//!
//! ```sh
//! # accept ESP stations on port 5555 and dial the AP of one ESP node:
//! cargo run -p pmesh-examples --example gateway -- --connect 10.54.172.1:5555
//! # options: --id N  --listen ADDR|none  --connect HOST:PORT (repeatable)
//! ```

use pmesh_net::{MeshBuilder, MeshEvent, NetConfig};
use pmesh_node::{Config, Event, Node};
use pmesh_proto::UserMessage;
use pmesh_proto::packages::Package;

fn describe(p: &Package) -> String {
    match p {
        Package::Sensor(s) => format!(
            "sensor {}: {:.1} °C, {:.1} %RH, {:.1} hPa, battery {} %",
            s.sid, s.temp, s.hum, s.press, s.bat
        ),
        Package::EnhancedStatus(s) => format!(
            "status: up {} s, {} KB free, fw {}, sees {} nodes over {} links, rx {} tx {} dropped {}",
            s.uptime, s.mem, s.fw, s.nodes, s.conns, s.msg_rx, s.msg_tx, s.msg_drop
        ),
        other => format!("package type {}", other.header().ty),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    pmesh_examples::init_logging();
    let opts = pmesh_examples::options();
    let id: u32 = pmesh_examples::option(&opts, "id").map_or(Ok(1), |s| s.parse())?;
    let mut net = NetConfig {
        connect: pmesh_examples::options_named(&opts, "connect"),
        ..NetConfig::default()
    };
    match pmesh_examples::option(&opts, "listen").as_deref() {
        Some("none") => net.listen = None,
        Some(a) => net.listen = Some(a.parse()?),
        None => {}
    }
    let mut cfg = Config::new(id);
    cfg.root = true; // the gateway is the mesh's root, as painlessMesh bridges are
    let mesh = MeshBuilder::new(Node::without_plugins(cfg), net).spawn()?;
    let handle = mesh.handle();
    let mut events = handle.subscribe();
    println!(
        "gateway {id} listening on {:?}; Ctrl-C to stop",
        mesh.local_addr()
    );
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = tokio::signal::ctrl_c() => break,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("(missed {n} events)");
                continue;
            }
            Err(_) => break,
        };
        match &*ev {
            MeshEvent::Node(Event::Received {
                from,
                msg,
                broadcast,
            }) => {
                let m = UserMessage {
                    ty: if *broadcast { 8 } else { 9 },
                    dest: 0,
                    from: *from,
                    msg: msg.clone(),
                };
                match Package::from_user_message(&m, 255) {
                    Some(p) => println!("{from}: {}", describe(&p)),
                    None => println!("{from}: {:?}", String::from_utf8_lossy(msg)),
                }
            }
            MeshEvent::Node(Event::Package { envelope, .. }) => match Package::decode(envelope) {
                Some(p) => println!("{}: {}", envelope.from, describe(&p)),
                None => println!("{}: package type {}", envelope.from, envelope.ty),
            },
            MeshEvent::Node(Event::ChangedConnections) => {
                let s = handle.snapshot().await?;
                println!("mesh now: {} other nodes {:?}", s.nodes.len(), s.nodes);
            }
            _ => {}
        }
    }
    handle.shutdown().await;
    tokio::task::spawn_blocking(move || mesh.join()).await?;
    Ok(())
}
