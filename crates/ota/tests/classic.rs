//! Classic painlessMesh OTA end to end on a small in-memory mesh: pmesh's receiver and the
//! stock receiver's behaviour, unicast and broadcast, compression, faults.

mod common;

use common::{Mesh, Spec, Tamper, firmware, frame_type};
use pmesh_ota::classic::PushPace;
use pmesh_ota::codec::{gzip, md5_hex};
use pmesh_ota::{MemorySource, Offer, OtaConfig, OtaEvent, Refusal};

const MIN: u64 = 60_000_000;

fn gateway() -> OtaConfig {
    OtaConfig::new("gateway", "linux")
}

fn pmesh_rx() -> OtaConfig {
    OtaConfig::new("sensor", "ESP32")
}

fn stock_rx() -> OtaConfig {
    OtaConfig::stock("sensor", "ESP32")
}

fn offer(mesh: &mut Mesh, at: usize, o: Offer) {
    mesh.with(at, |ota, ctx| ota.offer(ctx, o))
        .expect("offer accepted");
}

fn run_until_installed(mesh: &mut Mesh, nodes: &[usize], minutes: u64) -> bool {
    let until = mesh.now + minutes * MIN;
    let nodes = nodes.to_vec();
    mesh.run_until(until, |m| nodes.iter().all(|&i| m.installed(i)))
}

#[test]
fn unicast_updates_pmesh_and_stock_receivers() {
    // 0 gateway (root) - 1 pmesh - 2 stock - 3 pmesh, and 4 stock under 1.
    let mut specs = vec![
        Spec::new(100, gateway()),
        Spec::new(101, pmesh_rx()),
        Spec::new(102, stock_rx()),
    ];
    specs.push(Spec::new(103, pmesh_rx()));
    specs.push(Spec::new(104, stock_rx()));
    specs[0].root = true;
    let mut mesh = Mesh::new(specs);
    mesh.link(1, 0);
    mesh.link(2, 1);
    mesh.link(3, 2);
    mesh.link(4, 1);
    mesh.run_for(30.0);
    let image = firmware(20_000, 1);
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())),
    );
    assert!(
        run_until_installed(&mut mesh, &[1, 2, 3, 4], 10),
        "events: {:?}",
        mesh.events
    );
    for i in 1..=4 {
        assert_eq!(
            mesh.sinks[i].booted().as_deref(),
            Some(&image[..]),
            "node {i}"
        );
        let cur = pmesh_ota::OtaStore::current_image(&mesh.stores[i]).unwrap();
        assert_eq!(cur.md5, md5_hex(&image));
    }
    // Classic unicast: 20 chunks to each of 4 receivers at 1, 2, 3 and 2 hops.
    let data = mesh.count("data").frames;
    assert_eq!(
        data,
        20 * (1 + 2 + 3 + 2),
        "each chunk crosses every hop of every receiver's path once"
    );
    // The pmesh receivers kept several requests in flight; progress events came in 1 % steps or finer.
    let progress: Vec<u32> = mesh.events[1]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::Progress { done, .. } => Some(*done),
            _ => None,
        })
        .collect();
    assert_eq!(progress.last(), Some(&20));
}

#[test]
fn wrong_role_or_hardware_is_ignored() {
    let mut specs = vec![
        Spec::new(1, gateway()),
        Spec::new(2, OtaConfig::new("relay", "ESP32")),
    ];
    specs.push(Spec::new(3, OtaConfig::new("sensor", "ESP8266")));
    specs.push(Spec::new(4, OtaConfig::stock("relay", "ESP32")));
    let mut mesh = Mesh::new(specs);
    mesh.tree(3);
    mesh.run_for(30.0);
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(firmware(5000, 2))),
    );
    mesh.run_for(300.0);
    assert_eq!(
        mesh.count("request").frames,
        0,
        "nobody asked for an image not meant for it"
    );
    for i in 1..4 {
        assert!(mesh.sinks[i].pending().is_none() && mesh.sinks[i].booted().is_none());
    }
    assert!(mesh.events[1].iter().any(|e| matches!(
        e,
        OtaEvent::Refused {
            reason: Refusal::WrongRole { .. },
            ..
        }
    )));
    assert!(mesh.events[2].iter().any(|e| matches!(
        e,
        OtaEvent::Refused {
            reason: Refusal::WrongHardware { .. },
            ..
        }
    )));
    // Five announces in five minutes, each refused once only.
    assert_eq!(
        mesh.events[1]
            .iter()
            .filter(|e| matches!(e, OtaEvent::Refused { .. }))
            .count(),
        1
    );
}

