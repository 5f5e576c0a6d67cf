//! What an OTA scenario says: the `[ota]` table of a scenario file and the overrides of
//! `pmesh sim`'s `--ota*` flags ([`OtaOverrides`]; the flags themselves are the CLI's), both
//! resolved into one [`OtaScenario`].
//!
//! ```toml
//! [ota]
//! mode = "pmesh"            # unicast | broadcast | pmesh
//! image = "self"            # a file, "self" (the running executable) or absent: synthetic
//! image_bytes = "1MiB"      # synthetic size, or how much of the file to use
//! receivers = "mixed"       # pmesh | stock | mixed (stock_share of them stock)
//! crash_share = 0.05        # 5 % of the targets crash during the transfer ...
//! crash_window = ["5s", "20s"]  # ... at a time drawn from this window after the offer
//! down_for = "2s"           # ... and boot again after this
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::scenario::{Dur, Scenario};

/// How the image travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtaMode {
    /// painlessMesh OTA: every receiver pulls every chunk from the distributor.
    Unicast,
    /// painlessMesh OTA in broadcast mode: one node requests, every Data is flooded.
    Broadcast,
    /// painlessMesh OTA in broadcast mode driven by the distributor: it floods Data 0…n−1 in
    /// order, paced, unasked (stock receivers take it; `push_rate`).
    Push,
    /// pmesh's own protocol: pipelined push along the tree.
    Pmesh,
}

impl OtaMode {
    /// `unicast`, `broadcast`, `push` or `pmesh`.
    pub fn name(self) -> &'static str {
        match self {
            OtaMode::Unicast => "unicast",
            OtaMode::Broadcast => "broadcast",
            OtaMode::Push => "push",
            OtaMode::Pmesh => "pmesh",
        }
    }

    /// The protocol the scenario's transfer uses (pmesh-ota's one [`pmesh_ota::Mode`]): a
    /// push is classic broadcast, flooded by the distributor rather than on request.
    pub fn protocol(self) -> pmesh_ota::Mode {
        match self {
            OtaMode::Unicast => pmesh_ota::Mode::ClassicUnicast,
            OtaMode::Broadcast | OtaMode::Push => pmesh_ota::Mode::ClassicBroadcast,
            OtaMode::Pmesh => pmesh_ota::Mode::Pmesh,
        }
    }
}

/// Which receiver logic the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Receivers {
    /// pmesh nodes: pmesh's classic receiver and the pmesh protocol.
    Pmesh,
    /// Stock painlessMesh behaviour, bugs included (classic OTA only; they relay pmesh frames
    /// as any stock node does but cannot install a pmesh rollout).
    Stock,
    /// `stock_share` of the nodes (or the `stock_nodes`) stock, the others pmesh.
    Mixed,
}

impl Receivers {
    /// `pmesh`, `stock` or `mixed`.
    pub fn name(self) -> &'static str {
        match self {
            Receivers::Pmesh => "pmesh",
            Receivers::Stock => "stock",
            Receivers::Mixed => "mixed",
        }
    }
}

/// When pmesh-protocol targets apply a verified image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// Each target applies as soon as it verified the image.
    OnVerify,
    /// The distributor schedules one apply time once every target verified.
    AllVerified,
}

/// When the distributor offers the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OfferAt {
    /// One second after the mesh first formed one component with every node list complete
    /// (found by a probe run of the same scenario, so the time is exact and deterministic).
    #[default]
    Formed,
    /// At this time from the start.
    At(Dur),
}

impl OfferAt {
    /// `"formed"` or a duration.
    pub fn parse(s: &str) -> Result<OfferAt, String> {
        if s.trim() == "formed" {
            Ok(OfferAt::Formed)
        } else {
            Dur::parse(s).map(OfferAt::At)
        }
    }
}

impl fmt::Display for OfferAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfferAt::Formed => f.write_str("formed"),
            OfferAt::At(d) => write!(f, "{d}"),
        }
    }
}

