//! `pmesh bench relay`: relay throughput through a chain of five real processes on 127.0.0.1,
//! the memory of an idle node with ten links, and the CPU of nodes relaying a pmesh OTA
//! rollout at full speed.
//!
//! Chain: `source (1) ─ pmesh node (2) ─ pmesh node (3) ─ pmesh node (4) ─ sink (5)`, four
//! TCP hops. The source and the sink are this binary in a hidden worker mode running the
//! same runtime (`pmesh_net`) with a load generator and a checker on top; the three relays in
//! the middle are plain `pmesh node` processes. The source sends SINGLE messages to node 5 as
//! fast as its send queue drains; the sink counts only messages whose payload is exactly the
//! one sent (length, sequence number and content), once each.
//!
//! OTA: the same chain, but the source distributes a real compiled binary (a prefix of this
//! executable) with the pmesh protocol and the sink is a target holding the image in memory
//! (so the disk does not bound the rate); the three `pmesh node` relays have no OTA role and
//! relay the rollout (cut-through, a window of chunks per link). The sink checks the image's
//! SHA-256 and reports when it has every chunk.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use pmesh_net::{MeshBuilder, MeshEvent, NetConfig};
use pmesh_node::{Config, Event, Node};
use serde_json::{Value, json};

/// The reference C++ node's figures on a 2-core machine (issue 5).
const REF_MSGS_100B: f64 = 5_264.0;
const REF_MBPS_1K: f64 = 4.84;
const REF_PRIVATE_IDLE_KB: f64 = 216.0;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the source sends, per payload size.
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Payload sizes in bytes (the `msg` of each SINGLE), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    sizes: Vec<usize>,
    /// Links of the idle node whose memory is measured.
    #[arg(long, default_value_t = 10)]
    idle_links: usize,
    /// What to measure, comma-separated: `messages`, `idle`, `ota`.
    #[arg(long, value_delimiter = ',', default_value = "messages,idle,ota")]
    parts: Vec<String>,
    /// OTA: image bytes, a prefix of this executable [default: all of it, at most 32 MiB].
    #[arg(long)]
    ota_size: Option<usize>,
    /// OTA: chunk sizes in bytes, comma-separated (one run each).
    #[arg(long, value_delimiter = ',', default_value = "4096,16384")]
    ota_chunks: Vec<u32>,
    /// OTA: compression of each run, comma-separated: `none`, `deflate` (pmesh `--compressed`).
    #[arg(long, value_delimiter = ',', default_value = "none,deflate")]
    ota_compression: Vec<String>,
    /// (internal) the OTA workers deflate chunks.
    #[arg(long, hide = true)]
    ota_compressed: bool,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// (internal) run as the chain's `source` or `sink`.
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// (internal) worker's listen address (source).
    #[arg(long, hide = true)]
    worker_listen: Option<String>,
    /// (internal) worker's uplink (sink).
    #[arg(long, hide = true)]
    worker_connect: Option<String>,
    /// (internal) payload size of a worker.
    #[arg(long, hide = true, default_value_t = 100)]
    worker_size: usize,
    /// (internal) image file of the OTA workers.
    #[arg(long, hide = true)]
    worker_image: Option<std::path::PathBuf>,
}

