//! The OTA application: every node runs the real [`pmesh_ota::Ota`] plugin over an in-memory
//! flash and store that survive its crashes; the distributor offers the image when the
//! scenario says; every plugin event is recorded per node.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use pmesh_node::{ConnectionChange, Context, Event, Handled, Incoming, Instant, Plugin};
use pmesh_ota::{
    ApplyPolicy, MemorySink, MemoryStore, Mode, Offer, Ota, OtaConfig, OtaEvent, Phase, TransferId,
};
use serde::{Deserialize, Serialize};

use super::image::Image;
use super::scenario::{ApplyMode, OtaMode, OtaScenario, Receivers};
use crate::app::{Boot, NodeHandle, SimApp};
use crate::clock::{SimTime, secs};
use crate::rng::SimRng;
use crate::scenario::Scenario;
use pmesh_ota::pmesh::Spans;

/// Role and hardware of the targets.
pub const TARGET_ROLE: &str = "sensor";
/// Hardware of every simulated node.
pub const HARDWARE: &str = "ESP32";
/// Role of nodes that only relay.
pub const RELAY_ROLE: &str = "relay";

/// The scenario action that makes the distributor offer: `{ "ota": "offer" }` (also
/// `"cancel"` for a pmesh rollout).
pub fn offer_action() -> serde_json::Value {
    serde_json::json!({ "ota": "offer" })
}

/// Counters summed from a node's OTA plugin (every boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// pmesh CHUNK frames sent by agents.
    pub pmesh_data_frames: u64,
    /// pmesh CHUNK bytes sent by agents.
    pub pmesh_data_bytes: u64,
    /// Of those, to a re-subscribed node (resume, new parent, re-ask).
    pub repair_bytes: u64,
    /// Of the repair bytes, to a direct neighbour.
    pub repair_bytes_to_neighbour: u64,
    /// pmesh control frames sent by agents.
    pub pmesh_control_frames: u64,
    /// pmesh control bytes sent by agents.
    pub pmesh_control_bytes: u64,
    /// Chunks written by pmesh targets.
    pub pmesh_chunks_written: u64,
    /// Chunks pmesh targets already held.
    pub pmesh_duplicates: u64,
    /// Chunks rejected (CRC, DEFLATE, length).
    pub pmesh_corrupt: u64,
    /// Chunk frames rebuilt from flash (not in the frame cache).
    pub pmesh_frames_rebuilt: u64,
    /// WANTs sent after silence.
    pub pmesh_rewants: u64,
    /// Classic announces sent.
    pub classic_announces: u64,
    /// Classic DataRequests answered by the distributor.
    pub classic_requests_answered: u64,
    /// DataRequests sent by pmesh classic receivers.
    pub classic_requests: u64,
    /// Chunks written by pmesh classic receivers.
    pub classic_chunks_written: u64,
    /// Chunks pmesh classic receivers already held.
    pub classic_duplicates: u64,
    /// Chunks pmesh classic receivers dropped.
    pub classic_dropped: u64,
    /// DataRequests sent by stock receivers.
    pub stock_requests: u64,
    /// Chunks stock receivers appended.
    pub stock_chunks_written: u64,
    /// Data stock receivers ignored as out of sequence.
    pub stock_out_of_sequence: u64,
    /// Broken broadcast fallbacks started by stock receivers.
    pub stock_fallbacks: u64,
    /// Stock request tasks that ran out of tries.
    pub stock_gave_up: u64,
}

impl Counters {
    /// What one plugin instance counted so far.
    fn of(ota: &Ota<MemorySink, MemoryStore>) -> Counters {
        let p = ota.pmesh().stats();
        let d = ota.classic_stats();
        let mut c = Counters {
            pmesh_data_frames: p.data_frames_sent,
            pmesh_data_bytes: p.data_bytes_sent,
            repair_bytes: p.repair_bytes_sent,
            repair_bytes_to_neighbour: p.repair_bytes_to_neighbour,
            pmesh_control_frames: p.control_frames_sent,
            pmesh_control_bytes: p.control_bytes_sent,
            pmesh_chunks_written: p.chunks_written,
            pmesh_duplicates: p.duplicates,
            pmesh_corrupt: p.corrupt,
            pmesh_frames_rebuilt: p.frames_rebuilt,
            pmesh_rewants: p.rewants,
            classic_announces: d.announces,
            classic_requests_answered: d.requests_answered,
            ..Counters::default()
        };
        if let Some(r) = ota.classic_receiver() {
            let s = r.stats();
            c.classic_requests = s.requests;
            c.classic_chunks_written = s.chunks_written;
            c.classic_duplicates = s.duplicates;
            c.classic_dropped = s.dropped;
        }
        if let Some(r) = ota.reference_receiver() {
            let s = r.stats();
            c.stock_requests = s.requests;
            c.stock_chunks_written = s.chunks_written;
            c.stock_out_of_sequence = s.out_of_sequence;
            c.stock_fallbacks = s.fallbacks;
            c.stock_gave_up = s.gave_up;
        }
        c
    }

