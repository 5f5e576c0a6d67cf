//! Signed rollouts on the in-memory mesh with a malicious relay: a chain gateway (0) →
//! relay (1, whose outgoing frames the test rewrites) → honest node (2) → honest node (3).
//! The relay rewrites chunks, replays an older signed manifest, forges one, and injects one
//! signed by an untrusted key. Nothing untrusted is committed, the poison stops at node 2
//! (its counters say so, node 3's stay zero), and honest nodes complete where they can.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{Mesh, Spec, Tamper, firmware, frame_type};
use pmesh_ota::pmesh::TrustConfig;
use pmesh_ota::signed::bundle::BundleSpec;
use pmesh_ota::signed::{Bundle, SigningKey};
use pmesh_ota::{Offer, OtaConfig, OtaEvent, OtaStore, Refusal};
use pmesh_proto::Envelope;

const MIN: u64 = 60_000_000;

fn fleet() -> SigningKey {
    SigningKey::from_seed([42; 32])
}

fn cfg(role: &str) -> OtaConfig {
    let mut c = OtaConfig::new(role, "ESP32");
    c.trust = TrustConfig {
        keys: vec![fleet().public()],
        allow_unsigned: false,
        wall_clock: None,
    };
    c
}

fn bundle(key: &SigningKey, image: &[u8], sequence: u64) -> Vec<u8> {
    let spec = BundleSpec {
        role: "sensor",
        hardware: "ESP32",
        version: "v",
        sequence,
        chunk_size: 1024,
        compressed: false,
        expires: None,
    };
    Bundle::build(key, image, &spec).unwrap()
}

/// Frames in flight from node 1 to node 2 go through `f` (one frame at a time, without NUL).
type Rewrite = Rc<RefCell<dyn FnMut(&[u8]) -> Vec<Vec<u8>>>>;

struct Chain {
    mesh: Mesh,
    /// Frames node 3 received, by type.
    seen_by_3: Rc<RefCell<Vec<Vec<u8>>>>,
}

fn chain(rewrite: Rewrite) -> Chain {
    let mut specs = vec![Spec::new(100, cfg("gateway")), Spec::new(101, cfg("relay"))];
    specs.push(Spec::new(102, cfg("sensor")));
    specs.push(Spec::new(103, cfg("sensor")));
    specs[0].root = true;
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    let seen_by_3 = Rc::new(RefCell::new(Vec::new()));
    let seen = seen_by_3.clone();
    mesh.tamper = Some(Box::new(move |from, to, data| {
        if to == 3 {
            seen.borrow_mut().extend(
                data.split(|&b| b == 0)
                    .filter(|f| !f.is_empty())
                    .map(<[u8]>::to_vec),
            );
        }
        if from != 1 || to != 2 {
            return Tamper::Pass;
        }
        let mut out = Vec::new();
        for frame in data.split(|&b| b == 0).filter(|f| !f.is_empty()) {
            for f in (rewrite.borrow_mut())(frame) {
                out.extend_from_slice(&f);
                out.push(0);
            }
        }
        Tamper::Replace(out)
    }));
    mesh.run_for(30.0);
    Chain { mesh, seen_by_3 }
}

fn offer(mesh: &mut Mesh, bytes: &[u8]) {
    let o = Offer::from_bundle(bytes, &[fleet().public()], None).unwrap();
    mesh.with(0, |ota, ctx| ota.offer(ctx, o)).unwrap();
}

fn stats(mesh: &mut Mesh, i: usize) -> pmesh_ota::pmesh::PmeshStats {
    mesh.with(i, |ota, _| ota.pmesh().stats())
}

/// A CHUNK frame with one payload byte changed. Signed chunks carry no CRC (their digest
/// replaces it), so only the digest can tell.
fn poison_chunk(frame: &[u8]) -> Vec<u8> {
    let env = Envelope::parse(frame, 64).unwrap();
    assert!(env.get("crc").is_none(), "a signed chunk with a CRC");
    let Some(pmesh_proto::json::Value::String(d)) = env.get("d") else {
        panic!("no d")
    };
    let mut payload = pmesh_ota::b85::decode(d).unwrap();
    payload[0] ^= 0x5a;
    let text = String::from_utf8(frame.to_vec()).unwrap();
    let d_old = String::from_utf8(d.clone()).unwrap();
    let d_new = String::from_utf8(pmesh_ota::b85::encode(&payload)).unwrap();
    text.replace(&d_old, &d_new).into_bytes()
}

fn is_type(frame: &[u8], ty: i32) -> bool {
    frame_type(frame) == Some(ty)
}

