//! What the bridge knows about the mesh: the tree, every node seen, counters, alerts and the
//! OTA campaign. Pure state (no IO, no clock reads: the caller passes `now_ms`), so it is
//! tested directly; the runtime turns its [`Change`]s into MQTT publishes.

use std::collections::BTreeMap;

use pmesh_node::NodeStats;
use pmesh_proto::NodeTree;
use serde::Serialize;
use serde_json::{Value as J, json};

use crate::config::AlertThresholds;
use crate::gateway::{LinkStats, OtaMode, OtaProgress};
use crate::status::{EnhancedStatus, NodeMetrics, StatusReport};

/// Something that happened that subscribers should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A `bridge/event` (`type`, `data`).
    Event(&'static str, J),
    /// A node's retained state changed.
    NodeState(u32),
    /// A node came online (`true`) or went offline.
    Availability(u32, bool),
    /// An alert was raised (key into [`Model::alerts`]); the caller assigns its id.
    AlertRaised(AlertKey),
    /// An alert was cleared (the alert as it was).
    AlertCleared(Alert),
    /// The tree changed.
    Topology,
    /// A node's record was dropped to keep the model within [`MAX_NODE_RECORDS`] (the offline
    /// node seen longest ago): its retained topics are cleared.
    Removed(u32),
}

/// Most node records the model keeps. Ids come from the mesh (tree claims, status packages'
/// `from`), so without a bound any peer could grow the gateway's memory and its retained MQTT
/// topics by cycling ids. Far above any real painlessMesh (the 1,000-node simulations use a
/// quarter of it); when full, the offline node seen longest ago makes room, and a status from
/// an unknown id is dropped (counted) if every record is online.
pub const MAX_NODE_RECORDS: usize = 4096;

/// Alert kinds (the names are the documented `type` strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    /// A node left the mesh.
    NodeOffline,
    /// The node count fell by the configured share at once.
    Partition,
    /// A node reported low free heap.
    LowMemory,
    /// A node reported high packet loss.
    HighLoss,
    /// A node failed a firmware update.
    OtaFailed,
}

impl AlertKind {
    /// `NODE_OFFLINE`, `PARTITION`, `LOW_MEMORY`, `HIGH_LOSS`, `OTA_FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NodeOffline => "NODE_OFFLINE",
            AlertKind::Partition => "PARTITION",
            AlertKind::LowMemory => "LOW_MEMORY",
            AlertKind::HighLoss => "HIGH_LOSS",
            AlertKind::OtaFailed => "OTA_FAILED",
        }
    }

    fn severity(self) -> &'static str {
        match self {
            AlertKind::Partition | AlertKind::LowMemory => "critical",
            AlertKind::NodeOffline | AlertKind::HighLoss | AlertKind::OtaFailed => "warning",
        }
    }
}

/// Identifies an active alert: its kind and the node it is about (0 = the mesh).
pub type AlertKey = (AlertKind, u32);

/// An active (or just cleared) alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Unique id (the sequence number of its `alert_raised` event), 0 until assigned.
    pub id: u64,
    /// Kind.
    pub kind: AlertKind,
    /// Node concerned, if any.
    pub node: Option<u32>,
    /// Human-readable text.
    pub message: String,
    /// The measured value that triggered it.
    pub value: Option<f64>,
    /// The threshold it crossed.
    pub threshold: Option<f64>,
    /// Epoch ms when raised (None: clock not set).
    pub raised_at: Option<u64>,
}

impl Alert {
    /// The JSON used in `status/alerts` and alert events.
    pub fn to_json(&self) -> J {
        json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "severity": self.kind.severity(),
            "message": self.message,
            "nodeId": self.node,
            "value": self.value,
            "threshold": self.threshold,
            "raisedAt": self.raised_at,
        })
    }
}

/// A node's firmware update state, carried in its retained state as `update`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UpdateState {
    /// `idle`, `updating`, `updated`, `failed`.
    pub state: &'static str,
    /// Campaign id while involved.
    pub campaign: Option<u64>,
    /// Percent done, while updating.
    pub progress: Option<f64>,
    /// Chunks still missing.
    pub remaining: Option<u64>,
    /// Failure reason.
    pub error: Option<String>,
}

impl UpdateState {
    fn idle() -> Self {
        Self {
            state: "idle",
            ..Self::default()
        }
    }

    fn to_json(&self) -> J {
        serde_json::to_value(self).unwrap_or(J::Null)
    }
}

