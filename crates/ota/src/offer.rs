//! The offer a distributor makes: which image, for whom, how.
//!
//! ```text
//! Offer::new("sensor", "ESP32", MemorySource::new(image))   // role, hardware, image
//!     .forced(false).broadcast(true).compressed(true)        // the seed's flags
//!     .pmesh()                                               // or pmesh's own protocol
//! ```
//!
//! The seed's `offerOTA(role, hardware, md5, parts, forced, broadcast, compressed)` maps onto
//! [`Offer::from_seed`], which checks the given `md5` and `parts` against the image instead of
//! trusting them.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::classic::PushPace;
use crate::codec::{self, Md5Hasher};
use crate::event::Refusal;
use crate::io::{FirmwareSource, IoError, MemorySource};

/// Which protocol carries an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// painlessMesh OTA (types 10/11/12): stock nodes can take it.
    Classic,
    /// pmesh's own protocol (types 710–716): pmesh nodes only.
    Pmesh,
}

/// When pmesh-protocol nodes apply (commit and reboot into) a verified image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyPolicy {
    /// Each node applies as soon as it has verified the image.
    OnVerify,
    /// Once every known target reported verified (and at least `min_targets` did), the
    /// distributor sets the apply time to mesh time now + `delay`.
    WhenAllVerified {
        /// Lead time so the apply message reaches every node first.
        delay: Duration,
        /// Wait for at least this many verified targets.
        min_targets: u32,
    },
    /// The application calls `Ota::apply_at` itself.
    Manual,
}

/// An image offered to the mesh.
pub struct Offer {
    /// Target role (free text; painlessMesh advises no `_` or `.`).
    pub role: String,
    /// Target hardware (`"ESP32"`, `"ESP8266"`, or a pmesh platform name).
    pub hardware: String,
    /// The image (what ends up in flash).
    pub image: Box<dyn FirmwareSource + Send>,
    /// Install even on nodes that already run this image.
    pub forced: bool,
    /// Classic broadcast mode (Data flooded to every node). Ignored by the pmesh protocol,
    /// which always pushes along the tree.
    pub broadcast: bool,
    /// Compress: classic serves a gzip of the image; pmesh deflates each chunk.
    pub compressed: bool,
    /// Protocol.
    pub protocol: Protocol,
    /// Version text carried in pmesh manifests and recorded after install.
    pub version: String,
    /// Bytes per chunk: served bytes for classic (default 1,024); for pmesh, image bytes
    /// (default 4,096) or, compressed, the most DEFLATE bytes a chunk may take (default
    /// 3,072: chunks then span a variable number of image bytes, so frames are equal).
    /// 0 means the default.
    pub chunk_size: u32,
    /// pmesh only: when nodes apply.
    pub apply: ApplyPolicy,
    /// pmesh only: the verified signed manifest and digests of a bundle
    /// ([`Offer::from_bundle`], feature `signature`).
    pub signed: Option<crate::pmesh::SignedRollout>,
    /// Classic broadcast driven by the distributor ([`Offer::push`]): the pace, or None for
    /// the reference's request-driven broadcast.
    pub push: Option<PushPace>,
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("role", &self.role)
            .field("hardware", &self.hardware)
            .field("image_len", &self.image.len())
            .field("forced", &self.forced)
            .field("broadcast", &self.broadcast)
            .field("compressed", &self.compressed)
            .field("protocol", &self.protocol)
            .field("version", &self.version)
            .field("chunk_size", &self.chunk_size)
            .field("apply", &self.apply)
            .field("push", &self.push)
            .finish()
    }
}

