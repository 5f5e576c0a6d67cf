//! The classic distributor (spec §6, "Distributor side"): announces at once and then every
//! 60 s, 60 times in all, and answers every DataRequest for one of its images with a base64
//! Data chunk — `routing` 1, or 2 when the request was `broadcasted`. Stateless per request,
//! like the reference: duplicates are answered again. Works whether or not this node is root.
//!
//! **Push** (an offer made with [`crate::Offer::push`]): a broadcast the distributor drives
//! itself, because stock receivers never ask for one (only the root requests in broadcast
//! mode). Right after an announce it floods Data 0…n−1 in order, `routing` 2, `dest` 0,
//! `broadcasted:true`, paced at a byte rate (a *pass*); every stock node takes each chunk
//! whose `partNo` is the one it expects. See [`push`] for the rules on requests, passes and
//! the firmware field of stock nodes' status reports.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use pmesh_node::{Context, Instant};
use pmesh_proto::json::Value;
use pmesh_proto::ota::{Announce, Data, DataRequest, FirmwareInfo};
use pmesh_proto::{Envelope, Routing};

use crate::classic::push::{self, PushState};
use crate::event::{OtaEvent, TransferId};
use crate::io::FirmwareSource;
use crate::offer::PreparedClassic;

/// Announce cadence and count (spec §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceSchedule {
    /// Time between announces (60 s).
    pub interval: Duration,
    /// Announces in total, the first one at once (60).
    pub count: u32,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        AnnounceSchedule {
            interval: Duration::from_secs(60),
            count: 60,
        }
    }
}

struct ClassicOffer {
    id: TransferId,
    info: FirmwareInfo,
    served: Box<dyn FirmwareSource + Send>,
    served_len: u64,
    chunk: u32,
    announces_left: u32,
    next_announce: Option<Instant>,
    /// Push broadcast state (offers made with [`crate::Offer::push`]).
    push: Option<PushState>,
}

/// Counters of a classic distributor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassicDistributorStats {
    /// Announces sent.
    pub announces: u64,
    /// DataRequests answered with a chunk.
    pub requests_answered: u64,
    /// DataRequests for an image we do not offer, or past its end.
    pub requests_ignored: u64,
    /// Chunk bytes served (raw, before base64), on request or pushed.
    pub bytes_served: u64,
    /// Push passes started.
    pub passes: u64,
    /// Data frames flooded by push passes.
    pub chunks_pushed: u64,
    /// `broadcasted:true` requests left unanswered because a running pass brings the chunk.
    pub requests_covered_by_pass: u64,
    /// Requests answered with a flood because their `from` was 0 (a stock fallback after a
    /// pushed Data, whose `dest` it copies).
    pub requests_flooded: u64,
    /// EnhancedStatus firmware reports (`fwMD5`) fed to push offers.
    pub status_reports: u64,
    /// EnhancedStatus frames whose `fwMD5` was not 32 hex digits, or whose `from` was 0.
    pub status_reports_bad: u64,
}

/// Serves classic offers.
#[derive(Default)]
pub struct ClassicDistributor {
    offers: Vec<ClassicOffer>,
    schedule: AnnounceSchedule,
    stats: ClassicDistributorStats,
    /// Last percentage reported per (requester, image id); bounded.
    progress: BTreeMap<(u32, u32), u32>,
}

/// Requesters tracked for progress events.
const MAX_TRACKED: usize = 4096;

