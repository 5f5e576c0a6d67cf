//! How a compressed pmesh image is cut into chunks: variable spans of image bytes, chosen
//! so that every chunk deflates to about the same number of bytes.
//!
//! Why: chunks move store-and-forward, so each hop of a deep tree costs the transmission
//! of the *largest* frame, not the mean one. Fixed 4 KiB chunks of a firmware image deflate
//! to anything between ~0.4 and 4.1 KiB, which on a 50-hop chain costs ~14 % over the
//! pipelined bound before the protocol does anything wrong. Equal frames remove that, and
//! letting well-compressing stretches (padding, tables) fill long spans also compresses
//! better than cutting them every 4 KiB.
//!
//! The table travels in the manifest (`spans`, base85): one byte per chunk, the span in
//! units of [`SPAN_UNIT`] bytes minus one; the last chunk holds what remains of the image.
//! Each chunk still deflates on its own, so chunks decompress out of order, after a
//! reboot, and any holder can rebuild any chunk from its flash.

use alloc::vec;
use alloc::vec::Vec;

use crate::codec;
use crate::io::{FirmwareSource, IoError};
use crate::offer::MAX_PMESH_CHUNK;

/// Spans are multiples of this many image bytes (all but the last chunk).
pub const SPAN_UNIT: u32 = 256;
/// Longest span the planner makes: a receiver inflates a whole chunk into RAM before its CRC
/// lets it reach flash, so this bounds that buffer (manifests from elsewhere may list spans
/// up to [`MAX_PMESH_CHUNK`]). Long spans only pay where data compresses extremely well
/// (padding), whose frames are tiny either way.
pub const MAX_PLANNED_SPAN: u32 = 16 * 1024;
/// Most chunks a span table may list (the manifest carries 1.25 bytes per chunk).
pub const MAX_SPANS: usize = 1 << 16;
/// An offset is kept for every this many chunks, so finding a chunk's offset sums at most
/// this many entries (RAM: 8 bytes per this many chunks).
const MARK_EVERY: usize = 64;
/// Compressions tried per chunk when planning (each guess is refined from the last one's
/// ratio; firmware needs 1–3).
const PLAN_TRIES: usize = 6;

/// A checked span table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spans {
    /// Per chunk: span in [`SPAN_UNIT`]s, minus one.
    units: Vec<u8>,
    /// Image offset of chunk `j · MARK_EVERY`.
    marks: Vec<u64>,
    /// Image bytes in all.
    size: u64,
    /// The largest span.
    max_len: u32,
}

/// Why a span table is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanError {
    /// No chunk, or more than [`MAX_SPANS`].
    Count,
    /// A span is larger than a pmesh chunk may be.
    TooLong,
    /// The spans do not add up to the image size.
    Size,
}

impl SpanError {
    /// A short description (for [`crate::Refusal::BadOffer`]).
    pub fn reason(self) -> &'static str {
        match self {
            SpanError::Count => "span table empty or too long",
            SpanError::TooLong => "span larger than the largest chunk",
            SpanError::Size => "spans do not add up to the image size",
        }
    }
}

fn unit_len(u: u8) -> u64 {
    (u64::from(u) + 1) * u64::from(SPAN_UNIT)
}

impl Spans {
    /// Checks a table for an image of `size` bytes: every span at most
    /// [`MAX_PMESH_CHUNK`], all but the last one whole, the last one ending the image.
    pub fn from_units(units: Vec<u8>, size: u64) -> Result<Spans, SpanError> {
        if units.is_empty() || units.len() > MAX_SPANS {
            return Err(SpanError::Count);
        }
        let mut marks = Vec::with_capacity(units.len().div_ceil(MARK_EVERY));
        let mut at = 0u64;
        let mut max_len = 0u64;
        let last = units.len() - 1;
        for (i, &u) in units.iter().enumerate() {
            if i % MARK_EVERY == 0 {
                marks.push(at);
            }
            let full = unit_len(u);
            if full > u64::from(MAX_PMESH_CHUNK) {
                return Err(SpanError::TooLong);
            }
            if i == last {
                // The last span is the rest of the image, within its stated unit count.
                let rest = size.checked_sub(at).ok_or(SpanError::Size)?;
                if rest == 0 || rest > full || rest + u64::from(SPAN_UNIT) <= full {
                    return Err(SpanError::Size);
                }
                max_len = max_len.max(rest);
            } else {
                at += full;
                max_len = max_len.max(full);
            }
        }
        Ok(Spans {
            units,
            marks,
            size,
            max_len: max_len as u32,
        })
    }