fn installed_sha(mesh: &Mesh, i: usize) -> Option<String> {
    mesh.events[i].iter().find_map(|e| match e {
        OtaEvent::Installed { image, .. } => Some(image.sha256.clone()),
        _ => None,
    })
}

#[test]
fn rewritten_chunks_stop_at_the_first_honest_hop_and_are_fetched_again() {
    // The relay rewrites the first copy of every chunk it passes on (a CRC-valid rewrite).
    let mut passed: Vec<u32> = Vec::new();
    let rewrite: Rewrite = Rc::new(RefCell::new(move |f: &[u8]| {
        if !is_type(f, 713) {
            return vec![f.to_vec()];
        }
        let i = Envelope::parse(f, 64)
            .unwrap()
            .get("i")
            .and_then(|v| v.as_u32_strict())
            .unwrap();
        if passed.contains(&i) {
            return vec![f.to_vec()];
        }
        passed.push(i);
        vec![poison_chunk(f)]
    }));
    let mut c = chain(rewrite);
    let image = firmware(40_000, 7); // 40 chunks of 1 KiB, 2 digest pages
    offer(&mut c.mesh, &bundle(&fleet(), &image, 5));
    let done = c
        .mesh
        .run_until(c.mesh.now + 10 * MIN, |m| m.installed(2) && m.installed(3));
    let expected = pmesh_ota::codec::sha256_hex(&image);
    assert!(
        done,
        "node 2 {:?}, node 3 {:?}",
        stats(&mut c.mesh, 2),
        stats(&mut c.mesh, 3)
    );
    assert_eq!(
        installed_sha(&c.mesh, 2).as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(
        installed_sha(&c.mesh, 3).as_deref(),
        Some(expected.as_str())
    );
    let (s2, s3) = (stats(&mut c.mesh, 2), stats(&mut c.mesh, 3));
    eprintln!("node 2 {s2:?}\nnode 3 {s3:?}");
    assert!(
        s2.bad_digests >= 40,
        "every first copy refused at node 2: {s2:?}"
    );
    assert_eq!(
        s3.bad_digests, 0,
        "nothing poisoned went past node 2: {s3:?}"
    );
    assert_eq!(
        (s2.corrupt, s3.corrupt),
        (0, 0),
        "nothing reached the length check: the digest refused them first"
    );
    // Anti-rollback counter moved on commit and survives a restart.
    assert_eq!(
        c.mesh.stores[2].confirmed_sequence("sensor", "ESP32"),
        Some(5)
    );
}

#[test]
fn replayed_forged_and_untrusted_manifests_are_refused_and_not_relayed() {
    let image = firmware(20_000, 8);
    let old = bundle(&fleet(), &firmware(20_000, 9), 3);
    let rogue = bundle(&SigningKey::from_seed([66; 32]), &firmware(20_000, 10), 9);
    let inject: Rc<RefCell<Vec<Vec<u8>>>> = Rc::new(RefCell::new(Vec::new()));
    let queued = inject.clone();
    let rewrite: Rewrite = Rc::new(RefCell::new(move |f: &[u8]| {
        let mut out = vec![f.to_vec()];
        out.append(&mut queued.borrow_mut());
        out
    }));
    let mut c = chain(rewrite);
    offer(&mut c.mesh, &bundle(&fleet(), &image, 5));
    assert!(
        c.mesh
            .run_until(c.mesh.now + 5 * MIN, |m| m.installed(2) && m.installed(3))
    );

    // Manifests as the relay would send them: the gateway's own manifest of each bundle,
    // flooded with a new rollout id.
    let manifest_of = |bytes: &[u8], id: u32, edit: &dyn Fn(String) -> String| {
        let o = Offer::from_bundle(
            bytes,
            &[fleet().public(), SigningKey::from_seed([66; 32]).public()],
            None,
        )
        .unwrap();
        let mut m = Mesh::new(vec![Spec::new(100, OtaConfig::new("gateway", "ESP32"))]);
        m.with(0, |ota, ctx| ota.offer(ctx, o)).unwrap();
        let json = m.with(0, |ota, _| ota.pmesh().manifest_json()).unwrap();
        let text = String::from_utf8(json).unwrap();
        let text = text.replacen(
            &format!("\"id\":{}", serde_id(&text)),
            &format!("\"id\":{id}"),
            1,
        );
        edit(text).into_bytes()
    };
    let replayed = manifest_of(&old, 7001, &|t| t);
    let forged = manifest_of(&bundle(&fleet(), &image, 6), 7002, &|t| {
        // Another image's hash in the JSON, the signed bytes unchanged.
        let at = t.find("\"sha256\":\"").unwrap() + 10;
        format!("{}{}{}", &t[..at], "0".repeat(64), &t[at + 64..])
    });
    let untrusted = manifest_of(&rogue, 7003, &|t| t);
    let unsigned = {
        let t = String::from_utf8(manifest_of(&old, 7004, &|t| t)).unwrap();
        let cut = t.find(",\"sm\":").unwrap();
        format!("{}}}", &t[..cut]).into_bytes()
    };
    let before = stats(&mut c.mesh, 2).untrusted;
    for m in [&replayed, &forged, &untrusted, &unsigned] {
        inject.borrow_mut().push(m.clone());
        // Any frame from 1 to 2 carries the injection: make one (a HELLO after a re-sync).
        c.mesh.run_for(70.0);
    }
    let s2 = stats(&mut c.mesh, 2);
    assert!(s2.untrusted >= before + 4, "{s2:?}");
    let codes: Vec<&str> = c.mesh.events[2]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Refused {
                id,
                reason: Refusal::Untrusted { code, .. },
            } if id.id >= 7001 => Some(*code),
            _ => None,
        })
        .collect();
    for code in ["rollback", "malformed", "unknown_key", "unsigned"] {
        assert!(codes.contains(&code), "{code} not among {codes:?}");
    }
    // None of them reached node 3, nothing else was installed anywhere.
    for id in 7001..=7004 {
        let needle = format!("\"id\":{id},");
        assert!(
            !c.seen_by_3
                .borrow()
                .iter()
                .any(|f| String::from_utf8_lossy(f).contains(&needle)),
            "rollout {id} reached node 3"
        );
    }
    for i in 1..4 {
        let installs = c.mesh.events[i]
            .iter()
            .filter(|e| matches!(e, OtaEvent::Installed { .. }))
            .count();
        assert!(installs <= 1, "node {i} installed {installs} images");
    }
    assert_eq!(
        installed_sha(&c.mesh, 2),
        Some(pmesh_ota::codec::sha256_hex(&image))
    );
}

