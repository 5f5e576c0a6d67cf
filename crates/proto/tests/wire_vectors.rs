//! Every case of `testdata/vectors/wire.json`: decoded as its `expect` says, re-serialized
//! byte for byte from the typed value where it is marked `byte_exact`, equal trees within an
//! `equal_group`. An `expect` key this file does not check fails the test, so a vector file
//! that grows cannot be half-tested silently.

mod common;

use std::collections::BTreeMap;

use common::{flag, int, text, u32f, unhex, vectors};
use pmesh_proto::packages::Package;
use pmesh_proto::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME, Envelope, FrameDecoder, Message, NodeTree, encode_frame,
};
use serde_json::Value as J;

const CHECKED_KEYS: &[&str] = &[
    "type",
    "routing",
    "node_id",
    "tree_size",
    "rooted",
    "equal_group",
    "root_is_sender",
    "has_time_authority",
    "classify_only",
    "dest",
    "from_",
    "msg",
    "byte_exact",
    "time_type",
    "t0",
    "t1",
    "t2",
    "invalid",
    "keep_connection",
    "md5",
    "hardware",
    "role",
    "noPart",
    "forced",
    "broadcasted",
    "compressed",
    "partNo",
    "data_hex",
    "forward_to_all",
    "drop",
    "lenient",
    "note",
];

/// The typed re-serialization of a decoded frame, where the type has one.
fn typed_json(msg: &Message) -> Option<Vec<u8>> {
    Some(match msg {
        Message::TimeDelay(t) | Message::TimeSync(t) => t.to_json(),
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => s.to_json(),
        Message::Broadcast(m) | Message::Single(m) => m.to_json(),
        Message::OtaAnnounce(a) => a.to_json(),
        Message::OtaDataRequest(r) => r.to_json(),
        Message::OtaData(d) => d.to_json(),
        Message::Package(p) => p.to_json(),
        Message::Control | Message::Unknown => return None,
    })
}

fn tree_of(msg: &Message) -> &NodeTree {
    match msg {
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => &s.tree,
        other => panic!("expected a NODE_SYNC, got {other:?}"),
    }
}

fn firmware(msg: &Message) -> &pmesh_proto::ota::FirmwareInfo {
    match msg {
        Message::OtaAnnounce(a) => &a.info,
        Message::OtaDataRequest(r) => &r.info,
        Message::OtaData(d) => &d.info,
        other => panic!("expected OTA, got {other:?}"),
    }
}

