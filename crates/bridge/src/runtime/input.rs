//! MQTT input: requests, commands, the legacy gateway topics, and what the connection skipped
//! (messages over the packet limit). Parsing is [`crate::request`]'s; here requests are
//! executed and answered, and every refusal is counted.
//!
//! Rules that do not depend on the verb:
//!
//! - a message delivered **retained** on a request, command or legacy topic is never executed:
//!   the broker sends a retained message again with every new subscription, so it would run
//!   again after every reconnect. It is answered once per process (an error that says how to
//!   clear it) and counted every time it arrives. MQTT 3.1.1 clears the retain flag of a
//!   message delivered to a subscription that already exists, so a retained request published
//!   while the bridge is connected arrives as a live one and runs once — never again;
//! - a message **over the packet limit** was skipped unread by the connection: a request or
//!   command is answered with its size and the limit (no `transaction`: it was not read);
//!   anything else is counted and logged.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rumqttc::Publish;
use serde_json::{Value as J, json};

use super::Runtime;
use super::publish::reorder_nodes;
use crate::conn::{Oversize, Tag};
use crate::gateway::OtaStart;
use crate::model::Campaign;
use crate::payload::packet_size;
use crate::request::{
    self, Action, Command, ImageSource, LegacyDest, MAX_IMAGE_BYTES, OtaStartRequest, RequestError,
};

/// Why a request was not done.
#[derive(Debug)]
pub(super) enum Failure {
    /// Bad input: counted in `pmesh_bridge_requests_rejected_total{reason}`.
    Rejected(RequestError),
    /// A valid request that cannot be done now (a campaign runs, the node is not in the mesh).
    Failed(String),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        Failure::Rejected(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Rejected(e) => e.fmt(f),
            Failure::Failed(s) => f.write_str(s),
        }
    }
}