#[test]
fn broadcast_from_root_distributor_never_starts_with_stock_nodes_but_does_with_pmesh() {
    // The documented setup: the distributor is the root. Stock receivers wait forever.
    let mut specs: Vec<Spec> = (0..4)
        .map(|i| Spec::new(10 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    specs[0].root = true;
    let mut stock = Mesh::new(specs);
    stock.tree(2);
    stock.run_for(30.0);
    let image = firmware(12_000, 3);
    offer(
        &mut stock,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).broadcast(true),
    );
    stock.run_for(600.0);
    assert_eq!(stock.count("request").frames, 0);
    assert!((1..4).all(|i| !stock.installed(i)));

    // Same mesh with two pmesh receivers among the stock ones: one of them drives the flood,
    // and the stock nodes take every chunk in sequence from it.
    let mut specs: Vec<Spec> = (0..5)
        .map(|i| {
            Spec::new(
                10 + i,
                match i {
                    0 => gateway(),
                    1 | 4 => pmesh_rx(),
                    _ => stock_rx(),
                },
            )
        })
        .collect();
    specs[0].root = true;
    let mut mixed = Mesh::new(specs);
    mixed.tree(2);
    mixed.run_for(30.0);
    offer(
        &mut mixed,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).broadcast(true),
    );
    assert!(
        run_until_installed(&mut mixed, &[1, 2, 3, 4], 15),
        "events: {:?}",
        mixed.events
    );
    for i in 1..5 {
        assert_eq!(
            mixed.sinks[i].booted().as_deref(),
            Some(&image[..]),
            "node {i}"
        );
    }
    // One flood: each chunk once per link (4 links), plus at most a few duplicate floods.
    let chunks = 12;
    let data = mixed.count("data").frames;
    assert!(
        data >= 4 * chunks && data <= 4 * chunks + 8,
        "data frames {data}"
    );
}

#[test]
fn broadcast_missed_chunks_strand_stock_node_but_not_pmesh() {
    // Distributor 1 is not root; root 0 is a stock receiver that wants the image (the one
    // setup in which the reference's broadcast works). Node 2's link flaps mid-flood, so it
    // misses a few chunks. Run once with node 2 stock, once with node 2 pmesh.
    for pmesh in [false, true] {
        let mut specs = vec![Spec::new(20, stock_rx()), Spec::new(21, gateway())];
        specs.push(Spec::new(22, if pmesh { pmesh_rx() } else { stock_rx() }));
        specs.push(Spec::new(23, stock_rx()));
        specs[0].root = true;
        let mut mesh = Mesh::new(specs);
        mesh.link(1, 0);
        let flappy = mesh.link(2, 0);
        mesh.link(3, 0);
        mesh.run_for(30.0);
        let image = firmware(40_000, 4); // 40 chunks
        offer(
            &mut mesh,
            1,
            Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).broadcast(true),
        );
        let seen_10 = mesh.run_until(mesh.now + MIN, |m| {
            m.events[2]
                .iter()
                .any(|e| matches!(e, OtaEvent::Progress { done, .. } if *done >= 10))
        });
        assert!(seen_10);
        mesh.set_link(flappy, false);
        mesh.run_for(0.03);
        mesh.set_link(flappy, true);
        assert!(
            run_until_installed(&mut mesh, &[0, 3], 10),
            "events: {:?}",
            mesh.events
        );
        mesh.run_for(1800.0);
        if pmesh {
            // It asked for what it missed with its own id once the flood went quiet.
            assert!(mesh.installed(2), "{:?}", mesh.events[2]);
            assert_eq!(mesh.sinks[2].booted().as_deref(), Some(&image[..]));
        } else {
            // The stock fallback asked with the root's id: the chunk went to the root, which
            // ignored it; after 10 tries the node gave up. It never installs this rollout.
            assert!(!mesh.installed(2), "stock node should be stuck");
            let stats = mesh.with(2, |ota, _| ota.reference_receiver().unwrap().stats());
            assert!(stats.fallbacks >= 1 && stats.gave_up >= 1, "{stats:?}");
        }
    }
}

