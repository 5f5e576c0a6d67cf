//! The figures of a simulated rollout, each next to what it is compared with: data link
//! transmissions next to the optimum (N−1)·k, completion next to the pipelined lower bound,
//! tracking state next to its budget. Link counts come from the engine (every frame every
//! link carried, forwarded ones included); the rest from the application's `ota` section.

use std::fmt::Write as _;

use pmesh_ota::FrameKind;
use pmesh_ota::bounds::{optimum_link_tx, pipelined_lower_bound_s};
use serde::{Deserialize, Serialize};

use super::app::OtaSection;
use crate::report::{Report, Traffic};

/// One rollout's figures (a row of `pmesh bench ota`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OtaFigures {
    /// `unicast`, `broadcast`, `push` or `pmesh`.
    pub mode: String,
    /// Receiver logic: `pmesh`, `stock` or `mixed`.
    pub receivers: String,
    /// Compression on.
    pub compressed: bool,
    /// Topology name.
    pub topology: String,
    /// Nodes in the mesh.
    pub nodes: u32,
    /// Image bytes.
    pub image_bytes: u64,
    /// Bytes per chunk (classic: served bytes; pmesh: image bytes; pmesh compressed: the
    /// mean span, chunks spanning a variable number of image bytes).
    pub chunk_bytes: u32,
    /// Chunks per image (k).
    pub chunks: u32,
    /// Faults: `none`, or what struck.
    pub faults: String,
    /// Nodes that should install the image.
    pub targets: u32,
    /// Targets that installed it.
    pub completed: u32,
    /// Targets that did not when the run ended (stuck, failed or never reached): with stock
    /// receivers, the nodes the reference logic strands.
    pub stuck: u32,
    /// Data frames carried over links (every hop counts; repairs and duplicates included).
    pub data_link_tx: u64,
    /// (N−1)·k: every tree edge carries every chunk once.
    pub optimum_link_tx: u64,
    /// data_link_tx / optimum_link_tx.
    pub data_tx_ratio: f64,
    /// k·Σhᵢ: what per-node unicast pulls carry (the classic reference point).
    pub unicast_link_tx: u64,
    /// Bytes of the mode's control frames over links (classic: announces and requests;
    /// pmesh: HELLO, MANIFEST, WANT, ACK, APPLY, CANCEL), NUL included.
    pub control_bytes: u64,
    /// Bytes of data frames over links, NUL included.
    pub data_bytes: u64,
    /// control_bytes / data_bytes.
    pub control_share: f64,
    /// Offer to the last target's install, s (null: not every target installed).
    pub completion_s: Option<f64>,
    /// Pipelined lower bound S/B + (d−1)·c/B + d·L with c the mean data-frame bytes, S = k·c,
    /// B the link bandwidth, d the depth at the offer, L the link latency (null when no data
    /// frame was sent).
    pub lower_bound_s: Option<f64>,
    /// completion_s / lower_bound_s.
    pub bound_ratio: Option<f64>,
    /// pmesh: what an ideal in-order store-and-forward of this rollout's exact frames needs
    /// along the deepest path (no window limit, no processing): each hop costs about the
    /// largest frame, not the mean one the lower bound uses.
    pub store_forward_s: Option<f64>,
    /// Data bytes sent to re-subscribed nodes (pmesh: resume, new parent, re-ask).
    pub repair_bytes: Option<u64>,
    /// Of those, sent by a 1-hop neighbour.
    pub repair_bytes_from_neighbour: Option<u64>,
    /// All OTA bytes over links per image byte carried over a link:
    /// (data + control) / (data_link_tx · image_bytes / k).
    pub wire_bytes_per_image_byte: f64,
    /// Largest receiver tracking state on any node (chunk being written excluded), bytes.
    pub peak_tracking_bytes: u64,
    /// The budget: 4 KiB + 1 bit per chunk.
    pub tracking_budget_bytes: u64,
    /// Most bytes any node other than the distributor had waiting in one link's send queue
    /// (relays queue in RAM without limit on stock painlessMesh).
    #[serde(default)]
    pub peak_relay_queue_bytes: u64,
    /// Most bytes the distributor had waiting in one link's send queue.
    #[serde(default)]
    pub peak_distributor_queue_bytes: u64,
    /// Push mode: the pace, Data bytes per second (0 unlimited; set by the bench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_rate: Option<u64>,
    /// Hops from the distributor to the deepest target at the offer.
    pub depth: u32,
    /// Targets that crashed.
    pub crashed_targets: u32,
    /// Targets that opened a fresh image more than once (restart from chunk 0).
    pub restarts_from_zero: u32,
    /// Simulated seconds.
    pub sim_s: f64,
    /// Wall-clock seconds of the run, formation included (absent in the report's
    /// deterministic `app.ota.figures`; see `wall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Wall-clock seconds from the offer to the end of the run (set by the bench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_wall_s: Option<f64>,
}

