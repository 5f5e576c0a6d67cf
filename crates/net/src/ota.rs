//! OTA on a Linux node: the plugin a node runs ([`NodeOta`]), a rollout follower that keeps
//! the distributor's [`RolloutView`] (fed with the node's OTA events) and turns it into
//! progress items and a verdict ([`run_push`]), and the control endpoint's `ota_push`,
//! `ota_cancel` and `ota_status` commands ([`routes`]).
//!
//! `pmesh ota push` uses the follower in both of its modes: against a running node's control
//! endpoint (the node runs the follower and streams its items), or on a temporary node of its
//! own (`--connect`). Either way the same items reach the terminal and the same rules
//! ([`pmesh_ota::rollout_done`]) decide when a rollout is done:
//!
//! - **pmesh mode**: targets report their progress and phase. The rollout is done when every
//!   reporting target (and every `expect`ed node) has installed the image or failed, and no new
//!   target appeared for `settle`.
//! - **classic modes**: nodes never report; the distributor sees only their requests. A node
//!   counts as done when it was served every chunk (stock nodes then check the MD5 and reboot,
//!   silently). In broadcast mode the distributor pushes: it floods every chunk in order
//!   (passes, see `pmesh_ota::classic::push`); a node in the mesh for a whole pass counts as
//!   served, and the rollout is done when a pass has settled, every node in the mesh was
//!   covered by one, and no request came for `settle`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pmesh_node::{ConnectionChange, Context, Event, Handled, Incoming, Instant, Plugin};
use pmesh_ota::classic::ClassicDistributor;
use pmesh_ota::{
    ApplyPolicy, ChunkBitmap, DoneInput, FirmwareSink, Mode, Offer, Ota, OtaEvent, OtaStore, Phase,
    Refusal, RefusalCode, RolloutPhase, RolloutView, TransferId, rollout_done,
};
use pmesh_proto::message::types;
use pmesh_proto::ota::DataRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::control::{ControlServer, Reply, Request};
use crate::firmware::FileSource;
use crate::handle::{MeshError, MeshEvent, MeshHandle};

// --- the plugin ------------------------------------------------------------------------------

/// Requesters remembered per node (classic); more are counted but not itemised.
const MAX_REQUESTERS: usize = 4096;

/// What this node served one classic requester.
#[derive(Clone, Debug)]
pub struct Served {
    /// DataRequests answered (duplicates included).
    pub requests: u64,
    /// Distinct chunks served.
    pub parts: ChunkBitmap,
    /// Last chunk asked for.
    pub last_part: u32,
    /// When it last asked.
    pub last_at: Instant,
}

/// The classic requests this node answered, per image (MD5) and requester. Stock nodes never
/// report progress; this is what a distributor can see of them.
#[derive(Clone, Debug, Default)]
pub struct ServedLedger {
    by_image: BTreeMap<String, BTreeMap<u32, Served>>,
    tracked: usize,
    /// Requests from requesters beyond the tracking limit.
    pub untracked_requests: u64,
}

impl ServedLedger {
    /// Per requester, for the image with this MD5.
    pub fn for_image(&self, md5: &str) -> Option<&BTreeMap<u32, Served>> {
        self.by_image.get(md5)
    }

    fn record(&mut self, md5: &str, parts: u32, from: u32, part: u32, now: Instant) {
        let image = self.by_image.entry(md5.to_owned()).or_default();
        if !image.contains_key(&from) {
            if self.tracked >= MAX_REQUESTERS {
                self.untracked_requests += 1;
                return;
            }
            self.tracked += 1;
        }
        let s = image.entry(from).or_insert_with(|| Served {
            requests: 0,
            parts: ChunkBitmap::new(parts),
            last_part: part,
            last_at: now,
        });
        s.requests += 1;
        s.parts.set(part);
        s.last_part = part;
        s.last_at = now;
    }

    fn forget(&mut self, md5: &str) {
        if let Some(m) = self.by_image.remove(md5) {
            self.tracked -= m.len();
        }
    }
}

/// The OTA plugin as a pmesh node on Linux runs it: [`pmesh_ota::Ota`] (distributor, classic
/// and pmesh receivers, relay) plus a ledger of the classic requests it answered.
#[derive(Debug)]
pub struct NodeOta<S: FirmwareSink, T: OtaStore> {
    ota: Ota<S, T>,
    served: ServedLedger,
}

impl<S: FirmwareSink, T: OtaStore> NodeOta<S, T> {
    /// Wraps an OTA plugin.
    pub fn new(ota: Ota<S, T>) -> Self {
        NodeOta {
            ota,
            served: ServedLedger::default(),
        }
    }

    /// The OTA plugin.
    pub fn ota(&self) -> &Ota<S, T> {
        &self.ota
    }

    /// The OTA plugin, to make offers and cancel them.
    pub fn ota_mut(&mut self) -> &mut Ota<S, T> {
        &mut self.ota
    }

    /// Classic requests answered, per image and requester.
    pub fn served(&self) -> &ServedLedger {
        &self.served
    }
}

impl<S: FirmwareSink, T: OtaStore> Plugin for NodeOta<S, T> {
    type Event = OtaEvent;

    fn on_frame(&mut self, ctx: &mut Context<'_, OtaEvent>, frame: &Incoming<'_>) -> Handled {
        let env = frame.envelope;
        if env.ty == types::OTA_DATA_REQUEST && env.dest == ctx.node_id() {
            let req = DataRequest::from_envelope(env);
            let parts = self
                .ota
                .classic_distributor()
                .into_iter()
                .flat_map(ClassicDistributor::offers)
                .find(|o| o.md5 == req.info.md5)
                .map(|o| o.no_part);
            // Only requests the distributor answers: one of our images, a part inside it.
            if let Some(parts) = parts
                && req.part_no < parts
            {
                self.served
                    .record(&req.info.md5, parts, req.from, req.part_no, ctx.now());
            }
        }
        self.ota.on_frame(ctx, frame)
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, OtaEvent>, change: ConnectionChange) {
        self.ota.on_connection(ctx, change);
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        self.ota.on_timeout(ctx);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ota.poll_timeout()
    }
}

/// A node plugin that contains a [`NodeOta`]: the plugin itself, or a pair with another
/// plugin of the same event type (a status reporter, say).
pub trait OtaHost: Plugin<Event = OtaEvent> {
    /// The firmware sink.
    type Sink: FirmwareSink;
    /// The store.
    type Store: OtaStore;
    /// The OTA plugin.
    fn node_ota(&self) -> &NodeOta<Self::Sink, Self::Store>;
    /// The OTA plugin, mutably.
    fn node_ota_mut(&mut self) -> &mut NodeOta<Self::Sink, Self::Store>;
}

impl<S: FirmwareSink, T: OtaStore> OtaHost for NodeOta<S, T> {
    type Sink = S;
    type Store = T;
    fn node_ota(&self) -> &NodeOta<S, T> {
        self
    }
    fn node_ota_mut(&mut self) -> &mut NodeOta<S, T> {
        self
    }
}

