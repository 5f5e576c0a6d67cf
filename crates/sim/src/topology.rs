//! Which APs each node can see: a parent by decree in the fixed topologies, every node within
//! radio range (strongest first) in the radio model.

use crate::rng::SimRng;
use crate::scenario::{Scenario, Topology};

/// The static radio environment.
#[derive(Debug, Clone)]
pub struct Layout {
    /// For each node index, the node indexes whose AP it can see, strongest signal first.
    pub visible: Vec<Vec<u32>>,
    /// Positions in metres (radio model only).
    pub positions: Option<Vec<(f64, f64)>>,
    /// Side of the area (radio model only).
    pub area_m: Option<f64>,
    /// Soft-AP station limit.
    pub max_stations: u32,
    /// Whether the visibility graph is connected.
    pub connected: bool,
    /// Placement attempts needed (radio model).
    pub placements: u32,
}

impl Layout {
    /// Builds the layout for a scenario.
    pub fn build(s: &Scenario, rng: &mut SimRng) -> Layout {
        let n = s.nodes as usize;
        let fixed = |parent: &dyn Fn(usize, &mut SimRng) -> usize, rng: &mut SimRng| {
            let mut visible = vec![Vec::new(); n];
            for (i, v) in visible.iter_mut().enumerate().skip(1) {
                v.push(parent(i, rng) as u32);
            }
            Layout {
                visible,
                positions: None,
                area_m: None,
                max_stations: s.wifi.max_stations.unwrap_or(u32::MAX),
                connected: true,
                placements: 0,
            }
        };
        match &s.topology {
            Topology::Chain => fixed(&|i, _| i - 1, rng),
            Topology::Star => fixed(&|_, _| 0, rng),
            Topology::Tree { fanout } => {
                let f = *fanout as usize;
                fixed(&|i, _| (i - 1) / f, rng)
            }
            Topology::RandomTree => fixed(&|i, r| r.below(i as u64) as usize, rng),
            Topology::Radio {
                range_m,
                positions: Some(given),
                ..
            } => {
                let pos: Vec<(f64, f64)> = given.iter().map(|p| (p[0], p[1])).collect();
                let visible = in_range(&pos, *range_m);
                Layout {
                    connected: graph_connected(&visible),
                    visible,
                    positions: Some(pos),
                    area_m: None,
                    max_stations: s.wifi.max_stations.unwrap_or(10),
                    placements: 0,
                }
            }
            Topology::Radio {
                range_m,
                neighbours,
                area_m,
                connected,
                positions: None,
            } => {
                let side = area_m.unwrap_or_else(|| {
                    (n as f64 * std::f64::consts::PI * range_m * range_m / neighbours).sqrt()
                });
                let mut placements = 0;
                loop {
                    placements += 1;
                    let pos: Vec<(f64, f64)> = (0..n)
                        .map(|_| (rng.unit() * side, rng.unit() * side))
                        .collect();
                    let visible = in_range(&pos, *range_m);
                    let is_connected = graph_connected(&visible);
                    if is_connected || !connected || placements >= 100 {
                        return Layout {
                            visible,
                            positions: Some(pos),
                            area_m: Some(side),
                            max_stations: s.wifi.max_stations.unwrap_or(10),
                            connected: is_connected,
                            placements,
                        };
                    }
                }
            }
        }
    }
}

/// Neighbours within `range` of each point, nearest first (ties by index), via a grid of
/// range-sized cells so placement stays O(n · density).
fn in_range(pos: &[(f64, f64)], range: f64) -> Vec<Vec<u32>> {
    use std::collections::BTreeMap;
    let cell = |p: (f64, f64)| ((p.0 / range).floor() as i64, (p.1 / range).floor() as i64);
    let mut grid: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
    for (i, &p) in pos.iter().enumerate() {
        grid.entry(cell(p)).or_default().push(i as u32);
    }
    let r2 = range * range;
    pos.iter()
        .enumerate()
        .map(|(i, &p)| {
            let (cx, cy) = cell(p);
            let mut near: Vec<(f64, u32)> = Vec::new();
            for dx in -1..=1 {
                for dy in -1..=1 {
                    if let Some(v) = grid.get(&(cx + dx, cy + dy)) {
                        for &j in v {
                            if j as usize == i {
                                continue;
                            }
                            let q = pos[j as usize];
                            let d2 = (p.0 - q.0).powi(2) + (p.1 - q.1).powi(2);
                            if d2 <= r2 {
                                near.push((d2, j));
                            }
                        }
                    }
                }
            }
            near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            near.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// Connected components of a visibility graph (edges taken in both directions).
pub fn graph_components(adj: &[Vec<u32>]) -> usize {
    let n = adj.len();
    let mut undirected: Vec<Vec<u32>> = adj.to_vec();
    for (i, v) in adj.iter().enumerate() {
        for &j in v {
            undirected[j as usize].push(i as u32);
        }
    }
    let mut seen = vec![false; n];
    let mut components = 0;
    for s in 0..n {
        if seen[s] {
            continue;
        }
        components += 1;
        seen[s] = true;
        let mut stack = vec![s];
        while let Some(i) = stack.pop() {
            for &j in &undirected[i] {
                if !seen[j as usize] {
                    seen[j as usize] = true;
                    stack.push(j as usize);
                }
            }
        }
    }
    components
}

fn graph_connected(adj: &[Vec<u32>]) -> bool {
    if adj.is_empty() {
        return true;
    }
    let mut seen = vec![false; adj.len()];
    let mut stack = vec![0usize];
    seen[0] = true;
    let mut count = 1;
    while let Some(i) = stack.pop() {
        for &j in &adj[i] {
            if !seen[j as usize] {
                seen[j as usize] = true;
                count += 1;
                stack.push(j as usize);
            }
        }
    }
    count == adj.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_of_a_visibility_graph() {
        // 0-1 (seen one way only), 2 alone, 3-4.
        let adj = vec![vec![1], vec![], vec![], vec![4], vec![3]];
        assert_eq!(graph_components(&adj), 3);
        assert_eq!(graph_components(&[]), 0);
    }

    #[test]
    fn fixed_parents() {
        let mut s = Scenario {
            nodes: 7,
            topology: Topology::Tree { fanout: 2 },
            ..Scenario::default()
        };
        let l = Layout::build(&s, &mut SimRng::new(1));
        assert_eq!(
            l.visible[1..].iter().map(|v| v[0]).collect::<Vec<_>>(),
            vec![0, 0, 1, 1, 2, 2]
        );
        s.topology = Topology::Chain;
        let l = Layout::build(&s, &mut SimRng::new(1));
        assert_eq!(l.visible[3], vec![2]);
        assert!(l.visible[0].is_empty());
    }

    #[test]
    fn radio_is_connected_and_sorted() {
        let s = Scenario {
            nodes: 200,
            ..Scenario::default()
        };
        let l = Layout::build(&s, &mut SimRng::new(7));
        assert!(l.connected);
        let pos = l.positions.as_ref().unwrap();
        for (i, v) in l.visible.iter().enumerate() {
            let d: Vec<f64> = v
                .iter()
                .map(|&j| (pos[i].0 - pos[j as usize].0).hypot(pos[i].1 - pos[j as usize].1))
                .collect();
            assert!(d.windows(2).all(|w| w[0] <= w[1]));
            assert!(d.iter().all(|&x| x <= 50.0));
        }
        assert_eq!(graph_components(&l.visible), 1);
        let mean = l.visible.iter().map(Vec::len).sum::<usize>() as f64 / 200.0;
        assert!(mean > 10.0 && mean < 16.0, "{mean}");
    }
}
