//! The run's report: deterministic figures (same scenario and seed, same bytes) plus a
//! separate `wall` section with host timings, and the short human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Frames and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Frames.
    pub frames: u64,
    /// Bytes, NUL terminators included.
    pub bytes: u64,
}

/// Per-link figures.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LinkReport {
    /// TCP connections established over the run.
    pub connections: u64,
    /// Frames over all links (both directions).
    pub frames_total: u64,
    /// Frames on the busiest link.
    pub frames_max: u64,
    /// Bytes on the busiest link.
    pub bytes_max: u64,
    /// Longest wait of a frame in a send queue, ms.
    pub max_queue_delay_ms: f64,
    /// Most bytes queued on one link direction.
    pub max_queue_bytes: u64,
    /// Per node (id − 1), the most bytes it ever had waiting on one of its links (a relay's
    /// send queue, which painlessMesh keeps in RAM without limit).
    #[serde(skip)]
    pub node_max_queue_bytes: Vec<u64>,
}

/// Convergence after one epoch's start (the run's start or a scenario event).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Convergence {
    /// What started the epoch (`start` or the event).
    pub after: String,
    /// When the epoch started, s.
    pub at_s: f64,
    /// Seconds from the epoch's start until every node's node list equalled the set of nodes
    /// it could reach (and stayed so until the epoch ended); null if it never did.
    pub converged_after_s: Option<f64>,
    /// Connected components at the epoch's end (both ends synced).
    pub components: usize,
    /// Nodes up at the epoch's end.
    pub nodes_up: usize,
}

/// A violated invariant.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time, µs.
    pub t_us: u64,
    /// Which invariant.
    pub kind: String,
    /// Nodes involved (ids).
    pub nodes: Vec<u32>,
    /// What happened.
    pub detail: String,
}

/// Invariant checks.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct InvariantReport {
    /// Connection-graph cycles that formed (transient ones included).
    pub cycles_formed: u64,
    /// Longest a cycle lived before the protocol broke it, s.
    pub longest_cycle_s: f64,
    /// Broadcast deliveries checked (node, message) pairs.
    pub broadcast_checks: u64,
    /// Convergence checks run.
    pub convergence_checks: u64,
    /// Violations, in time order (at most 1,000 kept; `violations_total` counts all).
    pub violations: Vec<Violation>,
    /// All violations.
    pub violations_total: u64,
}

/// Generated application traffic.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MessageReport {
    /// Broadcasts sent.
    pub broadcasts_sent: u64,
    /// (node, broadcast) pairs that were owed a delivery (stayed reachable for the window).
    pub broadcast_expected: u64,
    /// Of those, delivered exactly once.
    pub broadcast_delivered: u64,
    /// Deliveries beyond the first.
    pub broadcast_duplicates: u64,
    /// SINGLE messages sent.
    pub singles_sent: u64,
    /// Delivered to their destination.
    pub singles_delivered: u64,
    /// Mean hops of delivered singles.
    pub singles_mean_hops: f64,
}

/// WiFi-layer activity.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WifiReport {
    /// Scans completed.
    pub scans: u64,
    /// Associations made.
    pub associations: u64,
    /// Associations refused (AP full or gone).
    pub association_failures: u64,
    /// TCP connect attempts that failed.
    pub tcp_failures: u64,
    /// APs blocklisted after the retries ran out.
    pub blocklisted: u64,
    /// Uplinks dropped by the stability rule.
    pub reconfigurations: u64,
    /// Stations that lost their AP's beacon.
    pub beacon_losses: u64,
}

/// Mesh time agreement.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TimeSyncReport {
    /// max - min of mesh time across the largest component at the end, µs.
    pub spread_us: Option<u64>,
    /// Nodes in that component.
    pub nodes: usize,
    /// The reference's accuracy target (`TIME_SYNC_ACCURACY`), µs.
    pub target_us: u64,
    /// TIME_SYNC adjustments applied.
    pub adjustments: u64,
    /// (time s, spread µs) samples over the run.
    pub samples: Vec<(f64, Option<u64>)>,
}

/// The radio model's placement: whether the mesh could be one component at all.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RadioReport {
    /// Side of the square the nodes were placed in, metres (None: positions given).
    pub area_m: Option<f64>,
    /// Placements drawn until the radio graph (nodes within range of each other) was
    /// connected (0: positions given).
    pub placements: u32,
    /// Connected components of the radio graph: more than 1 means some nodes can never
    /// reach each other, whatever the protocol does.
    pub graph_components: usize,
    /// Mean number of nodes within range of a node.
    pub mean_in_range: f64,
}

