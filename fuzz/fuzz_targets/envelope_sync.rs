//! Frame decoding: `Envelope` and the typed messages (`pmesh_proto::message`), NODE_SYNC's
//! direct readers (`sync_scan.rs`: into a `NodeTree` and into a `FlatTree`), `NodeTree` and
//! `FlatTree` (`tree.rs`), and the Alteriom packages.
//!
//! Input: `[depth selector][frame JSON...]`.
//!
//! Invariants:
//! - the direct NODE_SYNC readers answer only where the general decoder gives the same
//!   message (their documented contract), and the flat reader answers exactly when the tree
//!   reader does, with the same header and the flat form of the same tree, whatever its
//!   buffers held before;
//! - a decoded NodeTree and its FlatTree agree (size, ids, JSON, back to the same tree);
//! - every writer round-trips: NODE_SYNC, TIME_SYNC/TIME_DELAY, BROADCAST/SINGLE, packages and
//!   the envelope are written, parsed and decoded back to the same message, and writing
//!   again gives the same bytes; a written NODE_SYNC is canonical (the flat reader copies its
//!   tree JSON byte for byte).

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use pmesh_proto::message::{Message, NodeSync, SyncHeader, TimeMessage, time_type};
use pmesh_proto::packages::Package;
use pmesh_proto::tree::FlatTree;
use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope, Routing};

const DEPTHS: [usize; 8] = [0, 1, 2, 3, 5, 9, 64, DEFAULT_MAX_DEPTH];

thread_local! {
    /// One scratch tree for every input, as a node keeps one: the flat reader must not depend
    /// on what a previous frame left in it.
    static SCRATCH: RefCell<FlatTree> = RefCell::new(FlatTree::leaf(7));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let depth = DEPTHS[usize::from(selector & 7)];
    check_direct_readers(frame, depth);
    if depth != DEFAULT_MAX_DEPTH {
        check_direct_readers(frame, DEFAULT_MAX_DEPTH);
    }
    let Ok(env) = Envelope::parse(frame, depth) else {
        return;
    };
    check_envelope_round_trip(&env, depth);
    match env.decode() {
        Message::NodeSyncRequest(sync) | Message::NodeSyncReply(sync) => check_sync(&sync),
        Message::TimeSync(t) | Message::TimeDelay(t) => check_time(&t),
        Message::Broadcast(m) | Message::Single(m) => {
            let again = decode(&m.to_json());
            assert_eq!(again, env.decode(), "user message round trip");
            if let Some(p) = Package::from_user_message(&m, depth) {
                check_package(&p);
            }
        }
        Message::Package(p) => check_package(&p),
        _ => {}
    }
});

/// The direct readers against the general decoder.
fn check_direct_readers(frame: &[u8], depth: usize) {
    let direct = NodeSync::parse_frame(frame, depth);
    let flat = SCRATCH.with_borrow_mut(|scratch| {
        NodeSync::parse_frame_flat(frame, depth, scratch).map(|h| (h, scratch.clone()))
    });
    assert_eq!(
        direct.is_some(),
        flat.is_some(),
        "the tree and flat readers disagree on whether to answer"
    );
    let Some(sync) = direct else { return };
    let env = Envelope::parse(frame, depth)
        .expect("the direct reader answered for a frame the general decoder rejects");
    assert_eq!(env.routing, Routing::Neighbour);
    let general = match env.decode() {
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => s,
        other => panic!("the direct reader read a NODE_SYNC, the decoder {other:?}"),
    };
    assert_eq!(
        sync, general,
        "direct reader differs from the general decoder"
    );
    let (header, tree) = flat.expect("checked above");
    assert_eq!(
        header,
        SyncHeader {
            ty: sync.ty,
            dest: sync.dest,
            from: sync.from
        }
    );
    assert_eq!(tree, FlatTree::from_tree(&sync.tree), "flat reader's tree");
    assert_eq!(tree.json(), &sync.tree.to_json()[..], "flat reader's JSON");
}

