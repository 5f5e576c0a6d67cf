//! A chunk bitmap: one bit per chunk, the whole per-image tracking state of a receiver.

use alloc::vec;
use alloc::vec::Vec;

/// Which chunks of an image are held; `len` bits, plus a running count.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChunkBitmap {
    len: u32,
    count: u32,
    words: Vec<u64>,
}

impl ChunkBitmap {
    /// `len` chunks, none held.
    pub fn new(len: u32) -> Self {
        ChunkBitmap {
            len,
            count: 0,
            words: vec![0; (len as usize).div_ceil(64)],
        }
    }

    /// `len` chunks, all held.
    pub fn full(len: u32) -> Self {
        let mut b = ChunkBitmap::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Number of chunks tracked.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when tracking no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunks held.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// Chunk `i` is held (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks chunk `i` held; returns true if it was not held before (false when out of range).
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.count += 1;
        true
    }

    /// Marks chunk `i` missing.
    pub fn unset(&mut self, i: u32) {
        if self.get(i) {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
            self.count -= 1;
        }
    }

    /// Marks every chunk missing.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }

    /// The first missing chunk at or after `from`.
    pub fn next_missing(&self, from: u32) -> Option<u32> {
        let mut i = from;
        while i < self.len {
            let w = self.words[(i / 64) as usize] | ((1u64 << (i % 64)) - 1);
            if w != u64::MAX {
                let bit = (!w).trailing_zeros();
                let idx = (i / 64) * 64 + bit;
                return (idx < self.len).then_some(idx);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// The first held chunk at or after `from`.
    pub fn next_held(&self, from: u32) -> Option<u32> {
        let mut i = from;
        while i < self.len {
            let w = self.words[(i / 64) as usize] & !((1u64 << (i % 64)) - 1);
            if w != 0 {
                let idx = (i / 64) * 64 + w.trailing_zeros();
                return (idx < self.len).then_some(idx);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// The first chunk at or after `from` held in both `self` and `other` (same length).
    pub fn first_common(&self, other: &ChunkBitmap, from: u32) -> Option<u32> {
        let n = self.words.len().min(other.words.len());
        let mut w = (from / 64) as usize;
        let mut mask = !((1u64 << (from % 64)) - 1);
        while w < n {
            let both = self.words[w] & other.words[w] & mask;
            if both != 0 {
                let idx = w as u32 * 64 + both.trailing_zeros();
                return (idx < self.len.min(other.len)).then_some(idx);
            }
            w += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Flips every bit: held becomes missing and back.
    pub fn invert(&mut self) {
        for w in &mut self.words {
            *w = !*w;
        }
        if !self.len.is_multiple_of(64)
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << (self.len % 64)) - 1;
        }
        self.count = self.len - self.count;
    }

    /// Holds every chunk held in `self` or `other`.
    pub fn union_with(&mut self, other: &ChunkBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.count = self.words.iter().map(|w| w.count_ones()).sum();
    }

    /// Bit `i` of byte `i / 8`, least significant first: the persisted and wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = (self.len as usize).div_ceil(8);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push((self.words[i / 8] >> ((i % 8) * 8)) as u8);
        }
        out
    }

    /// The inverse of [`ChunkBitmap::to_bytes`]; `None` if `bytes` has the wrong length or
    /// sets bits past `len`.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut b = ChunkBitmap::new(len);
        for (i, &byte) in bytes.iter().enumerate() {
            b.words[i / 8] |= u64::from(byte) << ((i % 8) * 8);
        }
        if !len.is_multiple_of(64)
            && let Some(last) = b.words.last()
            && last >> (len % 64) != 0
        {
            return None;
        }
        b.recount();
        Some(b)
    }

    /// Heap bytes used (for tracking-state reports).
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_scans() {
        let mut b = ChunkBitmap::new(130);
        assert_eq!(b.next_missing(0), Some(0));
        assert_eq!(b.next_held(0), None);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(64));
        assert!(b.set(129));
        assert!(!b.set(130));
        assert_eq!(b.count(), 3);
        assert_eq!(b.next_missing(0), Some(1));
        assert_eq!(b.next_held(1), Some(64));
        assert_eq!(b.next_held(65), Some(129));
        let full = ChunkBitmap::full(130);
        assert!(full.is_complete());
        assert_eq!(full.next_missing(0), None);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 17);
        assert_eq!(ChunkBitmap::from_bytes(130, &bytes), Some(b.clone()));
        assert_eq!(ChunkBitmap::from_bytes(129, &bytes), None);
        assert_eq!(ChunkBitmap::from_bytes(130, &[0xff; 17]), None);
        b.unset(64);
        assert_eq!(b.count(), 2);
        assert_eq!(b.next_missing(63), Some(63));
        let mut other = ChunkBitmap::new(130);
        other.set(129);
        other.set(5);
        assert_eq!(b.first_common(&other, 0), Some(129));
        assert_eq!(b.first_common(&other, 130), None);
        let mut inv = other.clone();
        inv.invert();
        assert_eq!(inv.count(), 128);
        assert!(!inv.get(5) && inv.get(6) && !inv.get(129));
        inv.union_with(&other);
        assert!(inv.is_complete());
    }
}