    /// Field-wise sum.
    pub fn add(&mut self, o: &Counters) {
        let Counters {
            pmesh_data_frames,
            pmesh_data_bytes,
            repair_bytes,
            repair_bytes_to_neighbour,
            pmesh_control_frames,
            pmesh_control_bytes,
            pmesh_chunks_written,
            pmesh_duplicates,
            pmesh_corrupt,
            pmesh_frames_rebuilt,
            pmesh_rewants,
            classic_announces,
            classic_requests_answered,
            classic_requests,
            classic_chunks_written,
            classic_duplicates,
            classic_dropped,
            stock_requests,
            stock_chunks_written,
            stock_out_of_sequence,
            stock_fallbacks,
            stock_gave_up,
        } = o;
        self.pmesh_data_frames += pmesh_data_frames;
        self.pmesh_data_bytes += pmesh_data_bytes;
        self.repair_bytes += repair_bytes;
        self.repair_bytes_to_neighbour += repair_bytes_to_neighbour;
        self.pmesh_control_frames += pmesh_control_frames;
        self.pmesh_control_bytes += pmesh_control_bytes;
        self.pmesh_chunks_written += pmesh_chunks_written;
        self.pmesh_duplicates += pmesh_duplicates;
        self.pmesh_corrupt += pmesh_corrupt;
        self.pmesh_frames_rebuilt += pmesh_frames_rebuilt;
        self.pmesh_rewants += pmesh_rewants;
        self.classic_announces += classic_announces;
        self.classic_requests_answered += classic_requests_answered;
        self.classic_requests += classic_requests;
        self.classic_chunks_written += classic_chunks_written;
        self.classic_duplicates += classic_duplicates;
        self.classic_dropped += classic_dropped;
        self.stock_requests += stock_requests;
        self.stock_chunks_written += stock_chunks_written;
        self.stock_out_of_sequence += stock_out_of_sequence;
        self.stock_fallbacks += stock_fallbacks;
        self.stock_gave_up += stock_gave_up;
    }
}

/// What the simulator keeps per node across boots; the plugin updates it after every callback
/// (the engine drops a crashed node's plugin without asking, so nothing is read at drop time).
#[derive(Debug, Default)]
struct Meter {
    /// Counters of earlier boots.
    retired: Counters,
    /// Counters of the running boot.
    live: Counters,
    /// Largest receiver tracking state seen (bytes).
    peak_tracking: usize,
    /// Largest chunk-frame memory seen (bytes).
    peak_frames: usize,
}

impl Meter {
    fn total(&self) -> Counters {
        let mut c = self.retired;
        c.add(&self.live);
        c
    }
}

/// The plugin every simulated node runs: the OTA plugin, measured after every callback.
pub struct OtaNode {
    ota: Ota<MemorySink, MemoryStore>,
    meter: Rc<RefCell<Meter>>,
}

impl std::fmt::Debug for OtaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaNode").field("ota", &self.ota).finish()
    }
}

impl OtaNode {
    /// The OTA plugin.
    pub fn ota(&self) -> &Ota<MemorySink, MemoryStore> {
        &self.ota
    }

    /// Runs `f` on the OTA plugin (an offer, say) and measures afterwards.
    pub fn with_ota<R>(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        f: impl FnOnce(&mut Ota<MemorySink, MemoryStore>, &mut Context<'_, OtaEvent>) -> R,
    ) -> R {
        let r = f(&mut self.ota, ctx);
        self.measure();
        r
    }

    fn measure(&self) {
        let mut m = self.meter.borrow_mut();
        m.live = Counters::of(&self.ota);
        m.peak_tracking = m.peak_tracking.max(self.ota.tracking_bytes());
        m.peak_frames = m.peak_frames.max(self.ota.pmesh().frame_bytes());
    }
}

impl Plugin for OtaNode {
    type Event = OtaEvent;

    fn on_frame(&mut self, ctx: &mut Context<'_, OtaEvent>, frame: &Incoming<'_>) -> Handled {
        let h = self.ota.on_frame(ctx, frame);
        self.measure();
        h
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, OtaEvent>, change: ConnectionChange) {
        self.ota.on_connection(ctx, change);
        self.measure();
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        self.ota.on_timeout(ctx);
        self.measure();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ota.poll_timeout()
    }
}

/// A node's part in the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Offers the image.
    Distributor,
    /// Should install the image.
    Target,
    /// Neither (another role, or a stock node in pmesh mode): relays.
    Relay,
}