fn serde_id(text: &str) -> u32 {
    let at = text.find("\"id\":").unwrap() + 5;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn compressed_bundle(key: &SigningKey, image: &[u8], sequence: u64) -> Vec<u8> {
    let spec = BundleSpec {
        role: "sensor",
        hardware: "ESP32",
        version: "z",
        sequence,
        chunk_size: 512,
        compressed: true,
        expires: None,
    };
    Bundle::build(key, image, &spec).unwrap()
}

/// A CHUNK of a compressed rollout rewritten as a raw chunk of other image bytes (one byte
/// changed) that inflates (trivially) to the span's length: only the digest over the image
/// bytes can tell.
fn poison_compressed_chunk(frame: &[u8], span_len: &dyn Fn(u32) -> usize) -> Vec<u8> {
    let env = Envelope::parse(frame, 64).unwrap();
    assert!(env.get("crc").is_none(), "a signed chunk with a CRC");
    let num = |k| env.get(k).and_then(|v| v.as_u32_strict()).unwrap();
    let Some(pmesh_proto::json::Value::String(d)) = env.get("d") else {
        panic!("no d")
    };
    let payload = pmesh_ota::b85::decode(d).unwrap();
    let mut bytes = if num("z") == 1 {
        pmesh_ota::codec::inflate_chunk(&payload, span_len(num("i"))).unwrap()
    } else {
        payload
    };
    bytes[0] ^= 0x5a;
    let text = String::from_utf8(frame.to_vec()).unwrap();
    let d_old = String::from_utf8(d.clone()).unwrap();
    let d_new = String::from_utf8(pmesh_ota::b85::encode(&bytes)).unwrap();
    text.replace(&format!("\"z\":{},", num("z")), "\"z\":0,")
        .replace(&d_old, &d_new)
        .into_bytes()
}

#[test]
fn a_compressed_signed_rollout_completes_and_rewritten_chunks_stop_at_the_first_honest_hop() {
    let image = firmware(48_000, 11);
    let bytes = compressed_bundle(&fleet(), &image, 5);
    let spans = Bundle::parse(&bytes).unwrap().spans().unwrap().clone();
    let count = spans.count();
    let mut passed: Vec<u32> = Vec::new();
    let rewrite: Rewrite = Rc::new(RefCell::new(move |f: &[u8]| {
        if !is_type(f, 713) {
            return vec![f.to_vec()];
        }
        let i = Envelope::parse(f, 64)
            .unwrap()
            .get("i")
            .and_then(|v| v.as_u32_strict())
            .unwrap();
        if passed.contains(&i) {
            return vec![f.to_vec()];
        }
        passed.push(i);
        vec![poison_compressed_chunk(f, &|i| spans.range(i).1)]
    }));
    let mut c = chain(rewrite);
    offer(&mut c.mesh, &bytes);
    let done = c
        .mesh
        .run_until(c.mesh.now + 10 * MIN, |m| m.installed(2) && m.installed(3));
    let (s2, s3) = (stats(&mut c.mesh, 2), stats(&mut c.mesh, 3));
    assert!(done, "node 2 {s2:?}, node 3 {s3:?}");
    let expected = pmesh_ota::codec::sha256_hex(&image);
    for i in [2, 3] {
        assert_eq!(
            installed_sha(&c.mesh, i).as_deref(),
            Some(expected.as_str())
        );
    }
    // Chunks travelled deflated: the rollout is the compressed one.
    let deflated = c
        .seen_by_3
        .borrow()
        .iter()
        .any(|f| is_type(f, 713) && String::from_utf8_lossy(f).contains("\"z\":1"));
    assert!(deflated, "no deflated chunk reached node 3");
    assert!(
        s2.bad_digests >= u64::from(count),
        "every first copy refused at node 2: {s2:?}"
    );
    assert_eq!(
        s3.bad_digests, 0,
        "nothing poisoned went past node 2: {s3:?}"
    );
    assert_eq!(
        (s2.corrupt, s3.corrupt),
        (0, 0),
        "the digest refused them first"
    );
    assert_eq!(
        c.mesh.stores[3].confirmed_sequence("sensor", "ESP32"),
        Some(5)
    );
}

#[test]
fn a_rewritten_span_table_is_refused_and_not_relayed() {
    // The relay moves one unit between the first two spans of every MANIFEST it passes on:
    // the table still adds up to the image, but is not the one the signer hashed.
    let rewrite: Rewrite = Rc::new(RefCell::new(move |f: &[u8]| {
        if !is_type(f, 711) {
            return vec![f.to_vec()];
        }
        let text = String::from_utf8(f.to_vec()).unwrap();
        let at = text.find("\"spans\":\"").unwrap() + 9;
        let end = at + text[at..].find('"').unwrap();
        let mut units = pmesh_ota::b85::decode(&text.as_bytes()[at..end]).unwrap();
        if units[0] > 0 {
            units[0] -= 1;
            units[1] += 1;
        } else {
            units[0] += 1;
            units[1] -= 1;
        }
        let table = String::from_utf8(pmesh_ota::b85::encode(&units)).unwrap();
        vec![format!("{}{table}{}", &text[..at], &text[end..]).into_bytes()]
    }));
    let mut c = chain(rewrite);
    let image = firmware(30_000, 12);
    offer(&mut c.mesh, &compressed_bundle(&fleet(), &image, 5));
    c.mesh.run_for(120.0);
    let s2 = stats(&mut c.mesh, 2);
    assert!(s2.untrusted >= 1, "{s2:?}");
    let codes: Vec<&str> = c.mesh.events[2]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Refused {
                reason: Refusal::Untrusted { code, .. },
                ..
            } => Some(*code),
            _ => None,
        })
        .collect();
    assert!(codes.contains(&"malformed"), "{codes:?}");
    assert!(
        !c.seen_by_3.borrow().iter().any(|f| is_type(f, 711)),
        "a manifest reached node 3"
    );
    assert!(
        c.mesh.with(1, |ota, _| ota.pmesh().status()).is_some(),
        "the relay itself took the honest manifest"
    );
    assert!(!c.mesh.installed(2) && !c.mesh.installed(3));
}

