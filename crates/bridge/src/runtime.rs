//! The bridge task: one tokio task that owns the model, the outbox and the MQTT connection.
//!
//! Connection life cycle (a fresh connection, `crate::conn`, each time, so nothing is silently
//! re-sent or dropped inside the client):
//!
//! 1. connect with the last will `{"state":"offline","session":N}` (retained);
//! 2. on CONNACK subscribe to every command topic and wait for the SUBACK;
//! 3. only then publish `bridge/state` online (same session), then every retained topic
//!    (info, health, status snapshot, node states and availability, HA discovery);
//! 4. replay the outbox (events and alerts not yet acknowledged) in order;
//! 5. an outbox entry leaves the outbox only on its PUBACK, and nothing else is written behind
//!    it until then (see `crate::conn` on why that keeps a stopping broker from duplicating it).
//!
//! A stale will (from an older session whose connection the broker declared dead late)
//! arriving on `bridge/state` while online is answered at once by re-publishing online.
//!
//! Layout, one concern per file, all `impl Runtime`: this file holds the task's loop, the
//! model's changes turned into events and alerts, and mesh input; `session` the MQTT session
//! and the outbox; `publish` the retained topics built from the model; `input` MQTT requests
//! (typed by `crate::request`) and commands.

mod input;
mod publish;
mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmesh_proto::NodeTree;
use rumqttc::QoS;
use serde_json::{Value as J, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::BridgeConfig;
use crate::conn::Tag;
use crate::gateway::{Gateway, MeshEvent};
use crate::metrics::Metrics;
use crate::model::{Change, Model};
use crate::outbox::Outbox;
use crate::payload::Topics;
use crate::status::StatusReport;
use session::{Conn, recv_conn};

/// Control messages from the handle.
#[derive(Debug)]
pub(crate) enum Control {
    /// Publish a full snapshot; answer when the broker acknowledged all of it.
    Snapshot(oneshot::Sender<usize>),
    /// Publish offline and disconnect.
    Shutdown(oneshot::Sender<()>),
}

/// What the bridge reports about itself (for hosts and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Connected, subscribed and announced online.
    pub online: bool,
    /// Current session counter.
    pub session: u64,
    /// Events and alerts waiting for acknowledgement.
    pub outbox: usize,
    /// Connections made so far.
    pub connections: u64,
    /// Sequence number of the last event or alert created (0 = none yet).
    pub last_seq: u64,
}

pub(crate) struct Inputs {
    pub events: mpsc::Receiver<MeshEvent>,
    pub ota: mpsc::UnboundedReceiver<MeshEvent>,
    pub topology: watch::Receiver<Option<NodeTree>>,
    pub control: mpsc::UnboundedReceiver<Control>,
}

pub(crate) struct Runtime {
    cfg: BridgeConfig,
    topics: Topics,
    model: Model,
    outbox: Outbox,
    metrics: Metrics,
    gateway: Arc<dyn Gateway>,
    status_tx: watch::Sender<BridgeStatus>,
    session: u64,
    /// Shutdown has begun: our own offline state echoed back is the truth, not a stale will.
    stopping: bool,
    connections: u64,
    started: Instant,
    conn: Option<Conn>,
    backoff: Duration,
    reconnect_at: Instant,
    snapshot_no: u64,
    /// Pages currently retained per paged topic (so stale pages are cleared).
    pages: HashMap<String, usize>,
    dirty_nodes: BTreeSet<u32>,
    /// Nodes the model dropped whose retained topics are still to be cleared.
    removed_nodes: BTreeSet<u32>,
    dirty_status: bool,
    flush_at: Option<Instant>,
    waiters: HashMap<u64, (usize, usize, oneshot::Sender<usize>)>,
    next_waiter: u64,
    next_campaign: u64,
    ota_marker: Option<PathBuf>,
    session_file: Option<PathBuf>,
    /// `bridge_publishes` by kind, looked up once (a publish is counted per call).
    publish_counters: HashMap<&'static str, prometheus_client::metrics::counter::Counter>,
    /// MQTT input refused, by reason (also on `/metrics`; shown in `bridge/health`).
    rejected: BTreeMap<&'static str, u64>,
    /// Retained requests already answered (each is answered once per process).
    retained_answered: input::SeenSet,
    /// Warnings about refused input, rate-limited.
    reject_log: input::LogLimit,
}

fn q1() -> QoS {
    QoS::AtLeastOnce
}