impl<S: FirmwareSink, T: OtaStore, B: Plugin<Event = OtaEvent>> OtaHost for (NodeOta<S, T>, B) {
    type Sink = S;
    type Store = T;
    fn node_ota(&self) -> &NodeOta<S, T> {
        &self.0
    }
    fn node_ota_mut(&mut self) -> &mut NodeOta<S, T> {
        &mut self.0
    }
}

// --- logging -------------------------------------------------------------------------------

/// What a failure means to an operator, and what to do.
pub fn refusal_help(reason: RefusalCode) -> &'static str {
    match reason {
        RefusalCode::WrongRole => "the image is for another role (check --role)",
        RefusalCode::WrongHardware => "the image is for other hardware (check --hardware)",
        RefusalCode::AlreadyCurrent => {
            "the node already runs this image (use --forced to install again)"
        }
        RefusalCode::TooLarge => "the image does not fit the node's firmware slot",
        RefusalCode::UnknownCompression => {
            "the node cannot decompress this image (push without --compressed)"
        }
        RefusalCode::BadOffer => "the offer is malformed",
        RefusalCode::HashMismatch => {
            "the written image does not have the announced hash; nothing was installed"
        }
        RefusalCode::Busy => "the node is busy with another transfer",
        RefusalCode::Io => "the node's firmware storage failed (disk full? permissions?)",
        RefusalCode::Codec => "the compressed stream is damaged",
        RefusalCode::Untrusted => {
            "the node does not trust the image (see docs/ota.md, signed firmware)"
        }
        RefusalCode::Other(_) => "see docs/ota.md",
    }
}

/// Logs a node's OTA events: acceptance, progress at every 10 %, verify, install, refusals,
/// failures at info/warn; the rest at debug.
#[derive(Debug, Default)]
pub struct OtaLogger {
    last_decile: BTreeMap<TransferId, u32>,
}

impl OtaLogger {
    /// Logs one event.
    pub fn log(&mut self, ev: &OtaEvent) {
        match ev {
            OtaEvent::Accepted {
                id,
                chunks,
                resumed_from,
            } => {
                self.last_decile
                    .insert(*id, resumed_from * 10 / (*chunks).max(1));
                if *resumed_from > 0 {
                    info!(
                        mode = id.mode.name(),
                        transfer = id.id,
                        chunks,
                        resumed_from,
                        "OTA: resuming an image"
                    );
                } else {
                    info!(
                        mode = id.mode.name(),
                        transfer = id.id,
                        chunks,
                        "OTA: receiving an image"
                    );
                }
            }
            OtaEvent::Progress { id, done, total } => {
                let decile = done * 10 / (*total).max(1);
                let last = self.last_decile.entry(*id).or_insert(0);
                if decile > *last {
                    *last = decile;
                    info!(
                        mode = id.mode.name(),
                        transfer = id.id,
                        done,
                        total,
                        percent = done * 100 / (*total).max(1),
                        "OTA: progress"
                    );
                } else {
                    debug!(
                        mode = id.mode.name(),
                        transfer = id.id,
                        done,
                        total,
                        "OTA: progress"
                    );
                }
            }
            OtaEvent::Verified { id } => {
                info!(
                    mode = id.mode.name(),
                    transfer = id.id,
                    "OTA: image verified (hash matches)"
                )
            }
            OtaEvent::Installed { id, image } => {
                self.last_decile.remove(id);
                info!(mode = id.mode.name(), transfer = id.id, role = %image.role, hardware = %image.hardware,
                    version = %image.version, sha256 = %image.sha256, md5 = %image.md5, "OTA: image installed");
            }
            OtaEvent::Refused { id, reason } => {
                // Offers for other roles or hardware, or the image already running, are normal
                // in a mixed mesh: info. Everything else needs attention.
                let normal = matches!(
                    reason,
                    Refusal::WrongRole { .. }
                        | Refusal::WrongHardware { .. }
                        | Refusal::AlreadyCurrent
                );
                if normal {
                    info!(mode = id.mode.name(), transfer = id.id, code = reason.code(), reason = %reason, "OTA: offer not taken");
                } else {
                    warn!(mode = id.mode.name(), transfer = id.id, code = reason.code(), reason = %reason, "OTA: offer refused");
                }
            }
            OtaEvent::Failed {
                id,
                reason: Refusal::BadOffer(why),
            } if why.contains("cancelled") => {
                self.last_decile.remove(id);
                info!(mode = id.mode.name(), transfer = id.id, reason = %why,
                    "OTA: transfer cancelled; the partial image was discarded");
            }
            OtaEvent::Failed { id, reason } => {
                self.last_decile.remove(id);
                warn!(mode = id.mode.name(), transfer = id.id, code = reason.code(), reason = %reason,
                    "OTA: transfer failed; nothing was installed");
            }
            OtaEvent::RebootRequested { id } => {
                debug!(
                    mode = id.mode.name(),
                    transfer = id.id,
                    "OTA: reboot requested"
                )
            }
            OtaEvent::NodeProgress {
                id,
                node,
                done,
                total,
                phase,
            } => {
                debug!(
                    mode = id.mode.name(),
                    transfer = id.id,
                    node,
                    done,
                    total,
                    phase = RolloutPhase::of_report(*phase).name(),
                    "OTA: node progress"
                )
            }
            OtaEvent::RolloutVerified {
                id,
                verified,
                failed,
                apply_at,
            } => {
                info!(mode = id.mode.name(), transfer = id.id, verified, failed, apply_at = ?apply_at, "OTA: every known target verified or failed")
            }
            OtaEvent::AnnouncesDone { id } => {
                info!(
                    mode = id.mode.name(),
                    transfer = id.id,
                    "OTA: last classic announce sent"
                )
            }
            OtaEvent::PassDone {
                id,
                pass,
                covered,
                uncovered,
            } => {
                info!(
                    mode = id.mode.name(),
                    transfer = id.id,
                    pass,
                    covered,
                    uncovered,
                    "OTA: classic push pass done"
                )
            }
        }
    }
}

// --- push: options and items ----------------------------------------------------------------

/// Which protocol a push uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMode {
    /// painlessMesh OTA (types 10/11/12): stock nodes and pmesh nodes take it.
    #[default]
    Classic,
    /// pmesh's protocol (types 710–716): pmesh nodes only; they report progress.
    Pmesh,
}

fn default_timeout() -> f64 {
    1800.0
}

