//! The hostile-peer suite (issue 11), the attacks of items 6–9, each against the middle node B
//! of a chain A—B—C of real `pmesh node` processes while good traffic flows A→C (a SINGLE every
//! 100 ms): a neighbour whose syncs claim honest ids (6), silent sockets holding every free
//! slot (7), a TIME_SYNC/TIME_DELAY flood (8), and a classic OTA Data frame with
//! `partNo` ≥ 2^32 during a real transfer (9). Each asserts ≥ 99 % good delivery, B's memory
//! within [`RSS_CAP_KB`], and what the fix promises. One `#[test]` each, one chain each.
//!
//! The attacks pmesh withstood before issue 11 are in `net_hostile.rs`.

mod net_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use net_support::hostile::*;
use net_support::*;
use serde_json::{Value, json};

/// B's peak resident memory may exceed what it was before the attack by at most this, kB.
const RSS_CAP_KB: u64 = 32 * 1024;

/// Asserts B's peak memory since `watch` started stayed within the cap of `before_kb`.
fn assert_rss(what: &str, watch: &RssWatch, before_kb: u64) {
    let peak = watch.peak_kb();
    eprintln!("{what}: B RSS {before_kb} kB before, peak {peak} kB");
    assert!(
        peak <= before_kb + RSS_CAP_KB,
        "{what}: B's RSS peaked at {peak} kB, over {before_kb} kB + {RSS_CAP_KB} kB"
    );
}

