//! Device packages: sensor readings (200), commands (201/400), status (202, with the current
//! generation's configuration sections), enhanced status (203/604) and metrics (204).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::codec::{ObjWriter, Reader, write_package};
use super::macros::{package, section};
use super::{Generation, Header, Text, types};
use crate::json::Object;
use crate::message::Envelope;

package! {
    /// SensorPackage (200, broadcast): environmental readings.
    pub struct SensorPackage: broadcast {
        /// `temp`: temperature, °C.
        temp: f64 = read_as("temp");
        /// `hum`: relative humidity, %.
        hum: f64 = read_as("hum");
        /// `press`: pressure, hPa.
        press: f64 = read_as("press");
        /// `sid`: sensor id.
        sid: u32 = read_as("sid");
        /// `ts`: Unix time of the reading, s.
        ts: u32 = read_as("ts");
        /// `bat`: battery, %.
        bat: u8 = read_as("bat");
        /// `message_type` (current generation: 200; absent in Phase 1/2).
        message_type: Option<u16> = message_type(200);
    }
}

impl SensorPackage {
    /// A current-generation package from `from`, all readings 0.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::SENSOR, from))
    }
}

package! {
    /// CommandPackage (201 in Phase 1/2, 400 now; single): a command for one node.
    pub struct CommandPackage: single {
        /// `cmd`: command code (u8 on the wire; larger values do not fit).
        cmd: u8 = read_as("cmd");
        /// `target`: target device id.
        target: u32 = read_as("target");
        /// `params`: parameters, a string holding JSON.
        params: Text = read_as("params");
        /// `cid`: command id.
        cid: u32 = read_as("cid");
        /// `message_type` (400 in the current generation; absent in Phase 1/2).
        message_type: Option<u16> = message_type(400);
    }
}

impl CommandPackage {
    /// A command from `from` to `dest`, in the given generation's type and shape.
    pub fn new(generation: Generation, from: u32, dest: u32) -> Self {
        let (ty, message_type) = match generation {
            Generation::Phase2 => (types::COMMAND_PHASE2, None),
            Generation::Head => (types::COMMAND, Some(400)),
        };
        CommandPackage {
            message_type,
            ..Self::with_header(Header::single(ty, from, dest))
        }
    }
}

// StatusPackage is written by hand, not with `package!`: `respTo` and `respMsg` are sent only
// when `respTo` > 0, and the six configuration sections are read and written together or not
// at all (their presence is what tells a current-generation status from a Phase 1/2 one).

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

impl StatusConfig {
    /// The keys of the sections; any one of them present means the package has them all.
    const KEYS: [&str; 6] = [
        "organization",
        "sensors",
        "sensor_inventory",
        "display_config",
        "power_config",
        "mqtt_retry",
    ];

    fn read(r: &mut Reader<'_>) -> Self {
        StatusConfig {
            organization: r.section("organization"),
            sensors: r.section("sensors"),
            sensor_inventory: r.section("sensor_inventory"),
            display: r.section("display_config"),
            power: r.section("power_config"),
            mqtt_retry: r.section("mqtt_retry"),
        }
    }

    fn write(&self, w: &mut ObjWriter<'_>) {
        w.put_section("organization", &self.organization);
        w.put_section("sensors", &self.sensors);
        w.put_section("sensor_inventory", &self.sensor_inventory);
        w.put_section("display_config", &self.display);
        w.put_section("power_config", &self.power);
        w.put_section("mqtt_retry", &self.mqtt_retry);
    }
}

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

    /// Typed decode, lenient like the reference (missing fields default).
    pub fn from_envelope(env: &Envelope) -> Self {
        let header = Header::read(env, false);
        let mut r = Reader::new(&env.body);
        let has_config = r.has_any(&StatusConfig::KEYS);
        StatusPackage {
            header,
            status: r.read_as("status"),
            uptime: r.read_as("uptime"),
            mem: r.read_as("mem"),
            wifi: r.read_as("wifi"),
            fw: r.read_as("fw"),
            resp_to: r.read_or("respTo", 0),
            resp_msg: r.read_as("respMsg"),
            config: has_config.then(|| Box::new(StatusConfig::read(&mut r))),
            message_type: r.message_type(202),
            extra: r.rest_after_header(),
        }
    }

    /// Serialization in the reference's field order; unknown fields last.
    pub fn to_json(&self) -> Vec<u8> {
        write_package(&self.header, &self.extra, |w| {
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
                c.write(w);
            }
            w.message_type(self.message_type);
        })
    }
}

