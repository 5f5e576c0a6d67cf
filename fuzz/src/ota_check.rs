//! Invariants of the OTA frame decoders and writers, checked on a frame outside any node:
//! classic Announce/DataRequest/Data (`pmesh_proto::ota`) and pmesh MANIFEST
//! (`pmesh_ota::pmesh::wire`), with its chunk layout (`spans.rs`) and base85 (`b85.rs`).

use pmesh_ota::b85;
use pmesh_ota::pmesh::wire::{MAX_CHUNKS, Manifest};
use pmesh_proto::json::Value;
use pmesh_proto::message::types;
use pmesh_proto::ota::{Announce, Data, DataRequest};
use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope, Routing};

/// Checks one frame's JSON (NUL excluded) if it is an OTA frame:
/// - classic frames decode, write, and decode again to the same message; the writer's output
///   is a fixed point (the writers are byte-exact to the reference);
/// - a MANIFEST that passes its checks writes out and reads back to the same manifest, its
///   chunk ranges tile the image exactly (contiguous, none empty, none over `chunk`), and its
///   count and chunk size are within the protocol's limits;
/// - base85 fields that decode re-encode to bytes that decode the same.
pub fn check_frame(json: &[u8]) {
    let Ok(env) = Envelope::parse(json, DEFAULT_MAX_DEPTH) else {
        return;
    };
    match env.ty {
        types::OTA_ANNOUNCE => {
            let a = Announce::from_envelope(&env);
            round_trip(&a.to_json(), Announce::from_envelope, &a);
        }
        types::OTA_DATA_REQUEST => {
            let r = DataRequest::from_envelope(&env);
            round_trip(&r.to_json(), DataRequest::from_envelope, &r);
        }
        types::OTA_DATA => {
            let d = Data::from_envelope(&env);
            round_trip(&d.to_json(), Data::from_envelope, &d);
            let _ = d.decode_data();
        }
        711 => check_manifest(&env),
        _ => {}
    }
    for key in ["have", "d", "spans"] {
        if let Some(Value::String(text)) = env.get(key)
            && let Ok(bytes) = b85::decode(text)
        {
            let again = b85::encode(&bytes);
            assert_eq!(b85::decode(&again).ok(), Some(bytes), "base85 round trip");
        }
    }
}

fn round_trip<T: PartialEq + std::fmt::Debug>(
    written: &[u8],
    decode: impl Fn(&Envelope) -> T,
    original: &T,
) {
    let env = Envelope::parse(written, DEFAULT_MAX_DEPTH).unwrap_or_else(|e| {
        panic!(
            "OTA writer output rejected ({e}): {}",
            String::from_utf8_lossy(written)
        )
    });
    let back = decode(&env);
    assert_eq!(&back, original, "OTA frame round trip");
}

fn check_manifest(env: &Envelope) {
    let Ok(m) = Manifest::from_envelope(env) else {
        return;
    };
    assert!(m.count >= 1 && m.count <= MAX_CHUNKS, "count {}", m.count);
    assert!(m.size >= 1);
    for routing in [0u8, 2] {
        let written = m.to_json(routing);
        let env = Envelope::parse(&written, DEFAULT_MAX_DEPTH).expect("manifest writer output");
        let expected = if routing == 0 {
            Routing::Neighbour
        } else {
            Routing::Broadcast
        };
        assert_eq!(env.routing, expected);
        let back = Manifest::from_envelope(&env).expect("written manifest refused");
        assert_eq!(back, m, "manifest round trip");
        assert_eq!(
            back.to_json(routing),
            written,
            "manifest writer not a fixed point"
        );
    }
    // The chunk layout tiles the image: check every chunk of small images, the ends and a
    // stride of large ones.
    let stride = (m.count / 4096).max(1);
    let mut expected_start = 0u64;
    let mut i = 0;
    while i < m.count {
        let (start, len) = m.chunk_range(i);
        if stride == 1 {
            assert_eq!(
                start,
                expected_start,
                "chunk {i} does not follow chunk {}",
                i.wrapping_sub(1)
            );
        }
        assert!(len >= 1, "chunk {i} empty");
        assert!(
            len as u64 <= u64::from(m.chunk),
            "chunk {i}: {len} bytes over {}",
            m.chunk
        );
        assert!(start + len as u64 <= m.size, "chunk {i} past the image end");
        expected_start = start + len as u64;
        i += if i + 1 == m.count || i + stride >= m.count {
            1
        } else {
            stride
        };
    }
    let (last_start, last_len) = m.chunk_range(m.count - 1);
    assert_eq!(
        last_start + last_len as u64,
        m.size,
        "chunks do not end with the image"
    );
}
