//! Staged campaigns (issue 15): plan parsing, the state machine on a simulated fleet in
//! virtual time, thresholds, operator commands, health-gate failures, save and restore.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use pmesh_node::Instant;
use pmesh_ota::campaign::{
    Action, Campaign, DecodeError, FailReason, HaltReason, HealthGate, InputError, MetricBounds,
    NodePhase, NodeReport, Plan, PlanError, Span, Status, Threshold, TransferOutcome, WaveSpec,
    Waves,
};

const S: u64 = 1_000_000;
const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";
const SEED: u64 = 0x15;

fn t(secs: u64) -> Instant {
    Instant::from_micros(secs * S)
}

fn gate() -> HealthGate {
    HealthGate {
        transfer_deadline: Duration::from_secs(600),
        return_deadline: Duration::from_secs(60),
        soak: Duration::from_secs(120),
        max_silence: Duration::from_secs(45),
        heap_floor: 20_000,
        max_reboots: 2,
        metric: None,
    }
}

fn plan(waves: &str, max_failures: &str) -> Plan {
    let mut p = Plan::new(waves.parse().unwrap(), max_failures.parse().unwrap());
    p.gate = gate();
    p
}

fn fleet(n: u32) -> Vec<u32> {
    (0..n).map(|i| 0x1000_0000 + i * 7).collect()
}

/// A fixed 30 % of the nodes (by a hash of the id) crash-loop on the bad image.
fn crash_loops(id: u32) -> bool {
    id.wrapping_mul(2_654_435_761) % 100 < 30
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Download(u32),
    Verify(u32),
    Apply(u32),
    Report(u32),
    Reverted(u32),
}

#[derive(Clone, Debug, Default)]
struct SimNode {
    new_image: bool,
    boots: u32,
    applied_at: u64,
}

/// A simulated fleet around a campaign: transfers, reboots, periodic reports, crash loops
/// and reverts, in virtual time driven by the events and the campaign's own deadlines.
struct Fleet {
    c: Campaign,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    nodes: BTreeMap<u32, SimNode>,
    bad: fn(u32) -> bool,
    transfer_fails: fn(u32) -> bool,
    log: Vec<(u64, Action)>,
    ran_new: BTreeSet<u32>,
    cancelled: BTreeSet<u32>,
}

impl Fleet {
    fn new(plan: &Plan, n: u32, bad: fn(u32) -> bool) -> Fleet {
        let ids = fleet(n);
        let mut c = Campaign::new(plan, NEW, &ids, SEED, Instant::ZERO).unwrap();
        let nodes: BTreeMap<u32, SimNode> = ids.iter().map(|&i| (i, SimNode::default())).collect();
        for &id in &ids {
            let r = NodeReport {
                node: id,
                at: Instant::ZERO,
                version: OLD,
                free_heap: 90_000,
                boots: 0,
                metric: None,
            };
            c.handle_report(&r).unwrap();
        }
        Fleet {
            c,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            bad,
            transfer_fails: |_| false,
            log: Vec::new(),
            ran_new: BTreeSet::new(),
            cancelled: BTreeSet::new(),
        }
    }

