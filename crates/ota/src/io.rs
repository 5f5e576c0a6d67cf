//! Firmware I/O as traits: where images come from ([`FirmwareSource`]), where a new image goes
//! ([`FirmwareSink`]) and what a node remembers across reboots ([`OtaStore`]).
//!
//! The OTA state machines never touch files or flash directly; the host hands them
//! implementations of these traits. This module has the in-memory implementations the
//! simulator and the tests use; file-backed ones live in the Linux runtime crate. The exact
//! contracts (what must survive a power cut, in which order calls come) are in `docs/ota.md`.
//!
//! The memory implementations are *handles*: cloning one shares the same storage, so a test or
//! the simulator keeps a clone, drops a "crashed" node, and builds the rebooted node with the
//! clone — exactly what flash does across a power cut.

use alloc::rc::Rc;
use alloc::string::String;
// `alloc::sync` needs atomic compare-and-swap; targets without it take portable-atomic's `Arc`.
#[cfg(not(feature = "portable-atomic"))]
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
#[cfg(feature = "portable-atomic")]
use portable_atomic_util::Arc;

use crate::bitmap::ChunkBitmap;

/// An I/O failure reported by a source, sink or store implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The operation is not supported by this implementation (e.g. no staging area).
    Unsupported,
    /// An offset or length outside the image or the device.
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The call came in the wrong state (write before `begin`, commit twice, ...).
    BadState(&'static str),
    /// The device failed (flash write error, file error); the text says what happened.
    Device(String),
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Unsupported => f.write_str("operation not supported by this device"),
            IoError::OutOfRange { offset, len, limit } => {
                write!(
                    f,
                    "{len} bytes at offset {offset} exceed the limit of {limit} bytes"
                )
            }
            IoError::BadState(what) => write!(f, "wrong state: {what}"),
            IoError::Device(msg) => write!(f, "device error: {msg}"),
        }
    }
}

/// Serves the bytes of an image being distributed (the distributor side).
///
/// Contract: `len` is fixed for the source's lifetime; `read_at` fills `buf` completely unless
/// the range runs past `len`, in which case it fills what exists and returns that count.
/// Reads may come in any order and repeat (every DataRequest and every repair reads again).
pub trait FirmwareSource {
    /// Size of the image in bytes.
    fn len(&self) -> u64;

    /// True when the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies bytes starting at `offset` into `buf`; returns how many were copied.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError>;
}

/// Receives a new image (the receiver side): `begin`, `write_at`..., `read_at` for the hash
/// check, then `commit` or `abort`.
///
/// Contract (see `docs/ota.md` for the full text):
/// - `begin(len)` starts a new image, discarding any partial one. `len` is the exact size
///   when known (pmesh manifests), `None` when not (classic OTA announces only a chunk count);
///   either way the image never exceeds [`FirmwareSink::capacity`].
/// - `resume(len)` reopens the partial image written before a reboot (same `len` as its
///   `begin`); bytes written then must still read back. Return `Err` if that is impossible
///   (the receiver then starts over with `begin`).
/// - `write_at` may come in any order (chunks arrive out of order); each byte range is written
///   at most once per `begin`, except after a failed verification.
/// - `read_at` returns what was written (the receiver hashes the image by reading it back).
///   Bytes not written since `begin` hold whatever the device has there (erased flash reads
///   `0xFF`, a sparse file zero): receivers read back only ranges they wrote.
/// - `verify(len)` comes once the receiver's own hash check passed: the image is exactly `len`
///   bytes; the platform may run its own checks (image header, signature) and refuse.
/// - `commit` makes the image the one to boot next; after it succeeds the receiver records the
///   image as current in the [`OtaStore`]. `abort` discards the partial image.
/// - The staging area (`stage_write`/`stage_read`) is optional scratch space for *served* bytes
///   that cannot be written yet (classic compressed mode receives a gzip stream whose chunks
///   must be inflated in order). Sinks without one return [`IoError::Unsupported`] and the
///   receiver then accepts compressed classic chunks in order only.
pub trait FirmwareSink {
    /// The largest image this device can take, in bytes.
    fn capacity(&self) -> u64;

    /// Starts a new image of `len` bytes (`None`: size unknown, at most the capacity).
    fn begin(&mut self, len: Option<u64>) -> Result<(), IoError>;

    /// Reopens the partial image after a reboot (`len` as given to `begin`).
    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError>;

    /// Writes `data` at `offset` of the new image.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError>;

    /// Reads back `buf.len()` bytes at `offset` of the new image.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;

    /// The image is complete and hash-checked: exactly `len` bytes. Platform checks go here.
    fn verify(&mut self, len: u64) -> Result<(), IoError>;

    /// Makes the new image the one to boot.
    fn commit(&mut self) -> Result<(), IoError>;

