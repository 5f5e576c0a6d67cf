//! pmesh's own OTA frames, types 710–716 (outside every range the painlessMesh spec lists:
//! 3–14, 20/21, 200–206, 400, 600–614, 620–622).
//!
//! Hop-by-hop frames carry `routing:0`, which a stock node processes locally, finds no handler
//! for and drops; mesh-wide frames carry `routing:2`, which a stock node floods unchanged;
//! frames for a node beyond a stock node carry `routing:1` and a `dest`. All are compact,
//! printable-ASCII JSON without NUL; chunk data is base85 (see [`crate::b85`]).
//!
//! | type | name | routing | fields after `type,routing,from` |
//! |---|---|---|---|
//! | 710 | HELLO | 0 | `v` (protocol version) |
//! | 711 | MANIFEST | 2 (0 to one neighbour) | `id,size,chunk,count,sha256,version,role,hardware,compression[,spans],forced,apply[,at]` |
//! | 712 | WANT | 0 (1 + `dest` to the distributor) | `id,n,have[,re][,stop]` |
//! | 713 | CHUNK | 0 (1 + `dest`) | `id,i,z[,crc],d` (no `crc` in signed rollouts) |
//! | 714 | ACK | 0 (1 + `dest`) | `id,n[,p]` |
//! | 715 | APPLY | 2 | `id,at` |
//! | 716 | CANCEL | 2 | `id` |
//! | 717 | PAGE | 2 (0 to one neighbour) | `id,p,d,pf` (signed rollouts: digest page `p`, its proof) |

use alloc::string::String;
use alloc::vec::Vec;

use pmesh_proto::Envelope;
use pmesh_proto::json::{Value, write_str, write_u64};

use crate::b85;
use crate::bitmap::ChunkBitmap;
use crate::event::Refusal;
use crate::offer::{MAX_PMESH_CHUNK, MIN_PMESH_CHUNK};
use crate::pmesh::spans::Spans;

/// HELLO: "I speak pmesh OTA" to a new neighbour.
pub const HELLO: i32 = 710;
/// MANIFEST: what is offered, checked before any chunk is accepted.
pub const MANIFEST: i32 = 711;
/// WANT: subscribe to a neighbour (or the distributor) with the chunks already held.
pub const WANT: i32 = 712;
/// CHUNK: one chunk of the image.
pub const CHUNK: i32 = 713;
/// ACK: chunks received on a link so far, plus progress reports travelling to the distributor.
pub const ACK: i32 = 714;
/// APPLY: commit and reboot at a mesh time.
pub const APPLY: i32 = 715;
/// CANCEL: abandon the rollout.
pub const CANCEL: i32 = 716;
/// PAGE: a digest page of a signed rollout with its Merkle proof (see `crate::signed`).
pub const PAGE: i32 = 717;
/// Longest signed manifest a MANIFEST's `sm` may carry (bytes, before base85).
pub const MAX_SIGNED_MANIFEST: usize = 402;
#[cfg(feature = "signature")]
const _: () = assert!(MAX_SIGNED_MANIFEST == crate::signed::manifest::MAX_MANIFEST_BYTES);

/// Most chunks a manifest may have (a 128 KiB bitmap); more is refused as malformed, so a
/// bad manifest cannot make a relay allocate without bound.
pub const MAX_CHUNKS: u32 = 1 << 20;

/// Protocol version sent in HELLO.
pub const VERSION: u32 = 1;

/// What a frame is, for accounting (`data` vs `control` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Classic Announce (10).
    ClassicAnnounce,
    /// Classic DataRequest (11).
    ClassicRequest,
    /// Classic Data (12): data.
    ClassicData,
    /// pmesh HELLO.
    Hello,
    /// pmesh MANIFEST.
    Manifest,
    /// pmesh WANT.
    Want,
    /// pmesh CHUNK: data.
    Chunk,
    /// pmesh ACK (with progress).
    Ack,
    /// pmesh APPLY.
    Apply,
    /// pmesh CANCEL.
    Cancel,
    /// pmesh PAGE (signed rollouts' chunk digests).
    Page,
}