impl<'de> Deserialize<'de> for OfferAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(s) => Ok(OfferAt::At(Dur::secs(s))),
            Raw::Float(f) => Dur::parse(&f.to_string())
                .map(OfferAt::At)
                .map_err(serde::de::Error::custom),
            Raw::Text(t) => OfferAt::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for OfferAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A byte count: an integer, or a string with a unit (`"1MiB"`, `"512KiB"`, `"64k"`,
/// `"1MB"`). Binary units (KiB, MiB, GiB, and the short k, K, M, G) are powers of 1,024;
/// kB, MB and GB are powers of 1,000. Hand-parsed: a handful of suffixes is no reason for a
/// dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"1MiB"`, `"64k"`, `"1000000"`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "k" | "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (try \"1MiB\", \"512KiB\", \"64k\", \"1000000\")"
                ));
            }
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?} (try \"1MiB\", \"512KiB\", \"1000000\")"))?;
        let bytes = v * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
            return Err(format!("invalid size {s:?}"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(b) => Ok(ByteSize(b)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Default image size: 1 MiB.
pub const DEFAULT_IMAGE_BYTES: u64 = 1 << 20;

/// An OTA rollout in a simulation. Every field has a default: `OtaScenario::default()` is a
/// compressed pmesh-protocol rollout of a 1 MiB synthetic firmware image from node 1 to every
/// other node, offered once the mesh has formed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtaScenario {
    /// How the image travels.
    pub mode: OtaMode,
    /// The image: a file path, `"self"` (the running executable: a real compiled binary), or
    /// absent for a synthetic firmware-like image (deterministic, compresses like code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the synthetic image, or how much of the file to use (default: 1 MiB synthetic,
    /// 1 MiB of `"self"`, a whole file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<ByteSize>,
    /// Compress (classic: serve gzip of the image; pmesh: deflate each chunk).
    pub compressed: bool,
    /// Install even where the image is current.
    pub forced: bool,
    /// Bytes per chunk (default: classic 1,024 served bytes, pmesh 4,096 image bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u32>,
    /// The node that offers the image (the gateway).
    pub distributor: u32,
    /// When it offers: `"formed"` or a time from the start.
    pub offer_at: OfferAt,
    /// With `offer_at = "formed"`: give up if the mesh has not formed by then.
    pub form_timeout: Dur,
    /// Receiver logic of the nodes.
    pub receivers: Receivers,
    /// With `mixed`: the share of the other nodes that run stock logic (chosen by the seed).
    pub stock_share: f64,
    /// With `mixed`: exactly these nodes run stock logic (overrides `stock_share`).
    pub stock_nodes: Vec<u32>,
    /// Nodes of another role: not targets, they only relay.
    pub relay_nodes: Vec<u32>,
    /// pmesh protocol: when targets apply.
    pub apply: ApplyMode,
    /// Share of the targets that crash during the transfer (chosen by the seed).
    pub crash_share: f64,
    /// Each crash happens at a time drawn uniformly from this window after the offer.
    pub crash_window: [Dur; 2],
    /// A crashed node boots again after this.
    pub down_for: Dur,
    /// Stop when no target made progress for this long after the offer (stuck nodes stay
    /// stuck; the report counts them).
    pub give_up_after: Dur,
    /// pmesh protocol: cap on OTA bytes per second per link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ByteSize>,
    /// Firmware slot of every node (default: 4 MiB, or twice the image if larger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_capacity: Option<ByteSize>,
    /// pmesh mode: a signed rollout (a bundle signed with the simulator's key; every pmesh
    /// node trusts only that key and checks manifest, digest pages and chunks), compressed
    /// or not as `compressed` says (the bundle is signed with the same chunking).
    pub signed: bool,
    /// Push mode: Data bytes per second the distributor floods (default 250,000; 0 for
    /// unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_rate: Option<ByteSize>,
}

impl Default for OtaScenario {
    fn default() -> Self {
        OtaScenario {
            mode: OtaMode::Pmesh,
            image: None,
            image_bytes: None,
            compressed: true,
            forced: false,
            chunk_bytes: None,
            distributor: 1,
            offer_at: OfferAt::Formed,
            form_timeout: Dur::secs(900),
            receivers: Receivers::Pmesh,
            stock_share: 0.5,
            stock_nodes: Vec::new(),
            relay_nodes: Vec::new(),
            apply: ApplyMode::OnVerify,
            crash_share: 0.0,
            crash_window: [Dur::secs(5), Dur::secs(20)],
            down_for: Dur::secs(2),
            give_up_after: Dur::secs(600),
            rate_limit: None,
            sink_capacity: None,
            signed: false,
            push_rate: None,
        }
    }
}

impl OtaScenario {
    /// Checks the OTA scenario against the mesh it runs on, with a clear message if it cannot run.
    pub fn validate(&self, sc: &Scenario) -> Result<(), String> {
        let exists = |id: u32, what: &str| {
            if id == 0 || id > sc.nodes {
                Err(format!(
                    "ota.{what}: node {id} does not exist (nodes are 1..={})",
                    sc.nodes
                ))
            } else {
                Ok(())
            }
        };
        exists(self.distributor, "distributor")?;
        for &n in &self.stock_nodes {
            exists(n, "stock_nodes")?;
        }
        for &n in &self.relay_nodes {
            exists(n, "relay_nodes")?;
        }
        if self.stock_nodes.contains(&self.distributor) {
            return Err("ota.stock_nodes: the distributor is a pmesh node".into());
        }
        if !self.stock_nodes.is_empty() && self.receivers != Receivers::Mixed {
            return Err("ota.stock_nodes needs receivers = \"mixed\"".into());
        }
        for (v, what) in [
            (self.stock_share, "stock_share"),
            (self.crash_share, "crash_share"),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("ota.{what} is a share in [0, 1], got {v}"));
            }
        }
        if self.crash_window[0] > self.crash_window[1] {
            return Err("ota.crash_window: the start is after the end".into());
        }
        if self.crash_share > 0.0 && self.down_for.micros() == 0 {
            return Err("ota.down_for must be positive".into());
        }
        if let Some(c) = self.chunk_bytes {
            let (lo, hi) = match self.mode {
                OtaMode::Pmesh => (
                    pmesh_ota::offer::MIN_PMESH_CHUNK,
                    pmesh_ota::offer::MAX_PMESH_CHUNK,
                ),
                _ => (1, 1 << 20),
            };
            if !(lo..=hi).contains(&c) {
                return Err(format!(
                    "ota.chunk_bytes {c} is outside {lo}..={hi} for {} mode",
                    self.mode.name()
                ));
            }
        }
        if self.image_bytes.is_some_and(|b| b.0 == 0) {
            return Err("ota.image_bytes must be positive".into());
        }
        if self.give_up_after.micros() == 0 {
            return Err("ota.give_up_after must be positive".into());
        }
        if let OfferAt::At(t) = self.offer_at
            && t >= sc.duration
        {
            return Err(format!(
                "ota.offer_at {t} is not before the end of the run ({})",
                sc.duration
            ));
        }
        Ok(())
    }

    /// The image source as a path, if it is a file (`"self"` resolves to the running executable).
    pub fn image_path(&self) -> Result<Option<PathBuf>, String> {
        match self.image.as_deref() {
            None => Ok(None),
            Some("self") => std::env::current_exe()
                .map(Some)
                .map_err(|e| format!("finding the running executable: {e}")),
            Some(p) => Ok(Some(PathBuf::from(p))),
        }
    }
}

