//! Counters a node keeps; hosts export them (simulator reports, Prometheus).

/// Monotonic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Frames received and parsed.
    pub frames_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Frames queued for sending (forwarded ones included).
    pub frames_out: u64,
    /// Bytes queued for sending.
    pub bytes_out: u64,
    /// Frames forwarded unchanged for other nodes.
    pub forwarded: u64,
    /// Frames dropped: longer than the frame cap.
    pub dropped_oversized: u64,
    /// Frames dropped: not JSON the reference accepts, or not an object.
    pub dropped_invalid: u64,
    /// SINGLE frames dropped: no route to `dest`.
    pub dropped_no_route: u64,
    /// Frames dropped: CONTROL, or an unknown type without routing that nobody handles.
    pub dropped_unhandled: u64,
    /// Events dropped because the host did not drain them.
    pub dropped_events: u64,
    /// Connections closed by this node's protocol rules.
    pub closed_by_node: u64,
    /// NODE_SYNC frames received that changed a neighbour's tree.
    pub topology_changes: u64,
    /// NODE_SYNC trees not taken because they showed a loop cut elsewhere (`Config::loop_grace`).
    pub loop_syncs_ignored: u64,
    /// Early NODE_SYNC requests on a link to a node that just came again on a new link (a
    /// reboot leaves the old link dead; see `Config::probe_duplicate_links`).
    pub duplicate_link_probes: u64,
    /// BROADCAST frames neither forwarded nor delivered because they came on a link held in
    /// the loop grace (its tree showed a loop not cut here; see `Config::loop_grace`).
    pub broadcasts_held: u64,
    /// Frames a plugin refused to let this node forward ([`crate::Plugin::admit`]): e.g. an
    /// OTA manifest or chunk that fails its signature or digest check.
    pub forward_refused: u64,
    /// Time-sync samples rejected by the 85x round-trip rule or giving offset 0.
    pub time_samples_retried: u64,
    /// Time-sync replies ignored by the optional rate discipline (`Config::rate_discipline`)
    /// because their request went out before a later one on the link or before a time step.
    pub time_samples_stale: u64,
    /// TIME_SYNC and TIME_DELAY frames dropped because their link exceeded
    /// `Config::time_frame_budget`.
    pub time_frames_over_budget: u64,
    /// Branches of neighbours' trees that placed this node below another node (claims no link
    /// of ours confirms), removed before the tree was taken (issue 11; docs/compatibility/node.md).
    pub self_claims_pruned: u64,
    /// Connections the peer opened that were closed for sending no first NODE_SYNC within
    /// `Config::handshake_timeout`.
    pub handshake_timeouts: u64,
}
