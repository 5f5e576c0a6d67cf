//! A minimal driver for profiling the simulator (`perf record`, `valgrind --tool=callgrind`):
//! the default radio scenario at a given size and duration, no generated traffic.
//!
//! ```sh
//! cargo build --release -p pmesh-sim --example profile
//! perf record --call-graph dwarf target/release/examples/profile 1000 240s
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
    let r = sim.run();
    print!("{}", r.summary());
    let sizes: Vec<usize> = sim.components_now().iter().map(Vec::len).collect();
    println!("  components    {sizes:?}");
}