/// Splits a scenario file's text into the mesh scenario and its `[ota]` table (absent: `None`).
/// [`Scenario::from_toml`] rejects unknown tables, so `pmesh sim` reads files through this.
pub fn split_scenario_toml(text: &str) -> Result<(Scenario, Option<OtaScenario>), String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let ota = match table.remove("ota") {
        None => None,
        Some(v) => Some(
            v.try_into::<OtaScenario>()
                .map_err(|e| format!("[ota]: {}", e.message()))?,
        ),
    };
    let rest = toml::to_string(&table).map_err(|e| e.to_string())?;
    let sc = Scenario::from_toml(&rest)?;
    if let Some(o) = &ota {
        o.validate(&sc)?;
    }
    Ok((sc, ota))
}

/// Overrides of a scenario file's `[ota]` table, as typed values (`pmesh sim`'s `--ota*` flags
/// are parsed into this by the CLI): each field set replaces the table's; a `mode` alone
/// enables OTA with every default. Sizes and durations are still text, parsed by
/// [`OtaOverrides::apply`] so its errors name the flag.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OtaOverrides {
    /// Run an OTA rollout: unicast, broadcast (classic painlessMesh OTA) or pmesh.
    pub mode: Option<OtaMode>,
    /// Image: a file, or `self` for the running pmesh executable (default: synthetic firmware).
    pub image: Option<String>,
    /// Image size (synthetic), or how much of the file to use, e.g. 1MiB, 256KiB.
    pub image_bytes: Option<String>,
    /// Send the image uncompressed.
    pub uncompressed: bool,
    /// Install even where the image is current.
    pub forced: bool,
    /// Bytes per chunk (classic default 1024, pmesh 4096).
    pub chunk_bytes: Option<u32>,
    /// Node that offers the image (default 1).
    pub distributor: Option<u32>,
    /// When to offer: `formed` (default) or a time such as 30s.
    pub offer_at: Option<String>,
    /// With --ota-offer-at formed: give up if the mesh has not formed by then (default 15m).
    pub form_timeout: Option<String>,
    /// Receiver logic: pmesh, stock (painlessMesh's, bugs included) or mixed.
    pub receivers: Option<Receivers>,
    /// With mixed receivers: the share of stock nodes (default 0.5).
    pub stock_share: Option<f64>,
    /// pmesh mode: when targets apply (default on-verify).
    pub apply: Option<ApplyMode>,
    /// Share of the targets that crash mid-transfer, e.g. 0.05.
    pub crash_share: Option<f64>,
    /// Crashes happen in this window after the offer: MIN,MAX (e.g. 5s,20s).
    pub crash_window: Option<String>,
    /// A crashed node boots again after this (default 2s).
    pub down_for: Option<String>,
    /// Stop when no target progressed for this long (default 10m).
    pub give_up_after: Option<String>,
    /// pmesh mode: cap OTA bytes per second per link, e.g. 50KiB.
    pub rate_limit: Option<String>,
}

