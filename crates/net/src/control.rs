//! The local control endpoint: how `pmesh send`, `pmesh nodes`, `pmesh topology` (and later
//! `pmesh ota push`) talk to a running node.
//!
//! Transport: a Unix socket (default, permissions 0600) or a TCP address (meant for
//! 127.0.0.1). Protocol: JSON lines. A request is one object with a `cmd` and its
//! parameters, and an optional `id` echoed in every answer line:
//!
//! ```text
//! → {"id":1,"cmd":"send","to":2428398258,"msg":"hello"}
//! ← {"id":1,"ok":true,"data":{"sent":"single","to":2428398258}}
//! → {"id":2,"cmd":"nodes"}
//! ← {"id":2,"ok":true,"data":{"node_id":1,"nodes":[2,3],"count":2,"tree":{...}}}
//! → {"id":3,"cmd":"bogus"}
//! ← {"id":3,"ok":false,"error":"unknown command 'bogus' (known: events, nodes, ping, send, status, topology)"}
//! → {"id":4,"cmd":"events"}                 (a stream: one line per item, until closed)
//! ← {"id":4,"ok":true,"item":{"kind":"subscribed","node_id":1}}
//! ← {"id":4,"ok":true,"item":{"kind":"received","from":2,"broadcast":true,"msg":"hi"}}
//! ```
//!
//! Built-in commands: `ping`, `status` (a [`crate::Snapshot`]), `nodes`, `topology`, `send`
//! (`to` + `msg`, or `broadcast:true` + `msg`), `events` (stream). New request kinds — OTA
//! offers and progress, bridge queries — are added with [`ControlServer::route`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pmesh_node::{Direction, Event, Plugin};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use crate::handle::{MeshEvent, MeshHandle};

/// Longest request line accepted (a `send` may carry a large message).
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;
/// Most clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 64;

// --- addresses ---------------------------------------------------------------------------

/// Where a control endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (use 127.0.0.1: the endpoint has no authentication).
    Tcp(SocketAddr),
}

impl ControlAddr {
    /// `$XDG_RUNTIME_DIR/pmesh/node.sock`, else `/tmp/pmesh-<uid>/node.sock`.
    pub fn default_path() -> ControlAddr {
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return ControlAddr::Unix(PathBuf::from(d).join("pmesh/node.sock"));
        }
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        ControlAddr::Unix(PathBuf::from(format!("/tmp/pmesh-{uid}/node.sock")))
    }
}

impl FromStr for ControlAddr {
    type Err = String;

    /// `unix:PATH`, `tcp:HOST:PORT`, a bare `IP:PORT`, or a bare path.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ControlAddr::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            return a
                .parse()
                .map(ControlAddr::Tcp)
                .map_err(|e| format!("bad TCP address '{a}': {e}"));
        }
        if let Ok(a) = s.parse() {
            return Ok(ControlAddr::Tcp(a));
        }
        if s.is_empty() {
            return Err("empty control address".into());
        }
        Ok(ControlAddr::Unix(PathBuf::from(s)))
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

// --- requests and replies ----------------------------------------------------------------

/// One request: its command, parameters and the client's id.
#[derive(Clone, Debug)]
pub struct Request {
    /// Echoed in every answer line (null when the client sent none).
    pub id: Value,
    /// The command.
    pub cmd: String,
    /// Every other field of the request object.
    pub params: Map<String, Value>,
}

impl Request {
    /// Parses a request line.
    pub fn parse(line: &[u8]) -> Result<Request, (Value, String)> {
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| (Value::Null, format!("request is not JSON: {e}")))?;
        let Value::Object(mut params) = v else {
            return Err((Value::Null, "request must be a JSON object".into()));
        };
        let id = params.remove("id").unwrap_or(Value::Null);
        match params.remove("cmd") {
            Some(Value::String(cmd)) => Ok(Request { id, cmd, params }),
            Some(_) => Err((id, "'cmd' must be a string".into())),
            None => Err((id, "request has no 'cmd'".into())),
        }
    }

    /// A string parameter.
    pub fn str(&self, key: &str) -> Result<Option<&str>, String> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("'{key}' must be a string")),
        }
    }

    /// A node-id parameter (1..=u32::MAX).
    pub fn node_id(&self, key: &str) -> Result<Option<u32>, String> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n != 0)
                .map(Some)
                .ok_or_else(|| format!("'{key}' must be a node id (1..=4294967295)")),
        }
    }

    /// A boolean parameter (absent = false).
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("'{key}' must be true or false")),
        }
    }
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// One answer: data or an error message.
    Done(Result<Value, String>),
    /// A stream of items, one line each, until the sender is dropped (then an `end` line).
    Stream(mpsc::Receiver<Value>),
}

