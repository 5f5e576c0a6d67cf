//! Many real nodes in virtual time (`pmesh_node::testing::Harness`): distinct clocks,
//! per-link latency. Mesh formation, time agreement, routing, loops, timeouts, propagation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pmesh_node::testing::{Clock, Harness, LinkState};
use pmesh_node::{Config, DropReason, Event, Node};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Node ids that are not in connection or index order, like MAC-derived ones.
fn id_of(i: usize) -> u32 {
    (i as u32 + 1).wrapping_mul(2_654_435_761) | 1
}

/// A distinct clock per node: offsets seconds to an hour apart, drift within ±40 ppm.
fn clock_of(i: usize) -> Clock {
    Clock {
        offset_us: 1_000_000 + (i as u64) * 397_000_123,
        drift_ppm: (i as i32 * 17) % 81 - 40,
    }
}

fn add(h: &mut Harness, i: usize) -> usize {
    h.add_node(Node::without_plugins(Config::new(id_of(i))), clock_of(i))
}

/// `n` nodes, and `edges` as (station, ap, latency) links.
fn mesh(n: usize, edges: &[(usize, usize, u64)]) -> Harness {
    let mut h = Harness::new();
    for i in 0..n {
        assert_eq!(add(&mut h, i), i);
    }
    for &(s, a, lat) in edges {
        h.connect(s, a, ms(lat));
    }
    h
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

fn all_see(h: &Harness, nodes: &[usize], expected: &[u32]) -> bool {
    let expected = sorted(expected.to_vec());
    nodes
        .iter()
        .all(|&i| sorted(h.node(i).node_list(true)) == expected)
}

/// Largest pairwise mesh-time difference among `nodes`, µs (u32 wrapping arithmetic).
fn max_time_spread(h: &Harness, nodes: &[usize]) -> u32 {
    let base = h.mesh_time(nodes[0]);
    let offs: Vec<i64> = nodes
        .iter()
        .map(|&i| i64::from(h.mesh_time(i).wrapping_sub(base) as i32))
        .collect();
    (offs.iter().max().unwrap() - offs.iter().min().unwrap()) as u32
}

/// The 10-node tree used below: 0 at the top, children dial their parent's AP.
const TREE: [(usize, usize, u64); 9] = [
    (1, 0, 2),
    (2, 0, 5),
    (3, 1, 1),
    (4, 1, 7),
    (5, 2, 3),
    (6, 2, 2),
    (7, 3, 4),
    (8, 5, 6),
    (9, 8, 3),
];

fn converged_tree() -> Harness {
    let mut h = mesh(10, &TREE);
    let ids: Vec<u32> = (0..10).map(id_of).collect();
    let nodes: Vec<usize> = (0..10).collect();
    assert!(
        h.run_until(secs(5), |h| all_see(h, &nodes, &ids)),
        "tree did not converge"
    );
    h
}

// --- time --------------------------------------------------------------------------------

#[test]
fn two_nodes_sync_and_agree_on_mesh_time() {
    let mut h = Harness::new();
    let a = h.add_node(
        Node::without_plugins(Config::new(100)),
        Clock {
            offset_us: 5_000_000,
            drift_ppm: 20,
        },
    );
    let b = h.add_node(
        Node::without_plugins(Config::new(200)),
        Clock {
            offset_us: 3_123_456_789,
            drift_ppm: -15,
        },
    );
    h.connect(a, b, ms(3));
    assert!(
        h.run_until(secs(1), |h| h.node(a).node_list(true) == [100, 200]
            && h.node(b).node_list(true) == [200, 100])
    );
    let start_spread = max_time_spread(&h, &[a, b]);
    assert!(
        start_spread > 1_000_000_000,
        "clocks start far apart: {start_spread}"
    );
    // 100 < 200 with equal sides: 100 adopts 200's time within the first seconds ...
    h.run_for(secs(2));
    assert!(max_time_spread(&h, &[a, b]) < 5_000);
    // ... and the two stay within the 5 ms the reference aims for, drift (35 ppm apart) included.
    let mut worst = 0;
    for _ in 0..600 {
        h.run_for(secs(1));
        worst = worst.max(max_time_spread(&h, &[a, b]));
    }
    println!("worst mesh-time spread over 10 minutes: {worst} µs");
    assert!(worst < 5_000, "spread {worst} µs");
    // The steady state is the 60 s cadence, not the 200 ms retry loop of spec §5's pitfall.
    let adjustments = |h: &Harness, i| {
        h.events(i)
            .iter()
            .filter(|(t, e)| *t > 300_000_000 && matches!(e, Event::TimeAdjusted { .. }))
            .count()
    };
    assert!(
        adjustments(&h, a) <= 5 * 4,
        "{} adjustments in 5 min",
        adjustments(&h, a)
    );
    assert_eq!(adjustments(&h, b), 0, "200 never adopts");
}

/// Two nodes whose crystals are 200 ppm apart (the ±100 ppm of spec §5 at its worst), 10 ms
/// links: worst mesh-time spread over minutes 5-10, and the adopter's rate correction (ppb).
fn two_drifting_nodes(rate_discipline: bool) -> (u32, i64) {
    let mut h = Harness::new();
    let mut cfg = Config::new(100);
    cfg.rate_discipline = rate_discipline;
    let a = h.add_node(
        Node::without_plugins(cfg),
        Clock {
            offset_us: 7_000_000,
            drift_ppm: 100,
        },
    );
    let mut cfg = Config::new(200);
    cfg.rate_discipline = rate_discipline;
    let b = h.add_node(
        Node::without_plugins(cfg),
        Clock {
            offset_us: 1_234_567_890,
            drift_ppm: -100,
        },
    );
    h.connect(a, b, ms(10));
    h.run_for(secs(300));
    let mut worst = 0;
    for _ in 0..300 {
        h.run_for(secs(1));
        worst = worst.max(max_time_spread(&h, &[a, b]));
    }
    assert_eq!(h.node(b).rate_correction_ppb(), 0, "200 never adopts");
    (worst, h.node(a).rate_correction_ppb())
}

/// The reference steps the offset once a minute, so 200 ppm apart the spread reaches 12 ms
/// before each sync; the optional rate discipline measures the rate and keeps it far below.
#[test]
fn rate_discipline_keeps_drifting_clocks_together() {
    let (reference, ppb) = two_drifting_nodes(false);
    println!("reference: worst spread {reference} µs");
    assert!(reference > 10_000, "reference spread {reference} µs");
    assert_eq!(ppb, 0, "no rate correction unless configured");
    let (disciplined, ppb) = two_drifting_nodes(true);
    println!("rate discipline: worst spread {disciplined} µs, correction {ppb} ppb");
    assert!(disciplined < 1_000, "disciplined spread {disciplined} µs");
    // b's clock against a's: (1 - 100 ppm) / (1 + 100 ppm) - 1 = -199.98 ppm.
    assert!((ppb + 199_980).abs() < 2_000, "rate correction {ppb} ppb");
}

/// The hold makes `t2 - t1` = 1 ms, so a round trip up to 84 ms passes the 85x check (spec §5
/// asks for 50 ms); beyond it an adopter rejects every sample and retries every 200 ms.
#[test]
fn time_replies_pass_the_85x_check_up_to_84_ms_round_trip() {
    for (one_way_ms, accepted) in [(25, true), (41, true), (44, false)] {
        let mut h = Harness::new();
        // Some drift: with perfect clocks every later sample gives offset 0 exactly, which
        // never completes a sync (the reference retries every 200 ms then, spec §5).
        let a = h.add_node(
            Node::without_plugins(Config::new(1)),
            Clock {
                offset_us: 7_000_000,
                drift_ppm: 12,
            },
        );
        let b = h.add_node(
            Node::without_plugins(Config::new(2)),
            Clock {
                offset_us: 900_000_000,
                drift_ppm: -9,
            },
        );
        h.connect(a, b, ms(one_way_ms));
        h.run_for(secs(120));
        let offsets: Vec<i32> = h
            .events(a)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::TimeAdjusted { offset } => Some(*offset),
                _ => None,
            })
            .collect();
        let rejected = offsets.iter().filter(|&&o| o == 0).count();
        if accepted {
            assert!(max_time_spread(&h, &[a, b]) < 5_000, "{one_way_ms} ms");
            assert!(
                offsets.len() < 20 && rejected == 0,
                "{one_way_ms} ms: {offsets:?}"
            );
        } else {
            // Documented limit: every sample rejected, a retry every 200 ms.
            assert!(
                rejected > 400 && rejected == offsets.len(),
                "{one_way_ms} ms: {rejected}"
            );
            assert_eq!(h.node(a).stats().time_samples_retried as usize, rejected);
        }
    }
}

