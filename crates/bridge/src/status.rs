//! The node status packages the bridge reads (spec §7): Alteriom EnhancedStatus (203 at
//! Phase 1/2, 604 at HEAD) and Metrics (204), native or double-encoded in a user message.
//!
//! Only the fields the bridge uses are read, leniently (a missing or mistyped field is None),
//! so a firmware generation that adds or drops fields still reports what it has.

use pmesh_proto::json::{self, Number, Object, Value};
use serde_json::{Map, Value as J};

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
        let mut m = Map::new();
        m.insert("type".into(), J::from(self.ty));
        put(&mut m, "uptime", self.uptime_s);
        put(&mut m, "freeHeapKB", self.mem_kb);
        if let Some(w) = self.wifi {
            m.insert("wifi".into(), J::from(w));
        }
        if let Some(f) = &self.fw {
            m.insert("fw".into(), J::from(f.clone()));
        }
        if let Some(f) = &self.fw_md5 {
            m.insert("fwMD5".into(), J::from(f.clone()));
        }
        put(&mut m, "nodes", self.nodes);
        put(&mut m, "conns", self.conns);
        put(&mut m, "msgRx", self.msg_rx);
        put(&mut m, "msgTx", self.msg_tx);
        put(&mut m, "msgDrop", self.msg_drop);
        put(&mut m, "latencyMs", self.latency_ms);
        put(&mut m, "lossPercent", self.loss_percent);
        put(&mut m, "throughput", self.throughput);
        put(&mut m, "alertFlags", self.alerts);
        if let Some(e) = &self.last_err {
            m.insert("lastErr".into(), J::from(e.clone()));
        }
        J::Object(m)
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
        let mut m = Map::new();
        put(&mut m, "cpu", self.cpu);
        put(&mut m, "freeHeap", self.heap);
        put(&mut m, "minFreeHeap", self.min_heap);
        put(&mut m, "heapFragmentation", self.frag_heap);
        put(&mut m, "pktsRx", self.pkts_rx);
        put(&mut m, "pktsTx", self.pkts_tx);
        put(&mut m, "pktsDrop", self.pkts_drop);
        put(&mut m, "avgRespMs", self.avg_resp);
        put(&mut m, "avgLatencyMs", self.avg_lat);
        put(&mut m, "connQuality", self.conn_qual);
        if let Some(r) = self.rssi {
            m.insert("rssi".into(), J::from(r));
        }
        J::Object(m)
    }
}

fn put(m: &mut Map<String, J>, k: &str, v: Option<u64>) {
    if let Some(v) = v {
        m.insert(k.into(), J::from(v));
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
