//! Bad input from the network: OTA frames with arbitrary field values never panic a node and
//! never make it hold unbounded state.

use pmesh_node::{Config, ConnId, Direction, Instant, Node};
use pmesh_ota::{MemorySink, MemoryStore, Ota, OtaConfig};
use proptest::prelude::*;

fn frame(kind: u8, a: u64, b: u64, c: u64, text: &str) -> String {
    let sha = "ab".repeat(32);
    match kind % 10 {
        0 => format!(
            r#"{{"from":5,"routing":2,"type":10,"md5":"{text}","hardware":"ESP32","role":"sensor","noPart":{a},"broadcasted":{}}}"#,
            b.is_multiple_of(2)
        ),
        1 => format!(
            r#"{{"from":5,"routing":1,"type":11,"md5":"{text}","hardware":"ESP32","role":"sensor","noPart":{a},"broadcasted":false,"dest":1,"partNo":{b}}}"#
        ),
        2 => format!(
            r#"{{"from":5,"routing":2,"type":12,"md5":"{text}","hardware":"ESP32","role":"sensor","noPart":{a},"broadcasted":true,"dest":1,"partNo":{b},"data":"{text}"}}"#
        ),
        3 => format!(
            r#"{{"type":711,"routing":0,"from":5,"id":{c},"size":{a},"chunk":{b},"count":{c},"sha256":"{sha}","version":"","role":"sensor","hardware":"ESP32","compression":"{text}","forced":false,"apply":0}}"#
        ),
        4 => format!(
            r#"{{"type":711,"routing":0,"from":5,"id":7,"size":{a},"chunk":4096,"count":{},"sha256":"{sha}","version":"","role":"sensor","hardware":"ESP32","compression":"deflate","forced":false,"apply":1}}"#,
            a.div_ceil(4096)
        ),
        5 => format!(r#"{{"type":712,"routing":0,"from":5,"id":7,"n":{b},"have":"{text}"}}"#),
        6 => format!(
            r#"{{"type":713,"routing":0,"from":5,"id":7,"i":{b},"z":{},"crc":{c},"d":"{text}"}}"#,
            a % 2
        ),
        7 => format!(
            r#"{{"type":714,"routing":0,"from":5,"id":7,"n":{b},"p":[[{a},{b},{c}],[1,2],"x"]}}"#
        ),
        8 => format!(r#"{{"type":715,"routing":2,"from":5,"id":7,"at":{a}}}"#),
        _ => format!(r#"{{"type":710,"routing":0,"from":5,"v":{a}}}"#),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn arbitrary_ota_frames_are_harmless(
        frames in prop::collection::vec(
            (any::<u8>(), prop_oneof![0u64..10, 0u64..100_000, any::<u32>().prop_map(u64::from), any::<u64>()],
             0u64..300, prop_oneof![0u64..10, any::<u32>().prop_map(u64::from)], "[ -~]{0,40}"),
            1..40)
    ) {
        let ota = Ota::new(OtaConfig::new("sensor", "ESP32"), MemorySink::new(1 << 20), MemoryStore::new());
        let mut node = Node::new(Config::new(1), ota);
        let mut now = Instant::from_micros(1_000_000);
        node.handle_connect(ConnId(1), now, Direction::Ap);
        for (kind, a, b, c, text) in frames {
            let text = text.replace(['"', '\\'], "");
            let mut bytes = frame(kind, a, b, c, &text).into_bytes();
            bytes.push(0);
            node.handle_bytes(ConnId(1), now, &bytes);
            now = now + std::time::Duration::from_millis(700);
            node.handle_timeout(now);
            while node.poll_transmit().is_some() {}
            while node.poll_event().is_some() {}
            // Tracking state stays within the manifest cap's bitmap plus fixed state.
            prop_assert!(node.plugin().tracking_bytes() < 200_000);
            prop_assert!(node.plugin().pmesh().frame_bytes() < 1 << 20);
        }
    }
}

/// Issue 11, item 9: a classic Data frame whose `partNo` is out of range (2^32, negative,
/// not below `noPart`) or whose `noPart` is out of range is dropped and counted. Read
/// leniently, `partNo: 2^32` is part 0: its length would fix the chunk size and every real
/// chunk after it would be dropped, stalling the transfer until it timed out.
#[test]
fn out_of_range_classic_fields_are_rejected_not_read_as_part_zero() {
    use pmesh_ota::OtaEvent;
    use pmesh_ota::codec::md5_hex;
    use pmesh_proto::base64;

    let image: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
    let md5 = md5_hex(&image);
    let head = |ty: u32, routing: u32, no_part: &str| {
        format!(
            r#"{{"from":5,"routing":{routing},"type":{ty},"md5":"{md5}","hardware":"ESP32","role":"sensor","noPart":{no_part},"broadcasted":false"#
        )
    };
    let data = |part: &str, no_part: &str, bytes: &[u8]| {
        let b64 = String::from_utf8(base64::encode(bytes)).unwrap();
        format!(
            r#"{},"dest":1,"partNo":{part},"data":"{b64}"}}"#,
            head(12, 1, no_part)
        )
    };
    let ota = Ota::new(
        OtaConfig::new("sensor", "ESP32"),
        MemorySink::new(1 << 20),
        MemoryStore::new(),
    );
    let mut node = Node::new(Config::new(1), ota);
    let mut now = Instant::from_micros(1_000_000);
    let send = |node: &mut Node<_>, now: Instant, text: &str| {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        node.handle_bytes(ConnId(1), now, &bytes);
    };
    node.handle_connect(ConnId(1), now, Direction::Station);
    send(&mut node, now, r#"{"nodeId":5,"type":6,"dest":1,"from":5}"#);
    send(&mut node, now, &format!("{}}}", head(10, 2, "4")));
    // Hostile frames first: each would otherwise be taken as a chunk (or set up state).
    let junk = [9u8; 10];
    let hostile = [
        data("4294967296", "4", &junk),
        data("-1", "4", &junk),
        data("4", "4", &junk),
        data("\"x\"", "4", &junk),
        data("0", "4294967300", &junk),
        data("0", "-4", &junk),
        format!(r#"{},"dest":1,"data":"AAAA"}}"#, head(12, 1, "4")),
    ];
    for h in &hostile {
        send(&mut node, now, h);
    }
    assert_eq!(
        node.plugin().classic_frames_rejected(),
        hostile.len() as u64
    );
    // The real chunks of 128 bytes then complete the transfer.
    for (i, chunk) in image.chunks(128).enumerate() {
        now = now + std::time::Duration::from_millis(10);
        send(&mut node, now, &data(&i.to_string(), "4", chunk));
    }
    for _ in 0..100 {
        now = now + std::time::Duration::from_millis(100);
        node.handle_timeout(now);
    }
    let mut installed = false;
    while let Some(e) = node.poll_event() {
        if let pmesh_node::Event::Plugin(OtaEvent::Installed { .. }) = e {
            installed = true;
        }
    }
    assert!(installed, "the real transfer completes");
    let sink = node.plugin().sink();
    assert_eq!(
        sink.pending().or(sink.booted()).as_deref(),
        Some(&image[..])
    );
}
