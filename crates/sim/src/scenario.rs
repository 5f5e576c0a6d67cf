//! Scenarios: the mesh to build, its link and clock models, WiFi behaviour, generated traffic
//! and timed faults. Loaded from TOML (see `scenarios/*.toml`) or built in code; every field
//! has a default, so `Scenario::default()` is the ~50-node mesh `pmesh sim` runs without
//! arguments.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::clock::{MS, SEC, SimTime};

/// A duration in a scenario: a number of seconds, or a string with a unit (`"250ms"`, `"10s"`,
/// `"2m"`, `"1h"`, `"1.5s"`). Hand-parsed: four suffixes do not justify a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub SimTime);

impl Dur {
    /// From whole seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(s * SEC)
    }
    /// From milliseconds.
    pub const fn millis(ms: u64) -> Dur {
        Dur(ms * MS)
    }
    /// Microseconds.
    pub const fn micros(self) -> SimTime {
        self.0
    }
    /// Parses `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"90"` (seconds).
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
            (n, MS as f64)
        } else if let Some(n) = s.strip_suffix("us") {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, SEC as f64)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0 * SEC as f64)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3600.0 * SEC as f64)
        } else {
            (s, SEC as f64)
        };
        let v: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (try \"10s\", \"250ms\", \"2m\")"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!(
                "invalid duration {s:?}: must be a non-negative number"
            ));
        }
        // A year at most: time sums in the engine stay far from u64's limit.
        let us = v * mult;
        if us > MAX_DURATION.0 as f64 {
            return Err(format!("invalid duration {s:?}: at most a year"));
        }
        Ok(Dur(us.round() as u64))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us.is_multiple_of(60 * SEC) && us > 0 {
            write!(f, "{}m", us / (60 * SEC))
        } else if us.is_multiple_of(SEC) {
            write!(f, "{}s", us / SEC)
        } else if us.is_multiple_of(MS) {
            write!(f, "{}ms", us / MS)
        } else {
            write!(f, "{}us", us)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(s) => Ok(Dur(s * SEC)),
            Raw::Float(f) => Dur::parse(&f.to_string()).map_err(serde::de::Error::custom),
            Raw::Text(t) => Dur::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Longest duration a scenario may give (a year).
pub const MAX_DURATION: Dur = Dur(365 * 24 * 3600 * SEC);
/// Largest clock drift a scenario may set, in ppm (10 %; real crystals stay within ±100).
pub const MAX_DRIFT_PPM: f64 = 100_000.0;
/// Largest generated message payload, in bytes (well under a frame's 256 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// Largest link bandwidth a scenario may set, in kbit/s (10 Gbit/s).
pub const MAX_BANDWIDTH_KBIT: f64 = 10_000_000.0;
/// Largest one-way link latency a scenario may set, in milliseconds.
pub const MAX_LATENCY_MS: f64 = 60_000.0;

/// A value or a `[min, max]` range drawn uniformly per link or node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
}

impl Span {
    /// A single value.
    pub const fn fixed(v: f64) -> Span {
        Span { min: v, max: v }
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.min == self.max {
            s.serialize_f64(self.min)
        } else {
            [self.min, self.max].serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(f64),
            Two([f64; 2]),
        }
        let (min, max) = match Raw::deserialize(d)? {
            Raw::One(v) => (v, v),
            Raw::Two([a, b]) => (a, b),
        };
        if !(min.is_finite() && max.is_finite() && min >= 0.0 && min <= max) {
            return Err(serde::de::Error::custom(format!(
                "invalid range [{min}, {max}]: need 0 <= min <= max"
            )));
        }
        Ok(Span { min, max })
    }
}

