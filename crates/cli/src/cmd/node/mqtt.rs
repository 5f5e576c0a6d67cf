//! `pmesh node --mqtt`: the MQTT status bridge ([`pmesh_bridge`]) in the gateway process.
//!
//! **Where this glue lives, and why.** It is part of the `pmesh` command, not of either
//! library: pmesh-net (the Linux node runtime) stays free of MQTT, TLS and HTTP, so a node
//! that only relays pulls in none of rumqttc, rustls or axum, and pmesh-bridge stays free of
//! the Linux runtime (`pmesh demo` feeds the same bridge from the simulator). The command is
//! where the two are composed; the settings (flags over `pmesh.toml`'s `[mqtt]` section over
//! defaults) are resolved by [`pmesh_config::resolve_mqtt`] from [`MqttArgs::flags`]. Nothing here reaches into either crate's internals: the
//! mesh is read through [`MeshHandle`] and its event hook, OTA goes through the same
//! [`pmesh_net::ota::run_push`] that `pmesh ota push` uses.
//!
//! What flows where:
//! - mesh → bridge: every received user message and package (an event hook on the mesh
//!   thread: none missed), the tree after every topology change (and every 5 s anyway), the
//!   node's and its links' counters every 5 s, and the progress of firmware campaigns: those
//!   requested over MQTT (`bridge/request/ota/start`) and those started with `pmesh ota push`
//!   against this node's control endpoint ([`MqttBridge::routes`] serves `ota_push` as
//!   pmesh-net does, and also reports the push to the bridge). One campaign at a time is
//!   shown; a push started while another runs works as usual but is not shown.
//! - bridge → mesh: [`NetGateway`] implements [`pmesh_bridge::Gateway`]: sends, broadcasts,
//!   OTA start and abort, each checked at once and queued onto the mesh thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use pmesh_bridge::gateway::check_single_dest;
use pmesh_bridge::{
    Bridge, BridgeConfig, BridgeHandle, Gateway, GatewayError, LinkStats, OtaMode, OtaProgress,
    OtaStart,
};
use pmesh_net::MeshEvent;
use pmesh_net::MeshHandle;
use pmesh_net::control::{ControlServer, Reply, Request};
use pmesh_net::ota::{OtaHost, Outcome, PushItem, PushMode, PushOptions, run_push};
use pmesh_node::Event;
use pmesh_ota::pmesh::TrustConfig;
use pmesh_ota::signed::TrustError;
use pmesh_ota::{Mode, RolloutPhase};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

/// How often the tree and the counters are read even without a change.
const REFRESH: Duration = Duration::from_secs(5);
/// Most one-way delay measurements remembered (one per node measured).
const MAX_DELAYS: usize = 1024;
/// How long a stopping node waits for the bridge to publish `offline` and disconnect.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// `pmesh node`'s MQTT flags (each overrides the same key of `[mqtt]`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct MqttArgs {
    /// Publish the mesh to this MQTT broker: `mqtt://[user[:password]@]host[:port]`, or
    /// `mqtts://...` for TLS (with --mqtt-ca) [default: off].
    #[arg(long = "mqtt", value_name = "URL")]
    pub url: Option<String>,
    /// Broker user name.
    #[arg(long = "mqtt-user", value_name = "USER")]
    pub user: Option<String>,
    /// Broker password [default: $PMESH_MQTT_PASSWORD]. The variable or `[mqtt] password`
    /// keep it out of `ps`.
    #[arg(long = "mqtt-password", value_name = "PASSWORD")]
    pub password: Option<String>,
    /// TLS: PEM file of the CA that signed the broker's certificate (needs mqtts://).
    #[arg(long = "mqtt-ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: PEM client certificate chain, for brokers that require one (with --mqtt-key).
    #[arg(long = "mqtt-cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// TLS: PEM private key of --mqtt-cert.
    #[arg(long = "mqtt-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// MQTT client id [default: pmesh-<node id>].
    #[arg(long = "mqtt-client-id", value_name = "ID")]
    pub client_id: Option<String>,
    /// Base topic [default: mesh].
    #[arg(long = "mqtt-prefix", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// How often the status snapshot is republished, e.g. `30s` [default: 30s]; changes are
    /// published as they happen regardless.
    #[arg(long = "mqtt-interval", value_name = "DURATION")]
    pub interval: Option<String>,
    /// Directory for the bridge's durable outbox and session counter, or `none` (memory only)
    /// [default: $XDG_STATE_HOME/pmesh/bridge-<node id>].
    #[arg(long = "mqtt-state-dir", value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Serve Prometheus metrics on `http://ADDR/metrics`, e.g. `127.0.0.1:9464` (needs --mqtt).
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl MqttArgs {
    /// The values, for [`pmesh_config::resolve_mqtt`].
    pub fn flags(&self) -> pmesh_config::MqttFlags {
        pmesh_config::MqttFlags {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_id: self.client_id.clone(),
            prefix: self.prefix.clone(),
            interval: self.interval.clone(),
            state_dir: self.state_dir.clone(),
            metrics_listen: self.metrics_listen.clone(),
        }
    }
}

