//! The distributor's rollout view and the "rollout is done" rule, fed with the distributor's
//! own events while a pmesh rollout runs in virtual time.

mod common;

use std::time::Duration;

use common::{Mesh, Spec, firmware};
use pmesh_ota::{
    DoneInput, MemorySource, Offer, OtaConfig, RefusalCode, RolloutPhase, RolloutView, rollout_done,
};

const SETTLE: Duration = Duration::from_secs(3);

/// Node 0 is the gateway (root); the others are `sensor` nodes, except those in `others`.
fn mesh(n: usize, others: &[usize], capacity: &[(usize, u64)]) -> Mesh {
    let mut specs: Vec<Spec> = (0..n)
        .map(|i| {
            let role = match i {
                0 => "gateway",
                i if others.contains(&i) => "actuator",
                _ => "sensor",
            };
            Spec::new(1000 + i as u32, OtaConfig::new(role, "ESP32"))
        })
        .collect();
    specs[0].root = true;
    for &(i, c) in capacity {
        specs[i].capacity = c;
    }
    let mut mesh = Mesh::new(specs);
    mesh.tree(2);
    mesh.run_for(30.0);
    mesh
}

/// Offers a pmesh image from node 0 and follows it as `run_push` does: every new event of the
/// distributor goes into the view; the rule is asked after each step. Returns the view and
/// the virtual times (µs) at which the rule first held (if it did within `minutes`) and at
/// which the view last changed.
fn follow(mesh: &mut Mesh, expect: &[u32], minutes: u64) -> (RolloutView, Option<u64>, u64) {
    let image = firmware(60_000, 3);
    let id = mesh
        .with(0, |ota, ctx| {
            ota.offer(
                ctx,
                Offer::new("sensor", "ESP32", MemorySource::new(image)).pmesh(),
            )
        })
        .expect("offer accepted");
    let chunks = mesh.with(0, |ota, _| ota.pmesh().status().unwrap().total);
    let started = mesh.now;
    let mut view = RolloutView::new(id, chunks);
    let (mut seen, mut last_change) = (mesh.events[0].len(), started);
    let others: Vec<u32> = (1..mesh.nodes.len()).map(|i| mesh.id(i)).collect();
    let until = mesh.now + minutes * 60_000_000;
    let done = mesh.run_until(until, |m| {
        for ev in &m.events[0][seen..] {
            if view.on_event(ev).is_some() {
                last_change = m.now;
            }
        }
        seen = m.events[0].len();
        let input = DoneInput {
            mesh: &others,
            expect,
            quiet_for: Duration::from_micros(m.now - last_change),
            settle: SETTLE,
        };
        rollout_done(&view, &input)
    });
    (view, done.then_some(mesh.now), last_change)
}

#[test]
fn done_once_every_target_installed_and_nothing_changed_for_the_settle_time() {
    let mut mesh = mesh(6, &[4], &[]);
    let (view, done_at, last_change) = follow(&mut mesh, &[], 5);
    let done_at = done_at.expect("the rollout ends");
    // Nothing changed for the settle time before "done" (the rule is asked after every step
    // of the mesh, so it did not hold earlier).
    assert!(done_at - last_change >= SETTLE.as_micros() as u64);
    for i in [1, 2, 3, 5] {
        assert!(mesh.installed(i), "node {i} installed before done");
        let s = view.node(mesh.id(i)).expect("every target reported");
        assert_eq!(s.phase, RolloutPhase::Installed, "node {i}");
        assert_eq!(s.done, s.total);
    }
    // Node 4 runs another role: not a target, it never reports, and it does not hold it up.
    assert!(view.node(mesh.id(4)).is_none());
    assert!(!mesh.installed(4));
    assert!(!view.any_failed());
}

#[test]
fn a_failed_target_finishes_the_rollout_with_its_reason() {
    // Node 2's firmware slot is too small for the image.
    let mut mesh = mesh(4, &[], &[(2, 1024)]);
    let (view, done_at, _) = follow(&mut mesh, &[], 5);
    assert!(done_at.is_some(), "a failure is an end too");
    assert_eq!(
        view.node(mesh.id(2)).map(|s| s.phase),
        Some(RolloutPhase::Failed(RefusalCode::TooLarge))
    );
    assert!(view.any_failed());
    for i in [1, 3] {
        assert_eq!(
            view.node(mesh.id(i)).map(|s| s.phase),
            Some(RolloutPhase::Installed)
        );
    }
}

#[test]
fn an_expected_node_that_never_reports_holds_the_rollout_open() {
    // Node 3 is of another role: it never reports, but the operator expects it.
    let mut mesh = mesh(4, &[3], &[]);
    let expect = [mesh.id(3)];
    let (view, done_at, _) = follow(&mut mesh, &expect, 2);
    assert_eq!(done_at, None, "never done while an expected node is silent");
    for i in [1, 2] {
        assert!(mesh.installed(i));
        assert_eq!(
            view.node(mesh.id(i)).map(|s| s.phase),
            Some(RolloutPhase::Installed)
        );
    }
}