fn check_case(case: &J, groups: &mut BTreeMap<String, Vec<(String, NodeTree)>>) {
    let name = text(case, "name");
    let frame = text(case, "frame").as_bytes();
    let expect = &case["expect"];
    for key in expect.as_object().unwrap().keys() {
        assert!(
            CHECKED_KEYS.contains(&key.as_str()),
            "{name}: unchecked expect key {key}"
        );
    }

    // The frame travels NUL-terminated; the framer hands back exactly its bytes.
    let mut framer = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut got = Vec::new();
    framer.push(&encode_frame(frame.to_vec()), |f| got.push(f.unwrap()));
    assert_eq!(got.len(), 1, "{name}");
    assert_eq!(&got[0][..got[0].len() - 1], frame, "{name}");

    if expect.get("invalid").is_some() {
        assert!(flag(expect, "invalid"));
        let err = Envelope::parse(frame, DEFAULT_MAX_DEPTH).expect_err(name);
        assert!(!err.to_string().is_empty());
        // keep_connection: the next frame on the same stream still decodes.
        let mut stream = encode_frame(frame.to_vec()).to_vec();
        stream.extend_from_slice(&encode_frame(
            br#"{"type":8,"dest":0,"from":1,"msg":"next"}"#.to_vec(),
        ));
        let mut results = Vec::new();
        framer.push(&stream, |f| {
            let f = f.unwrap();
            results.push(Envelope::parse(&f[..f.len() - 1], DEFAULT_MAX_DEPTH).is_ok());
        });
        assert_eq!(results, [false, true], "{name}");
        return;
    }

    let env = Envelope::parse(frame, DEFAULT_MAX_DEPTH).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(i64::from(env.ty), int(expect, "type"), "{name}: type");
    if expect.get("routing").is_some() {
        assert_eq!(
            env.routing.name(),
            text(expect, "routing"),
            "{name}: routing"
        );
    }
    let msg = env.decode();

    if expect.get("classify_only").is_some() {
        assert!(flag(expect, "classify_only"));
    }
    if expect.get("dest").is_some() {
        assert_eq!(env.dest, u32f(expect, "dest"), "{name}: dest");
    }
    if expect.get("from_").is_some() {
        assert_eq!(env.from, u32f(expect, "from_"), "{name}: from");
    }
    if let Some(m) = expect.get("msg") {
        let (Message::Single(u) | Message::Broadcast(u)) = &msg else {
            panic!("{name}: {msg:?}")
        };
        assert_eq!(u.msg, m.as_str().unwrap().as_bytes(), "{name}: msg");
    }
    if expect.get("node_id").is_some() {
        assert_eq!(
            tree_of(&msg).node_id,
            u32f(expect, "node_id"),
            "{name}: node_id"
        );
    }
    if expect.get("tree_size").is_some() {
        assert_eq!(
            tree_of(&msg).size() as i64,
            int(expect, "tree_size"),
            "{name}: tree_size"
        );
    }
    if expect.get("rooted").is_some() {
        assert_eq!(
            tree_of(&msg).is_rooted(),
            flag(expect, "rooted"),
            "{name}: rooted"
        );
    }
    if expect.get("root_is_sender").is_some() {
        assert_eq!(
            tree_of(&msg).root,
            flag(expect, "root_is_sender"),
            "{name}: root"
        );
    }
    if expect.get("has_time_authority").is_some() {
        let t = tree_of(&msg);
        assert_eq!(
            t.has_time_authority,
            flag(expect, "has_time_authority"),
            "{name}"
        );
    }
    // The direct NODE_SYNC reader agrees wherever it answers, and answers for these vectors.
    if let Some(fast) = pmesh_proto::NodeSync::parse_frame(frame, DEFAULT_MAX_DEPTH) {
        let (Message::NodeSyncRequest(s) | Message::NodeSyncReply(s)) = &msg else {
            panic!("{name}: fast reader answered for a non-NODE_SYNC")
        };
        assert_eq!(&fast, s, "{name}");
    } else {
        assert!(
            !matches!(msg, Message::NodeSyncRequest(_) | Message::NodeSyncReply(_)),
            "{name}"
        );
    }
    if let Some(group) = expect.get("equal_group") {
        let group = group.as_str().unwrap().to_string();
        groups
            .entry(group)
            .or_default()
            .push((name.to_string(), tree_of(&msg).clone()));
    }
    for (key, pick) in [("time_type", 0), ("t0", 1), ("t1", 2), ("t2", 3)] {
        if expect.get(key).is_some() {
            let (Message::TimeSync(t) | Message::TimeDelay(t)) = &msg else {
                panic!("{name}")
            };
            let got = [
                i64::from(t.time_type),
                t.t0.into(),
                t.t1.into(),
                t.t2.into(),
            ][pick];
            assert_eq!(got, int(expect, key), "{name}: {key}");
        }
    }
    for key in ["md5", "hardware", "role"] {
        if expect.get(key).is_some() {
            let info = firmware(&msg);
            let got = match key {
                "md5" => &info.md5,
                "hardware" => &info.hardware,
                _ => &info.role,
            };
            assert_eq!(got, text(expect, key), "{name}: {key}");
        }
    }
    for key in ["forced", "broadcasted", "compressed"] {
        if expect.get(key).is_some() {
            let info = firmware(&msg);
            let got = match key {
                "forced" => info.forced,
                "broadcasted" => info.broadcasted,
                _ => info.compressed,
            };
            assert_eq!(got, flag(expect, key), "{name}: {key}");
        }
    }
    if expect.get("noPart").is_some() {
        assert_eq!(
            firmware(&msg).no_part,
            u32f(expect, "noPart"),
            "{name}: noPart"
        );
    }
    if expect.get("partNo").is_some() {
        let part = match &msg {
            Message::OtaDataRequest(r) => r.part_no,
            Message::OtaData(d) => d.part_no,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(part, u32f(expect, "partNo"), "{name}: partNo");
    }
    if expect.get("data_hex").is_some() {
        let Message::OtaData(d) = &msg else {
            panic!("{name}")
        };
        assert_eq!(
            d.decode_data().unwrap(),
            unhex(text(expect, "data_hex")),
            "{name}: data"
        );
    }
    if expect.get("forward_to_all").is_some() {
        assert!(flag(expect, "forward_to_all"));
        assert_eq!(env.routing, pmesh_proto::Routing::Broadcast, "{name}");
    }
    if expect.get("drop").is_some() {
        assert!(flag(expect, "drop"));
        assert_eq!(env.routing, pmesh_proto::Routing::None, "{name}");
        assert_eq!(msg, Message::Unknown, "{name}");
    }
    // Alteriom packages decode to their typed struct.
    if (200..700).contains(&env.ty) {
        let Message::Package(p) = &msg else {
            panic!("{name}: not a typed package: {msg:?}")
        };
        assert_eq!(p.ty(), env.ty);
    }
    if expect.get("byte_exact").is_some() {
        assert!(flag(expect, "byte_exact"));
        let out = typed_json(&msg).unwrap_or_else(|| panic!("{name}: no typed form"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            text(case, "frame"),
            "{name}: byte_exact"
        );
    }
}

#[test]
fn every_wire_vector() {
    let v = vectors("wire.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 39,
        "vector file looks truncated: {} cases",
        cases.len()
    );
    let mut groups = BTreeMap::new();
    for case in cases {
        check_case(case, &mut groups);
    }
    assert!(!groups.is_empty());
    for (group, trees) in groups {
        assert!(trees.len() >= 2, "group {group} has a single member");
        for (name, tree) in &trees[1..] {
            assert_eq!(
                tree, &trees[0].1,
                "{name} differs from {} in {group}",
                trees[0].0
            );
        }
    }
}

/// The byte-exact Alteriom vectors also travel double-encoded inside the `msg` of a BROADCAST
/// (the Alteriom examples' `sendBroadcast(pkg json)`): the inner package decodes to the same
/// typed value and re-serializes to the same bytes.
#[test]
fn alteriom_vectors_double_encoded_in_msg() {
    let v = vectors("wire.json");
    let mut seen = 0;
    for case in v["cases"].as_array().unwrap() {
        let name = text(case, "name");
        if !name.starts_with("alteriom_") {
            continue;
        }
        let frame = text(case, "frame").as_bytes();
        let native = Package::decode(&Envelope::parse(frame, DEFAULT_MAX_DEPTH).unwrap()).unwrap();
        let outer = pmesh_proto::UserMessage {
            ty: 8,
            dest: 0,
            from: 77,
            msg: frame.to_vec(),
        };
        let env = Envelope::parse(&outer.to_json(), DEFAULT_MAX_DEPTH).unwrap();
        let Message::Broadcast(m) = env.decode() else {
            panic!("{name}")
        };
        let inner = Package::from_user_message(&m, DEFAULT_MAX_DEPTH).unwrap();
        assert_eq!(inner, native, "{name}");
        assert_eq!(inner.to_json(), frame, "{name}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

/// Which generation each generation-specific vector belongs to.
#[test]
fn alteriom_generations() {
    use pmesh_proto::packages::Generation;
    let v = vectors("wire.json");
    let by_name = |n: &str| {
        let case = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap();
        let env = Envelope::parse(text(case, "frame").as_bytes(), DEFAULT_MAX_DEPTH).unwrap();
        Package::decode(&env).unwrap()
    };
    assert_eq!(
        by_name("alteriom_command_400").generation(),
        Generation::Head
    );
    assert_eq!(
        by_name("alteriom_enhanced_status_604").generation(),
        Generation::Head
    );
    assert_eq!(
        by_name("alteriom_sensor_200").generation(),
        Generation::Head
    );
    // The 604 vector's note: type 203 in Phase 1/2, otherwise identical.
    let mut old = by_name("alteriom_enhanced_status_604");
    old.header_mut().ty = 203;
    let json = String::from_utf8(old.to_json()).unwrap();
    assert!(
        json.starts_with(r#"{"from":12345,"routing":2,"type":203,"status":0,"#),
        "{json}"
    );
    let back = Package::decode(&Envelope::parse(json.as_bytes(), DEFAULT_MAX_DEPTH).unwrap());
    assert_eq!(back.unwrap().generation(), Generation::Phase2);
}
