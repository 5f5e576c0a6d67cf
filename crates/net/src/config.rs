//! Runtime settings: where to listen, whom to dial, and the limits that keep one peer from
//! hurting the others.

use std::net::SocketAddr;
use std::time::Duration;

/// When to dial an uplink again after a failed or lost connection.
///
/// The reference retries a TCP connect 5 times, after 1, 2, 4, 8 and 8 s
/// (`TcpRetryConfig`), then reconnects WiFi and blocklists the AP for 60 s. A Linux node has
/// no WiFi to reconnect, so after the listed steps it keeps doubling the last step up to
/// `max` and stays there, forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delays before retries 1..=n.
    pub steps: Vec<Duration>,
    /// Upper bound of the backoff after the steps.
    pub max: Duration,
}

impl RetrySchedule {
    /// The reference's schedule: 1, 2, 4, 8, 8 s, then doubling up to 60 s.
    pub fn reference() -> Self {
        RetrySchedule {
            steps: [1, 2, 4, 8, 8]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max: Duration::from_secs(60),
        }
    }

    /// Delay before retry number `attempt` (0 = the first retry after a failure).
    pub fn delay(&self, attempt: usize) -> Duration {
        if let Some(d) = self.steps.get(attempt) {
            return *d;
        }
        let last = self.steps.last().copied().unwrap_or(Duration::from_secs(1));
        let extra = (attempt + 1 - self.steps.len()).min(16) as u32;
        last.saturating_mul(1 << extra)
            .min(self.max)
            .max(last.min(self.max))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::reference()
    }
}

/// Settings of the runtime (the node's own protocol settings are in [`pmesh_node::Config`]).
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Address to accept mesh connections on (the painlessMesh port is 5555); `None`: station only.
    pub listen: Option<SocketAddr>,
    /// Uplinks to dial as a station (`host:port`), each kept connected forever.
    pub connect: Vec<String>,
    /// Reconnect schedule for uplinks.
    pub retry: RetrySchedule,
    /// Timeout of one connect attempt.
    pub connect_timeout: Duration,
    /// Accepted connections beyond this are closed at once (counted).
    pub max_connections: usize,
    /// Accepted connections from one IP address that have not yet sent their first NODE_SYNC:
    /// one more is closed at once (counted in `NetStats::rejected_unsynced_per_address`), so
    /// silent sockets from one address cannot take every slot (the node closes each after
    /// `pmesh_node::Config::handshake_timeout`). Honest joiners sync within a round trip.
    pub max_unsynced_per_address: usize,
    /// A reader whose bytes were forwarded into a send queue above this many bytes pauses until
    /// it drains to half of it.
    pub send_queue_high_water: usize,
    /// A send queue longer than this drops its connection (counted, logged).
    pub send_queue_limit: usize,
    /// A connection with queued bytes that accepts none for this long is dropped.
    pub write_stall_timeout: Duration,
    /// Readers stop waiting for a congested queue whose peer accepted no byte for this long:
    /// a peer that stopped reading holds the others up at most this long, then its queue
    /// grows to `send_queue_limit` or it is dropped after `write_stall_timeout`.
    pub reader_pause_limit: Duration,
    /// Size of each connection's read buffer.
    pub read_buffer: usize,
}

impl NetConfig {
    /// The painlessMesh listen address, 0.0.0.0:5555.
    pub const DEFAULT_LISTEN: &'static str = "0.0.0.0:5555";
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: Some(Self::DEFAULT_LISTEN.parse().expect("valid address")),
            connect: Vec::new(),
            retry: RetrySchedule::reference(),
            connect_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_unsynced_per_address: 16,
            send_queue_high_water: 512 * 1024,
            send_queue_limit: 8 * 1024 * 1024,
            write_stall_timeout: Duration::from_secs(10),
            reader_pause_limit: Duration::from_secs(1),
            read_buffer: 64 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedule_then_capped_backoff() {
        let r = RetrySchedule::reference();
        let secs: Vec<u64> = (0..10).map(|a| r.delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 16, 32, 60, 60, 60]);
        assert_eq!(r.delay(10_000), Duration::from_secs(60));
    }

    #[test]
    fn empty_schedule_still_backs_off() {
        let r = RetrySchedule {
            steps: vec![],
            max: Duration::from_secs(5),
        };
        assert_eq!(r.delay(0), Duration::from_secs(2));
        assert_eq!(r.delay(100), Duration::from_secs(5));
    }
}
