//! Topic names and payload helpers: timestamps, paging of large snapshots.

use serde_json::{Map, Value as J, json};

/// Adds `"timestamp"`: epoch ms when the clock is set; otherwise `null` and `"clockSet":false`.
pub fn stamp(v: &mut J, now_ms: Option<u64>) {
    if let J::Object(m) = v {
        m.insert("timestamp".into(), now_ms.map_or(J::Null, J::from));
        if now_ms.is_none() {
            m.insert("clockSet".into(), J::Bool(false));
        }
    }
}

/// Every topic the bridge uses, built from the configured prefixes.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Base prefix (`mesh`).
    pub prefix: String,
    /// Legacy gateway prefix (`painlessMesh`).
    pub legacy: String,
    /// Home Assistant discovery prefix (`homeassistant`).
    pub ha: String,
}

impl Topics {
    /// `<prefix>/<rest>`.
    pub fn t(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }
    /// `<prefix>/bridge/state`.
    pub fn state(&self) -> String {
        self.t("bridge/state")
    }
    /// `<prefix>/status/node/<id>`.
    pub fn node(&self, id: u32) -> String {
        format!("{}/status/node/{id}", self.prefix)
    }
    /// `<prefix>/status/node/<id>/availability`.
    pub fn availability(&self, id: u32) -> String {
        format!("{}/status/node/{id}/availability", self.prefix)
    }
    /// `homeassistant/device/<unique>/config`.
    pub fn ha_device(&self, unique: &str) -> String {
        format!("{}/device/{unique}/config", self.ha)
    }
}

/// MQTT bytes a PUBLISH of this topic and payload takes (fixed header up to 5 bytes, topic
/// length 2, packet id 2).
pub fn packet_size(topic: &str, payload_len: usize) -> usize {
    5 + 2 + topic.len() + 2 + payload_len
}

/// A snapshot too large for one packet, split into pages. `index` goes to the topic itself,
/// page `i` (from 0) to `<topic>/page/<i>`.
#[derive(Debug)]
pub struct Paged {
    /// The index payload.
    pub index: J,
    /// Page payloads.
    pub pages: Vec<J>,
}

/// Splits `items` (the array under `key`) into pages that each fit `max_packet` on
/// `<topic>/page/<n>`. Each page is `{"snapshot":s,"page":i,"pages":n,<key>:[...]}`; the index is
/// `{"paged":true,"snapshot":s,"pages":n,"count":len,<extra fields>}`.
pub fn page(
    topic: &str,
    key: &str,
    items: &[J],
    extra: Map<String, J>,
    snapshot: u64,
    max_packet: usize,
) -> Paged {
    // Room for the page envelope and the longest page topic.
    let overhead = packet_size(&format!("{topic}/page/999999"), 0) + key.len() + 96;
    let budget = max_packet.saturating_sub(overhead).max(64);
    let mut pages: Vec<Vec<J>> = Vec::new();
    let mut cur: Vec<J> = Vec::new();
    let mut cur_len = 0;
    for it in items {
        let len = it.to_string().len() + 1;
        if !cur.is_empty() && cur_len + len > budget {
            pages.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        cur_len += len;
        cur.push(it.clone());
    }
    if !cur.is_empty() || pages.is_empty() {
        pages.push(cur);
    }
    let n = pages.len();
    let pages = pages
        .into_iter()
        .enumerate()
        .map(|(i, p)| json!({"snapshot": snapshot, "page": i, "pages": n, key: p}))
        .collect();
    let mut index = extra;
    index.insert("paged".into(), J::Bool(true));
    index.insert("snapshot".into(), J::from(snapshot));
    index.insert("pages".into(), J::from(n));
    index.insert("count".into(), J::from(items.len()));
    Paged {
        index: J::Object(index),
        pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_and_keep_every_item_in_order() {
        let items: Vec<J> = (0..5000u32)
            .map(|i| J::from(4_000_000_000u32 - i))
            .collect();
        let p = page("mesh/status/nodes", "nodes", &items, Map::new(), 7, 4096);
        assert!(p.pages.len() > 10);
        let mut all = Vec::new();
        for (i, pg) in p.pages.iter().enumerate() {
            let topic = format!("mesh/status/nodes/page/{i}");
            assert!(packet_size(&topic, pg.to_string().len()) <= 4096);
            all.extend(pg["nodes"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(all, items);
        assert_eq!(p.index["count"], 5000);
        assert_eq!(p.index["pages"], p.pages.len());
    }

    #[test]
    fn stamps_say_when_clock_unset() {
        let mut v = json!({});
        stamp(&mut v, None);
        assert_eq!(v, json!({"timestamp": null, "clockSet": false}));
        let mut v = json!({});
        stamp(&mut v, Some(1_800_000_000_000));
        assert_eq!(v, json!({"timestamp": 1_800_000_000_000u64}));
    }
}
