//! pmesh's classic receiver: takes painlessMesh OTA (types 10/11/12) from any distributor,
//! fixing what the reference gets wrong (spec §6) without changing a byte on the wire.
//!
//! - Out-of-order chunks are kept: a chunk bitmap records which are written, each chunk goes
//!   to the sink at its own offset (the chunk size is learned from the first non-final chunk,
//!   since announces carry only the count).
//! - Every request carries this node's own id, so answers come back to it.
//! - Unicast mode keeps a small window of requests in flight instead of stop-and-wait.
//! - Broadcast mode starts even when the distributor is root or the root does not want the
//!   image: a non-root receiver that hears no Data for this image for a while (10–15 s,
//!   jittered) drives the flood itself, requesting its lowest missing chunk with
//!   `broadcasted:true`; it yields as soon as it hears another driver's Data. Stock nodes in
//!   the same mesh take every flooded chunk their in-sequence logic accepts.
//! - Compressed (`compressed:true`): the served bytes are gzip of the image; they are
//!   inflated while writing, in order. Chunks arriving ahead are parked in the sink's staging
//!   area when it has one, dropped (and requested again later) when it does not.
//! - The MD5 announced covers the served bytes and is checked before commit; uncompressed
//!   progress is persisted per chunk, so a reboot resumes where it stopped.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use pmesh_node::{Context, Instant};
use pmesh_proto::Routing;
use pmesh_proto::ota::{Announce, Data, DataRequest};

use crate::bitmap::ChunkBitmap;
use crate::codec::{GzipDecoder, GzipPushError, Md5Hasher, Sha256Hasher};
use crate::event::{OtaEvent, Refusal, TransferId};
use crate::io::{FirmwareSink, InstalledImage, IoError, OtaStore};

/// Timers and window of the classic receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassicTuning {
    /// Retry period of unanswered requests (30 s, as the reference).
    pub request_interval: Duration,
    /// Retries without progress before waiting for the next announce (10).
    pub request_tries: u32,
    /// Requests in flight in unicast mode (the reference: 1).
    pub window: u32,
    /// Broadcast mode: silence after which a non-root receiver drives the flood.
    pub broadcast_idle: Duration,
    /// Random extra added to `broadcast_idle` (so receivers do not all start at once).
    pub broadcast_jitter: Duration,
}

impl Default for ClassicTuning {
    fn default() -> Self {
        ClassicTuning {
            request_interval: Duration::from_secs(30),
            request_tries: 10,
            window: 4,
            broadcast_idle: Duration::from_secs(10),
            broadcast_jitter: Duration::from_secs(5),
        }
    }
}

/// The key under which the learned chunk size is kept in the persisted offer record.
const CHUNK_KEY: &[u8] = b"\"pmeshChunk\":";

/// One classic transfer in progress.
struct Transfer {
    id: TransferId,
    announce: Announce,
    have: ChunkBitmap,
    chunk: Option<u32>,
    last_len: Option<u32>,
    in_flight: Vec<u32>,
    /// Broadcast mode: this node requests (root, or nobody else did for a while).
    driving: bool,
    next_request: Option<Instant>,
    idle_until: Option<Instant>,
    tries: u32,
    stalled: bool,
    /// Compressed mode: next chunk to inflate, the inflater and the MD5 of served bytes.
    next_inflate: u32,
    gz: Option<GzipDecoder>,
    served_md5: Md5Hasher,
    image_sha: Sha256Hasher,
    staging: bool,
    recorded: bool,
    last_pct: u32,
}

/// Counters of the classic receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassicReceiverStats {
    /// DataRequests sent.
    pub requests: u64,
    /// Chunks written (or staged).
    pub chunks_written: u64,
    /// Chunks that were already held.
    pub duplicates: u64,
    /// Chunks dropped: bad base64, wrong length, out of order without staging.
    pub dropped: u64,
    /// Classic offers for this node refused because it takes signed firmware only (it has a
    /// trusted key: classic OTA carries nothing it could verify). Once per offer.
    pub untrusted: u64,
}

