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
//!
//! **Layout.** This file holds what every package shares ([`types`], [`Generation`], [`Text`],
//! [`Header`]) and the [`Package`] enum; `codec.rs` the field codecs, the reader and the
//! writer; `macros.rs` the `package!` and `section!` macros each package is declared with (one
//! line per field: wire key, type, doc, read style; how to add a package is written there);
//! then one file per family: `device.rs` (200–204, 201/400), `mesh.rs` (600–605),
//! `bridge.rs` (610–614), `gateway.rs` (620/621).

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::json::{Object, Value};
use crate::message::{Envelope, Routing, UserMessage};

mod codec;
mod macros;

mod bridge;
mod device;
mod gateway;
mod mesh;
#[cfg(test)]
mod tests;

pub use bridge::{
    BridgeCoordinationPackage, BridgeElectionPackage, BridgeStatusPackage, BridgeTakeoverPackage,
    NtpTimeSyncPackage,
};
pub use device::{
    Calibration, CommandPackage, DisplayConfig, EnhancedStatusPackage, MetricsPackage, MqttRetry,
    Organization, PowerConfig, SensorConfig, SensorInventory, SensorPackage, StatusConfig,
    StatusPackage,
};
pub use gateway::{GatewayAckPackage, GatewayDataPackage};
pub use mesh::{
    HealthCheckPackage, MeshAlert, MeshAlertPackage, MeshBridgePackage, MeshConnection,
    MeshNodeInfo, MeshNodeListPackage, MeshTopologyPackage,
};

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

    fn write(&self, w: &mut codec::ObjWriter<'_>) {
        w.put("from", &self.from);
        if let Some(dest) = self.dest {
            w.put("dest", &dest);
        }
        w.put("routing", &self.routing);
        w.put("type", &self.ty);
    }
}

const HEADER_KEYS: [&str; 4] = ["from", "dest", "routing", "type"];

/// Defines [`Package`] and its per-variant plumbing from one table: variant (struct), the type
/// numbers it decodes, the reference's class name.
macro_rules! package_enum {
    ($(
        $(#[$doc:meta])*
        $variant:ident($package:ident) = $($ty:path)|+ => $name:literal;
    )*) => {
        /// A decoded Alteriom package (both generations).
        #[derive(Clone, Debug, PartialEq)]
        pub enum Package {
            $( $(#[$doc])* $variant($package), )*
        }

        impl Package {
            /// Decodes a known package type, or None for any other type.
            pub fn decode(env: &Envelope) -> Option<Package> {
                Some(match env.ty {
                    $( $($ty)|+ => Package::$variant($package::from_envelope(env)), )*
                    _ => return None,
                })
            }

            /// The plugin header.
            pub fn header(&self) -> &Header {
                match self {
                    $( Package::$variant(p) => &p.header, )*
                }
            }

            /// The plugin header, mutably (to readdress a package before sending it).
            pub fn header_mut(&mut self) -> &mut Header {
                match self {
                    $( Package::$variant(p) => &mut p.header, )*
                }
            }

            /// Fields the typed struct does not know, kept in wire order.
            pub fn extra(&self) -> &Object {
                match self {
                    $( Package::$variant(p) => &p.extra, )*
                }
            }

            /// Serialization in the reference's field order (header, fields, then unknown
            /// fields).
            pub fn to_json(&self) -> Vec<u8> {
                match self {
                    $( Package::$variant(p) => p.to_json(), )*
                }
            }

            /// The reference's class name (`SensorPackage`, …).
            pub fn name(&self) -> &'static str {
                match self {
                    $( Package::$variant(_) => $name, )*
                }
            }
        }
    };
}

package_enum! {
    /// 200.
    Sensor(SensorPackage) = types::SENSOR => "SensorPackage";
    /// 201 (Phase 1/2) or 400.
    Command(CommandPackage) = types::COMMAND_PHASE2 | types::COMMAND => "CommandPackage";
    /// 202.
    Status(StatusPackage) = types::STATUS => "StatusPackage";
    /// 203 (Phase 1/2) or 604.
    EnhancedStatus(EnhancedStatusPackage) = types::ENHANCED_STATUS_PHASE2 | types::ENHANCED_STATUS
        => "EnhancedStatusPackage";
    /// 204.
    Metrics(MetricsPackage) = types::METRICS => "MetricsPackage";
    /// 600.
    MeshNodeList(MeshNodeListPackage) = types::MESH_NODE_LIST => "MeshNodeListPackage";
    /// 601.
    MeshTopology(MeshTopologyPackage) = types::MESH_TOPOLOGY => "MeshTopologyPackage";
    /// 602.
    MeshAlert(MeshAlertPackage) = types::MESH_ALERT => "MeshAlertPackage";
    /// 603.
    MeshBridge(MeshBridgePackage) = types::MESH_BRIDGE => "MeshBridgePackage";
    /// 605.
    HealthCheck(HealthCheckPackage) = types::HEALTH_CHECK => "HealthCheckPackage";
    /// 610.
    BridgeStatus(BridgeStatusPackage) = types::BRIDGE_STATUS => "BridgeStatusPackage";
    /// 611.
    BridgeElection(BridgeElectionPackage) = types::BRIDGE_ELECTION => "BridgeElectionPackage";
    /// 612.
    BridgeTakeover(BridgeTakeoverPackage) = types::BRIDGE_TAKEOVER => "BridgeTakeoverPackage";
    /// 613.
    BridgeCoordination(BridgeCoordinationPackage) = types::BRIDGE_COORDINATION
        => "BridgeCoordinationPackage";
    /// 614.
    NtpTimeSync(NtpTimeSyncPackage) = types::NTP_TIME_SYNC => "NTPTimeSyncPackage";
    /// 620.
    GatewayData(GatewayDataPackage) = types::GATEWAY_DATA => "GatewayDataPackage";
    /// 621.
    GatewayAck(GatewayAckPackage) = types::GATEWAY_ACK => "GatewayAckPackage";
}

impl Package {
    /// Decodes a package double-encoded in the `msg` of a BROADCAST/SINGLE (Alteriom examples
    /// send `sendBroadcast(json)`); None when `msg` is not a known package.
    pub fn from_user_message(m: &UserMessage, max_depth: usize) -> Option<Package> {
        Package::decode(&m.inner_package(max_depth)?)
    }

    /// The wire `type`.
    pub fn ty(&self) -> i32 {
        self.header().ty
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