/// What to push and how to follow it (the `ota_push` control request's parameters).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushOptions {
    /// The image file (read by the process that distributes it).
    pub file: PathBuf,
    /// Target role.
    pub role: String,
    /// Target hardware.
    pub hardware: String,
    /// Protocol.
    #[serde(default)]
    pub mode: PushMode,
    /// Classic broadcast mode: the distributor floods Data in order itself (a push, which
    /// stock receivers take; see `pmesh_ota::classic::push`).
    #[serde(default)]
    pub broadcast: bool,
    /// Classic broadcast: Data bytes per second the push floods (0: unlimited) [default
    /// 250,000].
    #[serde(default)]
    pub pace: Option<u64>,
    /// Classic: choose at the offer between the broadcast push and unicast
    /// ([`auto_broadcast`]); `broadcast` is then ignored.
    #[serde(default)]
    pub auto: bool,
    /// Compress (classic: gzip of the image; pmesh: deflate per chunk).
    #[serde(default)]
    pub compressed: bool,
    /// Install even where the image already runs.
    #[serde(default)]
    pub forced: bool,
    /// Version text (pmesh manifests).
    #[serde(default)]
    pub version: String,
    /// Bytes per chunk; 0: the protocol's default (classic 1,024; pmesh 4,096 image bytes,
    /// compressed at most 3,072 DEFLATE bytes per chunk).
    #[serde(default)]
    pub chunk_size: u32,
    /// Give up (and cancel) after this many seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Quiet time before "done" (no new target or request); default 3 s pmesh, 10 s classic
    /// unicast, 20 s classic broadcast.
    #[serde(default)]
    pub settle_s: Option<f64>,
    /// Nodes that must finish (they are waited for even if they never report).
    #[serde(default)]
    pub expect: Vec<u32>,
    /// Keep offering after the push ends (until `ota_cancel`).
    #[serde(default)]
    pub keep: bool,
    /// pmesh: targets install as soon as each has verified the image, instead of together
    /// once every known target has verified it (`apply_delay_s` after the last one).
    #[serde(default)]
    pub apply_on_verify: bool,
    /// pmesh: lead time of the common apply time, so APPLY reaches every node first.
    #[serde(default = "default_apply_delay")]
    pub apply_delay_s: f64,
}

fn default_apply_delay() -> f64 {
    2.0
}

impl PushOptions {
    /// Options for `file` to `role` on `hardware`, defaults otherwise.
    pub fn new(file: impl Into<PathBuf>, role: &str, hardware: &str) -> Self {
        PushOptions {
            file: file.into(),
            role: role.into(),
            hardware: hardware.into(),
            mode: PushMode::Classic,
            broadcast: false,
            pace: None,
            auto: false,
            compressed: false,
            forced: false,
            version: String::new(),
            chunk_size: 0,
            timeout_s: default_timeout(),
            settle_s: None,
            expect: Vec::new(),
            keep: false,
            apply_on_verify: false,
            apply_delay_s: default_apply_delay(),
        }
    }

    fn settle(&self) -> Duration {
        let default = match (self.mode, self.broadcast) {
            (PushMode::Pmesh, _) => 3.0,
            (PushMode::Classic, false) => 10.0,
            (PushMode::Classic, true) => 20.0,
        };
        Duration::from_secs_f64(self.settle_s.unwrap_or(default).clamp(0.0, 86_400.0))
    }

    fn check(&self) -> Result<(), String> {
        if self.role.is_empty() || self.hardware.is_empty() {
            return Err("role and hardware must not be empty".into());
        }
        if !(0.0..=3600.0).contains(&self.apply_delay_s) {
            return Err("apply delay must be between 0 and 3600 s".into());
        }
        if !(self.timeout_s > 0.0 && self.timeout_s <= 30.0 * 86_400.0) {
            return Err("timeout must be between 0 and 30 days".into());
        }
        if self.broadcast && self.mode == PushMode::Pmesh {
            return Err(
                "broadcast is a classic mode; the pmesh protocol always pushes along the tree"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The `auto` rule for classic campaigns: the broadcast push unless exactly one target is
/// named (`expect`) and the mesh holds other nodes, which the flood would also load.
///
/// Stock receivers do not reveal their role, so an unnamed campaign may reach any node; and
/// the push beats unicast from a single stock target up (`pmesh bench ota --topology chain
/// --nodes 2,3 --modes unicast-stock,push-stock`: 2.2 s against 9.6 s for one target, 2.2 s
/// against 19.3 s for two, fewer bytes too: stock unicast waits a round trip per chunk). A
/// single named target is the one case where flooding every link is the waste.
pub fn auto_broadcast(named_targets: usize, mesh_nodes: usize) -> bool {
    !(named_targets == 1 && mesh_nodes > 1)
}

/// Where one node is in a push, as the distributor sees it.
///
/// On the wire (JSON) the phase is a `state` text and, for a failure, a `reason` text
/// ([`RolloutPhase::name`], [`RefusalCode::name`]); in Rust it is typed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "NodeViewJson", try_from = "NodeViewJson")]
pub struct NodeView {
    /// The node.
    pub node: u32,
    /// Chunks it holds (pmesh) or was served (classic).
    pub done: u32,
    /// Chunks in the image.
    pub total: u32,
    /// Its phase (pmesh: receiving, verified, installed, failed; classic: requesting, served).
    pub phase: RolloutPhase,
    /// Classic: DataRequests answered for it (duplicates included).
    pub requests: Option<u64>,
    /// Classic: seconds since its last request.
    pub idle_s: Option<f64>,
}

impl NodeView {
    /// The node needs nothing more from the distributor (installed, failed, or served all).
    pub fn finished(&self) -> bool {
        self.phase.finished()
    }
}

/// [`NodeView`] as JSON carries it.
#[derive(Serialize, Deserialize)]
struct NodeViewJson {
    node: u32,
    done: u32,
    total: u32,
    state: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    requests: Option<u64>,
    #[serde(default)]
    idle_s: Option<f64>,
}

impl From<NodeView> for NodeViewJson {
    fn from(v: NodeView) -> Self {
        NodeViewJson {
            node: v.node,
            done: v.done,
            total: v.total,
            state: v.phase.name().into(),
            reason: v.phase.failure().map(|r| r.name().into()),
            requests: v.requests,
            idle_s: v.idle_s,
        }
    }
}

impl TryFrom<NodeViewJson> for NodeView {
    type Error = String;
    fn try_from(v: NodeViewJson) -> Result<Self, String> {
        let phase = RolloutPhase::parse(&v.state, v.reason.as_deref())
            .ok_or_else(|| format!("unknown node state {:?}", v.state))?;
        Ok(NodeView {
            node: v.node,
            done: v.done,
            total: v.total,
            phase,
            requests: v.requests,
            idle_s: v.idle_s,
        })
    }
}

/// [`Mode`] as JSON carries it: `unicast`, `broadcast` or `pmesh` ([`Mode::name`]).
mod mode_text {
    use pmesh_ota::Mode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let name = String::deserialize(d)?;
        Mode::parse(&name).ok_or_else(|| D::Error::custom(format!("unknown mode {name:?}")))
    }
}

/// How a push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every target finished.
    Done,
    /// The timeout passed first.
    Timeout,
    /// Cancelled (Ctrl-C, or the client went away).
    Cancelled,
    /// Another offer replaced this rollout on the distributor.
    Replaced,
    /// The mesh node stopped.
    Stopped,
}

/// The verdict of a push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// How it ended.
    pub outcome: Outcome,
    /// Every target finished and none failed.
    pub ok: bool,
    /// Seconds since the offer.
    pub elapsed_s: f64,
    /// Every node that reported or requested, last view.
    pub nodes: Vec<NodeView>,
    /// Nodes in the mesh that never reported or requested (not targets, or stock nodes that
    /// ignored the offer, or pmesh nodes out of reach).
    pub silent: Vec<u32>,
    /// Expected nodes that never reported or requested.
    pub missing: Vec<u32>,
    /// The offer is still being made (`keep`).
    pub still_offered: bool,
    /// What the distributor can and cannot know in this mode.
    pub note: String,
}

/// Distributor-side counters during a push.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushStats {
    /// Seconds since the offer.
    pub elapsed_s: f64,
    /// Other nodes in the mesh now.
    pub mesh_nodes: usize,
    /// Classic: announces sent.
    pub announces: u64,
    /// Classic: DataRequests answered.
    pub requests_answered: u64,
    /// Classic: chunk bytes served (before base64).
    pub bytes_served: u64,
    /// pmesh: CHUNK bytes sent by the distributor.
    pub data_bytes_sent: u64,
    /// pmesh: control bytes sent by the distributor.
    pub control_bytes_sent: u64,
}