/// A NodeTree, its flat form and the NODE_SYNC writer.
fn check_sync(sync: &NodeSync) {
    let tree = &sync.tree;
    let flat = FlatTree::from_tree(tree);
    assert_eq!(&flat.to_tree(), tree, "flat tree back to a NodeTree");
    assert_eq!(flat.json(), &tree.to_json()[..]);
    assert_eq!(flat.size(), tree.size());
    assert_eq!(flat.subs_len(), tree.subs.len());
    assert_eq!(flat.is_rooted(), tree.is_rooted());
    assert_eq!(flat.ids().collect::<Vec<_>>(), tree.node_list(true));
    let probe = tree.subs.last().map_or(tree.node_id, |s| s.node_id);
    assert_eq!(flat.contains(probe), tree.contains(probe));
    assert_eq!(flat.subs_contain(probe), tree.subs_contain(probe));
    if let Some(path) = flat.path_to(probe) {
        assert_eq!(path.first(), Some(&tree.node_id));
        assert_eq!(path.last(), Some(&probe));
    }
    // The writer: canonical, so both direct readers take it and give the same sync back.
    let written = sync.to_json();
    let back = NodeSync::parse_frame(&written, DEFAULT_MAX_DEPTH)
        .unwrap_or_else(|| panic!("written NODE_SYNC not read directly: {}", lossy(&written)));
    assert_eq!(&back, sync, "NODE_SYNC round trip");
    let mut scratch = FlatTree::leaf(1);
    let header = NodeSync::parse_frame_flat(&written, DEFAULT_MAX_DEPTH, &mut scratch)
        .expect("written NODE_SYNC not read by the flat reader");
    assert_eq!(
        (header.ty, header.dest, header.from),
        (sync.ty, sync.dest, sync.from)
    );
    assert_eq!(scratch, flat);
    assert_eq!(
        back.to_json(),
        written,
        "NODE_SYNC writer is not a fixed point"
    );
}

/// TIME_SYNC / TIME_DELAY: the writer omits the stamps the `msg.type` does not carry.
fn check_time(t: &TimeMessage) {
    let written = t.to_json();
    let expected = TimeMessage {
        t0: if t.time_type >= time_type::REQUEST {
            t.t0
        } else {
            0
        },
        t1: if t.time_type >= time_type::REPLY {
            t.t1
        } else {
            0
        },
        t2: if t.time_type >= time_type::REPLY {
            t.t2
        } else {
            0
        },
        ..*t
    };
    match decode(&written) {
        Message::TimeSync(back) | Message::TimeDelay(back) => {
            assert_eq!(back, expected, "time message round trip");
            assert_eq!(back.to_json(), written);
        }
        other => panic!("time message read back as {other:?}"),
    }
}

/// Packages: the writer's output decodes to a package that writes the same bytes again. One
/// exception, shared with the reference (ArduinoJson writes non-finite floats as `null` too): a
/// float that read as infinite (`1e999`) is written `null`, which reads back as 0; from the
/// second write on, the bytes are fixed.
fn check_package(p: &Package) {
    let written = p.to_json();
    let back = match decode(&written) {
        Message::Package(back) => back,
        other => panic!("package {} read back as {other:?}", p.name()),
    };
    assert_eq!(back.header(), p.header(), "package header round trip");
    let again = back.to_json();
    if again != written {
        assert!(
            written.windows(4).any(|w| w == b"null"),
            "package writer is not a fixed point: {} -> {}",
            lossy(&written),
            lossy(&again)
        );
        let third = match decode(&again) {
            Message::Package(p) => p.to_json(),
            other => panic!("package read back as {other:?}"),
        };
        assert_eq!(
            third, again,
            "package writer is not a fixed point after two writes"
        );
    }
}

/// The envelope's own writer (used for frames pmesh builds): same header after a round trip,
/// and a fixed point after one.
fn check_envelope_round_trip(env: &Envelope, depth: usize) {
    let written = env.to_json();
    let back = Envelope::parse(&written, depth)
        .unwrap_or_else(|e| panic!("envelope writer output rejected ({e}): {}", lossy(&written)));
    assert_eq!(
        (back.ty, back.dest, back.from),
        (env.ty, env.dest, env.from),
        "header changed by a round trip"
    );
    assert_eq!(
        back.to_json(),
        written,
        "envelope writer is not a fixed point"
    );
}

fn decode(json: &[u8]) -> Message {
    Envelope::parse(json, DEFAULT_MAX_DEPTH)
        .unwrap_or_else(|e| panic!("our own frame rejected ({e}): {}", lossy(json)))
        .decode()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