// --- running ---------------------------------------------------------------------------------

/// What the event hook, the feeder tasks and the gateway share.
#[derive(Debug, Default)]
struct Shared {
    /// The bridge, once started; taken at shutdown.
    bridge: Mutex<Option<BridgeHandle>>,
    /// Set by the hook on every connection or topology change.
    topology_changed: Notify,
    /// The other nodes the gateway reaches (refreshed with the tree).
    nodes: Mutex<Vec<u32>>,
    /// Last one-way delay per measured node, µs.
    delays: Mutex<BTreeMap<u32, u32>>,
    /// The campaign shown on MQTT, if one runs.
    campaign: Mutex<Option<CampaignRun>>,
    /// Last campaign id given to a push started on the control endpoint.
    last_campaign: AtomicU64,
    /// Highest signed sequence this gateway started an MQTT campaign with, per (role,
    /// hardware) (at most [`MAX_CLASSES`]): an older bundle is refused as a rollback.
    offered: Mutex<BTreeMap<Class, u64>>,
}

/// Classes whose last offered sequence the gateway remembers.
const MAX_CLASSES: usize = 256;

/// A firmware class: (role, hardware).
type Class = (String, String);

impl Shared {
    fn with_bridge(&self, f: impl FnOnce(&BridgeHandle)) {
        if let Some(b) = self
            .bridge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(b);
        }
    }

    /// Makes `id` the campaign shown on MQTT, unless one runs; returns its abort signal.
    fn claim_campaign(&self, id: u64) -> Result<oneshot::Receiver<()>, u64> {
        let mut slot = self.campaign.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Err(c.id);
        }
        let (tx, rx) = oneshot::channel();
        *slot = Some(CampaignRun {
            id,
            cancel: Some(tx),
        });
        Ok(rx)
    }

    fn release_campaign(&self, id: u64) {
        let mut slot = self.campaign.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| c.id == id) {
            *slot = None;
        }
    }

    /// A campaign id for a push started here: epoch ms, strictly increasing.
    fn next_campaign_id(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut last = self.last_campaign.load(Ordering::Relaxed);
        loop {
            let id = now.max(last + 1);
            match self.last_campaign.compare_exchange(
                last,
                id,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return id,
                Err(l) => last = l,
            }
        }
    }
}

/// The bridge of one `pmesh node`, before the node runs: make the event hook, then
/// [`MqttBridge::start`] it with the node's handle.
#[derive(Debug)]
pub struct MqttBridge {
    cfg: BridgeConfig,
    node_id: u32,
    shared: Arc<Shared>,
    trust: TrustConfig,
}

impl MqttBridge {
    /// A bridge for node `node_id` with this configuration.
    pub fn new(cfg: BridgeConfig, node_id: u32) -> Self {
        MqttBridge {
            cfg,
            node_id,
            shared: Arc::default(),
            trust: TrustConfig::default(),
        }
    }