/// One line of a push's progress stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushItem {
    /// The offer was made.
    Offered {
        /// Transfer id (pmesh rollout id, or the MD5's first 32 bits).
        transfer: u32,
        /// The protocol (`unicast`, `broadcast` or `pmesh` in JSON).
        #[serde(with = "mode_text")]
        mode: Mode,
        /// The distributing node.
        distributor: u32,
        /// The image file.
        file: String,
        /// Image bytes.
        image_bytes: u64,
        /// SHA-256 of the image.
        sha256: String,
        /// Classic: MD5 of the served bytes (what announces carry).
        md5: Option<String>,
        /// Chunks.
        chunks: u32,
        /// Other nodes in the mesh at the offer.
        mesh_nodes: Vec<u32>,
    },
    /// A node's view changed.
    Node(NodeView),
    /// Counters, about once a second.
    Stats(PushStats),
    /// The end.
    Finished(Summary),
}

// --- push: the follower ---------------------------------------------------------------------

/// Why a push could not start.
#[derive(Debug)]
pub enum PushError {
    /// Bad options.
    Options(String),
    /// The file cannot be read.
    File(String),
    /// The node refused the offer.
    Refused(Refusal),
    /// The mesh node stopped.
    Mesh(MeshError),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Options(m) => write!(f, "bad push options: {m}"),
            PushError::File(m) => f.write_str(m),
            PushError::Refused(r) => write!(f, "the node refused the offer: {r}"),
            PushError::Mesh(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PushError {}

/// The SHA-256 (hex) of an image file, read in blocks: never more than one block in memory,
/// and refused when empty or larger than a node takes ([`crate::firmware::DEFAULT_CAPACITY`]).
fn hash_image(source: &mut FileSource) -> Result<String, String> {
    let len = pmesh_ota::FirmwareSource::len(source);
    let name = source.path().display().to_string();
    if len == 0 {
        return Err(format!("{name} is empty"));
    }
    let limit = crate::firmware::DEFAULT_CAPACITY;
    if len > limit {
        return Err(format!(
            "{name} is {len} bytes, more than the {limit} bytes a node takes"
        ));
    }
    let mut hasher = pmesh_ota::codec::Sha256Hasher::default();
    let mut block = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = pmesh_ota::FirmwareSource::read_at(source, offset, &mut block)
            .map_err(|e| e.to_string())?;
        hasher.update(&block[..n]);
        offset += n as u64;
    }
    Ok(hasher.finish_hex())
}

/// Unix seconds now, for `TrustConfig::wall_clock` (a node then refuses expired signed
/// manifests). Call it right before the mesh starts: the runtime's clock starts at the node's
/// `Instant::ZERO` then, and the moments between do not matter for an expiry. `None` when the
/// system clock reads before 2024-01-01 (a board without RTC or NTP yet).
pub fn wall_clock() -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    (now >= 1_704_067_200).then_some(now)
}

/// What `ota push` offers: a plain image file, or a signed bundle (`pmesh ota sign`).
enum PushImage {
    Plain(FileSource),
    Bundle { bytes: Vec<u8>, image_bytes: u64 },
}

