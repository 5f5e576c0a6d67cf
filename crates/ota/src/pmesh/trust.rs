//! Signed rollouts in the pmesh protocol: what a node checks before it relays a manifest or
//! a digest page, and before it caches, writes or forwards a chunk (docs/ota.md, "Signed
//! firmware"). With the `signature` feature off, [`TrustConfig`] only says whether unsigned
//! rollouts are allowed and [`SignedRollout`] cannot exist, so none of this costs flash.

use alloc::vec::Vec;

#[cfg(feature = "signature")]
use pmesh_proto::Envelope;

use crate::pmesh::wire::Manifest;

pub use imp::{SignedRollout, TrustConfig};

/// What a chunk's digest check says.
#[cfg_attr(not(feature = "signature"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkCheck {
    /// Matches its digest.
    Good,
    /// Does not match: drop, count, demote the sender.
    Bad,
    /// Its digest page has not arrived: cannot be checked, so it is dropped.
    NoPage,
}

/// The node's own class and anti-rollback state, for [`check_manifest`].
#[cfg_attr(not(feature = "signature"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Own<'a> {
    pub role: &'a str,
    pub hardware: &'a str,
    pub confirmed: Option<u64>,
    /// Unix seconds now, when the host gave the node a wall clock.
    pub now_unix: Option<u64>,
}

#[cfg(feature = "signature")]
mod imp {
    use super::*;
    use crate::pmesh::spans::Spans;
    use crate::pmesh::wire;
    use crate::signed::{
        Bundle, DigestPage, Hash, Policy, SignedCompression, SignedManifest, TrustError,
        TrustedKey, bundle, merkle, verify_signature,
    };

