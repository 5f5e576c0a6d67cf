//! The bare-metal riscv32imc node (`firmware/qemu-node`) in QEMU against real `pmesh node`
//! processes: host 1 (root, time authority) ← guest 9001 ← host 3, every link a byte stream
//! (the guest's UARTs, which QEMU connects to TCP sockets). The guest must join, adopt host 1's
//! time, relay a SINGLE and a BROADCAST from 1 to 3, answer a SINGLE, and install a 1 MiB pmesh
//! rollout (4 KiB chunks) and a classic one pushed with `pmesh ota push`: the SHA-256 of its
//! flash slot equals the pushed file's, and its heap high-water while receiving the 1 MiB image
//! stays within the 64 KiB budget (docs/embedded.md).
//!
//! The guest image is built with Debian's toolchain (`.ci/run`, step "QEMU node"), which then
//! runs this test with `PMESH_QEMU_GUEST` set. Without that variable the test says so and checks
//! nothing, unless `PMESH_REQUIRE_QEMU=1`, when it fails.

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use net_support::*;

const GUEST_ID: u32 = 9001;
/// The heap budget while receiving a 1 MiB image in 4 KiB chunks.
const HEAP_BUDGET: u64 = 64 * 1024;

/// A running QEMU with the guest; its console (semihosting) goes to a file.
struct Guest {
    child: Child,
    console: PathBuf,
}