/// Which subscription a topic arrived on.
enum Input<'t> {
    /// Our own `bridge/state`.
    State,
    /// `<prefix>/bridge/request/<verb>`.
    Request(&'t str),
    /// `<prefix>/command/<verb>`.
    Command(&'t str),
    /// `<legacy>/to/<dest>`.
    Legacy(&'t str),
    /// `<ha>/status`.
    HaStatus,
    /// Nothing we subscribed to.
    Other,
}

/// Keys seen lately (retained requests already answered), at most [`SeenSet::CAP`]; the
/// oldest are forgotten first, so a flood of distinct retained requests cannot grow memory.
#[derive(Debug, Default)]
pub(super) struct SeenSet {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl SeenSet {
    const CAP: usize = 1024;

    /// Remembers `key`; true if it was not known.
    fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > Self::CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// At most one warning per [`LogLimit::EVERY`]; the next one says how many were held back.
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(held back since the last warning)` when a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn key(topic: &str, body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

fn response(result: Result<J, Failure>, transaction: Option<J>) -> J {
    let mut v = match result {
        Ok(data) => json!({"status": "ok", "data": data}),
        Err(e) => json!({"status": "error", "data": {}, "error": e.to_string()}),
    };
    if let Some(t) = transaction {
        v["transaction"] = t;
    }
    v
}

impl Runtime {
    fn classify<'t>(&self, topic: &'t str) -> Input<'t> {
        let p = &self.cfg.prefix;
        let under = |rest: &str| {
            topic
                .strip_prefix(p.as_str())
                .and_then(|t| t.strip_prefix('/'))
                .and_then(|t| t.strip_prefix(rest))
        };
        if topic == self.topics.state() {
            Input::State
        } else if let Some(verb) = under("bridge/request/") {
            Input::Request(verb)
        } else if let Some(verb) = under("command/") {
            Input::Command(verb)
        } else if let Some(dest) = topic
            .strip_prefix(self.topics.legacy.as_str())
            .and_then(|t| t.strip_prefix("/to/"))
        {
            Input::Legacy(dest)
        } else if topic
            .strip_prefix(self.topics.ha.as_str())
            .is_some_and(|t| t == "/status")
        {
            Input::HaStatus
        } else {
            Input::Other
        }
    }

    /// Counts a refusal (by reason, and as MQTT invalid input) and logs it, rate-limited.
    fn reject(&mut self, e: &RequestError, topic: &str) {
        let reason = e.reason();
        *self.rejected.entry(reason).or_default() += 1;
        self.metrics
            .requests_rejected
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
        self.metrics
            .invalid_input
            .get_or_create(&vec![("source".into(), "mqtt".into())])
            .inc();
        if let Some(held_back) = self.reject_log.allow() {
            tracing::warn!(topic, reason, held_back, "MQTT input refused: {e}");
        }
    }

    /// A message on a subscribed topic.
    pub(super) async fn on_publish(&mut self, p: Publish) {
        let topic = p.topic.as_str();
        let input = self.classify(topic);
        if p.retain
            && matches!(
                input,
                Input::Request(_) | Input::Command(_) | Input::Legacy(_)
            )
        {
            let tx = request::transaction(&p.payload);
            return self
                .refuse_retained(&input, topic, key(topic, &p.payload), tx)
                .await;
        }
        match input {
            Input::State => self.on_state_echo(&p.payload).await,
            Input::Request(verb) => {
                let (reply, ok) = self.handle_request(verb, topic, &p.payload).await;
                let to = format!("{}/bridge/response/{verb}", self.cfg.prefix);
                self.respond(to, reply, ok).await;
            }
            Input::Command(verb) => {
                let (reply, ok) = self.handle_command(verb, topic, &p.payload).await;
                let to = format!("{}/response/{verb}", self.cfg.prefix);
                self.respond(to, reply, ok).await;
            }
            Input::Legacy(dest) => self.handle_legacy(dest, topic, &p.payload).await,
            Input::HaStatus if p.payload.eq_ignore_ascii_case(b"online") => {
                // Home Assistant restarted: announce every device again.
                let ids: Vec<u32> = self.model.nodes.keys().copied().collect();
                self.announce_ha(self.model.gateway, true).await;
                for id in ids {
                    if id != self.model.gateway {
                        self.announce_ha(id, true).await;
                    }
                }
            }
            Input::HaStatus | Input::Other => {}
        }
    }

    /// A message the connection skipped because it was over the packet limit.
    pub(super) async fn on_oversize(&mut self, o: Oversize) {
        let input = self.classify(&o.topic);
        let is_request = matches!(input, Input::Request(_) | Input::Command(_));
        if o.retain && (is_request || matches!(input, Input::Legacy(_))) {
            let k = key(&o.topic, &o.packet.to_le_bytes());
            return self.refuse_retained(&input, &o.topic, k, None).await;
        }
        let e = RequestError::TooLarge {
            payload: o.payload,
            packet: o.packet,
            limit: self.cfg.broker.max_packet_size,
        };
        self.reject(&e, &o.topic);
        let to = match input {
            Input::Request(verb) => format!("{}/bridge/response/{verb}", self.cfg.prefix),
            Input::Command(verb) => format!("{}/response/{verb}", self.cfg.prefix),
            _ => return,
        };
        self.respond(to, response(Err(e.into()), None), false).await;
    }

    /// A retained request, command or legacy message: never executed; answered once (requests
    /// and commands have a response topic), counted every time.
    async fn refuse_retained(&mut self, input: &Input<'_>, topic: &str, k: u64, tx: Option<J>) {
        let e = RequestError::Retained {
            topic: topic.to_owned(),
        };
        self.reject(&e, topic);
        let to = match input {
            Input::Request(verb) => format!("{}/bridge/response/{verb}", self.cfg.prefix),
            Input::Command(verb) => format!("{}/response/{verb}", self.cfg.prefix),
            _ => return,
        };
        if self.retained_answered.insert(k) {
            self.respond(to, response(Err(e.into()), tx), false).await;
        }
    }

    /// A message on our own `bridge/state`: if it says offline for any session while we are
    /// online, it is a stale will (or a stray publish); restore the truth at once.
    async fn on_state_echo(&mut self, payload: &[u8]) {
        if self.stopping || !self.online() {
            return;
        }
        let v: J = serde_json::from_slice(payload).unwrap_or(J::Null);
        let ours = v["state"] == "online" && v["session"].as_u64() == Some(self.session);
        if !ours {
            tracing::warn!(
                "bridge/state overwritten by {:?}; restoring online (session {})",
                String::from_utf8_lossy(payload),
                self.session
            );
            self.publish_state("online").await;
        }
    }

    async fn respond(&mut self, topic: String, reply: J, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.metrics
            .requests
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        if !self.online() {
            return;
        }
        let text = reply.to_string();
        if packet_size(&topic, text.len()) > self.cfg.broker.max_packet_size {
            let mut small = json!({"status": "error", "data": {}, "error": "response larger than the broker packet limit; read the retained status topics instead"});
            if let Some(t) = reply.get("transaction") {
                small["transaction"] = t.clone();
            }
            self.raw_publish(
                topic,
                small.to_string().into_bytes(),
                false,
                Tag::Plain,
                "response",
            )
            .await;
        } else {
            self.raw_publish(topic, text.into_bytes(), false, Tag::Plain, "response")
                .await;
        }
    }

    /// `bridge/request/<verb>` → (response, ok). Every request gets an answer.
    async fn handle_request(&mut self, verb: &str, topic: &str, payload: &[u8]) -> (J, bool) {
        let req = match request::parse_request(verb, payload) {
            Ok(r) => r,
            Err(e) => {
                self.reject(&e, topic);
                return (
                    response(Err(e.into()), request::transaction(payload)),
                    false,
                );
            }
        };
        let result = self.dispatch(req.action).await;
        if let Err(Failure::Rejected(e)) = &result {
            self.reject(e, topic);
        }
        let ok = result.is_ok();
        (response(result, req.transaction), ok)
    }

    async fn dispatch(&mut self, action: Action) -> Result<J, Failure> {
        match action {
            Action::Info => Ok(self.info_json()),
            Action::Health => Ok(self.health_json()),
            Action::Nodes => {
                let nodes: Vec<J> = self
                    .model
                    .nodes
                    .iter()
                    .map(|(id, r)| json!({"nodeId": id, "online": r.online, "parent": r.parent, "hops": r.hops, "lastSeen": r.last_seen}))
                    .collect();
                Ok(json!({"nodes": nodes, "count": self.model.node_count()}))
            }
            Action::Topology => Ok(self.topology_json()),
            Action::Alerts => Ok(self.alerts_json()),
            Action::PublishNow => {
                let n = self.publish_status_topics(Tag::Plain).await;
                Ok(json!({"published": n}))
            }
            Action::Resync => {
                let n = self.publish_all_retained(None).await;
                Ok(json!({"published": n}))
            }
            Action::Send(s) => {
                let to = s.to.0;
                self.gateway
                    .send_single(to, s.message.0)
                    .map_err(|e| Failure::Failed(e.0))?;
                self.model.counters.tx_single += 1;
                Ok(json!({"to": to}))
            }
            Action::Broadcast(b) => self.broadcast(b.message.0),
            Action::OtaStart(o) => self.ota_start(o).await,
            Action::OtaStatus => Ok(match &self.model.campaign {
                Some(c) => c.to_json(&self.model.nodes),
                None => json!({"campaign": null, "state": "none"}),
            }),
            Action::OtaAbort(a) => {
                let c = self
                    .model
                    .campaign
                    .as_ref()
                    .filter(|c| c.state == "running")
                    .map(|c| c.id);
                let c = c.ok_or_else(|| Failure::Failed("no campaign is running".into()))?;
                if let Some(want) = a.campaign
                    && want != c
                {
                    return Err(Failure::Failed(format!(
                        "campaign {want} is not running (running: {c})"
                    )));
                }
                self.gateway
                    .ota_abort(c)
                    .map_err(|e| Failure::Failed(e.0))?;
                let ch = self.model.ota_end(c, "aborted");
                self.apply(ch);
                Ok(json!({"campaign": c, "state": "aborted"}))
            }
        }
    }

    fn broadcast(&mut self, msg: Vec<u8>) -> Result<J, Failure> {
        self.gateway
            .send_broadcast(msg)
            .map_err(|e| Failure::Failed(e.0))?;
        self.model.counters.tx_broadcast += 1;
        Ok(json!({}))
    }

    async fn ota_start(&mut self, req: OtaStartRequest) -> Result<J, Failure> {
        if self.model.ota_running() {
            let id = self.model.campaign.as_ref().map(|c| c.id).unwrap_or(0);
            return Err(Failure::Failed(format!(
                "campaign {id} is still running; abort it first"
            )));
        }
        let (image, md5) = self.load_image(req.image).await?;
        let id = self.next_campaign.max(self.now_ms().unwrap_or(0));
        self.next_campaign = id + 1;
        let size = image.len() as u64;
        let hardware = req.hardware.as_str().to_owned();
        self.gateway
            .ota_start(OtaStart {
                campaign: id,
                image,
                md5: md5.clone(),
                role: req.role.clone(),
                hardware: hardware.clone(),
                mode: req.mode,
                compressed: req.compressed,
            })
            .map_err(|e| Failure::Failed(e.0))?;
        let c = Campaign {
            id,
            state: "running",
            role: req.role,
            hardware,
            mode: req.mode,
            compressed: req.compressed,
            size,
            md5,
            started_at: self.now_ms(),
            done: 0,
            failed: 0,
        };
        let v = c.to_json(&self.model.nodes);
        self.model.ota_begin(c);
        self.save_ota_marker();
        self.emit_event("ota_requested", v.clone());
        Ok(v)
    }

    /// The image and its MD5 (lowercase hex). The file is read, at most [`MAX_IMAGE_BYTES`],
    /// and hashed on tokio's blocking pool, not on the bridge's task's thread.
    async fn load_image(&self, source: ImageSource) -> Result<(Vec<u8>, String), Failure> {
        enum Load {
            Dir(pmesh_fwdir::FirmwareDir, String),
            Inline(Vec<u8>),
        }
        let job = match source {
            ImageSource::FirmwareDir(name) => match &self.cfg.firmware_dir {
                Some(dir) => Load::Dir(dir.clone(), name),
                None => return Err(RequestError::NoFirmwareDir.into()),
            },
            ImageSource::Inline(image) => Load::Inline(image),
        };
        let load = move || -> Result<(Vec<u8>, String), RequestError> {
            let image = match job {
                Load::Dir(dir, name) => dir
                    .read(&name, MAX_IMAGE_BYTES)
                    .map_err(|error| RequestError::ImagePath { name, error })?,
                Load::Inline(image) => image,
            };
            if image.is_empty() {
                return Err(RequestError::EmptyImage);
            }
            let md5 = Md5::digest(&image)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            Ok((image, md5))
        };
        match tokio::task::spawn_blocking(load).await {
            Ok(r) => r.map_err(Failure::Rejected),
            Err(e) => Err(Failure::Failed(format!("reading the image failed: {e}"))),
        }
    }

    /// `<prefix>/command/<verb>` (the promised command API) → `<prefix>/response/<verb>`.
    async fn handle_command(&mut self, verb: &str, topic: &str, payload: &[u8]) -> (J, bool) {
        let (command, tx) = match request::parse_command(verb, payload) {
            Ok(c) => c,
            Err(e) => {
                self.reject(&e, topic);
                return (
                    response(Err(e.into()), request::transaction(payload)),
                    false,
                );
            }
        };
        let result = match command {
            Command::GetNodes => {
                let (ids, extra) = self.nodes_json();
                let mut v = J::Object(extra);
                v["nodes"] = J::Array(ids);
                Ok(reorder_nodes(v))
            }
            Command::GetTopology => Ok(self.topology_json()),
            Command::PublishNow => {
                let n = self.publish_status_topics(Tag::Plain).await;
                Ok(json!({"published": n}))
            }
            Command::Broadcast(msg) => self.broadcast(msg),
        };
        let ok = result.is_ok();
        (response(result, tx), ok)
    }

    /// `painlessMesh/to/<id|broadcast|gateway>`: the older gateway convention (no responses).
    async fn handle_legacy(&mut self, dest: &str, topic: &str, payload: &[u8]) {
        let dest = match request::parse_legacy_dest(dest) {
            Ok(d) => d,
            Err(e) => return self.reject(&e, topic),
        };
        let result = match dest {
            LegacyDest::Broadcast => self
                .gateway
                .send_broadcast(payload.to_vec())
                .map(|_| self.model.counters.tx_broadcast += 1),
            LegacyDest::Gateway => {
                if payload.trim_ascii() == b"getNodes" {
                    let ids = J::from(self.model.tree.node_list(false)).to_string();
                    let t = format!("{}/from/gateway", self.topics.legacy);
                    self.raw_publish(t, ids.into_bytes(), false, Tag::Plain, "response")
                        .await;
                }
                Ok(())
            }
            LegacyDest::Node(id) => self
                .gateway
                .send_single(id, payload.to_vec())
                .map(|_| self.model.counters.tx_single += 1),
        };
        if let Err(e) = result
            && let Some(held_back) = self.reject_log.allow()
        {
            tracing::warn!(topic, held_back, "MQTT legacy message not sent: {e}");
        }
    }
}
