//! Signed manifests and bundles (feature `signature`): round trips, every refusal reason, and
//! bit flips — every single-bit flip of a small bundle is refused, and a random sample of
//! flips in a large one.

use pmesh_ota::signed::bundle::BundleSpec;
use pmesh_ota::signed::{
    Bundle, DigestPage, Policy, SignedManifest, SigningKey, TrustError, TrustedKey,
};

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

fn image(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn spec(sequence: u64, chunk_size: u32) -> BundleSpec<'static> {
    BundleSpec {
        role: "sensor",
        hardware: "ESP32",
        version: "1.2.3",
        sequence,
        chunk_size,
        compressed: false,
        expires: Some(2_000_000_000),
    }
}

fn policy(confirmed: Option<u64>) -> Policy<'static> {
    Policy {
        role: "sensor",
        hardware: "ESP32",
        confirmed,
        now_unix: Some(1_800_000_000),
    }
}

#[test]
fn a_bundle_round_trips_and_verifies() {
    let k = key(1);
    let img = image(10_000, 1);
    let bytes = Bundle::build(&k, &img, &spec(7, 1024)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    assert_eq!(b.image(), &img[..]);
    let m = &b.manifest.body;
    assert_eq!(
        (m.sequence, m.size, m.chunk_count, m.chunk_size),
        (7, 10_000, 10, 1024)
    );
    assert_eq!(m.page_count(), 1);
    assert_eq!(
        b.verify(&[k.public()], Some(1_800_000_000)).unwrap(),
        &k.public()
    );
    policy(Some(7)).check(m).unwrap();
    // The manifest re-decodes to the same bytes (canonical).
    let (again, used) = SignedManifest::decode(&bytes).unwrap();
    assert_eq!(again, b.manifest);
    assert_eq!(used, b.manifest.bytes.len());
    assert!(used <= pmesh_ota::signed::manifest::MAX_MANIFEST_BYTES);
}

#[test]
fn every_refusal_reason_is_typed() {
    let k = key(1);
    let bytes = Bundle::build(&k, &image(5000, 2), &spec(5, 1024)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    let m = &b.manifest.body;
    let err = b.verify(&[key(2).public()], None).unwrap_err();
    assert_eq!(err, TrustError::UnknownKey(k.public().id()));
    assert_eq!(err.code(), "unknown_key");
    // Another key's bytes under this key's id: the signature cannot match.
    let mut forged = bytes.clone();
    let sig_at = b.manifest.bytes.len() - 1;
    forged[sig_at] ^= 1;
    assert_eq!(
        Bundle::parse(&forged).unwrap().verify(&[k.public()], None),
        Err(TrustError::BadSignature)
    );
    assert_eq!(
        policy(Some(6)).check(m),
        Err(TrustError::Rollback {
            offered: 5,
            confirmed: 6
        })
    );
    let late = Policy {
        now_unix: Some(2_000_000_001),
        ..policy(None)
    };
    assert_eq!(
        late.check(m),
        Err(TrustError::Expired {
            expires: 2_000_000_000,
            now: 2_000_000_001
        })
    );
    assert_eq!(
        b.verify(&[k.public()], Some(2_000_000_001))
            .unwrap_err()
            .code(),
        "expired"
    );
    let other = Policy {
        role: "relay",
        ..policy(None)
    };
    assert_eq!(other.check(m).unwrap_err().code(), "wrong_class");
    let hw = Policy {
        hardware: "ESP8266",
        ..policy(None)
    };
    assert_eq!(hw.check(m).unwrap_err().code(), "wrong_class");
}

#[test]
fn digest_pages_verify_against_the_root_and_check_chunks() {
    let k = key(3);
    // 100 chunks: 4 pages (32, 32, 32, 4).
    let img = image(100 * 256 - 17, 3);
    let bytes = Bundle::build(&k, &img, &spec(1, 256)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    let m = &b.manifest.body;
    assert_eq!(m.page_count(), 4);
    for p in 0..4 {
        let page = DigestPage::verify(m, p, b.page(p), &b.page_proof(p)).unwrap();
        assert_eq!(page.digests.len(), if p == 3 { 4 } else { 32 });
        for i in page.first..page.first + page.digests.len() as u32 {
            page.check_chunk(i, b.chunk(i)).unwrap();
            let mut bad = b.chunk(i).to_vec();
            bad[0] ^= 0x80;
            assert_eq!(
                page.check_chunk(i, &bad),
                Err(TrustError::BadChunk { index: i })
            );
        }
        // Not this page's chunk, even with the right bytes.
        let outside = (page.first + 32) % 100;
        assert!(page.check_chunk(outside, b.chunk(outside)).is_err());
        // A page at another position, a wrong proof, a truncated page: refused.
        let other = (p + 1) % 4;
        assert_eq!(
            DigestPage::verify(m, other, b.page(p), &b.page_proof(p)),
            Err(TrustError::BadPage { page: other })
        );
        assert!(DigestPage::verify(m, p, b.page(p), &b.page_proof(other)).is_err() || p == other);
        assert!(DigestPage::verify(m, p, &b.page(p)[32..], &b.page_proof(p)).is_err());
    }
    assert!(DigestPage::verify(m, 4, b.page(3), &b.page_proof(3)).is_err());
}

#[test]
fn keys_round_trip_through_text() {
    let k = key(9);
    let again = SigningKey::from_text(&k.to_text()).unwrap();
    assert_eq!(again.public(), k.public());
    let line = k.public().to_text();
    assert!(line.starts_with("pmesh-ed25519-pub ") && !line.contains('\n'));
    assert_eq!(
        TrustedKey::from_text(&format!("  {line}\n")).unwrap(),
        k.public()
    );
    assert!(TrustedKey::from_text("pmesh-ed25519-pub 00").is_err());
    assert!(TrustedKey::from_text(&k.to_text()).is_err());
}

#[test]
fn malformed_manifests_are_refused_without_panicking() {
    let k = key(1);
    let bytes = Bundle::build(&k, &image(3000, 4), &spec(1, 1024)).unwrap();
    let mlen = Bundle::parse(&bytes).unwrap().manifest.bytes.len();
    for cut in 0..mlen {
        assert!(
            SignedManifest::decode(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // The bundle must be exactly manifest + digests + image.
    assert!(Bundle::parse(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Bundle::parse(&longer).is_err());
    // A signer cannot make what a decoder refuses.
    let bad = BundleSpec {
        chunk_size: 100,
        ..spec(1, 1024)
    };
    assert!(Bundle::build(&k, &image(3000, 4), &bad).is_err());
    assert!(Bundle::build(&k, &[], &spec(1, 1024)).is_err());
}

/// Every way a flipped bundle may be refused, from parsing to the last check.
fn refused(bytes: &[u8], keys: &[TrustedKey]) -> bool {
    Bundle::parse(bytes)
        .and_then(|b| b.verify(keys, None).map(|_| ()))
        .is_err()
}

#[test]
fn every_single_bit_flip_of_a_small_bundle_is_refused() {
    let k = key(5);
    let keys = [k.public()];
    // 3 KiB image in 256-byte chunks: 12 chunks, 1 page; the bundle is ~3.5 KiB.
    let bytes = Bundle::build(&k, &image(3 * 1024, 5), &spec(3, 256)).unwrap();
    assert!(!refused(&bytes, &keys));
    let mut flipped = bytes.clone();
    for bit in 0..bytes.len() * 8 {
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(refused(&flipped, &keys), "flip of bit {bit} accepted");
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
}

#[test]
fn a_random_sample_of_flips_in_a_large_bundle_is_refused() {
    let k = key(6);
    let keys = [k.public()];
    // 1 MiB in 4 KiB chunks: 256 chunks, 8 pages.
    let bytes = Bundle::build(&k, &image(1 << 20, 6), &spec(9, 4096)).unwrap();
    assert!(!refused(&bytes, &keys));
    let mlen = Bundle::parse(&bytes).unwrap().manifest.bytes.len();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut flipped = bytes.clone();
    // Every bit of the manifest, then 200 random bits anywhere.
    let random = (0..200).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (bytes.len() as u64 * 8)) as usize
    });
    for bit in (0..mlen * 8).chain(random) {
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(refused(&flipped, &keys), "flip of bit {bit} accepted");
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
}

/// Firmware-like bytes that deflate well (runs, tables, text) between noisy stretches.
fn compressible(len: usize, seed: u32) -> Vec<u8> {
    let noise = image(len, seed);
    (0..len)
        .map(|i| match (i / 700) % 3 {
            0 => noise[i],
            1 => 0,
            _ => b"mesh node "[i % 10],
        })
        .collect()
}

fn compressed_spec(sequence: u64, chunk_size: u32) -> BundleSpec<'static> {
    BundleSpec {
        compressed: true,
        ..spec(sequence, chunk_size)
    }
}

#[test]
fn a_compressed_bundle_signs_its_span_table_and_digests_image_bytes() {
    let k = key(8);
    let img = compressible(60_000, 8);
    let bytes = Bundle::build(&k, &img, &compressed_spec(4, 1024)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    b.verify(&[k.public()], None).unwrap();
    let m = &b.manifest.body;
    let spans = b.spans().expect("a span table");
    assert!(m.compression.is_deflate());
    assert_eq!(
        (spans.count(), spans.max_len()),
        (m.chunk_count, m.chunk_size)
    );
    // Spans are longer than the DEFLATE target where the image compresses, so fewer chunks
    // than fixed 1 KiB ones; each chunk's digest covers its image bytes.
    assert!(m.chunk_count < 60, "{} chunks", m.chunk_count);
    let mut joined = Vec::new();
    for i in 0..m.chunk_count {
        let c = b.chunk(i);
        assert_eq!(pmesh_ota::signed::chunk_digest(c), b.digest(i));
        joined.extend_from_slice(c);
    }
    assert_eq!(joined, img);
    assert!(b.manifest.bytes.len() <= pmesh_ota::signed::manifest::MAX_MANIFEST_BYTES);
    // The offer follows the bundle: compressed, pmesh.
    let o = pmesh_ota::Offer::from_bundle(&bytes, &[k.public()], None).unwrap();
    assert!(o.compressed && o.protocol == pmesh_ota::Protocol::Pmesh);
}

#[test]
fn a_compressed_bundle_with_another_span_table_is_refused() {
    let k = key(9);
    let img = compressible(20_000, 9);
    let bytes = Bundle::build(&k, &img, &compressed_spec(1, 512)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    let at = b.manifest.bytes.len();
    let count = b.manifest.body.chunk_count as usize;
    assert!(count >= 3, "{count} spans");
    // Move one unit from the first span to the second: still adds up to the image.
    let mut moved = bytes.clone();
    let (first, second) = (moved[at], moved[at + 1]);
    if first > 0 {
        moved[at] = first - 1;
        moved[at + 1] = second + 1;
    } else {
        moved[at] = first + 1;
        moved[at + 1] = second - 1;
    }
    let err = Bundle::parse(&moved).unwrap_err();
    assert_eq!(err.code(), "malformed", "{err}");
}

#[test]
fn every_single_bit_flip_of_a_small_compressed_bundle_is_refused() {
    let k = key(10);
    let keys = [k.public()];
    // 6 KiB in spans deflating to at most 256 bytes: a span table, one digest page.
    let bytes = Bundle::build(&k, &compressible(6 * 1024, 10), &compressed_spec(3, 256)).unwrap();
    let b = Bundle::parse(&bytes).unwrap();
    assert!(b.manifest.body.chunk_count >= 3);
    assert!(!refused(&bytes, &keys));
    let mut flipped = bytes.clone();
    for bit in 0..bytes.len() * 8 {
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(refused(&flipped, &keys), "flip of bit {bit} accepted");
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
}
