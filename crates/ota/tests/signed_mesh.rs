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

/// A CHUNK frame with one payload byte changed and its CRC fixed, so only the digest can
/// tell.
fn poison_chunk(frame: &[u8]) -> Vec<u8> {
    let env = Envelope::parse(frame, 64).unwrap();
    let Some(pmesh_proto::json::Value::String(d)) = env.get("d") else {
        panic!("no d")
    };
    let mut payload = pmesh_ota::b85::decode(d).unwrap();
    payload[0] ^= 0x5a;
    let crc = pmesh_ota::codec::crc32(&payload);
    let text = String::from_utf8(frame.to_vec()).unwrap();
    let old_crc = env.get("crc").and_then(|v| v.as_u32_strict()).unwrap();
    let d_old = String::from_utf8(d.clone()).unwrap();
    let d_new = String::from_utf8(pmesh_ota::b85::encode(&payload)).unwrap();
    text.replace(&format!("\"crc\":{old_crc}"), &format!("\"crc\":{crc}"))
        .replace(&d_old, &d_new)
        .into_bytes()
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
        "the CRC never saw a bad chunk: the digest did"
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
