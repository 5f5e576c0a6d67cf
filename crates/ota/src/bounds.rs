//! The honest arithmetic of mesh-wide distribution (`design/ota.md`): what an optimal rollout
//! costs, so every measured figure can be printed next to its optimum.
//!
//! N nodes, tree depth d (hops from the distributor to the deepest target), an image of S
//! bytes in k chunks of c bytes, per-link goodput B bytes/s, per-hop latency L seconds.

/// Chunks of `chunk` bytes needed for `size` bytes (`ceil(size / chunk)`; 0 for an empty image).
pub fn chunk_count(size: u64, chunk: u64) -> u64 {
    if chunk == 0 { 0 } else { size.div_ceil(chunk) }
}

/// The optimum number of data link transmissions for a mesh-wide rollout over TCP links:
/// every one of the N−1 tree edges carries every chunk once, `(N−1)·k`.
pub fn optimum_link_tx(nodes: u64, chunks: u64) -> u64 {
    nodes.saturating_sub(1) * chunks
}

/// Data link transmissions of per-node unicast pulls: `k·Σhᵢ` over the receivers' hop
/// distances from the distributor (each chunk crosses every hop of every receiver's path).
/// Requests cost as many transmissions again, in the other direction.
pub fn unicast_link_tx(receiver_hops: &[u32], chunks: u64) -> u64 {
    chunks * receiver_hops.iter().map(|&h| u64::from(h)).sum::<u64>()
}

/// Completion-time lower bound of a pipelined push down a tree of depth `depth`:
/// `T ≥ S/B + (d−1)·c/B + d·L` seconds — the source link streams the whole image, the last
/// chunk then needs d−1 more link slots and every hop adds its latency. 0 when `depth` is 0.
pub fn pipelined_lower_bound_s(
    image_bytes: u64,
    chunk_bytes: u64,
    goodput_bps: f64,
    depth: u32,
    latency_s: f64,
) -> f64 {
    if depth == 0 || goodput_bps <= 0.0 {
        return 0.0;
    }
    let (s, c, d) = (image_bytes as f64, chunk_bytes as f64, f64::from(depth));
    s / goodput_bps + (d - 1.0) * c / goodput_bps + d * latency_s
}

/// Completion time of an ideal in-order store-and-forward of frames of `frame_bytes` (in
/// sending order) down a path of `depth` links: every link sends a frame once it has fully
/// arrived and the link is free, no window limit, no processing time. With equal frames of
/// c bytes this is the pipelined bound S/B + (d−1)·c/B + d·L; with unequal ones each hop
/// costs about the largest frame, `(d−1)·max(c)/B`, which no in-order schedule avoids.
pub fn store_and_forward_s(
    frame_bytes: &[u64],
    depth: u32,
    goodput_bps: f64,
    latency_s: f64,
) -> f64 {
    if depth == 0 || goodput_bps <= 0.0 || frame_bytes.is_empty() {
        return 0.0;
    }
    // Arrival time of each frame at the current hop (all at the source at time 0).
    let mut arrive = alloc::vec![0.0f64; frame_bytes.len()];
    for _ in 0..depth {
        let mut free = 0.0f64;
        for (a, &b) in arrive.iter_mut().zip(frame_bytes) {
            free = a.max(free) + b as f64 / goodput_bps;
            *a = free + latency_s;
        }
    }
    arrive.iter().copied().fold(0.0, f64::max)
}

/// Lower bound when all links share one radio channel: every one of the N−1 edge copies of the
/// image is on air separately, `(N−1)·S/B`.
pub fn shared_channel_lower_bound_s(nodes: u64, image_bytes: u64, goodput_bps: f64) -> f64 {
    if goodput_bps <= 0.0 {
        return 0.0;
    }
    nodes.saturating_sub(1) as f64 * image_bytes as f64 / goodput_bps
}

/// Throughput ceiling of stop-and-wait (one chunk per round trip), bytes/s: `c / RTT`.
pub fn stop_and_wait_goodput_bps(chunk_bytes: u64, rtt_s: f64) -> f64 {
    if rtt_s <= 0.0 {
        f64::INFINITY
    } else {
        chunk_bytes as f64 / rtt_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        assert_eq!(chunk_count(1 << 20, 1024), 1024);
        assert_eq!(chunk_count(1025, 1024), 2);
        assert_eq!(chunk_count(0, 1024), 0);
        // 50 nodes, 1 MiB in 1 KiB chunks: 49 edges × 1024 chunks.
        assert_eq!(optimum_link_tx(50, 1024), 50_176);
        assert_eq!(optimum_link_tx(1, 10), 0);
        // The seed's "7,500 → 150": 150 chunks, 50 nodes; the optimum over TCP is 49 × 150.
        assert_eq!(optimum_link_tx(50, 150), 7_350);
        // A chain 0-1-2-3: receivers at 1, 2, 3 hops, 10 chunks: 60 transmissions vs optimum 30.
        assert_eq!(unicast_link_tx(&[1, 2, 3], 10), 60);
        assert_eq!(optimum_link_tx(4, 10), 30);
        // 1 MiB, 4 KiB chunks, 1 MB/s, depth 4, 5 ms per hop:
        // 1.048576 + 3 × 0.004096 + 4 × 0.005 = 1.080864 s.
        let t = pipelined_lower_bound_s(1 << 20, 4096, 1e6, 4, 0.005);
        assert!((t - 1.080_864).abs() < 1e-9, "{t}");
        assert_eq!(pipelined_lower_bound_s(100, 10, 1e6, 0, 0.1), 0.0);
        // Depth 1: just S/B + L.
        assert!((pipelined_lower_bound_s(1000, 100, 1000.0, 1, 0.5) - 1.5).abs() < 1e-12);
        assert!((shared_channel_lower_bound_s(11, 1000, 100.0) - 100.0).abs() < 1e-12);
        assert!((stop_and_wait_goodput_bps(1024, 0.1) - 10_240.0).abs() < 1e-9);
    }

    #[test]
    fn store_and_forward_by_hand() {
        // Equal frames: the pipelined bound. 4 frames of 100 bytes at 100 B/s, 3 links,
        // 0.5 s each: 4 + 2 × 1 + 3 × 0.5 = 7.5 s.
        let t = store_and_forward_s(&[100; 4], 3, 100.0, 0.5);
        assert!((t - 7.5).abs() < 1e-12, "{t}");
        assert!((t - pipelined_lower_bound_s(400, 100, 100.0, 3, 0.5)).abs() < 1e-12);
        // One large frame among small ones: frames 1, 3, 1 s long, 3 links, no latency.
        // Link 1 sends them at 0-1, 1-4, 4-5; link 2 at 1-2, 4-7, 7-8; link 3 at 2-3,
        // 7-10, 10-11: 11 s = S/B (5) + (d−1)·max (6), not S/B + (d−1)·mean (8.33).
        let t = store_and_forward_s(&[100, 300, 100], 3, 100.0, 0.0);
        assert!((t - 11.0).abs() < 1e-12, "{t}");
        assert_eq!(store_and_forward_s(&[100], 0, 100.0, 0.1), 0.0);
    }
}
