//! Frames: the routing header every node reads, and typed decoding of the core messages.

use alloc::vec::Vec;
use core::fmt;

use crate::json::{self, JsonError, Object, Value, write_i64, write_str, write_u64};
use crate::ota;
use crate::packages::Package;
use crate::tree::{FlatTree, NodeTree};

/// Core message types (`protocol::Type`).
pub mod types {
    /// TIME_DELAY: trip-delay measurement, routed SINGLE.
    pub const TIME_DELAY: i32 = 3;
    /// TIME_SYNC: clock offset exchange with a neighbour.
    pub const TIME_SYNC: i32 = 4;
    /// NODE_SYNC_REQUEST.
    pub const NODE_SYNC_REQUEST: i32 = 5;
    /// NODE_SYNC_REPLY.
    pub const NODE_SYNC_REPLY: i32 = 6;
    /// CONTROL: deprecated; accepted and dropped.
    pub const CONTROL: i32 = 7;
    /// BROADCAST user message.
    pub const BROADCAST: i32 = 8;
    /// SINGLE user message.
    pub const SINGLE: i32 = 9;
    /// OTA announce.
    pub const OTA_ANNOUNCE: i32 = 10;
    /// OTA data request.
    pub const OTA_DATA_REQUEST: i32 = 11;
    /// OTA data.
    pub const OTA_DATA: i32 = 12;
}

/// How a frame travels (`router::Routing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Routing {
    /// To the neighbour only (routing 0; types 4, 5, 6).
    Neighbour,
    /// Along the tree to `dest` (routing 1; types 3, 9).
    Single,
    /// To every node (routing 2; type 8).
    Broadcast,
    /// None of the above (the reference's ROUTING_ERROR, or an out-of-range `routing`):
    /// processed locally only, never forwarded.
    None,
}

impl Routing {
    /// The class of a frame: an integer `routing` field wins, otherwise the type decides.
    pub fn classify(ty: i32, routing_field: Option<i32>) -> Routing {
        match routing_field {
            Some(0) => Routing::Neighbour,
            Some(1) => Routing::Single,
            Some(2) => Routing::Broadcast,
            Some(_) => Routing::None,
            None => match ty {
                types::TIME_DELAY | types::SINGLE => Routing::Single,
                types::BROADCAST => Routing::Broadcast,
                types::TIME_SYNC | types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY => {
                    Routing::Neighbour
                }
                _ => Routing::None,
            },
        }
    }

