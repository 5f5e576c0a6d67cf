//! The MQTT session: connecting, subscribing and going online, the connection's events and
//! acknowledgements, and the outbox (events and alerts queued durably and replayed in order,
//! each leaving the outbox only on its PUBACK). The life cycle is in the parent module's doc.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{LastWill, Publish, QoS, Subscribe, SubscribeFilter};
use serde_json::{Value as J, json};

use super::{Runtime, q1};
use crate::conn::{ConnEvent, Connection, Endpoint, Out, Tag};
use crate::payload::{packet_size, stamp};

/// Requests handed to the connection task per channel message (fewer wake-ups, fewer writes).
const BATCH: usize = 64;

/// Most outbox entries handed to the connection and not yet acknowledged. The connection
/// writes them one at a time anyway (each is a barrier, see `crate::conn`); this only bounds
/// what waits in between.
const EVENT_WINDOW: usize = 64;

pub(super) struct Conn {
    pub(super) link: Connection,
    /// Requests not yet handed to the connection task (flushed at the end of every loop pass).
    pub(super) batch: Vec<Out>,
    pub(super) subscribed: bool,
    pub(super) online: bool,
    /// QoS 1 publishes handed to the connection and not acknowledged yet.
    pub(super) unacked: usize,
    /// The connection task has ended; only its remaining events are still read.
    pub(super) ended: bool,
    /// Highest outbox sequence number handed to this connection.
    pub(super) events_sent_upto: u64,
    /// Outbox entries handed to this connection and not acknowledged yet.
    pub(super) events_in_flight: usize,
    pub(super) ha_announced: BTreeSet<u32>,
}

impl Conn {
    /// Queues a request; hands a full batch over. False if the connection task has ended.
    pub(super) async fn push(&mut self, out: Out) -> bool {
        if self.ended {
            return false;
        }
        self.batch.push(out);
        self.batch.len() < BATCH || self.flush().await
    }

    /// Hands queued requests over. False if the connection task has ended.
    pub(super) async fn flush(&mut self) -> bool {
        !self.ended
            && (self.batch.is_empty() || self.link.send(std::mem::take(&mut self.batch)).await)
    }
}

impl Runtime {
    pub(super) fn connect(&mut self) {
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

    pub(super) fn schedule_reconnect(&mut self) {
        self.reconnect_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.cfg.broker.reconnect_max);
    }

    pub(super) fn drop_conn(&mut self, why: &str) {
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
    pub(super) fn conn_ended(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            c.ended = true;
            c.online = false;
            c.batch.clear();
        }
    }

    pub(super) async fn on_conn_event(&mut self, ev: Option<ConnEvent>) {
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

    pub(super) fn on_ack(&mut self, tag: Tag) {
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

    /// Publishes `bridge/state` (retained) with this session: `online` or `offline`.
    pub(super) async fn publish_state(&mut self, state: &str) {
        let payload = json!({"state": state, "session": self.session}).to_string();
        self.raw_publish(
            self.topics.state(),
            payload.into_bytes(),
            true,
            Tag::Plain,
            "state",
        )
        .await;
    }

    pub(super) async fn go_online(&mut self) {
        self.publish_state("online").await;
        if let Some(c) = self.conn.as_mut() {
            c.online = true;
        }
        tracing::info!("MQTT online (session {})", self.session);
        self.publish_all_retained(None).await;
        // The outbox is replayed from its oldest entry by `send_pending`, a window at a time.
        self.send_pending().await;
    }

    pub(super) async fn shutdown(&mut self) {
        self.stopping = true;
        if self.conn.as_ref().is_some_and(|c| c.online) {
            self.publish_state("offline").await;
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
    pub(super) async fn raw_publish(
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
    pub(super) async fn flush_requests(&mut self) {
        if let Some(c) = self.conn.as_mut()
            && !c.flush().await
        {
            self.conn_ended();
        }
    }

    pub(super) fn online(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.online)
    }

    pub(super) fn emit_alert(&mut self, kind: &'static str, data: J) {
        if self.cfg.streams.alerts {
            self.queue_event(kind, data);
        }
    }

    pub(super) fn emit_event(&mut self, kind: &'static str, data: J) {
        if self.cfg.streams.events {
            self.queue_event(kind, data);
        }
    }

    /// Puts an event into the outbox (durably) and publishes it now if online.
    pub(super) fn queue_event(&mut self, kind: &'static str, data: J) {
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

    /// Hands outbox entries not yet sent on this connection to it, oldest first, while fewer
    /// than [`EVENT_WINDOW`] are unacknowledged. Called every loop pass: a replay of thousands
    /// of events after an outage never holds up the loop, and events created meanwhile follow
    /// it in `seq` order.
    pub(super) async fn send_pending(&mut self) {
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
}

pub(super) async fn recv_conn(conn: &mut Option<Conn>) -> Option<ConnEvent> {
    match conn {
        Some(c) => c.link.events.recv().await,
        None => std::future::pending().await,
    }
}
