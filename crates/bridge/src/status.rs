//! The node status packages the bridge reads (spec §7): Alteriom EnhancedStatus (203 at
//! Phase 1/2, 604 at HEAD) and Metrics (204), native or double-encoded in a user message.
//!
//! Only the fields the bridge uses are read, leniently (a missing or mistyped field is None),
//! so a firmware generation that adds or drops fields still reports what it has.

use pmesh_proto::json::{self, Number, Object, Value};
use serde::{Serialize, Serializer};
use serde_json::Value as J;

/// EnhancedStatusPackage type at Phase 1/2.
pub const ENHANCED_STATUS_OLD: i32 = 203;
/// EnhancedStatusPackage type at HEAD.
pub const ENHANCED_STATUS: i32 = 604;
/// MetricsPackage type.
pub const METRICS: i32 = 204;

/// A status report a node sent.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusReport {
    /// 203/604.
    Enhanced(EnhancedStatus),
    /// 204.
    Metrics(NodeMetrics),
}

impl StatusReport {
    /// The sending node.
    pub fn from(&self) -> u32 {
        match self {
            StatusReport::Enhanced(s) => s.from,
            StatusReport::Metrics(m) => m.from,
        }
    }

    /// Reads a 203/604/204 package from a parsed frame body; None for any other type.
    pub fn from_object(obj: &Object) -> Option<StatusReport> {
        let ty = obj.get("type").and_then(Value::as_i32_strict)?;
        let from = obj.get("from").and_then(Value::as_u32_strict)?;
        match ty {
            ENHANCED_STATUS | ENHANCED_STATUS_OLD => {
                Some(StatusReport::Enhanced(EnhancedStatus::read(from, ty, obj)))
            }
            METRICS => Some(StatusReport::Metrics(NodeMetrics::read(from, obj))),
            _ => None,
        }
    }

    /// Reads a package double-encoded as the text of a user message (how Alteriom sketches
    /// send packages with `sendBroadcast(pkg.toJson())`).
    pub fn from_user_message(msg: &[u8]) -> Option<StatusReport> {
        let first = msg.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        match json::parse(msg, 32).ok()? {
            Value::Object(o) => StatusReport::from_object(&o),
            _ => None,
        }
    }
}

/// Alteriom EnhancedStatusPackage fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnhancedStatus {
    /// Sender.
    pub from: u32,
    /// 203 or 604.
    pub ty: i32,
    /// Uptime, s.
    pub uptime_s: Option<u64>,
    /// Free heap, KiB.
    pub mem_kb: Option<u64>,
    /// WiFi signal/quality byte as sent.
    pub wifi: Option<i64>,
    /// Firmware version.
    pub fw: Option<String>,
    /// Firmware MD5.
    pub fw_md5: Option<String>,
    /// Nodes the sender sees.
    pub nodes: Option<u64>,
    /// Its connections.
    pub conns: Option<u64>,
    /// Messages received / sent / dropped (node's counters).
    pub msg_rx: Option<u64>,
    /// Messages sent.
    pub msg_tx: Option<u64>,
    /// Messages dropped.
    pub msg_drop: Option<u64>,
    /// Latency, ms.
    pub latency_ms: Option<u64>,
    /// Packet loss, percent.
    pub loss_percent: Option<u64>,
    /// Throughput, B/s.
    pub throughput: Option<u64>,
    /// Alert bit flags (meaning unspecified by the reference).
    pub alerts: Option<u64>,
    /// Last error text.
    pub last_err: Option<String>,
}

impl EnhancedStatus {
    fn read(from: u32, ty: i32, o: &Object) -> Self {
        Self {
            from,
            ty,
            uptime_s: uint(o, "uptime"),
            mem_kb: uint(o, "mem"),
            wifi: int(o, "wifi"),
            fw: text(o, "fw"),
            fw_md5: text(o, "fwMD5"),
            nodes: uint(o, "nodes"),
            conns: uint(o, "conns"),
            msg_rx: uint(o, "msgRx"),
            msg_tx: uint(o, "msgTx"),
            msg_drop: uint(o, "msgDrop"),
            latency_ms: uint(o, "latency"),
            loss_percent: uint(o, "loss"),
            throughput: uint(o, "throughput"),
            alerts: uint(o, "alerts"),
            last_err: text(o, "lastErr"),
        }
    }

    /// The JSON carried in the node's MQTT state (`status` object).
    pub fn to_json(&self) -> J {
        serde_json::to_value(self).unwrap_or(J::Null)
    }
}

/// The `status` object of a node's MQTT state (absent fields left out). Serialized straight
/// from the record (no intermediate map): 1,000 node states are written per snapshot.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnhancedStatusJson<'a> {
    #[serde(rename = "type")]
    ty: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime: Option<u64>,
    #[serde(rename = "freeHeapKB", skip_serializing_if = "Option::is_none")]
    free_heap_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wifi: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fw: Option<&'a str>,
    #[serde(rename = "fwMD5", skip_serializing_if = "Option::is_none")]
    fw_md5: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_rx: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_tx: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_drop: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_percent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    throughput: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert_flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_err: Option<&'a str>,
}

impl Serialize for EnhancedStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EnhancedStatusJson {
            ty: self.ty,
            uptime: self.uptime_s,
            free_heap_kb: self.mem_kb,
            wifi: self.wifi,
            fw: self.fw.as_deref(),
            fw_md5: self.fw_md5.as_deref(),
            nodes: self.nodes,
            conns: self.conns,
            msg_rx: self.msg_rx,
            msg_tx: self.msg_tx,
            msg_drop: self.msg_drop,
            latency_ms: self.latency_ms,
            loss_percent: self.loss_percent,
            throughput: self.throughput,
            alert_flags: self.alerts,
            last_err: self.last_err.as_deref(),
        }
        .serialize(s)
    }
}