/// Item 6: a neighbour re-sends, once a second, a NODE_SYNC whose subs claim A and C (B's
/// direct neighbours), then A with B below it, then B itself. B never tears down its direct links to A
/// and C for it, and good traffic keeps flowing.
#[test]
fn sync_claiming_honest_ids_does_not_cut_direct_links() {
    let ch = Chain::start("hostile-claims", None);
    let before_kb = ch.b.rss_kb();
    let watch = RssWatch::start(ch.b.pid());
    let mut b_events = ch.b.events();
    let good = GoodTraffic::start(&ch.a, &ch.c, "claims");
    let mut s = join_as(ch.port(), 666);
    let _d = drain(&s);
    let claims = [
        format!(r#"[{{"nodeId":{A}}},{{"nodeId":{C}}}]"#),
        format!(r#"[{{"nodeId":{A},"subs":[{{"nodeId":{B}}}]}},{{"nodeId":{C}}}]"#),
        format!(r#"[{{"nodeId":{B}}}]"#),
    ];
    // Each claim re-sent once a second for 8 s, four times the 2 s loop grace after which a
    // loop that stays closes a link.
    let start = Instant::now();
    for claim in &claims {
        for _ in 0..8 {
            if s.write_all(&sync_frame(666, claim)).is_err() {
                // B closed the claiming link: allowed; the attacker comes back.
                s = join_as(ch.port(), 666);
                let _ = drain(&s);
            }
            thread::sleep(Duration::from_secs(1));
            assert!(
                ch.b_links_to_a_and_c(),
                "B lost a direct link after {:?} of claim {claim}",
                start.elapsed()
            );
        }
    }
    let d = good.stop();
    b_events.collect_for(Duration::from_millis(200));
    let cut: Vec<&Value> = b_events
        .seen
        .iter()
        .filter(|e| {
            matches!(e["kind"].as_str(), Some("link_down" | "dropped_connection"))
                && (e["node_id"] == A || e["node_id"] == C)
        })
        .collect();
    eprintln!(
        "claims: {}/{} good delivered, p99 {:?}; B's stats {}",
        d.delivered,
        d.sent,
        d.quantile(0.99),
        ch.b_stats()
    );
    assert!(cut.is_empty(), "B dropped a direct link: {cut:?}");
    d.assert_good("claims", 150);
    assert!(ch.intact());
    assert_rss("claims", &watch, before_kb);
}

/// Item 7: from another address (127.0.0.2) an attacker holds every free slot of B with
/// silent connections and re-opens each one B closes, in a loop. A new honest node D dialling
/// B from 127.0.0.1 still joins within 15 s; B closes silent connections within a short
/// handshake deadline (5 s: held 4.5 to 8 s; the reference's node-sync timeout took 20 s); its log does not grow a line per refused connection; deadlines, per-address refusals
/// and suppressed log lines are counted.
#[test]
fn silent_sockets_do_not_lock_joiners_out() {
    let ch = Chain::start("hostile-silent", None);
    let before_kb = ch.b.rss_kb();
    let watch = RssWatch::start(ch.b.pid());
    let log_before = ch.b.log_text().lines().count();
    let good = GoodTraffic::start(&ch.a, &ch.c, "silent");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    // Lifetimes (ms) of silent connections B closed after holding them (refused ones close
    // at once and are not counted).
    let held: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let attacker = {
        let (stop, opened, held, port) = (stop.clone(), opened.clone(), held.clone(), ch.port());
        thread::spawn(move || silent_loop(port, &stop, &opened, &held))
    };
    thread::sleep(Duration::from_secs(2));

    // D dials B with a fast redial schedule.
    let dcfg = ch.dir.file("d.toml", FAST_TIMERS);
    let d = NodeProc::start(
        &ch.dir,
        NodeSpec {
            id: 504,
            port: free_port(),
            connect: vec![ch.port()],
            root: false,
            config: Some(dcfg),
        },
    );
    let started = Instant::now();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(15), "D to join B", || {
            ch.b.nodes().contains(&504)
        })
    }));
    // Keep the attack up 16 s in all, so the handshake deadline shows.
    thread::sleep(Duration::from_secs(14).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let attacked_for = attacker.join().unwrap();
    let delivery = good.stop();
    let opened = opened.load(Ordering::Relaxed);
    let mut held = held.lock().unwrap().clone();
    held.sort();
    let log = ch.b.log_text();
    let new_lines: Vec<&str> = log.lines().skip(log_before).collect();
    let refused_lines = new_lines
        .iter()
        .filter(|l| l.to_lowercase().contains("refused"))
        .count();
    eprintln!(
        "silent: {opened} connections opened in {attacked_for:?}; B held {} for {:?}..{:?} ms; {} new log lines ({refused_lines} about refusals); B's stats {}",
        held.len(),
        held.first(),
        held.last(),
        new_lines.len(),
        ch.b_stats()
    );
    let joined_after = res.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!("D joined {joined_after:?} after it started");
    drop(d);
    delivery.assert_good("silent", 150);
    assert!(opened >= 200, "the attacker opened {opened} connections");
    assert!(
        held.first().is_some_and(|&ms| ms >= 4_500) && held.last().is_some_and(|&ms| ms <= 8_000),
        "silent connections held {:?}..{:?} ms (deadline 5 s)",
        held.first(),
        held.last()
    );
    // Counted: deadlines, refusals for the per-address cap, suppressed log lines.
    let st = ch.b_stats();
    for key in [
        "handshake_timeouts",
        "rejected_unsynced_per_address",
        "log_lines_suppressed",
    ] {
        assert!(st[key].as_u64().is_some_and(|n| n >= 1), "{key}: {st}");
    }
    // Refusals are logged at most a few times a second, with a count, and nothing is logged
    // once per connection.
    assert!(
        refused_lines <= 40,
        "{refused_lines} log lines about refusals for {opened} attacking connections"
    );
    assert!(
        (new_lines.len() as u64) * 10 < opened,
        "{} log lines for {opened} attacking connections",
        new_lines.len()
    );
    assert_rss("silent", &watch, before_kb);
}

/// Keeps up to 100 silent connections from 127.0.0.2 to `port`, re-opening each one B closes
/// (at most 400 connects a second), until `stop`; returns how long it ran.
fn silent_loop(
    port: u16,
    stop: &Arc<AtomicBool>,
    opened: &AtomicU64,
    held: &Arc<std::sync::Mutex<Vec<u64>>>,
) -> Duration {
    let start = Instant::now();
    let live = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if live.load(Ordering::Relaxed) >= 100 {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Ok(mut s) = connect_from([127, 0, 0, 2], port) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        live.fetch_add(1, Ordering::Relaxed);
        let (live, held, stop) = (live.clone(), held.clone(), stop.clone());
        readers.push(thread::spawn(move || {
            let t0 = Instant::now();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let closed_by_b = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stop.load(Ordering::Relaxed) {
                            break false;
                        }
                    }
                    Err(_) => break true,
                }
            };
            let ms = t0.elapsed().as_millis() as u64;
            if closed_by_b && ms >= 500 {
                held.lock().unwrap().push(ms);
            }
            live.fetch_sub(1, Ordering::Relaxed);
        }));
        readers.retain(|r| !r.is_finished());
        thread::sleep(Duration::from_micros(2500));
    }
    for r in readers {
        let _ = r.join();
    }
    start.elapsed()
}