#[test]
fn a_node_without_keys_checks_signed_chunks_for_integrity_but_never_moves_its_counter() {
    // Signed chunks carry no CRC: a node with no key that allows unsigned firmware checks them
    // against the manifest's digests (unverified root: integrity, not trust).
    let mut open = OtaConfig::new("sensor", "ESP32");
    open.trust = TrustConfig {
        keys: vec![],
        allow_unsigned: true,
        wall_clock: None,
    };
    let mut specs = vec![Spec::new(100, cfg("gateway")), Spec::new(101, open)];
    specs[0].root = true;
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    let image = firmware(30_000, 13);
    offer(&mut mesh, &compressed_bundle(&fleet(), &image, 8));
    assert!(mesh.run_until(mesh.now + 5 * MIN, |m| m.installed(1)));
    assert_eq!(
        installed_sha(&mesh, 1),
        Some(pmesh_ota::codec::sha256_hex(&image))
    );
    assert_eq!(mesh.stores[1].confirmed_sequence("sensor", "ESP32"), None);
    let s1 = stats(&mut mesh, 1);
    assert_eq!(
        (s1.bad_digests, s1.corrupt, s1.untrusted),
        (0, 0, 0),
        "{s1:?}"
    );
}

#[test]
fn a_node_with_a_trusted_key_refuses_classic_ota_once_and_counts_it() {
    // Gateway (no key, offers a plain classic image) → node 1 (trusted key) → node 2 (no key):
    // node 2 installs the classic image, node 1 refuses it, once, named and counted.
    let mut open = OtaConfig::new("sensor", "ESP32");
    open.trust = TrustConfig {
        keys: vec![],
        allow_unsigned: true,
        wall_clock: None,
    };
    let mut specs = vec![
        Spec::new(100, OtaConfig::new("gateway", "ESP32")),
        Spec::new(101, cfg("sensor")),
        Spec::new(102, open),
    ];
    specs[0].root = true;
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    let image = firmware(20_000, 14);
    let o = Offer::new(
        "sensor",
        "ESP32",
        pmesh_ota::MemorySource::new(image.clone()),
    );
    mesh.with(0, |ota, ctx| ota.offer(ctx, o)).unwrap();
    // Several announces (one a minute) reach node 1 while node 2 downloads.
    assert!(mesh.run_until(mesh.now + 5 * MIN, |m| m.installed(2)));
    mesh.run_for(180.0);
    assert!(!mesh.installed(1), "node 1 installed a classic image");
    let refusals: Vec<&str> = mesh.events[1]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Refused {
                id,
                reason: Refusal::Untrusted { code, .. },
            } if id.mode != pmesh_ota::event::Mode::Pmesh => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(refusals, ["unsigned"], "refused once, named");
    let rx = mesh.with(1, |ota, _| ota.classic_receiver().unwrap().stats());
    assert_eq!(rx.untrusted, 1);
    assert_eq!(rx.chunks_written, 0);
    assert!(
        !mesh.events[1]
            .iter()
            .any(|e| matches!(e, OtaEvent::Accepted { .. })),
        "node 1 began a classic transfer"
    );
}