impl Runtime {
    pub(crate) fn new(
        cfg: BridgeConfig,
        gateway_id: u32,
        gateway: Arc<dyn Gateway>,
        metrics: Metrics,
        status_tx: watch::Sender<BridgeStatus>,
    ) -> anyhow::Result<Self> {
        let topics = Topics {
            prefix: cfg.prefix.clone(),
            legacy: cfg.legacy_prefix.clone(),
            ha: cfg.ha_prefix.clone(),
        };
        let (outbox, session_file, ota_marker) = match &cfg.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                let ob = Outbox::open(
                    &d.join("outbox.jsonl"),
                    cfg.outbox_capacity,
                    cfg.outbox_fsync,
                )?;
                (ob, Some(d.join("session")), Some(d.join("ota.json")))
            }
            None => (Outbox::in_memory(cfg.outbox_capacity), None, None),
        };
        let persisted = session_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        // Without a state file, start from the clock (ms) so a restarted gateway still counts up.
        let session = persisted.unwrap_or_else(|| cfg.clock.now_ms().unwrap_or(0));
        let model = Model::new(gateway_id, cfg.alerts);
        let now = Instant::now();
        let mut rt = Runtime {
            next_campaign: cfg.clock.now_ms().unwrap_or(1),
            backoff: cfg.broker.reconnect_min,
            cfg,
            topics,
            model,
            outbox,
            metrics,
            gateway,
            status_tx,
            session,
            stopping: false,
            connections: 0,
            started: now,
            conn: None,
            reconnect_at: now,
            snapshot_no: 0,
            pages: HashMap::new(),
            dirty_nodes: BTreeSet::new(),
            removed_nodes: BTreeSet::new(),
            dirty_status: false,
            flush_at: None,
            waiters: HashMap::new(),
            next_waiter: 0,
            ota_marker,
            session_file,
            publish_counters: HashMap::new(),
            rejected: BTreeMap::new(),
            retained_answered: input::SeenSet::default(),
            reject_log: input::LogLimit::default(),
        };
        rt.recover_interrupted_campaign();
        Ok(rt)
    }

    fn now_ms(&self) -> Option<u64> {
        self.cfg.clock.now_ms()
    }

    /// A campaign that was running when the gateway stopped cannot be running now: the nodes
    /// it showed as updating are shown idle again and the campaign is reported interrupted.
    fn recover_interrupted_campaign(&mut self) {
        let Some(path) = self.ota_marker.clone() else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        let Ok(v) = serde_json::from_str::<J>(&text) else {
            return;
        };
        let campaign = v["campaign"].as_u64().unwrap_or(0);
        self.next_campaign = self.next_campaign.max(campaign + 1);
        let nodes: Vec<u32> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect();
        for id in &nodes {
            let now = self.now_ms();
            self.model.nodes.entry(*id).or_insert_with(|| {
                let mut r = Model::new(*id, self.cfg.alerts)
                    .nodes
                    .remove(id)
                    .expect("fresh model holds its gateway");
                r.online = false;
                r.last_seen = now;
                r
            });
            self.dirty_nodes.insert(*id);
        }
        self.emit_event("ota_finished", json!({"campaign": campaign, "result": "interrupted", "reason": "gateway restarted during the campaign", "nodesReset": nodes}));
    }

    fn save_ota_marker(&self) {
        let Some(path) = &self.ota_marker else { return };
        match self
            .model
            .campaign
            .as_ref()
            .filter(|c| c.state == "running")
        {
            Some(c) => {
                let nodes: Vec<u32> = self
                    .model
                    .nodes
                    .iter()
                    .filter(|(_, r)| r.update.campaign == Some(c.id))
                    .map(|(id, _)| *id)
                    .collect();
                let _ = std::fs::write(path, json!({"campaign": c.id, "nodes": nodes}).to_string());
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn publish_status(&self) {
        let online = self.conn.as_ref().is_some_and(|c| c.online);
        self.metrics.connected.set(i64::from(online));
        self.metrics.outbox_depth.set(self.outbox.len() as i64);
        self.status_tx.send_replace(BridgeStatus {
            online,
            session: self.session,
            outbox: self.outbox.len(),
            connections: self.connections,
            last_seq: self.outbox.next_seq() - 1,
        });
    }

    pub(crate) async fn run(mut self, mut inp: Inputs) {
        if let Some(addr) = self.cfg.metrics_addr {
            match self.metrics.serve_with(addr, self.cfg.metrics_http).await {
                Ok((a, _task)) => tracing::info!("Prometheus metrics on http://{a}/metrics"),
                Err(e) => tracing::error!("cannot serve metrics on {addr}: {e}"),
            }
        }
        let mut tick = tokio::time::interval(self.cfg.publish_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut topology_open = true;
        let mut synced = Instant::now();
        self.metrics.sync(&self.model);
        loop {
            // Prometheus series follow the model at most every 250 ms: O(nodes) per sync.
            if synced.elapsed() >= Duration::from_millis(250) {
                self.metrics.sync(&self.model);
                synced = Instant::now();
            }
            self.publish_status();
            if self.conn.is_none() && Instant::now() >= self.reconnect_at {
                self.connect();
            }
            let reconnect = tokio::time::Instant::from_std(self.reconnect_at);
            let flush = self.flush_at.map(tokio::time::Instant::from_std);
            let no_conn = self.conn.is_none();
            tokio::select! {
                biased;
                c = inp.control.recv() => match c {
                    Some(Control::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Control::Snapshot(done)) => self.snapshot_with_ack(done).await,
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                ev = recv_conn(&mut self.conn) => self.on_conn_event(ev).await,
                r = inp.topology.changed(), if topology_open => match r {
                    Ok(()) => {
                        let tree = inp.topology.borrow_and_update().clone();
                        if let Some(tree) = tree {
                            let ch = self.model.apply_tree(tree, self.now_ms());
                            self.apply(ch);
                        }
                    }
                    Err(_) => topology_open = false,
                },
                Some(ev) = inp.ota.recv() => self.on_mesh(ev).await,
                Some(ev) = inp.events.recv() => self.on_mesh(ev).await,
                _ = tick.tick() => self.periodic().await,
                _ = tokio::time::sleep_until(reconnect), if no_conn => {}
                _ = sleep_opt(flush) => self.flush().await,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            self.send_pending().await;
            self.flush_requests().await;
        }
    }

    // ----- periodic publishing -----------------------------------------------------------

    async fn periodic(&mut self) {
        let health = self.health_json();
        self.publish_json(self.topics.t("bridge/health"), &health, true, "state")
            .await;
        self.publish_status_topics(Tag::Plain).await;
        self.dirty_status = false;
    }

    async fn flush(&mut self) {
        self.flush_at = None;
        if !self.online() {
            return;
        }
        if self.dirty_status {
            self.dirty_status = false;
            self.publish_status_topics(Tag::Plain).await;
        }
        for id in std::mem::take(&mut self.removed_nodes) {
            if !self.model.nodes.contains_key(&id) {
                self.clear_node_topics(id).await;
            }
        }
        let ids = std::mem::take(&mut self.dirty_nodes);
        for id in ids {
            if self.model.nodes.contains_key(&id) {
                self.publish_node(id, Tag::Plain).await;
                self.announce_ha(id, false).await;
            }
        }
    }

    fn mark_dirty(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + Duration::from_millis(200));
        }
    }

    // ----- model changes → events --------------------------------------------------------

    fn apply(&mut self, changes: Vec<Change>) {
        let mut ota_touched = false;
        for ch in changes {
            match ch {
                Change::Event(kind, data) => {
                    ota_touched |= kind.starts_with("ota_");
                    self.emit_event(kind, data);
                }
                Change::NodeState(id) | Change::Availability(id, _) => {
                    self.dirty_nodes.insert(id);
                    self.mark_dirty();
                }
                Change::Topology => {
                    self.dirty_status = true;
                    self.mark_dirty();
                }
                Change::Removed(id) => {
                    self.dirty_nodes.remove(&id);
                    self.removed_nodes.insert(id);
                    self.mark_dirty();
                }
                Change::AlertRaised(key) => {
                    let id = self.outbox.next_seq();
                    if let Some(a) = self.model.alerts.get_mut(&key) {
                        a.id = id;
                        let data = a.to_json();
                        self.emit_alert("alert_raised", data);
                    }
                    self.dirty_status = true;
                    self.mark_dirty();
                }
                Change::AlertCleared(a) => {
                    let mut data = a.to_json();
                    data["clearedAt"] = self.now_ms().map_or(J::Null, J::from);
                    self.emit_alert("alert_cleared", data);
                    self.dirty_status = true;
                    self.mark_dirty();
                }
            }
        }
        if ota_touched {
            self.save_ota_marker();
        }
    }
}

impl Runtime {
    // ----- mesh input ---------------------------------------------------------------------

    async fn on_mesh(&mut self, ev: MeshEvent) {
        let now = self.now_ms();
        match ev {
            MeshEvent::Topology(tree) => {
                let ch = self.model.apply_tree(tree, now);
                self.apply(ch);
            }
            MeshEvent::Message {
                from,
                msg,
                broadcast,
            } => {
                self.model.on_message(from, broadcast, now);
                if let Some(report) = StatusReport::from_user_message(&msg) {
                    let ch = self.model.on_status(report, now);
                    self.apply(ch);
                }
                if self.online() {
                    if self.cfg.streams.mesh_messages {
                        self.raw_publish(
                            self.topics.t(&format!("from/{from}")),
                            msg.clone(),
                            false,
                            Tag::Plain,
                            "message",
                        )
                        .await;
                    }
                    if self.cfg.streams.legacy_gateway {
                        self.raw_publish(
                            format!("{}/from/{from}", self.topics.legacy),
                            msg,
                            false,
                            Tag::Plain,
                            "message",
                        )
                        .await;
                    }
                }
            }
            MeshEvent::Package(env) => {
                self.model.counters.packages += 1;
                match StatusReport::from_object(&env.body) {
                    Some(report) => {
                        let ch = self.model.on_status(report, now);
                        self.apply(ch);
                    }
                    None if matches!(env.ty, 203 | 204 | 604) => {
                        self.metrics
                            .invalid_input
                            .get_or_create(&vec![("source".into(), "mesh".into())])
                            .inc();
                    }
                    None => {}
                }
            }
            MeshEvent::Stats { node, links } => {
                self.model.gateway_stats = node;
                self.model.links = links;
            }
            MeshEvent::RuntimeStats(counters) => self.model.runtime_stats = counters,
            MeshEvent::Ota(p) => {
                let ch = self.model.on_ota(p, now);
                self.apply(ch);
            }
        }
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resident set size of this process (Linux), for `bridge/health`.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