section! {
    /// `organization` section of a StatusPackage.
    pub struct Organization {
        /// `organizationId`.
        organization_id: Text = read_as("organizationId");
        /// `customerId`.
        customer_id: Text = read_as("customerId");
        /// `deviceGroup`.
        device_group: Text = read_as("deviceGroup");
        /// `device_name`.
        device_name: Text = read_as("device_name");
        /// `device_location`.
        device_location: Text = read_as("device_location");
        /// `device_secret_set`.
        device_secret_set: bool = read_or("device_secret_set", false);
    }
}

section! {
    /// `sensors` section: intervals in ms (the `_s` variants are written as ms/1000, never read).
    pub struct SensorConfig {
        /// `read_interval_ms`.
        read_interval_ms: u32 = read_or("read_interval_ms", 0), then "read_interval_s" = seconds;
        /// `transmission_interval_ms`.
        transmission_interval_ms: u32 = read_or("transmission_interval_ms", 0),
            then "transmission_interval_s" = seconds;
        /// `calibration`.
        calibration: Calibration = section("calibration");
    }
}

section! {
    /// `sensors.calibration` section.
    pub struct Calibration {
        /// `temperature_offset`.
        temperature_offset: f64 = read_or("temperature_offset", 0.0);
        /// `humidity_offset`.
        humidity_offset: f64 = read_or("humidity_offset", 0.0);
        /// `pressure_offset`.
        pressure_offset: f64 = read_or("pressure_offset", 0.0);
    }
}

section! {
    /// `sensor_inventory` section.
    pub struct SensorInventory {
        /// `count`: sensors attached.
        count: u8 = read_or("count", 0);
        /// `type_mask`: bit mask of sensor kinds.
        type_mask: u8 = read_or("type_mask", 0);
    }
}

section! {
    /// `display_config` section (`timeout_ms`, or the older `timeout`, is read).
    pub struct DisplayConfig {
        /// `enabled`.
        enabled: bool = read_or("enabled", false);
        /// `brightness`, 0–255.
        brightness: u8 = read_or("brightness", 0);
        /// `timeout_ms`.
        timeout_ms: u32 = read_or_older("timeout_ms", "timeout", 0), then "timeout_s" = seconds;
    }
}

section! {
    /// `power_config` section (`deep_sleep_interval_ms`, or the older `deep_sleep_interval`).
    pub struct PowerConfig {
        /// `deep_sleep_enabled`.
        deep_sleep_enabled: bool = read_or("deep_sleep_enabled", false);
        /// `deep_sleep_interval_ms`.
        deep_sleep_interval_ms: u32 =
            read_or_older("deep_sleep_interval_ms", "deep_sleep_interval", 0),
            then "deep_sleep_interval_s" = seconds;
        /// `battery_percent`.
        battery_percent: u8 = read_or("battery_percent", 0);
    }
}

section! {
    /// `mqtt_retry` section.
    pub struct MqttRetry {
        /// `max_attempts`.
        max_attempts: u8 = read_or("max_attempts", 0);
        /// `circuit_breaker_ms`.
        circuit_breaker_ms: u32 = read_or("circuit_breaker_ms", 0),
            then "circuit_breaker_s" = seconds;
        /// `hourly_retry_enabled`.
        hourly_retry_enabled: bool = read_or("hourly_retry_enabled", false);
        /// `initial_retry_ms`.
        initial_retry_ms: u32 = read_or("initial_retry_ms", 0), then "initial_retry_s" = seconds;
        /// `max_retry_ms`.
        max_retry_ms: u32 = read_or("max_retry_ms", 0), then "max_retry_s" = seconds;
        /// `backoff_multiplier` (a C++ `float`).
        backoff_multiplier: f32 = read_or("backoff_multiplier", 0.0);
    }
}