/// How the nodes are connected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Topology {
    /// Node i joins node i-1's AP.
    Chain,
    /// Every node joins node 1's AP.
    Star,
    /// Balanced tree: node i joins node (i-1)/fanout (0-based).
    Tree {
        /// Children per node.
        #[serde(default = "default_fanout")]
        fanout: u32,
    },
    /// Node i joins a uniformly chosen earlier node.
    RandomTree,
    /// Nodes in a plane; a station may join any AP within radio range, choosing as a
    /// painlessMesh station does (strongest signal first, skipping nodes already in its tree
    /// and blocklisted ones). Formation, merges and loops happen through the protocol.
    Radio {
        /// Radio range in metres.
        #[serde(default = "default_range")]
        range_m: f64,
        /// Mean number of nodes within range of a node; sets the area (ignored if `area_m` is set).
        #[serde(default = "default_density")]
        neighbours: f64,
        /// Side of the square area in metres.
        #[serde(default)]
        area_m: Option<f64>,
        /// Re-place nodes until the radio graph is connected (up to 100 tries).
        #[serde(default = "yes")]
        connected: bool,
        /// Explicit positions `[x, y]` in metres, one per node (node 1 first), instead of
        /// random placement: a real site plan, or a geometry a test needs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        positions: Option<Vec<[f64; 2]>>,
    },
}

fn default_fanout() -> u32 {
    3
}
fn default_range() -> f64 {
    50.0
}
fn default_density() -> f64 {
    16.0
}
fn yes() -> bool {
    true
}

impl Topology {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Topology::Chain => "chain".into(),
            Topology::Star => "star".into(),
            Topology::Tree { fanout } => format!("tree(fanout {fanout})"),
            Topology::RandomTree => "random-tree".into(),
            Topology::Radio { range_m, .. } => format!("radio(range {range_m} m)"),
        }
    }
}

/// The TCP link model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkModel {
    /// One-way latency in ms, drawn per link from this range.
    pub latency_ms: Span,
    /// Bandwidth per direction in kbit/s, drawn per link from this range.
    pub bandwidth_kbit: Span,
    /// Probability that one TCP connect attempt fails (the spec's retry schedule then applies).
    pub connect_fail: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency_ms: Span {
                min: 1.0,
                max: 20.0,
            },
            bandwidth_kbit: Span::fixed(2_000.0),
            connect_fail: 0.0,
        }
    }
}

/// Node clocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockModel {
    /// Each node's drift is uniform in ±this many ppm.
    pub drift_ppm: f64,
    /// Each node's local clock starts at a uniform value in [0, this) at boot.
    pub initial_offset: Dur,
    /// Turn on the nodes' optional frequency discipline (`Config::rate_discipline`, not in
    /// the reference; off by default).
    pub rate_discipline: bool,
}

impl Default for ClockModel {
    fn default() -> Self {
        ClockModel {
            drift_ppm: 100.0,
            initial_offset: Dur::secs(3_600),
            rate_discipline: false,
        }
    }
}

/// The WiFi layer under the mesh (what painlessMesh's `StationScan` and the ESP radio do).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WifiModel {
    /// `SCAN_INTERVAL`: rescan period while unconnected (spec §4: 30 s).
    pub scan_interval: Dur,
    /// Rescan period once connected (spec §4: 4 × 30 s).
    pub connected_scan_interval: Dur,
    /// How long one scan takes.
    pub scan_time: Dur,
    /// WiFi association plus DHCP.
    pub assoc_time: Dur,
    /// A station notices its AP is gone (crashed, out of range) after this.
    pub beacon_timeout: Dur,
    /// Delay before each TCP connect retry (spec §4: 1, 2, 4, 8, 8 s).
    pub tcp_retry: Vec<Dur>,
    /// After the retries are exhausted the AP's node is skipped for this long (spec §4: 60 s).
    pub blocklist: Dur,
    /// ... and the station reconnects WiFi after this (spec §4: 10 s).
    pub wifi_reconnect: Dur,
    /// Soft-AP station limit (`MAX_CONN`: 10 on ESP32, 4 on ESP8266). Default: 10 in the radio
    /// model, unlimited in the fixed topologies (which are given by decree).
    pub max_stations: Option<u32>,
    /// painlessMesh's "stability" reconfiguration: a connected station of an unrooted mesh that
    /// sees unknown APs drops its uplink with probability stability/1000.
    pub reconfigure: bool,
    /// `setContainsRoot(true)` on every node: while a node's tree has no root it rescans
    /// every half scan interval (15 s) even when connected. Default: on when `roots` is set.
    pub contains_root: Option<bool>,
    /// Nodes boot within this window after the start (or their join/restart time).
    pub boot_jitter: Dur,
    /// Radio model: standard deviation of the per-scan RSSI noise (fading), dB. Stations rank
    /// APs by RSSI = -40 dBm - 27 log10(distance/m) + noise, so near-equal APs trade places.
    pub rssi_noise_db: f64,
}

