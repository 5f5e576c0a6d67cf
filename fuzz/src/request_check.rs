//! Invariants of the bridge's MQTT request parsing (`pmesh_bridge::request`): what any MQTT
//! client can publish to `bridge/request/<verb>`, `command/<verb>` and
//! `painlessMesh/to/<dest>`, and the firmware-directory names `ota/start` accepts
//! (`pmesh_fwdir::check_name`).

use std::path::{Component, Path};

use pmesh_bridge::request::{
    self, Action, Command, ImageSource, LegacyDest, MAX_IMAGE_BYTES, RequestError,
};

use crate::heap;
use crate::input::Input;

/// Request verbs (`bridge/request/<verb>`).
pub const VERBS: [&str; 12] = [
    "info",
    "health",
    "nodes",
    "topology",
    "alerts",
    "publish_now",
    "resync",
    "send",
    "broadcast",
    "ota/start",
    "ota/status",
    "ota/abort",
];
/// Command verbs (`command/<verb>`).
pub const COMMANDS: [&str; 4] = ["getNodes", "getTopology", "publishNow", "broadcast"];
/// Verbs that act: a blank payload (what clears a retained message) must never act.
const ACTING: [&str; 4] = ["send", "broadcast", "ota/start", "ota/abort"];
/// Heap a parse may hold per payload byte, plus a constant.
const HEAP_PER_BYTE: usize = 32;

/// Input: `[api][verb index][verb chunk if the index is past the list][payload...]`; api
/// 0: request, 1: command, 2: legacy destination, 3: a firmware-directory name.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let api = input.u8() % 4;
    let index = usize::from(input.u8());
    let own_verb = input.chunk();
    let payload = input.rest();
    let pick = |list: &[&'static str]| -> String {
        match list.get(index) {
            Some(v) => (*v).to_owned(),
            None => String::from_utf8_lossy(own_verb).into_owned(),
        }
    };
    let (_, peak) = heap::peak_during(|| match api {
        0 => check_request(&pick(&VERBS), payload),
        1 => check_command(&pick(&COMMANDS), payload),
        2 => check_legacy(&String::from_utf8_lossy(payload)),
        _ => check_name(&String::from_utf8_lossy(payload)),
    });
    let bound = HEAP_PER_BYTE * data.len() + (64 << 10);
    assert!(
        peak <= bound,
        "parsing {} bytes held {peak} (bound {bound})",
        data.len()
    );
}

/// Every refusal has a message and a counter label that is a valid Prometheus label value.
fn check_error(e: &RequestError) {
    assert!(
        !e.to_string().trim().is_empty(),
        "refusal without a message: {e:?}"
    );
    let reason = e.reason();
    assert!(
        !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "reason label {reason:?}"
    );
}

/// `bridge/request/<verb>`: pure (the same answer twice), never acts on a blank payload, echoes
/// the payload's `transaction`, and what it accepts is within the API's limits.
fn check_request(verb: &str, payload: &[u8]) {
    let parsed = request::parse_request(verb, payload);
    let again = request::parse_request(verb, payload);
    match (&parsed, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parse_request is not pure"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "not pure"),
        _ => panic!("parse_request answered differently twice"),
    }
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            check_error(&e);
            if ACTING.contains(&verb) && payload.trim_ascii().is_empty() {
                assert!(
                    matches!(e, RequestError::EmptyPayload),
                    "blank {verb} refused as {e:?}"
                );
            }
            return;
        }
    };
    assert!(
        !(ACTING.contains(&verb) && payload.trim_ascii().is_empty()),
        "{verb} accepted with a blank payload"
    );
    if !payload.trim_ascii().is_empty() {
        assert_eq!(
            req.transaction,
            request::transaction(payload),
            "transaction not echoed"
        );
    }
    match req.action {
        Action::Send(s) => assert_ne!(s.to.0, 0, "send to node 0"),
        Action::OtaStart(o) => match o.image {
            ImageSource::FirmwareDir(name) => check_name_is_inside(&name),
            ImageSource::Inline(image) => {
                assert!(!image.is_empty(), "empty inline image accepted");
                assert!(
                    image.len() as u64 <= MAX_IMAGE_BYTES,
                    "image over the limit"
                );
            }
        },
        _ => {}
    }
}

/// `command/<verb>`.
fn check_command(verb: &str, payload: &[u8]) {
    match request::parse_command(verb, payload) {
        Ok((Command::Broadcast(_), _)) => {
            assert!(
                !payload.trim_ascii().is_empty(),
                "broadcast from a blank payload"
            );
        }
        Ok(_) => {}
        Err(e) => check_error(&e),
    }
}

/// `painlessMesh/to/<dest>`: a node id is the number the destination spells, never 0.
fn check_legacy(dest: &str) {
    match request::parse_legacy_dest(dest) {
        Ok(LegacyDest::Node(id)) => {
            assert_ne!(id, 0);
            assert_eq!(dest.parse::<u32>().ok(), Some(id), "{dest:?} read as {id}");
        }
        Ok(_) => {}
        Err(e) => check_error(&e),
    }
}

/// A firmware-directory name: accepted only if it cannot leave the directory.
fn check_name(name: &str) {
    if pmesh_fwdir::check_name(name).is_ok() {
        check_name_is_inside(name);
    }
}

/// The name is relative, made only of plain components (no `..`, no root, no prefix), and
/// has no NUL.
fn check_name_is_inside(name: &str) {
    assert!(
        !name.is_empty() && !name.contains('\0'),
        "name {name:?} accepted"
    );
    for c in Path::new(name).components() {
        assert!(
            matches!(c, Component::Normal(_) | Component::CurDir),
            "name {name:?} accepted with component {c:?}"
        );
    }
}
