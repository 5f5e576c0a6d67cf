//! Broadcasts on a link held in the loop grace (docs/compatibility/node.md, "Loops"): while a
//! tree shows a cycle through us whose agreed cut is elsewhere, and our own view confirms the
//! cycle, no BROADCAST crosses that link; an unconfirmed (stale) loop holds nothing.

mod common;

use common::{Rig, sync_frame};
use pmesh_node::{Config, ConnId, Direction, Event, Instant};

const T0: Instant = Instant::from_micros(1_000_000_000);
const ME: u32 = 5000;
/// Cycle 5000-6000-1000-1500-7000-5000: the agreed cut is 1000-1500, between two other nodes.
const LOOPED: &str = "{\"nodeId\":6000,\"subs\":[{\"nodeId\":1000,\"subs\":[{\"nodeId\":1500,\"subs\":[{\"nodeId\":7000,\"subs\":[{\"nodeId\":5000}]}]}]}]}";
const FROM_N: &str = "{\"type\":8,\"dest\":0,\"from\":6000,\"msg\":\"n\"}";
const FROM_P: &str = "{\"type\":8,\"dest\":0,\"from\":7000,\"msg\":\"p\"}";

/// Us with neighbour 6000 on link 1 and 7000 (tree `p_tree`) on link 2; 6000 then reports
/// the cycle.
fn looped_rig(p_tree: &str) -> Rig {
    let mut r = Rig::new(Config::new(ME), T0);
    r.add_neighbour(ConnId(1), Direction::Ap, "{\"nodeId\":6000}");
    r.add_neighbour(ConnId(2), Direction::Ap, p_tree);
    r.deliver(ConnId(1), &sync_frame(LOOPED, 6, ME, 6000));
    assert!(r.closed.is_empty(), "the cut is not ours");
    assert_eq!(r.node.stats().loop_syncs_ignored, 1);
    r
}

/// Broadcast frames sent since `mark`, as (link, message).
fn broadcasts_out(r: &Rig, mark: usize) -> Vec<(u64, String)> {
    r.sent_since(mark)
        .iter()
        .filter(|s| s.ty() == 8)
        .map(|s| (s.conn.0, s.json["msg"].as_str().unwrap().to_owned()))
        .collect()
}

fn received(r: &Rig) -> Vec<u32> {
    r.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Received {
                from,
                broadcast: true,
                ..
            } => Some(*from),
            _ => None,
        })
        .collect()
}

#[test]
fn a_confirmed_cycle_holds_its_link_for_broadcasts_both_ways() {
    // 7000's own tree reaches 6000 the other way round: the cycle is real in our view.
    let mut r = looped_rig(
        "{\"nodeId\":7000,\"subs\":[{\"nodeId\":1500,\"subs\":[{\"nodeId\":1000,\"subs\":[{\"nodeId\":6000}]}]}]}",
    );
    let mark = r.sent.len();
    r.deliver(ConnId(1), FROM_N);
    assert_eq!(broadcasts_out(&r, mark), vec![], "not forwarded");
    assert_eq!(received(&r), Vec::<u32>::new(), "not delivered");
    assert_eq!(r.node.stats().broadcasts_held, 1);
    r.deliver(ConnId(2), FROM_P);
    assert_eq!(received(&r), vec![7000]);
    assert_eq!(
        broadcasts_out(&r, mark),
        vec![],
        "not sent on the held link"
    );
    let now = r.now;
    r.node.send_broadcast(now, "own", false).unwrap();
    r.pump();
    assert_eq!(broadcasts_out(&r, mark), vec![(2, "own".to_owned())]);
    // SINGLE routing is unchanged: 6000 is still reached on its own link.
    assert_eq!(r.node.route(6000), Some(ConnId(1)));

    // A tree without the loop ends the hold.
    r.deliver(ConnId(1), &sync_frame("{\"nodeId\":6000}", 6, ME, 6000));
    let mark = r.sent.len();
    r.deliver(ConnId(1), FROM_N);
    assert_eq!(broadcasts_out(&r, mark), vec![(2, "n".to_owned())]);
    assert_eq!(received(&r), vec![7000, 6000]);
}

#[test]
fn an_unconfirmed_loop_holds_nothing() {
    // 7000's tree does not reach 6000: the looping tree may be stale, so 6000's side might be
    // reachable only through link 1; broadcasts keep crossing it (as before the rule).
    let mut r = looped_rig("{\"nodeId\":7000}");
    let mark = r.sent.len();
    r.deliver(ConnId(1), FROM_N);
    assert_eq!(broadcasts_out(&r, mark), vec![(2, "n".to_owned())]);
    r.deliver(ConnId(2), FROM_P);
    assert_eq!(
        broadcasts_out(&r, mark),
        vec![(2, "n".to_owned()), (1, "p".to_owned())]
    );
    assert_eq!(received(&r), vec![6000, 7000]);
    assert_eq!(r.node.stats().broadcasts_held, 0);
}