impl Reply {
    /// A successful answer.
    pub fn ok(data: Value) -> Reply {
        Reply::Done(Ok(data))
    }

    /// An error answer.
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Done(Err(msg.into()))
    }
}

/// A boxed future of a reply.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
type Handler<P> = Arc<dyn Fn(Request, MeshHandle<P>) -> ReplyFuture + Send + Sync>;

// --- server ------------------------------------------------------------------------------

/// A bound control endpoint (the Unix socket file is removed when it is dropped).
#[derive(Debug)]
pub enum ControlListener {
    /// A Unix socket and its path.
    Unix(UnixListener, PathBuf),
    /// A TCP listener.
    Tcp(TcpListener),
}

impl ControlListener {
    /// Binds `addr`. For a Unix socket, creates the directory (0700) if missing, refuses to
    /// take over a socket a live node answers on, and replaces a stale one.
    pub async fn bind(addr: &ControlAddr) -> io::Result<ControlListener> {
        match addr {
            ControlAddr::Tcp(a) => {
                if !a.ip().is_loopback() {
                    warn!(addr = %a, "control endpoint on a non-loopback address: anyone who can reach it can control this node");
                }
                Ok(ControlListener::Tcp(TcpListener::bind(a).await?))
            }
            ControlAddr::Unix(path) => {
                if let Some(dir) = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty() && !d.exists())
                {
                    std::fs::create_dir_all(dir)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
                if path.exists() {
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "another pmesh node answers on {}; choose another --control",
                                path.display()
                            ),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let l = UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(ControlListener::Unix(l, path.clone()))
            }
        }
    }

    /// The address, as clients pass it.
    pub fn addr(&self) -> io::Result<ControlAddr> {
        match self {
            ControlListener::Unix(_, p) => Ok(ControlAddr::Unix(p.clone())),
            ControlListener::Tcp(l) => Ok(ControlAddr::Tcp(l.local_addr()?)),
        }
    }

