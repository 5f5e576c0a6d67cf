//! Prometheus metrics (prometheus-client, OpenMetrics text) and the `/metrics` endpoint (axum).
//!
//! Names follow Prometheus conventions: base units, `_total` counters, small label sets
//! (`node` for per-node series, `peer` for links, `kind`/`result` with a handful of values).
//! Per-node and per-link series are removed when the node or link goes away.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use pmesh_node::{CounterKind, NodeStats};

use crate::gateway::LinkStats;
use crate::http::HttpLimits;
use crate::model::{Counters, Model, NodeRecord};

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn edge(node: u32, parent: u32) -> Labels {
    vec![
        ("node".into(), node.to_string()),
        ("parent".into(), parent.to_string()),
    ]
}

fn l(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// A metric family: its name (after the `pmesh_` prefix) and help text. The families `new`
/// registers follow, in registration (exposition) order.
type Def = (&'static str, &'static str);

const MESH_NODES: Def = (
    "mesh_nodes",
    "Nodes in the mesh as seen from the gateway, gateway included",
);

const MESH_DEPTH: Def = (
    "mesh_depth",
    "Depth of the mesh tree from the gateway (gateway alone = 1)",
);

const TOPOLOGY_CHANGES: Def = (
    "mesh_topology_changes",
    "Topology changes seen by the bridge",
);

const MESSAGES_RX: Def = (
    "mesh_messages_received",
    "User messages received by the gateway, by kind (single, broadcast)",
);

const MESSAGES_TX: Def = (
    "mesh_messages_sent",
    "User messages the bridge sent into the mesh, by kind",
);

const STATUS_REPORTS: Def = (
    "mesh_status_reports",
    "Status packages (203/604/204) received",
);

const NODE_RECORDS_DROPPED: Def = (
    "mesh_node_records_dropped",
    "Node records the bridge dropped at its cap (4096): `evicted` (the offline node seen longest ago made room) or `refused` (every record online)",
);

const NODE_UP: Def = ("node_up", "1 while the node is in the mesh");

const NODE_HOPS: Def = ("node_hops", "Hops from the gateway to the node");

const NODE_PARENT: Def = (
    "node_parent",
    "1 for the node's current parent in the tree (edges of the topology graph)",
);

const NODE_HEAP: Def = ("node_free_heap_bytes", "Free heap the node last reported");

const NODE_UPTIME: Def = ("node_uptime_seconds", "Uptime the node last reported");

const NODE_LOSS: Def = (
    "node_packet_loss_ratio",
    "Packet loss the node last reported (0..1)",
);

const NODE_OTA_PROGRESS: Def = (
    "node_ota_progress_ratio",
    "Firmware transfer progress of a node being updated (0..1)",
);

const LINK_BYTES_RX: Def = (
    "link_received_bytes",
    "Bytes received on a gateway link, by peer",
);

const LINK_BYTES_TX: Def = ("link_sent_bytes", "Bytes sent on a gateway link, by peer");

const LINK_DELAY: Def = (
    "link_delay_seconds",
    "Last measured one-way delay to a neighbour",
);

const OTA_CAMPAIGNS: Def = ("ota_campaigns", "Firmware campaigns started over MQTT");

const OTA_NODES: Def = (
    "ota_node_results",
    "Node firmware updates finished, by result (updated, failed)",
);

const OTA_BYTES: Def = ("ota_sent_bytes", "Firmware data bytes the gateway sent");

const OTA_RUNNING: Def = ("ota_campaign_running", "1 while a campaign runs");

const ALERTS_ACTIVE: Def = ("alerts_active", "Alerts currently raised");

const CONNECTED: Def = ("bridge_connected", "1 while connected to the MQTT broker");

const CONNECTIONS: Def = ("bridge_connections", "MQTT connections made");

const PUBLISHES: Def = (
    "bridge_publishes",
    "MQTT publishes, by kind (state, event, message, response)",
);

const PUBLISH_BYTES: Def = ("bridge_published_bytes", "MQTT payload bytes published");

const OUTBOX_DEPTH: Def = (
    "bridge_outbox_depth",
    "Events and alerts waiting for the broker's acknowledgement",
);

const OUTBOX_DROPPED: Def = (
    "bridge_outbox_dropped",
    "Outbox entries dropped because it was full",
);

const REQUESTS: Def = (
    "bridge_requests",
    "MQTT requests answered, by result (ok, error)",
);

const INVALID_INPUT: Def = (
    "bridge_invalid_input",
    "Bad input rejected, by source (mqtt, mesh)",
);

const INPUT_DROPPED: Def = (
    "bridge_input_dropped",
    "Gateway inputs dropped because the bridge queue was full",
);

const REQUESTS_REJECTED: Def = (
    "bridge_requests_rejected",
    "MQTT requests, commands and legacy messages refused, by reason (too_large, retained, invalid_json, image_path, ...)",
);

const HTTP_CONNECTIONS: Def = (
    "bridge_http_connections",
    "HTTP (/metrics) connections by how they ended (closed, refused over the cap, timed_out, failed)",
);

const HTTP_OPEN: Def = (
    "bridge_http_connections_open",
    "HTTP (/metrics) connections open now",
);

/// Registers a new metric of type `M` under `def`; returns it.
fn reg<M: Metric + Clone + Default>(r: &mut Registry, (name, help): Def) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

/// All metric families; cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Behind a lock: runtime counters register when first reported.
    registry: Arc<Mutex<Registry>>,
    /// One series per runtime counter name seen, with its last value.
    runtime: Arc<Mutex<BTreeMap<&'static str, (RuntimeSeries, u64)>>>,
    mesh_nodes: Gauge,
    mesh_depth: Gauge,
    topology_changes: Counter,
    messages_rx: Family<Labels, Counter>,
    messages_tx: Family<Labels, Counter>,
    status_reports: Counter,
    node_records_dropped: Family<Labels, Counter>,
    node_up: Family<Labels, Gauge>,
    node_hops: Family<Labels, Gauge>,
    node_parent: Family<Labels, Gauge>,
    node_heap: Family<Labels, Gauge>,
    node_uptime: Family<Labels, Gauge>,
    node_loss: Family<Labels, FGauge>,
    node_ota_progress: Family<Labels, FGauge>,
    /// One series per [`NodeStats::counters`] entry of the gateway node, in list order.
    gateway_counters: Arc<Vec<Counter>>,
    link_bytes_rx: Family<Labels, Counter>,
    link_bytes_tx: Family<Labels, Counter>,
    link_delay: Family<Labels, FGauge>,
    ota_campaigns: Counter,
    ota_nodes: Family<Labels, Counter>,
    ota_bytes: Counter,
    ota_running: Gauge,
    alerts_active: Gauge,
    /// Bridge: connected to the broker (0/1).
    pub connected: Gauge,
    /// Bridge: MQTT connections made.
    pub connections: Counter,
    /// Bridge: publishes handed to the client, by kind (`state`, `event`, `message`, `response`).
    pub publishes: Family<Labels, Counter>,
    /// Bridge: payload bytes published.
    pub publish_bytes: Counter,
    /// Bridge: events and alerts waiting for acknowledgement.
    pub outbox_depth: Gauge,
    /// Bridge: outbox entries dropped because it was full.
    pub outbox_dropped: Counter,
    /// Bridge: requests answered, by result (`ok`, `error`).
    pub requests: Family<Labels, Counter>,
    /// Bridge: bad input rejected, by source (`mqtt`, `mesh`).
    pub invalid_input: Family<Labels, Counter>,
    /// Bridge: gateway inputs dropped because the queue was full.
    pub input_dropped: Counter,
    /// Bridge: MQTT requests, commands and legacy messages refused, by reason
    /// ([`crate::RequestError::reason`]).
    pub requests_rejected: Family<Labels, Counter>,
    /// The HTTP server's connections.
    pub http: crate::http::HttpCounters,
    state: Arc<std::sync::Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    nodes: BTreeSet<u32>,
    parents: std::collections::BTreeMap<u32, u32>,
    peers: BTreeSet<u32>,
    ota_nodes: BTreeSet<u32>,
    /// Last value of each gateway counter, in list order.
    gateway: Vec<u64>,
    links: std::collections::BTreeMap<u32, (u64, u64)>,
    /// Last value of each plain bridge total, in [`Metrics::sync_totals`]'s order.
    totals: [u64; 4],
    /// Last value of each labelled bridge total, in [`Metrics::sync_totals`]'s order.
    labelled: [u64; 8],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family, in the order of this literal (which is the
    /// exposition order).
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("pmesh");
        let m = Metrics {
            mesh_nodes: reg(&mut r, MESH_NODES),
            mesh_depth: reg(&mut r, MESH_DEPTH),
            topology_changes: reg(&mut r, TOPOLOGY_CHANGES),
            messages_rx: reg(&mut r, MESSAGES_RX),
            messages_tx: reg(&mut r, MESSAGES_TX),
            status_reports: reg(&mut r, STATUS_REPORTS),
            node_records_dropped: reg(&mut r, NODE_RECORDS_DROPPED),
            node_up: reg(&mut r, NODE_UP),
            node_hops: reg(&mut r, NODE_HOPS),
            node_parent: reg(&mut r, NODE_PARENT),
            node_heap: reg(&mut r, NODE_HEAP),
            node_uptime: reg(&mut r, NODE_UPTIME),
            node_loss: reg(&mut r, NODE_LOSS),
            node_ota_progress: reg(&mut r, NODE_OTA_PROGRESS),
            gateway_counters: Arc::new(gateway_counters(&mut r)),
            link_bytes_rx: reg(&mut r, LINK_BYTES_RX),
            link_bytes_tx: reg(&mut r, LINK_BYTES_TX),
            link_delay: reg(&mut r, LINK_DELAY),
            ota_campaigns: reg(&mut r, OTA_CAMPAIGNS),
            ota_nodes: reg(&mut r, OTA_NODES),
            ota_bytes: reg(&mut r, OTA_BYTES),
            ota_running: reg(&mut r, OTA_RUNNING),
            alerts_active: reg(&mut r, ALERTS_ACTIVE),
            connected: reg(&mut r, CONNECTED),
            connections: reg(&mut r, CONNECTIONS),
            publishes: reg(&mut r, PUBLISHES),
            publish_bytes: reg(&mut r, PUBLISH_BYTES),
            outbox_depth: reg(&mut r, OUTBOX_DEPTH),
            outbox_dropped: reg(&mut r, OUTBOX_DROPPED),
            requests: reg(&mut r, REQUESTS),
            invalid_input: reg(&mut r, INVALID_INPUT),
            input_dropped: reg(&mut r, INPUT_DROPPED),
            requests_rejected: reg(&mut r, REQUESTS_REJECTED),
            http: crate::http::HttpCounters {
                connections: reg(&mut r, HTTP_CONNECTIONS),
                open: reg(&mut r, HTTP_OPEN),
            },
            registry: Arc::default(),
            runtime: Arc::default(),
            state: Arc::default(),
        };
        Metrics {
            registry: Arc::new(Mutex::new(r)),
            ..m
        }
    }

    /// Brings the mesh gauges and counters in line with the model; removes series of nodes
    /// and links that are gone.
    pub fn sync(&self, m: &Model) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.mesh_nodes.set(m.node_count() as i64);
        self.mesh_depth.set(m.tree.depth() as i64);
        self.alerts_active.set(m.alerts.len() as i64);
        self.ota_running.set(i64::from(m.ota_running()));
        self.sync_totals(&mut s, &m.counters);
        self.sync_gateway(&mut s, &m.gateway_stats);
        self.sync_nodes(&mut s, m);
        self.sync_ota_progress(&mut s, m);
        self.sync_links(&mut s, &m.links);
        drop(s);
        self.sync_runtime(&m.runtime_stats);
    }

    /// The bridge's own totals: plain counters, then labelled series, each with its slot of
    /// last values in [`Seen`].
    fn sync_totals(&self, s: &mut Seen, c: &Counters) {
        let plain = [
            (&self.topology_changes, c.topology_changes),
            (&self.status_reports, c.status_reports),
            (&self.ota_campaigns, c.ota_campaigns),
            (&self.ota_bytes, c.ota_bytes),
        ];
        for ((counter, now), last) in plain.into_iter().zip(&mut s.totals) {
            bump(counter, last, now);
        }
        let labelled = [
            (
                &self.node_records_dropped,
                "reason",
                "evicted",
                c.nodes_evicted,
            ),
            (
                &self.node_records_dropped,
                "reason",
                "refused",
                c.nodes_refused,
            ),
            (&self.messages_rx, "kind", "single", c.rx_single),
            (&self.messages_rx, "kind", "broadcast", c.rx_broadcast),
            (&self.messages_tx, "kind", "single", c.tx_single),
            (&self.messages_tx, "kind", "broadcast", c.tx_broadcast),
            (&self.ota_nodes, "result", "updated", c.ota_nodes_done),
            (&self.ota_nodes, "result", "failed", c.ota_nodes_failed),
        ];
        for ((family, k, v, now), last) in labelled.into_iter().zip(&mut s.labelled) {
            bump(&family.get_or_create(&l(k, v)), last, now);
        }
    }

    /// The gateway node's counters, in list order.
    fn sync_gateway(&self, s: &mut Seen, stats: &NodeStats) {
        s.gateway.resize(self.gateway_counters.len(), 0);
        for ((series, last), c) in self
            .gateway_counters
            .iter()
            .zip(&mut s.gateway)
            .zip(stats.counters())
        {
            bump(series, last, c.value);
        }
    }

    /// Per-node series: online nodes only.
    fn sync_nodes(&self, s: &mut Seen, m: &Model) {
        let online: BTreeSet<u32> = m
            .nodes
            .iter()
            .filter(|(_, r)| r.online)
            .map(|(id, _)| *id)
            .collect();
        let gone_nodes: Vec<u32> = s.nodes.difference(&online).copied().collect();
        for gone in &gone_nodes {
            let lb = l("node", gone);
            self.node_up.remove(&lb);
            self.node_hops.remove(&lb);
            self.node_heap.remove(&lb);
            self.node_uptime.remove(&lb);
            self.node_loss.remove(&lb);
            if let Some(p) = s.parents.remove(gone) {
                self.node_parent.remove(&edge(*gone, p));
            }
        }
        for id in &online {
            self.sync_node(s, *id, &m.nodes[id]);
        }
        s.nodes = online;
    }

    /// One online node's series.
    fn sync_node(&self, s: &mut Seen, id: u32, r: &NodeRecord) {
        let lb = l("node", id);
        self.node_up.get_or_create(&lb).set(1);
        self.node_hops.get_or_create(&lb).set(i64::from(r.hops));
        let old = s.parents.get(&id).copied();
        if old != r.parent {
            if let Some(p) = old {
                self.node_parent.remove(&edge(id, p));
                s.parents.remove(&id);
            }
            if let Some(p) = r.parent {
                self.node_parent.get_or_create(&edge(id, p)).set(1);
                s.parents.insert(id, p);
            }
        }
        let heap = r
            .metrics
            .as_ref()
            .and_then(|x| x.heap)
            .or(r.status.as_ref().and_then(|x| x.mem_kb.map(|k| k * 1024)));
        match heap {
            Some(h) => {
                self.node_heap.get_or_create(&lb).set(h as i64);
            }
            None => {
                self.node_heap.remove(&lb);
            }
        }
        if let Some(u) = r.status.as_ref().and_then(|x| x.uptime_s) {
            self.node_uptime.get_or_create(&lb).set(u as i64);
        }
        let loss = r
            .status
            .as_ref()
            .and_then(|x| x.loss_percent)
            .or(r.metrics.as_ref().and_then(|x| x.loss_percent()));
        if let Some(p) = loss {
            self.node_loss.get_or_create(&lb).set(p as f64 / 100.0);
        }
    }

    /// Transfer progress of the nodes being updated.
    fn sync_ota_progress(&self, s: &mut Seen, m: &Model) {
        let updating: BTreeSet<u32> = m
            .nodes
            .iter()
            .filter(|(_, r)| r.update.state == "updating")
            .map(|(id, _)| *id)
            .collect();
        let gone_ota: Vec<u32> = s.ota_nodes.difference(&updating).copied().collect();
        for gone in &gone_ota {
            self.node_ota_progress.remove(&l("node", gone));
        }
        for id in &updating {
            let p = m.nodes[id].update.progress.unwrap_or(0.0) / 100.0;
            self.node_ota_progress.get_or_create(&l("node", id)).set(p);
        }
        s.ota_nodes = updating;
    }

    /// The gateway's links, by peer.
    fn sync_links(&self, s: &mut Seen, links: &[LinkStats]) {
        let peers: BTreeSet<u32> = links.iter().map(|x| x.peer).collect();
        let gone_peers: Vec<u32> = s.peers.difference(&peers).copied().collect();
        for gone in &gone_peers {
            let lb = l("peer", gone);
            self.link_bytes_rx.remove(&lb);
            self.link_bytes_tx.remove(&lb);
            self.link_delay.remove(&lb);
            s.links.remove(gone);
        }
        for link in links {
            let lb = l("peer", link.peer);
            let prev = s.links.entry(link.peer).or_default();
            bump(
                &self.link_bytes_rx.get_or_create(&lb),
                &mut prev.0,
                link.bytes_in,
            );
            bump(
                &self.link_bytes_tx.get_or_create(&lb),
                &mut prev.1,
                link.bytes_out,
            );
            if let Some(d) = link.delay_us {
                self.link_delay.get_or_create(&lb).set(f64::from(d) / 1e6);
            }
        }
        s.peers = peers;
    }

    /// Brings the host runtime's counters to `/metrics`, registering a series for a name the
    /// first time it is reported (`pmesh_net_<name>_total`, or a gauge for a peak).
    fn sync_runtime(&self, counters: &[pmesh_node::Counter]) {
        let mut series = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        for c in counters {
            let (s, last) = series.entry(c.name).or_insert_with(|| {
                let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                let name = format!("net_{}", c.name);
                // prometheus-client appends the full stop itself.
                let help = c.help.strip_suffix('.').unwrap_or(c.help);
                let s = match c.kind {
                    CounterKind::Total => RuntimeSeries::Total(Counter::default()),
                    CounterKind::Peak => RuntimeSeries::Peak(Gauge::default()),
                };
                match &s {
                    RuntimeSeries::Total(x) => r.register(name, help, x.clone()),
                    RuntimeSeries::Peak(x) => r.register(name, help, x.clone()),
                }
                (s, 0)
            });
            match s {
                RuntimeSeries::Total(x) => bump(x, last, c.value),
                RuntimeSeries::Peak(g) => {
                    g.set(i64::try_from(c.value).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = encode(&mut out, &registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
    /// OpenMetrics (`promtool check metrics` among them).
    pub fn render_prometheus_text(&self) -> String {
        to_prometheus_text(&self.render())
    }

    /// Serves `GET /metrics` on `addr` with the default [`HttpLimits`] until the task is
    /// dropped; returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.serve_with(addr, HttpLimits::default()).await
    }

    /// Serves `GET /metrics` on `addr` within `limits` (connection cap, timeouts: see
    /// [`crate::http`]) until the task is dropped; returns the bound address. OpenMetrics when
    /// the scraper's `Accept` names it (Prometheus does), otherwise the classic text format.
    pub async fn serve_with(
        &self,
        addr: SocketAddr,
        limits: HttpLimits,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        use axum::http::HeaderMap;
        use axum::http::header::{ACCEPT, CONTENT_TYPE};
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let me = me.clone();
                async move {
                    let om = headers
                        .get(ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    if om {
                        (
                            [(
                                CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            me.render(),
                        )
                    } else {
                        (
                            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                            me.render_prometheus_text(),
                        )
                    }
                }
            }),
        );
        let task = tokio::spawn(crate::http::serve(listener, app, limits, self.http.clone()));
        Ok((local, task))
    }
}

/// A runtime counter's series: a counter for totals, a gauge for peaks.
#[derive(Clone, Debug)]
enum RuntimeSeries {
    Total(Counter),
    Peak(Gauge),
}

/// Where a gateway [`NodeStats`] counter predating the one list keeps its documented series:
/// `(family, label, value)`. Every other counter is `pmesh_node_<name>_total`.
pub(crate) fn gateway_series(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match name {
        "frames_in" => ("gateway_frames", "direction", "in"),
        "frames_out" => ("gateway_frames", "direction", "out"),
        "bytes_in" => ("gateway_bytes", "direction", "in"),
        "bytes_out" => ("gateway_bytes", "direction", "out"),
        "dropped_oversized" => ("gateway_frames_dropped", "reason", "oversized"),
        "dropped_invalid" => ("gateway_frames_dropped", "reason", "invalid"),
        "dropped_no_route" => ("gateway_frames_dropped", "reason", "no_route"),
        "dropped_unhandled" => ("gateway_frames_dropped", "reason", "unhandled"),
        "dropped_events" => ("gateway_frames_dropped", "reason", "events"),
        _ => return None,
    })
}

/// Registers a series for every gateway [`NodeStats`] counter (see [`gateway_series`]) and
/// returns them in list order.
fn gateway_counters(r: &mut Registry) -> Vec<Counter> {
    let families: [(&str, &str, Family<Labels, Counter>); 3] = [
        (
            "gateway_frames",
            "Frames through the gateway node, by direction (in, out)",
            Family::default(),
        ),
        (
            "gateway_bytes",
            "Bytes through the gateway node, by direction (in, out)",
            Family::default(),
        ),
        (
            "gateway_frames_dropped",
            "Frames the gateway dropped, by reason",
            Family::default(),
        ),
    ];
    for (name, help, family) in &families {
        r.register(*name, *help, family.clone());
    }
    NodeStats::default()
        .counters()
        .map(|c| match gateway_series(c.name) {
            Some((name, k, v)) => {
                let (_, _, family) = families
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .expect("gateway_series names a family registered above");
                family.get_or_create(&l(k, v)).clone()
            }
            None => {
                let counter = Counter::default();
                // prometheus-client appends the full stop itself.
                let help = c.help.strip_suffix('.').unwrap_or(c.help);
                r.register(format!("node_{}", c.name), help, counter.clone());
                counter
            }
        })
        .collect()
}

/// Moves a Prometheus counter to an absolute total reported elsewhere (a reset, e.g. a
/// gateway restart of the source, restarts the delta from the new value).
fn bump(c: &Counter, last: &mut u64, now: u64) {
    if now > *last {
        c.inc_by(now - *last);
    }
    *last = now;
}

/// OpenMetrics → Prometheus text 0.0.4: counter families are named with their `_total`
/// suffix in HELP/TYPE, and `# UNIT` / `# EOF` lines are dropped. Hand-written because
/// prometheus-client encodes OpenMetrics only.
pub fn to_prometheus_text(om: &str) -> String {
    let counters: BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{kind}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertThresholds;

    /// Issue 14: every counter of the gateway's `NodeStats` list reaches `/metrics` with its
    /// value, under its documented name where one predates the list and as
    /// `pmesh_node_<name>_total` otherwise; a counter added to the list is covered here
    /// without editing this test.
    #[test]
    fn every_gateway_counter_reaches_metrics_with_its_value() {
        let metrics = Metrics::new();
        let mut model = Model::new(1, AlertThresholds::default());
        let mut next = 1000;
        model.gateway_stats = NodeStats::from_fn(|_| {
            next += 1;
            next
        });
        metrics.sync(&model);
        let text = metrics.render_prometheus_text();
        for c in model.gateway_stats.counters() {
            assert_eq!(c.kind, pmesh_node::CounterKind::Total, "{}", c.name);
            let line = match gateway_series(c.name) {
                Some((family, k, v)) => format!("pmesh_{family}_total{{{k}=\"{v}\"}} {}", c.value),
                None => {
                    let help = c.help.trim_end_matches('.');
                    let name = format!("pmesh_node_{}_total", c.name);
                    assert!(text.contains(&format!("# HELP {name} {help}.\n")), "{name}");
                    assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
                    format!("{name} {}", c.value)
                }
            };
            assert!(
                text.lines().any(|l| l == line),
                "{} missing as `{line}`:\n{text}",
                c.name
            );
        }
        // Counters follow the gateway's totals (deltas), also after a restart of the source.
        model.gateway_stats.handshake_timeouts += 5;
        metrics.sync(&model);
        let want = format!(
            "pmesh_node_handshake_timeouts_total {}",
            model.gateway_stats.handshake_timeouts
        );
        assert!(metrics.render_prometheus_text().lines().any(|l| l == want));
    }

    /// The host runtime's counters (`NetStats` in `pmesh node`) register when first reported:
    /// totals as `pmesh_net_<name>_total`, peaks as gauges; later reports move them.
    #[test]
    fn runtime_counters_register_when_first_reported() {
        use pmesh_node::Counter;
        let metrics = Metrics::new();
        let mut model = Model::new(1, AlertThresholds::default());
        let report = |accepted, peak| {
            vec![
                Counter {
                    name: "accepted",
                    help: "Connections accepted on the listener.",
                    value: accepted,
                    kind: CounterKind::Total,
                },
                Counter {
                    name: "max_queue_bytes",
                    help: "Largest send queue seen, bytes.",
                    value: peak,
                    kind: CounterKind::Peak,
                },
            ]
        };
        metrics.sync(&model);
        assert!(!metrics.render().contains("pmesh_net_"));
        model.runtime_stats = report(3, 4096);
        metrics.sync(&model);
        model.runtime_stats = report(5, 8192);
        metrics.sync(&model);
        let text = metrics.render_prometheus_text();
        for line in [
            "# HELP pmesh_net_accepted_total Connections accepted on the listener.",
            "# TYPE pmesh_net_accepted_total counter",
            "pmesh_net_accepted_total 5",
            "# TYPE pmesh_net_max_queue_bytes gauge",
            "pmesh_net_max_queue_bytes 8192",
        ] {
            assert!(text.lines().any(|l| l == line), "`{line}` missing:\n{text}");
        }
    }
}