    /// The node's trust configuration: `ota/start` checks bundles against it (and refuses
    /// plain images when it has keys) before anything is announced.
    pub fn with_trust(mut self, trust: TrustConfig) -> Self {
        self.trust = trust;
        self
    }

    /// The hook to register with [`pmesh_net::MeshBuilder::on_event`]: forwards every message
    /// and package, records delay measurements and signals topology changes. Runs on the mesh
    /// thread and never blocks (the bridge's queues are non-blocking).
    pub fn hook<E: Send + Sync + 'static>(&self) -> impl FnMut(&MeshEvent<E>) + Send + 'static {
        let shared = self.shared.clone();
        move |ev| match ev {
            MeshEvent::Node(Event::Received {
                from,
                msg,
                broadcast,
            }) => shared.with_bridge(|b| b.message(*from, msg.clone(), *broadcast)),
            MeshEvent::Node(Event::Package { envelope, .. }) => {
                shared.with_bridge(|b| b.package(envelope.clone()));
            }
            MeshEvent::Node(
                Event::NewConnection { .. }
                | Event::DroppedConnection { .. }
                | Event::ChangedConnections,
            ) => shared.topology_changed.notify_one(),
            MeshEvent::Node(Event::Delay { node_id, delay_us }) => {
                let mut d = shared.delays.lock().unwrap_or_else(|e| e.into_inner());
                if d.len() < MAX_DELAYS || d.contains_key(node_id) {
                    d.insert(*node_id, *delay_us);
                }
            }
            _ => {}
        }
    }

    /// Starts the bridge and its feeders on the current tokio runtime, once the node runs.
    /// Fails only if the bridge's state directory cannot be used.
    pub fn start<P>(self, h: MeshHandle<P>) -> anyhow::Result<Running>
    where
        P: OtaHost + Send + 'static,
        P::Sink: 'static,
        P::Store: 'static,
    {
        let b = &self.cfg.broker;
        info!(broker = %format!("{}:{}", b.host, b.port), tls = b.tls.is_some(),
            user = ?b.username, client_id = %b.client_id, prefix = %self.cfg.prefix,
            interval_s = self.cfg.publish_interval.as_secs_f64(),
            state_dir = ?self.cfg.state_dir, metrics = ?self.cfg.metrics_addr,
            "MQTT bridge starting");
        let work_dir = self
            .cfg
            .state_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let gateway = Arc::new(NetGateway {
            h: h.clone(),
            me: self.node_id,
            shared: self.shared.clone(),
            work_dir,
            trust: self.trust,
        });
        let bridge = Bridge::spawn(self.cfg, self.node_id, gateway)
            .context("cannot start the MQTT bridge")?;
        *self.shared.bridge.lock().unwrap_or_else(|e| e.into_inner()) = Some(bridge);
        let tasks = vec![
            tokio::spawn(feed_topology(h.clone(), self.shared.clone())),
            tokio::spawn(feed_stats(h, self.shared.clone())),
        ];
        Ok(Running {
            shared: self.shared,
            tasks,
        })
    }
}

/// A running bridge; [`Running::stop`] it before the node stops.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops feeding, publishes `bridge/state` offline and disconnects (bounded wait).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let bridge = self
            .shared
            .bridge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(b) = bridge
            && tokio::time::timeout(SHUTDOWN_GRACE, b.shutdown())
                .await
                .is_err()
        {
            warn!(
                "MQTT bridge: the broker did not acknowledge 'offline' in time; the last will tells it"
            );
        }
    }
}

