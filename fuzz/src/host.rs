//! A host for one `pmesh_node::Node` running the OTA and status plugins, as `pmesh node` runs
//! them, driven by a fuzz script; it checks the node's invariants after every step.
//!
//! The invariants (each assert says which failed):
//! - **relayed bytes are received bytes**: every frame the node sends either is byte for byte
//!   a frame it received, or it originated it (a type the node or its plugins build; a user
//!   message only if the script asked to send it); at least as many sent frames are copies of
//!   received ones as the node counts as forwarded;
//! - **transmits are sane**: only whole frames, only to connections the node knows, nothing
//!   to a connection after telling the host to close it;
//! - **memory is bounded**: partial frames at most the frame cap per connection
//!   (`Node::buffered_bytes`), the protocol state (`Node::state_bytes`) and the whole heap
//!   (every allocation, plugins included) under fixed multiples of the caps;
//! - **timers make progress**: after the host runs a due deadline a few times, the next one
//!   is in the future;
//! - **firmware only as offered**: the sink is opened only for an offer (MANIFEST or
//!   Announce) naming this node's role and hardware, and an image is committed only if its
//!   SHA-256 is a manifest's or its MD5 an announce's (ARCHITECTURE.md invariant 8).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use pmesh_node::{
    Config, ConnId, Direction, Event, Instant, Node, StatusConfig, StatusPlugin, StatusTarget,
    Transmit,
};
use pmesh_ota::{ClassicReceiverKind, MemorySink, MemoryStore, Offer, Ota, OtaConfig, OtaEvent};
use pmesh_proto::framing::FrameDecoder;
use pmesh_proto::json::Value;
use pmesh_proto::message::types;
use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope};
use sha2::Sha256;

use crate::heap;

/// This node's id.
pub const ME: u32 = 1000;
/// Its role and hardware (offers for these open the sink).
pub const ROLE: &str = "sensor";
/// See [`ROLE`].
pub const HARDWARE: &str = "ESP32";
/// The frame cap the fuzzed node runs with: small, so that fuzz inputs reach it.
pub const MAX_FRAME: usize = 4096;
/// The firmware slot's size.
pub const SINK_CAPACITY: u64 = 64 * 1024;
/// Protocol state allowed per connection, in frame caps (the neighbour's tree flat and as a
/// NodeTree, its JSON, route entries; a 4 KiB frame of 2-byte leaves is 2,000 nodes).
pub const STATE_CAPS_PER_CONN: usize = 64;
/// Heap the whole node (plugins, sink and store included) may hold above its start.
pub const HEAP_BOUND: usize = 48 << 20;
/// Connections a script can open.
pub const CONNS: u64 = 4;

/// The plugins of the fuzzed node.
pub type Plugins = (Ota<MemorySink, MemoryStore>, StatusPlugin<OtaEvent>);

/// Node configuration knobs a script picks.
#[derive(Clone, Copy, Debug)]
pub struct Knobs(pub u8);

/// The host: the node, the clock, and what it has seen.
pub struct Host {
    /// The node.
    pub node: Node<Plugins>,
    /// Local time now.
    pub now: Instant,
    sink: MemorySink,
    heap_base: usize,
    /// A framer per connection, mirroring the node's, to know which frames it received.
    mirrors: BTreeMap<ConnId, FrameDecoder>,
    /// Every complete frame received on any connection (NUL included).
    received: HashSet<Bytes>,
    /// User messages the script asked to send (frames the node may originate).
    app_messages: HashSet<Vec<u8>>,
    /// Frames sent that were copies of received ones.
    relayed: u64,
    /// SHA-256 of every manifest and MD5 of every announce received, hex.
    offered_hashes: BTreeSet<String>,
    /// An offer for this node's role and hardware was received (or made).
    offered_here: bool,
    /// Classic compressed announces for this node: their MD5 is of the gzip stream, which the
    /// host does not rebuild; a commit under one is checked against the Installed record.
    compressed_md5s: BTreeSet<String>,
    committed: Option<Vec<u8>>,
    /// `PMESH_FUZZ_TRACE` is set: every input, frame sent and event is printed (to replay a
    /// crash and see what led to it).
    trace: bool,
    /// Everything sent, kept when [`Host::capture`] was called (the seed generator plays the
    /// other side with it).
    sent: Option<Vec<(ConnId, Bytes)>>,
}

