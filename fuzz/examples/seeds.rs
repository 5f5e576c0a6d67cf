//! Writes the seed inputs of every fuzz target into `fuzz/seeds/<target>/` (committed; run
//! again after changing a target's input layout):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Sources: the wire vectors and reference-algorithm cases in `testdata/vectors/` (real
//! frames), hand-written node scripts, OTA rollouts recorded from a real distributor node
//! (pmesh and classic, each mode), the scenario configs and the example configuration in the
//! docs.

use std::fs;
use std::path::{Path, PathBuf};

use pmesh_fuzz::host::{HARDWARE, Host, Knobs, ROLE};
use pmesh_fuzz::input::{Input, Writer};
use pmesh_fuzz::records::{self, DOWN, UP};
use pmesh_fuzz::script::{self, Op};
use pmesh_node::{Config, Direction, Node, Transmit};
use pmesh_ota::bitmap::ChunkBitmap;
use pmesh_ota::{MemorySink, MemorySource, MemoryStore, Offer, Ota, OtaConfig, b85};
use pmesh_proto::{DEFAULT_MAX_DEPTH, Envelope};
use pmesh_sim::Topology;
use pmesh_sim::ota::split_scenario_toml;
use serde_json::Value as J;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().expect("fuzz/ sits in the repository");
    let frames = vector_frames(repo);
    let out = root.join("seeds");
    write_all(&out.join("frame_json"), frame_json_seeds(&frames));
    write_all(&out.join("envelope_sync"), envelope_seeds(&frames));
    write_all(&out.join("node_script"), node_script_seeds(&frames));
    write_all(&out.join("ota_frames"), ota_seeds());
    write_all(&out.join("toml_config"), toml_seeds(repo));
    write_all(&out.join("bridge_request"), bridge_seeds(&frames));
    write_all(&out.join("node_config"), node_config_seeds(repo));
    println!("seeds written to {}", out.display());
}

/// Replaces `dir`'s contents with `seeds`.
fn write_all(dir: &PathBuf, seeds: Vec<(String, Vec<u8>)>) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the seed directory");
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes).expect("write a seed");
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

/// Every frame in the vectors: wire cases, parse edge cases (hex ones decoded), NODE_SYNC
/// equality pairs, OTA transforms and time-sync exchanges.
fn vector_frames(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let read = |name: &str| -> J {
        let path = repo.join("testdata/vectors").join(name);
        serde_json::from_slice(&fs::read(&path).expect("testdata/vectors"))
            .expect("vectors are JSON")
    };
    let mut frames = Vec::new();
    let wire = read("wire.json");
    for case in wire["cases"].as_array().expect("cases") {
        if let Some(f) = frame_of(case) {
            frames.push((
                format!("wire-{}", case["name"].as_str().unwrap_or("case")),
                f,
            ));
        }
    }
    let reference = read("reference-algorithms.json");
    for (section, keys) in [
        ("parse_edge_cases", &["frame"][..]),
        ("node_sync_equality", &["a", "b"][..]),
        (
            "ota_transforms",
            &["announce_frame", "request_frame", "data_frame"][..],
        ),
        ("time_sync_exchange", &["frame"][..]),
    ] {
        for (i, case) in reference[section]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for key in keys {
                let f = case[*key]
                    .as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| case[format!("{key}_hex")].as_str().and_then(unhex));
                if let Some(f) = f {
                    frames.push((format!("ref-{section}-{i}-{key}"), f));
                }
            }
        }
    }
    frames
}

fn frame_of(case: &J) -> Option<Vec<u8>> {
    case["frame"]
        .as_str()
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| case["frame_hex"].as_str().and_then(unhex))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `[cap 256 KiB][depth 255][split seed]` + one frame + NUL; all frames in one stream; the
/// same with newline delimiters and a small cap.
fn frame_json_seeds(frames: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|(name, f)| {
            let mut s = vec![7, 6, 0x12, 0x34];
            s.extend_from_slice(f);
            s.push(0);
            (name.clone(), s)
        })
        .collect();
    let mut all = vec![7, 6, 0x56, 0x78];
    let mut lines = vec![7 | 8, 6, 0x9a, 0xbc];
    for (_, f) in frames.iter().take(24) {
        all.extend_from_slice(f);
        all.push(0);
        lines.extend_from_slice(f);
        lines.push(b'\n');
    }
    seeds.push(("stream-all".into(), all));
    seeds.push(("stream-lines".into(), lines));
    seeds
}

