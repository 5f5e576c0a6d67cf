//! [`Ota`]: the node plugin that puts it all together — classic distributor, a classic
//! receiver (pmesh's or the stock behaviour), and the pmesh-protocol agent — over one
//! firmware sink and one store.

use alloc::boxed::Box;
use alloc::string::String;

use pmesh_node::{ConnectionChange, Context, Handled, Incoming, Instant, Plugin};
use pmesh_proto::Envelope;
use pmesh_proto::message::types;
use pmesh_proto::ota::{Announce, Data, DataRequest};
use pmesh_proto::packages::types::{ENHANCED_STATUS, ENHANCED_STATUS_PHASE2};

use crate::classic::distributor::ClassicServing;
use crate::classic::{
    AnnounceSchedule, ClassicDistributor, ClassicDistributorStats, ClassicReceiver, ClassicTuning,
    ReferenceReceiver,
};
use crate::event::{OtaEvent, Refusal, TransferId};
use crate::io::{FirmwareSink, OtaStore};
use crate::offer::{Offer, Protocol};
use crate::pmesh::{PmeshAgent, PmeshTuning, wire};

/// How this node takes classic (painlessMesh) OTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicReceiverKind {
    /// pmesh's receiver: out-of-order chunks, own-id requests, broadcast that starts, gzip.
    Pmesh,
    /// The stock painlessMesh receiver, bugs included (for simulating mixed meshes).
    Reference,
    /// Ignore classic offers.
    Off,
}

/// Configuration of the [`Ota`] plugin.
#[derive(Clone, Debug)]
pub struct OtaConfig {
    /// This node's role (compared exactly with offers).
    pub role: String,
    /// This node's hardware (compared exactly with offers).
    pub hardware: String,
    /// Classic receiver behaviour.
    pub classic_receiver: ClassicReceiverKind,
    /// Install pmesh-protocol rollouts (false: relay them only).
    pub pmesh_receiver: bool,
    /// Classic receiver timers and window.
    pub classic: ClassicTuning,
    /// Classic distributor announce schedule.
    pub announce: AnnounceSchedule,
    /// pmesh protocol knobs.
    pub pmesh: PmeshTuning,
    /// Signed firmware: trusted keys, whether unsigned rollouts are taken.
    pub trust: crate::pmesh::TrustConfig,
}

impl OtaConfig {
    /// A pmesh node of `role` on `hardware` with every default.
    pub fn new(role: impl Into<String>, hardware: impl Into<String>) -> Self {
        OtaConfig {
            role: role.into(),
            hardware: hardware.into(),
            classic_receiver: ClassicReceiverKind::Pmesh,
            pmesh_receiver: true,
            classic: ClassicTuning::default(),
            announce: AnnounceSchedule::default(),
            pmesh: PmeshTuning::default(),
            trust: crate::pmesh::TrustConfig::default(),
        }
    }

    /// A node behaving like a stock painlessMesh receiver (classic OTA only, no pmesh protocol).
    pub fn stock(role: impl Into<String>, hardware: impl Into<String>) -> Self {
        OtaConfig {
            classic_receiver: ClassicReceiverKind::Reference,
            pmesh_receiver: false,
            ..OtaConfig::new(role, hardware)
        }
    }
}

// One per node, never moved around: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum ClassicRx {
    Pmesh(ClassicReceiver),
    Reference(ReferenceReceiver),
    Off,
}

/// The OTA plugin. `S` receives images, `T` remembers progress; both survive reboots when the
/// host keeps them (the memory implementations are shared handles).
///
/// Drive it through the node: `node.with_plugin(now, |ota, ctx| ota.offer(ctx, offer))`.
#[derive(Debug)]
pub struct Ota<S: FirmwareSink, T: OtaStore> {
    cfg: OtaConfig,
    sink: S,
    store: T,
    /// Made by the first classic offer (see [`ClassicServing`] for why it is a trait object).
    classic_tx: Option<Box<dyn ClassicServing>>,
    classic_rx: ClassicRx,
    pmesh: PmeshAgent,
    booted: bool,
    /// A stock node speaks no pmesh protocol at all (it neither relays nor answers HELLO).
    speaks_pmesh: bool,
    /// Classic frames (10, 11, 12) refused for an out-of-range field (see [`classic_fields_valid`]).
    classic_rejected: u64,
}

