//! `pmesh ota push` of a real compiled binary across `pmesh node` processes on 127.0.0.1, in
//! pmesh and classic modes, compressed and not, through a running node's control endpoint and
//! from a temporary node; every receiver's written image must be byte-identical to the source
//! (SHA-256 compared); a receiver killed mid-transfer resumes after its restart; refusals and
//! missing targets end in a summary that names them and a non-zero exit; Ctrl-C withdraws the
//! offer (or leaves it with `--keep`).

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use net_support::*;
use serde_json::Value;

/// A piece of a real compiled binary (this test's `pmesh`), so compression ratios are honest.
fn firmware(dir: &TempDir, name: &str, offset: usize, len: usize) -> (PathBuf, String) {
    let exe = std::fs::read(PMESH).unwrap();
    assert!(
        exe.len() >= offset + len,
        "the pmesh binary is large enough"
    );
    let bytes = &exe[offset..offset + len];
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, sha256_file(&dir.0.join(name)))
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A node configuration: fast protocol timers, OTA receiving as `role` into `dir` if given.
fn config(dir: &TempDir, id: u32, role: Option<&str>, extra: &str) -> PathBuf {
    let mut text = FAST_TIMERS.to_owned();
    text.push_str("[ota]\n");
    if let Some(role) = role {
        text.push_str(&format!(
            "role = \"{role}\"\nhardware = \"ESP32\"\ndir = \"{}\"\n",
            ota_dir(dir, id).display()
        ));
    }
    // A classic broadcast driven by a pmesh receiver starts after this much silence.
    text.push_str("classic_broadcast_idle = \"1s\"\nclassic_broadcast_jitter = \"500ms\"\n");
    text.push_str(extra);
    dir.file(&format!("n{id}.toml"), &text)
}

fn ota_dir(dir: &TempDir, id: u32) -> PathBuf {
    dir.0.join(format!("ota{id}"))
}

fn node(dir: &TempDir, id: u32, port: u16, connect: &[u16], root: bool, cfg: PathBuf) -> NodeProc {
    NodeProc::start(
        dir,
        NodeSpec {
            id,
            port,
            connect: connect.to_vec(),
            root,
            config: Some(cfg),
        },
    )
}

/// The image a receiver installed (`current.bin`), hashed.
fn installed_sha(dir: &TempDir, id: u32) -> Option<String> {
    let p = ota_dir(dir, id).join("current.bin");
    p.exists().then(|| sha256_file(&p))
}

/// Runs `pmesh ota push ...`; kills it after `limit`. Returns (exit code, stdout, stderr).
fn push(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = Command::new(PMESH)
        .arg("ota")
        .arg("push")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The `finished` item of a `--json` push.
fn finished(stdout: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "finished")
        .unwrap_or_else(|| panic!("no finished item in {stdout}"))
}

/// Waits until all `nodes` see each other.
fn converged(nodes: &[&NodeProc]) {
    wait_until(Duration::from_secs(20), "the mesh to form", || {
        nodes.iter().all(|n| n.nodes().len() == nodes.len() - 1)
    });
}

