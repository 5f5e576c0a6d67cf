//! File descriptors: how `pmesh node` keeps enough of them for the mesh and the control
//! endpoint whatever `/metrics` receives.
//!
//! Every socket holds a descriptor, and once a process has none left every `accept` fails:
//! the mesh listener, the control endpoint and `/metrics` alike (issue 11: 365 idle sockets to
//! `/metrics` under `ulimit -n 256` did exactly that). So:
//!
//! 1. at start the soft `RLIMIT_NOFILE` is raised to the hard limit, which any process may do
//!    (commonly 1,024 → 524,288 under systemd);
//! 2. the mesh listener (`[limits] max_connections`, 64) and the control endpoint
//!    (`pmesh_net::control::MAX_CLIENTS`, 64) cap their own connections, and [`BASE`] more
//!    covers the rest of the process (stdio, runtimes, listeners, the MQTT socket, state and
//!    OTA files, uplinks);
//! 3. `/metrics`, the one listener whose clients nothing else bounds, gets a quarter of what
//!    is left after that reserve, at most 16 and at least 1 ([`metrics_connections`]); its
//!    server closes connections beyond that at once and times out idle ones
//!    (`pmesh_bridge::http`).
//!
//! At a limit of 256 that is 16 connections; at 200, 2. With a limit below the reserve a
//! warning says so at start.

use pmesh_net::control::MAX_CLIENTS;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for everything but mesh links, control clients and `/metrics`.
pub const BASE: u64 = 64;

/// Most `/metrics` connections, however high the limit.
pub const METRICS_MAX: usize = 16;

/// The soft and hard `RLIMIT_NOFILE` (`None`: unlimited), and the soft limit before it was
/// raised, if it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// Soft limit now.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
    /// Soft limit before [`raise_soft_limit`] raised it.
    pub raised_from: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 2^20, the kernel's usual
/// `nr_open`); keeps it if the kernel refuses.
pub fn raise_soft_limit() -> FdLimit {
    let now = getrlimit(Resource::Nofile);
    let target = now.maximum.unwrap_or(1 << 20).min(1 << 20);
    let mut limit = FdLimit {
        soft: now.current,
        hard: now.maximum,
        raised_from: None,
    };
    if now.current.is_some_and(|c| c < target) {
        let new = Rlimit {
            current: Some(target),
            maximum: now.maximum,
        };
        if setrlimit(Resource::Nofile, new).is_ok() {
            limit.raised_from = now.current;
            limit.soft = Some(target);
        }
    }
    limit
}

/// The soft `RLIMIT_NOFILE` now (`u64::MAX` when unlimited).
pub fn soft_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors reserved for the process, its mesh links and its control clients.
pub fn reserved(mesh_links: usize) -> u64 {
    BASE + mesh_links as u64 + MAX_CLIENTS as u64
}

/// Connections `/metrics` may hold with `limit` descriptors and up to `mesh_links` mesh links.
pub fn metrics_connections(limit: u64, mesh_links: usize) -> usize {
    let spare = limit.saturating_sub(reserved(mesh_links));
    usize::try_from(spare / 4)
        .unwrap_or(METRICS_MAX)
        .clamp(1, METRICS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_get_a_quarter_of_what_the_reserve_leaves() {
        assert_eq!(reserved(64), 192);
        assert_eq!(metrics_connections(1024, 64), 16);
        assert_eq!(metrics_connections(256, 64), 16);
        assert_eq!(metrics_connections(200, 64), 2);
        assert_eq!(metrics_connections(100, 64), 1, "never none");
        assert_eq!(metrics_connections(u64::MAX, 64), 16);
        assert_eq!(
            metrics_connections(256, 200),
            1,
            "more mesh links, fewer scrapers"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let l = raise_soft_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(l.soft, now.current);
        assert_eq!(l.hard, now.maximum);
        if let Some(hard) = now.maximum.filter(|h| *h <= 1 << 20) {
            assert_eq!(now.current, Some(hard));
        }
    }
}
