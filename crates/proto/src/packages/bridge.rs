//! Bridge packages (610–614): a bridge's status, elections and takeovers between bridges,
//! multi-bridge coordination, and the NTP time a bridge distributes. Most fields are read with
//! a default (`| d`), as the reference's bridge code reads them.

use alloc::vec::Vec;

use super::macros::package;
use super::{Header, Text, types};

package! {
    /// BridgeStatusPackage (610, broadcast every 30 s by bridges; also sent single-routed with a
    /// `dest` to a newly changed neighbour).
    pub struct BridgeStatusPackage: broadcast {
        /// `internetConnected`.
        internet_connected: bool = read_or("internetConnected", false);
        /// `routerRSSI`, dBm.
        router_rssi: i8 = read_or("routerRSSI", 0);
        /// `routerChannel`.
        router_channel: u8 = read_or("routerChannel", 0);
        /// `uptime`, ms.
        uptime: u32 = read_or("uptime", 0);
        /// `gatewayIP`.
        gateway_ip: Text = read_as("gatewayIP");
        /// `timestamp`: mesh time, µs.
        timestamp: u32 = read_or("timestamp", 0);
        /// `message_type` (610).
        message_type: Option<u16> = message_type(610);
    }
}

impl BridgeStatusPackage {
    /// A bridge status from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::BRIDGE_STATUS, from))
    }
}

package! {
    /// BridgeElectionPackage (611, broadcast): a candidate's credentials in a bridge election.
    pub struct BridgeElectionPackage: broadcast {
        /// `routerRSSI`, dBm.
        router_rssi: i8 = read_or("routerRSSI", 0);
        /// `uptime`, ms.
        uptime: u32 = read_or("uptime", 0);
        /// `freeMemory`, bytes.
        free_memory: u32 = read_or("freeMemory", 0);
        /// `timestamp`.
        timestamp: u32 = read_or("timestamp", 0);
        /// `routerSSID`.
        router_ssid: Text = read_as("routerSSID");
        /// `message_type` (611).
        message_type: Option<u16> = message_type(611);
    }
}

impl BridgeElectionPackage {
    /// An election package from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::BRIDGE_ELECTION, from))
    }
}

package! {
    /// BridgeTakeoverPackage (612, broadcast): a node announces it took over as bridge.
    pub struct BridgeTakeoverPackage: broadcast {
        /// `previousBridge`.
        previous_bridge: u32 = read_or("previousBridge", 0);
        /// `reason`.
        reason: Text = read_as("reason");
        /// `routerRSSI`, dBm.
        router_rssi: i8 = read_or("routerRSSI", 0);
        /// `timestamp`.
        timestamp: u32 = read_or("timestamp", 0);
        /// `message_type` (612).
        message_type: Option<u16> = message_type(612);
    }
}

impl BridgeTakeoverPackage {
    /// A takeover announcement from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::BRIDGE_TAKEOVER, from))
    }
}

package! {
    /// BridgeCoordinationPackage (613, broadcast; `src/painlessmesh/plugin.hpp`): multi-bridge
    /// coordination. Has no `message_type`.
    pub struct BridgeCoordinationPackage: broadcast {
        /// `priority`: 10 highest … 1 lowest (default 5).
        priority: u8 = read_or("priority", 5);
        /// `role`: "primary", "secondary" or "standby".
        role: Text = read_as("role"), new = Text::from("secondary");
        /// `load`, %.
        load: u8 = read_or("load", 0);
        /// `timestamp`.
        timestamp: u32 = read_or("timestamp", 0);
        /// `peerBridges`: known bridge ids.
        peer_bridges: Vec<u32> = read_as("peerBridges");
    }
}

impl BridgeCoordinationPackage {
    /// A coordination package from `from` with the reference's defaults (priority 5, secondary).
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::BRIDGE_COORDINATION, from))
    }
}

package! {
    /// NTPTimeSyncPackage (614, broadcast): a bridge distributes NTP time.
    pub struct NtpTimeSyncPackage: broadcast {
        /// `ntpTime`: Unix time, s.
        ntp_time: u32 = read_or("ntpTime", 0);
        /// `accuracy`, ms.
        accuracy: u32 = read_or("accuracy", 0);
        /// `source`: NTP server or RTC.
        source: Text = read_as("source");
        /// `timestamp`.
        timestamp: u32 = read_or("timestamp", 0);
        /// `message_type` (614).
        message_type: Option<u16> = message_type(614);
    }
}

impl NtpTimeSyncPackage {
    /// A time package from `from`.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::NTP_TIME_SYNC, from))
    }
}
