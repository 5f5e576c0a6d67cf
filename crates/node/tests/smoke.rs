use pmesh_node::{Config, ConnId, Direction, Event, Instant, Node, Transmit};

fn pump(a: &mut Node, b: &mut Node, now: Instant) -> usize {
    let mut n = 0;
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            if let Transmit::Send { data, .. } = t {
                b.handle_bytes(ConnId(1), now, &data);
                n += 1;
                moved = true;
            }
        }
        while let Some(t) = b.poll_transmit() {
            if let Transmit::Send { data, .. } = t {
                a.handle_bytes(ConnId(1), now, &data);
                n += 1;
                moved = true;
            }
        }
        if !moved {
            return n;
        }
    }
}

#[test]
fn two_nodes_sync() {
    let mut a = Node::without_plugins(Config::new(100));
    let mut b = Node::without_plugins(Config::new(200));
    let mut now = Instant::from_micros(1_000_000);
    a.handle_connect(ConnId(1), now, Direction::Station);
    b.handle_connect(ConnId(1), now, Direction::Ap);
    for _ in 0..2000 {
        pump(&mut a, &mut b, now);
        now = now + std::time::Duration::from_millis(100);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert_eq!(a.node_list(true), vec![100, 200]);
    assert_eq!(b.node_list(true), vec![200, 100]);
    let mut evs = vec![];
    while let Some(e) = a.poll_event() {
        evs.push(e);
    }
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::NewConnection { node_id: 200, .. })),
        "{evs:?}"
    );
    println!("a mesh {} b mesh {}", a.mesh_time(now), b.mesh_time(now));
    assert!(a.mesh_time(now).abs_diff(b.mesh_time(now)) < 5000);
    println!("{:?}", a.stats());
}
