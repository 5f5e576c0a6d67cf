//! The signed manifest's canonical binary layout: one encoding, so the bytes signed are the
//! bytes sent and stored, and decoding then re-encoding is the identity (checked on decode).
//!
//! ```text
//! offset  size  field
//!      0     4  magic "PMSM"
//!      4     1  layout version (1)
//!      5     1  flags: bit 0 = expiry present; other bits 0
//!      6   1+r  role: length (1..=64) + UTF-8 bytes          (class id)
//!          1+h  hardware: length (1..=64) + UTF-8 bytes      (class id)
//!          1+v  version text: length (0..=64) + UTF-8 bytes  (for humans only)
//!            8  sequence (u64 LE): anti-rollback counter
//!            8  image size in bytes (u64 LE)
//!           32  SHA-256 of the image
//!            1  chunk layout and compression: 0 = none, fixed chunks; 1 = deflate, spans
//!          [32] with 1: SHA-256 of the span table (one byte per chunk, `pmesh::spans`)
//!            4  chunk size in image bytes (u32 LE, 256..=32768); with 1 the longest span
//!            4  chunk count (u32 LE): 0: ceil(size / chunk size), ≤ 2^20; 1: spans, ≤ 2^16
//!           32  Merkle root (RFC 9162) over the digest pages
//!            8  key id: first 8 bytes of SHA-256 of the signing public key
//!           [8] expiry, Unix seconds (u64 LE), when flag bit 0 is set
//!           64  ed25519 signature over every byte before it
//! ```
//!
//! At most 402 bytes, whatever the image.

use alloc::string::String;
use alloc::vec::Vec;

use super::TrustError;
use super::merkle::{Hash, PAGE_CHUNKS};

/// The first four bytes of a signed manifest (and of a bundle).
pub const MAGIC: [u8; 4] = *b"PMSM";
/// The layout version this code reads and writes.
pub const LAYOUT_VERSION: u8 = 1;
/// Longest role, hardware and version text, in bytes.
pub const MAX_TEXT: usize = 64;
/// Most chunks a signed manifest may describe (the pmesh protocol's cap).
pub const MAX_CHUNKS: u32 = 1 << 20;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// The largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize =
    6 + 3 * (1 + MAX_TEXT) + 8 + 8 + 32 + 1 + 32 + 4 + 4 + 32 + 8 + 8 + 64;
/// Most chunks a compressed (span) layout may describe (`pmesh::spans::MAX_SPANS`).
pub const MAX_SPAN_CHUNKS: u32 = 1 << 16;
/// Every span but the last is at least this many image bytes (`pmesh::spans::SPAN_UNIT`).
const MIN_SPAN: u64 = 256;

/// Identifies a signing key: the first 8 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

/// Chunk layout and payload compression named by a signed manifest. Either way a chunk's
/// digest covers its *image bytes* (after inflating), so the signer fixes which image bytes
/// each chunk holds, never the DEFLATE bytes: any holder can rebuild and re-deflate a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedCompression {
    /// Chunks are `chunk_size` image bytes each and travel as they are.
    None,
    /// Chunks are cut by a span table (`pmesh::spans`: one byte per chunk, carried by the
    /// pmesh MANIFEST's `spans` and by the bundle) whose SHA-256 this is, and travel deflated
    /// (or raw where deflating does not shrink them).
    Deflate {
        /// SHA-256 of the span table's bytes.
        spans: Hash,
    },
}

impl SignedCompression {
    /// Whether chunks are deflated and cut by spans.
    pub fn is_deflate(&self) -> bool {
        matches!(self, SignedCompression::Deflate { .. })
    }
}

/// What a manifest says about an image, before the signature: the fields a signer fills in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBody {
    /// Target role (class id), compared exactly with the node's.
    pub role: String,
    /// Target hardware (class id), compared exactly with the node's.
    pub hardware: String,
    /// Version text, for humans only (ordering comes from `sequence`).
    pub version: String,
    /// Monotonic sequence number per (role, hardware): nodes refuse anything lower than
    /// what they confirmed.
    pub sequence: u64,
    /// Image bytes.
    pub size: u64,
    /// SHA-256 of the image.
    pub sha256: Hash,
    /// Chunk layout and payload compression.
    pub compression: SignedCompression,
    /// Image bytes per chunk (the last chunk may be shorter); with spans, the longest span.
    pub chunk_size: u32,
    /// Number of chunks (of spans, with [`SignedCompression::Deflate`]).
    pub chunk_count: u32,
    /// RFC 9162 Merkle root over the digest pages.
    pub pages_root: Hash,
    /// The signing key.
    pub key_id: KeyId,
    /// Refuse after this Unix time (seconds), when set.
    pub expires: Option<u64>,
}

/// A decoded signed manifest: the body, the signature and the exact bytes they came from.
/// Decoding checks the layout only; [`super::verify_signature`] and [`super::Policy`] check
/// signature and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The fields.
    pub body: ManifestBody,
    /// The ed25519 signature.
    pub signature: [u8; SIGNATURE_BYTES],
    /// The canonical encoding, signature included.
    pub bytes: Vec<u8>,
}