/// Host figures: excluded from determinism comparisons.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WallReport {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Events per wall second.
    pub events_per_s: f64,
    /// Simulated seconds per wall second.
    pub sim_s_per_wall_s: f64,
    /// Peak resident memory of the process (VmHWM), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Nodes.
    pub nodes: u32,
    /// Seed.
    pub seed: u64,
    /// Topology.
    pub topology: String,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Events processed.
    pub events: u64,
    /// When all nodes up first formed one component (both ends synced), s.
    pub formed_at_s: Option<f64>,
    /// Convergence per epoch.
    pub convergence: Vec<Convergence>,
    /// Mesh-time spread.
    pub time_sync: TimeSyncReport,
    /// All frames sent on links (forwarded ones included).
    pub traffic: Traffic,
    /// Per message type name (`NODE_SYNC_REQUEST`, ...).
    pub by_type: BTreeMap<String, Traffic>,
    /// Per-link figures.
    pub links: LinkReport,
    /// Connections dropped, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Generated messages.
    pub messages: MessageReport,
    /// WiFi layer.
    pub wifi: WifiReport,
    /// Invariants.
    pub invariants: InvariantReport,
    /// Node counters summed over all nodes and boots.
    pub node_stats: BTreeMap<String, u64>,
    /// Largest protocol state one node held (partial frames buffered), bytes.
    pub max_node_buffered_bytes: u64,
    /// The radio placement (radio model only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radio: Option<RadioReport>,
    /// The application's section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<serde_json::Value>,
    /// Host timings (not deterministic).
    pub wall: WallReport,
}

impl Report {
    /// The report as JSON without the `wall` section: byte-identical for the same scenario and seed.
    pub fn deterministic_json(&self) -> String {
        let mut v = serde_json::to_value(self).expect("report serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("wall");
        }
        serde_json::to_string_pretty(&v).expect("report serializes")
    }

    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pmesh sim: {} — {} nodes, {}, seed {}, {:.0} s simulated",
            self.scenario, self.nodes, self.topology, self.seed, self.simulated_s
        );
        match self.formed_at_s {
            Some(t) => {
                let _ = writeln!(s, "  formation     all nodes in one mesh after {t:.1} s");
            }
            None => {
                let _ = writeln!(s, "  formation     the nodes never formed a single mesh");
            }
        }
        if let Some(r) = &self.radio
            && r.graph_components > 1
        {
            let _ = writeln!(
                s,
                "  radio         the placement is {} separate radio islands: one mesh is impossible",
                r.graph_components
            );
        }
        for c in &self.convergence {
            let when = match c.converged_after_s {
                Some(t) => format!("node lists converged {t:.1} s later"),
                None => "node lists did NOT converge".into(),
            };
            let _ = writeln!(
                s,
                "  {:<13} at {:>6.1} s: {when} ({} up, {} component{})",
                truncate(&c.after, 13),
                c.at_s,
                c.nodes_up,
                c.components,
                if c.components == 1 { "" } else { "s" }
            );
        }
        match self.time_sync.spread_us {
            Some(us) => {
                let _ = writeln!(
                    s,
                    "  time sync     spread {:.3} ms across {} nodes (reference target {} ms), {} adjustments",
                    us as f64 / 1000.0,
                    self.time_sync.nodes,
                    self.time_sync.target_us / 1000,
                    self.time_sync.adjustments
                );
            }
            None => {
                let _ = writeln!(s, "  time sync     no nodes up");
            }
        }
        let _ = writeln!(
            s,
            "  traffic       {} frames, {} over {} connections (busiest link {} frames, longest queue wait {:.1} ms)",
            self.traffic.frames,
            bytes(self.traffic.bytes),
            self.links.connections,
            self.links.frames_max,
            self.links.max_queue_delay_ms
        );
        let mut kinds: Vec<_> = self.by_type.iter().collect();
        kinds.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
        let list: Vec<String> = kinds
            .iter()
            .take(4)
            .map(|(k, t)| format!("{k} {}", bytes(t.bytes)))
            .collect();
        let _ = writeln!(s, "                {}", list.join(", "));
        let m = &self.messages;
        if m.broadcasts_sent + m.singles_sent > 0 {
            let _ = writeln!(
                s,
                "  messages      broadcasts {}/{} deliveries owed, {} duplicates; singles {}/{} delivered",
                m.broadcast_delivered,
                m.broadcast_expected,
                m.broadcast_duplicates,
                m.singles_delivered,
                m.singles_sent
            );
        }
        let w = &self.wifi;
        let _ = writeln!(
            s,
            "  wifi          {} scans, {} associations ({} refused), {} TCP failures, {} blocklisted, {} reconfigurations",
            w.scans,
            w.associations,
            w.association_failures,
            w.tcp_failures,
            w.blocklisted,
            w.reconfigurations
        );
        let inv = &self.invariants;
        if inv.violations_total == 0 {
            let _ = writeln!(
                s,
                "  invariants    all held ({} transient cycles, longest {:.1} s; {} broadcast deliveries and {} convergence checks)",
                inv.cycles_formed,
                inv.longest_cycle_s,
                inv.broadcast_checks,
                inv.convergence_checks
            );
        } else {
            let _ = writeln!(s, "  invariants    {} VIOLATIONS:", inv.violations_total);
            for v in inv.violations.iter().take(5) {
                let _ = writeln!(
                    s,
                    "    t={:.3} s {}: {} (nodes {:?})",
                    v.t_us as f64 / 1e6,
                    v.kind,
                    v.detail,
                    v.nodes
                );
            }
        }
        let _ = writeln!(
            s,
            "  run           {} events in {:.2} s wall ({:.0} events/s, {:.0}x real time)",
            self.events, self.wall.seconds, self.wall.events_per_s, self.wall.sim_s_per_wall_s
        );
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn bytes(n: u64) -> String {
    if n >= 10 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 10 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Peak resident set size of this process (`VmHWM` from `/proc/self/status`), if available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
