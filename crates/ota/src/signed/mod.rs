//! Signed firmware (feature `signature`): a manifest signed with ed25519 over a canonical
//! binary layout ([`manifest`]), digest pages checked against its Merkle root ([`merkle`]),
//! chunk digests, bundles ([`bundle`]) and the typed reasons a node refuses ([`TrustError`]).
//!
//! Why ed25519-compact: it is `no_std` without `alloc`, has no dependencies at all with
//! default features off (its own SHA-512 and field arithmetic), an `opt_size` feature for
//! flash-tight firmware, and verifies in a few KiB of stack; signatures are 64 bytes and keys
//! 32, so a manifest stays small. ed25519-dalek pulls curve25519-dalek, sha2 0.11, rand_core
//! and more code for the same verification; RSA or P-256 verifiers are larger and slower on a
//! microcontroller. Signing uses the same crate (deterministic, RFC 8032), so one
//! implementation both signs and checks.
//!
//! What a node checks, in order: layout ([`SignedManifest::decode`]), key and signature
//! ([`verify_signature`]), class, rollback and expiry ([`Policy::check`]), each digest page
//! against the root ([`DigestPage::verify`]), each chunk against its digest
//! ([`DigestPage::check_chunk`]), and finally the image's SHA-256.

pub mod bundle;
pub mod manifest;
pub mod merkle;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_compact::{KeyPair, PublicKey, Seed, Signature};
use sha2::{Digest, Sha256};

pub use bundle::Bundle;
pub use manifest::{KeyId, ManifestBody, SignedCompression, SignedManifest};
pub use merkle::{Hash, PAGE_CHUNKS};

/// Why a signed manifest, page, chunk or bundle is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustError {
    /// The bytes do not follow the layout (the reason says where).
    Malformed(&'static str),
    /// Signed by a key this node does not trust.
    UnknownKey(KeyId),
    /// The signature does not match the manifest under the named key.
    BadSignature,
    /// The sequence is below the highest this node confirmed for the class.
    Rollback {
        /// The manifest's sequence.
        offered: u64,
        /// The highest sequence confirmed for (role, hardware).
        confirmed: u64,
    },
    /// The manifest expired.
    Expired {
        /// Its expiry (Unix seconds).
        expires: u64,
        /// The time it was checked at (Unix seconds).
        now: u64,
    },
    /// For another role or hardware than this node's.
    WrongClass {
        /// The manifest's role.
        role: String,
        /// The manifest's hardware.
        hardware: String,
    },
    /// A digest page does not match the manifest's Merkle root.
    BadPage {
        /// Page index.
        page: u32,
    },
    /// A chunk does not match its digest.
    BadChunk {
        /// Chunk index.
        index: u32,
    },
    /// The whole image does not have the manifest's SHA-256 (or size).
    ImageMismatch,
    /// The node requires signed firmware and the offer is not signed.
    Unsigned,
}

impl TrustError {
    /// A stable snake_case name, used in events, logs and MQTT/control responses.
    pub fn code(&self) -> &'static str {
        match self {
            TrustError::Malformed(_) => "malformed",
            TrustError::UnknownKey(_) => "unknown_key",
            TrustError::BadSignature => "bad_signature",
            TrustError::Rollback { .. } => "rollback",
            TrustError::Expired { .. } => "expired",
            TrustError::WrongClass { .. } => "wrong_class",
            TrustError::BadPage { .. } => "bad_page",
            TrustError::BadChunk { .. } => "bad_chunk",
            TrustError::ImageMismatch => "image_mismatch",
            TrustError::Unsigned => "unsigned",
        }
    }
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Malformed(why) => write!(f, "malformed: {why}"),
            TrustError::UnknownKey(id) => write!(f, "unknown key: {}", crate::codec::hex(&id.0)),
            TrustError::BadSignature => f.write_str("bad signature"),
            TrustError::Rollback { offered, confirmed } => {
                write!(
                    f,
                    "rollback: sequence {offered} is below the confirmed {confirmed}"
                )
            }
            TrustError::Expired { expires, now } => {
                write!(f, "expired: at {expires} (Unix s), checked at {now}")
            }
            TrustError::WrongClass { role, hardware } => {
                write!(f, "wrong class: for role {role:?} hardware {hardware:?}")
            }
            TrustError::BadPage { page } => write!(f, "bad digest page {page}"),
            TrustError::BadChunk { index } => write!(f, "bad chunk {index}"),
            TrustError::ImageMismatch => f.write_str("image does not match the manifest's SHA-256"),
            TrustError::Unsigned => f.write_str("unsigned firmware refused (require_signed)"),
        }
    }
}

