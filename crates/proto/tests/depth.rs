//! NodeTree depth: the 127 levels of `subs` the reference accepts are accepted, the 128th is
//! refused, and hostile nesting of any depth is refused — all inside a thread with a
//! deliberately small stack. Rust gives a thread 2 MiB by default and an ESP32 task commonly
//! has 8–32 KiB; 16 KiB here is about four times what the code needs (the reader, NodeTree
//! decoding, equality, cloning and both writers are iterative). A stack overflow aborts the
//! test process, so any regression to deep recursion fails loudly.

use pmesh_proto::json::{self, JsonErrorKind};
use pmesh_proto::{DEFAULT_MAX_DEPTH, DecodeError, Envelope, Message, NodeSync, NodeTree};

const SMALL_STACK: usize = 16 * 1024;

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the work panicked on the small stack")
}

/// A NODE_SYNC_REPLY whose `subs` nest `levels` deep (node 7 on top, then 100, 101, …).
fn chain(levels: u32) -> String {
    let mut s = String::from(r#"{"type":6,"dest":1,"from":7,"subs":["#);
    for i in 0..levels {
        s.push_str(&format!(r#"{{"nodeId":{}"#, 100 + i));
        if i + 1 < levels {
            s.push_str(r#","subs":["#);
        }
    }
    for i in 0..levels {
        s.push('}');
        if i + 1 < levels {
            s.push(']');
        }
    }
    s.push_str("]}");
    s
}

#[test]
fn accepts_127_levels_of_subs_on_a_small_stack() {
    // All the work happens on the small stack; the checks run afterwards on the test thread
    // (a failing assertion's panic machinery could itself overflow 16 KiB).
    let frame = chain(127);
    let input = frame.clone();
    let (rewritten, sync, again, pretty_tree, shape, twin_equal, other_differs) =
        on_small_stack(move || {
            let env = Envelope::parse(input.as_bytes(), DEFAULT_MAX_DEPTH).unwrap();
            let copy = env.clone();
            let rewritten = json::Value::Object(copy.body.clone()).to_vec();
            let Message::NodeSyncReply(sync) = env.decode() else {
                panic!("not a reply")
            };
            let tree = &sync.tree;
            let shape = (
                tree.size(),
                tree.depth(),
                tree.contains(226),
                tree.contains(227),
                tree.node_list(true).len(),
                tree.is_rooted(),
            );
            let twin_equal = tree.clone() == *tree;
            let mut other = tree.clone();
            let mut leaf = &mut other;
            while !leaf.subs.is_empty() {
                leaf = &mut leaf.subs[0];
            }
            leaf.root = true;
            let other_differs = other != *tree && other.is_rooted();
            // Both writers, and reading their output back.
            let compact = sync.to_json();
            let back = Envelope::parse(&compact, DEFAULT_MAX_DEPTH).unwrap();
            let Message::NodeSyncReply(again) = back.decode() else {
                panic!("not a reply")
            };
            let pretty = json::parse(&tree.to_json_pretty(), DEFAULT_MAX_DEPTH).unwrap();
            let pretty_tree = NodeTree::from_object(pretty.as_object().unwrap());
            let direct = NodeSync::parse_frame(input.as_bytes(), DEFAULT_MAX_DEPTH);
            assert!(direct.as_ref() == Some(&sync), "direct reader differs");
            (
                rewritten,
                sync,
                again,
                pretty_tree,
                shape,
                twin_equal,
                other_differs,
            )
        });
    assert_eq!(rewritten, frame.as_bytes());
    assert_eq!(shape, (128, 128, true, false, 128, false));
    assert!(twin_equal && other_differs);
    assert_eq!(again, sync);
    assert_eq!(pretty_tree, sync.tree);
}

#[test]
fn refuses_128_levels_and_hostile_nesting_on_a_small_stack() {
    let results = on_small_stack(|| {
        let arrays = format!("{{\"a\":{}", "[".repeat(1_000_000));
        let objects = r#"{"a":"#.repeat(200_000);
        let subs = r#"{"nodeId":1,"subs":["#.repeat(100_000);
        let frames = [chain(128), arrays, objects, subs];
        let direct = frames
            .iter()
            .map(|f| NodeSync::parse_frame(f.as_bytes(), DEFAULT_MAX_DEPTH));
        assert!(
            direct.into_iter().all(|d| d.is_none()),
            "direct reader accepted a deep frame"
        );
        frames.map(|f| match Envelope::parse(f.as_bytes(), DEFAULT_MAX_DEPTH) {
            Err(DecodeError::Json(e)) => Ok((e.kind, f.as_bytes()[e.offset])),
            Err(other) => Err(format!("{other}")),
            Ok(_) => Err("accepted".to_string()),
        })
    });
    for r in &results {
        let (kind, _) = r.as_ref().unwrap();
        assert_eq!(*kind, JsonErrorKind::TooDeep);
    }
    // The error points at the container that went one level too deep: for the 128-level
    // tree, the `subs` array of node 226, the 256th nested container.
    assert_eq!(results[0].as_ref().unwrap().1, b'[');
}
