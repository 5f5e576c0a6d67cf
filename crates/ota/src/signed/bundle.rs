//! The bundle file `pmesh ota sign` writes and gateways serve from: one signed manifest, then
//! (compressed layout only) the span table, then the digest of every chunk (32 B each, in
//! chunk order: the digest pages back to back), then the image. Nothing else, no padding; the
//! manifest says how long the rest is.
//!
//! ```text
//! | signed manifest (≤ 402 B) | [chunk_count B span table] | chunk_count × 32 B digests | image (size B) |
//! ```

use alloc::vec::Vec;
use sha2::{Digest, Sha256};

use super::manifest::{ManifestBody, SignedCompression, SignedManifest};
use super::merkle::{self, Hash, PAGE_CHUNKS};
use super::{
    KeyId, SigningKey, TrustError, TrustedKey, check_expiry, chunk_digest, verify_signature,
};
use crate::io::MemorySource;
use crate::pmesh::spans::{PlanError, Spans};

/// A bundle laid over its bytes (see the module docs).
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    /// The manifest (layout checked, signature not yet).
    pub manifest: SignedManifest,
    /// The span table (compressed layout), checked against the image size and the manifest.
    spans: Option<Spans>,
    digests: &'a [u8],
    image: &'a [u8],
}

/// What `pmesh ota sign` needs besides the image and the key.
#[derive(Clone, Debug)]
pub struct BundleSpec<'a> {
    /// Target role.
    pub role: &'a str,
    /// Target hardware.
    pub hardware: &'a str,
    /// Version text.
    pub version: &'a str,
    /// Anti-rollback sequence.
    pub sequence: u64,
    /// Uncompressed: image bytes per chunk. Compressed: the most DEFLATE bytes a chunk may
    /// take (each chunk spans as many image bytes as fit, see `pmesh::spans`).
    pub chunk_size: u32,
    /// Chunks travel deflated, cut into spans the signer plans (the pmesh protocol's
    /// compressed mode); the digests still cover image bytes.
    pub compressed: bool,
    /// Optional expiry (Unix seconds).
    pub expires: Option<u64>,
}

/// The digest of every `chunk_size` chunk of `image`, concatenated.
pub fn digests_of(image: &[u8], chunk_size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.len().div_ceil(chunk_size.max(1) as usize) * 32);
    for c in image.chunks(chunk_size.max(1) as usize) {
        out.extend_from_slice(&chunk_digest(c));
    }
    out
}

/// The digest of every span of `image`, concatenated.
pub fn span_digests(image: &[u8], spans: &Spans) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.count() as usize * 32);
    for i in 0..spans.count() {
        let (at, len) = spans.range(i);
        out.extend_from_slice(&chunk_digest(&image[at as usize..at as usize + len]));
    }
    out
}

/// The SHA-256 a compressed manifest signs for a span table.
pub fn spans_hash(spans: &Spans) -> Hash {
    Sha256::digest(spans.units()).into()
}

/// The leaf hash of every digest page of `digests`.
pub fn page_leaves(digests: &[u8]) -> Vec<Hash> {
    digests
        .chunks(PAGE_CHUNKS as usize * 32)
        .map(merkle::leaf_hash)
        .collect()
}

impl<'a> Bundle<'a> {
    /// Signs `image` into bundle bytes.
    pub fn build(
        key: &SigningKey,
        image: &[u8],
        spec: &BundleSpec<'_>,
    ) -> Result<Vec<u8>, TrustError> {
        if image.is_empty() {
            return Err(TrustError::Malformed("empty image"));
        }
        let spans = if spec.compressed {
            let mut source = MemorySource::new(image.to_vec());
            let planned = Spans::plan(&mut source, image.len() as u64, spec.chunk_size);
            Some(planned.map_err(|e| match e {
                PlanError::TooManyChunks => TrustError::Malformed("more than 2^16 spans"),
                _ => TrustError::Malformed("image could not be cut into spans"),
            })?)
        } else {
            None
        };
        let (digests, compression, chunk_size) = match &spans {
            Some(s) => (
                span_digests(image, s),
                SignedCompression::Deflate {
                    spans: spans_hash(s),
                },
                s.max_len(),
            ),
            None => (
                digests_of(image, spec.chunk_size),
                SignedCompression::None,
                spec.chunk_size,
            ),
        };
        let body = ManifestBody {
            role: spec.role.into(),
            hardware: spec.hardware.into(),
            version: spec.version.into(),
            sequence: spec.sequence,
            size: image.len() as u64,
            sha256: Sha256::digest(image).into(),
            compression,
            chunk_size,
            chunk_count: (digests.len() / 32) as u32,
            pages_root: merkle::root(&page_leaves(&digests)),
            key_id: KeyId([0; 8]),
            expires: spec.expires,
        };
        let manifest = key.sign(body)?;
        let mut out = manifest.bytes;
        if let Some(s) = &spans {
            out.extend_from_slice(s.units());
        }
        out.extend_from_slice(&digests);
        out.extend_from_slice(image);
        Ok(out)
    }

