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

/// Splits a byte stream into frames. Memory held never exceeds the cap (plus one byte for
/// the terminator): the partial-frame buffer grows geometrically but never past it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    /// The byte that ends a frame: NUL on the wire (newline for line-oriented captures).
    delimiter: u8,
    /// True while skipping the rest of an oversized frame.
    discarding: bool,
    stats: FramerStats,
}

impl FrameDecoder {
    /// A decoder that cuts frames longer than `max_frame` bytes (NUL excluded).
    pub fn new(max_frame: usize) -> Self {
        Self::with_delimiter(max_frame, 0)
    }

    /// A decoder for frames ended by `delimiter` instead of NUL (e.g. `b'\n'` for a capture
    /// with one frame per line). Everything else is as [`FrameDecoder::new`].
    pub fn with_delimiter(max_frame: usize, delimiter: u8) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
            delimiter,
            discarding: false,
            stats: FramerStats::default(),
        }
    }

    /// Feeds received bytes; calls `on_frame` for every complete frame and for every frame
    /// cut at the cap. Frames are handed out as `Bytes` that include the trailing NUL (the
    /// delimiter) so they can be forwarded unchanged; use `&frame[..frame.len() - 1]` for the
    /// JSON.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Result<Bytes, FrameError>)) {
        self.stats.bytes += data.len() as u64;
        while !data.is_empty() {
            let end = memchr::memchr(self.delimiter, data);
            let segment = &data[..end.unwrap_or(data.len())];
            if self.discarding {
                if end.is_some() {
                    self.discarding = false;
                }
            } else if self.buf.len() + segment.len() > self.max_frame {
                let len = self.buf.len() + segment.len();
                self.stats.oversized += 1;
                self.buf = BytesMut::new(); // release the memory, not just the length
                on_frame(Err(FrameError::Oversized { len }));
                self.discarding = end.is_none();
            } else if end.is_some() {
                if self.buf.is_empty() && segment.is_empty() {
                    self.stats.empty += 1;
                } else {
                    let frame = if self.buf.is_empty() {
                        let mut frame = BytesMut::with_capacity(segment.len() + 1);
                        frame.put_slice(segment);
                        frame.put_u8(self.delimiter);
                        frame
                    } else {
                        self.append(segment);
                        self.buf.put_u8(self.delimiter);
                        core::mem::take(&mut self.buf)
                    };
                    self.stats.frames += 1;
                    on_frame(Ok(frame.freeze()));
                }
            } else {
                self.append(segment);
            }
            data = match end {
                Some(i) => &data[i + 1..],
                None => &[],
            };
        }
    }

    /// Appends to the partial frame with room for its terminator, never reserving more than
    /// `max_frame + 1` bytes (`BytesMut::reserve` alone may double past the cap).
    fn append(&mut self, segment: &[u8]) {
        let needed = self.buf.len() + segment.len() + 1;
        if needed > self.buf.capacity() {
            let cap = needed
                .max(self.buf.capacity() * 2)
                .max(256)
                .min(self.max_frame + 1);
            let mut bigger = BytesMut::with_capacity(cap);
            bigger.put_slice(&self.buf);
            self.buf = bigger;
        }
        self.buf.put_slice(segment);
    }

    /// At the end of the stream: the unterminated rest of a frame, if any (without a
    /// terminator). An oversized frame still being skipped was already reported when it was
    /// cut, so it yields nothing here. The decoder is empty afterwards.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.discarding = false;
        if self.buf.is_empty() {
            return None;
        }
        Some(core::mem::take(&mut self.buf).freeze())
    }

    /// Bytes of a partial frame currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of memory reserved for the partial frame (at most the cap plus one).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The frame size cap.
    pub fn max_frame(&self) -> usize {
        self.max_frame
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

    #[test]
    fn buffer_never_reserves_past_the_cap() {
        let mut d = FrameDecoder::new(1000);
        for _ in 0..999 {
            assert!(frames(&mut d, b"x").is_empty());
            assert!(d.buffer_capacity() <= 1001, "{}", d.buffer_capacity());
        }
        assert_eq!(frames(&mut d, b"\0").len(), 1);
        assert_eq!(d.buffer_capacity(), 0);
    }

    #[test]
    fn other_delimiter_and_unterminated_tail() {
        let mut d = FrameDecoder::with_delimiter(100, b'\n');
        assert_eq!(
            frames(&mut d, b"{}\n\n{\"a\":1}\n{\"b\""),
            vec![Ok(b"{}".to_vec()), Ok(b"{\"a\":1}".to_vec())]
        );
        assert_eq!(d.finish().as_deref(), Some(&b"{\"b\""[..]));
        assert_eq!(d.finish(), None);
        // A tail that is being skipped as oversized was already reported.
        let mut d = FrameDecoder::new(2);
        assert_eq!(frames(&mut d, b"abc").len(), 1);
        assert_eq!(d.finish(), None);
    }
}
