//! Compression and hashing of images.
//!
//! - Classic `compressed`: the served bytes are one gzip member (RFC 1952) of the image.
//!   [`gzip`] produces it; [`GzipDecoder`] inflates it as a stream with bounded memory
//!   (miniz_oxide's 32 KiB window plus a small output buffer), checking the gzip trailer.
//! - pmesh `deflate`: every chunk is a raw DEFLATE block of one chunk of the image, so chunks
//!   decompress independently, out of order, after a reboot, and any holder can re-serve one.
//!
//! miniz_oxide is used because flate2 needs std and these crates are `no_std`; the gzip
//! header and trailer (a few dozen lines) are written here because miniz_oxide only speaks raw
//! DEFLATE and zlib.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use md5::{Digest as _, Md5};
use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
use sha2::Sha256;

/// Compression level used for images (miniz's best).
pub const LEVEL: u8 = 9;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Lowercase hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Incremental MD5 (boxed `md-5` state).
#[derive(Clone, Debug, Default)]
pub struct Md5Hasher(Md5);

impl Md5Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Lowercase hex digest.
    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Incremental SHA-256.
#[derive(Clone, Debug, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Lowercase hex digest.
    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize())
    }
}

/// CRC-32 (IEEE), as in gzip and pmesh chunk frames.
pub fn crc32(data: &[u8]) -> u32 {
    let mut h = Crc32::new();
    h.update(data);
    h.finalize()
}

/// crc32fast's hasher (a 16 KiB slicing table), or with the `compact` feature our own
/// byte-at-a-time CRC over a 1 KiB table: 15 KiB less flash on a microcontroller, several
/// times slower (still far faster than the link that brings the bytes).
#[cfg(not(feature = "compact"))]
type Crc32 = crc32fast::Hasher;

#[cfg(feature = "compact")]
use compact_crc::Crc32;

#[cfg(feature = "compact")]
mod compact_crc {
    /// The reflected IEEE polynomial's byte table, built at compile time.
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    /// A running CRC-32 (IEEE), the same interface as `crc32fast::Hasher`.
    #[derive(Clone, Debug)]
    pub(crate) struct Crc32(u32);

    impl Crc32 {
        pub(crate) fn new() -> Self {
            Crc32(!0)
        }

        pub(crate) fn update(&mut self, data: &[u8]) {
            for &b in data {
                self.0 = TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
            }
        }

        pub(crate) fn finalize(self) -> u32 {
            !self.0
        }
    }
}

/// One gzip member of `data` (no file name, mtime 0, OS "unknown"), deterministic.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let body = miniz_oxide::deflate::compress_to_vec(data, LEVEL);
    let mut out = Vec::with_capacity(body.len() + 18);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Raw DEFLATE of one chunk.
pub fn deflate_chunk(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(data, LEVEL)
}

/// Inflates one raw DEFLATE chunk that must produce exactly `len` bytes.
pub fn inflate_chunk(data: &[u8], len: usize) -> Result<Vec<u8>, CodecError> {
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(data, len)
        .map_err(|_| CodecError::Corrupt)?;
    if out.len() != len {
        return Err(CodecError::WrongLength {
            expected: len as u64,
            got: out.len() as u64,
        });
    }
    Ok(out)
}

/// Why compressed data was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Not a gzip member (bad magic or method), or flags we do not support.
    BadHeader(&'static str),
    /// The DEFLATE data is invalid.
    Corrupt,
    /// The output would exceed the limit (the sink's capacity or the declared size).
    TooLarge(u64),
    /// The output has another length than declared.
    WrongLength {
        /// Declared.
        expected: u64,
        /// Produced.
        got: u64,
    },
    /// The gzip trailer's CRC-32 does not match the inflated bytes.
    CrcMismatch,
    /// Bytes after the end of the gzip member.
    TrailingData,
    /// The stream ended before the gzip member did.
    Truncated,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadHeader(why) => write!(f, "not a supported gzip stream: {why}"),
            CodecError::Corrupt => f.write_str("corrupt DEFLATE data"),
            CodecError::TooLarge(limit) => write!(f, "inflated image exceeds {limit} bytes"),
            CodecError::WrongLength { expected, got } => {
                write!(f, "inflated to {got} bytes, expected {expected}")
            }
            CodecError::CrcMismatch => f.write_str("gzip CRC-32 mismatch"),
            CodecError::TrailingData => f.write_str("data after the end of the gzip stream"),
            CodecError::Truncated => f.write_str("gzip stream ends early"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GzPhase {
    /// Reading the 10 fixed header bytes (count read so far).
    Fixed(u8),
    /// Reading the 2-byte FEXTRA length.
    ExtraLen(u8),
    /// Skipping FEXTRA bytes.
    Extra(u16),
    /// Skipping a NUL-terminated FNAME.
    Name,
    /// Skipping a NUL-terminated FCOMMENT.
    Comment,
    /// Skipping the 2-byte FHCRC.
    HeaderCrc(u8),
    /// Inflating.
    Body,
    /// Reading the 8-byte trailer.
    Trailer(u8),
    /// Member complete.
    Done,
}

/// Streaming gzip decoder: feed served bytes in order, get image bytes in order.
///
/// Memory: the inflater's state (about 43 KB, mostly the 32 KiB DEFLATE window) plus a 4 KiB
/// output buffer, whatever the image size.
pub struct GzipDecoder {
    state: Box<InflateState>,
    phase: GzPhase,
    flags: u8,
    extra_len: [u8; 2],
    trailer: [u8; 8],
    out: Vec<u8>,
    crc: Crc32,
    produced: u64,
    limit: u64,
}

impl fmt::Debug for GzipDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipDecoder")
            .field("phase", &self.phase)
            .field("produced", &self.produced)
            .finish()
    }
}

