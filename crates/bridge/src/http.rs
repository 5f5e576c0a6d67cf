//! The gateway's HTTP server (`/metrics` today): axum routes served on hyper connections, with
//! limits no client can get around.
//!
//! - At most [`HttpLimits::max_connections`] connections are open at once; a connection beyond
//!   is accepted and closed at once (counted `refused`). Each open connection holds a file
//!   descriptor, so the cap is what keeps `/metrics` from taking the descriptors the mesh
//!   listener and the control endpoint need (the `pmesh node` command sizes it from the
//!   process's descriptor limit).
//! - The request head must arrive within [`HttpLimits::header_timeout`] (hyper's
//!   `header_read_timeout`, armed as soon as the connection waits for a request, so a socket
//!   that never sends anything is closed too), and be at most 16 KiB.
//! - One request per connection (no keep-alive), and the whole connection ends within
//!   [`HttpLimits::connection_timeout`]: a client that stops reading the response is cut off.
//!
//! Why not `axum::serve`: it has neither a connection cap nor timeouts, so idle sockets hold
//! descriptors forever (issue 11: under `ulimit -n 256`, 365 idle sockets to `/metrics` made
//! the mesh listener and the control endpoint fail with "Too many open files").

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once (at least 1).
    pub max_connections: usize,
    /// Time for a client to send its request head, from the moment the connection opens.
    pub header_timeout: Duration,
    /// Longest life of a connection, response included.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    /// 16 connections (Prometheus uses one; a few people and dashboards more), 5 s for the
    /// request head, 30 s in all.
    fn default() -> Self {
        HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Largest request head, bytes (hyper's minimum buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;

/// How a connection ended, the `outcome` label of `pmesh_bridge_http_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Ended normally: answered, or closed by the client before asking anything.
    Closed,
    /// Over the connection cap: closed at once.
    Refused,
    /// No complete request head in time, or the connection outlived its deadline.
    TimedOut,
    /// A malformed request, or the client went away.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
        }
    }
}

/// The server's counters (registered by [`crate::Metrics`]).
#[derive(Clone, Debug, Default)]
pub struct HttpCounters {
    /// Connections by how they ended (`closed`, `refused`, `timed_out`, `failed`).
    pub connections: Family<Vec<(String, String)>, Counter>,
    /// Connections open now.
    pub open: Gauge,
}

impl HttpCounters {
    /// Connections open now and ended so far, by outcome (for `bridge/health`).
    pub fn summary(&self) -> std::collections::BTreeMap<&'static str, i64> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("open", self.open.get());
        for o in [
            Outcome::Closed,
            Outcome::Refused,
            Outcome::TimedOut,
            Outcome::Failed,
        ] {
            let n = self
                .connections
                .get_or_create(&vec![("outcome".into(), o.label().into())])
                .get();
            m.insert(o.label(), n as i64);
        }
        m
    }

    fn ended(&self, o: Outcome) {
        self.connections
            .get_or_create(&vec![("outcome".into(), o.label().into())])
            .inc();
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    counters: HttpCounters,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("HTTP server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(sock);
            counters.ended(Outcome::Refused);
            continue;
        };
        let (app, counters) = (app.clone(), counters.clone());
        tokio::spawn(async move {
            counters.open.inc();
            let outcome = serve_one(sock, app, limits).await;
            counters.open.dec();
            counters.ended(outcome);
            drop(slot);
        });
    }
}

async fn serve_one(sock: tokio::net::TcpStream, app: axum::Router, limits: HttpLimits) -> Outcome {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = http.serve_connection(TokioIo::new(sock), service);
    match tokio::time::timeout(limits.connection_timeout, conn).await {
        Ok(Ok(())) => Outcome::Closed,
        Ok(Err(e)) if e.is_timeout() => Outcome::TimedOut,
        Ok(Err(_)) => Outcome::Failed,
        Err(_) => Outcome::TimedOut,
    }
}
