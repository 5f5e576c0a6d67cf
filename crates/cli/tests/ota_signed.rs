//! Signed firmware with real processes: a gateway, a relay and a target that trust one key.
//! A signed bundle is pushed and installed (and the anti-rollback counter recorded); an
//! unsigned image (pmesh or classic), a bundle signed by another key and an older sequence
//! are refused, each with its reason, and nothing else is installed.

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use net_support::*;

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

fn sign(dir: &TempDir, key: &Path, image: &[u8], seq: u64, name: &str) -> PathBuf {
    let fw = dir.0.join(format!("{name}.bin"));
    std::fs::write(&fw, image).unwrap();
    let out = dir.0.join(format!("{name}.pmb"));
    let s = seq.to_string();
    let (code, _, err) = pmesh(&[
        "ota",
        "sign",
        fw.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--fw-version",
        &s,
        "--sequence",
        &s,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    out
}

fn node(
    dir: &TempDir,
    id: u32,
    port: u16,
    connect: &[u16],
    public: &str,
    receive: bool,
) -> NodeProc {
    let mut text = FAST_TIMERS.to_owned();
    text.push_str(&format!("[ota]\ntrusted_keys = [\"{public}\"]\n"));
    if receive {
        text.push_str(&format!(
            "role = \"sensor\"\nhardware = \"ESP32\"\ndir = \"{}\"\n",
            dir.0.join(format!("ota{id}")).display()
        ));
    }
    let cfg = dir.file(&format!("n{id}.toml"), &text);
    NodeProc::start(
        dir,
        NodeSpec {
            id,
            port,
            connect: connect.to_vec(),
            root: id == 1,
            config: Some(cfg),
        },
    )
}

fn push(control: &str, file: &Path, mode: &str) -> (i32, String, String) {
    pmesh(&[
        "ota",
        "push",
        file.to_str().unwrap(),
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--mode",
        mode,
        "--control",
        control,
        "--timeout",
        "40s",
        "--settle",
        "3s",
    ])
}

fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn current(dir: &TempDir, id: u32) -> Option<serde_json::Value> {
    let p = dir.0.join(format!("ota{id}/current.json"));
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

#[test]
fn signed_bundles_install_and_everything_untrusted_is_refused_with_its_reason() {
    let dir = TempDir::new("ota-signed");
    let (fleet, public) = key(&dir, "fleet.key");
    let (rogue, _) = key(&dir, "rogue.key");
    let p: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], &public, false);
    let relay = node(&dir, 2, p[1], &[p[0]], &public, false);
    let target = node(&dir, 3, p[2], &[p[1]], &public, true);
    wait_until(Duration::from_secs(20), "the mesh to form", || {
        [&gw, &relay, &target].iter().all(|n| n.nodes().len() == 2)
    });
    let control = gw.control.display().to_string();

    let good = image(1, 100_000);
    let bundle = sign(&dir, &fleet, &good, 4, "v4");
    let (code, out, err) = push(&control, &bundle, "pmesh");
    assert_eq!(code, 0, "signed push:\n{out}\n{err}");
    assert!(out.contains("1 installed, 0 failed"), "{out}");
    let sha = pmesh_sha(&good);
    assert_eq!(current(&dir, 3).unwrap()["sha256"], sha.as_str());
    let seqs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("ota3/sequences.json")).unwrap()).unwrap();
    assert_eq!(seqs[0]["sequence"], 4);

    // Refused at the gateway, before anything is announced, each with its reason.
    let raw = dir.0.join("v4.bin");
    for (file, mode, reason) in [
        (raw.clone(), "pmesh", "unsigned"),
        (raw.clone(), "classic", "unsigned"),
        (
            sign(&dir, &rogue, &image(2, 50_000), 9, "rogue"),
            "pmesh",
            "unknown_key",
        ),
    ] {
        let (code, out, err) = push(&control, &file, mode);
        assert_ne!(
            code,
            0,
            "{mode} push of {} accepted:\n{out}",
            file.display()
        );
        assert!(
            err.contains(reason) || out.contains(reason),
            "{reason} not named:\n{out}\n{err}"
        );
    }

    // A verified bundle served as classic OTA (for stock nodes): the target has a trusted
    // key, so it refuses classic OTA altogether, says so once in its log and counts it.
    let (_, out, err) = push(
        &control,
        &sign(&dir, &fleet, &image(4, 40_000), 5, "v5"),
        "classic",
    );
    assert!(!out.contains("1 installed"), "{out}\n{err}");
    wait_until(
        Duration::from_secs(20),
        "the classic refusal in the target's status",
        || {
            let st = status(&target.control);
            st["classic_receive_stats"]["untrusted"] == 1
        },
    );
    let st = status(&target.control);
    assert_eq!(st["classic_receive_stats"]["chunks_written"], 0, "{st}");
    assert_eq!(
        target.log_text().matches("classic OTA refused").count(),
        1,
        "logged once"
    );
    assert_eq!(current(&dir, 3).unwrap()["sha256"], sha.as_str());

    // An older release, validly signed: the gateway announces it, the target refuses it
    // (rollback) and keeps the image it runs.
    let old = sign(&dir, &fleet, &image(3, 60_000), 2, "v2");
    let (_, out, err) = push(&control, &old, "pmesh");
    assert!(!out.contains("1 installed"), "{out}\n{err}");
    assert_eq!(current(&dir, 3).unwrap()["sha256"], sha.as_str());
    wait_until(
        Duration::from_secs(10),
        "the rollback refusal in the target's log",
        || target.log_text().contains("rollback"),
    );
}

