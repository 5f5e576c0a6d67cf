//! A TCP connection between a station and an AP: a reliable, ordered byte stream per
//! direction with latency, bandwidth and a send queue (a busy link delays what is queued
//! behind it), plus the faults that can hit it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::clock::{SEC, SimTime};

/// Index of a link in the simulator (also the `ConnId` both ends use for it).
pub type LinkId = usize;

/// Side of a link.
pub const STA: usize = 0;
/// Side of a link.
pub const AP: usize = 1;

/// One direction: bytes leave the sender's queue at the link's bandwidth and arrive `latency`
/// later, in order.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// When the last queued byte finishes transmitting.
    pub busy_until: SimTime,
    /// Chunks on their way: (arrival time, bytes, NODE_SYNC frames in them).
    pub inflight: VecDeque<(SimTime, Bytes, u32)>,
    /// A delivery event for the head is scheduled.
    pub scheduled: bool,
    /// Frames and bytes sent this way.
    pub frames: u64,
    pub bytes: u64,
    /// Most bytes waiting in this direction's send queue (the sender's backlog).
    pub max_backlog: u64,
}

/// A TCP connection.
#[derive(Debug)]
pub(crate) struct Link {
    /// Node indexes: `ends[STA]` dialled `ends[AP]`.
    pub ends: [usize; 2],
    /// One-way latency, µs.
    pub latency: SimTime,
    /// Bytes per second, per direction.
    pub bytes_per_sec: u64,
    /// Lanes: `lanes[s]` carries bytes sent by side `s`.
    pub lanes: [Lane; 2],
    /// Side `s`'s node has this connection open (handle_connect called, not yet closed).
    pub open: [bool; 2],
    /// Side `s` has been told about the connection at some point (connect delivered).
    pub connected: [bool; 2],
    /// Side `s` completed NODE_SYNC with the peer (it forwards to it).
    pub synced: [bool; 2],
    /// Everything sent is silently lost (a cut, a partition, a crashed peer).
    pub blackhole: bool,
    /// The link is over for the simulator (both sides closed or gone).
    pub dead: bool,
    /// Longest time a byte waited in the send queue (µs).
    pub max_queue_delay: SimTime,
    /// Most bytes waiting in one send queue.
    pub max_queue_bytes: u64,
    /// Boot number of each end when the link was made (a restarted node does not own old links).
    pub boots: [u32; 2],
}

impl Link {
    pub(crate) fn new(
        sta: usize,
        ap: usize,
        latency: SimTime,
        bytes_per_sec: u64,
        boots: [u32; 2],
    ) -> Self {
        Link {
            ends: [sta, ap],
            latency,
            bytes_per_sec: bytes_per_sec.max(1),
            lanes: [Lane::default(), Lane::default()],
            open: [false; 2],
            connected: [false; 2],
            synced: [false; 2],
            blackhole: false,
            dead: false,
            max_queue_delay: 0,
            max_queue_bytes: 0,
            boots,
        }
    }

    /// The side of `node` on this link.
    pub(crate) fn side_of(&self, node: usize) -> usize {
        if self.ends[STA] == node { STA } else { AP }
    }

    /// Queues `data` from `side`; returns its arrival time, or None if it is lost.
    pub(crate) fn send(
        &mut self,
        side: usize,
        now: SimTime,
        data: Bytes,
        syncs: u32,
    ) -> Option<SimTime> {
        let lane = &mut self.lanes[side];
        lane.frames += 1;
        lane.bytes += data.len() as u64;
        if self.blackhole {
            return None;
        }
        let start = lane.busy_until.max(now);
        let tx = (data.len() as u64 * SEC).div_ceil(self.bytes_per_sec);
        lane.busy_until = start + tx;
        let wait = start - now;
        self.max_queue_delay = self.max_queue_delay.max(wait);
        let backlog =
            u128::from(lane.busy_until - now) * u128::from(self.bytes_per_sec) / u128::from(SEC);
        let backlog = u64::try_from(backlog).unwrap_or(u64::MAX);
        self.max_queue_bytes = self.max_queue_bytes.max(backlog);
        lane.max_backlog = lane.max_backlog.max(backlog);
        let arrive = lane.busy_until + self.latency;
        // Ordered: never before the previous chunk.
        let arrive = lane
            .inflight
            .back()
            .map_or(arrive, |&(a, _, _)| a.max(arrive));
        lane.inflight.push_back((arrive, data, syncs));
        Some(arrive)
    }

    /// When the last byte sent by `side` arrives (for an orderly close: the FIN follows the data).
    pub(crate) fn drain_time(&self, side: usize, now: SimTime) -> SimTime {
        let lane = &self.lanes[side];
        lane.inflight
            .back()
            .map_or(now + self.latency, |&(a, _, _)| a.max(now + self.latency))
    }

    /// Drops everything in flight both ways.
    pub(crate) fn purge(&mut self) {
        for lane in &mut self.lanes {
            lane.inflight.clear();
        }
    }

    /// Total frames both ways.
    pub(crate) fn frames(&self) -> u64 {
        self.lanes[0].frames + self.lanes[1].frames
    }

    /// Total bytes both ways.
    pub(crate) fn bytes(&self) -> u64 {
        self.lanes[0].bytes + self.lanes[1].bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_delays_and_order() {
        // 1,000 bytes/s, 10 ms latency.
        let mut l = Link::new(0, 1, 10_000, 1_000, [0, 0]);
        let a = l.send(STA, 0, Bytes::from(vec![0u8; 100]), 0).unwrap();
        assert_eq!(a, 100_000 + 10_000);
        let b = l.send(STA, 0, Bytes::from(vec![0u8; 10]), 0).unwrap();
        assert_eq!(b, 110_000 + 10_000);
        assert_eq!(l.max_queue_delay, 100_000);
        // The other direction is independent.
        assert_eq!(
            l.send(AP, 0, Bytes::from_static(b"x"), 0).unwrap(),
            1_000 + 10_000
        );
        l.blackhole = true;
        assert!(l.send(STA, 0, Bytes::from_static(b"y"), 0).is_none());
    }
}
