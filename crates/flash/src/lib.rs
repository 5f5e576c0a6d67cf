//! # pmesh-flash
//!
//! pmesh OTA on NOR flash, for firmware (`no_std`, no allocation beyond error texts):
//!
//! - [`FlashSink`]: a [`pmesh_ota::FirmwareSink`] with two image slots over any
//!   [`embedded_storage`] NOR flash (`esp-storage` on an ESP32, or a region of it). The new
//!   image goes into the slot not running; `begin` erases it; unaligned writes are merged
//!   into whole words; `commit` makes it the running slot.
//! - [`EmulatedFlash`]: NOR flash rules over memory, for tests and emulators (the QEMU node):
//!   erase sets whole sectors to `0xFF`, programming only clears bits and refuses a write that
//!   would need a cleared bit set.
//!
//! What stays with the platform: switching the boot slot for real at `commit` (ESP-IDF's
//! `otadata`, see `firmware/esp32c3`) and a flash-backed [`pmesh_ota::OtaStore`].

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

use embedded_storage::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use pmesh_ota::{FirmwareSink, IoError};

/// Why the emulated flash refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashError {
    /// Offset or length not a multiple of the erase or write size.
    NotAligned,
    /// Past the end of the device.
    OutOfBounds,
    /// A write would have to set a bit that is cleared: the range was not erased first.
    NotErased {
        /// The offending byte.
        offset: u32,
    },
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FlashError::NotErased { .. } => NorFlashErrorKind::Other,
        }
    }
}

/// Counters of an [`EmulatedFlash`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FlashStats {
    /// Sectors erased.
    pub sectors_erased: u32,
    /// Bytes programmed.
    pub bytes_programmed: u64,
}