impl OtaOverrides {
    /// True if any `--ota*` flag was given.
    pub fn any(&self) -> bool {
        let OtaOverrides {
            mode,
            image,
            image_bytes,
            uncompressed,
            forced,
            chunk_bytes,
            distributor,
            offer_at,
            form_timeout,
            receivers,
            stock_share,
            apply,
            crash_share,
            crash_window,
            down_for,
            give_up_after,
            rate_limit,
        } = self;
        mode.is_some()
            || image.is_some()
            || image_bytes.is_some()
            || *uncompressed
            || *forced
            || chunk_bytes.is_some()
            || distributor.is_some()
            || offer_at.is_some()
            || form_timeout.is_some()
            || receivers.is_some()
            || stock_share.is_some()
            || apply.is_some()
            || crash_share.is_some()
            || crash_window.is_some()
            || down_for.is_some()
            || give_up_after.is_some()
            || rate_limit.is_some()
    }

    /// Applies the flags over the scenario file's `[ota]` table (`base`). `None` when there is
    /// neither a table nor `--ota`; an error when other `--ota-*` flags come without either.
    pub fn apply(&self, base: Option<OtaScenario>) -> Result<Option<OtaScenario>, String> {
        let mut o = match (base, self.mode) {
            (Some(o), _) => o,
            (None, Some(_)) => OtaScenario::default(),
            (None, None) if self.any() => {
                return Err(
                    "--ota-* flags need --ota MODE (or an [ota] table in the scenario file)".into(),
                );
            }
            (None, None) => return Ok(None),
        };
        if let Some(m) = self.mode {
            o.mode = m;
        }
        if let Some(i) = &self.image {
            o.image = Some(i.clone());
        }
        if let Some(b) = &self.image_bytes {
            o.image_bytes =
                Some(ByteSize::parse(b).map_err(|e| format!("--ota-image-bytes: {e}"))?);
        }
        if self.uncompressed {
            o.compressed = false;
        }
        if self.forced {
            o.forced = true;
        }
        if let Some(c) = self.chunk_bytes {
            o.chunk_bytes = Some(c);
        }
        if let Some(d) = self.distributor {
            o.distributor = d;
        }
        if let Some(t) = &self.offer_at {
            o.offer_at = OfferAt::parse(t).map_err(|e| format!("--ota-offer-at: {e}"))?;
        }
        if let Some(t) = &self.form_timeout {
            o.form_timeout = Dur::parse(t).map_err(|e| format!("--ota-form-timeout: {e}"))?;
        }
        if let Some(r) = self.receivers {
            o.receivers = r;
        }
        if let Some(s) = self.stock_share {
            o.stock_share = s;
        }
        if let Some(a) = self.apply {
            o.apply = a;
        }
        if let Some(s) = self.crash_share {
            o.crash_share = s;
        }
        if let Some(w) = &self.crash_window {
            let parts: Vec<&str> = w.split(',').collect();
            let [a, b] = parts[..] else {
                return Err(format!("--ota-crash-window: expected MIN,MAX, got {w:?}"));
            };
            o.crash_window = [
                Dur::parse(a).map_err(|e| format!("--ota-crash-window: {e}"))?,
                Dur::parse(b).map_err(|e| format!("--ota-crash-window: {e}"))?,
            ];
        }
        if let Some(d) = &self.down_for {
            o.down_for = Dur::parse(d).map_err(|e| format!("--ota-down-for: {e}"))?;
        }
        if let Some(d) = &self.give_up_after {
            o.give_up_after = Dur::parse(d).map_err(|e| format!("--ota-give-up-after: {e}"))?;
        }
        if let Some(r) = &self.rate_limit {
            o.rate_limit = Some(ByteSize::parse(r).map_err(|e| format!("--ota-rate-limit: {e}"))?);
        }
        Ok(Some(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_modes_map_onto_the_one_protocol_mode() {
        for m in [OtaMode::Unicast, OtaMode::Broadcast, OtaMode::Pmesh] {
            assert_eq!(m.protocol().name(), m.name());
        }
        assert_eq!(OtaMode::Push.protocol(), pmesh_ota::Mode::ClassicBroadcast);
    }
    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("64k").unwrap(), ByteSize(65_536));
        assert_eq!(ByteSize::parse("1.5KiB").unwrap(), ByteSize(1536));
        assert_eq!(ByteSize::parse("2MB").unwrap(), ByteSize(2_000_000));
        assert_eq!(ByteSize::parse(" 1000 ").unwrap(), ByteSize(1000));
        assert!(ByteSize::parse("12 parsecs").unwrap_err().contains("unit"));
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(3 << 10).to_string(), "3KiB");
        assert_eq!(OfferAt::parse("formed").unwrap(), OfferAt::Formed);
        assert_eq!(OfferAt::parse("90s").unwrap(), OfferAt::At(Dur::secs(90)));
    }

