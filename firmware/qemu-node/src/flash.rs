//! An emulated NOR flash and a [`FirmwareSink`] over any NOR flash.
//!
//! [`EmulatedFlash`] keeps real flash rules in RAM: erase works on whole 4 KiB sectors and
//! sets every bit (reads `0xFF`), programming works on aligned 4-byte words and can only clear
//! bits; a write that would need a cleared bit set is refused, so a sink that writes twice
//! without an erase fails here as it would corrupt a real chip.
//!
//! [`FlashSink`] is the part a real port reuses (with `esp-storage` or any other
//! `embedded-storage` driver): two image slots, the new image goes into the slot not running,
//! `begin` erases the slot, `commit` flips which slot boots.

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

/// NOR flash rules over a RAM region.
#[derive(Debug)]
pub struct EmulatedFlash {
    mem: &'static mut [u8],
    stats: FlashStats,
}

impl EmulatedFlash {
    /// A factory-fresh device over `mem`: every byte erased.
    pub fn new(mem: &'static mut [u8]) -> Self {
        mem.fill(0xff);
        EmulatedFlash {
            mem,
            stats: FlashStats::default(),
        }
    }

    /// Everything the device holds (RAM here, so it can be looked at without a read call).
    pub fn contents(&self) -> &[u8] {
        self.mem
    }

    /// Counters.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, FlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(FlashError::OutOfBounds)?;
        if end > self.mem.len() {
            return Err(FlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

impl ErrorType for EmulatedFlash {
    type Error = FlashError;
}

impl ReadNorFlash for EmulatedFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for EmulatedFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        if from > to || from as usize % Self::ERASE_SIZE != 0 || to as usize % Self::ERASE_SIZE != 0
        {
            return Err(FlashError::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        self.stats.sectors_erased += (r.len() / Self::ERASE_SIZE) as u32;
        self.mem[r].fill(0xff);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        if offset as usize % Self::WRITE_SIZE != 0 || bytes.len() % Self::WRITE_SIZE != 0 {
            return Err(FlashError::NotAligned);
        }
        let r = self.range(offset, bytes.len())?;
        let cells = &mut self.mem[r];
        if let Some(i) = cells.iter().zip(bytes).position(|(&old, &new)| new & !old != 0) {
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
impl MultiwriteNorFlash for EmulatedFlash {}

/// Two image slots on a NOR flash; a [`FirmwareSink`] for pmesh-ota.
///
/// Unaligned writes (classic OTA's inflated pieces, pmesh chunks of any size) are widened to
/// whole words by reading the neighbouring bytes back: re-programming what a word already holds
/// clears no extra bit, which is why the flash must be [`MultiwriteNorFlash`].
///
/// What a reboot would need and this QEMU node does not do: the booted slot and the partial
/// image's size are kept in RAM; a device keeps them in a flash record (ESP-IDF's `otadata`).
#[derive(Debug)]
pub struct FlashSink<F> {
    flash: F,
    slot_size: u32,
    /// The slot the node runs (0 or 1) and the size of the image in it (None: the factory
    /// image, which this sink cannot read).
    running: (u32, Option<u64>),
    /// The image being received: its size if known (`None`: classic, at most a slot).
    pending: Option<Option<u64>>,
}

impl<F: MultiwriteNorFlash> FlashSink<F> {
    /// Slot 0 runs; slot 1 takes the first update. Each slot is half the device.
    pub fn new(flash: F) -> Self {
        assert!(F::WRITE_SIZE <= 16, "write_at merges words in a 16-byte buffer");
        let half = flash.capacity() as u32 / 2;
        FlashSink {
            slot_size: half - half % F::ERASE_SIZE as u32,
            flash,
            running: (0, None),
            pending: None,
        }
    }

    /// The flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// Where the image the node runs starts on the flash and its size (None: factory image).
    pub fn running_image(&self) -> Option<(u32, u64)> {
        let (slot, len) = self.running;
        Some((self.slot_base(slot), len?))
    }

    fn slot_base(&self, slot: u32) -> u32 {
        slot * self.slot_size
    }

    fn target_slot(&self) -> u32 {
        1 - self.running.0
    }

    /// The highest offset of the pending image plus one.
    fn limit(&self) -> Result<u64, IoError> {
        match self.pending {
            Some(len) => Ok(len.unwrap_or(u64::from(self.slot_size))),
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
        self.pending = Some(len);
        Ok(())
    }

    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError> {
        match self.pending {
            Some(l) if l == len => Ok(()),
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
        self.pending = Some(Some(len));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IoError> {
        let Some(Some(len)) = self.pending else {
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
