//! The classic distributor (spec §6, "Distributor side"): announces at once and then every
//! 60 s, 60 times in all, and answers every DataRequest for one of its images with a base64
//! Data chunk — `routing` 1, or 2 when the request was `broadcasted`. Stateless per request,
//! like the reference: duplicates are answered again. Works whether or not this node is root.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use pmesh_node::{Context, Instant};
use pmesh_proto::Routing;
use pmesh_proto::ota::{Announce, DataRequest, FirmwareInfo};

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
    /// Chunk bytes served (raw, before base64).
    pub bytes_served: u64,
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
        self.offers.iter().filter_map(|o| o.next_announce).min()
    }

    /// Sends the announces that are due.
    pub fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let now = ctx.now();
        let me = ctx.node_id();
        for o in &mut self.offers {
            if o.next_announce.is_some_and(|t| t <= now) {
                let json = Announce {
                    from: me,
                    info: o.info.clone(),
                }
                .to_json();
                // With no neighbour yet the announce reaches nobody; the schedule goes on.
                let _ = ctx.send(Routing::Broadcast, 0, json);
                self.stats.announces += 1;
                o.announces_left = o.announces_left.saturating_sub(1);
                if o.announces_left == 0 {
                    o.next_announce = None;
                    ctx.emit(OtaEvent::AnnouncesDone { id: o.id });
                } else {
                    o.next_announce = Some(now + self.schedule.interval);
                }
            }
        }
    }

    /// Answers a DataRequest addressed to this node; false if it is not for one of our images.
    pub fn on_request(&mut self, ctx: &mut Context<'_, OtaEvent>, req: &DataRequest) -> bool {
        let Some(o) = self.offers.iter_mut().find(|o| o.info.md5 == req.info.md5) else {
            self.stats.requests_ignored += 1;
            return false;
        };
        let offset = u64::from(req.part_no) * u64::from(o.chunk);
        if offset >= o.served_len {
            self.stats.requests_ignored += 1;
            return true;
        }
        let mut buf = vec![0u8; o.chunk as usize];
        let n: usize = o.served.read_at(offset, &mut buf).unwrap_or_default();
        if n == 0 {
            // The reference sends nothing when the callback returns no bytes.
            self.stats.requests_ignored += 1;
            return true;
        }
        let data = req.reply(pmesh_proto::base64::encode(&buf[..n]));
        let json = data.to_json();
        let sent = if data.info.broadcasted {
            ctx.send(Routing::Broadcast, 0, json)
        } else {
            ctx.send(Routing::Single, data.dest, json)
        };
        if sent.is_ok() {
            self.stats.requests_answered += 1;
            self.stats.bytes_served += n as u64;
            // A request for part p means parts 0..p are held (stock receivers go in order;
            // pmesh's ask for their lowest missing first): report it in 1 % steps.
            let total = o.info.no_part;
            let pct = req.part_no * 100 / total;
            let key = (req.from, o.id.id);
            let last = self.progress.get(&key).copied();
            if last != Some(pct) && (last.is_some() || self.progress.len() < MAX_TRACKED) {
                self.progress.insert(key, pct);
                let phase = crate::event::Phase::Distribute;
                ctx.emit(OtaEvent::NodeProgress {
                    id: o.id,
                    node: req.from,
                    done: req.part_no,
                    total,
                    phase,
                });
            }
        }
        true
    }
}