/// One node's record.
#[derive(Debug)]
struct NodeRec {
    role: NodeRole,
    stock: bool,
    sink: MemorySink,
    store: MemoryStore,
    meter: Rc<RefCell<Meter>>,
    crashes: u32,
    accepted_at: Option<SimTime>,
    /// `resumed_from` of every Accepted event after the first.
    resumed: Vec<u32>,
    done: u32,
    total: u32,
    verified_at: Option<SimTime>,
    installed_at: Option<SimTime>,
    refused: Option<&'static str>,
    failures: u32,
    last_failure: Option<&'static str>,
    reboot_requested: bool,
    hops: Option<u32>,
}

/// The offer, once made.
#[derive(Clone, Debug)]
struct OfferRec {
    at: SimTime,
    id: Option<TransferId>,
    error: Option<String>,
    depth: u32,
    hops_sum: u64,
    store_forward_s: Option<f64>,
}

/// A stuck target in the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StuckNode {
    /// Node id.
    pub node: u32,
    /// Stock behaviour.
    pub stock: bool,
    /// Chunks held (as last reported by the node).
    pub done: u32,
    /// Chunks in the image (0: never accepted the offer).
    pub total: u32,
    /// Why, if the node said (a refusal or failure code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `ota` section of a simulation report (what the application saw; the link-level
/// figures are added from the engine's counters by [`super::figures`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OtaSection {
    /// `unicast`, `broadcast` or `pmesh`.
    pub mode: String,
    /// `pmesh`, `stock` or `mixed`.
    pub receivers: String,
    /// Compression on.
    pub compressed: bool,
    /// Where the image came from.
    pub image: String,
    /// Image bytes.
    pub image_bytes: u64,
    /// Bytes served per image (classic compressed: the gzip; otherwise the image).
    pub served_bytes: u64,
    /// Bytes per chunk (classic: served bytes; pmesh: image bytes; pmesh compressed, whose
    /// chunks span a variable number of image bytes: the mean).
    pub chunk_bytes: u32,
    /// Chunks per image.
    pub chunks: u32,
    /// Distributor node.
    pub distributor: u32,
    /// When the offer was made, s (null: not yet).
    pub offered_at_s: Option<f64>,
    /// The distributor refused its own offer (why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_error: Option<String>,
    /// Hops from the distributor to the deepest target at the offer.
    pub depth: u32,
    /// Σ hops of the targets at the offer (unicast pulls cost chunks × this).
    pub target_hops_sum: u64,
    /// pmesh: an ideal in-order store-and-forward of this rollout's exact CHUNK frames along
    /// the deepest path (no window limit, no processing), s.
    pub store_forward_s: Option<f64>,
    /// Nodes that should install the image.
    pub targets: u32,
    /// Of those, stock-behaviour nodes.
    pub stock_targets: u32,
    /// Targets that installed it.
    pub completed: u32,
    /// Targets that did not (stuck, failed or never reached).
    pub stuck: u32,
    /// Up to 20 of them.
    pub stuck_nodes: Vec<StuckNode>,
    /// From the offer to the last target's install, s (null unless every target installed).
    pub completion_s: Option<f64>,
    /// From the offer to the first, median and last install so far, s.
    pub install_s: Option<[f64; 3]>,
    /// Transfer failures reported by targets (hash mismatch, I/O, ...), all boots.
    pub failures: u32,
    /// Crashes of nodes (all causes).
    pub crashes: u32,
    /// Targets that crashed.
    pub crashed_targets: u32,
    /// Targets that opened a fresh image more than once (a restart from chunk 0).
    pub restarts_from_zero: u32,
    /// Accepts after a reboot that continued from a chunk > 0.
    pub resumes: u32,
    /// Stock receivers that asked to reboot into the new image (not simulated: they keep running).
    pub reboot_requests: u32,
    /// Largest receiver tracking state on any non-distributor node, bytes.
    pub peak_tracking_bytes: u64,
    /// Largest chunk-frame memory (cache, relay queue) on any node, bytes.
    pub peak_frame_bytes: u64,
    /// Node progress reports the distributor received.
    pub distributor_reports: u64,
    /// Why the run stopped early (`"stalled"`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Link bandwidth per direction used for the lower bound (the fastest link), bytes/s.
    pub link_bytes_per_s: f64,
    /// Link latency used for the lower bound (the shortest), s.
    pub link_latency_s: f64,
    /// Counters summed over every node and boot.
    pub counters: Counters,
}

