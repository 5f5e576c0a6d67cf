//! # pmesh-bridge
//!
//! The MQTT status bridge of a pmesh gateway: the promised `mesh/status/...` topics made true,
//! the Zigbee2MQTT-style conventions (`bridge/state` with last will and session counter,
//! retained info/health/node state/availability, `bridge/request/<verb>` →
//! `bridge/response/<verb>`), Home Assistant device discovery, alerts with a raised/cleared
//! life cycle, a durable outbox so no event or alert is lost, remote OTA over MQTT, and a
//! Prometheus `/metrics` endpoint. Topic reference: `docs/bridge/topics.md`.
//!
//! MQTT input is parsed by pure functions ([`request`], [`parse_request`]); what they refuse,
//! messages over the packet limit and retained requests are answered, never executed, and
//! counted. `ota/start` reads images only from a [`FirmwareDir`].
//!
//! ## Using it from a gateway
//!
//! ```no_run
//! # async fn demo(gw: std::sync::Arc<dyn pmesh_bridge::Gateway>, node: &pmesh_node::Node) -> anyhow::Result<()> {
//! use pmesh_bridge::{Bridge, BridgeConfig, BrokerConfig};
//! let mut cfg = BridgeConfig::default();
//! cfg.broker = BrokerConfig::from_url("mqtt://127.0.0.1:1883").map_err(anyhow::Error::msg)?;
//! let bridge = Bridge::spawn(cfg, node.id(), gw)?;         // inside a tokio runtime
//! bridge.topology(node.tree());                             // after every ChangedConnections
//! bridge.message(1234, b"hello".to_vec(), true);            // for every Event::Received
//! // bridge.package(envelope), bridge.stats(..), bridge.ota(..) likewise
//! bridge.shutdown().await;                                  // publishes offline, disconnects
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
mod conn;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod gateway;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod payload;
pub mod request;
mod runtime;
pub mod status;
pub mod tls;

use std::sync::Arc;

use pmesh_node::NodeStats;
use pmesh_proto::{Envelope, NodeTree};
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{AlertThresholds, BridgeConfig, BrokerConfig, ClockSource, Streams, TlsOptions};
pub use gateway::{Gateway, GatewayError, LinkStats, MeshEvent, OtaMode, OtaProgress, OtaStart};
pub use http::HttpLimits;
pub use metrics::Metrics;
pub use pmesh_fwdir::{FirmwareDir, FirmwareError};
pub use request::{MAX_IMAGE_BYTES, RequestError, parse_request};
pub use runtime::{BridgeStatus, rss_bytes};

use runtime::{Control, Inputs, Runtime};

/// Starts bridges.
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// Starts the bridge task on the current tokio runtime. `gateway_id` is the gateway
    /// node's id (`Node::id()`); `gateway` carries the bridge's requests into the mesh.
    /// Fails only if the state directory cannot be used.
    pub fn spawn(
        cfg: BridgeConfig,
        gateway_id: u32,
        gateway: Arc<dyn Gateway>,
    ) -> anyhow::Result<BridgeHandle> {
        let metrics = Metrics::new();
        let (status_tx, status_rx) = watch::channel(BridgeStatus::default());
        let (ev_tx, ev_rx) = mpsc::channel(cfg.input_queue.max(16));
        let (ota_tx, ota_rx) = mpsc::unbounded_channel();
        let (topo_tx, topo_rx) = watch::channel(None);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let rt = Runtime::new(cfg, gateway_id, gateway, metrics.clone(), status_tx)?;
        let task = tokio::spawn(rt.run(Inputs {
            events: ev_rx,
            ota: ota_rx,
            topology: topo_rx,
            control: ctl_rx,
        }));
        Ok(BridgeHandle {
            events: ev_tx,
            ota: ota_tx,
            topology: topo_tx,
            control: ctl_tx,
            status: status_rx,
            metrics,
            task,
        })
    }
}

/// The gateway's side of a running bridge. Every feeding method returns at once.
#[derive(Debug)]
pub struct BridgeHandle {
    events: mpsc::Sender<MeshEvent>,
    ota: mpsc::UnboundedSender<MeshEvent>,
    topology: watch::Sender<Option<NodeTree>>,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<BridgeStatus>,
    metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
}

impl BridgeHandle {
    /// The mesh as seen from the gateway (`Node::tree()`), after every change. Only the
    /// latest tree matters, so a burst of changes costs one update.
    pub fn topology(&self, tree: NodeTree) {
        self.topology.send_replace(Some(tree));
    }

    /// A user message (`Event::Received`). Dropped and counted if the bridge is far behind.
    pub fn message(&self, from: u32, msg: Vec<u8>, broadcast: bool) {
        self.feed(MeshEvent::Message {
            from,
            msg,
            broadcast,
        });
    }

    /// A package (`Event::Package`); status packages 203/604/204 are read.
    pub fn package(&self, envelope: Envelope) {
        self.feed(MeshEvent::Package(envelope));
    }

    /// The gateway node's counters and links (call every few seconds).
    pub fn stats(&self, node: NodeStats, links: Vec<LinkStats>) {
        self.feed(MeshEvent::Stats { node, links });
    }

    /// The gateway host's runtime counters, e.g. `NetStats::counters().collect()` (call with
    /// [`Self::stats`]); `/metrics` shows each as `pmesh_net_<name>_total`.
    pub fn runtime_stats(&self, counters: Vec<pmesh_node::Counter>) {
        self.feed(MeshEvent::RuntimeStats(counters));
    }

    /// OTA campaign progress. Never dropped (its own unbounded queue: the gateway reports at
    /// most a few events per chunk, and the bridge drains them continuously).
    pub fn ota(&self, progress: OtaProgress) {
        let _ = self.ota.send(MeshEvent::Ota(progress));
    }

    /// Any [`MeshEvent`].
    pub fn feed(&self, ev: MeshEvent) {
        match ev {
            MeshEvent::Topology(t) => self.topology(t),
            ev @ MeshEvent::Ota(_) => {
                let _ = self.ota.send(ev);
            }
            ev => {
                if self.events.try_send(ev).is_err() {
                    self.metrics.input_dropped.inc();
                }
            }
        }
    }

    /// Publishes a full snapshot (nodes, topology, metrics, alerts, every node state) and
    /// resolves with the number of publishes once the broker acknowledged all of them
    /// (0 when offline or the connection dropped meanwhile).
    pub async fn publish_snapshot(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Snapshot(tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Current connection state.
    pub fn status(&self) -> BridgeStatus {
        self.status.borrow().clone()
    }

    /// Waits until the bridge is online (subscribed and announced), up to `timeout`.
    pub async fn wait_online(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.online))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The Prometheus metrics (render with [`Metrics::render`] or serve with [`Metrics::serve`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes `bridge/state` offline (this session), disconnects and ends the task.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }

    /// Stops the task at once, as if the gateway process were killed (no offline message, no
    /// flush). Durable state is whatever was already written. For tests and crash drills:
    /// resolves once the task has stopped, so a new bridge on the same state directory never
    /// overlaps the killed one.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