    /// Discards the partial image.
    fn abort(&mut self);

    /// This sink has a staging area.
    fn has_staging(&self) -> bool {
        false
    }

    /// Writes served bytes to the staging area at `offset`.
    fn stage_write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), IoError> {
        Err(IoError::Unsupported)
    }

    /// Reads served bytes back from the staging area.
    fn stage_read(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<(), IoError> {
        Err(IoError::Unsupported)
    }

    /// Reads `buf.len()` bytes at `offset` of the image this node runs (the last one
    /// committed), so a node that applied a pmesh rollout keeps serving it to neighbours
    /// that still need chunks. Devices that cannot read their running image return
    /// [`IoError::Unsupported`] (the default): such a node relays for others after applying.
    fn read_current(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<(), IoError> {
        Err(IoError::Unsupported)
    }
}

/// The image a node runs, as recorded after a successful update (the reference's
/// `/ota_fw.json`: role, hardware, md5, plus pmesh's SHA-256 and version).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledImage {
    /// Role the image was installed for.
    pub role: String,
    /// Hardware the image was installed for.
    pub hardware: String,
    /// Lowercase hex MD5 of the served bytes (classic announces compare this).
    pub md5: String,
    /// Lowercase hex SHA-256 of the image in flash (pmesh manifests compare this); empty if unknown.
    pub sha256: String,
    /// Version text from the manifest; empty if unknown.
    pub version: String,
}

/// A transfer in progress, as persisted: the offer it belongs to and which chunks are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// The offer's frame as received (a classic Announce or a pmesh manifest), verbatim.
    pub offer: Vec<u8>,
    /// Chunks already written to the sink (or, in classic compressed mode, staged).
    pub have: ChunkBitmap,
}

/// What a node remembers across reboots: its current image and the transfer in progress.
///
/// Contract: every call is durable when it returns `Ok` (a power cut right after must not
/// lose it). `mark_chunk` is called once per chunk right after the chunk's bytes were written
/// to the sink, so an implementation on flash may append the index to a log rather than
/// rewrite a bitmap. One transfer at a time.
pub trait OtaStore {
    /// The image this node runs, if recorded.
    fn current_image(&self) -> Option<InstalledImage>;

    /// Records the image this node will run after the pending commit.
    fn set_current_image(&mut self, image: &InstalledImage) -> Result<(), IoError>;

    /// The transfer in progress, if any.
    fn load_transfer(&self) -> Option<TransferRecord>;

    /// Starts recording a new transfer of `chunks` chunks for `offer` (no chunk held yet).
    fn begin_transfer(&mut self, offer: &[u8], chunks: u32) -> Result<(), IoError>;

    /// Records that chunk `index` of the current transfer is written.
    fn mark_chunk(&mut self, index: u32) -> Result<(), IoError>;

    /// Forgets the transfer (done, aborted or replaced).
    fn clear_transfer(&mut self) -> Result<(), IoError>;

    /// Anti-rollback: the highest signed-firmware sequence this node confirmed for (role,
    /// hardware), if any. The default (a store that cannot keep it) knows none, so such a
    /// node has no rollback protection across restarts.
    fn confirmed_sequence(&self, _role: &str, _hardware: &str) -> Option<u64> {
        None
    }

    /// Records `sequence` as confirmed for (role, hardware); durable when `Ok`. Never lowers
    /// a recorded value.
    fn set_confirmed_sequence(
        &mut self,
        _role: &str,
        _hardware: &str,
        _sequence: u64,
    ) -> Result<(), IoError> {
        Err(IoError::Unsupported)
    }
}

// --- memory implementations ----------------------------------------------------------------

/// An image held in memory (clones share the bytes; `Send`, so offers can be made from
/// another thread).
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    bytes: Arc<Vec<u8>>,
}

impl MemorySource {
    /// Serves `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        MemorySource {
            bytes: Arc::new(bytes.into()),
        }
    }

    /// The whole image.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl FirmwareSource for MemorySource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
        let len = self.bytes.len() as u64;
        if offset > len {
            return Err(IoError::OutOfRange {
                offset,
                len: buf.len() as u64,
                limit: len,
            });
        }
        let start = offset as usize;
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
}

/// What a [`MemorySink`] holds; shared by every clone of the handle.
#[derive(Debug, Default)]
struct MemoryFlash {
    capacity: u64,
    /// The image being received (grows as it is written) and its declared size.
    pending: Option<(Vec<u8>, Option<u64>)>,
    /// Staged served bytes (classic compressed mode).
    staged: Vec<u8>,
    /// The image that boots (after commit).
    booted: Option<Vec<u8>>,
    stats: SinkStats,
}

