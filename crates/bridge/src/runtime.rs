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

mod input;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmesh_proto::NodeTree;
use rumqttc::{LastWill, Publish, QoS, Subscribe, SubscribeFilter};
use serde_json::{Map, Value as J, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::BridgeConfig;
use crate::conn::{ConnEvent, Connection, Endpoint, Out, Tag};
use crate::gateway::{Gateway, MeshEvent};
use crate::ha;
use crate::metrics::Metrics;
use crate::model::{Alert, Change, Model};
use crate::outbox::Outbox;
use crate::payload::{Topics, packet_size, page, stamp};
use crate::status::StatusReport;

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

/// Requests handed to the connection task per channel message (fewer wake-ups, fewer writes).
const BATCH: usize = 64;

/// Most outbox entries handed to the connection and not yet acknowledged. The connection
/// writes them one at a time anyway (each is a barrier, see `crate::conn`); this only bounds
/// what waits in between.
const EVENT_WINDOW: usize = 64;

struct Conn {
    link: Connection,
    /// Requests not yet handed to the connection task (flushed at the end of every loop pass).
    batch: Vec<Out>,
    subscribed: bool,
    online: bool,
    /// QoS 1 publishes handed to the connection and not acknowledged yet.
    unacked: usize,
    /// The connection task has ended; only its remaining events are still read.
    ended: bool,
    /// Highest outbox sequence number handed to this connection.
    events_sent_upto: u64,
    /// Outbox entries handed to this connection and not acknowledged yet.
    events_in_flight: usize,
    ha_announced: BTreeSet<u32>,
}

impl Conn {
    /// Queues a request; hands a full batch over. False if the connection task has ended.
    async fn push(&mut self, out: Out) -> bool {
        if self.ended {
            return false;
        }
        self.batch.push(out);
        self.batch.len() < BATCH || self.flush().await
    }

    /// Hands queued requests over. False if the connection task has ended.
    async fn flush(&mut self) -> bool {
        !self.ended
            && (self.batch.is_empty() || self.link.send(std::mem::take(&mut self.batch)).await)
    }
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

    // ----- connection -----------------------------------------------------------------

    fn connect(&mut self) {
        self.session += 1;
        if let Some(p) = &self.session_file {
            let _ = std::fs::write(p, self.session.to_string());
        }
        let b = &self.cfg.broker;
        let mut connect = rumqttc::Connect::new(b.client_id.clone());
        connect.keep_alive = b.keep_alive.max(Duration::from_secs(5)).as_secs() as u16;
        connect.clean_session = true;
        if let Some(u) = &b.username {
            connect.set_login(u.clone(), b.password.clone().unwrap_or_default());
        }
        let will = json!({"state": "offline", "session": self.session}).to_string();
        connect.last_will = Some(LastWill::new(self.topics.state(), will, q1(), true));
        let tls = match b.tls.as_ref().map(crate::tls::client_config).transpose() {
            Ok(t) => t.map(Arc::new),
            Err(e) => {
                tracing::error!("TLS configuration: {e}");
                self.schedule_reconnect();
                return;
            }
        };
        let endpoint = Endpoint {
            host: b.host.clone(),
            port: b.port,
            tls,
            connect,
            // Flow control: QoS 1 publishes in flight. A 1,000-node snapshot is ~2,000
            // publishes; a window that holds it whole costs one round trip instead of several.
            inflight: 4096,
            max_packet_size: b.max_packet_size,
        };
        self.conn = Some(Conn {
            link: Connection::start(endpoint, 256),
            batch: Vec::new(),
            subscribed: false,
            online: false,
            unacked: 0,
            ended: false,
            events_sent_upto: 0,
            events_in_flight: 0,
            ha_announced: BTreeSet::new(),
        });
    }

    fn schedule_reconnect(&mut self) {
        self.reconnect_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.cfg.broker.reconnect_max);
    }

    fn drop_conn(&mut self, why: &str) {
        if self.conn.take().is_some() {
            tracing::warn!("MQTT connection lost: {why}");
        }
        // Unacknowledged snapshot waiters cannot complete on a dead connection.
        self.waiters.clear();
        self.schedule_reconnect();
    }

    /// The connection task has ended (a request could not be handed over). Its handle is kept
    /// until its last events are read: PUBACKs it received before ending are reported ahead
    /// of its `Down`, and dropping them would send those events again after reconnecting.
    fn conn_ended(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            c.ended = true;
            c.online = false;
            c.batch.clear();
        }
    }

    async fn on_conn_event(&mut self, ev: Option<ConnEvent>) {
        let Some(ev) = ev else {
            return self.drop_conn("connection task ended");
        };
        match ev {
            ConnEvent::Down(why) => self.drop_conn(&why),
            ConnEvent::Connected => {
                self.connections += 1;
                self.metrics.connections.inc();
                self.backoff = self.cfg.broker.reconnect_min;
                let mut filters = vec![self.topics.state(), self.topics.t("bridge/request/#")];
                if self.cfg.streams.commands {
                    filters.push(self.topics.t("command/#"));
                }
                if self.cfg.streams.legacy_gateway {
                    filters.push(format!("{}/to/#", self.topics.legacy));
                }
                if self.cfg.streams.ha_discovery {
                    filters.push(format!("{}/status", self.topics.ha));
                }
                let subs =
                    Subscribe::new_many(filters.into_iter().map(|f| SubscribeFilter::new(f, q1())));
                if let Some(c) = self.conn.as_mut()
                    && !(c.push(Out::Subscribe(subs)).await && c.flush().await)
                {
                    self.conn_ended();
                }
            }
            ConnEvent::SubAck => {
                let first = self
                    .conn
                    .as_mut()
                    .is_some_and(|c| !std::mem::replace(&mut c.subscribed, true));
                if first {
                    self.go_online().await;
                }
            }
            ConnEvent::Acked(tags) => {
                if let Some(c) = self.conn.as_mut() {
                    c.unacked = c.unacked.saturating_sub(tags.len());
                }
                for tag in tags {
                    self.on_ack(tag);
                }
            }
            ConnEvent::Message(p) => self.on_publish(p).await,
            ConnEvent::Oversize(o) => self.on_oversize(o).await,
        }
    }

    fn on_ack(&mut self, tag: Tag) {
        match tag {
            Tag::Plain => {}
            Tag::Outbox(seq) => {
                self.outbox.ack(seq);
                if let Some(c) = self.conn.as_mut() {
                    c.events_in_flight = c.events_in_flight.saturating_sub(1);
                }
            }
            Tag::Waiter(w) => {
                if let Some(entry) = self.waiters.get_mut(&w) {
                    entry.1 += 1;
                    if entry.1 >= entry.0
                        && let Some((n, _, tx)) = self.waiters.remove(&w)
                    {
                        let _ = tx.send(n);
                    }
                }
            }
        }
    }

    async fn go_online(&mut self) {
        let state = json!({"state": "online", "session": self.session}).to_string();
        self.raw_publish(
            self.topics.state(),
            state.into_bytes(),
            true,
            Tag::Plain,
            "state",
        )
        .await;
        if let Some(c) = self.conn.as_mut() {
            c.online = true;
        }
        tracing::info!("MQTT online (session {})", self.session);
        self.publish_all_retained(None).await;
        // The outbox is replayed from its oldest entry by `send_pending`, a window at a time.
        self.send_pending().await;
    }

    async fn shutdown(&mut self) {
        self.stopping = true;
        if self.conn.as_ref().is_some_and(|c| c.online) {
            let state = json!({"state": "offline", "session": self.session}).to_string();
            self.raw_publish(
                self.topics.state(),
                state.into_bytes(),
                true,
                Tag::Plain,
                "state",
            )
            .await;
            // Give the client a moment to put the offline state and pending acks on the wire.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            self.flush_requests().await;
            while self.conn.as_ref().is_some_and(|c| c.unacked > 0) {
                match tokio::time::timeout_at(deadline, recv_conn(&mut self.conn)).await {
                    Ok(ev) => self.on_conn_event(ev).await,
                    Err(_) => break,
                }
            }
            if let Some(c) = self.conn.as_mut()
                && c.push(Out::Disconnect).await
                && c.flush().await
            {
                // Wait for the DISCONNECT to be written (the task then reports Down).
                let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
                while let Ok(Some(ev)) =
                    tokio::time::timeout_at(deadline, recv_conn(&mut self.conn)).await
                {
                    if matches!(ev, ConnEvent::Down(_)) {
                        break;
                    }
                }
            }
        }
        self.conn = None;
        self.publish_status();
    }

    /// Hands one publish to the client; false if there is no usable connection or it is too large.
    async fn raw_publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        tag: Tag,
        kind: &'static str,
    ) -> bool {
        if packet_size(&topic, payload.len()) > self.cfg.broker.max_packet_size {
            tracing::warn!(
                "not publishing {} bytes on {topic}: over the broker packet limit",
                payload.len()
            );
            self.metrics
                .invalid_input
                .get_or_create(&vec![("source".into(), "oversized_publish".into())])
                .inc();
            return false;
        }
        let qos = if kind == "message" {
            QoS::AtMostOnce
        } else {
            q1()
        };
        if !rumqttc::valid_topic(&topic) {
            tracing::warn!("not publishing on {topic:?}: not a valid topic name");
            self.metrics
                .invalid_input
                .get_or_create(&vec![("source".into(), "invalid_topic".into())])
                .inc();
            return false;
        }
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let len = payload.len();
        let mut publish = Publish::new(topic, qos, payload);
        publish.retain = retain;
        // An outbox event is a barrier: see `crate::conn`.
        let barrier = matches!(tag, Tag::Outbox(_));
        if qos != QoS::AtMostOnce {
            c.unacked += 1;
        }
        let out = Out::Publish {
            publish,
            tag,
            barrier,
        };
        if !c.push(out).await {
            self.conn_ended();
            return false;
        }
        let counter = self.publish_counters.entry(kind).or_insert_with(|| {
            self.metrics
                .publishes
                .get_or_create(&vec![("kind".into(), kind.into())])
                .clone()
        });
        counter.inc();
        self.metrics.publish_bytes.inc_by(len as u64);
        true
    }

    /// Hands every queued request to the connection task.
    async fn flush_requests(&mut self) {
        if let Some(c) = self.conn.as_mut()
            && !c.flush().await
        {
            self.conn_ended();
        }
    }

    fn online(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.online)
    }

    async fn publish_json(
        &mut self,
        topic: String,
        v: &J,
        retain: bool,
        kind: &'static str,
    ) -> bool {
        if !self.online() {
            return false;
        }
        self.raw_publish(topic, v.to_string().into_bytes(), retain, Tag::Plain, kind)
            .await
    }

    // ----- state publishing -------------------------------------------------------------

    fn info_json(&self) -> J {
        let s = &self.cfg.streams;
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gatewayNodeId": self.model.gateway,
            "session": self.session,
            "prefix": self.cfg.prefix,
            "config": {
                "publishInterval": self.cfg.publish_interval.as_secs_f64(),
                "maxPacketSize": self.cfg.broker.max_packet_size,
                "streams": {
                    "nodes": s.nodes, "topology": s.topology, "metrics": s.metrics, "alerts": s.alerts,
                    "nodeState": s.node_state, "meshMessages": s.mesh_messages, "legacyGateway": s.legacy_gateway,
                    "commands": s.commands, "events": s.events, "haDiscovery": s.ha_discovery,
                },
                "alerts": {
                    "partitionShare": self.cfg.alerts.partition_share,
                    "lowMemoryKB": self.cfg.alerts.low_memory_kb,
                    "highLossPercent": self.cfg.alerts.high_loss_percent,
                },
            },
        });
        stamp(&mut v, self.now_ms());
        v
    }

    fn health_json(&self) -> J {
        let mut v = json!({
            "healthy": self.online() && self.outbox.is_empty(),
            "uptime": self.started.elapsed().as_secs(),
            "mqtt": {
                "connected": self.online(),
                "session": self.session,
                "connections": self.connections,
                "outboxDepth": self.outbox.len(),
                "outboxDropped": self.outbox.dropped,
                "requestsRejected": self.rejected,
            },
            "mesh": {
                "nodeCount": self.model.node_count(),
                "links": self.model.tree.subs.len(),
                "activeAlerts": self.model.alerts.len(),
            },
            "process": {"rssBytes": rss_bytes()},
        });
        if self.cfg.metrics_addr.is_some() {
            v["metricsHttp"] = json!(self.metrics.http.summary());
        }
        stamp(&mut v, self.now_ms());
        v
    }

    fn nodes_json(&self) -> (Vec<J>, Map<String, J>) {
        let ids: Vec<J> = self.model.online_ids().into_iter().map(J::from).collect();
        let mut m = Map::new();
        m.insert("count".into(), J::from(ids.len()));
        let mut t = J::Object(Map::new());
        stamp(&mut t, self.now_ms());
        if let J::Object(tm) = t {
            m.extend(tm);
        }
        (ids, m)
    }

    fn metrics_json(&self) -> J {
        let c = &self.model.counters;
        let root = self.model.root_id();
        let root_rec = root.and_then(|r| self.model.nodes.get(&r));
        let heap = root_rec.and_then(|r| {
            r.metrics
                .as_ref()
                .and_then(|m| m.heap)
                .or(r.status.as_ref().and_then(|s| s.mem_kb.map(|k| k * 1024)))
        });
        let mut v = json!({
            "nodeCount": self.model.node_count(),
            "rootNodeId": root,
            "gatewayNodeId": self.model.gateway,
            "uptime": self.started.elapsed().as_secs(),
            "freeHeap": heap,
            "freeHeapKB": heap.map(|h| h / 1024),
            "depth": self.model.tree.depth(),
            "messages": {
                "receivedSingle": c.rx_single, "receivedBroadcast": c.rx_broadcast,
                "sentSingle": c.tx_single, "sentBroadcast": c.tx_broadcast,
                "packages": c.packages, "statusReports": c.status_reports,
            },
            "topologyChanges": c.topology_changes,
            "nodeRecordsDropped": {"evicted": c.nodes_evicted, "refused": c.nodes_refused},
            "ota": {
                "campaigns": c.ota_campaigns, "running": self.model.ota_running(),
                "nodesUpdated": c.ota_nodes_done, "nodesFailed": c.ota_nodes_failed, "bytesSent": c.ota_bytes,
            },
            "alerts": self.model.alerts.len(),
        });
        stamp(&mut v, self.now_ms());
        v
    }

    fn alerts_json(&self) -> J {
        let mut v =
            json!({"alerts": self.model.alerts.values().map(Alert::to_json).collect::<Vec<_>>()});
        stamp(&mut v, self.now_ms());
        v
    }

    fn topology_json(&self) -> J {
        let text = String::from_utf8_lossy(&self.model.tree.to_json()).into_owned();
        let mut v: J = serde_json::from_str(&text).unwrap_or(J::Null);
        stamp(&mut v, self.now_ms());
        v
    }

    /// Publishes a snapshot topic whole, or paged when it exceeds the packet limit.
    /// Returns the number of publishes handed to the client.
    async fn publish_snapshot(
        &mut self,
        topic: String,
        whole: J,
        key: &str,
        items: impl FnOnce(&Self) -> (Vec<J>, Map<String, J>),
        tag: Tag,
    ) -> usize {
        let text = whole.to_string();
        let max = self.cfg.broker.max_packet_size;
        let mut n = 0;
        let old_pages = self.pages.get(&topic).copied().unwrap_or(0);
        let new_pages;
        if packet_size(&topic, text.len()) <= max {
            n += usize::from(
                self.raw_publish(topic.clone(), text.into_bytes(), true, tag, "state")
                    .await,
            );
            new_pages = 0;
        } else {
            self.snapshot_no += 1;
            let (list, extra) = items(self);
            let paged = page(&topic, key, &list, extra, self.snapshot_no, max);
            new_pages = paged.pages.len();
            // Pages first, index last: a reader who sees the index finds its pages.
            for (i, p) in paged.pages.iter().enumerate() {
                n += usize::from(
                    self.raw_publish(
                        format!("{topic}/page/{i}"),
                        p.to_string().into_bytes(),
                        true,
                        tag,
                        "state",
                    )
                    .await,
                );
            }
            n += usize::from(
                self.raw_publish(
                    topic.clone(),
                    paged.index.to_string().into_bytes(),
                    true,
                    tag,
                    "state",
                )
                .await,
            );
        }
        for i in new_pages..old_pages {
            // Clear pages left from a larger earlier snapshot.
            n += usize::from(
                self.raw_publish(format!("{topic}/page/{i}"), Vec::new(), true, tag, "state")
                    .await,
            );
        }
        self.pages.insert(topic, new_pages);
        n
    }

    /// The status snapshot: nodes, topology, metrics, alerts (each if its stream is on).
    async fn publish_status_topics(&mut self, tag: Tag) -> usize {
        if !self.online() {
            return 0;
        }
        let mut n = 0;
        let s = self.cfg.streams;
        if s.nodes {
            let (ids, extra) = self.nodes_json();
            let mut whole = J::Object(extra);
            whole["nodes"] = J::Array(ids);
            let whole = reorder_nodes(whole);
            n += self
                .publish_snapshot(
                    self.topics.t("status/nodes"),
                    whole,
                    "nodes",
                    |me| me.nodes_json(),
                    tag,
                )
                .await;
        }
        if s.topology {
            let whole = self.topology_json();
            n += self
                .publish_snapshot(
                    self.topics.t("status/topology"),
                    whole,
                    "nodes",
                    |me| {
                        // Paged form: a flat list of {nodeId, parent[, root]} in tree order.
                        let mut list = Vec::new();
                        flatten(&me.model.tree, None, &mut list);
                        let mut extra = Map::new();
                        extra.insert("nodeId".into(), J::from(me.model.tree.node_id));
                        let mut t = J::Object(Map::new());
                        stamp(&mut t, me.now_ms());
                        if let J::Object(tm) = t {
                            extra.extend(tm);
                        }
                        (list, extra)
                    },
                    tag,
                )
                .await;
        }
        if s.metrics {
            let v = self.metrics_json();
            n += usize::from(
                self.raw_publish(
                    self.topics.t("status/metrics"),
                    v.to_string().into_bytes(),
                    true,
                    tag,
                    "state",
                )
                .await,
            );
        }
        if s.alerts {
            let v = self.alerts_json();
            n += self
                .publish_snapshot(
                    self.topics.t("status/alerts"),
                    v,
                    "alerts",
                    |me| {
                        let mut t = J::Object(Map::new());
                        stamp(&mut t, me.now_ms());
                        let J::Object(extra) = t else { unreachable!() };
                        (
                            me.model.alerts.values().map(Alert::to_json).collect(),
                            extra,
                        )
                    },
                    tag,
                )
                .await;
        }
        n
    }

    async fn publish_node(&mut self, id: u32, tag: Tag) -> usize {
        if !self.cfg.streams.node_state || !self.online() {
            return 0;
        }
        let v = self.model.node_payload(id, self.now_ms());
        let mut n = usize::from(
            self.raw_publish(self.topics.node(id), v, true, tag, "state")
                .await,
        );
        let online = self.model.nodes.get(&id).is_some_and(|r| r.online);
        let a: &[u8] = if online {
            br#"{"state":"online"}"#
        } else {
            br#"{"state":"offline"}"#
        };
        n += usize::from(
            self.raw_publish(self.topics.availability(id), a.to_vec(), true, tag, "state")
                .await,
        );
        n
    }

    async fn announce_ha(&mut self, id: u32, force: bool) {
        if !self.cfg.streams.ha_discovery || !self.online() {
            return;
        }
        if !force
            && self
                .conn
                .as_ref()
                .is_some_and(|c| c.ha_announced.contains(&id))
        {
            return;
        }
        let gw = self.model.gateway;
        let (unique, v) = if id == gw {
            (ha::gateway_unique(gw), ha::gateway_config(&self.topics, gw))
        } else {
            let fw = self
                .model
                .nodes
                .get(&id)
                .and_then(|r| r.status.as_ref())
                .and_then(|s| s.fw.clone());
            (
                ha::node_unique(id),
                ha::node_config(&self.topics, gw, id, fw.as_deref()),
            )
        };
        let topic = self.topics.ha_device(&unique);
        if self
            .raw_publish(topic, v.to_string().into_bytes(), true, Tag::Plain, "state")
            .await
            && let Some(c) = self.conn.as_mut()
        {
            c.ha_announced.insert(id);
        }
    }

    /// Every retained topic (after each connect, and on `resync`).
    async fn publish_all_retained(&mut self, tag: Option<Tag>) -> usize {
        let tag = tag.unwrap_or(Tag::Plain);
        let mut n = 0;
        let info = self.info_json();
        n += usize::from(
            self.publish_json(self.topics.t("bridge/info"), &info, true, "state")
                .await,
        );
        let health = self.health_json();
        n += usize::from(
            self.publish_json(self.topics.t("bridge/health"), &health, true, "state")
                .await,
        );
        n += self.publish_status_topics(tag).await;
        let ids: Vec<u32> = self.model.nodes.keys().copied().collect();
        for id in &ids {
            n += self.publish_node(*id, tag).await;
        }
        self.announce_ha(self.model.gateway, true).await;
        for id in ids {
            if id != self.model.gateway {
                self.announce_ha(id, true).await;
            }
        }
        self.dirty_nodes.clear();
        self.dirty_status = false;
        n
    }

    async fn snapshot_with_ack(&mut self, done: oneshot::Sender<usize>) {
        if !self.online() {
            let _ = done.send(0);
            return;
        }
        let w = self.next_waiter;
        self.next_waiter += 1;
        let tag = Tag::Waiter(w);
        let mut n = self.publish_status_topics(tag).await;
        let ids: Vec<u32> = self.model.nodes.keys().copied().collect();
        for id in ids {
            n += self.publish_node(id, tag).await;
        }
        if n == 0 {
            let _ = done.send(0);
        } else {
            self.waiters.insert(w, (n, 0, done));
        }
    }

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

    /// Clears a dropped node's retained topics (state, availability, HA discovery).
    async fn clear_node_topics(&mut self, id: u32) {
        let mut topics = vec![self.topics.node(id), self.topics.availability(id)];
        if self.cfg.streams.ha_discovery {
            topics.push(self.topics.ha_device(&ha::node_unique(id)));
        }
        for topic in topics {
            self.raw_publish(topic, Vec::new(), true, Tag::Plain, "state")
                .await;
        }
        if let Some(c) = self.conn.as_mut() {
            c.ha_announced.remove(&id);
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

    fn emit_alert(&mut self, kind: &'static str, data: J) {
        if self.cfg.streams.alerts {
            self.queue_event(kind, data);
        }
    }

    fn emit_event(&mut self, kind: &'static str, data: J) {
        if self.cfg.streams.events {
            self.queue_event(kind, data);
        }
    }

    /// Puts an event into the outbox (durably) and publishes it now if online.
    fn queue_event(&mut self, kind: &'static str, data: J) {
        let seq = self.outbox.next_seq();
        let mut v = json!({"type": kind, "data": data, "seq": seq, "session": self.session});
        stamp(&mut v, self.now_ms());
        let topic = self.topics.t("bridge/event");
        let dropped_before = self.outbox.dropped;
        self.outbox.push(topic, v.to_string());
        if self.outbox.dropped > dropped_before {
            self.metrics
                .outbox_dropped
                .inc_by(self.outbox.dropped - dropped_before);
        }
    }
}

impl Runtime {
    /// Hands outbox entries not yet sent on this connection to it, oldest first, while fewer
    /// than [`EVENT_WINDOW`] are unacknowledged. Called every loop pass: a replay of thousands
    /// of events after an outage never holds up the loop, and events created meanwhile follow
    /// it in `seq` order.
    async fn send_pending(&mut self) {
        loop {
            let Some(c) = self.conn.as_ref().filter(|c| c.online && !c.ended) else {
                return;
            };
            if c.events_in_flight >= EVENT_WINDOW {
                return;
            }
            let Some(e) = self.outbox.after(c.events_sent_upto).next() else {
                return;
            };
            let (seq, topic, payload) = (e.seq, e.topic.clone(), e.payload.clone());
            if let Some(c) = self.conn.as_mut() {
                c.events_sent_upto = seq;
                c.events_in_flight += 1;
            }
            if !self
                .raw_publish(
                    topic,
                    payload.into_bytes(),
                    false,
                    Tag::Outbox(seq),
                    "event",
                )
                .await
                && let Some(c) = self.conn.as_mut()
            {
                // Not handed over (too large for the broker): it stays queued, counted.
                c.events_in_flight -= 1;
            }
        }
    }

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
            MeshEvent::Ota(p) => {
                let ch = self.model.on_ota(p, now);
                self.apply(ch);
            }
        }
    }
}

/// `{"nodes":[..],"count":n,"timestamp":..}` in the documented key order.
fn reorder_nodes(v: J) -> J {
    let J::Object(mut m) = v else { return v };
    let mut out = Map::new();
    for k in ["nodes", "count", "timestamp", "clockSet"] {
        if let Some(x) = m.remove(k) {
            out.insert(k.into(), x);
        }
    }
    out.extend(m);
    J::Object(out)
}

fn flatten(t: &NodeTree, parent: Option<u32>, out: &mut Vec<J>) {
    let mut v = json!({"nodeId": t.node_id, "parent": parent});
    if t.root {
        v["root"] = J::Bool(true);
    }
    out.push(v);
    for s in &t.subs {
        flatten(s, Some(t.node_id), out);
    }
}

async fn recv_conn(conn: &mut Option<Conn>) -> Option<ConnEvent> {
    match conn {
        Some(c) => c.link.events.recv().await,
        None => std::future::pending().await,
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