/// NOR flash rules over memory (`M`: a `Vec<u8>`, an array, a `&'static mut [u8]` region).
#[derive(Debug)]
pub struct EmulatedFlash<M> {
    mem: M,
    stats: FlashStats,
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> EmulatedFlash<M> {
    /// A factory-fresh device over `mem`: every byte erased.
    pub fn new(mut mem: M) -> Self {
        mem.as_mut().fill(0xff);
        EmulatedFlash {
            mem,
            stats: FlashStats::default(),
        }
    }

    /// Everything the device holds (memory, so it can be looked at without a read call).
    pub fn contents(&self) -> &[u8] {
        self.mem.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, FlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(FlashError::OutOfBounds)?;
        if end > self.mem.as_ref().len() {
            return Err(FlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

impl<M> ErrorType for EmulatedFlash<M> {
    type Error = FlashError;
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> ReadNorFlash for EmulatedFlash<M> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem.as_ref()[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.as_ref().len()
    }
}

impl<M: AsRef<[u8]> + AsMut<[u8]>> NorFlash for EmulatedFlash<M> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        if from > to
            || !(from as usize).is_multiple_of(Self::ERASE_SIZE)
            || !(to as usize).is_multiple_of(Self::ERASE_SIZE)
        {
            return Err(FlashError::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        self.stats.sectors_erased += (r.len() / Self::ERASE_SIZE) as u32;
        self.mem.as_mut()[r].fill(0xff);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        if !(offset as usize).is_multiple_of(Self::WRITE_SIZE)
            || !bytes.len().is_multiple_of(Self::WRITE_SIZE)
        {
            return Err(FlashError::NotAligned);
        }
        let r = self.range(offset, bytes.len())?;
        let cells = &mut self.mem.as_mut()[r];
        if let Some(i) = cells
            .iter()
            .zip(bytes)
            .position(|(&old, &new)| new & !old != 0)
        {
            return Err(FlashError::NotErased {
                offset: offset + i as u32,
            });
        }
        for (cell, &new) in cells.iter_mut().zip(bytes) {
            *cell &= new;
        }
        self.stats.bytes_programmed += bytes.len() as u64;
        Ok(())
    }
}

/// Programming a word again may clear more bits (what [`FlashSink`]'s unaligned writes need).
impl<M: AsRef<[u8]> + AsMut<[u8]>> MultiwriteNorFlash for EmulatedFlash<M> {}

/// An image being received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    /// Its size if known (`None`: classic OTA, at most a slot).
    len: Option<u64>,
    /// Its size once `verify` passed.
    verified: Option<u64>,
}

/// Two image slots on a NOR flash; a [`FirmwareSink`] for pmesh-ota. The flash must read at
/// any offset (`READ_SIZE` 1) and program words of at most 16 bytes.
///
/// Unaligned writes (classic OTA's inflated pieces, pmesh chunks of any size) are widened to
/// whole words by reading the neighbouring bytes back: re-programming what a word already holds
/// clears no extra bit, which is why the flash must be [`MultiwriteNorFlash`].
///
/// What a reboot needs from the platform: the booted slot and the partial image's size are
/// kept in RAM here ([`FlashSink::with_running_slot`] says which slot booted); a device keeps
/// them in a flash record (ESP-IDF's `otadata`) and switches the boot slot after `commit`.
#[derive(Debug)]
pub struct FlashSink<F> {
    flash: F,
    slot_size: u32,
    /// The slot the node runs (0 or 1) and the size of the image in it (None: the factory
    /// image, which this sink cannot read).
    running: (u32, Option<u64>),
    /// The image being received.
    pending: Option<Pending>,
}

impl<F: MultiwriteNorFlash> FlashSink<F> {
    /// Slot 0 runs; slot 1 takes the first update. Each slot is half the device.
    pub fn new(flash: F) -> Self {
        Self::with_running_slot(flash, 0)
    }

    /// Slot `running` (0 or 1) holds the image the device booted (its size unknown, so it is
    /// not served to neighbours); the other slot takes the next update.
    pub fn with_running_slot(flash: F, running: u32) -> Self {
        assert!(
            F::WRITE_SIZE <= 16,
            "write_at merges words in a 16-byte buffer"
        );
        assert!(running < 2, "two slots");
        assert!(
            F::READ_SIZE == 1,
            "reads come at any offset (esp-storage: `bytewise-read`)"
        );
        let half = flash.capacity() as u32 / 2;
        FlashSink {
            slot_size: half - half % F::ERASE_SIZE as u32,
            flash,
            running: (running, None),
            pending: None,
        }
    }

    /// The flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The flash, to switch the boot slot after a commit.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The slot the next image goes to.
    pub fn target_slot(&self) -> u32 {
        1 - self.running.0
    }

    /// Where the image the node runs starts on the flash and its size (None: factory image).
    pub fn running_image(&self) -> Option<(u32, u64)> {
        let (slot, len) = self.running;
        Some((self.slot_base(slot), len?))
    }

    fn slot_base(&self, slot: u32) -> u32 {
        slot * self.slot_size
    }

    /// The highest offset of the pending image plus one.
    fn limit(&self) -> Result<u64, IoError> {
        match self.pending {
            Some(p) => Ok(p.len.unwrap_or(u64::from(self.slot_size))),
            None => Err(IoError::BadState("no image begun")),
        }
    }

    fn check(&self, offset: u64, len: usize, limit: u64) -> Result<u32, IoError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= limit => Ok(offset as u32),
            _ => Err(IoError::OutOfRange {
                offset,
                len: len as u64,
                limit,
            }),
        }
    }

    fn device(e: F::Error) -> IoError {
        IoError::Device(alloc::format!("flash: {:?}", e.kind()))
    }
}

impl<F: MultiwriteNorFlash> FirmwareSink for FlashSink<F> {
    fn capacity(&self) -> u64 {
        u64::from(self.slot_size)
    }

    fn begin(&mut self, len: Option<u64>) -> Result<(), IoError> {
        let cap = u64::from(self.slot_size);
        let want = len.unwrap_or(cap);
        if want > cap {
            return Err(IoError::OutOfRange {
                offset: 0,
                len: want,
                limit: cap,
            });
        }
        // Erase what the image can cover, whole sectors. (A device erasing seconds' worth
        // would do this lazily, sector by sector ahead of the writes.)
        let sector = F::ERASE_SIZE as u64;
        let span = want.div_ceil(sector) * sector;
        let base = self.slot_base(self.target_slot());
        self.flash
            .erase(base, base + span as u32)
            .map_err(Self::device)?;
        self.pending = Some(Pending {
            len,
            verified: None,
        });
        Ok(())
    }

    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError> {
        match self.pending {
            Some(p) if p.len == len => Ok(()),
            Some(_) => Err(IoError::BadState("partial image has another size")),
            None => Err(IoError::BadState("no partial image")),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let limit = self.limit()?;
        let at = self.check(offset, data.len(), limit)? + self.slot_base(self.target_slot());
        let word = F::WRITE_SIZE as u32;
        // Head and tail words shared with bytes outside `data` are merged with what the flash
        // holds there; the aligned middle goes in one write.
        let mut pos = at;
        let mut rest = data;
        while !rest.is_empty() {
            let aligned = pos - pos % word;
            if pos == aligned && rest.len() >= word as usize {
                let n = rest.len() - rest.len() % word as usize;
                self.flash.write(pos, &rest[..n]).map_err(Self::device)?;
                pos += n as u32;
                rest = &rest[n..];
                continue;
            }
            let mut w = [0u8; 16];
            let w = &mut w[..word as usize];
            self.flash.read(aligned, w).map_err(Self::device)?;
            let skip = (pos - aligned) as usize;
            let n = (word as usize - skip).min(rest.len());
            w[skip..skip + n].copy_from_slice(&rest[..n]);
            self.flash.write(aligned, w).map_err(Self::device)?;
            pos += n as u32;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let limit = self.limit()?;
        let at = self.check(offset, buf.len(), limit)? + self.slot_base(self.target_slot());
        self.flash.read(at, buf).map_err(Self::device)
    }

    fn verify(&mut self, len: u64) -> Result<(), IoError> {
        let limit = self.limit()?;
        self.check(0, len as usize, limit)?;
        if let Some(p) = self.pending.as_mut() {
            p.verified = Some(len);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IoError> {
        let Some(Pending {
            verified: Some(len),
            ..
        }) = self.pending
        else {
            return Err(IoError::BadState("commit before verify"));
        };
        self.running = (self.target_slot(), Some(len));
        self.pending = None;
        Ok(())
    }

    fn abort(&mut self) {
        self.pending = None;
    }

    fn read_current(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let (slot, Some(len)) = self.running else {
            return Err(IoError::Unsupported);
        };
        let at = self.check(offset, buf.len(), len)? + self.slot_base(slot);
        self.flash.read(at, buf).map_err(Self::device)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    fn image(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sink() -> FlashSink<EmulatedFlash<Vec<u8>>> {
        FlashSink::new(EmulatedFlash::new(vec![0u8; 64 * 1024]))
    }

    #[test]
    fn emulated_flash_keeps_nor_rules() {
        let mut f = EmulatedFlash::new(vec![0u8; 8192]);
        assert!(
            f.contents().iter().all(|&b| b == 0xff),
            "factory-fresh is erased"
        );
        assert_eq!(f.write(2, &[0; 4]), Err(FlashError::NotAligned));
        assert_eq!(f.erase(0, 100), Err(FlashError::NotAligned));
        assert_eq!(f.write(8192, &[0; 4]), Err(FlashError::OutOfBounds));
        f.write(0, &[0xf0, 0x0f, 0xff, 0x00]).unwrap();
        // Clearing more bits of a programmed word is fine; setting one is not.
        f.write(0, &[0x00, 0x0f, 0xff, 0x00]).unwrap();
        assert_eq!(
            f.write(0, &[0xff, 0x0f, 0xff, 0x00]),
            Err(FlashError::NotErased { offset: 0 })
        );
        f.erase(0, 4096).unwrap();
        f.write(0, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(f.stats().sectors_erased, 1);
    }

    #[test]
    fn unaligned_out_of_order_writes_read_back_and_commit_switches_slots() {
        let mut s = sink();
        assert_eq!(s.capacity(), 32 * 1024);
        let img = image(10_001);
        s.begin(Some(img.len() as u64)).unwrap();
        // Pieces of odd sizes at odd offsets, last first.
        let cuts = [0, 3, 1000, 1001, 4097, 7777, 10_001];
        for w in cuts.windows(2).rev() {
            s.write_at(w[0] as u64, &img[w[0]..w[1]]).unwrap();
        }
        let mut back = vec![0u8; img.len()];
        s.read_at(0, &mut back).unwrap();
        assert_eq!(back, img);
        assert_eq!(
            s.read_current(0, &mut [0; 4]),
            Err(IoError::Unsupported),
            "factory image"
        );
        s.verify(img.len() as u64).unwrap();
        s.commit().unwrap();
        assert_eq!(s.running_image(), Some((32 * 1024, img.len() as u64)));
        let mut cur = vec![0u8; 100];
        s.read_current(9_901, &mut cur).unwrap();
        assert_eq!(cur, img[9_901..]);
        assert!(s.read_current(9_902, &mut cur).is_err(), "past the image");
        // The next image goes to slot 0, which `begin` erases.
        s.begin(Some(16)).unwrap();
        assert_eq!(s.target_slot(), 0);
        s.write_at(0, &[9; 16]).unwrap();
        let mut b = [0u8; 16];
        s.read_at(0, &mut b).unwrap();
        assert_eq!(b, [9; 16]);
    }

    #[test]
    fn a_rewrite_needs_an_erase_but_a_replayed_chunk_is_fine() {
        let mut s = sink();
        s.begin(None).unwrap();
        s.write_at(5, &[0x55; 10]).unwrap();
        // A chunk written again after a power cut carries the same bytes: allowed.
        s.write_at(5, &[0x55; 10]).unwrap();
        assert!(
            matches!(s.write_at(5, &[0xaa; 10]), Err(IoError::Device(_))),
            "different bytes over programmed ones"
        );
        s.abort();
        assert!(s.write_at(0, &[1]).is_err(), "nothing begun");
        s.begin(None).unwrap();
        s.write_at(5, &[0xaa; 10]).unwrap();
    }

    #[test]
    fn ranges_are_checked() {
        let mut s = sink();
        assert!(matches!(
            s.begin(Some(32 * 1024 + 1)),
            Err(IoError::OutOfRange { .. })
        ));
        s.begin(Some(100)).unwrap();
        assert!(matches!(
            s.write_at(99, &[0, 0]),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(s.write_at(u64::MAX, &[0]).is_err(), "no overflow");
        assert!(s.read_at(100, &mut [0]).is_err());
        assert!(s.verify(101).is_err());
        assert!(s.resume(Some(99)).is_err(), "another size");
        s.resume(Some(100)).unwrap();
        assert!(s.commit().is_err(), "commit before verify");
    }
}