/// Default classic chunk: 1,024 raw bytes (`OTA_PART_SIZE` of the reference's examples).
pub const CLASSIC_CHUNK: u32 = 1024;
/// Default pmesh chunk: 4,096 image bytes.
pub const PMESH_CHUNK: u32 = 4096;
/// Default compressed pmesh chunk: at most 3,072 DEFLATE bytes, spanning as many image
/// bytes as compress into that (see [`crate::pmesh::spans`]).
pub const PMESH_COMPRESSED_CHUNK: u32 = 3072;
/// Largest chunk accepted in a pmesh manifest.
pub const MAX_PMESH_CHUNK: u32 = 32 * 1024;
/// Smallest chunk accepted in a pmesh manifest.
pub const MIN_PMESH_CHUNK: u32 = 256;

impl Offer {
    /// A classic unicast, uncompressed, unforced offer of `image` to `role` on `hardware`.
    pub fn new(
        role: impl Into<String>,
        hardware: impl Into<String>,
        image: impl FirmwareSource + Send + 'static,
    ) -> Self {
        Offer {
            role: role.into(),
            hardware: hardware.into(),
            image: Box::new(image),
            forced: false,
            broadcast: false,
            compressed: false,
            protocol: Protocol::Classic,
            version: String::new(),
            chunk_size: 0,
            apply: ApplyPolicy::OnVerify,
            signed: None,
            push: None,
        }
    }

    /// A signed pmesh offer from a bundle (`pmesh ota sign`'s file), verified first against
    /// `keys` (and its expiry, when `now_unix` is known): role, hardware, version, chunk
    /// layout and compression come from its manifest. Refused with the exact reason otherwise.
    #[cfg(feature = "signature")]
    pub fn from_bundle(
        bytes: &[u8],
        keys: &[crate::signed::TrustedKey],
        now_unix: Option<u64>,
    ) -> Result<Self, crate::signed::TrustError> {
        let b = crate::signed::Bundle::parse(bytes)?;
        b.verify(keys, now_unix)?;
        let m = &b.manifest.body;
        let mut offer = Offer::new(
            m.role.clone(),
            m.hardware.clone(),
            MemorySource::new(b.image().to_vec()),
        )
        .pmesh()
        .compressed(m.compression.is_deflate());
        offer.version = m.version.clone();
        offer.chunk_size = m.chunk_size;
        offer.signed = Some(crate::pmesh::SignedRollout::from_bundle(&b));
        Ok(offer)
    }

    /// The seed's `offerOTA(role, hardware, md5, parts, forced, broadcast, compressed)`:
    /// a classic offer whose `md5` and `parts` must match the served bytes (the image, or its
    /// gzip when `compressed`) in 1,024-byte chunks; a mismatch is refused, not sent.
    #[allow(clippy::too_many_arguments)]
    pub fn from_seed(
        role: &str,
        hardware: &str,
        md5: &str,
        parts: u32,
        forced: bool,
        broadcast: bool,
        compressed: bool,
        image: impl FirmwareSource + Send + 'static,
    ) -> Result<Offer, Refusal> {
        let offer = Offer::new(role, hardware, image)
            .forced(forced)
            .broadcast(broadcast)
            .compressed(compressed);
        let prepared = offer.prepare_classic()?;
        if !prepared.info.md5.eq_ignore_ascii_case(md5) {
            return Err(Refusal::HashMismatch {
                expected: md5.into(),
                actual: prepared.info.md5,
            });
        }
        if prepared.info.no_part != parts {
            return Err(Refusal::BadOffer(
                "parts does not match the image in 1,024-byte chunks",
            ));
        }
        Ok(prepared.into_offer())
    }

    /// Sets `forced`.
    pub fn forced(mut self, forced: bool) -> Self {
        self.forced = forced;
        self
    }

    /// Sets classic broadcast mode.
    pub fn broadcast(mut self, broadcast: bool) -> Self {
        self.broadcast = broadcast;
        self
    }

    /// Classic broadcast that the distributor drives itself (implies [`Offer::broadcast`]):
    /// after each announce that finds a node no pass reached yet, Data 0…n−1 are flooded in
    /// order at `pace`, which stock receivers take without asking (see
    /// [`crate::classic::push`]).
    pub fn push(mut self, pace: PushPace) -> Self {
        self.broadcast = true;
        self.push = Some(pace);
        self
    }