impl Default for WifiModel {
    fn default() -> Self {
        WifiModel {
            scan_interval: Dur::secs(30),
            connected_scan_interval: Dur::secs(120),
            scan_time: Dur::millis(300),
            assoc_time: Dur::millis(800),
            beacon_timeout: Dur::secs(6),
            tcp_retry: [1, 2, 4, 8, 8].into_iter().map(Dur::secs).collect(),
            blocklist: Dur::secs(60),
            wifi_reconnect: Dur::secs(10),
            max_stations: None,
            reconfigure: true,
            contains_root: None,
            boot_jitter: Dur::secs(2),
            rssi_noise_db: 4.0,
        }
    }
}

/// Application traffic the simulator generates to check delivery invariants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Traffic {
    /// Generate traffic at all (`false` turns both kinds off).
    pub enabled: bool,
    /// A BROADCAST from a random node this often (none if absent).
    pub broadcast_every: Option<Dur>,
    /// A SINGLE from a random node to a random node it knows this often (none if absent).
    pub single_every: Option<Dur>,
    /// Payload bytes per message (at least the id tag).
    pub payload_bytes: usize,
    /// First message after this.
    pub start: Dur,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            enabled: true,
            broadcast_every: Some(Dur::secs(10)),
            single_every: Some(Dur::secs(5)),
            payload_bytes: 32,
            start: Dur::secs(30),
        }
    }
}

/// Bounds for the invariant checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Invariants {
    /// A cycle in the connection graph older than this is a violation (short-lived cycles
    /// are how painlessMesh merges race; the protocol must break them).
    pub cycle_grace: Dur,
    /// Node lists that still differ from the reachable sets this long after the last
    /// topology change are a violation (default: the 60 s node-sync period + the 10 s timeout).
    pub convergence_bound: Dur,
    /// A broadcast must reach every node that stayed reachable within this window.
    pub delivery_window: Dur,
    /// Sample the mesh-time spread this often (for the report's time series).
    pub time_sample_every: Dur,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            cycle_grace: Dur::secs(30),
            convergence_bound: Dur::secs(70),
            delivery_window: Dur::secs(30),
            time_sample_every: Dur::secs(60),
        }
    }
}

/// Something that happens at a scheduled time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// The node loses power: volatile state gone, its links go silent.
    Crash {
        /// Node id.
        node: u32,
    },
    /// A crashed node boots again (persisted state kept, a fresh clock).
    Restart {
        /// Node id.
        node: u32,
    },
    /// A node that was off from the start boots (nodes named in `join` events start off).
    Join {
        /// Node id.
        node: u32,
    },
    /// The TCP link between two nodes silently drops everything (both ends find out by timeout).
    Cut {
        /// One end.
        a: u32,
        /// Other end.
        b: u32,
    },
    /// The TCP link between two nodes is reset (both ends see it closed at once).
    Reset {
        /// One end.
        a: u32,
        /// Other end.
        b: u32,
    },
    /// These nodes are separated from all others (radio and links) until `heal`.
    Partition {
        /// Node ids on one side.
        nodes: Vec<u32>,
    },
    /// Every partition ends.
    Heal,
    /// The node's TCP server refuses connections for a while (its AP stays up).
    Refuse {
        /// Node id.
        node: u32,
        /// How long.
        #[serde(rename = "for")]
        duration: Dur,
    },
    /// Hand `data` to the application (an OTA offer, say) on `node`.
    App {
        /// Node id.
        node: u32,
        /// Free-form, interpreted by the application.
        #[serde(default)]
        data: serde_json::Value,
    },
}