/// The tree after every change (and every [`REFRESH`]).
async fn feed_topology<P>(h: MeshHandle<P>, shared: Arc<Shared>)
where
    P: OtaHost + Send + 'static,
{
    loop {
        let Ok((tree, nodes)) = h.call(|n, _| (n.tree(), n.node_list(false))).await else {
            return;
        };
        *shared.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
        shared.with_bridge(|b| b.topology(tree));
        tokio::select! {
            _ = shared.topology_changed.notified() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// The node's counters and its links', every [`REFRESH`].
async fn feed_stats<P>(h: MeshHandle<P>, shared: Arc<Shared>)
where
    P: OtaHost + Send + 'static,
{
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Ok(stats), Ok(snap)) = (h.call(|n, _| n.stats()).await, h.snapshot().await) else {
            return;
        };
        let links: Vec<LinkStats> = {
            let delays = shared.delays.lock().unwrap_or_else(|e| e.into_inner());
            snap.links
                .iter()
                .filter(|l| l.node_id != 0)
                .map(|l| LinkStats {
                    peer: l.node_id,
                    bytes_in: l.bytes_in,
                    bytes_out: l.bytes_out,
                    delay_us: delays.get(&l.node_id).copied(),
                })
                .collect()
        };
        shared.with_bridge(|b| {
            b.stats(stats, links);
            b.runtime_stats(snap.net_stats.counters().collect());
        });
    }
}

// --- the gateway -------------------------------------------------------------------------------

/// The campaign this gateway runs for the bridge.
#[derive(Debug)]
struct CampaignRun {
    id: u64,
    cancel: Option<oneshot::Sender<()>>,
}

/// [`pmesh_bridge::Gateway`] for a running `pmesh node`: what the bridge asks (MQTT requests
/// and commands) is checked at once and queued onto the mesh thread.
#[derive(Debug)]
pub struct NetGateway<P: OtaHost> {
    h: MeshHandle<P>,
    me: u32,
    shared: Arc<Shared>,
    /// Where images received over MQTT are written for the push (removed after it).
    work_dir: PathBuf,
    /// The node's trusted keys, for [`precheck`].
    trust: TrustConfig,
}

/// Checks an image requested over MQTT before anything is announced, so that the response
/// names the refusal: a bundle must verify against the node's keys now (unknown_key,
/// bad_signature, expired, a bad digest or image), be for the requested role and hardware
/// (wrong_class) and not be older than what this gateway last offered for that class
/// (rollback); with trusted keys a plain image is refused (unsigned). Returns the bundle's
/// class and sequence, recorded once the campaign starts.
fn precheck(
    trust: &TrustConfig,
    offered: &BTreeMap<Class, u64>,
    req: &OtaStart,
) -> Result<Option<(Class, u64)>, TrustError> {
    if !req.image.starts_with(&pmesh_ota::signed::manifest::MAGIC) {
        return match trust.keys.is_empty() {
            true => Ok(None),
            false => Err(TrustError::Unsigned),
        };
    }
    let b = pmesh_ota::signed::Bundle::parse(&req.image)?;
    let now_unix = pmesh_net::ota::wall_clock();
    b.verify(&trust.keys, now_unix)?;
    let m = &b.manifest.body;
    let class = (m.role.clone(), m.hardware.clone());
    // The nodes' own class and anti-rollback rule, with what this gateway offered standing in
    // for a confirmed sequence.
    pmesh_ota::signed::Policy {
        role: &req.role,
        hardware: &req.hardware,
        confirmed: offered.get(&class).copied(),
        now_unix,
    }
    .check(m)?;
    Ok(Some((class, m.sequence)))
}

impl<P> Gateway for NetGateway<P>
where
    P: OtaHost + Send + 'static,
    P::Sink: 'static,
    P::Store: 'static,
{
    fn send_single(&self, dest: u32, msg: Vec<u8>) -> Result<(), GatewayError> {
        check_single_dest(
            self.me,
            dest,
            &self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner()),
        )?;
        let h = self.h.clone();
        tokio::spawn(async move {
            if let Err(e) = h.send_single(dest, msg).await {
                warn!(dest, error = %e, "MQTT bridge: send failed");
            }
        });
        Ok(())
    }

    fn send_broadcast(&self, msg: Vec<u8>) -> Result<(), GatewayError> {
        let h = self.h.clone();
        tokio::spawn(async move {
            if let Err(e) = h.send_broadcast(msg, false).await {
                warn!(error = %e, "MQTT bridge: broadcast failed");
            }
        });
        Ok(())
    }

    fn ota_start(&self, req: OtaStart) -> Result<(), GatewayError> {
        let mut offered = self
            .shared
            .offered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let signed = precheck(&self.trust, &offered, &req).map_err(|e| {
            warn!(campaign = req.campaign, code = e.code(), error = %e,
                "MQTT bridge: firmware refused before any announce");
            GatewayError(format!("refused ({}): {e}", e.code()))
        })?;
        let cancel_rx = self.shared.claim_campaign(req.campaign).map_err(|id| {
            GatewayError(format!("campaign {id} is still running on this gateway"))
        })?;
        if let Some((class, seq)) = signed
            && (offered.len() < MAX_CLASSES || offered.contains_key(&class))
        {
            let e = offered.entry(class).or_insert(seq);
            *e = (*e).max(seq);
        }
        drop(offered);
        tokio::spawn(run_campaign(
            self.h.clone(),
            self.me,
            self.shared.clone(),
            self.work_dir.clone(),
            req,
            cancel_rx,
        ));
        Ok(())
    }

    fn ota_abort(&self, campaign: u64) -> Result<(), GatewayError> {
        let mut slot = self
            .shared
            .campaign
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(c) if c.id == campaign => {
                if let Some(tx) = c.cancel.take() {
                    let _ = tx.send(());
                }
                Ok(())
            }
            _ => Err(GatewayError(format!(
                "campaign {campaign} is not running on this gateway"
            ))),
        }
    }
}