/// The OTA [`SimApp`].
#[derive(Debug)]
pub struct OtaApp {
    ota: OtaScenario,
    image: Image,
    served_bytes: u64,
    chunk_bytes: u32,
    chunks: u32,
    /// pmesh compressed: the spans the distributor will cut (the same planner).
    spans: Option<Spans>,
    nodes: Vec<NodeRec>,
    offer: Option<OfferRec>,
    last_progress: SimTime,
    targets: u32,
    installed: u32,
    reboot_requests: u32,
    distributor_reports: u64,
    /// The distributor's latest view per node (pmesh NodeProgress): chunks, total, phase.
    distributor_view: BTreeMap<u32, (u32, u32, Phase)>,
    stopped: Option<&'static str>,
    unknown_actions: u32,
    link_bytes_per_s: f64,
    link_latency_s: f64,
    /// Per-node role overrides for pmesh targets (a campaign's per-wave roles).
    roles: BTreeMap<u32, String>,
}

impl OtaApp {
    /// The application for `ota` on the mesh of `sc` (validated), distributing `image`.
    pub fn new(sc: &Scenario, ota: OtaScenario, image: Image) -> Result<OtaApp, String> {
        ota.validate(sc)?;
        let n = sc.nodes as usize;
        let others: Vec<u32> = (1..=sc.nodes).filter(|&i| i != ota.distributor).collect();
        let stock: Vec<u32> = match ota.receivers {
            Receivers::Pmesh => Vec::new(),
            Receivers::Stock => others.clone(),
            Receivers::Mixed if !ota.stock_nodes.is_empty() => ota.stock_nodes.clone(),
            Receivers::Mixed => {
                let mut pool = others.clone();
                let mut rng = SimRng::stream(sc.seed, 0x07A0);
                shuffle(&mut pool, &mut rng);
                let k = (ota.stock_share * pool.len() as f64).round() as usize;
                pool.truncate(k);
                pool
            }
        };
        let capacity = ota
            .sink_capacity
            .map_or((4u64 << 20).max(2 * image.len()), |c| c.0);
        let mut targets = 0;
        let nodes = (1..=n as u32)
            .map(|id| {
                let is_stock = stock.contains(&id);
                let role = if id == ota.distributor {
                    NodeRole::Distributor
                } else if ota.relay_nodes.contains(&id) || (ota.mode == OtaMode::Pmesh && is_stock)
                {
                    NodeRole::Relay
                } else {
                    targets += 1;
                    NodeRole::Target
                };
                NodeRec {
                    role,
                    stock: is_stock,
                    sink: MemorySink::new(capacity),
                    store: MemoryStore::new(),
                    meter: Rc::default(),
                    crashes: 0,
                    accepted_at: None,
                    resumed: Vec::new(),
                    done: 0,
                    total: 0,
                    verified_at: None,
                    installed_at: None,
                    refused: None,
                    failures: 0,
                    last_failure: None,
                    reboot_requested: false,
                    hops: None,
                }
            })
            .collect();
        let (served_bytes, chunk_bytes) = match ota.mode.protocol() {
            Mode::Pmesh => (
                image.len(),
                ota.chunk_bytes.unwrap_or(pmesh_ota::offer::PMESH_CHUNK),
            ),
            Mode::ClassicUnicast | Mode::ClassicBroadcast => (
                if ota.compressed {
                    pmesh_ota::codec::gzip(image.source.bytes()).len() as u64
                } else {
                    image.len()
                },
                ota.chunk_bytes.unwrap_or(pmesh_ota::offer::CLASSIC_CHUNK),
            ),
        };
        let spans = match ota.mode {
            OtaMode::Pmesh if ota.compressed => {
                let target = ota
                    .chunk_bytes
                    .unwrap_or(pmesh_ota::offer::PMESH_COMPRESSED_CHUNK);
                let mut src = image.source.clone();
                Some(
                    Spans::plan(&mut src, image.len(), target)
                        .map_err(|e| format!("ota: cannot cut the image into chunks: {e:?}"))?,
                )
            }
            _ => None,
        };
        let (chunks, chunk_bytes) = match &spans {
            Some(s) => (s.count(), image.len().div_ceil(u64::from(s.count())) as u32),
            None => (
                pmesh_ota::bounds::chunk_count(served_bytes, u64::from(chunk_bytes)) as u32,
                chunk_bytes,
            ),
        };
        Ok(OtaApp {
            ota,
            image,
            served_bytes,
            chunk_bytes,
            chunks,
            spans,
            nodes,
            offer: None,
            last_progress: 0,
            targets,
            installed: 0,
            reboot_requests: 0,
            distributor_reports: 0,
            distributor_view: BTreeMap::new(),
            stopped: None,
            unknown_actions: 0,
            // A lower bound must not be beaten by any link: the fastest bandwidth, the
            // shortest latency the scenario can draw.
            link_bytes_per_s: sc.link.bandwidth_kbit.max * 1000.0 / 8.0,
            link_latency_s: sc.link.latency_ms.min / 1000.0,
            roles: BTreeMap::new(),
        })
    }

