//! Alteriom packages (spec §7), native or double-encoded inside the `msg` of types 8/9.
//!
//! Every package is a typed struct with the reference's field names, widths and decoding rules,
//! plus the plugin header ([`Header`]: `from[,dest],routing,type`) and `extra`, the fields the
//! type does not know, kept in wire order. Serialization ([`Package::to_json`]) writes the header,
//! the known fields in the order the reference's `addTo` emits them, then `extra`: a frame the
//! reference serializer produced comes out byte for byte as it went in.
//!
//! Decoding follows the reference's two read styles:
//! - a plain assignment (`x = jsonObj["k"]`, ArduinoJson `as<T>()`): numbers, numeric strings,
//!   floats (truncated) and bools convert; missing, unconvertible or out-of-range reads 0; a text
//!   field that is missing or not a string reads as its JSON text (`"null"` when missing);
//! - a read with a default (`jsonObj["k"] | d`): only a JSON value of the field's kind counts,
//!   anything else gives the default. pmesh checks integers against the field's own range (the
//!   reference checks `int` and then truncates; see docs/compatibility/proto.md).
//!
//! **Two generations.** The Phase 1/2 fork (`fd83475f`) used type 201 for commands and 203 for
//! the enhanced status and sent no `message_type`; the current fork (`68e0599`) uses 400 and 604
//! and adds `message_type` (never to 603's cousin 604, nor to 613). [`Generation`] names them;
//! decoding keeps whatever the frame had (type number, presence of `message_type`, presence of
//! the StatusPackage configuration objects), so a package re-serializes in its own generation.
//!
//! **Arrays.** The reference keeps at most 50 node-list entries, 100 connections and 20 alerts;
//! pmesh keeps every entry (lossless) and writes the count fields from the array lengths, as
//! the reference does.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::json::{Number, Object, Value, write_i64, write_str, write_u64};
use crate::message::{Envelope, Routing, UserMessage};

/// Package type numbers (`type` on the wire).
pub mod types {
    /// SensorPackage.
    pub const SENSOR: i32 = 200;
    /// CommandPackage of the Phase 1/2 generation.
    pub const COMMAND_PHASE2: i32 = 201;
    /// StatusPackage.
    pub const STATUS: i32 = 202;
    /// EnhancedStatusPackage of the Phase 1/2 generation.
    pub const ENHANCED_STATUS_PHASE2: i32 = 203;
    /// MetricsPackage.
    pub const METRICS: i32 = 204;
    /// CommandPackage (current generation).
    pub const COMMAND: i32 = 400;
    /// MeshNodeListPackage.
    pub const MESH_NODE_LIST: i32 = 600;
    /// MeshTopologyPackage.
    pub const MESH_TOPOLOGY: i32 = 601;
    /// MeshAlertPackage.
    pub const MESH_ALERT: i32 = 602;
    /// MeshBridgePackage.
    pub const MESH_BRIDGE: i32 = 603;
    /// EnhancedStatusPackage (current generation).
    pub const ENHANCED_STATUS: i32 = 604;
    /// HealthCheckPackage.
    pub const HEALTH_CHECK: i32 = 605;
    /// BridgeStatusPackage.
    pub const BRIDGE_STATUS: i32 = 610;
    /// BridgeElectionPackage.
    pub const BRIDGE_ELECTION: i32 = 611;
    /// BridgeTakeoverPackage.
    pub const BRIDGE_TAKEOVER: i32 = 612;
    /// BridgeCoordinationPackage.
    pub const BRIDGE_COORDINATION: i32 = 613;
    /// NTPTimeSyncPackage.
    pub const NTP_TIME_SYNC: i32 = 614;
    /// GatewayDataPackage.
    pub const GATEWAY_DATA: i32 = 620;
    /// GatewayAckPackage.
    pub const GATEWAY_ACK: i32 = 621;
}

/// Which Alteriom fork generation a package belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Generation {
    /// Phase 1/2 (`fd83475f`, Oct 2025): command 201, enhanced status 203, no `message_type`.
    Phase2,
    /// Current fork (v1.7.7 and later, `68e0599`): command 400, enhanced status 604,
    /// `message_type` on most packages, types 600–621.
    Head,
}

impl Generation {
    /// The generation a type number belongs to; None for types both generations use with the
    /// same number (200, 202, 204: tell them apart with [`Package::generation`]) and for types
    /// that are not Alteriom packages.
    pub fn of_type(ty: i32) -> Option<Generation> {
        match ty {
            types::COMMAND_PHASE2 | types::ENHANCED_STATUS_PHASE2 => Some(Generation::Phase2),
            types::COMMAND
            | types::MESH_NODE_LIST..=types::HEALTH_CHECK
            | types::BRIDGE_STATUS..=types::NTP_TIME_SYNC
            | types::GATEWAY_DATA
            | types::GATEWAY_ACK => Some(Generation::Head),
            _ => None,
        }
    }
}

/// Text carried by a package, kept as its exact bytes (the reference does not validate UTF-8).
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(pub Vec<u8>);

impl Text {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(&self.0).ok()
    }

    /// The text, bytes that are not UTF-8 replaced by U+FFFD.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.as_bytes().to_vec())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s.into_bytes())
    }
}

impl From<Vec<u8>> for Text {
    fn from(b: Vec<u8>) -> Self {
        Text(b)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

/// The plugin header every package starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sender.
    pub from: u32,
    /// Destination: always present for single-routed packages (`SinglePackage`); for broadcast
    /// packages only when the frame carried one (e.g. the targeted BridgeStatus of `wifi.hpp`).
    pub dest: Option<u32>,
    /// `routing` as sent (0 neighbour, 1 single, 2 broadcast).
    pub routing: i32,
    /// `type`.
    pub ty: i32,
}

impl Header {
    /// A broadcast-package header (`from,routing:2,type`).
    pub fn broadcast(ty: i32, from: u32) -> Header {
        Header {
            from,
            dest: None,
            routing: 2,
            ty,
        }
    }

    /// A single-package header (`from,dest,routing:1,type`).
    pub fn single(ty: i32, from: u32, dest: u32) -> Header {
        Header {
            from,
            dest: Some(dest),
            routing: 1,
            ty,
        }
    }

    /// The routing class this header gives the frame.
    pub fn routing_class(&self) -> Routing {
        Routing::classify(self.ty, Some(self.routing))
    }

    fn read(env: &Envelope, single: bool) -> Header {
        let routing = env.get("routing").map(Value::to_i32_lenient).unwrap_or(0);
        let dest = (single || env.get("dest").is_some()).then_some(env.dest);
        Header {
            from: env.from,
            dest,
            routing,
            ty: env.ty,
        }
    }

    fn write(&self, w: &mut ObjWriter<'_>) {
        w.put("from", &self.from);
        if let Some(dest) = self.dest {
            w.put("dest", &dest);
        }
        w.put("routing", &self.routing);
        w.put("type", &self.ty);
    }
}

const HEADER_KEYS: [&str; 4] = ["from", "dest", "routing", "type"];

// ---------------------------------------------------------------------------------------------
// Field codecs

/// How one field type is read and written (private: the packages' own plumbing).
trait Field: Sized {
    /// ArduinoJson `as<T>()`: the plain-assignment read.
    fn read_as(v: Option<&Value>) -> Self;
    /// `is<T>() ? as<T>() : none`: the read behind `jsonObj[k] | default`.
    fn read_is(v: Option<&Value>) -> Option<Self>;
    /// Writes the value.
    fn write(&self, out: &mut Vec<u8>);
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn read_as(v: Option<&Value>) -> Self {
                v.and_then(Value::to_i64_lenient).and_then(|i| <$t>::try_from(i).ok()).unwrap_or(0)
            }
            fn read_is(v: Option<&Value>) -> Option<Self> {
                match v? {
                    Value::Number(Number::UInt(n)) => <$t>::try_from(*n).ok(),
                    Value::Number(Number::Int(n)) => <$t>::try_from(*n).ok(),
                    _ => None,
                }
            }
            fn write(&self, out: &mut Vec<u8>) {
                write_i64(out, i64::from(*self));
            }
        }
    )*};
}
int_field!(u8, u16, i8, i32);

impl Field for u32 {
    fn read_as(v: Option<&Value>) -> Self {
        v.map(Value::to_u32_lenient).unwrap_or(0)
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(Number::UInt(n)) => u32::try_from(*n).ok(),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_u64(out, u64::from(*self));
    }
}

impl Field for bool {
    fn read_as(v: Option<&Value>) -> Self {
        match v {
            Some(Value::Bool(b)) => *b,
            Some(other) => other.to_i64_lenient().is_some_and(|i| i != 0),
            None => false,
        }
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        v?.as_bool()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

fn lenient_f64(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Number(n)) => n.to_f64(),
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::String(s)) => core::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0),
        _ => 0.0,
    }
}

impl Field for f64 {
    fn read_as(v: Option<&Value>) -> Self {
        lenient_f64(v)
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(n) => Some(n.to_f64()),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        Number::Float(*self).write(out);
    }
}

impl Field for f32 {
    fn read_as(v: Option<&Value>) -> Self {
        lenient_f64(v) as f32
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(n) => Some(n.to_f64() as f32),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        crate::json::write_f32(out, *self);
    }
}

impl Field for Text {
    fn read_as(v: Option<&Value>) -> Self {
        Text(v.map(Value::to_text).unwrap_or_else(|| b"null".to_vec()))
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::String(s) => Some(Text(s.clone())),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, &self.0);
    }
}