    async fn accept(&self) -> io::Result<(BoxRead, BoxWrite)> {
        match self {
            ControlListener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
            ControlListener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if let ControlListener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Serves control requests for one node; extend it with [`ControlServer::route`].
pub struct ControlServer<P: Plugin> {
    handle: MeshHandle<P>,
    routes: BTreeMap<String, Handler<P>>,
}

impl<P: Plugin> fmt::Debug for ControlServer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlServer")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<P> ControlServer<P>
where
    P: Plugin + 'static,
    P::Event: Send + Sync + fmt::Debug + 'static,
{
    /// A server with the built-in commands.
    pub fn new(handle: MeshHandle<P>) -> Self {
        ControlServer { handle, routes: BTreeMap::new() }
            .route("ping", |_, h| async move { Reply::ok(json!({"node_id": h.node_id()})) })
            .route("status", |_, h| async move {
                match h.snapshot().await {
                    Ok(s) => Reply::ok(serde_json::to_value(s).unwrap_or(Value::Null)),
                    Err(e) => Reply::err(e.to_string()),
                }
            })
            .route("nodes", |_, h| async move {
                match h.snapshot().await {
                    Ok(s) => Reply::ok(json!({"node_id": s.node_id, "count": s.nodes.len(), "nodes": s.nodes, "tree": s.tree})),
                    Err(e) => Reply::err(e.to_string()),
                }
            })
            .route("topology", |_, h| async move {
                match h.snapshot().await {
                    Ok(s) => Reply::ok(s.tree),
                    Err(e) => Reply::err(e.to_string()),
                }
            })
            .route("send", send)
            .route("events", events)
    }

    /// Adds (or replaces) the handler of `cmd`.
    pub fn route<F, Fut>(mut self, cmd: &str, handler: F) -> Self
    where
        F: Fn(Request, MeshHandle<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.routes.insert(
            cmd.to_owned(),
            Arc::new(move |req, h| Box::pin(handler(req, h))),
        );
        self
    }

    /// Serves clients on `listener` until `shutdown` completes.
    pub async fn serve(self, listener: ControlListener, shutdown: impl Future<Output = ()>) {
        let server = Arc::new(self);
        let active = Arc::new(AtomicUsize::new(0));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (rd, mut wr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "control endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if active.load(Ordering::Relaxed) >= MAX_CLIENTS {
                let _ = write_line(
                    &mut wr,
                    &error_line(&Value::Null, "too many control clients"),
                )
                .await;
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let (server, active) = (server.clone(), active.clone());
            tokio::spawn(async move {
                if let Err(e) = server.client(rd, wr).await {
                    debug!(error = %e, "control client ended");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    async fn client(&self, rd: BoxRead, mut wr: BoxWrite) -> io::Result<()> {
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut rd)
                .take(MAX_REQUEST_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_REQUEST_LINE {
                let msg = format!("request longer than {MAX_REQUEST_LINE} bytes");
                write_line(&mut wr, &error_line(&Value::Null, &msg)).await?;
                return Ok(());
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let req = match Request::parse(&line) {
                Ok(r) => r,
                Err((id, msg)) => {
                    write_line(&mut wr, &error_line(&id, &msg)).await?;
                    continue;
                }
            };
            let id = req.id.clone();
            let Some(handler) = self.routes.get(&req.cmd) else {
                let known = self
                    .routes
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let msg = format!("unknown command '{}' (known: {known})", req.cmd);
                write_line(&mut wr, &error_line(&id, &msg)).await?;
                continue;
            };
            match handler(req, self.handle.clone()).await {
                Reply::Done(Ok(data)) => {
                    write_line(&mut wr, &json!({"id": id, "ok": true, "data": data})).await?
                }
                Reply::Done(Err(msg)) => write_line(&mut wr, &error_line(&id, &msg)).await?,
                Reply::Stream(mut items) => {
                    while let Some(item) = items.recv().await {
                        write_line(&mut wr, &json!({"id": id, "ok": true, "item": item})).await?;
                    }
                    write_line(&mut wr, &json!({"id": id, "ok": true, "end": true})).await?;
                }
            }
        }
    }
}

fn error_line(id: &Value, msg: &str) -> Value {
    json!({"id": id, "ok": false, "error": msg})
}

async fn write_line(wr: &mut BoxWrite, v: &Value) -> io::Result<()> {
    let mut buf = serde_json::to_vec(v).map_err(io::Error::other)?;
    buf.push(b'\n');
    wr.write_all(&buf).await?;
    wr.flush().await
}

async fn send<P>(req: Request, h: MeshHandle<P>) -> Reply
where
    P: Plugin + 'static,
    P::Event: Send + Sync + 'static,
{
    let parsed = (|| {
        let msg = req
            .str("msg")?
            .ok_or("'msg' is required")?
            .as_bytes()
            .to_vec();
        Ok::<_, String>((req.node_id("to")?, req.flag("broadcast")?, msg))
    })();
    let (to, broadcast, msg) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::err(e),
    };
    match (to, broadcast) {
        (Some(dest), false) => match h.send_single(dest, msg).await {
            Ok(()) => Reply::ok(json!({"sent": "single", "to": dest})),
            Err(e) => Reply::err(format!("cannot send to node {dest}: {e}")),
        },
        (None, true) => match h.send_broadcast(msg, false).await {
            Ok(()) => Reply::ok(json!({"sent": "broadcast"})),
            Err(e) => Reply::err(format!("cannot broadcast: {e}")),
        },
        _ => Reply::err("give either 'to' (a node id) or 'broadcast': true"),
    }
}

async fn events<P>(_req: Request, h: MeshHandle<P>) -> Reply
where
    P: Plugin + 'static,
    P::Event: Send + Sync + fmt::Debug + 'static,
{
    let mut rx = h.subscribe();
    let (tx, items) = mpsc::channel(256);
    // Tells the client that every event from here on will reach it.
    let _ = tx.try_send(json!({"kind": "subscribed", "node_id": h.node_id()}));
    tokio::spawn(async move {
        loop {
            let item = match rx.recv().await {
                Ok(ev) => event_json(&ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    json!({"kind": "lagged", "missed": n})
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    Reply::Stream(items)
}

/// An event as JSON (`kind` plus fields), as the `events` stream carries it.
pub fn event_json<E: fmt::Debug>(ev: &MeshEvent<E>) -> Value {
    let dir = |d: &Direction| match d {
        Direction::Station => "station",
        Direction::Ap => "ap",
    };
    match ev {
        MeshEvent::LinkUp {
            conn,
            peer,
            direction,
        } => {
            json!({"kind": "link_up", "conn": conn, "peer": peer.to_string(), "direction": dir(direction)})
        }
        MeshEvent::LinkDown {
            conn,
            peer,
            node_id,
            reason,
        } => {
            json!({"kind": "link_down", "conn": conn, "peer": peer.to_string(), "node_id": node_id, "reason": reason.to_string()})
        }
        MeshEvent::Node(e) => match e {
            Event::Received {
                from,
                msg,
                broadcast,
            } => {
                json!({"kind": "received", "from": from, "broadcast": broadcast, "msg": String::from_utf8_lossy(msg)})
            }
            Event::Package { envelope, raw } => json!({
                "kind": "package", "type": envelope.ty, "from": envelope.from, "dest": envelope.dest,
                "json": String::from_utf8_lossy(&raw[..raw.len().saturating_sub(1)]),
            }),
            Event::NewConnection { node_id, conn } => {
                json!({"kind": "new_connection", "node_id": node_id, "conn": conn.0})
            }
            Event::DroppedConnection {
                node_id,
                conn,
                reason,
            } => {
                json!({"kind": "dropped_connection", "node_id": node_id, "conn": conn.0, "reason": reason.as_str()})
            }
            Event::ChangedConnections => json!({"kind": "changed_connections"}),
            Event::TimeAdjusted { offset } => json!({"kind": "time_adjusted", "offset_us": offset}),
            Event::Delay { node_id, delay_us } => {
                json!({"kind": "delay", "node_id": node_id, "delay_us": delay_us})
            }
            Event::FrameDropped {
                conn,
                reason,
                frames,
            } => {
                json!({"kind": "frame_dropped", "conn": conn.0, "reason": reason.as_str(), "frames": frames})
            }
            Event::Plugin(p) => json!({"kind": "plugin", "event": format!("{p:?}")}),
        },
    }
}

// --- client ------------------------------------------------------------------------------

/// Why a control request failed.
#[derive(Debug)]
pub enum ControlError {
    /// No node listens at the address.
    NotRunning(ControlAddr, io::Error),
    /// The connection failed midway.
    Io(io::Error),
    /// The node answered with an error.
    Remote(String),
    /// The answer was not what the protocol promises.
    Protocol(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::NotRunning(addr, e) => write!(
                f,
                "no pmesh node answers on {addr} ({e}); start one with `pmesh node`, or point --control at its endpoint"
            ),
            ControlError::Io(e) => write!(f, "control connection failed: {e}"),
            ControlError::Remote(m) => f.write_str(m),
            ControlError::Protocol(m) => write!(f, "unexpected answer from the node: {m}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        ControlError::Io(e)
    }
}

/// A client of a node's control endpoint.
pub struct ControlClient {
    rd: BufReader<BoxRead>,
    wr: BoxWrite,
    next_id: u64,
}

impl fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlClient")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl ControlClient {
    /// Connects to a node's control endpoint.
    pub async fn connect(addr: &ControlAddr) -> Result<ControlClient, ControlError> {
        let (rd, wr): (BoxRead, BoxWrite) = match addr {
            ControlAddr::Unix(p) => {
                let s = UnixStream::connect(p)
                    .await
                    .map_err(|e| ControlError::NotRunning(addr.clone(), e))?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            ControlAddr::Tcp(a) => {
                let s = TcpStream::connect(a)
                    .await
                    .map_err(|e| ControlError::NotRunning(addr.clone(), e))?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        Ok(ControlClient {
            rd: BufReader::new(rd),
            wr,
            next_id: 1,
        })
    }

    async fn send_request(&mut self, cmd: &str, params: Value) -> Result<u64, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut obj = match params {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ControlError::Protocol(format!(
                    "parameters must be an object, not {other}"
                )));
            }
        };
        obj.insert("id".into(), json!(id));
        obj.insert("cmd".into(), json!(cmd));
        let mut line = serde_json::to_vec(&Value::Object(obj)).map_err(io::Error::other)?;
        line.push(b'\n');
        self.wr.write_all(&line).await?;
        self.wr.flush().await?;
        Ok(id)
    }

    async fn read_answer(&mut self) -> Result<Option<Value>, ControlError> {
        let mut line = Vec::new();
        let n = (&mut self.rd)
            .take(64 * 1024 * 1024)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// Sends a request and returns its `data`, or the node's error.
    pub async fn request(&mut self, cmd: &str, params: Value) -> Result<Value, ControlError> {
        self.send_request(cmd, params).await?;
        let answer = self
            .read_answer()
            .await?
            .ok_or_else(|| ControlError::Protocol("connection closed".into()))?;
        parse_answer(answer).and_then(|a| match a {
            Answer::Data(d) => Ok(d),
            _ => Err(ControlError::Protocol("expected a single answer".into())),
        })
    }

    /// Starts a streaming request; read its items with [`ControlClient::next_item`].
    pub async fn stream(&mut self, cmd: &str, params: Value) -> Result<(), ControlError> {
        self.send_request(cmd, params).await.map(drop)
    }

    /// The next item of a stream, `None` at its end.
    pub async fn next_item(&mut self) -> Result<Option<Value>, ControlError> {
        let Some(answer) = self.read_answer().await? else {
            return Ok(None);
        };
        match parse_answer(answer)? {
            Answer::Item(v) => Ok(Some(v)),
            Answer::End => Ok(None),
            Answer::Data(_) => Err(ControlError::Protocol("expected a stream item".into())),
        }
    }
}

enum Answer {
    Data(Value),
    Item(Value),
    End,
}

fn parse_answer(mut v: Value) -> Result<Answer, ControlError> {
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => {}
        Some(false) => {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unspecified error")
                .to_owned();
            return Err(ControlError::Remote(msg));
        }
        None => return Err(ControlError::Protocol(format!("answer without 'ok': {v}"))),
    }
    let Some(obj) = v.as_object_mut() else {
        return Err(ControlError::Protocol("answer is not an object".into()));
    };
    if let Some(item) = obj.remove("item") {
        return Ok(Answer::Item(item));
    }
    if obj.get("end").and_then(Value::as_bool) == Some(true) {
        return Ok(Answer::End);
    }
    Ok(Answer::Data(obj.remove("data").unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:/tmp/x.sock".parse(),
            Ok(ControlAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            "/run/p.sock".parse(),
            Ok(ControlAddr::Unix("/run/p.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:7000".parse(),
            Ok(ControlAddr::Tcp("127.0.0.1:7000".parse().unwrap()))
        );
        assert_eq!(
            "tcp:[::1]:7000".parse(),
            Ok(ControlAddr::Tcp("[::1]:7000".parse().unwrap()))
        );
        assert!("tcp:nonsense".parse::<ControlAddr>().is_err());
        assert!("".parse::<ControlAddr>().is_err());
    }

    #[test]
    fn parses_requests() {
        let r = Request::parse(br#"{"id":7,"cmd":"send","to":5,"msg":"hi"}"#).unwrap();
        assert_eq!(r.id, json!(7));
        assert_eq!(r.cmd, "send");
        assert_eq!(r.node_id("to"), Ok(Some(5)));
        assert_eq!(r.str("msg"), Ok(Some("hi")));
        assert_eq!(r.flag("broadcast"), Ok(false));
        let r = Request::parse(br#"{"cmd":"send","to":0,"broadcast":"yes"}"#).unwrap();
        assert!(r.node_id("to").is_err());
        assert!(r.flag("broadcast").is_err());
        let r = Request::parse(br#"{"cmd":"x","to":4294967296}"#).unwrap();
        assert!(r.node_id("to").is_err());
        assert_eq!(
            Request::parse(b"[1]").unwrap_err().1,
            "request must be a JSON object"
        );
        assert_eq!(
            Request::parse(br#"{"id":3}"#).unwrap_err(),
            (json!(3), "request has no 'cmd'".to_owned())
        );
        assert!(Request::parse(b"{nope").is_err());
    }
}