/// Reads the file: a bundle (it starts with the signed manifest's magic) is kept whole for
/// the node to verify against its own trusted keys; a plain image is opened as a source and
/// hashed in blocks. Returns it and the image's SHA-256.
fn read_image(path: &std::path::Path) -> Result<(PushImage, String), String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut magic = [0u8; 4];
    let is_bundle = {
        use std::io::Read as _;
        let mut f = std::fs::File::open(path).map_err(cannot)?;
        f.read(&mut magic).map_err(cannot)? == 4 && magic == pmesh_ota::signed::manifest::MAGIC
    };
    if !is_bundle {
        let mut source = FileSource::open(path).map_err(cannot)?;
        let sha = hash_image(&mut source)?;
        return Ok((PushImage::Plain(source), sha));
    }
    // A bundle is the image plus at most 1 % of digests and a manifest.
    let limit = crate::firmware::DEFAULT_CAPACITY + crate::firmware::DEFAULT_CAPACITY / 100 + 4096;
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > limit {
        return Err(format!(
            "{} is {len} bytes, more than a bundle of the largest image",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(cannot)?;
    let b = pmesh_ota::signed::Bundle::parse(&bytes)
        .map_err(|e| format!("{}: not a valid bundle: {e}", path.display()))?;
    let sha = pmesh_ota::codec::hex(&b.manifest.body.sha256);
    let image_bytes = b.manifest.body.size;
    Ok((PushImage::Bundle { bytes, image_bytes }, sha))
}

/// The offer of a push. A bundle is verified against the distributing node's trusted keys
/// before anything is announced (refusals name the reason: unknown_key, bad_signature,
/// expired, wrong_class, ...); its role and hardware must be the push's.
fn build_offer(
    image: PushImage,
    opts: &PushOptions,
    cfg: &pmesh_ota::OtaConfig,
) -> Result<Offer, Refusal> {
    let untrusted = |e: pmesh_ota::signed::TrustError| Refusal::Untrusted {
        code: e.code(),
        reason: e.to_string(),
    };
    let mut offer = match image {
        PushImage::Plain(source) => Offer::new(opts.role.clone(), opts.hardware.clone(), source)
            .version(opts.version.clone())
            .chunk_size(opts.chunk_size),
        PushImage::Bundle { bytes, .. } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let o = Offer::from_bundle(&bytes, &cfg.trust.keys, Some(now)).map_err(untrusted)?;
            if o.role != opts.role || o.hardware != opts.hardware {
                return Err(untrusted(pmesh_ota::signed::TrustError::WrongClass {
                    role: o.role.clone(),
                    hardware: o.hardware.clone(),
                }));
            }
            o
        }
    };
    // A signed pmesh rollout is compressed exactly when its bundle is (the signer fixed the
    // chunk layout); asking for compression of an uncompressed bundle is refused by the agent.
    let compressed = opts.compressed || (opts.mode == PushMode::Pmesh && offer.compressed);
    offer.protocol = pmesh_ota::Protocol::Classic;
    offer = offer
        .forced(opts.forced)
        .broadcast(opts.broadcast)
        .compressed(compressed)
        .apply(if opts.apply_on_verify {
            ApplyPolicy::OnVerify
        } else {
            // Targets keep serving their verified image to slower neighbours until everyone
            // has it, then install together.
            ApplyPolicy::WhenAllVerified {
                delay: Duration::from_secs_f64(opts.apply_delay_s),
                min_targets: opts.expect.len().max(1) as u32,
            }
        });
    if opts.mode == PushMode::Pmesh {
        offer = offer.pmesh();
    } else if opts.broadcast {
        let bytes_per_sec = opts.pace.unwrap_or(pmesh_ota::classic::DEFAULT_PUSH_RATE);
        offer = offer.push(pmesh_ota::classic::PushPace { bytes_per_sec });
    }
    Ok(offer)
}

/// The follower's interval between looks at the node (classic ledger, counters, mesh).
const TICK: Duration = Duration::from_millis(250);

/// Offers `opts.file` from the node behind `h` and follows the rollout, sending progress items
/// to `out` until it is done, times out, `cancel` completes, or `out` is closed. Unless
/// `opts.keep`, the offer is withdrawn at the end (pmesh: CANCEL, which makes unfinished
/// targets discard their partial image; classic: no more announces or answers).
///
/// The follower keeps a [`RolloutView`]: pmesh targets' progress comes from the node's events
/// ([`OtaEvent::NodeProgress`], subscribed to before the offer); classic requesters raise no
/// event, so their requests (and a push's passes) are read from the node every [`TICK`].
/// Changed nodes are sent once per tick; [`rollout_done`] decides when the rollout is done.
///
/// Returns the summary (also sent as the last item), or why the push could not start.
pub async fn run_push<P>(
    h: MeshHandle<P>,
    opts: PushOptions,
    out: mpsc::Sender<PushItem>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Summary, PushError>
where
    P: OtaHost + 'static,
{
    opts.check().map_err(PushError::Options)?;
    let file_name = opts.file.display().to_string();
    // Hash and open the file off the async threads (images can be large).
    let path = opts.file.clone();
    let (image, sha256) = tokio::task::spawn_blocking(move || read_image(&path))
        .await
        .map_err(|e| PushError::File(e.to_string()))?
        .map_err(PushError::File)?;
    let image_bytes = match &image {
        PushImage::Plain(source) => pmesh_ota::FirmwareSource::len(source),
        PushImage::Bundle { image_bytes, .. } => *image_bytes,
    };
    let opts = choose_auto(&h, opts).await?;
    // Subscribed before the offer: no report of this rollout is missed.
    let events = h.subscribe();
    let offered = offer(&h, image, &opts).await?;
    let id = offered.id;
    info!(mode = id.mode.name(), transfer = id.id, file = %file_name, image_bytes, chunks = offered.chunks, sha256 = %sha256, "OTA: offered");
    let _ = out
        .send(PushItem::Offered {
            transfer: id.id,
            mode: id.mode,
            distributor: h.node_id(),
            file: file_name,
            image_bytes,
            sha256,
            md5: offered.md5.clone(),
            chunks: offered.chunks,
            mesh_nodes: offered.mesh_nodes.clone(),
        })
        .await;
    let mut f = Follower::new(&opts, &offered);
    let outcome = f.follow(&h, &out, events, cancel).await;
    let still_offered = opts.keep && outcome != Outcome::Stopped;
    if !still_offered && outcome != Outcome::Replaced {
        withdraw(&h, offered.md5).await;
        info!(mode = id.mode.name(), transfer = id.id, outcome = ?outcome, "OTA: offer withdrawn");
    }
    let summary = f.summary(outcome, &opts.expect, still_offered);
    let _ = out.send(PushItem::Finished(summary.clone())).await;
    Ok(summary)
}

/// Classic `auto`: decides between the broadcast push and unicast ([`auto_broadcast`]).
async fn choose_auto<P>(h: &MeshHandle<P>, mut opts: PushOptions) -> Result<PushOptions, PushError>
where
    P: OtaHost + 'static,
{
    if opts.auto && opts.mode == PushMode::Classic {
        let nodes = h
            .call(|node, _| node.node_list(false).len())
            .await
            .map_err(PushError::Mesh)?;
        opts.broadcast = auto_broadcast(opts.expect.len(), nodes);
        info!(
            broadcast = opts.broadcast,
            mesh_nodes = nodes,
            named_targets = opts.expect.len(),
            "OTA: auto mode chose"
        );
    }
    Ok(opts)
}

/// What an offer became on the distributing node.
struct Offered {
    id: TransferId,
    chunks: u32,
    /// Classic: the MD5 announces carry.
    md5: Option<String>,
    /// Other nodes in the mesh at the offer.
    mesh_nodes: Vec<u32>,
}

/// Makes the offer on the node's thread.
async fn offer<P>(
    h: &MeshHandle<P>,
    image: PushImage,
    opts: &PushOptions,
) -> Result<Offered, PushError>
where
    P: OtaHost + 'static,
{
    let opts = opts.clone();
    h.call(move |node, now| {
        let offer = build_offer(image, &opts, node.plugin().node_ota().ota().config())?;
        let id = node.with_plugin(now, |p, ctx| p.node_ota_mut().ota_mut().offer(ctx, offer))?;
        let ota = node.plugin().node_ota().ota();
        let (chunks, md5) = match id.mode {
            Mode::Pmesh => (ota.pmesh().status().map_or(0, |s| s.total), None),
            _ => ota
                .classic_distributor()
                .into_iter()
                .flat_map(ClassicDistributor::offers)
                .find(|o| TransferId::classic(&o.md5, o.broadcasted) == id)
                .map_or((0, None), |o| (o.no_part, Some(o.md5.clone()))),
        };
        Ok(Offered {
            id,
            chunks,
            md5,
            mesh_nodes: node.node_list(false),
        })
    })
    .await
    .map_err(PushError::Mesh)?
    .map_err(PushError::Refused)
}

/// Withdraws the offer: pmesh (`md5` None) with a CANCEL; classic: no more announces or
/// answers, and the ledger of its requesters is dropped.
async fn withdraw<P>(h: &MeshHandle<P>, md5: Option<String>)
where
    P: OtaHost + 'static,
{
    let _ = h
        .call(move |node, now| {
            node.with_plugin(now, |p, ctx| {
                let o = p.node_ota_mut();
                match &md5 {
                    None => {
                        o.ota_mut().cancel_pmesh(ctx);
                    }
                    Some(m) => {
                        o.ota_mut().cancel_classic(m);
                        o.served.forget(m);
                    }
                }
            })
        })
        .await;
}

/// What the follower reads from the node on every tick.
struct Sample {
    /// The node's clock (for classic requesters' idle time).
    now: Instant,
    mesh_nodes: Vec<u32>,
    /// pmesh: this rollout is still the node's current one.
    current: bool,
    /// pmesh, after the subscription lagged: the distributor's table of reports.
    reports: Option<Vec<(u32, u32, Phase)>>,
    /// Classic, per requester: (node, requests, distinct chunks served, last request).
    served: Vec<(u32, u64, u32, Instant)>,
    /// Classic: distinct chunks served to anyone.
    served_union: u32,
    /// Classic broadcast: the push's passes and the nodes they covered.
    push: Option<pmesh_ota::classic::PushProgress>,
    stats: PushStats,
}

/// Reads a [`Sample`] on the node's thread; `resync` also reads the pmesh reports.
async fn sample<P>(
    h: &MeshHandle<P>,
    id: TransferId,
    chunks: u32,
    md5: &str,
    resync: bool,
) -> Result<Sample, MeshError>
where
    P: OtaHost + 'static,
{
    let key = md5.to_owned();
    h.call(move |node, now| {
        let o = node.plugin().node_ota();
        let ota = o.ota();
        let current = ota.pmesh().status().is_some_and(|s| s.id == id);
        let (d, p) = (ota.classic_stats(), ota.pmesh().stats());
        let mut union = ChunkBitmap::new(chunks);
        let mut served = Vec::new();
        for (n, s) in o.served().for_image(&key).into_iter().flatten() {
            served.push((*n, s.requests, s.parts.count(), s.last_at));
            union.union_with(&s.parts);
        }
        Sample {
            now,
            mesh_nodes: node.node_list(false),
            current,
            reports: (resync && current).then(|| ota.pmesh().reports()),
            served,
            served_union: union.count(),
            push: ota
                .classic_distributor()
                .and_then(|d| d.push_progress(&key)),
            stats: PushStats {
                elapsed_s: 0.0,
                mesh_nodes: 0,
                announces: d.announces,
                requests_answered: d.requests_answered,
                bytes_served: d.bytes_served,
                data_bytes_sent: p.data_bytes_sent,
                control_bytes_sent: p.control_bytes_sent,
            },
        }
    })
    .await
}

/// Follows one rollout: its view, the times the done rule needs, what the operator was shown.
struct Follower {
    view: RolloutView,
    md5: String,
    expect: Vec<u32>,
    settle: Duration,
    timeout: Duration,
    started: std::time::Instant,
    last_change: std::time::Instant,
    last_stats: Option<std::time::Instant>,
    mesh_now: Vec<u32>,
    /// The node's clock at the last sample.
    node_now: Instant,
    /// The event subscription lagged: re-read the reports at the next tick.
    resync: bool,
    /// Nodes changed since the last tick (shown once per tick, as the operator's view
    /// needs no more).
    dirty: std::collections::BTreeSet<u32>,
}

impl Follower {
    fn new(opts: &PushOptions, offered: &Offered) -> Self {
        let now = std::time::Instant::now();
        Follower {
            view: RolloutView::new(offered.id, offered.chunks),
            md5: offered.md5.clone().unwrap_or_default(),
            expect: opts.expect.clone(),
            settle: opts.settle(),
            timeout: Duration::from_secs_f64(opts.timeout_s),
            started: now,
            last_change: now,
            last_stats: None,
            mesh_now: Vec::new(),
            node_now: Instant::from_micros(0),
            resync: false,
            dirty: Default::default(),
        }
    }

    /// Runs until the rollout is done or stops; returns how it ended.
    async fn follow<P>(
        &mut self,
        h: &MeshHandle<P>,
        out: &mpsc::Sender<PushItem>,
        mut events: broadcast::Receiver<Arc<MeshEvent<OtaEvent>>>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Outcome
    where
        P: OtaHost + 'static,
    {
        tokio::pin!(cancel);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(&ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "OTA: follower lagged; re-reading the reports");
                        self.resync = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Outcome::Stopped,
                },
                _ = tick.tick() => {
                    if let Some(end) = self.on_tick(h, out).await {
                        return end;
                    }
                }
                _ = &mut cancel => return Outcome::Cancelled,
                _ = out.closed() => return Outcome::Cancelled,
            }
        }
    }

    /// A node event: a pmesh target's report changes the view.
    fn on_event(&mut self, ev: &MeshEvent<OtaEvent>) {
        if let MeshEvent::Node(Event::Plugin(ev)) = ev
            && let Some(node) = self.view.on_event(ev)
        {
            self.changed(node);
        }
    }

    /// A tick: samples the node, feeds the view, sends counters, applies the done rule.
    async fn on_tick<P>(
        &mut self,
        h: &MeshHandle<P>,
        out: &mpsc::Sender<PushItem>,
    ) -> Option<Outcome>
    where
        P: OtaHost + 'static,
    {
        let id = self.view.id();
        let resync = std::mem::take(&mut self.resync);
        let Ok(s) = sample(h, id, self.view.chunks(), &self.md5, resync).await else {
            return Some(Outcome::Stopped);
        };
        if id.mode == Mode::Pmesh && !s.current {
            return Some(Outcome::Replaced);
        }
        self.mesh_now = s.mesh_nodes;
        self.node_now = s.now;
        for (node, done, phase) in s.reports.into_iter().flatten() {
            if self.view.report(node, done, phase) {
                self.changed(node);
            }
        }
        for node in self.view.set_push(s.push) {
            self.changed(node);
        }
        for (node, requests, parts, last_at) in s.served {
            if self.view.served(node, requests, parts, last_at) {
                self.changed(node);
            }
        }
        self.view.set_served_union(s.served_union);
        for node in std::mem::take(&mut self.dirty) {
            if let Some(v) = self.node_view(node) {
                let _ = out.send(PushItem::Node(v)).await;
            }
        }
        self.send_stats(s.stats, out).await;
        self.verdict()
    }

    /// Records a change of `node`, shown at the next tick.
    fn changed(&mut self, node: u32) {
        self.last_change = std::time::Instant::now();
        self.dirty.insert(node);
    }

    /// Counters, about once a second.
    async fn send_stats(&mut self, mut stats: PushStats, out: &mpsc::Sender<PushItem>) {
        if self
            .last_stats
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_stats = Some(std::time::Instant::now());
        stats.elapsed_s = self.started.elapsed().as_secs_f64();
        stats.mesh_nodes = self.mesh_now.len();
        let _ = out.send(PushItem::Stats(stats)).await;
    }

    /// Done (by [`rollout_done`]), timed out, or on.
    fn verdict(&self) -> Option<Outcome> {
        let input = DoneInput {
            mesh: &self.mesh_now,
            expect: &self.expect,
            quiet_for: self.last_change.elapsed().min(self.started.elapsed()),
            settle: self.settle,
        };
        if rollout_done(&self.view, &input) {
            Some(Outcome::Done)
        } else {
            (self.started.elapsed() >= self.timeout).then_some(Outcome::Timeout)
        }
    }

    /// What the operator is shown of `node`.
    fn node_view(&self, node: u32) -> Option<NodeView> {
        let s = self.view.node(node)?;
        let idle =
            |t: Instant| self.node_now.as_micros().saturating_sub(t.as_micros()) as f64 / 1e6;
        Some(NodeView {
            node,
            done: s.done,
            total: s.total,
            phase: s.phase,
            requests: s.requests,
            idle_s: s.last_request.map(idle),
        })
    }

    /// The verdict of the push.
    fn summary(&self, outcome: Outcome, expect: &[u32], still_offered: bool) -> Summary {
        let unseen = |n: &&u32| self.view.node(**n).is_none();
        let silent: Vec<u32> = self.mesh_now.iter().filter(unseen).copied().collect();
        let missing: Vec<u32> = expect.iter().filter(unseen).copied().collect();
        let nodes: Vec<NodeView> = self
            .view
            .nodes()
            .filter_map(|(n, _)| self.node_view(n))
            .collect();
        let ok = outcome == Outcome::Done && !self.view.any_failed() && missing.is_empty();
        Summary {
            outcome,
            ok,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            nodes,
            silent,
            missing,
            still_offered,
            note: mode_note(self.view.id().mode).into(),
        }
    }
}

