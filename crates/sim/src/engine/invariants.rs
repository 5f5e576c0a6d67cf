//! The invariant checks (tree-ness, formation, convergence, time spread) and the final report.
//! Part of [`Sim`]'s event handling.

use super::*;

impl<A: SimApp> Sim<A> {
    pub(super) fn violation(&mut self, kind: &str, nodes: Vec<u32>, detail: String) {
        self.violations_total += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation {
                t_us: self.now,
                kind: kind.into(),
                nodes,
                detail,
            });
        }
    }

    /// A connection is an edge of the graph while both ends hold it open and at least one
    /// has synced (it forwards over it).
    fn is_edge(&self, l: LinkId) -> bool {
        let k = &self.links[l];
        k.open[0] && k.open[1] && !k.blackhole && (k.synced[0] || k.synced[1])
    }

    pub(super) fn edge_added(&mut self, l: LinkId) {
        if !self.is_edge(l) {
            return;
        }
        let [a, b] = self.links[l].ends;
        // Is there already a path a -> b? Then this edge closes a cycle.
        let mut prev: Vec<Option<(usize, LinkId)>> = vec![None; self.nodes.len()];
        let mut seen = vec![false; self.nodes.len()];
        seen[a] = true;
        let mut queue = std::collections::VecDeque::from([a]);
        while let Some(i) = queue.pop_front() {
            if i == b {
                break;
            }
            for &e in &self.nodes[i].links {
                if e == l || !self.is_edge(e) {
                    continue;
                }
                let k = &self.links[e];
                let j = k.ends[1 - k.side_of(i)];
                if !seen[j] {
                    seen[j] = true;
                    prev[j] = Some((i, e));
                    queue.push_back(j);
                }
            }
        }
        if !seen[b] {
            return;
        }
        let mut links = vec![l];
        let mut nodes = vec![self.nodes[b].id];
        let mut cur = b;
        while let Some((p, e)) = prev[cur] {
            links.push(e);
            nodes.push(self.nodes[p].id);
            cur = p;
        }
        let idx = self.cycles.len();
        self.cycles.push(OpenCycle {
            links,
            nodes,
            since: self.now,
            open: true,
        });
        let grace = self.sc.invariants.cycle_grace.micros();
        self.queue.push(self.now + grace, Ev::CycleCheck { idx });
    }

    pub(super) fn edge_removed(&mut self, l: LinkId) {
        self.last_change = self.now;
        for c in &mut self.cycles {
            if c.open && c.links.contains(&l) {
                c.open = false;
                self.longest_cycle = self.longest_cycle.max(self.now - c.since);
            }
        }
        self.prune_broadcast_expectations();
    }

    pub(super) fn cycle_check(&mut self, idx: usize) {
        let c = &self.cycles[idx];
        if c.open && c.links.iter().all(|&l| self.is_edge(l)) {
            let nodes = c.nodes.clone();
            let since = c.since;
            self.violation(
                "cycle-kept",
                nodes,
                format!(
                    "connection cycle formed at {:.3} s still there after {}",
                    secs(since),
                    self.sc.invariants.cycle_grace
                ),
            );
        }
    }

    /// Connected components over connections both ends have synced, among nodes that are up.
    pub(super) fn components(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let mut comp = vec![usize::MAX; n];
        let mut next = 0;
        for s in 0..n {
            if comp[s] != usize::MAX || !self.nodes[s].up() {
                continue;
            }
            comp[s] = next;
            let mut stack = vec![s];
            while let Some(i) = stack.pop() {
                for &l in &self.nodes[i].links {
                    let k = &self.links[l];
                    if k.open[0] && k.open[1] && k.synced[0] && k.synced[1] && !k.blackhole {
                        let j = k.ends[1 - k.side_of(i)];
                        if comp[j] == usize::MAX {
                            comp[j] = next;
                            stack.push(j);
                        }
                    }
                }
            }
            next += 1;
        }
        comp
    }

    /// Formation: every node up (and every node due at the start booted) in one component.
    /// Its time is the last new connection before the check, which is exact: only a new
    /// connection can join components.
    pub(super) fn check_formation(&mut self) {
        if self.formed_at.is_some() {
            return;
        }
        let late = &self.late_joiners;
        if self
            .nodes
            .iter()
            .any(|n| !n.up() && n.boots == 0 && late.binary_search(&n.id).is_err())
        {
            return;
        }
        let comp = self.components();
        let first = comp.iter().find(|&&c| c != usize::MAX).copied();
        if first.is_some() && comp.iter().all(|&c| c == usize::MAX || Some(c) == first) {
            self.formed_at = Some(self.last_new_connection);
        }
    }

    /// Does every node's node list equal the set of nodes it can reach? Returns the nodes
    /// whose list differs.
    fn convergence_mismatches(&mut self) -> (Vec<u32>, usize, usize) {
        self.convergence_checks += 1;
        let comp = self.components();
        let mut size: BTreeMap<usize, usize> = BTreeMap::new();
        for &c in comp.iter().filter(|&&c| c != usize::MAX) {
            *size.entry(c).or_default() += 1;
        }
        let mut bad = Vec::new();
        let mut stamp = vec![0u32; self.nodes.len()];
        let mut up = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(node) = n.node.as_ref() else {
                continue;
            };
            up += 1;
            let list = node.node_list(true);
            let want = size[&comp[i]];
            let mut ok = list.len() == want;
            if ok {
                for id in list {
                    let j = (id as usize).wrapping_sub(1);
                    if j >= self.nodes.len() || comp[j] != comp[i] || stamp[j] == i as u32 + 1 {
                        ok = false;
                        break;
                    }
                    stamp[j] = i as u32 + 1;
                }
            }
            if !ok {
                bad.push(n.id);
            }
        }
        (bad, size.len(), up)
    }

    pub(super) fn close_epoch(&mut self) {
        let Some((after, start)) = self.epoch.take() else {
            return;
        };
        let (bad, components, up) = self.convergence_mismatches();
        let converged = bad.is_empty();
        let settle = self.last_change.max(start);
        if !converged
            && self.now.saturating_sub(settle) >= self.sc.invariants.convergence_bound.micros()
        {
            let n = bad.len();
            let mut nodes = bad;
            nodes.truncate(20);
            self.violation("no-convergence", nodes, format!("{n} node list(s) still differ from the reachable set {:.1} s after the last topology change", secs(self.now - settle)));
        }
        self.convergence.push(Convergence {
            after,
            at_s: secs(start),
            converged_after_s: converged.then(|| secs(settle - start)),
            components,
            nodes_up: up,
        });
    }

    /// Mesh-time spread across the largest component now, and its size.
    pub(super) fn time_spread(&self) -> (Option<u64>, usize) {
        let comp = self.components();
        let mut size: BTreeMap<usize, usize> = BTreeMap::new();
        for &c in comp.iter().filter(|&&c| c != usize::MAX) {
            *size.entry(c).or_default() += 1;
        }
        let Some((&big, &count)) = size.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        else {
            return (None, 0);
        };
        let mut reference: Option<u32> = None;
        let (mut lo, mut hi) = (0i64, 0i64);
        for (i, n) in self.nodes.iter().enumerate() {
            if comp[i] != big {
                continue;
            }
            let Some(node) = n.node.as_ref() else {
                continue;
            };
            let mt = node.mesh_time(n.clock.local(self.now));
            let r = *reference.get_or_insert(mt);
            let d = i64::from(mt.wrapping_sub(r) as i32);
            lo = lo.min(d);
            hi = hi.max(d);
        }
        (Some((hi - lo) as u64), count)
    }

    pub(super) fn finish(&mut self, wall_s: f64) -> Report {
        self.close_epoch();
        // Broadcasts whose window ended are checked; later ones are left unchecked.
        let (spread, count) = self.time_spread();
        let mut by_type: BTreeMap<String, crate::report::Traffic> = BTreeMap::new();
        for (&ty, t) in &self.by_type {
            let name = match sniff::type_name(ty) {
                "OTHER" => format!("TYPE_{ty}"),
                n => n.to_string(),
            };
            let e = by_type.entry(name).or_default();
            e.frames += t.frames;
            e.bytes += t.bytes;
        }
        let mut links = crate::report::LinkReport {
            node_max_queue_bytes: vec![0; self.nodes.len()],
            ..Default::default()
        };
        for l in &self.links {
            for side in 0..2 {
                let q = &mut links.node_max_queue_bytes[l.ends[side]];
                *q = (*q).max(l.lanes[side].max_backlog);
            }
            if l.connected[0] && l.connected[1] {
                links.connections += 1;
            }
            links.frames_total += l.frames();
            links.frames_max = links.frames_max.max(l.frames());
            links.bytes_max = links.bytes_max.max(l.bytes());
            links.max_queue_delay_ms = links
                .max_queue_delay_ms
                .max(l.max_queue_delay as f64 / 1000.0);
            links.max_queue_bytes = links.max_queue_bytes.max(l.max_queue_bytes);
        }
        let mut stats: Vec<pmesh_node::NodeStats> = self.retired_stats.clone();
        stats.extend(
            self.nodes
                .iter()
                .filter_map(|n| n.node.as_ref().map(|x| x.stats())),
        );
        // Every counter of the one list, summed over nodes and boots.
        let mut node_stats = BTreeMap::new();
        for c in stats.iter().flat_map(|s| s.counters()) {
            *node_stats.entry(c.name.to_string()).or_insert(0) += c.value;
        }
        let sim_s = secs(self.now);
        Report {
            scenario: self.sc.name.clone(),
            nodes: self.sc.nodes,
            seed: self.sc.seed,
            topology: self.sc.topology.name(),
            simulated_s: sim_s,
            events: self.events,
            formed_at_s: self.formed_at.map(secs),
            convergence: self.convergence.clone(),
            time_sync: crate::report::TimeSyncReport {
                spread_us: spread,
                nodes: count,
                target_us: u64::from(pmesh_node::ntp::TIME_SYNC_ACCURACY),
                adjustments: self.time_adjustments,
                samples: self.time_samples.clone(),
            },
            traffic: self.total,
            by_type,
            links,
            drops: self
                .drops
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            messages: crate::report::MessageReport {
                broadcasts_sent: self.broadcasts.len() as u64,
                broadcast_expected: self.broadcast_expected,
                broadcast_delivered: self.broadcast_delivered,
                broadcast_duplicates: self.broadcast_duplicates,
                singles_sent: self.singles.len() as u64,
                singles_delivered: self.singles_delivered,
                singles_mean_hops: if self.singles_delivered > 0 {
                    (self.single_hops as f64 / self.singles_delivered as f64 * 100.0).round()
                        / 100.0
                } else {
                    0.0
                },
            },
            wifi: self.stations.report().clone(),
            invariants: crate::report::InvariantReport {
                cycles_formed: self.cycles.len() as u64,
                longest_cycle_s: secs(self.longest_cycle),
                broadcast_checks: self.broadcast_checks,
                convergence_checks: self.convergence_checks,
                violations: self.violations.clone(),
                violations_total: self.violations_total,
            },
            node_stats,
            max_node_buffered_bytes: self.max_buffered,
            radio: self
                .layout
                .positions
                .as_ref()
                .map(|_| crate::report::RadioReport {
                    area_m: self.layout.area_m,
                    placements: self.layout.placements,
                    graph_components: crate::topology::graph_components(&self.layout.visible),
                    mean_in_range: self.layout.visible.iter().map(Vec::len).sum::<usize>() as f64
                        / self.layout.visible.len().max(1) as f64,
                }),
            app: self.app.report(self.now),
            wall: crate::report::WallReport {
                seconds: wall_s,
                events_per_s: if wall_s > 0.0 {
                    self.events as f64 / wall_s
                } else {
                    0.0
                },
                sim_s_per_wall_s: if wall_s > 0.0 { sim_s / wall_s } else { 0.0 },
                peak_rss_bytes: report::peak_rss_bytes(),
            },
        }
    }
}
