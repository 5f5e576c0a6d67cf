//! The stock painlessMesh receiver, reproduced with its bugs (spec §6, `ota.hpp` at the fork's
//! HEAD), so the simulator can run mixed meshes and measure the reference honestly.
//!
//! What it does, exactly:
//! - boot: the current MD5 is the recorded one if its role and hardware match; RAM state
//!   (part number, open update session) starts empty;
//! - Announce for my role and hardware, not current (or forced), not the MD5 in progress:
//!   remember MD5 and `broadcasted`; only if `!broadcasted || root`, start a request task that
//!   sends DataRequest(partNo) at once and every 30 s, 10 times, then clears the MD5;
//!   `partNo` is *not* reset, so a later announce resumes at a stale part into whatever update
//!   session is still open;
//! - Data with the MD5 in progress and exactly the expected part: part 0 (re)opens the update
//!   session, the chunk is appended; the last part checks the MD5 of everything appended,
//!   records the image and asks for a reboot 2 s later; otherwise the task (if there is one)
//!   is pointed at the next part, built from the Data (`from` = the Data's `dest`), and
//!   restarted;
//! - out of sequence in broadcast mode: fall back to a unicast request task whose request
//!   carries the Data's `dest` — the root's id — as `from`, so the answer goes to the root,
//!   which ignores it: the node is stuck for this rollout;
//! - the chunks are written as served: a compressed (gzip) image is flashed as gzip.

use alloc::string::String;
use core::time::Duration;

use pmesh_node::{Context, Instant};
use pmesh_proto::Routing;
use pmesh_proto::ota::{Announce, Data, DataRequest};

use crate::classic::receiver::read_back_hashes;
use crate::event::{OtaEvent, Refusal, TransferId};
use crate::io::{FirmwareSink, InstalledImage, OtaStore};

/// The reference's request task (TaskScheduler: 30 s interval, 10 iterations).
#[derive(Clone, Debug)]
struct RequestTask {
    request: DataRequest,
    next_at: Instant,
    remaining: u32,
    /// `setOnDisable` clearing the MD5 is installed.
    clears_md5: bool,
}

/// Counters of the reference receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReferenceStats {
    /// DataRequests sent.
    pub requests: u64,
    /// Chunks appended.
    pub chunks_written: u64,
    /// Data ignored as out of sequence.
    pub out_of_sequence: u64,
    /// Fallback request tasks started (broadcast mode, a chunk missed).
    pub fallbacks: u64,
    /// Request tasks that ran out of tries (the MD5 was cleared).
    pub gave_up: u64,
}

/// The stock receiver's behaviour.
#[derive(Debug)]
pub struct ReferenceReceiver {
    role: String,
    hardware: String,
    current_md5: String,
    update_md5: String,
    broadcasted: bool,
    part_no: u32,
    task: Option<RequestTask>,
    session_open: bool,
    written: u64,
    session_md5: String,
    reboot_at: Option<(Instant, TransferId)>,
    interval: Duration,
    iterations: u32,
    stats: ReferenceStats,
}