/// What the distributor can and cannot know in `mode`.
fn mode_note(mode: Mode) -> &'static str {
    match mode {
        Mode::Pmesh => {
            "pmesh nodes report their progress and install; nodes that never reported are not targets (other role or hardware, image already current), stock nodes, or out of reach"
        }
        Mode::ClassicUnicast => {
            "classic OTA: nodes do not report; 'served' means the node was sent every chunk, after which it checks the MD5 and installs silently (stock nodes reboot)"
        }
        Mode::ClassicBroadcast => {
            "classic broadcast OTA (push): the distributor floods every chunk in order to the whole mesh and nodes do not report; 'served' means the node was in the mesh for a whole pass (or was sent every chunk on request), after which it checks the MD5 and installs silently (stock nodes reboot)"
        }
    }
}

// --- control endpoint ----------------------------------------------------------------------

/// Adds `ota_push` (a stream of [`PushItem`]s), `ota_cancel` (optional `transfer`: only that
/// one; otherwise every offer this node makes) and `ota_status` to a control server.
///
/// `ota_push` takes [`PushOptions`] as its parameters; the file is read by the node's process.
/// Closing the connection before the end cancels the push (unless `keep`).
pub fn routes<P>(server: ControlServer<P>) -> ControlServer<P>
where
    P: OtaHost + 'static,
    P::Sink: 'static,
    P::Store: 'static,
{
    server
        .route("ota_push", push_route)
        .route("ota_cancel", cancel_route)
        .route("ota_status", status_route)
}