/// Counters kept by a [`MemorySink`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// `begin` calls.
    pub begins: u32,
    /// `resume` calls that succeeded.
    pub resumes: u32,
    /// Bytes written with `write_at`.
    pub bytes_written: u64,
    /// Bytes written with `stage_write`.
    pub bytes_staged: u64,
    /// Successful commits.
    pub commits: u32,
    /// Aborts.
    pub aborts: u32,
}

/// What a byte of the in-memory flash holds until it is written: erased NOR flash reads `0xFF`,
/// so a receiver that relied on unwritten bytes reading as zero fails its tests.
const ERASED: u8 = 0xFF;

/// An in-memory flash: a handle whose clones share storage, so it survives a simulated reboot.
/// Memory grows with the bytes written, not with the capacity; bytes not written since `begin`
/// read as `0xFF`, as erased flash does.
#[derive(Clone, Debug)]
pub struct MemorySink {
    flash: Rc<RefCell<MemoryFlash>>,
}

impl MemorySink {
    /// A device that takes images up to `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        MemorySink {
            flash: Rc::new(RefCell::new(MemoryFlash {
                capacity,
                ..MemoryFlash::default()
            })),
        }
    }

    /// The image that boots now (the last committed one).
    pub fn booted(&self) -> Option<Vec<u8>> {
        self.flash.borrow().booted.clone()
    }

    /// The partial image being received, if any.
    pub fn pending(&self) -> Option<Vec<u8>> {
        self.flash.borrow().pending.as_ref().map(|p| p.0.clone())
    }

    /// Counters.
    pub fn stats(&self) -> SinkStats {
        self.flash.borrow().stats
    }

    /// Flips the bits of the pending image's byte at `offset` (a test fault: flash corruption).
    pub fn corrupt_pending(&self, offset: usize) {
        if let Some((p, _)) = self.flash.borrow_mut().pending.as_mut()
            && let Some(b) = p.get_mut(offset)
        {
            *b ^= 0xff;
        }
    }

    fn limit(f: &MemoryFlash) -> Result<u64, IoError> {
        match &f.pending {
            Some((_, len)) => Ok(len.unwrap_or(f.capacity)),
            None => Err(IoError::BadState("no image begun")),
        }
    }
}

impl FirmwareSink for MemorySink {
    fn capacity(&self) -> u64 {
        self.flash.borrow().capacity
    }

    fn begin(&mut self, len: Option<u64>) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        if let Some(len) = len
            && len > f.capacity
        {
            return Err(IoError::OutOfRange {
                offset: 0,
                len,
                limit: f.capacity,
            });
        }
        f.pending = Some((Vec::new(), len));
        f.staged = Vec::new();
        f.stats.begins += 1;
        Ok(())
    }

    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        match &f.pending {
            Some((_, l)) if *l == len => {
                f.stats.resumes += 1;
                Ok(())
            }
            Some(_) => Err(IoError::BadState("partial image has another size")),
            None => Err(IoError::BadState("no partial image")),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        let limit = Self::limit(&f)?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= limit);
        let Some(end) = end else {
            return Err(IoError::OutOfRange {
                offset,
                len: data.len() as u64,
                limit,
            });
        };
        let (p, _) = f
            .pending
            .as_mut()
            .ok_or(IoError::BadState("no image begun"))?;
        if p.len() < end as usize {
            p.resize(end as usize, ERASED);
        }
        p[offset as usize..end as usize].copy_from_slice(data);
        f.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self.flash.borrow();
        let limit = Self::limit(&f)?;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > limit)
        {
            return Err(IoError::OutOfRange {
                offset,
                len: buf.len() as u64,
                limit,
            });
        }
        let (p, _) = f
            .pending
            .as_ref()
            .ok_or(IoError::BadState("no image begun"))?;
        // Written bytes are copied; bytes past what was written read as erased flash.
        let start = (offset as usize).min(p.len());
        let avail = (p.len() - start).min(buf.len());
        buf[..avail].copy_from_slice(&p[start..start + avail]);
        buf[avail..].fill(ERASED);
        Ok(())
    }

    fn verify(&mut self, len: u64) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        let limit = Self::limit(&f)?;
        if len > limit {
            return Err(IoError::OutOfRange {
                offset: 0,
                len,
                limit,
            });
        }
        let (p, _) = f
            .pending
            .as_mut()
            .ok_or(IoError::BadState("no image begun"))?;
        p.resize(len as usize, ERASED);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        let (p, _) = f
            .pending
            .take()
            .ok_or(IoError::BadState("commit without an image"))?;
        f.booted = Some(p);
        f.staged = Vec::new();
        f.stats.commits += 1;
        Ok(())
    }

    fn abort(&mut self) {
        let mut f = self.flash.borrow_mut();
        f.pending = None;
        f.staged = Vec::new();
        f.stats.aborts += 1;
    }

    fn has_staging(&self) -> bool {
        true
    }

    fn stage_write(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let mut f = self.flash.borrow_mut();
        let end = offset.saturating_add(data.len() as u64);
        if end > f.capacity {
            return Err(IoError::OutOfRange {
                offset,
                len: data.len() as u64,
                limit: f.capacity,
            });
        }
        let end = end as usize;
        if f.staged.len() < end {
            f.staged.resize(end, ERASED);
        }
        f.staged[offset as usize..end].copy_from_slice(data);
        f.stats.bytes_staged += data.len() as u64;
        Ok(())
    }

    fn read_current(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self.flash.borrow();
        let booted = f
            .booted
            .as_ref()
            .ok_or(IoError::BadState("no image committed"))?;
        let end = offset.saturating_add(buf.len() as u64);
        if end > booted.len() as u64 {
            return Err(IoError::OutOfRange {
                offset,
                len: buf.len() as u64,
                limit: booted.len() as u64,
            });
        }
        buf.copy_from_slice(&booted[offset as usize..end as usize]);
        Ok(())
    }

    fn stage_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self.flash.borrow();
        let end = offset.saturating_add(buf.len() as u64);
        if end > f.staged.len() as u64 {
            return Err(IoError::OutOfRange {
                offset,
                len: buf.len() as u64,
                limit: f.staged.len() as u64,
            });
        }
        buf.copy_from_slice(&f.staged[offset as usize..end as usize]);
        Ok(())
    }
}

