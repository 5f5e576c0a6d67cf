//! An OTA sender built on the library API: joins a mesh as a node, offers a firmware file, and
//! prints every node's progress until each target has installed it.
//!
//! ```sh
//! # pmesh nodes receiving as role "sensor" (e.g. `pmesh node --ota-role sensor --ota-hardware ESP32`):
//! cargo run -p pmesh-examples --example ota_sender -- \
//!     --connect 127.0.0.1:5555 --file firmware.bin --role sensor --hardware ESP32
//! # options: --id N  --mode pmesh|classic  --version TEXT
//! ```
//!
//! The pieces: an [`Ota`] plugin on the node (this one receives nothing, so its sink and store
//! are disabled), [`MeshBuilder`] to run the node on its own thread, [`MeshHandle::call`] to make
//! the offer on that thread, and the node's events (`OtaEvent::NodeProgress`, reported by pmesh
//! targets; classic progress is inferred from the chunks nodes request). `pmesh ota push`
//! does the same with progress bars, a verdict and a summary ([`pmesh_net::ota::run_push`]).
//!
//! [`MeshHandle::call`]: pmesh_net::MeshHandle::call

use std::collections::BTreeMap;
use std::time::Duration;

use pmesh_net::firmware::{FileSink, FileSource, FileStore};
use pmesh_net::{MeshBuilder, MeshEvent, NetConfig};
use pmesh_node::{Config, Event, Node};
use pmesh_ota::{ApplyPolicy, ClassicReceiverKind, Offer, Ota, OtaConfig, OtaEvent, Phase};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    pmesh_examples::init_logging();
    let opts = pmesh_examples::options();
    let get = |k: &str| pmesh_examples::option(&opts, k);
    let id: u32 = get("id").map_or(Ok(4242), |s| s.parse())?;
    let file = get("file").ok_or_else(|| anyhow::anyhow!("give --file FIRMWARE"))?;
    let role = get("role").ok_or_else(|| anyhow::anyhow!("give --role ROLE"))?;
    let hardware = get("hardware").ok_or_else(|| anyhow::anyhow!("give --hardware HW"))?;
    let pmesh_mode = get("mode").as_deref() != Some("classic");
    let connect = pmesh_examples::options_named(&opts, "connect");
    anyhow::ensure!(!connect.is_empty(), "give --connect HOST:PORT");

    // This node distributes and relays; it installs nothing itself.
    let mut cfg = OtaConfig::new("", "");
    cfg.pmesh_receiver = false;
    cfg.classic_receiver = ClassicReceiverKind::Off;
    let ota = Ota::new(cfg, FileSink::disabled(), FileStore::disabled());
    let net = NetConfig {
        listen: None,
        connect,
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::new(Config::new(id), ota), net).spawn()?;
    let h = mesh.handle();
    let mut events = h.subscribe();

    // Wait until the mesh is joined.
    while h.snapshot().await?.nodes.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("joined the mesh as node {id}");

    let mut offer = Offer::new(role, hardware, FileSource::open(&file)?)
        .version(get("version").unwrap_or_default())
        // Targets keep serving slower neighbours until all have verified, then install together.
        .apply(ApplyPolicy::WhenAllVerified {
            delay: Duration::from_secs(2),
            min_targets: 1,
        });
    if pmesh_mode {
        offer = offer.pmesh();
    }
    let transfer = h
        .call(move |node, now| node.with_plugin(now, |ota, ctx| ota.offer(ctx, offer)))
        .await?
        .map_err(|refusal| anyhow::anyhow!("offer refused: {refusal}"))?;
    println!(
        "offered {file} as {} transfer {}",
        transfer.mode.name(),
        transfer.id
    );

    // Follow the rollout: the latest report of every node.
    let mut nodes: BTreeMap<u32, (u32, u32, Phase)> = BTreeMap::new();
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
        let MeshEvent::Node(Event::Plugin(e)) = &*ev else {
            continue;
        };
        match e {
            OtaEvent::NodeProgress {
                id,
                node,
                done,
                total,
                phase,
            } if *id == transfer => {
                nodes.insert(*node, (*done, *total, *phase));
                println!("node {node}: {done}/{total} chunks, {phase:?}");
                // pmesh targets report when they have installed (or failed).
                let finished = nodes
                    .values()
                    .all(|(_, _, p)| matches!(p, Phase::Applied | Phase::Failed(_)));
                if pmesh_mode && finished {
                    println!("every reporting target has finished");
                    break;
                }
            }
            OtaEvent::RolloutVerified {
                verified,
                failed,
                apply_at,
                ..
            } => {
                println!("{verified} verified, {failed} failed; install at mesh time {apply_at:?}")
            }
            OtaEvent::AnnouncesDone { .. } => {
                println!("the last classic announce went out");
                break;
            }
            _ => {}
        }
    }
    // Give the last frames a moment, then leave (the offer ends with this node).
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.shutdown().await;
    tokio::task::spawn_blocking(move || mesh.join()).await?;
    Ok(())
}