    fn at(&mut self, after: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq, ev)));
    }

    fn drain_actions(&mut self) {
        while let Some(a) = self.c.poll_action() {
            match &a {
                Action::StartWave { nodes, .. } => {
                    for (k, &n) in nodes.iter().enumerate() {
                        self.at((1 + k as u64 % 10) * S, Ev::Download(n));
                    }
                }
                Action::Revert { nodes } => {
                    nodes.iter().for_each(|&n| self.at(5 * S, Ev::Reverted(n)))
                }
                Action::Cancel { nodes } => self.cancelled.extend(nodes),
                _ => {}
            }
            self.log.push((self.now, a));
        }
    }

    fn report(&mut self, id: u32) {
        let n = &self.nodes[&id];
        let version = if n.new_image { NEW } else { OLD };
        let r = NodeReport {
            node: id,
            at: Instant::from_micros(self.now),
            version,
            free_heap: 90_000,
            boots: n.boots,
            metric: None,
        };
        self.c.handle_report(&r).unwrap();
    }

    fn transfer(&mut self, id: u32, o: TransferOutcome) {
        self.c
            .handle_transfer(id, o, Instant::from_micros(self.now))
            .unwrap();
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Download(n) | Ev::Verify(n) | Ev::Apply(n) if self.cancelled.contains(&n) => {}
            Ev::Download(n) => {
                self.transfer(n, TransferOutcome::Downloading);
                self.at(20 * S, Ev::Verify(n));
            }
            Ev::Verify(n) if (self.transfer_fails)(n) => self.transfer(n, TransferOutcome::Failed),
            Ev::Verify(n) => {
                self.transfer(n, TransferOutcome::Verified);
                self.at(5 * S, Ev::Apply(n));
            }
            Ev::Apply(n) => {
                self.transfer(n, TransferOutcome::Applied);
                let now = self.now;
                let node = self.nodes.get_mut(&n).unwrap();
                (node.new_image, node.boots, node.applied_at) = (true, node.boots + 1, now);
                self.ran_new.insert(n);
                self.at(10 * S, Ev::Report(n));
            }
            Ev::Report(n) => self.periodic_report(n),
            Ev::Reverted(n) => {
                let node = self.nodes.get_mut(&n).unwrap();
                (node.new_image, node.boots) = (false, node.boots + 1);
                self.report(n);
            }
        }
    }

    /// Good nodes report every 20 s for 400 s after apply; a crash-looping node on the new
    /// image reboots every 15 s (its boot counter rises at each report).
    fn periodic_report(&mut self, id: u32) {
        let crash = self.nodes[&id].new_image && (self.bad)(id);
        if crash && self.now > self.nodes[&id].applied_at + 10 * S {
            self.nodes.get_mut(&id).unwrap().boots += 1;
        }
        self.report(id);
        if self.now < self.nodes[&id].applied_at + 400 * S {
            self.at(if crash { 15 } else { 20 } * S, Ev::Report(id));
        }
    }

    /// Runs until `limit` seconds or until nothing is left to happen.
    fn run_until(&mut self, limit: u64) {
        self.drain_actions();
        loop {
            let ev_at = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let tick_at = self.c.poll_timeout().map(Instant::as_micros);
            let Some(next) = [ev_at, tick_at].into_iter().flatten().min() else {
                break;
            };
            if next > limit * S {
                break;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((at, _, ev))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                self.event(ev);
                self.drain_actions();
            }
            self.c.handle_tick(Instant::from_micros(self.now));
            self.drain_actions();
        }
    }

    fn started_waves(&self) -> Vec<u32> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::StartWave { wave, .. } => Some(*wave),
                _ => None,
            })
            .collect()
    }

    fn phases(&self) -> Vec<(u32, u32, NodePhase)> {
        self.c.nodes().collect()
    }
}

#[test]
fn bad_image_halts_in_the_first_wave_and_its_trial_nodes_revert() {
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 1000, crash_loops);
    let wave0: BTreeSet<u32> = f.c.waves().next().unwrap().iter().copied().collect();
    assert_eq!(wave0.len(), 50);
    let bad_in_wave0 = wave0.iter().filter(|&&n| crash_loops(n)).count();
    assert!(
        bad_in_wave0 >= 3,
        "the fixture must put more than 5 % bad nodes in wave 0: {bad_in_wave0}"
    );

    // Watch the phases at the instant of the halt (the Revert is polled right after it).
    f.run_until(3600);
    assert_eq!(f.started_waves(), vec![0], "no wave after the first");
    let halted: Vec<_> = f
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Halted { .. }))
        .collect();
    assert_eq!(halted.len(), 1);
    let (halt_at, Action::Halted { wave: 0, reason }) = halted[0].clone() else {
        panic!("{halted:?}")
    };
    assert_eq!(
        reason,
        HaltReason::TooManyFailures {
            failures: 3,
            allowed: 2
        }
    );
    assert!(halt_at < 200 * S, "halted after {} s", halt_at / S);

    assert!(
        f.ran_new.len() <= 50 && f.ran_new.is_subset(&wave0),
        "only wave 0 ever ran the image"
    );
    let revert: BTreeSet<u32> = f
        .log
        .iter()
        .find_map(|(_, a)| match a {
            Action::Revert { nodes } => Some(nodes.iter().copied().collect()),
            _ => None,
        })
        .unwrap();
    // Every node that applied the image and is not a transfer failure or self-revert was
    // told to revert: all of those on trial at the halt, and the crash-looping failures.
    let expected: BTreeSet<u32> = f.ran_new.clone();
    assert_eq!(revert, expected);
    for &n in &revert {
        assert!(!f.nodes[&n].new_image, "node {n} still on the bad image");
        let (_, phase) = f.c.node(n).unwrap();
        assert!(
            matches!(
                phase,
                NodePhase::Reverted | NodePhase::Failed(FailReason::RebootLoop)
            ),
            "{n}: {phase:?}"
        );
    }
    let reverted = revert
        .iter()
        .filter(|&&n| f.c.node(n).unwrap().1 == NodePhase::Reverted)
        .count();
    assert!(
        reverted > 0,
        "some nodes were on trial when the campaign halted"
    );
    // Those not yet applied were cancelled and never got the image.
    let cancel = f.log.iter().find_map(|(_, a)| match a {
        Action::Cancel { nodes } => Some(nodes.clone()),
        _ => None,
    });
    if let Some(cancel) = cancel {
        assert!(
            cancel
                .iter()
                .all(|n| wave0.contains(n) && !f.ran_new.contains(n))
        );
    }
    assert!(matches!(f.c.status(), Status::Halted { wave: 0, .. }));
    eprintln!(
        "halted at {} s: {} of wave 0's 50 nodes ran the image ({bad_in_wave0} crash-loop), {} told to revert, {reverted} reverted from trial",
        halt_at / S,
        f.ran_new.len(),
        revert.len()
    );
}