/// Everything known about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// In the current tree.
    pub online: bool,
    /// Parent in the tree (None for the gateway or when offline).
    pub parent: Option<u32>,
    /// Hops from the gateway.
    pub hops: u32,
    /// Flagged `root:true`.
    pub root: bool,
    /// Epoch ms when last heard from (message, package or appearing in the tree).
    pub last_seen: Option<u64>,
    /// Latest EnhancedStatus.
    pub status: Option<EnhancedStatus>,
    /// Latest Metrics.
    pub metrics: Option<NodeMetrics>,
    /// User messages received from it.
    pub messages: u64,
    /// Firmware update state.
    pub update: UpdateState,
}

/// The OTA campaign the bridge tracks.
#[derive(Clone, Debug, PartialEq)]
pub struct Campaign {
    /// Id.
    pub id: u64,
    /// `running`, `finished`, `aborted`, `interrupted`.
    pub state: &'static str,
    /// Role targeted.
    pub role: String,
    /// Hardware targeted.
    pub hardware: String,
    /// Mode.
    pub mode: OtaMode,
    /// Compressed transfer.
    pub compressed: bool,
    /// Image size in bytes.
    pub size: u64,
    /// Image MD5.
    pub md5: String,
    /// Epoch ms when started.
    pub started_at: Option<u64>,
    /// Nodes that finished.
    pub done: u64,
    /// Nodes that failed.
    pub failed: u64,
}

impl Campaign {
    /// The JSON used in `ota/status` and OTA events.
    pub fn to_json(&self, nodes: &BTreeMap<u32, NodeRecord>) -> J {
        let involved: Vec<J> = nodes
            .iter()
            .filter(|(_, r)| r.update.campaign == Some(self.id))
            .map(|(id, r)| json!({"nodeId": id, "update": r.update.to_json()}))
            .collect();
        json!({
            "campaign": self.id,
            "state": self.state,
            "role": self.role,
            "hardware": self.hardware,
            "mode": self.mode.as_str(),
            "compressed": self.compressed,
            "size": self.size,
            "md5": self.md5,
            "startedAt": self.started_at,
            "nodesDone": self.done,
            "nodesFailed": self.failed,
            "nodes": involved,
        })
    }
}

/// Counters of what passed through the gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// SINGLE user messages received.
    pub rx_single: u64,
    /// BROADCAST user messages received.
    pub rx_broadcast: u64,
    /// SINGLE messages the bridge sent into the mesh.
    pub tx_single: u64,
    /// BROADCAST messages the bridge sent into the mesh.
    pub tx_broadcast: u64,
    /// Non-core packages received, any type.
    pub packages: u64,
    /// Status packages (203/604/204) read.
    pub status_reports: u64,
    /// Topology changes seen.
    pub topology_changes: u64,
    /// OTA campaigns started.
    pub ota_campaigns: u64,
    /// Node updates completed.
    pub ota_nodes_done: u64,
    /// Node updates failed.
    pub ota_nodes_failed: u64,
    /// OTA data bytes the gateway sent.
    pub ota_bytes: u64,
    /// Offline node records dropped to make room ([`MAX_NODE_RECORDS`]).
    pub nodes_evicted: u64,
    /// Status packages and tree entries not recorded because every record was online.
    pub nodes_refused: u64,
}

/// Where a tree places a node: parent, hops from the gateway, root flag.
type Placed = (Option<u32>, u32, bool);

/// The mesh model.
#[derive(Debug)]
pub struct Model {
    /// The gateway's node id.
    pub gateway: u32,
    /// The latest tree (top = gateway).
    pub tree: NodeTree,
    /// Every node seen since start, online or not.
    pub nodes: BTreeMap<u32, NodeRecord>,
    /// Counters.
    pub counters: Counters,
    /// Active alerts.
    pub alerts: BTreeMap<AlertKey, Alert>,
    /// The current or last campaign.
    pub campaign: Option<Campaign>,
    /// The gateway node's own counters.
    pub gateway_stats: NodeStats,
    /// The gateway's links.
    pub links: Vec<LinkStats>,
    /// The gateway host's runtime counters (`MeshEvent::RuntimeStats`), as last reported.
    pub runtime_stats: Vec<pmesh_node::Counter>,
    thresholds: AlertThresholds,
    partition_ref: Option<usize>,
}

