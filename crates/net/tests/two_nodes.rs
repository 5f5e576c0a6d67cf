//! Two in-process meshes over loopback TCP: they sync, exchange messages, and notice a drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pmesh_net::{MeshBuilder, MeshEvent, NetConfig};
use pmesh_node::{Config, Event, Node};

/// (from, msg, broadcast)
type Received = (u32, Vec<u8>, bool);

fn cfg(listen: bool, connect: Vec<String>) -> NetConfig {
    NetConfig {
        listen: listen.then(|| "127.0.0.1:0".parse().unwrap()),
        connect,
        ..NetConfig::default()
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_nodes_sync_and_talk() {
    let a = MeshBuilder::new(Node::without_plugins(Config::new(1001)), cfg(true, vec![]))
        .spawn()
        .unwrap();
    let addr = a.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let got2 = got.clone();
    let b = MeshBuilder::new(
        Node::without_plugins(Config::new(1002)),
        cfg(false, vec![addr.to_string()]),
    )
    .on_event(move |ev| {
        if let MeshEvent::Node(Event::Received {
            from,
            msg,
            broadcast,
        }) = ev
        {
            got2.lock().unwrap().push((*from, msg.clone(), *broadcast));
        }
    })
    .spawn()
    .unwrap();
    let (ha, hb) = (a.handle(), b.handle());
    for _ in 0..500 {
        if ha.snapshot().await.unwrap().nodes == [1002]
            && hb.snapshot().await.unwrap().nodes == [1001]
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ha.snapshot().await.unwrap().nodes, [1002]);
    ha.send_single(1002, b"hello".to_vec()).await.unwrap();
    ha.send_broadcast(b"all".to_vec(), false).await.unwrap();
    wait_for(|| got.lock().unwrap().len() == 2, "two messages").await;
    assert_eq!(
        *got.lock().unwrap(),
        [
            (1001, b"hello".to_vec(), false),
            (1001, b"all".to_vec(), true)
        ]
    );
    assert_eq!(
        ha.send_single(4242, b"x".to_vec()).await,
        Err(pmesh_net::MeshError::Send(pmesh_node::SendError::NoRoute))
    );

    // B goes away: A forgets it at once (the socket closes).
    tokio::task::spawn_blocking(move || b.shutdown_blocking())
        .await
        .unwrap();
    for _ in 0..500 {
        if ha.snapshot().await.unwrap().nodes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = ha.snapshot().await.unwrap();
    assert!(s.nodes.is_empty(), "{:?}", s.nodes);
    assert!(s.links.is_empty());
    assert_eq!(s.net_stats.accepted, 1);
}

/// A plugin that cannot cross threads (its state is in an `Rc`): built on the mesh thread.
#[derive(Default)]
struct RcCounter(std::rc::Rc<std::cell::Cell<u32>>);

impl pmesh_node::Plugin for RcCounter {
    type Event = ();
    fn on_connection(
        &mut self,
        _ctx: &mut pmesh_node::Context<'_, ()>,
        change: pmesh_node::ConnectionChange,
    ) {
        if matches!(change, pmesh_node::ConnectionChange::New { .. }) {
            self.0.set(self.0.get() + 1);
        }
    }
}

#[tokio::test]
async fn non_send_plugins_run_on_the_mesh_thread() {
    let a = MeshBuilder::with_node_fn(2001, cfg(true, vec![]), || {
        Node::new(Config::new(2001), RcCounter::default())
    })
    .spawn()
    .unwrap();
    let addr = a.local_addr().unwrap();
    let _b = MeshBuilder::new(
        Node::without_plugins(Config::new(2002)),
        cfg(false, vec![addr.to_string()]),
    )
    .spawn()
    .unwrap();
    let h = a.handle();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while h.call(|n, _| n.plugin().0.get()).await.unwrap() == 0 {
        assert!(
            std::time::Instant::now() < until,
            "the plugin never saw the connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.call(|n, _| n.plugin().0.get()).await.unwrap(), 1);
}