/// What a [`MemoryStore`] holds; shared by every clone of the handle.
#[derive(Debug, Default)]
struct StoreState {
    current: Option<InstalledImage>,
    /// Confirmed signed-firmware sequences per (role, hardware).
    #[cfg(feature = "signature")]
    sequences: alloc::collections::BTreeMap<(String, String), u64>,
    transfer: Option<TransferRecord>,
    writes: u64,
}

/// An in-memory persistent store: a handle whose clones share state (survives a simulated reboot).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Rc<RefCell<StoreState>>,
}

impl MemoryStore {
    /// An empty store (a freshly USB-flashed node: no current image recorded).
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that records `image` as current.
    pub fn with_current(image: InstalledImage) -> Self {
        let s = Self::default();
        s.state.borrow_mut().current = Some(image);
        s
    }

    /// Durable writes so far (each `mark_chunk` counts one).
    pub fn writes(&self) -> u64 {
        self.state.borrow().writes
    }
}

impl OtaStore for MemoryStore {
    fn current_image(&self) -> Option<InstalledImage> {
        self.state.borrow().current.clone()
    }

    fn set_current_image(&mut self, image: &InstalledImage) -> Result<(), IoError> {
        let mut s = self.state.borrow_mut();
        s.current = Some(image.clone());
        s.writes += 1;
        Ok(())
    }

    fn load_transfer(&self) -> Option<TransferRecord> {
        self.state.borrow().transfer.clone()
    }

    fn begin_transfer(&mut self, offer: &[u8], chunks: u32) -> Result<(), IoError> {
        let mut s = self.state.borrow_mut();
        s.transfer = Some(TransferRecord {
            offer: offer.to_vec(),
            have: ChunkBitmap::new(chunks),
        });
        s.writes += 1;
        Ok(())
    }

    fn mark_chunk(&mut self, index: u32) -> Result<(), IoError> {
        let mut s = self.state.borrow_mut();
        let t = s
            .transfer
            .as_mut()
            .ok_or(IoError::BadState("mark_chunk without a transfer"))?;
        if index >= t.have.len() {
            return Err(IoError::OutOfRange {
                offset: u64::from(index),
                len: 1,
                limit: u64::from(t.have.len()),
            });
        }
        t.have.set(index);
        s.writes += 1;
        Ok(())
    }

    fn clear_transfer(&mut self) -> Result<(), IoError> {
        let mut s = self.state.borrow_mut();
        s.transfer = None;
        s.writes += 1;
        Ok(())
    }

    // Only signed rollouts move the counter: without the feature the trait's defaults do,
    // and no flash goes to the map.
    #[cfg(feature = "signature")]
    fn confirmed_sequence(&self, role: &str, hardware: &str) -> Option<u64> {
        let key = (String::from(role), String::from(hardware));
        self.state.borrow().sequences.get(&key).copied()
    }

    #[cfg(feature = "signature")]
    fn set_confirmed_sequence(
        &mut self,
        role: &str,
        hardware: &str,
        sequence: u64,
    ) -> Result<(), IoError> {
        let mut s = self.state.borrow_mut();
        let slot = s
            .sequences
            .entry((role.into(), hardware.into()))
            .or_insert(0);
        *slot = (*slot).max(sequence);
        s.writes += 1;
        Ok(())
    }
}
