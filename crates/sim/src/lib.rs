//! # pmesh-sim
//!
//! A deterministic discrete-event simulator that runs the real sans-IO
//! [`pmesh_node::Node`] at 50 to 1,000 nodes over modelled TCP links.
//!
//! - **Engine** ([`engine`]): one virtual clock and one event queue ([`queue`]); each node is
//!   the real node state machine, woken only at its own deadlines and when bytes arrive, so cost
//!   grows with events, not nodes × time. Seeded: the same [`Scenario`] gives a byte-identical
//!   [`Report::deterministic_json`].
//! - **Links** ([`link`]): reliable ordered byte streams with per-link latency, bandwidth and a
//!   send queue; faults: cut, reset, partition/heal, crash/restart, refused connects.
//! - **Clocks** ([`clock`]): per-node drift (ppm) and random initial offsets.
//! - **Topologies** ([`topology`]): chain, star, balanced tree, random tree, and a radio model
//!   (nodes placed in an area, who hears whom).
//! - **WiFi stations** (`station.rs`): every node's station joins APs it can see as
//!   painlessMesh's `StationScan` does (rank by RSSI, skip APs already in the tree, at most 10
//!   stations per AP, TCP retries 1, 2, 4, 8, 8 s, 60 s blocklist, the reconfiguration rule);
//!   the engine runs its timers and carries out the link changes it asks for.
//! - **Invariants**, checked during every run: the connection graph keeps no cycle, no frame
//!   is forwarded in a loop, broadcasts reach every node that stayed reachable exactly once,
//!   node lists converge to the reachable sets.
//! - **Applications** ([`app`]): the engine is generic over the plugin the nodes run
//!   ([`SimApp`]), so OTA and other plugins add scenarios and report sections without touching it.
//!
//! ```
//! use pmesh_sim::{Scenario, Sim, Topology, scenario::Dur};
//! let sc = Scenario { nodes: 8, topology: Topology::Tree { fanout: 2 }, duration: Dur::secs(120), ..Scenario::default() };
//! let report = Sim::new(sc).unwrap().run();
//! assert_eq!(report.invariants.violations_total, 0);
//! assert!(report.convergence[0].converged_after_s.is_some());
//! ```

#![warn(missing_docs)]

pub mod app;
pub mod clock;
pub mod engine;
pub mod link;
pub mod ota;
pub mod queue;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sniff;
mod station;
pub mod topology;

pub use app::{Boot, CoreOnly, NodeHandle, SimApp};
pub use clock::SimTime;
pub use engine::{Progress, Sim};
pub use report::Report;
pub use scenario::{Action, Scenario, TimedEvent, Topology};