/// `[depth 255]` + frame, plus frames pmesh writes (NODE_SYNC of a chain, a status report).
fn envelope_seeds(frames: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|(name, f)| (name.clone(), [&[7u8][..], f].concat()))
        .collect();
    seeds.push((
        "pmesh-sync-chain".into(),
        [&[7u8][..], &script::sync_json(2, 8 | 2, &[3, 4, 5])].concat(),
    ));
    seeds.push((
        "pmesh-sync-list".into(),
        [&[7u8][..], &script::sync_json(2, 1 | 4, &[3, 4, 5, 6])].concat(),
    ));
    // Found by the long run: a package float that reads as infinite is written `null`, which
    // reads back as 0 (as with the reference); the target allows that one normalizing write.
    seeds.push((
        "package-infinite-float".into(),
        [
            &[7u8][..],
            br#"{"from":1,"routing":2,"type":200,"t":23.5,"hum":621e4000}"#,
        ]
        .concat(),
    ));
    seeds
}

/// Hand-written scripts: a node between two neighbours relaying user traffic, time sync and
/// delay measurement; a loop through us; stock frames from the vectors as raw bytes; offers.
fn node_script_seeds(frames: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // IDS indices: 0 → 2, 1 → 3, 2 → 4, 3 → 5, 4 → 6, 5 → ME.
    let mut w = Writer::default();
    w.u8(0)
        .op(Op::Connect, 0)
        .op(Op::Connect, 1 | 4)
        .sync(0, 0, 0, &[1])
        .sync(1, 2, 1, &[3])
        .advance(4)
        .op(Op::User, 0)
        .u8(0)
        .u8(1)
        .u8(0)
        .chunk(b"broadcast from 3")
        .op(Op::User, 1)
        .u8(1)
        .u8(0)
        .u8(3)
        .chunk(b"single from 2 to 5")
        .op(Op::Time, 0)
        .u8(0)
        .u8(0)
        .u8(5)
        .u8(1)
        .u32(123_456)
        .op(Op::App, 0)
        .u8(3)
        .chunk(b"app single to 5")
        .op(Op::App, 3)
        .u8(1)
        .chunk(b"")
        .advance(8)
        .advance(11);
    seeds.push(("relay-two-links".into(), w.out));

    let mut w = Writer::default();
    w.u8(32)
        .op(Op::Connect, 0)
        .op(Op::Connect, 1)
        .op(Op::Connect, 2 | 4)
        .sync(0, 0, 0, &[1, 2])
        .sync(1, 3, 8, &[4, 0])
        .advance(4)
        .sync(2, 4, 8, &[5, 1, 0])
        .advance(5)
        .sync(1, 3, 8, &[4, 5, 0])
        .advance(7)
        .op(Op::Disconnect, 0)
        .advance(8);
    seeds.push(("loop-through-us".into(), w.out));

    let mut w = Writer::default();
    w.u8(1).op(Op::Connect, 0).op(Op::Connect, 1 | 4);
    for (_, f) in frames.iter().take(40) {
        let mut framed = f.clone();
        framed.push(0);
        w.raw(0, &framed).advance(2);
    }
    w.advance(8);
    seeds.push(("stock-frames-raw".into(), w.out));

    for (name, flags) in [
        ("offer-pmesh", 1u8),
        ("offer-pmesh-compressed", 3),
        ("offer-classic-broadcast", 4 | 2),
    ] {
        let mut w = Writer::default();
        w.u8(2)
            .op(Op::Connect, 0)
            .sync(0, 0, 0, &[])
            .advance(4)
            .op(Op::Offer, flags)
            .u16(1500)
            .u8(9)
            .advance(4)
            .advance(8);
        seeds.push((name.into(), w.out));
    }
    seeds
}

