//! pmesh's own OTA protocol, one agent per node: distributor, target, or relay for others.
//!
//! How a rollout runs (full description in `docs/ota.md`):
//!
//! 1. The distributor floods a MANIFEST. Every pmesh node checks it before it accepts any
//!    chunk: sizes consistent, compression known, the image fits, role and hardware match,
//!    not already current (unless forced). Targets open the sink (or resume a recorded
//!    transfer of the same image); other nodes become relays.
//! 2. A node that needs chunks — a target, or a relay whose subscribers need some — sends
//!    WANT to its upstream: the neighbour on its route to the distributor when that neighbour
//!    speaks pmesh OTA (it said HELLO), otherwise the distributor itself by SINGLE routing
//!    (through stock nodes). WANT carries the bitmap of chunks not to send.
//! 3. Every holder pushes to each subscriber the lowest chunk that the subscriber needs and
//!    the holder has, as soon as it has it, keeping up to `window` chunks unacknowledged per
//!    link; subscribers ACK with a count every `ack_every` chunks. Targets store and forward
//!    (from a small frame cache, or re-read from the sink); relays cut through and hold at
//!    most a window of frames, acknowledging upstream only once every subscriber that
//!    needs a frame has it, so back-pressure reaches the source.
//! 4. A subscriber that hears nothing for `rewant_after` while it still misses chunks sends
//!    WANT again with its bitmap: the holder re-sends exactly what is missing. After a
//!    reboot, a lost parent or a late join, the node subscribes to whichever neighbour is now
//!    upstream, with its persisted bitmap: repair comes from the nearest holder, never from
//!    chunk 0.
//! 5. Progress travels upstream inside ACKs (node, chunks, phase) at every 1 % step and every
//!    phase change. A target that holds every chunk verifies the SHA-256 of what it wrote,
//!    reports `verified`, and applies on verify or at the mesh time an APPLY sets.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::Bytes;
use pmesh_node::{ConnId, Context, Incoming, Instant};
use pmesh_proto::{Envelope, Routing, encode_frame};

use crate::bitmap::ChunkBitmap;
use crate::classic::receiver::read_back_hashes;
use crate::codec::{self, Sha256Hasher};
use crate::event::{OtaEvent, Phase, Refusal, TransferId};
use crate::io::{FirmwareSink, FirmwareSource, InstalledImage, OtaStore};
use crate::offer::{ApplyPolicy, Offer, PMESH_CHUNK, PMESH_COMPRESSED_CHUNK};
use crate::pmesh::spans::{PlanError, Spans};
use crate::pmesh::trust::{self, ChunkCheck, Own, SignedRollout, TrustConfig};
use crate::pmesh::wire::{self, ChunkMsg, Compression, Manifest, Report, Via, Want};

/// Knobs of the pmesh protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmeshTuning {
    /// Chunks in flight (sent, not acknowledged) per link.
    pub window: u32,
    /// A subscriber acknowledges every this many chunks.
    pub ack_every: u32,
    /// Silence after which a subscriber that still misses chunks asks again.
    pub rewant_after: Duration,
    /// The re-ask interval doubles up to this.
    pub rewant_max: Duration,
    /// The distributor re-floods the manifest this often.
    pub manifest_interval: Duration,
    /// Progress reports wait at most this long for an ACK to ride on.
    pub report_flush: Duration,
    /// Cap on OTA data per link, bytes per second (`None`: no cap).
    pub rate_limit: Option<u32>,
    /// Recent chunk frames kept for forwarding to slower subscribers.
    pub cache_frames: usize,
    /// How long a new neighbour on the way to the distributor gets to say HELLO before this
    /// node subscribes past it to the distributor (SINGLE routing through a stock node).
    pub hello_grace: Duration,
}

impl Default for PmeshTuning {
    fn default() -> Self {
        PmeshTuning {
            window: 8,
            ack_every: 4,
            rewant_after: Duration::from_secs(3),
            rewant_max: Duration::from_secs(30),
            manifest_interval: Duration::from_secs(60),
            report_flush: Duration::from_millis(500),
            rate_limit: None,
            cache_frames: 16,
            hello_grace: Duration::from_secs(2),
        }
    }
}

/// Counters of a pmesh agent (the simulator sums them into the bench figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmeshStats {
    /// CHUNK frames sent.
    pub data_frames_sent: u64,
    /// CHUNK bytes sent (frame bytes, NUL included).
    pub data_bytes_sent: u64,
    /// Of those, sent to a re-subscribed node (resume, new parent, re-ask): repair.
    pub repair_bytes_sent: u64,
    /// Of the repair bytes, served from this node's own copy (frame cache, flash, running
    /// image or source) to a direct neighbour; a relay forwarding repair counts in
    /// `repair_bytes_sent` only.
    pub repair_bytes_to_neighbour: u64,
    /// Control frames sent (HELLO, MANIFEST, WANT, ACK, APPLY, CANCEL).
    pub control_frames_sent: u64,
    /// Control bytes sent (NUL included).
    pub control_bytes_sent: u64,
    /// New chunks written to the sink.
    pub chunks_written: u64,
    /// Chunks received that were already held.
    pub duplicates: u64,
    /// Chunks rejected: CRC mismatch, bad DEFLATE, wrong length, undecodable.
    pub corrupt: u64,
    /// Frames rebuilt from the sink or source (not in the cache).
    pub frames_rebuilt: u64,
    /// WANT frames sent after silence (re-asks).
    pub rewants: u64,
    /// Malformed pmesh frames ignored (or, for ACKs, carrying report entries that were skipped).
    pub malformed: u64,
    /// Manifests and digest pages refused by the trust checks (unsigned where signatures
    /// are required, unknown key, bad signature, rollback, page not matching the root):
    /// neither relayed nor used.
    pub untrusted: u64,
    /// Chunks whose digest did not match the signed one: dropped, not forwarded; their
    /// sender is demoted as a source.
    pub bad_digests: u64,
    /// Chunks of a signed rollout that arrived before their digest page: dropped.
    pub unverifiable: u64,
}

/// A subscriber or an upstream: a neighbour, or a node reached by SINGLE routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Conn(ConnId),
    Remote(u32),
}

/// What this node is in the rollout.
enum Role {
    Distributor(Box<DistState>),
    Target,
    Relay,
}

struct DistState {
    source: Box<dyn FirmwareSource + Send>,
    /// The chunk compressor, chosen when the offer is made (None: uncompressed rollout). Held
    /// here rather than called by name in `build_chunk`, so a node that never offers (a
    /// receiver-only firmware) does not link DEFLATE's compressor.
    compress: Option<wire::Compressor>,
    policy: ApplyPolicy,
    reports: BTreeMap<u32, (u32, Phase)>,
    next_manifest: Instant,
    verified_emitted: bool,
}

struct Child {
    peer: Peer,
    need: ChunkBitmap,
    sent: u32,
    acked: u32,
    recent: VecDeque<u32>,
    repair: bool,
    tokens: i64,
    refilled: Instant,
    wake: Option<Instant>,
}

struct Upstream {
    peer: Peer,
    recv: u32,
    acked_sent: u32,
    rewant_at: Option<Instant>,
    backoff: Duration,
}

struct Rollout {
    m: Manifest,
    role: Role,
    have: ChunkBitmap,
    phase: Phase,
    upstream: Option<Upstream>,
    /// This node subscribed before in this rollout (so later subscriptions are repair).
    had_state: bool,
    children: Vec<Child>,
    cache: VecDeque<(u32, Bytes)>,
    held: VecDeque<(u32, Bytes)>,
    /// Progress reports waiting to go upstream (one per node while over budget).
    reports: Vec<Queued>,
    report_due: Option<Instant>,
    /// CHUNK bytes received from upstream, and report bytes sent upstream: progress
    /// reports may cost at most [`REPORT_BUDGET_PERMILLE`] of the data a link carries.
    data_in: u64,
    report_out: u64,
    /// The report timer already waited once over budget: send on the next expiry.
    stale_reports: bool,
    /// Apply is due but waits (until this deadline at most) for the subscribers to have
    /// everything from this node.
    apply_waiting: Option<Instant>,
    /// This node already ran the image when the rollout came: it only serves it.
    holder_only: bool,
    last_pct: u32,
    apply_local: Option<Instant>,
    hashes: Option<(String, String)>,
    /// Signed rollouts: the verified manifest and the digest pages held.
    signed: Option<SignedRollout>,
}

impl Rollout {
    fn id(&self) -> TransferId {
        TransferId {
            mode: crate::event::Mode::Pmesh,
            id: self.m.id,
        }
    }

    /// Chunks this node still wants from upstream (for itself or for its subscribers).
    fn needs_upstream(&self) -> bool {
        match self.role {
            Role::Distributor(_) => false,
            Role::Target => !self.have.is_complete(),
            Role::Relay => self.children.iter().any(|c| c.need.count() > 0),
        }
    }

    /// The WANT bitmap: what not to send us.
    fn want_bitmap(&self) -> ChunkBitmap {
        match self.role {
            Role::Relay => {
                let mut needed = ChunkBitmap::new(self.m.count);
                for c in &self.children {
                    needed.union_with(&c.need);
                }
                for (i, _) in &self.held {
                    needed.unset(*i);
                }
                needed.invert();
                needed
            }
            _ => self.have.clone(),
        }
    }

    /// Queued reports may go upstream now: a phase change is among them, the queue is full,
    /// or they fit the budget (so on shallow trees every 1 % step of every node travels on).
    fn reports_due(&self) -> bool {
        !self.reports.is_empty()
            && (self.reports.len() >= REPORT_BATCH
                || self
                    .reports
                    .iter()
                    .any(|q| q.phase() != Phase::Distribute.wire())
                || self.within_budget())
    }

