//! The hostile-peer suite (issue 11), the attacks pmesh withstands: a chain A—B—C of real
//! `pmesh node` processes at the reference's timers, good traffic A→C (a SINGLE every 100 ms)
//! and an attacker speaking raw painlessMesh TCP to B. The attacks run one after the other on
//! the same chain; during each, good traffic keeps ≥ 99 % delivery (no duplicate), B's resident
//! memory stays within [`RSS_CAP_KB`] of what it was before the suite, B keeps its direct links
//! to A and C, and the attack's own counters show B saw it.
//!
//! The attacks of issue 11 items 6–9 (fixed in the node) are in `net_hostile_fixes.rs`.

mod net_support;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use net_support::hostile::*;
use net_support::*;
use serde_json::Value;

/// B's peak resident memory may exceed its resident memory before the first attack by at most
/// this much, kB (the largest buffer an attack can make B hold is one send queue, 8 MiB; the
/// whole suite measured 12.5 MiB at most).
const RSS_CAP_KB: u64 = 32 * 1024;

/// Each attack's window of good traffic lasts at least this long (30 messages).
const MIN_WINDOW: Duration = Duration::from_secs(3);

/// B receives OTA for role `sensor`, so bogus OTA frames reach a real receiver.
const B_CONFIG: &str = r#"
[ota]
role = "sensor"
hardware = "ESP32"
dir = "{dir}/ota-b"
"#;

/// The chain, B's memory watch, and one result line per attack.
struct Suite {
    chain: Chain,
    rss: RssWatch,
    baseline_kb: u64,
    rows: Vec<String>,
}

impl Suite {
    fn start() -> Suite {
        let chain = Chain::start("hostile", Some(B_CONFIG));
        let baseline_kb = chain.b.rss_kb();
        let rss = RssWatch::start(chain.b.pid());
        Suite {
            chain,
            rss,
            baseline_kb,
            rows: Vec::new(),
        }
    }

    /// Runs `attack` against B while good traffic flows A→C, then asserts the suite's rules.
    fn attack(&mut self, name: &str, attack: impl FnOnce(&Chain)) {
        let start = Instant::now();
        let before_kb = self.chain.b.rss_kb();
        self.rss.reset(before_kb);
        let good = GoodTraffic::start(&self.chain.a, &self.chain.c, name);
        thread::sleep(Duration::from_millis(300));
        attack(&self.chain);
        thread::sleep(MIN_WINDOW.saturating_sub(start.elapsed()));
        let d = good.stop();
        let peak = self.rss.peak_kb();
        let row = format!(
            "{name:<44} {:>4}/{:<4} good delivered, p99 {:>6.1} ms; B RSS {before_kb} kB before, peak {peak} kB; {:.1} s",
            d.delivered,
            d.sent,
            d.quantile(0.99).as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64()
        );
        eprintln!("{row}");
        self.rows.push(row);
        d.assert_good(name, 25);
        assert!(
            peak <= self.baseline_kb + RSS_CAP_KB,
            "{name}: B's RSS peaked at {peak} kB, over {} kB + {RSS_CAP_KB} kB",
            self.baseline_kb
        );
        wait_until(Duration::from_secs(5), "the chain to be intact", || {
            self.chain.intact()
        });
    }
}

#[test]
fn hostile_peers_against_the_middle_of_a_chain() {
    let suite_start = Instant::now();
    let mut s = Suite::start();
    s.attack("64 MiB frame without a NUL", endless_frame);
    s.attack("16 MiB of random bytes", garbage);
    s.attack("10,000-deep JSON", deep_json);
    s.attack("5,000-level NODE_SYNC", deep_sync);
    s.attack("invalid UTF-8, out-of-range numbers", bad_values);
    s.attack("200 sybil peers", sybils);
    s.attack("100k SINGLEs to an unknown id", singles_to_nobody);
    s.attack(
        "100k BROADCASTs, a neighbour never reads",
        broadcasts_and_staller,
    );
    s.attack("bogus OTA frames", bogus_ota);
    s.attack("1,000 mid-frame resets", resets);
    eprintln!(
        "\nB's RSS before the suite: {} kB; cap {} kB more\n{}\nsuite: {:.1} s",
        s.baseline_kb,
        RSS_CAP_KB,
        s.rows.join("\n"),
        suite_start.elapsed().as_secs_f64()
    );
    let log = s.chain.b.log_text();
    assert!(!log.contains("panicked"), "B panicked:\n{log}");
}