/// Text prefix of a public key line.
pub const PUBLIC_PREFIX: &str = "pmesh-ed25519-pub ";
/// Text prefix of a secret key file.
pub const SECRET_PREFIX: &str = "pmesh-ed25519-secret ";

/// A public key nodes trust to sign firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    key: [u8; 32],
    id: KeyId,
}

impl TrustedKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let d = Sha256::digest(key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        TrustedKey { key, id: KeyId(id) }
    }

    /// Parses one line `pmesh-ed25519-pub <64 hex digits>` (surrounding spaces allowed).
    pub fn from_text(line: &str) -> Result<Self, TrustError> {
        let hex = line.trim().strip_prefix(PUBLIC_PREFIX);
        let hex = hex.ok_or(TrustError::Malformed(
            "public key: expected 'pmesh-ed25519-pub <hex>'",
        ))?;
        Ok(Self::from_bytes(parse_hex32(hex.trim())?))
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        let mut s = String::from(PUBLIC_PREFIX);
        s.push_str(&crate::codec::hex(&self.key));
        s
    }

    /// The key id manifests name it by.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw key.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// An ed25519 signing key (32-byte seed). Lives on the operator's machine, never on a node.
pub struct SigningKey {
    pair: KeyPair,
    seed: [u8; 32],
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().to_text())
    }
}

impl SigningKey {
    /// The key derived from a 32-byte random seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey {
            pair: KeyPair::from_seed(Seed::new(seed)),
            seed,
        }
    }

    /// Parses `pmesh-ed25519-secret <64 hex digits>`.
    pub fn from_text(text: &str) -> Result<Self, TrustError> {
        let hex = text.trim().strip_prefix(SECRET_PREFIX);
        let hex = hex.ok_or(TrustError::Malformed(
            "secret key: expected 'pmesh-ed25519-secret <hex>'",
        ))?;
        Ok(Self::from_seed(parse_hex32(hex.trim())?))
    }

    /// The secret text form (one line).
    pub fn to_text(&self) -> String {
        let mut s = String::from(SECRET_PREFIX);
        s.push_str(&crate::codec::hex(&self.seed));
        s
    }

    /// The matching public key.
    pub fn public(&self) -> TrustedKey {
        TrustedKey::from_bytes(*self.pair.pk)
    }

    /// Signs `body` (its `key_id` is set to this key's) after checking the layout rules.
    pub fn sign(&self, mut body: ManifestBody) -> Result<SignedManifest, TrustError> {
        body.key_id = self.public().id();
        body.check()?;
        let mut bytes = body.encode();
        let signature = *self.pair.sk.sign(&bytes, None);
        bytes.extend_from_slice(&signature);
        Ok(SignedManifest {
            body,
            signature,
            bytes,
        })
    }
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], TrustError> {
    let bad = TrustError::Malformed("key: expected 64 hex digits");
    let h = hex.as_bytes();
    if h.len() != 64 {
        return Err(bad);
    }
    let mut out = [0u8; 32];
    for (i, pair) in h.chunks(2).enumerate() {
        let s = core::str::from_utf8(pair).map_err(|_| bad.clone())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad.clone())?;
    }
    Ok(out)
}