    /// Chunks.
    pub fn count(&self) -> u32 {
        self.units.len() as u32
    }

    /// The largest span, image bytes.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// The table as the manifest carries it.
    pub fn units(&self) -> &[u8] {
        &self.units
    }

    /// Image offset and length of chunk `i` (`i` < [`Spans::count`]).
    pub fn range(&self, i: u32) -> (u64, usize) {
        let i = i as usize;
        let j = i / MARK_EVERY;
        let start = self.marks[j]
            + self.units[j * MARK_EVERY..i]
                .iter()
                .map(|&u| unit_len(u))
                .sum::<u64>();
        let len = if i + 1 == self.units.len() {
            self.size - start
        } else {
            unit_len(self.units[i])
        };
        (start, len as usize)
    }

    /// Heap bytes held (counted in a node's tracking state).
    pub fn heap_bytes(&self) -> usize {
        self.units.capacity() + self.marks.capacity() * core::mem::size_of::<u64>()
    }

    /// Cuts `size` bytes of `source` into spans whose chunk payload (the DEFLATE block, or
    /// the bytes themselves when that is not smaller, as [`crate::pmesh::wire`] sends them)
    /// is at most `target` bytes (at least [`SPAN_UNIT`]), each as long as possible up to
    /// [`MAX_PLANNED_SPAN`]. Greedy, front to back; each span's first guess comes from the
    /// previous span's ratio.
    pub fn plan(
        source: &mut dyn FirmwareSource,
        size: u64,
        target: u32,
    ) -> Result<Spans, PlanError> {
        let unit = u64::from(SPAN_UNIT);
        let target = u64::from(target.max(SPAN_UNIT));
        let max_units = u64::from(MAX_PLANNED_SPAN / SPAN_UNIT);
        let mut buf = vec![0u8; MAX_PLANNED_SPAN as usize];
        let mut units = Vec::new();
        let mut at = 0u64;
        let mut guess = target / unit;
        while at < size {
            if units.len() == MAX_SPANS {
                return Err(PlanError::TooManyChunks);
            }
            let hi = max_units.min((size - at).div_ceil(unit));
            let have = ((size - at).min(hi * unit)) as usize;
            read_exact(source, at, &mut buf[..have])?;
            // Largest unit count known to fit, smallest known not to.
            let (mut fits, mut fails) = (0u64, hi + 1);
            let mut u = guess.clamp(1, hi);
            for _ in 0..PLAN_TRIES {
                let len = ((u * unit) as usize).min(have);
                let payload = payload_len(&buf[..len]);
                let next = if payload <= target {
                    fits = u;
                    (u * target * 97 / 100 / payload.max(1)).max(u + 1)
                } else {
                    fails = u;
                    (u * target * 97 / 100 / payload).min(u - 1)
                };
                let next = next.clamp(fits + 1, fails.saturating_sub(1).max(fits + 1));
                if fits + 1 >= fails || next == u || next > hi {
                    break;
                }
                u = next;
            }
            // One unit always fits: 256 bytes stored raw are never above the target.
            let chosen = fits.max(1);
            let len = (chosen * unit).min(size - at);
            units.push((len.div_ceil(unit) - 1) as u8);
            at += len;
            guess = chosen;
        }
        Spans::from_units(units, size).map_err(|_| PlanError::TooManyChunks)
    }
}

/// Why an image could not be cut into spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Reading the image failed.
    Io(IoError),
    /// The image ended before its announced length.
    ShortImage,
    /// More than [`MAX_SPANS`] chunks would be needed.
    TooManyChunks,
}

/// Fills `buf` from `at` (a source fills the whole buffer unless the image ends first).
fn read_exact(source: &mut dyn FirmwareSource, at: u64, buf: &mut [u8]) -> Result<(), PlanError> {
    let n = source.read_at(at, buf).map_err(PlanError::Io)?;
    if n != buf.len() {
        return Err(PlanError::ShortImage);
    }
    Ok(())
}

