//! Test harness: real Mosquitto brokers on free ports (or the embedded broker when Mosquitto
//! is missing and PMESH_REQUIRE_MOSQUITTO is not set), a recording subscriber, a fake gateway.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmesh_bridge::{Gateway, GatewayError, OtaStart};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value as J;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pmesh-bridge-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mosquitto_available() -> bool {
    let ok = std::path::Path::new(MOSQUITTO).exists();
    if !ok && std::env::var("PMESH_REQUIRE_MOSQUITTO").is_ok_and(|v| v == "1") {
        panic!("PMESH_REQUIRE_MOSQUITTO=1 but {MOSQUITTO} is not installed");
    }
    ok
}

/// A broker the test can kill and restart on the same port (retained messages wiped).
pub struct Broker {
    pub port: u16,
    max_packet: Option<usize>,
    /// Mosquitto keeps retained messages across a `terminate` + `up` (its persistence file).
    persistent: bool,
    dir: PathBuf,
    child: Option<std::process::Child>,
    embedded: bool,
    /// Embedded fallback: a proxy on `port` in front of a fresh rumqttd per "restart".
    proxy: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    pub async fn start(max_packet: Option<usize>) -> Broker {
        Self::start_with(max_packet, false).await
    }

    /// A broker whose retained messages survive a restart (`terminate` then `up`): Mosquitto
    /// with persistence. The embedded fallback has none; tests check [`Broker::is_persistent`].
    pub async fn start_persistent() -> Broker {
        Self::start_with(None, true).await
    }