impl<S: FirmwareSink, T: OtaStore> Ota<S, T> {
    /// A plugin over `sink` and `store`. It reads the store (current image, a transfer to
    /// resume) on its first callback.
    pub fn new(cfg: OtaConfig, sink: S, store: T) -> Self {
        let classic_rx = match cfg.classic_receiver {
            ClassicReceiverKind::Pmesh => ClassicRx::Pmesh(
                ClassicReceiver::new(cfg.role.clone(), cfg.hardware.clone(), cfg.classic)
                    .signed_only(has_trusted_key(&cfg.trust)),
            ),
            ClassicReceiverKind::Reference => ClassicRx::Reference(ReferenceReceiver::new(
                cfg.role.clone(),
                cfg.hardware.clone(),
            )),
            ClassicReceiverKind::Off => ClassicRx::Off,
        };
        let speaks_pmesh = cfg.classic_receiver != ClassicReceiverKind::Reference;
        Ota {
            classic_tx: None,
            pmesh: PmeshAgent::new(
                cfg.role.clone(),
                cfg.hardware.clone(),
                cfg.pmesh_receiver,
                cfg.pmesh,
            )
            .with_trust(cfg.trust.clone()),
            classic_rx,
            cfg,
            sink,
            store,
            booted: false,
            speaks_pmesh,
            classic_rejected: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OtaConfig {
        &self.cfg
    }

    /// The firmware sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The store.
    pub fn store(&self) -> &T {
        &self.store
    }

    /// The classic distributor; None until this node has offered a classic image.
    pub fn classic_distributor(&self) -> Option<&ClassicDistributor> {
        self.classic_tx.as_deref().map(ClassicServing::distributor)
    }

    /// The classic distributor's counters (all zero before the first classic offer).
    pub fn classic_stats(&self) -> ClassicDistributorStats {
        self.classic_distributor()
            .map_or_else(Default::default, ClassicDistributor::stats)
    }

    /// pmesh's classic receiver, if this node uses it.
    pub fn classic_receiver(&self) -> Option<&ClassicReceiver> {
        match &self.classic_rx {
            ClassicRx::Pmesh(r) => Some(r),
            _ => None,
        }
    }

    /// The stock-behaviour receiver, if this node uses it.
    pub fn reference_receiver(&self) -> Option<&ReferenceReceiver> {
        match &self.classic_rx {
            ClassicRx::Reference(r) => Some(r),
            _ => None,
        }
    }

    /// Classic OTA frames (Announce, DataRequest, Data) dropped because a numeric field was
    /// missing, not a number, outside u32 (negative, or 2^32 and above, which the reference's
    /// lenient read would take as 0), or `partNo` was not below `noPart`.
    pub fn classic_frames_rejected(&self) -> u64 {
        self.classic_rejected
    }

    /// The pmesh-protocol agent.
    pub fn pmesh(&self) -> &PmeshAgent {
        &self.pmesh
    }

    /// Largest receiver tracking state held now (classic or pmesh), bytes.
    pub fn tracking_bytes(&self) -> usize {
        let classic = match &self.classic_rx {
            ClassicRx::Pmesh(r) => r.tracking_bytes(),
            _ => 0,
        };
        classic.max(self.pmesh.tracking_bytes())
    }

    /// Offers an image to the mesh from this node (the distributor API).
    pub fn offer(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        mut offer: Offer,
    ) -> Result<TransferId, Refusal> {
        self.ensure_booted(ctx);
        match offer.protocol {
            Protocol::Classic => {
                self.check_classic_trust(&mut offer)?;
                let prepared = offer.prepare_classic()?;
                let schedule = self.cfg.announce;
                let tx = self
                    .classic_tx
                    .get_or_insert_with(|| Box::new(ClassicDistributor::new(schedule)));
                Ok(tx.offer(ctx, prepared))
            }
            Protocol::Pmesh => self.pmesh.offer(ctx, offer),
        }
    }

    /// Stock nodes check only MD5: a node that requires signed firmware serves them only the
    /// image of a bundle it verified ([`Offer::from_bundle`]), unless unsigned is allowed.
    fn check_classic_trust(&self, offer: &mut Offer) -> Result<(), Refusal> {
        let Some(signed) = &offer.signed else {
            if self.cfg.trust.requires_signed() {
                return Err(Refusal::Untrusted {
                    code: "unsigned",
                    reason: "classic serving needs a verified bundle (or allow_unsigned)".into(),
                });
            }
            return Ok(());
        };
        let mut sha = crate::codec::Sha256Hasher::default();
        let mut buf = alloc::vec![0u8; 16 * 1024];
        let mut at = 0;
        while at < offer.image.len() {
            let n = offer.image.read_at(at, &mut buf)?;
            if n == 0 {
                return Err(Refusal::BadOffer("image source ended early"));
            }
            sha.update(&buf[..n]);
            at += n as u64;
        }
        if sha.finish_hex() != signed.sha256_hex() {
            return Err(Refusal::BadOffer(
                "image does not match the signed manifest",
            ));
        }
        Ok(())
    }

    /// Sets the apply time (mesh µs) of the pmesh rollout this node distributes.
    pub fn apply_at(&mut self, ctx: &mut Context<'_, OtaEvent>, mesh_time: u32) -> bool {
        self.pmesh.apply_at(ctx, mesh_time)
    }

    /// Cancels the pmesh rollout this node distributes.
    pub fn cancel_pmesh(&mut self, ctx: &mut Context<'_, OtaEvent>) -> bool {
        self.pmesh.cancel(ctx)
    }

    /// Stops announcing and serving a classic image.
    pub fn cancel_classic(&mut self, md5: &str) -> bool {
        self.classic_tx.as_mut().is_some_and(|tx| tx.cancel(md5))
    }

    fn classic_busy(&self) -> bool {
        match &self.classic_rx {
            ClassicRx::Pmesh(r) => r.active().is_some(),
            _ => false,
        }
    }

    /// The pmesh agent holds the sink: receiving an image, or holding a verified one staged
    /// until its apply time. Classic offers are refused meanwhile: a classic transfer would
    /// reopen the shared sink, and the apply would then commit its bytes as the verified image.
    fn pmesh_busy(&self) -> bool {
        use crate::event::Phase;
        self.pmesh
            .status()
            .is_some_and(|s| s.target && matches!(s.phase, Phase::Distribute | Phase::Verified))
    }

    fn ensure_booted(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        if self.booted {
            return;
        }
        self.booted = true;
        match &mut self.classic_rx {
            ClassicRx::Pmesh(r) => r.boot(ctx, &mut self.sink, &mut self.store),
            ClassicRx::Reference(r) => r.boot(&self.store),
            ClassicRx::Off => {}
        }
        if self.speaks_pmesh && !self.classic_busy() {
            self.pmesh.boot(ctx, &mut self.sink, &mut self.store);
        }
    }
}

impl<S: FirmwareSink, T: OtaStore> Plugin for Ota<S, T> {
    // Relays check what they forward only for signed rollouts: without the feature there is
    // nothing to check, and the default (admit everything) costs no flash.
    #[cfg(feature = "signature")]
    fn admit(&mut self, ctx: &mut Context<'_, OtaEvent>, frame: &Incoming<'_>) -> bool {
        if !self.speaks_pmesh || !(wire::HELLO..=wire::PAGE).contains(&frame.envelope.ty) {
            return true;
        }
        self.ensure_booted(ctx);
        self.pmesh.admit(ctx, frame)
    }

    type Event = OtaEvent;

    fn on_frame(&mut self, ctx: &mut Context<'_, OtaEvent>, frame: &Incoming<'_>) -> Handled {
        self.ensure_booted(ctx);
        let env = frame.envelope;
        if matches!(
            env.ty,
            types::OTA_ANNOUNCE | types::OTA_DATA_REQUEST | types::OTA_DATA
        ) && !classic_fields_valid(env)
        {
            self.classic_rejected += 1;
            return Handled::Yes;
        }
        match env.ty {
            types::OTA_ANNOUNCE => {
                let a = Announce::from_envelope(env);
                let busy = self.pmesh_busy();
                match &mut self.classic_rx {
                    ClassicRx::Pmesh(r) => {
                        r.on_announce(ctx, a, &mut self.sink, &mut self.store, busy)
                    }
                    ClassicRx::Reference(r) => r.on_announce(ctx, &a),
                    ClassicRx::Off => {}
                }
                Handled::Yes
            }
            types::OTA_DATA_REQUEST => {
                if let Some(tx) = self
                    .classic_tx
                    .as_mut()
                    .filter(|_| env.dest == ctx.node_id())
                {
                    tx.on_request(ctx, &DataRequest::from_envelope(env));
                }
                Handled::Yes
            }
            types::OTA_DATA => {
                let d = Data::from_envelope(env);
                match &mut self.classic_rx {
                    ClassicRx::Pmesh(r) => r.on_data(ctx, &d, &mut self.sink, &mut self.store),
                    ClassicRx::Reference(r) => r.on_data(ctx, &d, &mut self.sink, &mut self.store),
                    ClassicRx::Off => {}
                }
                Handled::Yes
            }
            // Stock nodes' status reports: their firmware MD5 feeds push decisions. Left
            // unhandled, so the application still sees the package.
            ENHANCED_STATUS | ENHANCED_STATUS_PHASE2 => {
                if let Some(tx) = self.classic_tx.as_mut() {
                    tx.on_status(ctx, env);
                }
                Handled::No
            }
            wire::HELLO..=wire::PAGE => {
                if self.speaks_pmesh {
                    let busy = self.classic_busy();
                    self.pmesh
                        .on_frame(ctx, frame, &mut self.sink, &mut self.store, busy);
                    Handled::Yes
                } else {
                    Handled::No
                }
            }
            _ => Handled::No,
        }
    }

    fn on_connection(&mut self, ctx: &mut Context<'_, OtaEvent>, change: ConnectionChange) {
        self.ensure_booted(ctx);
        if let Some(tx) = self.classic_tx.as_mut() {
            tx.on_topology(ctx);
        }
        if !self.speaks_pmesh {
            return;
        }
        match change {
            ConnectionChange::New { conn, .. } => {
                self.pmesh.on_new_connection(ctx, conn);
                self.pmesh.on_topology(ctx);
            }
            ConnectionChange::Dropped { conn, .. } => {
                self.pmesh
                    .on_dropped(ctx, conn, &mut self.sink, &mut self.store)
            }
            ConnectionChange::Topology => self.pmesh.on_topology(ctx),
        }
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        self.ensure_booted(ctx);
        let now = ctx.now();
        if let Some(tx) = self.classic_tx.as_mut()
            && tx.poll_timeout().is_some_and(|t| t <= now)
        {
            tx.on_timeout(ctx);
        }
        match &mut self.classic_rx {
            ClassicRx::Pmesh(r) if r.poll_timeout().is_some_and(|t| t <= now) => r.on_timeout(ctx),
            ClassicRx::Reference(r) if r.poll_timeout().is_some_and(|t| t <= now) => {
                r.on_timeout(ctx)
            }
            _ => {}
        }
        if self.speaks_pmesh && self.pmesh.poll_timeout().is_some_and(|t| t <= now) {
            self.pmesh.on_timeout(ctx, &mut self.sink, &mut self.store);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.booted {
            return Some(Instant::ZERO);
        }
        let rx = match &self.classic_rx {
            ClassicRx::Pmesh(r) => r.poll_timeout(),
            ClassicRx::Reference(r) => r.poll_timeout(),
            ClassicRx::Off => None,
        };
        [
            self.classic_tx.as_ref().and_then(|tx| tx.poll_timeout()),
            rx,
            if self.speaks_pmesh {
                self.pmesh.poll_timeout()
            } else {
                None
            },
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// A node with a trusted key refuses classic OTA altogether: a classic image carries only an
/// MD5, which nothing signed vouches for (docs/ota.md, "Classic OTA and stock nodes").
fn has_trusted_key(trust: &crate::pmesh::TrustConfig) -> bool {
    #[cfg(feature = "signature")]
    {
        !trust.keys.is_empty()
    }
    #[cfg(not(feature = "signature"))]
    {
        let _ = trust;
        false
    }
}

/// A numeric field of a classic OTA frame, if it holds an integer in u32 range. The typed
/// decoders read like the reference (`as<size_t>()`), where a value out of range reads 0; a
/// `partNo` of 2^32 would then be taken as part 0 and fix the chunk size of a real transfer.
fn u32_field(env: &Envelope, key: &str) -> Option<u32> {
    let v = env.get(key)?.to_i64_lenient()?;
    u32::try_from(v).ok()
}

/// Whether a classic OTA frame's numbers are in range: `noPart` in every kind, and in a
/// DataRequest or Data a `partNo` below `noPart`. Stock nodes always send both as integers.
fn classic_fields_valid(env: &Envelope) -> bool {
    let Some(no_part) = u32_field(env, "noPart") else {
        return false;
    };
    if env.ty == types::OTA_ANNOUNCE {
        return true;
    }
    u32_field(env, "partNo").is_some_and(|p| p < no_part)
}
