//! A peer that reads slowly forces partial writes: every frame must still arrive whole, in
//! order, exactly once (the reference treats partial writes as complete and splices frames).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pmesh_net::{MeshBuilder, NetConfig};
use pmesh_node::{Config, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_every_frame_whole() {
    let net = NetConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..NetConfig::default()
    };
    let mesh = MeshBuilder::new(Node::without_plugins(Config::new(1)), net)
        .spawn()
        .unwrap();
    let addr = mesh.local_addr().unwrap();
    let h = mesh.handle();

    // A raw peer: joins as node 77, then reads in small pieces with pauses.
    let reader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"{\"nodeId\":77,\"type\":5,\"dest\":0,\"from\":77}\0")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut stream = Vec::new();
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        let mut frames = Vec::new();
        let mut broadcasts = 0;
        while broadcasts < 500 && start.elapsed() < Duration::from_secs(60) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after {} frames", frames.len());
            stream.extend_from_slice(&buf[..n]);
            while let Some(end) = stream.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = stream.drain(..=end).collect();
                broadcasts += usize::from(frame.starts_with(b"{\"type\":8,"));
                frames.push(frame);
            }
            // About 4 MB/s at most: the node's writes outrun it and fill the socket buffers.
            std::thread::sleep(Duration::from_millis(1));
        }
        frames
    });

    // Wait for the peer, then push 500 broadcasts of 8 KiB each (4 MB: far more than the
    // socket buffers hold, so the writer sees partial writes).
    let until = Instant::now() + Duration::from_secs(10);
    while h.snapshot().await.unwrap().nodes != [77] {
        assert!(Instant::now() < until, "peer did not join");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..500u32 {
        let msg = format!("{i:06}:{}", "z".repeat(8192));
        h.send_broadcast(msg.into_bytes(), false).await.unwrap();
    }
    let frames = reader.join().unwrap();
    let msgs: Vec<String> = frames
        .iter()
        .filter_map(|f| {
            let v: serde_json::Value =
                serde_json::from_slice(&f[..f.len() - 1]).expect("a whole JSON frame");
            (v["type"] == 8).then(|| v["msg"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(msgs.len(), 500);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m, &format!("{i:06}:{}", "z".repeat(8192)), "broadcast {i}");
    }
    let s = h.snapshot().await.unwrap();
    assert!(s.net_stats.bytes_out > 4_000_000);
}