    /// The name used in reports (`single`, `broadcast`, `neighbour`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Routing::Neighbour => "neighbour",
            Routing::Single => "single",
            Routing::Broadcast => "broadcast",
            Routing::None => "none",
        }
    }

    /// The wire value of the `routing` field.
    pub fn wire_value(self) -> i32 {
        match self {
            Routing::Neighbour => 0,
            Routing::Single => 1,
            Routing::Broadcast => 2,
            Routing::None => -1,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON the reference accepts.
    Json(JsonError),
    /// Valid JSON, but not an object (the reference reads it as type 0 and drops it).
    NotAnObject(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "invalid JSON: {e}"),
            DecodeError::NotAnObject(kind) => {
                write!(f, "top-level JSON value is {kind}, expected an object")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<JsonError> for DecodeError {
    fn from(e: JsonError) -> Self {
        DecodeError::Json(e)
    }
}

/// A parsed frame: the header fields routing needs, and the whole object.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// `type` (read like `as<int>`: numeric strings and floats convert; missing is 0).
    pub ty: i32,
    /// The routing class.
    pub routing: Routing,
    /// `dest` (lenient u32; 0 when absent). pmesh routes by the same value it decodes.
    pub dest: u32,
    /// `from` (lenient u32; 0 when absent).
    pub from: u32,
    /// Every field, unknown ones included, in wire order.
    pub body: Object,
}

impl Envelope {
    /// Parses one frame's JSON (without its NUL). `max_depth` bounds nesting (255 in the reference).
    pub fn parse(json: &[u8], max_depth: usize) -> Result<Envelope, DecodeError> {
        match json::parse(json, max_depth)? {
            Value::Object(body) => Ok(Envelope::from_object(body)),
            Value::Array(_) => Err(DecodeError::NotAnObject("an array")),
            Value::String(_) => Err(DecodeError::NotAnObject("a string")),
            Value::Number(_) => Err(DecodeError::NotAnObject("a number")),
            Value::Bool(_) => Err(DecodeError::NotAnObject("a bool")),
            Value::Null => Err(DecodeError::NotAnObject("null")),
        }
    }

    /// Reads the header of an already parsed object.
    pub fn from_object(body: Object) -> Envelope {
        let ty = body.get("type").map(Value::to_i32_lenient).unwrap_or(0);
        let routing_field = body.get("routing").and_then(Value::as_i32_strict);
        let dest = body.get("dest").map(Value::to_u32_lenient).unwrap_or(0);
        let from = body.get("from").map(Value::to_u32_lenient).unwrap_or(0);
        Envelope {
            ty,
            routing: Routing::classify(ty, routing_field),
            dest,
            from,
            body,
        }
    }

    /// A field of the body.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.body.get(key)
    }

    /// Decodes the typed message this frame carries.
    pub fn decode(&self) -> Message {
        Message::decode(self)
    }

    /// Decodes the frame if it is one of the protocol's own types ([`Message::decode_core`]).
    pub fn decode_core(&self) -> Message {
        Message::decode_core(self)
    }

    /// Re-serializes the body (only for frames pmesh builds; relays forward the original bytes).
    pub fn to_json(&self) -> Vec<u8> {
        Value::Object(self.body.clone()).to_vec()
    }
}

/// `msg.type` of TIME_SYNC / TIME_DELAY (`protocol::TimeType`).
pub mod time_type {
    /// TIME_SYNC_ERROR
    pub const ERROR: i32 = -1;
    /// TIME_SYNC_REQUEST: "please start a sync with me".
    pub const SYNC_REQUEST: i32 = 0;
    /// TIME_REQUEST: carries t0.
    pub const REQUEST: i32 = 1;
    /// TIME_REPLY: carries t0, t1, t2.
    pub const REPLY: i32 = 2;
}

/// TIME_SYNC (4) or TIME_DELAY (3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeMessage {
    /// 3 or 4.
    pub ty: i32,
    /// Destination.
    pub dest: u32,
    /// Sender.
    pub from: u32,
    /// `msg.type`, see [`time_type`].
    pub time_type: i32,
    /// Mesh time at the requester when sent.
    pub t0: u32,
    /// Mesh time at the responder when received.
    pub t1: u32,
    /// Mesh time at the responder when replying.
    pub t2: u32,
}

impl TimeMessage {
    fn from_envelope(env: &Envelope) -> Self {
        let msg = env.get("msg").and_then(Value::as_object);
        let stamp = |k| {
            msg.and_then(|m| m.get(k))
                .and_then(Value::as_u32_strict)
                .unwrap_or(0)
        };
        TimeMessage {
            ty: env.ty,
            dest: env.dest,
            from: env.from,
            time_type: msg
                .and_then(|m| m.get("type"))
                .map(Value::to_i32_lenient)
                .unwrap_or(0),
            t0: stamp("t0"),
            t1: stamp("t1"),
            t2: stamp("t2"),
        }
    }