#[test]
fn good_image_completes_every_wave() {
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 1000, |_| false);
    f.run_until(24 * 3600);
    assert_eq!(f.started_waves(), vec![0, 1, 2]);
    let sizes: Vec<usize> = f.c.waves().map(<[u32]>::len).collect();
    assert_eq!(sizes, vec![50, 150, 800]);
    let last = f.log.last().unwrap().1.clone();
    assert_eq!(
        last,
        Action::Finished {
            confirmed: 1000,
            failed: 0,
            left_out: 0
        }
    );
    assert_eq!(f.c.status(), Status::Finished);
    assert!(
        f.phases()
            .iter()
            .all(|(_, _, p)| *p == NodePhase::Confirmed)
    );
    assert_eq!(f.c.rejected(), 0);
}

#[test]
fn failures_within_the_threshold_do_not_halt() {
    // ~1 % of transfers fail: within 5 % of every wave.
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 1000, |_| false);
    f.transfer_fails = |id| id.wrapping_mul(40_503) % 100 == 0;
    let expected_failed = fleet(1000)
        .into_iter()
        .filter(|&id| (f.transfer_fails)(id))
        .count() as u32;
    assert!(expected_failed > 0);
    f.run_until(24 * 3600);
    let last = f.log.last().unwrap().1.clone();
    assert_eq!(
        last,
        Action::Finished {
            confirmed: 1000 - expected_failed,
            failed: expected_failed,
            left_out: 0
        }
    );
}

#[test]
fn save_and_restore_mid_wave_gives_the_same_campaign() {
    let p = plan("5%,20%,100%", "5%");
    let mut straight = Fleet::new(&p, 1000, |_| false);
    straight.transfer_fails = |id| id % 97 == 0;
    straight.run_until(24 * 3600);

    let mut resumed = Fleet::new(&p, 1000, |_| false);
    resumed.transfer_fails = |id| id % 97 == 0;
    // Run into wave 1, then restart "the gateway": only the saved bytes survive.
    resumed.run_until(200);
    assert_eq!(resumed.started_waves(), vec![0, 1], "saved mid-wave 1");
    let bytes = resumed.c.to_bytes();
    let restored = Campaign::from_bytes(&bytes).unwrap();
    assert_eq!(restored, resumed.c);
    resumed.c = restored;
    resumed.run_until(24 * 3600);

    assert_eq!(resumed.log, straight.log);
    assert_eq!(resumed.phases(), straight.phases());
    assert_eq!(resumed.c.status(), Status::Finished);
}