    /// Which firmware a node trusts (part of `OtaConfig`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TrustConfig {
        /// Keys whose signatures this node accepts. Any key makes signatures required.
        pub keys: Vec<TrustedKey>,
        /// Without keys: take part in unsigned rollouts (true) or refuse every pmesh rollout
        /// (false). Ignored when keys are set.
        pub allow_unsigned: bool,
        /// Unix time (seconds) at the node's `Instant::ZERO`, when the host has a wall clock
        /// (pmesh-net sets it from the system clock): the node then refuses expired signed
        /// manifests, relays included (`Refused { Untrusted { code: "expired" } }`). `None`
        /// (the default: a microcontroller without a trusted clock): expiry is not checked.
        pub wall_clock: Option<u64>,
    }

    impl Default for TrustConfig {
        /// No keys, unsigned allowed, no wall clock: the library default (a `pmesh node` sets
        /// its own).
        fn default() -> Self {
            TrustConfig {
                keys: Vec::new(),
                allow_unsigned: true,
                wall_clock: None,
            }
        }
    }

    impl TrustConfig {
        /// Unix seconds at node time `now`, when the host gave a wall clock.
        pub fn now_unix(&self, now: pmesh_node::Instant) -> Option<u64> {
            self.wall_clock.map(|t| t + now.as_micros() / 1_000_000)
        }

        /// Only signed rollouts are accepted (and relayed).
        pub fn requires_signed(&self) -> bool {
            !self.keys.is_empty() || !self.allow_unsigned
        }
    }

    /// A verified signed manifest and the digest pages received so far (each with its proof,
    /// so the node can pass it on).
    #[derive(Clone, Debug)]
    pub struct SignedRollout {
        manifest: SignedManifest,
        pages: Vec<Option<(DigestPage, Vec<Hash>)>>,
        /// A distributor's span table (compressed layout); receivers take it from the
        /// MANIFEST, checked against the signed hash.
        spans: Option<Spans>,
        /// The signature was checked under a trusted key. A node without keys that allows
        /// unsigned firmware still checks pages and chunks against the manifest's root (for
        /// integrity: signed chunks carry no CRC), but never moves its anti-rollback counter.
        verified: bool,
    }

    impl SignedRollout {
        /// A distributor's: the manifest, span table and every digest page of a bundle
        /// (verified first with [`Bundle::verify`]).
        pub fn from_bundle(b: &Bundle<'_>) -> Self {
            let digests = b.digests();
            let leaves = bundle::page_leaves(digests);
            let mut s = SignedRollout::new(b.manifest.clone());
            s.spans = b.spans().cloned();
            for (p, page) in digests
                .chunks(32 * crate::signed::PAGE_CHUNKS as usize)
                .enumerate()
            {
                let _ = s.add_page(p as u32, page, &merkle::proof(&leaves, p));
            }
            s
        }

        pub(crate) fn new(manifest: SignedManifest) -> Self {
            let n = manifest.body.page_count() as usize;
            SignedRollout {
                manifest,
                pages: alloc::vec![None; n],
                spans: None,
                verified: true,
            }
        }

        /// Whether the signature was checked under a trusted key.
        pub fn verified(&self) -> bool {
            self.verified
        }

        /// The signed chunk layout for a distributor: chunk size (the longest span), count
        /// and the span table (compressed layout).
        pub(crate) fn layout(&self) -> (u32, u32, Option<Spans>) {
            let b = &self.manifest.body;
            (b.chunk_size, b.chunk_count, self.spans.clone())
        }

        /// Whether chunks travel deflated (the signer chose the compressed layout).
        pub(crate) fn compressed(&self) -> bool {
            self.manifest.body.compression.is_deflate()
        }

        /// The signed manifest.
        pub fn manifest(&self) -> &SignedManifest {
            &self.manifest
        }

        /// The anti-rollback sequence.
        pub fn sequence(&self) -> u64 {
            self.manifest.body.sequence
        }

        pub(crate) fn manifest_bytes(&self) -> &[u8] {
            &self.manifest.bytes
        }

        pub(crate) fn sha256_hex(&self) -> alloc::string::String {
            crate::codec::hex(&self.manifest.body.sha256)
        }

        pub(crate) fn page_count(&self) -> u32 {
            self.pages.len() as u32
        }

        /// Checks page `p` against the root and keeps it; `Ok(true)` if it is new.
        pub(crate) fn add_page(
            &mut self,
            p: u32,
            bytes: &[u8],
            proof: &[Hash],
        ) -> Result<bool, TrustError> {
            if self.pages.get(p as usize).is_some_and(Option::is_some) {
                let held = self.pages[p as usize]
                    .as_ref()
                    .map(|(d, _)| d.digests.concat());
                return if held.as_deref() == Some(bytes) {
                    Ok(false)
                } else {
                    Err(TrustError::BadPage { page: p })
                };
            }
            let page = DigestPage::verify(&self.manifest.body, p, bytes, proof)?;
            self.pages[p as usize] = Some((page, proof.to_vec()));
            Ok(true)
        }

        /// The PAGE frame of page `p`, if held.
        pub(crate) fn page_json(&self, from: u32, routing: u8, id: u32, p: u32) -> Option<Vec<u8>> {
            let (page, proof) = self.pages.get(p as usize)?.as_ref()?;
            Some(wire::page_frame(
                from,
                routing,
                id,
                p,
                &page.digests.concat(),
                proof,
            ))
        }

        /// Checks chunk `i`'s image bytes against its digest.
        pub(crate) fn check_chunk(&self, i: u32, data: &[u8]) -> ChunkCheck {
            let p = i / crate::signed::PAGE_CHUNKS;
            match self.pages.get(p as usize) {
                Some(Some((page, _))) if page.check_chunk(i, data).is_ok() => ChunkCheck::Good,
                Some(Some(_)) => ChunkCheck::Bad,
                _ => ChunkCheck::NoPage,
            }
        }

        /// RAM held for pages (counted in a node's tracking state).
        pub(crate) fn heap_bytes(&self) -> usize {
            self.manifest.bytes.len()
                + self
                    .pages
                    .iter()
                    .flatten()
                    .map(|(d, p)| 32 * (d.digests.len() + p.len()))
                    .sum::<usize>()
        }
    }

    fn untrusted(e: TrustError) -> crate::Refusal {
        crate::Refusal::Untrusted {
            code: e.code(),
            reason: alloc::format!("{e}"),
        }
    }

    /// Checks a MANIFEST before a node relays or uses it. `Ok(None)`: an unsigned rollout this
    /// node accepts; `Ok(Some)`: signed by a trusted key, its JSON fields equal to the signed
    /// ones, not a rollback of this node's class. `verified` caches the last signature
    /// checked (re-floods cost no second ed25519 verification).
    pub(crate) fn check_manifest(
        cfg: &TrustConfig,
        m: &Manifest,
        own: Own<'_>,
        verified: &mut Vec<u8>,
    ) -> Result<Option<SignedRollout>, crate::Refusal> {
        let Some(sm) = &m.signed else {
            return if cfg.requires_signed() {
                Err(untrusted(TrustError::Unsigned))
            } else {
                Ok(None)
            };
        };
        if cfg.keys.is_empty() && !cfg.allow_unsigned {
            return Err(untrusted(TrustError::Unsigned));
        }
        let (s, used) = SignedManifest::decode(sm).map_err(untrusted)?;
        if used != sm.len() {
            return Err(untrusted(TrustError::Malformed(
                "bytes after the signed manifest",
            )));
        }
        if cfg.keys.is_empty() {
            // Nothing to check the signature with: unsigned as far as this node knows, but
            // its chunks are still checked against the manifest's digests (they carry no CRC).
            if !matches_json(m, &s) {
                return Err(untrusted(TrustError::Malformed(
                    "manifest fields differ from the signed manifest",
                )));
            }
            let mut r = SignedRollout::new(s);
            r.verified = false;
            return Ok(Some(r));
        }
        if verified.as_slice() != sm.as_slice() {
            verify_signature(&s, &cfg.keys).map_err(untrusted)?;
            verified.clear();
            verified.extend_from_slice(sm);
        }
        if !matches_json(m, &s) {
            return Err(untrusted(TrustError::Malformed(
                "manifest fields differ from the signed manifest",
            )));
        }
        // Expired manifests are neither used nor relayed (when this node knows the time).
        crate::signed::check_expiry(&s.body, own.now_unix).map_err(untrusted)?;
        if s.body.role == own.role && s.body.hardware == own.hardware {
            let policy = Policy {
                role: own.role,
                hardware: own.hardware,
                confirmed: own.confirmed,
                now_unix: own.now_unix,
            };
            policy.check(&s.body).map_err(untrusted)?;
        }
        Ok(Some(SignedRollout::new(s)))
    }

    /// The JSON fields a node acts on are the signed ones; a span table hashes to the
    /// signed hash (so every chunk's image range is the signer's).
    fn matches_json(m: &Manifest, s: &SignedManifest) -> bool {
        let b = &s.body;
        let layout = match (&b.compression, &m.spans) {
            (SignedCompression::None, None) => m.compression == wire::Compression::None,
            (SignedCompression::Deflate { spans }, Some(table)) => {
                m.compression == wire::Compression::Deflate && bundle::spans_hash(table) == *spans
            }
            _ => false,
        };
        layout
            && m.size == b.size
            && m.chunk == b.chunk_size
            && m.count == b.chunk_count
            && m.sha256 == crate::codec::hex(&b.sha256)
            && m.version == b.version
            && m.role == b.role
            && m.hardware == b.hardware
    }

    /// A PAGE envelope: (id, page, digests, proof), or `None` if malformed.
    pub(crate) fn parse_page(env: &Envelope) -> Option<wire::PageMsg> {
        wire::parse_page(env)
    }
}