impl Model {
    /// An empty model for gateway `gateway`.
    pub fn new(gateway: u32, thresholds: AlertThresholds) -> Self {
        let mut m = Self {
            gateway,
            tree: NodeTree::leaf(gateway),
            nodes: BTreeMap::new(),
            counters: Counters::default(),
            alerts: BTreeMap::new(),
            campaign: None,
            gateway_stats: NodeStats::default(),
            links: Vec::new(),
            runtime_stats: Vec::new(),
            thresholds,
            partition_ref: None,
        };
        m.nodes
            .insert(gateway, NodeRecord::new(None, 0, false, None));
        m
    }

    /// Online node ids, the gateway first, then pre-order along the tree.
    pub fn online_ids(&self) -> Vec<u32> {
        self.tree.node_list(true)
    }

    /// Node count including the gateway.
    pub fn node_count(&self) -> usize {
        self.tree.size()
    }

    /// The node flagged `root:true`, if any.
    pub fn root_id(&self) -> Option<u32> {
        fn find(t: &NodeTree) -> Option<u32> {
            if t.root {
                return Some(t.node_id);
            }
            t.subs.iter().find_map(find)
        }
        find(&self.tree)
    }

    /// Applies a new tree; derives joins, leaves, moves and the partition alert.
    pub fn apply_tree(&mut self, tree: NodeTree, now_ms: Option<u64>) -> Vec<Change> {
        let mut out = Vec::new();
        if tree.node_id != 0 && tree.node_id != self.gateway {
            // The gateway's id is fixed per process; accept the first real one.
            self.nodes.remove(&self.gateway);
            self.gateway = tree.node_id;
        }
        if tree == self.tree && self.nodes.get(&self.gateway).is_some_and(|r| r.online) {
            return out;
        }
        let before = self.node_count();
        let mut placed: BTreeMap<u32, Placed> = BTreeMap::new();
        fn walk(t: &NodeTree, parent: Option<u32>, hops: u32, out: &mut BTreeMap<u32, Placed>) {
            // A node listed twice (a transient loop in a stock mesh) keeps its first place.
            if t.node_id == 0 || out.contains_key(&t.node_id) {
                return;
            }
            out.insert(t.node_id, (parent, hops, t.root));
            for s in &t.subs {
                walk(s, Some(t.node_id), hops + 1, out);
            }
        }
        walk(&tree, None, 0, &mut placed);
        self.counters.topology_changes += 1;
        self.tree = tree;
        for (&id, &(parent, hops, root)) in &placed {
            match self.nodes.get_mut(&id) {
                None => {
                    if !self.make_room(Some(&placed), &mut out) {
                        continue;
                    }
                    self.nodes
                        .insert(id, NodeRecord::new(parent, hops, root, now_ms));
                    out.push(Change::Event(
                        "node_joined",
                        json!({"nodeId": id, "parent": parent, "hops": hops}),
                    ));
                    out.push(Change::Availability(id, true));
                    out.push(Change::NodeState(id));
                }
                Some(r) => {
                    let was_online = r.online;
                    let moved = r.parent != parent || r.hops != hops || r.root != root;
                    r.online = true;
                    r.parent = parent;
                    r.hops = hops;
                    r.root = root;
                    if now_ms.is_some() {
                        r.last_seen = now_ms;
                    }
                    if !was_online {
                        out.push(Change::Event(
                            "node_joined",
                            json!({"nodeId": id, "parent": parent, "hops": hops}),
                        ));
                        out.push(Change::Availability(id, true));
                        out.push(Change::NodeState(id));
                        out.extend(self.clear(AlertKind::NodeOffline, id));
                    } else if moved {
                        out.push(Change::NodeState(id));
                    }
                }
            }
        }
        let left: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(id, r)| r.online && !placed.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        for id in left {
            let mut failed_update = None;
            if let Some(r) = self.nodes.get_mut(&id) {
                r.online = false;
                r.parent = None;
                if r.update.state == "updating" {
                    failed_update = r.update.campaign;
                }
            }
            out.push(Change::Event("node_left", json!({"nodeId": id})));
            out.push(Change::Availability(id, false));
            out.push(Change::NodeState(id));
            if self.thresholds.node_offline {
                out.extend(self.raise(
                    AlertKind::NodeOffline,
                    id,
                    format!("node {id} left the mesh"),
                    None,
                    None,
                    now_ms,
                ));
            }
            if let Some(c) = failed_update {
                out.extend(self.ota_node_failed(c, id, "node left the mesh".into(), now_ms));
            }
        }
        // Partition: a large share of the mesh vanished at once.
        let after = self.node_count();
        let share = self.thresholds.partition_share;
        if before >= 4
            && (before - after.min(before)) as f64 >= share * before as f64
            && self.partition_ref.is_none()
        {
            self.partition_ref = Some(before);
            let msg = format!(
                "node count fell from {before} to {after} (threshold {:.0} %)",
                share * 100.0
            );
            out.extend(self.raise(
                AlertKind::Partition,
                0,
                msg,
                Some(after as f64),
                Some(before as f64 * (1.0 - share)),
                now_ms,
            ));
        } else if let Some(r) = self.partition_ref
            && after as f64 > r as f64 * (1.0 - share)
        {
            self.partition_ref = None;
            out.extend(self.clear(AlertKind::Partition, 0));
        }
        out.push(Change::Topology);
        out
    }

