//! What the MQTT bridge (`pmesh-bridge`) takes from outside, without a broker:
//! - MQTT requests (input's first byte odd): `bridge/request/<verb>`, `command/<verb>` and
//!   `painlessMesh/to/<dest>` through the bridge's pure parsers (`request.rs`), and the
//!   firmware-directory names `ota/start` accepts (`pmesh_fwdir::check_name`); invariants in
//!   `pmesh_fuzz::request_check` (pure, a blank payload never acts, `transaction` echoed,
//!   accepted image names cannot leave the directory, inline images within the limit, every
//!   refusal with a message and a valid counter label, heap linear in the payload);
//! - the mesh's reports (first byte even; then frames separated by NUL) as the gateway feeds
//!   them into the bridge's model (`model.rs`, `status.rs`): topology from NODE_SYNC trees,
//!   status packages (203/604/204, native or inside a user message), user messages. Every
//!   node's payload (what goes to `<prefix>/node/<id>`) is valid JSON; the model's heap stays
//!   within a fixed multiple of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmesh_bridge::AlertThresholds;
use pmesh_bridge::model::Model;
use pmesh_bridge::status::StatusReport;
use pmesh_fuzz::{heap, request_check};
use pmesh_proto::message::Message;
use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope, NodeTree};

/// The gateway's id.
const GATEWAY: u32 = 1000;
/// Model heap allowed per input byte (plus a constant).
const HEAP_PER_BYTE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        request_check::check(data);
        return;
    }
    let (_, peak) = heap::peak_during(|| feed_model(data));
    let bound = HEAP_PER_BYTE * data.len() + (1 << 20);
    assert!(
        peak <= bound,
        "{} input bytes, model held {peak} (bound {bound})",
        data.len()
    );
});

fn feed_model(data: &[u8]) {
    let mut model = Model::new(GATEWAY, AlertThresholds::default());
    let mut now_ms = 1_000_000u64;
    for json in data.split(|&b| b == 0) {
        now_ms += 1000;
        let Ok(env) = Envelope::parse(json, DEFAULT_MAX_DEPTH) else {
            continue;
        };
        if let Some(report) = StatusReport::from_object(&env.body) {
            model.on_status(report, Some(now_ms));
        }
        match env.decode() {
            Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => {
                let tree = NodeTree {
                    node_id: GATEWAY,
                    root: true,
                    has_time_authority: false,
                    subs: vec![s.tree],
                };
                model.apply_tree(tree, Some(now_ms));
            }
            Message::Broadcast(m) | Message::Single(m) => {
                model.on_message(m.from, m.ty == 8, Some(now_ms));
                if let Some(report) = StatusReport::from_user_message(&m.msg) {
                    model.on_status(report, Some(now_ms));
                }
            }
            _ => {}
        }
    }
    let ids: Vec<u32> = model.nodes.keys().copied().collect();
    for id in ids {
        let payload = model.node_payload(id, Some(now_ms));
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&payload) {
            panic!(
                "node {id}'s payload is not JSON ({e}): {}",
                String::from_utf8_lossy(&payload)
            );
        }
    }
}