/// Gateway 1 (root, distributes, receives nothing) with receivers 2 ─ {3, 4} behind it: pmesh
/// mode through the gateway's control endpoint, then a second image compressed.
#[test]
fn pmesh_mode_through_a_gateway_plain_and_compressed() {
    let dir = TempDir::new("ota-pmesh");
    let p: Vec<u16> = (0..4).map(|_| free_port()).collect();
    // Node 3 runs an install hook that records its argument and environment.
    let hook = dir.0.join("hook.sh");
    let hook_out = dir.0.join("hook.out");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $PMESH_OTA_SHA256 $PMESH_OTA_VERSION $PMESH_OTA_MODE $PMESH_NODE_ID\" >> {}\n",
            hook_out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec = format!("exec = \"{}\"\n", hook.display());
    let gw = node(&dir, 1, p[0], &[], true, config(&dir, 1, None, ""));
    let n2 = node(
        &dir,
        2,
        p[1],
        &[p[0]],
        false,
        config(&dir, 2, Some("sensor"), ""),
    );
    let n3 = node(
        &dir,
        3,
        p[2],
        &[p[1]],
        false,
        config(&dir, 3, Some("sensor"), &exec),
    );
    let n4 = node(
        &dir,
        4,
        p[3],
        &[p[1]],
        false,
        config(&dir, 4, Some("sensor"), ""),
    );
    converged(&[&gw, &n2, &n3, &n4]);
    let control = gw.control.display().to_string();

    let (fw, sha) = firmware(&dir, "fw1.bin", 0, 384 * 1024);
    let (code, out, err) = push(
        &[
            fw.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "pmesh",
            "--control",
            &control,
            "--timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    assert!(
        out.contains("done after") && out.contains("3 installed, 0 failed, 0 unfinished of 3"),
        "{out}"
    );
    for id in [2, 3, 4] {
        assert_eq!(
            installed_sha(&dir, id).as_deref(),
            Some(sha.as_str()),
            "node {id}"
        );
    }
    // The record says what was installed.
    let rec: Value =
        serde_json::from_slice(&std::fs::read(ota_dir(&dir, 3).join("current.json")).unwrap())
            .unwrap();
    assert_eq!(rec["sha256"], sha.as_str());
    assert_eq!(rec["size"], 384 * 1024);

    // The hook ran once, with the committed image's path and the PMESH_OTA_* variables.
    wait_until(Duration::from_secs(10), "the install hook", || {
        hook_out.exists()
    });
    let line = std::fs::read_to_string(&hook_out).unwrap();
    let image = ota_dir(&dir, 3).join(format!("images/sensor-ESP32-{}.bin", &sha[..16]));
    assert_eq!(
        line.trim_end(),
        format!(
            "{} {sha}  pmesh 3",
            std::path::absolute(&image).unwrap().display()
        )
    );
    assert_eq!(sha256_file(&image), sha);

    // A second image, compressed, with JSON progress lines.
    let (fw2, sha2) = firmware(&dir, "fw2.bin", 384 * 1024, 384 * 1024);
    let (code, out, err) = push(
        &[
            fw2.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "pmesh",
            "--compressed",
            "--fw-version",
            "2.0.0",
            "--control",
            &control,
            "--json",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "compressed push failed:\n{out}\n{err}");
    let f = finished(&out);
    assert_eq!(f["ok"], true);
    assert_eq!(f["outcome"], "done");
    let states: Vec<(u64, &str)> = f["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_u64().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [(2, "installed"), (3, "installed"), (4, "installed")]
    );
    assert!(
        out.lines().any(|l| l.contains("\"kind\":\"node\"")),
        "per-node progress items"
    );
    for id in [2, 3, 4] {
        assert_eq!(
            installed_sha(&dir, id).as_deref(),
            Some(sha2.as_str()),
            "node {id}"
        );
        let rec: Value =
            serde_json::from_slice(&std::fs::read(ota_dir(&dir, id).join("current.json")).unwrap())
                .unwrap();
        assert_eq!(rec["version"], "2.0.0");
        // Both images are kept; the first is still there, untouched.
        let images = std::fs::read_dir(ota_dir(&dir, id).join("images"))
            .unwrap()
            .count();
        assert_eq!(images, 4, "two images and their records");
    }
    // The gateway shows what it distributed.
    let st = gw.request("ota_status", serde_json::json!({}));
    assert!(st["pmesh_stats"]["data_bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(st["receiving"], false);
}

/// Classic OTA (types 10/11/12) through a gateway: unicast, then compressed (gzip) broadcast
/// driven by a pmesh receiver.
#[test]
fn classic_unicast_and_compressed_broadcast() {
    let dir = TempDir::new("ota-classic");
    let p: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], true, config(&dir, 1, None, ""));
    let n2 = node(
        &dir,
        2,
        p[1],
        &[p[0]],
        false,
        config(&dir, 2, Some("sensor"), ""),
    );
    let n3 = node(
        &dir,
        3,
        p[2],
        &[p[1]],
        false,
        config(&dir, 3, Some("sensor"), ""),
    );
    let n4 = node(
        &dir,
        4,
        p[3],
        &[p[0]],
        false,
        config(&dir, 4, Some("sensor"), ""),
    );
    converged(&[&gw, &n2, &n3, &n4]);
    let control = gw.control.display().to_string();

    let (fw, sha) = firmware(&dir, "fw1.bin", 0, 256 * 1024);
    let (code, out, err) = push(
        &[
            fw.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "classic",
            "--control",
            &control,
            "--settle",
            "3s",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "classic push failed:\n{out}\n{err}");
    assert!(
        out.contains("3 of 3 requesting nodes served every chunk"),
        "{out}"
    );
    assert!(out.contains("nodes do not report"), "{out}");
    // Served every chunk is all the distributor sees; the nodes install right after.
    wait_until(Duration::from_secs(10), "classic installs", || {
        [2, 3, 4]
            .iter()
            .all(|&id| installed_sha(&dir, id).as_deref() == Some(sha.as_str()))
    });

    let (fw2, sha2) = firmware(&dir, "fw2.bin", 256 * 1024, 256 * 1024);
    let (code, out, err) = push(
        &[
            fw2.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "classic",
            "--broadcast",
            "--compressed",
            "--control",
            &control,
            "--settle",
            "4s",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "classic broadcast push failed:\n{out}\n{err}");
    wait_until(Duration::from_secs(30), "broadcast installs", || {
        [2, 3, 4]
            .iter()
            .all(|&id| installed_sha(&dir, id).as_deref() == Some(sha2.as_str()))
    });
    for n in [&n2, &n3, &n4] {
        let log = n.log_text();
        assert!(
            log.contains("OTA: image installed mode=\"broadcast\""),
            "node {}: {log}",
            n.spec.id
        );
    }
}

/// Gateway 1 (root) and four `pmesh node --ota-stock` receivers (stock painlessMesh
/// behaviour: in broadcast mode they never ask, they wait) at one and two hops: the classic
/// broadcast push floods the image in order and every node installs it, unasked.
#[test]
fn classic_broadcast_push_installs_on_stock_receivers() {
    let dir = TempDir::new("ota-stock");
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], true, config(&dir, 1, None, ""));
    let parents = [0, 0, 1, 1];
    let stock: Vec<NodeProc> = (2..=5u32)
        .map(|id| {
            let up = p[parents[id as usize - 2]];
            let cfg = config(&dir, id, Some("sensor"), "stock = true\n");
            node(&dir, id, p[id as usize - 1], &[up], false, cfg)
        })
        .collect();
    let mut all: Vec<&NodeProc> = vec![&gw];
    all.extend(stock.iter());
    converged(&all);
    let control = gw.control.display().to_string();
    let (fw, sha) = firmware(&dir, "fw.bin", 0, 160 * 1024);
    let (code, out, err) = push(
        &[
            fw.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "classic",
            "--broadcast",
            "--control",
            &control,
            "--settle",
            "2s",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    assert!(
        out.contains("4 of 4 requesting nodes served every chunk"),
        "{out}"
    );
    wait_until(Duration::from_secs(10), "stock installs", || {
        (2..=5).all(|id| installed_sha(&dir, id).as_deref() == Some(sha.as_str()))
    });
    for n in &stock {
        let log = n.log_text();
        assert!(
            log.contains("OTA: image installed mode=\"broadcast\""),
            "node {}: {log}",
            n.spec.id
        );
    }
    // The gateway flooded a pass and saw it settle.
    assert!(
        gw.log_text().contains("OTA: classic push pass done"),
        "{}",
        gw.log_text()
    );
}

/// Four receivers; the push joins the mesh as a temporary node; receiver 4 is killed while it
/// receives and restarted: it resumes from its persisted chunks and the rollout completes.
#[test]
fn temporary_node_push_and_a_receiver_resumes_after_a_crash() {
    let dir = TempDir::new("ota-resume");
    let p: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let cfgs: Vec<PathBuf> = (1..=4)
        .map(|id| config(&dir, id, Some("sensor"), "pmesh_rewant_after = \"500ms\"\n"))
        .collect();
    let n1 = node(&dir, 1, p[0], &[], true, cfgs[0].clone());
    let n2 = node(&dir, 2, p[1], &[p[0]], false, cfgs[1].clone());
    let n3 = node(&dir, 3, p[2], &[p[1]], false, cfgs[2].clone());
    let mut n4 = node(&dir, 4, p[3], &[p[2]], false, cfgs[3].clone());
    converged(&[&n1, &n2, &n3, &n4]);

    let (fw, sha) = firmware(&dir, "fw.bin", 0, 384 * 1024);
    let fw_arg = fw.to_str().unwrap().to_owned();
    let target = format!("127.0.0.1:{}", p[0]);
    // ~60 KB/s out of the temporary node: the 384 KiB image takes about 6.5 s.
    let pusher = std::thread::spawn(move || {
        push(
            &[
                &fw_arg,
                "--role",
                "sensor",
                "--hardware",
                "ESP32",
                "--mode",
                "pmesh",
                "--connect",
                &target,
                "--allow-unsigned",
                "--rate-limit",
                "60000",
                "--expect",
                "4",
                "--timeout",
                "90s",
            ],
            Duration::from_secs(120),
        )
    });
    // Kill node 4 once its chunk log holds a third of the chunks (8 bytes per chunk).
    let log = ota_dir(&dir, 4).join("transfer.log");
    wait_until(Duration::from_secs(30), "node 4 to hold 32 chunks", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() >= 32 * 8)
    });
    n4.kill();
    let held = std::fs::metadata(&log).unwrap().len() / 8;
    assert!(held < 96, "killed before the end ({held} chunks)");
    std::thread::sleep(Duration::from_millis(500));
    let n4 = node(&dir, 4, p[3], &[p[2]], false, cfgs[3].clone());

    let (code, out, err) = pusher.join().unwrap();
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    assert!(
        out.contains("4 installed, 0 failed, 0 unfinished of 4"),
        "{out}"
    );
    for id in 1..=4 {
        assert_eq!(
            installed_sha(&dir, id).as_deref(),
            Some(sha.as_str()),
            "node {id}"
        );
    }
    let text = n4.log_text();
    let resumed = text
        .lines()
        .find(|l| l.contains("OTA: resuming an image"))
        .unwrap_or_else(|| panic!("node 4 did not resume:\n{text}"));
    let from: u32 = resumed
        .split("resumed_from=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(from >= 32, "resumed from chunk {from}, not from the start");
}

/// Who did not finish and why: a receiver whose slot is too small fails (reported by the
/// node), an expected node with another role never reports, and the push exits 1 naming both.
#[test]
fn refusals_and_missing_targets_are_reported() {
    let dir = TempDir::new("ota-refuse");
    let p: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], true, config(&dir, 1, None, ""));
    let n2 = node(
        &dir,
        2,
        p[1],
        &[p[0]],
        false,
        config(&dir, 2, Some("sensor"), ""),
    );
    let small = config(&dir, 3, Some("sensor"), "max_image_bytes = 100000\n");
    let n3 = node(&dir, 3, p[2], &[p[0]], false, small);
    let n4 = node(
        &dir,
        4,
        p[3],
        &[p[0]],
        false,
        config(&dir, 4, Some("relay"), ""),
    );
    converged(&[&gw, &n2, &n3, &n4]);
    let (fw, sha) = firmware(&dir, "fw.bin", 0, 200 * 1024);
    let (code, out, err) = push(
        &[
            fw.to_str().unwrap(),
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "pmesh",
            "--control",
            &gw.control.display().to_string(),
            "--expect",
            "4",
            "--timeout",
            "8s",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.starts_with("offering "), "{out}");
    assert!(out.contains("timed out after"), "{out}");
    assert!(out.contains("too_large"), "node 3's reason: {out}");
    assert!(out.contains("expected but never reported: 4"), "{out}");
    assert_eq!(installed_sha(&dir, 2).as_deref(), Some(sha.as_str()));
    assert_eq!(installed_sha(&dir, 3), None);
    assert!(
        n3.log_text().contains("too_large"),
        "the node logs its refusal"
    );

    // Errors before any offer: a missing file, a node that is not running.
    let (code, _, err) = push(
        &[
            "/nonexistent/fw.bin",
            "--role",
            "x",
            "--hardware",
            "y",
            "--control",
            &gw.control.display().to_string(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/fw.bin"), "{err}");
    let (code, _, err) = push(
        &[
            fw.to_str().unwrap(),
            "--role",
            "x",
            "--hardware",
            "y",
            "--control",
            &dir.0.join("nobody.sock").display().to_string(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2);
    assert!(err.contains("no pmesh node answers"), "{err}");
}

/// Ctrl-C ends a push with status 130 and the node withdraws the offer; with `--keep` the offer
/// stays until `pmesh ota cancel`.
#[test]
fn ctrl_c_withdraws_the_offer_unless_kept() {
    let dir = TempDir::new("ota-sigint");
    let p = free_port();
    let gw = node(&dir, 1, p, &[], true, config(&dir, 1, None, ""));
    let control = gw.control.display().to_string();
    let (fw, _) = firmware(&dir, "fw.bin", 0, 64 * 1024);
    let offers = |gw: &NodeProc| {
        gw.request("ota_status", serde_json::json!({}))["classic_offers"]
            .as_array()
            .unwrap()
            .len()
    };
    for keep in [false, true] {
        let mut args = vec![
            "ota",
            "push",
            fw.to_str().unwrap(),
            "--role",
            "nobody",
            "--hardware",
            "ESP32",
            "--control",
            &control,
        ];
        if keep {
            args.push("--keep");
        }
        let child = Command::new(PMESH)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), "the offer", || offers(&gw) == 1);
        let ok = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        if keep {
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(offers(&gw), 1, "--keep leaves the offer");
            let (ok, stdout, err) = gw.cli(&["ota", "cancel"]);
            assert!(ok, "{err}");
            assert!(stdout.contains("classic_cancelled"), "{stdout}");
            assert_eq!(offers(&gw), 0);
        } else {
            wait_until(Duration::from_secs(10), "the offer to be withdrawn", || {
                offers(&gw) == 0
            });
        }
    }
}

/// The line `pmesh ota push` prints when it offers: `... mode <name>, transfer ...`.
fn offered_mode(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.split(": mode ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no offer line in {out}"))
}

/// Mode `auto` (no `--mode`) into `pmesh node --ota-stock` receivers. Four stock targets
/// behind gateway 1, none named: auto floods the broadcast push and every one installs it.
/// Then a second mesh with one named target (`--expect`) behind a relay: auto goes unicast,
/// and the target installs.
#[test]
fn auto_mode_pushes_to_several_stock_targets_and_unicasts_to_one() {
    let dir = TempDir::new("ota-auto");
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], true, config(&dir, 1, None, ""));
    let parents = [0, 0, 1, 1];
    let stock: Vec<NodeProc> = (2..=5u32)
        .map(|id| {
            let up = p[parents[id as usize - 2]];
            let cfg = config(&dir, id, Some("sensor"), "stock = true\n");
            node(&dir, id, p[id as usize - 1], &[up], false, cfg)
        })
        .collect();
    let mut all: Vec<&NodeProc> = vec![&gw];
    all.extend(stock.iter());
    converged(&all);
    let control = gw.control.display().to_string();
    let (fw, sha) = firmware(&dir, "fw.bin", 0, 96 * 1024);
    let args = [
        fw.to_str().unwrap(),
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--control",
        &control,
        "--settle",
        "2s",
    ];
    let (code, out, err) = push(&args, Duration::from_secs(60));
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    assert_eq!(offered_mode(&out), "broadcast", "{out}");
    wait_until(Duration::from_secs(10), "stock installs", || {
        (2..=5).all(|id| installed_sha(&dir, id).as_deref() == Some(sha.as_str()))
    });
    for n in &stock {
        let log = n.log_text();
        assert!(
            log.contains("OTA: image installed mode=\"broadcast\""),
            "node {}: {log}",
            n.spec.id
        );
    }
    assert!(
        gw.log_text()
            .contains("OTA: auto mode chose broadcast=true")
    );
    drop(stock);
    drop(gw);

    // One named stock target (12) behind a relay (11) that takes no image.
    let q: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let gw = node(&dir, 10, q[0], &[], true, config(&dir, 10, None, ""));
    let relay = node(&dir, 11, q[1], &[q[0]], false, config(&dir, 11, None, ""));
    let cfg = config(&dir, 12, Some("sensor"), "stock = true\n");
    let target = node(&dir, 12, q[2], &[q[1]], false, cfg);
    converged(&[&gw, &relay, &target]);
    let control = gw.control.display().to_string();
    let (fw, sha) = firmware(&dir, "fw2.bin", 4096, 48 * 1024);
    let mut args = args.to_vec();
    args[0] = fw.to_str().unwrap();
    args[6] = &control;
    args.extend(["--expect", "12"]);
    let (code, out, err) = push(&args, Duration::from_secs(60));
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    assert_eq!(offered_mode(&out), "unicast", "{out}");
    wait_until(Duration::from_secs(10), "the target installs", || {
        installed_sha(&dir, 12).as_deref() == Some(sha.as_str())
    });
    let log = target.log_text();
    assert!(
        log.contains("OTA: image installed mode=\"unicast\""),
        "{log}"
    );
    assert!(
        gw.log_text()
            .contains("OTA: auto mode chose broadcast=false")
    );
}