    /// A user message arrived from `from`.
    pub fn on_message(&mut self, from: u32, broadcast: bool, now_ms: Option<u64>) {
        if broadcast {
            self.counters.rx_broadcast += 1;
        } else {
            self.counters.rx_single += 1;
        }
        if let Some(r) = self.nodes.get_mut(&from) {
            r.messages += 1;
            if now_ms.is_some() {
                r.last_seen = now_ms;
            }
        }
    }

    /// A status package arrived; updates the node and the LOW_MEMORY / HIGH_LOSS alerts.
    pub fn on_status(&mut self, report: StatusReport, now_ms: Option<u64>) -> Vec<Change> {
        self.counters.status_reports += 1;
        let id = report.from();
        if id == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.nodes.contains_key(&id) && !self.make_room(None, &mut out) {
            return out;
        }
        out.push(Change::NodeState(id));
        let rec = self
            .nodes
            .entry(id)
            .or_insert_with(|| NodeRecord::new(None, 0, false, now_ms));
        if now_ms.is_some() {
            rec.last_seen = now_ms;
        }
        let (mem_kb, loss) = match &report {
            StatusReport::Enhanced(s) => (s.mem_kb, s.loss_percent),
            StatusReport::Metrics(m) => (m.heap.map(|b| b / 1024), m.loss_percent()),
        };
        match report {
            StatusReport::Enhanced(s) => rec.status = Some(s),
            StatusReport::Metrics(m) => rec.metrics = Some(m),
        }
        let t = self.thresholds;
        if let Some(kb) = mem_kb {
            if kb < u64::from(t.low_memory_kb) {
                let msg = format!("node {id} free heap {kb} KiB below {} KiB", t.low_memory_kb);
                out.extend(self.raise(
                    AlertKind::LowMemory,
                    id,
                    msg,
                    Some(kb as f64),
                    Some(t.low_memory_kb.into()),
                    now_ms,
                ));
            } else {
                out.extend(self.clear(AlertKind::LowMemory, id));
            }
        }
        if let Some(l) = loss {
            if l >= u64::from(t.high_loss_percent) {
                let msg = format!(
                    "node {id} packet loss {l} % at or above {} %",
                    t.high_loss_percent
                );
                out.extend(self.raise(
                    AlertKind::HighLoss,
                    id,
                    msg,
                    Some(l as f64),
                    Some(t.high_loss_percent.into()),
                    now_ms,
                ));
            } else {
                out.extend(self.clear(AlertKind::HighLoss, id));
            }
        }
        out
    }

    /// Makes room for one more node record: below the cap, nothing to do; at the cap, drops
    /// a record: an offline one seen longest ago, or, while a tree is applied (`tree` = the
    /// nodes it places), any record the tree does not place (it is leaving anyway). Never the
    /// gateway. False, and counted, when there is none to drop.
    fn make_room(&mut self, tree: Option<&BTreeMap<u32, Placed>>, out: &mut Vec<Change>) -> bool {
        if self.nodes.len() < MAX_NODE_RECORDS {
            return true;
        }
        let candidate = |id: u32, r: &NodeRecord| match tree {
            None => !r.online,
            Some(placed) => !placed.contains_key(&id),
        };
        let oldest = self
            .nodes
            .iter()
            .filter(|(id, r)| **id != self.gateway && candidate(**id, r))
            .min_by_key(|(id, r)| (r.online, r.last_seen, **id))
            .map(|(id, _)| *id);
        let Some(id) = oldest else {
            self.counters.nodes_refused += 1;
            return false;
        };
        self.nodes.remove(&id);
        let kinds: Vec<AlertKind> = self
            .alerts
            .keys()
            .filter(|k| k.1 == id)
            .map(|k| k.0)
            .collect();
        for kind in kinds {
            out.extend(self.clear(kind, id));
        }
        self.counters.nodes_evicted += 1;
        out.push(Change::Removed(id));
        true
    }

