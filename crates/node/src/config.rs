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
    /// Time-sync period once a sync with a neighbour completed (`TIME_SYNC_INTERVAL`).
    pub time_sync_interval: Duration,
    /// Time-sync period while no sync with the neighbour has completed yet.
    pub time_sync_unsynced_interval: Duration,
    /// Retry delay after a sample that did not complete the sync.
    pub time_sync_retry: Duration,
    /// How long a TIME_REPLY is held before it is sent, so `t2 - t1` is real and a stock ESP's
    /// 85x round-trip check accepts our replies on links up to `84 * hold` round trip (spec §5).
    pub time_reply_hold: Duration,
    /// Events kept for the host before the oldest are dropped (and counted).
    pub max_queued_events: usize,
}

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
            time_sync_interval: Duration::from_secs(60),
            time_sync_unsynced_interval: Duration::from_secs(10),
            time_sync_retry: Duration::from_millis(200),
            time_reply_hold: Duration::from_millis(1),
            max_queued_events: 65_536,
        }
    }
}
