//! The boundary between the gateway runtime (`pmesh node`, `pmesh demo`, a test's fake mesh)
//! and the bridge.
//!
//! The gateway **feeds** the bridge what the mesh does through a [`crate::BridgeHandle`]
//! (topology snapshots, received messages and packages, counters, OTA progress), and the
//! bridge **asks** the gateway to act through the [`Gateway`] trait (send, broadcast, start or
//! abort an OTA campaign). Both directions are non-blocking.

use pmesh_node::{Counter, NodeStats};
use pmesh_ota::Mode;
use pmesh_proto::{Envelope, NodeTree};

/// Why the gateway refused or failed an action; the text goes into the MQTT response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError(pub String);

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GatewayError {}

/// The check every gateway makes before a SINGLE send: `dest` is neither the gateway `me`
/// itself nor a node missing from `mesh` (the node list the gateway last saw).
pub fn check_single_dest(me: u32, dest: u32, mesh: &[u32]) -> Result<(), GatewayError> {
    if dest == me {
        return Err(GatewayError(format!(
            "node {dest} is this gateway; send to another node"
        )));
    }
    if !mesh.contains(&dest) {
        return Err(GatewayError(format!("node {dest} is not in the mesh")));
    }
    Ok(())
}

impl From<&str> for GatewayError {
    fn from(s: &str) -> Self {
        GatewayError(s.to_string())
    }
}

/// What the bridge asks of the mesh. Implemented by the gateway; methods must not block
/// (queue the work onto the node's task and return).
pub trait Gateway: Send + Sync + 'static {
    /// Sends a SINGLE user message to `dest` (`Node::send_single`).
    fn send_single(&self, dest: u32, msg: Vec<u8>) -> Result<(), GatewayError>;
    /// Sends a BROADCAST user message (`Node::send_broadcast(.., include_self=false)`).
    fn send_broadcast(&self, msg: Vec<u8>) -> Result<(), GatewayError>;
    /// Starts a firmware campaign. The gateway reports progress with
    /// [`crate::BridgeHandle::ota`] using `req.campaign`.
    fn ota_start(&self, req: OtaStart) -> Result<(), GatewayError>;
    /// Aborts the running campaign `campaign`.
    fn ota_abort(&self, campaign: u64) -> Result<(), GatewayError>;
}

/// How firmware travels, as a campaign asks for it (spec §6 and design/ota.md): one protocol
/// ([`Mode`]: classic unicast, classic broadcast, pmesh), or the gateway's choice. On MQTT it
/// is `unicast`, `broadcast`, `pmesh` ([`Mode::name`]) or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtaMode {
    /// Classic, the gateway chooses: broadcast unless the campaign has a single known target
    /// (see docs/ota.md, "Classic push broadcast").
    Auto,
    /// This protocol. Classic broadcast from a pmesh gateway is a push (chunks flooded in
    /// order, which stock nodes take unasked).
    Fixed(Mode),
}

impl OtaMode {
    /// The names on MQTT, in the order error messages list them.
    pub const NAMES: [&'static str; 4] = ["unicast", "broadcast", "auto", "pmesh"];

    /// The name used on MQTT.
    pub fn as_str(self) -> &'static str {
        match self {
            OtaMode::Auto => "auto",
            OtaMode::Fixed(m) => m.name(),
        }
    }

    /// Parses the MQTT name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(OtaMode::Auto),
            _ => Mode::parse(s).map(OtaMode::Fixed),
        }
    }
}

impl From<Mode> for OtaMode {
    fn from(m: Mode) -> Self {
        OtaMode::Fixed(m)
    }
}

impl<'de> serde::Deserialize<'de> for OtaMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        OtaMode::parse(&name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &OtaMode::NAMES))
    }
}

/// A firmware campaign requested over MQTT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtaStart {
    /// Id the bridge chose; progress reports carry it.
    pub campaign: u64,
    /// The firmware image as it should end up in flash.
    pub image: Vec<u8>,
    /// MD5 of `image`, lowercase hex (the classic protocol's integrity check).
    pub md5: String,
    /// Target role (painlessMesh `role`), e.g. `sensor`.
    pub role: String,
    /// Target hardware, `ESP32` or `ESP8266`.
    pub hardware: String,
    /// Distribution mode.
    pub mode: OtaMode,
    /// Send compressed (gzip) where the receivers support it.
    pub compressed: bool,
}