    /// Records a new campaign (before the gateway reports progress).
    pub fn ota_begin(&mut self, c: Campaign) {
        self.counters.ota_campaigns += 1;
        self.campaign = Some(c);
    }

    /// OTA progress from the gateway.
    pub fn on_ota(&mut self, p: OtaProgress, now_ms: Option<u64>) -> Vec<Change> {
        let mut out = Vec::new();
        // Reports for a campaign that is not running (aborted here, or an old one) are ignored.
        let current = self
            .campaign
            .as_ref()
            .filter(|c| c.state == "running")
            .map(|c| c.id);
        match p {
            OtaProgress::BytesSent { bytes } => self.counters.ota_bytes += bytes,
            OtaProgress::Begun {
                campaign,
                role,
                hardware,
                mode,
                compressed,
                size,
                md5,
            } => {
                if current.is_some() {
                    return out;
                }
                let c = Campaign {
                    id: campaign,
                    state: "running",
                    role,
                    hardware,
                    mode,
                    compressed,
                    size,
                    md5,
                    started_at: now_ms,
                    done: 0,
                    failed: 0,
                };
                let mut v = c.to_json(&self.nodes);
                v["source"] = json!("gateway");
                self.ota_begin(c);
                out.push(Change::Event("ota_requested", v));
            }
            OtaProgress::Started { campaign, targets } => {
                if current != Some(campaign) {
                    return out;
                }
                for id in &targets {
                    let rec = self
                        .nodes
                        .entry(*id)
                        .or_insert_with(|| NodeRecord::new(None, 0, false, now_ms));
                    rec.update = UpdateState {
                        state: "updating",
                        campaign: Some(campaign),
                        progress: Some(0.0),
                        ..UpdateState::default()
                    };
                    out.push(Change::NodeState(*id));
                }
                out.push(Change::Event(
                    "ota_started",
                    json!({"campaign": campaign, "targets": targets}),
                ));
            }
            OtaProgress::Node {
                campaign,
                node,
                done,
                total,
            } => {
                if current != Some(campaign) {
                    return out;
                }
                let rec = self
                    .nodes
                    .entry(node)
                    .or_insert_with(|| NodeRecord::new(None, 0, false, now_ms));
                let pct = if total == 0 {
                    0.0
                } else {
                    (done.min(total) as f64 * 1000.0 / total as f64).floor() / 10.0
                };
                let old = rec.update.progress.unwrap_or(0.0);
                let was = rec.update.state;
                rec.update = UpdateState {
                    state: "updating",
                    campaign: Some(campaign),
                    progress: Some(pct),
                    remaining: Some(total.saturating_sub(done)),
                    error: None,
                };
                if pct != old || was != "updating" {
                    out.push(Change::NodeState(node));
                }
                // Events every 10 %: enough to follow, not a flood at 1,000 nodes.
                if (pct / 10.0).floor() > (old / 10.0).floor() || was != "updating" {
                    out.push(Change::Event(
                        "ota_progress",
                        json!({"campaign": campaign, "nodeId": node, "progress": pct}),
                    ));
                }
            }
            OtaProgress::NodeDone { campaign, node } => {
                if current != Some(campaign) {
                    return out;
                }
                self.counters.ota_nodes_done += 1;
                if let Some(c) = self.campaign.as_mut() {
                    c.done += 1;
                }
                let rec = self
                    .nodes
                    .entry(node)
                    .or_insert_with(|| NodeRecord::new(None, 0, false, now_ms));
                rec.update = UpdateState {
                    state: "updated",
                    campaign: Some(campaign),
                    progress: Some(100.0),
                    remaining: Some(0),
                    error: None,
                };
                out.push(Change::NodeState(node));
                out.push(Change::Event(
                    "ota_node_result",
                    json!({"campaign": campaign, "nodeId": node, "result": "updated"}),
                ));
                out.extend(self.clear(AlertKind::OtaFailed, node));
            }
            OtaProgress::NodeFailed {
                campaign,
                node,
                reason,
            } => {
                if current != Some(campaign) {
                    return out;
                }
                out.extend(self.ota_node_failed(campaign, node, reason, now_ms));
            }
            OtaProgress::Finished { campaign, aborted } => {
                if current != Some(campaign) {
                    return out;
                }
                out.extend(self.ota_end(campaign, if aborted { "aborted" } else { "finished" }));
            }
        }
        out
    }