/// The push options of a campaign requested over MQTT.
fn push_options(req: &OtaStart, file: PathBuf) -> PushOptions {
    let mut o = PushOptions::new(file, &req.role, &req.hardware);
    o.compressed = req.compressed;
    match req.mode {
        OtaMode::Fixed(Mode::ClassicUnicast) => o.mode = PushMode::Classic,
        OtaMode::Fixed(Mode::ClassicBroadcast) => {
            o.mode = PushMode::Classic;
            o.broadcast = true;
        }
        OtaMode::Auto => {
            o.mode = PushMode::Classic;
            o.auto = true;
        }
        OtaMode::Fixed(Mode::Pmesh) => o.mode = PushMode::Pmesh,
    }
    o
}

/// Progress of a push, as the bridge reads it.
fn progress_of(campaign: u64, item: &PushItem, bytes_seen: &mut u64) -> Vec<OtaProgress> {
    match item {
        // Targets are not known at the offer: pmesh nodes report, classic nodes request; each
        // appears with its first report.
        PushItem::Offered { .. } => vec![OtaProgress::Started {
            campaign,
            targets: Vec::new(),
        }],
        PushItem::Node(v) => vec![match v.phase {
            RolloutPhase::Installed | RolloutPhase::Served => OtaProgress::NodeDone {
                campaign,
                node: v.node,
            },
            RolloutPhase::Failed(reason) => OtaProgress::NodeFailed {
                campaign,
                node: v.node,
                reason: reason.name().into(),
            },
            RolloutPhase::Receiving | RolloutPhase::Verified | RolloutPhase::Requesting => {
                OtaProgress::Node {
                    campaign,
                    node: v.node,
                    done: u64::from(v.done),
                    total: u64::from(v.total),
                }
            }
        }],
        PushItem::Stats(s) => {
            let total = s.bytes_served + s.data_bytes_sent;
            let delta = total.saturating_sub(*bytes_seen);
            *bytes_seen = total.max(*bytes_seen);
            if delta > 0 {
                vec![OtaProgress::BytesSent { bytes: delta }]
            } else {
                Vec::new()
            }
        }
        PushItem::Finished(s) => vec![OtaProgress::Finished {
            campaign,
            aborted: s.outcome == Outcome::Cancelled,
        }],
    }
}