// --- routing -----------------------------------------------------------------------------

#[test]
fn ten_node_tree_routes_single_and_broadcast_exactly_once() {
    let mut h = converged_tree();
    let ids: Vec<u32> = (0..10).map(id_of).collect();
    for i in 0..10 {
        h.take_events(i);
    }
    for i in 0..10 {
        h.with_node(i, |n, now| n.send_broadcast(now, format!("b{i}"), false))
            .unwrap();
        for j in (0..10).filter(|&j| j != i) {
            h.with_node(i, |n, now| n.send_single(now, ids[j], format!("s{i}>{j}")))
                .unwrap();
        }
    }
    h.run_for(secs(1));
    for j in 0..10 {
        let mut got: BTreeMap<(u32, String, bool), usize> = BTreeMap::new();
        for (_, e) in h.events(j) {
            if let Event::Received {
                from,
                msg,
                broadcast,
            } = e
            {
                *got.entry((*from, String::from_utf8(msg.clone()).unwrap(), *broadcast))
                    .or_default() += 1;
            }
        }
        let mut expected = BTreeMap::new();
        for i in (0..10).filter(|&i| i != j) {
            expected.insert((ids[i], format!("b{i}"), true), 1);
            expected.insert((ids[i], format!("s{i}>{j}"), false), 1);
        }
        assert_eq!(got, expected, "node {j}");
    }
    // Each broadcast crossed each of the 9 links once: the sender's own links carry its
    // copies, every other link a relayed one. Each SINGLE is relayed by the nodes between.
    let forwarded: u64 = (0..10).map(|i| h.node(i).stats().forwarded).sum();
    let degree = |i: usize| TREE.iter().filter(|&&(s, a, _)| s == i || a == i).count() as u64;
    let broadcast_relays: u64 = (0..10).map(|i| 9 - degree(i)).sum();
    let hops = |a: usize, b: usize| path(&TREE, a, b).len() as u64 - 1;
    let single_relays: u64 = (0..10)
        .flat_map(|i| (0..10).map(move |j| (i, j)))
        .filter(|(i, j)| i != j)
        .map(|(i, j)| hops(i, j) - 1)
        .sum();
    assert_eq!(forwarded, broadcast_relays + single_relays);
}

