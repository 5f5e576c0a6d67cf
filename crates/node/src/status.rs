//! Status reports: a plugin that makes a node send an Alteriom EnhancedStatusPackage (604, or
//! 203 for Phase 1/2 meshes) every [`StatusConfig::interval`], so a gateway's MQTT bridge can
//! monitor a mesh of pmesh nodes as it monitors Alteriom firmware.
//!
//! Every value sent is one the node really knows: uptime (since [`StatusPlugin::new`]'s
//! `started`), nodes in the mesh (this one included), synced connections, the firmware version
//! and MD5 from the configuration, and, once the host supplies them, the message counters
//! ([`StatusPlugin::set_node_stats`]), free memory ([`StatusPlugin::set_free_memory_kb`]) and
//! WiFi signal ([`StatusPlugin::set_wifi`]). A field the node does not know is left out of the
//! frame, not sent as an invented 0: a receiver sees "unknown", and the bridge raises no
//! LOW_MEMORY alert for a node that never said how much memory it has. (The reference reads a
//! missing field as 0, so Alteriom receivers see what a zero-filled package would tell them.)
//!
//! ## Composing with other plugins
//!
//! The plugin emits no events, so its event type is whatever the plugin beside it uses:
//!
//! ```ignore
//! let plugins = (ota, StatusPlugin::new(StatusConfig::new("1.4.0"), now));
//! let mut node = Node::new(cfg, plugins);          // events: the OTA plugin's
//! // before each `handle_timeout` (cheap: a copy of 14 counters):
//! let stats = node.stats();
//! node.with_plugin(now, |(_, status), _| status.set_node_stats(stats));
//! ```
//!
//! On its own: `Node::new(cfg, StatusPlugin::<Infallible>::new(..))`.

use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::time::Duration;

use pmesh_proto::Routing;
use pmesh_proto::json::{self, Value};
use pmesh_proto::packages::{EnhancedStatusPackage, Generation, Text};

use crate::plugin::{ConnectionChange, Context, Plugin};
use crate::stats::NodeStats;
use crate::time::Instant;

/// Where reports go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusTarget {
    /// To every node (`routing:2`), as Alteriom firmware sends it.
    Broadcast,
    /// To one node only (`routing:1`, `dest`), e.g. the gateway: in a large mesh this spares
    /// every node a copy of every other node's report.
    Node(u32),
}

/// How and what to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// Time between reports (default 30 s, the bridge's publish interval).
    pub interval: Duration,
    /// First report after start (default: one `interval`).
    pub first_after: Duration,
    /// After a new connection, report this soon (once the mesh has exchanged trees), unless a
    /// report went out less than `min_gap` ago (default 2 s).
    pub join_after: Duration,
    /// Least time between two reports (default 5 s): flapping links cause no report storm.
    pub min_gap: Duration,
    /// 604 ([`Generation::Head`], default) or 203 ([`Generation::Phase2`]).
    pub generation: Generation,
    /// Where reports go (default [`StatusTarget::Broadcast`]).
    pub target: StatusTarget,
    /// `fw`: the firmware version string (left out when empty).
    pub firmware: String,
    /// `fwMD5`: the firmware image's MD5 in hex, if known.
    pub firmware_md5: Option<String>,
}

impl StatusConfig {
    /// Defaults with the given firmware version.
    pub fn new(firmware: impl Into<String>) -> Self {
        StatusConfig {
            interval: Duration::from_secs(30),
            first_after: Duration::from_secs(30),
            join_after: Duration::from_secs(2),
            min_gap: Duration::from_secs(5),
            generation: Generation::Head,
            target: StatusTarget::Broadcast,
            firmware: firmware.into(),
            firmware_md5: None,
        }
    }
}

/// The status plugin. `E` is the event type of the plugins it sits beside (it emits none).
#[derive(Debug)]
pub struct StatusPlugin<E = core::convert::Infallible> {
    cfg: StatusConfig,
    started: Instant,
    next: Instant,
    last_sent: Option<Instant>,
    node_stats: Option<NodeStats>,
    free_memory_kb: Option<u32>,
    wifi: Option<u8>,
    reports: u64,
    failed: u64,
    last_report: Option<Vec<u8>>,
    _event: PhantomData<fn() -> E>,
}