impl Guest {
    fn start(dir: &TempDir, elf: &Path, dial: u16, accept: u16) -> Guest {
        let console = dir.0.join("guest-console.txt");
        let err = std::fs::File::create(dir.0.join("qemu-stderr.txt")).unwrap();
        let child = Command::new("qemu-system-riscv32")
            .args(["-machine", "virt", "-m", "32M", "-bios", "none"])
            // rv32imc: no atomics, no floating point, as on an ESP32-C3
            .args(["-cpu", "rv32,a=false,f=false,d=false"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-kernel")
            .arg(elf)
            .args([
                "-device",
                &format!("loader,addr=0x80f00000,data={GUEST_ID},data-len=4"),
            ])
            .args(["-serial", &format!("tcp:127.0.0.1:{dial}")])
            .args([
                "-chardev",
                &format!("socket,id=link1,host=127.0.0.1,port={accept},server=on,wait=off"),
            ])
            .args(["-device", "pci-serial,chardev=link1"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(err)
            .spawn()
            .expect("start qemu-system-riscv32");
        Guest { child, console }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for a console line containing `text`; returns that line.
    fn wait_line(&self, timeout: Duration, text: &str) -> String {
        let mut line = None;
        wait_until(timeout, &format!("guest console: {text:?}"), || {
            line = self
                .console()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_owned);
            line.is_some()
        });
        line.unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- guest console ---\n{}", self.console());
    }
}

/// The guest image, or `None` (with a note) when this run is not meant to test it.
fn guest_elf() -> Option<PathBuf> {
    let required = std::env::var("PMESH_REQUIRE_QEMU").is_ok_and(|v| v == "1");
    let Some(elf) = std::env::var_os("PMESH_QEMU_GUEST").map(PathBuf::from) else {
        assert!(
            !required,
            "PMESH_REQUIRE_QEMU=1 but PMESH_QEMU_GUEST is not set"
        );
        eprintln!(
            "NOTE: PMESH_QEMU_GUEST is not set: the QEMU node test checks nothing here \
             (.ci/run builds the guest and runs it in its 'QEMU node' step)"
        );
        return None;
    };
    assert!(
        elf.exists(),
        "PMESH_QEMU_GUEST={} does not exist",
        elf.display()
    );
    let qemu = Command::new("qemu-system-riscv32")
        .arg("--version")
        .output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-system-riscv32 is needed (Debian: qemu-system-misc)"
    );
    Some(elf)
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// `len` bytes of a real binary (this test's `pmesh`) from `offset`, as a firmware file.
fn firmware(dir: &TempDir, name: &str, offset: usize, len: usize) -> (PathBuf, String) {
    let exe = std::fs::read(PMESH).unwrap();
    let path = dir.0.join(name);
    std::fs::write(&path, &exe[offset..offset + len]).unwrap();
    let sha = sha256_file(&path);
    (path, sha)
}

fn push(args: &[&str]) -> (bool, String) {
    let out = Command::new(PMESH)
        .args(["ota", "push"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after `key` in `line` (e.g. "heap high-water 53412 B").
fn number_after(line: &str, key: &str) -> u64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line}"))
        + key.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn guest_joins_relays_time_syncs_and_installs_pmesh_and_classic_rollouts() {
    let Some(elf) = guest_elf() else { return };
    let dir = TempDir::new("qemu");
    let (p1, p3, guest_port) = (free_port(), free_port(), free_port());
    let cfg1 = dir.file(
        "n1.toml",
        &format!("[node]\ntime_authority = true\n{FAST_TIMERS}"),
    );
    let cfg3 = dir.file("n3.toml", FAST_TIMERS);
    let n1 = NodeProc::start(
        &dir,
        NodeSpec {
            id: 1,
            port: p1,
            connect: vec![],
            root: true,
            config: Some(cfg1),
        },
    );
    let guest = Guest::start(&dir, &elf, p1, guest_port);
    guest.wait_line(Duration::from_secs(20), "link 1: node 1 connected");
    let n3 = NodeProc::start(
        &dir,
        NodeSpec {
            id: 3,
            port: p3,
            connect: vec![guest_port],
            root: false,
            config: Some(cfg3),
        },
    );
    wait_until(Duration::from_secs(30), "1 to see the guest and 3", || {
        n1.nodes() == [3, GUEST_ID].into()
    });
    assert_eq!(n3.nodes(), [1, GUEST_ID].into());

    // Time: the guest adopts the time authority's clock.
    let adjusted = guest.wait_line(Duration::from_secs(30), "time: adjusted by");
    eprintln!("guest: {adjusted}");

    // Relaying and answering.
    let mut ev1 = n1.events();
    let mut ev3 = n3.events();
    for args in [
        &["send", "--to", "3", "single-via-guest"][..],
        &["send", "--broadcast", "broadcast-via-guest"],
        &["send", "--to", &GUEST_ID.to_string(), "ping"],
    ] {
        let (ok, _, err) = n1.cli(args);
        assert!(ok, "pmesh {args:?}: {err}");
    }
    let start = Instant::now();
    let pong = |ev: &EventStream| {
        ev.seen.iter().any(|e| {
            e["kind"] == "received"
                && e["from"] == GUEST_ID
                && e["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pong from 9001"))
        })
    };
    while start.elapsed() < Duration::from_secs(20)
        && !(ev3.count_received("single-via-guest") == 1
            && ev3.count_received("broadcast-via-guest") == 1
            && pong(&ev1))
    {
        ev1.collect_for(Duration::from_millis(200));
        ev3.collect_for(Duration::from_millis(200));
    }
    assert_eq!(
        ev3.received("single-via-guest"),
        [(1, false)],
        "SINGLE relayed"
    );
    assert_eq!(
        ev3.received("broadcast-via-guest"),
        [(1, true)],
        "BROADCAST relayed"
    );
    assert!(pong(&ev1), "the guest answers a SINGLE: {:?}", ev1.seen);
    guest.wait_line(
        Duration::from_secs(5),
        "received broadcast from 1: broadcast-via-guest",
    );

    // A pmesh rollout of 1 MiB in 4 KiB chunks (the default chunk of an uncompressed image).
    let control = n1.control.display().to_string();
    let (fw1, sha1) = firmware(&dir, "fw1.bin", 0, 1 << 20);
    let (ok, out) = push(&[
        fw1.to_str().unwrap(),
        "--role",
        "qemu",
        "--hardware",
        "QEMU-RV32IMC",
        "--mode",
        "pmesh",
        "--control",
        &control,
        "--timeout",
        "120s",
    ]);
    assert!(ok && out.contains("1 installed, 0 failed"), "{out}");
    let line = guest.wait_line(Duration::from_secs(10), "ota: installed pmesh");
    eprintln!("guest: {line}");
    assert!(
        line.contains("256 chunks") || line.contains("1048576 bytes"),
        "{line}"
    );
    assert!(
        line.contains(&format!("sha256 of the flash slot {sha1}")),
        "the flash holds the pushed image: {line}"
    );
    let high_water = number_after(&line, "heap high-water");
    eprintln!(
        "guest heap high-water after the 1 MiB pmesh rollout: {high_water} B (budget {HEAP_BUDGET} B)"
    );
    assert!(
        high_water <= HEAP_BUDGET,
        "heap high-water {high_water} B is over the {HEAP_BUDGET} B budget"
    );

    // A classic (painlessMesh) rollout of another image, 256 KiB.
    let (fw2, sha2) = firmware(&dir, "fw2.bin", 1 << 20, 256 * 1024);
    let (ok, out) = push(&[
        fw2.to_str().unwrap(),
        "--role",
        "qemu",
        "--hardware",
        "QEMU-RV32IMC",
        "--mode",
        "classic",
        "--control",
        &control,
        "--settle",
        "3s",
    ]);
    assert!(
        ok && out.contains("1 of 1 requesting nodes served every chunk"),
        "{out}"
    );
    let line = guest.wait_line(Duration::from_secs(20), "ota: installed unicast");
    eprintln!("guest: {line}");
    assert!(
        line.contains(&format!("sha256 of the flash slot {sha2}")),
        "the flash holds the classic image: {line}"
    );
    assert!(!guest.console().contains("panic"), "{}", guest.console());
}