    /// Serializes as the reference does: `t0` only when `msg.type >= 1`, `t1`/`t2` when `>= 2`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"{\"type\":");
        write_i64(&mut out, i64::from(self.ty));
        out.extend_from_slice(b",\"dest\":");
        write_u64(&mut out, u64::from(self.dest));
        out.extend_from_slice(b",\"from\":");
        write_u64(&mut out, u64::from(self.from));
        out.extend_from_slice(b",\"msg\":{\"type\":");
        write_i64(&mut out, i64::from(self.time_type));
        if self.time_type >= time_type::REQUEST {
            out.extend_from_slice(b",\"t0\":");
            write_u64(&mut out, u64::from(self.t0));
        }
        if self.time_type >= time_type::REPLY {
            out.extend_from_slice(b",\"t1\":");
            write_u64(&mut out, u64::from(self.t1));
            out.extend_from_slice(b",\"t2\":");
            write_u64(&mut out, u64::from(self.t2));
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// NODE_SYNC_REQUEST (5) or NODE_SYNC_REPLY (6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSync {
    /// 5 or 6.
    pub ty: i32,
    /// Destination (0 when a station does not yet know its peer).
    pub dest: u32,
    /// Sender.
    pub from: u32,
    /// The sender's tree (minus the receiver's branch).
    pub tree: NodeTree,
}

impl NodeSync {
    /// Serializes as `nodeId[,root][,hasTimeAuthority][,subs],type,dest,from`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(b'{');
        self.tree.write_fields(&mut out);
        write_sync_trailer(&mut out, self.ty, self.dest, self.from);
        out
    }
}

impl NodeSync {
    /// Decodes a NODE_SYNC frame of the usual shape straight into a NodeTree, without building
    /// a JSON value tree first — several times cheaper for big trees. Answers only for frames
    /// with the keys stock nodes send (`nodeId`, `root`, `hasTimeAuthority`, `subs`, `type` 5
    /// or 6, `dest`, `from`; no `routing`, no duplicates, plain numbers and bools), and then
    /// exactly what `Envelope::parse(frame)` + `decode()` gives, routing NEIGHBOUR. `None`
    /// means "decode it the general way" (which also reports errors precisely).
    pub fn parse_frame(frame: &[u8], max_depth: usize) -> Option<NodeSync> {
        crate::sync_scan::parse(frame, max_depth)
    }

    /// [`NodeSync::parse_frame`] into a [`FlatTree`] (reusing its buffers, no allocation per
    /// node): the frame's header is returned and its tree is left in `tree`, exactly the
    /// `tree` `parse_frame` would give (as [`FlatTree::from_tree`] of it). `None`: decode it
    /// the general way; `tree` then holds nothing meaningful.
    pub fn parse_frame_flat(
        frame: &[u8],
        max_depth: usize,
        tree: &mut FlatTree,
    ) -> Option<SyncHeader> {
        crate::sync_scan::parse_flat(frame, max_depth, tree)
    }
}

/// The header of a NODE_SYNC frame (its tree is read separately, see
/// [`NodeSync::parse_frame_flat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncHeader {
    /// 5 or 6.
    pub ty: i32,
    /// Destination.
    pub dest: u32,
    /// Sender.
    pub from: u32,
}

/// Appends `,"type":T,"dest":D,"from":F}` to a NODE_SYNC body.
pub fn write_sync_trailer(out: &mut Vec<u8>, ty: i32, dest: u32, from: u32) {
    out.extend_from_slice(b",\"type\":");
    write_i64(out, i64::from(ty));
    out.extend_from_slice(b",\"dest\":");
    write_u64(out, u64::from(dest));
    out.extend_from_slice(b",\"from\":");
    write_u64(out, u64::from(from));
    out.push(b'}');
}

/// BROADCAST (8) or SINGLE (9) user message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMessage {
    /// 8 or 9.
    pub ty: i32,
    /// Destination (0 for broadcasts).
    pub dest: u32,
    /// Sender.
    pub from: u32,
    /// The payload's exact bytes. Policy: lossless — bytes that are not UTF-8 are kept as they
    /// arrived; a non-string `msg` is its JSON text and a missing one reads `null`, as in the reference.
    pub msg: Vec<u8>,
}