impl GzipDecoder {
    /// A decoder whose output may not exceed `limit` bytes.
    pub fn new(limit: u64) -> Self {
        GzipDecoder {
            state: InflateState::new_boxed(DataFormat::Raw),
            phase: GzPhase::Fixed(0),
            flags: 0,
            extra_len: [0; 2],
            trailer: [0; 8],
            out: vec![0; 4096],
            crc: Crc32::new(),
            produced: 0,
            limit,
        }
    }

    /// Image bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The member ended and its trailer checked out.
    pub fn is_done(&self) -> bool {
        self.phase == GzPhase::Done
    }

    /// Feeds served bytes; `emit` receives image bytes in order (with their image offset).
    pub fn push<E>(
        &mut self,
        mut input: &[u8],
        mut emit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), GzipPushError<E>> {
        while !input.is_empty() {
            match self.phase {
                GzPhase::Fixed(n) => {
                    let b = input[0];
                    input = &input[1..];
                    match n {
                        0 if b != 0x1f => return Err(CodecError::BadHeader("bad magic").into()),
                        1 if b != 0x8b => return Err(CodecError::BadHeader("bad magic").into()),
                        2 if b != 8 => {
                            return Err(CodecError::BadHeader("method is not DEFLATE").into());
                        }
                        3 => {
                            if b & 0xe0 != 0 {
                                return Err(CodecError::BadHeader("reserved flags set").into());
                            }
                            self.flags = b;
                        }
                        _ => {}
                    }
                    self.phase = if n == 9 {
                        self.after_fixed()
                    } else {
                        GzPhase::Fixed(n + 1)
                    };
                }
                GzPhase::ExtraLen(n) => {
                    self.extra_len[usize::from(n)] = input[0];
                    input = &input[1..];
                    self.phase = if n == 1 {
                        match u16::from_le_bytes(self.extra_len) {
                            0 => self.after_extra(),
                            len => GzPhase::Extra(len),
                        }
                    } else {
                        GzPhase::ExtraLen(1)
                    };
                }
                GzPhase::Extra(left) => {
                    let take = input.len().min(usize::from(left));
                    input = &input[take..];
                    let left = left - take as u16;
                    self.phase = if left == 0 {
                        self.after_extra()
                    } else {
                        GzPhase::Extra(left)
                    };
                }
                GzPhase::Name | GzPhase::Comment => {
                    let name = self.phase == GzPhase::Name;
                    match input.iter().position(|&b| b == 0) {
                        Some(p) => {
                            input = &input[p + 1..];
                            self.phase = if name {
                                self.after_name()
                            } else {
                                self.after_comment()
                            };
                        }
                        None => input = &[],
                    }
                }
                GzPhase::HeaderCrc(n) => {
                    input = &input[1..];
                    self.phase = if n == 1 {
                        GzPhase::Body
                    } else {
                        GzPhase::HeaderCrc(1)
                    };
                }
                GzPhase::Body => {
                    let r = inflate(&mut self.state, input, &mut self.out, MZFlush::None);
                    input = &input[r.bytes_consumed..];
                    if r.bytes_written > 0 {
                        let chunk = &self.out[..r.bytes_written];
                        if self.produced + chunk.len() as u64 > self.limit {
                            return Err(CodecError::TooLarge(self.limit).into());
                        }
                        self.crc.update(chunk);
                        emit(self.produced, chunk).map_err(GzipPushError::Sink)?;
                        self.produced += chunk.len() as u64;
                    }
                    match r.status {
                        Ok(MZStatus::StreamEnd) => self.phase = GzPhase::Trailer(0),
                        Ok(_) => {}
                        Err(MZError::Buf) => {
                            if r.bytes_consumed == 0 && r.bytes_written == 0 {
                                break; // needs more input
                            }
                        }
                        Err(_) => return Err(CodecError::Corrupt.into()),
                    }
                }
                GzPhase::Trailer(n) => {
                    self.trailer[usize::from(n)] = input[0];
                    input = &input[1..];
                    if n == 7 {
                        let crc = u32::from_le_bytes([
                            self.trailer[0],
                            self.trailer[1],
                            self.trailer[2],
                            self.trailer[3],
                        ]);
                        let isize = u32::from_le_bytes([
                            self.trailer[4],
                            self.trailer[5],
                            self.trailer[6],
                            self.trailer[7],
                        ]);
                        if crc != self.crc.clone().finalize() {
                            return Err(CodecError::CrcMismatch.into());
                        }
                        if isize != self.produced as u32 {
                            return Err(CodecError::WrongLength {
                                expected: u64::from(isize),
                                got: self.produced,
                            }
                            .into());
                        }
                        self.phase = GzPhase::Done;
                    } else {
                        self.phase = GzPhase::Trailer(n + 1);
                    }
                }
                GzPhase::Done => return Err(CodecError::TrailingData.into()),
            }
        }
        Ok(())
    }