    /// Sending the queued reports keeps report bytes within the budget.
    fn within_budget(&self) -> bool {
        let queued: u64 = self.reports.iter().map(|q| report_len(&q.report())).sum();
        (self.report_out + queued) * 1000 <= self.data_in * REPORT_BUDGET_PERMILLE
    }

    /// Queues reports. A phase change supersedes the node's queued progress; over budget (or
    /// beyond REPORT_BATCH entries, when they cannot go upstream now), only each node's latest
    /// report is kept.
    fn queue(&mut self, new: impl IntoIterator<Item = Report>) {
        let progress = Phase::Distribute.wire();
        for rep in new.into_iter().map(Queued::new) {
            if rep.phase() != progress {
                self.reports
                    .retain(|q| q.node() != rep.node() || q.phase() != progress);
            }
            if self.reports.len() == self.reports.capacity() {
                // Grow by doubling, but not past REPORT_BATCH + 1 entries (what the queue
                // holds before it is sent): plain doubling would reserve up to twice that.
                let len = self.reports.len();
                let cap = (2 * len).clamp(4, REPORT_BATCH + 1).max(len + 1);
                self.reports.reserve_exact(cap - len);
            }
            self.reports.push(rep);
        }
        if self.reports.len() > REPORT_BATCH || !self.within_budget() {
            coalesce(&mut self.reports);
        }
    }

    /// Takes the reports to send now, counting their bytes: all of them when `force`d, the
    /// queue is full or they fit the budget; otherwise only the phase changes.
    fn take_reports(&mut self, force: bool) -> Vec<Report> {
        let all = force || self.reports.len() >= REPORT_BATCH || self.within_budget();
        let out: Vec<Report> = if all {
            core::mem::take(&mut self.reports)
                .into_iter()
                .map(Queued::report)
                .collect()
        } else {
            let (phases, progress): (Vec<Queued>, Vec<Queued>) = core::mem::take(&mut self.reports)
                .into_iter()
                .partition(|q| q.phase() != Phase::Distribute.wire());
            self.reports = progress;
            phases.into_iter().map(Queued::report).collect()
        };
        self.report_out += out.iter().map(report_len).sum::<u64>();
        if self.reports.is_empty() {
            self.report_due = None;
            self.stale_reports = false;
        }
        out
    }

    /// Chunks received from upstream that may be acknowledged: all of them for a target
    /// (stored), and for a relay those it no longer holds (forwarded or dropped), so its
    /// upstream never has more than a window in flight toward it beyond what it holds.
    /// (Derived from the queue rather than counted, so it stays right when a target turns
    /// relay after applying, or when the upstream changes.)
    fn ackable(&self) -> u32 {
        let recv = self.upstream.as_ref().map_or(0, |u| u.recv);
        match self.role {
            Role::Relay => recv.saturating_sub(self.held.len() as u32),
            _ => recv,
        }
    }
}

/// The pmesh-protocol side of a node.
pub struct PmeshAgent {
    role: String,
    hardware: String,
    tuning: PmeshTuning,
    receive: bool,
    pmesh_conns: Vec<(ConnId, u32)>,
    /// Neighbours that have not said HELLO yet, and since when.
    fresh_conns: Vec<(ConnId, Instant)>,
    /// Re-evaluate the upstream then (a fresh neighbour's HELLO grace ends).
    reeval_at: Option<Instant>,
    r: Option<Rollout>,
    current_sha: Option<String>,
    refused: Vec<(u32, &'static str)>,
    stats: PmeshStats,
    trust: TrustConfig,
    /// The last signed manifest whose signature checked out (re-floods skip the check).
    verified_sm: Vec<u8>,
    /// Highest signed sequence confirmed for this node's class (anti-rollback).
    confirmed: Option<u64>,
    /// Neighbours that sent a chunk failing its digest: never chosen as upstream again.
    #[cfg(feature = "signature")]
    demoted: Vec<ConnId>,
}

impl core::fmt::Debug for PmeshAgent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PmeshAgent")
            .field("role", &self.role)
            .field(
                "rollout",
                &self.r.as_ref().map(|r| (r.m.id, r.have.count(), r.phase)),
            )
            .field(
                "upstream",
                &self
                    .r
                    .as_ref()
                    .and_then(|r| r.upstream.as_ref())
                    .map(|u| (u.peer, u.recv, u.acked_sent)),
            )
            .field(
                "children",
                &self.r.as_ref().map(|r| {
                    r.children
                        .iter()
                        .map(|c| (c.peer, c.need.count(), c.sent, c.acked))
                        .collect::<Vec<_>>()
                }),
            )
            .field("held", &self.r.as_ref().map(|r| r.held.len()))
            .field("stats", &self.stats)
            .finish()
    }
}

/// A snapshot of a node's part in the current rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutStatus {
    /// The rollout.
    pub id: TransferId,
    /// This node distributes it.
    pub distributor: bool,
    /// This node installs it (false: relay only).
    pub target: bool,
    /// Chunks held.
    pub have: u32,
    /// Chunks in the image.
    pub total: u32,
    /// Phase (targets).
    pub phase: Phase,
    /// Subscribers served.
    pub subscribers: usize,
}

type Ctx<'a, 'b> = Context<'a, OtaEvent>;

/// Most subscribers one node serves (neighbours plus nodes behind stock nodes).
const MAX_SUBSCRIBERS: usize = 1024;
/// Longest an apply waits for this node's subscribers to get what they need from it.
const APPLY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Queued progress reports that make a node send them at once, budget or not (bounds RAM).
const REPORT_BATCH: usize = 128;
/// Progress reports may cost at most this share (per mille) of the CHUNK bytes a link
/// carries downstream; beyond it each node's progress is coalesced to its latest value.
/// (Every step of every node costs depth × steps × entry bytes: fine on shallow trees, far
/// too much on long chains.) Phase changes always travel at once.
const REPORT_BUDGET_PERMILLE: u64 = 15;

/// Bytes of one report entry on the wire: `[node,done,phase],`.
fn report_len(rep: &Report) -> u64 {
    fn digits(mut v: u32) -> u64 {
        let mut n = 1;
        while v >= 10 {
            v /= 10;
            n += 1;
        }
        n
    }
    4 + digits(rep.0) + digits(rep.1) + digits(rep.2)
}

/// A queued progress report in 8 bytes instead of 12 (the queue is the largest part of a busy
/// relay's tracking state): chunks held in the low 24 bits (a manifest has at most
/// [`wire::MAX_CHUNKS`] = 2²⁰; `parse_ack` drops larger values), the phase number above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queued {
    node: u32,
    done_phase: u32,
}

impl Queued {
    fn new((node, done, phase): Report) -> Queued {
        Queued {
            node,
            done_phase: done.min(0xFF_FFFF) | (phase.min(0xFF) << 24),
        }
    }

    fn node(self) -> u32 {
        self.node
    }

    fn phase(self) -> u32 {
        self.done_phase >> 24
    }

    fn report(self) -> Report {
        (self.node, self.done_phase & 0xFF_FFFF, self.phase())
    }
}

/// Keeps each node's latest report (reports about one node travel one path, in order), in
/// the order of their latest arrival.
fn coalesce(queue: &mut Vec<Queued>) {
    let mut out: Vec<Queued> = Vec::with_capacity(queue.len());
    for rep in queue.drain(..).rev() {
        if !out.iter().any(|q| q.node() == rep.node()) {
            out.push(rep);
        }
    }
    out.reverse();
    *queue = out;
}

impl PmeshAgent {
    /// An agent for `role` on `hardware`; `receive` = false makes it relay only.
    pub fn new(
        role: impl Into<String>,
        hardware: impl Into<String>,
        receive: bool,
        tuning: PmeshTuning,
    ) -> Self {
        PmeshAgent {
            role: role.into(),
            hardware: hardware.into(),
            tuning,
            receive,
            pmesh_conns: Vec::new(),
            fresh_conns: Vec::new(),
            reeval_at: None,
            r: None,
            current_sha: None,
            refused: Vec::new(),
            stats: PmeshStats::default(),
            trust: TrustConfig::default(),
            verified_sm: Vec::new(),
            confirmed: None,
            #[cfg(feature = "signature")]
            demoted: Vec::new(),
        }
    }

    /// Sets which firmware this node trusts.
    pub fn with_trust(mut self, trust: TrustConfig) -> Self {
        self.trust = trust;
        self
    }

    /// Checks a manifest against the trust configuration (see `trust::check_manifest`).
    fn check_trust(
        &mut self,
        m: &Manifest,
        now: Instant,
    ) -> Result<Option<SignedRollout>, Refusal> {
        let own = Own {
            role: &self.role,
            hardware: &self.hardware,
            confirmed: self.confirmed,
            now_unix: self.trust.now_unix(now),
        };
        let out = trust::check_manifest(&self.trust, m, own, &mut self.verified_sm);
        if out.is_err() {
            self.stats.untrusted += 1;
        }
        out
    }

    /// Counters.
    pub fn stats(&self) -> PmeshStats {
        self.stats
    }

    /// The current rollout's MANIFEST frame as this node would flood it (`routing:2`).
    pub fn manifest_json(&self) -> Option<Vec<u8>> {
        self.r.as_ref().map(|r| r.m.to_json(2))
    }

    /// This node's part in the current rollout.
    pub fn status(&self) -> Option<RolloutStatus> {
        self.r.as_ref().map(|r| RolloutStatus {
            id: r.id(),
            distributor: matches!(r.role, Role::Distributor(_)),
            target: matches!(r.role, Role::Target) && !r.holder_only,
            have: r.have.count(),
            total: r.m.count,
            phase: r.phase,
            subscribers: r.children.len(),
        })
    }