#[test]
fn compressed_roundtrip_pmesh_inflates_stock_flashes_gzip() {
    let specs = vec![
        Spec::new(30, gateway()),
        Spec::new(31, pmesh_rx()),
        Spec::new(32, stock_rx()),
    ];
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    let image = firmware(60_000, 5);
    let gz = gzip(&image);
    assert!(gz.len() < image.len() * 3 / 4, "test image should compress");
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).compressed(true),
    );
    assert!(
        run_until_installed(&mut mesh, &[1, 2], 10),
        "events: {:?}",
        mesh.events
    );
    // pmesh inflated while writing: flash holds the image. The MD5 announced is of the gzip.
    assert_eq!(mesh.sinks[1].booted().as_deref(), Some(&image[..]));
    let cur = pmesh_ota::OtaStore::current_image(&mesh.stores[1]).unwrap();
    assert_eq!(cur.md5, md5_hex(&gz));
    assert_eq!(cur.sha256, pmesh_ota::codec::sha256_hex(&image));
    // The stock node writes what it is served: the gzip file.
    assert_eq!(mesh.sinks[2].booted().as_deref(), Some(&gz[..]));
    // Served bytes were gzip: fewer chunks than the raw image would need.
    assert_eq!(
        mesh.count("data").frames as usize,
        gz.len().div_ceil(1024) * 3
    );
}

#[test]
fn corrupted_chunk_never_commits() {
    for stock in [false, true] {
        let specs = vec![
            Spec::new(40, gateway()),
            Spec::new(41, if stock { stock_rx() } else { pmesh_rx() }),
        ];
        let mut mesh = Mesh::new(specs);
        mesh.chain();
        mesh.run_for(30.0);
        // Flip one base64 character of the first Data for part 3 (still valid base64).
        let mut done = false;
        mesh.tamper = Some(Box::new(move |_, _, data: &[u8]| {
            if done
                || frame_type(data) != Some(12)
                || !data.windows(10).any(|w| w == b"\"partNo\":3")
            {
                return Tamper::Pass;
            }
            done = true;
            let mut d = data.to_vec();
            let at = d.windows(8).position(|w| w == b"\"data\":\"").unwrap() + 8;
            d[at] = if d[at] == b'A' { b'B' } else { b'A' };
            Tamper::Replace(d)
        }));
        let image = firmware(8_000, 6);
        offer(
            &mut mesh,
            0,
            Offer::new("sensor", "ESP32", MemorySource::new(image.clone())),
        );
        // First attempt fails the MD5 check; the next announce (60 s later) starts over.
        let failed = mesh.run_until(mesh.now + 5 * MIN, |m| {
            m.events[1].iter().any(|e| {
                matches!(
                    e,
                    OtaEvent::Failed {
                        reason: Refusal::HashMismatch { .. },
                        ..
                    }
                )
            })
        });
        assert!(failed, "stock={stock}: {:?}", mesh.events[1]);
        assert_eq!(
            mesh.sinks[1].stats().commits,
            0,
            "nothing committed after the mismatch"
        );
        assert!(mesh.sinks[1].booted().is_none());
        assert!(
            run_until_installed(&mut mesh, &[1], 10),
            "stock={stock}: {:?}",
            mesh.events[1]
        );
        assert_eq!(mesh.sinks[1].booted().as_deref(), Some(&image[..]));
        assert_eq!(mesh.sinks[1].stats().commits, 1);
    }
}

