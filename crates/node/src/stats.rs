//! Counters a node keeps, defined once: the struct and the list hosts export (net status JSON,
//! simulator reports, the bridge's `/metrics`) both come from [`counters!`].
//!
//! A host never names the fields one by one: it iterates [`NodeStats::counters`], so a counter
//! added here reaches every export without further edits. Each counter's help text is its doc
//! comment, so write that as one plain sentence (no intra-doc links).

/// How a counter's value moves, for exporters that distinguish (Prometheus: counter or gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CounterKind {
    /// A running total that only grows (Prometheus `counter`, `_total`).
    Total,
    /// The largest value seen so far: never falls, but is not a sum (Prometheus `gauge`).
    Peak,
}

/// One counter as hosts export it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The field's name, `snake_case` (a JSON key, part of a metric name).
    pub name: &'static str,
    /// One line saying what it counts (the field's doc comment).
    pub help: &'static str,
    /// The value now.
    pub value: u64,
    /// Total or peak.
    pub kind: CounterKind,
}

/// Defines a struct of `u64` counters and its `counters()` list from one field list. Each field
/// is `/// doc` lines then its name, optionally `= Peak` for a high-water mark (default
/// `Total`); every field is `pub`. The struct gets `COUNTERS` (how many) and
/// `counters(&self) -> impl Iterator<Item = Counter>` in declaration order, with the doc
/// comment (lines joined) as help, and `from_fn` to build one from a value per name. Used for [`NodeStats`] and the net runtime's `NetStats`.
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $ty:ident {
            $( $(#[doc = $doc:literal])+ $field:ident $(= $kind:ident)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $ty {
            $( $(#[doc = $doc])+ pub $field: u64, )*
        }

        impl $ty {
            /// How many counters [`Self::counters`] yields.
            pub const COUNTERS: usize = [$(stringify!($field)),*].len();

            /// A value for every counter from `f(name)`, called in declaration order (tests
            /// and exporters' checks set distinct values without naming fields).
            pub fn from_fn(mut f: impl FnMut(&'static str) -> u64) -> Self {
                Self { $($field: f(stringify!($field)),)* }
            }

            /// Every counter with its name, help and value, in declaration order (the one list
            /// hosts export; see `pmesh_node::stats`).
            pub fn counters(&self) -> impl Iterator<Item = $crate::stats::Counter> + use<> {
                [$(
                    $crate::stats::Counter {
                        name: stringify!($field),
                        help: concat!($($doc),+).trim_ascii(),
                        value: self.$field,
                        kind: $crate::counters!(@kind $($kind)?),
                    }
                ),*]
                .into_iter()
            }
        }
    };
    (@kind) => { $crate::stats::CounterKind::Total };
    (@kind $kind:ident) => { $crate::stats::CounterKind::$kind };
}

counters! {
    /// Monotonic counters.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NodeStats {
        /// Frames received and parsed.
        frames_in,
        /// Bytes received.
        bytes_in,
        /// Frames queued for sending (forwarded ones included).
        frames_out,
        /// Bytes queued for sending.
        bytes_out,
        /// Frames forwarded unchanged for other nodes.
        forwarded,
        /// Frames dropped: longer than the frame cap.
        dropped_oversized,
        /// Frames dropped: not JSON the reference accepts, or not an object.
        dropped_invalid,
        /// SINGLE frames dropped: no route to `dest`.
        dropped_no_route,
        /// Frames dropped: CONTROL, or an unknown type without routing that nobody handles.
        dropped_unhandled,
        /// Events dropped because the host did not drain them.
        dropped_events,
        /// Connections closed by this node's protocol rules.
        closed_by_node,
        /// NODE_SYNC frames received that changed a neighbour's tree.
        topology_changes,
        /// NODE_SYNC trees not taken because they showed a loop cut elsewhere (`Config::loop_grace`).
        loop_syncs_ignored,
        /// Early NODE_SYNC requests on a link to a node that just came again on a new link (a
        /// reboot leaves the old link dead; see `Config::probe_duplicate_links`).
        duplicate_link_probes,
        /// BROADCAST frames neither forwarded nor delivered because they came on a link held in
        /// the loop grace (its tree showed a loop not cut here; see `Config::loop_grace`).
        broadcasts_held,
        /// Frames a plugin refused to let this node forward (`Plugin::admit`): e.g. an OTA
        /// manifest or chunk that fails its signature or digest check.
        forward_refused,
        /// Time-sync samples rejected by the 85x round-trip rule or giving offset 0.
        time_samples_retried,
        /// Time-sync replies ignored by the optional rate discipline (`Config::rate_discipline`)
        /// because their request went out before a later one on the link or before a time step.
        time_samples_stale,
        /// TIME_SYNC and TIME_DELAY frames dropped because their link exceeded
        /// `Config::time_frame_budget`.
        time_frames_over_budget,
        /// Branches of neighbours' trees that placed this node below another node (claims no link
        /// of ours confirms), removed before the tree was taken (issue 11; docs/compatibility/node.md).
        self_claims_pruned,
        /// Connections the peer opened that were closed for sending no first NODE_SYNC within
        /// `Config::handshake_timeout`.
        handshake_timeouts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_listed_once_with_its_value_and_one_line_help() {
        // Distinct values per field, set through the struct literal (a field missing here does
        // not compile), read back through the list.
        let s = NodeStats {
            frames_in: 1,
            bytes_in: 2,
            frames_out: 3,
            bytes_out: 4,
            forwarded: 5,
            dropped_oversized: 6,
            dropped_invalid: 7,
            dropped_no_route: 8,
            dropped_unhandled: 9,
            dropped_events: 10,
            closed_by_node: 11,
            topology_changes: 12,
            loop_syncs_ignored: 13,
            duplicate_link_probes: 14,
            broadcasts_held: 15,
            forward_refused: 16,
            time_samples_retried: 17,
            time_samples_stale: 18,
            time_frames_over_budget: 19,
            self_claims_pruned: 20,
            handshake_timeouts: 21,
        };
        let list: alloc::vec::Vec<Counter> = s.counters().collect();
        assert_eq!(list.len(), NodeStats::COUNTERS);
        assert_eq!(list.len(), 21);
        for (i, c) in list.iter().enumerate() {
            assert_eq!(c.value, i as u64 + 1, "{}", c.name);
            assert_eq!(c.kind, CounterKind::Total);
            assert!(!c.help.is_empty() && !c.help.starts_with(' ') && !c.help.contains('\n'));
            assert!(c.help.ends_with('.'), "{}: {}", c.name, c.help);
        }
        let mut next = 0;
        let built = NodeStats::from_fn(|_| {
            next += 1;
            next
        });
        assert_eq!(built, s);
        assert_eq!(list[0].name, "frames_in");
        assert_eq!(list[0].help, "Frames received and parsed.");
        assert_eq!(list[20].name, "handshake_timeouts");
        assert_eq!(
            list[2].help,
            "Frames queued for sending (forwarded ones included)."
        );
        assert_eq!(
            list[18].help,
            "TIME_SYNC and TIME_DELAY frames dropped because their link exceeded \
             `Config::time_frame_budget`."
        );
    }
}
