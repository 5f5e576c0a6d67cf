//! Signed firmware requested over MQTT (`bridge/request/ota/start`, issue 13 gap 5): a gateway
//! with `--mqtt` and a trusted key, a receiving node, a real broker (Mosquitto, or the embedded
//! one where it is missing and PMESH_REQUIRE_MOSQUITTO is not 1). Bundles made with `pmesh key
//! gen` / `pmesh ota sign` in the gateway's firmware directory. Each bad bundle (bad signature,
//! unknown key, expired, wrong role, wrong hardware, a plain image, then an older sequence
//! than the one offered) is refused before anything is announced: the MQTT response is an
//! error naming the refusal, no `ota_requested` event follows and the gateway offers nothing.
//! A good bundle is answered ok, offered and installed.

mod mqtt_support;
mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_support::*;
use net_support::*;
use serde_json::{Value, json};

fn pmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PMESH)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        s(out.stdout),
        s(out.stderr),
    )
}

fn key(dir: &TempDir, name: &str) -> (PathBuf, String) {
    let path = dir.0.join(name);
    let (code, out, err) = pmesh(&["key", "gen", "--out", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (path, out.trim().to_owned())
}

/// `pmesh ota sign` of `image` into `fw/<name>.pmb`, with `extra` arguments.
fn sign(
    fw: &Path,
    key: &Path,
    image: &[u8],
    class: (&str, &str),
    seq: u64,
    name: &str,
    extra: &[&str],
) {
    let raw = fw.join(format!("{name}.bin"));
    std::fs::write(&raw, image).unwrap();
    let out = fw.join(format!("{name}.pmb"));
    let s = seq.to_string();
    let version = format!("ver-{name}");
    let mut args = vec![
        "ota",
        "sign",
        raw.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--role",
        class.0,
        "--hardware",
        class.1,
        "--fw-version",
        &version,
        "--sequence",
        &s,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = pmesh(&args);
    assert_eq!(code, 0, "{err}");
}

fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// The gateway distributes nothing: no pmesh offer of its own, no classic offer.
fn offers_nothing(gw: &NodeProc) -> bool {
    let st = gw.request("ota_status", json!({}));
    let pmesh_off = st["pmesh"].is_null() || st["pmesh"]["distributor"] == false;
    let classic = &st["classic_offers"];
    pmesh_off && (classic.is_null() || classic.as_array().is_some_and(|a| a.is_empty()))
}

fn start(sub: &Sub, name: &str, transaction: &str) -> Value {
    sub.publish(
        "mesh/bridge/request/ota/start",
        &json!({"image_path": name, "role": "sensor", "hardware": "ESP32",
            "mode": "pmesh", "transaction": transaction})
        .to_string(),
    );
    sub.wait("mesh/bridge/response/ota/start", 10, |m| {
        m.json()["transaction"] == transaction
    })
    .json()
}

fn requested(sub: &Sub) -> usize {
    sub.on("mesh/bridge/event")
        .iter()
        .filter(|m| m.json()["type"] == "ota_requested")
        .count()
}

#[test]
fn ota_start_verifies_bundles_before_announcing_and_names_each_refusal() {
    let dir = TempDir::new("mqtt-signed");
    let broker = Broker::start(&dir);
    let sub = Sub::connect(broker.port, "mesh/#");
    let (fleet, public) = key(&dir, "fleet.key");
    let (rogue, _) = key(&dir, "rogue.key");
    let fw = dir.0.join("firmware");
    std::fs::create_dir_all(&fw).unwrap();
    let ota_dir = dir.0.join("ota-402");
    let trusted = format!("[ota]\ntrusted_keys = [\"{public}\"]\n");
    let gw_cfg = dir.file("gateway.toml", &format!("{FAST_TIMERS}\n{trusted}"));
    let rx_cfg = dir.file(
        "receiver.toml",
        &format!(
            "{FAST_TIMERS}\n{trusted}role = \"sensor\"\nhardware = \"ESP32\"\ndir = \"{}\"\n",
            ota_dir.display()
        ),
    );
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let gw = start_gateway(
        &dir,
        NodeSpec {
            id: 401,
            port: ports[0],
            connect: vec![],
            root: true,
            config: Some(gw_cfg),
        },
        &[
            "--mqtt".into(),
            format!("mqtt://127.0.0.1:{}", broker.port),
            "--mqtt-state-dir".into(),
            dir.0.join("bridge").display().to_string(),
            "--firmware-dir".into(),
            fw.display().to_string(),
        ],
    );
    let _rx = NodeProc::start(
        &dir,
        NodeSpec {
            id: 402,
            port: ports[1],
            connect: vec![ports[0]],
            root: false,
            config: Some(rx_cfg),
        },
    );
    sub.wait("mesh/status/nodes", 20, |m| m.json()["count"] == 2);

    let class = ("sensor", "ESP32");
    let good = image(1, 20_000);
    sign(&fw, &fleet, &good, class, 5, "v5", &[]);
    sign(&fw, &fleet, &image(2, 9_000), class, 3, "v3", &[]);
    sign(&fw, &rogue, &image(3, 9_000), class, 9, "rogue", &[]);
    sign(
        &fw,
        &fleet,
        &image(4, 9_000),
        class,
        9,
        "old",
        &["--expires", "1710000000"],
    );
    sign(
        &fw,
        &fleet,
        &image(5, 9_000),
        ("relay", "ESP32"),
        9,
        "role",
        &[],
    );
    sign(
        &fw,
        &fleet,
        &image(6, 9_000),
        ("sensor", "ESP8266"),
        9,
        "hw",
        &[],
    );
    // A signed byte changed (the version text): the layout holds, the signature does not.
    sign(&fw, &fleet, &image(7, 9_000), class, 9, "forged", &[]);
    let mut forged = std::fs::read(fw.join("forged.pmb")).unwrap();
    let at = forged
        .windows(10)
        .position(|w| w == b"ver-forged")
        .expect("the version text in the manifest");
    forged[at + 4] = b'F';
    std::fs::write(fw.join("forged.pmb"), &forged).unwrap();

    let refused = |name: &str, code: &str, t: &str| {
        let before = requested(&sub);
        let r = start(&sub, name, t);
        assert_eq!(r["status"], "error", "{name} accepted: {r}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(error.contains(code), "{name}: {code} not named in {r}");
        assert!(
            offers_nothing(&gw),
            "{name}: an offer exists after the refusal"
        );
        assert_eq!(requested(&sub), before, "{name}: a campaign was announced");
    };
    refused("forged.pmb", "bad_signature", "t-sig");
    refused("rogue.pmb", "unknown_key", "t-key");
    refused("old.pmb", "expired", "t-exp");
    refused("role.pmb", "wrong_class", "t-role");
    refused("hw.pmb", "wrong_class", "t-hw");
    refused("v5.bin", "unsigned", "t-plain");
    assert!(
        !ota_dir.join("current.json").exists(),
        "something was installed"
    );

    // The good bundle: accepted, offered, installed.
    let r = start(&sub, "v5.pmb", "t-good");
    assert_eq!(r["status"], "ok", "{r}");
    let campaign = r["data"]["campaign"].clone();
    let ev = "mesh/bridge/event";
    sub.wait(ev, 10, |m| {
        m.json()["type"] == "ota_requested" && m.json()["data"]["campaign"] == campaign
    });
    sub.wait(ev, 30, |m| {
        let v = m.json();
        v["type"] == "ota_node_result"
            && v["data"]["nodeId"] == 402
            && v["data"]["result"] == "updated"
            && v["data"]["campaign"] == campaign
    });
    sub.wait(ev, 20, |m| {
        m.json()["type"] == "ota_finished" && m.json()["data"]["campaign"] == campaign
    });
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(ota_dir.join("current.json")).unwrap())
            .unwrap();
    assert_eq!(record["version"], "ver-v5", "{record}");
    wait_until(
        Duration::from_secs(10),
        "the finished offer withdrawn",
        || offers_nothing(&gw),
    );

    // Older than what this gateway offered for the class: refused as a rollback.
    refused("v3.pmb", "rollback", "t-rollback");
}