/// Bytes the chunk payload of `data` takes before base85: what `encode_chunk` sends.
fn payload_len(data: &[u8]) -> u64 {
    (codec::deflate_chunk(data).len().min(data.len())) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemorySource;

    fn firmware_like(len: usize) -> Vec<u8> {
        // Stretches that compress well (zeros, repeated text) between incompressible ones.
        let mut v = Vec::with_capacity(len);
        let mut x = 0x1234_5678u32;
        while v.len() < len {
            let kind = (v.len() / 5000) % 3;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(match kind {
                0 => (x >> 24) as u8,
                1 => 0,
                _ => b"mesh node "[v.len() % 10],
            });
        }
        v
    }

    fn check_plan(image: &[u8], target: u32) -> Spans {
        let mut src = MemorySource::new(image.to_vec());
        let s = Spans::plan(&mut src, image.len() as u64, target).unwrap();
        let mut next = 0u64;
        for i in 0..s.count() {
            let (off, len) = s.range(i);
            assert_eq!(off, next, "chunk {i} starts where the last ended");
            assert!(len > 0 && len as u32 <= s.max_len());
            let payload = payload_len(&image[off as usize..off as usize + len]);
            assert!(
                payload <= u64::from(target.max(SPAN_UNIT)),
                "chunk {i}: {payload} B"
            );
            next = off + len as u64;
        }
        assert_eq!(next, image.len() as u64, "spans cover the image exactly");
        s
    }

    #[test]
    fn plans_cover_the_image_within_the_target() {
        let img = firmware_like(300_000);
        let s = check_plan(&img, 2048);
        // Zero and text stretches fill long spans: far fewer chunks than 2 KiB each.
        assert!(s.count() < 300_000 / 2048, "{} chunks", s.count());
        check_plan(&img[..1000], 256);
        check_plan(&img[..1], 2048);
        let zeros = check_plan(&vec![0u8; 100_000], 2048);
        assert_eq!(
            zeros.max_len(),
            MAX_PLANNED_SPAN,
            "long spans where data compresses"
        );
        assert_eq!(zeros.count(), 100_000u32.div_ceil(MAX_PLANNED_SPAN));
    }

    #[test]
    fn incompressible_data_gets_target_sized_spans() {
        let mut x = 7u32;
        let img: Vec<u8> = (0..50_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let s = check_plan(&img, 2048);
        for i in 0..s.count() - 1 {
            assert_eq!(s.range(i).1, 2048, "raw chunks fill the target exactly");
        }
    }

    #[test]
    fn ranges_use_the_marks() {
        let mut units: Vec<u8> = (0..200).map(|i| (i % 7) as u8).collect();
        units[199] = 0;
        let total: u64 = units[..199].iter().map(|&u| unit_len(u)).sum::<u64>() + 10;
        let s = Spans::from_units(units, total).unwrap();
        let mut at = 0;
        for i in 0..200u32 {
            let (off, len) = s.range(i);
            assert_eq!(off, at);
            at += len as u64;
        }
        assert_eq!(at, total);
        assert_eq!(s.range(199).1, 10);
    }

    #[test]
    fn a_source_shorter_than_it_claims_is_an_error() {
        struct Short(MemorySource);
        impl FirmwareSource for Short {
            fn len(&self) -> u64 {
                self.0.len() + 100
            }
            fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
                self.0.read_at(offset, buf)
            }
        }
        let mut src = Short(MemorySource::new(firmware_like(10_000)));
        let len = src.len();
        assert_eq!(Spans::plan(&mut src, len, 2048), Err(PlanError::ShortImage));
    }

    #[test]
    fn bad_tables_are_refused() {
        assert_eq!(Spans::from_units(vec![], 10), Err(SpanError::Count));
        assert_eq!(
            Spans::from_units(vec![0; MAX_SPANS + 1], 1 << 30),
            Err(SpanError::Count)
        );
        assert_eq!(Spans::from_units(vec![200], 100), Err(SpanError::TooLong));
        // Two chunks of 256: the image must end inside the second.
        assert!(Spans::from_units(vec![0, 0], 300).is_ok());
        assert_eq!(Spans::from_units(vec![0, 0], 256), Err(SpanError::Size));
        assert_eq!(Spans::from_units(vec![0, 0], 513), Err(SpanError::Size));
        // The last unit count must be the smallest that holds the rest.
        assert_eq!(Spans::from_units(vec![0, 1], 300), Err(SpanError::Size));
        assert_eq!(Spans::from_units(vec![3], 0), Err(SpanError::Size));
    }
}
