//! A small deterministic in-memory mesh for the OTA tests: nodes with the [`Ota`] plugin,
//! links with a latency and a byte rate per direction, virtual time, crashes and restarts,
//! frame accounting by kind, and a hook to tamper with frames in flight. (The full
//! simulator lives in pmesh-sim; this is only what these tests need.)

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use pmesh_node::{Config, ConnId, Direction, Event, Instant, Node, Transmit};
use pmesh_ota::{FrameKind, MemorySink, MemoryStore, Ota, OtaConfig, OtaEvent};

pub type OtaNode = Node<Ota<MemorySink, MemoryStore>>;

pub struct Spec {
    pub id: u32,
    pub cfg: OtaConfig,
    pub capacity: u64,
    pub root: bool,
    pub store: MemoryStore,
}

impl Spec {
    pub fn new(id: u32, cfg: OtaConfig) -> Self {
        Spec {
            id,
            cfg,
            capacity: 4 << 20,
            root: false,
            store: MemoryStore::new(),
        }
    }
}

struct Link {
    a: usize,
    b: usize,
    up: bool,
    free_at: [u64; 2],
}

#[derive(Default, Clone, Copy, Debug)]
pub struct Count {
    pub frames: u64,
    pub bytes: u64,
}

/// What a tamper hook decides for a frame in flight.
pub enum Tamper {
    Pass,
    Drop,
    Replace(Vec<u8>),
}

/// Bytes in flight: arrival time, sequence, link, receiving node, bytes.
type InFlight = (u64, u64, usize, usize, Vec<u8>);

type TamperFn = Box<dyn FnMut(usize, usize, &[u8]) -> Tamper>;

pub struct Mesh {
    pub nodes: Vec<Option<OtaNode>>,
    specs: Vec<(u32, OtaConfig, bool)>,
    pub sinks: Vec<MemorySink>,
    pub stores: Vec<MemoryStore>,
    links: Vec<Link>,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    pub events: Vec<Vec<OtaEvent>>,
    pub counts: std::collections::BTreeMap<&'static str, Count>,
    pub latency_us: u64,
    /// Link rate, bytes per second (each direction).
    pub rate: u64,
    pub tamper: Option<TamperFn>,
    /// Nodes whose firmware asked for a restart (stock receivers, 2 s after installing).
    reboots: Vec<usize>,
    /// Restart nodes that ask for it (as a real ESP does).
    pub honour_reboots: bool,
}

fn kind_name(k: Option<FrameKind>) -> &'static str {
    match k {
        Some(FrameKind::ClassicAnnounce) => "announce",
        Some(FrameKind::ClassicRequest) => "request",
        Some(FrameKind::ClassicData) => "data",
        Some(FrameKind::Hello) => "hello",
        Some(FrameKind::Manifest) => "manifest",
        Some(FrameKind::Want) => "want",
        Some(FrameKind::Chunk) => "chunk",
        Some(FrameKind::Ack) => "ack",
        Some(FrameKind::Apply) => "apply",
        Some(FrameKind::Cancel) => "cancel",
        Some(FrameKind::Page) => "page",
        None => "other",
    }
}