async fn push_route<P>(req: Request, h: MeshHandle<P>) -> Reply
where
    P: OtaHost + 'static,
{
    let opts: PushOptions = match serde_json::from_value(Value::Object(req.params)) {
        Ok(o) => o,
        Err(e) => return Reply::err(format!("bad ota_push parameters: {e}")),
    };
    let (tx, mut rx) = mpsc::channel::<PushItem>(256);
    let (items_tx, items) = mpsc::channel::<Value>(256);
    let (started_tx, started_rx) = oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        // Forward items as JSON; the first one tells the handler the offer was made. It owns
        // the receiver: when the client goes away, dropping it ends the push.
        let fwd = async move {
            let mut started = Some(started_tx);
            while let Some(item) = rx.recv().await {
                if let Some(s) = started.take() {
                    let _ = s.send(Ok(()));
                }
                let v = serde_json::to_value(&item).unwrap_or(Value::Null);
                if items_tx.send(v).await.is_err() {
                    break;
                }
            }
            started
        };
        // Cancelled when the client goes away (the item channel closes).
        let push = run_push(h, opts, tx, std::future::pending());
        let (res, started) = tokio::join!(push, fwd);
        if let (Err(e), Some(s)) = (res, started) {
            let _ = s.send(Err(e.to_string()));
        }
    });
    match started_rx.await {
        Ok(Ok(())) => Reply::Stream(items),
        Ok(Err(e)) => Reply::err(e),
        Err(_) => Reply::err("the push ended before it started"),
    }
}

async fn cancel_route<P>(req: Request, h: MeshHandle<P>) -> Reply
where
    P: OtaHost + 'static,
{
    let transfer = match req.params.get("transfer") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(t) => Some(t),
            None => return Reply::err("'transfer' must be a transfer id (u32)"),
        },
    };
    let wanted = move |id: u32| transfer.is_none_or(|t| t == id);
    let res = h
        .call(move |node, now| {
            node.with_plugin(now, |p, ctx| {
                let o = p.node_ota_mut();
                let md5s: Vec<String> = o
                    .ota()
                    .classic_distributor()
                    .into_iter()
                    .flat_map(ClassicDistributor::offers)
                    .filter(|i| wanted(TransferId::classic(&i.md5, i.broadcasted).id))
                    .map(|i| i.md5.clone())
                    .collect();
                for m in &md5s {
                    o.ota_mut().cancel_classic(m);
                    o.served.forget(m);
                }
                let pmesh = o
                    .ota()
                    .pmesh()
                    .status()
                    .is_some_and(|s| s.distributor && wanted(s.id.id))
                    && o.ota_mut().cancel_pmesh(ctx);
                json!({"classic_cancelled": md5s, "pmesh_cancelled": pmesh})
            })
        })
        .await;
    match res {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(e.to_string()),
    }
}