    /// The OTA scenario.
    pub fn scenario(&self) -> &OtaScenario {
        &self.ota
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Chunks per image in this mode, and bytes per chunk.
    pub fn chunking(&self) -> (u32, u32) {
        (self.chunks, self.chunk_bytes)
    }

    /// Gives pmesh target `id` the OTA role `role` instead of [`TARGET_ROLE`] from its next
    /// boot on (a campaign offers each wave to a role of its own: a pmesh offer names a role,
    /// not a node list).
    pub fn set_ota_role(&mut self, id: u32, role: &str) {
        self.roles.insert(id, role.into());
    }

    /// A node's role.
    pub fn role(&self, id: u32) -> Option<NodeRole> {
        self.rec(id).map(|r| r.role)
    }

    /// Ids of the targets.
    pub fn targets(&self) -> Vec<u32> {
        self.ids(|r| r.role == NodeRole::Target)
    }

    /// Ids of the targets that installed the image.
    pub fn installed(&self) -> Vec<u32> {
        self.ids(|r| r.role == NodeRole::Target && r.installed_at.is_some())
    }

    /// A node's flash (shared handle).
    pub fn sink(&self, id: u32) -> Option<&MemorySink> {
        self.rec(id).map(|r| &r.sink)
    }

    /// A node's store (shared handle).
    pub fn store(&self, id: u32) -> Option<&MemoryStore> {
        self.rec(id).map(|r| &r.store)
    }

    /// When a node installed the image (simulated time), if it did.
    pub fn installed_at(&self, id: u32) -> Option<SimTime> {
        self.rec(id).and_then(|r| r.installed_at)
    }

    /// A node's progress as it last reported it: chunks held, chunks in the image (0 before
    /// it accepted the offer).
    pub fn node_progress(&self, id: u32) -> Option<(u32, u32)> {
        self.rec(id).map(|r| (r.done, r.total))
    }

    /// `resumed_from` of each Accepted a node reported after its first.
    pub fn resumes(&self, id: u32) -> &[u32] {
        self.rec(id).map_or(&[], |r| &r.resumed)
    }

    /// The transfer the distributor started (None before the offer or if it refused it).
    pub fn transfer_id(&self) -> Option<TransferId> {
        self.offer.as_ref().and_then(|o| o.id)
    }

    /// Simulated time of the offer.
    pub fn offered_at(&self) -> Option<SimTime> {
        self.offer.as_ref().map(|o| o.at)
    }

    /// Simulated time of the last progress any target made (or the offer).
    pub fn last_progress(&self) -> SimTime {
        self.last_progress
    }

    /// Every target installed the image.
    pub fn complete(&self) -> bool {
        self.offer.is_some() && self.installed == self.targets
    }

    /// Share of the image the targets hold, 0..=1 (what they last reported).
    pub fn fraction_done(&self) -> f64 {
        let (mut done, mut total) = (0u64, 0u64);
        for r in self.nodes.iter().filter(|r| r.role == NodeRole::Target) {
            let t = if r.total > 0 {
                r.total
            } else {
                self.chunks.max(1)
            };
            total += u64::from(t);
            done += u64::from(if r.installed_at.is_some() {
                t
            } else {
                r.done.min(t)
            });
        }
        if total == 0 {
            0.0
        } else {
            done as f64 / total as f64
        }
    }

    /// The distributor's view (pmesh mode): per node, chunks held, chunks, phase.
    pub fn distributor_view(&self) -> &BTreeMap<u32, (u32, u32, Phase)> {
        &self.distributor_view
    }

    /// Stops the run at the next event (used when nothing progresses any more).
    pub fn stop(&mut self, why: &'static str) {
        self.stopped = Some(why);
    }

    /// The `ota` section as it stands at `now`.
    pub fn section(&self) -> OtaSection {
        let offered = self.offer.as_ref();
        let mut installs: Vec<SimTime> = self
            .nodes
            .iter()
            .filter(|r| r.role == NodeRole::Target)
            .filter_map(|r| r.installed_at)
            .collect();
        installs.sort_unstable();
        let since = |t: SimTime| secs(t.saturating_sub(offered.map_or(0, |o| o.at)));
        let install_s = (!installs.is_empty()).then(|| {
            [
                since(installs[0]),
                since(installs[installs.len() / 2]),
                since(*installs.last().expect("not empty")),
            ]
        });
        let mut counters = Counters::default();
        let mut peak_tracking = 0;
        let mut peak_frames = 0;
        for r in &self.nodes {
            let m = r.meter.borrow();
            counters.add(&m.total());
            if r.role != NodeRole::Distributor {
                peak_tracking = peak_tracking.max(m.peak_tracking);
            }
            peak_frames = peak_frames.max(m.peak_frames);
        }
        let stuck: Vec<StuckNode> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.role == NodeRole::Target && r.installed_at.is_none())
            .map(|(i, r)| StuckNode {
                node: i as u32 + 1,
                stock: r.stock,
                done: r.done,
                total: r.total,
                reason: r.last_failure.or(r.refused).map(String::from),
            })
            .collect();
        let targets = || self.nodes.iter().filter(|r| r.role == NodeRole::Target);
        OtaSection {
            mode: if self.ota.signed {
                "pmesh-signed".into()
            } else {
                self.ota.mode.name().into()
            },
            receivers: self.ota.receivers.name().into(),
            compressed: self.ota.compressed,
            image: self.image.description.clone(),
            image_bytes: self.image.len(),
            served_bytes: self.served_bytes,
            chunk_bytes: self.chunk_bytes,
            chunks: self.chunks,
            distributor: self.ota.distributor,
            offered_at_s: offered.map(|o| secs(o.at)),
            offer_error: offered.and_then(|o| o.error.clone()),
            depth: offered.map_or(0, |o| o.depth),
            target_hops_sum: offered.map_or(0, |o| o.hops_sum),
            store_forward_s: offered.and_then(|o| o.store_forward_s),
            targets: self.targets,
            stock_targets: targets().filter(|r| r.stock).count() as u32,
            completed: self.installed,
            stuck: stuck.len() as u32,
            stuck_nodes: stuck.into_iter().take(20).collect(),
            completion_s: self.complete().then(|| install_s.map_or(0.0, |s| s[2])),
            install_s,
            failures: targets().map(|r| r.failures).sum(),
            crashes: self.nodes.iter().map(|r| r.crashes).sum(),
            crashed_targets: targets().filter(|r| r.crashes > 0).count() as u32,
            restarts_from_zero: targets().filter(|r| r.sink.stats().begins > 1).count() as u32,
            resumes: targets()
                .map(|r| r.resumed.iter().filter(|&&f| f > 0).count() as u32)
                .sum(),
            reboot_requests: self.reboot_requests,
            peak_tracking_bytes: peak_tracking as u64,
            peak_frame_bytes: peak_frames as u64,
            distributor_reports: self.distributor_reports,
            stopped: self.stopped.map(String::from),
            link_bytes_per_s: self.link_bytes_per_s,
            link_latency_s: self.link_latency_s,
            counters,
        }
    }

