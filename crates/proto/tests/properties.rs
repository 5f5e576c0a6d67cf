//! Property tests: framing under any split, NodeTree and package round trips, and hostile
//! input (never a panic, never a buffer past the cap).

use pmesh_proto::json::{self, Value};
use pmesh_proto::packages::{
    BridgeCoordinationPackage, CommandPackage, Generation, MeshAlert, MeshAlertPackage,
    MeshConnection, MeshTopologyPackage, Package, SensorPackage, StatusPackage, Text,
};
use pmesh_proto::{
    DEFAULT_MAX_DEPTH, Envelope, FrameDecoder, FrameError, Message, NodeSync, NodeTree, UserMessage,
};
use proptest::prelude::*;

/// A frame's body: any bytes but NUL (possibly empty: two NULs in a row).
fn frame_body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..max)
}

/// Feeds `stream` in the pieces given by `cuts` and collects what the framer hands out.
fn decode_in_pieces(stream: &[u8], cuts: &[usize], cap: usize) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut dec = FrameDecoder::new(cap);
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    let mut last = 0;
    for p in points.into_iter().chain([stream.len()]) {
        dec.push(&stream[last..p], |f| out.push(f.map(|b| b.to_vec())));
        last = p;
        assert!(dec.buffered() <= cap);
        assert!(dec.buffer_capacity() <= cap + 1);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any split of a framed stream yields the same frames, in order; empty frames are
    /// skipped; a frame over the cap is reported once, in its place, whatever the split.
    #[test]
    fn any_split_decodes_the_same_frames(
        bodies in proptest::collection::vec(frame_body(120), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        cap in 1usize..100,
    ) {
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(b);
            stream.push(0);
        }
        let expected: Vec<Result<Vec<u8>, ()>> = bodies
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| if b.len() > cap { Err(()) } else { Ok([&b[..], &[0]].concat()) })
            .collect();
        let whole: Vec<_> = decode_in_pieces(&stream, &[], cap)
            .into_iter().map(|r| r.map_err(|_| ())).collect();
        let split: Vec<_> = decode_in_pieces(&stream, &cuts, cap)
            .into_iter().map(|r| r.map_err(|_| ())).collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(&split, &expected);
    }

    /// Arbitrary bytes never panic the framer, the parser or the typed decoders, and never
    /// make the framer hold more than its cap.
    #[test]
    fn arbitrary_bytes_never_panic_nor_grow_past_the_cap(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        cap in 1usize..256,
    ) {
        let mut dec = FrameDecoder::new(cap);
        for chunk in &chunks {
            dec.push(chunk, |f| {
                if let Ok(frame) = f {
                    assert!(frame.len() <= cap + 1);
                    if let Ok(env) = Envelope::parse(&frame[..frame.len() - 1], DEFAULT_MAX_DEPTH) {
                        let _ = env.decode();
                    }
                }
            });
            prop_assert!(dec.buffered() <= cap);
            prop_assert!(dec.buffer_capacity() <= cap + 1);
        }
        for chunk in &chunks {
            let _ = json::parse(chunk, DEFAULT_MAX_DEPTH);
            if let Ok(env) = Envelope::parse(chunk, DEFAULT_MAX_DEPTH) {
                decode_everything(&env);
            }
        }
    }

    /// Frames close to valid ones (a real frame with bytes replaced, inserted or cut) never
    /// panic any decoder either: this reaches far deeper into the parser than random bytes.
    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut frame = SEEDS[seed].as_bytes().to_vec();
        for (pos, byte, op) in edits {
            let at = pos % (frame.len() + 1);
            match op {
                0 if at < frame.len() => frame[at] = byte,
                1 => frame.insert(at, byte),
                _ => frame.truncate(at),
            }
        }
        if let Ok(env) = Envelope::parse(&frame, DEFAULT_MAX_DEPTH) {
            decode_everything(&env);
        }
    }

    /// Random trees survive JSON and a NODE_SYNC round trip unchanged (order of subs kept).
    #[test]
    fn node_trees_round_trip(tree in node_tree(), ty in 5i32..7, dest in any::<u32>()) {
        let text = tree.to_json();
        let v = json::parse(&text, DEFAULT_MAX_DEPTH).unwrap();
        prop_assert_eq!(&NodeTree::from_object(v.as_object().unwrap()), &tree);
        let sync = NodeSync { ty, dest, from: tree.node_id, tree: tree.clone() };
        let env = Envelope::parse(&sync.to_json(), DEFAULT_MAX_DEPTH).unwrap();
        let (Message::NodeSyncRequest(back) | Message::NodeSyncReply(back)) = env.decode() else {
            panic!("not a node sync")
        };
        prop_assert_eq!(back, sync);
        // The pretty form parses to the same tree too.
        let pretty = json::parse(&tree.to_json_pretty(), DEFAULT_MAX_DEPTH).unwrap();
        prop_assert_eq!(&NodeTree::from_object(pretty.as_object().unwrap()), &tree);
    }

    /// User messages keep any payload byte for byte (lossless policy), control characters
    /// and bytes that are not UTF-8 included, and pmesh's output never holds a raw control byte.
    #[test]
    fn user_messages_round_trip_any_payload(msg in proptest::collection::vec(any::<u8>(), 0..200),
                                            ty in 8i32..10, dest in any::<u32>(), from in any::<u32>()) {
        let m = UserMessage { ty, dest, from, msg };
        let out = m.to_json();
        prop_assert!(out.iter().all(|&b| b >= 0x20));
        let env = Envelope::parse(&out, DEFAULT_MAX_DEPTH).unwrap();
        let (Message::Single(back) | Message::Broadcast(back)) = env.decode() else { panic!() };
        prop_assert_eq!(back, m);
    }

    /// Typed packages with arbitrary values re-serialize and decode to the same value.
    #[test]
    fn packages_round_trip(
        from in any::<u32>(), dest in any::<u32>(), n in any::<u32>(), b in any::<u8>(),
        s in any::<i8>(), f in -1e300f64..1e300, g in -1e30f32..1e30, flag in any::<bool>(),
        text in proptest::collection::vec(any::<u8>(), 0..40),
        count in 0usize..70, head in any::<bool>(),
    ) {
        let text = Text(text);
        let generation = if head { Generation::Head } else { Generation::Phase2 };
        let mut sensor = SensorPackage::new(from);
        (sensor.temp, sensor.hum, sensor.press, sensor.sid, sensor.bat) = (f, -f, f / 3.0, n, b);
        let mut command = CommandPackage::new(generation, from, dest);
        (command.cmd, command.target, command.params, command.cid) = (b, n, text.clone(), n ^ 1);
        let mut status = if head { StatusPackage::new(from) } else { StatusPackage::phase2(from) };
        (status.resp_to, status.resp_msg, status.fw) = (n, text.clone(), text.clone());
        if let Some(c) = status.config.as_mut() {
            c.mqtt_retry.backoff_multiplier = g;
            c.display.enabled = flag;
            c.sensors.calibration.humidity_offset = f;
            c.organization.device_name = text.clone();
        }
        let mut topo = MeshTopologyPackage::new(from);
        topo.connections = (0..count as u32)
            .map(|i| MeshConnection { from: i, to: n, quality: g, latency: 7, hops: b, ..Default::default() })
            .collect();
        let mut alerts = MeshAlertPackage::new(from);
        alerts.alerts = vec![MeshAlert { msg: text.clone(), value: g, threshold: -g, node_id: n, ..Default::default() }];
        let mut coord = BridgeCoordinationPackage::new(from);
        (coord.peer_bridges, coord.role, coord.load) = (vec![n, dest, from], text, s as u8);
        for p in [
            Package::Sensor(sensor), Package::Command(command), Package::Status(status),
            Package::MeshTopology(topo), Package::MeshAlert(alerts), Package::BridgeCoordination(coord),
        ] {
            let out = p.to_json();
            let env = Envelope::parse(&out, DEFAULT_MAX_DEPTH).unwrap();
            let Message::Package(back) = env.decode() else { panic!("{}", p.name()) };
            prop_assert_eq!(&back, &p);
            prop_assert_eq!(back.to_json(), out);
            prop_assert_eq!(back.generation(), if head || !matches!(p, Package::Command(_) | Package::Status(_)) {
                Generation::Head
            } else {
                Generation::Phase2
            });
        }
    }
}

