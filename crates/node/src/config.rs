//! Node configuration: identity, limits and the protocol's timers (defaults from spec §4, §5).

use core::time::Duration;

/// Everything a [`crate::Node`] needs at construction.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (unique in the mesh; 0 is reserved for "unknown").
    pub node_id: u32,
    /// Announce `root:true` (usually the gateway/bridge).
    pub root: bool,
    /// Announce `hasTimeAuthority:true`: neighbours adopt this node's time.
    pub time_authority: bool,
    /// Seed for the node's deterministic RNG (jitter; plugins draw from it too).
    pub seed: u64,
    /// Largest frame accepted, in bytes; longer frames are cut, counted and dropped.
    pub max_frame: usize,
    /// Deepest JSON nesting accepted (255 = 127 NodeTree levels, like the reference).
    pub max_depth: usize,
    /// Period of NODE_SYNC requests on each link (`TASK_MINUTE`).
    pub node_sync_interval: Duration,
    /// A NODE_SYNC request not answered within this closes the link (`NODE_TIMEOUT`).
    pub node_timeout: Duration,
    /// Delay before the accepting (AP) side sends its first NODE_SYNC request and time sync.
    pub ap_first_sync_delay: Duration,
    /// A connection the peer opened (AP side) whose first NODE_SYNC has not arrived within this
    /// is closed (`DropReason::HandshakeTimeout`, counted in `NodeStats::handshake_timeouts`).
    /// The dialling side of every stock and pmesh node sends its NODE_SYNC_REQUEST at once
    /// (spec §4), so an honest peer needs one round trip; without it a silent socket held a
    /// slot for 20 s (our first request after `ap_first_sync_delay`, then `node_timeout`).
    /// Links we dialled are not affected: our request goes at once and an AP-side peer
    /// answers it at once, however long it waits before asking itself; `node_timeout` bounds
    /// them. Zero disables it (the reference).
    pub handshake_timeout: Duration,
    /// How long a completed sync, or a TIME_REQUEST we answered, postpones the next time sync
    /// with that neighbour (`TIME_SYNC_INTERVAL`, 60 s).
    pub time_sync_interval: Duration,
    /// Period of each link's time-sync task, i.e. the next attempt when no reply completed a
    /// sync (10 s; the reference's `timeSyncTask` interval).
    pub time_sync_unsynced_interval: Duration,
    /// Retry delay after a sample that did not complete the sync.
    pub time_sync_retry: Duration,
    /// How long a reply to a TIME_SYNC or TIME_DELAY request is held before it is sent, with
    /// `t1` = arrival and `t2` = departure, so `t2 - t1` is real and a stock ESP's 85x check
    /// accepts our replies on links up to `84 * hold` round trip (84 ms by default; spec §5).
    pub time_reply_hold: Duration,
    /// A forced NODE_SYNC (after a topology change) on a link whose last request is still
    /// unanswered waits for that reply and then goes out once, with the newest tree, instead
    /// of one request per change. The reference sends every one; the wave of syncs that
    /// follows many simultaneous changes is then far smaller (see the `mesh_cost` example).
    pub coalesce_syncs: bool,
    /// When a node comes again on a new link while an old direct link to it is still up (it
    /// rebooted: a power cut sends no FIN), the new link is refused as by the reference, and
    /// the old one is asked at once, so a dead old link closes after `node_timeout` and the
    /// node's next attempt gets in, instead of waiting up to `node_sync_interval` for the
    /// next periodic sync. `false`: the reference (the old link is only asked on schedule).
    pub probe_duplicate_links: bool,
    /// How long an established link may keep reporting a loop that this node does not cut
    /// before it is closed anyway. Nodes on a loop agree on one link to cut (the smallest id
    /// pair on the cycle) and ignore looping trees meanwhile, so a ring loses one link instead
    /// of falling apart; this bounds the wait when the agreed link's ends do not follow that
    /// rule (stock nodes). Zero restores the reference: every link showing a loop closes.
    pub loop_grace: Duration,
    /// Events kept for the host before the oldest are dropped (and counted).
    pub max_queued_events: usize,
    /// Optional frequency discipline (not in the reference; off by default). The reference
    /// only steps the time offset at each sync (every 60 s), so between syncs two nodes drift
    /// apart at their crystals' rate difference (up to 12 ms per minute at ±100 ppm). With this
    /// on, the node also estimates the rate of the time it adopts against its local clock, from
    /// two TIME_SYNC samples on the same link at least [`RATE_BASELINE`] apart, and runs its mesh
    /// time at that rate. The wire protocol, message timing and the offset steps are unchanged,
    /// so stock nodes see an ordinary (better) clock.
    pub rate_discipline: bool,
    /// Per-link budget for TIME_SYNC and TIME_DELAY frames handled by this node (not those
    /// it forwards): a token bucket refilled at `per_second`, holding at most `burst`. A frame
    /// beyond it is dropped and counted (`NodeStats::time_frames_over_budget`). Honest peers
    /// send a few a minute, or 5 a second while a sample is retried every 200 ms; the default
    /// (20 a second, burst 40) is four times that, and keeps a flooding peer from making this
    /// node build and send a reply for every frame (issue 11, item 8).
    pub time_frame_budget: FrameBudget,
}

/// A token bucket's parameters: sustained frames per second and the burst allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameBudget {
    /// Frames per second refilled.
    pub per_second: u32,
    /// Most frames accepted at once after a quiet period.
    pub burst: u32,
}

/// Shortest local time between the two TIME_SYNC samples a rate estimate is taken from
/// ([`Config::rate_discipline`]); later samples on the same link wait for this baseline.
pub const RATE_BASELINE: Duration = Duration::from_secs(20);

/// Largest rate correction accepted, parts per billion (500 ppm): a larger apparent rate is a
/// step of the adopted time (a merge, a new time source), not a crystal, and restarts the estimate.
pub const MAX_RATE_PPB: i64 = 500_000;

impl Config {
    /// Reference defaults for a node with this id.
    pub fn new(node_id: u32) -> Self {
        Config {
            node_id,
            root: false,
            time_authority: false,
            seed: u64::from(node_id),
            max_frame: pmesh_proto::DEFAULT_MAX_FRAME,
            max_depth: pmesh_proto::DEFAULT_MAX_DEPTH,
            node_sync_interval: Duration::from_secs(60),
            node_timeout: Duration::from_secs(10),
            ap_first_sync_delay: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            time_sync_interval: Duration::from_secs(60),
            time_sync_unsynced_interval: Duration::from_secs(10),
            time_sync_retry: Duration::from_millis(200),
            time_reply_hold: Duration::from_millis(1),
            coalesce_syncs: true,
            probe_duplicate_links: true,
            loop_grace: Duration::from_secs(2),
            max_queued_events: 65_536,
            rate_discipline: false,
            time_frame_budget: FrameBudget {
                per_second: 20,
                burst: 40,
            },
        }
    }
}
