//! Counters of the runtime, and why links close.

use std::fmt;
use std::io;

use pmesh_node::DropReason;
use serde::Serialize;

/// Why the runtime closed a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed the connection (EOF).
    PeerClosed,
    /// Reading failed (reset, ...).
    ReadError(io::ErrorKind),
    /// Writing failed (reset, broken pipe, ...).
    WriteError(io::ErrorKind),
    /// The peer did not read: its send queue passed the limit.
    SendQueueFull,
    /// The peer accepted no byte for the stall timeout while data was queued.
    WriteStalled,
    /// The node closed it by a protocol rule (sync timeout, loop, second path, ...).
    Node(DropReason),
    /// This node is shutting down.
    Shutdown,
}

impl CloseReason {
    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ReadError(_) => "read_error",
            CloseReason::WriteError(_) => "write_error",
            CloseReason::SendQueueFull => "send_queue_full",
            CloseReason::WriteStalled => "write_stalled",
            CloseReason::Node(r) => r.as_str(),
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Whether this is a fault worth a warning (not a normal close).
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            CloseReason::PeerClosed | CloseReason::Shutdown | CloseReason::Node(DropReason::Closed)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ReadError(k) | CloseReason::WriteError(k) => {
                write!(f, "{} ({k})", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

/// Shortest interval between two lines of one repeated warning.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Rate limit of one repeated warning: at most one line per [`LOG_EVERY`]; the next printed
/// line says how many were suppressed in between.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    next_at: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(n)` when a line may be printed now (`n` lines suppressed since the last one);
    /// `None` (and counted in `suppressed_total`) when not.
    pub(crate) fn allow(
        &mut self,
        now: std::time::Instant,
        suppressed_total: &mut u64,
    ) -> Option<u64> {
        if self.next_at.is_some_and(|t| now < t) {
            self.suppressed += 1;
            *suppressed_total += 1;
            return None;
        }
        self.next_at = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `" (N more suppressed)"`, or nothing for 0.
pub(crate) fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more suppressed)")
    }
}

// The runtime's counters; `counters()` lists them for exporters.
pmesh_node::counters! {
/// Counters kept by the runtime (the node's protocol counters are `pmesh_node::NodeStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    /// Connections accepted on the listener.
    accepted,
    /// Accepted connections closed at once because `max_connections` was reached.
    rejected_max_connections,
    /// Accepted connections closed at once because their address already had
    /// `max_unsynced_per_address` connections without a first NODE_SYNC.
    rejected_unsynced_per_address,
    /// Warning lines not printed because the same warning was printed less than
    /// `LOG_EVERY` (10 s) before (each printed line says how many it stands for).
    log_lines_suppressed,
    /// Uplink connections established.
    dialled,
    /// Uplink connect attempts that failed.
    dial_failures,
    /// Links closed because the peer closed them.
    closed_peer,
    /// Links closed on a read or write error.
    closed_io_error,
    /// Links dropped because their send queue passed the limit.
    closed_send_queue_full,
    /// Links dropped because the peer stopped reading.
    closed_write_stalled,
    /// Links closed by a node protocol rule.
    closed_by_node,
    /// Bytes read from sockets.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Frames the node handed out for links that were already gone.
    dropped_no_link,
    /// Times a reader paused because a queue it fed was above the high-water mark.
    reader_pauses,
    /// Largest send queue seen, bytes.
    max_queue_bytes = Peak,
    /// Frames the node cut at the frame cap, over all links.
    frames_oversized,
    /// Frames the node could not parse, over all links.
    frames_invalid,
}
}

impl NetStats {
    pub(crate) fn count_close(&mut self, reason: CloseReason) {
        match reason {
            CloseReason::PeerClosed => self.closed_peer += 1,
            CloseReason::ReadError(_) | CloseReason::WriteError(_) => self.closed_io_error += 1,
            CloseReason::SendQueueFull => self.closed_send_queue_full += 1,
            CloseReason::WriteStalled => self.closed_write_stalled += 1,
            CloseReason::Node(_) => self.closed_by_node += 1,
            CloseReason::Shutdown => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_print_once_per_interval_with_the_count() {
        let mut l = LogLimit::default();
        let mut total = 0;
        let t0 = std::time::Instant::now();
        assert_eq!(l.allow(t0, &mut total), Some(0));
        for i in 1..=5 {
            assert_eq!(l.allow(t0 + LOG_EVERY / 10 * i, &mut total), None);
        }
        assert_eq!(total, 5);
        assert_eq!(l.allow(t0 + LOG_EVERY, &mut total), Some(5));
        assert_eq!(suppressed_note(5), " (5 more suppressed)");
        assert_eq!(suppressed_note(0), "");
    }
}