impl Host {
    /// A node with the plugins `pmesh node` runs; `knobs` picks config variants.
    pub fn new(knobs: Knobs) -> Host {
        let k = knobs.0;
        let now = Instant::from_micros(1_000_000);
        let heap_base = heap::live();
        let mut cfg = Config::new(ME);
        cfg.max_frame = MAX_FRAME;
        cfg.root = k & 1 != 0;
        cfg.time_authority = k & 2 != 0;
        cfg.rate_discipline = k & 4 != 0;
        cfg.coalesce_syncs = k & 8 == 0;
        cfg.probe_duplicate_links = k & 16 == 0;
        if k & 32 != 0 {
            cfg.loop_grace = Duration::ZERO;
        }
        let mut ota_cfg = OtaConfig::new(ROLE, HARDWARE);
        ota_cfg.classic_receiver = match k >> 6 {
            0 | 1 => ClassicReceiverKind::Pmesh,
            2 => ClassicReceiverKind::Reference,
            _ => ClassicReceiverKind::Off,
        };
        if ota_cfg.classic_receiver == ClassicReceiverKind::Reference {
            ota_cfg.pmesh_receiver = false;
        }
        let sink = MemorySink::new(SINK_CAPACITY);
        let ota = Ota::new(ota_cfg, sink.clone(), MemoryStore::new());
        let mut status = StatusConfig::new("fuzz-1.0");
        // Reports every 30 s (the default) and the first after 1 s: each report is built and
        // parsed in full, the costliest timer of the node.
        status.first_after = Duration::from_secs(1);
        if k & 32 != 0 {
            status.target = StatusTarget::Node(2);
        }
        let node = Node::new(cfg, (ota, StatusPlugin::new(status, now)));
        Host {
            node,
            now,
            sink,
            heap_base,
            mirrors: BTreeMap::new(),
            received: HashSet::new(),
            app_messages: HashSet::new(),
            relayed: 0,
            offered_hashes: BTreeSet::new(),
            offered_here: false,
            compressed_md5s: BTreeSet::new(),
            committed: None,
            trace: std::env::var_os("PMESH_FUZZ_TRACE").is_some(),
            sent: None,
        }
    }

    fn knows(&self, conn: ConnId) -> bool {
        self.node.neighbours().any(|n| n.conn == conn)
    }

    /// A connection opens.
    pub fn connect(&mut self, conn: ConnId, direction: Direction) {
        let known = self.knows(conn);
        self.node.handle_connect(conn, self.now, direction);
        if !known {
            self.mirrors.insert(conn, FrameDecoder::new(MAX_FRAME));
        }
        self.settle();
    }