    #[test]
    fn ota_table_in_a_scenario_file() {
        let (sc, ota) = split_scenario_toml(
            r#"
            name = "x"
            nodes = 20
            [topology]
            kind = "chain"
            [[events]]
            at = "1m"
            action = "crash"
            node = 3
            [ota]
            mode = "broadcast"
            image_bytes = "256KiB"
            receivers = "mixed"
            stock_nodes = [4, 5]
            offer_at = "30s"
            crash_share = 0.1
            crash_window = ["2s", 10]
            "#,
        )
        .unwrap();
        assert_eq!(sc.nodes, 20);
        assert_eq!(sc.events.len(), 1);
        let ota = ota.unwrap();
        assert_eq!(ota.mode, OtaMode::Broadcast);
        assert_eq!(ota.image_bytes, Some(ByteSize(256 << 10)));
        assert_eq!(ota.receivers, Receivers::Mixed);
        assert_eq!(ota.stock_nodes, vec![4, 5]);
        assert_eq!(ota.offer_at, OfferAt::At(Dur::secs(30)));
        assert_eq!(ota.crash_window, [Dur::secs(2), Dur::secs(10)]);
        assert!(ota.compressed, "defaults fill the rest");
        // No [ota] table: no OTA.
        let (_, none) = split_scenario_toml("nodes = 5").unwrap();
        assert!(none.is_none());
        // The printed form reads back the same.
        let text = toml::to_string(&ota).unwrap();
        assert_eq!(toml::from_str::<OtaScenario>(&text).unwrap(), ota);
    }