impl<E> StatusPlugin<E> {
    /// A plugin for a node that started at `started` (its local clock; uptime counts from it).
    pub fn new(cfg: StatusConfig, started: Instant) -> Self {
        StatusPlugin {
            next: started + cfg.first_after,
            cfg,
            started,
            last_sent: None,
            node_stats: None,
            free_memory_kb: None,
            wifi: None,
            reports: 0,
            failed: 0,
            last_report: None,
            _event: PhantomData,
        }
    }

    /// The node's counters (`Node::stats()`), for `msgRx` (frames received), `msgTx` (frames
    /// sent, forwarded ones included) and `msgDrop` (frames dropped: oversized, invalid, no
    /// route, unhandled). Left out of reports until given. Sent as the wire's u32, wrapping
    /// like a device's counter.
    pub fn set_node_stats(&mut self, stats: NodeStats) {
        self.node_stats = Some(stats);
    }

    /// Free memory in KiB (`mem`); None leaves it out. The wire field is 16 bits: more than
    /// 65,535 KiB is sent as 65,535 ("at least 64 MiB").
    pub fn set_free_memory_kb(&mut self, kb: Option<u32>) {
        self.free_memory_kb = kb;
    }

    /// WiFi signal as the Alteriom field carries it (`wifi`, one byte); None leaves it out.
    pub fn set_wifi(&mut self, wifi: Option<u8>) {
        self.wifi = wifi;
    }

    /// The configuration.
    pub fn config(&self) -> &StatusConfig {
        &self.cfg
    }

    /// Reports handed to the mesh so far.
    pub fn reports_sent(&self) -> u64 {
        self.reports
    }

    /// Reports that could not be sent (no route to the target, frame too large).
    pub fn reports_failed(&self) -> u64 {
        self.failed
    }

    /// The JSON of the last report built (for the host's own use, e.g. a gateway feeding its
    /// own status to its bridge).
    pub fn last_report(&self) -> Option<&[u8]> {
        self.last_report.as_deref()
    }

    /// The report as it would be sent now.
    pub fn build_report(&self, ctx: &Context<'_, E>) -> Vec<u8> {
        let mut p = EnhancedStatusPackage::new(self.cfg.generation, ctx.node_id());
        if let StatusTarget::Node(dest) = self.cfg.target {
            p.header.dest = Some(dest);
            p.header.routing = 1;
        }
        let mut omit: Vec<&str> = Vec::new();
        // Fields nobody can know here: the reference's device flags, its latency, loss,
        // throughput and alert-flag estimates, its last error text.
        omit.extend([
            "status",
            "latency",
            "loss",
            "throughput",
            "alerts",
            "lastErr",
        ]);
        let uptime = ctx.now().saturating_since(self.started).as_secs();
        p.uptime = u32::try_from(uptime).unwrap_or(u32::MAX);
        match self.free_memory_kb {
            Some(kb) => p.mem = u16::try_from(kb).unwrap_or(u16::MAX),
            None => omit.push("mem"),
        }
        match self.wifi {
            Some(w) => p.wifi = w,
            None => omit.push("wifi"),
        }
        if self.cfg.firmware.is_empty() {
            omit.push("fw");
        } else {
            p.fw = Text(self.cfg.firmware.clone().into_bytes());
        }
        match &self.cfg.firmware_md5 {
            Some(md5) => p.fw_md5 = Text(md5.clone().into_bytes()),
            None => omit.push("fwMD5"),
        }
        let nodes = ctx.node_list(true).len();
        p.nodes = u16::try_from(nodes).unwrap_or(u16::MAX);
        let conns = ctx.neighbours().count();
        p.conns = u8::try_from(conns).unwrap_or(u8::MAX);
        match self.node_stats {
            // Truncating casts on purpose: the wire's counters are u32 and wrap.
            Some(s) => {
                p.msg_rx = s.frames_in as u32;
                p.msg_tx = s.frames_out as u32;
                p.msg_drop = (s.dropped_oversized
                    + s.dropped_invalid
                    + s.dropped_no_route
                    + s.dropped_unhandled) as u32;
            }
            None => omit.extend(["msgRx", "msgTx", "msgDrop"]),
        }
        let full = p.to_json();
        // The typed package writes every field; take out the ones this node does not know.
        match json::parse(&full, json::DEFAULT_MAX_DEPTH) {
            Ok(Value::Object(mut obj)) => {
                for k in omit {
                    obj.remove(k);
                }
                Value::Object(obj).to_vec()
            }
            _ => full,
        }
    }

