//! Quick, untimed-in-CI measurement of the JSON reader on the hot paths: the relay path
//! (`Envelope::parse` of a small SINGLE/BROADCAST frame) and the simulator's NODE_SYNC of a
//! 1,000-node tree (`Envelope::parse` + `decode` to a NodeTree), next to serde_json parsing the
//! same bytes into its own `Value` (the peer it replaces) in the same run.
//!
//! Run: `cargo run --release -p pmesh-proto --example json_speed`
//! (`JSON_SPEED_ONLY=direct` or `=general` runs 1,000 NODE_SYNC decodes of one kind only, for
//! instruction counts under `valgrind --tool=cachegrind`).

use std::hint::black_box;
use std::time::Instant;

use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope, Message, NodeSync, NodeTree};

/// A deterministic tree of `n` nodes: each node gets up to 4 children, breadth first.
fn tree(n: u32) -> NodeTree {
    fn build(id: &mut u32, n: u32, depth: u32) -> NodeTree {
        let mut t = NodeTree::leaf(3_000_000_000u32.wrapping_add(id.wrapping_mul(2_654_435_761)));
        *id += 1;
        let fanout = if depth < 2 { 4 } else { 3 };
        for _ in 0..fanout {
            if *id >= n || depth > 12 {
                break;
            }
            t.subs.push(build(id, n, depth + 1));
        }
        t
    }
    // Fill level by level through repeated passes until n nodes exist.
    let mut id = 0;
    let mut root = build(&mut id, n, 0);
    while root.size() < n as usize {
        let mut next = 0;
        let extra = build(&mut next, (n as usize - root.size()) as u32, 1);
        root.subs.push(extra);
    }
    root
}

/// Best time per call of `f` over 7 rounds (the minimum is the figure least disturbed by
/// other load on the machine).
fn best<T>(iters: u32, mut f: impl FnMut() -> T) -> f64 {
    for _ in 0..iters / 10 + 1 {
        black_box(f());
    }
    (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            start.elapsed().as_secs_f64() / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(label: &str, bytes: usize, per: f64) {
    println!(
        "  {label:<44} {:>9.2} µs/frame  {:>7.1} MB/s",
        per * 1e6,
        bytes as f64 / per / 1e6
    );
}

/// Times pmesh and its peer one after the other and prints both and their ratio.
fn compare<A, B>(
    bytes: usize,
    iters: u32,
    ours: (&str, impl FnMut() -> A),
    peer: (&str, impl FnMut() -> B),
) {
    let (a, b) = (best(iters, ours.1), best(iters, peer.1));
    report(ours.0, bytes, a);
    report(peer.0, bytes, b);
    println!("  ratio pmesh/serde_json: {:.2}", a / b);
}

fn main() {
    let t = tree(1000);
    let sync = NodeSync {
        ty: 6,
        dest: 1,
        from: t.node_id,
        tree: t,
    };
    let big = sync.to_json();
    if let Ok(only) = std::env::var("JSON_SPEED_ONLY") {
        let mut nodes = 0;
        for _ in 0..1000 {
            nodes += match only.as_str() {
                "direct" => NodeSync::parse_frame(&big, DEFAULT_MAX_DEPTH)
                    .unwrap()
                    .tree
                    .size(),
                _ => match Envelope::parse(&big, DEFAULT_MAX_DEPTH).unwrap().decode() {
                    Message::NodeSyncReply(s) => s.tree.size(),
                    _ => unreachable!(),
                },
            };
        }
        println!("{nodes} nodes decoded");
        return;
    }
    let small = br#"{"type":9,"dest":2428398258,"from":3907768579,"msg":"{\"from\":12345,\"routing\":2,\"type\":200,\"temp\":23.5,\"hum\":67.2,\"press\":1013.25,\"sid\":42,\"ts\":1609459200,\"bat\":85,\"message_type\":200}"}"#;
    let ota = {
        let chunk = vec![0x5au8; 1024];
        let b64 = pmesh_proto::base64::encode(&chunk);
        let mut f = br#"{"from":3907768579,"routing":1,"type":12,"md5":"0c6b3d4ea9f3e8a0c4d2b1a1e5f0d9c7","hardware":"ESP32","role":"sensor","noPart":150,"broadcasted":false,"dest":2428398258,"partNo":0,"data":""#.to_vec();
        f.extend_from_slice(&b64);
        f.extend_from_slice(b"\"}");
        f
    };

    println!(
        "NODE_SYNC of a {}-node tree ({} bytes):",
        sync.tree.size(),
        big.len()
    );
    compare(
        big.len(),
        300,
        ("pmesh Envelope::parse + decode to NodeTree", || {
            let env = Envelope::parse(&big, DEFAULT_MAX_DEPTH).unwrap();
            match env.decode() {
                Message::NodeSyncReply(s) => s.tree.size(),
                _ => unreachable!(),
            }
        }),
        ("serde_json::from_slice::<Value> (peer)", || {
            serde_json::from_slice::<serde_json::Value>(&big).unwrap()
        }),
    );
    let parse_only = best(300, || Envelope::parse(&big, DEFAULT_MAX_DEPTH).unwrap().ty);
    report("pmesh Envelope::parse only", big.len(), parse_only);
    compare(
        big.len(),
        300,
        ("pmesh NodeSync::parse_frame (direct reader)", || {
            NodeSync::parse_frame(&big, DEFAULT_MAX_DEPTH)
                .unwrap()
                .tree
                .size()
        }),
        ("serde_json::from_slice::<Value> (peer)", || {
            serde_json::from_slice::<serde_json::Value>(&big).unwrap()
        }),
    );

    println!(
        "relay path, SINGLE with a package in msg ({} bytes):",
        small.len()
    );
    compare(
        small.len(),
        30_000,
        ("pmesh Envelope::parse", || {
            Envelope::parse(small, DEFAULT_MAX_DEPTH).unwrap().dest
        }),
        ("serde_json::from_slice::<Value> (peer)", || {
            serde_json::from_slice::<serde_json::Value>(small).unwrap()
        }),
    );

    println!("OTA Data frame with a 1 KiB chunk ({} bytes):", ota.len());
    compare(
        ota.len(),
        10_000,
        ("pmesh Envelope::parse + decode", || {
            let env = Envelope::parse(&ota, DEFAULT_MAX_DEPTH).unwrap();
            matches!(env.decode(), Message::OtaData(_))
        }),
        ("serde_json::from_slice::<Value> (peer)", || {
            serde_json::from_slice::<serde_json::Value>(&ota).unwrap()
        }),
    );

    println!("NODE_SYNC writer:");
    report(
        "pmesh NodeSync::to_json",
        big.len(),
        best(300, || sync.to_json()),
    );
}