impl FrameKind {
    /// The kind of an OTA frame of this `type`, `None` for other frames.
    pub fn of_type(ty: i32) -> Option<FrameKind> {
        Some(match ty {
            10 => FrameKind::ClassicAnnounce,
            11 => FrameKind::ClassicRequest,
            12 => FrameKind::ClassicData,
            HELLO => FrameKind::Hello,
            MANIFEST => FrameKind::Manifest,
            WANT => FrameKind::Want,
            CHUNK => FrameKind::Chunk,
            ACK => FrameKind::Ack,
            APPLY => FrameKind::Apply,
            CANCEL => FrameKind::Cancel,
            PAGE => FrameKind::Page,
            _ => return None,
        })
    }

    /// Carries image bytes (everything else is control).
    pub fn is_data(self) -> bool {
        matches!(self, FrameKind::ClassicData | FrameKind::Chunk)
    }
}

/// Compression of pmesh chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Chunks are image bytes.
    None,
    /// Each chunk is a raw DEFLATE block of one chunk of the image (or stored raw, `z:0`,
    /// when that is smaller).
    Deflate,
}

impl Compression {
    /// The manifest's text.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Deflate => "deflate",
        }
    }
}

/// A pmesh manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The distributor.
    pub from: u32,
    /// Rollout id (chosen by the distributor).
    pub id: u32,
    /// Image bytes (what ends up in flash).
    pub size: u64,
    /// Image bytes per chunk (the last chunk may be shorter); with `spans`, the largest span.
    pub chunk: u32,
    /// Chunk count: `ceil(size / chunk)`, or the spans listed.
    pub count: u32,
    /// Variable chunk spans (compressed images: equal-size frames, see
    /// [`crate::pmesh::spans`]); `None`: every chunk is `chunk` image bytes.
    pub spans: Option<Spans>,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    /// Version text.
    pub version: String,
    /// Target role.
    pub role: String,
    /// Target hardware.
    pub hardware: String,
    /// Chunk compression.
    pub compression: Compression,
    /// Install even where the image is current.
    pub forced: bool,
    /// Wait for APPLY (true) or apply on verify (false).
    pub coordinated: bool,
    /// Apply time (mesh µs), once the distributor set it.
    pub apply_at: Option<u32>,
    /// The signed manifest's bytes (`sm`, signed rollouts; checked by `pmesh/trust.rs`).
    #[cfg(feature = "signature")]
    pub signed: Option<Vec<u8>>,
}

impl Manifest {
    /// Image offset and length of chunk `i` (`i` < `count`).
    pub fn chunk_range(&self, i: u32) -> (u64, usize) {
        match &self.spans {
            Some(s) => s.range(i),
            None => {
                let start = u64::from(i) * u64::from(self.chunk);
                let len = self.size.saturating_sub(start).min(u64::from(self.chunk));
                (start, len as usize)
            }
        }
    }

    /// Same image, same chunking: a transfer of one can resume as the other.
    pub fn same_image(&self, o: &Manifest) -> bool {
        self.size == o.size
            && self.chunk == o.chunk
            && self.sha256 == o.sha256
            && self.compression == o.compression
            && self.spans == o.spans
    }

    /// Heap bytes of the chunk layout (counted in a node's tracking state).
    pub fn layout_heap_bytes(&self) -> usize {
        self.spans.as_ref().map_or(0, Spans::heap_bytes)
    }

    /// Serializes with this `routing` (2 to flood, 0 to one neighbour).
    pub fn to_json(&self, routing: u8) -> Vec<u8> {
        let mut o = head(MANIFEST, routing, self.from);
        num(&mut o, "id", u64::from(self.id));
        num(&mut o, "size", self.size);
        num(&mut o, "chunk", u64::from(self.chunk));
        num(&mut o, "count", u64::from(self.count));
        text(&mut o, "sha256", &self.sha256);
        text(&mut o, "version", &self.version);
        text(&mut o, "role", &self.role);
        text(&mut o, "hardware", &self.hardware);
        text(&mut o, "compression", self.compression.name());
        if let Some(spans) = &self.spans {
            o.extend_from_slice(b",\"spans\":\"");
            b85::encode_into(spans.units(), &mut o);
            o.push(b'"');
        }
        o.extend_from_slice(if self.forced {
            b",\"forced\":true"
        } else {
            b",\"forced\":false"
        });
        num(&mut o, "apply", u64::from(self.coordinated));
        if let Some(at) = self.apply_at {
            num(&mut o, "at", u64::from(at));
        }
        #[cfg(feature = "signature")]
        if let Some(sm) = &self.signed {
            o.extend_from_slice(b",\"sm\":\"");
            b85::encode_into(sm, &mut o);
            o.push(b'"');
        }
        o.push(b'}');
        o
    }