/// The TIME_SYNC/TIME_DELAY flood's rate, frames a second: the issue's figure. Measured on the
/// development machine, main answered every frame and good traffic's p99 stayed within a few
/// ms: 2.6 ms against 3.4 ms unattacked at this rate (also with replies unread, TIME_DELAY
/// relayed to C, or type-0 requests), 5.2 ms at 300,000/s; so on main this test fails on the
/// missing drop counter only, not on the 1.2 s p99 the issue saw. Unpaced, one
/// peer reached 500,000 frames/s on main (p99 600 ms) and 1.2 million with the budget (p99
/// 260 ms): there reading and parsing alone saturate the node, whatever the frames are.
const FLOOD_PER_S: f64 = 60_000.0;

/// Item 8: a joined neighbour sends [`FLOOD_PER_S`] TIME_SYNC and TIME_DELAY requests a
/// second for 8 s. B drops those over its per-link budget and counts them; good traffic loses
/// nothing and its p99 latency stays within 5× that of an unattacked run in the same test
/// (floored at 10 ms). Before the fix: no drop counter.
#[test]
fn time_sync_flood_is_dropped_over_budget() {
    let ch = Chain::start("hostile-time", None);
    let quiet = GoodTraffic::start(&ch.a, &ch.c, "unattacked");
    thread::sleep(Duration::from_secs(8));
    let quiet = quiet.stop();
    quiet.assert_good("unattacked", 70);

    let before_kb = ch.b.rss_kb();
    let watch = RssWatch::start(ch.b.pid());
    let before = ch.b.status();
    let good = GoodTraffic::start(&ch.a, &ch.c, "time flood");
    let mut s = join_as(ch.port(), 888);
    let _d = drain(&s);
    let start = Instant::now();
    let mut frames = 0u64;
    let mut batch = Vec::new();
    for i in 0..300 {
        let ty = if i % 2 == 0 { 4 } else { 3 };
        batch.extend_from_slice(
            format!(r#"{{"type":{ty},"dest":{B},"from":888,"msg":{{"type":1,"t0":{i}}}}}"#)
                .as_bytes(),
        );
        batch.push(0);
    }
    while start.elapsed() < Duration::from_secs(8) {
        let due = start + Duration::from_secs_f64(frames as f64 / FLOOD_PER_S);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        if s.write_all(&batch).is_err() {
            break;
        }
        frames += 300;
    }
    let flood_s = start.elapsed().as_secs_f64();
    let attacked = good.stop();
    let over = |v: &Value| find_counter(v, "time_frames_over_budget");
    let over_before = over(&before).unwrap_or(0);
    // B may still have frames of the flood in its socket buffer: wait until it read them.
    let settled = Instant::now();
    let mut after = ch.b.status();
    while settled.elapsed() < Duration::from_secs(10)
        && over(&after).is_some_and(|n| (n - over_before) * 10 < frames * 9)
    {
        thread::sleep(Duration::from_millis(200));
        after = ch.b.status();
    }
    let base = quiet.quantile(0.99).max(Duration::from_millis(10));
    eprintln!(
        "time flood: {frames} frames in {flood_s:.1} s ({:.0}/s); good p99 {:?} unattacked, {:?} attacked ({}/{} delivered); over budget {:?} → {:?}",
        frames as f64 / flood_s,
        quiet.quantile(0.99),
        attacked.quantile(0.99),
        attacked.delivered,
        attacked.sent,
        over(&before),
        over(&after)
    );
    attacked.assert_good("time flood", 70);
    assert!(
        attacked.quantile(0.99) <= base * 5,
        "good traffic's p99 went from {:?} to {:?} under the flood",
        quiet.quantile(0.99),
        attacked.quantile(0.99)
    );
    assert!(
        frames as f64 >= FLOOD_PER_S * flood_s * 0.8,
        "the flood sent only {frames} frames in {flood_s:.1} s"
    );
    let dropped = over(&after)
        .expect("B's status has a time_frames_over_budget counter")
        .saturating_sub(over_before);
    assert!(
        dropped * 10 >= frames * 9,
        "{dropped} of {frames} time frames dropped over budget"
    );
    assert_rss("time flood", &watch, before_kb);
}

/// Item 9: during a real classic broadcast transfer A→B, an attacker joined to B sends B a
/// Data frame of the same image with `partNo` 2^32 (read as part 0 before the fix, it fixed
/// the chunk size at 3 bytes and stalled the transfer). B rejects and counts it, and installs
/// the real image.
#[test]
fn ota_part_number_over_u32_is_rejected() {
    let b_config = r#"
[ota]
role = "sensor"
hardware = "ESP32"
dir = "{dir}/ota-b"
classic_broadcast_idle = "2s"
classic_broadcast_jitter = "100ms"
"#;
    let ch = Chain::start("hostile-ota", Some(b_config));
    let before_kb = ch.b.rss_kb();
    let watch = RssWatch::start(ch.b.pid());
    let good = GoodTraffic::start(&ch.a, &ch.c, "ota");
    let good_since = Instant::now();
    // The attacker watches B's link for the announce and answers it at once.
    let s = join_as(ch.port(), 999);
    wait_until(Duration::from_secs(5), "999 to join", || {
        ch.b.nodes().contains(&999)
    });
    let attacker = thread::spawn(move || inject_after_announce(s));

    let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let fw = ch.dir.0.join("fw.bin");
    std::fs::write(&fw, &image).unwrap();
    let mut push = Command::new(PMESH)
        .args(["ota", "push"])
        .arg(&fw)
        .args([
            "--role",
            "sensor",
            "--hardware",
            "ESP32",
            "--mode",
            "classic",
        ])
        .args(["--broadcast", "--settle", "3s", "--timeout", "40s"])
        .args(["--control", &ch.a.control.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let injected = attacker.join().unwrap();
    eprintln!("ota: attacker sent {injected}");
    let installed = ch.dir.0.join("ota-b/current.bin");
    let res = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(40),
            "B to install the real image",
            || std::fs::read(&installed).is_ok_and(|b| b == image),
        )
    });
    let _ = push.kill();
    let _ = push.wait();
    let ota = ch.b.request("ota_status", json!({}));
    eprintln!("ota: B's ota_status {ota}");
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
    // The paced classic push installs a 64 KiB image in about a second: good traffic runs at
    // least 25 periods so its delivery figure means something (the scenario, not a wait).
    if let Some(rest) = (GOOD_EVERY * 25).checked_sub(good_since.elapsed()) {
        thread::sleep(rest);
    }
    let d = good.stop();
    d.assert_good("ota", 20);
    let rejected = find_counter(&ota, "frames_rejected");
    assert!(
        rejected.is_some_and(|n| n >= 1),
        "B counted the bad frame: {ota}"
    );
    assert_rss("ota", &watch, before_kb);
}

/// Reads `s` until an OTA Announce (type 10) passes, then sends B a Data frame of that image
/// with `partNo` 2^32 and 3 bytes of data, and one with `partNo` 2^32 + 1; keeps draining.
/// Returns the frame sent.
fn inject_after_announce(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let announce: Value = loop {
        let n = s.read(&mut chunk).expect("B forwards the announce");
        assert!(n > 0, "B closed the attacker's link");
        buf.extend_from_slice(&chunk[..n]);
        let found = buf
            .split(|&b| b == 0)
            .filter_map(|f| serde_json::from_slice::<Value>(f).ok())
            .find(|v| v["type"] == 10);
        if let Some(v) = found {
            break v;
        }
        if let Some(last) = buf.iter().rposition(|&b| b == 0) {
            buf.drain(..=last);
        }
    };
    let mut sent = String::new();
    for part in [1u64 << 32, (1u64 << 32) + 1] {
        let mut data = announce.clone();
        data["type"] = json!(12);
        data["dest"] = json!(B);
        data["partNo"] = json!(part);
        data["data"] = json!("QUFB");
        sent = data.to_string();
        s.write_all(&frame(&sent)).unwrap();
    }
    let _ = drain(&s);
    sent
}