/// Waits until counter `key` of B grew by `at_least` since `before`.
fn wait_grew(ch: &Chain, before: &Value, key: &str, at_least: u64) {
    wait_until(
        Duration::from_secs(30),
        &format!("B's {key} to grow by {at_least}"),
        || grew(before, &ch.b_stats(), key) >= at_least,
    );
}

/// A frame header, then 64 MiB without a NUL: B cuts it at the frame cap, counts and logs it.
fn endless_frame(ch: &Chain) {
    let before = ch.b_stats();
    let mut s = connect(ch.port());
    s.write_all(format!(r#"{{"type":9,"dest":{C},"from":990,"msg":""#).as_bytes())
        .unwrap();
    let sent = pour(&mut s, &[b'x'; 65536], 64 << 20);
    assert!(sent >= 64 << 20, "B read all 64 MiB: {sent} bytes");
    wait_grew(ch, &before, "frames_oversized", 1);
    assert!(ch.b.log_text().contains("longer than the frame cap"));
}

/// 16 MiB of pseudo-random bytes, NULs included: counted as invalid frames.
fn garbage(ch: &Chain) {
    let before = ch.b_stats();
    let mut s = connect(ch.port());
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let chunk: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let sent = pour(&mut s, &chunk, 16 << 20);
    assert!(sent >= 16 << 20, "{sent} bytes");
    wait_grew(ch, &before, "frames_invalid", 1000);
}

/// Arrays and objects nested 10,000 deep (over the 255 cap): each frame dropped, counted.
fn deep_json(ch: &Chain) {
    let before = ch.b_stats();
    let mut s = join_as(ch.port(), 991);
    let _d = drain(&s);
    let n = 10_000;
    let frames = [
        format!(
            r#"{{"type":9,"dest":{C},"from":991,"msg":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        ),
        format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n)),
        format!(
            r#"{{"type":8,"dest":0,"from":991,"x":{}0{}}}"#,
            r#"{"x":["#.repeat(n),
            "]}".repeat(n)
        ),
        "[".repeat(n),
    ];
    for f in &frames {
        s.write_all(&frame(f)).unwrap();
    }
    wait_grew(ch, &before, "dropped_invalid", frames.len() as u64);
}

/// A joined peer sends a NODE_SYNC whose tree is 5,000 levels deep: dropped, none of its ids
/// enters B's view.
fn deep_sync(ch: &Chain) {
    let before = ch.b_stats();
    let mut s = join_as(ch.port(), 992);
    let _d = drain(&s);
    wait_until(Duration::from_secs(5), "992 to join", || {
        ch.b.nodes().contains(&992)
    });
    let levels = 5_000u32;
    let mut subs = String::from("[");
    for i in 0..levels - 1 {
        subs.push_str(&format!(r#"{{"nodeId":{},"subs":["#, 10_000 + i));
    }
    subs.push_str(&format!(r#"{{"nodeId":{}}}"#, 10_000 + levels - 1));
    subs.push_str(&"]}".repeat(levels as usize - 1));
    subs.push(']');
    s.write_all(&sync_frame(992, &subs)).unwrap();
    wait_grew(ch, &before, "dropped_invalid", 1);
    let nodes = ch.b.nodes();
    assert!(nodes.iter().all(|&n| n < 10_000), "{nodes:?}");
}

/// Invalid UTF-8 in a payload (relayed as bytes) and numbers outside u32 in routing fields:
/// no id or type wraps around into a valid one. (In-range values in another form, `503.5` or
/// `"9"`, are read leniently as the reference's ArduinoJson reads them, so they are not here.)
fn bad_values(ch: &Chain) {
    let mut c_events = ch.c.events();
    let before = ch.b_stats();
    let mut s = join_as(ch.port(), 993);
    let _d = drain(&s);
    wait_until(Duration::from_secs(5), "993 to join", || {
        ch.b.nodes().contains(&993)
    });
    let wrap = 1u64 << 32;
    let bad = [
        format!(
            r#"{{"type":9,"dest":{},"from":993,"msg":"oor dest+2^32"}}"#,
            wrap + u64::from(C)
        ),
        format!(r#"{{"type":9,"dest":-{C},"from":993,"msg":"oor dest negative"}}"#),
        format!(r#"{{"type":9,"dest":{C}e400,"from":993,"msg":"oor dest huge"}}"#),
        format!(
            r#"{{"type":{},"dest":{C},"from":993,"msg":"oor type+2^32"}}"#,
            wrap + 9
        ),
        format!(r#"{{"type":-9,"dest":{C},"from":993,"msg":"oor type negative"}}"#),
        format!(r#"{{"type":9e999,"dest":{C},"from":993,"msg":"oor type huge"}}"#),
        format!(r#"{{"type":9,"dest":{C},"from":993,"msg":{wrap}}}"#),
    ];
    for f in &bad {
        s.write_all(&frame(f)).unwrap();
    }
    // Sent last on the same link, so its arrival at C is the barrier for the frames above.
    let mut utf8 = format!(r#"{{"type":9,"dest":{C},"from":993,"msg":"utf8 "#).into_bytes();
    utf8.extend_from_slice(b"\xff\xfe\xc0\x80\xed\xa0\x80 end\"}\0");
    s.write_all(&utf8).unwrap();
    // A link whose node id changes to one outside u32 is not re-identified as another node.
    let mut t = join_as(ch.port(), 994);
    let _t = drain(&t);
    t.write_all(&frame(&format!(
        r#"{{"nodeId":{},"type":5,"dest":0,"from":{}}}"#,
        wrap + u64::from(A),
        wrap + u64::from(A)
    )))
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the invalid UTF-8 to reach C",
        || {
            c_events.collect_for(Duration::from_millis(50));
            c_events.seen.iter().any(|e| {
                e["kind"] == "received" && e["msg"].as_str().is_some_and(|m| m.starts_with("utf8 "))
            })
        },
    );
    let wrapped: Vec<&Value> = c_events
        .seen
        .iter()
        .filter(|e| {
            e["kind"] == "received" && e["msg"].as_str().is_some_and(|m| m.starts_with("oor"))
        })
        .collect();
    assert!(
        wrapped.is_empty(),
        "out-of-range values reached C: {wrapped:?}"
    );
    // The three out-of-range destinations route nowhere (counted); the renamed link is closed.
    let after = ch.b_stats();
    assert!(grew(&before, &after, "dropped_no_route") >= 3, "{after}");
    wait_until(Duration::from_secs(5), "the renamed link to close", || {
        !ch.b.nodes().contains(&994)
    });
}

/// 200 peers, each from its own address (127.0.1.1 to 127.0.1.200, so no per-address rule
/// bites first), each join as a new node: B holds at most 64 links, refuses the rest and counts
/// them, and frees the slots when they leave.
fn sybils(ch: &Chain) {
    let before = ch.b_stats();
    let peers: Vec<_> = (1..=200u32)
        .filter_map(|i| {
            let mut s = connect_from([127, 0, 1, i as u8], ch.port()).ok()?;
            let _ = s.write_all(&sync_frame(20_000 + i, ""));
            Some(s)
        })
        .collect();
    assert_eq!(peers.len(), 200);
    wait_grew(ch, &before, "rejected_max_connections", 200 - 62);
    thread::sleep(Duration::from_secs(1));
    let status = ch.b.status();
    let links = status["links"].as_array().unwrap().len();
    eprintln!("sybils: B holds {links} links");
    assert!(links <= 64, "{links} links");
    assert!(
        status["nodes"].as_array().unwrap().len() <= 64,
        "{}",
        status["nodes"]
    );
    drop(peers);
    wait_until(Duration::from_secs(10), "the sybils' slots to free", || {
        ch.b.status()["links"].as_array().unwrap().len() == 2
    });
}

/// Writes `count` frames made by `f` in batches of about 64 KiB, at most `per_s` frames a
/// second if given; returns the bytes written (fewer if B closed the connection).
fn write_frames(
    s: &mut std::net::TcpStream,
    count: u32,
    per_s: Option<u32>,
    f: impl Fn(u32) -> String,
) -> usize {
    let start = Instant::now();
    let mut batch = Vec::new();
    let mut sent = 0;
    for i in 0..count {
        batch.extend_from_slice(f(i).as_bytes());
        batch.push(0);
        if let Some(rate) = per_s {
            let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if batch.len() > 60_000 || i + 1 == count {
            if s.write_all(&batch).is_err() {
                return sent;
            }
            sent += batch.len();
            batch.clear();
        }
    }
    sent
}

/// A joined peer sends 100,000 SINGLEs to a node that does not exist: each dropped, counted.
fn singles_to_nobody(ch: &Chain) {
    let before = ch.b_stats();
    let mut s = join_as(ch.port(), 995);
    let _d = drain(&s);
    write_frames(&mut s, 100_000, None, |i| {
        format!(
            r#"{{"type":9,"dest":12345,"from":995,"msg":"to nobody {i:06} {}"}}"#,
            "n".repeat(64)
        )
    });
    wait_grew(ch, &before, "dropped_no_route", 100_000);
}

/// One joined peer never reads; another sends 100,000 BROADCASTs (about 23 MB): B forwards
/// them to A, C and the staller, whose queue passes its 8 MiB limit and is dropped.
fn broadcasts_and_staller(ch: &Chain) {
    let before = ch.b_stats();
    let staller = join_as(ch.port(), 996);
    wait_until(Duration::from_secs(5), "the staller to join", || {
        ch.b.nodes().contains(&996)
    });
    let mut s = join_as(ch.port(), 997);
    let _d = drain(&s);
    // Paced at 10,000 a second: every node delivers each broadcast locally too, and C's event
    // stream, where the good traffic is counted, holds 1,024 events (at 20,000 a second, on a
    // loaded machine, the test's reader fell behind and missed one good arrival in 54). The
    // staller's queue still passes 8 MiB within about 4 s.
    let sent = write_frames(&mut s, 100_000, Some(10_000), |i| {
        format!(
            r#"{{"type":8,"dest":0,"from":997,"msg":"flood {i:06} {}"}}"#,
            "f".repeat(180)
        )
    });
    assert!(sent > 20 << 20, "the flood got {sent} bytes in");
    wait_grew(ch, &before, "closed_send_queue_full", 1);
    assert!(!ch.b.nodes().contains(&996), "the staller is gone");
    assert!(
        ch.b.log_text().contains("send_queue_full"),
        "the drop is logged"
    );
    let max_queue = ch.b_stats()["max_queue_bytes"].as_u64().unwrap();
    assert!(
        max_queue <= (8 << 20) + 65536,
        "largest queue {max_queue} bytes"
    );
    drop(staller);
}

/// OTA frames with bogus fields to a node that receives role `sensor`: announces of 2^32 − 1
/// parts and of non-numbers, requests and data for unknown images, bad base64, pmesh OTA
/// frames with missing fields. Nothing is written, B stays within its memory cap.
fn bogus_ota(ch: &Chain) {
    let mut s = join_as(ch.port(), 998);
    let _d = drain(&s);
    let md5 = "0123456789abcdef0123456789abcdef";
    let head = |ty: u32, routing: u32, no_part: &str| {
        format!(
            r#""from":998,"routing":{routing},"type":{ty},"md5":"{md5}","hardware":"ESP32","role":"sensor","noPart":{no_part},"broadcasted":false"#
        )
    };
    let mut frames = vec![
        format!("{{{}}}", head(10, 2, "4294967295")),
        format!("{{{}}}", head(10, 2, "-1")),
        format!("{{{}}}", head(10, 2, "\"many\"")),
        format!("{{{}}}", head(10, 2, "1e30")),
        format!(r#"{{{},"dest":{B},"partNo":0}}"#, head(11, 1, "4294967295")),
        format!(
            r#"{{{},"dest":{B},"partNo":7,"data":"!!not base64!!"}}"#,
            head(12, 1, "4294967295")
        ),
        format!(
            r#"{{{},"dest":{B},"partNo":4294967294,"data":"AAAA"}}"#,
            head(12, 1, "4294967295")
        ),
        format!(
            r#"{{{},"dest":{B},"partNo":3,"data":"{}"}}"#,
            head(12, 1, "4294967295"),
            "QUFB".repeat(50_000)
        ),
    ];
    for ty in 710..=716 {
        frames.push(format!(
            r#"{{"type":{ty},"routing":2,"from":998,"dest":0}}"#
        ));
        frames.push(format!(
            r#"{{"type":{ty},"routing":1,"from":998,"dest":{B},"transfer":4294967295,"chunk":-1,"size":1e99,"data":"~~~"}}"#
        ));
    }
    for f in &frames {
        s.write_all(&frame(f)).unwrap();
    }
    thread::sleep(Duration::from_secs(2));
    let written = dir_bytes(&ch.dir.0.join("ota-b"));
    assert!(written < 1 << 20, "B wrote {written} bytes of OTA state");
}

/// Total size of the files under `p`, bytes (0 if absent).
fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// 1,000 connections each send half a frame (every tenth after joining) and reset: B accepts
/// each, closes it, and keeps nothing.
fn resets(ch: &Chain) {
    let before = ch.b_stats();
    for i in 0..1000u32 {
        let mut s = connect(ch.port());
        if i % 10 == 0 {
            let _ = s.write_all(&sync_frame(30_000 + i, ""));
        }
        let _ =
            s.write_all(format!(r#"{{"type":9,"dest":{C},"from":30000,"msg":"half"#).as_bytes());
        reset(s);
    }
    wait_grew(ch, &before, "accepted", 1000);
    wait_until(Duration::from_secs(10), "the reset links to close", || {
        ch.b.status()["links"].as_array().unwrap().len() == 2
    });
}