    /// Parses and checks a manifest: every field present and consistent. An unknown
    /// compression is reported as [`Refusal::UnknownCompression`].
    pub fn from_envelope(env: &Envelope) -> Result<Manifest, Refusal> {
        let u = |k: &'static str| {
            env.get(k)
                .and_then(Value::as_u32_strict)
                .ok_or(Refusal::BadOffer(k))
        };
        let s = |k: &'static str| match env.get(k) {
            Some(Value::String(b)) => {
                String::from_utf8(b.clone()).map_err(|_| Refusal::BadOffer(k))
            }
            _ => Err(Refusal::BadOffer(k)),
        };
        let size = match env.get("size") {
            Some(Value::Number(pmesh_proto::json::Number::UInt(n))) => *n,
            _ => return Err(Refusal::BadOffer("size")),
        };
        let chunk = u("chunk")?;
        let count = u("count")?;
        let sha256 = s("sha256")?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Refusal::BadOffer("sha256 is not 64 lowercase hex digits"));
        }
        if !(MIN_PMESH_CHUNK..=MAX_PMESH_CHUNK).contains(&chunk) {
            return Err(Refusal::BadOffer("chunk size out of range"));
        }
        if count > MAX_CHUNKS {
            return Err(Refusal::BadOffer("too many chunks"));
        }
        if size == 0 {
            return Err(Refusal::BadOffer("empty image"));
        }
        let spans = match env.get("spans") {
            None => {
                if size.div_ceil(u64::from(chunk)) != u64::from(count) {
                    return Err(Refusal::BadOffer("count does not match size and chunk"));
                }
                None
            }
            Some(Value::String(text)) => {
                let units = b85::decode(text).map_err(|_| Refusal::BadOffer("spans"))?;
                let spans =
                    Spans::from_units(units, size).map_err(|e| Refusal::BadOffer(e.reason()))?;
                if spans.count() != count || spans.max_len() != chunk {
                    return Err(Refusal::BadOffer("count or chunk does not match the spans"));
                }
                Some(spans)
            }
            Some(_) => return Err(Refusal::BadOffer("spans")),
        };
        let compression = match s("compression")?.as_str() {
            "none" => Compression::None,
            "deflate" => Compression::Deflate,
            other => return Err(Refusal::UnknownCompression(other.into())),
        };
        Ok(Manifest {
            from: env.from,
            id: u("id")?,
            size,
            chunk,
            count,
            spans,
            sha256,
            version: s("version")?,
            role: s("role")?,
            hardware: s("hardware")?,
            compression,
            forced: env.get("forced").and_then(Value::as_bool).unwrap_or(false),
            coordinated: env.get("apply").and_then(Value::as_u32_strict).unwrap_or(0) != 0,
            apply_at: env.get("at").and_then(Value::as_u32_strict),
            #[cfg(feature = "signature")]
            signed: match env.get("sm") {
                None => None,
                Some(Value::String(t)) if t.len() <= MAX_SIGNED_MANIFEST * 5 / 4 + 1 => {
                    Some(b85::decode(t).map_err(|_| Refusal::BadOffer("sm"))?)
                }
                Some(_) => return Err(Refusal::BadOffer("sm")),
            },
        })
    }
}

#[cfg(feature = "signature")]
/// A PAGE frame: digest page `p` of rollout `id` (the digests, concatenated) and its proof.
pub fn page_frame(
    from: u32,
    routing: u8,
    id: u32,
    p: u32,
    digests: &[u8],
    proof: &[[u8; 32]],
) -> Vec<u8> {
    let mut o = head(PAGE, routing, from);
    num(&mut o, "id", u64::from(id));
    num(&mut o, "p", u64::from(p));
    o.extend_from_slice(b",\"d\":\"");
    b85::encode_into(digests, &mut o);
    o.extend_from_slice(b"\",\"pf\":\"");
    b85::encode_into(proof.concat().as_slice(), &mut o);
    o.extend_from_slice(b"\"}");
    o
}

/// A parsed PAGE frame: rollout id, page index, digests, proof hashes.
#[cfg(feature = "signature")]
pub type PageMsg = (u32, u32, Vec<u8>, Vec<[u8; 32]>);

