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
