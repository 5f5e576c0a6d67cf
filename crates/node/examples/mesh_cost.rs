//! What forming and keeping a mesh costs the node code: `n` nodes on a random tree, all links
//! opened at once, in virtual time (`pmesh_node::testing::Harness`).
//!
//! ```text
//! cargo run --release -p pmesh-node --features testing --example mesh_cost -- 100 300
//! ```
//!
//! Prints, per size and for both settings of `Config::coalesce_syncs` (`false` sends every
//! forced NODE_SYNC, as the reference does): virtual time until every node lists every node,
//! wall time and bytes carried to get there, the same for two minutes of steady state, and
//! `Node::state_bytes` per node and per node known.

use std::time::{Duration, Instant};

use pmesh_node::testing::{Clock, Harness};
use pmesh_node::{Config, Node};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a node count"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 300]
    } else {
        sizes
    };
    for n in sizes {
        for coalesce in [false, true] {
            run(n, coalesce);
        }
    }
}

fn run(n: usize, coalesce: bool) {
    {
        let mut h: Harness = Harness::new();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for i in 0..n {
            let id = (i as u32 + 1).wrapping_mul(2_654_435_761) | 1;
            let clock = Clock {
                offset_us: rand(3_600_000_000),
                drift_ppm: rand(81) as i32 - 40,
            };
            let mut cfg = Config::new(id);
            cfg.coalesce_syncs = coalesce;
            h.add_node(Node::without_plugins(cfg), clock);
        }
        for i in 1..n {
            let parent = rand(i as u64) as usize;
            h.connect(i, parent, Duration::from_millis(1 + rand(20)));
        }
        let wall = Instant::now();
        let converged = h.run_until(Duration::from_secs(600), |h| {
            (0..n).all(|i| h.node(i).mesh_size() == n)
        });
        let (form_wall, form_virtual, form) = (wall.elapsed(), h.now(), h.stats());
        assert!(
            converged,
            "{n} nodes did not converge in 10 minutes of virtual time"
        );
        let wall = Instant::now();
        h.run_for(Duration::from_secs(120));
        let steady_wall = wall.elapsed();
        let steady_bytes = h.stats().bytes - form.bytes;
        let steady_frames = h.stats().deliveries - form.deliveries;
        let state: usize = (0..n).map(|i| h.node(i).state_bytes()).sum();
        println!("{n} nodes, coalesce_syncs = {coalesce}:");
        println!(
            "  formation: {form_virtual:?} virtual, {form_wall:?} wall, {} deliveries, {} bytes",
            form.deliveries, form.bytes
        );
        println!(
            "  steady 120 s: {steady_wall:?} wall, {steady_frames} deliveries, {steady_bytes} bytes"
        );
        println!(
            "  state_bytes: {} per node, {} per node known",
            state / n,
            state / n / n
        );
    }
}