package! {
    /// EnhancedStatusPackage (203 in Phase 1/2, 604 now; broadcast). Never has `message_type`.
    pub struct EnhancedStatusPackage: broadcast {
        /// `status`: device status flags.
        status: u8 = read_as("status");
        /// `uptime`, s.
        uptime: u32 = read_as("uptime");
        /// `mem`: free memory, KB.
        mem: u16 = read_as("mem");
        /// `wifi`: signal strength.
        wifi: u8 = read_as("wifi");
        /// `fw`: firmware version.
        fw: Text = read_as("fw");
        /// `fwMD5`: firmware MD5.
        fw_md5: Text = read_as("fwMD5");
        /// `nodes`: nodes known in the mesh.
        nodes: u16 = read_as("nodes");
        /// `conns`: direct connections.
        conns: u8 = read_as("conns");
        /// `msgRx`.
        msg_rx: u32 = read_as("msgRx");
        /// `msgTx`.
        msg_tx: u32 = read_as("msgTx");
        /// `msgDrop`.
        msg_drop: u32 = read_as("msgDrop");
        /// `latency`: average, ms.
        latency: u16 = read_as("latency");
        /// `loss`: packet loss, %.
        loss: u8 = read_as("loss");
        /// `throughput`, B/s.
        throughput: u16 = read_as("throughput");
        /// `alerts`: bit flags (meaning unspecified by the reference).
        alerts: u8 = read_as("alerts");
        /// `lastErr`.
        last_err: Text = read_as("lastErr");
    }
}

impl EnhancedStatusPackage {
    /// An enhanced status from `from` in the given generation's type number.
    pub fn new(generation: Generation, from: u32) -> Self {
        let ty = match generation {
            Generation::Phase2 => types::ENHANCED_STATUS_PHASE2,
            Generation::Head => types::ENHANCED_STATUS,
        };
        Self::with_header(Header::broadcast(ty, from))
    }
}

package! {
    /// MetricsPackage (204, broadcast): performance metrics.
    pub struct MetricsPackage: broadcast {
        /// `cpu`: CPU usage, %.
        cpu: u8 = read_as("cpu");
        /// `loops`: loop iterations per second.
        loops: u32 = read_as("loops");
        /// `tasks`: pending tasks.
        tasks: u16 = read_as("tasks");
        /// `heap`: free heap, bytes.
        heap: u32 = read_as("heap");
        /// `minHeap`: lowest free heap since boot.
        min_heap: u32 = read_as("minHeap");
        /// `fragHeap`: heap fragmentation, %.
        frag_heap: u32 = read_as("fragHeap");
        /// `maxHeap`: largest allocatable block.
        max_heap: u32 = read_as("maxHeap");
        /// `bytesRx`.
        bytes_rx: u32 = read_as("bytesRx");
        /// `bytesTx`.
        bytes_tx: u32 = read_as("bytesTx");
        /// `pktsRx`.
        pkts_rx: u16 = read_as("pktsRx");
        /// `pktsTx`.
        pkts_tx: u16 = read_as("pktsTx");
        /// `pktsDrop`.
        pkts_drop: u16 = read_as("pktsDrop");
        /// `throughput`, B/s.
        throughput: u16 = read_as("throughput");
        /// `avgResp`, µs.
        avg_resp: u32 = read_as("avgResp");
        /// `maxResp`, µs.
        max_resp: u32 = read_as("maxResp");
        /// `avgLat`: mesh latency, ms.
        avg_lat: u16 = read_as("avgLat");
        /// `connQual`, 0–100.
        conn_qual: u8 = read_as("connQual");
        /// `rssi`, dBm.
        rssi: i8 = read_as("rssi");
        /// `ts`: collection time.
        ts: u32 = read_as("ts");
        /// `interval`: collection interval, ms.
        interval: u32 = read_as("interval");
        /// `message_type` (204 in the current generation).
        message_type: Option<u16> = message_type(204);
    }
}

impl MetricsPackage {
    /// A current-generation metrics package from `from`, all zero.
    pub fn new(from: u32) -> Self {
        Self::with_header(Header::broadcast(types::METRICS, from))
    }
}
