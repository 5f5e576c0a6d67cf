//! Helpers for the real-process tests: start `pmesh node` processes on 127.0.0.1, talk to their
//! control endpoints, watch their events, read their memory.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod hostile;

pub const PMESH: &str = env!("CARGO_BIN_EXE_pmesh");

/// Short protocol timers, so tests of timeouts take seconds.
pub const FAST_TIMERS: &str = r#"
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

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "pmesh-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// How to start one node.
#[derive(Clone)]
pub struct NodeSpec {
    pub id: u32,
    pub port: u16,
    pub connect: Vec<u16>,
    pub root: bool,
    pub config: Option<PathBuf>,
}

/// A running `pmesh node` process.
pub struct NodeProc {
    pub spec: NodeSpec,
    pub control: PathBuf,
    pub log: PathBuf,
    pub child: Child,
}

impl NodeProc {
    pub fn start(dir: &TempDir, spec: NodeSpec) -> NodeProc {
        let control = dir.0.join(format!("n{}.sock", spec.id));
        let log = dir.0.join(format!("n{}.log", spec.id));
        let mut cmd = Command::new(PMESH);
        cmd.arg("node")
            .args(["--id", &spec.id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", spec.port)])
            .args(["--control", &format!("unix:{}", control.display())])
            .args(["--log", "info"])
            // These nodes run unsigned rollouts (signed ones: ota_sign.rs, pmesh-ota's tests).
            .arg("--allow-unsigned");
        for c in &spec.connect {
            cmd.args(["--connect", &format!("127.0.0.1:{c}")]);
        }
        if spec.root {
            cmd.arg("--root");
        }
        if let Some(cfg) = &spec.config {
            cmd.arg("--config").arg(cfg);
        }
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("start pmesh node");
        let node = NodeProc {
            spec,
            control,
            log,
            child,
        };
        wait_until(Duration::from_secs(20), "the control endpoint", || {
            node.try_request("ping", json!({})).is_ok()
        });
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One request on a fresh control connection.
    pub fn try_request(&self, cmd: &str, params: Value) -> Result<Value, String> {
        request(&self.control, cmd, params)
    }

    pub fn request(&self, cmd: &str, params: Value) -> Value {
        self.try_request(cmd, params)
            .unwrap_or_else(|e| panic!("node {}: {cmd}: {e}", self.spec.id))
    }

    /// Other nodes this node reaches.
    pub fn nodes(&self) -> BTreeSet<u32> {
        let v = self.request("nodes", json!({}));
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() as u32)
            .collect()
    }

    pub fn status(&self) -> Value {
        self.request("status", json!({}))
    }

    /// Runs a `pmesh` one-shot command against this node; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(PMESH)
            .args(args)
            .args(["--control", &self.control.display().to_string()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn events(&self) -> EventStream {
        EventStream::open(&self.control)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Resident memory in kB (VmRSS).
    pub fn rss_kb(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn request(control: &Path, cmd: &str, params: Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(control).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = params;
    req["cmd"] = json!(cmd);
    req["id"] = json!(1);
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
    if v["ok"] == json!(true) {
        Ok(v["data"].clone())
    } else {
        Err(v["error"].as_str().unwrap_or("?").to_owned())
    }
}

/// A persistent control connection for many requests (faster than one connection each).
pub struct ControlConn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl ControlConn {
    pub fn open(control: &Path) -> ControlConn {
        let w = UnixStream::connect(control).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        ControlConn { w, r }
    }

    pub fn request(&mut self, cmd: &str, params: Value) -> Result<Value, String> {
        let mut req = params;
        req["cmd"] = json!(cmd);
        writeln!(self.w, "{req}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
        if v["ok"] == json!(true) {
            Ok(v["data"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_owned())
        }
    }
}

/// The `events` stream of one node, read on a thread.
pub struct EventStream {
    rx: mpsc::Receiver<(Value, Instant)>,
    _conn: UnixStream,
    pub seen: Vec<Value>,
    /// When each event of `seen` was read from the stream.
    pub seen_at: Vec<Instant>,
}

impl EventStream {
    pub fn open(control: &Path) -> EventStream {
        let mut s = UnixStream::connect(control).unwrap();
        writeln!(s, r#"{{"id":1,"cmd":"events"}}"#).unwrap();
        let reader = BufReader::new(s.try_clone().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    break;
                };
                if tx.send((v["item"].clone(), Instant::now())).is_err() {
                    break;
                }
            }
        });
        let (first, _) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("events stream opens");
        assert_eq!(first["kind"], "subscribed");
        EventStream {
            rx,
            _conn: s,
            seen: Vec::new(),
            seen_at: Vec::new(),
        }
    }

    /// Collects events for `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok((v, at)) => {
                    self.seen.push(v);
                    self.seen_at.push(at);
                }
                Err(_) => break,
            }
        }
    }

    /// Messages received so far with this text: (from, broadcast) for each arrival.
    pub fn received(&self, msg: &str) -> Vec<(u32, bool)> {
        self.seen
            .iter()
            .filter(|e| e["kind"] == "received" && e["msg"] == msg)
            .map(|e| {
                (
                    e["from"].as_u64().unwrap() as u32,
                    e["broadcast"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    pub fn count_received(&self, msg: &str) -> usize {
        self.received(msg).len()
    }

    /// When the first arrival of a message with this text was read, if it arrived.
    pub fn arrival(&self, msg: &str) -> Option<Instant> {
        self.seen
            .iter()
            .position(|e| e["kind"] == "received" && e["msg"] == msg)
            .map(|i| self.seen_at[i])
    }
}