#[test]
fn seed_offer_checks_md5_and_parts() {
    let image = firmware(3000, 7);
    let md5 = md5_hex(&image);
    assert!(
        Offer::from_seed(
            "s",
            "ESP32",
            &md5,
            3,
            false,
            false,
            false,
            MemorySource::new(image.clone())
        )
        .is_ok()
    );
    let wrong = Offer::from_seed(
        "s",
        "ESP32",
        "00000000000000000000000000000000",
        3,
        false,
        false,
        false,
        MemorySource::new(image.clone()),
    );
    assert!(matches!(wrong, Err(Refusal::HashMismatch { .. })));
    let parts = Offer::from_seed(
        "s",
        "ESP32",
        &md5,
        4,
        false,
        false,
        false,
        MemorySource::new(image.clone()),
    );
    assert!(matches!(parts, Err(Refusal::BadOffer(_))));
    // With `compressed`, md5 and parts describe the gzip served.
    let gz = gzip(&image);
    let ok = Offer::from_seed(
        "s",
        "ESP32",
        &md5_hex(&gz),
        gz.len().div_ceil(1024) as u32,
        false,
        true,
        true,
        MemorySource::new(image),
    );
    assert!(ok.is_ok());
}

#[test]
fn crash_mid_transfer_resumes_classic() {
    let specs = vec![Spec::new(50, gateway()), Spec::new(51, pmesh_rx())];
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    let image = firmware(100_000, 8);
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())),
    );
    let got_some = mesh.run_until(mesh.now + MIN, |m| {
        m.events[1]
            .iter()
            .any(|e| matches!(e, OtaEvent::Progress { done, .. } if *done >= 40))
    });
    assert!(got_some);
    mesh.crash(1);
    mesh.run_for(5.0);
    mesh.restart(1);
    assert!(
        run_until_installed(&mut mesh, &[1], 10),
        "{:?}",
        mesh.events[1]
    );
    assert_eq!(mesh.sinks[1].booted().as_deref(), Some(&image[..]));
    let resumed = mesh.events[1].iter().find_map(|e| match e {
        OtaEvent::Accepted { resumed_from, .. } if *resumed_from > 0 => Some(*resumed_from),
        _ => None,
    });
    assert!(resumed.is_some_and(|r| r >= 40), "resumed from {resumed:?}");
    assert_eq!(
        mesh.sinks[1].stats().begins,
        1,
        "never restarted from chunk 0"
    );
}

#[test]
fn current_image_is_skipped_unless_forced() {
    let image = firmware(6_000, 9);
    let current = pmesh_ota::InstalledImage {
        role: "sensor".into(),
        hardware: "ESP32".into(),
        md5: md5_hex(&image),
        ..Default::default()
    };
    let mut specs = vec![
        Spec::new(60, gateway()),
        Spec::new(61, pmesh_rx()),
        Spec::new(62, stock_rx()),
    ];
    specs[1].store = pmesh_ota::MemoryStore::with_current(current.clone());
    specs[2].store = pmesh_ota::MemoryStore::with_current(current);
    let mut mesh = Mesh::new(specs);
    mesh.tree(2);
    mesh.run_for(30.0);
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())),
    );
    mesh.run_for(120.0);
    assert_eq!(mesh.count("request").frames, 0, "both already run it");
    assert!(mesh.events[1].iter().any(|e| matches!(
        e,
        OtaEvent::Refused {
            reason: Refusal::AlreadyCurrent,
            ..
        }
    )));
    mesh.with(0, |ota, _| ota.cancel_classic(&md5_hex(&image)));
    offer(
        &mut mesh,
        0,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).forced(true),
    );
    assert!(run_until_installed(&mut mesh, &[1, 2], 10));
    assert_eq!(mesh.sinks[1].booted().as_deref(), Some(&image[..]));
    assert_eq!(mesh.sinks[2].booted().as_deref(), Some(&image[..]));
    // The distributor saw both requesters progress.
    let nodes: std::collections::BTreeSet<u32> = mesh.events[0]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::NodeProgress { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    assert_eq!(nodes, [61, 62].into_iter().collect());
}

