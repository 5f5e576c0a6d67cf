//! Node sync: the topology each link reports (NODE_SYNC, spec §4), the loops and false claims
//! it may carry, and the re-syncs a change triggers. Part of [`Core`]'s state machine.

use super::*;

/// If `raw` is a NODE_SYNC whose tree is exactly `tree_json` (our compact serialization of the
/// tree we hold for that link), its type: `{` + the tree's fields + `,"type":5|6,"dest":D,
/// "from":F}` + NUL, the order every stock and pmesh node writes. Such a frame decodes to the
/// stored tree (the writer's output parses back to the same tree and `nodeId` is present), so
/// it needs no parsing. Anything else returns `None` and is parsed.
pub(super) fn same_tree_sync(raw: &[u8], tree_json: &[u8]) -> Option<i32> {
    let fields = tree_json.strip_suffix(b"}")?;
    let rest = raw.strip_prefix(fields)?;
    let rest = rest.strip_prefix(b",\"type\":")?;
    let (ty, rest) = match rest.split_first()? {
        (b'5', rest) => (types::NODE_SYNC_REQUEST, rest),
        (b'6', rest) => (types::NODE_SYNC_REPLY, rest),
        _ => return None,
    };
    let rest = skip_u32_digits(rest.strip_prefix(b",\"dest\":")?)?;
    let rest = skip_u32_digits(rest.strip_prefix(b",\"from\":")?)?;
    (rest == b"}\0").then_some(ty)
}

/// `r` after 1 to 10 leading ASCII digits, if it has that many.
fn skip_u32_digits(r: &[u8]) -> Option<&[u8]> {
    let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=10).contains(&n).then(|| &r[n..])
}

/// The decision of [`Core::loop_cut`].
enum LoopCut {
    /// Close the link the looping tree came on.
    This,
    /// Close this other link (ours on the cycle's chosen edge).
    Other(ConnId),
    /// The chosen edge is between two other nodes: they cut it. The cycle runs through us
    /// and closes at this neighbour of ours (the node above us in the tree), so the link may
    /// be held for broadcasts meanwhile.
    Elsewhere(u32),
    /// The tree puts us below a node that is not our neighbour (a stale tree or a lie: a
    /// node above us is linked to us), or below a neighbour whose own tree does not confirm
    /// the cycle: no link of ours is cut, and the tree is taken without the branches that
    /// place us (see `Core::prune_self_claims`).
    Claim,
}

impl Core {
    /// Something in the topology changed: re-sync every other connection now (`syncLayout`).
    pub(super) fn topology_changed(&mut self, source: Option<ConnId>) {
        self.stats.topology_changes += 1;
        self.invalidate_routes();
        self.push_event(Event::ChangedConnections);
        self.pending_changes.push(ConnectionChange::Topology);
        self.force_node_sync_all_but(source);
    }

    /// `layout::syncLayout`: only links whose first NODE_SYNC arrived are forced; a new link
    /// keeps its own schedule (station at once, AP after 10 s).
    fn force_node_sync_all_but(&mut self, source: Option<ConnId>) {
        // "Now" is expressed as the earliest possible deadline; run_timers fires it at once.
        for c in self
            .conns
            .iter_mut()
            .filter(|c| Some(c.id) != source && c.synced())
        {
            c.node_sync_at = Some(FORCED);
        }
    }

    pub(super) fn force_node_sync(&mut self, _now: Instant, source: Option<ConnId>) {
        self.force_node_sync_all_but(source);
    }

    /// Our NODE_SYNC frame for one connection: our tree without that neighbour's branch.
    pub(super) fn node_sync_frame(&self, idx: usize, ty: i32) -> Bytes {
        let target = &self.conns[idx];
        let excluded = target.node_id;
        let mut out = Vec::with_capacity(
            64 + self
                .conns
                .iter()
                .map(|c| c.tree.json().len() + 1)
                .sum::<usize>(),
        );
        out.push(b'{');
        write_tree_fields(
            &mut out,
            self.cfg.node_id,
            self.cfg.root,
            self.cfg.time_authority,
            |out| {
                let mut first = true;
                for c in self
                    .conns
                    .iter()
                    .filter(|c| c.synced() && c.node_id != excluded)
                {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(c.tree.json());
                    first = false;
                }
                !first
            },
        );
        write_sync_trailer(&mut out, ty, excluded, self.cfg.node_id);
        encode_frame(out)
    }

