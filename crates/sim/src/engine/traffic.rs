//! Generated traffic: the scenario's SINGLE and BROADCAST messages, their delivery checks and
//! the payload tags that identify them. Part of [`Sim`]'s event handling.

use super::*;

impl<A: SimApp> Sim<A> {
    pub(super) fn traffic(&mut self, single: bool) {
        let t = &self.sc.traffic;
        let every = if !t.enabled {
            None
        } else if single {
            t.single_every
        } else {
            t.broadcast_every
        };
        let Some(every) = every else { return };
        self.queue
            .push(self.now + every.micros().max(1), Ev::Traffic { single });
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up())
            .collect();
        if up.is_empty() {
            return;
        }
        let from = up[self.rng.below(up.len() as u64) as usize];
        let id = if single {
            self.singles.len()
        } else {
            self.broadcasts.len()
        };
        let msg = tag(id, self.sc.traffic.payload_bytes);
        let n = &mut self.nodes[from];
        let local = n.clock.local(self.now);
        let node = n.node.as_mut().expect("up");
        if single {
            let known = node.node_list(false);
            if known.is_empty() {
                return;
            }
            let dest_id = known[self.rng.below(known.len() as u64) as usize];
            if node.send_single(local, dest_id, msg).is_ok() {
                self.singles.push(SingleTrack {
                    dest: dest_id as usize - 1,
                    hops: 0,
                    delivered: 0,
                    loop_reported: false,
                });
            }
        } else if node.send_broadcast(local, msg, false).is_ok() {
            let expected = self.forward_reach(from);
            let n = self.nodes.len();
            self.broadcasts.push(BroadcastTrack {
                sender: from,
                sent_at: self.now,
                expected,
                received: vec![0; n],
            });
            let window = self.sc.invariants.delivery_window.micros();
            self.queue
                .push(self.now + window, Ev::BroadcastCheck { idx: id });
        }
        self.drain(from);
    }

    pub(super) fn received(&mut self, idx: usize, msg: &[u8], broadcast: bool) {
        let Some(id) = parse_tag(msg) else { return };
        let node_id = self.nodes[idx].id;
        if broadcast {
            let Some(b) = self.broadcasts.get_mut(id) else {
                return;
            };
            // After its delivery window the broadcast was checked and its per-node counts
            // freed: a copy that arrives later was already counted missing at that node.
            let Some(count) = b.received.get_mut(idx) else {
                return;
            };
            *count = count.saturating_add(1);
            if *count == 2 {
                self.broadcast_duplicates += 1;
                self.violation(
                    "broadcast-duplicate",
                    vec![node_id],
                    format!("broadcast #{id} delivered more than once"),
                );
            }
        } else {
            let Some(s) = self.singles.get_mut(id) else {
                return;
            };
            s.delivered = s.delivered.saturating_add(1);
            let (dest, delivered, hops) = (s.dest, s.delivered, s.hops);
            if dest != idx {
                self.violation(
                    "single-misdelivered",
                    vec![node_id],
                    format!("SINGLE #{id} for node {} delivered here", dest + 1),
                );
            } else if delivered == 1 {
                self.singles_delivered += 1;
                self.single_hops += u64::from(hops);
            } else if delivered == 2 {
                self.violation(
                    "single-duplicate",
                    vec![node_id],
                    format!("SINGLE #{id} delivered more than once"),
                );
            }
        }
    }

    pub(super) fn broadcast_check(&mut self, idx: usize) {
        let b = &self.broadcasts[idx];
        let mut missing = Vec::new();
        let mut owed = 0;
        let mut ok = 0;
        for i in 0..self.nodes.len() {
            if i == b.sender || !b.expected[i] {
                continue;
            }
            owed += 1;
            match b.received[i] {
                0 => missing.push(self.nodes[i].id),
                1 => ok += 1,
                _ => {}
            }
        }
        self.broadcast_expected += owed;
        self.broadcast_delivered += ok;
        self.broadcast_checks += owed;
        let sent = b.sent_at;
        // Free the per-node vectors of finished broadcasts.
        self.broadcasts[idx].expected = Vec::new();
        self.broadcasts[idx].received = Vec::new();
        if !missing.is_empty() {
            let n = missing.len();
            missing.truncate(20);
            self.violation("broadcast-lost", missing, format!("broadcast #{idx} sent at {:.3} s never reached {n} node(s) that stayed reachable", secs(sent)));
        }
    }

    /// Nodes a broadcast from `from` reaches now: along connections the forwarding node has synced.
    fn forward_reach(&self, from: usize) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        seen[from] = true;
        let mut stack = vec![from];
        while let Some(i) = stack.pop() {
            for &l in &self.nodes[i].links {
                let k = &self.links[l];
                let s = k.side_of(i);
                if k.synced[s] && k.open[s] && k.open[1 - s] && !k.blackhole {
                    let j = k.ends[1 - s];
                    if !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        seen
    }

    /// A node that drops out of a pending broadcast's reach is no longer owed it.
    pub(super) fn prune_broadcast_expectations(&mut self) {
        let window = self.sc.invariants.delivery_window.micros();
        for k in 0..self.broadcasts.len() {
            let b = &self.broadcasts[k];
            if b.expected.is_empty() || b.sent_at + window < self.now {
                continue;
            }
            let reach = self.forward_reach(b.sender);
            for (e, r) in self.broadcasts[k].expected.iter_mut().zip(reach) {
                *e &= r;
            }
        }
    }
}

/// The payload of generated message `id`: `sim#<id>#` padded with dots.
fn tag(id: usize, len: usize) -> Vec<u8> {
    let mut v = format!("sim#{id}#").into_bytes();
    if v.len() < len {
        v.resize(len, b'.');
    }
    v
}

fn parse_tag(msg: &[u8]) -> Option<usize> {
    let rest = msg.strip_prefix(b"sim#")?;
    let end = memchr::memchr(b'#', rest)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The generated-message id inside a SINGLE frame's JSON.
pub(super) fn tag_id(json: &[u8]) -> Option<usize> {
    if json.len() > 4096 {
        return None;
    }
    let p = memchr::memmem::find(json, b"\"msg\":\"sim#")?;
    parse_tag(&json[p + 7..])
}
