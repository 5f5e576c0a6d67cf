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

/// Issue 11, item 7: silent sockets from one address hold at most `max_unsynced_per_address`
/// slots (one more is closed at once and counted), other addresses still get in, the node
/// closes the silent ones after its handshake deadline, and their warnings are rate-limited.
#[tokio::test]
async fn silent_sockets_from_one_address_are_capped_and_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    let mut node = Config::new(3001);
    node.handshake_timeout = Duration::from_secs(1);
    let net = NetConfig {
        max_unsynced_per_address: 3,
        ..cfg(true, vec![])
    };
    let a = MeshBuilder::new(Node::without_plugins(node), net)
        .spawn()
        .unwrap();
    let addr = a.local_addr().unwrap();
    let h = a.handle();
    let from = |ip: &str| {
        let ip = ip.parse().unwrap();
        async move {
            let s = TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            s.connect(addr).await.unwrap()
        }
    };
    let links = || async { h.snapshot().await.unwrap().links.len() };
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until_async(|| async { links().await == 3 }, "three silent links").await;
    // A fourth from the same address is closed at once.
    let mut fourth = from("127.0.0.1").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    // Another address is not affected: it joins.
    let mut other = from("127.0.0.2").await;
    other
        .write_all(b"{\"nodeId\":77,\"type\":5,\"dest\":0,\"from\":77}\0")
        .await
        .unwrap();
    wait_until_async(
        || async { h.snapshot().await.unwrap().nodes == [77] },
        "node 77 to join",
    )
    .await;
    // The silent ones close after the 1 s handshake deadline; the address may join again.
    wait_until_async(|| async { links().await == 1 }, "silent links closed").await;
    let mut again = from("127.0.0.1").await;
    again
        .write_all(b"{\"nodeId\":78,\"type\":5,\"dest\":0,\"from\":78}\0")
        .await
        .unwrap();
    wait_until_async(
        || async { h.snapshot().await.unwrap().nodes.contains(&78) },
        "node 78 to join",
    )
    .await;
    let s = h.snapshot().await.unwrap();
    assert_eq!(s.net_stats.rejected_unsynced_per_address, 1);
    assert_eq!(s.node_stats.handshake_timeouts, 3);
    // Three "link dropped" warnings within 10 s: one printed, two suppressed.
    assert_eq!(s.net_stats.log_lines_suppressed, 2);
    drop(silent);
}

async fn wait_until_async<F, Fut>(mut cond: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 14: frames the node drops reach the runtime as `Event::FrameDropped`: counted per link
/// and in `NetStats`, passed on to subscribers; the snapshot's `node_stats` JSON has one key per
/// `NodeStats::counters` entry, in list order.
#[tokio::test]
async fn dropped_frames_are_counted_per_link_from_the_node_event() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let mut node = Config::new(4001);
    node.max_frame = 1024;
    let drops: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let seen = drops.clone();
    let a = MeshBuilder::new(Node::without_plugins(node), cfg(true, vec![]))
        .on_event(move |ev| {
            if let MeshEvent::Node(Event::FrameDropped { reason, frames, .. }) = ev {
                seen.lock().unwrap().push((reason.as_str().into(), *frames));
            }
        })
        .spawn()
        .unwrap();
    let h = a.handle();
    let mut peer = TcpStream::connect(a.local_addr().unwrap()).await.unwrap();
    let mut bytes = b"not json\0".repeat(3);
    bytes.extend(vec![b'{'; 2000]);
    bytes.push(0);
    peer.write_all(&bytes).await.unwrap();
    let link = || async { h.snapshot().await.unwrap().links.first().cloned() };
    wait_until_async(
        || async { link().await.is_some_and(|l| l.frames_oversized == 1) },
        "the oversized frame to be counted on the link",
    )
    .await;
    let l = link().await.unwrap();
    assert_eq!((l.frames_invalid, l.frames_oversized), (3, 1));
    let s = h.snapshot().await.unwrap();
    assert_eq!(
        (s.net_stats.frames_invalid, s.net_stats.frames_oversized),
        (3, 1)
    );
    assert_eq!(
        (s.node_stats.dropped_invalid, s.node_stats.dropped_oversized),
        (3, 1)
    );
    let total: u64 = drops.lock().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 4, "{:?}", drops.lock().unwrap());

    let json = serde_json::to_value(&s).unwrap();
    let keys: Vec<&str> = json["node_stats"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let names: Vec<&str> = s.node_stats.counters().map(|c| c.name).collect();
    assert_eq!(keys.len(), pmesh_node::NodeStats::COUNTERS);
    assert_eq!(
        keys.iter().collect::<std::collections::BTreeSet<_>>(),
        names.iter().collect()
    );
    assert_eq!(json["node_stats"]["dropped_invalid"], 3);
    assert_eq!(json["net_stats"]["frames_invalid"], 3);
}