    /// Retained messages survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.persistent && !self.embedded
    }

    async fn start_with(max_packet: Option<usize>, persistent: bool) -> Broker {
        let embedded = !mosquitto_available();
        if embedded {
            eprintln!(
                "NOTE: {MOSQUITTO} not found: using the embedded broker (rumqttd) behind a restartable proxy"
            );
        }
        let mut b = Broker {
            port: free_port(),
            max_packet,
            persistent,
            dir: tmpdir("broker"),
            child: None,
            embedded,
            proxy: None,
        };
        b.up().await;
        b
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded
    }

    pub async fn up(&mut self) {
        if self.embedded {
            let backend =
                pmesh_bridge::embedded::start(0, self.max_packet.unwrap_or(1 << 20)).unwrap();
            let listener = tokio::net::TcpListener::bind(self.addr()).await.unwrap();
            self.proxy = Some(tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    conns.spawn(async move {
                        if let Ok(out) = TcpStream::connect(backend).await {
                            forward(inbound, out).await;
                        }
                    });
                }
            }));
        } else {
            let conf = self.dir.join("mosquitto.conf");
            // The recording subscribers take thousands of retained messages at once; Mosquitto
            // would queue at most 1,000 QoS 1 messages per client and drop the rest.
            let mut text = format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n",
                self.port
            );
            if let Some(m) = self.max_packet {
                text.push_str(&format!("max_packet_size {m}\n"));
            }
            if self.persistent {
                // Saved on SIGTERM (`terminate`), read back by the next `up`. Run as root, it
                // stays root so it can write the test's directory.
                text = text.replace("persistence false\n", "");
                text.push_str(&format!(
                    "persistence true\npersistence_location {}/\nuser root\n",
                    self.dir.display()
                ));
            }
            std::fs::write(&conf, text).unwrap();
            let child = std::process::Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start mosquitto");
            self.child = Some(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not come up on {}",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL (or, embedded, cut every connection and stop listening).
    pub async fn kill(&mut self) {
        self.stop_with("-KILL").await;
    }

    /// SIGTERM: Mosquitto finishes the packets it already read, then exits.
    pub async fn terminate(&mut self) {
        self.stop_with("-TERM").await;
    }

    async fn stop_with(&mut self, sig: &str) {
        if let Some(p) = self.proxy.take() {
            p.abort();
            let _ = p.await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        // Wait until the port is really free.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr()).await.is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Forwards bytes both ways as transparently as a proxy can: each direction runs until its own
/// end, so when the broker goes away every byte it sent before (its last PUBACKs) still reaches
/// the client (`copy_bidirectional` stops both directions at the first error, such as a write to
/// a broker that just reset, and drops what the broker had already sent); and TCP_NODELAY on
/// both sockets, so the proxy holds no small packet back (Nagle) that the client sent at once.
pub async fn forward(client: TcpStream, server: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut server_ok = true;
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // After the server is gone, keep reading (and dropping) what the client sends,
                // as the kernel would, so the client sees the server's last bytes, then EOF.
                Ok(n) => {
                    if server_ok && sw.write_all(&buf[..n]).await.is_err() {
                        server_ok = false;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    // The client closes its side once it has read the server's EOF; `up` then ends too.
    tokio::join!(up, down);
}

/// A gate in front of the broker for the bridge: closed, it refuses the bridge (so a test
/// subscriber can be back before the bridge replays); open, it forwards new connections.
pub struct Gate {
    pub port: u16,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn new(target: SocketAddr) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*rx.borrow() {
                    continue; // dropped: connection refused by closing
                }
                // Established connections are left alone: they end when the broker does, after
                // every byte it sent has been forwarded.
                tokio::spawn(async move {
                    let Ok(out) = TcpStream::connect(target).await else {
                        return;
                    };
                    forward(inbound, out).await;
                });
            }
        });
        Gate { port, open, task }
    }

    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One received message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> J {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// Topics under this prefix carry [`Sub::barrier`] markers; no subscriber records them.
const BARRIER_PREFIX: &str = "pmesh-test/barrier/";

/// A subscriber that records everything on `filter`, reconnecting and re-subscribing itself.
pub struct Sub {
    pub client: AsyncClient,
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    pub subscribed: watch::Receiver<u64>,
    /// This subscriber's own marker topic (see [`Sub::barrier`]).
    barrier_topic: String,
    /// The last marker number seen on `barrier_topic`.
    barrier_seen: watch::Receiver<u64>,
    barrier_sent: std::sync::atomic::AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Sub {
    pub async fn connect(port: u16, filter: &str) -> Sub {
        let id = format!("test-sub-{}", free_port());
        let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
        o.set_max_packet_size(1 << 24, 1 << 24);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 1000);
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let (sub_tx, subscribed) = watch::channel(0u64);
        let barrier_topic = format!("{BARRIER_PREFIX}{id}");
        let (barrier_tx, barrier_seen) = watch::channel(0u64);
        let m2 = msgs.clone();
        let c2 = client.clone();
        // One SUBSCRIBE for both, so one SUBACK counts one (re)subscription.
        let filters = [filter.to_string(), barrier_topic.clone()]
            .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
        let own = barrier_topic.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.subscribe_many(filters.clone()).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        sub_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if p.topic.starts_with(BARRIER_PREFIX) =>
                    {
                        if p.topic == own
                            && let Some(n) = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                        {
                            barrier_tx.send_modify(|seen| *seen = n.max(*seen));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => m2.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    // Reconnect pacing: rumqttc reconnects on the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let mut s = Sub {
            client,
            msgs,
            subscribed,
            barrier_topic,
            barrier_seen,
            barrier_sent: Default::default(),
            task,
        };
        s.wait_subscribed(0).await;
        s
    }

    /// Waits until the subscription count exceeds `n` (i.e. a (re)subscribe completed).
    pub async fn wait_subscribed(&mut self, n: u64) {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.subscribed.wait_for(|c| *c > n),
        )
        .await
        .expect("subscriber (re)subscribed")
        .unwrap();
    }

    /// Publishes a marker to this subscriber's own topic and waits until it comes back. The
    /// broker delivers to one subscriber in order, so afterwards everything it had queued for
    /// this subscriber before the marker is recorded: the retained messages sent right after
    /// the SUBACK, and whatever other clients published that the broker had already taken.
    /// Markers are never recorded.
    pub async fn barrier(&self) {
        use std::sync::atomic::Ordering;
        let n = self.barrier_sent.fetch_add(1, Ordering::Relaxed) + 1;
        self.client
            .publish(&self.barrier_topic, QoS::AtLeastOnce, false, n.to_string())
            .await
            .unwrap();
        let mut seen = self.barrier_seen.clone();
        tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|s| *s >= n))
            .await
            .expect("barrier marker came back")
            .unwrap();
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn last(&self, topic: &str) -> Option<Msg> {
        self.on(topic).pop()
    }

    /// Waits until `pred` holds for some message on `topic`; returns it.
    pub async fn wait(&self, topic: &str, secs: u64, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(m) = self.on(topic).into_iter().rev().find(|m| pred(m)) {
                return m;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .on(topic)
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect();
                panic!("nothing matching on {topic} within {secs} s; saw {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes with the retain flag (an empty payload clears the topic's retained message).
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .unwrap();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fake gateway was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Single(u32, Vec<u8>),
    Broadcast(Vec<u8>),
    OtaStart(OtaStart),
    OtaAbort(u64),
}

/// A gateway that records calls.
#[derive(Default)]
pub struct FakeGateway {
    pub calls: Mutex<Vec<Call>>,
}

impl Gateway for FakeGateway {
    fn send_single(&self, dest: u32, msg: Vec<u8>) -> Result<(), GatewayError> {
        self.calls.lock().unwrap().push(Call::Single(dest, msg));
        Ok(())
    }
    fn send_broadcast(&self, msg: Vec<u8>) -> Result<(), GatewayError> {
        self.calls.lock().unwrap().push(Call::Broadcast(msg));
        Ok(())
    }
    fn ota_start(&self, req: OtaStart) -> Result<(), GatewayError> {
        self.calls.lock().unwrap().push(Call::OtaStart(req));
        Ok(())
    }
    fn ota_abort(&self, campaign: u64) -> Result<(), GatewayError> {
        self.calls.lock().unwrap().push(Call::OtaAbort(campaign));
        Ok(())
    }
}

pub fn config(port: u16, client: &str) -> pmesh_bridge::BridgeConfig {
    let mut c = pmesh_bridge::BridgeConfig::default();
    c.broker.port = port;
    c.broker.client_id = client.to_string();
    c.publish_interval = Duration::from_secs(600);
    c
}

/// A star tree: gateway `gw` with leaves `kids`.
pub fn star(gw: u32, kids: impl IntoIterator<Item = u32>) -> pmesh_proto::NodeTree {
    pmesh_proto::NodeTree {
        node_id: gw,
        subs: kids.into_iter().map(pmesh_proto::NodeTree::leaf).collect(),
        ..Default::default()
    }
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as rendered).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