/// The `type` of a frame, read without parsing it all.
pub fn frame_type(frame: &[u8]) -> Option<i32> {
    let key = b"\"type\":";
    let pos = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = frame[pos..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

impl Mesh {
    pub fn new(specs: Vec<Spec>) -> Self {
        let mut m = Mesh {
            nodes: Vec::new(),
            specs: Vec::new(),
            sinks: Vec::new(),
            stores: Vec::new(),
            links: Vec::new(),
            now: 1_000_000,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            counts: Default::default(),
            latency_us: 2_000,
            rate: 1_000_000,
            tamper: None,
            reboots: Vec::new(),
            honour_reboots: true,
        };
        for s in specs {
            let sink = MemorySink::new(s.capacity);
            m.specs.push((s.id, s.cfg, s.root));
            m.sinks.push(sink);
            m.stores.push(s.store);
            m.events.push(Vec::new());
            m.nodes.push(None);
            let i = m.nodes.len() - 1;
            m.boot(i);
        }
        m
    }

    fn boot(&mut self, i: usize) {
        let (id, cfg, root) = self.specs[i].clone();
        let mut c = Config::new(id);
        c.root = root;
        let ota = Ota::new(cfg, self.sinks[i].clone(), self.stores[i].clone());
        self.nodes[i] = Some(Node::new(c, ota));
    }

    pub fn id(&self, i: usize) -> u32 {
        self.specs[i].0
    }

    pub fn node(&mut self, i: usize) -> &mut OtaNode {
        self.nodes[i].as_mut().expect("node is down")
    }

    /// Links `a` (station, dials) to `b` (AP).
    pub fn link(&mut self, a: usize, b: usize) -> usize {
        self.links.push(Link {
            a,
            b,
            up: false,
            free_at: [0; 2],
        });
        let l = self.links.len() - 1;
        self.connect(l);
        l
    }

    /// Takes a link down (both ends see a disconnect) or brings it back.
    pub fn set_link(&mut self, l: usize, up: bool) {
        if up {
            if !self.links[l].up {
                self.connect(l);
            }
            return;
        }
        if !self.links[l].up {
            return;
        }
        self.links[l].up = false;
        let now = Instant::from_micros(self.now);
        for end in [self.links[l].a, self.links[l].b] {
            if let Some(n) = self.nodes[end].as_mut() {
                n.handle_disconnect(ConnId(l as u64), now);
            }
            self.drain(end);
        }
    }

    fn connect(&mut self, l: usize) {
        let (a, b) = (self.links[l].a, self.links[l].b);
        if self.nodes[a].is_none() || self.nodes[b].is_none() {
            return;
        }
        self.links[l].up = true;
        self.links[l].free_at = [self.now; 2];
        let now = Instant::from_micros(self.now);
        self.node(a)
            .handle_connect(ConnId(l as u64), now, Direction::Station);
        self.node(b)
            .handle_connect(ConnId(l as u64), now, Direction::Ap);
        self.drain(a);
        self.drain(b);
    }

    /// A chain 0-1-2-...; node 0 first.
    pub fn chain(&mut self) {
        for i in 1..self.nodes.len() {
            self.link(i, i - 1);
        }
    }

    /// A tree with fan-out `f`: node i hangs under (i-1)/f.
    pub fn tree(&mut self, f: usize) {
        for i in 1..self.nodes.len() {
            self.link(i, (i - 1) / f);
        }
    }

    pub fn with<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Ota<MemorySink, MemoryStore>, &mut pmesh_node::Context<'_, OtaEvent>) -> R,
    ) -> R {
        let now = Instant::from_micros(self.now);
        let r = self.node(i).with_plugin(now, f);
        self.drain(i);
        r
    }

    /// Power loss: the node's RAM is gone, its links drop; flash (sink) and store survive.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        let now = Instant::from_micros(self.now);
        for l in 0..self.links.len() {
            let link = &self.links[l];
            if link.up && (link.a == i || link.b == i) {
                self.links[l].up = false;
                let other = if self.links[l].a == i {
                    self.links[l].b
                } else {
                    self.links[l].a
                };
                if let Some(n) = self.nodes[other].as_mut() {
                    n.handle_disconnect(ConnId(l as u64), now);
                }
                self.drain(other);
            }
        }
    }

    /// Boots the node again (same sink and store) and reconnects its links.
    pub fn restart(&mut self, i: usize) {
        self.boot(i);
        for l in 0..self.links.len() {
            if !self.links[l].up && (self.links[l].a == i || self.links[l].b == i) {
                self.connect(l);
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        while let Some(e) = node.poll_event() {
            if let Event::Plugin(e) = e {
                if matches!(e, OtaEvent::RebootRequested { .. }) {
                    self.reboots.push(i);
                }
                self.events[i].push(e);
            }
        }
        for t in out {
            match t {
                Transmit::Send { conn, data } => self.transmit(i, conn.0 as usize, data.to_vec()),
                Transmit::Close { conn, .. } => self.links[conn.0 as usize].up = false,
            }
        }
    }

    fn transmit(&mut self, from: usize, l: usize, data: Vec<u8>) {
        let link = &mut self.links[l];
        if !link.up {
            return;
        }
        let (to, dir) = if link.a == from {
            (link.b, 0)
        } else {
            (link.a, 1)
        };
        let start = link.free_at[dir].max(self.now);
        let done = start + data.len() as u64 * 1_000_000 / self.rate;
        link.free_at[dir] = done;
        for frame in data.split(|&b| b == 0).filter(|f| !f.is_empty()) {
            let kind = frame_type(frame).and_then(FrameKind::of_type);
            let c = self.counts.entry(kind_name(kind)).or_default();
            c.frames += 1;
            c.bytes += frame.len() as u64 + 1;
        }
        self.seq += 1;
        self.queue
            .push(Reverse((done + self.latency_us, self.seq, l, to, data)));
    }

    fn next_timer(&self) -> Option<(u64, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.as_ref()
                    .and_then(|n| n.poll_timeout())
                    .map(|t| (t.as_micros().max(self.now), i))
            })
            .min()
    }

    /// Runs until virtual time `until` (µs) or until `stop` holds; true if `stop` held.
    pub fn run_until(&mut self, until: u64, mut stop: impl FnMut(&Mesh) -> bool) -> bool {
        loop {
            if self.honour_reboots {
                for i in std::mem::take(&mut self.reboots) {
                    self.crash(i);
                    self.restart(i);
                }
            }
            if stop(self) {
                return true;
            }
            let q = self.queue.peek().map(|Reverse(e)| e.0);
            let t = self.next_timer();
            let next = match (q, t) {
                (Some(a), Some((b, _))) => a.min(b),
                (Some(a), None) => a,
                (None, Some((b, _))) => b,
                (None, None) => return false,
            };
            if next > until {
                self.now = until;
                return stop(self);
            }
            self.now = next;
            if q == Some(next) {
                let Reverse((_, _, l, to, data)) = self.queue.pop().unwrap();
                if !self.links[l].up || self.nodes[to].is_none() {
                    continue;
                }
                let from = if self.links[l].a == to {
                    self.links[l].b
                } else {
                    self.links[l].a
                };
                let data = match self.tamper.as_mut().map(|f| f(from, to, &data)) {
                    Some(Tamper::Drop) => continue,
                    Some(Tamper::Replace(d)) => d,
                    _ => data,
                };
                let now = Instant::from_micros(self.now);
                self.node(to).handle_bytes(ConnId(l as u64), now, &data);
                self.drain(to);
            } else if let Some((_, i)) = t {
                let now = Instant::from_micros(self.now);
                self.node(i).handle_timeout(now);
                self.drain(i);
            }
        }
    }

    pub fn run_for(&mut self, secs: f64) {
        let until = self.now + (secs * 1e6) as u64;
        self.run_until(until, |_| false);
    }

    pub fn installed(&self, i: usize) -> bool {
        self.events[i]
            .iter()
            .any(|e| matches!(e, OtaEvent::Installed { .. }))
    }

    pub fn count(&self, kind: &str) -> Count {
        self.counts.get(kind).copied().unwrap_or_default()
    }
}

/// A pseudo-random "firmware" of `n` bytes: compressible like a compiled binary (runs of
/// instruction-like patterns and tables), deterministic per seed.
pub fn firmware(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = next();
        match r % 4 {
            0 => out.extend_from_slice(&r.to_le_bytes()[..(r >> 8) as usize % 8 + 1]),
            1 => out.extend_from_slice(b"\x00\x00\x00\x00\x01\x00\x00\x00"),
            2 => out.extend_from_slice(&[0x36, 0x41, 0x00, (r >> 16) as u8, 0x1d, 0xf0]),
            _ => out.extend_from_slice(b"ESP_LOGI mesh: "),
        }
    }
    out.truncate(n);
    out
}