impl ReferenceReceiver {
    /// A stock receiver for `role` on `hardware` (`initOTAReceive(role)`).
    pub fn new(role: impl Into<String>, hardware: impl Into<String>) -> Self {
        ReferenceReceiver {
            role: role.into(),
            hardware: hardware.into(),
            current_md5: String::new(),
            update_md5: String::new(),
            broadcasted: false,
            part_no: 0,
            task: None,
            session_open: false,
            written: 0,
            session_md5: String::new(),
            reboot_at: None,
            interval: Duration::from_secs(30),
            iterations: 10,
            stats: ReferenceStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReferenceStats {
        self.stats
    }

    /// The part it waits for and the MD5 in progress (empty when none).
    pub fn state(&self) -> (u32, &str) {
        (self.part_no, &self.update_md5)
    }

    /// Boot: `/ota_fw.json` read from the store.
    pub(crate) fn boot(&mut self, store: &dyn OtaStore) {
        if let Some(cur) = store.current_image()
            && cur.role == self.role
            && cur.hardware == self.hardware
        {
            self.current_md5 = cur.md5;
        }
    }

    fn id(&self, md5: &str) -> TransferId {
        TransferId::classic(md5, self.broadcasted)
    }

    /// Next timer (request task or the delayed restart).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.task.as_ref().map(|t| t.next_at);
        let b = self.reboot_at.map(|r| r.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the request task and the delayed restart.
    pub(crate) fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let now = ctx.now();
        if let Some((at, id)) = self.reboot_at
            && at <= now
        {
            self.reboot_at = None;
            ctx.emit(OtaEvent::RebootRequested { id });
        }
        let Some(task) = &mut self.task else { return };
        if task.next_at > now {
            return;
        }
        let _ = ctx.send(Routing::Single, task.request.dest, task.request.to_json());
        self.stats.requests += 1;
        task.remaining -= 1;
        if task.remaining == 0 {
            // TaskScheduler disables the task on its next pass, right after the last run.
            let clears = task.clears_md5;
            self.task = None;
            self.stats.gave_up += 1;
            if clears {
                self.update_md5.clear();
            }
        } else {
            task.next_at = now + self.interval;
        }
    }

    fn start_task(&mut self, now: Instant, request: DataRequest) {
        self.task = Some(RequestTask {
            request,
            next_at: now,
            remaining: self.iterations,
            clears_md5: true,
        });
    }

    /// A type-10 Announce.
    pub(crate) fn on_announce(&mut self, ctx: &mut Context<'_, OtaEvent>, a: &Announce) {
        if a.info.role != self.role || a.info.hardware != self.hardware {
            return;
        }
        if (self.current_md5 == a.info.md5 && !a.info.forced) || self.update_md5 == a.info.md5 {
            return;
        }
        self.update_md5 = a.info.md5.clone();
        self.broadcasted = a.info.broadcasted;
        if !a.info.broadcasted || ctx.is_root() {
            let request = a.request(ctx.node_id(), self.part_no);
            self.start_task(ctx.now(), request);
            self.on_timeout(ctx);
        }
        let id = self.id(&a.info.md5);
        ctx.emit(OtaEvent::Accepted {
            id,
            chunks: a.info.no_part,
            resumed_from: self.part_no,
        });
    }

    /// A type-12 Data.
    pub(crate) fn on_data(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        d: &Data,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        if self.update_md5 != d.info.md5
            || self.role != d.info.role
            || self.hardware != d.info.hardware
        {
            return;
        }
        let now = ctx.now();
        if self.part_no != d.part_no {
            self.stats.out_of_sequence += 1;
            if self.broadcasted && d.info.broadcasted {
                self.broadcasted = false;
                let mut request = d.next_request(self.part_no);
                request.info.broadcasted = false;
                self.stats.fallbacks += 1;
                self.start_task(now, request);
                self.on_timeout(ctx);
            }
            return;
        }
        let id = self.id(&d.info.md5);
        ctx.emit(OtaEvent::Progress {
            id,
            done: d.part_no,
            total: d.info.no_part,
        });
        if d.part_no == 0 {
            if self.session_open {
                sink.abort();
            }
            self.session_open = sink.begin(None).is_ok();
            self.written = 0;
            self.session_md5 = d.info.md5.clone();
        }
        // The reference's decoder never fails; ours rejects bad text, which then writes nothing.
        let bytes = d.decode_data().unwrap_or_default();
        let ok = self.session_open && sink.write_at(self.written, &bytes).is_ok();
        if !ok {
            if self.session_open {
                sink.abort();
            }
            self.session_open = false;
            self.update_md5.clear();
            self.part_no = 0;
            return;
        }
        self.written += bytes.len() as u64;
        self.stats.chunks_written += 1;
        if d.part_no + 1 >= d.info.no_part {
            // Update.end(true): MD5 of everything appended in this session.
            let hashes = read_back_hashes(sink, self.written).unwrap_or_default();
            self.session_open = false;
            let verified = hashes.0 == self.session_md5
                && sink
                    .verify(self.written)
                    .and_then(|_| sink.commit())
                    .is_ok();
            if verified {
                let image = InstalledImage {
                    role: self.role.clone(),
                    hardware: self.hardware.clone(),
                    md5: d.info.md5.clone(),
                    sha256: hashes.1,
                    version: String::new(),
                };
                let _ = store.set_current_image(&image);
                self.current_md5 = d.info.md5.clone();
                ctx.emit(OtaEvent::Verified { id });
                ctx.emit(OtaEvent::Installed { id, image });
                self.reboot_at = Some((now + Duration::from_secs(2), id));
            } else {
                sink.abort();
                ctx.emit(OtaEvent::Failed {
                    id,
                    reason: Refusal::HashMismatch {
                        expected: d.info.md5.clone(),
                        actual: hashes.0,
                    },
                });
                self.update_md5.clear();
                self.part_no = 0;
            }
            self.task = None;
        } else {
            self.part_no += 1;
            if let Some(task) = &mut self.task {
                task.request = d.next_request(self.part_no);
                task.remaining = self.iterations;
                task.next_at = now;
                self.on_timeout(ctx);
            }
        }
    }
}
