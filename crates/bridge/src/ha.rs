//! Home Assistant device-based MQTT discovery (`homeassistant/device/<id>/config`): one
//! retained message per node with `dev`, `o` (origin) and `cmps` (components). Node entities
//! are `via_device` the gateway; availability needs both the bridge and the node online.

use serde_json::{Value as J, json};

use crate::payload::Topics;

/// Unique id of the gateway device.
pub fn gateway_unique(gateway: u32) -> String {
    format!("pmesh_gateway_{gateway}")
}

/// Unique id of a node device.
pub fn node_unique(node: u32) -> String {
    format!("pmesh_node_{node}")
}

fn origin() -> J {
    json!({"name": "pmesh", "sw": env!("CARGO_PKG_VERSION"), "url": "https://example.invalid/pmesh"})
}

fn sensor(uid: &str, name: &str, topic: &str, tpl: &str, extra: J) -> J {
    let mut c = json!({
        "p": "sensor",
        "name": name,
        "unique_id": uid,
        "stat_t": topic,
        "val_tpl": tpl,
    });
    if let (J::Object(c), J::Object(e)) = (&mut c, extra) {
        c.extend(e);
    }
    c
}

/// Discovery payload of a mesh node.
pub fn node_config(t: &Topics, gateway: u32, node: u32, fw: Option<&str>) -> J {
    let u = node_unique(node);
    let st = t.node(node);
    let mut dev = json!({
        "ids": [u],
        "name": format!("Mesh node {node}"),
        "mf": "painlessMesh",
        "mdl": "mesh node",
        "via_device": gateway_unique(gateway),
    });
    if let Some(fw) = fw {
        dev["sw"] = J::from(fw);
    }
    json!({
        "dev": dev,
        "o": origin(),
        "avty": [
            {"t": t.state(), "val_tpl": "{{ value_json.state }}"},
            {"t": t.availability(node), "val_tpl": "{{ value_json.state }}"},
        ],
        "avty_mode": "all",
        "qos": 1,
        "cmps": {
            format!("{u}_hops"): sensor(&format!("{u}_hops"), "Hops", &st, "{{ value_json.hops }}", json!({"stat_cla": "measurement", "ent_cat": "diagnostic"})),
            format!("{u}_uptime"): sensor(&format!("{u}_uptime"), "Uptime", &st, "{{ value_json.status.uptime if value_json.status else none }}", json!({"dev_cla": "duration", "unit_of_meas": "s", "stat_cla": "total_increasing", "ent_cat": "diagnostic"})),
            format!("{u}_heap"): sensor(&format!("{u}_heap"), "Free heap", &st, "{{ value_json.status.freeHeapKB if value_json.status else none }}", json!({"dev_cla": "data_size", "unit_of_meas": "KiB", "stat_cla": "measurement", "ent_cat": "diagnostic"})),
            format!("{u}_loss"): sensor(&format!("{u}_loss"), "Packet loss", &st, "{{ value_json.status.lossPercent if value_json.status else none }}", json!({"unit_of_meas": "%", "stat_cla": "measurement", "ent_cat": "diagnostic"})),
            format!("{u}_update"): sensor(&format!("{u}_update"), "Firmware update", &st, "{{ value_json.update.state }}", json!({"ent_cat": "diagnostic"})),
            format!("{u}_connected"): {
                "p": "binary_sensor",
                "name": "Connected",
                "unique_id": format!("{u}_connected"),
                "stat_t": st,
                "val_tpl": "{{ 'ON' if value_json.online else 'OFF' }}",
                "dev_cla": "connectivity",
                "ent_cat": "diagnostic",
            },
        },
    })
}

/// Discovery payload of the gateway (bridge) device.
pub fn gateway_config(t: &Topics, gateway: u32) -> J {
    let u = gateway_unique(gateway);
    let metrics = t.t("status/metrics");
    json!({
        "dev": {"ids": [u], "name": format!("pmesh gateway {gateway}"), "mf": "pmesh", "mdl": "Linux gateway", "sw": env!("CARGO_PKG_VERSION")},
        "o": origin(),
        "avty": [{"t": t.state(), "val_tpl": "{{ value_json.state }}"}],
        "qos": 1,
        "cmps": {
            format!("{u}_nodes"): sensor(&format!("{u}_nodes"), "Mesh nodes", &metrics, "{{ value_json.nodeCount }}", json!({"stat_cla": "measurement"})),
            format!("{u}_alerts"): sensor(&format!("{u}_alerts"), "Active alerts", &t.t("status/alerts"), "{{ value_json.alerts | length }}", json!({"stat_cla": "measurement"})),
            format!("{u}_uptime"): sensor(&format!("{u}_uptime"), "Uptime", &metrics, "{{ value_json.uptime }}", json!({"dev_cla": "duration", "unit_of_meas": "s", "stat_cla": "total_increasing", "ent_cat": "diagnostic"})),
            format!("{u}_broker"): {
                "p": "binary_sensor",
                "name": "Bridge",
                "unique_id": format!("{u}_broker"),
                "stat_t": t.state(),
                "val_tpl": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
                "dev_cla": "connectivity",
                "ent_cat": "diagnostic",
            },
        },
    })
}

/// Checks a device discovery payload against the keys Home Assistant documents as required:
/// `dev` with `ids` (or `cns`), `o` with `name`, non-empty `cmps` whose components each have
/// `p` (platform) and `unique_id`, and a state topic for sensor/binary_sensor. Returns the
/// problems found (empty = valid).
pub fn check_device_config(v: &J) -> Vec<String> {
    let mut errs = Vec::new();
    let dev = &v["dev"];
    if !(dev["ids"].is_array() || dev["ids"].is_string() || dev["cns"].is_array()) {
        errs.push("dev.ids (or dev.cns) missing".to_string());
    }
    if !v["o"]["name"].is_string() {
        errs.push("o.name missing".to_string());
    }
    match v["cmps"].as_object() {
        Some(c) if !c.is_empty() => {
            for (k, comp) in c {
                if !comp["p"].is_string() {
                    errs.push(format!("cmps.{k}.p missing"));
                }
                if !comp["unique_id"].is_string() {
                    errs.push(format!("cmps.{k}.unique_id missing"));
                }
                if matches!(comp["p"].as_str(), Some("sensor" | "binary_sensor"))
                    && !(comp["stat_t"].is_string() || v["stat_t"].is_string())
                {
                    errs.push(format!("cmps.{k}.stat_t missing"));
                }
            }
        }
        _ => errs.push("cmps missing or empty".to_string()),
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_required_keys() {
        let t = Topics {
            prefix: "mesh".into(),
            legacy: "painlessMesh".into(),
            ha: "homeassistant".into(),
        };
        assert_eq!(
            check_device_config(&node_config(&t, 1, 2, Some("1.2.3"))),
            Vec::<String>::new()
        );
        assert_eq!(
            check_device_config(&gateway_config(&t, 1)),
            Vec::<String>::new()
        );
        assert!(!check_device_config(&json!({"dev": {}, "cmps": {"x": {}}})).is_empty());
    }
}