/// Node path between a and b in a tree given as edges.
fn path(edges: &[(usize, usize, u64)], a: usize, b: usize) -> Vec<usize> {
    let mut adj: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(s, p, _) in edges {
        adj.entry(s).or_default().push(p);
        adj.entry(p).or_default().push(s);
    }
    let mut prev = BTreeMap::from([(a, a)]);
    let mut queue = std::collections::VecDeque::from([a]);
    while let Some(x) = queue.pop_front() {
        for &y in &adj[&x] {
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(y) {
                e.insert(x);
                queue.push_back(y);
            }
        }
    }
    let mut p = vec![b];
    while *p.last().unwrap() != a {
        p.push(prev[p.last().unwrap()]);
    }
    p
}

// --- loops -------------------------------------------------------------------------------

/// Components of the graph of links still up, and whether that graph has a cycle.
fn up_graph(h: &Harness) -> (Vec<BTreeSet<usize>>, bool) {
    let up: Vec<(usize, usize)> = h
        .links()
        .iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| (l.station, l.ap))
        .collect();
    let mut parent: Vec<usize> = (0..h.len()).collect();
    fn find(p: &mut Vec<usize>, x: usize) -> usize {
        if p[x] != x {
            let r = find(p, p[x]);
            p[x] = r;
        }
        p[x]
    }
    let mut cycle = false;
    for (a, b) in up {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra == rb {
            cycle = true;
        }
        parent[ra] = rb;
    }
    let mut comps: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for i in 0..h.len() {
        let r = find(&mut parent, i);
        comps.entry(r).or_default().insert(i);
    }
    (comps.into_values().collect(), cycle)
}