    #[test]
    fn clear_errors_for_bad_tables() {
        let e = split_scenario_toml("nodes = 5\n[ota]\nmdoe = \"pmesh\"\n").unwrap_err();
        assert!(e.contains("mdoe"), "{e}");
        let e = split_scenario_toml("nodes = 5\n[ota]\nmode = \"multicast\"\n").unwrap_err();
        assert!(e.contains("multicast"), "{e}");
        let e = split_scenario_toml("nodes = 5\n[ota]\ndistributor = 9\n").unwrap_err();
        assert!(e.contains("node 9 does not exist"), "{e}");
        let e = split_scenario_toml("nodes = 5\n[ota]\ncrash_share = 2\n").unwrap_err();
        assert!(e.contains("crash_share"), "{e}");
        let e = split_scenario_toml("nodes = 5\n[ota]\nstock_nodes = [2]\n").unwrap_err();
        assert!(e.contains("mixed"), "{e}");
        let e = split_scenario_toml("nodes = 5\n[ota]\nmode = \"pmesh\"\nchunk_bytes = 64\n")
            .unwrap_err();
        assert!(e.contains("chunk_bytes"), "{e}");
        let e = split_scenario_toml("nodes = 5\nduration = \"1m\"\n[ota]\noffer_at = \"2m\"\n")
            .unwrap_err();
        assert!(e.contains("offer_at"), "{e}");
        let e = split_scenario_toml("nodez = 5\n[ota]\n").unwrap_err();
        assert!(e.contains("nodez"), "the mesh part is still checked: {e}");
    }

    #[test]
    fn overrides_replace_the_table() {
        let none = OtaOverrides::default();
        assert!(!none.any());
        assert_eq!(none.apply(None).unwrap(), None);
        let mode = OtaOverrides {
            mode: Some(OtaMode::Unicast),
            ..OtaOverrides::default()
        };
        assert_eq!(
            mode.apply(None).unwrap().unwrap(),
            OtaScenario {
                mode: OtaMode::Unicast,
                ..OtaScenario::default()
            }
        );
        let base = OtaScenario {
            mode: OtaMode::Broadcast,
            image_bytes: Some(ByteSize(1000)),
            ..OtaScenario::default()
        };
        let o = OtaOverrides {
            image_bytes: Some("64KiB".into()),
            uncompressed: true,
            receivers: Some(Receivers::Stock),
            crash_window: Some("1s,5s".into()),
            apply: Some(ApplyMode::AllVerified),
            ..OtaOverrides::default()
        }
        .apply(Some(base))
        .unwrap()
        .unwrap();
        assert_eq!(o.mode, OtaMode::Broadcast, "kept from the table");
        assert_eq!(o.image_bytes, Some(ByteSize(64 << 10)));
        assert!(!o.compressed);
        assert_eq!(o.receivers, Receivers::Stock);
        assert_eq!(o.crash_window, [Dur::secs(1), Dur::secs(5)]);
        assert_eq!(o.apply, ApplyMode::AllVerified);
        let forced = OtaOverrides {
            forced: true,
            ..OtaOverrides::default()
        };
        assert!(forced.any());
        let e = forced.apply(None).unwrap_err();
        assert!(e.contains("--ota MODE"), "{e}");
        let e = OtaOverrides {
            mode: Some(OtaMode::Pmesh),
            crash_window: Some("5s".into()),
            ..OtaOverrides::default()
        }
        .apply(None)
        .unwrap_err();
        assert!(e.contains("MIN,MAX"), "{e}");
    }
}
