//! Time sync (TIME_SYNC/TIME_DELAY, spec §5): offsets exchanged with neighbours, held replies,
//! the per-link frame budget and the frequency discipline. Part of [`Core`]'s state machine.

use super::*;

impl Core {
    /// The rate correction accrued since `rate.since` (µs, wrapping); 0 without discipline.
    pub(super) fn rate_term(&self, now: Instant) -> u32 {
        if self.rate.ppb == 0 {
            return 0;
        }
        let dt = i128::from(now.as_micros()) - i128::from(self.rate.since);
        (dt * i128::from(self.rate.ppb) / 1_000_000_000) as i64 as u32
    }

    /// Moves the accrued rate correction into `time_offset` (mesh time at `now` unchanged).
    fn fold_rate(&mut self, now: Instant) {
        self.time_offset = self.time_offset.wrapping_add(self.rate_term(now));
        self.rate.since = now.as_micros();
    }

    /// The frequency discipline's sample: a TIME_SYNC reply arrived at `now` (mesh time `t3`).
    /// Measures "adopted time − local clock", which the node's own offset steps do not change,
    /// and takes its slope against the anchor sample on the same link as the new rate.
    fn discipline_rate(&mut self, conn: ConnId, now: Instant, msg: &TimeMessage, t3: u32) {
        let Some(raw) = ntp::raw_offset(msg.t0, msg.t1, msg.t2, t3) else {
            return;
        };
        let y = t3.wrapping_add(raw as u32).wrapping_sub(now.micros_u32());
        let local = now.as_micros();
        if let Some((c, l0, y0)) = self.rate.anchor
            && c == conn
        {
            let dl = local.saturating_sub(l0);
            if dl < RATE_BASELINE.as_micros() as u64 {
                return; // keep the older anchor: a longer baseline, a better estimate
            }
            let dy = i64::from(y.wrapping_sub(y0) as i32);
            // Slope of the adopted time against the local clock: the whole correction needed,
            // whatever this node applied meanwhile (y does not include it).
            let ppb = (i128::from(dy) * 1_000_000_000 / i128::from(dl)) as i64;
            if ppb.abs() <= MAX_RATE_PPB {
                self.fold_rate(now);
                self.rate.ppb = ppb;
            }
        }
        self.rate.anchor = Some((conn, local, y));
    }

    /// Takes one TIME_SYNC/TIME_DELAY frame from `conn`'s budget; false when it is spent.
    pub(super) fn time_budget(&mut self, conn: ConnId, now: Instant) -> bool {
        let budget = self.cfg.time_frame_budget;
        match self.index(conn) {
            Some(i) => self.conns[i].time_budget.take(budget, now),
            None => true,
        }
    }

    /// `ntp::adopt` for one connection.
    fn adopts_from(&self, idx: usize) -> bool {
        let c = &self.conns[idx];
        let my_sub_count = 1 + self
            .conns
            .iter()
            .filter(|o| o.synced() && o.node_id != c.node_id)
            .map(|o| o.tree.size())
            .sum::<usize>();
        ntp::adopt(
            self.cfg.node_id,
            self.cfg.time_authority,
            my_sub_count,
            c.node_id,
            c.tree.has_time_authority(),
            c.tree.size(),
        )
    }

    pub(super) fn start_time_sync(&mut self, idx: usize, now: Instant) {
        let c = &self.conns[idx];
        let msg = if self.adopts_from(idx) {
            TimeMessage {
                ty: types::TIME_SYNC,
                dest: c.node_id,
                from: self.cfg.node_id,
                time_type: time_type::REQUEST,
                t0: self.mesh_time(now),
                t1: 0,
                t2: 0,
            }
        } else {
            TimeMessage {
                ty: types::TIME_SYNC,
                dest: c.node_id,
                from: self.cfg.node_id,
                time_type: time_type::SYNC_REQUEST,
                t0: 0,
                t1: 0,
                t2: 0,
            }
        };
        let id = c.id;
        if msg.time_type == time_type::REQUEST {
            self.conns[idx].time_request = Some((msg.t0, self.time_steps));
        }
        // The task's own period; a reply that completes the sync postpones it to 60 s, one
        // that does not brings it forward to 200 ms (`handleTimeSync`).
        self.conns[idx].time_sync_at = Some(now + self.cfg.time_sync_unsynced_interval);
        let _ = self.send_to_conn(id, msg.to_json());
    }