const SOURCE_ID: u32 = 1;
const SINK_ID: u32 = 5;
/// Messages queued per call into the source's node.
const BATCH: usize = 64;

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let duration = crate::cmd::node::parse_duration(&args.duration)?;
    match args.worker.as_deref() {
        Some("source") => return source(&args, duration),
        Some("sink") => return sink(&args, duration),
        Some("ota-source") => return ota_source(&args),
        Some("ota-sink") => return ota_sink(&args),
        Some(other) => bail!("unknown worker '{other}'"),
        None => {}
    }
    for p in &args.parts {
        if !matches!(p.as_str(), "messages" | "idle" | "ota") {
            bail!("unknown part '{p}' (messages, idle, ota)");
        }
    }
    let part = |p: &str| args.parts.iter().any(|x| x == p);
    for &s in &args.sizes {
        if s < 16 {
            bail!("payload sizes must be at least 16 bytes");
        }
    }
    let mut rows = Vec::new();
    if part("messages") {
        for &size in &args.sizes {
            eprintln!("relay: {size}-byte payloads for {duration:?} through 4 hops ...");
            rows.push(chain_run(size, duration)?);
        }
    }
    let idle = if part("idle") {
        eprintln!("idle: one pmesh node with {} links ...", args.idle_links);
        Some(idle_memory(args.idle_links)?)
    } else {
        None
    };
    let mut ota_rows = Vec::new();
    if part("ota") {
        let image = ota_image(args.ota_size)?;
        for c in &args.ota_compression {
            let compressed = match c.as_str() {
                "none" => false,
                "deflate" => true,
                other => bail!("unknown --ota-compression '{other}' (none, deflate)"),
            };
            for &chunk in &args.ota_chunks {
                eprintln!(
                    "ota: pmesh rollout of {} bytes in {chunk}-byte chunks ({c}) through 3 relays ...",
                    image.1
                );
                ota_rows.push(ota_run(&image.0, chunk, compressed)?);
            }
        }
    }
    if args.json {
        for r in rows.iter().chain(&idle).chain(&ota_rows) {
            println!("{r}");
        }
    } else {
        print_table(&rows, idle.as_ref(), &ota_rows);
    }
    let corrupt: u64 = rows
        .iter()
        .map(|r| r["corrupt"].as_u64().unwrap_or(0))
        .sum();
    let ota_ok = ota_rows.iter().all(|r| r["image_ok"] == json!(true));
    Ok(if corrupt == 0 && ota_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(rows: &[Value], idle: Option<&Value>, ota: &[Value]) {
    if !rows.is_empty() {
        print_messages(rows);
    }
    if let Some(idle) = idle {
        println!();
        println!(
            "Idle `pmesh node` with {} links: private {} kB (dirty {} kB + clean {} kB), RSS {} kB; reference: {REF_PRIVATE_IDLE_KB} kB private",
            idle["links"],
            idle["private_kb"],
            idle["private_dirty_kb"],
            idle["private_clean_kb"],
            idle["rss_kb"]
        );
    }
    if !ota.is_empty() {
        print_ota(ota);
    }
}

fn print_ota(rows: &[Value]) {
    println!();
    println!(
        "pmesh OTA relayed through 3 `pmesh node` relays (4 hops); the sink holds the image in memory"
    );
    println!();
    println!(
        "{:>9}  {:>6}  {:>10}  {:>8}  {:>10}  {:>9}  {:>12}  {:>18}  {:>8}",
        "image",
        "chunk",
        "compressed",
        "seconds",
        "image MB/s",
        "wire MB/s",
        "relay CPU %",
        "CPU s per image MB",
        "image ok"
    );
    for r in rows {
        let cpu = r["relay_cpu_percent"]
            .as_array()
            .map_or(String::new(), |a| {
                a.iter()
                    .map(|v| format!("{:.0}", v.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join("/")
            });
        println!(
            "{:>8}B  {:>6}  {:>10}  {:>8.2}  {:>10.2}  {:>9.2}  {:>12}  {:>18.4}  {:>8}",
            r["image_bytes"].as_u64().unwrap_or(0),
            r["chunk_bytes"].as_u64().unwrap_or(0),
            r["compressed"].as_bool().unwrap_or(false),
            r["seconds"].as_f64().unwrap_or(0.0),
            r["image_mb_per_s"].as_f64().unwrap_or(0.0),
            r["wire_mb_per_s"].as_f64().unwrap_or(0.0),
            cpu,
            r["relay_cpu_s_per_image_mb"].as_f64().unwrap_or(0.0),
            r["image_ok"].as_bool().unwrap_or(false),
        );
    }
}

fn print_messages(rows: &[Value]) {
    println!(
        "Relay through a chain of 5 processes (4 hops) on 127.0.0.1; only intact messages count"
    );
    println!();
    println!(
        "{:>8}  {:>9}  {:>9}  {:>10}  {:>8}  {:>9}  {:>9}  {:>12}  {:>8}",
        "payload",
        "sent",
        "intact",
        "msg/s",
        "MB/s",
        "corrupt",
        "missing",
        "relay CPU %",
        "reference"
    );
    for r in rows {
        let size = r["payload_bytes"].as_u64().unwrap_or(0);
        let reference = match size {
            100 => format!("{REF_MSGS_100B} msg/s"),
            1024 => format!("{REF_MBPS_1K} MB/s"),
            _ => "-".into(),
        };
        let u = |k: &str| r[k].as_u64().unwrap_or(0);
        let cpu = r["relay_cpu_percent"]
            .as_array()
            .map_or(String::new(), |a| {
                a.iter()
                    .map(|v| format!("{:.0}", v.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join("/")
            });
        println!(
            "{:>7}B  {:>9}  {:>9}  {:>10.0}  {:>8.2}  {:>9}  {:>9}  {:>12}  {:>8}",
            size,
            u("sent"),
            u("intact"),
            r["msgs_per_s"].as_f64().unwrap_or(0.0),
            r["mb_per_s"].as_f64().unwrap_or(0.0),
            u("corrupt"),
            u("missing"),
            cpu,
            reference
        );
    }
    for r in rows {
        let size = r["payload_bytes"].as_u64().unwrap_or(0);
        if size == 100 {
            println!(
                "  100 B: {:.1}x the reference's 5,264 msg/s",
                r["msgs_per_s"].as_f64().unwrap_or(0.0) / REF_MSGS_100B
            );
        }
        if size == 1024 {
            println!(
                "  1 KiB: {:.1}x the reference's 4.84 MB/s",
                r["mb_per_s"].as_f64().unwrap_or(0.0) / REF_MBPS_1K
            );
        }
    }
}

/// Kills a child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the pmesh binary")
}

fn relay_node(id: u32, listen: u16, connect: u16) -> anyhow::Result<Proc> {
    let child = Command::new(exe()?)
        .args([
            "node",
            "--id",
            &id.to_string(),
            "--control",
            "none",
            "--log",
            "error",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--connect",
            &format!("127.0.0.1:{connect}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start a relay node")?;
    Ok(Proc(child))
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU time (user + system) of every thread of a process, in nanoseconds, from
/// `/proc/PID/task/*/schedstat` (scheduler accounting; finer than clock ticks, which are too
/// coarse for transfers that last a second). Threads that ended are not counted: the relays'
/// threads live as long as the process.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Reads JSON lines from a worker's stdout on a thread.
fn json_lines(child: &mut Child) -> anyhow::Result<std::sync::mpsc::Receiver<Value>> {
    let out = child.stdout.take().context("worker stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}

fn chain_run(size: usize, duration: Duration) -> anyhow::Result<Value> {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let dur = format!("{}ms", duration.as_millis());
    let mut source = Proc(
        Command::new(exe()?)
            .args(["bench", "relay", "--worker", "source", "--duration", &dur])
            .args([
                "--worker-listen",
                &format!("127.0.0.1:{}", ports[0]),
                "--worker-size",
                &size.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the source")?,
    );
    let source_out = json_lines(&mut source.0)?;
    let relays: Vec<Proc> = (0..3)
        .map(|i| relay_node(2 + i as u32, ports[i + 1], ports[i]))
        .collect::<anyhow::Result<_>>()?;
    let mut sink = Proc(
        Command::new(exe()?)
            .args(["bench", "relay", "--worker", "sink", "--duration", &dur])
            .args([
                "--worker-connect",
                &format!("127.0.0.1:{}", ports[3]),
                "--worker-size",
                &size.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the sink")?,
    );
    let sink_out = json_lines(&mut sink.0)?;
    let cpu_before: Vec<u64> = relays.iter().map(|r| cpu_ticks(r.0.id())).collect();
    let sent = source_out
        .recv_timeout(duration + Duration::from_secs(60))
        .context("the source did not report")?;
    if let Some(e) = sent.get("error") {
        bail!("source: {e}");
    }
    let got = sink_out
        .recv_timeout(Duration::from_secs(60))
        .context("the sink did not report")?;
    let cpu_after: Vec<u64> = relays.iter().map(|r| cpu_ticks(r.0.id())).collect();
    drop((source, relays, sink));

    let n_sent = sent["sent"].as_u64().unwrap_or(0);
    let intact = got["intact"].as_u64().unwrap_or(0);
    let start_ns = sent["start_ns"].as_u64().unwrap_or(0);
    let last_ns = got["last_ns"].as_u64().unwrap_or(0);
    let secs = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let msgs_per_s = if secs > 0.0 {
        intact as f64 / secs
    } else {
        0.0
    };
    // The relays are idle before and after the transfer: their CPU time over its duration.
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let relay_cpu: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| (a - b) as f64 / ticks_per_s / secs.max(1e-9) * 100.0)
        .collect();
    Ok(json!({
        "bench": "relay",
        "hops": 4,
        "processes": 5,
        "payload_bytes": size,
        "sent": n_sent,
        "intact": intact,
        "corrupt": got["corrupt"],
        "duplicates": got["duplicates"],
        "missing": n_sent.saturating_sub(intact),
        "seconds": secs,
        "msgs_per_s": msgs_per_s,
        "mb_per_s": msgs_per_s * size as f64 / 1e6,
        "relay_cpu_percent": relay_cpu,
        "reference_msgs_per_s": if size == 100 { json!(REF_MSGS_100B) } else { Value::Null },
        "reference_mb_per_s": if size == 1024 { json!(REF_MBPS_1K) } else { Value::Null },
    }))
}

/// Memory of an idle `pmesh node` with `links` neighbours (in-process nodes of this process).
fn idle_memory(links: usize) -> anyhow::Result<Value> {
    let port = free_port()?;
    let node = Proc(
        Command::new(exe()?)
            .args(["node", "--id", "100", "--control", "none", "--log", "warn"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the idle node")?,
    );
    let peers: Vec<_> = (0..links)
        .map(|i| {
            let cfg = NetConfig {
                listen: None,
                connect: vec![format!("127.0.0.1:{port}")],
                ..NetConfig::default()
            };
            MeshBuilder::new(Node::without_plugins(Config::new(1000 + i as u32)), cfg).spawn()
        })
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let watcher = peers
        .first()
        .map(pmesh_net::Mesh::handle)
        .context("at least one link")?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let n = rt.block_on(watcher.snapshot())?.nodes.len();
        if n == links {
            break;
        }
        if Instant::now() > until {
            bail!("the idle node's links did not all sync ({n} of {links})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the first node-sync and time-sync rounds (10 s on the AP side) pass: steady state.
    std::thread::sleep(Duration::from_secs(12));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", node.0.id()))
        .context("smaps_rollup")?;
    let field = |k: &str| -> u64 {
        smaps
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (dirty, clean, rss) = (
        field("Private_Dirty:"),
        field("Private_Clean:"),
        field("Rss:"),
    );
    drop(peers);
    drop(node);
    Ok(json!({
        "bench": "idle_memory",
        "links": links,
        "private_kb": dirty + clean,
        "private_dirty_kb": dirty,
        "private_clean_kb": clean,
        "rss_kb": rss,
        "reference_private_kb": REF_PRIVATE_IDLE_KB,
    }))
}

// --- workers -------------------------------------------------------------------------------

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The payload of message `seq`: its sequence number, then letters that depend on it.
fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{seq:012}:").into_bytes();
    p.extend((p.len()..size).map(|i| b'a' + ((seq as usize + i) % 26) as u8));
    p
}

/// The sequence number of an intact payload of `size` bytes.
fn check(msg: &[u8], size: usize) -> Option<u64> {
    if msg.len() != size || msg.get(12) != Some(&b':') {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&msg[..12]).ok()?.parse().ok()?;
    (payload(seq, size) == msg).then_some(seq)
}

fn report(v: Value) {
    println!("{v}");
}

fn source(args: &Args, duration: Duration) -> anyhow::Result<ExitCode> {
    let listen = args
        .worker_listen
        .as_deref()
        .context("--worker-listen")?
        .parse()?;
    let cfg = NetConfig {
        listen: Some(listen),
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::without_plugins(Config::new(SOURCE_ID)), cfg).spawn()?;
    let h = mesh.handle();
    let size = args.worker_size;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(60);
        while !h.call(|n, _| n.is_connected(SINK_ID)).await? {
            if Instant::now() > until {
                report(json!({"error": "node 5 never became reachable"}));
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start_ns = unix_ns();
        let start = Instant::now();
        let mut seq = 0u64;
        while start.elapsed() < duration {
            let first = seq;
            let sent = h
                .call(move |n, now| {
                    let mut k = 0;
                    for s in first..first + BATCH as u64 {
                        if n.send_single(now, SINK_ID, payload(s, size)).is_err() {
                            break;
                        }
                        k += 1;
                    }
                    k
                })
                .await?;
            seq += sent;
            if sent < BATCH as u64 {
                report(json!({"error": "lost the route to node 5 while sending"}));
                return Ok(ExitCode::FAILURE);
            }
        }
        report(json!({"sent": seq, "start_ns": start_ns, "end_ns": unix_ns()}));
        // Stay up so the chain can drain; the orchestrator ends this process.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

#[derive(Default)]
struct Tally {
    seen: Vec<u64>,
    intact: u64,
    corrupt: u64,
    duplicates: u64,
}

fn sink(args: &Args, duration: Duration) -> anyhow::Result<ExitCode> {
    let connect = args.worker_connect.clone().context("--worker-connect")?;
    let size = args.worker_size;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let last_ns = Arc::new(AtomicU64::new(0));
    let (t, l) = (tally.clone(), last_ns.clone());
    let cfg = NetConfig {
        listen: None,
        connect: vec![connect],
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::without_plugins(Config::new(SINK_ID)), cfg)
        .on_event(move |ev| {
            if let MeshEvent::Node(Event::Received { msg, .. }) = ev {
                let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match check(msg, size) {
                    Some(seq) => {
                        let (word, bit) = ((seq / 64) as usize, seq % 64);
                        if t.seen.len() <= word {
                            t.seen.resize(word + 1, 0);
                        }
                        if t.seen[word] & (1 << bit) != 0 {
                            t.duplicates += 1;
                        } else {
                            t.seen[word] |= 1 << bit;
                            t.intact += 1;
                        }
                    }
                    None => t.corrupt += 1,
                }
                l.store(unix_ns(), Ordering::Relaxed);
            }
        })
        .spawn()?;
    let h = mesh.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Wait for the first message, then until nothing has arrived for 2 s.
    let deadline = Instant::now() + duration + Duration::from_secs(120);
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let count = {
            let t = tally
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.intact + t.corrupt + t.duplicates
        };
        if count != last_count {
            last_count = count;
            quiet_since = Instant::now();
        } else if count > 0 && quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let stats = rt.block_on(h.snapshot())?;
    let t = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report(json!({
        "intact": t.intact,
        // Frames the sink's node could not parse are corrupt messages too.
        "corrupt": t.corrupt + stats.node_stats.dropped_invalid + stats.node_stats.dropped_oversized,
        "duplicates": t.duplicates,
        "last_ns": last_ns.load(Ordering::Relaxed),
    }));
    Ok(ExitCode::SUCCESS)
}

// --- OTA relay ---------------------------------------------------------------------------

/// Role and hardware of the benchmark's OTA target.
const OTA_ROLE: &str = "bench";

/// A temporary file holding the first `size` bytes of this executable (a real compiled
/// binary, so compression is honest); removed on drop.
struct TempImage(std::path::PathBuf, usize);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ota_image(size: Option<usize>) -> anyhow::Result<TempImage> {
    let exe = std::fs::read(exe()?).context("cannot read the pmesh binary")?;
    let size = size.unwrap_or(exe.len().min(32 << 20));
    if size == 0 || exe.len() < size {
        bail!(
            "--ota-size {size} must be between 1 and the size of this executable ({} bytes)",
            exe.len()
        );
    }
    let path = std::env::temp_dir().join(format!("pmesh-bench-ota-{}.bin", std::process::id()));
    std::fs::write(&path, &exe[..size]).context("cannot write the OTA image")?;
    Ok(TempImage(path, size))
}

fn ota_run(image: &std::path::Path, chunk: u32, compressed: bool) -> anyhow::Result<Value> {
    let image_bytes = std::fs::metadata(image)?.len();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let worker = |kind: &str, addr_flag: &str, port: u16| -> anyhow::Result<Proc> {
        let mut c = Command::new(exe()?);
        c.args(["bench", "relay", "--worker", kind])
            .args([addr_flag, &format!("127.0.0.1:{port}")])
            .arg("--worker-image")
            .arg(image)
            .args(["--ota-chunks", &chunk.to_string()]);
        if compressed {
            c.arg("--ota-compressed");
        }
        Ok(Proc(
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start the {kind} worker"))?,
        ))
    };
    let mut source = worker("ota-source", "--worker-listen", ports[0])?;
    let source_out = json_lines(&mut source.0)?;
    let relays: Vec<Proc> = (0..3)
        .map(|i| relay_node(2 + i as u32, ports[i + 1], ports[i]))
        .collect::<anyhow::Result<_>>()?;
    let mut sink = worker("ota-sink", "--worker-connect", ports[3])?;
    let sink_out = json_lines(&mut sink.0)?;
    let ready = source_out
        .recv_timeout(Duration::from_secs(60))
        .context("the OTA source did not get ready")?;
    if let Some(e) = ready.get("error") {
        bail!("OTA source: {e}");
    }
    // The mesh is formed and idle: measure from here, then let the source offer.
    let cpu_before: Vec<u64> = relays.iter().map(|r| cpu_ns(r.0.id())).collect();
    {
        use std::io::Write as _;
        let stdin = source.0.stdin.as_mut().context("source stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    let offered = source_out
        .recv_timeout(Duration::from_secs(60))
        .context("the OTA source did not report")?;
    if let Some(e) = offered.get("error") {
        bail!("OTA source: {e}");
    }
    let got = sink_out
        .recv_timeout(Duration::from_secs(600))
        .context("the OTA sink did not report")?;
    let cpu_after: Vec<u64> = relays.iter().map(|r| cpu_ns(r.0.id())).collect();
    drop((source, relays, sink));
    if let Some(e) = got.get("error") {
        bail!("OTA sink: {e}");
    }
    let start_ns = offered["offered_ns"].as_u64().unwrap_or(0);
    let done_ns = got["done_ns"].as_u64().unwrap_or(0);
    let secs = done_ns.saturating_sub(start_ns) as f64 / 1e9;
    // The relays idle before the offer and after the last chunk: their CPU over the rollout.
    let cpu_s: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / 1e9)
        .collect();
    let mb = image_bytes as f64 / 1e6;
    let wire = got["bytes_in"].as_u64().unwrap_or(0);
    Ok(json!({
        "bench": "ota_relay",
        "hops": 4,
        "relays": 3,
        "image_bytes": image_bytes,
        "chunk_bytes": chunk,
        "compressed": compressed,
        "seconds": secs,
        "image_mb_per_s": if secs > 0.0 { mb / secs } else { 0.0 },
        "sink_bytes_in": wire,
        "wire_mb_per_s": if secs > 0.0 { wire as f64 / 1e6 / secs } else { 0.0 },
        "relay_cpu_percent": cpu_s.iter().map(|c| c / secs.max(1e-9) * 100.0).collect::<Vec<_>>(),
        "relay_cpu_s_per_image_mb": cpu_s.iter().sum::<f64>() / cpu_s.len().max(1) as f64 / mb.max(1e-9),
        "image_ok": got["image_ok"],
    }))
}

/// The distributor: offers the image once the sink is reachable.
fn ota_source(args: &Args) -> anyhow::Result<ExitCode> {
    use pmesh_net::firmware::{FileSink, FileSource, FileStore};
    use pmesh_net::ota::NodeOta;
    use pmesh_ota::{ApplyPolicy, Offer, Ota, OtaConfig};
    let listen = args
        .worker_listen
        .as_deref()
        .context("--worker-listen")?
        .parse()?;
    let image = args.worker_image.clone().context("--worker-image")?;
    let chunk = args.ota_chunks.first().copied().unwrap_or(0);
    let compressed = args.ota_compressed;
    let mut cfg = OtaConfig::new("", "");
    cfg.pmesh_receiver = false;
    cfg.classic_receiver = pmesh_ota::ClassicReceiverKind::Off;
    let ota = NodeOta::new(Ota::new(cfg, FileSink::disabled(), FileStore::disabled()));
    let net = NetConfig {
        listen: Some(listen),
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::new(Config::new(SOURCE_ID), ota), net).spawn()?;
    let h = mesh.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(60);
        while !h.call(|n, _| n.is_connected(SINK_ID)).await? {
            if Instant::now() > until {
                report(json!({"error": "node 5 never became reachable"}));
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let every relay say HELLO, so the rollout runs hop by hop from the first chunk.
        tokio::time::sleep(Duration::from_millis(500)).await;
        report(json!({"ready": true}));
        // The orchestrator reads the relays' CPU counters, then says go.
        let mut line = String::new();
        tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
        let source = FileSource::open(&image)?;
        let offer = Offer::new(OTA_ROLE, OTA_ROLE, source)
            .pmesh()
            .chunk_size(chunk)
            .compressed(compressed)
            .apply(ApplyPolicy::OnVerify);
        let offered_ns = unix_ns();
        let res = h
            .call(move |n, now| {
                n.with_plugin(now, |p, ctx| p.ota_mut().offer(ctx, offer))
                    .map(|_| ())
            })
            .await?;
        match res {
            Ok(()) => report(json!({"offered_ns": offered_ns})),
            Err(e) => {
                report(json!({"error": format!("offer refused: {e}")}));
                return Ok(ExitCode::FAILURE);
            }
        }
        // Stay up so the rollout completes; the orchestrator ends this process.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// The target: holds the image in memory, reports when it has it all and whether it is the
/// source's image byte for byte.
fn ota_sink(args: &Args) -> anyhow::Result<ExitCode> {
    use pmesh_net::ota::NodeOta;
    use pmesh_ota::{MemorySink, MemoryStore, Ota, OtaConfig, OtaEvent};
    let connect = args.worker_connect.clone().context("--worker-connect")?;
    let image = std::fs::read(args.worker_image.as_ref().context("--worker-image")?)?;
    let net = NetConfig {
        listen: None,
        connect: vec![connect],
        ..NetConfig::default()
    };
    // 0: waiting; the time of the verdict otherwise. Verdict: 1 verified, 2 failed.
    let done = Arc::new(AtomicU64::new(0));
    let verdict = Arc::new(AtomicU64::new(0));
    let (d, v) = (done.clone(), verdict.clone());
    let mesh = MeshBuilder::with_node_fn(SINK_ID, net, || {
        let ota = Ota::new(
            OtaConfig::new(OTA_ROLE, OTA_ROLE),
            MemorySink::new(1 << 30),
            MemoryStore::new(),
        );
        Node::new(Config::new(SINK_ID), NodeOta::new(ota))
    })
    .on_event(move |ev| {
        if let MeshEvent::Node(Event::Plugin(e)) = ev {
            let code = match e {
                OtaEvent::Installed { .. } => 1,
                OtaEvent::Failed { .. } | OtaEvent::Refused { .. } => 2,
                _ => return,
            };
            if d.load(Ordering::Relaxed) == 0 {
                v.store(code, Ordering::Relaxed);
                d.store(unix_ns(), Ordering::Relaxed);
            }
        }
    })
    .spawn()?;
    let h = mesh.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            report(json!({"error": "the image did not arrive within 600 s"}));
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let booted = rt.block_on(h.call(|n, _| n.plugin().ota().sink().booted()))?;
    let stats = rt.block_on(h.snapshot())?;
    report(json!({
        "done_ns": done.load(Ordering::Relaxed),
        "verdict": if verdict.load(Ordering::Relaxed) == 1 { "installed" } else { "failed" },
        "image_ok": booted.as_deref() == Some(image.as_slice()),
        "bytes_in": stats.net_stats.bytes_in,
    }));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check_out_and_damage_is_caught() {
        for size in [16, 100, 1024] {
            let p = payload(123_456, size);
            assert_eq!(p.len(), size);
            assert_eq!(check(&p, size), Some(123_456));
            let mut bad = p.clone();
            bad[size - 1] ^= 1;
            assert_eq!(check(&bad, size), None, "flipped byte");
            assert_eq!(check(&p[..size - 1], size), None, "truncated");
            let mut spliced = payload(7, size);
            spliced[size / 2..].copy_from_slice(&p[size / 2..]);
            assert_eq!(check(&spliced, size), None, "spliced");
        }
    }
}