#[test]
fn broadcast_starts_when_the_root_does_not_want_the_image() {
    // Root 0 is a stock node of another role; the distributor 1 is not root. Stock receivers
    // alone would wait forever; one pmesh receiver drives the flood for everyone.
    let mut specs = vec![
        Spec::new(80, OtaConfig::stock("relay", "ESP32")),
        Spec::new(81, gateway()),
    ];
    specs.push(Spec::new(82, pmesh_rx()));
    specs.push(Spec::new(83, stock_rx()));
    specs.push(Spec::new(84, stock_rx()));
    specs[0].root = true;
    let mut mesh = Mesh::new(specs);
    mesh.tree(2);
    mesh.run_for(30.0);
    let image = firmware(15_000, 10);
    offer(
        &mut mesh,
        1,
        Offer::new("sensor", "ESP32", MemorySource::new(image.clone())).broadcast(true),
    );
    assert!(
        run_until_installed(&mut mesh, &[2, 3, 4], 10),
        "{:?}",
        mesh.events
    );
    for i in 2..5 {
        assert_eq!(mesh.sinks[i].booted().as_deref(), Some(&image[..]));
    }
    assert!(!mesh.installed(0));
}

// ---- Push: the distributor floods Data in order; stock receivers take it unasked. ----

fn push_offer(image: &[u8]) -> Offer {
    Offer::new("sensor", "ESP32", MemorySource::new(image.to_vec())).push(PushPace::default())
}

fn distributor_stats(mesh: &mut Mesh, i: usize) -> pmesh_ota::classic::ClassicDistributorStats {
    mesh.with(i, |ota, _| ota.classic_stats())
}

fn links_of_tree(n: usize) -> u64 {
    n as u64 - 1
}

#[test]
fn push_installs_every_stock_node_from_root_or_not() {
    // 0..=9 in a fan-out-3 tree. Once the distributor is the root (0), once a leaf (9) with a
    // stock root that also wants the image; one pmesh receiver among the stock ones.
    for dist in [0usize, 9] {
        let mut specs: Vec<Spec> = (0..10)
            .map(|i| {
                let cfg = match i {
                    _ if i == dist => gateway(),
                    4 => pmesh_rx(),
                    _ => stock_rx(),
                };
                Spec::new(200 + i as u32, cfg)
            })
            .collect();
        specs[0].root = true;
        let mut mesh = Mesh::new(specs);
        mesh.tree(3);
        mesh.run_for(30.0);
        let image = firmware(30_000, 11); // 30 chunks
        offer(&mut mesh, dist, push_offer(&image));
        let targets: Vec<usize> = (0..10).filter(|&i| i != dist).collect();
        assert!(
            run_until_installed(&mut mesh, &targets, 5),
            "dist {dist}: {:?}",
            mesh.events
        );
        for &i in &targets {
            assert_eq!(
                mesh.sinks[i].booted().as_deref(),
                Some(&image[..]),
                "node {i}"
            );
        }
        // One pass: each chunk crossed each of the 9 links once; a stock root's
        // broadcasted:true requests were left to the pass.
        assert_eq!(
            mesh.count("data").frames,
            30 * links_of_tree(10),
            "dist {dist}"
        );
        let s = distributor_stats(&mut mesh, dist);
        assert_eq!(
            (s.passes, s.chunks_pushed, s.requests_answered),
            (1, 30, 0),
            "{s:?}"
        );
        if dist == 9 {
            assert!(
                s.requests_covered_by_pass > 0,
                "the stock root asked: {s:?}"
            );
        } else {
            assert_eq!(mesh.count("request").frames, 0, "nobody needed to ask");
        }
        // Everyone stayed for the pass (reboots came after it settled): no second pass.
        mesh.run_for(300.0);
        assert_eq!(distributor_stats(&mut mesh, dist).passes, 1);
    }
}

