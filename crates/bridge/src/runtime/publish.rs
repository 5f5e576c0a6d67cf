//! What the bridge publishes: the retained topics (info, health, the status snapshot and its
//! pages, per-node state and availability, Home Assistant discovery), built from the model as
//! JSON only here at the MQTT edge, and clearing the topics of nodes the model dropped.

use pmesh_proto::NodeTree;
use serde_json::{Map, Value as J, json};
use tokio::sync::oneshot;

use super::{Runtime, rss_bytes};
use crate::conn::Tag;
use crate::ha;
use crate::model::Alert;
use crate::payload::{packet_size, page, stamp};

impl Runtime {
    pub(super) async fn publish_json(
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

    pub(super) fn info_json(&self) -> J {
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

    pub(super) fn health_json(&self) -> J {
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

    pub(super) fn nodes_json(&self) -> (Vec<J>, Map<String, J>) {
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

    pub(super) fn metrics_json(&self) -> J {
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

    pub(super) fn alerts_json(&self) -> J {
        let mut v =
            json!({"alerts": self.model.alerts.values().map(Alert::to_json).collect::<Vec<_>>()});
        stamp(&mut v, self.now_ms());
        v
    }

    pub(super) fn topology_json(&self) -> J {
        // The tree as data (pmesh-proto's `serde` feature), not its text parsed again: serde_json's
        // parser stops at 128 levels of nesting, a chain of 64 nodes.
        let mut v = serde_json::to_value(&self.model.tree).unwrap_or(J::Null);
        stamp(&mut v, self.now_ms());
        v
    }

    /// Publishes a snapshot topic whole, or paged when it exceeds the packet limit.
    /// Returns the number of publishes handed to the client.
    pub(super) async fn publish_snapshot(
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
    pub(super) async fn publish_status_topics(&mut self, tag: Tag) -> usize {
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

    pub(super) async fn publish_node(&mut self, id: u32, tag: Tag) -> usize {
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

    pub(super) async fn announce_ha(&mut self, id: u32, force: bool) {
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
    pub(super) async fn publish_all_retained(&mut self, tag: Option<Tag>) -> usize {
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

    pub(super) async fn snapshot_with_ack(&mut self, done: oneshot::Sender<usize>) {
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

    /// Clears a dropped node's retained topics (state, availability, HA discovery).
    pub(super) async fn clear_node_topics(&mut self, id: u32) {
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
}

/// `{"nodes":[..],"count":n,"timestamp":..}` in the documented key order.
pub(super) fn reorder_nodes(v: J) -> J {
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

pub(super) fn flatten(t: &NodeTree, parent: Option<u32>, out: &mut Vec<J>) {
    let mut v = json!({"nodeId": t.node_id, "parent": parent});
    if t.root {
        v["root"] = J::Bool(true);
    }
    out.push(v);
    for s in &t.subs {
        flatten(s, Some(t.node_id), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, subs: Vec<NodeTree>) -> NodeTree {
        NodeTree {
            node_id: id,
            root: false,
            has_time_authority: false,
            subs,
        }
    }

    #[test]
    fn the_tree_value_is_what_the_tree_json_reads_as() {
        let mut t = node(1, vec![node(2, vec![node(4, vec![])]), node(3, vec![])]);
        t.root = true;
        t.subs[1].has_time_authority = true;
        let text: J = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), text);
    }

    #[test]
    fn a_chain_deeper_than_the_json_parser_limit_is_whole() {
        let mut t = node(200, vec![]);
        for id in (1..200).rev() {
            t = node(id, vec![t]);
        }
        assert!(
            serde_json::from_slice::<J>(&t.to_json()).is_err(),
            "the old round trip"
        );
        let value = serde_json::to_value(&t).unwrap();
        let mut v = &value;
        for id in 1..200 {
            assert_eq!(v["nodeId"], id);
            v = &v["subs"][0];
        }
        assert_eq!(v["nodeId"], 200);
        assert!(v.get("subs").is_none());
    }
}
