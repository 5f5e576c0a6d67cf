//! The operator's plan: waves, thresholds, the health gate, and their text forms.
//!
//! Every text form has its own `FromStr` ([`Waves`], [`Threshold`], [`Span`]) with a clear
//! [`PlanError`]. What depends on the fleet (how many nodes 10 % is, whether an explicit node
//! exists) is checked when the plan is resolved against a fleet ([`super::Campaign::new`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use super::NodeId;

/// At most this many waves in one plan (a bound on parsing, independent of the fleet).
pub const MAX_WAVES: usize = 64;

/// One wave as the operator wrote it. Counts and percentages are **cumulative**: the number
/// (or share) of the fleet covered once this wave has run, as in `1,10%,50%,100%`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaveSpec {
    /// Cover this many nodes in total (`10`).
    Count(u32),
    /// Cover this percentage of the fleet in total, 1..=100 (`10%`), rounded up.
    Percent(u8),
    /// Exactly these nodes (`[1001 1002]`); they count towards later cumulative targets.
    Nodes(Vec<NodeId>),
}

/// The ordered waves of a plan. Text form: entries separated by commas, each `N`, `N%` or a
/// bracketed, space-separated node list: `"[1001 1002],10%,50%,100%"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waves(pub Vec<WaveSpec>);

impl Waves {
    /// Whether the last wave covers the whole fleet (`100%`). A plan that does not leaves
    /// nodes out, and the campaign says how many ([`super::Action::Finished`]).
    pub fn reaches_all(&self) -> bool {
        matches!(self.0.last(), Some(WaveSpec::Percent(100)))
    }
}

/// A limit relative to a wave: a node count or a percentage of the wave's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// This many nodes.
    Count(u32),
    /// This percentage (0..=100) of the wave.
    Percent(u8),
}

impl Threshold {
    /// As a ceiling for a wave of `size` (failures allowed): percentages round down, so
    /// `5%` of 50 allows 2 failures and the 3rd halts.
    pub fn allowed(self, size: u32) -> u32 {
        match self {
            Threshold::Count(n) => n.min(size),
            Threshold::Percent(p) => (u64::from(p) * u64::from(size) / 100) as u32,
        }
    }

    /// As a requirement for a wave of `size` (successes needed): percentages round up.
    pub fn required(self, size: u32) -> u32 {
        match self {
            Threshold::Count(n) => n.min(size),
            Threshold::Percent(p) => (u64::from(p) * u64::from(size)).div_ceil(100) as u32,
        }
    }
}

/// A duration in the operator's text form: a whole number and a unit, `500ms`, `30s`, `2m`,
/// `1h` (up to 7 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

/// Bounds a custom metric must stay within while a node soaks (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricBounds {
    /// Lowest healthy value.
    pub min: i64,
    /// Highest healthy value.
    pub max: i64,
}

/// What a node must show after it applied the image before it counts as confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthGate {
    /// Longest a node of a started wave may go without transfer progress (from the wave's
    /// start, or its last `Downloading`/`Verified` report) before it counts as failed: a node
    /// that is offline when its wave starts cannot stall the campaign.
    pub transfer_deadline: Duration,
    /// From apply to the first report running the new version.
    pub return_deadline: Duration,
    /// How long the node must then stay healthy.
    pub soak: Duration,
    /// Longest silence between two reports during the soak.
    pub max_silence: Duration,
    /// Lowest acceptable free heap, bytes.
    pub heap_floor: u32,
    /// How many times the boot counter may rise during the soak (more is a reboot loop).
    pub max_reboots: u32,
    /// Optional bounds on the node's custom metric (reports without a metric pass).
    pub metric: Option<MetricBounds>,
}

impl Default for HealthGate {
    /// 30 min without transfer progress, 5 min to come back, 2 min soak, 1 min max silence,
    /// no heap floor, 2 reboots allowed.
    fn default() -> Self {
        HealthGate {
            transfer_deadline: Duration::from_secs(1800),
            return_deadline: Duration::from_secs(300),
            soak: Duration::from_secs(120),
            max_silence: Duration::from_secs(60),
            heap_floor: 0,
            max_reboots: 2,
            metric: None,
        }
    }
}

/// A whole campaign plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The waves.
    pub waves: Waves,
    /// Failures a wave tolerates; one more halts the campaign.
    pub max_failures: Threshold,
    /// Confirmed nodes a wave needs before the next one starts; `None`: every node the
    /// failure threshold does not allow to fail (wave size − allowed failures).
    pub min_success: Option<Threshold>,
    /// The per-node health gate.
    pub gate: HealthGate,
}

impl Plan {
    /// A plan with the default gate and success threshold.
    pub fn new(waves: Waves, max_failures: Threshold) -> Self {
        Plan {
            waves,
            max_failures,
            min_success: None,
            gate: HealthGate::default(),
        }
    }
}