    fn report(&mut self, ctx: &mut Context<'_, E>) {
        let now = ctx.now();
        let json = self.build_report(ctx);
        let sent = match self.cfg.target {
            StatusTarget::Broadcast => ctx.send(Routing::Broadcast, 0, json.clone()),
            StatusTarget::Node(dest) if dest == ctx.node_id() => Ok(()),
            StatusTarget::Node(dest) => ctx.send(Routing::Single, dest, json.clone()),
        };
        match sent {
            Ok(()) => self.reports += 1,
            Err(_) => self.failed += 1,
        }
        self.last_report = Some(json);
        self.last_sent = Some(now);
        // Spread the nodes' reports: the next one 0-10 % later than the interval.
        let jitter_us = self.cfg.interval.as_micros() as u64 / 10;
        let jitter = if jitter_us > 0 {
            Duration::from_micros(ctx.random() % jitter_us)
        } else {
            Duration::ZERO
        };
        self.next = now + self.cfg.interval + jitter;
    }
}

impl<E> Plugin for StatusPlugin<E> {
    type Event = E;

    fn on_connection(&mut self, ctx: &mut Context<'_, E>, change: ConnectionChange) {
        if let ConnectionChange::New { .. } = change {
            let now = ctx.now();
            let soon = now + self.cfg.join_after;
            let earliest = self
                .last_sent
                .map_or(soon, |t| (t + self.cfg.min_gap).max(soon));
            self.next = self.next.min(earliest);
        }
    }

