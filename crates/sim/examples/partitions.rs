//! Diagnostic: why a radio-model mesh is still in pieces at the end of a run. For each
//! component: its size, whether it holds a root, its top node (the one whose station has no
//! uplink) and whether that node hears another component, and how many members hear one.
//!
//! ```sh
//! cargo run --release -p pmesh-sim --example partitions -- 1000 10m
//! ```

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut sc = pmesh_sim::Scenario::default();
    if let Some(n) = args.get(1) {
        sc.nodes = n.parse().expect("nodes");
    }
    if let Some(d) = args.get(2) {
        sc.duration = pmesh_sim::scenario::Dur::parse(d).expect("duration");
    }
    sc.traffic.enabled = false;
    let mut sim = pmesh_sim::Sim::new(sc).expect("valid scenario");
    let step = 60 * pmesh_sim::clock::SEC;
    let end = sim.scenario().duration.micros();
    let mut t = step;
    while t <= end {
        sim.run_until(t);
        let comps = sim.components_now();
        let sizes: Vec<usize> = comps.iter().map(Vec::len).collect();
        let roots = &sim.scenario().roots;
        let rooted: usize = comps
            .iter()
            .filter(|c| c.iter().any(|id| roots.contains(id)))
            .map(Vec::len)
            .sum();
        println!(
            "t={:>4}s rooted component {rooted:>4}, components {:?}",
            t / pmesh_sim::clock::SEC,
            sizes
        );
        t += step;
    }
    let comps = sim.components_now();
    let mut comp_of = vec![usize::MAX; sim.scenario().nodes as usize];
    for (c, ids) in comps.iter().enumerate() {
        for &id in ids {
            comp_of[id as usize - 1] = c;
        }
    }
    let roots = sim.scenario().roots.clone();
    for (c, ids) in comps.iter().enumerate() {
        let rooted = ids.iter().any(|id| roots.contains(id));
        let mut hearing = 0;
        let mut tops = Vec::new();
        for &id in ids {
            let i = id as usize - 1;
            let other = sim.layout().visible[i]
                .iter()
                .filter(|&&j| comp_of[j as usize] != c)
                .count();
            if other > 0 {
                hearing += 1;
            }
            let node = sim.node(id).expect("up");
            let uplink = node
                .neighbours()
                .any(|n| n.direction == pmesh_node::Direction::Station);
            if !uplink {
                tops.push((id, other));
            }
        }
        println!(
            "component {c}: {} nodes, rooted {rooted}, {hearing} hear another component, tops (id, other APs heard) {:?}",
            ids.len(),
            tops
        );
    }
}
