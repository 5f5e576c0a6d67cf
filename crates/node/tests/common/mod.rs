//! A single node under test with scripted neighbours: the test plays every peer by hand,
//! except that NODE_SYNC requests are answered automatically with the tree the test gave for
//! that link (so links stay up while time passes).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use pmesh_node::{Config, ConnId, Direction, DropReason, Event, Instant, Node, Transmit};
use serde_json::Value;

/// Reads a vector file from `<repo>/testdata/vectors/` (a copy of the shared spec's vectors).
pub fn vectors(name: &str) -> Value {
    let path = format!(
        "{}/../../testdata/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A frame the node wrote.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Instant,
    pub conn: ConnId,
    /// JSON text without the NUL.
    pub text: String,
    pub json: Value,
}

impl Sent {
    pub fn ty(&self) -> i64 {
        self.json["type"].as_i64().unwrap()
    }
    pub fn msg_type(&self) -> Option<i64> {
        self.json["msg"]["type"].as_i64()
    }
}

/// The NODE_SYNC frame a neighbour with tree `tree_json` sends: its tree's fields, then
/// `type,dest,from` (the reference's field order).
pub fn sync_frame(tree_json: &str, ty: i32, dest: u32, from: u32) -> String {
    let body = tree_json.strip_suffix('}').expect("a JSON object");
    format!("{body},\"type\":{ty},\"dest\":{dest},\"from\":{from}}}")
}

pub struct Rig {
    pub node: Node,
    pub now: Instant,
    pub sent: Vec<Sent>,
    pub events: Vec<(Instant, Event<core::convert::Infallible>)>,
    pub closed: Vec<(ConnId, DropReason)>,
    /// conn -> (neighbour id, tree JSON) used to answer the node's NODE_SYNC requests.
    pub peers: BTreeMap<ConnId, (u32, String)>,
}

impl Rig {
    pub fn new(cfg: Config, start: Instant) -> Rig {
        Rig {
            node: Node::without_plugins(cfg),
            now: start,
            sent: vec![],
            events: vec![],
            closed: vec![],
            peers: BTreeMap::new(),
        }
    }

    pub fn connect(&mut self, conn: ConnId, dir: Direction) {
        self.node.handle_connect(conn, self.now, dir);
        self.pump();
    }

    /// Opens `conn` and syncs it with a neighbour whose tree is `tree_json` (it sends a
    /// NODE_SYNC_REQUEST; later requests of the node are answered with the same tree).
    pub fn add_neighbour(&mut self, conn: ConnId, dir: Direction, tree_json: &str) {
        let id = tree_id(tree_json);
        self.peers.insert(conn, (id, tree_json.to_owned()));
        self.connect(conn, dir);
        let me = self.node.id();
        self.deliver(conn, &sync_frame(tree_json, 5, me, id));
    }

    /// Delivers one frame (NUL added) at the current time.
    pub fn deliver(&mut self, conn: ConnId, frame: &str) {
        let mut bytes = frame.as_bytes().to_vec();
        bytes.push(0);
        self.node.handle_bytes(conn, self.now, &bytes);
        self.pump();
    }

    /// Runs the node's timers up to and including `t`.
    pub fn advance_to(&mut self, t: Instant) {
        assert!(t >= self.now, "time goes forward");
        while let Some(due) = self.node.poll_timeout() {
            if due > t {
                break;
            }
            self.now = self.now.max(due);
            self.node.handle_timeout(self.now);
            self.pump();
        }
        self.now = t;
        self.node.handle_timeout(t);
        self.pump();
    }

    pub fn advance(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }

    /// Drains the node; answers its NODE_SYNC requests on links with a scripted neighbour.
    pub fn pump(&mut self) {
        loop {
            let mut answers = vec![];
            while let Some(t) = self.node.poll_transmit() {
                match t {
                    Transmit::Send { conn, data } => {
                        assert_eq!(data.last(), Some(&0), "frames end in NUL");
                        let text = std::str::from_utf8(&data[..data.len() - 1])
                            .unwrap()
                            .to_owned();
                        assert!(!text.as_bytes().contains(&0), "one frame per Send here");
                        let json: Value =
                            serde_json::from_str(&text).expect("node emits valid JSON");
                        if let (true, Some((id, tree))) = (json["type"] == 5, self.peers.get(&conn))
                        {
                            answers.push((conn, sync_frame(tree, 6, self.node.id(), *id)));
                        }
                        self.sent.push(Sent {
                            at: self.now,
                            conn,
                            text,
                            json,
                        });
                    }
                    Transmit::Close { conn, reason } => {
                        self.peers.remove(&conn);
                        self.closed.push((conn, reason));
                    }
                }
            }
            while let Some(e) = self.node.poll_event() {
                self.events.push((self.now, e));
            }
            if answers.is_empty() {
                return;
            }
            for (conn, frame) in answers {
                let mut bytes = frame.into_bytes();
                bytes.push(0);
                self.node.handle_bytes(conn, self.now, &bytes);
            }
        }
    }

    /// Frames sent since index `from` (use `self.sent.len()` as a mark).
    pub fn sent_since(&self, mark: usize) -> &[Sent] {
        &self.sent[mark..]
    }

    /// Time-sync frames the node sent on `conn` since `mark` whose `msg.type` is 0 or 1
    /// (what its time-sync task sends; replies are type 2).
    pub fn time_sync_starts(&self, mark: usize, conn: ConnId) -> Vec<Sent> {
        self.sent_since(mark)
            .iter()
            .filter(|s| s.conn == conn && s.ty() == 4 && matches!(s.msg_type(), Some(0 | 1)))
            .cloned()
            .collect()
    }
}

/// The `nodeId` of a tree given as JSON text (0 when absent).
pub fn tree_id(tree_json: &str) -> u32 {
    let v: Value = serde_json::from_str(tree_json).unwrap();
    v["nodeId"].as_u64().unwrap_or(0) as u32
}

/// A local instant whose low 32 bits (the reference's `micros()`) are `low`, well away from 0.
pub fn instant_with_low_bits(low: u32) -> Instant {
    Instant::from_micros((4u64 << 32) + u64::from(low))
}
