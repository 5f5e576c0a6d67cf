//! `pmesh key gen`, `pmesh ota sign` and `pmesh ota verify` as processes: key files and
//! modes, a bundle that verifies, and the exact refusal for each way one must not.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("pmesh-sign-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs pmesh; returns exit code, stdout, stderr.
fn pmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pmesh"))
        .args(args)
        .output()
        .unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap(), s(out.stdout), s(out.stderr))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn key_gen(d: &Dir, name: &str) -> String {
    let (code, out, err) = pmesh(&["key", "gen", "--out", p(&d.path(name))]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

fn sign(d: &Dir, key: &str, extra: &[&str]) -> (i32, String, String) {
    let img = d.path("fw.bin");
    let bundle = d.path("fw.pmb");
    let key_path = d.path(key);
    let mut args = vec!["ota", "sign", p(&img), "--key", p(&key_path)];
    args.extend_from_slice(&[
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--fw-version",
        "1.0.0",
    ]);
    args.extend_from_slice(&["--chunk-size", "1024", "-o", p(&bundle)]);
    args.extend_from_slice(extra);
    pmesh(&args)
}

#[test]
fn key_gen_writes_a_private_0600_key_and_one_public_line() {
    let d = Dir::new("keygen");
    let public = key_gen(&d, "k");
    assert!(
        public.starts_with("pmesh-ed25519-pub ") && public.len() == 18 + 64,
        "{public}"
    );
    let mode = std::fs::metadata(d.path("k")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(d.path("k.pub")).unwrap().trim(),
        public
    );
    // Never overwritten by accident.
    let (code, _, err) = pmesh(&["key", "gen", "--out", p(&d.path("k"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, out, _) = pmesh(&["key", "pub", p(&d.path("k"))]);
    assert_eq!((code, out.trim()), (0, public.as_str()));
}

#[test]
fn a_signed_bundle_verifies_and_each_tampering_names_its_refusal() {
    let d = Dir::new("verify");
    let public = key_gen(&d, "k");
    let other = key_gen(&d, "other");
    let image: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(d.path("fw.bin"), &image).unwrap();
    let (code, _, err) = sign(&d, "k", &["--sequence", "4", "--expires", "+24h"]);
    assert_eq!(code, 0, "{err}");
    let bundle = p(&d.path("fw.pmb")).to_string();

    let (code, out, _) = pmesh(&["ota", "verify", &bundle, "--trusted", &public, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let m = &v["manifest"];
    assert_eq!(
        (
            m["sequence"].as_u64(),
            m["size"].as_u64(),
            m["chunks"].as_u64()
        ),
        (Some(4), Some(5000), Some(5))
    );
    assert_eq!(m["role"], "sensor");
    // The key file works as well as the line; several keys may be trusted.
    let pub_file = p(&d.path("k.pub")).to_string();
    let (code, out, _) = pmesh(&[
        "ota",
        "verify",
        &bundle,
        "--trusted",
        &other,
        "--trusted",
        &pub_file,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sequence: 4"), "{out}");

    let refusal = |bytes: &[u8], trusted: &str| {
        let f = d.path("bad.pmb");
        std::fs::write(&f, bytes).unwrap();
        let (code, out, _) = pmesh(&["ota", "verify", p(&f), "--trusted", trusted]);
        assert_eq!(code, 1, "{out}");
        out.trim().to_string()
    };
    let good = std::fs::read(&bundle).unwrap();
    assert!(refusal(&good, &other).starts_with("refused: unknown_key"));
    let mut b = good.clone();
    b[20] ^= 1; // inside the signed fields
    assert!(refusal(&b, &public).starts_with("refused: bad_signature"));
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 0x40; // the image's last chunk
    assert_eq!(refusal(&b, &public), "refused: bad_chunk: bad chunk 4");
    let (code, _, err) = sign(&d, "k", &["--sequence", "5", "--expires", "1"]);
    assert_eq!(code, 0, "{err}");
    let expired = std::fs::read(&bundle).unwrap();
    assert!(refusal(&expired, &public).starts_with("refused: expired"));
    assert!(refusal(&good[..good.len() - 1], &public).starts_with("refused: malformed"));
}
