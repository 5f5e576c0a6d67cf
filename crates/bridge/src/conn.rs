//! One MQTT connection: rumqttc's protocol state (`MqttState`) and packet codec, driven by our
//! own loop over our own socket instead of `EventLoop::poll`.
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
//!   with a PINGREQ that carries our TCP acknowledgement at once (see `Driver::wants_nudge`);
//! - a PUBLISH larger than the packet limit is **skipped as it arrives**, never buffered
//!   ([`Framer`]): its topic and retain flag are reported ([`ConnEvent::Oversize`]), it is
//!   acknowledged, and the connection stays up. Why our own socket and framing: rumqttc's
//!   codec (`Packet::read` under `Framed`) answers a packet over `max_incoming_packet_size`
//!   with `PayloadSizeLimitExceeded`, which ends the connection; a request left *retained*
//!   over the limit then came back with every resubscribe, about 9 reconnects a second
//!   forever (issue 11). Raising the limit instead would let any client make the bridge
//!   buffer a packet as large as the broker takes (256 MiB for Mosquitto by default).
//!
//! Cancel safety: the socket is only read inside `select!` through `read_buf`, which either
//! reads into the framer's buffer or leaves it untouched, and only with an empty write buffer
//! (every write burst is flushed before waiting).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::{
    ConnectReturnCode, Event, MqttState, Packet, PingReq, PubAck, Publish, QoS, Request, Subscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Least time between two acknowledgement-carrying PINGREQs (`Driver::wants_nudge`): far
/// below the kernel's 40 ms delayed-ACK timer, and a handful per snapshot instead of one per
/// read (~700 for a 1,000-node snapshot when unthrottled).
const NUDGE_AFTER: Duration = Duration::from_millis(1);

/// Longest wait for TCP + TLS + CONNACK, and for a flush (rumqttc's default).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration (`None`: plain TCP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The CONNECT packet (client id, keep-alive, clean session, will, login).
    pub connect: rumqttc::Connect,
    /// QoS 1 publishes in flight at most.
    pub inflight: u16,
    /// Largest packet read or written whole; larger incoming PUBLISHes are skipped.
    pub max_packet_size: usize,
}

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

/// A PUBLISH over the packet limit, skipped unread: what its head said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Oversize {
    /// Its topic.
    pub topic: String,
    /// Delivered retained (a retained message sent because of our subscription).
    pub retain: bool,
    /// Payload bytes.
    pub payload: usize,
    /// The whole packet's bytes.
    pub packet: usize,
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
    /// A message over the packet limit arrived and was skipped (already acknowledged).
    Oversize(Oversize),
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
    pub fn start(endpoint: Endpoint, queue: usize) -> Self {
        let (requests, rx) = mpsc::channel(queue.max(1));
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut d = Driver::new(endpoint, rx, tx.clone());
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

/// A byte stream to the broker: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// TCP (and TLS) to the endpoint.
async fn open_socket(ep: &Endpoint) -> Result<Box<dyn Io>, String> {
    let tcp = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", ep.host, ep.port))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = &ep.tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
        .map_err(|e| format!("TLS server name {:?}: {e}", ep.host))?;
    let stream = rumqttc::tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Box::new(stream))
}

/// One complete unit read from the broker.
#[derive(Debug)]
enum Frame {
    /// A packet within the limit.
    Packet(Packet),
    /// The head of a PUBLISH over the limit; its body is being skipped.
    Oversize { head: Oversize, qos: QoS, pkid: u16 },
}

/// Splits the broker's byte stream into packets; a PUBLISH whose packet exceeds `max` bytes
/// is not buffered: its fixed header, topic and packet id are read, the rest is dropped as it
/// arrives. Pure (no IO): bytes go into [`Framer::buf`], frames come out of [`Framer::next`].
#[derive(Debug)]
struct Framer {
    buf: BytesMut,
    /// Bytes of an oversize packet still to drop.
    skip: usize,
    max: usize,
}

/// The fixed header at the start of `b`: (first byte, header length, remaining length), or
/// `None` until enough bytes are there.
fn fixed_header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let mut len = 0usize;
    for i in 1..5 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok(Some((b[0], i + 1, len)));
        }
    }
    Err("malformed packet length from the broker".into())
}