/// `ota push --connect` through the gateway (the temporary node distributes) with `extra`.
fn push_connect(port: u16, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let target = format!("127.0.0.1:{port}");
    let mut args = vec![
        "ota",
        "push",
        file.to_str().unwrap(),
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--mode",
        "pmesh",
        "--connect",
        &target,
        "--timeout",
        "40s",
        "--settle",
        "3s",
    ];
    args.extend_from_slice(extra);
    pmesh(&args)
}

#[test]
fn a_push_through_a_temporary_node_verifies_with_the_keys_it_is_given() {
    let dir = TempDir::new("ota-signed-connect");
    let (fleet, public) = key(&dir, "fleet.key");
    let (rogue, _) = key(&dir, "rogue.key");
    let pub_file = dir.0.join("fleet.key.pub");
    let trusted = pub_file.to_str().unwrap();
    let p: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let gw = node(&dir, 1, p[0], &[], &public, false);
    let target = node(&dir, 2, p[1], &[p[0]], &public, true);
    wait_until(Duration::from_secs(20), "the mesh to form", || {
        [&gw, &target].iter().all(|n| n.nodes().len() == 1)
    });
    let good = image(6, 50_000);
    let bundle = sign(&dir, &fleet, &good, 3, "c3");
    let raw = dir.0.join("c3.bin");
    let rogue_bundle = sign(&dir, &rogue, &image(7, 30_000), 8, "r8");
    // Each refused, with its reason, before anything is announced.
    for (file, extra, reason) in [
        (&raw, vec![], "unsigned"),
        (&raw, vec!["--trusted", trusted], "unsigned"),
        (&bundle, vec![], "unknown_key"),
        (&rogue_bundle, vec!["--trusted", trusted], "unknown_key"),
    ] {
        let (code, out, err) = push_connect(p[0], file, &extra);
        assert_ne!(code, 0, "{} {extra:?} accepted:\n{out}", file.display());
        assert!(
            out.contains(reason) || err.contains(reason),
            "{reason} not named for {} {extra:?}:\n{out}\n{err}",
            file.display()
        );
    }
    assert!(current(&dir, 2).is_none(), "something was installed");
    // --allow-unsigned needs no key and conflicts with --trusted.
    let (code, _, err) = push_connect(p[0], &raw, &["--trusted", trusted, "--allow-unsigned"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
    // The trusted bundle installs.
    let (code, out, err) = push_connect(p[0], &bundle, &["--trusted", trusted, "--expect", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 installed, 0 failed"), "{out}");
    assert_eq!(
        current(&dir, 2).unwrap()["sha256"],
        pmesh_sha(&good).as_str()
    );
}

/// `pmesh ota status` of a node, as JSON.
fn status(control: &Path) -> serde_json::Value {
    let (code, out, err) = pmesh(&["ota", "status", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn pmesh_sha(bytes: &[u8]) -> String {
    let f = std::env::temp_dir().join(format!("pmesh-sha-{}", std::process::id()));
    std::fs::write(&f, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    let _ = std::fs::remove_file(&f);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