/// Writes the image, pushes it with [`run_push`] and reports its progress to the bridge.
async fn run_campaign<P>(
    h: MeshHandle<P>,
    me: u32,
    shared: Arc<Shared>,
    work_dir: PathBuf,
    req: OtaStart,
    cancel: oneshot::Receiver<()>,
) where
    P: OtaHost + Send + 'static,
{
    let campaign = req.campaign;
    let file = work_dir.join(format!("ota-campaign-{campaign}.bin"));
    let opts = push_options(&req, file.clone());
    info!(campaign, role = %req.role, hardware = %req.hardware, mode = req.mode.as_str(),
        bytes = req.image.len(), "MQTT bridge: firmware campaign requested");
    let write = {
        let (dir, file) = (work_dir.clone(), file.clone());
        let image = req.image;
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&file, image)
        })
        .await
    };
    let result = match write {
        Ok(Ok(())) => {
            let (tx, mut rx) = mpsc::channel::<PushItem>(256);
            let push = run_push(h, opts, tx, async move {
                let _ = cancel.await;
            });
            let follow = async {
                let mut bytes = 0;
                while let Some(item) = rx.recv().await {
                    for p in progress_of(campaign, &item, &mut bytes) {
                        shared.with_bridge(|b| b.ota(p));
                    }
                }
            };
            let (res, ()) = tokio::join!(push, follow);
            res.map(|s| s.outcome).map_err(|e| e.to_string())
        }
        Ok(Err(e)) => Err(format!("cannot write {}: {e}", file.display())),
        Err(e) => Err(e.to_string()),
    };
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(outcome) => info!(campaign, ?outcome, "MQTT bridge: firmware campaign ended"),
        Err(e) => {
            // The campaign never started on the mesh: say so on MQTT (an OTA_FAILED alert on
            // the gateway with the reason), then end it.
            warn!(campaign, error = %e, "MQTT bridge: firmware campaign could not start");
            shared.with_bridge(|b| {
                b.ota(OtaProgress::NodeFailed {
                    campaign,
                    node: me,
                    reason: format!("the gateway could not start the push: {e}"),
                });
                b.ota(OtaProgress::Finished {
                    campaign,
                    aborted: false,
                });
            });
        }
    }
    shared.release_campaign(campaign);
}

// --- pushes started on the control endpoint ----------------------------------------------------

impl MqttBridge {
    /// The control endpoint's routes: pmesh-net's OTA commands, with `ota_push` replaced by one
    /// that answers exactly the same and also shows the push on MQTT (unless another campaign
    /// is shown), where `ota/abort` can stop it.
    pub fn routes<P>(&self) -> impl FnOnce(ControlServer<P>) -> ControlServer<P> + use<P>
    where
        P: OtaHost + Send + 'static,
        P::Sink: 'static,
        P::Store: 'static,
    {
        let shared = self.shared.clone();
        move |server| {
            pmesh_net::ota::routes(server)
                .route("ota_push", move |req, h| push_route(req, h, shared.clone()))
        }
    }
}

/// The `Begun` report of a push offered from the control endpoint.
fn begun(campaign: u64, opts: &PushOptions, item: &PushItem) -> Option<OtaProgress> {
    let PushItem::Offered {
        mode,
        image_bytes,
        md5,
        ..
    } = item
    else {
        return None;
    };
    Some(OtaProgress::Begun {
        campaign,
        role: opts.role.clone(),
        hardware: opts.hardware.clone(),
        mode: OtaMode::Fixed(*mode),
        compressed: opts.compressed,
        size: *image_bytes,
        md5: md5.clone().unwrap_or_default(),
    })
}