/// MQTT requests (first byte 1): every verb with a typical payload, commands, legacy
/// destinations, firmware names; and the vector frames as mesh reports (first byte 0), all in
/// one input and each status package alone.
fn bridge_seeds(frames: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let request = |api: u8, verb: &str, payload: &[u8]| {
        let list: &[&str] = match api {
            0 => &pmesh_fuzz::request_check::VERBS,
            _ => &pmesh_fuzz::request_check::COMMANDS,
        };
        let index = list.iter().position(|v| *v == verb).unwrap_or(255) as u8;
        let mut w = Writer::default();
        w.u8(1).u8(api).u8(index);
        w.chunk(if index == 255 { verb.as_bytes() } else { b"" });
        w.bytes(payload);
        w.out
    };
    let mut seeds = vec![
        ("req-info".into(), request(0, "info", b"")),
        ("req-nodes-tx".into(), request(0, "nodes", br#"{"transaction":"t-1"}"#)),
        (
            "req-send".into(),
            request(0, "send", br#"{"to":2428398258,"message":"hello","transaction":7}"#),
        ),
        (
            "req-send-json".into(),
            request(0, "send", br#"{"to":5,"message":{"cmd":"on","v":[1,2]}}"#),
        ),
        ("req-broadcast".into(), request(0, "broadcast", br#"{"message":"all"}"#)),
        (
            "req-ota-inline".into(),
            request(
                0,
                "ota/start",
                br#"{"role":"sensor","hardware":"ESP8266","mode":"pmesh","compressed":true,"image_base64":"AAECAwQFBgc="}"#,
            ),
        ),
        (
            "req-ota-path".into(),
            request(0, "ota/start", br#"{"role":"sensor","image_path":"sensor/v2.bin"}"#),
        ),
        (
            "req-ota-traversal".into(),
            request(0, "ota/start", br#"{"role":"sensor","image_path":"../../etc/shadow"}"#),
        ),
        ("req-ota-abort".into(), request(0, "ota/abort", br#"{"campaign":17}"#)),
        ("req-unknown".into(), request(0, "reboot", b"{}")),
        ("cmd-getnodes".into(), request(1, "getNodes", br#"{"transaction":1}"#)),
        ("cmd-broadcast-text".into(), request(1, "broadcast", b"plain text")),
        ("cmd-broadcast-json".into(), request(1, "broadcast", br#"{"message":"x"}"#)),
    ];
    for (name, api, text) in [
        ("legacy-id", 2u8, "2428398258"),
        ("legacy-gateway", 2, "gateway"),
        ("legacy-zero", 2, "0"),
        ("name-plain", 3, "fw.bin"),
        ("name-dir", 3, "a/b/fw.bin"),
        ("name-dotdot", 3, "a/../../x"),
        ("name-abs", 3, "/etc/passwd"),
    ] {
        let mut w = Writer::default();
        w.u8(1).u8(api).u8(0).chunk(b"").bytes(text.as_bytes());
        seeds.push((name.into(), w.out));
    }
    let mut reports = vec![0u8];
    for (name, f) in frames.iter().filter(|(n, _)| n.starts_with("wire-")) {
        reports.extend_from_slice(f);
        reports.push(0);
        if memmem(f, b"\"type\":604") || memmem(f, b"\"type\":203") {
            seeds.push((format!("mesh-{name}"), [&[0u8][..], f].concat()));
        }
    }
    seeds.push(("mesh-reports".into(), reports));
    seeds
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The scenario files the repository ships, and a 6-node variant of each (small enough for
/// the target to simulate): events naming other nodes dropped, a radio plan's positions cut.
fn toml_seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut paths: Vec<PathBuf> = fs::read_dir(repo.join("scenarios"))
        .expect("scenarios/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&path).expect("a scenario file");
        let (mut sc, mut ota) = split_scenario_toml(&text).expect("shipped scenarios read");
        seeds.push((name.clone(), text.into_bytes()));
        const N: u32 = 6;
        sc.nodes = N;
        sc.events
            .retain(|e| e.action.nodes().iter().all(|&n| n <= N));
        sc.roots.retain(|&n| n <= N);
        sc.time_authority.retain(|&n| n <= N);
        if let Topology::Radio {
            positions: Some(p), ..
        } = &mut sc.topology
        {
            p.truncate(N as usize);
        }
        if let Some(o) = &mut ota {
            o.distributor = 1;
            o.stock_nodes.retain(|&n| n <= N);
            o.relay_nodes.retain(|&n| n <= N);
        }
        let mut table = toml::Table::try_from(&sc).expect("a scenario serializes");
        if let Some(o) = &ota {
            table.insert(
                "ota".into(),
                toml::Value::try_from(o).expect("[ota] serializes"),
            );
        }
        let small = toml::to_string(&table).expect("a table prints");
        if split_scenario_toml(&small).is_ok() {
            seeds.push((format!("small-{name}"), small.into_bytes()));
        }
    }
    seeds
}

/// The `[timers]`/`[retry]`/`[limits]` the CLI tests run their nodes with
/// (crates/cli/tests/net_support: FAST_TIMERS).
const FAST_TIMERS: &str = r#"
[timers]
node_sync_interval = "1s"
node_timeout = "1s"
ap_first_sync_delay = "500ms"
time_sync_unsynced_interval = "1s"
time_sync_interval = "5s"
[retry]
steps = ["100ms", "200ms", "400ms", "800ms", "800ms"]
max = "1s"
[limits]
write_stall_timeout = "3s"
"#;

/// pmesh.toml: every example in docs/user-guide.md (as written, and with its commented-out
/// keys switched on), the configurations the CLI tests give their nodes, and the bad ones
/// they expect refused.
fn node_config_seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let guide = fs::read_to_string(repo.join("docs/user-guide.md")).expect("docs/user-guide.md");
    let mut seeds = Vec::new();
    let blocks: Vec<&str> = guide
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    for (i, block) in blocks.iter().enumerate() {
        seeds.push((format!("user-guide-{i}"), block.as_bytes().to_vec()));
        // `# key = value` lines switched on (one key per line; the doubled one kept off).
        let on: String = block
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv) if kv.contains(" = ") && kv.matches(" = ").count() == 1 => kv,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        seeds.push((format!("user-guide-{i}-all-keys"), on.into_bytes()));
    }
    let ota = "[ota]\nrole = \"sensor\"\nhardware = \"ESP32\"\ndir = \"/tmp/ota-b\"\n";
    let tests: [(&str, String); 12] = [
        ("fast-timers", FAST_TIMERS.to_owned()),
        ("status", format!("{FAST_TIMERS}\n[status]\ninterval = \"1s\"\nfirmware = \"gw-7\"\n")),
        ("ota-receiver", ota.to_owned()),
        ("ota-classic-timers", format!("{ota}classic_broadcast_idle = \"2s\"\nclassic_broadcast_jitter = \"100ms\"\n")),
        ("ota-push", format!("{FAST_TIMERS}[ota]\nrole = \"sensor\"\nhardware = \"ESP32\"\ndir = \"/tmp/ota2\"\nclassic_broadcast_idle = \"1s\"\nclassic_broadcast_jitter = \"500ms\"\nstock = true\npmesh_rewant_after = \"500ms\"\nmax_image_bytes = 100000\n")),
        ("mqtt-gateway", format!("{FAST_TIMERS}\n[mqtt]\nprefix = \"from-file\"\ninterval = \"60s\"\n[mqtt.streams]\nha_discovery = false\n")),
        ("mqtt-rate-limit", format!("{FAST_TIMERS}\n[ota]\nrate_limit = 20000\n")),
        ("mqtt-file", "[mqtt]\nurl = \"mqtt://u@file:1\"\npassword = \"from-file\"\nprefix = \"site1\"\ninterval = \"10s\"\nstate_dir = \"none\"\nmetrics_listen = \"127.0.0.1:9999\"\n[mqtt.streams]\nha_discovery = false\nlegacy_gateway = false\n[mqtt.alerts]\npartition_share = 0.5\n".to_owned()),
        ("mqtts", "[mqtt]\nurl = \"mqtts://broker:8883\"\nca = \"/etc/ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nusername = \"u\"\n[ota]\nfirmware_dir = \"/srv/fw\"\ntrusted_keys = [\"pmesh-ed25519-pub 00\"]\nallow_unsigned = true\n".to_owned()),
        ("node-file", "[node]\nid = 99\nroot = true\nrate_discipline = true\nlisten = \"127.0.0.1:6000\"\nconnect = [\"127.0.0.1:6001\"]\n[status]\ninterval = \"10s\"\nto = 7\npackage_type = 203\n[sim]\nseed = 1\n".to_owned()),
        ("refused-typo", "[node]\nlisen = \"0.0.0.0:5555\"\n".to_owned()),
        ("refused-timer", "[timers]\nnode_timeout = \"10\"\n".to_owned()),
    ];
    for (name, text) in tests {
        seeds.push((format!("test-{name}"), text.into_bytes()));
    }
    seeds
}

/// Rollouts recorded from a real distributor (node 2 upstream) to the fuzzed node.
fn ota_seeds() -> Vec<(String, Vec<u8>)> {
    let image = script::image(1500, 42);
    let offer = |compressed: bool, broadcast: bool, pmesh: bool| {
        let mut o = Offer::new(ROLE, HARDWARE, MemorySource::new(image.clone()))
            .compressed(compressed)
            .broadcast(broadcast)
            .chunk_size(256);
        if pmesh {
            o = o.pmesh();
        }
        o
    };
    vec![
        ("pmesh".into(), record_rollout(0, offer(false, false, true))),
        (
            "pmesh-deflate".into(),
            record_rollout(0, offer(true, false, true)),
        ),
        (
            "classic-unicast".into(),
            record_rollout(0, offer(false, false, false)),
        ),
        (
            "classic-broadcast".into(),
            record_rollout(0, offer(false, true, false)),
        ),
        (
            "classic-gzip".into(),
            record_rollout(0, offer(true, false, false)),
        ),
        (
            "classic-stock-receiver".into(),
            record_rollout(0x80, offer(false, false, false)),
        ),
    ]
}

/// Runs a distributor (node 2) against the fuzz host over [`UP`], in 50 ms steps, and returns
/// the records that replay the distributor's side: the fuzzed node given these records does
/// exactly what it did here. A downstream neighbour (node 4) syncs, says HELLO and
/// subscribes to the rollout.
fn record_rollout(knobs: u8, offer: Offer) -> Vec<u8> {
    const STEP: u8 = 2; // script::STEPS[2] = 50 ms
    let step = script::STEPS[usize::from(STEP)];
    let mut w = Writer::default();
    w.u8(knobs);
    let mut host = Host::new(Knobs(knobs));
    host.capture();
    records::start(&mut host);
    let mut dist = Node::new(
        Config::new(2),
        Ota::new(
            OtaConfig::new("gateway", "linux"),
            MemorySink::new(1 << 20),
            MemoryStore::new(),
        ),
    );
    let mut now = host.now;
    dist.handle_connect(UP, now, Direction::Ap);
    let mut offer = Some(offer);
    let mut subscribed = false;
    let mut done_at = None;
    let downstream = |w: &mut Writer, host: &mut Host, json: &[u8]| {
        let f = script::frame(json);
        w.record(1, 15, &f);
        host.bytes(DOWN, &f);
    };
    downstream(&mut w, &mut host, &script::sync_json(4, 0, &[]));
    downstream(
        &mut w,
        &mut host,
        br#"{"type":710,"routing":0,"from":4,"v":1}"#,
    );
    for i in 0..400 {
        for (conn, data) in host.take_sent() {
            if conn == UP {
                dist.handle_bytes(UP, now, &data);
            }
        }
        now = now + step;
        while dist.poll_timeout().is_some_and(|t| t <= now) {
            dist.handle_timeout(now);
        }
        if i == 20 {
            let o = offer.take().expect("offered once");
            dist.with_plugin(now, |ota, ctx| ota.offer(ctx, o))
                .expect("offer accepted");
        }
        let mut data = Vec::new();
        while let Some(t) = dist.poll_transmit() {
            if let Transmit::Send { conn, data: d } = t
                && conn == UP
            {
                data.extend_from_slice(&d);
            }
        }
        while dist.poll_event().is_some() {}
        w.record(0, STEP, &data);
        host.advance(step, 64);
        host.bytes(UP, &data);
        if !subscribed && let Some((id, count)) = manifest_in(&data) {
            subscribed = true;
            let have = b85::encode(&ChunkBitmap::new(count).to_bytes());
            let want = format!(
                r#"{{"type":712,"routing":0,"from":4,"id":{id},"n":0,"have":"{}"}}"#,
                String::from_utf8(have).expect("base85 is ASCII")
            );
            downstream(&mut w, &mut host, want.as_bytes());
        }
        if host.committed() && done_at.is_none() {
            done_at = Some(i);
        }
        if done_at.is_some_and(|d| i >= d + 40) {
            break;
        }
    }
    let complete = done_at.is_some();
    assert!(
        complete || knobs & 0x80 != 0,
        "the recorded rollout did not complete"
    );
    // The seed replays: the fuzz target's node, given these records, commits the image too.
    let mut replay = Host::new(Knobs(knobs));
    let mut input = Input::new(&w.out[1..]);
    records::start(&mut replay);
    records::run(&mut replay, &mut input);
    assert_eq!(
        replay.committed(),
        complete,
        "the recorded rollout does not replay"
    );
    w.out
}

/// The id and chunk count of a MANIFEST among `data`'s frames.
fn manifest_in(data: &[u8]) -> Option<(u32, u32)> {
    data.split(|&b| b == 0).find_map(|json| {
        let env = Envelope::parse(json, DEFAULT_MAX_DEPTH).ok()?;
        if env.ty != 711 {
            return None;
        }
        Some((
            env.get("id")?.as_u32_strict()?,
            env.get("count")?.as_u32_strict()?,
        ))
    })
}
