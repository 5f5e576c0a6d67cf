//! The hostile-peer harness (issue 11): a chain A—B—C of `pmesh node` processes, good traffic
//! A→C measured while an attacker speaks raw painlessMesh TCP to B, and B's memory watched.
//!
//! Used by `net_hostile.rs` (attacks that pmesh withstands) and `net_hostile_fixes.rs` (the
//! attacks of issue 11 items 6–9).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// Ids of the chain: A (root) — B (the attacked node) — C.
pub const A: u32 = 501;
pub const B: u32 = 502;
pub const C: u32 = 503;

/// Good traffic: one SINGLE A→C this often.
pub const GOOD_EVERY: Duration = Duration::from_millis(100);

/// A TCP connection to `port` on 127.0.0.1, Nagle off.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A TCP connection to 127.0.0.1:`port` from the source address `from` (e.g. 127.0.0.2), so a
/// node's per-address rules see the attacker apart from the honest nodes on 127.0.0.1.
pub fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = (from, 0).into();
    s.bind(&src.into())?;
    let dst: SocketAddr = ([127, 0, 0, 1], port).into();
    s.connect(&dst.into())?;
    s.set_tcp_nodelay(true)?;
    Ok(s.into())
}

/// Closes `s` with a TCP reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Writes `chunk` repeatedly until `total` bytes are out or the node closes the connection;
/// returns the bytes written.
pub fn pour(s: &mut TcpStream, chunk: &[u8], total: usize) -> usize {
    let mut sent = 0;
    while sent < total {
        match s.write(chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    sent
}

/// A NUL-terminated frame.
pub fn frame(text: &str) -> Vec<u8> {
    let mut f = text.as_bytes().to_vec();
    f.push(0);
    f
}

/// The first NODE_SYNC_REQUEST a station sends, as node `id` with the given `subs` (JSON).
pub fn sync_frame(id: u32, subs: &str) -> Vec<u8> {
    if subs.is_empty() {
        frame(&format!(
            r#"{{"nodeId":{id},"type":5,"dest":0,"from":{id}}}"#
        ))
    } else {
        frame(&format!(
            r#"{{"nodeId":{id},"subs":{subs},"type":5,"dest":0,"from":{id}}}"#
        ))
    }
}

/// Connects to `port` and syncs as node `id` (no subs).
pub fn join_as(port: u16, id: u32) -> TcpStream {
    let mut s = connect(port);
    s.write_all(&sync_frame(id, "")).unwrap();
    s
}

/// Reads and discards everything `s` receives, on a thread, until the peer closes it; returns
/// the bytes read. A joined attacker that keeps reading is not dropped for a full queue.
pub fn drain(s: &TcpStream) -> JoinHandle<u64> {
    let mut r = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    })
}

/// Samples a process's resident memory every 50 ms on a thread and keeps the peak.
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(proc_status_kb(pid, "VmRSS:")));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                        break;
                    };
                    if let Some(kb) = text
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                    {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The peak since the start or the last reset, kB.
    pub fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from `now_kb`.
    pub fn reset(&self, now_kb: u64) {
        self.peak.store(now_kb, Ordering::Relaxed);
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the good traffic of one window achieved.
#[derive(Debug)]
pub struct Delivery {
    /// Messages A was asked to send (a refused send counts as sent and lost).
    pub sent: usize,
    /// Messages that arrived at C at least once.
    pub delivered: usize,
    /// Messages that arrived more than once.
    pub duplicated: usize,
    /// Send-to-arrival times of the delivered messages, sorted.
    pub latencies: Vec<Duration>,
    /// Whether C's event stream reported lost events: arrivals may then be missing from what
    /// the test saw, so `delivered` is a lower bound.
    pub lagged: bool,
}

impl Delivery {
    /// Delivered share, percent.
    pub fn percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.delivered as f64 * 100.0 / self.sent as f64
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }

    /// Asserts at least 99 % delivered, none twice, and enough sent to mean something. (A lagged
    /// event stream only makes the delivered count lower than the truth.)
    pub fn assert_good(&self, what: &str, min_sent: usize) {
        assert!(
            self.sent >= min_sent,
            "{what}: only {} good messages sent",
            self.sent
        );
        assert_eq!(self.duplicated, 0, "{what}: duplicates");
        assert!(
            self.delivered * 100 >= self.sent * 99,
            "{what}: good traffic {}/{} delivered ({:.1} %){}",
            self.delivered,
            self.sent,
            self.percent(),
            if self.lagged {
                " (C's event stream lagged: some arrivals may not have been seen)"
            } else {
                ""
            }
        );
    }
}

/// Good traffic in the background: a SINGLE A→C every [`GOOD_EVERY`] through A's control
/// endpoint; arrivals read from C's event stream.
pub struct GoodTraffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Delivery>,
}

