//! One MQTT connection: rumqttc's protocol state (`MqttState`) and codec, driven by our own
//! loop instead of `EventLoop::poll`.
//!
//! Why not `EventLoop::poll` with an `AsyncClient`: it takes one request per call and flushes
//! the socket after each, so a 2,000-publish snapshot costs 2,000 writes and 4,000 events
//! through two channels; and on a write error it gives up without reading the PUBACKs that
//! already arrived. Here:
//!
//! - every publish the bridge has queued is encoded into the write buffer and flushed once
//!   (flow control: at most `inflight` QoS 1 publishes unacknowledged, as rumqttc does);
//! - PUBACKs are matched to the bridge's tags here and reported in batches ([`ConnEvent::Acked`]);
//! - a *barrier* publish (an outbox event) is the last packet written until its PUBACK is
//!   back. A broker going down then never has unread bytes of ours behind an event it has
//!   already delivered, so it closes with FIN, not RST, and the PUBACK it wrote (possibly
//!   still held by its Nagle timer) reaches us: the event is not sent twice. Measured: with a
//!   window instead, Mosquitto 2.0 stopped with SIGTERM lost about one PUBACK per stop (the
//!   RST it sends when closing a socket with unread data discards its unsent PUBACK), and the
//!   replay duplicated that event at the subscriber;
//! - when the connection fails, the PUBACKs already received are still reported before
//!   [`ConnEvent::Down`], also after a failed write;
//! - while PUBACKs are outstanding and nothing else is to be written, each read is answered
//!   with a PINGREQ that carries our TCP acknowledgement at once (see `Driver::wants_nudge`).
//!
//! Cancel safety: `Network::readb` is only awaited with an empty write buffer (every write
//! burst is flushed before waiting), so its only suspension point is the read of the next
//! packet, which keeps partial input in the codec's buffer.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{
    Event, EventLoop, MqttOptions, NetworkOptions, Packet, PingReq, Publish, QoS, Request,
    Subscribe,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Least time between two acknowledgement-carrying PINGREQs (`Driver::wants_nudge`): far
/// below the kernel's 40 ms delayed-ACK timer, and a handful per snapshot instead of one per
/// read (~700 for a 1,000-node snapshot when unthrottled).
const NUDGE_AFTER: Duration = Duration::from_millis(1);

/// What the bridge attaches to a publish, handed back when the broker acknowledged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Nothing to do on acknowledgement.
    Plain,
    /// An outbox entry (sequence number): leaves the outbox on its PUBACK.
    Outbox(u64),
    /// Part of a snapshot someone waits for.
    Waiter(u64),
}

/// A request to the connection task.
#[derive(Debug)]
pub(crate) enum Out {
    /// Publish; `barrier`: write nothing after it until its PUBACK arrived (QoS 1 only).
    Publish {
        publish: Publish,
        tag: Tag,
        barrier: bool,
    },
    /// Subscribe (the SUBACK is reported).
    Subscribe(Subscribe),
    /// Send DISCONNECT after everything queued before it, then end.
    Disconnect,
}

/// What the connection task reports, in the order it happened.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// CONNACK received.
    Connected,
    /// SUBACK received.
    SubAck,
    /// These publishes were acknowledged (QoS 1), in order.
    Acked(Vec<Tag>),
    /// A message arrived on a subscribed topic (already acknowledged to the broker).
    Message(Publish),
    /// The connection is gone (after DISCONNECT too); nothing more follows.
    Down(String),
}