    /// A connection closes under the node.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.node.handle_disconnect(conn, self.now);
        self.settle();
    }

    /// The application closes a connection.
    pub fn close(&mut self, conn: ConnId) {
        self.node.close(conn, self.now);
        self.settle();
    }

    /// Bytes arrive on a connection.
    pub fn bytes(&mut self, conn: ConnId, data: &[u8]) {
        if self.knows(conn) {
            let mirror = self
                .mirrors
                .entry(conn)
                .or_insert_with(|| FrameDecoder::new(MAX_FRAME));
            let mut frames = Vec::new();
            mirror.push(data, |f| {
                if let Ok(frame) = f {
                    frames.push(frame);
                }
            });
            for frame in frames {
                self.note_received(&frame);
                self.received.insert(frame);
            }
        }
        if self.trace {
            eprintln!("{:>12} in  {conn:?} {}", self.now.as_micros(), lossy(data));
        }
        self.node.handle_bytes(conn, self.now, data);
        self.settle();
    }

    /// Time passes: every deadline on the way is run, as a host's timer would (at most
    /// `max_steps` of them; the clock then jumps to the end).
    pub fn advance(&mut self, by: Duration, max_steps: usize) {
        let end = self.now + by;
        for _ in 0..max_steps {
            match self.node.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.run_timers();
                }
                _ => break,
            }
        }
        self.now = end;
        self.run_timers();
    }

    /// The application sends a SINGLE.
    pub fn send_single(&mut self, dest: u32, msg: &[u8]) {
        self.app_messages.insert(msg.to_vec());
        let _ = self.node.send_single(self.now, dest, msg.to_vec());
        self.settle();
    }

    /// The application broadcasts.
    pub fn send_broadcast(&mut self, msg: &[u8], include_self: bool) {
        self.app_messages.insert(msg.to_vec());
        let _ = self
            .node
            .send_broadcast(self.now, msg.to_vec(), include_self);
        self.settle();
    }

    /// The application measures the delay to `dest`.
    pub fn delay_meas(&mut self, dest: u32) {
        let _ = self.node.start_delay_meas(self.now, dest);
        self.settle();
    }

    /// This node offers firmware.
    pub fn offer(&mut self, offer: Offer) {
        let _ = self
            .node
            .with_plugin(self.now, |(ota, _), ctx| ota.offer(ctx, offer));
        self.settle();
    }

    /// This node sets the apply time of its rollout, or cancels it.
    pub fn apply_or_cancel(&mut self, apply_in_ms: Option<u32>) {
        self.node
            .with_plugin(self.now, |(ota, _), ctx| match apply_in_ms {
                Some(ms) => {
                    let at = ctx.mesh_time().wrapping_add(ms.wrapping_mul(1000));
                    ota.apply_at(ctx, at);
                }
                None => {
                    ota.cancel_pmesh(ctx);
                }
            });
        self.settle();
    }

    /// Root and time authority change.
    pub fn set_flags(&mut self, root: bool, authority: bool) {
        self.node.set_root(self.now, root);
        self.node.set_time_authority(self.now, authority);
        self.settle();
    }

    /// Runs the due timers a few times: a host calls `handle_timeout` when the deadline has
    /// passed, and after that the deadline must have moved on.
    fn run_timers(&mut self) {
        let stats = self.node.stats();
        self.node
            .with_plugin(self.now, |(_, status), _| status.set_node_stats(stats));
        for _ in 0..4 {
            match self.node.poll_timeout() {
                Some(t) if t <= self.now => self.node.handle_timeout(self.now),
                _ => break,
            }
            self.drain();
        }
        if let Some(t) = self.node.poll_timeout() {
            assert!(
                t > self.now,
                "deadline {t:?} still due at {:?} after four handle_timeout calls",
                self.now
            );
        }
        self.settle();
    }

    /// After every input: drain, then check memory and firmware.
    fn settle(&mut self) {
        self.drain();
        self.mirrors
            .retain(|c, _| self.node.neighbours().any(|n| n.conn == *c));
        self.check_memory();
        self.check_firmware();
    }

    /// Drains transmits and events, checking each transmit.
    fn drain(&mut self) {
        let mut open: BTreeSet<ConnId> = self.node.neighbours().map(|n| n.conn).collect();
        open.extend(self.mirrors.keys().copied());
        let mut closed = BTreeSet::new();
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Send { conn, data } => {
                    if self.trace {
                        eprintln!("{:>12} out {conn:?} {}", self.now.as_micros(), lossy(&data));
                    }
                    assert!(!closed.contains(&conn), "send to {conn:?} after closing it");
                    assert!(open.contains(&conn), "send to unknown {conn:?}");
                    self.check_sent(&data);
                    if let Some(sent) = &mut self.sent {
                        sent.push((conn, data));
                    }
                }
                Transmit::Close { conn, .. } => {
                    closed.insert(conn);
                }
            }
        }
        while let Some(ev) = self.node.poll_event() {
            if self.trace {
                eprintln!("{:>12} event {ev:?}", self.now.as_micros());
            }
            if let Event::Plugin(OtaEvent::Installed { image, .. }) = ev {
                self.check_installed(&image.md5, &image.sha256);
            }
        }
        assert!(
            self.relayed >= self.node.stats().forwarded,
            "node counts {} frames forwarded, only {} left as received",
            self.node.stats().forwarded,
            self.relayed
        );
    }

    /// One `Transmit::Send`: whole frames, each relayed unchanged or originated here.
    fn check_sent(&mut self, data: &Bytes) {
        assert_eq!(data.last(), Some(&0), "send not ending a frame");
        let mut start = 0;
        for end in memchr_all(data) {
            let frame = data.slice(start..=end);
            start = end + 1;
            if self.received.contains(&frame) {
                self.relayed += 1;
                continue;
            }
            let json = &frame[..frame.len() - 1];
            assert!(!json.is_empty(), "empty frame sent");
            let env = Envelope::parse(json, DEFAULT_MAX_DEPTH).unwrap_or_else(|e| {
                panic!("node sent a frame it cannot parse ({e}): {}", lossy(json))
            });
            let originated = match env.ty {
                types::TIME_DELAY..=types::NODE_SYNC_REPLY => true,
                types::OTA_ANNOUNCE..=types::OTA_DATA => true,
                710..=716 => true,
                203 | 604 => true,
                types::BROADCAST | types::SINGLE => env
                    .get("msg")
                    .is_some_and(|m| self.app_messages.contains(&m.to_text())),
                _ => false,
            };
            assert!(
                originated,
                "frame sent is neither received nor originated here: {}",
                lossy(json)
            );
        }
    }

    /// Notes the offers in a received frame (for the firmware invariants).
    fn note_received(&mut self, frame: &[u8]) {
        let json = &frame[..frame.len() - 1];
        if !(memmem(json, b"sha256") || memmem(json, b"md5")) {
            return;
        }
        let Ok(env) = Envelope::parse(json, DEFAULT_MAX_DEPTH) else {
            return;
        };
        let text = |k: &str| match env.get(k) {
            Some(Value::String(s)) => String::from_utf8_lossy(s).into_owned(),
            Some(v) => String::from_utf8_lossy(&v.to_text()).into_owned(),
            None => "null".into(),
        };
        let hash = match env.ty {
            types::OTA_ANNOUNCE | types::OTA_DATA_REQUEST | types::OTA_DATA => text("md5"),
            711 => text("sha256"),
            _ => return,
        };
        let ours = text("role") == ROLE && text("hardware") == HARDWARE;
        if ours {
            self.offered_here = true;
            if env.get("compressed").and_then(Value::as_bool) == Some(true) {
                self.compressed_md5s.insert(hash.clone());
            }
        }
        self.offered_hashes.insert(hash);
    }

    fn check_memory(&self) {
        let conns = self.node.neighbours().count();
        assert!(
            self.node.buffered_bytes() <= conns * MAX_FRAME,
            "{} bytes of partial frames on {conns} connections",
            self.node.buffered_bytes()
        );
        let state = self.node.state_bytes();
        let bound = 64 * 1024 + conns * STATE_CAPS_PER_CONN * MAX_FRAME;
        assert!(state <= bound, "state {state} bytes, bound {bound}");
        let used = heap::live().saturating_sub(self.heap_base);
        assert!(used <= HEAP_BOUND, "heap {used} bytes, bound {HEAP_BOUND}");
    }

    fn check_firmware(&mut self) {
        if self.sink.stats().begins > 0 {
            assert!(
                self.offered_here,
                "sink opened without an offer for this node"
            );
        }
        let booted = self.sink.booted();
        if booted.is_some() && booted != self.committed {
            let image = booted.expect("checked");
            let sha = hex(&Sha256::digest(&image));
            let md5 = hex(&Md5::digest(&image));
            assert!(
                self.offered_hashes.contains(&sha)
                    || self.offered_hashes.contains(&md5)
                    || !self.compressed_md5s.is_empty(),
                "committed an image whose hashes no offer named (sha256 {sha})"
            );
            self.committed = Some(image);
        }
    }

    fn check_installed(&self, md5: &str, sha256: &str) {
        assert!(
            self.offered_hashes.contains(md5) || self.offered_hashes.contains(sha256),
            "installed md5 {md5} sha256 {sha256}: no offer named either"
        );
    }

    /// An image was committed to the sink.
    pub fn committed(&self) -> bool {
        self.committed.is_some()
    }

    /// Keeps what the node sends from now on, for [`Host::take_sent`].
    pub fn capture(&mut self) {
        self.sent.get_or_insert_with(Vec::new);
    }

    /// What the node sent since the last call (with [`Host::capture`] on).
    pub fn take_sent(&mut self) -> Vec<(ConnId, Bytes)> {
        self.sent.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Marks `image`'s hashes as offered by this node itself (its own offers).
    pub fn note_own_offer(&mut self, image: &[u8]) {
        self.offered_hashes.insert(hex(&Sha256::digest(image)));
        self.offered_hashes.insert(hex(&Md5::digest(image)));
    }
}

fn memchr_all(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .map(|(i, _)| i)
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