impl Action {
    /// One-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            Action::Crash { node } => format!("crash {node}"),
            Action::Restart { node } => format!("restart {node}"),
            Action::Join { node } => format!("join {node}"),
            Action::Cut { a, b } => format!("cut {a}-{b}"),
            Action::Reset { a, b } => format!("reset {a}-{b}"),
            Action::Partition { nodes } => format!("partition {} nodes", nodes.len()),
            Action::Heal => "heal".into(),
            Action::Refuse { node, duration } => format!("refuse {node} for {duration}"),
            Action::App { node, .. } => format!("app on {node}"),
        }
    }

    /// Nodes this action names.
    pub fn nodes(&self) -> Vec<u32> {
        match self {
            Action::Crash { node }
            | Action::Restart { node }
            | Action::Join { node }
            | Action::Refuse { node, .. }
            | Action::App { node, .. } => vec![*node],
            Action::Cut { a, b } | Action::Reset { a, b } => vec![*a, *b],
            Action::Partition { nodes } => nodes.clone(),
            Action::Heal => vec![],
        }
    }
}

/// An action at a time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimedEvent {
    /// When (from the start of the run).
    pub at: Dur,
    /// What.
    #[serde(flatten)]
    pub action: Action,
}

impl<'de> Deserialize<'de> for TimedEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let at = table
            .remove("at")
            .ok_or_else(|| D::Error::custom("event without `at`"))?;
        let at = Dur::deserialize(at).map_err(|e| D::Error::custom(format!("event `at`: {e}")))?;
        let action = toml::Value::Table(table)
            .try_into::<Action>()
            .map_err(|e| D::Error::custom(e.message().to_string()))?;
        Ok(TimedEvent { at, action })
    }
}

impl TimedEvent {
    /// Parses one event from TOML inline-table syntax, e.g. `at="2m", action="crash", node=5`
    /// (the braces are optional).
    pub fn parse(s: &str) -> Result<TimedEvent, String> {
        let body = s.trim().trim_start_matches('{').trim_end_matches('}');
        let doc = format!("e = {{ {body} }}");
        #[derive(Deserialize)]
        struct One {
            e: TimedEvent,
        }
        toml::from_str::<One>(&doc)
            .map(|o| o.e)
            .map_err(|e| format!("invalid event {s:?}: {}", e.message()))
    }
}

/// A whole simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Seed for every random choice.
    pub seed: u64,
    /// Number of nodes; ids are 1..=nodes.
    pub nodes: u32,
    /// Simulated time to run.
    pub duration: Dur,
    /// The topology.
    pub topology: Topology,
    /// TCP links.
    pub link: LinkModel,
    /// Node clocks.
    pub clock: ClockModel,
    /// WiFi layer.
    pub wifi: WifiModel,
    /// Generated traffic.
    pub traffic: Traffic,
    /// Invariant bounds.
    pub invariants: Invariants,
    /// Nodes announcing `root:true`.
    pub roots: Vec<u32>,
    /// Nodes announcing time authority.
    pub time_authority: Vec<u32>,
    /// Timed actions.
    pub events: Vec<TimedEvent>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            seed: 1,
            nodes: 50,
            duration: Dur::secs(600),
            topology: Topology::Radio {
                range_m: default_range(),
                neighbours: default_density(),
                area_m: None,
                connected: true,
                positions: None,
            },
            link: LinkModel::default(),
            clock: ClockModel::default(),
            wifi: WifiModel::default(),
            traffic: Traffic::default(),
            invariants: Invariants::default(),
            roots: vec![1],
            time_authority: vec![],
            events: vec![],
        }
    }
}