/// The bridge's handle on one connection. Dropping it ends the connection at once.
pub(crate) struct Connection {
    requests: mpsc::Sender<Vec<Out>>,
    /// Events from the connection task.
    pub events: mpsc::UnboundedReceiver<ConnEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Starts connecting (TCP_NODELAY on: small publishes go out at once). `queue`: batches
    /// of requests that may wait for the connection task before [`Connection::send`] waits.
    pub fn start(opts: MqttOptions, queue: usize) -> Self {
        let mut el = EventLoop::new(opts, 1);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (requests, rx) = mpsc::channel(queue.max(1));
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut d = Driver::new(el, rx, tx.clone());
            let why = match d.run().await {
                Ok(()) => "disconnected".to_string(),
                Err(e) => e,
            };
            d.report_acks();
            let _ = tx.send(ConnEvent::Down(why));
        });
        Self {
            requests,
            events,
            task,
        }
    }

    /// Queues requests, in order; false if the connection task has ended.
    pub async fn send(&self, batch: Vec<Out>) -> bool {
        self.requests.send(batch).await.is_ok()
    }
}

enum Wake {
    Read(Result<(), String>),
    Request(Option<Vec<Out>>),
    Ping,
    Nudge,
}

struct Driver {
    el: EventLoop,
    rx: mpsc::Receiver<Vec<Out>>,
    tx: mpsc::UnboundedSender<ConnEvent>,
    /// Tags of unacknowledged QoS 1 publishes, by packet id.
    tags: HashMap<u16, Tag>,
    /// Acknowledged tags not yet reported.
    acked: Vec<Tag>,
    /// Requests taken from the channel that could not be written yet.
    queue: VecDeque<Out>,
    /// Packet id of the barrier publish in flight, and since when.
    barrier: Option<(u16, Instant)>,
    /// A publish rumqttc is holding back because its packet id is still in flight (the broker
    /// acknowledged out of order): its id, tag and barrier flag. rumqttc sends it, with that
    /// id, while handling that id's PUBACK.
    collided: Option<(u16, Tag, bool)>,
    requests_closed: bool,
    /// When to send a PINGREQ that carries our TCP acknowledgement (see `wants_nudge`).
    nudge_at: Option<Instant>,
}

impl Driver {
    fn new(
        el: EventLoop,
        rx: mpsc::Receiver<Vec<Out>>,
        tx: mpsc::UnboundedSender<ConnEvent>,
    ) -> Self {
        Self {
            el,
            rx,
            tx,
            tags: HashMap::new(),
            acked: Vec::new(),
            queue: VecDeque::new(),
            barrier: None,
            collided: None,
            requests_closed: false,
            nudge_at: None,
        }
    }

    /// Send a PINGREQ, only to carry our TCP acknowledgement of what we read?
    ///
    /// A broker that leaves Nagle on (Mosquitto's default) holds each further small PUBACK
    /// until the previous one is acknowledged at the TCP level, and the kernel delays that
    /// acknowledgement (~40 ms) when we have nothing to send: the last PUBACKs of a burst
    /// would arrive 40 ms late. So while PUBACKs are outstanding and nothing else is to be
    /// written, a PINGREQ goes out at most every [`NUDGE_AFTER`] after a read. Never behind a
    /// barrier (see the module docs).
    fn wants_nudge(&self) -> bool {
        !self.tags.is_empty()
            && self.barrier.is_none()
            && self.queue.is_empty()
            && self.rx.is_empty()
    }

    fn may_write(&self) -> bool {
        self.barrier.is_none()
            && self.el.state.collision.is_none()
            && self.el.state.inflight() < self.el.mqtt_options.inflight()
    }