#[cfg(feature = "signature")]
/// Parses a PAGE frame; `None` if malformed (a page holds at most 32 digests, a proof at
/// most 20 hashes: 2^20 chunks make 2^15 pages).
pub fn parse_page(env: &Envelope) -> Option<PageMsg> {
    let id = env.get("id")?.as_u32_strict()?;
    let p = env.get("p")?.as_u32_strict()?;
    let text = |k| match env.get(k) {
        Some(Value::String(t)) if t.len() <= 1281 => b85::decode(t).ok(),
        _ => None,
    };
    let d = text("d")?;
    let pf = text("pf")?;
    if d.len() > 32 * 32 || d.len() % 32 != 0 || pf.len() % 32 != 0 || pf.len() > 20 * 32 {
        return None;
    }
    let proof = pf
        .chunks_exact(32)
        .map(|h| h.try_into().unwrap_or([0; 32]))
        .collect();
    Some((id, p, d, proof))
}

/// `{"type":T,"routing":R,"from":F` (no closing brace).
pub(crate) fn head(ty: i32, routing: u8, from: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(96);
    o.extend_from_slice(b"{\"type\":");
    write_u64(&mut o, ty as u64);
    o.extend_from_slice(b",\"routing\":");
    write_u64(&mut o, u64::from(routing));
    o.extend_from_slice(b",\"from\":");
    write_u64(&mut o, u64::from(from));
    o
}

pub(crate) fn num(o: &mut Vec<u8>, key: &str, v: u64) {
    o.push(b',');
    write_str(o, key.as_bytes());
    o.push(b':');
    write_u64(o, v);
}

pub(crate) fn text(o: &mut Vec<u8>, key: &str, v: &str) {
    o.push(b',');
    write_str(o, key.as_bytes());
    o.push(b':');
    write_str(o, v.as_bytes());
}

/// Where a hop-by-hop frame goes: a neighbour (`routing:0`) or a node further away
/// (`routing:1` with `dest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    Neighbour,
    Single(u32),
}

fn routed_head(ty: i32, from: u32, via: Via) -> Vec<u8> {
    match via {
        Via::Neighbour => head(ty, 0, from),
        Via::Single(dest) => {
            let mut o = head(ty, 1, from);
            num(&mut o, "dest", u64::from(dest));
            o
        }
    }
}

/// HELLO.
pub(crate) fn hello(from: u32) -> Vec<u8> {
    let mut o = head(HELLO, 0, from);
    num(&mut o, "v", u64::from(VERSION));
    o.push(b'}');
    o
}

/// A WANT frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Rollout.
    pub id: u32,
    /// Chunks the sender received on this link so far.
    pub n: u32,
    /// Chunks not to send (held already, or needed by nobody downstream).
    pub have: ChunkBitmap,
    /// A re-subscription (the sender held state before): what follows counts as repair.
    pub re: bool,
    /// Unsubscribe.
    pub stop: bool,
}

impl Want {
    pub(crate) fn to_json(&self, from: u32, via: Via) -> Vec<u8> {
        let mut o = routed_head(WANT, from, via);
        num(&mut o, "id", u64::from(self.id));
        num(&mut o, "n", u64::from(self.n));
        o.extend_from_slice(b",\"have\":\"");
        b85::encode_into(&self.have.to_bytes(), &mut o);
        o.push(b'"');
        if self.re {
            o.extend_from_slice(b",\"re\":1");
        }
        if self.stop {
            o.extend_from_slice(b",\"stop\":1");
        }
        o.push(b'}');
        o
    }

    pub(crate) fn from_envelope(env: &Envelope, count: u32) -> Option<Want> {
        let have = match env.get("have") {
            Some(Value::String(t)) => ChunkBitmap::from_bytes(count, &b85::decode(t).ok()?)?,
            _ => return None,
        };
        Some(Want {
            id: env.get("id")?.as_u32_strict()?,
            n: env.get("n")?.as_u32_strict()?,
            have,
            re: env.get("re").and_then(Value::as_u32_strict).unwrap_or(0) != 0,
            stop: env.get("stop").and_then(Value::as_u32_strict).unwrap_or(0) != 0,
        })
    }
}

/// A chunk compressor: raw DEFLATE of a chunk's image bytes (`codec::deflate_chunk`).
pub(crate) type Compressor = fn(&[u8]) -> Vec<u8>;