impl GoodTraffic {
    /// Starts sending; `tag` makes this window's messages unique.
    pub fn start(a: &NodeProc, c: &NodeProc, tag: &str) -> GoodTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut ctl = ControlConn::open(&a.control);
        let mut events = c.events();
        let (tag, to, flag) = (tag.to_owned(), c.spec.id, stop.clone());
        let thread = thread::spawn(move || {
            let mut sent: Vec<(String, Instant)> = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let msg = format!("good {tag} {}", sent.len());
                let at = Instant::now();
                let _ = ctl.request("send", json!({"to": to, "msg": msg}));
                sent.push((msg, at));
                next += GOOD_EVERY;
                events.collect_for(next.saturating_duration_since(Instant::now()));
            }
            // Give the last ones time to arrive.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && !sent.iter().all(|(m, _)| events.arrival(m).is_some()) {
                events.collect_for(Duration::from_millis(50));
            }
            tally(&events, &sent)
        });
        GoodTraffic { stop, thread }
    }

    /// Stops sending and returns what arrived.
    pub fn stop(self) -> Delivery {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("good traffic thread")
    }
}

fn tally(events: &EventStream, sent: &[(String, Instant)]) -> Delivery {
    let mut latencies = Vec::new();
    let mut duplicated = 0;
    for (msg, at) in sent {
        if let Some(t) = events.arrival(msg) {
            latencies.push(t.saturating_duration_since(*at));
        }
        if events.count_received(msg) > 1 {
            duplicated += 1;
        }
    }
    latencies.sort();
    Delivery {
        sent: sent.len(),
        delivered: latencies.len(),
        duplicated,
        latencies,
        lagged: events.seen.iter().any(|e| e["kind"] == "lagged"),
    }
}

/// The chain A—B—C on 127.0.0.1: B dials A, C dials B. B's configuration is `b_config`, with
/// `{dir}` replaced by the chain's scratch directory (reference timers when `None`); A and C
/// run at reference timers.
pub struct Chain {
    pub dir: TempDir,
    pub a: NodeProc,
    pub b: NodeProc,
    pub c: NodeProc,
}

impl Chain {
    pub fn start(tag: &str, b_config: Option<&str>) -> Chain {
        let dir = TempDir::new(tag);
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let b_config: Option<PathBuf> = b_config.map(|t| {
            let text = t.replace("{dir}", &dir.0.display().to_string());
            dir.file("b.toml", &text)
        });
        let spec = |id, i: usize, connect: Vec<u16>, config| NodeSpec {
            id,
            port: ports[i],
            connect,
            root: id == A,
            config,
        };
        let a = NodeProc::start(&dir, spec(A, 0, vec![], None));
        let b = NodeProc::start(&dir, spec(B, 1, vec![ports[0]], b_config));
        let c = NodeProc::start(&dir, spec(C, 2, vec![ports[1]], None));
        let chain = Chain { dir, a, b, c };
        wait_until(
            Duration::from_secs(15),
            "the chain A—B—C to form",
            || chain.intact(),
        );
        chain
    }

    /// B's listening port, where attackers connect.
    pub fn port(&self) -> u16 {
        self.b.spec.port
    }

    /// A reaches C through B, and B holds its direct links to both.
    pub fn intact(&self) -> bool {
        self.a.nodes().contains(&C) && self.c.nodes().contains(&A) && self.b_links_to_a_and_c()
    }

    /// B's direct links include A and C.
    pub fn b_links_to_a_and_c(&self) -> bool {
        let linked = link_ids(&self.b.status());
        linked.contains(&A) && linked.contains(&C)
    }

    /// B's counters: `net_stats` and `node_stats` merged into one object.
    pub fn b_stats(&self) -> Value {
        stats(&self.b)
    }
}

/// A node's `net_stats` and `node_stats` merged into one object (their names do not clash
/// except `bytes_*`, `closed_by_node`, which are equal in meaning).
pub fn stats(n: &NodeProc) -> Value {
    let s = n.status();
    let mut all = s["node_stats"].as_object().cloned().unwrap_or_default();
    for (k, v) in s["net_stats"].as_object().cloned().unwrap_or_default() {
        all.entry(k).or_insert(v);
    }
    Value::Object(all)
}

/// How much counter `key` grew from `before` to `after` (0 if absent).
pub fn grew(before: &Value, after: &Value, key: &str) -> u64 {
    let n = |v: &Value| v[key].as_u64().unwrap_or(0);
    n(after).saturating_sub(n(before))
}

/// The node ids of a node's synced direct links, from its `status`.
pub fn link_ids(status: &Value) -> Vec<u32> {
    status["links"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["node_id"].as_u64())
                .map(|id| id as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// A counter anywhere in `v` (an object key at any depth), for counters whose place in the
/// status is not fixed yet; `None` if no key of that name exists.
pub fn find_counter(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| m.values().find_map(|x| find_counter(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_counter(x, key)),
        _ => None,
    }
}