impl UserMessage {
    /// Serializes as `{"type":T,"dest":D,"from":F,"msg":"..."}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.msg.len());
        out.extend_from_slice(b"{\"type\":");
        write_i64(&mut out, i64::from(self.ty));
        out.extend_from_slice(b",\"dest\":");
        write_u64(&mut out, u64::from(self.dest));
        out.extend_from_slice(b",\"from\":");
        write_u64(&mut out, u64::from(self.from));
        out.extend_from_slice(b",\"msg\":");
        write_str(&mut out, &self.msg);
        out.push(b'}');
        out
    }

    /// The payload as text, replacing bytes that are not UTF-8 with U+FFFD.
    pub fn msg_lossy(&self) -> alloc::borrow::Cow<'_, str> {
        alloc::string::String::from_utf8_lossy(&self.msg)
    }

    /// A package double-encoded in `msg` (Alteriom style: `sendBroadcast(pkg.toJson())`), if any.
    pub fn inner_package(&self, max_depth: usize) -> Option<Envelope> {
        let first = self.msg.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        let env = Envelope::parse(&self.msg, max_depth).ok()?;
        env.body.get("type").is_some().then_some(env)
    }
}

/// A decoded frame.
// Variants are not boxed: a Message is decoded, handled and dropped one frame at a time,
// and boxing would cost an allocation per frame on the relay path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// TIME_DELAY (3).
    TimeDelay(TimeMessage),
    /// TIME_SYNC (4).
    TimeSync(TimeMessage),
    /// NODE_SYNC_REQUEST (5).
    NodeSyncRequest(NodeSync),
    /// NODE_SYNC_REPLY (6).
    NodeSyncReply(NodeSync),
    /// CONTROL (7): deprecated, no handler; dropped.
    Control,
    /// BROADCAST (8).
    Broadcast(UserMessage),
    /// SINGLE (9).
    Single(UserMessage),
    /// OTA Announce (10).
    OtaAnnounce(ota::Announce),
    /// OTA DataRequest (11).
    OtaDataRequest(ota::DataRequest),
    /// OTA Data (12).
    OtaData(ota::Data),
    /// An Alteriom package (both generations) or a pmesh extension package.
    Package(Package),
    /// Any other type: kept as its envelope, forwarded by `routing`.
    Unknown,
}

impl Message {
    /// Typed decode, lenient like the reference's (missing fields default; it cannot fail).
    pub fn decode(env: &Envelope) -> Message {
        match Message::decode_core(env) {
            Message::Unknown => match Package::decode(env) {
                Some(p) => Message::Package(p),
                None => Message::Unknown,
            },
            core => core,
        }
    }

    /// [`Message::decode`] for the protocol's own types only (time, node sync, user messages,
    /// classic OTA); everything else is `Unknown`. A node uses this: it leaves the package
    /// decoder (and its float parsing) out of a firmware that does not read packages.
    pub fn decode_core(env: &Envelope) -> Message {
        match env.ty {
            types::TIME_DELAY => Message::TimeDelay(TimeMessage::from_envelope(env)),
            types::TIME_SYNC => Message::TimeSync(TimeMessage::from_envelope(env)),
            types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY => {
                let sync = NodeSync {
                    ty: env.ty,
                    dest: env.dest,
                    from: env.from,
                    tree: NodeTree::from_object(&env.body),
                };
                if env.ty == types::NODE_SYNC_REQUEST {
                    Message::NodeSyncRequest(sync)
                } else {
                    Message::NodeSyncReply(sync)
                }
            }
            types::CONTROL => Message::Control,
            types::BROADCAST | types::SINGLE => {
                let m = UserMessage {
                    ty: env.ty,
                    dest: env.dest,
                    from: env.from,
                    msg: env
                        .get("msg")
                        .map(Value::to_text)
                        .unwrap_or_else(|| b"null".to_vec()),
                };
                if env.ty == types::BROADCAST {
                    Message::Broadcast(m)
                } else {
                    Message::Single(m)
                }
            }
            types::OTA_ANNOUNCE => Message::OtaAnnounce(ota::Announce::from_envelope(env)),
            types::OTA_DATA_REQUEST => {
                Message::OtaDataRequest(ota::DataRequest::from_envelope(env))
            }
            types::OTA_DATA => Message::OtaData(ota::Data::from_envelope(env)),
            _ => Message::Unknown,
        }
    }
}