/// The CHUNK frame for chunk `index` whose image bytes are `data`: the payload is the raw
/// DEFLATE of `data` when `deflate` and that is smaller, else `data` itself.
#[cfg(test)]
pub(crate) fn encode_chunk(
    from: u32,
    via: Via,
    id: u32,
    index: u32,
    data: &[u8],
    deflate: bool,
) -> Vec<u8> {
    let compress = deflate.then_some(crate::codec::deflate_chunk as Compressor);
    encode_chunk_with(from, via, id, index, data, compress, true)
}

/// [`encode_chunk`] with the compressor given (None: the payload is `data` itself).
pub(crate) fn encode_chunk_with(
    from: u32,
    via: Via,
    id: u32,
    index: u32,
    data: &[u8],
    compress: Option<Compressor>,
    crc: bool,
) -> Vec<u8> {
    let crc = crc.then(|| crate::codec::crc32(data));
    if let Some(compress) = compress {
        let z = compress(data);
        if z.len() < data.len() {
            return chunk_frame(from, via, id, index, true, crc, &z);
        }
    }
    chunk_frame(from, via, id, index, false, crc, data)
}

/// The CHUNK frame (JSON, NUL excluded) node `from` sends a neighbour for chunk `index` of
/// rollout `id`, whose image bytes are `data` — byte for byte what the agent sends (a
/// `signed` rollout's chunks carry no CRC: their digest replaces it). For simulators and
/// benchmarks that need exact wire sizes.
pub fn neighbour_chunk_json(
    from: u32,
    id: u32,
    index: u32,
    data: &[u8],
    deflate: bool,
    signed: bool,
) -> Vec<u8> {
    let compress = deflate.then_some(crate::codec::deflate_chunk as Compressor);
    encode_chunk_with(from, Via::Neighbour, id, index, data, compress, !signed)
}

/// Builds a CHUNK frame around already-encoded payload bytes.
pub(crate) fn chunk_frame(
    from: u32,
    via: Via,
    id: u32,
    index: u32,
    deflated: bool,
    crc: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut o = routed_head(CHUNK, from, via);
    o.reserve(48 + b85::encoded_len(payload.len()));
    num(&mut o, "id", u64::from(id));
    num(&mut o, "i", u64::from(index));
    num(&mut o, "z", u64::from(deflated));
    if let Some(crc) = crc {
        num(&mut o, "crc", u64::from(crc));
    }
    o.extend_from_slice(b",\"d\":\"");
    b85::encode_into(payload, &mut o);
    o.extend_from_slice(b"\"}");
    o
}

/// A parsed CHUNK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkMsg {
    pub id: u32,
    pub index: u32,
    pub deflated: bool,
    /// CRC-32 of the image bytes; absent in signed rollouts (the chunk digest replaces it).
    pub crc: Option<u32>,
    pub payload: Vec<u8>,
}

impl ChunkMsg {
    pub(crate) fn from_envelope(env: &Envelope) -> Option<ChunkMsg> {
        let payload = match env.get("d") {
            Some(Value::String(t)) => b85::decode(t).ok()?,
            _ => return None,
        };
        Some(ChunkMsg {
            id: env.get("id")?.as_u32_strict()?,
            index: env.get("i")?.as_u32_strict()?,
            deflated: env.get("z")?.as_u32_strict()? != 0,
            crc: match env.get("crc") {
                None => None,
                Some(v) => Some(v.as_u32_strict()?),
            },
            payload,
        })
    }
}

/// One progress report: node, chunks held, phase (wire number).
pub type Report = (u32, u32, u32);

/// An ACK frame.
pub(crate) fn ack(from: u32, via: Via, id: u32, n: u32, reports: &[Report]) -> Vec<u8> {
    let mut o = routed_head(ACK, from, via);
    num(&mut o, "id", u64::from(id));
    num(&mut o, "n", u64::from(n));
    if !reports.is_empty() {
        o.extend_from_slice(b",\"p\":[");
        for (k, (node, done, phase)) in reports.iter().enumerate() {
            if k > 0 {
                o.push(b',');
            }
            o.push(b'[');
            write_u64(&mut o, u64::from(*node));
            o.push(b',');
            write_u64(&mut o, u64::from(*done));
            o.push(b',');
            write_u64(&mut o, u64::from(*phase));
            o.push(b']');
        }
        o.push(b']');
    }
    o.push(b'}');
    o
}

/// A parsed ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AckMsg {
    pub id: u32,
    pub n: u32,
    pub reports: Vec<Report>,
    /// Report entries skipped as malformed (counted by the caller).
    pub skipped: usize,
}