impl core::fmt::Debug for ClassicDistributor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClassicDistributor")
            .field("offers", &self.offers.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl ClassicDistributor {
    /// A distributor with this announce schedule.
    pub fn new(schedule: AnnounceSchedule) -> Self {
        ClassicDistributor {
            offers: Vec::new(),
            schedule,
            stats: ClassicDistributorStats::default(),
            progress: BTreeMap::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ClassicDistributorStats {
        self.stats
    }

    /// Where the push offer of this MD5 stands; None if there is no such push offer.
    pub fn push_progress(&self, md5: &str) -> Option<push::PushProgress> {
        let o = self.offers.iter().find(|o| o.info.md5 == md5)?;
        o.push.as_ref().map(PushState::progress)
    }

    /// The firmware info of every offer (what its announces carry).
    pub fn offers(&self) -> impl Iterator<Item = &FirmwareInfo> {
        self.offers.iter().map(|o| &o.info)
    }

    /// Starts offering; the first announce goes out now. An offer of the same MD5, role and
    /// hardware replaces the old one.
    pub(crate) fn offer(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        p: PreparedClassic,
    ) -> TransferId {
        let push = p.push.map(|pace| PushState::new(pace, &p.info.md5));
        let id = TransferId::classic(&p.info.md5, p.info.broadcasted);
        self.offers.retain(|o| {
            !(o.info.md5 == p.info.md5
                && o.info.role == p.info.role
                && o.info.hardware == p.info.hardware)
        });
        self.offers.push(ClassicOffer {
            id,
            info: p.info,
            served: p.served,
            served_len: p.served_len,
            chunk: p.chunk,
            announces_left: self.schedule.count,
            next_announce: Some(ctx.now()),
            push,
        });
        self.on_timeout(ctx);
        id
    }

    /// Stops announcing and serving the image with this MD5; true if there was one.
    pub fn cancel(&mut self, md5: &str) -> bool {
        let before = self.offers.len();
        self.offers.retain(|o| o.info.md5 != md5);
        before != self.offers.len()
    }

    /// Next announce due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pass = |o: &ClassicOffer| o.push.as_ref()?.pass.as_ref().map(|p| p.due);
        self.offers
            .iter()
            .flat_map(|o| [o.next_announce, pass(o)])
            .flatten()
            .min()
    }

    /// The mesh changed (a push pass notes who left).
    pub fn on_topology(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        if !self
            .offers
            .iter()
            .any(|o| o.push.as_ref().is_some_and(|p| p.pass.is_some()))
        {
            return;
        }
        let nodes = ctx.node_list(false);
        for p in self.offers.iter_mut().filter_map(|o| o.push.as_mut()) {
            p.on_topology(&nodes);
        }
    }

    /// A node's EnhancedStatus (604 or 203): its `fwMD5` tells push offers which image it
    /// runs (see [`push`]). Frames without `fwMD5` are ignored; one that is not an MD5, or
    /// comes `from` 0, is counted in `status_reports_bad`.
    pub fn on_status(&mut self, ctx: &mut Context<'_, OtaEvent>, env: &Envelope) {
        if !self.offers.iter().any(|o| o.push.is_some()) {
            return;
        }
        let Some(text) = env.get("fwMD5").map(Value::to_text) else {
            return;
        };
        let Some(md5) = push::parse_md5(&text).filter(|_| env.from != 0) else {
            self.stats.status_reports_bad += 1;
            return;
        };
        self.stats.status_reports += 1;
        let now = ctx.now();
        for p in self.offers.iter_mut().filter_map(|o| o.push.as_mut()) {
            p.on_report(env.from, md5, now);
        }
    }

    /// Sends the announces that are due, and runs push passes.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let now = ctx.now();
        let mut nodes = None;
        for i in 0..self.offers.len() {
            if self.offers[i].next_announce.is_some_and(|t| t <= now) {
                self.announce(ctx, i);
                self.schedule_next(ctx, i);
                let nodes = nodes.get_or_insert_with(|| ctx.node_list(false));
                self.maybe_start_pass(i, now, nodes);
            }
            self.run_pass(ctx, i);
        }
    }

    fn announce(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize) {
        let json = Announce {
            from: ctx.node_id(),
            info: self.offers[i].info.clone(),
        }
        .to_json();
        // With no neighbour yet the announce reaches nobody; the schedule goes on.
        let _ = ctx.send(Routing::Broadcast, 0, json);
        self.stats.announces += 1;
    }

    fn schedule_next(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize) {
        let o = &mut self.offers[i];
        o.announces_left = o.announces_left.saturating_sub(1);
        if o.announces_left == 0 {
            o.next_announce = None;
            ctx.emit(OtaEvent::AnnouncesDone { id: o.id });
        } else {
            o.next_announce = Some(ctx.now() + self.schedule.interval);
        }
    }

    /// Starts a pass of push offer `i` if one is wanted (at most one per scheduled announce).
    fn maybe_start_pass(&mut self, i: usize, now: Instant, nodes: &[u32]) -> bool {
        let limit = self.schedule.count;
        let Some(p) = self.offers[i].push.as_mut() else {
            return false;
        };
        if p.passes >= limit || !p.wants_pass(nodes) {
            return false;
        }
        p.start(now, nodes);
        self.stats.passes += 1;
        true
    }

    /// Floods the parts of offer `i`'s running pass that are due; settles a finished pass
    /// and starts the next one when some node is still uncovered.
    fn run_pass(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize) {
        let now = ctx.now();
        let total = self.offers[i].info.no_part;
        loop {
            let Some(p) = self.offers[i].push.as_ref() else {
                return;
            };
            let Some(pass) = p.pass.as_ref() else { return };
            if pass.due > now {
                return;
            }
            let (part, pace) = (pass.next, p.pace);
            if part >= total {
                self.settle(ctx, i);
                return;
            }
            let len = self.flood(ctx, i, part, 0, true).unwrap_or(0);
            self.stats.chunks_pushed += 1;
            let pass = self.offers[i]
                .push
                .as_mut()
                .and_then(|p| p.pass.as_mut())
                .expect("checked above");
            pass.next = part + 1;
            pass.due = if pass.next >= total {
                now + push::SETTLE
            } else {
                now + pace.interval(len)
            };
        }
    }

    /// A pass is over: record whom it covered. A node it missed waits for the next scheduled
    /// announce (not sooner: the nodes that just installed reboot now, and a pass at once
    /// would lose its chunks below them).
    fn settle(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize) {
        let nodes = ctx.node_list(false);
        let o = &mut self.offers[i];
        let Some(p) = o.push.as_mut() else { return };
        let covered = p.finish(ctx.now()) as u32;
        let uncovered = p.uncovered(&nodes) as u32;
        ctx.emit(OtaEvent::PassDone {
            id: o.id,
            pass: p.passes,
            covered,
            uncovered,
        });
    }

    /// Reads chunk `part` of offer `i` and sends it flooded (`routing` 2) with this `dest`
    /// and `broadcasted`; the frame's length if sent.
    fn flood(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        i: usize,
        part: u32,
        dest: u32,
        broadcasted: bool,
    ) -> Option<usize> {
        let o = &mut self.offers[i];
        let mut info = o.info.clone();
        info.broadcasted = broadcasted;
        let (data, n) = read_chunk(o, part)?;
        let json = Data {
            from: ctx.node_id(),
            dest,
            part_no: part,
            info,
            data,
        }
        .to_json_flooded();
        let len = json.len();
        ctx.send(Routing::Broadcast, 0, json).ok()?;
        self.stats.bytes_served += n as u64;
        Some(len)
    }

    /// Answers a DataRequest addressed to this node; false if it is not for one of our images.
    ///
    /// A request with `from` 0 (a stock node's fallback after a pushed Data, whose `dest` it
    /// copies) is answered by flooding the chunk with `broadcasted:false`; during a push
    /// pass, `broadcasted:true` requests are left to the pass.
    pub fn on_request(&mut self, ctx: &mut Context<'_, OtaEvent>, req: &DataRequest) -> bool {
        let Some(i) = self.offers.iter().position(|o| o.info.md5 == req.info.md5) else {
            self.stats.requests_ignored += 1;
            return false;
        };
        let o = &self.offers[i];
        if u64::from(req.part_no) * u64::from(o.chunk) >= o.served_len {
            self.stats.requests_ignored += 1;
            return true;
        }
        let passing = o.push.as_ref().is_some_and(|p| p.pass.is_some());
        if passing && req.info.broadcasted {
            self.stats.requests_covered_by_pass += 1;
            return true;
        }
        let sent = if req.from == 0 {
            self.stats.requests_flooded += 1;
            self.flood(ctx, i, req.part_no, 0, false).is_some()
        } else {
            self.reply(ctx, i, req)
        };
        if !sent {
            self.stats.requests_ignored += 1;
            return true;
        }
        self.stats.requests_answered += 1;
        if req.from != 0 {
            self.report_progress(ctx, i, req);
        }
        true
    }

    /// The reference's answer: the chunk to `req.from`, flooded if the request was
    /// `broadcasted`; true if sent.
    fn reply(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize, req: &DataRequest) -> bool {
        let Some((b64, n)) = read_chunk(&mut self.offers[i], req.part_no) else {
            return false;
        };
        let data = req.reply(b64);
        let json = data.to_json();
        let sent = if data.info.broadcasted {
            ctx.send(Routing::Broadcast, 0, json)
        } else {
            ctx.send(Routing::Single, data.dest, json)
        };
        if sent.is_ok() {
            self.stats.bytes_served += n as u64;
        }
        sent.is_ok()
    }

    /// A request for part p means parts 0..p are held (stock receivers go in order; pmesh's
    /// ask for their lowest missing first): report it in 1 % steps.
    fn report_progress(&mut self, ctx: &mut Context<'_, OtaEvent>, i: usize, req: &DataRequest) {
        let o = &self.offers[i];
        let total = o.info.no_part;
        let pct = req.part_no * 100 / total;
        let key = (req.from, o.id.id);
        let last = self.progress.get(&key).copied();
        if last != Some(pct) && (last.is_some() || self.progress.len() < MAX_TRACKED) {
            self.progress.insert(key, pct);
            ctx.emit(OtaEvent::NodeProgress {
                id: o.id,
                node: req.from,
                done: req.part_no,
                total,
                phase: crate::event::Phase::Distribute,
            });
        }
    }
}

/// Chunk `part` of an offer as base64 text, with its raw length; None when the source
/// gives no bytes there (the reference then sends nothing).
fn read_chunk(o: &mut ClassicOffer, part: u32) -> Option<(Vec<u8>, usize)> {
    let offset = u64::from(part) * u64::from(o.chunk);
    if offset >= o.served_len {
        return None;
    }
    let mut buf = vec![0u8; o.chunk as usize];
    let n: usize = o.served.read_at(offset, &mut buf).unwrap_or_default();
    (n > 0).then(|| (pmesh_proto::base64::encode(&buf[..n]), n))
}

/// The distributor as the plugin holds it: a trait object made by the first classic offer, so
/// a firmware that never offers a classic image links none of the code below (about 4 KB on
/// riscv32imc, see docs/embedded.md). Static calls would keep it all reachable.
pub(crate) trait ClassicServing: core::fmt::Debug + Send {
    fn distributor(&self) -> &ClassicDistributor;
    fn offer(&mut self, ctx: &mut Context<'_, OtaEvent>, p: PreparedClassic) -> TransferId;
    fn cancel(&mut self, md5: &str) -> bool;
    fn poll_timeout(&self) -> Option<Instant>;
    fn on_topology(&mut self, ctx: &mut Context<'_, OtaEvent>);
    fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>);
    fn on_request(&mut self, ctx: &mut Context<'_, OtaEvent>, req: &DataRequest) -> bool;
    fn on_status(&mut self, ctx: &mut Context<'_, OtaEvent>, env: &Envelope);
}

impl ClassicServing for ClassicDistributor {
    fn distributor(&self) -> &ClassicDistributor {
        self
    }
    fn offer(&mut self, ctx: &mut Context<'_, OtaEvent>, p: PreparedClassic) -> TransferId {
        ClassicDistributor::offer(self, ctx, p)
    }
    fn cancel(&mut self, md5: &str) -> bool {
        ClassicDistributor::cancel(self, md5)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClassicDistributor::poll_timeout(self)
    }
    fn on_topology(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        ClassicDistributor::on_topology(self, ctx)
    }
    fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        ClassicDistributor::on_timeout(self, ctx)
    }
    fn on_request(&mut self, ctx: &mut Context<'_, OtaEvent>, req: &DataRequest) -> bool {
        ClassicDistributor::on_request(self, ctx, req)
    }
    fn on_status(&mut self, ctx: &mut Context<'_, OtaEvent>, env: &Envelope) {
        ClassicDistributor::on_status(self, ctx, env)
    }
}
