//! The bundle file `pmesh ota sign` writes and gateways serve from: one signed manifest, then
//! the digest of every chunk (32 B each, in chunk order: the digest pages back to back), then
//! the image. Nothing else, no padding; the manifest says how long the rest is.
//!
//! ```text
//! | signed manifest (≤ 375 B) | chunk_count × 32 B digests | image (size B) |
//! ```

use alloc::vec::Vec;
use sha2::{Digest, Sha256};

use super::manifest::{ManifestBody, SignedCompression, SignedManifest};
use super::merkle::{self, Hash, PAGE_CHUNKS};
use super::{
    KeyId, SigningKey, TrustError, TrustedKey, check_expiry, chunk_digest, verify_signature,
};

/// A bundle laid over its bytes (see the module docs).
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    /// The manifest (layout checked, signature not yet).
    pub manifest: SignedManifest,
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
    /// Image bytes per chunk.
    pub chunk_size: u32,
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
        let digests = digests_of(image, spec.chunk_size);
        let body = ManifestBody {
            role: spec.role.into(),
            hardware: spec.hardware.into(),
            version: spec.version.into(),
            sequence: spec.sequence,
            size: image.len() as u64,
            sha256: Sha256::digest(image).into(),
            compression: SignedCompression::None,
            chunk_size: spec.chunk_size,
            chunk_count: (digests.len() / 32) as u32,
            pages_root: merkle::root(&page_leaves(&digests)),
            key_id: KeyId([0; 8]),
            expires: spec.expires,
        };
        let manifest = key.sign(body)?;
        let mut out = manifest.bytes;
        out.extend_from_slice(&digests);
        out.extend_from_slice(image);
        Ok(out)
    }

    /// Lays a bundle over `bytes`: manifest layout and exact total length. Nothing else is
    /// checked yet: call [`Bundle::verify`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TrustError> {
        let (manifest, used) = SignedManifest::decode(bytes)?;
        let digest_len = manifest.body.chunk_count as usize * 32;
        let rest = &bytes[used..];
        let size = usize::try_from(manifest.body.size).unwrap_or(usize::MAX);
        if rest.len().checked_sub(digest_len) != Some(size) {
            return Err(TrustError::Malformed(
                "bundle length does not match the manifest",
            ));
        }
        let (digests, image) = rest.split_at(digest_len);
        Ok(Bundle {
            manifest,
            digests,
            image,
        })
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
        let cs = self.manifest.body.chunk_size as usize;
        let start = i as usize * cs;
        &self.image[start.min(self.image.len())..(start + cs).min(self.image.len())]
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