/// Parses an ACK: id, n, at most `max_reports` reports (malformed entries are skipped and
/// counted, as are entries beyond the limit).
pub(crate) fn parse_ack(env: &Envelope, max_reports: usize) -> Option<AckMsg> {
    let id = env.get("id")?.as_u32_strict()?;
    let n = env.get("n")?.as_u32_strict()?;
    let mut reports = Vec::new();
    let mut skipped = 0;
    if let Some(Value::Array(items)) = env.get("p") {
        skipped = items.len().saturating_sub(max_reports);
        for item in items.iter().take(max_reports) {
            if let Value::Array(f) = item
                && let [a, b, c] = f.as_slice()
                && let (Some(a), Some(b), Some(c)) =
                    (a.as_u32_strict(), b.as_u32_strict(), c.as_u32_strict())
                // No manifest has more chunks; phase numbers are one byte (100 + code).
                && b <= MAX_CHUNKS
                && c <= 0xFF
            {
                reports.push((a, b, c));
            } else {
                skipped += 1;
            }
        }
    }
    Some(AckMsg {
        id,
        n,
        reports,
        skipped,
    })
}

/// APPLY.
pub(crate) fn apply(from: u32, id: u32, at: u32) -> Vec<u8> {
    let mut o = head(APPLY, 2, from);
    num(&mut o, "id", u64::from(id));
    num(&mut o, "at", u64::from(at));
    o.push(b'}');
    o
}