#[test]
fn nodes_with_a_wall_clock_refuse_and_do_not_relay_an_expired_manifest() {
    // Gateway → relay (wall clock: year 2033) → sensor. The bundle expired in 2030: the
    // relay refuses it before relaying, the sensor never sees it. Without a wall clock the
    // same relay passes it on (as a microcontroller without a trusted clock does).
    let expired = {
        let spec = BundleSpec {
            role: "sensor",
            hardware: "ESP32",
            version: "old",
            sequence: 9,
            chunk_size: 1024,
            compressed: false,
            expires: Some(1_900_000_000),
        };
        Bundle::build(&fleet(), &firmware(10_000, 15), &spec).unwrap()
    };
    for clock in [Some(2_000_000_000), None] {
        let mut relay = cfg("relay");
        relay.trust.wall_clock = clock;
        let mut specs = vec![
            Spec::new(100, cfg("gateway")),
            Spec::new(101, relay),
            Spec::new(102, cfg("sensor")),
        ];
        specs[0].root = true;
        let mut mesh = Mesh::new(specs);
        mesh.chain();
        mesh.run_for(30.0);
        offer(&mut mesh, &expired);
        let installed = mesh.run_until(mesh.now + 2 * MIN, |m| m.installed(2));
        let codes: Vec<&str> = mesh.events[1]
            .iter()
            .filter_map(|e| match e {
                OtaEvent::Refused {
                    reason: Refusal::Untrusted { code, .. },
                    ..
                } => Some(*code),
                _ => None,
            })
            .collect();
        if clock.is_some() {
            assert_eq!(codes, ["expired"], "named once");
            assert!(!installed, "an expired manifest went past the relay");
            assert!(stats(&mut mesh, 1).untrusted >= 1);
            assert_eq!(
                stats(&mut mesh, 2).untrusted,
                0,
                "nothing reached the sensor"
            );
            assert!(mesh.with(2, |ota, _| ota.pmesh().status()).is_none());
        } else {
            assert!(codes.is_empty(), "{codes:?}");
            assert!(installed, "without a clock the expiry cannot be checked");
        }
    }
}
