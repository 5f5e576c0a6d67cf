//! NodeTree: the topology a node reports in NODE_SYNC (spec §3.2, §4).

use alloc::vec::Vec;

use crate::json::{Object, Value, write_u64};

/// A node and the subtrees reachable through it, as carried in NODE_SYNC.
///
/// Equality includes `root`, `has_time_authority` and the order of `subs`, as the reference's
/// `operator==` does; senders must therefore emit `subs` in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTree {
    /// The node's id (0 = unknown).
    pub node_id: u32,
    /// `root:true` was set on this node.
    pub root: bool,
    /// The node claims time authority (Alteriom fork).
    pub has_time_authority: bool,
    /// Subtrees, in the order the sender listed them.
    pub subs: Vec<NodeTree>,
}

impl NodeTree {
    /// A leaf.
    pub fn leaf(node_id: u32) -> Self {
        Self {
            node_id,
            ..Self::default()
        }
    }

    /// Reads a NodeTree from a JSON object the way the reference does: `nodeId` only when it
    /// is a JSON integer in u32 range, falling back to `from` otherwise; `root` and
    /// `hasTimeAuthority` only when they are bools; `subs` only when it is an array, whose
    /// non-object elements become nodeId-0 subtrees.
    pub fn from_object(obj: &Object) -> Self {
        // `nodeId` counts only as a JSON integer in u32 range (`is<uint32_t>`); otherwise
        // (absent, a string, a float, out of range) the reference falls back to `from`, read
        // leniently (`as<uint32_t>`: "7" is 7).
        let node_id = obj
            .get("nodeId")
            .and_then(Value::as_u32_strict)
            .unwrap_or_else(|| obj.get("from").map(Value::to_u32_lenient).unwrap_or(0));
        let flag = |k| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        let subs = match obj.get("subs") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(o) => NodeTree::from_object(o),
                    _ => NodeTree::leaf(0),
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            node_id,
            root: flag("root"),
            has_time_authority: flag("hasTimeAuthority"),
            subs,
        }
    }

    /// Number of nodes in the tree, this one included (`layout::size`).
    pub fn size(&self) -> usize {
        1 + self.subs.iter().map(NodeTree::size).sum::<usize>()
    }

    /// Depth of the tree (a leaf has depth 1).
    pub fn depth(&self) -> usize {
        1 + self.subs.iter().map(NodeTree::depth).max().unwrap_or(0)
    }

    /// True if `id` appears anywhere in the tree.
    pub fn contains(&self, id: u32) -> bool {
        self.node_id == id || self.subs.iter().any(|s| s.contains(id))
    }

    /// True if `id` appears anywhere below the top node.
    pub fn subs_contain(&self, id: u32) -> bool {
        self.subs.iter().any(|s| s.contains(id))
    }

    /// True if any node in the tree has `root:true` (`layout::isRooted`).
    pub fn is_rooted(&self) -> bool {
        self.root || self.subs.iter().any(NodeTree::is_rooted)
    }

    /// Pre-order list of ids: this node, then each subtree (`layout::asList`).
    pub fn node_list(&self, include_self: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.size());
        if include_self {
            out.push(self.node_id);
        }
        for s in &self.subs {
            s.collect_ids(&mut out);
        }
        out
    }

    fn collect_ids(&self, out: &mut Vec<u32>) {
        out.push(self.node_id);
        for s in &self.subs {
            s.collect_ids(out);
        }
    }

    /// The tree without the top-level branches whose id is `id` (`layout::excludeRoute`).
    pub fn exclude_route(&self, id: u32) -> NodeTree {
        NodeTree {
            node_id: self.node_id,
            root: self.root,
            has_time_authority: self.has_time_authority,
            subs: self
                .subs
                .iter()
                .filter(|s| s.node_id != id)
                .cloned()
                .collect(),
        }
    }

    /// Compact JSON, fields in the reference's order and omission rules:
    /// `nodeId[,root][,hasTimeAuthority][,subs]`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.write_fields(out);
        out.push(b'}');
    }

    /// The fields of [`NodeTree::write_json`] without the braces (NODE_SYNC appends its header).
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        write_tree_fields(
            out,
            self.node_id,
            self.root,
            self.has_time_authority,
            |out| {
                let mut any = false;
                for (i, s) in self.subs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    s.write_json(out);
                    any = true;
                }
                any
            },
        );
    }

    /// Compact JSON as a `Vec<u8>`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// ArduinoJson's `serializeJsonPretty` form (two-space indent, CRLF line ends), which
    /// `subConnectionJson(true)` returns.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_pretty(&mut out, 0);
        out
    }

    fn write_pretty(&self, out: &mut Vec<u8>, indent: usize) {
        let pad = |out: &mut Vec<u8>, n: usize| out.extend(core::iter::repeat_n(b' ', n));
        out.extend_from_slice(b"{\r\n");
        pad(out, indent + 2);
        out.extend_from_slice(b"\"nodeId\": ");
        write_u64(out, u64::from(self.node_id));
        for (flag, name) in [
            (self.root, "root"),
            (self.has_time_authority, "hasTimeAuthority"),
        ] {
            if flag {
                out.extend_from_slice(b",\r\n");
                pad(out, indent + 2);
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\": true");
            }
        }
        if !self.subs.is_empty() {
            out.extend_from_slice(b",\r\n");
            pad(out, indent + 2);
            out.extend_from_slice(b"\"subs\": [\r\n");
            for (i, s) in self.subs.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\r\n");
                }
                pad(out, indent + 4);
                s.write_pretty(out, indent + 4);
            }
            out.extend_from_slice(b"\r\n");
            pad(out, indent + 2);
            out.push(b']');
        }
        out.extend_from_slice(b"\r\n");
        pad(out, indent);
        out.push(b'}');
    }
}

/// Writes `"nodeId":N[,"root":true][,"hasTimeAuthority":true][,"subs":[...]]`; `write_subs`
/// writes the comma-separated subtrees and returns whether it wrote any (if not, the `subs`
/// key is taken back out, matching "subs emitted only when non-empty").
pub fn write_tree_fields(
    out: &mut Vec<u8>,
    node_id: u32,
    root: bool,
    has_time_authority: bool,
    write_subs: impl FnOnce(&mut Vec<u8>) -> bool,
) {
    out.extend_from_slice(b"\"nodeId\":");
    write_u64(out, u64::from(node_id));
    if root {
        out.extend_from_slice(b",\"root\":true");
    }
    if has_time_authority {
        out.extend_from_slice(b",\"hasTimeAuthority\":true");
    }
    let mark = out.len();
    out.extend_from_slice(b",\"subs\":[");
    if write_subs(out) {
        out.push(b']');
    } else {
        out.truncate(mark);
    }
}
