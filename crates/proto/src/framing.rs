//! NUL-delimited framing of a painlessMesh TCP stream (spec §1).
//!
//! Each frame is one JSON text followed by a single 0x00 byte. The decoder accepts any split
//! and concatenation of frames, skips empty frames, and caps the size of a frame: the bytes of
//! a frame that grows past the cap are discarded up to its terminating NUL, reported once as
//! [`FrameError::Oversized`], and the stream carries on with the next frame.

use alloc::vec::Vec;
use bytes::{BufMut, Bytes, BytesMut};

/// Default cap on a frame's size: 256 KiB holds a NODE_SYNC of about 7,000 nodes
/// (a 3,000-node one is about 110 KB) and any OTA data frame.
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024;

/// A frame that was dropped by the framer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame grew past the cap; `len` bytes had been seen when it was cut.
    Oversized {
        /// Bytes of the frame seen before it was cut.
        len: usize,
    },
}

/// Counters kept by a [`FrameDecoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramerStats {
    /// Complete non-empty frames delivered.
    pub frames: u64,
    /// Empty frames (two NULs in a row) skipped.
    pub empty: u64,
    /// Frames cut because they exceeded the cap.
    pub oversized: u64,
    /// Bytes pushed in.
    pub bytes: u64,
}

/// Splits a byte stream into frames. Memory held never exceeds the cap.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    /// True while skipping the rest of an oversized frame.
    discarding: bool,
    stats: FramerStats,
}

impl FrameDecoder {
    /// A decoder that cuts frames longer than `max_frame` bytes (NUL excluded).
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
            discarding: false,
            stats: FramerStats::default(),
        }
    }

    /// Feeds received bytes; calls `on_frame` for every complete frame (without its NUL) and
    /// for every frame cut at the cap. Frames are handed out as `Bytes` that include the
    /// trailing NUL so they can be forwarded unchanged; use `&frame[..frame.len() - 1]` for the JSON.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Result<Bytes, FrameError>)) {
        self.stats.bytes += data.len() as u64;
        while !data.is_empty() {
            let nul = memchr::memchr(0, data);
            let segment = &data[..nul.unwrap_or(data.len())];
            if self.discarding {
                if nul.is_some() {
                    self.discarding = false;
                }
            } else if self.buf.len() + segment.len() > self.max_frame {
                let len = self.buf.len() + segment.len();
                self.stats.oversized += 1;
                self.buf = BytesMut::new(); // release the memory, not just the length
                on_frame(Err(FrameError::Oversized { len }));
                self.discarding = nul.is_none();
            } else if let Some(_end) = nul {
                if self.buf.is_empty() && segment.is_empty() {
                    self.stats.empty += 1;
                } else {
                    let mut frame = if self.buf.is_empty() {
                        BytesMut::with_capacity(segment.len() + 1)
                    } else {
                        core::mem::take(&mut self.buf)
                    };
                    frame.put_slice(segment);
                    frame.put_u8(0);
                    self.stats.frames += 1;
                    on_frame(Ok(frame.freeze()));
                }
            } else {
                self.buf.put_slice(segment);
            }
            data = match nul {
                Some(end) => &data[end + 1..],
                None => &[],
            };
        }
    }

    /// Bytes of a partial frame currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> FramerStats {
        self.stats
    }
}

/// Appends the NUL terminator to a serialized JSON frame.
pub fn encode_frame(mut json: Vec<u8>) -> Bytes {
    json.push(0);
    Bytes::from(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn frames(dec: &mut FrameDecoder, data: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = vec![];
        dec.push(data, |f| out.push(f.map(|b| b[..b.len() - 1].to_vec())));
        out
    }

    #[test]
    fn split_and_concatenated() {
        let mut d = FrameDecoder::new(100);
        assert!(frames(&mut d, b"{\"a\"").is_empty());
        assert_eq!(
            frames(&mut d, b":1}\0\0{}\0{"),
            vec![Ok(b"{\"a\":1}".to_vec()), Ok(b"{}".to_vec())]
        );
        assert_eq!(d.buffered(), 1);
        assert_eq!(d.stats().empty, 1);
    }

    #[test]
    fn oversized_cut_once_and_stream_continues() {
        let mut d = FrameDecoder::new(4);
        let mut got = frames(&mut d, b"12345");
        got.extend(frames(&mut d, b"6789"));
        got.extend(frames(&mut d, b"0\0ok\0"));
        assert_eq!(
            got,
            vec![Err(FrameError::Oversized { len: 5 }), Ok(b"ok".to_vec())]
        );
        assert_eq!(d.buffered(), 0);
        // Exactly at the cap is fine.
        assert_eq!(frames(&mut d, b"abcd\0"), vec![Ok(b"abcd".to_vec())]);
    }
}