    fn rec(&self, id: u32) -> Option<&NodeRec> {
        self.nodes.get((id as usize).wrapping_sub(1))
    }

    fn ids(&self, f: impl Fn(&NodeRec) -> bool) -> Vec<u32> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, r)| f(r))
            .map(|(i, _)| i as u32 + 1)
            .collect()
    }

    fn config(&self, id: u32) -> OtaConfig {
        let r = &self.nodes[id as usize - 1];
        let mut cfg = match (r.role, r.stock) {
            (NodeRole::Distributor, _) => {
                let mut c = OtaConfig::new("gateway", "linux");
                c.classic_receiver = pmesh_ota::ClassicReceiverKind::Off;
                c
            }
            (NodeRole::Target, false) => {
                let role = self.roles.get(&id).map_or(TARGET_ROLE, String::as_str);
                OtaConfig::new(role, HARDWARE)
            }
            (NodeRole::Target, true) => OtaConfig::stock(TARGET_ROLE, HARDWARE),
            (NodeRole::Relay, false) => OtaConfig::new(RELAY_ROLE, HARDWARE),
            (NodeRole::Relay, true) => {
                // A stock node in a pmesh rollout is a target in role, but cannot take it.
                let role = if self.ota.relay_nodes.contains(&id) {
                    RELAY_ROLE
                } else {
                    TARGET_ROLE
                };
                OtaConfig::stock(role, HARDWARE)
            }
        };
        if let Some(r) = self.ota.rate_limit {
            cfg.pmesh.rate_limit = Some(r.0.min(u64::from(u32::MAX)) as u32);
        }
        if self.ota.signed {
            cfg.trust = pmesh_ota::pmesh::TrustConfig {
                keys: vec![sim_key().public()],
                allow_unsigned: false,
                wall_clock: None,
            };
        }
        cfg
    }

    /// The ideal store-and-forward time of a push pass's exact Data frames over `depth` links.
    fn push_store_forward_s(&self, from: u32, depth: u32) -> f64 {
        let served = if self.ota.compressed {
            pmesh_ota::codec::gzip(self.image.source.bytes())
        } else {
            self.image.source.bytes().to_vec()
        };
        let md5 = pmesh_ota::codec::md5_hex(&served);
        let info = pmesh_proto::ota::FirmwareInfo {
            md5,
            hardware: HARDWARE.into(),
            role: TARGET_ROLE.into(),
            forced: self.ota.forced,
            no_part: self.chunks,
            broadcasted: true,
            compressed: self.ota.compressed,
        };
        let frames: Vec<u64> = served
            .chunks(self.chunk_bytes as usize)
            .enumerate()
            .map(|(i, c)| {
                let d = pmesh_proto::ota::Data {
                    from,
                    dest: 0,
                    part_no: i as u32,
                    info: info.clone(),
                    data: pmesh_proto::base64::encode(c),
                };
                d.to_json_flooded().len() as u64 + 1
            })
            .collect();
        pmesh_ota::bounds::store_and_forward_s(
            &frames,
            depth,
            self.link_bytes_per_s,
            self.link_latency_s,
        )
    }

    /// The ideal store-and-forward time of the rollout's exact frames over `depth` links.
    fn store_forward_s(&self, from: u32, rollout: u32, depth: u32) -> f64 {
        let image = self.image.source.bytes();
        let pieces: Vec<&[u8]> = match &self.spans {
            Some(spans) => (0..spans.count())
                .map(|i| {
                    let (off, len) = spans.range(i);
                    &image[off as usize..off as usize + len]
                })
                .collect(),
            None => image.chunks(self.chunk_bytes as usize).collect(),
        };
        let frames: Vec<u64> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, data)| {
                let json = pmesh_ota::pmesh::wire::neighbour_chunk_json(
                    from,
                    rollout,
                    i as u32,
                    data,
                    self.ota.compressed,
                    self.ota.signed,
                );
                json.len() as u64 + 1
            })
            .collect();
        pmesh_ota::bounds::store_and_forward_s(
            &frames,
            depth,
            self.link_bytes_per_s,
            self.link_latency_s,
        )
    }

    /// A signed pmesh offer of the image (a bundle made and verified here, as `ota push`
    /// does with a file from `pmesh ota sign`).
    fn signed_offer(&self) -> Result<Offer, String> {
        if self.ota.mode != OtaMode::Pmesh {
            return Err("signed rollouts are pmesh rollouts".into());
        }
        let compressed = self.ota.compressed;
        let spec = pmesh_ota::signed::bundle::BundleSpec {
            role: TARGET_ROLE,
            hardware: HARDWARE,
            version: "sim",
            sequence: 1,
            // The same chunking as the unsigned offer of the image (`make_offer`).
            chunk_size: self.ota.chunk_bytes.unwrap_or(if compressed {
                pmesh_ota::offer::PMESH_COMPRESSED_CHUNK
            } else {
                pmesh_ota::offer::PMESH_CHUNK
            }),
            compressed,
            expires: None,
        };
        let key = sim_key();
        let bundle = pmesh_ota::signed::Bundle::build(&key, self.image.source.bytes(), &spec)
            .map_err(|e| e.to_string())?;
        Offer::from_bundle(&bundle, &[key.public()], None).map_err(|e| e.to_string())
    }

    fn make_offer(&mut self, h: &mut NodeHandle<'_, OtaNode>) {
        let o = &self.ota;
        let signed = o.signed.then(|| self.signed_offer());
        let o = &self.ota;
        let mut offer = Offer::new(TARGET_ROLE, HARDWARE, self.image.source.clone())
            .forced(o.forced)
            .compressed(o.compressed)
            .broadcast(o.mode == OtaMode::Broadcast)
            .version("sim");
        if o.mode == OtaMode::Push {
            let bytes_per_sec = o
                .push_rate
                .map_or(pmesh_ota::classic::DEFAULT_PUSH_RATE, |r| r.0);
            offer = offer.push(pmesh_ota::classic::PushPace { bytes_per_sec });
        }
        if let Some(c) = o.chunk_bytes {
            offer = offer.chunk_size(c);
        }
        match signed {
            Some(Ok(s)) => offer = s.forced(o.forced),
            Some(Err(e)) => {
                self.offer = Some(OfferRec {
                    at: h.sim_now,
                    id: None,
                    error: Some(e),
                    depth: 0,
                    hops_sum: 0,
                    store_forward_s: None,
                });
                return;
            }
            None => {}
        }
        if o.mode == OtaMode::Pmesh {
            offer = offer.pmesh().apply(match o.apply {
                ApplyMode::OnVerify => ApplyPolicy::OnVerify,
                // Wait for the whole fleet, as an operator who knows it would.
                ApplyMode::AllVerified => ApplyPolicy::WhenAllVerified {
                    delay: Duration::from_secs(5),
                    min_targets: self.targets.max(1),
                },
            });
        }
        // Hops from the distributor now, from its view of the tree.
        let tree = h.node.tree();
        let mut stack = vec![(&tree, 0u32)];
        while let Some((t, d)) = stack.pop() {
            if let Some(r) = self.nodes.get_mut((t.node_id as usize).wrapping_sub(1)) {
                r.hops = Some(d);
            }
            stack.extend(t.subs.iter().map(|s| (s, d + 1)));
        }
        let (mut depth, mut hops_sum) = (0, 0);
        for r in self.nodes.iter().filter(|r| r.role == NodeRole::Target) {
            if let Some(d) = r.hops {
                depth = depth.max(d);
                hops_sum += u64::from(d);
            }
        }
        let result = h.node.with_plugin(h.now, |p, ctx| {
            p.with_ota(ctx, |ota, ctx| ota.offer(ctx, offer))
        });
        let (id, error) = match result {
            Ok(id) => (Some(id), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let store_forward_s = match self.ota.mode {
            OtaMode::Pmesh => id.map(|id| self.store_forward_s(h.id, id.id, depth)),
            OtaMode::Push => Some(self.push_store_forward_s(h.id, depth)),
            _ => None,
        };
        self.offer = Some(OfferRec {
            at: h.sim_now,
            id,
            error,
            depth,
            hops_sum,
            store_forward_s,
        });
        self.last_progress = h.sim_now;
    }
}

impl SimApp for OtaApp {
    type Plugin = OtaNode;

    fn create_plugin(&mut self, node: u32, _boot: Boot, _seed: u64) -> OtaNode {
        let cfg = self.config(node);
        let r = &self.nodes[node as usize - 1];
        OtaNode {
            ota: Ota::new(cfg, r.sink.clone(), r.store.clone()),
            meter: r.meter.clone(),
        }
    }

    fn on_event(&mut self, h: &mut NodeHandle<'_, OtaNode>, event: Event<OtaEvent>) {
        let Event::Plugin(event) = event else { return };
        let now = h.sim_now;
        let Some(r) = self.nodes.get_mut(h.id as usize - 1) else {
            return;
        };
        let target = r.role == NodeRole::Target;
        match event {
            OtaEvent::Accepted {
                chunks,
                resumed_from,
                ..
            } => {
                if r.accepted_at.is_some() {
                    r.resumed.push(resumed_from);
                } else {
                    r.accepted_at = Some(now);
                }
                r.total = chunks;
                r.done = resumed_from;
            }
            OtaEvent::Progress { done, total, .. } => {
                r.done = done;
                r.total = total;
                if target {
                    self.last_progress = now;
                }
            }
            OtaEvent::Verified { .. } => {
                r.verified_at.get_or_insert(now);
            }
            OtaEvent::Installed { .. } => {
                r.done = r.total;
                if r.installed_at.is_none() {
                    r.installed_at = Some(now);
                    if target {
                        self.installed += 1;
                        self.last_progress = now;
                    }
                }
            }
            OtaEvent::Refused { reason, .. } => r.refused = Some(reason.code()),
            OtaEvent::Failed { reason, .. } => {
                r.failures += 1;
                r.last_failure = Some(reason.code());
            }
            OtaEvent::RebootRequested { .. } => {
                if !r.reboot_requested {
                    r.reboot_requested = true;
                    self.reboot_requests += 1;
                }
            }
            OtaEvent::NodeProgress {
                node,
                done,
                total,
                phase,
                ..
            } => {
                self.distributor_reports += 1;
                self.distributor_view.insert(node, (done, total, phase));
            }
            OtaEvent::RolloutVerified { .. }
            | OtaEvent::AnnouncesDone { .. }
            | OtaEvent::PassDone { .. } => {}
        }
    }

    fn on_action(&mut self, h: &mut NodeHandle<'_, OtaNode>, data: &serde_json::Value) {
        match data.get("ota").and_then(|v| v.as_str()) {
            Some("offer") => self.make_offer(h),
            Some("cancel") => {
                h.node.with_plugin(h.now, |p, ctx| {
                    p.with_ota(ctx, |ota, ctx| ota.cancel_pmesh(ctx))
                });
            }
            _ => self.unknown_actions += 1,
        }
    }

    fn on_crash(&mut self, node: u32, _sim_now: SimTime) {
        if let Some(r) = self.nodes.get_mut(node as usize - 1) {
            r.crashes += 1;
            let mut m = r.meter.borrow_mut();
            let live = std::mem::take(&mut m.live);
            m.retired.add(&live);
        }
    }

    fn finished(&self) -> bool {
        self.stopped.is_some() || (self.complete() && self.targets > 0)
    }

    fn progress(&self) -> Option<String> {
        self.offer.as_ref()?;
        Some(format!(
            "OTA {} {:.0} %, {}/{} installed",
            self.ota.mode.name(),
            100.0 * self.fraction_done(),
            self.installed,
            self.targets
        ))
    }

    fn report(&self, _sim_now: SimTime) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "ota": self.section() }))
    }
}

/// Fisher–Yates with the simulator's seeded generator.
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut SimRng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// The simulator's firmware signing key (fixed: runs are reproducible).
fn sim_key() -> pmesh_ota::signed::SigningKey {
    pmesh_ota::signed::SigningKey::from_seed([0x51; 32])
}