#[cfg(not(feature = "signature"))]
mod imp {
    use super::*;

    /// Which firmware a node trusts: without the `signature` feature, only whether unsigned
    /// pmesh rollouts are taken (true) or every one is refused (false).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TrustConfig {
        /// Take part in (unsigned) pmesh rollouts.
        pub allow_unsigned: bool,
    }

    impl Default for TrustConfig {
        fn default() -> Self {
            TrustConfig {
                allow_unsigned: true,
            }
        }
    }

    impl TrustConfig {
        /// Only signed rollouts are accepted: without the feature, that means none.
        pub fn requires_signed(&self) -> bool {
            !self.allow_unsigned
        }

        /// No wall clock without the `signature` feature (nothing checks an expiry).
        pub fn now_unix(&self, _now: pmesh_node::Instant) -> Option<u64> {
            None
        }
    }

    /// Cannot exist without the `signature` feature.
    #[derive(Clone, Debug)]
    pub enum SignedRollout {}

    impl SignedRollout {
        pub(crate) fn sequence(&self) -> u64 {
            match *self {}
        }
        pub(crate) fn verified(&self) -> bool {
            match *self {}
        }
        pub(crate) fn layout(&self) -> (u32, u32, Option<crate::pmesh::spans::Spans>) {
            match *self {}
        }
        pub(crate) fn compressed(&self) -> bool {
            match *self {}
        }
        pub(crate) fn page_count(&self) -> u32 {
            match *self {}
        }
        pub(crate) fn sha256_hex(&self) -> alloc::string::String {
            match *self {}
        }
        pub(crate) fn page_json(&self, _: u32, _: u8, _: u32, _: u32) -> Option<Vec<u8>> {
            match *self {}
        }
        pub(crate) fn check_chunk(&self, _: u32, _: &[u8]) -> ChunkCheck {
            match *self {}
        }
        pub(crate) fn heap_bytes(&self) -> usize {
            match *self {}
        }
    }

    pub(crate) fn check_manifest(
        cfg: &TrustConfig,
        m: &Manifest,
        _own: Own<'_>,
        _verified: &mut Vec<u8>,
    ) -> Result<Option<SignedRollout>, crate::Refusal> {
        let _ = m;
        if cfg.requires_signed() {
            return Err(crate::Refusal::Untrusted {
                code: "unsigned",
                reason: "allow_unsigned is off".into(),
            });
        }
        Ok(None)
    }
}

pub(crate) use imp::check_manifest;
#[cfg(feature = "signature")]
pub(crate) use imp::parse_page;