/// What the general decoder makes of a frame, when it is a NODE_SYNC routed NEIGHBOUR.
fn general_node_sync(frame: &[u8]) -> Option<NodeSync> {
    let env = Envelope::parse(frame, DEFAULT_MAX_DEPTH).ok()?;
    if env.routing != pmesh_proto::Routing::Neighbour {
        return None;
    }
    match env.decode() {
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => Some(s),
        _ => None,
    }
}

/// Inserts JSON whitespace after structural characters, as a pretty printer might.
fn with_whitespace(frame: &[u8], pads: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() * 2);
    let mut k = 0;
    let mut in_string = false;
    for &b in frame {
        out.push(b);
        if b == b'"' {
            in_string = !in_string;
        }
        if !in_string && matches!(b, b'{' | b'[' | b',' | b':') {
            let pad = pads.get(k % pads.len().max(1)).copied().unwrap_or(0);
            k += 1;
            out.extend(std::iter::repeat_n(
                b" \t\r\n"[usize::from(pad % 4)],
                usize::from(pad % 3),
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The direct NODE_SYNC reader answers for every frame a node writes (with any
    /// whitespace), and its answer is the general decoder's.
    #[test]
    fn fast_node_sync_reader_matches_the_general_one(
        tree in node_tree(), ty in 5i32..7, dest in any::<u32>(),
        pads in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let sync = NodeSync { ty, dest, from: tree.node_id, tree };
        let frame = with_whitespace(&sync.to_json(), &pads);
        prop_assert_eq!(NodeSync::parse_frame(&frame, DEFAULT_MAX_DEPTH), Some(sync.clone()));
        prop_assert_eq!(general_node_sync(&frame), Some(sync));
    }

    /// On anything else it either declines or agrees with the general decoder.
    #[test]
    fn fast_node_sync_reader_never_disagrees(
        seed in 0usize..SYNC_SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..5),
        depth in 0usize..12,
    ) {
        let mut frame = SYNC_SEEDS[seed].as_bytes().to_vec();
        for (pos, byte, op) in edits {
            let at = pos % (frame.len() + 1);
            match op {
                0 if at < frame.len() => frame[at] = byte,
                1 => {
                    const ALPHABET: &[u8] = b"{}[],:\"0123456789truefalsnodeIdsubsroot -";
                    frame.insert(at, ALPHABET[usize::from(byte) % ALPHABET.len()])
                }
                _ => frame.truncate(at),
            }
        }
        for max_depth in [depth, DEFAULT_MAX_DEPTH] {
            if let Some(fast) = NodeSync::parse_frame(&frame, max_depth) {
                let general = Envelope::parse(&frame, max_depth).ok().filter(|e| {
                    e.routing == pmesh_proto::Routing::Neighbour
                });
                let general = general.map(|e| e.decode());
                let (Some(Message::NodeSyncRequest(g)) | Some(Message::NodeSyncReply(g))) = general
                else {
                    panic!("fast reader answered for {:?}", String::from_utf8_lossy(&frame));
                };
                prop_assert_eq!(fast, g);
            }
        }
    }
}

const SYNC_SEEDS: &[&str] = &[
    r#"{"type":6,"dest":2428398258,"from":3907768579,"subs":[{"nodeId":3959373838,"subs":[{"nodeId":416992913},{"nodeId":1895675348,"root":true}]}]}"#,
    r#"{"nodeId":3907768579,"hasTimeAuthority":true,"subs":[{"nodeId":3959373838,"subs":[{"nodeId":416992913},{"nodeId":1895675348,"root":true,"subs":[]}]}],"type":5,"dest":2428398258,"from":3907768579}"#,
    r#"{"nodeId":1,"root":false,"subs":[{"nodeId":2,"hasTimeAuthority":false,"subs":[{"nodeId":3,"subs":[{"nodeId":4}]}],"root":true},{"subs":[]}],"type":6,"dest":0,"from":1}"#,
    r#"{"type":5,"dest":0,"from":7,"subs":[1,"a",null,{"nodeId":8}],"nodeId":"7"}"#,
];

fn decode_everything(env: &Envelope) {
    let msg = env.decode();
    match &msg {
        Message::Single(m) | Message::Broadcast(m) => {
            if let Some(p) = Package::from_user_message(m, DEFAULT_MAX_DEPTH) {
                let _ = p.to_json();
            }
            let _ = m.to_json();
        }
        Message::OtaData(d) => {
            let _ = d.decode_data();
            let _ = d.to_json();
        }
        Message::Package(p) => {
            let _ = p.to_json();
        }
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => {
            let _ = (s.to_json(), s.tree.to_json_pretty(), s.tree.node_list(true));
        }
        _ => {}
    }
    let _ = Value::Object(env.body.clone()).to_vec();
}

const SEEDS: &[&str] = &[
    r#"{"type":6,"dest":2428398258,"from":3907768579,"subs":[{"nodeId":3959373838,"subs":[{"nodeId":416992913},{"nodeId":1895675348,"root":true}]}]}"#,
    r#"{"type":4,"dest":3907768579,"from":2428398258,"msg":{"type":2,"t0":1000000,"t1":1500200,"t2":1500450}}"#,
    r#"{"type":9,"dest":2428398258,"from":3907768579,"msg":"Hello \u00e9 \ud83d\ude00 \\ \"q\""}"#,
    r#"{"from":3907768579,"routing":1,"type":12,"md5":"0c6b3d4ea9f3e8a0c4d2b1a1e5f0d9c7","hardware":"ESP32","role":"sensor","noPart":150,"broadcasted":false,"dest":2428398258,"partNo":0,"data":"AQIDaGVsbG8="}"#,
    r#"{"from":12345,"dest":67890,"routing":1,"type":400,"cmd":10,"target":67890,"params":"{\"state\":true}","cid":1001,"message_type":400}"#,
    r#"{"type":8,"dest":0,"from":1,"msg":"{\"from\":1,\"routing\":2,\"type\":202,\"organization\":{\"a\":1},\"sensors\":{\"calibration\":{}}}"}"#,
    r#"{"from":1,"routing":2,"type":600,"nodes":[{"nodeId":1,"status":1,"lastSeen":2,"rssi":-40},7],"nodeCount":2,"meshId":"m"}"#,
    r#"{'type':9,dest:+5,"from":.5,"msg":[1e308,-0,007,"\u0000"]}"#,
];

/// NodeTrees up to 6 levels deep with up to 4 subs per node.
fn node_tree() -> impl Strategy<Value = NodeTree> {
    let leaf = (any::<u32>(), any::<bool>(), any::<bool>()).prop_map(|(id, root, ta)| NodeTree {
        node_id: id,
        root,
        has_time_authority: ta,
        subs: Vec::new(),
    });
    leaf.prop_recursive(6, 64, 4, |inner| {
        (
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(inner, 0..4),
        )
            .prop_map(|(id, root, ta, subs)| NodeTree {
                node_id: id,
                root,
                has_time_authority: ta,
                subs,
            })
    })
}