    /// Checks that the member is complete (call after the last served byte).
    pub fn finish(&self) -> Result<u64, CodecError> {
        if self.phase == GzPhase::Done {
            Ok(self.produced)
        } else {
            Err(CodecError::Truncated)
        }
    }

    fn after_fixed(&self) -> GzPhase {
        if self.flags & 4 != 0 {
            GzPhase::ExtraLen(0)
        } else {
            self.after_extra()
        }
    }
    fn after_extra(&self) -> GzPhase {
        if self.flags & 8 != 0 {
            GzPhase::Name
        } else {
            self.after_name()
        }
    }
    fn after_name(&self) -> GzPhase {
        if self.flags & 16 != 0 {
            GzPhase::Comment
        } else {
            self.after_comment()
        }
    }
    fn after_comment(&self) -> GzPhase {
        if self.flags & 2 != 0 {
            GzPhase::HeaderCrc(0)
        } else {
            GzPhase::Body
        }
    }
}

/// A [`GzipDecoder::push`] failure: the stream or the consumer.
#[derive(Debug)]
pub enum GzipPushError<E> {
    /// The gzip stream is bad.
    Codec(CodecError),
    /// The consumer (`emit`) failed.
    Sink(E),
}

impl<E> From<CodecError> for GzipPushError<E> {
    fn from(e: CodecError) -> Self {
        GzipPushError::Codec(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_and_crc32fast() {
        // The CRC-32/ISO-HDLC check value.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let data = sample(10_000);
        assert_eq!(crc32(&data), crc32fast::hash(&data));
        let mut h = Crc32::new();
        h.update(&data[..3333]);
        h.update(&data[3333..]);
        assert_eq!(h.finalize(), crc32fast::hash(&data), "in pieces");
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut x: u32 = 7;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b"firmware"[i % 8]
                }
            })
            .collect()
    }

    fn inflate_all(gz: &[u8], step: usize, limit: u64) -> Result<Vec<u8>, CodecError> {
        let mut d = GzipDecoder::new(limit);
        let mut out = Vec::new();
        for piece in gz.chunks(step) {
            d.push(piece, |off, b| {
                assert_eq!(off as usize, out.len());
                out.extend_from_slice(b);
                Ok::<_, ()>(())
            })
            .map_err(|e| match e {
                GzipPushError::Codec(c) => c,
                GzipPushError::Sink(()) => unreachable!(),
            })?;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn gzip_roundtrips_in_any_split() {
        let data = sample(100_000);
        let gz = gzip(&data);
        assert!(gz.len() < data.len());
        for step in [1, 7, 1024, 1 << 20] {
            assert_eq!(
                inflate_all(&gz, step, 1 << 20).unwrap(),
                data,
                "step {step}"
            );
        }
    }

    #[test]
    fn gzip_rejects_damage() {
        let data = sample(10_000);
        let gz = gzip(&data);
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        assert_eq!(
            inflate_all(&bad_crc, 512, 1 << 20),
            Err(CodecError::CrcMismatch)
        );
        assert_eq!(
            inflate_all(&gz[..gz.len() - 3], 512, 1 << 20),
            Err(CodecError::Truncated)
        );
        assert_eq!(inflate_all(&gz, 512, 1000), Err(CodecError::TooLarge(1000)));
        let mut trailing = gz.clone();
        trailing.push(0);
        assert_eq!(
            inflate_all(&trailing, 512, 1 << 20),
            Err(CodecError::TrailingData)
        );
        assert!(matches!(
            inflate_all(b"PK\x03\x04", 512, 100),
            Err(CodecError::BadHeader(_))
        ));
    }

    #[test]
    fn gzip_header_with_optional_fields() {
        let data = sample(5000);
        let plain = gzip(&data);
        // FEXTRA + FNAME + FCOMMENT + FHCRC.
        let mut gz = vec![
            0x1f,
            0x8b,
            8,
            4 | 8 | 16 | 2,
            0,
            0,
            0,
            0,
            0,
            3,
            3,
            0,
            b'a',
            b'b',
            b'c',
        ];
        gz.extend_from_slice(b"fw.bin\0comment\0\x12\x34");
        gz.extend_from_slice(&plain[10..]);
        assert_eq!(inflate_all(&gz, 3, 1 << 20).unwrap(), data);
    }

    #[test]
    fn chunk_deflate_roundtrip_and_hashes() {
        let data = sample(4096);
        let z = deflate_chunk(&data);
        assert_eq!(inflate_chunk(&z, 4096).unwrap(), data);
        assert!(inflate_chunk(&z, 4095).is_err());
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