    /// Ends the campaign: nodes still `updating` go back to `idle` (so nothing is shown as
    /// updating that is not), and an `ota_finished` event reports the result.
    pub fn ota_end(&mut self, campaign: u64, state: &'static str) -> Vec<Change> {
        let mut out = Vec::new();
        for (id, r) in self.nodes.iter_mut() {
            if r.update.state == "updating" && r.update.campaign == Some(campaign) {
                r.update = UpdateState::idle();
                out.push(Change::NodeState(*id));
            }
        }
        if let Some(c) = self.campaign.as_mut().filter(|c| c.id == campaign) {
            c.state = state;
            out.push(Change::Event(
                "ota_finished",
                json!({"campaign": campaign, "result": state, "nodesDone": c.done, "nodesFailed": c.failed}),
            ));
        }
        out
    }

    fn ota_node_failed(
        &mut self,
        campaign: u64,
        node: u32,
        reason: String,
        now_ms: Option<u64>,
    ) -> Vec<Change> {
        self.counters.ota_nodes_failed += 1;
        if let Some(c) = self.campaign.as_mut() {
            c.failed += 1;
        }
        let rec = self
            .nodes
            .entry(node)
            .or_insert_with(|| NodeRecord::new(None, 0, false, now_ms));
        rec.update = UpdateState {
            state: "failed",
            campaign: Some(campaign),
            error: Some(reason.clone()),
            ..UpdateState::default()
        };
        let mut out = vec![
            Change::NodeState(node),
            Change::Event(
                "ota_node_result",
                json!({"campaign": campaign, "nodeId": node, "result": "failed", "error": reason}),
            ),
        ];
        let msg = format!("node {node} failed firmware update (campaign {campaign}): {reason}");
        out.extend(self.raise(AlertKind::OtaFailed, node, msg, None, None, now_ms));
        out
    }

    /// Whether a campaign is running.
    pub fn ota_running(&self) -> bool {
        self.campaign.as_ref().is_some_and(|c| c.state == "running")
    }

    fn raise(
        &mut self,
        kind: AlertKind,
        node: u32,
        message: String,
        value: Option<f64>,
        threshold: Option<f64>,
        now_ms: Option<u64>,
    ) -> Option<Change> {
        let key = (kind, node);
        if let Some(a) = self.alerts.get_mut(&key) {
            // Still active: refresh the reading, no new event.
            a.value = value;
            a.message = message;
            return None;
        }
        let node = (node != 0 || kind != AlertKind::Partition).then_some(node);
        self.alerts.insert(
            key,
            Alert {
                id: 0,
                kind,
                node,
                message,
                value,
                threshold,
                raised_at: now_ms,
            },
        );
        Some(Change::AlertRaised(key))
    }

    fn clear(&mut self, kind: AlertKind, node: u32) -> Option<Change> {
        self.alerts.remove(&(kind, node)).map(Change::AlertCleared)
    }

    /// A node's retained state JSON (`status/node/<id>`).
    pub fn node_json(&self, id: u32, now_ms: Option<u64>) -> J {
        serde_json::from_slice(&self.node_payload(id, now_ms)).unwrap_or(J::Null)
    }