/// Progress of a campaign, reported by the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum OtaProgress {
    /// A campaign the gateway started by itself, not through `bridge/request/ota/start`
    /// (e.g. `pmesh ota push` against the gateway's control endpoint). The bridge records it
    /// like a requested one (`ota_requested` event, `ota/status`, `ota/abort`), so its progress
    /// is shown; ignored while another campaign runs. Report `Started` and the rest after it.
    Begun {
        /// Campaign id chosen by the gateway (unique; epoch ms of the start is a good choice).
        campaign: u64,
        /// Target role.
        role: String,
        /// Target hardware.
        hardware: String,
        /// Distribution mode.
        mode: OtaMode,
        /// Compressed transfer.
        compressed: bool,
        /// Image size in bytes.
        size: u64,
        /// MD5 of the image as announced (lowercase hex), if the mode has one.
        md5: String,
    },
    /// The campaign is running; `targets` are the nodes expected to update (may grow later
    /// through [`OtaProgress::Node`] reports from nodes not listed here).
    Started {
        /// Campaign id from [`OtaStart::campaign`].
        campaign: u64,
        /// Nodes that will update.
        targets: Vec<u32>,
    },
    /// A node's transfer advanced.
    Node {
        /// Campaign id.
        campaign: u64,
        /// The node.
        node: u32,
        /// Chunks (or bytes) the node holds.
        done: u64,
        /// Chunks (or bytes) in the image.
        total: u64,
    },
    /// A node verified and applied the image.
    NodeDone {
        /// Campaign id.
        campaign: u64,
        /// The node.
        node: u32,
    },
    /// A node failed (timeout, hash mismatch, left the mesh, ...).
    NodeFailed {
        /// Campaign id.
        campaign: u64,
        /// The node.
        node: u32,
        /// Why.
        reason: String,
    },
    /// The campaign ended (`aborted` true when stopped by `ota_abort`).
    Finished {
        /// Campaign id.
        campaign: u64,
        /// Stopped on request.
        aborted: bool,
    },
    /// Bytes of firmware data the gateway put on links (adds to the OTA byte counter).
    BytesSent {
        /// Bytes.
        bytes: u64,
    },
}

/// Counters of one of the gateway's own mesh links (a direct neighbour).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The neighbour's node id.
    pub peer: u32,
    /// Bytes received on the link since it opened.
    pub bytes_in: u64,
    /// Bytes sent on the link since it opened.
    pub bytes_out: u64,
    /// Last measured one-way delay in µs (TIME_DELAY), if any.
    pub delay_us: Option<u32>,
}

/// What the gateway tells the bridge. Usually sent through the [`crate::BridgeHandle`]
/// helpers rather than built by hand.
#[derive(Clone, Debug, PartialEq)]
pub enum MeshEvent {
    /// The mesh as seen from the gateway, after any change (`Node::tree()`; the top is the
    /// gateway itself). Joins and leaves are derived from successive trees.
    Topology(NodeTree),
    /// A user message for the gateway or a broadcast (`Event::Received`).
    Message {
        /// Origin node.
        from: u32,
        /// Payload bytes as received.
        msg: Vec<u8>,
        /// BROADCAST (true) or SINGLE (false).
        broadcast: bool,
    },
    /// A frame of a non-core type (`Event::Package`), e.g. Alteriom 203/604/204 status.
    Package(Envelope),
    /// The gateway node's counters and its links.
    Stats {
        /// `Node::stats()`.
        node: NodeStats,
        /// One entry per current neighbour.
        links: Vec<LinkStats>,
    },
    /// OTA campaign progress.
    Ota(OtaProgress),
    /// The gateway host's own counters (e.g. `pmesh_net::NetStats::counters()`), exported
    /// on `/metrics` as `pmesh_net_<name>_total` (peaks as gauges `pmesh_net_<name>`).
    RuntimeStats(Vec<Counter>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_read_and_written_by_their_mqtt_names() {
        for name in OtaMode::NAMES {
            assert_eq!(OtaMode::parse(name).map(OtaMode::as_str), Some(name));
        }
        assert_eq!(
            OtaMode::parse("broadcast"),
            Some(OtaMode::Fixed(Mode::ClassicBroadcast))
        );
        assert_eq!(OtaMode::parse("push"), None);
        let e = serde_json::from_str::<OtaMode>("\"multicast\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant `multicast`"), "{e}");
    }

    #[test]
    fn single_sends_go_to_other_nodes_of_the_mesh() {
        assert!(check_single_dest(1, 2, &[2, 3]).is_ok());
        assert_eq!(
            check_single_dest(1, 1, &[1, 2]).unwrap_err().0,
            "node 1 is this gateway; send to another node"
        );
        assert_eq!(
            check_single_dest(1, 9, &[2, 3]).unwrap_err().0,
            "node 9 is not in the mesh"
        );
    }
}