impl ManifestBody {
    /// Number of digest pages: ⌈chunk_count / 32⌉.
    pub fn page_count(&self) -> u32 {
        self.chunk_count.div_ceil(PAGE_CHUNKS)
    }

    /// The canonical bytes the signature covers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_MANIFEST_BYTES);
        out.extend_from_slice(&MAGIC);
        out.push(LAYOUT_VERSION);
        out.push(u8::from(self.expires.is_some()));
        for text in [&self.role, &self.hardware, &self.version] {
            let t = text.as_bytes();
            out.push(t.len().min(MAX_TEXT) as u8);
            out.extend_from_slice(&t[..t.len().min(MAX_TEXT)]);
        }
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        match self.compression {
            SignedCompression::None => out.push(0),
            SignedCompression::Deflate { spans } => {
                out.push(1);
                out.extend_from_slice(&spans);
            }
        }
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.pages_root);
        out.extend_from_slice(&self.key_id.0);
        if let Some(t) = self.expires {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    /// The layout rules a signer must meet and a decoder enforces.
    pub fn check(&self) -> Result<(), TrustError> {
        let bad = TrustError::Malformed;
        for (t, min) in [(&self.role, 1), (&self.hardware, 1), (&self.version, 0)] {
            if t.len() < min || t.len() > MAX_TEXT {
                return Err(bad("text field empty or longer than 64 bytes"));
            }
        }
        if !(256..=32768).contains(&self.chunk_size) {
            return Err(bad("chunk size outside 256..=32768"));
        }
        if self.chunk_count == 0 || self.chunk_count > MAX_CHUNKS {
            return Err(bad("chunk count outside 1..=2^20"));
        }
        let (count, chunk) = (u64::from(self.chunk_count), u64::from(self.chunk_size));
        if self.size == 0 {
            return Err(bad("empty image"));
        }
        if !self.compression.is_deflate() {
            if self.size.div_ceil(chunk) != count {
                return Err(bad("chunk count does not match size and chunk size"));
            }
            return Ok(());
        }
        // Spans: the table itself is checked against `size` where it is read; here only
        // what the manifest alone can tell (every span ≤ the longest, all but the last ≥ 256).
        if self.chunk_count > MAX_SPAN_CHUNKS {
            return Err(bad("span count above 2^16"));
        }
        if count * chunk < self.size || (count - 1) * MIN_SPAN >= self.size {
            return Err(bad("span count does not match size and longest span"));
        }
        Ok(())
    }
}

/// A cursor over manifest bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TrustError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(TrustError::Malformed("manifest truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TrustError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TrustError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TrustError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, TrustError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Result<String, TrustError> {
        let n = usize::from(self.u8()?);
        let t = core::str::from_utf8(self.take(n)?);
        Ok(
            t.map_err(|_| TrustError::Malformed("text field not UTF-8"))?
                .into(),
        )
    }
}

impl SignedManifest {
    /// Decodes a manifest at the start of `bytes`; returns it and the bytes it took. Checks
    /// the layout (magic, version, lengths, consistency), not the signature.
    pub fn decode(bytes: &[u8]) -> Result<(SignedManifest, usize), TrustError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(TrustError::Malformed("not a signed manifest (magic)"));
        }
        if r.u8()? != LAYOUT_VERSION {
            return Err(TrustError::Malformed("unknown manifest layout version"));
        }
        let flags = r.u8()?;
        if flags > 1 {
            return Err(TrustError::Malformed("unknown manifest flags"));
        }
        let body = read_body(&mut r, flags & 1 == 1)?;
        let signature = r.array()?;
        let used = r.at;
        let m = SignedManifest {
            body,
            signature,
            bytes: bytes[..used].to_vec(),
        };
        // One encoding only: what we decoded must re-encode to the same bytes.
        if m.body.encode()[..] != m.bytes[..used - SIGNATURE_BYTES] {
            return Err(TrustError::Malformed("manifest not in canonical form"));
        }
        Ok((m, used))
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - SIGNATURE_BYTES]
    }
}

fn read_body(r: &mut Reader<'_>, has_expiry: bool) -> Result<ManifestBody, TrustError> {
    let role = r.text()?;
    let hardware = r.text()?;
    let version = r.text()?;
    let sequence = r.u64()?;
    let size = r.u64()?;
    let sha256 = r.array()?;
    let compression = match r.u8()? {
        0 => SignedCompression::None,
        1 => SignedCompression::Deflate { spans: r.array()? },
        _ => return Err(TrustError::Malformed("unknown compression")),
    };
    let body = ManifestBody {
        role,
        hardware,
        version,
        sequence,
        size,
        sha256,
        compression,
        chunk_size: r.u32()?,
        chunk_count: r.u32()?,
        pages_root: r.array()?,
        key_id: KeyId(r.array()?),
        expires: if has_expiry { Some(r.u64()?) } else { None },
    };
    body.check()?;
    Ok(body)
}