/// CANCEL.
pub(crate) fn cancel(from: u32, id: u32) -> Vec<u8> {
    let mut o = head(CANCEL, 2, from);
    num(&mut o, "id", u64::from(id));
    o.push(b'}');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &[u8]) -> Envelope {
        Envelope::parse(json, 255).unwrap()
    }

    #[test]
    fn a_chunk_without_compressor_carries_the_image_bytes_and_says_so() {
        // What a `compact` target sends as a repair source for a compressed rollout: the
        // receiver reads `z` and takes the payload as image bytes.
        let data: Vec<u8> = core::iter::repeat_n(b"pmesh ".as_slice(), 700)
            .flatten()
            .copied()
            .collect();
        let raw = ChunkMsg::from_envelope(&parse(&encode_chunk_with(
            5,
            Via::Neighbour,
            9,
            3,
            &data,
            None,
            true,
        )))
        .unwrap();
        assert!(!raw.deflated);
        assert_eq!(raw.payload, data);
        let z =
            ChunkMsg::from_envelope(&parse(&encode_chunk(5, Via::Neighbour, 9, 3, &data, true)))
                .unwrap();
        assert!(z.deflated && z.payload.len() < data.len() / 10);
        assert_eq!(raw.crc, z.crc, "the CRC covers the image bytes either way");
    }

    #[test]
    fn manifest_roundtrip_and_checks() {
        let m = Manifest {
            from: 7,
            id: 99,
            size: 10_000,
            chunk: 4096,
            count: 3,
            spans: None,
            sha256: "a".repeat(64),
            version: "1.2.3".into(),
            role: "sensor".into(),
            hardware: "ESP32".into(),
            compression: Compression::Deflate,
            forced: false,
            coordinated: true,
            apply_at: Some(5),
            #[cfg(feature = "signature")]
            signed: None,
        };
        let json = m.to_json(2);
        let env = parse(&json);
        assert_eq!(env.ty, MANIFEST);
        assert_eq!(env.routing, pmesh_proto::Routing::Broadcast);
        assert_eq!(Manifest::from_envelope(&env).unwrap(), m);
        assert_eq!(m.chunk_range(2), (8192, 10_000 - 8192));
        let bad = String::from_utf8(json.clone())
            .unwrap()
            .replace("\"count\":3", "\"count\":4");
        assert_eq!(
            Manifest::from_envelope(&parse(bad.as_bytes())),
            Err(Refusal::BadOffer("count does not match size and chunk"))
        );
        let lz = String::from_utf8(json).unwrap().replace("deflate", "lz4");
        assert_eq!(
            Manifest::from_envelope(&parse(lz.as_bytes())),
            Err(Refusal::UnknownCompression("lz4".into()))
        );
    }

    #[test]
    fn manifest_with_spans() {
        // Chunks of 512, 32 KiB and the last 1,000 bytes.
        let spans = Spans::from_units(alloc::vec![1, 127, 3], 512 + 32_768 + 1000).unwrap();
        let m = Manifest {
            from: 7,
            id: 99,
            size: 512 + 32_768 + 1000,
            chunk: 32_768,
            count: 3,
            spans: Some(spans),
            sha256: "b".repeat(64),
            version: "2".into(),
            role: "sensor".into(),
            hardware: "ESP32".into(),
            compression: Compression::Deflate,
            forced: false,
            coordinated: false,
            apply_at: None,
            #[cfg(feature = "signature")]
            signed: None,
        };
        let json = m.to_json(2);
        assert_eq!(Manifest::from_envelope(&parse(&json)).unwrap(), m);
        assert_eq!(m.chunk_range(1), (512, 32_768));
        assert_eq!(m.chunk_range(2), (512 + 32_768, 1000));
        let text = String::from_utf8(json).unwrap();
        let short = text.replace("\"size\":34280", "\"size\":34000");
        assert_eq!(
            Manifest::from_envelope(&parse(short.as_bytes())),
            Err(Refusal::BadOffer("spans do not add up to the image size"))
        );
        let count = text.replace("\"count\":3", "\"count\":4");
        assert_eq!(
            Manifest::from_envelope(&parse(count.as_bytes())),
            Err(Refusal::BadOffer("count or chunk does not match the spans"))
        );
        let chunk = text.replace("\"chunk\":32768", "\"chunk\":4096");
        assert_eq!(
            Manifest::from_envelope(&parse(chunk.as_bytes())),
            Err(Refusal::BadOffer("count or chunk does not match the spans"))
        );
        // Not base85 (a 1-character tail cannot be).
        let at = text.find("\"spans\":\"").unwrap() + 9;
        let end = at + text[at..].find('"').unwrap();
        let junk = alloc::format!("{}a{}", &text[..at], &text[end..]);
        assert_eq!(
            Manifest::from_envelope(&parse(junk.as_bytes())),
            Err(Refusal::BadOffer("spans"))
        );
    }

    #[test]
    fn chunk_want_ack_roundtrip() {
        let f = chunk_frame(
            1,
            Via::Single(9),
            5,
            2,
            true,
            Some(0xdead_beef),
            b"\x00\x01payload\"\\",
        );
        assert!(!f.contains(&0));
        let env = parse(&f);
        assert_eq!((env.routing, env.dest), (pmesh_proto::Routing::Single, 9));
        let c = ChunkMsg::from_envelope(&env).unwrap();
        assert_eq!(
            (c.id, c.index, c.deflated, c.crc),
            (5, 2, true, Some(0xdead_beef))
        );
        assert_eq!(c.payload, b"\x00\x01payload\"\\");
        let mut have = ChunkBitmap::new(70);
        have.set(3);
        have.set(69);
        let w = Want {
            id: 5,
            n: 12,
            have,
            re: true,
            stop: false,
        };
        let env = parse(&w.to_json(4, Via::Neighbour));
        assert_eq!(env.routing, pmesh_proto::Routing::Neighbour);
        assert_eq!(Want::from_envelope(&env, 70), Some(w));
        let a = ack(4, Via::Neighbour, 5, 12, &[(4, 10, 0), (8, 70, 1)]);
        assert_eq!(
            parse_ack(&parse(&a), 100),
            Some(AckMsg {
                id: 5,
                n: 12,
                reports: alloc::vec![(4, 10, 0), (8, 70, 1)],
                skipped: 0
            })
        );
        // More chunks than a manifest may have, a phase beyond a byte, not a triple.
        let bad = ack(
            4,
            Via::Neighbour,
            5,
            12,
            &[(4, MAX_CHUNKS + 1, 0), (8, 70, 256), (9, 1, 0)],
        );
        let text = String::from_utf8(bad).unwrap().replace("[9,1,0]", "[9,1]");
        let got = parse_ack(&parse(text.as_bytes()), 100).unwrap();
        assert_eq!((got.reports.len(), got.skipped), (0, 3));
        let many: Vec<Report> = (0..10).map(|i| (i, 1, 0)).collect();
        let got = parse_ack(&parse(&ack(4, Via::Neighbour, 5, 12, &many)), 4).unwrap();
        assert_eq!((got.reports.len(), got.skipped), (4, 6));
        assert_eq!(FrameKind::of_type(713), Some(FrameKind::Chunk));
        assert!(FrameKind::Chunk.is_data() && !FrameKind::Ack.is_data());
    }
}
