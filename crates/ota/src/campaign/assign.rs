//! Resolving a plan against a fleet: which node goes into which wave.
//!
//! Nodes are assigned by a **seeded shuffle** of the sorted fleet, not by sorted ids: node ids
//! come from MAC addresses, which run sequentially through a manufacturing batch, so the
//! lowest ids would make wave 1 one batch of one hardware revision instead of a sample of the
//! fleet. The shuffle is a Fisher–Yates over SplitMix64, so the same fleet (in any order) and
//! the same seed give the same waves on every run and every platform; the campaign keeps the
//! resulting lists, so a restore does not depend on the seed.

use alloc::vec::Vec;

use pmesh_node::SplitMix64;

use super::NodeId;
use super::plan::{Plan, PlanError, WaveSpec};

/// Uniform in 0..n (n > 0), by rejection so no index is favoured.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

/// The waves as node lists (no empty wave) and the nodes the plan leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub waves: Vec<Vec<NodeId>>,
    pub left_out: Vec<NodeId>,
}

fn target_of(spec: &WaveSpec, fleet: u32, index: usize) -> Result<Option<u32>, PlanError> {
    match *spec {
        WaveSpec::Count(n) if n > fleet => Err(PlanError::CountAboveFleet(index)),
        WaveSpec::Count(n) => Ok(Some(n)),
        WaveSpec::Percent(p) => Ok(Some((u64::from(p) * u64::from(fleet)).div_ceil(100) as u32)),
        WaveSpec::Nodes(_) => Ok(None),
    }
}

/// Explicit nodes must be in the (sorted) fleet and listed once; returns them sorted.
fn explicit_nodes(plan: &Plan, fleet: &[NodeId]) -> Result<Vec<NodeId>, PlanError> {
    let mut explicit: Vec<NodeId> = Vec::new();
    for spec in &plan.waves.0 {
        if let WaveSpec::Nodes(list) = spec {
            for &n in list {
                if fleet.binary_search(&n).is_err() {
                    return Err(PlanError::UnknownNode(n));
                }
                explicit.push(n);
            }
        }
    }
    explicit.sort_unstable();
    if let Some(w) = explicit.windows(2).find(|w| w[0] == w[1]) {
        return Err(PlanError::DuplicateNode(w[0]));
    }
    Ok(explicit)
}

/// Assigns `fleet` (any order, duplicates ignored) to the plan's waves with `seed`.
/// Waves that add no node on this fleet (1 % of 20 nodes after a first wave of 1) are dropped.
pub(crate) fn assign(plan: &Plan, fleet: &[NodeId], seed: u64) -> Result<Assignment, PlanError> {
    let mut fleet = fleet.to_vec();
    fleet.sort_unstable();
    fleet.dedup();
    if fleet.is_empty() {
        return Err(PlanError::EmptyFleet);
    }
    let specs = &plan.waves.0;
    if specs.is_empty() {
        return Err(PlanError::Empty);
    }
    if specs.len() > fleet.len() {
        return Err(PlanError::MoreWavesThanNodes {
            waves: specs.len(),
            nodes: fleet.len(),
        });
    }
    let explicit = explicit_nodes(plan, &fleet)?;
    let mut pool: Vec<NodeId> = fleet
        .iter()
        .copied()
        .filter(|n| explicit.binary_search(n).is_err())
        .collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..pool.len()).rev() {
        pool.swap(i, below(&mut rng, i as u64 + 1) as usize);
    }
    let n = fleet.len() as u32;
    let (mut covered, mut next) = (0u32, 0usize);
    let mut waves = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let wave: Vec<NodeId> = match (spec, target_of(spec, n, index)?) {
            (WaveSpec::Nodes(list), _) => list.clone(),
            (_, Some(target)) if target < covered => {
                return Err(PlanError::BelowCovered {
                    wave: index,
                    target,
                    covered,
                });
            }
            (_, target) => {
                let take = (target.unwrap_or(0) - covered) as usize;
                let end = (next + take).min(pool.len());
                let wave = pool[next..end].to_vec();
                next = end;
                wave
            }
        };
        covered += wave.len() as u32;
        if !wave.is_empty() {
            waves.push(wave);
        }
    }
    Ok(Assignment {
        waves,
        left_out: pool[next..].to_vec(),
    })
}