/// Alteriom MetricsPackage (204) fields the bridge uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMetrics {
    /// Sender.
    pub from: u32,
    /// CPU use, percent.
    pub cpu: Option<u64>,
    /// Free heap, bytes.
    pub heap: Option<u64>,
    /// Lowest free heap seen, bytes.
    pub min_heap: Option<u64>,
    /// Heap fragmentation, percent.
    pub frag_heap: Option<u64>,
    /// Packets received / sent / dropped.
    pub pkts_rx: Option<u64>,
    /// Packets sent.
    pub pkts_tx: Option<u64>,
    /// Packets dropped.
    pub pkts_drop: Option<u64>,
    /// Average response time, ms.
    pub avg_resp: Option<u64>,
    /// Average latency, ms.
    pub avg_lat: Option<u64>,
    /// Connection quality, percent.
    pub conn_qual: Option<u64>,
    /// RSSI, dBm.
    pub rssi: Option<i64>,
}

impl NodeMetrics {
    fn read(from: u32, o: &Object) -> Self {
        Self {
            from,
            cpu: uint(o, "cpu"),
            heap: uint(o, "heap"),
            min_heap: uint(o, "minHeap"),
            frag_heap: uint(o, "fragHeap"),
            pkts_rx: uint(o, "pktsRx"),
            pkts_tx: uint(o, "pktsTx"),
            pkts_drop: uint(o, "pktsDrop"),
            avg_resp: uint(o, "avgResp"),
            avg_lat: uint(o, "avgLat"),
            conn_qual: uint(o, "connQual"),
            rssi: int(o, "rssi"),
        }
    }

    /// Packet loss in percent: dropped / (received + dropped), when the node reported both.
    pub fn loss_percent(&self) -> Option<u64> {
        let (rx, drop) = (self.pkts_rx?, self.pkts_drop?);
        let all = rx + drop;
        (all > 0).then(|| drop * 100 / all)
    }

    /// The JSON carried in the node's MQTT state (`metrics` object).
    pub fn to_json(&self) -> J {
        serde_json::to_value(self).unwrap_or(J::Null)
    }
}

/// The `metrics` object of a node's MQTT state (absent fields left out).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeMetricsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    free_heap: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_free_heap: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heap_fragmentation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkts_rx: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkts_tx: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkts_drop: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_resp_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_quality: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rssi: Option<i64>,
}

impl Serialize for NodeMetrics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        NodeMetricsJson {
            cpu: self.cpu,
            free_heap: self.heap,
            min_free_heap: self.min_heap,
            heap_fragmentation: self.frag_heap,
            pkts_rx: self.pkts_rx,
            pkts_tx: self.pkts_tx,
            pkts_drop: self.pkts_drop,
            avg_resp_ms: self.avg_resp,
            avg_latency_ms: self.avg_lat,
            conn_quality: self.conn_qual,
            rssi: self.rssi,
        }
        .serialize(s)
    }
}

fn uint(o: &Object, k: &str) -> Option<u64> {
    match o.get(k)? {
        Value::Number(Number::UInt(n)) => Some(*n),
        Value::Number(Number::Float(f)) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
        _ => None,
    }
}

fn int(o: &Object, k: &str) -> Option<i64> {
    match o.get(k)? {
        Value::Number(Number::UInt(n)) => i64::try_from(*n).ok(),
        Value::Number(Number::Int(n)) => Some(*n),
        Value::Number(Number::Float(f)) if f.is_finite() => Some(*f as i64),
        _ => None,
    }
}

fn text(o: &Object, k: &str) -> Option<String> {
    match o.get(k)? {
        Value::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Object {
        match json::parse(s.as_bytes(), 32).unwrap() {
            Value::Object(o) => o,
            _ => panic!(),
        }
    }

    #[test]
    fn reads_vector_27_both_generations() {
        let v27 = r#"{"from":12345,"routing":2,"type":604,"status":0,"uptime":3600,"mem":120,"wifi":0,"fw":"1.2.3","fwMD5":"abc","nodes":5,"conns":2,"msgRx":0,"msgTx":0,"msgDrop":0,"latency":0,"loss":0,"throughput":0,"alerts":0,"lastErr":""}"#;
        for text in [v27.to_string(), v27.replace("604", "203")] {
            let Some(StatusReport::Enhanced(s)) = StatusReport::from_object(&obj(&text)) else {
                panic!("not read: {text}");
            };
            assert_eq!(s.from, 12345);
            assert_eq!(s.uptime_s, Some(3600));
            assert_eq!(s.mem_kb, Some(120));
            assert_eq!(s.fw.as_deref(), Some("1.2.3"));
            assert_eq!(s.nodes, Some(5));
            assert_eq!(s.loss_percent, Some(0));
        }
    }

    #[test]
    fn reads_metrics_and_double_encoded() {
        let m = r#"{"from":7,"routing":2,"type":204,"cpu":12,"heap":8000,"minHeap":7000,"pktsRx":90,"pktsDrop":10,"rssi":-67,"message_type":204}"#;
        let Some(StatusReport::Metrics(x)) = StatusReport::from_user_message(m.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            (x.from, x.heap, x.rssi, x.loss_percent()),
            (7, Some(8000), Some(-67), Some(10))
        );
        assert!(StatusReport::from_user_message(b"hello").is_none());
        assert!(StatusReport::from_user_message(b"{\"type\":200,\"from\":1}").is_none());
        assert!(StatusReport::from_user_message(b"{broken").is_none());
        // A status package without a numeric `from` is not attributed to anyone.
        assert!(StatusReport::from_object(&obj(r#"{"type":604,"from":"x"}"#)).is_none());
    }
}