#[test]
fn push_fallback_request_is_answered_by_a_flood() {
    // Chain 0-1-2-3; one Data frame to node 3 is lost. Node 3 falls back to a unicast
    // request carrying `from` 0 (the pushed Data's dest); the chunk comes back flooded with
    // broadcasted:false and node 3 finishes by requests, the others by the pass.
    let specs: Vec<Spec> = (0..4)
        .map(|i| Spec::new(300 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    let mut dropped = false;
    mesh.tamper = Some(Box::new(move |_, to, frame| {
        let part5 =
            frame_type(frame) == Some(12) && frame.windows(10).any(|w| w == b"\"partNo\":5");
        if to == 3 && part5 && !dropped {
            dropped = true;
            return Tamper::Drop;
        }
        Tamper::Pass
    }));
    let image = firmware(20_000, 12);
    offer(&mut mesh, 0, push_offer(&image));
    let ok = run_until_installed(&mut mesh, &[1, 2, 3], 5);
    let r = mesh.with(3, |ota, _| ota.reference_receiver().unwrap().stats());
    let s = distributor_stats(&mut mesh, 0);
    assert!(ok, "{:?} {s:?} {r:?}", mesh.counts);
    assert_eq!(mesh.sinks[3].booted().as_deref(), Some(&image[..]));
    assert!(
        s.requests_flooded >= 15 && s.requests_answered == s.requests_flooded,
        "{s:?}"
    );
    let r = mesh.with(3, |ota, _| ota.reference_receiver().unwrap().stats());
    assert_eq!((r.fallbacks, r.gave_up), (1, 0), "{r:?}");
    for i in [1, 2] {
        let r = mesh.with(i, |ota, _| ota.reference_receiver().unwrap().stats());
        assert_eq!(r.fallbacks, 0, "node {i} followed the pass: {r:?}");
    }
}

#[test]
fn push_later_pass_finishes_late_joiner_and_crashed_node() {
    // Fan-out 2 tree of 7: node 6 joins only after the first pass; node 3 crashes mid-pass
    // and boots again 2 s later (its RAM state gone, its partial image abandoned).
    let specs: Vec<Spec> = (0..7)
        .map(|i| Spec::new(400 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    let mut mesh = Mesh::new(specs);
    let mut late = 0;
    for i in 1..7 {
        let l = mesh.link(i, (i - 1) / 2);
        if i == 6 {
            late = l;
        }
    }
    mesh.set_link(late, false);
    mesh.run_for(30.0);
    let image = firmware(60_000, 13);
    offer(&mut mesh, 0, push_offer(&image));
    let mid = mesh.run_until(mesh.now + MIN, |m| {
        m.events[3]
            .iter()
            .any(|e| matches!(e, OtaEvent::Progress { done, .. } if *done >= 20))
    });
    assert!(mid);
    mesh.crash(3);
    mesh.run_for(2.0);
    mesh.restart(3);
    assert!(run_until_installed(&mut mesh, &[1, 2, 4, 5], 1));
    assert!(!mesh.installed(3), "node 3 lost its place");
    mesh.run_for(10.0);
    mesh.set_link(late, true);
    // The next announce (60 s after the first) finds 3 and 6 uncovered: a second pass.
    assert!(
        run_until_installed(&mut mesh, &[3, 6], 3),
        "{:?}",
        mesh.events
    );
    for i in [3, 6] {
        assert_eq!(
            mesh.sinks[i].booted().as_deref(),
            Some(&image[..]),
            "node {i}"
        );
    }
    let s = distributor_stats(&mut mesh, 0);
    assert_eq!(s.passes, 2, "{s:?}");
    let done: Vec<(u32, u32)> = mesh.events[0]
        .iter()
        .filter_map(|e| match e {
            OtaEvent::PassDone {
                pass, uncovered, ..
            } => Some((*pass, *uncovered)),
            _ => None,
        })
        .collect();
    assert_eq!(
        done[0],
        (1, 1),
        "after pass 1 node 3 was uncovered (6 not in the mesh)"
    );
}

/// Node `i` broadcasts an Alteriom EnhancedStatus (604) saying it runs the image `md5`, as a
/// stock node with the status package does every 30 s (scripted here).
fn report_firmware(mesh: &mut Mesh, i: usize, md5: &str) {
    use pmesh_proto::packages::{EnhancedStatusPackage, Generation, Text};
    let mut p = EnhancedStatusPackage::new(Generation::Head, mesh.id(i));
    p.fw_md5 = Text(md5.as_bytes().to_vec());
    mesh.with(i, |_, ctx| {
        ctx.send(pmesh_proto::Routing::Broadcast, 0, p.to_json())
    })
    .expect("status sent");
}

fn passes_done(mesh: &Mesh, i: usize) -> usize {
    mesh.events[i]
        .iter()
        .filter(|e| matches!(e, OtaEvent::PassDone { .. }))
        .count()
}

const OLD_MD5: &str = "00112233445566778899aabbccddeeff";

#[test]
fn push_skips_late_joiners_that_report_the_offered_image() {
    // 0 gateway - 1 - 2 stock; 3 and 4 (stock) hang under 0 but join only after pass 1.
    // 3 reports the offered image: no pass for it. 4 reports another image, one that 1 was
    // seen to update from: the next announce starts a pass, which installs it.
    let specs: Vec<Spec> = (0..5)
        .map(|i| Spec::new(500 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    let mut mesh = Mesh::new(specs);
    mesh.link(1, 0);
    mesh.link(2, 1);
    let (l3, l4) = (mesh.link(3, 0), mesh.link(4, 0));
    mesh.set_link(l3, false);
    mesh.set_link(l4, false);
    mesh.run_for(30.0);
    report_firmware(&mut mesh, 1, OLD_MD5);
    let image = firmware(20_000, 14);
    let md5 = md5_hex(&image);
    offer(&mut mesh, 0, push_offer(&image));
    assert!(run_until_installed(&mut mesh, &[1, 2], 1));
    mesh.run_for(5.0);
    report_firmware(&mut mesh, 1, &md5);
    mesh.set_link(l3, true);
    mesh.run_for(1.0);
    report_firmware(&mut mesh, 3, &md5.to_uppercase());
    // Two more scheduled announces: 3 is in the mesh, uncovered, but runs the image.
    mesh.run_for(130.0);
    let s = distributor_stats(&mut mesh, 0);
    assert_eq!((s.passes, s.status_reports), (1, 3), "{s:?}");
    assert!(!mesh.installed(3), "no pass reached 3");
    let installed = mesh.with(0, |ota, _| {
        ota.classic_distributor()
            .and_then(|d| d.push_progress(&md5))
            .map(|p| p.installed)
    });
    assert_eq!(installed, Some(vec![501, 503]));
    mesh.set_link(l4, true);
    mesh.run_for(1.0);
    report_firmware(&mut mesh, 4, OLD_MD5);
    assert!(
        run_until_installed(&mut mesh, &[4], 2),
        "{:?}",
        mesh.events[4]
    );
    assert_eq!(mesh.sinks[4].booted().as_deref(), Some(&image[..]));
    assert_eq!(distributor_stats(&mut mesh, 0).passes, 2);
}

#[test]
fn push_repeats_for_a_covered_node_that_reports_its_old_image() {
    // Chain 0-1-2-3 of stock nodes behind a gateway, and 4 under 0: a stock node of another
    // role. Node 3's copy of part 5 is corrupted, so pass 1 covers it but its MD5 check
    // fails. Without reports nothing would tell the distributor; with them:
    // - 3 reporting its old image within the grace (before its reboot, as far as the
    //   distributor knows) changes nothing;
    // - 3 reporting it after the grace, once 1 was seen to update from that image, gets a
    //   second pass, which installs it;
    // - 4 reporting its own image forever starts no pass.
    let mut specs: Vec<Spec> = (0..4)
        .map(|i| Spec::new(600 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    specs.push(Spec::new(604, OtaConfig::stock("relay", "ESP32")));
    let mut mesh = Mesh::new(specs);
    for (a, b) in [(1, 0), (2, 1), (3, 2), (4, 0)] {
        mesh.link(a, b);
    }
    mesh.run_for(30.0);
    let other_role = "ffeeddccbbaa99887766554433221100";
    for i in 1..4 {
        report_firmware(&mut mesh, i, OLD_MD5);
    }
    report_firmware(&mut mesh, 4, other_role);
    let mut done = false;
    mesh.tamper = Some(Box::new(move |_, to, data: &[u8]| {
        if done
            || to != 3
            || frame_type(data) != Some(12)
            || !data.windows(10).any(|w| w == b"\"partNo\":5")
        {
            return Tamper::Pass;
        }
        done = true;
        let mut d = data.to_vec();
        let at = d.windows(8).position(|w| w == b"\"data\":\"").unwrap() + 8;
        d[at] = if d[at] == b'A' { b'B' } else { b'A' };
        Tamper::Replace(d)
    }));
    let image = firmware(20_000, 15);
    let md5 = md5_hex(&image);
    let t0 = mesh.now;
    offer(&mut mesh, 0, push_offer(&image));
    assert!(mesh.run_until(t0 + MIN, |m| passes_done(m, 0) == 1));
    let failed = mesh.events[3].iter().any(|e| {
        matches!(
            e,
            OtaEvent::Failed {
                reason: Refusal::HashMismatch { .. },
                ..
            }
        )
    });
    assert!(failed, "{:?}", mesh.events[3]);
    assert!(mesh.installed(1) && mesh.installed(2));
    mesh.run_for(1.0);
    report_firmware(&mut mesh, 3, OLD_MD5); // within the grace: stale
    mesh.run_for(4.0);
    report_firmware(&mut mesh, 1, &md5);
    report_firmware(&mut mesh, 2, &md5);
    // The announce at t0 + 60 s finds every node covered or done.
    mesh.run_until(t0 + MIN + 30_000_000, |_| false);
    assert_eq!(distributor_stats(&mut mesh, 0).passes, 1);
    report_firmware(&mut mesh, 3, OLD_MD5);
    report_firmware(&mut mesh, 4, other_role);
    assert!(
        run_until_installed(&mut mesh, &[3], 1),
        "{:?}",
        mesh.events[3]
    );
    assert_eq!(mesh.sinks[3].booted().as_deref(), Some(&image[..]));
    assert_eq!(distributor_stats(&mut mesh, 0).passes, 2);
    mesh.run_for(20.0); // past pass 2's settling and the grace
    report_firmware(&mut mesh, 3, &md5);
    report_firmware(&mut mesh, 4, other_role);
    mesh.run_for(190.0);
    let s = distributor_stats(&mut mesh, 0);
    assert_eq!(s.passes, 2, "node 4's own image restarts nothing: {s:?}");
    assert!(!mesh.installed(4));
}

#[test]
fn push_counts_bad_firmware_reports() {
    let specs: Vec<Spec> = (0..2)
        .map(|i| Spec::new(700 + i, if i == 0 { gateway() } else { stock_rx() }))
        .collect();
    let mut mesh = Mesh::new(specs);
    mesh.chain();
    mesh.run_for(30.0);
    offer(&mut mesh, 0, push_offer(&firmware(5_000, 16)));
    report_firmware(&mut mesh, 1, "not an md5");
    report_firmware(&mut mesh, 1, OLD_MD5);
    mesh.run_for(1.0);
    let s = distributor_stats(&mut mesh, 0);
    assert_eq!((s.status_reports, s.status_reports_bad), (1, 1), "{s:?}");
}