/// pmesh's classic receiver.
pub struct ClassicReceiver {
    role: String,
    hardware: String,
    tuning: ClassicTuning,
    current_md5: Option<String>,
    t: Option<Transfer>,
    refused: Vec<(String, &'static str)>,
    stats: ClassicReceiverStats,
    /// Refuse every classic offer (the node has trusted keys).
    signed_only: bool,
}

impl core::fmt::Debug for ClassicReceiver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClassicReceiver")
            .field("role", &self.role)
            .field("active", &self.t.as_ref().map(|t| t.id))
            .field("stats", &self.stats)
            .finish()
    }
}

impl ClassicReceiver {
    /// A receiver for `role` on `hardware`.
    pub fn new(
        role: impl Into<String>,
        hardware: impl Into<String>,
        tuning: ClassicTuning,
    ) -> Self {
        ClassicReceiver {
            role: role.into(),
            hardware: hardware.into(),
            tuning,
            current_md5: None,
            t: None,
            refused: Vec::new(),
            stats: ClassicReceiverStats::default(),
            signed_only: false,
        }
    }

    /// Refuse every classic offer for this node (`Refused { Untrusted { code: "unsigned" } }`,
    /// once per offer, counted in [`ClassicReceiverStats::untrusted`]): set on a node with a
    /// trusted key, since a classic image carries only an MD5 nothing signed vouches for.
    pub fn signed_only(mut self, on: bool) -> Self {
        self.signed_only = on;
        self
    }

    /// Counters.
    pub fn stats(&self) -> ClassicReceiverStats {
        self.stats
    }

    /// The transfer in progress: id, chunks held, chunks in all.
    pub fn active(&self) -> Option<(TransferId, u32, u32)> {
        self.t
            .as_ref()
            .map(|t| (t.id, t.have.count(), t.have.len()))
    }

    /// Bytes of tracking state held for the transfer (bitmap, window, fixed fields), excluding
    /// the chunk being written and the inflater's window.
    pub fn tracking_bytes(&self) -> usize {
        self.t.as_ref().map_or(0, |t| {
            core::mem::size_of::<Transfer>() - core::mem::size_of::<Option<GzipDecoder>>()
                + t.have.heap_bytes()
                + t.in_flight.capacity() * 4
                + t.announce.info.md5.capacity()
                + t.announce.info.role.capacity()
                + t.announce.info.hardware.capacity()
        })
    }

    /// Boot: reads the current image and resumes an uncompressed transfer recorded in `store`.
    pub(crate) fn boot(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        if let Some(cur) = store.current_image()
            && cur.role == self.role
            && cur.hardware == self.hardware
        {
            self.current_md5 = Some(cur.md5);
        }
        let Some(rec) = store.load_transfer() else {
            return;
        };
        if self.signed_only {
            // A classic transfer begun before a trusted key was configured is not resumed.
            return;
        }
        let Ok(env) = pmesh_proto::Envelope::parse(&rec.offer, pmesh_proto::DEFAULT_MAX_DEPTH)
        else {
            return;
        };
        if env.ty != pmesh_proto::message::types::OTA_ANNOUNCE {
            return;
        }
        let chunk = env
            .get("pmeshChunk")
            .and_then(|v| v.as_u32_strict())
            .filter(|&c| c > 0);
        let announce = Announce::from_envelope(&env);
        if announce.info.compressed || chunk.is_none() || rec.have.len() != announce.info.no_part {
            let _ = store.clear_transfer();
            return;
        }
        if sink.resume(None).is_err() {
            let _ = store.clear_transfer();
            return;
        }
        let done = rec.have.count();
        let mut t = Transfer::new(announce, false);
        t.have = rec.have;
        t.chunk = chunk;
        t.recorded = true;
        let id = t.id;
        let total = t.have.len();
        self.t = Some(t);
        ctx.emit(OtaEvent::Accepted {
            id,
            chunks: total,
            resumed_from: done,
        });
        self.schedule_start(ctx);
    }