    /// A NODE_SYNC of type `ty` on `conn` whose tree is in `sync_scratch`.
    pub(super) fn handle_node_sync(&mut self, conn: ConnId, now: Instant, ty: i32) {
        let Some(mut idx) = self.index(conn) else {
            return;
        };
        let me = self.cfg.node_id;
        let is_request = ty == types::NODE_SYNC_REQUEST;
        let tree_id = self.sync_scratch.node_id();
        let first = !self.conns[idx].synced();
        if first {
            if tree_id == 0 || tree_id == me {
                return self.remove_conn(conn, DropReason::InvalidNodeId, true);
            }
            if let Some(via) = self.route(tree_id).filter(|&via| via != conn) {
                if self.cfg.probe_duplicate_links {
                    self.probe_if_same_neighbour(via, tree_id);
                }
                return self.remove_conn(conn, DropReason::AlreadyConnected, true);
            }
        } else if tree_id != self.conns[idx].node_id {
            return self.remove_conn(conn, DropReason::NodeIdChanged, true);
        }
        let looped = if self.sync_scratch.subs_contain(tree_id) {
            Some(DropReason::LoopNeighbourInSubs)
        } else if self.sync_scratch.contains(me) {
            Some(DropReason::LoopContainsSelf)
        } else {
            None
        };
        if let Some(reason) = looped {
            if first {
                return self.remove_conn(conn, reason, true);
            }
            let mut hold = None;
            let mut claim = false;
            if reason == DropReason::LoopContainsSelf {
                match self.loop_cut(conn, &self.sync_scratch) {
                    LoopCut::This => return self.remove_conn(conn, reason, true),
                    LoopCut::Other(other) => {
                        self.remove_conn(other, reason, true);
                        idx = self.index(conn).expect("only the other link was removed");
                    }
                    LoopCut::Elsewhere(above) => hold = Some(above),
                    LoopCut::Claim => claim = !self.cfg.loop_grace.is_zero(),
                }
            }
            if !claim {
                self.conns[idx].broadcast_hold = hold;
                return self.ignore_looped_sync(idx, now, ty, reason);
            }
            // A claim, not a loop we can see. Within the grace it is ignored like a loop (a
            // stale tree after a cut usually clears by then); a claim that outlasts it is
            // pruned: the tree is taken without the branches rooted at our id, and the link
            // stays (the reference, and pmesh before, closed it).
            let c = &mut self.conns[idx];
            c.broadcast_hold = None;
            let since = *c.loop_since.get_or_insert(now);
            if now.saturating_since(since) < self.cfg.loop_grace {
                return self.ignore_looped_sync(idx, now, ty, reason);
            }
            self.prune_self_claims();
        } else {
            self.conns[idx].loop_cleared();
        }
        // Stock nodes omit hasTimeAuthority in replies but send it in requests (spec §4,
        // "fork asymmetry"); keep the flag from their last request instead of flapping.
        if !is_request
            && !self.sync_scratch.has_time_authority()
            && self.conns[idx].tree.has_time_authority()
        {
            self.sync_scratch.set_has_time_authority(true);
        }
        let c = &mut self.conns[idx];
        let changed = c.tree != self.sync_scratch;
        if first {
            c.node_id = tree_id;
            c.handshake_by = None;
            c.time_sync_at = Some(match c.direction {
                Direction::Station => now,
                Direction::Ap => now + self.cfg.ap_first_sync_delay,
            });
        }
        if changed {
            c.swap_tree(&mut self.sync_scratch);
        }
        if first {
            let node_id = self.conns[idx].node_id;
            self.push_event(Event::NewConnection { node_id, conn });
            self.pending_changes
                .push(ConnectionChange::New { conn, node_id });
        }
        if changed {
            self.topology_changed(Some(conn));
        }
        self.node_sync_answer(idx, now, ty, changed);
    }

    /// `node_id` came again on a new link while link `via` already reaches it. When `via` is a
    /// direct link to that very node, the node has most likely rebooted and `via` is dead (a
    /// power cut sends no FIN), yet nothing would notice before the next periodic NODE_SYNC,
    /// up to `node_sync_interval` away. Ask on `via` now, unless a request is already
    /// unanswered there, so `node_timeout` closes a dead link within seconds and the node's
    /// next attempt gets in; a live link just answers. (The reference only drops the new
    /// link, as we still do; see [`Config::probe_duplicate_links`].)
    fn probe_if_same_neighbour(&mut self, via: ConnId, node_id: u32) {
        if let Some(idx) = self.index(via) {
            let c = &mut self.conns[idx];
            if c.node_id == node_id && c.sync_timeout_at.is_none() {
                c.node_sync_at = Some(FORCED);
                self.stats.duplicate_link_probes += 1;
            }
        }
    }