    fn on_timeout(&mut self, ctx: &mut Context<'_, E>) {
        if ctx.now() >= self.next {
            self.report(ctx);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next)
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::{Clock, Harness};
    use crate::{Config, Event, Node};
    use pmesh_proto::Envelope;
    use pmesh_proto::json::Object;

    type P = StatusPlugin<core::convert::Infallible>;

    fn node(id: u32, cfg: StatusConfig) -> Node<P> {
        let started = Instant::from_micros(1_000_000);
        Node::new(Config::new(id), StatusPlugin::new(cfg, started))
    }

    /// Bodies of status packages node `i` received, with their arrival times (global µs).
    fn reports_at(h: &Harness<P>, i: usize, ty: i32) -> Vec<(u64, Object)> {
        h.events(i)
            .iter()
            .filter_map(|(at, e)| match e {
                Event::Package { envelope, .. } if envelope.ty == ty => {
                    Some((*at, envelope.body.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn u(o: &Object, k: &str) -> Option<u64> {
        o.get(k)?.to_i64_lenient().map(|v| v as u64)
    }

    /// A chain a - b - c, clocks 1 s apart from global time.
    fn chain(cfg: StatusConfig) -> Harness<P> {
        let mut h = Harness::new();
        for id in [101, 102, 103] {
            h.add_node(node(id, cfg.clone()), Clock::offset(1_000_000));
        }
        h.connect(1, 0, Duration::from_millis(5));
        h.connect(2, 1, Duration::from_millis(5));
        h
    }

    #[test]
    fn reports_true_values_and_leaves_out_unknown_ones() {
        let mut cfg = StatusConfig::new("pmesh-1.4.0");
        cfg.firmware_md5 = Some("0123456789abcdef0123456789abcdef".into());
        let mut h = chain(cfg);
        // Each node reports ~2 s after its first connection (join_after)...
        h.run_for(Duration::from_secs(5));
        let first: Vec<(u64, Object)> = reports_at(&h, 2, 604)
            .into_iter()
            .filter(|(_, o)| u(o, "from") == Some(101))
            .collect();
        assert_eq!(first.len(), 1, "a's join report reached c over b");
        let (at, o) = &first[0];
        assert!(
            (2_000_000..2_500_000).contains(at),
            "sent 2 s after joining: {at}"
        );
        assert_eq!(u(o, "uptime"), Some(2));
        // ...then every 30 s, plus up to 10 % to spread the nodes' reports.
        h.run_for(Duration::from_secs(65));
        let from_a: Vec<(u64, Object)> = reports_at(&h, 2, 604)
            .into_iter()
            .filter(|(_, o)| u(o, "from") == Some(101))
            .collect();
        assert_eq!(from_a.len(), 3, "2 s, 32-35 s, 62-68.5 s");
        for w in from_a.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                (30_000_000..=33_100_000).contains(&gap),
                "interval {gap} µs"
            );
        }
        let (at, last) = from_a.last().unwrap();
        assert_eq!(u(last, "type"), Some(604));
        assert_eq!(u(last, "routing"), Some(2));
        assert_eq!(u(last, "nodes"), Some(3), "the whole chain, a included");
        assert_eq!(u(last, "conns"), Some(1));
        assert_eq!(
            u(last, "uptime"),
            Some(*at / 1_000_000),
            "seconds since start"
        );
        assert_eq!(
            last.get("fw").map(Value::to_text),
            Some(b"pmesh-1.4.0".to_vec())
        );
        assert_eq!(
            last.get("fwMD5").map(Value::to_text),
            Some(b"0123456789abcdef0123456789abcdef".to_vec())
        );
        for unknown in [
            "mem",
            "wifi",
            "msgRx",
            "msgTx",
            "msgDrop",
            "status",
            "latency",
            "loss",
            "throughput",
            "alerts",
            "lastErr",
        ] {
            assert!(last.get(unknown).is_none(), "{unknown} sent though unknown");
        }
        // b is connected to both a and c.
        let from_b = reports_at(&h, 2, 604)
            .into_iter()
            .rfind(|(_, o)| u(o, "from") == Some(102))
            .expect("b reports too");
        assert_eq!(u(&from_b.1, "conns"), Some(2));
        assert!(reports_at(&h, 2, 203).is_empty());
        assert_eq!(h.node(0).plugin().reports_sent(), 3);
        let own = Envelope::parse(h.node(0).plugin().last_report().unwrap(), 32).unwrap();
        assert_eq!((own.ty, own.from), (604, 101));
    }

    #[test]
    fn host_supplied_values_are_reported() {
        let mut h = chain(StatusConfig::new("x"));
        h.run_for(Duration::from_secs(5));
        let stats = h.node(0).stats();
        assert!(stats.frames_in > 0 && stats.frames_out > 0);
        h.with_node(0, |n, _| {
            n.with_plugin(Instant::ZERO, |p, _| {
                p.set_node_stats(stats);
                p.set_free_memory_kb(Some(123_456));
                p.set_wifi(Some(70));
            })
        });
        h.run_for(Duration::from_secs(40));
        let (_, o) = reports_at(&h, 1, 604)
            .into_iter()
            .rev()
            .find(|(_, o)| u(o, "from") == Some(101))
            .expect("a report from a");
        assert_eq!(u(&o, "msgRx"), Some(stats.frames_in));
        assert_eq!(u(&o, "msgTx"), Some(stats.frames_out));
        assert_eq!(u(&o, "msgDrop"), Some(0));
        assert_eq!(u(&o, "mem"), Some(65_535), "16-bit field saturates");
        assert_eq!(u(&o, "wifi"), Some(70));
    }

    #[test]
    fn phase2_type_and_single_target() {
        let mut cfg = StatusConfig::new("x");
        cfg.generation = Generation::Phase2;
        cfg.target = StatusTarget::Node(101);
        let mut h = chain(cfg);
        h.run_for(Duration::from_secs(70));
        let at_a = reports_at(&h, 0, 203);
        for from in [102, 103] {
            let n = at_a
                .iter()
                .filter(|(_, o)| u(o, "from") == Some(from))
                .count();
            assert_eq!(n, 3, "{from}'s reports reached a");
        }
        assert!(
            at_a.iter()
                .all(|(_, o)| u(o, "dest") == Some(101) && u(o, "routing") == Some(1))
        );
        // Nobody else gets them: b relays c's reports without handling them, and a does not
        // send to itself.
        assert!(reports_at(&h, 1, 203).is_empty());
        assert!(reports_at(&h, 2, 203).is_empty());
        assert!(reports_at(&h, 0, 604).is_empty());
        assert_eq!(h.node(0).plugin().reports_sent(), 3);
    }

    #[test]
    fn join_reports_are_rate_limited() {
        let mut cfg = StatusConfig::new("x");
        cfg.first_after = Duration::from_secs(3600);
        let mut h: Harness<P> = Harness::new();
        let a = h.add_node(node(1, cfg.clone()), Clock::offset(0));
        let b = h.add_node(node(2, cfg), Clock::offset(0));
        // The link flaps 10 times in 10 s: a reports 2 s after a join, then waits min_gap (5 s)
        // however often the link comes back: reports at ~2 s and ~7 s.
        for _ in 0..10 {
            let l = h.connect(b, a, Duration::from_millis(2));
            h.run_for(Duration::from_millis(600));
            h.break_link(l);
            h.run_for(Duration::from_millis(400));
        }
        let p = h.node(a).plugin();
        assert_eq!(p.reports_sent() + p.reports_failed(), 2);
    }
}