/// `ota_push` as `pmesh_net::ota::routes` serves it (a stream of push items; closing the
/// connection cancels the push), plus the push's progress fed to the bridge.
async fn push_route<P>(req: Request, h: MeshHandle<P>, shared: Arc<Shared>) -> Reply
where
    P: OtaHost + Send + 'static,
{
    let opts: PushOptions = match serde_json::from_value(Value::Object(req.params)) {
        Ok(o) => o,
        Err(e) => return Reply::err(format!("bad ota_push parameters: {e}")),
    };
    let campaign = shared.next_campaign_id();
    let abort = shared.claim_campaign(campaign).ok();
    let shown = abort.is_some();
    let (tx, mut rx) = mpsc::channel::<PushItem>(256);
    let (items_tx, items) = mpsc::channel::<Value>(256);
    let (started_tx, started_rx) = oneshot::channel::<Result<(), String>>();
    let client_gone = Arc::new(Notify::new());
    tokio::spawn(async move {
        let gone = client_gone.clone();
        let push_opts = opts.clone();
        let sh = shared.clone();
        // Every item goes to the bridge; to the client while it is connected.
        let fwd = async move {
            let mut started = Some(started_tx);
            let mut bytes = 0;
            let mut connected = true;
            while let Some(item) = rx.recv().await {
                if let Some(s) = started.take() {
                    let _ = s.send(Ok(()));
                }
                if shown {
                    let reports = begun(campaign, &push_opts, &item)
                        .into_iter()
                        .chain(progress_of(campaign, &item, &mut bytes));
                    for p in reports {
                        sh.with_bridge(|b| b.ota(p));
                    }
                }
                if connected {
                    let v = serde_json::to_value(&item).unwrap_or(Value::Null);
                    if items_tx.send(v).await.is_err() {
                        connected = false;
                        gone.notify_one();
                    }
                }
            }
            started
        };
        // Cancelled when the client goes away or on `ota/abort` over MQTT.
        let cancel = async move {
            match abort {
                Some(abort) => tokio::select! {
                    _ = abort => {}
                    _ = client_gone.notified() => {}
                },
                None => client_gone.notified().await,
            }
        };
        let push = run_push(h, opts, tx, cancel);
        let (res, started) = tokio::join!(push, fwd);
        if let (Err(e), Some(s)) = (res, started) {
            let _ = s.send(Err(e.to_string()));
        }
        shared.release_campaign(campaign);
    });
    match started_rx.await {
        Ok(Ok(())) => Reply::Stream(items),
        Ok(Err(e)) => Reply::err(e),
        Err(_) => Reply::err("the push ended before it started"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_progress_maps_to_bridge_progress() {
        use pmesh_net::ota::{NodeView, PushStats};
        use pmesh_ota::RefusalCode;
        let view = |phase| {
            PushItem::Node(NodeView {
                node: 5,
                done: 3,
                total: 10,
                phase,
                requests: None,
                idle_s: None,
            })
        };
        let mut b = 0;
        assert_eq!(
            progress_of(9, &view(RolloutPhase::Receiving), &mut b),
            [OtaProgress::Node {
                campaign: 9,
                node: 5,
                done: 3,
                total: 10
            }]
        );
        assert_eq!(
            progress_of(9, &view(RolloutPhase::Installed), &mut b),
            [OtaProgress::NodeDone {
                campaign: 9,
                node: 5
            }]
        );
        assert!(matches!(
            &progress_of(9, &view(RolloutPhase::Failed(RefusalCode::HashMismatch)), &mut b)[..],
            [OtaProgress::NodeFailed { reason, .. }] if reason == "hash_mismatch"
        ));
        let stats = |served, data| {
            PushItem::Stats(PushStats {
                bytes_served: served,
                data_bytes_sent: data,
                ..PushStats::default()
            })
        };
        assert_eq!(
            progress_of(9, &stats(100, 0), &mut b),
            [OtaProgress::BytesSent { bytes: 100 }]
        );
        assert_eq!(
            progress_of(9, &stats(100, 50), &mut b),
            [OtaProgress::BytesSent { bytes: 50 }]
        );
        assert!(progress_of(9, &stats(100, 50), &mut b).is_empty());
    }
}