impl Scenario {
    /// Parses a scenario file's text.
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the scenario is runnable, with a clear message if not.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("a scenario needs at least one node".into());
        }
        if self.nodes > 100_000 {
            return Err(format!(
                "{} nodes is more than this simulator supports (100,000)",
                self.nodes
            ));
        }
        let check = |id: u32, what: &str| {
            if id == 0 || id > self.nodes {
                Err(format!(
                    "{what}: node {id} does not exist (nodes are 1..={})",
                    self.nodes
                ))
            } else {
                Ok(())
            }
        };
        for &r in self.roots.iter().chain(&self.time_authority) {
            check(r, "roots/time_authority")?;
        }
        for e in &self.events {
            for n in e.action.nodes() {
                check(n, &e.action.describe())?;
            }
            if let Action::Cut { a, b } | Action::Reset { a, b } = e.action
                && a == b
            {
                return Err(format!(
                    "{}: a link needs two different nodes",
                    e.action.describe()
                ));
            }
        }
        if let Topology::Tree { fanout: 0 } = self.topology {
            return Err("tree fanout must be at least 1".into());
        }
        if let Topology::Radio {
            range_m,
            neighbours,
            area_m,
            ..
        } = &self.topology
            && ![Some(*range_m), Some(*neighbours), *area_m]
                .into_iter()
                .flatten()
                .all(|x| x > 0.0 && x.is_finite())
        {
            return Err("radio range, neighbours and area must be positive and finite".into());
        }
        if let Topology::Radio {
            positions: Some(pos),
            ..
        } = &self.topology
        {
            if pos.len() != self.nodes as usize {
                return Err(format!(
                    "radio positions: {} given for {} nodes (one [x, y] per node)",
                    pos.len(),
                    self.nodes
                ));
            }
            if let Some(i) = pos
                .iter()
                .position(|p| !p[0].is_finite() || !p[1].is_finite())
            {
                return Err(format!(
                    "radio positions: node {} is not at a finite [x, y]",
                    i + 1
                ));
            }
        }
        if self.wifi.tcp_retry.len() > 32 {
            return Err("at most 32 TCP retries".into());
        }
        if !(0.0..=1.0).contains(&self.link.connect_fail) {
            return Err("link.connect_fail is a probability in [0, 1]".into());
        }
        if self.link.bandwidth_kbit.min <= 0.0 {
            return Err("link bandwidth must be positive".into());
        }
        if !(0.0..=MAX_DRIFT_PPM).contains(&self.clock.drift_ppm) {
            return Err(format!("clock.drift_ppm is in [0, {MAX_DRIFT_PPM}]"));
        }
        if !(0.0..=100.0).contains(&self.wifi.rssi_noise_db) {
            return Err("wifi.rssi_noise_db is in [0, 100]".into());
        }
        if self.traffic.payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "traffic.payload_bytes is at most {MAX_PAYLOAD_BYTES}"
            ));
        }
        // A zero period would schedule its event again at the same instant, forever.
        let periods = [
            ("traffic.broadcast_every", self.traffic.broadcast_every),
            ("traffic.single_every", self.traffic.single_every),
            (
                "invariants.time_sample_every",
                Some(self.invariants.time_sample_every),
            ),
            ("wifi.scan_interval", Some(self.wifi.scan_interval)),
            (
                "wifi.connected_scan_interval",
                Some(self.wifi.connected_scan_interval),
            ),
        ];
        if let Some((name, _)) = periods
            .iter()
            .find(|(_, p)| p.is_some_and(|d| d.micros() == 0))
        {
            return Err(format!("{name} is a period: it must be longer than 0"));
        }
        // Upper bounds keep the link model's integer time and byte arithmetic in range.
        if self.link.bandwidth_kbit.max > MAX_BANDWIDTH_KBIT {
            return Err(format!(
                "link.bandwidth_kbit is at most {MAX_BANDWIDTH_KBIT} (10 Gbit/s)"
            ));
        }
        if self.link.latency_ms.max > MAX_LATENCY_MS {
            return Err(format!(
                "link.latency_ms is at most {MAX_LATENCY_MS} (a minute)"
            ));
        }
        Ok(())
    }

    /// Nodes that start switched off (named in a `join` event).
    pub fn late_joiners(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .events
            .iter()
            .filter_map(|e| {
                if let Action::Join { node } = e.action {
                    Some(node)
                } else {
                    None
                }
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_radio_payload_and_duration_bounds() {
        // Found by the toml_config fuzz target: drift_ppm = 1e22 overflowed the clock's random
        // drift draw.
        let mut s = Scenario::default();
        s.clock.drift_ppm = 1e22;
        assert!(s.validate().unwrap_err().contains("clock.drift_ppm"));
        s.clock.drift_ppm = f64::NAN;
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.traffic.payload_bytes = usize::MAX;
        assert!(s.validate().unwrap_err().contains("payload_bytes"));
        let mut s = Scenario::default();
        s.wifi.rssi_noise_db = f64::INFINITY;
        assert!(s.validate().is_err());
        assert!(Dur::parse("366d").is_err());
        assert!(Dur::parse("1e300h").unwrap_err().contains("at most a year"));
        assert_eq!(Dur::parse("8760h").unwrap(), MAX_DURATION);
    }

    #[test]
    fn zero_periods_are_refused() {
        // Found by the toml_config fuzz target: broadcast_every = "0s" generated broadcasts at
        // one instant forever (912 MB in 12 s).
        let mut s = Scenario::default();
        s.traffic.broadcast_every = Some(Dur::secs(0));
        let err = s.validate().unwrap_err();
        assert!(err.contains("traffic.broadcast_every is a period"), "{err}");
        let mut s = Scenario::default();
        s.wifi.connected_scan_interval = Dur::secs(0);
        let err = s.validate().unwrap_err();
        assert!(err.contains("wifi.connected_scan_interval"), "{err}");
    }

    #[test]
    fn link_figures_beyond_their_bounds_are_refused() {
        // Found by the toml_config fuzz target: a bandwidth of ~2e111 kbit/s overflowed the
        // link model's backlog arithmetic.
        let mut s = Scenario::default();
        s.link.bandwidth_kbit = Span::fixed(2e111);
        let err = s.validate().unwrap_err();
        assert!(err.contains("bandwidth_kbit is at most"), "{err}");
        s.link.bandwidth_kbit = Span::fixed(MAX_BANDWIDTH_KBIT);
        s.validate().unwrap();
        s.link.latency_ms = Span {
            min: 1.0,
            max: 1e12,
        };
        let err = s.validate().unwrap_err();
        assert!(err.contains("latency_ms is at most"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap(), Dur::millis(250));
        assert_eq!(Dur::parse("2m").unwrap(), Dur::secs(120));
        assert_eq!(Dur::parse("1.5s").unwrap(), Dur::millis(1500));
        assert_eq!(Dur::parse("90").unwrap(), Dur::secs(90));
        assert!(Dur::parse("ten").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert_eq!(Dur::secs(120).to_string(), "2m");
    }

    #[test]
    fn toml_scenario() {
        let s = Scenario::from_toml(
            r#"
            name = "t"
            nodes = 10
            duration = "5m"
            [topology]
            kind = "tree"
            fanout = 2
            [link]
            latency_ms = [1, 20]
            [[events]]
            at = "1m"
            action = "crash"
            node = 3
            [[events]]
            at = 90
            action = "partition"
            nodes = [1, 2]
            "#,
        )
        .unwrap();
        assert_eq!(s.topology, Topology::Tree { fanout: 2 });
        assert_eq!(
            s.events[0],
            TimedEvent {
                at: Dur::secs(60),
                action: Action::Crash { node: 3 }
            }
        );
        assert_eq!(s.events[1].at, Dur::secs(90));
        assert_eq!(
            s.link.latency_ms,
            Span {
                min: 1.0,
                max: 20.0
            }
        );
    }

    #[test]
    fn printed_scenario_reads_back() {
        let mut s = Scenario::default();
        s.events.push(TimedEvent {
            at: Dur::secs(90),
            action: Action::Crash { node: 3 },
        });
        s.events.push(TimedEvent {
            at: Dur::millis(1500),
            action: Action::Refuse {
                node: 2,
                duration: Dur::secs(20),
            },
        });
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s, "{text}");
    }

    #[test]
    fn clear_errors() {
        let e = Scenario::from_toml(
            "nodes = 3\n[[events]]\nat = \"1m\"\naction = \"crash\"\nnode = 9\n",
        )
        .unwrap_err();
        assert!(e.contains("node 9 does not exist"), "{e}");
        let e = Scenario::from_toml("nodez = 3").unwrap_err();
        assert!(e.contains("nodez"), "{e}");
        let e = TimedEvent::parse("at=\"1m\", action=\"explode\", node=1").unwrap_err();
        assert!(e.contains("explode"), "{e}");
        assert_eq!(
            TimedEvent::parse("{at=\"1m\", action=\"heal\"}")
                .unwrap()
                .action,
            Action::Heal
        );
    }
}
