//! The application layer on top of the simulated nodes: which plugin each node runs, and what
//! the simulation does with the plugins' events. The engine is generic over it, so OTA (or any
//! other plugin) adds scenarios and report sections without touching the engine.

use pmesh_node::{Event, Instant, Node, Plugin};

use crate::clock::SimTime;

/// How a node came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// First boot (at the start or at a `join` event).
    First,
    /// Restart after a crash: volatile state is gone; anything the application keeps per node
    /// (flash, in OTA terms) is still there.
    Restart,
}

/// One node, handed to the application. Whatever the application does to the node here (sends,
/// `with_plugin` calls) is drained and delivered by the engine afterwards.
pub struct NodeHandle<'a, P: Plugin> {
    /// The node's id.
    pub id: u32,
    /// Simulated time now.
    pub sim_now: SimTime,
    /// The node's local clock now (pass this to the node's methods).
    pub now: Instant,
    /// The node.
    pub node: &'a mut Node<P>,
}

impl<P: Plugin> std::fmt::Debug for NodeHandle<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.id)
            .field("sim_now", &self.sim_now)
            .finish()
    }
}

/// What a simulation runs on its nodes, and how it observes them (every node event, the
/// core's and the plugin's, through [`SimApp::on_event`]).
///
/// Persistent per-node state (what survives a crash) belongs to the application: it creates
/// each node's plugin in [`SimApp::create_plugin`] and can hand the plugin a shared handle to
/// its "flash". The engine drops the plugin on a crash and asks for a new one on restart.
pub trait SimApp {
    /// The plugin every node runs.
    type Plugin: Plugin;

    /// A new plugin for `node`; `seed` is a per-boot seed derived from the scenario's.
    fn create_plugin(&mut self, node: u32, boot: Boot, seed: u64) -> Self::Plugin;

    /// An event from a node: the core's (`Received`, `Package`, connections, time) and its
    /// plugin's (`Event::Plugin`), in the order the node raised them, each after the engine's
    /// own accounting. What the application does to the node here is delivered before the
    /// node's timer is rescheduled.
    fn on_event(
        &mut self,
        _node: &mut NodeHandle<'_, Self::Plugin>,
        _event: Event<<Self::Plugin as Plugin>::Event>,
    ) {
    }

    /// A scenario `app` action addressed to a node.
    fn on_action(&mut self, _node: &mut NodeHandle<'_, Self::Plugin>, _data: &serde_json::Value) {}

    /// A node crashed (its plugin has been dropped).
    fn on_crash(&mut self, _node: u32, _sim_now: SimTime) {}

    /// True when the application's work is finished and the run may stop early.
    fn finished(&self) -> bool {
        false
    }

    /// A line for the progress display (e.g. "OTA 37 %").
    fn progress(&self) -> Option<String> {
        None
    }

    /// The application's section of the report (under `"app"`), deterministic.
    fn report(&self, _sim_now: SimTime) -> Option<serde_json::Value> {
        None
    }
}

/// Nodes without plugins: the core protocol only.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreOnly;

impl SimApp for CoreOnly {
    type Plugin = ();

    fn create_plugin(&mut self, _node: u32, _boot: Boot, _seed: u64) {}
}