/// `std::vector<uint32_t>` read element by element with `as<uint32_t>()`.
impl Field for Vec<u32> {
    fn read_as(v: Option<&Value>) -> Self {
        match v {
            Some(Value::Array(items)) => items.iter().map(Value::to_u32_lenient).collect(),
            _ => Vec::new(),
        }
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        matches!(v, Some(Value::Array(_))).then(|| Self::read_as(v))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_u64(out, u64::from(*id));
        }
        out.push(b']');
    }
}

/// A JSON object nested in a package (array element or configuration section).
trait Section: Sized {
    fn read(r: &mut Reader<'_>) -> Self;
    fn write_fields(&self, w: &mut ObjWriter<'_>);
}

/// An object field: read when it is an object (`is<JsonObject>()`), else all defaults, as the
/// reference reads a missing or mistyped section.
fn read_section<S: Section>(v: Option<&Value>) -> S {
    let empty = Object::new();
    let obj = match v {
        Some(Value::Object(o)) => o,
        _ => &empty,
    };
    let mut r = Reader::new(obj);
    S::read(&mut r)
}

fn write_section<S: Section>(s: &S, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut w = ObjWriter::new(out);
    s.write_fields(&mut w);
    out.push(b'}');
}

/// An array of sections: every element is read (non-objects as all-default elements).
fn read_section_array<S: Section>(v: Option<&Value>) -> Vec<S> {
    match v {
        Some(Value::Array(items)) => items.iter().map(|item| read_section(Some(item))).collect(),
        _ => Vec::new(),
    }
}

fn write_section_array<S: Section>(items: &[S], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_section(item, out);
    }
    out.push(b']');
}

/// Reads fields of an object and remembers which keys it looked at, so the rest can be kept.
struct Reader<'a> {
    obj: &'a Object,
    known: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(obj: &'a Object) -> Self {
        Reader {
            obj,
            known: Vec::with_capacity(24),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.obj.get(key)
    }

    /// `x = obj[key]`.
    fn read_as<T: Field>(&mut self, key: &'static str) -> T {
        T::read_as(self.get(key))
    }

    /// `x = obj[key] | default`.
    fn read_or<T: Field>(&mut self, key: &'static str, default: T) -> T {
        T::read_is(self.get(key)).unwrap_or(default)
    }

    /// `message_type`: None when the frame has none (Phase 1/2 style), else the value read
    /// with `| default`.
    fn message_type(&mut self, default: u16) -> Option<u16> {
        self.get("message_type")
            .map(|v| u16::read_is(Some(v)).unwrap_or(default))
    }

    /// A key the type knows but does not store (derived on output, e.g. `read_interval_s`).
    fn skip(&mut self, key: &'static str) {
        self.known.push(key);
    }

    fn section<S: Section>(&mut self, key: &'static str) -> S {
        read_section(self.get(key))
    }

    fn section_array<S: Section>(&mut self, key: &'static str) -> Vec<S> {
        read_section_array(self.get(key))
    }

    /// The fields not looked at, in wire order.
    fn rest(self) -> Object {
        let mut extra = Object::new();
        for (k, v) in self.obj.iter() {
            if !self.known.iter().any(|known| known.as_bytes() == k) {
                extra.insert(k.to_vec(), v.clone());
            }
        }
        extra
    }

    fn rest_after_header(mut self) -> Object {
        self.known.extend_from_slice(&HEADER_KEYS);
        self.rest()
    }
}

/// Writes `"key":value` pairs with commas between them.
struct ObjWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        ObjWriter { out, first: true }
    }

    fn key(&mut self, key: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    fn put<T: Field>(&mut self, key: &str, value: &T) {
        self.key(key.as_bytes());
        value.write(self.out);
    }

    fn put_section<S: Section>(&mut self, key: &str, value: &S) {
        self.key(key.as_bytes());
        write_section(value, self.out);
    }

    fn put_section_array<S: Section>(&mut self, key: &str, items: &[S]) {
        self.key(key.as_bytes());
        write_section_array(items, self.out);
    }

    fn message_type(&mut self, message_type: Option<u16>) {
        if let Some(mt) = message_type {
            self.put("message_type", &mt);
        }
    }

    fn extra(&mut self, extra: &Object) {
        for (k, v) in extra.iter() {
            self.key(k);
            v.write(self.out);
        }
    }
}