    /// Sets compression.
    pub fn compressed(mut self, compressed: bool) -> Self {
        self.compressed = compressed;
        self
    }

    /// Uses pmesh's own protocol.
    pub fn pmesh(mut self) -> Self {
        self.protocol = Protocol::Pmesh;
        self
    }

    /// Sets the version text.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the chunk size.
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets the apply policy (pmesh).
    pub fn apply(mut self, policy: ApplyPolicy) -> Self {
        self.apply = policy;
        self
    }

    /// Reads the whole image (in 64 KiB pieces).
    pub(crate) fn read_image(&mut self) -> Result<Vec<u8>, IoError> {
        read_all(self.image.as_mut())
    }

    /// Computes what a classic offer serves: the image itself or its gzip, its MD5, the chunk
    /// count. Uncompressed images are hashed in pieces and served straight from the source.
    pub(crate) fn prepare_classic(mut self) -> Result<PreparedClassic, Refusal> {
        let chunk = if self.chunk_size == 0 {
            CLASSIC_CHUNK
        } else {
            self.chunk_size
        };
        let mut md5 = Md5Hasher::default();
        let (served, served_len): (Box<dyn FirmwareSource + Send>, u64) = if self.compressed {
            let gz = codec::gzip(&self.read_image()?);
            md5.update(&gz);
            let len = gz.len() as u64;
            (Box::new(MemorySource::new(gz)), len)
        } else {
            let len = self.image.len();
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0;
            while at < len {
                let n = self.image.read_at(at, &mut buf)?;
                if n == 0 {
                    return Err(IoError::Device("source ended before its length".into()).into());
                }
                md5.update(&buf[..n]);
                at += n as u64;
            }
            let image = core::mem::replace(&mut self.image, Box::new(MemorySource::default()));
            (image, len)
        };
        let no_part = u32::try_from(served_len.div_ceil(u64::from(chunk)))
            .map_err(|_| Refusal::BadOffer("too many chunks"))?;
        if no_part == 0 {
            return Err(Refusal::BadOffer("empty image"));
        }
        let info = pmesh_proto::ota::FirmwareInfo {
            md5: md5.finish_hex(),
            hardware: self.hardware.clone(),
            role: self.role.clone(),
            forced: self.forced,
            no_part,
            broadcasted: self.broadcast,
            compressed: self.compressed,
        };
        Ok(PreparedClassic {
            info,
            served,
            served_len,
            chunk,
            push: if self.broadcast { self.push } else { None },
            offer: self,
        })
    }
}

/// Reads a source completely.
pub(crate) fn read_all(src: &mut dyn FirmwareSource) -> Result<Vec<u8>, IoError> {
    let len = src.len();
    let mut out = Vec::with_capacity(len as usize);
    let mut buf = vec![0u8; 64 * 1024];
    while (out.len() as u64) < len {
        let n = src.read_at(out.len() as u64, &mut buf)?;
        if n == 0 {
            return Err(IoError::Device("source ended before its length".into()));
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// A classic offer ready to serve.
pub(crate) struct PreparedClassic {
    pub(crate) info: pmesh_proto::ota::FirmwareInfo,
    pub(crate) served: Box<dyn FirmwareSource + Send>,
    pub(crate) served_len: u64,
    pub(crate) chunk: u32,
    pub(crate) push: Option<PushPace>,
    /// The offer, its image moved into `served` when uncompressed.
    offer: Offer,
}

impl PreparedClassic {
    /// Back to an offer (for [`Offer::from_seed`]), image restored.
    fn into_offer(self) -> Offer {
        let mut offer = self.offer;
        if !offer.compressed {
            offer.image = self.served;
        }
        offer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_can_cross_threads() {
        fn is_send<T: Send>() {}
        is_send::<Offer>();
        is_send::<MemorySource>();
    }
}