    /// A type-10 Announce.
    pub(crate) fn on_announce(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        a: Announce,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
        busy: bool,
    ) {
        let id = TransferId::classic(&a.info.md5, a.info.broadcasted);
        if a.info.role != self.role {
            let reason = Refusal::WrongRole {
                offered: a.info.role.clone(),
                mine: self.role.clone(),
            };
            return self.refuse(ctx, id, &a, reason);
        }
        if a.info.hardware != self.hardware {
            let reason = Refusal::WrongHardware {
                offered: a.info.hardware.clone(),
                mine: self.hardware.clone(),
            };
            return self.refuse(ctx, id, &a, reason);
        }
        if self.signed_only {
            let reason = Refusal::Untrusted {
                code: "unsigned",
                reason: "classic OTA refused: this node has a trusted key and installs only \
                         signed pmesh rollouts"
                    .into(),
            };
            return self.refuse(ctx, id, &a, reason);
        }
        if self.current_md5.as_deref() == Some(a.info.md5.as_str()) && !a.info.forced {
            return self.refuse(ctx, id, &a, Refusal::AlreadyCurrent);
        }
        if let Some(t) = &mut self.t
            && t.announce.info.md5 == a.info.md5
        {
            // Same image: a stalled transfer starts asking again; the distributor may have moved.
            t.announce.from = a.from;
            if t.stalled {
                t.stalled = false;
                t.tries = 0;
                self.schedule_start(ctx);
            }
            return;
        }
        if busy {
            return self.refuse(ctx, id, &a, Refusal::Busy);
        }
        if a.info.no_part == 0 {
            return self.refuse(ctx, id, &a, Refusal::BadOffer("noPart is 0"));
        }
        // Chunk sizes are not announced; below 128 bytes none is plausible. This also bounds
        // the bitmap a bogus announce could make us allocate.
        if u64::from(a.info.no_part) * 128 > sink.capacity() + 128 {
            let size = u64::from(a.info.no_part) * 128;
            return self.refuse(
                ctx,
                id,
                &a,
                Refusal::TooLarge {
                    size,
                    capacity: sink.capacity(),
                },
            );
        }
        if a.info.md5.len() != 32 || !a.info.md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.refuse(ctx, id, &a, Refusal::BadOffer("md5 is not 32 hex digits"));
        }
        if self.t.take().is_some() {
            sink.abort();
            let _ = store.clear_transfer();
        }
        if let Err(e) = sink.begin(None) {
            return self.refuse(ctx, id, &a, Refusal::Io(e));
        }
        let mut t = Transfer::new(a, sink.has_staging());
        if t.announce.info.compressed {
            t.gz = Some(GzipDecoder::new(sink.capacity()));
        }
        let total = t.have.len();
        self.t = Some(t);
        ctx.emit(OtaEvent::Accepted {
            id,
            chunks: total,
            resumed_from: 0,
        });
        self.schedule_start(ctx);
    }

    fn refuse(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        id: TransferId,
        a: &Announce,
        reason: Refusal,
    ) {
        let key = (a.info.md5.clone(), reason.code());
        if !self.refused.contains(&key) {
            if self.refused.len() >= 16 {
                self.refused.remove(0);
            }
            self.refused.push(key);
            if matches!(reason, Refusal::Untrusted { .. }) {
                self.stats.untrusted += 1;
            }
            ctx.emit(OtaEvent::Refused { id, reason });
        }
    }

    /// Arms the first request (unicast, or broadcast as root) or the broadcast idle timer.
    fn schedule_start(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let jitter = self.jitter(ctx);
        let Some(t) = &mut self.t else { return };
        let now = ctx.now();
        if !t.announce.info.broadcasted || ctx.is_root() {
            t.driving = t.announce.info.broadcasted;
            t.next_request = Some(now);
            t.in_flight.clear();
        } else {
            t.driving = false;
            t.idle_until = Some(now + self.tuning.broadcast_idle + jitter);
        }
        self.on_timeout(ctx);
    }

    fn jitter(&self, ctx: &mut Context<'_, OtaEvent>) -> Duration {
        let j = self.tuning.broadcast_jitter.as_micros() as u64;
        Duration::from_micros(if j == 0 { 0 } else { ctx.random() % j })
    }

    /// Next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.t.as_ref()?;
        if t.stalled {
            return None;
        }
        match (t.next_request, t.idle_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due requests and the broadcast idle timer.
    pub(crate) fn on_timeout(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let now = ctx.now();
        let tuning = self.tuning;
        let Some(t) = &mut self.t else { return };
        if t.stalled {
            return;
        }
        if t.idle_until.is_some_and(|d| d <= now) {
            t.idle_until = None;
            if !t.have.is_complete() {
                t.driving = true;
                t.in_flight.clear();
                t.next_request = Some(now);
            }
        }
        if t.next_request.is_some_and(|d| d <= now) {
            if !t.in_flight.is_empty() {
                // Unanswered for a whole interval: count a try and ask again.
                t.tries += 1;
                t.in_flight.clear();
                if t.tries >= tuning.request_tries {
                    t.stalled = true;
                    t.next_request = None;
                    t.driving = false;
                    return;
                }
            }
            self.fill_window(ctx);
        }
    }

    /// Requests missing chunks up to the window (1 while driving a broadcast).
    fn fill_window(&mut self, ctx: &mut Context<'_, OtaEvent>) {
        let now = ctx.now();
        let me = ctx.node_id();
        let tuning = self.tuning;
        let Some(t) = &mut self.t else { return };
        let broadcast = t.announce.info.broadcasted;
        if broadcast && !t.driving {
            t.next_request = None;
            return;
        }
        let window = if broadcast { 1 } else { tuning.window.max(1) } as usize;
        let mut from = 0;
        while t.in_flight.len() < window {
            let Some(next) = t.have.next_missing(from) else {
                break;
            };
            from = next + 1;
            if t.in_flight.contains(&next) {
                continue;
            }
            let mut info = t.announce.info.clone();
            info.broadcasted = broadcast;
            let req = DataRequest {
                from: me,
                dest: t.announce.from,
                part_no: next,
                info,
            };
            if ctx.send(Routing::Single, req.dest, req.to_json()).is_err() {
                break; // no route yet: the retry timer tries again
            }
            self.stats.requests += 1;
            t.in_flight.push(next);
        }
        t.next_request = Some(now + tuning.request_interval);
    }

    /// A type-12 Data (addressed to us or flooded).
    pub(crate) fn on_data(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        d: &Data,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let me = ctx.node_id();
        let now = ctx.now();
        let idle = self.tuning.broadcast_idle;
        let jitter = self.jitter(ctx);
        let Some(t) = &mut self.t else { return };
        let info = &t.announce.info;
        if d.info.md5 != info.md5 || d.info.role != info.role || d.info.hardware != info.hardware {
            return;
        }
        if info.broadcasted && d.info.broadcasted && d.dest != me {
            // Someone else drives the flood: listen, and take over only if it goes quiet.
            t.driving = false;
            t.in_flight.clear();
            t.next_request = None;
            t.idle_until = Some(now + idle + jitter);
        }
        t.in_flight.retain(|&p| p != d.part_no);
        let result = Self::accept_chunk(t, d, sink, store, &mut self.stats);
        match result {
            Ok(true) => {
                t.tries = 0;
                t.stalled = false;
                let (done, total) = (t.have.count(), t.have.len());
                let pct = done * 100 / total;
                if pct != t.last_pct || done == total {
                    t.last_pct = pct;
                    ctx.emit(OtaEvent::Progress {
                        id: t.id,
                        done,
                        total,
                    });
                }
            }
            Ok(false) => {}
            Err(reason) => return self.fail(ctx, reason, sink, store),
        }
        let complete = match &self.t {
            Some(t) if t.announce.info.compressed => t.next_inflate == t.have.len(),
            Some(t) => t.have.is_complete() && t.last_len.is_some(),
            None => false,
        };
        if complete {
            return self.finish(ctx, sink, store);
        }
        if let Some(t) = &self.t
            && (!t.announce.info.broadcasted || (t.driving && d.dest == me))
        {
            self.fill_window(ctx);
        }
    }

    /// Writes one chunk; Ok(true) if it was new.
    fn accept_chunk(
        t: &mut Transfer,
        d: &Data,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
        stats: &mut ClassicReceiverStats,
    ) -> Result<bool, Refusal> {
        let k = t.have.len();
        let i = d.part_no;
        if i >= k {
            stats.dropped += 1;
            return Ok(false);
        }
        if t.have.get(i) {
            stats.duplicates += 1;
            return Ok(false);
        }
        let Ok(bytes) = d.decode_data() else {
            stats.dropped += 1;
            return Ok(false);
        };
        let last = i == k - 1;
        // Learn and check the chunk size (not announced; every chunk but the last has it).
        match (t.chunk, last) {
            _ if bytes.is_empty() => {
                stats.dropped += 1;
                return Ok(false);
            }
            (None, false) => t.chunk = Some(bytes.len() as u32),
            (None, true) if k == 1 => t.chunk = Some(bytes.len() as u32),
            (None, true) => {
                stats.dropped += 1; // cannot place the last chunk yet
                return Ok(false);
            }
            (Some(c), false) if bytes.len() as u32 != c => {
                stats.dropped += 1;
                return Ok(false);
            }
            (Some(c), true) if bytes.len() as u32 > c => {
                stats.dropped += 1;
                return Ok(false);
            }
            _ => {}
        }
        let c = u64::from(t.chunk.unwrap_or(1));
        if last {
            t.last_len = Some(bytes.len() as u32);
        }
        let offset = u64::from(i) * c;
        if offset + bytes.len() as u64 > sink.capacity() && !t.announce.info.compressed {
            return Err(Refusal::TooLarge {
                size: u64::from(k - 1) * c + u64::from(t.last_len.unwrap_or(1)),
                capacity: sink.capacity(),
            });
        }
        if t.announce.info.compressed {
            if i == t.next_inflate {
                Self::inflate(t, &bytes, sink)?;
                t.next_inflate += 1;
            } else if t.staging {
                sink.stage_write(offset, &bytes)?;
            } else {
                stats.dropped += 1;
                return Ok(false);
            }
            t.have.set(i);
            stats.chunks_written += 1;
            // Drain staged chunks that are now in order.
            while t.next_inflate < k && t.have.get(t.next_inflate) {
                let n = t.next_inflate;
                let len = if n == k - 1 {
                    t.last_len.unwrap_or(0)
                } else {
                    c as u32
                };
                let mut buf = vec![0u8; len as usize];
                sink.stage_read(u64::from(n) * c, &mut buf)?;
                Self::inflate(t, &buf, sink)?;
                t.next_inflate += 1;
            }
            return Ok(true);
        }
        sink.write_at(offset, &bytes)?;
        if !t.recorded {
            let mut rec = t.announce.to_json();
            rec.pop();
            rec.push(b',');
            rec.extend_from_slice(CHUNK_KEY);
            pmesh_proto::json::write_u64(&mut rec, c);
            rec.push(b'}');
            store.begin_transfer(&rec, k)?;
            t.recorded = true;
        }
        store.mark_chunk(i)?;
        t.have.set(i);
        stats.chunks_written += 1;
        Ok(true)
    }

    fn inflate(
        t: &mut Transfer,
        served: &[u8],
        sink: &mut dyn FirmwareSink,
    ) -> Result<(), Refusal> {
        t.served_md5.update(served);
        let gz = t.gz.as_mut().ok_or(Refusal::BadOffer("no inflater"))?;
        let sha = &mut t.image_sha;
        gz.push(served, |off, bytes| {
            sha.update(bytes);
            sink.write_at(off, bytes)
        })
        .map_err(|e| match e {
            GzipPushError::Codec(crate::codec::CodecError::TooLarge(cap)) => Refusal::TooLarge {
                size: cap.saturating_add(1),
                capacity: cap,
            },
            GzipPushError::Codec(c) => Refusal::Codec(c),
            GzipPushError::Sink(e) => Refusal::Io(e),
        })
    }

    /// All chunks are in: check the MD5, commit, record.
    fn finish(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        let Some(t) = &mut self.t else { return };
        let expected = t.announce.info.md5.clone();
        let (len, md5, sha) = if t.announce.info.compressed {
            let gz = t.gz.as_ref().map(|g| g.finish());
            let len = match gz {
                Some(Ok(len)) => len,
                Some(Err(e)) => return self.fail(ctx, Refusal::Codec(e), sink, store),
                None => return self.fail(ctx, Refusal::BadOffer("no inflater"), sink, store),
            };
            let md5 = core::mem::take(&mut t.served_md5).finish_hex();
            let sha = core::mem::take(&mut t.image_sha).finish_hex();
            (len, md5, sha)
        } else {
            let c = u64::from(t.chunk.unwrap_or(0));
            let len = u64::from(t.have.len() - 1) * c + u64::from(t.last_len.unwrap_or(0));
            match read_back_hashes(sink, len) {
                Ok((md5, sha)) => (len, md5, sha),
                Err(e) => return self.fail(ctx, Refusal::Io(e), sink, store),
            }
        };
        if md5 != expected {
            return self.fail(
                ctx,
                Refusal::HashMismatch {
                    expected,
                    actual: md5,
                },
                sink,
                store,
            );
        }
        if let Err(e) = sink.verify(len).and_then(|_| sink.commit()) {
            return self.fail(ctx, Refusal::Io(e), sink, store);
        }
        let image = InstalledImage {
            role: self.role.clone(),
            hardware: self.hardware.clone(),
            md5: expected.clone(),
            sha256: sha,
            version: String::new(),
        };
        let id = t.id;
        let _ = store.set_current_image(&image);
        let _ = store.clear_transfer();
        self.current_md5 = Some(expected);
        self.t = None;
        ctx.emit(OtaEvent::Verified { id });
        ctx.emit(OtaEvent::Installed { id, image });
    }

    fn fail(
        &mut self,
        ctx: &mut Context<'_, OtaEvent>,
        reason: Refusal,
        sink: &mut dyn FirmwareSink,
        store: &mut dyn OtaStore,
    ) {
        if let Some(t) = self.t.take() {
            sink.abort();
            let _ = store.clear_transfer();
            ctx.emit(OtaEvent::Failed { id: t.id, reason });
        }
    }
}

impl Transfer {
    fn new(announce: Announce, staging: bool) -> Self {
        let id = TransferId::classic(&announce.info.md5, announce.info.broadcasted);
        let k = announce.info.no_part;
        Transfer {
            id,
            have: ChunkBitmap::new(k),
            announce,
            chunk: None,
            last_len: None,
            in_flight: Vec::new(),
            driving: false,
            next_request: None,
            idle_until: None,
            tries: 0,
            stalled: false,
            next_inflate: 0,
            gz: None,
            served_md5: Md5Hasher::default(),
            image_sha: Sha256Hasher::default(),
            staging,
            recorded: false,
            last_pct: 0,
        }
    }
}

/// MD5 and SHA-256 of the first `len` bytes written to the sink, read back in 4 KiB pieces.
pub(crate) fn read_back_hashes(
    sink: &mut dyn FirmwareSink,
    len: u64,
) -> Result<(String, String), IoError> {
    let mut md5 = Md5Hasher::default();
    let mut sha = Sha256Hasher::default();
    let mut buf = vec![0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        sink.read_at(at, &mut buf[..n])?;
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        at += n as u64;
    }
    Ok((md5.finish_hex(), sha.finish_hex()))
}