/// Why a plan (or one of its text forms) is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Nothing given.
    Empty,
    /// An entry that is not a number, percentage, node list or duration.
    BadEntry(String),
    /// A percentage outside 0 < p <= 100 (for thresholds: 0 <= p <= 100).
    PercentOutOfRange(String),
    /// A wave of zero nodes (`0`, `[]`).
    EmptyWave(usize),
    /// More than [`MAX_WAVES`] waves.
    TooManyWaves(usize),
    /// A cumulative target below the one before it (wave index, as written).
    NotCumulative(usize),
    /// A duration without a known unit, zero, or above 7 days.
    BadDuration(String),
    /// The fleet is empty.
    EmptyFleet,
    /// More waves than nodes in the fleet.
    MoreWavesThanNodes {
        /// Waves in the plan.
        waves: usize,
        /// Nodes in the fleet.
        nodes: usize,
    },
    /// A cumulative count above the fleet size (wave index).
    CountAboveFleet(usize),
    /// An explicit node that is not in the fleet.
    UnknownNode(NodeId),
    /// An explicit node listed twice.
    DuplicateNode(NodeId),
    /// A cumulative target below the nodes earlier waves already cover (wave index).
    BelowCovered {
        /// Wave index, as written.
        wave: usize,
        /// The target in nodes.
        target: u32,
        /// Nodes covered by earlier waves.
        covered: u32,
    },
    /// `min_success` asks for more than the failure threshold leaves.
    Contradictory,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Empty => f.write_str("empty"),
            PlanError::BadEntry(e) => {
                write!(f, "`{e}` is not a count, N%, [node list] or duration")
            }
            PlanError::PercentOutOfRange(e) => {
                write!(f, "`{e}`: percentages are whole numbers in 1..=100")
            }
            PlanError::EmptyWave(i) => write!(f, "wave {i} has no node"),
            PlanError::TooManyWaves(n) => write!(f, "{n} waves: at most {MAX_WAVES}"),
            PlanError::NotCumulative(i) => {
                write!(
                    f,
                    "wave {i} is smaller than the one before: waves are cumulative (1,10%,100%)"
                )
            }
            PlanError::BadDuration(e) => {
                write!(
                    f,
                    "`{e}` is not a duration like 500ms, 30s, 2m or 1h (above 0, at most 7 days)"
                )
            }
            PlanError::EmptyFleet => f.write_str("the fleet is empty"),
            PlanError::MoreWavesThanNodes { waves, nodes } => {
                write!(f, "{waves} waves for a fleet of {nodes} nodes")
            }
            PlanError::CountAboveFleet(i) => {
                write!(f, "wave {i} asks for more nodes than the fleet has")
            }
            PlanError::UnknownNode(n) => write!(f, "node {n} is not in the fleet"),
            PlanError::DuplicateNode(n) => write!(f, "node {n} is listed twice"),
            PlanError::BelowCovered {
                wave,
                target,
                covered,
            } => write!(
                f,
                "wave {wave} covers {target} nodes in total, but earlier waves already cover {covered}"
            ),
            PlanError::Contradictory => f.write_str(
                "the success threshold needs more nodes than the failure threshold leaves",
            ),
        }
    }
}

fn parse_percent(text: &str, allow_zero: bool) -> Result<u8, PlanError> {
    let digits = text.trim_end_matches('%').trim();
    let p: u32 = digits
        .parse()
        .map_err(|_| PlanError::PercentOutOfRange(text.to_string()))?;
    if p > 100 || (p == 0 && !allow_zero) {
        return Err(PlanError::PercentOutOfRange(text.to_string()));
    }
    Ok(p as u8)
}

fn parse_entry(text: &str, index: usize) -> Result<WaveSpec, PlanError> {
    let bad = || PlanError::BadEntry(text.to_string());
    if let Some(list) = text.strip_prefix('[') {
        let list = list.strip_suffix(']').ok_or_else(bad)?;
        let nodes = list
            .split_whitespace()
            .map(|n| n.parse::<NodeId>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(PlanError::EmptyWave(index));
        }
        return Ok(WaveSpec::Nodes(nodes));
    }
    if text.ends_with('%') {
        return parse_percent(text, false).map(WaveSpec::Percent);
    }
    match text.parse::<u32>() {
        Ok(0) => Err(PlanError::EmptyWave(index)),
        Ok(n) => Ok(WaveSpec::Count(n)),
        Err(_) => Err(bad()),
    }
}

/// Splits at commas outside brackets.
fn split_entries(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

impl FromStr for Waves {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        if s.trim().is_empty() {
            return Err(PlanError::Empty);
        }
        let entries = split_entries(s);
        if entries.len() > MAX_WAVES {
            return Err(PlanError::TooManyWaves(entries.len()));
        }
        let (mut last_count, mut last_percent) = (0u32, 0u8);
        let mut waves = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let spec = parse_entry(e, i)?;
            match spec {
                WaveSpec::Count(n) if n < last_count => return Err(PlanError::NotCumulative(i)),
                WaveSpec::Count(n) => last_count = n,
                WaveSpec::Percent(p) if p < last_percent => {
                    return Err(PlanError::NotCumulative(i));
                }
                WaveSpec::Percent(p) => last_percent = p,
                WaveSpec::Nodes(_) => {}
            }
            waves.push(spec);
        }
        Ok(Waves(waves))
    }
}

impl FromStr for Threshold {
    type Err = PlanError;
    /// `5%` or `3`.
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PlanError::Empty);
        }
        if s.ends_with('%') {
            return parse_percent(s, true).map(Threshold::Percent);
        }
        s.parse()
            .map(Threshold::Count)
            .map_err(|_| PlanError::BadEntry(s.to_string()))
    }
}

impl FromStr for Span {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let t = s.trim();
        let bad = || PlanError::BadDuration(s.to_string());
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms_per = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let ms = n.checked_mul(ms_per).ok_or_else(bad)?;
        if ms == 0 || ms > 7 * 24 * 3_600_000 {
            return Err(bad());
        }
        Ok(Span(Duration::from_millis(ms)))
    }
}