/// Implements the shared plumbing of a top-level package struct: `decode` from an envelope and
/// `to_json` (header, fields, extra).
macro_rules! package_impl {
    ($name:ident, single: $single:expr) => {
        impl $name {
            /// Typed decode, lenient like the reference (missing fields default).
            pub fn from_envelope(env: &Envelope) -> Self {
                let header = Header::read(env, $single);
                let mut r = Reader::new(&env.body);
                let mut p = Self::read_body(header, &mut r);
                p.extra = r.rest_after_header();
                p
            }

            /// Serialization in the reference's field order; unknown fields last.
            pub fn to_json(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(256);
                out.push(b'{');
                let mut w = ObjWriter::new(&mut out);
                self.header.write(&mut w);
                self.write_body(&mut w);
                w.extra(&self.extra);
                out.push(b'}');
                out
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 200 SensorPackage

/// SensorPackage (200, broadcast): environmental readings.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorPackage {
    /// Plugin header.
    pub header: Header,
    /// `temp`: temperature, °C.
    pub temp: f64,
    /// `hum`: relative humidity, %.
    pub hum: f64,
    /// `press`: pressure, hPa.
    pub press: f64,
    /// `sid`: sensor id.
    pub sid: u32,
    /// `ts`: Unix time of the reading, s.
    pub ts: u32,
    /// `bat`: battery, %.
    pub bat: u8,
    /// `message_type` (current generation: 200; absent in Phase 1/2).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl SensorPackage {
    /// A current-generation package from `from`, all readings 0.
    pub fn new(from: u32) -> Self {
        SensorPackage {
            header: Header::broadcast(types::SENSOR, from),
            temp: 0.0,
            hum: 0.0,
            press: 0.0,
            sid: 0,
            ts: 0,
            bat: 0,
            message_type: Some(200),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        SensorPackage {
            header,
            temp: r.read_as("temp"),
            hum: r.read_as("hum"),
            press: r.read_as("press"),
            sid: r.read_as("sid"),
            ts: r.read_as("ts"),
            bat: r.read_as("bat"),
            message_type: r.message_type(200),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("temp", &self.temp);
        w.put("hum", &self.hum);
        w.put("press", &self.press);
        w.put("sid", &self.sid);
        w.put("ts", &self.ts);
        w.put("bat", &self.bat);
        w.message_type(self.message_type);
    }
}
package_impl!(SensorPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 201 / 400 CommandPackage

/// CommandPackage (201 in Phase 1/2, 400 now; single): a command for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandPackage {
    /// Plugin header (`type` 201 or 400).
    pub header: Header,
    /// `cmd`: command code (u8 on the wire; larger values do not fit).
    pub cmd: u8,
    /// `target`: target device id.
    pub target: u32,
    /// `params`: parameters, a string holding JSON.
    pub params: Text,
    /// `cid`: command id.
    pub cid: u32,
    /// `message_type` (400 in the current generation; absent in Phase 1/2).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl CommandPackage {
    /// A command from `from` to `dest`, in the given generation's type and shape.
    pub fn new(generation: Generation, from: u32, dest: u32) -> Self {
        let (ty, message_type) = match generation {
            Generation::Phase2 => (types::COMMAND_PHASE2, None),
            Generation::Head => (types::COMMAND, Some(400)),
        };
        CommandPackage {
            header: Header::single(ty, from, dest),
            cmd: 0,
            target: 0,
            params: Text::default(),
            cid: 0,
            message_type,
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        CommandPackage {
            header,
            cmd: r.read_as("cmd"),
            target: r.read_as("target"),
            params: r.read_as("params"),
            cid: r.read_as("cid"),
            message_type: r.message_type(400),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("cmd", &self.cmd);
        w.put("target", &self.target);
        w.put("params", &self.params);
        w.put("cid", &self.cid);
        w.message_type(self.message_type);
    }
}
package_impl!(CommandPackage, single: true);

// ---------------------------------------------------------------------------------------------
// 202 StatusPackage

/// StatusPackage (202, broadcast): device status, with the current generation's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPackage {
    /// Plugin header.
    pub header: Header,
    /// `status`: device status flags.
    pub status: u8,
    /// `uptime`, s.
    pub uptime: u32,
    /// `mem`: free memory, KB.
    pub mem: u16,
    /// `wifi`: signal strength.
    pub wifi: u8,
    /// `fw`: firmware version.
    pub fw: Text,
    /// `respTo`: command id answered (0 = none; `respTo`/`respMsg` are sent only when > 0).
    pub resp_to: u32,
    /// `respMsg`: answer text.
    pub resp_msg: Text,
    /// The configuration sections the current generation always sends; None for a Phase 1/2
    /// package (which has none of them).
    pub config: Option<Box<StatusConfig>>,
    /// `message_type` (202 in the current generation).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

/// The configuration sections of a current-generation [`StatusPackage`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusConfig {
    /// `organization`.
    pub organization: Organization,
    /// `sensors`.
    pub sensors: SensorConfig,
    /// `sensor_inventory`.
    pub sensor_inventory: SensorInventory,
    /// `display_config`.
    pub display: DisplayConfig,
    /// `power_config`.
    pub power: PowerConfig,
    /// `mqtt_retry`.
    pub mqtt_retry: MqttRetry,
}

const STATUS_CONFIG_KEYS: [&str; 6] = [
    "organization",
    "sensors",
    "sensor_inventory",
    "display_config",
    "power_config",
    "mqtt_retry",
];

impl StatusPackage {
    /// A current-generation status from `from` (configuration sections present, all defaults).
    pub fn new(from: u32) -> Self {
        StatusPackage {
            header: Header::broadcast(types::STATUS, from),
            status: 0,
            uptime: 0,
            mem: 0,
            wifi: 0,
            fw: Text::default(),
            resp_to: 0,
            resp_msg: Text::default(),
            config: Some(Box::default()),
            message_type: Some(202),
            extra: Object::new(),
        }
    }

    /// A Phase 1/2 status (no configuration sections, no `message_type`).
    pub fn phase2(from: u32) -> Self {
        StatusPackage {
            config: None,
            message_type: None,
            ..Self::new(from)
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        let has_config = STATUS_CONFIG_KEYS.iter().any(|k| r.obj.get(k).is_some());
        let status = r.read_as("status");
        let uptime = r.read_as("uptime");
        let mem = r.read_as("mem");
        let wifi = r.read_as("wifi");
        let fw = r.read_as("fw");
        let resp_to = r.read_or("respTo", 0);
        let resp_msg = r.read_as("respMsg");
        let config = if has_config {
            Some(Box::new(StatusConfig {
                organization: r.section("organization"),
                sensors: r.section("sensors"),
                sensor_inventory: r.section("sensor_inventory"),
                display: r.section("display_config"),
                power: r.section("power_config"),
                mqtt_retry: r.section("mqtt_retry"),
            }))
        } else {
            None
        };
        StatusPackage {
            header,
            status,
            uptime,
            mem,
            wifi,
            fw,
            resp_to,
            resp_msg,
            config,
            message_type: r.message_type(202),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("status", &self.status);
        w.put("uptime", &self.uptime);
        w.put("mem", &self.mem);
        w.put("wifi", &self.wifi);
        w.put("fw", &self.fw);
        if self.resp_to > 0 {
            w.put("respTo", &self.resp_to);
            w.put("respMsg", &self.resp_msg);
        }
        if let Some(c) = &self.config {
            w.put_section("organization", &c.organization);
            w.put_section("sensors", &c.sensors);
            w.put_section("sensor_inventory", &c.sensor_inventory);
            w.put_section("display_config", &c.display);
            w.put_section("power_config", &c.power);
            w.put_section("mqtt_retry", &c.mqtt_retry);
        }
        w.message_type(self.message_type);
    }
}
package_impl!(StatusPackage, single: false);

/// `organization` section of a StatusPackage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Organization {
    /// `organizationId`.
    pub organization_id: Text,
    /// `customerId`.
    pub customer_id: Text,
    /// `deviceGroup`.
    pub device_group: Text,
    /// `device_name`.
    pub device_name: Text,
    /// `device_location`.
    pub device_location: Text,
    /// `device_secret_set`.
    pub device_secret_set: bool,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for Organization {
    fn read(r: &mut Reader<'_>) -> Self {
        Organization {
            organization_id: r.read_as("organizationId"),
            customer_id: r.read_as("customerId"),
            device_group: r.read_as("deviceGroup"),
            device_name: r.read_as("device_name"),
            device_location: r.read_as("device_location"),
            device_secret_set: r.read_or("device_secret_set", false),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("organizationId", &self.organization_id);
        w.put("customerId", &self.customer_id);
        w.put("deviceGroup", &self.device_group);
        w.put("device_name", &self.device_name);
        w.put("device_location", &self.device_location);
        w.put("device_secret_set", &self.device_secret_set);
        w.extra(&self.extra);
    }
}

/// `sensors` section: intervals in ms (the `_s` variants are written as ms/1000, never read).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SensorConfig {
    /// `read_interval_ms`.
    pub read_interval_ms: u32,
    /// `transmission_interval_ms`.
    pub transmission_interval_ms: u32,
    /// `calibration`.
    pub calibration: Calibration,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for SensorConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let read_interval_ms = r.read_or("read_interval_ms", 0);
        r.skip("read_interval_s");
        let transmission_interval_ms = r.read_or("transmission_interval_ms", 0);
        r.skip("transmission_interval_s");
        SensorConfig {
            read_interval_ms,
            transmission_interval_ms,
            calibration: r.section("calibration"),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("read_interval_ms", &self.read_interval_ms);
        w.put("read_interval_s", &(self.read_interval_ms / 1000));
        w.put("transmission_interval_ms", &self.transmission_interval_ms);
        w.put(
            "transmission_interval_s",
            &(self.transmission_interval_ms / 1000),
        );
        w.put_section("calibration", &self.calibration);
        w.extra(&self.extra);
    }
}

/// `sensors.calibration` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    /// `temperature_offset`.
    pub temperature_offset: f64,
    /// `humidity_offset`.
    pub humidity_offset: f64,
    /// `pressure_offset`.
    pub pressure_offset: f64,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for Calibration {
    fn read(r: &mut Reader<'_>) -> Self {
        Calibration {
            temperature_offset: r.read_or("temperature_offset", 0.0),
            humidity_offset: r.read_or("humidity_offset", 0.0),
            pressure_offset: r.read_or("pressure_offset", 0.0),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("temperature_offset", &self.temperature_offset);
        w.put("humidity_offset", &self.humidity_offset);
        w.put("pressure_offset", &self.pressure_offset);
        w.extra(&self.extra);
    }
}

/// `sensor_inventory` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SensorInventory {
    /// `count`: sensors attached.
    pub count: u8,
    /// `type_mask`: bit mask of sensor kinds.
    pub type_mask: u8,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for SensorInventory {
    fn read(r: &mut Reader<'_>) -> Self {
        SensorInventory {
            count: r.read_or("count", 0),
            type_mask: r.read_or("type_mask", 0),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("count", &self.count);
        w.put("type_mask", &self.type_mask);
        w.extra(&self.extra);
    }
}

/// `display_config` section (`timeout_ms`, or the older `timeout`, is read).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DisplayConfig {
    /// `enabled`.
    pub enabled: bool,
    /// `brightness`, 0–255.
    pub brightness: u8,
    /// `timeout_ms`.
    pub timeout_ms: u32,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for DisplayConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let enabled = r.read_or("enabled", false);
        let brightness = r.read_or("brightness", 0);
        let timeout_ms = r.read_or_older("timeout_ms", "timeout", 0);
        r.skip("timeout_s");
        DisplayConfig {
            enabled,
            brightness,
            timeout_ms,
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("enabled", &self.enabled);
        w.put("brightness", &self.brightness);
        w.put("timeout_ms", &self.timeout_ms);
        w.put("timeout_s", &(self.timeout_ms / 1000));
        w.extra(&self.extra);
    }
}

/// `power_config` section (`deep_sleep_interval_ms`, or the older `deep_sleep_interval`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PowerConfig {
    /// `deep_sleep_enabled`.
    pub deep_sleep_enabled: bool,
    /// `deep_sleep_interval_ms`.
    pub deep_sleep_interval_ms: u32,
    /// `battery_percent`.
    pub battery_percent: u8,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for PowerConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let deep_sleep_enabled = r.read_or("deep_sleep_enabled", false);
        let deep_sleep_interval_ms =
            r.read_or_older("deep_sleep_interval_ms", "deep_sleep_interval", 0);
        r.skip("deep_sleep_interval_s");
        let battery_percent = r.read_or("battery_percent", 0);
        PowerConfig {
            deep_sleep_enabled,
            deep_sleep_interval_ms,
            battery_percent,
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("deep_sleep_enabled", &self.deep_sleep_enabled);
        w.put("deep_sleep_interval_ms", &self.deep_sleep_interval_ms);
        w.put(
            "deep_sleep_interval_s",
            &(self.deep_sleep_interval_ms / 1000),
        );
        w.put("battery_percent", &self.battery_percent);
        w.extra(&self.extra);
    }
}

/// `mqtt_retry` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MqttRetry {
    /// `max_attempts`.
    pub max_attempts: u8,
    /// `circuit_breaker_ms`.
    pub circuit_breaker_ms: u32,
    /// `hourly_retry_enabled`.
    pub hourly_retry_enabled: bool,
    /// `initial_retry_ms`.
    pub initial_retry_ms: u32,
    /// `max_retry_ms`.
    pub max_retry_ms: u32,
    /// `backoff_multiplier` (a C++ `float`).
    pub backoff_multiplier: f32,
    /// Fields this section does not know.
    pub extra: Object,
}

impl Section for MqttRetry {
    fn read(r: &mut Reader<'_>) -> Self {
        let max_attempts = r.read_or("max_attempts", 0);
        let circuit_breaker_ms = r.read_or("circuit_breaker_ms", 0);
        r.skip("circuit_breaker_s");
        let hourly_retry_enabled = r.read_or("hourly_retry_enabled", false);
        let initial_retry_ms = r.read_or("initial_retry_ms", 0);
        r.skip("initial_retry_s");
        let max_retry_ms = r.read_or("max_retry_ms", 0);
        r.skip("max_retry_s");
        let backoff_multiplier = r.read_or("backoff_multiplier", 0.0);
        MqttRetry {
            max_attempts,
            circuit_breaker_ms,
            hourly_retry_enabled,
            initial_retry_ms,
            max_retry_ms,
            backoff_multiplier,
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("max_attempts", &self.max_attempts);
        w.put("circuit_breaker_ms", &self.circuit_breaker_ms);
        w.put("circuit_breaker_s", &(self.circuit_breaker_ms / 1000));
        w.put("hourly_retry_enabled", &self.hourly_retry_enabled);
        w.put("initial_retry_ms", &self.initial_retry_ms);
        w.put("initial_retry_s", &(self.initial_retry_ms / 1000));
        w.put("max_retry_ms", &self.max_retry_ms);
        w.put("max_retry_s", &(self.max_retry_ms / 1000));
        w.put("backoff_multiplier", &self.backoff_multiplier);
        w.extra(&self.extra);
    }
}

impl Reader<'_> {
    /// `obj[newer] | obj[older] | default`: the newer key when it is present, else the older.
    fn read_or_older<T: Field>(
        &mut self,
        newer: &'static str,
        older: &'static str,
        default: T,
    ) -> T {
        let v = match self.get(newer) {
            Some(Value::Null) | None => self.get(older),
            present => {
                self.skip(older);
                present
            }
        };
        T::read_is(v).unwrap_or(default)
    }

    /// The rest of a nested section (no plugin header inside).
    fn obj_rest(&mut self) -> Object {
        let r = Reader {
            obj: self.obj,
            known: core::mem::take(&mut self.known),
        };
        r.rest()
    }
}

// ---------------------------------------------------------------------------------------------
// 203 / 604 EnhancedStatusPackage

/// EnhancedStatusPackage (203 in Phase 1/2, 604 now; broadcast). Never has `message_type`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnhancedStatusPackage {
    /// Plugin header (`type` 203 or 604).
    pub header: Header,
    /// `status`: device status flags.
    pub status: u8,
    /// `uptime`, s.
    pub uptime: u32,
    /// `mem`: free memory, KB.
    pub mem: u16,
    /// `wifi`: signal strength.
    pub wifi: u8,
    /// `fw`: firmware version.
    pub fw: Text,
    /// `fwMD5`: firmware MD5.
    pub fw_md5: Text,
    /// `nodes`: nodes known in the mesh.
    pub nodes: u16,
    /// `conns`: direct connections.
    pub conns: u8,
    /// `msgRx`.
    pub msg_rx: u32,
    /// `msgTx`.
    pub msg_tx: u32,
    /// `msgDrop`.
    pub msg_drop: u32,
    /// `latency`: average, ms.
    pub latency: u16,
    /// `loss`: packet loss, %.
    pub loss: u8,
    /// `throughput`, B/s.
    pub throughput: u16,
    /// `alerts`: bit flags (meaning unspecified by the reference).
    pub alerts: u8,
    /// `lastErr`.
    pub last_err: Text,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl EnhancedStatusPackage {
    /// An enhanced status from `from` in the given generation's type number.
    pub fn new(generation: Generation, from: u32) -> Self {
        let ty = match generation {
            Generation::Phase2 => types::ENHANCED_STATUS_PHASE2,
            Generation::Head => types::ENHANCED_STATUS,
        };
        EnhancedStatusPackage {
            header: Header::broadcast(ty, from),
            status: 0,
            uptime: 0,
            mem: 0,
            wifi: 0,
            fw: Text::default(),
            fw_md5: Text::default(),
            nodes: 0,
            conns: 0,
            msg_rx: 0,
            msg_tx: 0,
            msg_drop: 0,
            latency: 0,
            loss: 0,
            throughput: 0,
            alerts: 0,
            last_err: Text::default(),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        EnhancedStatusPackage {
            header,
            status: r.read_as("status"),
            uptime: r.read_as("uptime"),
            mem: r.read_as("mem"),
            wifi: r.read_as("wifi"),
            fw: r.read_as("fw"),
            fw_md5: r.read_as("fwMD5"),
            nodes: r.read_as("nodes"),
            conns: r.read_as("conns"),
            msg_rx: r.read_as("msgRx"),
            msg_tx: r.read_as("msgTx"),
            msg_drop: r.read_as("msgDrop"),
            latency: r.read_as("latency"),
            loss: r.read_as("loss"),
            throughput: r.read_as("throughput"),
            alerts: r.read_as("alerts"),
            last_err: r.read_as("lastErr"),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("status", &self.status);
        w.put("uptime", &self.uptime);
        w.put("mem", &self.mem);
        w.put("wifi", &self.wifi);
        w.put("fw", &self.fw);
        w.put("fwMD5", &self.fw_md5);
        w.put("nodes", &self.nodes);
        w.put("conns", &self.conns);
        w.put("msgRx", &self.msg_rx);
        w.put("msgTx", &self.msg_tx);
        w.put("msgDrop", &self.msg_drop);
        w.put("latency", &self.latency);
        w.put("loss", &self.loss);
        w.put("throughput", &self.throughput);
        w.put("alerts", &self.alerts);
        w.put("lastErr", &self.last_err);
    }
}
package_impl!(EnhancedStatusPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 204 MetricsPackage

/// MetricsPackage (204, broadcast): performance metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsPackage {
    /// Plugin header.
    pub header: Header,
    /// `cpu`: CPU usage, %.
    pub cpu: u8,
    /// `loops`: loop iterations per second.
    pub loops: u32,
    /// `tasks`: pending tasks.
    pub tasks: u16,
    /// `heap`: free heap, bytes.
    pub heap: u32,
    /// `minHeap`: lowest free heap since boot.
    pub min_heap: u32,
    /// `fragHeap`: heap fragmentation, %.
    pub frag_heap: u32,
    /// `maxHeap`: largest allocatable block.
    pub max_heap: u32,
    /// `bytesRx`.
    pub bytes_rx: u32,
    /// `bytesTx`.
    pub bytes_tx: u32,
    /// `pktsRx`.
    pub pkts_rx: u16,
    /// `pktsTx`.
    pub pkts_tx: u16,
    /// `pktsDrop`.
    pub pkts_drop: u16,
    /// `throughput`, B/s.
    pub throughput: u16,
    /// `avgResp`, µs.
    pub avg_resp: u32,
    /// `maxResp`, µs.
    pub max_resp: u32,
    /// `avgLat`: mesh latency, ms.
    pub avg_lat: u16,
    /// `connQual`, 0–100.
    pub conn_qual: u8,
    /// `rssi`, dBm.
    pub rssi: i8,
    /// `ts`: collection time.
    pub ts: u32,
    /// `interval`: collection interval, ms.
    pub interval: u32,
    /// `message_type` (204 in the current generation).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl MetricsPackage {
    /// A current-generation metrics package from `from`, all zero.
    pub fn new(from: u32) -> Self {
        MetricsPackage {
            header: Header::broadcast(types::METRICS, from),
            cpu: 0,
            loops: 0,
            tasks: 0,
            heap: 0,
            min_heap: 0,
            frag_heap: 0,
            max_heap: 0,
            bytes_rx: 0,
            bytes_tx: 0,
            pkts_rx: 0,
            pkts_tx: 0,
            pkts_drop: 0,
            throughput: 0,
            avg_resp: 0,
            max_resp: 0,
            avg_lat: 0,
            conn_qual: 0,
            rssi: 0,
            ts: 0,
            interval: 0,
            message_type: Some(204),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        MetricsPackage {
            header,
            cpu: r.read_as("cpu"),
            loops: r.read_as("loops"),
            tasks: r.read_as("tasks"),
            heap: r.read_as("heap"),
            min_heap: r.read_as("minHeap"),
            frag_heap: r.read_as("fragHeap"),
            max_heap: r.read_as("maxHeap"),
            bytes_rx: r.read_as("bytesRx"),
            bytes_tx: r.read_as("bytesTx"),
            pkts_rx: r.read_as("pktsRx"),
            pkts_tx: r.read_as("pktsTx"),
            pkts_drop: r.read_as("pktsDrop"),
            throughput: r.read_as("throughput"),
            avg_resp: r.read_as("avgResp"),
            max_resp: r.read_as("maxResp"),
            avg_lat: r.read_as("avgLat"),
            conn_qual: r.read_as("connQual"),
            rssi: r.read_as("rssi"),
            ts: r.read_as("ts"),
            interval: r.read_as("interval"),
            message_type: r.message_type(204),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("cpu", &self.cpu);
        w.put("loops", &self.loops);
        w.put("tasks", &self.tasks);
        w.put("heap", &self.heap);
        w.put("minHeap", &self.min_heap);
        w.put("fragHeap", &self.frag_heap);
        w.put("maxHeap", &self.max_heap);
        w.put("bytesRx", &self.bytes_rx);
        w.put("bytesTx", &self.bytes_tx);
        w.put("pktsRx", &self.pkts_rx);
        w.put("pktsTx", &self.pkts_tx);
        w.put("pktsDrop", &self.pkts_drop);
        w.put("throughput", &self.throughput);
        w.put("avgResp", &self.avg_resp);
        w.put("maxResp", &self.max_resp);
        w.put("avgLat", &self.avg_lat);
        w.put("connQual", &self.conn_qual);
        w.put("rssi", &self.rssi);
        w.put("ts", &self.ts);
        w.put("interval", &self.interval);
        w.message_type(self.message_type);
    }
}
package_impl!(MetricsPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 600 MeshNodeListPackage

/// MeshNodeListPackage (600, broadcast): nodes and their status.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshNodeListPackage {
    /// Plugin header.
    pub header: Header,
    /// `nodes` (`nodeCount` is written as its length; the reference keeps at most 50).
    pub nodes: Vec<MeshNodeInfo>,
    /// `meshId`.
    pub mesh_id: Text,
    /// `message_type` (600).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

/// One entry of [`MeshNodeListPackage::nodes`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshNodeInfo {
    /// `nodeId`.
    pub node_id: u32,
    /// `status`: 0 offline, 1 online, 2 unreachable.
    pub status: u8,
    /// `lastSeen`: Unix time.
    pub last_seen: u32,
    /// `rssi`, dBm.
    pub rssi: i8,
    /// Fields this entry does not know.
    pub extra: Object,
}

impl Section for MeshNodeInfo {
    fn read(r: &mut Reader<'_>) -> Self {
        MeshNodeInfo {
            node_id: r.read_as("nodeId"),
            status: r.read_as("status"),
            last_seen: r.read_as("lastSeen"),
            rssi: r.read_as("rssi"),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("nodeId", &self.node_id);
        w.put("status", &self.status);
        w.put("lastSeen", &self.last_seen);
        w.put("rssi", &self.rssi);
        w.extra(&self.extra);
    }
}

impl MeshNodeListPackage {
    /// An empty node list from `from`.
    pub fn new(from: u32) -> Self {
        MeshNodeListPackage {
            header: Header::broadcast(types::MESH_NODE_LIST, from),
            nodes: Vec::new(),
            mesh_id: Text::default(),
            message_type: Some(600),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        let nodes = r.section_array("nodes");
        r.skip("nodeCount");
        MeshNodeListPackage {
            header,
            nodes,
            mesh_id: r.read_as("meshId"),
            message_type: r.message_type(600),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put_section_array("nodes", &self.nodes);
        w.put("nodeCount", &(self.nodes.len() as u32));
        w.put("meshId", &self.mesh_id);
        w.message_type(self.message_type);
    }
}
package_impl!(MeshNodeListPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 601 MeshTopologyPackage

/// MeshTopologyPackage (601, broadcast): the mesh's links.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshTopologyPackage {
    /// Plugin header.
    pub header: Header,
    /// `connections` (`totalConnections` is written as its length; the reference keeps ≤ 100).
    pub connections: Vec<MeshConnection>,
    /// `rootNode`.
    pub root_node: u32,
    /// `message_type` (601).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

/// One entry of [`MeshTopologyPackage::connections`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshConnection {
    /// `from`.
    pub from: u32,
    /// `to`.
    pub to: u32,
    /// `quality`, 0.0–1.0 (a C++ `float`).
    pub quality: f32,
    /// `latency`, ms.
    pub latency: u16,
    /// `hops`.
    pub hops: u8,
    /// Fields this entry does not know.
    pub extra: Object,
}

impl Section for MeshConnection {
    fn read(r: &mut Reader<'_>) -> Self {
        MeshConnection {
            from: r.read_as("from"),
            to: r.read_as("to"),
            quality: r.read_as("quality"),
            latency: r.read_as("latency"),
            hops: r.read_as("hops"),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("from", &self.from);
        w.put("to", &self.to);
        w.put("quality", &self.quality);
        w.put("latency", &self.latency);
        w.put("hops", &self.hops);
        w.extra(&self.extra);
    }
}

impl MeshTopologyPackage {
    /// An empty topology from `from`.
    pub fn new(from: u32) -> Self {
        MeshTopologyPackage {
            header: Header::broadcast(types::MESH_TOPOLOGY, from),
            connections: Vec::new(),
            root_node: 0,
            message_type: Some(601),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        let connections = r.section_array("connections");
        r.skip("totalConnections");
        MeshTopologyPackage {
            header,
            connections,
            root_node: r.read_as("rootNode"),
            message_type: r.message_type(601),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put_section_array("connections", &self.connections);
        w.put("totalConnections", &(self.connections.len() as u32));
        w.put("rootNode", &self.root_node);
        w.message_type(self.message_type);
    }
}
package_impl!(MeshTopologyPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 602 MeshAlertPackage

/// MeshAlertPackage (602, broadcast): alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshAlertPackage {
    /// Plugin header.
    pub header: Header,
    /// `alerts` (`alertCount` is written as its length; the reference keeps at most 20).
    pub alerts: Vec<MeshAlert>,
    /// `message_type` (602).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

/// One entry of [`MeshAlertPackage::alerts`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshAlert {
    /// `type`: 0 low memory, 1 node offline, 2 connection lost, …
    pub alert_type: u8,
    /// `severity`: 0 info, 1 warning, 2 critical.
    pub severity: u8,
    /// `msg`.
    pub msg: Text,
    /// `nodeId`.
    pub node_id: u32,
    /// `value` (a C++ `float`).
    pub value: f32,
    /// `threshold` (a C++ `float`).
    pub threshold: f32,
    /// `alertId`.
    pub alert_id: u32,
    /// Fields this entry does not know.
    pub extra: Object,
}

impl Section for MeshAlert {
    fn read(r: &mut Reader<'_>) -> Self {
        MeshAlert {
            alert_type: r.read_as("type"),
            severity: r.read_as("severity"),
            msg: r.read_as("msg"),
            node_id: r.read_as("nodeId"),
            value: r.read_as("value"),
            threshold: r.read_as("threshold"),
            alert_id: r.read_as("alertId"),
            extra: r.obj_rest(),
        }
    }

    fn write_fields(&self, w: &mut ObjWriter<'_>) {
        w.put("type", &self.alert_type);
        w.put("severity", &self.severity);
        w.put("msg", &self.msg);
        w.put("nodeId", &self.node_id);
        w.put("value", &self.value);
        w.put("threshold", &self.threshold);
        w.put("alertId", &self.alert_id);
        w.extra(&self.extra);
    }
}

impl MeshAlertPackage {
    /// An empty alert list from `from`.
    pub fn new(from: u32) -> Self {
        MeshAlertPackage {
            header: Header::broadcast(types::MESH_ALERT, from),
            alerts: Vec::new(),
            message_type: Some(602),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        let alerts = r.section_array("alerts");
        r.skip("alertCount");
        MeshAlertPackage {
            header,
            alerts,
            message_type: r.message_type(602),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put_section_array("alerts", &self.alerts);
        w.put("alertCount", &(self.alerts.len() as u32));
        w.message_type(self.message_type);
    }
}
package_impl!(MeshAlertPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 603 MeshBridgePackage

/// MeshBridgePackage (603, broadcast): a message of another mesh protocol, bridged.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshBridgePackage {
    /// Plugin header.
    pub header: Header,
    /// `protocol`: 0 painlessMesh, 1 ESP-NOW, 2 BLE mesh, …
    pub protocol: u8,
    /// `fromNode`.
    pub from_node: u32,
    /// `toNode` (0 = broadcast).
    pub to_node: u32,
    /// `meshType`: the bridged protocol's message type.
    pub mesh_type: u16,
    /// `payload` (hex or base64 text).
    pub payload: Text,
    /// `rssi`, dBm.
    pub rssi: i8,
    /// `hops`.
    pub hops: u8,
    /// `meshTs`.
    pub mesh_ts: u32,
    /// `gateway`: the gateway's node id.
    pub gateway: u32,
    /// `meshId`.
    pub mesh_id: Text,
    /// `message_type` (603).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl MeshBridgePackage {
    /// An empty bridge package from `from`.
    pub fn new(from: u32) -> Self {
        MeshBridgePackage {
            header: Header::broadcast(types::MESH_BRIDGE, from),
            protocol: 0,
            from_node: 0,
            to_node: 0,
            mesh_type: 0,
            payload: Text::default(),
            rssi: 0,
            hops: 0,
            mesh_ts: 0,
            gateway: 0,
            mesh_id: Text::default(),
            message_type: Some(603),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        MeshBridgePackage {
            header,
            protocol: r.read_as("protocol"),
            from_node: r.read_as("fromNode"),
            to_node: r.read_as("toNode"),
            mesh_type: r.read_as("meshType"),
            payload: r.read_as("payload"),
            rssi: r.read_as("rssi"),
            hops: r.read_as("hops"),
            mesh_ts: r.read_as("meshTs"),
            gateway: r.read_as("gateway"),
            mesh_id: r.read_as("meshId"),
            message_type: r.message_type(603),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("protocol", &self.protocol);
        w.put("fromNode", &self.from_node);
        w.put("toNode", &self.to_node);
        w.put("meshType", &self.mesh_type);
        w.put("payload", &self.payload);
        w.put("rssi", &self.rssi);
        w.put("hops", &self.hops);
        w.put("meshTs", &self.mesh_ts);
        w.put("gateway", &self.gateway);
        w.put("meshId", &self.mesh_id);
        w.message_type(self.message_type);
    }
}
package_impl!(MeshBridgePackage, single: false);

// ---------------------------------------------------------------------------------------------
// 605 HealthCheckPackage

/// HealthCheckPackage (605, broadcast): health scores and problem flags.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckPackage {
    /// Plugin header.
    pub header: Header,
    /// `health`: 0 critical, 1 warning, 2 healthy.
    pub health: u8,
    /// `problems`: bit flags, 0x0001 low memory … 0x0200 configuration error.
    pub problems: u16,
    /// `memHealth`, 0–100.
    pub mem_health: u8,
    /// `memTrend`: memory loss, bytes/hour.
    pub mem_trend: u32,
    /// `netHealth`, 0–100.
    pub net_health: u8,
    /// `loss`: packet loss, %.
    pub loss: u8,
    /// `reconn`: reconnections in the last hour.
    pub reconn: u8,
    /// `perfHealth`, 0–100.
    pub perf_health: u8,
    /// `missed`: missed task deadlines.
    pub missed: u32,
    /// `maxLoop`: longest loop, ms.
    pub max_loop: u16,
    /// `temp`: device temperature, °C.
    pub temp: i8,
    /// `tempHealth`, 0–100.
    pub temp_health: u8,
    /// `uptime`, s.
    pub uptime: u32,
    /// `crashes`.
    pub crashes: u16,
    /// `reboot`: last reboot reason code.
    pub reboot: u32,
    /// `ettf`: estimated hours to failure (0 = unknown).
    pub ettf: u16,
    /// `recommend`: recommended actions.
    pub recommend: Text,
    /// `ts`: check time.
    pub ts: u32,
    /// `nextCheck`.
    pub next_check: u32,
    /// `message_type` (605).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl HealthCheckPackage {
    /// A healthy report from `from` (the reference constructor's defaults: scores 100,
    /// health 2). Decoding a frame reads missing scores as 0, as the reference does.
    pub fn new(from: u32) -> Self {
        HealthCheckPackage {
            header: Header::broadcast(types::HEALTH_CHECK, from),
            health: 2,
            problems: 0,
            mem_health: 100,
            mem_trend: 0,
            net_health: 100,
            loss: 0,
            reconn: 0,
            perf_health: 100,
            missed: 0,
            max_loop: 0,
            temp: 0,
            temp_health: 100,
            uptime: 0,
            crashes: 0,
            reboot: 0,
            ettf: 0,
            recommend: Text::default(),
            ts: 0,
            next_check: 0,
            message_type: Some(605),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        HealthCheckPackage {
            header,
            health: r.read_as("health"),
            problems: r.read_as("problems"),
            mem_health: r.read_as("memHealth"),
            mem_trend: r.read_as("memTrend"),
            net_health: r.read_as("netHealth"),
            loss: r.read_as("loss"),
            reconn: r.read_as("reconn"),
            perf_health: r.read_as("perfHealth"),
            missed: r.read_as("missed"),
            max_loop: r.read_as("maxLoop"),
            temp: r.read_as("temp"),
            temp_health: r.read_as("tempHealth"),
            uptime: r.read_as("uptime"),
            crashes: r.read_as("crashes"),
            reboot: r.read_as("reboot"),
            ettf: r.read_as("ettf"),
            recommend: r.read_as("recommend"),
            ts: r.read_as("ts"),
            next_check: r.read_as("nextCheck"),
            message_type: r.message_type(605),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("health", &self.health);
        w.put("problems", &self.problems);
        w.put("memHealth", &self.mem_health);
        w.put("memTrend", &self.mem_trend);
        w.put("netHealth", &self.net_health);
        w.put("loss", &self.loss);
        w.put("reconn", &self.reconn);
        w.put("perfHealth", &self.perf_health);
        w.put("missed", &self.missed);
        w.put("maxLoop", &self.max_loop);
        w.put("temp", &self.temp);
        w.put("tempHealth", &self.temp_health);
        w.put("uptime", &self.uptime);
        w.put("crashes", &self.crashes);
        w.put("reboot", &self.reboot);
        w.put("ettf", &self.ettf);
        w.put("recommend", &self.recommend);
        w.put("ts", &self.ts);
        w.put("nextCheck", &self.next_check);
        w.message_type(self.message_type);
    }
}
package_impl!(HealthCheckPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 610–614 bridge packages

/// BridgeStatusPackage (610, broadcast every 30 s by bridges; also sent single-routed with a
/// `dest` to a newly changed neighbour).
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeStatusPackage {
    /// Plugin header.
    pub header: Header,
    /// `internetConnected`.
    pub internet_connected: bool,
    /// `routerRSSI`, dBm.
    pub router_rssi: i8,
    /// `routerChannel`.
    pub router_channel: u8,
    /// `uptime`, ms.
    pub uptime: u32,
    /// `gatewayIP`.
    pub gateway_ip: Text,
    /// `timestamp`: mesh time, µs.
    pub timestamp: u32,
    /// `message_type` (610).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl BridgeStatusPackage {
    /// A bridge status from `from`.
    pub fn new(from: u32) -> Self {
        BridgeStatusPackage {
            header: Header::broadcast(types::BRIDGE_STATUS, from),
            internet_connected: false,
            router_rssi: 0,
            router_channel: 0,
            uptime: 0,
            gateway_ip: Text::default(),
            timestamp: 0,
            message_type: Some(610),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        BridgeStatusPackage {
            header,
            internet_connected: r.read_or("internetConnected", false),
            router_rssi: r.read_or("routerRSSI", 0),
            router_channel: r.read_or("routerChannel", 0),
            uptime: r.read_or("uptime", 0),
            gateway_ip: r.read_as("gatewayIP"),
            timestamp: r.read_or("timestamp", 0),
            message_type: r.message_type(610),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("internetConnected", &self.internet_connected);
        w.put("routerRSSI", &self.router_rssi);
        w.put("routerChannel", &self.router_channel);
        w.put("uptime", &self.uptime);
        w.put("gatewayIP", &self.gateway_ip);
        w.put("timestamp", &self.timestamp);
        w.message_type(self.message_type);
    }
}
package_impl!(BridgeStatusPackage, single: false);

/// BridgeElectionPackage (611, broadcast): a candidate's credentials in a bridge election.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeElectionPackage {
    /// Plugin header.
    pub header: Header,
    /// `routerRSSI`, dBm.
    pub router_rssi: i8,
    /// `uptime`, ms.
    pub uptime: u32,
    /// `freeMemory`, bytes.
    pub free_memory: u32,
    /// `timestamp`.
    pub timestamp: u32,
    /// `routerSSID`.
    pub router_ssid: Text,
    /// `message_type` (611).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl BridgeElectionPackage {
    /// An election package from `from`.
    pub fn new(from: u32) -> Self {
        BridgeElectionPackage {
            header: Header::broadcast(types::BRIDGE_ELECTION, from),
            router_rssi: 0,
            uptime: 0,
            free_memory: 0,
            timestamp: 0,
            router_ssid: Text::default(),
            message_type: Some(611),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        BridgeElectionPackage {
            header,
            router_rssi: r.read_or("routerRSSI", 0),
            uptime: r.read_or("uptime", 0),
            free_memory: r.read_or("freeMemory", 0),
            timestamp: r.read_or("timestamp", 0),
            router_ssid: r.read_as("routerSSID"),
            message_type: r.message_type(611),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("routerRSSI", &self.router_rssi);
        w.put("uptime", &self.uptime);
        w.put("freeMemory", &self.free_memory);
        w.put("timestamp", &self.timestamp);
        w.put("routerSSID", &self.router_ssid);
        w.message_type(self.message_type);
    }
}
package_impl!(BridgeElectionPackage, single: false);

/// BridgeTakeoverPackage (612, broadcast): a node announces it took over as bridge.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeTakeoverPackage {
    /// Plugin header.
    pub header: Header,
    /// `previousBridge`.
    pub previous_bridge: u32,
    /// `reason`.
    pub reason: Text,
    /// `routerRSSI`, dBm.
    pub router_rssi: i8,
    /// `timestamp`.
    pub timestamp: u32,
    /// `message_type` (612).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl BridgeTakeoverPackage {
    /// A takeover announcement from `from`.
    pub fn new(from: u32) -> Self {
        BridgeTakeoverPackage {
            header: Header::broadcast(types::BRIDGE_TAKEOVER, from),
            previous_bridge: 0,
            reason: Text::default(),
            router_rssi: 0,
            timestamp: 0,
            message_type: Some(612),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        BridgeTakeoverPackage {
            header,
            previous_bridge: r.read_or("previousBridge", 0),
            reason: r.read_as("reason"),
            router_rssi: r.read_or("routerRSSI", 0),
            timestamp: r.read_or("timestamp", 0),
            message_type: r.message_type(612),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("previousBridge", &self.previous_bridge);
        w.put("reason", &self.reason);
        w.put("routerRSSI", &self.router_rssi);
        w.put("timestamp", &self.timestamp);
        w.message_type(self.message_type);
    }
}
package_impl!(BridgeTakeoverPackage, single: false);

/// BridgeCoordinationPackage (613, broadcast; `src/painlessmesh/plugin.hpp`): multi-bridge
/// coordination. Has no `message_type`.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeCoordinationPackage {
    /// Plugin header.
    pub header: Header,
    /// `priority`: 10 highest … 1 lowest (default 5).
    pub priority: u8,
    /// `role`: "primary", "secondary" or "standby".
    pub role: Text,
    /// `load`, %.
    pub load: u8,
    /// `timestamp`.
    pub timestamp: u32,
    /// `peerBridges`: known bridge ids.
    pub peer_bridges: Vec<u32>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl BridgeCoordinationPackage {
    /// A coordination package from `from` with the reference's defaults (priority 5, secondary).
    pub fn new(from: u32) -> Self {
        BridgeCoordinationPackage {
            header: Header::broadcast(types::BRIDGE_COORDINATION, from),
            priority: 5,
            role: Text::from("secondary"),
            load: 0,
            timestamp: 0,
            peer_bridges: Vec::new(),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        BridgeCoordinationPackage {
            header,
            priority: r.read_or("priority", 5),
            role: r.read_as("role"),
            load: r.read_or("load", 0),
            timestamp: r.read_or("timestamp", 0),
            peer_bridges: r.read_as("peerBridges"),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("priority", &self.priority);
        w.put("role", &self.role);
        w.put("load", &self.load);
        w.put("timestamp", &self.timestamp);
        w.put("peerBridges", &self.peer_bridges);
    }
}
package_impl!(BridgeCoordinationPackage, single: false);

/// NTPTimeSyncPackage (614, broadcast): a bridge distributes NTP time.
#[derive(Clone, Debug, PartialEq)]
pub struct NtpTimeSyncPackage {
    /// Plugin header.
    pub header: Header,
    /// `ntpTime`: Unix time, s.
    pub ntp_time: u32,
    /// `accuracy`, ms.
    pub accuracy: u32,
    /// `source`: NTP server or RTC.
    pub source: Text,
    /// `timestamp`.
    pub timestamp: u32,
    /// `message_type` (614).
    pub message_type: Option<u16>,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl NtpTimeSyncPackage {
    /// A time package from `from`.
    pub fn new(from: u32) -> Self {
        NtpTimeSyncPackage {
            header: Header::broadcast(types::NTP_TIME_SYNC, from),
            ntp_time: 0,
            accuracy: 0,
            source: Text::default(),
            timestamp: 0,
            message_type: Some(614),
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        NtpTimeSyncPackage {
            header,
            ntp_time: r.read_or("ntpTime", 0),
            accuracy: r.read_or("accuracy", 0),
            source: r.read_as("source"),
            timestamp: r.read_or("timestamp", 0),
            message_type: r.message_type(614),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("ntpTime", &self.ntp_time);
        w.put("accuracy", &self.accuracy);
        w.put("source", &self.source);
        w.put("timestamp", &self.timestamp);
        w.message_type(self.message_type);
    }
}
package_impl!(NtpTimeSyncPackage, single: false);

// ---------------------------------------------------------------------------------------------
// 620 / 621 gateway packages

/// GatewayDataPackage (620, single; `src/painlessmesh/gateway.hpp`): data a node asks the
/// gateway to deliver to the Internet.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayDataPackage {
    /// Plugin header.
    pub header: Header,
    /// `msgId`.
    pub msg_id: u32,
    /// `origin`: the node that created the message.
    pub origin: u32,
    /// `ts`: mesh time at creation.
    pub ts: u32,
    /// `prio`: 0 critical … 3 low.
    pub prio: u8,
    /// `dest_url` (read only when it is a string; default "").
    pub dest_url: Text,
    /// `payload` (read only when it is a string; default "").
    pub payload: Text,
    /// `content`: MIME type (read only when it is a string; default "application/json").
    pub content: Text,
    /// `retry`: relay attempts.
    pub retry: u8,
    /// `ack`: an acknowledgement is wanted.
    pub ack: bool,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl GatewayDataPackage {
    /// A request from `from` to the gateway `dest`, normal priority, JSON content.
    pub fn new(from: u32, dest: u32) -> Self {
        GatewayDataPackage {
            header: Header::single(types::GATEWAY_DATA, from, dest),
            msg_id: 0,
            origin: 0,
            ts: 0,
            prio: 2,
            dest_url: Text::default(),
            payload: Text::default(),
            content: Text::from("application/json"),
            retry: 0,
            ack: false,
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        GatewayDataPackage {
            header,
            msg_id: r.read_as("msgId"),
            origin: r.read_as("origin"),
            ts: r.read_as("ts"),
            prio: r.read_as("prio"),
            dest_url: r.read_or("dest_url", Text::default()),
            payload: r.read_or("payload", Text::default()),
            content: r.read_or("content", Text::from("application/json")),
            retry: r.read_as("retry"),
            ack: r.read_or("ack", false),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("msgId", &self.msg_id);
        w.put("origin", &self.origin);
        w.put("ts", &self.ts);
        w.put("prio", &self.prio);
        w.put("dest_url", &self.dest_url);
        w.put("payload", &self.payload);
        w.put("content", &self.content);
        w.put("retry", &self.retry);
        w.put("ack", &self.ack);
    }
}
package_impl!(GatewayDataPackage, single: true);

/// GatewayAckPackage (621, single): the gateway's answer to a [`GatewayDataPackage`].
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayAckPackage {
    /// Plugin header.
    pub header: Header,
    /// `msgId` acknowledged.
    pub msg_id: u32,
    /// `origin` of the acknowledged message.
    pub origin: u32,
    /// `success`.
    pub success: bool,
    /// `http`: HTTP status (0 when not applicable).
    pub http: u16,
    /// `err` (read only when it is a string; default "").
    pub err: Text,
    /// `ts`: mesh time of the acknowledgement.
    pub ts: u32,
    /// Fields this type does not know, in wire order.
    pub extra: Object,
}

impl GatewayAckPackage {
    /// An acknowledgement from the gateway `from` to `dest`.
    pub fn new(from: u32, dest: u32) -> Self {
        GatewayAckPackage {
            header: Header::single(types::GATEWAY_ACK, from, dest),
            msg_id: 0,
            origin: 0,
            success: false,
            http: 0,
            err: Text::default(),
            ts: 0,
            extra: Object::new(),
        }
    }

    fn read_body(header: Header, r: &mut Reader<'_>) -> Self {
        GatewayAckPackage {
            header,
            msg_id: r.read_as("msgId"),
            origin: r.read_as("origin"),
            success: r.read_or("success", false),
            http: r.read_as("http"),
            err: r.read_or("err", Text::default()),
            ts: r.read_as("ts"),
            extra: Object::new(),
        }
    }

    fn write_body(&self, w: &mut ObjWriter<'_>) {
        w.put("msgId", &self.msg_id);
        w.put("origin", &self.origin);
        w.put("success", &self.success);
        w.put("http", &self.http);
        w.put("err", &self.err);
        w.put("ts", &self.ts);
    }
}
package_impl!(GatewayAckPackage, single: true);

// ---------------------------------------------------------------------------------------------
// The enum

/// A decoded Alteriom package (both generations).
#[derive(Clone, Debug, PartialEq)]
pub enum Package {
    /// 200.
    Sensor(SensorPackage),
    /// 201 (Phase 1/2) or 400.
    Command(CommandPackage),
    /// 202.
    Status(StatusPackage),
    /// 203 (Phase 1/2) or 604.
    EnhancedStatus(EnhancedStatusPackage),
    /// 204.
    Metrics(MetricsPackage),
    /// 600.
    MeshNodeList(MeshNodeListPackage),
    /// 601.
    MeshTopology(MeshTopologyPackage),
    /// 602.
    MeshAlert(MeshAlertPackage),
    /// 603.
    MeshBridge(MeshBridgePackage),
    /// 605.
    HealthCheck(HealthCheckPackage),
    /// 610.
    BridgeStatus(BridgeStatusPackage),
    /// 611.
    BridgeElection(BridgeElectionPackage),
    /// 612.
    BridgeTakeover(BridgeTakeoverPackage),
    /// 613.
    BridgeCoordination(BridgeCoordinationPackage),
    /// 614.
    NtpTimeSync(NtpTimeSyncPackage),
    /// 620.
    GatewayData(GatewayDataPackage),
    /// 621.
    GatewayAck(GatewayAckPackage),
}

/// Applies `$e` to the package inside whatever variant `$p` is.
macro_rules! each_package {
    ($p:expr, $x:ident => $e:expr) => {
        match $p {
            Package::Sensor($x) => $e,
            Package::Command($x) => $e,
            Package::Status($x) => $e,
            Package::EnhancedStatus($x) => $e,
            Package::Metrics($x) => $e,
            Package::MeshNodeList($x) => $e,
            Package::MeshTopology($x) => $e,
            Package::MeshAlert($x) => $e,
            Package::MeshBridge($x) => $e,
            Package::HealthCheck($x) => $e,
            Package::BridgeStatus($x) => $e,
            Package::BridgeElection($x) => $e,
            Package::BridgeTakeover($x) => $e,
            Package::BridgeCoordination($x) => $e,
            Package::NtpTimeSync($x) => $e,
            Package::GatewayData($x) => $e,
            Package::GatewayAck($x) => $e,
        }
    };
}

impl Package {
    /// Decodes a known package type, or None for any other type.
    pub fn decode(env: &Envelope) -> Option<Package> {
        Some(match env.ty {
            types::SENSOR => Package::Sensor(SensorPackage::from_envelope(env)),
            types::COMMAND_PHASE2 | types::COMMAND => {
                Package::Command(CommandPackage::from_envelope(env))
            }
            types::STATUS => Package::Status(StatusPackage::from_envelope(env)),
            types::ENHANCED_STATUS_PHASE2 | types::ENHANCED_STATUS => {
                Package::EnhancedStatus(EnhancedStatusPackage::from_envelope(env))
            }
            types::METRICS => Package::Metrics(MetricsPackage::from_envelope(env)),
            types::MESH_NODE_LIST => Package::MeshNodeList(MeshNodeListPackage::from_envelope(env)),
            types::MESH_TOPOLOGY => Package::MeshTopology(MeshTopologyPackage::from_envelope(env)),
            types::MESH_ALERT => Package::MeshAlert(MeshAlertPackage::from_envelope(env)),
            types::MESH_BRIDGE => Package::MeshBridge(MeshBridgePackage::from_envelope(env)),
            types::HEALTH_CHECK => Package::HealthCheck(HealthCheckPackage::from_envelope(env)),
            types::BRIDGE_STATUS => Package::BridgeStatus(BridgeStatusPackage::from_envelope(env)),
            types::BRIDGE_ELECTION => {
                Package::BridgeElection(BridgeElectionPackage::from_envelope(env))
            }
            types::BRIDGE_TAKEOVER => {
                Package::BridgeTakeover(BridgeTakeoverPackage::from_envelope(env))
            }
            types::BRIDGE_COORDINATION => {
                Package::BridgeCoordination(BridgeCoordinationPackage::from_envelope(env))
            }
            types::NTP_TIME_SYNC => Package::NtpTimeSync(NtpTimeSyncPackage::from_envelope(env)),
            types::GATEWAY_DATA => Package::GatewayData(GatewayDataPackage::from_envelope(env)),
            types::GATEWAY_ACK => Package::GatewayAck(GatewayAckPackage::from_envelope(env)),
            _ => return None,
        })
    }

    /// Decodes a package double-encoded in the `msg` of a BROADCAST/SINGLE (Alteriom examples
    /// send `sendBroadcast(json)`); None when `msg` is not a known package.
    pub fn from_user_message(m: &UserMessage, max_depth: usize) -> Option<Package> {
        Package::decode(&m.inner_package(max_depth)?)
    }

    /// The plugin header.
    pub fn header(&self) -> &Header {
        each_package!(self, p => &p.header)
    }

    /// The plugin header, mutably (to readdress a package before sending it).
    pub fn header_mut(&mut self) -> &mut Header {
        each_package!(self, p => &mut p.header)
    }

    /// The wire `type`.
    pub fn ty(&self) -> i32 {
        self.header().ty
    }

    /// Fields the typed struct does not know, kept in wire order.
    pub fn extra(&self) -> &Object {
        each_package!(self, p => &p.extra)
    }

    /// Serialization in the reference's field order (header, fields, then unknown fields).
    pub fn to_json(&self) -> Vec<u8> {
        each_package!(self, p => p.to_json())
    }

    /// The reference's class name (`SensorPackage`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Package::Sensor(_) => "SensorPackage",
            Package::Command(_) => "CommandPackage",
            Package::Status(_) => "StatusPackage",
            Package::EnhancedStatus(_) => "EnhancedStatusPackage",
            Package::Metrics(_) => "MetricsPackage",
            Package::MeshNodeList(_) => "MeshNodeListPackage",
            Package::MeshTopology(_) => "MeshTopologyPackage",
            Package::MeshAlert(_) => "MeshAlertPackage",
            Package::MeshBridge(_) => "MeshBridgePackage",
            Package::HealthCheck(_) => "HealthCheckPackage",
            Package::BridgeStatus(_) => "BridgeStatusPackage",
            Package::BridgeElection(_) => "BridgeElectionPackage",
            Package::BridgeTakeover(_) => "BridgeTakeoverPackage",
            Package::BridgeCoordination(_) => "BridgeCoordinationPackage",
            Package::NtpTimeSync(_) => "NTPTimeSyncPackage",
            Package::GatewayData(_) => "GatewayDataPackage",
            Package::GatewayAck(_) => "GatewayAckPackage",
        }
    }

    /// The generation this package was sent in: from its type number where the generations
    /// differ (201/400, 203/604), from the presence of `message_type` (and, for the status,
    /// of its configuration sections) where they share a number (200, 202, 204).
    pub fn generation(&self) -> Generation {
        if let Some(g) = Generation::of_type(self.ty()) {
            return g;
        }
        let head = match self {
            Package::Sensor(p) => p.message_type.is_some(),
            Package::Status(p) => p.message_type.is_some() || p.config.is_some(),
            Package::Metrics(p) => p.message_type.is_some(),
            _ => true,
        };
        if head {
            Generation::Head
        } else {
            Generation::Phase2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::DEFAULT_MAX_DEPTH;

    fn env(s: &str) -> Envelope {
        Envelope::parse(s.as_bytes(), DEFAULT_MAX_DEPTH).unwrap()
    }

    fn roundtrip(s: &str) -> Package {
        let p = Package::decode(&env(s)).unwrap();
        assert_eq!(String::from_utf8(p.to_json()).unwrap(), s);
        p
    }

    #[test]
    fn sensor_and_generation() {
        let p = roundtrip(
            r#"{"from":12345,"routing":2,"type":200,"temp":23.5,"hum":67.2,"press":1013.25,"sid":42,"ts":1609459200,"bat":85,"message_type":200}"#,
        );
        let Package::Sensor(s) = &p else { panic!() };
        assert_eq!((s.temp, s.sid, s.bat), (23.5, 42, 85));
        assert_eq!(p.generation(), Generation::Head);
        let old = roundtrip(
            r#"{"from":1,"routing":2,"type":200,"temp":0,"hum":0,"press":0,"sid":0,"ts":0,"bat":0}"#,
        );
        assert_eq!(old.generation(), Generation::Phase2);
    }

    #[test]
    fn command_generations() {
        let p = roundtrip(
            r#"{"from":12345,"dest":67890,"routing":1,"type":400,"cmd":10,"target":67890,"params":"{\"state\":true}","cid":1001,"message_type":400}"#,
        );
        assert_eq!(p.generation(), Generation::Head);
        let old = roundtrip(
            r#"{"from":1,"dest":2,"routing":1,"type":201,"cmd":3,"target":2,"params":"","cid":7}"#,
        );
        assert_eq!(old.generation(), Generation::Phase2);
        let built = CommandPackage::new(Generation::Phase2, 1, 2);
        assert_eq!(built.header.ty, 201);
        assert_eq!(
            built.to_json(),
            br#"{"from":1,"dest":2,"routing":1,"type":201,"cmd":0,"target":0,"params":"","cid":0}"#
        );
    }

    #[test]
    fn status_head_shape_roundtrips_and_phase2_has_no_sections() {
        let mut s = StatusPackage::new(9);
        s.resp_to = 5;
        s.resp_msg = "ok".into();
        s.config.as_mut().unwrap().sensors.read_interval_ms = 30_500;
        s.config.as_mut().unwrap().mqtt_retry.backoff_multiplier = 1.5;
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(
            json.contains(r#""respTo":5,"respMsg":"ok","organization":{"#),
            "{json}"
        );
        assert!(
            json.contains(r#""read_interval_ms":30500,"read_interval_s":30,"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""backoff_multiplier":1.5},"message_type":202}"#),
            "{json}"
        );
        let back = roundtrip(&json);
        assert_eq!(back, Package::Status(s));
        let p2 = StatusPackage::phase2(9);
        let back = roundtrip(core::str::from_utf8(&p2.to_json()).unwrap());
        assert_eq!(back.generation(), Generation::Phase2);
    }

    #[test]
    fn old_key_names_and_unknown_fields() {
        let e = env(
            r#"{"from":1,"routing":2,"type":202,"zz":[1],"display_config":{"timeout":4000,"x":1},"status":1}"#,
        );
        let Some(Package::Status(s)) = Package::decode(&e) else {
            panic!()
        };
        let c = s.config.as_ref().unwrap();
        assert_eq!(c.display.timeout_ms, 4000);
        assert_eq!(
            c.display.extra.get("x"),
            Some(&Value::Number(Number::UInt(1)))
        );
        assert_eq!(s.extra.len(), 1);
        assert!(
            String::from_utf8(s.to_json())
                .unwrap()
                .ends_with(r#","zz":[1]}"#)
        );
        // Missing text reads "null"; with-default reads ignore mistyped values.
        assert_eq!(s.fw.as_bytes(), b"null");
        let e = env(r#"{"from":1,"routing":2,"type":610,"internetConnected":1,"routerRSSI":"-4"}"#);
        let Some(Package::BridgeStatus(b)) = Package::decode(&e) else {
            panic!()
        };
        assert!(!b.internet_connected);
        assert_eq!(b.router_rssi, 0);
        assert_eq!(b.gateway_ip.as_bytes(), b"null");
        assert_eq!(b.message_type, None);
    }

    #[test]
    fn arrays_keep_every_entry_and_counts_are_derived() {
        let mut p = MeshNodeListPackage::new(3);
        for i in 0..60 {
            p.nodes.push(MeshNodeInfo {
                node_id: i,
                rssi: -40,
                ..Default::default()
            });
        }
        let json = p.to_json();
        let back = Package::decode(&env(core::str::from_utf8(&json).unwrap())).unwrap();
        assert_eq!(back, Package::MeshNodeList(p));
        assert!(
            String::from_utf8(json)
                .unwrap()
                .contains(r#"],"nodeCount":60,"#)
        );
        let mut t = MeshTopologyPackage::new(1);
        t.connections.push(MeshConnection {
            from: 1,
            to: 2,
            quality: 0.95,
            latency: 3,
            hops: 1,
            ..Default::default()
        });
        assert!(
            String::from_utf8(t.to_json())
                .unwrap()
                .contains(r#""quality":0.95,"#)
        );
        let e = env(r#"{"from":1,"routing":2,"type":602,"alerts":[5,{"msg":"m"}]}"#);
        let Some(Package::MeshAlert(a)) = Package::decode(&e) else {
            panic!()
        };
        assert_eq!(a.alerts.len(), 2);
        assert_eq!(a.alerts[0].msg.as_bytes(), b"null");
    }

    #[test]
    fn coordination_and_gateway_defaults() {
        let e = env(r#"{"from":1,"routing":2,"type":613,"peerBridges":[7,"8",9.5]}"#);
        let Some(Package::BridgeCoordination(c)) = Package::decode(&e) else {
            panic!()
        };
        assert_eq!((c.priority, c.peer_bridges.as_slice()), (5, &[7, 8, 9][..]));
        let e = env(r#"{"from":1,"dest":2,"routing":1,"type":620,"content":5,"payload":"p"}"#);
        let Some(Package::GatewayData(g)) = Package::decode(&e) else {
            panic!()
        };
        assert_eq!(g.content.as_bytes(), b"application/json");
        assert_eq!(g.payload.as_bytes(), b"p");
        assert_eq!(g.dest_url.as_bytes(), b"");
    }

    #[test]
    fn double_encoded_in_msg() {
        let inner = SensorPackage::new(5).to_json();
        let m = UserMessage {
            ty: 8,
            dest: 0,
            from: 5,
            msg: inner,
        };
        let outer = m.to_json();
        let Some(crate::Message::Broadcast(got)) = Envelope::parse(&outer, DEFAULT_MAX_DEPTH)
            .map(|e| e.decode())
            .ok()
        else {
            panic!()
        };
        let p = Package::from_user_message(&got, DEFAULT_MAX_DEPTH).unwrap();
        assert_eq!(p, Package::Sensor(SensorPackage::new(5)));
        let plain = UserMessage {
            ty: 8,
            dest: 0,
            from: 5,
            msg: b"hello".to_vec(),
        };
        assert_eq!(Package::from_user_message(&plain, DEFAULT_MAX_DEPTH), None);
    }

    #[test]
    fn generation_of_type() {
        assert_eq!(Generation::of_type(201), Some(Generation::Phase2));
        assert_eq!(Generation::of_type(203), Some(Generation::Phase2));
        assert_eq!(Generation::of_type(400), Some(Generation::Head));
        assert_eq!(Generation::of_type(604), Some(Generation::Head));
        assert_eq!(Generation::of_type(613), Some(Generation::Head));
        assert_eq!(Generation::of_type(200), None);
        assert_eq!(Generation::of_type(606), None);
    }
}