/// This node's OTA state as JSON (for `ota_status` and logs).
pub fn status_json<S: FirmwareSink, T: OtaStore>(o: &NodeOta<S, T>) -> Value {
    let ota = o.ota();
    let cfg = ota.config();
    let current = ota.store().current_image().map(|i| {
        json!({"role": i.role, "hardware": i.hardware, "version": i.version, "sha256": i.sha256, "md5": i.md5})
    });
    let pmesh = ota.pmesh().status().map(|s| {
        json!({
            "transfer": s.id.id, "distributor": s.distributor, "target": s.target,
            "have": s.have, "total": s.total, "phase": RolloutPhase::of_report(s.phase).name(), "subscribers": s.subscribers,
        })
    });
    let classic_rx = ota
        .classic_receiver()
        .and_then(|r| r.active())
        .map(|(id, have, total)| json!({"transfer": id.id, "mode": id.mode.name(), "have": have, "total": total}));
    let offers: Vec<Value> = ota
        .classic_distributor()
        .into_iter()
        .flat_map(ClassicDistributor::offers)
        .map(|i| {
            json!({"md5": i.md5, "role": i.role, "hardware": i.hardware, "parts": i.no_part,
                "broadcast": i.broadcasted, "compressed": i.compressed,
                "requesters": o.served().for_image(&i.md5).map_or(0, BTreeMap::len)})
        })
        .collect();
    let d = ota.classic_stats();
    let p = ota.pmesh().stats();
    json!({
        "receiving": cfg.pmesh_receiver || cfg.classic_receiver != pmesh_ota::ClassicReceiverKind::Off,
        "role": cfg.role,
        "hardware": cfg.hardware,
        "current": current,
        "pmesh": pmesh,
        "classic_receive": classic_rx,
        "classic_offers": offers,
        "classic_stats": {"announces": d.announces, "requests_answered": d.requests_answered,
            "requests_ignored": d.requests_ignored, "bytes_served": d.bytes_served,
            "frames_rejected": ota.classic_frames_rejected()},
        "pmesh_stats": {"data_frames_sent": p.data_frames_sent, "data_bytes_sent": p.data_bytes_sent,
            "control_bytes_sent": p.control_bytes_sent, "chunks_written": p.chunks_written,
            "duplicates": p.duplicates, "corrupt": p.corrupt, "rewants": p.rewants, "malformed": p.malformed,
            "untrusted": p.untrusted, "bad_digests": p.bad_digests, "unverifiable": p.unverifiable},
        "classic_receive_stats": ota.classic_receiver().map(|r| {
            let c = r.stats();
            json!({"requests": c.requests, "chunks_written": c.chunks_written,
                "duplicates": c.duplicates, "dropped": c.dropped, "untrusted": c.untrusted})
        }),
    })
}

async fn status_route<P>(_req: Request, h: MeshHandle<P>) -> Reply
where
    P: OtaHost + 'static,
{
    match h
        .call(|node, _| status_json(node.plugin().node_ota()))
        .await
    {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_images_are_hashed_in_blocks_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fw.bin");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&image, &bytes).unwrap();
        let mut source = FileSource::open(&image).unwrap();
        assert_eq!(
            hash_image(&mut source).unwrap(),
            pmesh_ota::codec::sha256_hex(&bytes)
        );
        // A sparse file one byte over the limit: refused without reading it.
        let big = dir.path().join("big.bin");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(crate::firmware::DEFAULT_CAPACITY + 1).unwrap();
        let err = hash_image(&mut FileSource::open(&big).unwrap()).unwrap_err();
        assert!(err.contains("more than the 67108864 bytes"), "{err}");
        let empty = dir.path().join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        let err = hash_image(&mut FileSource::open(&empty).unwrap()).unwrap_err();
        assert!(err.ends_with("is empty"), "{err}");
    }

    #[test]
    fn a_fifo_or_a_device_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening a FIFO for reading would block until a writer appears.
        let err = FileSource::open(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = FileSource::open("/dev/zero").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn options_parse_with_defaults_and_reject_typos() {
        let o: PushOptions =
            serde_json::from_value(json!({"file": "/x", "role": "r", "hardware": "h"})).unwrap();
        assert_eq!(o.mode, PushMode::Classic);
        assert_eq!(o.timeout_s, 1800.0);
        assert_eq!(o.settle(), Duration::from_secs(10));
        assert!(
            serde_json::from_value::<PushOptions>(
                json!({"file": "/x", "role": "r", "hardware": "h", "brodcast": true})
            )
            .is_err()
        );
        let mut o = PushOptions::new("/x", "r", "h");
        o.mode = PushMode::Pmesh;
        o.broadcast = true;
        assert!(o.check().is_err());
        o.broadcast = false;
        o.timeout_s = 0.0;
        assert!(o.check().is_err());
    }

    #[test]
    fn auto_unicasts_only_to_a_single_named_target() {
        assert!(auto_broadcast(0, 1), "unnamed: any node may be a target");
        assert!(auto_broadcast(0, 40));
        assert!(auto_broadcast(3, 40), "several named targets");
        assert!(!auto_broadcast(1, 40), "one named target among others");
        assert!(auto_broadcast(1, 1), "the whole mesh is that target");
    }

    #[test]
    fn items_round_trip_as_json() {
        let mut view = RolloutView::new(
            TransferId {
                mode: Mode::Pmesh,
                id: 1,
            },
            10,
        );
        view.report(7, 3, Phase::Failed(7));
        let s = view.node(7).unwrap();
        let item = PushItem::Node(NodeView {
            node: 7,
            done: s.done,
            total: s.total,
            phase: s.phase,
            requests: None,
            idle_s: None,
        });
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(v["kind"], "node");
        assert_eq!(v["state"], "failed");
        assert_eq!(v["reason"], "hash_mismatch");
        let back: PushItem = serde_json::from_value(v).unwrap();
        assert!(
            matches!(back, PushItem::Node(n) if n.node == 7 && n.finished()
            && n.phase == RolloutPhase::Failed(RefusalCode::HashMismatch))
        );
        let bad = json!({"kind": "node", "node": 1, "done": 0, "total": 1, "state": "sleeping"});
        assert!(serde_json::from_value::<PushItem>(bad).is_err());
        let offered = json!({"kind": "offered", "transfer": 1, "mode": "broadcast",
            "distributor": 2, "file": "f", "image_bytes": 3, "sha256": "s", "md5": null,
            "chunks": 1, "mesh_nodes": []});
        let back: PushItem = serde_json::from_value(offered.clone()).unwrap();
        assert!(matches!(
            back,
            PushItem::Offered {
                mode: Mode::ClassicBroadcast,
                ..
            }
        ));
        assert_eq!(serde_json::to_value(&back).unwrap(), offered);
    }

    #[test]
    fn ledger_counts_distinct_parts_and_is_bounded() {
        let mut l = ServedLedger::default();
        let t = Instant::from_micros(5);
        l.record("m", 3, 1, 0, t);
        l.record("m", 3, 1, 0, t);
        l.record("m", 3, 1, 2, t);
        let s = &l.for_image("m").unwrap()[&1];
        assert_eq!((s.requests, s.parts.count(), s.last_part), (3, 2, 2));
        for n in 0..MAX_REQUESTERS as u32 + 10 {
            l.record("x", 3, 100 + n, 0, t);
        }
        assert_eq!(l.tracked, MAX_REQUESTERS);
        assert_eq!(l.untracked_requests, 11);
        l.forget("m");
        assert_eq!(l.tracked, MAX_REQUESTERS - 1);
    }
}
