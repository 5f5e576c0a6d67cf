//! Mesh packages: node list (600), topology (601), alerts (602), bridged messages of other
//! mesh protocols (603) and health checks (605). 604, the current EnhancedStatus, is a device
//! package (`device.rs`).

use alloc::vec::Vec;

use super::macros::{package, section};
use super::{Header, Text, types};

package! {
    /// MeshNodeListPackage (600, broadcast): nodes and their status.
    pub struct MeshNodeListPackage: broadcast {
        /// `nodes` (`nodeCount` is written as its length; the reference keeps at most 50).
        nodes: Vec<MeshNodeInfo> = section_array("nodes"), then "nodeCount" = count;
        /// `meshId`.
        mesh_id: Text = read_as("meshId");
        /// `message_type` (600).
        message_type: Option<u16> = message_type(600);
    }
}

impl MeshNodeListPackage {
    /// An empty node list from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::MESH_NODE_LIST, from))
    }
}

section! {
    /// One entry of [`MeshNodeListPackage::nodes`].
    pub struct MeshNodeInfo {
        /// `nodeId`.
        node_id: u32 = read_as("nodeId");
        /// `status`: 0 offline, 1 online, 2 unreachable.
        status: u8 = read_as("status");
        /// `lastSeen`: Unix time.
        last_seen: u32 = read_as("lastSeen");
        /// `rssi`, dBm.
        rssi: i8 = read_as("rssi");
    }
}

package! {
    /// MeshTopologyPackage (601, broadcast): the mesh's links.
    pub struct MeshTopologyPackage: broadcast {
        /// `connections` (`totalConnections` is written as its length; the reference keeps ≤ 100).
        connections: Vec<MeshConnection> = section_array("connections"),
            then "totalConnections" = count;
        /// `rootNode`.
        root_node: u32 = read_as("rootNode");
        /// `message_type` (601).
        message_type: Option<u16> = message_type(601);
    }
}

impl MeshTopologyPackage {
    /// An empty topology from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::MESH_TOPOLOGY, from))
    }
}

section! {
    /// One entry of [`MeshTopologyPackage::connections`].
    pub struct MeshConnection {
        /// `from`.
        from: u32 = read_as("from");
        /// `to`.
        to: u32 = read_as("to");
        /// `quality`, 0.0–1.0 (a C++ `float`).
        quality: f32 = read_as("quality");
        /// `latency`, ms.
        latency: u16 = read_as("latency");
        /// `hops`.
        hops: u8 = read_as("hops");
    }
}

package! {
    /// MeshAlertPackage (602, broadcast): alerts.
    pub struct MeshAlertPackage: broadcast {
        /// `alerts` (`alertCount` is written as its length; the reference keeps at most 20).
        alerts: Vec<MeshAlert> = section_array("alerts"), then "alertCount" = count;
        /// `message_type` (602).
        message_type: Option<u16> = message_type(602);
    }
}

impl MeshAlertPackage {
    /// An empty alert list from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::MESH_ALERT, from))
    }
}

section! {
    /// One entry of [`MeshAlertPackage::alerts`].
    pub struct MeshAlert {
        /// `type`: 0 low memory, 1 node offline, 2 connection lost, …
        alert_type: u8 = read_as("type");
        /// `severity`: 0 info, 1 warning, 2 critical.
        severity: u8 = read_as("severity");
        /// `msg`.
        msg: Text = read_as("msg");
        /// `nodeId`.
        node_id: u32 = read_as("nodeId");
        /// `value` (a C++ `float`).
        value: f32 = read_as("value");
        /// `threshold` (a C++ `float`).
        threshold: f32 = read_as("threshold");
        /// `alertId`.
        alert_id: u32 = read_as("alertId");
    }
}

package! {
    /// MeshBridgePackage (603, broadcast): a message of another mesh protocol, bridged.
    pub struct MeshBridgePackage: broadcast {
        /// `protocol`: 0 painlessMesh, 1 ESP-NOW, 2 BLE mesh, …
        protocol: u8 = read_as("protocol");
        /// `fromNode`.
        from_node: u32 = read_as("fromNode");
        /// `toNode` (0 = broadcast).
        to_node: u32 = read_as("toNode");
        /// `meshType`: the bridged protocol's message type.
        mesh_type: u16 = read_as("meshType");
        /// `payload` (hex or base64 text).
        payload: Text = read_as("payload");
        /// `rssi`, dBm.
        rssi: i8 = read_as("rssi");
        /// `hops`.
        hops: u8 = read_as("hops");
        /// `meshTs`.
        mesh_ts: u32 = read_as("meshTs");
        /// `gateway`: the gateway's node id.
        gateway: u32 = read_as("gateway");
        /// `meshId`.
        mesh_id: Text = read_as("meshId");
        /// `message_type` (603).
        message_type: Option<u16> = message_type(603);
    }
}

impl MeshBridgePackage {
    /// An empty bridge package from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::MESH_BRIDGE, from))
    }
}

package! {
    /// HealthCheckPackage (605, broadcast): health scores and problem flags.
    pub struct HealthCheckPackage: broadcast {
        /// `health`: 0 critical, 1 warning, 2 healthy.
        health: u8 = read_as("health"), new = 2;
        /// `problems`: bit flags, 0x0001 low memory … 0x0200 configuration error.
        problems: u16 = read_as("problems");
        /// `memHealth`, 0–100.
        mem_health: u8 = read_as("memHealth"), new = 100;
        /// `memTrend`: memory loss, bytes/hour.
        mem_trend: u32 = read_as("memTrend");
        /// `netHealth`, 0–100.
        net_health: u8 = read_as("netHealth"), new = 100;
        /// `loss`: packet loss, %.
        loss: u8 = read_as("loss");
        /// `reconn`: reconnections in the last hour.
        reconn: u8 = read_as("reconn");
        /// `perfHealth`, 0–100.
        perf_health: u8 = read_as("perfHealth"), new = 100;
        /// `missed`: missed task deadlines.
        missed: u32 = read_as("missed");
        /// `maxLoop`: longest loop, ms.
        max_loop: u16 = read_as("maxLoop");
        /// `temp`: device temperature, °C.
        temp: i8 = read_as("temp");
        /// `tempHealth`, 0–100.
        temp_health: u8 = read_as("tempHealth"), new = 100;
        /// `uptime`, s.
        uptime: u32 = read_as("uptime");
        /// `crashes`.
        crashes: u16 = read_as("crashes");
        /// `reboot`: last reboot reason code.
        reboot: u32 = read_as("reboot");
        /// `ettf`: estimated hours to failure (0 = unknown).
        ettf: u16 = read_as("ettf");
        /// `recommend`: recommended actions.
        recommend: Text = read_as("recommend");
        /// `ts`: check time.
        ts: u32 = read_as("ts");
        /// `nextCheck`.
        next_check: u32 = read_as("nextCheck");
        /// `message_type` (605).
        message_type: Option<u16> = message_type(605);
    }
}

impl HealthCheckPackage {
    /// A healthy report from `from` (the reference constructor's defaults: scores 100,
    /// health 2). Decoding a frame reads missing scores as 0, as the reference does.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::HEALTH_CHECK, from))
    }
}