    /// [`Model::node_json`] as JSON text, written straight from the record (no intermediate
    /// map; 1,000 of these go out per snapshot).
    pub fn node_payload(&self, id: u32, now_ms: Option<u64>) -> Vec<u8> {
        let Some(r) = self.nodes.get(&id) else {
            return json!({"nodeId": id, "online": false})
                .to_string()
                .into_bytes();
        };
        let v = NodeStateJson {
            node_id: id,
            online: r.online,
            gateway: id == self.gateway,
            parent: r.parent,
            hops: r.hops,
            root: r.root,
            last_seen: r.last_seen,
            messages_received: r.messages,
            status: r.status.as_ref(),
            metrics: r.metrics.as_ref(),
            update: &r.update,
            timestamp: now_ms,
            clock_set: now_ms.is_none().then_some(false),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// A node's retained state (`<prefix>/status/node/<id>`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStateJson<'a> {
    node_id: u32,
    online: bool,
    gateway: bool,
    parent: Option<u32>,
    hops: u32,
    root: bool,
    last_seen: Option<u64>,
    messages_received: u64,
    status: Option<&'a EnhancedStatus>,
    metrics: Option<&'a NodeMetrics>,
    update: &'a UpdateState,
    /// Epoch ms, or null with `clockSet: false` when the clock is not set.
    timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_set: Option<bool>,
}

impl NodeRecord {
    fn new(parent: Option<u32>, hops: u32, root: bool, now_ms: Option<u64>) -> Self {
        Self {
            online: true,
            parent,
            hops,
            root,
            last_seen: now_ms,
            status: None,
            metrics: None,
            messages: 0,
            update: UpdateState::idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmesh_ota::Mode;

    fn tree(gw: u32, kids: &[u32]) -> NodeTree {
        NodeTree {
            node_id: gw,
            subs: kids.iter().map(|k| NodeTree::leaf(*k)).collect(),
            ..NodeTree::default()
        }
    }

    fn events(ch: &[Change]) -> Vec<&'static str> {
        ch.iter()
            .filter_map(|c| match c {
                Change::Event(t, _) => Some(*t),
                Change::AlertRaised(_) => Some("alert_raised"),
                Change::AlertCleared(_) => Some("alert_cleared"),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn joins_leaves_offline_and_partition() {
        let mut m = Model::new(1, AlertThresholds::default());
        let ch = m.apply_tree(tree(1, &[2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(
            events(&ch).iter().filter(|e| **e == "node_joined").count(),
            7,
            "the gateway itself is known from the start"
        );
        assert_eq!(m.node_count(), 8);
        // One node leaves: offline alert, no partition (1/8 < 25 %).
        let ch = m.apply_tree(tree(1, &[2, 3, 4, 5, 6, 7]), None);
        assert_eq!(events(&ch), vec!["node_left", "alert_raised"]);
        assert!(m.alerts.contains_key(&(AlertKind::NodeOffline, 8)));
        // Half the mesh vanishes: partition.
        let ch = m.apply_tree(tree(1, &[2, 3]), None);
        assert!(ch.contains(&Change::AlertRaised((AlertKind::Partition, 0))));
        // It comes back: partition and offline alerts clear.
        let ch = m.apply_tree(tree(1, &[2, 3, 4, 5, 6, 7, 8]), None);
        let cleared: Vec<AlertKind> = ch
            .iter()
            .filter_map(|c| {
                if let Change::AlertCleared(a) = c {
                    Some(a.kind)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            cleared
                .iter()
                .filter(|k| **k == AlertKind::NodeOffline)
                .count(),
            5
        );
        assert!(cleared.contains(&AlertKind::Partition));
        assert!(m.alerts.is_empty());
    }

    /// Spoofed ids (status packages from any `from`, tree entries that come and go) never
    /// grow the model past its cap: the offline nodes seen longest ago make room, and their
    /// retained topics are cleared; while every record is online, new ids are refused.
    #[test]
    fn node_records_stay_within_the_cap() {
        let mut m = Model::new(1, AlertThresholds::default());
        m.apply_tree(tree(1, &[2]), Some(0));
        let status = |from: u32| {
            StatusReport::Enhanced(EnhancedStatus {
                from,
                ty: 604,
                mem_kb: Some(1),
                ..Default::default()
            })
        };
        let spoofed = MAX_NODE_RECORDS as u32 + 50;
        for id in 1000..1000 + spoofed {
            m.on_status(status(id), Some(u64::from(id)));
        }
        assert_eq!(m.nodes.len(), MAX_NODE_RECORDS);
        assert_eq!(
            m.counters.nodes_refused, 52,
            "1 gateway + node 2 + 4094 spoofed kept"
        );
        assert_eq!(m.counters.nodes_evicted, 0, "every record was online");
        // A real node of the next tree takes the place of the oldest record the tree does not
        // place; the tree marks the other spoofed records offline, and a new id then evicts
        // the oldest of those.
        let ch = m.apply_tree(tree(1, &[2, 3]), Some(10_000));
        assert!(ch.contains(&Change::Removed(1000)), "{ch:?}");
        let ch = m.on_status(status(900_000), Some(20_000));
        assert!(ch.contains(&Change::Removed(1001)), "{ch:?}");
        assert!(!m.nodes.contains_key(&1000) && !m.nodes.contains_key(&1001));
        assert!(m.nodes.contains_key(&2) && m.nodes.contains_key(&3));
        assert_eq!(m.nodes.len(), MAX_NODE_RECORDS);
        assert_eq!(
            m.counters.nodes_evicted, 2,
            "for node 3 of the tree and node 900000"
        );
        assert!(
            !m.alerts.keys().any(|k| k.1 == 1000 || k.1 == 1001),
            "the evicted node's alerts are cleared"
        );
    }

    #[test]
    fn status_alerts_raise_once_and_clear() {
        let mut m = Model::new(1, AlertThresholds::default());
        m.apply_tree(tree(1, &[2]), None);
        let low = EnhancedStatus {
            from: 2,
            ty: 604,
            mem_kb: Some(5),
            loss_percent: Some(30),
            ..Default::default()
        };
        let ch = m.on_status(StatusReport::Enhanced(low.clone()), None);
        assert_eq!(events(&ch), vec!["alert_raised", "alert_raised"]);
        assert!(
            events(&m.on_status(StatusReport::Enhanced(low), None)).is_empty(),
            "no re-raise while active"
        );
        let ok = EnhancedStatus {
            from: 2,
            ty: 604,
            mem_kb: Some(50),
            loss_percent: Some(1),
            ..Default::default()
        };
        assert_eq!(
            events(&m.on_status(StatusReport::Enhanced(ok), None)),
            vec!["alert_cleared", "alert_cleared"]
        );
        let m204 = NodeMetrics {
            from: 2,
            heap: Some(4096),
            pkts_rx: Some(10),
            pkts_drop: Some(0),
            ..Default::default()
        };
        let ch = m.on_status(StatusReport::Metrics(m204), None);
        assert!(ch.contains(&Change::AlertRaised((AlertKind::LowMemory, 2))));
    }

    #[test]
    fn a_campaign_the_gateway_began_is_followed() {
        let mut m = Model::new(1, AlertThresholds::default());
        let begun = |id| OtaProgress::Begun {
            campaign: id,
            role: "sensor".into(),
            hardware: "ESP32".into(),
            mode: OtaMode::Fixed(Mode::Pmesh),
            compressed: false,
            size: 100,
            md5: String::new(),
        };
        assert_eq!(events(&m.on_ota(begun(5), None)), vec!["ota_requested"]);
        assert!(m.ota_running());
        // Another one while it runs is ignored.
        assert!(m.on_ota(begun(6), None).is_empty());
        let ch = m.on_ota(
            OtaProgress::NodeDone {
                campaign: 5,
                node: 2,
            },
            None,
        );
        assert_eq!(events(&ch), vec!["ota_node_result"]);
        let ch = m.on_ota(
            OtaProgress::Finished {
                campaign: 5,
                aborted: false,
            },
            None,
        );
        assert_eq!(events(&ch), vec!["ota_finished"]);
        assert!(!m.ota_running());
        assert_eq!(m.campaign.as_ref().map(|c| (c.id, c.done)), Some((5, 1)));
    }

    #[test]
    fn ota_lifecycle_leaves_nobody_updating() {
        let mut m = Model::new(1, AlertThresholds::default());
        m.apply_tree(tree(1, &[2, 3]), None);
        m.ota_begin(Campaign {
            id: 9,
            state: "running",
            role: "r".into(),
            hardware: "ESP32".into(),
            mode: OtaMode::Fixed(Mode::ClassicBroadcast),
            compressed: false,
            size: 10,
            md5: String::new(),
            started_at: None,
            done: 0,
            failed: 0,
        });
        m.on_ota(
            OtaProgress::Started {
                campaign: 9,
                targets: vec![2, 3],
            },
            None,
        );
        m.on_ota(
            OtaProgress::Node {
                campaign: 9,
                node: 2,
                done: 5,
                total: 10,
            },
            None,
        );
        assert_eq!(m.nodes[&2].update.progress, Some(50.0));
        m.on_ota(
            OtaProgress::NodeDone {
                campaign: 9,
                node: 2,
            },
            None,
        );
        // Node 3 leaves mid-transfer: failed + alert.
        let ch = m.apply_tree(tree(1, &[2]), None);
        assert!(ch.contains(&Change::AlertRaised((AlertKind::OtaFailed, 3))));
        m.on_ota(
            OtaProgress::Finished {
                campaign: 9,
                aborted: false,
            },
            None,
        );
        assert!(m.nodes.values().all(|r| r.update.state != "updating"));
        assert_eq!(m.campaign.as_ref().unwrap().state, "finished");
        // Progress for another campaign id is ignored.
        assert!(
            m.on_ota(
                OtaProgress::Node {
                    campaign: 1,
                    node: 2,
                    done: 1,
                    total: 2
                },
                None
            )
            .is_empty()
        );
    }
}