    async fn run(&mut self) -> Result<(), String> {
        // The first poll connects (TCP, TLS, CONNECT/CONNACK) with rumqttc's own timeout.
        match self.el.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => {
                let _ = self.tx.send(ConnEvent::Connected);
            }
            other => return Err(format!("expected CONNACK, got {other:?}")),
        }
        self.el.state.events.clear();
        let keep_alive = self.el.mqtt_options.keep_alive();
        let mut next_ping = Instant::now() + keep_alive;
        loop {
            match self.write_queued().await {
                Ok(true) => return Ok(()), // DISCONNECT sent
                Ok(false) => {}
                Err(e) => {
                    // The broker may have answered before the write failed: read what is left.
                    self.drain_after_error().await;
                    return Err(e);
                }
            }
            if self.requests_closed && self.queue.is_empty() {
                return Err("bridge released the connection".into());
            }
            let take = self.may_write() && !self.requests_closed;
            let nudge_at = self.nudge_at.unwrap_or(next_ping);
            let net = self.el.network.as_mut().ok_or("no network")?;
            let wake = tokio::select! {
                biased;
                r = net.readb(&mut self.el.state) => Wake::Read(r.map_err(|e| e.to_string())),
                o = self.rx.recv(), if take => Wake::Request(o),
                _ = tokio::time::sleep_until(next_ping) => Wake::Ping,
                _ = tokio::time::sleep_until(nudge_at), if self.nudge_at.is_some() => Wake::Nudge,
            };
            match wake {
                Wake::Read(r) => {
                    // readb wrote acknowledgements of incoming QoS 1 messages, if any.
                    let acked_incoming = self.el.state.events.iter().any(|e| {
                        matches!(e, Event::Incoming(Packet::Publish(p)) if p.qos != QoS::AtMostOnce)
                    });
                    let flushed = match r {
                        Ok(()) if acked_incoming => self.flush().await,
                        Ok(()) => Ok(()),
                        Err(e) => Err(e),
                    };
                    self.process_incoming();
                    if flushed.is_ok() && self.nudge_at.is_none() && self.wants_nudge() {
                        self.nudge_at = Some(Instant::now() + NUDGE_AFTER);
                    }
                    flushed?;
                }
                Wake::Request(Some(batch)) => self.queue.extend(batch),
                Wake::Request(None) => self.requests_closed = true,
                Wake::Nudge => {
                    self.nudge_at = None;
                    if self.wants_nudge() {
                        self.write(Packet::PingReq).await?;
                        self.flush().await?;
                    }
                }
                Wake::Ping => {
                    // A ping written behind a barrier could sit unread at a broker that is
                    // stopping; wait for the barrier unless it has been pending a keep-alive.
                    if let Some((_, since)) = self.barrier
                        && since.elapsed() < keep_alive
                    {
                        next_ping = Instant::now() + Duration::from_millis(100);
                        continue;
                    }
                    // Errors when the previous ping was never answered: the broker is gone.
                    let ping = self
                        .el
                        .state
                        .handle_outgoing_packet(Request::PingReq(PingReq))
                        .map_err(|e| e.to_string())?;
                    self.el.state.events.clear();
                    if let Some(p) = ping {
                        self.write(p).await?;
                        self.flush().await?;
                    }
                    next_ping = Instant::now() + keep_alive;
                }
            }
        }
    }

    async fn write(&mut self, p: Packet) -> Result<(), String> {
        let net = self.el.network.as_mut().ok_or("no network")?;
        net.write(p).await.map_err(|e| e.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        let timeout = Duration::from_secs(self.el.network_options().connection_timeout());
        let net = self.el.network.as_mut().ok_or("no network")?;
        match tokio::time::timeout(timeout, net.flush()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("flush timed out (broker not reading)".into()),
        }
    }

    /// Writes queued requests while flow control allows, then flushes once. True when a
    /// DISCONNECT was sent.
    async fn write_queued(&mut self) -> Result<bool, String> {
        let mut wrote = false;
        let mut disconnect = false;
        while self.may_write() {
            if self.queue.is_empty() && !self.requests_closed {
                match self.rx.try_recv() {
                    Ok(batch) => self.queue.extend(batch),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => self.requests_closed = true,
                }
            }
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            let packet = match out {
                Out::Publish {
                    publish,
                    tag,
                    barrier,
                } => {
                    let qos1 = publish.qos != QoS::AtMostOnce;
                    let p = self
                        .el
                        .state
                        .handle_outgoing_packet(Request::Publish(publish))
                        .map_err(|e| e.to_string())?;
                    match &p {
                        Some(Packet::Publish(sent)) if qos1 => {
                            self.tags.insert(sent.pkid, tag);
                            if barrier {
                                self.barrier = Some((sent.pkid, Instant::now()));
                            }
                        }
                        None if qos1 => {
                            let pkid = self.el.state.collision.as_ref().map_or(0, |c| c.pkid);
                            self.collided = Some((pkid, tag, barrier));
                        }
                        _ => {}
                    }
                    p
                }
                Out::Subscribe(s) => self
                    .el
                    .state
                    .handle_outgoing_packet(Request::Subscribe(s))
                    .map_err(|e| e.to_string())?,
                Out::Disconnect => {
                    disconnect = true;
                    self.el
                        .state
                        .handle_outgoing_packet(Request::Disconnect(rumqttc::Disconnect))
                        .map_err(|e| e.to_string())?
                }
            };
            // Outgoing notifications are not needed: tags are matched above.
            self.el.state.events.clear();
            if let Some(p) = packet {
                self.write(p).await?;
                wrote = true;
            }
            if disconnect {
                break;
            }
        }
        if wrote {
            self.flush().await?;
        }
        Ok(disconnect)
    }

    /// Handles what `readb` decoded: acknowledgements, messages, SUBACKs.
    fn process_incoming(&mut self) {
        let events: Vec<Event> = self.el.state.events.drain(..).collect();
        for ev in events {
            match ev {
                Event::Incoming(Packet::PubAck(ack)) => self.on_puback(ack.pkid),
                Event::Incoming(Packet::SubAck(_)) => {
                    self.report_acks();
                    let _ = self.tx.send(ConnEvent::SubAck);
                }
                Event::Incoming(Packet::Publish(p)) => {
                    self.report_acks();
                    let _ = self.tx.send(ConnEvent::Message(p));
                }
                _ => {}
            }
        }
        self.report_acks();
    }

    fn on_puback(&mut self, pkid: u16) {
        if let Some(tag) = self.tags.remove(&pkid) {
            self.acked.push(tag);
        }
        if self.barrier.is_some_and(|(b, _)| b == pkid) {
            self.barrier = None;
        }
        // rumqttc sent the held-back publish with this packet id while handling this PUBACK.
        if let Some((held, tag, barrier)) = self.collided
            && held == pkid
        {
            self.collided = None;
            self.tags.insert(pkid, tag);
            if barrier {
                self.barrier = Some((pkid, Instant::now()));
            }
        }
    }

    fn report_acks(&mut self) {
        if !self.acked.is_empty() {
            let _ = self
                .tx
                .send(ConnEvent::Acked(std::mem::take(&mut self.acked)));
        }
    }

    /// After a failed write: what the broker sent before it went away (typically its last
    /// PUBACKs) is still in the socket; read until the end of the stream, briefly.
    async fn drain_after_error(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some(net) = self.el.network.as_mut() {
            let r = tokio::time::timeout_at(deadline, net.readb(&mut self.el.state)).await;
            self.process_incoming();
            if !matches!(r, Ok(Ok(()))) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A packet read by the scripted broker: (first byte, body).
    async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let kind = s.read_u8().await.unwrap();
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await.unwrap();
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        (kind, body)
    }

    /// Packet id and payload of a QoS 1 PUBLISH body.
    fn publish_parts(body: &[u8]) -> (u16, Vec<u8>) {
        let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let pkid = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
        (pkid, body[4 + tl..].to_vec())
    }

    async fn puback(s: &mut TcpStream, pkid: u16) {
        let id = pkid.to_be_bytes();
        s.write_all(&[0x40, 2, id[0], id[1]]).await.unwrap();
    }

    /// Accepts one client and answers CONNECT; returns the socket.
    async fn broker() -> (u16, tokio::task::JoinHandle<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (kind, _) = read_packet(&mut s).await;
            assert_eq!(kind, 0x10, "CONNECT first");
            s.write_all(&[0x20, 2, 0, 0]).await.unwrap();
            s
        });
        (port, task)
    }

    fn publish(n: u64, barrier: bool) -> Out {
        Out::Publish {
            publish: Publish::new("t", QoS::AtLeastOnce, n.to_string()),
            tag: Tag::Waiter(n),
            barrier,
        }
    }

    async fn acked(c: &mut Connection, want: usize) -> Vec<u64> {
        let mut got = Vec::new();
        while got.len() < want {
            let ev = tokio::time::timeout(Duration::from_secs(5), c.events.recv())
                .await
                .expect("acks within 5 s")
                .expect("connection alive");
            match ev {
                ConnEvent::Acked(tags) => got.extend(tags.into_iter().map(|t| match t {
                    Tag::Waiter(n) => n,
                    other => panic!("unexpected tag {other:?}"),
                })),
                ConnEvent::Connected => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    /// The broker acknowledges out of order, so rumqttc must hold a publish back whose packet
    /// id is still in flight; every PUBACK still releases the tag of the publish it answers.
    #[tokio::test]
    async fn out_of_order_acks_and_reused_packet_ids_release_the_right_tags() {
        let (port, accept) = broker().await;
        let mut opts = MqttOptions::new("t", "127.0.0.1", port);
        opts.set_inflight(3);
        let mut c = Connection::start(opts, 4);
        let script = tokio::spawn(async move {
            let mut s = accept.await.unwrap();
            let next = async |s: &mut TcpStream| loop {
                let (kind, body) = read_packet(s).await;
                if kind == 0xc0 {
                    s.write_all(&[0xd0, 0]).await.unwrap();
                    continue;
                }
                let (pkid, payload) = publish_parts(&body);
                break (
                    pkid,
                    String::from_utf8(payload).unwrap().parse::<u64>().unwrap(),
                );
            };
            // Publishes 0, 1, 2 take packet ids 1, 2, 3 (window 3). Only 2 is answered, so the
            // client wants id 1 again for publish 3 while 0 still holds it: held back.
            let first: Vec<(u16, u64)> =
                vec![next(&mut s).await, next(&mut s).await, next(&mut s).await];
            assert_eq!(first.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 3]);
            puback(&mut s, 3).await;
            let mut order = vec![first[2].1];
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Both in one read: id 2 first, then id 1, which releases publish 3 under id 1.
            s.write_all(&[0x40, 2, 0, 2, 0x40, 2, 0, 1]).await.unwrap();
            order.extend([first[1].1, first[0].1]);
            for _ in 3..6 {
                let (pkid, n) = next(&mut s).await;
                puback(&mut s, pkid).await;
                order.push(n);
            }
            order
        });
        assert!(c.send((0..6).map(|n| publish(n, false)).collect()).await);
        let got = acked(&mut c, 6).await;
        let order = script.await.unwrap();
        assert_eq!(order, vec![2, 1, 0, 3, 4, 5], "the script's own order");
        assert_eq!(got, order, "each tag released by its own PUBACK");
    }

    /// After a barrier publish nothing is written until its PUBACK arrived.
    #[tokio::test]
    async fn nothing_is_written_behind_a_barrier_until_its_puback() {
        let (port, accept) = broker().await;
        let mut c = Connection::start(MqttOptions::new("t", "127.0.0.1", port), 4);
        let script = tokio::spawn(async move {
            let mut s = accept.await.unwrap();
            let (_, body) = read_packet(&mut s).await;
            let (pkid, payload) = publish_parts(&body);
            assert_eq!(payload, b"0");
            // Nothing else arrives while the event is unacknowledged.
            let mut probe = [0u8; 1];
            let quiet = tokio::time::timeout(Duration::from_millis(300), s.peek(&mut probe)).await;
            assert!(quiet.is_err(), "bytes written behind the barrier");
            puback(&mut s, pkid).await;
            let (_, body) = read_packet(&mut s).await;
            let (pkid, payload) = publish_parts(&body);
            assert_eq!(payload, b"1");
            puback(&mut s, pkid).await;
        });
        assert!(c.send(vec![publish(0, true), publish(1, false)]).await);
        assert_eq!(acked(&mut c, 2).await, vec![0, 1]);
        script.await.unwrap();
    }
}