    /// The distributor's latest report per node: (chunks held, phase).
    pub fn reports(&self) -> Vec<(u32, u32, Phase)> {
        match self.r.as_ref().map(|r| &r.role) {
            Some(Role::Distributor(d)) => {
                d.reports.iter().map(|(n, (c, p))| (*n, *c, *p)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Bytes of receiver tracking state: the rollout's fixed fields, its bitmaps (own and one
    /// per subscriber), the in-flight lists and queued reports. Excludes chunk frames held for
    /// forwarding ([`PmeshAgent::frame_bytes`]) and the chunk being written.
    pub fn tracking_bytes(&self) -> usize {
        self.r.as_ref().map_or(0, |r| {
            core::mem::size_of::<Rollout>()
                + r.have.heap_bytes()
                + r.m.layout_heap_bytes()
                + r.m.sha256.capacity()
                + r.m.version.capacity()
                + r.m.role.capacity()
                + r.m.hardware.capacity()
                + r.reports.capacity() * core::mem::size_of::<Queued>()
                + r.signed.as_ref().map_or(0, SignedRollout::heap_bytes)
                + r.children
                    .iter()
                    .map(|c| {
                        core::mem::size_of::<Child>()
                            + c.need.heap_bytes()
                            + c.recent.capacity() * 4
                    })
                    .sum::<usize>()
        })
    }

    /// Bytes of chunk frames held in RAM (cache and relay queue).
    pub fn frame_bytes(&self) -> usize {
        self.r.as_ref().map_or(0, |r| {
            r.cache
                .iter()
                .chain(r.held.iter())
                .map(|(_, b)| b.len())
                .sum()
        })
    }

    // --- boot and connections ----------------------------------------------------------

    /// Boot: the current image, and a transfer to resume if one is recorded.
    pub(crate) fn boot(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        #[cfg(feature = "signature")]
        {
            self.confirmed = store.confirmed_sequence(&self.role, &self.hardware);
        }
        if let Some(cur) = store.current_image()
            && cur.role == self.role
            && cur.hardware == self.hardware
            && !cur.sha256.is_empty()
        {
            self.current_sha = Some(cur.sha256);
        }
        if !self.receive {
            return;
        }
        let Some(rec) = store.load_transfer() else {
            return;
        };
        let Ok(env) = Envelope::parse(&rec.offer, pmesh_proto::DEFAULT_MAX_DEPTH) else {
            return;
        };
        if env.ty != wire::MANIFEST {
            return;
        }
        let Ok(m) = Manifest::from_envelope(&env) else {
            let _ = store.clear_transfer();
            return;
        };
        let signed = match self.check_trust(&m, ctx.now()) {
            Ok(s) => s,
            Err(_) => {
                let _ = store.clear_transfer();
                return;
            }
        };
        if rec.have.len() != m.count || sink.resume(Some(m.size)).is_err() {
            let _ = store.clear_transfer();
            return;
        }
        let done = rec.have.count();
        let mut r = new_rollout(m, Role::Target, rec.have);
        r.signed = signed;
        r.had_state = true;
        let id = r.id();
        let total = r.m.count;
        r.last_pct = done * 100 / total;
        self.r = Some(r);
        ctx.emit(OtaEvent::Accepted {
            id,
            chunks: total,
            resumed_from: done,
        });
        if done == total {
            self.verify(ctx, sink, store);
        }
    }

    /// A neighbour completed its first NODE_SYNC: say HELLO.
    pub(crate) fn on_new_connection(&mut self, ctx: &mut Ctx<'_, '_>, conn: ConnId) {
        if self.fresh_conns.len() >= 64 {
            self.fresh_conns.remove(0);
        }
        self.fresh_conns.push((conn, ctx.now()));
        let json = wire::hello(ctx.node_id());
        self.send_control(ctx, Peer::Conn(conn), json);
    }

    /// A neighbour is gone.
    pub(crate) fn on_dropped(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        conn: ConnId,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        self.pmesh_conns.retain(|(c, _)| *c != conn);
        self.fresh_conns.retain(|(c, _)| *c != conn);
        if let Some(r) = &mut self.r {
            r.children.retain(|c| c.peer != Peer::Conn(conn));
            if r.upstream
                .as_ref()
                .is_some_and(|u| u.peer == Peer::Conn(conn))
            {
                r.upstream = None;
                r.had_state = true;
            }
        }
        self.release_held();
        self.evaluate_upstream(ctx);
        self.pump(ctx, sink);
        self.apply_if_waiting(ctx, sink, store);
    }

    /// The topology changed somewhere: the way to the distributor may have too.
    pub(crate) fn on_topology(&mut self, ctx: &mut Ctx<'_, '_>) {
        self.evaluate_upstream(ctx);
    }

    // --- distributor ---------------------------------------------------------------------

    /// Starts a pmesh rollout of `offer` from this node.
    pub(crate) fn offer(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        mut offer: Offer,
    ) -> Result<TransferId, Refusal> {
        // A new offer replaces this node's previous rollout (nodes switch to the newer
        // manifest, keeping progress when it is the same image); a node that is itself
        // receiving or relaying an image for others is busy.
        if self.r.as_ref().is_some_and(|r| match r.role {
            Role::Distributor(_) => false,
            Role::Target => r.phase == Phase::Distribute || r.phase == Phase::Verified,
            Role::Relay => r.needs_upstream(),
        }) {
            return Err(Refusal::Busy);
        }
        if offer
            .signed
            .as_ref()
            .is_some_and(|s| s.compressed() != offer.compressed)
        {
            return Err(Refusal::BadOffer(
                "a signed rollout is compressed exactly when its bundle is (ota sign --compressed)",
            ));
        }
        if offer.signed.is_none() && self.trust.requires_signed() {
            return Err(Refusal::Untrusted {
                code: "unsigned",
                reason: "this node requires signed firmware: offer a bundle".into(),
            });
        }
        let chunk = if offer.chunk_size != 0 {
            offer.chunk_size
        } else if offer.compressed {
            PMESH_COMPRESSED_CHUNK
        } else {
            PMESH_CHUNK
        };
        if !(crate::offer::MIN_PMESH_CHUNK..=crate::offer::MAX_PMESH_CHUNK).contains(&chunk) {
            return Err(Refusal::BadOffer("chunk size out of range"));
        }
        let size = offer.image.len();
        if size == 0 {
            return Err(Refusal::BadOffer("empty image"));
        }
        // Compressed images are cut into spans that deflate to about `chunk` bytes each
        // (equal frames, see `spans`); uncompressed ones into `chunk` image bytes each. A
        // signed rollout's layout is the signer's.
        let (chunk, count, spans) = if let Some(s) = &offer.signed {
            s.layout()
        } else if offer.compressed {
            let spans = Spans::plan(offer.image.as_mut(), size, chunk).map_err(|e| match e {
                PlanError::Io(e) => Refusal::Io(e),
                PlanError::ShortImage => Refusal::BadOffer("image source ended early"),
                PlanError::TooManyChunks => Refusal::BadOffer("too many chunks"),
            })?;
            (spans.max_len(), spans.count(), Some(spans))
        } else {
            let count = u32::try_from(size.div_ceil(u64::from(chunk)))
                .ok()
                .filter(|&c| c <= wire::MAX_CHUNKS)
                .ok_or(Refusal::BadOffer("too many chunks"))?;
            (chunk, count, None)
        };
        let mut sha = Sha256Hasher::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < size {
            let n = offer.image.read_at(at, &mut buf)?;
            if n == 0 {
                return Err(Refusal::BadOffer("image source ended early"));
            }
            sha.update(&buf[..n]);
            at += n as u64;
        }
        let id = loop {
            let id = ctx.random() as u32;
            if id != 0 {
                break id;
            }
        };
        let m = Manifest {
            from: ctx.node_id(),
            id,
            size,
            chunk,
            count,
            spans,
            sha256: sha.finish_hex(),
            version: core::mem::take(&mut offer.version),
            role: core::mem::take(&mut offer.role),
            hardware: core::mem::take(&mut offer.hardware),
            compression: if offer.compressed {
                Compression::Deflate
            } else {
                Compression::None
            },
            forced: offer.forced,
            coordinated: offer.apply != ApplyPolicy::OnVerify,
            apply_at: None,
            #[cfg(feature = "signature")]
            signed: offer.signed.as_ref().map(|s| s.manifest_bytes().to_vec()),
        };
        if let Some(s) = &offer.signed
            && s.sha256_hex() != m.sha256
        {
            return Err(Refusal::BadOffer(
                "image does not match the signed manifest",
            ));
        }
        let dist = DistState {
            compress: (m.compression == Compression::Deflate)
                .then_some(crate::codec::deflate_chunk as wire::Compressor),
            source: offer.image,
            policy: offer.apply,
            reports: BTreeMap::new(),
            next_manifest: ctx.now() + self.tuning.manifest_interval,
            verified_emitted: false,
        };
        let r = new_rollout(
            m,
            Role::Distributor(Box::new(dist)),
            ChunkBitmap::full(count),
        );
        let json = r.m.to_json(2);
        let tid = r.id();
        let mut r = r;
        r.signed = offer.signed.take();
        self.r = Some(r);
        self.flood(ctx, json);
        self.flood_pages(ctx);
        Ok(tid)
    }

    /// Sets the apply time of the rollout this node distributes (mesh µs); floods APPLY.
    pub(crate) fn apply_at(&mut self, ctx: &mut Ctx<'_, '_>, at: u32) -> bool {
        let Some(r) = &mut self.r else { return false };
        if !matches!(r.role, Role::Distributor(_)) {
            return false;
        }
        r.m.apply_at = Some(at);
        let json = wire::apply(ctx.node_id(), r.m.id, at);
        self.flood(ctx, json);
        true
    }

    /// Cancels the rollout this node distributes; floods CANCEL.
    pub(crate) fn cancel(&mut self, ctx: &mut Ctx<'_, '_>) -> bool {
        let Some(r) = &self.r else { return false };
        if !matches!(r.role, Role::Distributor(_)) {
            return false;
        }
        let json = wire::cancel(ctx.node_id(), r.m.id);
        self.r = None;
        self.flood(ctx, json);
        true
    }

    /// Floods every digest page of a signed rollout (right after its manifest, so pages
    /// precede the chunks they cover on every link).
    fn flood_pages(&mut self, ctx: &mut Ctx<'_, '_>) {
        for json in self.page_frames(ctx.node_id(), 2) {
            self.flood(ctx, json);
        }
    }

    /// Sends the held digest pages to one neighbour (after the manifest).
    fn send_pages(&mut self, ctx: &mut Ctx<'_, '_>, conn: ConnId) {
        for json in self.page_frames(ctx.node_id(), 0) {
            self.send_control(ctx, Peer::Conn(conn), json);
        }
    }

    /// The PAGE frames of the signed rollout held, from `me` with `routing` (none unsigned).
    fn page_frames(&self, me: u32, routing: u8) -> Vec<Vec<u8>> {
        let Some(r) = &self.r else { return Vec::new() };
        let Some(s) = &r.signed else {
            return Vec::new();
        };
        (0..s.page_count())
            .filter_map(|p| s.page_json(me, routing, r.m.id, p))
            .collect()
    }

    fn flood(&mut self, ctx: &mut Ctx<'_, '_>, json: Vec<u8>) {
        let len = json.len() as u64 + 1;
        let links = ctx.neighbours().count() as u64;
        if ctx.send(Routing::Broadcast, 0, json).is_ok() {
            self.stats.control_frames_sent += links;
            self.stats.control_bytes_sent += links * len;
        }
    }

    // --- frames --------------------------------------------------------------------------

    /// A pmesh OTA frame processed locally.
    pub(crate) fn on_frame(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        f: &Incoming<'_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
        busy: bool,
    ) {
        self.dispatch(ctx, f, sink, store, busy);
        self.apply_if_waiting(ctx, sink, store);
    }

    /// A deferred apply goes ahead once the subscribers have what they need from us.
    fn apply_if_waiting(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        if self.r.as_ref().is_some_and(|r| r.apply_waiting.is_some()) {
            self.apply(ctx, sink, store);
        }
    }

    fn dispatch(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        f: &Incoming<'_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
        busy: bool,
    ) {
        let env = f.envelope;
        let me = ctx.node_id();
        // The peer a hop-by-hop frame came from; SINGLE frames come from their origin.
        let peer = if env.routing == Routing::Single {
            Peer::Remote(env.from)
        } else {
            Peer::Conn(f.conn)
        };
        match env.ty {
            wire::HELLO => {
                if f.neighbour != 0 && !self.pmesh_conns.iter().any(|(c, _)| *c == f.conn) {
                    self.pmesh_conns.push((f.conn, f.neighbour));
                }
                self.fresh_conns.retain(|(c, _)| *c != f.conn);
                if let Some(r) = &self.r {
                    let json = r.m.to_json(0);
                    self.send_control(ctx, Peer::Conn(f.conn), json);
                    self.send_pages(ctx, f.conn);
                }
                self.evaluate_upstream(ctx);
            }
            wire::MANIFEST => match Manifest::from_envelope(env) {
                Ok(m) if m.from != me => match self.check_trust(&m, ctx.now()) {
                    Ok(signed) => self.on_manifest(ctx, (m, signed), f, sink, store, busy),
                    Err(reason) => self.refuse(ctx, m.id, reason),
                },
                Ok(_) => {}
                Err(reason) => {
                    self.stats.malformed += 1;
                    let id = env.get("id").and_then(|v| v.as_u32_strict()).unwrap_or(0);
                    self.refuse(ctx, id, reason);
                }
            },
            wire::WANT => {
                let Some(count) = self.r.as_ref().map(|r| r.m.count) else {
                    return;
                };
                match Want::from_envelope(env, count) {
                    Some(w) => self.on_want(ctx, peer, w, sink),
                    None => self.stats.malformed += 1,
                }
            }
            wire::CHUNK => match ChunkMsg::from_envelope(env) {
                Some(c) => self.on_chunk(
                    ctx,
                    peer,
                    env.routing == Routing::Neighbour,
                    c,
                    f.raw,
                    sink,
                    store,
                ),
                None => self.stats.malformed += 1,
            },
            wire::ACK => match wire::parse_ack(env, 4096) {
                Some(a) => {
                    if a.skipped > 0 {
                        self.stats.malformed += 1;
                    }
                    self.on_ack(ctx, peer, a.id, a.n, a.reports, sink);
                }
                None => self.stats.malformed += 1,
            },
            wire::APPLY => {
                let id = env.get("id").and_then(|v| v.as_u32_strict());
                let at = env.get("at").and_then(|v| v.as_u32_strict());
                if let (Some(id), Some(at)) = (id, at) {
                    self.on_apply(ctx, id, at, sink, store);
                }
            }
            wire::CANCEL => {
                if let Some(id) = env.get("id").and_then(|v| v.as_u32_strict()) {
                    self.on_cancel(ctx, id, sink, store);
                }
            }
            #[cfg(feature = "signature")]
            wire::PAGE => self.on_page_frame(ctx, f),
            _ => {}
        }
    }

    /// A PAGE processed here; a new one from one neighbour (not flooded) goes on to the
    /// other pmesh neighbours.
    #[cfg(feature = "signature")]
    fn on_page_frame(&mut self, ctx: &mut Ctx<'_, '_>, f: &Incoming<'_>) {
        if self.on_page(f.envelope) != Some(true) || f.envelope.routing != Routing::Neighbour {
            return;
        }
        let others: Vec<ConnId> = self
            .pmesh_conns
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != f.conn)
            .collect();
        let json = f.raw[..f.raw.len().saturating_sub(1)].to_vec();
        for c in others {
            self.send_control(ctx, Peer::Conn(c), json.clone());
        }
    }

    /// A PAGE: `Some(true)` if new and verified against the rollout's root, `Some(false)` if
    /// already held, `None` if refused (counted) or not for the current signed rollout.
    #[cfg(feature = "signature")]
    fn on_page(&mut self, env: &pmesh_proto::Envelope) -> Option<bool> {
        let Some((id, p, digests, proof)) = trust::parse_page(env) else {
            self.stats.malformed += 1;
            return None;
        };
        let s = self.r.as_mut().filter(|r| r.m.id == id)?.signed.as_mut()?;
        match s.add_page(p, &digests, &proof) {
            Ok(new) => Some(new),
            Err(_) => {
                self.stats.untrusted += 1;
                None
            }
        }
    }

    #[cfg(feature = "signature")]
    /// Whether this node may forward `f` (SINGLE through it, or a flood): manifests must
    /// pass the trust checks, pages must match the root, chunks of a signed rollout their
    /// digest. Everything else passes.
    pub(crate) fn admit(&mut self, ctx: &mut Ctx<'_, '_>, f: &Incoming<'_>) -> bool {
        let env = f.envelope;
        match env.ty {
            wire::MANIFEST => match Manifest::from_envelope(env) {
                Ok(m) if m.from == ctx.node_id() => true,
                Ok(m) => match self.check_trust(&m, ctx.now()) {
                    Ok(_) => true,
                    Err(reason) => {
                        self.refuse(ctx, m.id, reason);
                        false
                    }
                },
                Err(_) => !self.trust.requires_signed(),
            },
            #[cfg(feature = "signature")]
            wire::PAGE => self.on_page(env).is_some() || !self.trust.requires_signed(),
            wire::CHUNK => self.admit_chunk(env),
            _ => true,
        }
    }

    /// A chunk passing through: checked against its digest when the rollout is signed.
    #[cfg(feature = "signature")]
    fn admit_chunk(&mut self, env: &pmesh_proto::Envelope) -> bool {
        let signed = self
            .r
            .as_ref()
            .and_then(|r| r.signed.as_ref().map(|s| (&r.m, s)));
        let Some((m, s)) = signed else {
            return !self.trust.requires_signed();
        };
        let Some(c) = ChunkMsg::from_envelope(env).filter(|c| c.id == m.id) else {
            return !self.trust.requires_signed();
        };
        match check_signed_chunk(m, s, &c).0 {
            ChunkCheck::Good => true,
            ChunkCheck::Bad => {
                self.stats.bad_digests += 1;
                false
            }
            ChunkCheck::NoPage => {
                self.stats.unverifiable += 1;
                false
            }
        }
    }

    fn refuse(&mut self, ctx: &mut Ctx<'_, '_>, id: u32, reason: Refusal) {
        let key = (id, reason.code());
        if !self.refused.contains(&key) {
            if self.refused.len() >= 16 {
                self.refused.remove(0);
            }
            self.refused.push(key);
            ctx.emit(OtaEvent::Refused {
                id: TransferId {
                    mode: crate::event::Mode::Pmesh,
                    id,
                },
                reason,
            });
        }
    }

    fn on_manifest(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        (m, signed): (Manifest, Option<SignedRollout>),
        f: &Incoming<'_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
        busy: bool,
    ) {
        let mut resumed: Option<ChunkBitmap> = None;
        if let Some(r) = &mut self.r {
            if r.m.id == m.id {
                // The apply time may have been set while this node was away (it rebooted,
                // or missed the APPLY flood): re-flooded manifests carry it.
                if let Some(at) = m.apply_at
                    && (r.m.apply_at != Some(at) || r.apply_local.is_none())
                {
                    self.on_apply(ctx, m.id, at, sink, store);
                }
                self.evaluate_upstream(ctx);
                return;
            }
            if matches!(r.role, Role::Distributor(_)) {
                return; // we distribute another rollout
            }
            // A signed rollout is not replaced by an older one of the same class.
            if let (Some(cur), Some(new)) = (&r.signed, &signed)
                && r.m.role == m.role
                && r.m.hardware == m.hardware
                && new.sequence() < cur.sequence()
            {
                self.stats.untrusted += 1;
                return;
            }
            // A new rollout replaces the old; the same image keeps its progress.
            if matches!(r.role, Role::Target) && r.m.same_image(&m) && r.phase == Phase::Distribute
            {
                resumed = Some(core::mem::take(&mut r.have));
                let _ = store.begin_transfer(&m.to_json(0), m.count);
                if let Some(h) = &resumed {
                    let mut i = 0;
                    while let Some(n) = h.next_held(i) {
                        let _ = store.mark_chunk(n);
                        i = n + 1;
                    }
                }
            } else if matches!(r.role, Role::Target) && r.phase != Phase::Applied {
                sink.abort();
                let _ = store.clear_transfer();
            }
            self.r = None;
        }
        let id = m.id;
        let tid = TransferId {
            mode: crate::event::Mode::Pmesh,
            id,
        };
        let target = if !self.receive {
            Err(None)
        } else if m.role != self.role {
            Err(Some(Refusal::WrongRole {
                offered: m.role.clone(),
                mine: self.role.clone(),
            }))
        } else if m.hardware != self.hardware {
            Err(Some(Refusal::WrongHardware {
                offered: m.hardware.clone(),
                mine: self.hardware.clone(),
            }))
        } else if self.current_sha.as_deref() == Some(m.sha256.as_str()) && !m.forced {
            Err(Some(Refusal::AlreadyCurrent))
        } else if m.size > sink.capacity() {
            Err(Some(Refusal::TooLarge {
                size: m.size,
                capacity: sink.capacity(),
            }))
        } else if busy {
            Err(Some(Refusal::Busy))
        } else {
            Ok(())
        };
        let from_neighbour = f.envelope.routing == Routing::Neighbour;
        let mut report_failure = None;
        let r = match target {
            Ok(()) => {
                let have = match resumed {
                    Some(h) => Some(h),
                    None => self.open_sink(&m, sink, store),
                };
                match have {
                    Some(have) => {
                        let done = have.count();
                        ctx.emit(OtaEvent::Accepted {
                            id: tid,
                            chunks: m.count,
                            resumed_from: done,
                        });
                        let mut r = new_rollout(m, Role::Target, have);
                        r.had_state = done > 0;
                        r.last_pct = done * 100 / r.m.count;
                        r
                    }
                    None => {
                        self.refuse(
                            ctx,
                            id,
                            Refusal::Io(crate::io::IoError::BadState("sink refused the image")),
                        );
                        new_rollout(m.clone(), Role::Relay, ChunkBitmap::new(m.count))
                    }
                }
            }
            Err(reason) => {
                let current = matches!(reason, Some(Refusal::AlreadyCurrent));
                if let Some(reason) = reason {
                    if matches!(reason, Refusal::TooLarge { .. } | Refusal::Busy) {
                        report_failure = Some(Phase::Failed(reason.wire_code()));
                    }
                    self.refuse(ctx, id, reason);
                }
                let count = m.count;
                if current && can_read_current(sink, m.size) {
                    // It runs this very image: it serves chunks from it to its neighbours.
                    let mut r = new_rollout(m, Role::Target, ChunkBitmap::full(count));
                    r.phase = Phase::Applied;
                    r.holder_only = true;
                    r
                } else {
                    new_rollout(m, Role::Relay, ChunkBitmap::new(count))
                }
            }
        };
        let mut r = r;
        r.signed = signed;
        let relay_json = from_neighbour.then(|| r.m.to_json(0));
        let complete =
            matches!(r.role, Role::Target) && r.phase == Phase::Distribute && r.have.is_complete();
        let apply_at = r.m.apply_at;
        self.r = Some(r);
        // A late joiner's manifest may already carry the apply time: take it as an APPLY.
        if let Some(at) = apply_at {
            self.on_apply(ctx, id, at, sink, store);
        }
        if let Some(phase) = report_failure {
            self.report_own(ctx, phase);
        }
        // A manifest that came from one neighbour only (not flooded) goes on to the others.
        if let Some(json) = relay_json {
            let others: Vec<ConnId> = self
                .pmesh_conns
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| *c != f.conn)
                .collect();
            for c in others {
                self.send_control(ctx, Peer::Conn(c), json.clone());
            }
        }
        if complete {
            self.verify(ctx, sink, store);
        }
        self.evaluate_upstream(ctx);
    }

    /// Opens the sink for `m`, resuming a recorded transfer of the same image.
    fn open_sink(
        &mut self,
        m: &Manifest,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) -> Option<ChunkBitmap> {
        if let Some(rec) = store.load_transfer()
            && let Ok(env) = Envelope::parse(&rec.offer, pmesh_proto::DEFAULT_MAX_DEPTH)
            && env.ty == wire::MANIFEST
            && let Ok(old) = Manifest::from_envelope(&env)
            && old.same_image(m)
            && rec.have.len() == m.count
            && sink.resume(Some(m.size)).is_ok()
        {
            return Some(rec.have);
        }
        sink.begin(Some(m.size)).ok()?;
        store.begin_transfer(&m.to_json(0), m.count).ok()?;
        Some(ChunkBitmap::new(m.count))
    }

    fn on_want(&mut self, ctx: &mut Ctx<'_, '_>, peer: Peer, w: Want, sink: &mut dyn FirmwareSink) {
        let window = self.tuning.window as usize;
        let now = ctx.now();
        {
            let Some(r) = &mut self.r else { return };
            if r.m.id != w.id {
                return;
            }
            let pos = r.children.iter().position(|c| c.peer == peer);
            if w.stop {
                if let Some(p) = pos {
                    r.children.remove(p);
                }
            } else {
                let mut need = w.have;
                need.invert();
                let child = match pos {
                    Some(p) => &mut r.children[p],
                    None if r.children.len() >= MAX_SUBSCRIBERS => return,
                    None => {
                        r.children.push(Child {
                            peer,
                            need: ChunkBitmap::new(r.m.count),
                            sent: 0,
                            acked: 0,
                            recent: VecDeque::with_capacity(window),
                            repair: false,
                            tokens: 0,
                            refilled: now,
                            wake: None,
                        });
                        r.children.last_mut().expect("just pushed")
                    }
                };
                // Chunks sent after the subscriber's n-th are still on their way: not missing.
                let in_flight = child.sent.saturating_sub(w.n) as usize;
                for &i in child.recent.iter().rev().take(in_flight) {
                    need.unset(i);
                }
                child.need = need;
                child.acked = child.acked.max(w.n.min(child.sent));
                child.repair |= w.re;
            }
        }
        self.release_held();
        self.evaluate_upstream(ctx);
        self.refresh_upstream_want(ctx);
        self.pump(ctx, sink);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_chunk(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        peer: Peer,
        hop_by_hop: bool,
        c: ChunkMsg,
        raw: &Bytes,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let now = ctx.now();
        let tuning = self.tuning;
        let Some(r) = &mut self.r else { return };
        if r.m.id != c.id || c.index >= r.m.count || matches!(r.role, Role::Distributor(_)) {
            return;
        }
        r.data_in += raw.len() as u64;
        if let Some(u) = &mut r.upstream
            && u.peer == peer
        {
            u.recv += 1;
            u.backoff = tuning.rewant_after;
            u.rewant_at = Some(now + tuning.rewant_after);
        }
        let i = c.index;
        // A signed chunk's image bytes, when it was inflated to check its digest.
        let mut inflated = None;
        if let Some(s) = &r.signed {
            let (verdict, bytes) = check_signed_chunk(&r.m, s, &c);
            inflated = bytes;
            match verdict {
                ChunkCheck::Good => {}
                ChunkCheck::Bad => {
                    self.stats.bad_digests += 1;
                    #[cfg(feature = "signature")]
                    if let Peer::Conn(conn) = peer
                        && !self.demoted.contains(&conn)
                    {
                        if self.demoted.len() >= 16 {
                            self.demoted.remove(0);
                        }
                        self.demoted.push(conn);
                    }
                    self.evaluate_upstream(ctx);
                    return;
                }
                ChunkCheck::NoPage => {
                    self.stats.unverifiable += 1;
                    return;
                }
            }
        }
        // A frame we can forward as is: hop-by-hop, with its NUL.
        let forwardable = if hop_by_hop {
            raw.clone()
        } else {
            let json = wire::chunk_frame(
                r.m.from,
                Via::Neighbour,
                c.id,
                i,
                c.deflated,
                c.crc,
                &c.payload,
            );
            encode_frame(json)
        };
        match r.role {
            Role::Target => {
                if r.have.get(i) {
                    self.stats.duplicates += 1;
                } else {
                    let (offset, len) = r.m.chunk_range(i);
                    let bytes = if inflated.is_some() {
                        inflated
                    } else if c.deflated {
                        codec::inflate_chunk(&c.payload, len).ok()
                    } else {
                        Some(c.payload)
                    };
                    // Signed chunks carry no CRC: their digest was checked above. A build
                    // without `signature` takes a signed rollout as unsigned and has only the
                    // image's SHA-256 (checked before anything is committed) for them.
                    let digested = r.signed.is_some() || !cfg!(feature = "signature");
                    let intact = |b: &Vec<u8>| match c.crc {
                        Some(crc) => codec::crc32(b) == crc,
                        None => digested,
                    };
                    match bytes.filter(|b| b.len() == len && intact(b)) {
                        None => self.stats.corrupt += 1,
                        Some(bytes) => {
                            if let Err(e) = sink
                                .write_at(offset, &bytes)
                                .and_then(|_| store.mark_chunk(i))
                            {
                                return self.fail(ctx, Refusal::Io(e), sink, store);
                            }
                            r.have.set(i);
                            self.stats.chunks_written += 1;
                            if tuning.cache_frames > 0 {
                                if r.cache.len() >= tuning.cache_frames {
                                    r.cache.pop_front();
                                }
                                r.cache.push_back((i, forwardable));
                            }
                            self.progress(ctx);
                        }
                    }
                }
            }
            Role::Relay => {
                // Bounded: an upstream that ignores our window cannot make us hold more.
                let room = r.held.len() < 2 * tuning.window as usize;
                if room
                    && r.children.iter().any(|ch| ch.need.get(i))
                    && !r.held.iter().any(|(h, _)| *h == i)
                {
                    r.held.push_back((i, forwardable));
                }
            }
            Role::Distributor(_) => {}
        }
        self.pump(ctx, sink);
        self.maybe_ack(ctx, false);
        if let Some(r) = &self.r
            && matches!(r.role, Role::Target)
            && r.phase == Phase::Distribute
            && r.have.is_complete()
        {
            self.verify(ctx, sink, store);
        }
        self.evaluate_upstream(ctx);
    }

    fn on_ack(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        peer: Peer,
        id: u32,
        n: u32,
        reports: Vec<Report>,
        sink: &mut dyn FirmwareSink,
    ) {
        let now = ctx.now();
        let flush = self.tuning.report_flush;
        let Some(r) = &mut self.r else { return };
        if r.m.id != id {
            return;
        }
        if let Some(c) = r.children.iter_mut().find(|c| c.peer == peer) {
            c.acked = c.acked.max(n.min(c.sent));
        }
        let mut relay_reports = None;
        if !reports.is_empty() {
            let tid = r.id();
            let total = r.m.count;
            match &mut r.role {
                Role::Distributor(d) => {
                    for (node, done, phase) in reports {
                        let Some(phase) = Phase::from_wire(phase) else {
                            continue;
                        };
                        d.reports.insert(node, (done.min(total), phase));
                        ctx.emit(OtaEvent::NodeProgress {
                            id: tid,
                            node,
                            done: done.min(total),
                            total,
                            phase,
                        });
                    }
                    self.check_all_verified(ctx);
                }
                _ => relay_reports = Some(reports),
            }
        }
        if let Some(reports) = relay_reports {
            let phase_change = reports.iter().any(|rep| rep.2 != Phase::Distribute.wire());
            // Queued a batch at a time, so the queue never holds more than REPORT_BATCH
            // entries however many one ACK carries.
            let mut rest = reports.into_iter().peekable();
            while rest.peek().is_some() {
                let Some(r) = &mut self.r else { return };
                let room = REPORT_BATCH.saturating_sub(r.reports.len()).max(1);
                r.queue(rest.by_ref().take(room));
                if r.reports.len() >= REPORT_BATCH {
                    self.flush_reports(ctx, false);
                }
            }
            // Reports ride on the next ACK; without one, progress goes within
            // `report_flush`, phase changes (verified, applied, failed) within a tenth of it,
            // batched with whatever else arrives meanwhile.
            let wait = if phase_change { flush / 10 } else { flush };
            if let Some(r) = &mut self.r
                && !r.reports.is_empty()
            {
                r.report_due = Some(r.report_due.map_or(now + wait, |t| t.min(now + wait)));
            }
        }
        self.pump(ctx, sink);
    }

    fn on_apply(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        id: u32,
        at: u32,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let now = ctx.now();
        let mesh_now = ctx.mesh_time();
        let Some(r) = &mut self.r else { return };
        if r.m.id != id || matches!(r.role, Role::Distributor(_)) {
            return;
        }
        r.m.apply_at = Some(at);
        let delta = at.wrapping_sub(mesh_now) as i32;
        let local = if delta > 0 {
            now + Duration::from_micros(delta as u64)
        } else {
            now
        };
        r.apply_local = Some(local);
        if local <= now && r.phase == Phase::Verified {
            self.apply(ctx, sink, store);
        }
    }

    fn on_cancel(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        id: u32,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let Some(r) = &self.r else { return };
        if r.m.id != id || matches!(r.role, Role::Distributor(_)) {
            return;
        }
        if matches!(r.role, Role::Target) && r.phase != Phase::Applied {
            sink.abort();
            let _ = store.clear_transfer();
            ctx.emit(OtaEvent::Failed {
                id: r.id(),
                reason: Refusal::BadOffer("cancelled by the distributor"),
            });
        }
        self.r = None;
    }

    // --- progress, verify, apply ---------------------------------------------------------

    fn progress(&mut self, ctx: &mut Ctx<'_, '_>) {
        let Some(r) = &mut self.r else { return };
        let (done, total) = (r.have.count(), r.m.count);
        let pct = done * 100 / total;
        if pct != r.last_pct || done == total {
            r.last_pct = pct;
            let id = r.id();
            ctx.emit(OtaEvent::Progress { id, done, total });
            self.report_own(ctx, Phase::Distribute);
        }
    }

    fn report_own(&mut self, ctx: &mut Ctx<'_, '_>, phase: Phase) {
        let me = ctx.node_id();
        let now = ctx.now();
        let flush = self.tuning.report_flush;
        let Some(r) = &mut self.r else { return };
        r.queue([(me, r.have.count(), phase.wire())]);
        if r.report_due.is_none() {
            r.report_due = Some(now + flush);
        }
    }

    fn verify(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let Some(r) = &mut self.r else { return };
        let size = r.m.size;
        let expected = r.m.sha256.clone();
        let (md5, sha) = match read_back_hashes(sink, size) {
            Ok(h) => h,
            Err(e) => return self.fail(ctx, Refusal::Io(e), sink, store),
        };
        if sha != expected {
            return self.fail(
                ctx,
                Refusal::HashMismatch {
                    expected,
                    actual: sha,
                },
                sink,
                store,
            );
        }
        if let Err(e) = sink.verify(size) {
            return self.fail(ctx, Refusal::Io(e), sink, store);
        }
        r.phase = Phase::Verified;
        r.hashes = Some((md5, sha));
        let id = r.id();
        let due = if r.m.coordinated {
            r.apply_local.filter(|&t| t <= ctx.now())
        } else {
            Some(ctx.now())
        };
        ctx.emit(OtaEvent::Verified { id });
        self.report_own(ctx, Phase::Verified);
        if due.is_some() {
            self.apply(ctx, sink, store);
        } else {
            self.flush_reports(ctx, false);
        }
    }

    fn apply(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let Some(r) = &mut self.r else { return };
        if r.phase != Phase::Verified {
            return;
        }
        // Committing ends this node's role as a source (and, on a device, reboots it): first
        // its subscribers get what they still need from it, so a pipeline's tail is served
        // from the parent instead of being fetched from the distributor again.
        // A subscriber that makes no progress does not hold the apply back for more than
        // APPLY_WAIT_MAX: it fetches the rest from its next upstream.
        let now = ctx.now();
        let serving = r
            .children
            .iter()
            .any(|c| c.sent > c.acked || c.need.count() > 0);
        if serving && r.apply_waiting.is_none_or(|t| now < t) {
            r.apply_waiting.get_or_insert(now + APPLY_WAIT_MAX);
            return;
        }
        r.apply_waiting = None;
        if let Err(e) = sink.commit() {
            return self.fail(ctx, Refusal::Io(e), sink, store);
        }
        let (md5, sha256) = r.hashes.take().unwrap_or_default();
        let image = InstalledImage {
            role: self.role.clone(),
            hardware: self.hardware.clone(),
            md5,
            sha256: sha256.clone(),
            version: r.m.version.clone(),
        };
        let _ = store.set_current_image(&image);
        let _ = store.clear_transfer();
        if let Some(s) = r.signed.as_ref().filter(|s| s.verified()) {
            // Anti-rollback: the counter moves when the node commits a signed image.
            let seq = s.sequence();
            let _ = store.set_confirmed_sequence(&self.role, &self.hardware, seq);
            self.confirmed = Some(self.confirmed.map_or(seq, |c| c.max(seq)));
        }
        self.current_sha = Some(sha256);
        r.phase = Phase::Applied;
        r.apply_local = None;
        if !can_read_current(sink, r.m.size) {
            // The new image cannot be read back: from now on this node relays for others.
            r.role = Role::Relay;
            r.have = ChunkBitmap::new(r.m.count);
            r.cache.clear();
        }
        // Otherwise it stays a holder, serving neighbours from the image it now runs.
        let id = r.id();
        self.report_own(ctx, Phase::Applied);
        self.flush_reports(ctx, false);
        ctx.emit(OtaEvent::Installed { id, image });
    }

    fn fail(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        reason: Refusal,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let Some(r) = &mut self.r else { return };
        sink.abort();
        let _ = store.clear_transfer();
        r.role = Role::Relay;
        r.have = ChunkBitmap::new(r.m.count);
        r.cache.clear();
        r.phase = Phase::Failed(reason.wire_code());
        let id = r.id();
        let phase = r.phase;
        self.report_own(ctx, phase);
        self.flush_reports(ctx, false);
        ctx.emit(OtaEvent::Failed { id, reason });
        self.evaluate_upstream(ctx);
    }

    fn check_all_verified(&mut self, ctx: &mut Ctx<'_, '_>) {
        let mesh_now = ctx.mesh_time();
        let Some(r) = &mut self.r else { return };
        let tid = r.id();
        let Role::Distributor(d) = &mut r.role else {
            return;
        };
        if d.verified_emitted || d.reports.is_empty() {
            return;
        }
        let pending = d.reports.values().any(|(_, p)| *p == Phase::Distribute);
        let verified = d
            .reports
            .values()
            .filter(|(_, p)| matches!(p, Phase::Verified | Phase::Applied))
            .count() as u32;
        let failed = d
            .reports
            .values()
            .filter(|(_, p)| matches!(p, Phase::Failed(_)))
            .count() as u32;
        if pending {
            return;
        }
        let apply_at = match d.policy {
            ApplyPolicy::WhenAllVerified { delay, min_targets } => {
                if verified < min_targets.max(1) {
                    return;
                }
                Some(mesh_now.wrapping_add(delay.as_micros() as u32))
            }
            ApplyPolicy::OnVerify => None,
            ApplyPolicy::Manual => None,
        };
        if d.policy == ApplyPolicy::OnVerify
            && d.reports.values().any(|(_, p)| *p == Phase::Verified)
        {
            return; // wait for them to report applied
        }
        d.verified_emitted = true;
        ctx.emit(OtaEvent::RolloutVerified {
            id: tid,
            verified,
            failed,
            apply_at,
        });
        if let Some(at) = apply_at {
            self.apply_at(ctx, at);
        }
    }

    // --- sending -------------------------------------------------------------------------

    /// The way to the distributor: the next-hop neighbour if it speaks pmesh OTA, else the
    /// distributor itself by SINGLE routing.
    ///
    /// `None` while the next hop is a neighbour that has not said HELLO yet: it gets
    /// `hello_grace` (from when we first look) before we route past it.
    fn peer_toward(&mut self, ctx: &Ctx<'_, '_>, node: u32) -> Option<Peer> {
        let conn = ctx.route(node)?;
        #[cfg(feature = "signature")]
        if self.demoted.contains(&conn) {
            // It sent a chunk that failed its digest: ask the distributor itself.
            return Some(Peer::Remote(node));
        }
        if self.pmesh_conns.iter().any(|(c, _)| *c == conn) {
            return Some(Peer::Conn(conn));
        }
        let now = ctx.now();
        let since = match self.fresh_conns.iter().find(|(c, _)| *c == conn) {
            Some((_, since)) => *since,
            None => {
                if self.fresh_conns.len() >= 64 {
                    self.fresh_conns.remove(0);
                }
                self.fresh_conns.push((conn, now));
                now
            }
        };
        let until = since + self.tuning.hello_grace;
        if until > now {
            self.reeval_at = Some(self.reeval_at.map_or(until, |t| t.min(until)));
            return None;
        }
        Some(Peer::Remote(node))
    }

    fn via(peer: Peer) -> Via {
        match peer {
            Peer::Conn(_) => Via::Neighbour,
            Peer::Remote(n) => Via::Single(n),
        }
    }

    fn send_control(&mut self, ctx: &mut Ctx<'_, '_>, peer: Peer, json: Vec<u8>) -> bool {
        let len = json.len() as u64 + 1;
        let ok = match peer {
            Peer::Conn(c) => ctx.send_to_conn(c, json).is_ok(),
            Peer::Remote(n) => ctx.send(Routing::Single, n, json).is_ok(),
        };
        if ok {
            self.stats.control_frames_sent += 1;
            self.stats.control_bytes_sent += len;
        }
        ok
    }

    /// Subscribes to the right upstream (or unsubscribes) after anything changed.
    fn evaluate_upstream(&mut self, ctx: &mut Ctx<'_, '_>) {
        let now = ctx.now();
        let me = ctx.node_id();
        let Some(r) = &self.r else { return };
        if matches!(r.role, Role::Distributor(_)) {
            return;
        }
        let needs = r.needs_upstream();
        let from = r.m.from;
        let desired = if needs {
            self.peer_toward(ctx, from)
        } else {
            None
        };
        let Some(r) = &self.r else { return };
        let current = r.upstream.as_ref().map(|u| u.peer);
        if desired == current {
            return;
        }
        let id = r.m.id;
        let count = r.m.count;
        if let Some(old) = current {
            let still_there = match old {
                Peer::Conn(c) => ctx.neighbours().any(|n| n.conn == c),
                Peer::Remote(_) => true,
            };
            if still_there {
                let stop = Want {
                    id,
                    n: r.ackable(),
                    have: ChunkBitmap::new(count),
                    re: false,
                    stop: true,
                };
                self.send_control(ctx, old, stop.to_json(me, Self::via(old)));
            }
        }
        let Some(r) = &mut self.r else { return };
        r.upstream = None;
        let Some(peer) = desired else { return };
        let re = r.had_state || r.have.count() > 0;
        r.had_state = true;
        r.upstream = Some(Upstream {
            peer,
            recv: 0,
            acked_sent: 0,
            rewant_at: Some(now + self.tuning.rewant_after),
            backoff: self.tuning.rewant_after,
        });
        let want = Want {
            id,
            n: 0,
            have: r.want_bitmap(),
            re,
            stop: false,
        };
        self.send_control(ctx, peer, want.to_json(me, Self::via(peer)));
    }

    /// A relay's subscribers changed: tell upstream what is needed now.
    fn refresh_upstream_want(&mut self, ctx: &mut Ctx<'_, '_>) {
        let me = ctx.node_id();
        let Some(r) = &self.r else { return };
        if !matches!(r.role, Role::Relay) {
            return;
        }
        let Some(u) = &r.upstream else { return };
        // `n` is what arrived on this link (held frames included): the holder counts the
        // chunks it sent after the n-th as still on their way, not as missing.
        let want = Want {
            id: r.m.id,
            n: u.recv,
            have: r.want_bitmap(),
            re: false,
            stop: false,
        };
        let peer = u.peer;
        self.send_control(ctx, peer, want.to_json(me, Self::via(peer)));
    }

    /// Acknowledges upstream when enough chunks came in (or always, with `force`). Queued
    /// progress reports ride along when they are due (`Rollout::reports_due`).
    fn maybe_ack(&mut self, ctx: &mut Ctx<'_, '_>, force: bool) {
        let me = ctx.node_id();
        let every = self.tuning.ack_every.max(1);
        let Some(r) = &mut self.r else { return };
        let ackable = r.ackable();
        let attach = r.reports_due();
        let Some(u) = &mut r.upstream else { return };
        let due = ackable >= u.acked_sent + every || (force && (ackable > u.acked_sent || attach));
        if !due {
            return;
        }
        u.acked_sent = u.acked_sent.max(ackable);
        let peer = u.peer;
        let reports = if attach {
            r.take_reports(false)
        } else {
            Vec::new()
        };
        let json = wire::ack(me, Self::via(peer), r.m.id, ackable, &reports);
        self.send_control(ctx, peer, json);
    }

    /// Sends queued reports now, toward the distributor: phase changes always, progress
    /// when `force`d or within the budget.
    fn flush_reports(&mut self, ctx: &mut Ctx<'_, '_>, force: bool) {
        let me = ctx.node_id();
        let Some(r) = &self.r else { return };
        if r.reports.is_empty() || matches!(r.role, Role::Distributor(_)) {
            return;
        }
        let (up, from) = (r.upstream.as_ref().map(|u| u.peer), r.m.from);
        let Some(peer) = up.or_else(|| self.peer_toward(ctx, from)) else {
            return; // no way to the distributor now; keep them for later
        };
        let Some(r) = &mut self.r else { return };
        let reports = r.take_reports(force);
        if reports.is_empty() {
            return;
        }
        let ackable = r.ackable();
        let n = match &mut r.upstream {
            Some(u) if u.peer == peer => {
                u.acked_sent = u.acked_sent.max(ackable);
                ackable
            }
            _ => 0,
        };
        let json = wire::ack(me, Self::via(peer), r.m.id, n, &reports);
        self.send_control(ctx, peer, json);
    }

    /// Relay: frames nobody needs any more are released (and may be acknowledged).
    fn release_held(&mut self) {
        let Some(r) = &mut self.r else { return };
        let children = &r.children;
        r.held
            .retain(|(i, _)| children.iter().any(|c| c.need.get(*i)));
    }

    /// Sends every subscriber what it needs and we have, within its window and rate.
    fn pump(&mut self, ctx: &mut Ctx<'_, '_>, sink: &mut dyn FirmwareSink) {
        let now = ctx.now();
        let me = ctx.node_id();
        let tuning = self.tuning;
        let Some(r) = &mut self.r else { return };
        let is_relay = matches!(r.role, Role::Relay);
        for ci in 0..r.children.len() {
            if r.children[ci].wake.is_some_and(|t| t <= now) {
                r.children[ci].wake = None;
            }
            loop {
                let c = &mut r.children[ci];
                if c.sent.saturating_sub(c.acked) >= tuning.window {
                    break;
                }
                if let Some(rate) = tuning.rate_limit {
                    let elapsed = now.saturating_since(c.refilled).as_micros() as i64;
                    let cap = i64::from(rate).max(1);
                    c.tokens = (c.tokens + elapsed * i64::from(rate) / 1_000_000).min(cap);
                    c.refilled = now;
                    if c.tokens < 0 {
                        let wait = (-c.tokens) * 1_000_000 / i64::from(rate).max(1) + 1;
                        c.wake = Some(now + Duration::from_micros(wait as u64));
                        break;
                    }
                    c.wake = None;
                }
                // The lowest chunk this subscriber needs that we can send.
                let pick = if is_relay {
                    r.held
                        .iter()
                        .find(|(i, _)| c.need.get(*i))
                        .map(|(i, f)| (*i, Some(f.clone())))
                } else {
                    c.need.first_common(&r.have, 0).map(|i| (i, None))
                };
                let Some((i, frame)) = pick else { break };
                let peer = c.peer;
                let frame = match (frame, peer) {
                    (Some(f), Peer::Conn(_)) => f,
                    (_, Peer::Conn(_)) => match r.cache.iter().find(|(ci, _)| *ci == i) {
                        Some((_, f)) => f.clone(),
                        None => {
                            let Some(json) = build_chunk(r, me, Via::Neighbour, i, sink) else {
                                break;
                            };
                            self.stats.frames_rebuilt += 1;
                            let f = encode_frame(json);
                            if tuning.cache_frames > 0 {
                                if r.cache.len() >= tuning.cache_frames {
                                    r.cache.pop_front();
                                }
                                r.cache.push_back((i, f.clone()));
                            }
                            f
                        }
                    },
                    (_, Peer::Remote(n)) => {
                        let Some(json) = build_chunk(r, me, Via::Single(n), i, sink) else {
                            break;
                        };
                        self.stats.frames_rebuilt += 1;
                        encode_frame(json)
                    }
                };
                let len = frame.len() as u64;
                let ok = match peer {
                    Peer::Conn(conn) => ctx.send_raw_to_conn(conn, frame).is_ok(),
                    Peer::Remote(n) => {
                        // SINGLE routing needs the JSON without its NUL.
                        ctx.send(Routing::Single, n, frame[..frame.len() - 1].to_vec())
                            .is_ok()
                    }
                };
                let c = &mut r.children[ci];
                if !ok {
                    break;
                }
                c.need.unset(i);
                c.sent += 1;
                if c.recent.len() >= tuning.window as usize {
                    c.recent.pop_front();
                }
                c.recent.push_back(i);
                if tuning.rate_limit.is_some() {
                    c.tokens -= len as i64;
                }
                self.stats.data_frames_sent += 1;
                self.stats.data_bytes_sent += len;
                if c.repair {
                    self.stats.repair_bytes_sent += len;
                    // Served from this node's own copy to a direct neighbour; what a relay
                    // forwards came from further away.
                    if matches!(peer, Peer::Conn(_)) && !is_relay {
                        self.stats.repair_bytes_to_neighbour += len;
                    }
                }
            }
        }
        if is_relay {
            self.release_held();
            self.maybe_ack(ctx, false);
        }
    }

    // --- timers --------------------------------------------------------------------------

    /// Next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.r.as_ref()?;
        let mut t = r.report_due;
        let mut add = |x: Option<Instant>| {
            t = match (t, x) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        add(self.reeval_at);
        add(r.upstream.as_ref().and_then(|u| u.rewant_at));
        if r.phase == Phase::Verified {
            add(r.apply_waiting.or(r.apply_local));
        }
        if let Role::Distributor(d) = &r.role {
            add(Some(d.next_manifest));
        }
        for c in &r.children {
            add(c.wake);
        }
        t
    }

    /// Runs due timers.
    pub(crate) fn on_timeout(
        &mut self,
        ctx: &mut Ctx<'_, '_>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let now = ctx.now();
        let me = ctx.node_id();
        let tuning = self.tuning;
        if self.reeval_at.is_some_and(|t| t <= now) {
            self.reeval_at = None;
        }
        let Some(r) = &mut self.r else { return };
        // Distributor: re-flood the manifest for nodes that missed it.
        if let Role::Distributor(d) = &mut r.role
            && d.next_manifest <= now
        {
            d.next_manifest = now + tuning.manifest_interval;
            // An apply time already passed becomes "now", so it stays within the ±35 minutes
            // a u32 mesh time can express for nodes that join or reboot long after it.
            let mesh_now = ctx.mesh_time();
            if let Some(at) = r.m.apply_at
                && (at.wrapping_sub(mesh_now) as i32) < 0
            {
                r.m.apply_at = Some(mesh_now);
            }
            let json = r.m.to_json(2);
            self.flood(ctx, json);
            self.flood_pages(ctx);
        }
        let Some(r) = &mut self.r else { return };
        if r.phase == Phase::Verified
            && (r.apply_local.is_some_and(|t| t <= now)
                || r.apply_waiting.is_some_and(|t| t <= now))
        {
            self.apply(ctx, sink, store);
        }
        let Some(r) = &mut self.r else { return };
        if r.report_due.is_some_and(|t| t <= now) {
            r.report_due = None;
            let force = r.stale_reports;
            self.maybe_ack(ctx, true);
            self.flush_reports(ctx, force);
            if let Some(r) = &mut self.r
                && !r.reports.is_empty()
            {
                // Over budget: progress waits for more data to flow; if none does, it goes
                // up anyway after a longer pause (a stalled node's last state).
                r.stale_reports = true;
                r.report_due = Some(now + tuning.report_flush * 10);
            }
        }
        let Some(r) = &mut self.r else { return };
        let needs = r.needs_upstream();
        let want_bits = needs.then(|| r.want_bitmap());
        let ackable = r.ackable();
        let id = r.m.id;
        if let Some(u) = &mut r.upstream
            && u.rewant_at.is_some_and(|t| t <= now)
        {
            if let Some(have) = want_bits {
                // Silence while chunks are missing: ask again with what we hold.
                u.rewant_at = Some(now + u.backoff);
                u.backoff = (u.backoff * 2).min(tuning.rewant_max);
                let peer = u.peer;
                let want = Want {
                    id,
                    n: u.recv.max(ackable),
                    have,
                    re: true,
                    stop: false,
                };
                self.stats.rewants += 1;
                self.send_control(ctx, peer, want.to_json(me, Self::via(peer)));
            } else {
                u.rewant_at = None;
            }
        }
        if self
            .r
            .as_ref()
            .is_some_and(|r| r.children.iter().any(|c| c.wake.is_some_and(|t| t <= now)))
        {
            self.pump(ctx, sink);
        }
        self.evaluate_upstream(ctx);
        self.apply_if_waiting(ctx, sink, store);
    }
}

/// Checks chunk `c` of a signed rollout against its digest, which covers the chunk's image
/// bytes: a deflated chunk is inflated to its range first (one that does not inflate to
/// exactly that is bad). Returns the verdict and the inflated bytes, when it inflated them.
fn check_signed_chunk(
    m: &Manifest,
    s: &SignedRollout,
    c: &ChunkMsg,
) -> (ChunkCheck, Option<Vec<u8>>) {
    if c.index >= m.count {
        return (ChunkCheck::Bad, None);
    }
    if !c.deflated {
        return (s.check_chunk(c.index, &c.payload), None);
    }
    match codec::inflate_chunk(&c.payload, m.chunk_range(c.index).1) {
        Ok(bytes) => (s.check_chunk(c.index, &bytes), Some(bytes)),
        Err(_) => (ChunkCheck::Bad, None),
    }
}

fn new_rollout(m: Manifest, role: Role, have: ChunkBitmap) -> Rollout {
    Rollout {
        m,
        role,
        have,
        phase: Phase::Distribute,
        upstream: None,
        had_state: false,
        children: Vec::new(),
        cache: VecDeque::new(),
        held: VecDeque::new(),
        reports: Vec::new(),
        report_due: None,
        data_in: 0,
        report_out: 0,
        stale_reports: false,
        apply_waiting: None,
        holder_only: false,
        last_pct: 0,
        apply_local: None,
        hashes: None,
        signed: None,
    }
}

/// The sink can read back the image the node runs, `size` bytes of it.
fn can_read_current(sink: &mut dyn FirmwareSink, size: u64) -> bool {
    let mut last = [0u8; 1];
    size > 0 && sink.read_current(size - 1, &mut last).is_ok()
}

/// Builds chunk `i` from the source (distributor) or the sink (a target holding it: the
/// image being received, or the one it runs once applied).
fn build_chunk(
    r: &mut Rollout,
    me: u32,
    via: Via,
    i: u32,
    sink: &mut dyn FirmwareSink,
) -> Option<Vec<u8>> {
    let (offset, len) = r.m.chunk_range(i);
    let mut bytes = vec![0u8; len];
    let compress = match &mut r.role {
        Role::Distributor(d) => {
            let n = d.source.read_at(offset, &mut bytes).ok()?;
            if n != len {
                return None;
            }
            d.compress
        }
        Role::Target if r.phase == Phase::Applied => {
            sink.read_current(offset, &mut bytes).ok()?;
            repair_compressor(&r.m)
        }
        Role::Target => {
            sink.read_at(offset, &mut bytes).ok()?;
            repair_compressor(&r.m)
        }
        Role::Relay => return None,
    };
    // A signed rollout's chunks carry no CRC: every node checks their digest instead.
    let crc = r.signed.is_none();
    Some(wire::encode_chunk_with(
        me, via, r.m.id, i, &bytes, compress, crc,
    ))
}

/// How a target compresses the chunks it serves as a repair source. With `compact`
/// (microcontrollers) it sends the image bytes as they are: a CHUNK's `z` flag says whether
/// its payload is deflated, so receivers take either, and a receiver-only firmware links no
/// DEFLATE compressor (about 7 KB on riscv32imc).
fn repair_compressor(m: &Manifest) -> Option<wire::Compressor> {
    #[cfg(feature = "compact")]
    {
        let _ = m;
        None
    }
    #[cfg(not(feature = "compact"))]
    {
        (m.compression == Compression::Deflate)
            .then_some(crate::codec::deflate_chunk as wire::Compressor)
    }
}