impl Framer {
    fn new(max: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            skip: 0,
            max,
        }
    }

    /// Makes room for the next socket read.
    fn reserve(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// The next complete frame, `None` if more bytes are needed.
    fn next(&mut self) -> Result<Option<Frame>, String> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let Some((byte1, header, remaining)) = fixed_header(&self.buf)? else {
            return Ok(None);
        };
        let packet = header + remaining;
        if packet <= self.max {
            if self.buf.len() < packet {
                self.buf.reserve(packet - self.buf.len());
                return Ok(None);
            }
            return Packet::read(&mut self.buf, self.max)
                .map(|p| Some(Frame::Packet(p)))
                .map_err(|e| format!("malformed packet from the broker: {e}"));
        }
        self.oversize(byte1, header, remaining)
    }

    /// The head of a packet over the limit; only a PUBLISH may be that large.
    fn oversize(
        &mut self,
        byte1: u8,
        header: usize,
        remaining: usize,
    ) -> Result<Option<Frame>, String> {
        let packet = header + remaining;
        if byte1 >> 4 != 3 {
            return Err(format!(
                "a packet of type {} and {packet} bytes from the broker, over the {}-byte limit",
                byte1 >> 4,
                self.max
            ));
        }
        let qos = match (byte1 >> 1) & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            // We subscribe with QoS 1, so the broker never sends QoS 2.
            q => return Err(format!("PUBLISH with QoS {q} from the broker")),
        };
        let Some(t) = self.buf.get(header..header + 2) else {
            return Ok(None);
        };
        let topic_len = usize::from(u16::from_be_bytes([t[0], t[1]]));
        let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let head = 2 + topic_len + id_len;
        if head > remaining {
            return Err("malformed PUBLISH from the broker".into());
        }
        if self.buf.len() < header + head {
            return Ok(None);
        }
        let topic = std::str::from_utf8(&self.buf[header + 2..header + 2 + topic_len])
            .map_err(|_| "PUBLISH topic is not UTF-8")?
            .to_owned();
        let id_at = header + 2 + topic_len;
        let pkid = match id_len {
            0 => 0,
            _ => u16::from_be_bytes([self.buf[id_at], self.buf[id_at + 1]]),
        };
        self.buf.advance(header + head);
        self.skip = remaining - head;
        let frame = Frame::Oversize {
            head: Oversize {
                topic,
                retain: byte1 & 1 == 1,
                payload: remaining - head,
                packet,
            },
            qos,
            pkid,
        };
        // Drop what of the body is already here.
        let n = self.skip.min(self.buf.len());
        self.buf.advance(n);
        self.skip -= n;
        Ok(Some(frame))
    }
}

enum Wake {
    Read(Result<(), String>),
    Request(Option<Vec<Out>>),
    Ping,
    Nudge,
}