#[test]
fn restore_refuses_damaged_bytes() {
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 100, crash_loops);
    f.run_until(60);
    let bytes = f.c.to_bytes();
    for len in 0..bytes.len() {
        assert!(
            Campaign::from_bytes(&bytes[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert_eq!(Campaign::from_bytes(&b), Err(DecodeError::NotACampaign));
    let mut b = bytes.clone();
    b[4] = 9;
    assert_eq!(Campaign::from_bytes(&b), Err(DecodeError::Version(9)));
    let mut b = bytes.clone();
    b.push(0);
    assert_eq!(Campaign::from_bytes(&b), Err(DecodeError::TrailingBytes));
    // Flipping any byte never panics.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = Campaign::from_bytes(&b);
    }
}

#[test]
fn pause_holds_the_next_wave_and_resume_starts_it() {
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 1000, |_| false);
    f.c.pause().unwrap();
    f.run_until(3600);
    assert_eq!(f.started_waves(), vec![0]);
    assert_eq!(f.c.status(), Status::Paused);
    let wave0: Vec<u32> = f.c.waves().next().unwrap().to_vec();
    assert!(
        wave0
            .iter()
            .all(|&n| f.c.node(n).unwrap().1 == NodePhase::Confirmed),
        "wave 0 ran its gates while paused"
    );
    assert_eq!(f.c.pause(), Err(InputError::NotNow));

    f.c.resume(Instant::from_micros(f.now)).unwrap();
    f.run_until(24 * 3600);
    assert_eq!(f.started_waves(), vec![0, 1, 2]);
    assert_eq!(f.c.status(), Status::Finished);
    assert_eq!(f.c.rejected(), 1);
}

#[test]
fn abort_reverts_trial_nodes_and_cancels_the_rest() {
    let mut f = Fleet::new(&plan("5%,20%,100%", "5%"), 1000, |_| false);
    // Wave 0 applies between 26 s and 35 s: abort in the middle.
    f.run_until(28);
    let before: BTreeMap<u32, NodePhase> = f.c.nodes().map(|(id, _, p)| (id, p)).collect();
    f.c.abort().unwrap();
    f.drain_actions();
    let tail: Vec<Action> = f
        .log
        .iter()
        .map(|(_, a)| a.clone())
        .skip_while(|a| !matches!(a, Action::Halted { .. }))
        .collect();
    assert_eq!(
        tail[0],
        Action::Halted {
            wave: 0,
            reason: HaltReason::Aborted
        }
    );
    let on_trial: Vec<u32> = before
        .iter()
        .filter(|(_, p)| p.on_trial())
        .map(|(&id, _)| id)
        .collect();
    let not_applied: Vec<u32> =
        f.c.waves()
            .next()
            .unwrap()
            .iter()
            .copied()
            .filter(|n| {
                matches!(
                    before[n],
                    NodePhase::Pending | NodePhase::Downloading | NodePhase::Verified
                )
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    assert!(
        !on_trial.is_empty() && !not_applied.is_empty(),
        "abort while wave 0 is half applied"
    );
    assert_eq!(
        tail[1],
        Action::Revert {
            nodes: on_trial.clone()
        }
    );
    assert_eq!(tail[2], Action::Cancel { nodes: not_applied });
    f.run_until(3600);
    assert!(
        on_trial
            .iter()
            .all(|&n| f.c.node(n).unwrap().1 == NodePhase::Reverted)
    );
    assert_eq!(f.c.resume(t(3600)), Err(InputError::NotNow));
    assert_eq!(f.c.abort(), Err(InputError::NotNow));
    assert_eq!(f.started_waves(), vec![0]);
}

/// A 20-node campaign driven by hand.
fn small(waves: &str, max_failures: &str) -> Campaign {
    let mut c = Campaign::new(
        &plan(waves, max_failures),
        NEW,
        &fleet(20),
        SEED,
        Instant::ZERO,
    )
    .unwrap();
    for id in fleet(20) {
        let r = NodeReport {
            node: id,
            at: Instant::ZERO,
            version: OLD,
            free_heap: 90_000,
            boots: 3,
            metric: None,
        };
        c.handle_report(&r).unwrap();
    }
    c
}

fn actions(c: &mut Campaign) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn wave(c: &Campaign, i: usize) -> Vec<u32> {
    c.waves().nth(i).unwrap().to_vec()
}

/// Applies the image on `node` at `at` and has it come back healthy 5 s later.
fn apply_and_return(c: &mut Campaign, node: u32, at: u64) {
    c.handle_transfer(node, TransferOutcome::Applied, t(at))
        .unwrap();
    let r = NodeReport {
        node,
        at: t(at + 5),
        version: NEW,
        free_heap: 90_000,
        boots: 4,
        metric: None,
    };
    c.handle_report(&r).unwrap();
}

/// Healthy reports from `nodes` and a tick every 30 s from `from`, and a last tick at `to`.
fn soak(c: &mut Campaign, nodes: &[u32], from: u64, to: u64) {
    for s in (from..to).step_by(30) {
        nodes.iter().for_each(|&n| healthy(c, n, s));
        c.handle_tick(t(s));
    }
    c.handle_tick(t(to));
}

fn healthy(c: &mut Campaign, node: u32, at: u64) {
    let r = NodeReport {
        node,
        at: t(at),
        version: NEW,
        free_heap: 90_000,
        boots: 4,
        metric: None,
    };
    c.handle_report(&r).unwrap();
}

#[test]
fn threshold_by_count() {
    let mut c = small("10,100%", "1");
    let w0 = wave(&c, 0);
    assert_eq!(w0.len(), 10);
    actions(&mut c);
    c.handle_transfer(w0[0], TransferOutcome::Failed, t(1))
        .unwrap();
    assert_eq!(c.status(), Status::Running, "one failure is allowed");
    c.handle_transfer(w0[1], TransferOutcome::Failed, t(2))
        .unwrap();
    assert_eq!(
        c.status(),
        Status::Halted {
            wave: 0,
            reason: HaltReason::TooManyFailures {
                failures: 2,
                allowed: 1
            }
        }
    );
    // Nobody applied: everyone else is cancelled, nobody reverts.
    let a = actions(&mut c);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        a[1],
        Action::Cancel {
            nodes: {
                let mut v = w0[2..].to_vec();
                v.sort();
                v
            }
        }
    );
    // A cancelled node that applied anyway (the cancel raced the transfer) is told to revert.
    c.handle_transfer(w0[2], TransferOutcome::Applied, t(3))
        .unwrap();
    assert_eq!(actions(&mut c), vec![Action::Revert { nodes: vec![w0[2]] }]);
    let r = NodeReport {
        node: w0[2],
        at: t(9),
        version: OLD,
        free_heap: 90_000,
        boots: 4,
        metric: None,
    };
    c.handle_report(&r).unwrap();
    assert_eq!(c.node(w0[2]).unwrap().1, NodePhase::Reverted);
}

#[test]
fn threshold_by_percentage_and_early_advance_on_min_success() {
    // 50 % of 20 = 10 nodes in wave 0; 10 % of 10 allows 1 failure; min_success 80 % = 8.
    let mut p = plan("50%,100%", "10%");
    p.min_success = Some(Threshold::Percent(80));
    let mut c = Campaign::new(&p, NEW, &fleet(20), SEED, Instant::ZERO).unwrap();
    actions(&mut c);
    let w0 = wave(&c, 0);
    for (i, &n) in w0.iter().enumerate().take(8) {
        apply_and_return(&mut c, n, i as u64);
    }
    for s in (30..=150).step_by(30) {
        w0.iter().take(8).for_each(|&n| healthy(&mut c, n, s));
        c.handle_tick(t(s));
    }
    // 8 confirmed while 2 are still in flight: the next wave starts.
    assert_eq!(
        actions(&mut c),
        vec![Action::StartWave {
            wave: 1,
            nodes: wave(&c, 1)
        }]
    );
    // A straggler of wave 0 fails: 1 allowed; the second crosses 10 %.
    c.handle_transfer(w0[8], TransferOutcome::Failed, t(150))
        .unwrap();
    assert_eq!(c.status(), Status::Running);
    c.handle_transfer(w0[9], TransferOutcome::Failed, t(151))
        .unwrap();
    assert_eq!(
        c.status(),
        Status::Halted {
            wave: 0,
            reason: HaltReason::TooManyFailures {
                failures: 2,
                allowed: 1
            }
        }
    );
}

#[test]
fn waves_that_need_no_confirmation_start_together() {
    // max_failures 100 %: no wave waits for the one before (all at once, watched).
    let mut c = Campaign::new(
        &plan("10%,50%,100%", "100%"),
        NEW,
        &fleet(20),
        SEED,
        Instant::ZERO,
    )
    .unwrap();
    let started: Vec<u32> = actions(&mut c)
        .into_iter()
        .filter_map(|a| match a {
            Action::StartWave { wave, .. } => Some(wave),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![0, 1, 2]);
}

#[test]
fn nodes_without_transfer_progress_fail_instead_of_stalling_the_wave() {
    let mut c = small("10,100%", "1");
    actions(&mut c);
    let w0 = wave(&c, 0);
    assert_eq!(c.poll_timeout(), Some(t(600)));
    // Progress restarts the deadline for w0[0]; w0[1] got as far as Downloading; the rest nothing.
    c.handle_transfer(w0[0], TransferOutcome::Downloading, t(100))
        .unwrap();
    c.handle_transfer(w0[1], TransferOutcome::Downloading, t(100))
        .unwrap();
    c.handle_transfer(w0[0], TransferOutcome::Downloading, t(500))
        .unwrap();
    c.handle_tick(t(599));
    assert_eq!(c.status(), Status::Running);
    c.handle_tick(t(700));
    assert_eq!(
        c.node(w0[1]).unwrap().1,
        NodePhase::Failed(FailReason::TransferFailed)
    );
    assert_eq!(c.node(w0[0]).unwrap().1, NodePhase::Downloading);
    assert_eq!(
        c.status(),
        Status::Halted {
            wave: 0,
            reason: HaltReason::TooManyFailures {
                failures: 9,
                allowed: 1
            }
        }
    );
    // The later wave's nodes were never ticked; after the halt, nothing is.
    assert!(
        wave(&c, 1)
            .iter()
            .all(|&n| c.node(n).unwrap().1 == NodePhase::Pending)
    );
    assert_eq!(c.poll_timeout(), None);
    c.handle_tick(t(10_000));
    assert_eq!(c.node(w0[0]).unwrap().1, NodePhase::Downloading);
}

#[test]
fn contradictory_thresholds_are_refused() {
    // min_success 5 + 5 allowed failures = 10: every wave either confirms 5 or fails 6.
    let mut p = plan("10,100%", "50%");
    p.min_success = Some(Threshold::Count(5));
    let mut c = Campaign::new(&p, NEW, &fleet(20), SEED, Instant::ZERO).unwrap();
    let w0 = wave(&c, 0);
    for (i, &n) in w0.iter().enumerate().take(5) {
        c.handle_transfer(n, TransferOutcome::Failed, t(i as u64))
            .unwrap();
    }
    assert_eq!(
        c.status(),
        Status::Running,
        "5 failures of 10 allowed, 5 can still confirm"
    );
    let _ = actions(&mut c);
    apply_and_return(&mut c, w0[5], 10);
    c.handle_transfer(w0[6], TransferOutcome::Failed, t(11))
        .unwrap();
    assert_eq!(
        c.status(),
        Status::Halted {
            wave: 0,
            reason: HaltReason::TooManyFailures {
                failures: 6,
                allowed: 5
            }
        }
    );

    let mut p = plan("10,100%", "0");
    p.min_success = Some(Threshold::Count(10));
    assert!(Campaign::new(&p, NEW, &fleet(20), SEED, Instant::ZERO).is_ok());
    p.max_failures = Threshold::Count(1);
    assert_eq!(
        Campaign::new(&p, NEW, &fleet(20), SEED, Instant::ZERO),
        Err(PlanError::Contradictory)
    );
}

#[test]
fn health_gate_failures_have_typed_reasons() {
    let mut p = plan("100%", "100%");
    p.gate.metric = Some(MetricBounds { min: -80, max: -20 });
    let mut c = Campaign::new(&p, NEW, &fleet(8), SEED, Instant::ZERO).unwrap();
    let ids = fleet(8);
    for &id in &ids {
        let r = NodeReport {
            node: id,
            at: Instant::ZERO,
            version: OLD,
            free_heap: 90_000,
            boots: 3,
            metric: None,
        };
        c.handle_report(&r).unwrap();
        c.handle_transfer(id, TransferOutcome::Applied, t(1))
            .unwrap();
    }
    let rep = |node, at, version, free_heap, boots, metric| NodeReport {
        node,
        at: t(at),
        version,
        free_heap,
        boots,
        metric,
    };
    // A report from before the reboot (boot counter unchanged) is not a self-revert.
    c.handle_report(&rep(ids[0], 2, OLD, 90_000, 3, None))
        .unwrap();
    assert_eq!(c.node(ids[0]).unwrap().1, NodePhase::Applied);
    c.handle_report(&rep(ids[0], 6, OLD, 90_000, 4, None))
        .unwrap();
    c.handle_report(&rep(ids[1], 6, "0.9-rc", 90_000, 4, None))
        .unwrap();
    c.handle_report(&rep(ids[2], 6, NEW, 5_000, 4, None))
        .unwrap();
    c.handle_report(&rep(ids[3], 6, NEW, 90_000, 4, Some(-95)))
        .unwrap();
    for (k, at) in [(4, 6), (5, 20), (6, 35), (7, 50)] {
        c.handle_report(&rep(ids[4], at, NEW, 90_000, k, Some(-50)))
            .unwrap();
    }
    c.handle_report(&rep(ids[5], 6, NEW, 90_000, 4, Some(-50)))
        .unwrap(); // then silence
    // ids[6] never comes back; ids[7] stays healthy.
    for at in (6..=130).step_by(20) {
        c.handle_report(&rep(ids[7], at, NEW, 90_000, 4, Some(-50)))
            .unwrap();
        c.handle_tick(t(at));
    }
    let phase = |c: &Campaign, i: usize| c.node(ids[i]).unwrap().1;
    use FailReason as F;
    let expected = [
        F::RevertedItself,
        F::VersionMismatch,
        F::HeapFloor,
        F::MetricOutOfBounds,
        F::RebootLoop,
        F::WentSilent,
        F::NeverCameBack,
    ];
    for (i, reason) in expected.into_iter().enumerate() {
        assert_eq!(phase(&c, i), NodePhase::Failed(reason), "node {i}");
    }
    assert_eq!(phase(&c, 7), NodePhase::Confirmed);
}

#[test]
fn bad_inputs_are_refused_and_counted() {
    let mut c = small("10,100%", "1");
    let w1 = wave(&c, 1);
    assert_eq!(
        c.handle_transfer(7, TransferOutcome::Applied, t(1)),
        Err(InputError::UnknownNode(7))
    );
    assert_eq!(
        c.handle_transfer(w1[0], TransferOutcome::Applied, t(1)),
        Err(InputError::WaveNotStarted(w1[0]))
    );
    let w0 = wave(&c, 0);
    c.handle_transfer(w0[0], TransferOutcome::Failed, t(1))
        .unwrap();
    assert_eq!(
        c.handle_transfer(w0[0], TransferOutcome::Applied, t(2)),
        Err(InputError::OutOfOrder(w0[0]))
    );
    let r = NodeReport {
        node: 9,
        at: t(3),
        version: NEW,
        free_heap: 1,
        boots: 1,
        metric: None,
    };
    assert_eq!(c.handle_report(&r), Err(InputError::UnknownNode(9)));
    // Transfer news for a node that already applied does not restart its deadlines.
    c.handle_transfer(w0[1], TransferOutcome::Applied, t(3))
        .unwrap();
    for o in [
        TransferOutcome::Downloading,
        TransferOutcome::Verified,
        TransferOutcome::Applied,
    ] {
        assert_eq!(
            c.handle_transfer(w0[1], o, t(50)),
            Err(InputError::OutOfOrder(w0[1]))
        );
    }
    c.handle_tick(t(63));
    assert_eq!(
        c.node(w0[1]).unwrap().1,
        NodePhase::Failed(FailReason::NeverCameBack)
    );
    assert_eq!(c.rejected(), 7);
    assert_eq!(
        c.node(w0[0]).unwrap().1,
        NodePhase::Failed(FailReason::TransferFailed)
    );
}

#[test]
fn assignment_is_deterministic_and_independent_of_fleet_order() {
    let p = plan("5%,20%,100%", "5%");
    let ids = fleet(1000);
    let mut rev = ids.clone();
    rev.reverse();
    let a = Campaign::new(&p, NEW, &ids, SEED, Instant::ZERO).unwrap();
    let b = Campaign::new(&p, NEW, &rev, SEED, Instant::ZERO).unwrap();
    let c = Campaign::new(&p, NEW, &ids, SEED + 1, Instant::ZERO).unwrap();
    let waves = |c: &Campaign| c.waves().map(<[u32]>::to_vec).collect::<Vec<_>>();
    assert_eq!(waves(&a), waves(&b));
    assert_ne!(waves(&a), waves(&c));
    // Not sorted ids: wave 0 is a sample of the whole fleet.
    let w0 = &waves(&a)[0];
    assert!(w0.iter().any(|&n| n > ids[500]) && w0.iter().any(|&n| n < ids[500]));
    let all: BTreeSet<u32> = waves(&a).concat().into_iter().collect();
    assert_eq!(all.len(), 1000);
}

#[test]
fn explicit_lists_and_partial_plans() {
    let ids = fleet(20);
    let text = format!("[{} {}],50%", ids[3], ids[9]);
    let p = plan(&text, "0");
    let mut c = Campaign::new(&p, NEW, &ids, SEED, Instant::ZERO).unwrap();
    assert!(!p.waves.reaches_all());
    assert_eq!(wave(&c, 0), vec![ids[3], ids[9]]);
    assert_eq!(
        wave(&c, 1).len(),
        8,
        "50 % cumulative = 10 nodes, 2 already covered"
    );
    assert_eq!(c.left_out().len(), 10);
    assert!(!wave(&c, 1).contains(&ids[3]));
    actions(&mut c);
    for (i, n) in wave(&c, 0).into_iter().enumerate() {
        apply_and_return(&mut c, n, i as u64);
    }
    let w0 = wave(&c, 0);
    soak(&mut c, &w0, 30, 130);
    assert_eq!(
        actions(&mut c),
        vec![Action::StartWave {
            wave: 1,
            nodes: wave(&c, 1)
        }]
    );
    for (i, n) in wave(&c, 1).into_iter().enumerate() {
        apply_and_return(&mut c, n, 140 + i as u64);
    }
    let w1 = wave(&c, 1);
    soak(&mut c, &w1, 170, 280);
    let last = actions(&mut c).pop().unwrap();
    assert_eq!(
        last,
        Action::Finished {
            confirmed: 10,
            failed: 0,
            left_out: 10
        }
    );
}

#[test]
fn parsing_the_operator_text() {
    let w: Waves = "1,10%,50%,100%".parse().unwrap();
    assert_eq!(
        w.0,
        vec![
            WaveSpec::Count(1),
            WaveSpec::Percent(10),
            WaveSpec::Percent(50),
            WaveSpec::Percent(100)
        ]
    );
    assert!(w.reaches_all());
    assert_eq!(
        " 5% , 100% ".parse::<Waves>().unwrap().0,
        vec![WaveSpec::Percent(5), WaveSpec::Percent(100)]
    );
    assert_eq!(
        "[1 2],100%".parse::<Waves>().unwrap().0[0],
        WaveSpec::Nodes(vec![1, 2])
    );
    assert_eq!("5%".parse::<Threshold>(), Ok(Threshold::Percent(5)));
    assert_eq!("3".parse::<Threshold>(), Ok(Threshold::Count(3)));
    assert_eq!("2m".parse::<Span>(), Ok(Span(Duration::from_secs(120))));
    assert_eq!(
        "500ms".parse::<Span>(),
        Ok(Span(Duration::from_millis(500)))
    );
    assert_eq!("1h".parse::<Span>(), Ok(Span(Duration::from_secs(3600))));

    let bad = |s: &str| s.parse::<Waves>().unwrap_err();
    assert_eq!(bad(""), PlanError::Empty);
    assert_eq!(bad("0%,100%"), PlanError::PercentOutOfRange("0%".into()));
    assert_eq!(bad("101%"), PlanError::PercentOutOfRange("101%".into()));
    assert_eq!(bad("5.5%"), PlanError::PercentOutOfRange("5.5%".into()));
    assert_eq!(bad("50%,20%"), PlanError::NotCumulative(1));
    assert_eq!(bad("10,5"), PlanError::NotCumulative(1));
    assert_eq!(bad("0,100%"), PlanError::EmptyWave(0));
    assert_eq!(bad("1,[]"), PlanError::EmptyWave(1));
    assert_eq!(bad("ten"), PlanError::BadEntry("ten".into()));
    assert_eq!(bad("[1 x]"), PlanError::BadEntry("[1 x]".into()));
    assert_eq!(
        bad(&vec!["100%"; 65].join(",")),
        PlanError::TooManyWaves(65)
    );
    assert_eq!(
        "-1".parse::<Threshold>(),
        Err(PlanError::BadEntry("-1".into()))
    );
    assert_eq!(
        "120%".parse::<Threshold>(),
        Err(PlanError::PercentOutOfRange("120%".into()))
    );
    for s in ["2", "2x", "0s", "m", "8d", "9999999999999999h"] {
        assert!(
            matches!(s.parse::<Span>(), Err(PlanError::BadDuration(_))),
            "{s}"
        );
    }
    // Messages say what is wrong.
    assert!(bad("50%,20%").to_string().contains("cumulative"));

    // Errors that need the fleet.
    let new = |w: &str, n: u32| {
        Campaign::new(&plan(w, "0"), NEW, &fleet(n), SEED, Instant::ZERO).unwrap_err()
    };
    assert_eq!(
        new("1,2,3,100%", 3),
        PlanError::MoreWavesThanNodes { waves: 4, nodes: 3 }
    );
    assert_eq!(new("30", 20), PlanError::CountAboveFleet(0));
    assert_eq!(new("[5]", 20), PlanError::UnknownNode(5));
    let id = fleet(20)[1];
    assert_eq!(
        new(&format!("[{id}],[{id}]"), 20),
        PlanError::DuplicateNode(id)
    );
    assert_eq!(
        new("15,50%", 20),
        PlanError::BelowCovered {
            wave: 1,
            target: 10,
            covered: 15
        }
    );
    assert_eq!(
        Campaign::new(&plan("100%", "0"), NEW, &[], SEED, Instant::ZERO),
        Err(PlanError::EmptyFleet)
    );
}