/// Checks `manifest`'s signature under the trusted key its key id names; returns that key.
pub fn verify_signature<'k>(
    manifest: &SignedManifest,
    keys: &'k [TrustedKey],
) -> Result<&'k TrustedKey, TrustError> {
    let id = manifest.body.key_id;
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .ok_or(TrustError::UnknownKey(id))?;
    let pk = PublicKey::new(key.key);
    let sig = Signature::new(manifest.signature);
    pk.verify(manifest.signed_bytes(), &sig)
        .map_err(|_| TrustError::BadSignature)?;
    Ok(key)
}

/// What a node holds a verified manifest against.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// The node's role.
    pub role: &'a str,
    /// The node's hardware.
    pub hardware: &'a str,
    /// Highest sequence the node confirmed for (role, hardware), if any.
    pub confirmed: Option<u64>,
    /// Unix time in seconds, when the node knows it (expiry is not checked without it).
    pub now_unix: Option<u64>,
}

impl Policy<'_> {
    /// Class, rollback and expiry checks (in that order).
    pub fn check(&self, m: &ManifestBody) -> Result<(), TrustError> {
        if m.role != self.role || m.hardware != self.hardware {
            return Err(TrustError::WrongClass {
                role: m.role.clone(),
                hardware: m.hardware.clone(),
            });
        }
        if let Some(confirmed) = self.confirmed.filter(|&c| m.sequence < c) {
            return Err(TrustError::Rollback {
                offered: m.sequence,
                confirmed,
            });
        }
        check_expiry(m, self.now_unix)
    }
}

/// Refuses `m` if it has an expiry and `now_unix` is past it.
pub fn check_expiry(m: &ManifestBody, now_unix: Option<u64>) -> Result<(), TrustError> {
    match (m.expires, now_unix) {
        (Some(expires), Some(now)) if now > expires => Err(TrustError::Expired { expires, now }),
        _ => Ok(()),
    }
}

/// SHA-256 of a chunk's image bytes: what a digest page lists.
pub fn chunk_digest(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// A digest page checked against a manifest's root: the digests of chunks
/// `first .. first + digests.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestPage {
    /// Page index.
    pub page: u32,
    /// Index of the first chunk it covers.
    pub first: u32,
    /// One digest per chunk.
    pub digests: Vec<Hash>,
}

impl DigestPage {
    /// Number of chunks page `page` covers under `m`.
    pub fn chunks_in(m: &ManifestBody, page: u32) -> u32 {
        let first = page.saturating_mul(PAGE_CHUNKS);
        m.chunk_count.saturating_sub(first).min(PAGE_CHUNKS)
    }

    /// Checks `bytes` (concatenated digests) with its inclusion `proof` against `m`'s root.
    pub fn verify(
        m: &ManifestBody,
        page: u32,
        bytes: &[u8],
        proof: &[Hash],
    ) -> Result<Self, TrustError> {
        let n = DigestPage::chunks_in(m, page);
        if page >= m.page_count() || bytes.len() != n as usize * 32 {
            return Err(TrustError::BadPage { page });
        }
        let leaf = merkle::leaf_hash(bytes);
        let root = merkle::root_from_proof(page as usize, m.page_count() as usize, leaf, proof);
        if root != Some(m.pages_root) {
            return Err(TrustError::BadPage { page });
        }
        let digests = bytes
            .chunks_exact(32)
            .map(|d| d.try_into().unwrap_or([0; 32]))
            .collect();
        Ok(DigestPage {
            page,
            first: page * PAGE_CHUNKS,
            digests,
        })
    }

    /// Whether this page covers chunk `index`.
    pub fn covers(&self, index: u32) -> bool {
        index >= self.first && ((index - self.first) as usize) < self.digests.len()
    }

    /// Checks chunk `index`'s image bytes against its digest.
    pub fn check_chunk(&self, index: u32, data: &[u8]) -> Result<(), TrustError> {
        let ok =
            self.covers(index) && self.digests[(index - self.first) as usize] == chunk_digest(data);
        if ok {
            Ok(())
        } else {
            Err(TrustError::BadChunk { index })
        }
    }
}