struct Driver {
    endpoint: Endpoint,
    io: Option<Box<dyn Io>>,
    framer: Framer,
    /// Encoded packets not yet written.
    wbuf: BytesMut,
    state: MqttState,
    /// Bytes arrived since the last keep-alive ping (the broker is alive even if its PINGRESP
    /// is still queued behind a large message we are skipping).
    read_since_ping: bool,
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

/// Reads once from the socket into the framer's buffer. Cancel-safe (`read_buf`).
async fn read_some(io: &mut Box<dyn Io>, framer: &mut Framer) -> Result<(), String> {
    framer.reserve();
    match io.read_buf(&mut framer.buf).await {
        Ok(0) => Err("connection closed by the broker".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl Driver {
    fn new(
        endpoint: Endpoint,
        rx: mpsc::Receiver<Vec<Out>>,
        tx: mpsc::UnboundedSender<ConnEvent>,
    ) -> Self {
        Self {
            framer: Framer::new(endpoint.max_packet_size),
            state: MqttState::new(endpoint.inflight, false),
            endpoint,
            io: None,
            wbuf: BytesMut::new(),
            read_since_ping: false,
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
            && self.state.collision.is_none()
            && self.state.inflight() < self.endpoint.inflight
    }

    /// TCP, TLS, CONNECT and its CONNACK.
    async fn connect(&mut self) -> Result<(), String> {
        self.io = Some(open_socket(&self.endpoint).await?);
        self.write(Packet::Connect(self.endpoint.connect.clone()))?;
        self.flush().await?;
        loop {
            if let Some(frame) = self.framer.next()? {
                return match frame {
                    Frame::Packet(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => {
                        Ok(())
                    }
                    Frame::Packet(Packet::ConnAck(a)) => {
                        Err(format!("the broker refused the connection: {:?}", a.code))
                    }
                    other => Err(format!("expected CONNACK, got {other:?}")),
                };
            }
            let io = self.io.as_mut().ok_or("no network")?;
            read_some(io, &mut self.framer).await?;
        }
    }

    async fn run(&mut self) -> Result<(), String> {
        tokio::time::timeout(NETWORK_TIMEOUT, self.connect())
            .await
            .map_err(|_| "connecting timed out".to_string())??;
        let _ = self.tx.send(ConnEvent::Connected);
        let keep_alive = Duration::from_secs(u64::from(self.endpoint.connect.keep_alive));
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
            let io = self.io.as_mut().ok_or("no network")?;
            let wake = tokio::select! {
                biased;
                r = read_some(io, &mut self.framer) => Wake::Read(r),
                o = self.rx.recv(), if take => Wake::Request(o),
                _ = tokio::time::sleep_until(next_ping) => Wake::Ping,
                _ = tokio::time::sleep_until(nudge_at), if self.nudge_at.is_some() => Wake::Nudge,
            };
            match wake {
                Wake::Read(r) => {
                    r?;
                    self.read_since_ping = true;
                    self.handle_frames()?;
                    // Acknowledgements of incoming QoS 1 messages, if any.
                    if !self.wbuf.is_empty() {
                        self.flush().await?;
                    }
                    if self.nudge_at.is_none() && self.wants_nudge() {
                        self.nudge_at = Some(Instant::now() + NUDGE_AFTER);
                    }
                }
                Wake::Request(Some(batch)) => self.queue.extend(batch),
                Wake::Request(None) => self.requests_closed = true,
                Wake::Nudge => {
                    self.nudge_at = None;
                    if self.wants_nudge() {
                        self.write(Packet::PingReq)?;
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
                    if std::mem::take(&mut self.read_since_ping) {
                        self.state.await_pingresp = false;
                    }
                    // Errors when the previous ping was never answered and nothing else
                    // arrived since: the broker is gone.
                    let ping = self
                        .state
                        .handle_outgoing_packet(Request::PingReq(PingReq))
                        .map_err(|e| e.to_string())?;
                    self.state.events.clear();
                    if let Some(p) = ping {
                        self.write(p)?;
                        self.flush().await?;
                    }
                    next_ping = Instant::now() + keep_alive;
                }
            }
        }
    }

    /// Encodes a packet into the write buffer.
    fn write(&mut self, p: Packet) -> Result<(), String> {
        p.write(&mut self.wbuf, self.endpoint.max_packet_size)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Writes the write buffer out (bounded wait: a broker that stops reading is gone).
    async fn flush(&mut self) -> Result<(), String> {
        let io = self.io.as_mut().ok_or("no network")?;
        let wbuf = &mut self.wbuf;
        let write = async move {
            io.write_all(wbuf).await?;
            wbuf.clear();
            io.flush().await
        };
        match tokio::time::timeout(NETWORK_TIMEOUT, write).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("flush timed out (broker not reading)".into()),
        }
    }

    /// Handles every complete frame in the read buffer: acknowledgements, messages, SUBACKs,
    /// skipped oversize messages (acknowledged here; the PUBACK goes out with the next flush).
    fn handle_frames(&mut self) -> Result<(), String> {
        while let Some(frame) = self.framer.next()? {
            match frame {
                Frame::Packet(p) => {
                    if let Some(out) = self
                        .state
                        .handle_incoming_packet(p)
                        .map_err(|e| e.to_string())?
                    {
                        self.write(out)?;
                    }
                    self.process_incoming();
                }
                Frame::Oversize { head, qos, pkid } => {
                    if qos == QoS::AtLeastOnce {
                        self.write(Packet::PubAck(PubAck::new(pkid)))?;
                    }
                    self.report_acks();
                    let _ = self.tx.send(ConnEvent::Oversize(head));
                }
            }
        }
        Ok(())
    }

    /// Writes queued requests while flow control allows, then flushes once. True when a
    /// DISCONNECT was sent.
    async fn write_queued(&mut self) -> Result<bool, String> {
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
                            let pkid = self.state.collision.as_ref().map_or(0, |c| c.pkid);
                            self.collided = Some((pkid, tag, barrier));
                        }
                        _ => {}
                    }
                    p
                }
                Out::Subscribe(s) => self
                    .state
                    .handle_outgoing_packet(Request::Subscribe(s))
                    .map_err(|e| e.to_string())?,
                Out::Disconnect => {
                    disconnect = true;
                    self.state
                        .handle_outgoing_packet(Request::Disconnect(rumqttc::Disconnect))
                        .map_err(|e| e.to_string())?
                }
            };
            // Outgoing notifications are not needed: tags are matched above.
            self.state.events.clear();
            if let Some(p) = packet {
                self.write(p)?;
            }
            if disconnect {
                break;
            }
        }
        if !self.wbuf.is_empty() {
            self.flush().await?;
        }
        Ok(disconnect)
    }

    /// Handles what the state machine decoded: acknowledgements, messages, SUBACKs.
    fn process_incoming(&mut self) {
        let events: Vec<Event> = self.state.events.drain(..).collect();
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
        self.wbuf.clear();
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some(io) = self.io.as_mut() {
            let r = tokio::time::timeout_at(deadline, read_some(io, &mut self.framer)).await;
            let decoded = self.handle_frames();
            if !matches!(r, Ok(Ok(()))) || decoded.is_err() {
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

    fn endpoint(port: u16) -> Endpoint {
        let mut connect = rumqttc::Connect::new("t");
        connect.keep_alive = 60;
        Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            connect,
            inflight: 100,
            max_packet_size: 1024,
        }
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
        let mut ep = endpoint(port);
        ep.inflight = 3;
        let mut c = Connection::start(ep, 4);
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
        let mut c = Connection::start(endpoint(port), 4);
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

    /// A PUBLISH packet: first byte (type 3, QoS, retain), topic, packet id if QoS 1, payload.
    fn publish_bytes(topic: &str, qos1: bool, retain: bool, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos1 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut out = vec![0x30 | if qos1 { 2 } else { 0 } | u8::from(retain)];
        let mut len = body.len();
        loop {
            let mut b = (len & 0x7f) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend(body);
        out
    }

    /// Feeds `bytes` to a framer in pieces of `step` and collects every frame.
    fn frames(max: usize, bytes: &[u8], step: usize) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            f.buf.extend_from_slice(piece);
            while let Some(frame) = f.next().unwrap() {
                out.push(frame);
            }
        }
        assert!(f.buf.is_empty() && f.skip == 0, "everything consumed");
        out
    }

    #[test]
    fn oversize_publishes_are_skipped_whatever_the_read_sizes() {
        let mut stream = publish_bytes("a/b", true, true, 7, &[b'x'; 5000]);
        stream.extend(publish_bytes("small", false, false, 0, b"hello"));
        stream.extend(publish_bytes("big0", false, false, 0, &[b'y'; 70_000]));
        stream.extend([0xd0, 0]); // PINGRESP
        for step in [1, 2, 3, 7, 100, 4096, 1 << 20] {
            let got = frames(1024, &stream, step);
            assert_eq!(got.len(), 4, "step {step}: {got:?}");
            let Frame::Oversize { head, qos, pkid } = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(
                (head, *qos, *pkid),
                (
                    &Oversize {
                        topic: "a/b".into(),
                        retain: true,
                        payload: 5000,
                        packet: 5000 + 2 + 3 + 2 + 3
                    },
                    QoS::AtLeastOnce,
                    7
                )
            );
            assert!(
                matches!(&got[1], Frame::Packet(Packet::Publish(p)) if p.topic == "small" && p.payload == "hello"),
                "{got:?}"
            );
            assert!(
                matches!(&got[2], Frame::Oversize { head, qos: QoS::AtMostOnce, .. } if head.topic == "big0" && head.payload == 70_000 && !head.retain),
                "{got:?}"
            );
            assert!(matches!(got[3], Frame::Packet(Packet::PingResp)));
        }
    }

    #[test]
    fn only_a_publish_may_exceed_the_limit() {
        let mut f = Framer::new(64);
        // A SUBACK claiming 1,000 bytes.
        f.buf.extend_from_slice(&[0x90, 0xe8, 0x07]);
        assert!(f.next().is_err());
        let mut f = Framer::new(64);
        f.buf
            .extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(f.next().is_err(), "length over 4 bytes");
        let mut f = Framer::new(64);
        // topic length 300 in a packet of 100 bytes
        let mut p = vec![0x30, 100, 0x01, 0x2c];
        p.resize(102, b'x');
        f.buf.extend_from_slice(&p);
        assert!(f.next().is_err(), "topic longer than the packet");
    }

    /// A retained message over the limit: reported, acknowledged, and the connection stays up
    /// for the next message.
    #[tokio::test]
    async fn an_oversize_message_is_acknowledged_and_the_connection_stays_up() {
        let (port, accept) = broker().await;
        let mut c = Connection::start(endpoint(port), 4);
        let script = tokio::spawn(async move {
            let mut s = accept.await.unwrap();
            s.write_all(&publish_bytes("req/info", true, true, 9, &[b'z'; 300_000]))
                .await
                .unwrap();
            let (kind, body) = read_packet(&mut s).await;
            assert_eq!(
                (kind, body),
                (0x40, vec![0, 9]),
                "PUBACK of the skipped message"
            );
            s.write_all(&publish_bytes("req/health", true, false, 10, b"{}"))
                .await
                .unwrap();
            let (kind, body) = read_packet(&mut s).await;
            assert_eq!((kind, body), (0x40, vec![0, 10]));
            s
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), c.events.recv())
                .await
                .expect("events within 5 s")
                .expect("connection alive");
            got.push(ev);
        }
        assert!(matches!(got[0], ConnEvent::Connected), "{got:?}");
        assert!(
            matches!(&got[1], ConnEvent::Oversize(o) if o.topic == "req/info" && o.retain && o.payload == 300_000),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], ConnEvent::Message(p) if p.topic == "req/health"),
            "{got:?}"
        );
        let _socket = script.await.unwrap();
    }
}
