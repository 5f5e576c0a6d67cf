//! Five `pmesh node` processes on 127.0.0.1: a chain, then a tree; SINGLE and BROADCAST arrive
//! exactly once; a killed middle node splits the mesh and its restart heals it; a frozen node
//! is dropped by the node-sync timeout.

mod net_support;

use std::collections::BTreeSet;
use std::time::Duration;

use net_support::*;
use serde_json::Value;

fn ids(v: &[u32]) -> BTreeSet<u32> {
    v.iter().copied().collect()
}

/// Every node of `nodes` reaches exactly the others of `nodes`.
fn converged(nodes: &[&NodeProc]) -> bool {
    let all: BTreeSet<u32> = nodes.iter().map(|n| n.spec.id).collect();
    nodes.iter().all(|n| {
        let mut want = all.clone();
        want.remove(&n.spec.id);
        n.nodes() == want
    })
}

/// Sends SINGLE `from → to` and BROADCAST from `bcaster` through the CLI; checks each arrives
/// exactly once where it should and nowhere else.
fn exactly_once(nodes: &[&NodeProc], from: usize, to: usize, bcaster: usize, tag: &str) {
    let mut streams: Vec<EventStream> = nodes.iter().map(|n| n.events()).collect();
    let single = format!("single {tag}");
    let bcast = format!("broadcast {tag}");
    let to_id = nodes[to].spec.id.to_string();
    let (ok, _, err) = nodes[from].cli(&["send", "--to", &to_id, &single]);
    assert!(ok, "pmesh send --to: {err}");
    let (ok, _, err) = nodes[bcaster].cli(&["send", "--broadcast", &bcast]);
    assert!(ok, "pmesh send --broadcast: {err}");
    // Wait for every expected arrival, then a while longer to catch duplicates.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        for s in &mut streams {
            s.collect_for(Duration::from_millis(20));
        }
        let single_done = streams[to].count_received(&single) >= 1;
        let bcast_done = (0..nodes.len())
            .filter(|&i| i != bcaster)
            .all(|i| streams[i].count_received(&bcast) >= 1);
        if single_done && bcast_done {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "messages {tag} did not all arrive"
        );
    }
    for s in &mut streams {
        s.collect_for(Duration::from_millis(300));
    }
    for (i, s) in streams.iter().enumerate() {
        let want_single = usize::from(i == to);
        assert_eq!(
            s.count_received(&single),
            want_single,
            "node {} got SINGLE {tag}",
            nodes[i].spec.id
        );
        if want_single == 1 {
            assert_eq!(s.received(&single), [(nodes[from].spec.id, false)]);
        }
        let want_bcast = usize::from(i != bcaster);
        assert_eq!(
            s.count_received(&bcast),
            want_bcast,
            "node {} got BROADCAST {tag}",
            nodes[i].spec.id
        );
        if want_bcast == 1 {
            assert_eq!(s.received(&bcast), [(nodes[bcaster].spec.id, true)]);
        }
    }
}

/// Largest difference between the nodes' mesh times, µs, each read through the control
/// endpoint and corrected to one instant with the request's midpoint.
fn mesh_time_spread_us(nodes: &[&NodeProc]) -> u64 {
    let t0 = std::time::Instant::now();
    let at_t0: Vec<u32> = nodes
        .iter()
        .map(|n| {
            let before = t0.elapsed().as_micros() as u32;
            let mesh_time = n.status()["mesh_time"].as_u64().unwrap() as u32;
            let after = t0.elapsed().as_micros() as u32;
            mesh_time.wrapping_sub(before / 2 + after / 2)
        })
        .collect();
    let rel: Vec<i64> = at_t0
        .iter()
        .map(|&m| i64::from(m.wrapping_sub(at_t0[0]) as i32))
        .collect();
    (rel.iter().max().unwrap() - rel.iter().min().unwrap()) as u64
}

fn spec(id: u32, port: u16, connect: &[u16], config: Option<&std::path::Path>) -> NodeSpec {
    NodeSpec {
        id,
        port,
        connect: connect.to_vec(),
        root: id == 101,
        config: config.map(Into::into),
    }
}

