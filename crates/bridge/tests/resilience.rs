//! Broker restarts, outages, gateway crashes and stale wills.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pmesh_bridge::Bridge;
use serde_json::json;

fn retained_topics(s: &Sub) -> BTreeSet<String> {
    s.all()
        .into_iter()
        .filter(|m| m.retain && !m.payload.is_empty())
        .map(|m| m.topic)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_with_retained_wiped_gets_everything_back_within_5s() {
    let mut broker = Broker::start(None).await;
    let bridge = Bridge::spawn(
        config(broker.port, "restart"),
        1,
        Arc::new(FakeGateway::default()),
    )
    .unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    // 1,000 nodes: every node's state, availability and discovery, and the status topics.
    bridge.topology(star(1, 2..=1000));
    let before = {
        let s = Sub::connect(broker.port, "#").await;
        eventually(10, "the tree published", || {
            retained_or_live(&s).len() >= 3000
        })
        .await;
        // The rest of that publishing round, then a snapshot the broker acknowledged: all of it
        // is retained now.
        assert!(bridge.publish_snapshot().await > 0);
        let s = Sub::connect(broker.port, "#").await;
        s.barrier().await; // every retained message is recorded
        retained_topics(&s)
    };
    assert!(before.len() > 3000, "retained before: {}", before.len());

    // SIGKILL: no goodbye, nothing flushed; restarted without persistence, so empty.
    broker.kill().await;
    eventually(10, "the bridge saw the broker go", || {
        !bridge.status().online
    })
    .await;
    broker.up().await; // persistence false: nothing retained any more
    let up_at = Instant::now();
    let probe = Sub::connect(broker.port, "#").await;
    loop {
        let now = retained_or_live(&probe);
        if before.is_subset(&now) {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(5),
            "after 5 s still missing {:?}",
            before.difference(&now).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "broker killed (SIGKILL) and restarted empty: all {} retained topics back {:?} after it was up again (limit 5 s)",
        before.len(),
        up_at.elapsed()
    );
    // And the broker really holds them as retained now.
    let late = Sub::connect(broker.port, "#").await;
    late.barrier().await; // every retained message is recorded
    assert!(before.is_subset(&retained_topics(&late)));
    assert_eq!(
        late.last("mesh/bridge/state").unwrap().json()["state"],
        "online"
    );
    bridge.shutdown().await;
}

/// Topics seen by a subscriber that was there before the bridge republished (live, not retained).
fn retained_or_live(s: &Sub) -> BTreeSet<String> {
    s.all()
        .into_iter()
        .filter(|m| !m.payload.is_empty())
        .map(|m| m.topic)
        .collect()
}

/// Outage durations. `PMESH_FULL_OUTAGES=1` (set by `.ci/run`): the issue's 20 outages spread
/// over 5–60 s (about 12 minutes with the replays). Default (a developer's `cargo test`): the
/// two ends of that range at full scale, 5 s and 60 s, plus 18 short outages of 0.2–1 s
/// (about 1.5 minutes in all).
fn outage_plan() -> Vec<Duration> {
    let full = std::env::var("PMESH_FULL_OUTAGES").is_ok_and(|v| v == "1");
    // Deterministic spread over the range.
    (0..20u64)
        .map(|i| {
            let f = (i * 7 % 20) as f64 / 19.0;
            if full {
                Duration::from_secs_f64(5.0 + 55.0 * f)
            } else if i == 3 {
                Duration::from_secs(5)
            } else if i == 11 {
                Duration::from_secs(60)
            } else {
                Duration::from_secs_f64(0.2 + 0.8 * f)
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_outages_with_events_flowing_lose_nothing_duplicate_nothing() {
    let mut broker = Broker::start(None).await;
    let gate = Gate::new(broker.addr()).await;
    let mut sub = Sub::connect(broker.port, "mesh/bridge/event").await;
    let mut cfg = config(gate.port, "outages");
    cfg.state_dir = Some(tmpdir("outages"));
    // Events flow at ~160/s here (a topology change every 25 ms, each with a join, a leave and
    // an alert raised and cleared): a 60 s outage queues ~10,000, the default capacity.
    cfg.outbox_capacity = 50_000;
    let bridge = Arc::new(Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap());
    assert!(bridge.wait_online(Duration::from_secs(10)).await);

    // Events flow all the time: node 2..=9 join and leave in turn (join/leave events plus
    // NODE_OFFLINE raised/cleared alerts).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (b, stop) = (bridge.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let missing = 2 + i % 8;
                b.topology(star(1, (2..=9).filter(|n| *n != missing)));
                i += 1;
                // The scenario: a change every 25 ms (the event rate the outages are sized for).
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let plan = outage_plan();
    let mut subs_seen = 0;
    let mut most_queued = 0;
    let started = Instant::now();
    let mut longest_drain = Duration::ZERO;
    for (n, outage) in plan.iter().enumerate() {
        // The scenario: 150–350 ms online between outages, events flowing.
        tokio::time::sleep(Duration::from_millis(150 + (n as u64 * 37) % 200)).await;
        // The backlog of the previous outage is replayed (events still flowing) before the
        // next one starts: back-to-back outages with no time to drain would only measure the
        // outbox's configured capacity, which a long enough run exceeds by design.
        let drain = Instant::now();
        eventually(120, "outbox replayed before the next outage", || {
            bridge.status().outbox < 100
        })
        .await;
        longest_drain = longest_drain.max(drain.elapsed());
        let connections = bridge.status().connections;
        // Graceful stop (SIGTERM), as a broker restart or upgrade does.
        broker.terminate().await;
        gate.set_open(false);
        // The scenario: the outage lasts `outage` (sampling the queue meanwhile).
        let down = Instant::now();
        while down.elapsed() < *outage {
            most_queued = most_queued.max(bridge.status().outbox);
            tokio::time::sleep(Duration::from_millis(20).min(*outage)).await;
        }
        broker.up().await;
        // The recording subscriber is back before the bridge may replay.
        sub.wait_subscribed(subs_seen).await;
        subs_seen = *sub.subscribed.borrow();
        gate.set_open(true);
        // The bridge lives through every outage: it is back before the next one starts.
        eventually(15, "bridge reconnected after the outage", || {
            let st = bridge.status();
            st.online && st.connections > connections
        })
        .await;
    }
    // The scenario: events keep flowing a little after the last outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.await.unwrap();
    // Everything created must reach the subscriber.
    let last = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let st = bridge.status();
            if st.online && st.outbox == 0 {
                return st.last_seq;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("outbox drained");
    // The broker acknowledged the last event, so it is on its way to the subscriber, after
    // every earlier one (one topic, in order). If it never comes, the asserts below say what
    // is missing.
    let received_last = || {
        let msgs = sub.msgs.lock().unwrap();
        msgs.iter()
            .rev()
            .take(100)
            .any(|m| m.json()["seq"].as_u64() == Some(last))
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !received_last() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await; // polling
    }
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    let mut prev_ts = 0u64;
    for m in sub.all() {
        let v = m.json();
        *count.entry(v["seq"].as_u64().unwrap()).or_default() += 1;
        let ts = v["timestamp"].as_u64().unwrap();
        let _ = prev_ts.max(ts);
        prev_ts = ts;
    }
    let missing: Vec<u64> = (1..=last).filter(|s| !count.contains_key(s)).collect();
    let dups: Vec<(u64, usize)> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, c)| (*s, *c))
        .collect();
    eprintln!(
        "{} outages ({:?} .. {:?}, {:?} in all) in {:.0?}, {} events created, {} received, {} missing, {} duplicated, {} connections, at most {} events queued, longest replay {:.1?}",
        plan.len(),
        plan.iter().min().unwrap(),
        plan.iter().max().unwrap(),
        plan.iter().sum::<Duration>(),
        started.elapsed(),
        last,
        count.len(),
        missing.len(),
        dups.len(),
        bridge.status().connections,
        most_queued,
        longest_drain
    );
    assert!(last > 200, "events flowed: {last}");
    assert!(missing.is_empty(), "lost events: {missing:?}");
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    assert_eq!(
        bridge.status().connections,
        1 + plan.len() as u64,
        "one reconnection per outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_outage_delivers_queued_alerts_after_restart() {
    let mut broker = Broker::start(None).await;
    let dir = tmpdir("gwkill");
    let mut cfg = config(broker.port, "gwkill");
    cfg.state_dir = Some(dir.clone());
    let a = Bridge::spawn(cfg.clone(), 1, Arc::new(FakeGateway::default())).unwrap();
    assert!(a.wait_online(Duration::from_secs(10)).await);
    a.topology(star(1, 2..=9));
    // The joins are created and acknowledged by the broker before the outage.
    eventually(5, "the joins delivered", || {
        let s = a.status();
        s.last_seq > 0 && s.outbox == 0
    })
    .await;
    broker.kill().await;
    eventually(5, "the bridge saw the broker go", || !a.status().online).await;
    // During the outage half the mesh drops: node_left, NODE_OFFLINE and PARTITION are queued.
    a.topology(star(1, 2..=4));
    eventually(5, "events queued", || a.status().outbox >= 11).await;
    let queued = a.status().outbox;
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    a.kill().await;

    broker.up().await;
    let sub = Sub::connect(broker.port, "mesh/bridge/event").await;
    let b = Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap();
    assert!(b.wait_online(Duration::from_secs(10)).await);
    sub.wait("mesh/bridge/event", 10, |m| {
        m.json()["data"]["type"] == "PARTITION"
    })
    .await;
    eventually(10, "all queued delivered", || b.status().outbox == 0).await;
    // The broker acknowledged B's last event; it reaches the subscriber after every earlier one.
    let last = b.status().last_seq;
    sub.wait("mesh/bridge/event", 10, |m| {
        m.json()["seq"].as_u64() == Some(last)
    })
    .await;
    let replayed: Vec<serde_json::Value> = sub
        .all()
        .iter()
        .map(|m| m.json())
        .filter(|v| v["timestamp"].as_u64().unwrap() <= killed_at)
        .collect();
    assert_eq!(
        replayed.len(),
        queued,
        "every queued event, with its original timestamp"
    );
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let offline = replayed
        .iter()
        .filter(|v| v["type"] == "alert_raised" && v["data"]["type"] == "NODE_OFFLINE")
        .count();
    assert_eq!(offline, 5);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_last_will_never_leaves_the_bridge_offline() {
    let broker = Broker::start(None).await;
    let bridge = Bridge::spawn(
        config(broker.port, "stale"),
        1,
        Arc::new(FakeGateway::default()),
    )
    .unwrap();
    assert!(bridge.wait_online(Duration::from_secs(10)).await);
    let session = bridge.status().session;
    // An old connection of this bridge (a previous session) dies late: its will fires now.
    let mut o = rumqttc::MqttOptions::new("stale-old-session", "127.0.0.1", broker.port);
    o.set_last_will(rumqttc::LastWill::new(
        "mesh/bridge/state",
        json!({"state": "offline", "session": session - 1}).to_string(),
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let old = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let sub = Sub::connect(broker.port, "mesh/bridge/state").await;
    // The old connection is up (its will registered), then dies.
    tokio::time::timeout(Duration::from_secs(5), connected)
        .await
        .expect("the old session connected")
        .unwrap();
    old.abort(); // socket closed without DISCONNECT: the broker publishes the will
    let _ = old.await;
    // The will is out, and the bridge corrects it after.
    let stale = json!({"state": "offline", "session": session - 1});
    corrected_after(&sub, &stale, session).await;
    let check = Sub::connect(broker.port, "mesh/bridge/state").await;
    let m = check.wait("mesh/bridge/state", 5, |m| m.retain).await;
    assert_eq!(
        m.json(),
        json!({"state": "online", "session": session}),
        "retained state after a stale will"
    );
    // A retained "offline" published by anyone else is corrected too.
    check
        .client
        .publish(
            "mesh/bridge/state",
            rumqttc::QoS::AtLeastOnce,
            true,
            r#"{"state":"offline","session":1}"#,
        )
        .await
        .unwrap();
    corrected_after(&sub, &json!({"state": "offline", "session": 1}), session).await;
    drop(sub);
    let again = Sub::connect(broker.port, "mesh/bridge/state").await;
    let m = again.wait("mesh/bridge/state", 5, |m| m.retain).await;
    assert_eq!(m.json()["state"], "online");
    bridge.shutdown().await;
}

/// Waits until `sub` (on `mesh/bridge/state`) has seen `stale`, then the bridge's own online
/// state (`session`) after it.
async fn corrected_after(sub: &Sub, stale: &serde_json::Value, session: u64) {
    let online = json!({"state": "online", "session": session});
    eventually(10, "the stale state corrected", || {
        let states: Vec<serde_json::Value> = sub
            .on("mesh/bridge/state")
            .iter()
            .map(|m| m.json())
            .collect();
        states
            .iter()
            .position(|v| v == stale)
            .is_some_and(|i| states[i + 1..].contains(&online))
    })
    .await;
}

mod scripted {
    //! A broker that speaks just enough MQTT 3.1.1 to script a connection's end exactly.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let kind = s.read_u8().await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await.ok()?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.ok()?;
        Some((kind, body))
    }

    /// Answers CONNECT and SUBSCRIBE; hands every PUBLISH (topic, packet id, payload) to `on`,
    /// which says whether to acknowledge it and whether to go on. Returns when `on` stops or
    /// the client goes away.
    pub async fn serve(s: &mut TcpStream, mut on: impl FnMut(&str, u16, &[u8]) -> (bool, bool)) {
        while let Some((kind, body)) = packet(s).await {
            let reply: Vec<u8> = match kind >> 4 {
                1 => vec![0x20, 2, 0, 0],
                8 => {
                    // SUBACK: QoS 1 granted to each filter.
                    let k = count_filters(&body[2..]);
                    let mut r = vec![0x90, (2 + k) as u8, body[0], body[1]];
                    r.extend(std::iter::repeat_n(1u8, k));
                    r
                }
                12 => vec![0xd0, 0],
                3 => {
                    let qos = (kind >> 1) & 3;
                    let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = String::from_utf8_lossy(&body[2..2 + tl]).into_owned();
                    let (pkid, payload) = if qos > 0 {
                        (
                            u16::from_be_bytes([body[2 + tl], body[3 + tl]]),
                            &body[4 + tl..],
                        )
                    } else {
                        (0, &body[2 + tl..])
                    };
                    let (ack, go_on) = on(&topic, pkid, payload);
                    if ack && qos > 0 {
                        let id = pkid.to_be_bytes();
                        s.write_all(&[0x40, 2, id[0], id[1]]).await.unwrap();
                    }
                    if !go_on {
                        return;
                    }
                    continue;
                }
                _ => continue,
            };
            s.write_all(&reply).await.unwrap();
        }
    }

    /// Topic filters in a SUBSCRIBE payload (length, filter, QoS byte each).
    fn count_filters(mut b: &[u8]) -> usize {
        let mut n = 0;
        while b.len() >= 3 {
            let l = usize::from(u16::from_be_bytes([b[0], b[1]]));
            b = &b[(2 + l + 1).min(b.len())..];
            n += 1;
        }
        n
    }
}

/// The connection ends while the bridge is still handing over a long replay: every event the
/// broker acknowledged before the end stays acknowledged (it is not sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_acknowledged_before_a_connection_ends_are_not_sent_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = config(port, "replay-cut");
    cfg.outbox_capacity = 50_000;
    cfg.streams.ha_discovery = false;
    cfg.streams.node_state = false;
    cfg.streams.alerts = false;
    // Offline from the start: 32,000 joins and departures wait in the outbox, more than the
    // bridge can hand to its connection task at once, so it is still handing them over when the
    // connection ends. The model keeps at most 4,096 node records, so 4,000 nodes join and leave
    // four times (each a node_joined and a node_left event).
    let bridge = Bridge::spawn(cfg, 1, Arc::new(FakeGateway::default())).unwrap();
    for round in 1..=4 {
        bridge.topology(star(1, 2..=4_001));
        eventually(20, "joins queued", || {
            bridge.status().outbox >= round * 8_000 - 4_000
        })
        .await;
        bridge.topology(star(1, []));
        eventually(20, "departures queued", || {
            bridge.status().outbox >= round * 8_000
        })
        .await;
    }
    let queued = bridge.status().outbox;
    assert_eq!(queued, 32_000, "one event per join and per departure");

    let seq_of = |payload: &[u8]| -> u64 {
        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    // First connection: acknowledge 1,000 events, then vanish.
    let (mut s, _) = listener.accept().await.unwrap();
    let mut acked = BTreeSet::new();
    scripted::serve(&mut s, |topic, _, payload| {
        if topic != "mesh/bridge/event" {
            return (true, true);
        }
        acked.insert(seq_of(payload));
        (true, acked.len() < 1000)
    })
    .await;
    drop(s);
    // Second connection: record what is sent again.
    let (mut s, _) = listener.accept().await.unwrap();
    let mut resent = Vec::new();
    let mut seen = 0;
    scripted::serve(&mut s, |topic, _, payload| {
        if topic == "mesh/bridge/event" {
            let seq = seq_of(payload);
            seen += 1;
            if acked.contains(&seq) {
                resent.push(seq);
            }
        }
        (true, seen < 31_000)
    })
    .await;
    eprintln!(
        "{} events acknowledged before the connection ended; {} of them sent again; {} sent on the next connection",
        acked.len(),
        resent.len(),
        seen
    );
    assert_eq!(acked.len(), 1000);
    assert!(
        resent.is_empty(),
        "acknowledged events sent again: {resent:?}"
    );
    assert_eq!(seen, 31_000, "the rest was replayed");
    bridge.kill().await;
}