    /// Lays a bundle over `bytes`: manifest layout, exact total length and, for a compressed
    /// layout, the span table against the image size and the manifest's hash of it. The
    /// signature and digests are not checked yet: call [`Bundle::verify`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TrustError> {
        let (manifest, used) = SignedManifest::decode(bytes)?;
        let body = &manifest.body;
        let table_len = if body.compression.is_deflate() {
            body.chunk_count as usize
        } else {
            0
        };
        let digest_len = body.chunk_count as usize * 32;
        let rest = &bytes[used..];
        let size = usize::try_from(body.size).unwrap_or(usize::MAX);
        if rest.len().checked_sub(table_len + digest_len) != Some(size) {
            return Err(TrustError::Malformed(
                "bundle length does not match the manifest",
            ));
        }
        let (table, rest) = rest.split_at(table_len);
        let spans = match body.compression {
            SignedCompression::None => None,
            SignedCompression::Deflate { spans: hash } => Some(parse_spans(body, table, hash)?),
        };
        let (digests, image) = rest.split_at(digest_len);
        Ok(Bundle {
            manifest,
            spans,
            digests,
            image,
        })
    }

    /// The span table of a compressed layout.
    pub fn spans(&self) -> Option<&Spans> {
        self.spans.as_ref()
    }

    /// All chunk digests, concatenated (the digest pages back to back).
    pub fn digests(&self) -> &'a [u8] {
        self.digests
    }

    /// Checks everything: signature under one of `keys`, expiry at `now_unix` (when known),
    /// the digest pages against the root, every chunk against its digest and the image's
    /// SHA-256. Returns the key that signed it.
    pub fn verify<'k>(
        &self,
        keys: &'k [TrustedKey],
        now_unix: Option<u64>,
    ) -> Result<&'k TrustedKey, TrustError> {
        let key = verify_signature(&self.manifest, keys)?;
        let body = &self.manifest.body;
        check_expiry(body, now_unix)?;
        if merkle::root(&page_leaves(self.digests)) != body.pages_root {
            return Err(TrustError::BadPage {
                page: self.first_bad_page(),
            });
        }
        for i in 0..body.chunk_count {
            if chunk_digest(self.chunk(i)) != self.digest(i) {
                return Err(TrustError::BadChunk { index: i });
            }
        }
        if Sha256::digest(self.image)[..] != body.sha256 {
            return Err(TrustError::ImageMismatch);
        }
        Ok(key)
    }

    /// The lowest page whose proof fails against the root (for the error message).
    fn first_bad_page(&self) -> u32 {
        let body = &self.manifest.body;
        (0..body.page_count())
            .find(|&p| {
                super::DigestPage::verify(body, p, self.page(p), &self.page_proof(p)).is_err()
            })
            .unwrap_or(0)
    }

    /// The image.
    pub fn image(&self) -> &'a [u8] {
        self.image
    }

    /// Chunk `i`'s image bytes (`i` < chunk count).
    pub fn chunk(&self, i: u32) -> &'a [u8] {
        let (start, len) = match &self.spans {
            Some(s) => (s.range(i).0 as usize, s.range(i).1),
            None => {
                let cs = self.manifest.body.chunk_size as usize;
                (i as usize * cs, cs)
            }
        };
        &self.image[start.min(self.image.len())..(start + len).min(self.image.len())]
    }

    /// Chunk `i`'s listed digest (`i` < chunk count).
    pub fn digest(&self, i: u32) -> Hash {
        let at = i as usize * 32;
        let mut d = [0u8; 32];
        d.copy_from_slice(&self.digests[at..at + 32]);
        d
    }

    /// Digest page `p`'s bytes (`p` < page count).
    pub fn page(&self, p: u32) -> &'a [u8] {
        let per = PAGE_CHUNKS as usize * 32;
        let start = (p as usize * per).min(self.digests.len());
        &self.digests[start..(start + per).min(self.digests.len())]
    }

    /// Page `p`'s inclusion proof against the manifest's root.
    pub fn page_proof(&self, p: u32) -> Vec<Hash> {
        merkle::proof(&page_leaves(self.digests), p as usize)
    }
}

/// A compressed bundle's span table: it must add up to the image, agree with the manifest's
/// chunk count and longest span, and hash to what the manifest signs.
fn parse_spans(body: &ManifestBody, table: &[u8], hash: Hash) -> Result<Spans, TrustError> {
    let spans = Spans::from_units(table.to_vec(), body.size)
        .map_err(|_| TrustError::Malformed("span table does not add up to the image"))?;
    if spans.count() != body.chunk_count || spans.max_len() != body.chunk_size {
        return Err(TrustError::Malformed(
            "span table does not match the manifest's chunk count and size",
        ));
    }
    if spans_hash(&spans) != hash {
        return Err(TrustError::Malformed(
            "span table does not match the manifest's hash",
        ));
    }
    Ok(spans)
}