/// Runs a 5-node ring (node i dials node i+1) and checks what the reference's integration
/// test "Network loops are detected" checks: no cycle is left and no node sees 5 nodes behind
/// any link. Returns the pieces left.
fn ring(lat: [u64; 5], loop_grace: Duration) -> (Harness, Vec<BTreeSet<usize>>) {
    let mut h = Harness::new();
    for i in 0..5 {
        let mut cfg = Config::new(id_of(i));
        cfg.loop_grace = loop_grace;
        h.add_node(Node::without_plugins(cfg), clock_of(i));
    }
    for (i, &l) in lat.iter().enumerate() {
        h.connect(i, (i + 1) % 5, ms(l));
    }
    h.run_for(secs(180));
    let (comps, cycle) = up_graph(&h);
    assert!(!cycle, "{lat:?}: a cycle is left");
    for i in 0..5 {
        let n = h.node(i);
        for nb in n.neighbours() {
            let size = n.neighbour_tree(nb.conn).unwrap().size();
            assert!(size < 5, "{lat:?}: node {i} sees {size} via {:?}", nb.conn);
        }
        // Its view is exactly its piece of the graph, each node once.
        let list = n.node_list(true);
        let unique: BTreeSet<u32> = list.iter().copied().collect();
        assert_eq!(unique.len(), list.len(), "{lat:?}: duplicates in {list:?}");
        let comp = comps.iter().find(|c| c.contains(&i)).unwrap();
        assert_eq!(
            unique,
            comp.iter().map(|&j| id_of(j)).collect(),
            "{lat:?}: node {i}"
        );
        // Cut by the loop rules, not by timeouts.
        for (_, e) in h.events(i) {
            if let Event::DroppedConnection { reason, .. } = e {
                assert!(
                    matches!(
                        reason,
                        DropReason::LoopContainsSelf
                            | DropReason::LoopNeighbourInSubs
                            | DropReason::Disconnected
                    ),
                    "{lat:?}: {reason:?}"
                );
            }
        }
    }
    (h, comps)
}

const RING_LATENCIES: [[u64; 5]; 4] = [
    [1, 2, 3, 4, 5],
    [3, 3, 3, 3, 3],
    [9, 1, 4, 1, 6],
    [40, 2, 25, 7, 13],
];

#[test]
fn five_node_ring_loses_one_link_and_becomes_a_tree() {
    for lat in RING_LATENCIES {
        let (h, comps) = ring(lat, Config::new(1).loop_grace);
        let up = h
            .links()
            .iter()
            .filter(|l| l.state == LinkState::Up)
            .count();
        assert_eq!((up, comps.len()), (4, 1), "{lat:?}: {comps:?}");
        // The link cut is the one every node agreed on: the smallest id pair on the cycle.
        let cut = h.links().iter().find(|l| l.state != LinkState::Up).unwrap();
        let key = |a: usize, b: usize| (id_of(a).min(id_of(b)), id_of(a).max(id_of(b)));
        let smallest = (0..5).map(|i| key(i, (i + 1) % 5)).min().unwrap();
        assert_eq!(key(cut.station, cut.ap), smallest, "{lat:?}");
        for i in 0..5 {
            assert_eq!(h.node(i).node_list(true).len(), 5);
        }
    }
}

/// With `loop_grace = 0` every link that shows the loop closes, as in the reference: the
/// ring falls apart into pieces (stations would then reconnect).
#[test]
fn five_node_ring_without_loop_grace_falls_apart() {
    let mut pieces = vec![];
    for lat in RING_LATENCIES {
        let (_, comps) = ring(lat, Duration::ZERO);
        assert!(comps.len() >= 2, "{lat:?}: {comps:?}");
        pieces.push(comps.len());
    }
    println!("pieces left without loop grace: {pieces:?}");
}

// --- timeouts ----------------------------------------------------------------------------