    /// Drops from the tree in `sync_scratch` every branch rooted at our own id (a claim that
    /// some other node is above us; see [`LoopCut::Claim`]), and counts them.
    fn prune_self_claims(&mut self) {
        fn prune(t: &mut NodeTree, me: u32) -> u64 {
            let before = t.subs.len();
            t.subs.retain(|s| s.node_id != me);
            let mut n = (before - t.subs.len()) as u64;
            for s in &mut t.subs {
                n += prune(s, me);
            }
            n
        }
        let mut tree = self.sync_scratch.to_tree();
        self.stats.self_claims_pruned += prune(&mut tree, self.cfg.node_id);
        self.sync_scratch = FlatTree::from_tree(&tree);
    }

    /// A NODE_SYNC on an established link whose tree shows a loop that this node does not
    /// cut: its tree is not taken (so the loop does not travel on through us) and the link
    /// stays, for [`Config::loop_grace`]; we ask again when the grace is over, and a tree that
    /// still shows a loop then closes the link, as the reference would have at once.
    pub(super) fn ignore_looped_sync(
        &mut self,
        idx: usize,
        now: Instant,
        ty: i32,
        reason: DropReason,
    ) {
        let grace = self.cfg.loop_grace;
        let c = &mut self.conns[idx];
        let since = *c.loop_since.get_or_insert(now);
        if now.saturating_since(since) >= grace {
            let id = c.id;
            return self.remove_conn(id, reason, true);
        }
        let recheck = since + grace;
        c.node_sync_at = Some(c.node_sync_at.map_or(recheck, |t| t.min(recheck)));
        self.stats.loop_syncs_ignored += 1;
        // Answer a request, stop a reply's timeout, and do not postpone the recheck.
        self.node_sync_answer(idx, now, ty, true);
    }

    /// Which link of a loop through this node to cut, when `tree` (from `conn`) contains us.
    ///
    /// The tree gives the cycle: us, the neighbour on `conn`, ..., the node `p` above us in
    /// that tree, us. Every node on a cycle sees the same one, so all agree on one edge to cut:
    /// the smallest `(min id, max id)` pair. Only that edge's two ends close it, and the rest
    /// of the ring stays up (cutting every link that shows the loop, which is what each node
    /// would do on its own, shreds a ring into single nodes). If the cycle does not close at
    /// a neighbour of ours, or at one whose own tree does not confirm it, nothing is cut here
    /// ([`LoopCut::Claim`]).
    fn loop_cut(&self, conn: ConnId, tree: &FlatTree) -> LoopCut {
        let me = self.cfg.node_id;
        let Some(path) = tree.path_to(me).filter(|p| p.len() >= 3) else {
            return LoopCut::This;
        };
        // path = [neighbour on conn, ..., p, me]
        let p = path[path.len() - 2];
        let Some(other) = self
            .conns
            .iter()
            .find(|c| c.id != conn && c.synced() && c.node_id == p)
        else {
            return LoopCut::Claim;
        };
        let key = |a: u32, b: u32| (a.min(b), a.max(b));
        let mut cycle = alloc::vec![me];
        cycle.extend_from_slice(&path);
        let cut = cycle
            .windows(2)
            .map(|w| key(w[0], w[1]))
            .min()
            .expect("3 or more edges");
        if cut == key(me, tree.node_id()) {
            LoopCut::This
        } else if cut == key(p, me) {
            // Our direct link to p closes only if p's own tree confirms the cycle (it reaches
            // the claimant the other way round); otherwise the cycle is only a claim.
            if other.tree.contains(tree.node_id()) {
                LoopCut::Other(other.id)
            } else {
                LoopCut::Claim
            }
        } else {
            LoopCut::Elsewhere(p)
        }
    }

    /// A NODE_SYNC carrying exactly the stored tree (see `same_tree_sync`): nothing changed.
    pub(super) fn node_sync_unchanged(&mut self, idx: usize, now: Instant, ty: i32) {
        self.conns[idx].loop_cleared();
        self.node_sync_answer(idx, now, ty, false);
    }

    /// What follows a NODE_SYNC (`handleNodeSync` and the two package callbacks): an
    /// unchanged tree of either kind postpones our own request by one interval (the
    /// reference's `nodeSyncTask.delay()`, so in the steady state only one side asks); a
    /// request is answered at once; a reply stops the timeout.
    fn node_sync_answer(&mut self, idx: usize, now: Instant, ty: i32, changed: bool) {
        if !changed {
            self.conns[idx].node_sync_at = Some(now + self.cfg.node_sync_interval);
        }
        if ty == types::NODE_SYNC_REQUEST {
            let frame = self.node_sync_frame(idx, types::NODE_SYNC_REPLY);
            let id = self.conns[idx].id;
            self.queue(id, frame);
        } else {
            let c = &mut self.conns[idx];
            c.sync_timeout_at = None;
            if core::mem::take(&mut c.resync_after_reply) {
                c.node_sync_at = Some(FORCED);
            }
        }
    }
}