/// Reference timers throughout (60 s node sync, 10 s timeout, 1-2-4-8-8 s redial).
#[test]
fn chain_then_tree_at_reference_timers() {
    let dir = TempDir::new("chain");
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    // Chain 101 - 102 - 103 - 104 - 105; each dials the previous one.
    let mut n: Vec<NodeProc> = (0..5)
        .map(|i| {
            NodeProc::start(
                &dir,
                spec(
                    101 + i as u32,
                    p[i],
                    if i == 0 { &[] } else { &p[i - 1..i] },
                    None,
                ),
            )
        })
        .collect();
    let t = wait_until(Duration::from_secs(15), "the chain to converge", || {
        converged(&n.iter().collect::<Vec<_>>())
    });
    eprintln!("chain converged in {t:?}");

    // Time sync: every node's mesh time agrees (they started tens of ms apart, so unsynced
    // clocks differ by at least that much).
    let t = wait_until(
        Duration::from_secs(10),
        "mesh time to agree within 3 ms",
        || mesh_time_spread_us(&n.iter().collect::<Vec<_>>()) < 3_000,
    );
    eprintln!("mesh time agreed within 3 ms after {t:?}");

    // The CLI's view of it.
    let (ok, out, err) = n[0].cli(&["nodes", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let hops: Vec<(u64, u64)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["hops"].as_u64().unwrap()))
        .collect();
    assert_eq!(hops, [(102, 1), (103, 2), (104, 3), (105, 4)]);
    let (ok, out, _) = n[4].cli(&["topology"]);
    assert!(ok);
    assert_eq!(
        out,
        "105 (this node)\n└── 104\n    └── 103\n        └── 102\n            └── 101 [root]\n"
    );
    let (ok, out, _) = n[2].cli(&["topology", "--json"]);
    assert!(ok);
    let tree: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tree["nodeId"], 103);
    assert_eq!(tree["subs"].as_array().unwrap().len(), 2);
    let (ok, _, err) = n[0].cli(&["send", "--to", "999", "nobody"]);
    assert!(!ok && err.contains("no route"), "{err}");

    let all: Vec<&NodeProc> = n.iter().collect();
    exactly_once(&all, 0, 4, 2, "chain-1");
    exactly_once(&all, 4, 0, 4, "chain-2");

    // Kill the middle node: the mesh splits into {101,102} and {104,105}.
    n[2].kill();
    let t = wait_until(
        Duration::from_secs(10),
        "survivors to drop the lost nodes",
        || {
            n[0].nodes() == ids(&[102])
                && n[1].nodes() == ids(&[101])
                && n[3].nodes() == ids(&[105])
                && n[4].nodes() == ids(&[104])
        },
    );
    eprintln!("split seen by every survivor in {t:?} (reference node timeout: 10 s)");

    // Restart it: 103 dials 102 again, 104 redials 103 on its 1-2-4 s schedule.
    let s = n[2].spec.clone();
    n[2] = NodeProc::start(&dir, s);
    let t = wait_until(Duration::from_secs(20), "the mesh to heal", || {
        converged(&n.iter().collect::<Vec<_>>())
    });
    eprintln!("healed in {t:?}");
    let all: Vec<&NodeProc> = n.iter().collect();
    exactly_once(&all, 1, 3, 0, "healed");

    // Re-wire into a tree: 101 { 102 { 103, 105 }, 104 }.
    n[3].kill();
    n[4].kill();
    n[3] = NodeProc::start(&dir, spec(104, p[3], &[p[0]], None));
    n[4] = NodeProc::start(&dir, spec(105, p[4], &[p[1]], None));
    wait_until(Duration::from_secs(20), "the tree to converge", || {
        converged(&n.iter().collect::<Vec<_>>())
    });
    let (ok, out, _) = n[0].cli(&["topology"]);
    assert!(ok);
    assert_eq!(
        out,
        "101 [root] (this node)\n├── 102\n│   ├── 103\n│   └── 105\n└── 104\n"
    );
    let all: Vec<&NodeProc> = n.iter().collect();
    exactly_once(&all, 3, 2, 1, "tree-1"); // 104 → 101 → 102 → 103; broadcast from a branch node
    exactly_once(&all, 2, 4, 3, "tree-2"); // siblings; broadcast from a leaf
}

/// A node that stops answering (SIGSTOP: its sockets stay open) is dropped by the node-sync
/// timeout, with timers shortened through the configuration file; SIGCONT heals the mesh.
#[test]
fn frozen_node_is_dropped_by_sync_timeout() {
    let dir = TempDir::new("frozen");
    let cfg = dir.file("fast.toml", FAST_TIMERS);
    let p: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let n: Vec<NodeProc> = (0..3)
        .map(|i| {
            NodeProc::start(
                &dir,
                spec(
                    201 + i as u32,
                    p[i],
                    if i == 0 { &[] } else { &p[i - 1..i] },
                    Some(&cfg),
                ),
            )
        })
        .collect();
    wait_until(Duration::from_secs(15), "the chain to converge", || {
        converged(&n.iter().collect::<Vec<_>>())
    });
    n[1].signal("STOP");
    // Node sync every 1 s, reply timeout 1 s: dropped within about 2 s on both sides.
    let t = wait_until(
        Duration::from_secs(6),
        "the frozen node to be dropped",
        || n[0].nodes().is_empty() && n[2].nodes().is_empty(),
    );
    eprintln!("frozen node dropped in {t:?} (node_sync_interval 1 s + node_timeout 1 s)");
    let status = n[0].status();
    assert!(
        status["node_stats"]["closed_by_node"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        n[0].log_text().contains("sync_timeout"),
        "the drop is logged with its reason"
    );
    n[1].signal("CONT");
    wait_until(Duration::from_secs(15), "the mesh to heal", || {
        converged(&n.iter().collect::<Vec<_>>())
    });
}