fn drops(h: &Harness, i: usize) -> Vec<(u64, u32, DropReason)> {
    h.events(i)
        .iter()
        .filter_map(|(t, e)| match e {
            Event::DroppedConnection {
                node_id, reason, ..
            } => Some((*t, *node_id, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_that_never_answers_is_dropped_after_ten_or_twenty_seconds() {
    let mut h = Harness::new();
    let a = h.add_node(Node::without_plugins(Config::new(1)), Clock::offset(1_000));
    let mute = h.add_node(Node::without_plugins(Config::new(2)), Clock::offset(0));
    h.crash(mute);
    h.run_for(secs(1));
    h.connect(a, mute, ms(2)); // a is the station: asks at once
    h.connect(mute, a, ms(2)); // a is the AP: asks after 10 s
    h.run_for(secs(30));
    // The AP side's handshake deadline (pmesh, 5 s) closes the link it accepted first.
    assert_eq!(
        drops(&h, a),
        vec![
            (6_000_000, 0, DropReason::HandshakeTimeout),
            (11_000_000, 0, DropReason::SyncTimeout)
        ]
    );
    // Without it, the reference's 10 and 20 s.
    let mut h = Harness::new();
    let mut cfg = Config::new(1);
    cfg.handshake_timeout = Duration::ZERO;
    let a = h.add_node(Node::without_plugins(cfg), Clock::offset(1_000));
    let mute = h.add_node(Node::without_plugins(Config::new(2)), Clock::offset(0));
    h.crash(mute);
    h.run_for(secs(1));
    h.connect(a, mute, ms(2));
    h.connect(mute, a, ms(2));
    h.run_for(secs(30));
    assert_eq!(
        drops(&h, a),
        vec![
            (11_000_000, 0, DropReason::SyncTimeout),
            (21_000_000, 0, DropReason::SyncTimeout)
        ]
    );
}

#[test]
fn a_synced_peer_gone_silent_is_dropped_within_seventy_seconds() {
    let mut h = mesh(2, &[(0, 1, 4)]);
    h.run_for(secs(95));
    let silenced_at = h.now_us();
    h.silence_link(0);
    h.run_for(secs(120));
    for i in 0..2 {
        let d = drops(&h, i);
        assert_eq!(d.len(), 1, "node {i}: {d:?}");
        let (t, node_id, reason) = d[0];
        assert_eq!((node_id, reason), (id_of(1 - i), DropReason::SyncTimeout));
        // Its next request is due within a minute, and goes unanswered for 10 s.
        let after = t - silenced_at;
        assert!(
            (10_000_000..=70_000_000 + 1_000).contains(&after),
            "node {i} dropped {after} µs after"
        );
        assert_eq!(h.node(i).node_list(true), vec![id_of(i)]);
    }
}

// --- topology changes --------------------------------------------------------------------

#[test]
fn topology_changes_reach_every_node_without_waiting_for_the_periodic_sync() {
    let mut h = converged_tree();
    h.run_for(secs(5));
    // A node joins at the deepest leaf (9, five hops from 4).
    let new = add(&mut h, 10);
    h.connect(new, 9, ms(2));
    let ids: Vec<u32> = (0..11).map(id_of).collect();
    let all: Vec<usize> = (0..11).collect();
    let t = h.now_us();
    assert!(
        h.run_until(secs(1), |h| all_see(h, &all, &ids)),
        "join did not propagate within 1 s"
    );
    println!("join seen everywhere after {} µs", h.now_us() - t);

    // Link 2-0 breaks: two pieces, each knowing exactly itself.
    let link = h
        .links()
        .iter()
        .position(|l| (l.station, l.ap) == (2, 0))
        .unwrap();
    h.break_link(link);
    let left = [0, 1, 3, 4, 7];
    let right = [2, 5, 6, 8, 9, 10];
    let ids_of = |s: &[usize]| s.iter().map(|&i| id_of(i)).collect::<Vec<_>>();
    let t = h.now_us();
    assert!(
        h.run_until(secs(1), |h| all_see(h, &left, &ids_of(&left))
            && all_see(h, &right, &ids_of(&right))),
        "split did not propagate within 1 s"
    );
    println!("split seen everywhere after {} µs", h.now_us() - t);
    // Every node was told: a ChangedConnections after the break.
    for i in 0..11 {
        assert!(
            h.events(i)
                .iter()
                .any(|(at, e)| *at >= t && matches!(e, Event::ChangedConnections)),
            "node {i}"
        );
    }
}

#[test]
fn a_crashed_node_disappears_from_every_node_list() {
    let mut h = converged_tree();
    h.run_for(secs(30));
    let before = h.node(7).state_bytes();
    // Node 3 (parent of 7, child of 1) loses power: nobody is told.
    h.crash(3);
    let t = h.now_us();
    let rest = [0, 1, 2, 4, 5, 6, 8, 9];
    let rest_ids: Vec<u32> = rest.iter().map(|&i| id_of(i)).collect();
    assert!(
        h.run_until(secs(75), |h| all_see(h, &rest, &rest_ids)
            && h.node(7).node_list(true) == [id_of(7)]),
        "crash not noticed everywhere within 75 s"
    );
    let took = h.now_us() - t;
    println!("crash noticed everywhere after {took} µs");
    assert!(
        took > 10_000_000,
        "only a timeout can notice a silent crash"
    );
    // Found by the two neighbours' timeouts, then propagated.
    assert!(
        drops(&h, 1)
            .iter()
            .any(|&(_, id, r)| id == id_of(3) && r == DropReason::SyncTimeout)
    );
    assert!(
        drops(&h, 7)
            .iter()
            .any(|&(_, id, r)| id == id_of(3) && r == DropReason::SyncTimeout)
    );
    assert!(
        h.node(7).state_bytes() < before,
        "the isolated node holds less state"
    );
}

/// 20 random connected graphs of 8-12 nodes with 4 extra links each (overlapping cycles),
/// all links opened at once. Whatever the policy, no cycle is left and every view matches
/// its piece of the graph. Returns (pieces, links up) per graph.
fn random_graphs(loop_grace: Duration) -> Vec<(usize, usize)> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut results = vec![];
    for round in 0..20 {
        let n = 8 + (round % 5);
        let mut h = Harness::new();
        for i in 0..n {
            let mut cfg = Config::new(id_of(i));
            cfg.loop_grace = loop_grace;
            h.add_node(Node::without_plugins(cfg), clock_of(i));
        }
        let mut edges = BTreeSet::new();
        for i in 1..n {
            edges.insert((i, rand(i as u64) as usize)); // a spanning tree ...
        }
        while edges.len() < n - 1 + 4 {
            let (a, b) = (rand(n as u64) as usize, rand(n as u64) as usize); // ... plus cycles
            if a != b && !edges.contains(&(b, a)) {
                edges.insert((a, b));
            }
        }
        for &(a, b) in &edges {
            h.connect(a, b, ms(1 + rand(20)));
        }
        h.run_for(secs(120));
        let (comps, cycle) = up_graph(&h);
        assert!(!cycle, "round {round}: cycle left");
        for i in 0..n {
            let list = h.node(i).node_list(true);
            let unique: BTreeSet<u32> = list.iter().copied().collect();
            assert_eq!(
                unique.len(),
                list.len(),
                "round {round}: node {i} lists {list:?}"
            );
            let comp = comps.iter().find(|c| c.contains(&i)).unwrap();
            assert_eq!(
                unique,
                comp.iter().map(|&j| id_of(j)).collect(),
                "round {round}: node {i}"
            );
        }
        let up = h
            .links()
            .iter()
            .filter(|l| l.state == LinkState::Up)
            .count();
        results.push((comps.len(), up));
    }
    results
}

#[test]
fn random_graphs_with_many_cycles_settle_into_trees() {
    let agreed = random_graphs(Config::new(1).loop_grace);
    let every_link = random_graphs(Duration::ZERO);
    println!("(pieces, links up) with the agreed cut: {agreed:?}");
    println!("(pieces, links up) closing every link that shows a loop: {every_link:?}");
    let whole = |r: &[(usize, usize)]| r.iter().filter(|&&(p, _)| p == 1).count();
    let up = |r: &[(usize, usize)]| r.iter().map(|&(_, u)| u).sum::<usize>();
    assert!(
        whole(&agreed) >= 15,
        "{} of 20 graphs stayed in one piece",
        whole(&agreed)
    );
    assert!(
        up(&agreed) > up(&every_link),
        "the agreed cut keeps more links"
    );
}