/// Frames and bytes of OTA frame types in a report, split into (data, control) for a mode.
fn ota_traffic(report: &Report, pmesh_mode: bool) -> (Traffic, Traffic) {
    let mut data = Traffic::default();
    let mut control = Traffic::default();
    let types = if pmesh_mode {
        &[710, 711, 712, 713, 714, 715, 716, 717][..]
    } else {
        &[10, 11, 12][..]
    };
    for &ty in types {
        let name = match crate::sniff::type_name(ty) {
            "OTHER" => format!("TYPE_{ty}"),
            n => n.to_string(),
        };
        let Some(t) = report.by_type.get(&name) else {
            continue;
        };
        let is_data = FrameKind::of_type(ty).is_some_and(FrameKind::is_data);
        let acc = if is_data { &mut data } else { &mut control };
        acc.frames += t.frames;
        acc.bytes += t.bytes;
    }
    (data, control)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Computes the figures from a report's `app.ota` section and link counters.
pub fn compute(report: &Report, s: &OtaSection) -> OtaFigures {
    let (data, control) = ota_traffic(report, s.mode.starts_with("pmesh"));
    let k = u64::from(s.chunks);
    let optimum = optimum_link_tx(u64::from(report.nodes), k);
    let mean_frame = ratio(data.bytes as f64, data.frames as f64);
    let lower = (data.frames > 0).then(|| {
        pipelined_lower_bound_s(
            (mean_frame * k as f64).round() as u64,
            mean_frame.round() as u64,
            s.link_bytes_per_s,
            s.depth,
            s.link_latency_s,
        )
    });
    let image_bytes_carried = data.frames as f64 * s.image_bytes as f64 / k.max(1) as f64;
    let pmesh = s.mode.starts_with("pmesh");
    let queues = &report.links.node_max_queue_bytes;
    OtaFigures {
        mode: s.mode.clone(),
        receivers: s.receivers.clone(),
        compressed: s.compressed,
        topology: report.topology.clone(),
        nodes: report.nodes,
        image_bytes: s.image_bytes,
        chunk_bytes: s.chunk_bytes,
        chunks: s.chunks,
        faults: if s.crashes == 0 {
            "none".into()
        } else {
            format!("{} crashes", s.crashes)
        },
        targets: s.targets,
        completed: s.completed,
        stuck: s.stuck,
        data_link_tx: data.frames,
        optimum_link_tx: optimum,
        data_tx_ratio: ratio(data.frames as f64, optimum as f64),
        // bounds::unicast_link_tx(hops, k) = k·Σhᵢ, from the sum the section keeps.
        unicast_link_tx: k * s.target_hops_sum,
        control_bytes: control.bytes,
        data_bytes: data.bytes,
        control_share: ratio(control.bytes as f64, data.bytes as f64),
        completion_s: s.completion_s,
        lower_bound_s: lower,
        bound_ratio: s
            .completion_s
            .zip(lower.filter(|&l| l > 0.0))
            .map(|(c, l)| c / l),
        store_forward_s: s.store_forward_s,
        repair_bytes: pmesh.then_some(s.counters.repair_bytes),
        repair_bytes_from_neighbour: pmesh.then_some(s.counters.repair_bytes_to_neighbour),
        wire_bytes_per_image_byte: ratio((data.bytes + control.bytes) as f64, image_bytes_carried),
        peak_tracking_bytes: s.peak_tracking_bytes,
        tracking_budget_bytes: 4096 + k.div_ceil(8),
        peak_relay_queue_bytes: queues
            .iter()
            .enumerate()
            .filter(|&(i, _)| i + 1 != s.distributor as usize)
            .map(|(_, &q)| q)
            .max()
            .unwrap_or(0),
        peak_distributor_queue_bytes: queues
            .get((s.distributor as usize).wrapping_sub(1))
            .copied()
            .unwrap_or(0),
        push_rate: None,
        depth: s.depth,
        crashed_targets: s.crashed_targets,
        restarts_from_zero: s.restarts_from_zero,
        sim_s: report.simulated_s,
        wall_s: None,
        rollout_wall_s: None,
    }
}

/// The application's `ota` section of a report, if it has one.
pub fn section(report: &Report) -> Option<OtaSection> {
    let v = report.app.as_ref()?.get("ota")?;
    serde_json::from_value(v.clone()).ok()
}

/// Adds the figures to the report's `app.ota` section (as `figures`).
pub fn attach(report: &mut Report) {
    let Some(s) = section(report) else { return };
    let f = compute(report, &s);
    if let Some(ota) = report
        .app
        .as_mut()
        .and_then(|a| a.get_mut("ota"))
        .and_then(|o| o.as_object_mut())
        && let Ok(v) = serde_json::to_value(&f)
    {
        ota.insert("figures".into(), v);
    }
}

/// The figures of a report produced by [`super::run`] (computed now if not attached), with
/// the run's wall time.
pub fn figures(report: &Report) -> Option<OtaFigures> {
    let attached: Option<OtaFigures> = report
        .app
        .as_ref()
        .and_then(|a| a.get("ota"))
        .and_then(|o| o.get("figures"))
        .and_then(|f| serde_json::from_value(f.clone()).ok());
    let mut f = attached.or_else(|| section(report).map(|s| compute(report, &s)))?;
    f.wall_s = Some(report.wall.seconds);
    Some(f)
}

/// The OTA lines of `pmesh sim`'s human summary.
pub fn summary(report: &Report) -> String {
    let (Some(s), Some(f)) = (section(report), figures(report)) else {
        return String::new();
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "OTA {} ({} receivers{}): {} image of {} bytes, {} chunks of {} bytes{}",
        s.mode,
        s.receivers,
        if s.compressed { ", compressed" } else { "" },
        s.image,
        s.image_bytes,
        s.chunks,
        s.chunk_bytes,
        if s.compressed && s.mode.starts_with("pmesh") {
            " on average (equal compressed sizes)"
        } else {
            ""
        }
    );
    if let Some(e) = &s.offer_error {
        let _ = writeln!(o, "  offer refused by the distributor: {e}");
        return o;
    }
    match s.offered_at_s {
        None => {
            let _ = writeln!(o, "  not offered before the run ended");
            return o;
        }
        Some(t) => {
            let _ = writeln!(
                o,
                "  offered at {t:.1} s by node {}; depth {}",
                s.distributor, s.depth
            );
        }
    }
    let _ = writeln!(
        o,
        "  installed {}/{} targets{}{}",
        s.completed,
        s.targets,
        match f.completion_s {
            Some(c) => format!(
                " in {c:.2} s (pipelined lower bound {:.2} s, ×{:.2}{})",
                f.lower_bound_s.unwrap_or(0.0),
                f.bound_ratio.unwrap_or(0.0),
                f.store_forward_s.map_or(String::new(), |t| format!(
                    "; ideal store-and-forward of these frames {t:.2} s"
                ))
            ),
            None => String::new(),
        },
        match &s.stopped {
            Some(why) => format!("; stopped: {why}"),
            None => String::new(),
        }
    );
    if s.stuck > 0 {
        let list: Vec<String> = s
            .stuck_nodes
            .iter()
            .map(|n| {
                format!(
                    "{}{} {}/{}{}",
                    n.node,
                    if n.stock { " (stock)" } else { "" },
                    n.done,
                    n.total,
                    n.reason.as_ref().map_or(String::new(), |r| format!(" {r}"))
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "  stuck: {}{}{}",
            s.stuck,
            if list.is_empty() { "" } else { " — " },
            list.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "  data link transmissions {} (optimum {}, ×{:.3}; unicast pulls would be {}), control/data {:.2} %, wire bytes per image byte {:.3}",
        f.data_link_tx,
        f.optimum_link_tx,
        f.data_tx_ratio,
        f.unicast_link_tx,
        100.0 * f.control_share,
        f.wire_bytes_per_image_byte
    );
    if s.crashes > 0 || f.repair_bytes.is_some_and(|r| r > 0) {
        let _ = writeln!(
            o,
            "  crashes {} ({} targets), restarts from chunk 0: {}, resumes: {}{}",
            s.crashes,
            s.crashed_targets,
            s.restarts_from_zero,
            s.resumes,
            match (f.repair_bytes, f.repair_bytes_from_neighbour) {
                (Some(r), Some(n)) if r > 0 => format!(
                    ", repair {r} bytes, {:.1} % from a 1-hop neighbour",
                    100.0 * n as f64 / r as f64
                ),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(
        o,
        "  peak receiver tracking {} bytes (budget {}), chunk frames held {} bytes",
        f.peak_tracking_bytes, f.tracking_budget_bytes, s.peak_frame_bytes
    );
    o
}