    /// Reschedules a link's time-sync task, if it exists yet (`Task::delay` /
    /// `forceNextIteration` on a task the reference has not created do nothing).
    fn delay_time_sync(&mut self, idx: usize, at: Instant) {
        if let Some(t) = self.conns[idx].time_sync_at.as_mut() {
            *t = at;
        }
    }

    /// Holds a reply to a TIME_SYNC or TIME_DELAY request for [`Config::time_reply_hold`].
    fn hold_reply(&mut self, conn: ConnId, now: Instant, request: TimeMessage) {
        let received_at = self.mesh_time(now);
        if self.held_replies.len() >= MAX_HELD_REPLIES {
            // A peer flooding requests: the oldest answer is lost, memory stays bounded.
            self.held_replies.remove(0);
        }
        self.held_replies.push(HeldReply {
            due: now + self.cfg.time_reply_hold,
            conn,
            request,
            received_at,
        });
    }

    pub(super) fn handle_time_sync(&mut self, conn: ConnId, now: Instant, msg: TimeMessage) {
        let Some(idx) = self.index(conn) else { return };
        match msg.time_type {
            time_type::ERROR => self.delay_time_sync(idx, now),
            time_type::SYNC_REQUEST => {
                // "Please start": answer as if we had started ourselves.
                let reply = TimeMessage {
                    ty: types::TIME_SYNC,
                    dest: msg.from,
                    from: msg.dest,
                    time_type: time_type::REQUEST,
                    t0: self.mesh_time(now),
                    t1: 0,
                    t2: 0,
                };
                self.conns[idx].time_request = Some((reply.t0, self.time_steps));
                let _ = self.send_to_conn(conn, reply.to_json());
            }
            time_type::REQUEST => {
                // "After the response is sent I assume sync is completed."
                self.delay_time_sync(idx, now + self.cfg.time_sync_interval);
                self.hold_reply(conn, now, msg);
            }
            time_type::REPLY => {
                let t3 = self.mesh_time(now);
                if self.cfg.rate_discipline {
                    // Only the reply to this link's latest request, sent in the current time
                    // base: the reference also applies a reply whose request went out before
                    // another exchange stepped the time (two requests overlap when the parent's
                    // forced sync meets our own timer), which re-applies part of that step.
                    let current = self.conns[idx].time_request == Some((msg.t0, self.time_steps));
                    if !current {
                        self.stats.time_samples_stale += 1;
                        return;
                    }
                    self.discipline_rate(conn, now, &msg, t3);
                }
                let offset = ntp::clock_offset(msg.t0, msg.t1, msg.t2, t3);
                self.time_offset = self.time_offset.wrapping_add(offset as u32);
                if offset != 0 {
                    self.time_steps = self.time_steps.wrapping_add(1);
                }
                self.push_event(Event::TimeAdjusted { offset });
                if ntp::sync_complete(offset) {
                    self.delay_time_sync(idx, now + self.cfg.time_sync_interval);
                    // Our time moved: bring every other link's sync forward.
                    for other in self.conns.iter_mut().filter(|o| o.id != conn) {
                        if let Some(t) = other.time_sync_at.as_mut() {
                            *t = now;
                        }
                    }
                } else {
                    self.stats.time_samples_retried += 1;
                    self.delay_time_sync(idx, now + self.cfg.time_sync_retry);
                }
            }
            _ => {}
        }
    }

    pub(super) fn handle_time_delay(&mut self, conn: ConnId, now: Instant, msg: TimeMessage) {
        match msg.time_type {
            // Held like a TIME_SYNC reply, so `t2 - t1` is real here too; the trip delay
            // subtracts it, so the measurement is unaffected.
            time_type::REQUEST => self.hold_reply(conn, now, msg),
            time_type::REPLY => {
                let delay_us = ntp::trip_delay(msg.t0, msg.t1, msg.t2, self.mesh_time(now));
                self.push_event(Event::Delay {
                    node_id: msg.from,
                    delay_us,
                });
            }
            _ => {}
        }
    }
}
