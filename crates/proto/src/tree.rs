//! NodeTree: the topology a node reports in NODE_SYNC (spec §3.2, §4).

use alloc::vec::Vec;

use crate::json::{Object, Value, write_u64};

/// A node and the subtrees reachable through it, as carried in NODE_SYNC.
///
/// Equality includes `root`, `has_time_authority` and the order of `subs`, as the reference's
/// `operator==` does; senders must therefore emit `subs` in a stable order.
///
/// Parsing, equality, cloning and the walks are iterative, so the 127 levels of `subs` the
/// reference accepts need only a few KiB of call stack (an embedded task's worth).
#[derive(Debug, Default)]
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

impl PartialEq for NodeTree {
    /// Two trees are equal when their pre-order walks visit the same nodes (id, flags and
    /// number of subs) in the same order; that determines the whole shape.
    fn eq(&self, other: &Self) -> bool {
        let mut stack: Vec<(&NodeTree, &NodeTree)> = alloc::vec![(self, other)];
        while let Some((a, b)) = stack.pop() {
            if a.node_id != b.node_id
                || a.root != b.root
                || a.has_time_authority != b.has_time_authority
                || a.subs.len() != b.subs.len()
            {
                return false;
            }
            stack.extend(a.subs.iter().zip(&b.subs).rev());
        }
        true
    }
}

impl Eq for NodeTree {}

impl Clone for NodeTree {
    fn clone(&self) -> Self {
        /// A copy whose subs are still being copied from `src`.
        struct Pending<'a> {
            copy: NodeTree,
            src: core::slice::Iter<'a, NodeTree>,
        }
        let open = |t: &NodeTree| NodeTree {
            node_id: t.node_id,
            root: t.root,
            has_time_authority: t.has_time_authority,
            subs: Vec::with_capacity(t.subs.len()),
        };
        let mut stack = alloc::vec![Pending {
            copy: open(self),
            src: self.subs.iter()
        }];
        loop {
            let top = stack.last_mut().expect("holds the root until it returns");
            if let Some(sub) = top.src.next() {
                stack.push(Pending {
                    copy: open(sub),
                    src: sub.subs.iter(),
                });
                continue;
            }
            let done = stack.pop().expect("non-empty").copy;
            match stack.last_mut() {
                Some(parent) => parent.copy.subs.push(done),
                None => return done,
            }
        }
    }
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
        /// A node whose subs are being read; `items` is its `subs` array.
        struct Pending<'a> {
            tree: NodeTree,
            items: &'a [Value],
            next: usize,
        }
        fn open(obj: &Object) -> Pending<'_> {
            // `nodeId` counts only as a JSON integer in u32 range (`is<uint32_t>`); otherwise
            // (absent, a string, a float, out of range) the reference falls back to `from`,
            // read leniently (`as<uint32_t>`: "7" is 7).
            let node_id = obj
                .get("nodeId")
                .and_then(Value::as_u32_strict)
                .unwrap_or_else(|| obj.get("from").map(Value::to_u32_lenient).unwrap_or(0));
            let flag = |k| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
            let items: &[Value] = match obj.get("subs") {
                Some(Value::Array(items)) => items,
                _ => &[],
            };
            Pending {
                tree: NodeTree {
                    node_id,
                    root: flag("root"),
                    has_time_authority: flag("hasTimeAuthority"),
                    subs: Vec::with_capacity(items.len()),
                },
                items,
                next: 0,
            }
        }
        // Iterative (an explicit stack, not recursion): a deep tree costs heap, not stack, so
        // the 127 levels the reference allows fit a small embedded task stack.
        let mut stack = alloc::vec![open(obj)];
        loop {
            let top = stack
                .last_mut()
                .expect("stack holds the root until it returns");
            if let Some(item) = top.items.get(top.next) {
                top.next += 1;
                match item {
                    Value::Object(o) => stack.push(open(o)),
                    _ => top.tree.subs.push(NodeTree::leaf(0)),
                }
                continue;
            }
            let done = stack.pop().expect("non-empty").tree;
            match stack.last_mut() {
                Some(parent) => parent.tree.subs.push(done),
                None => return done,
            }
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
            |out| write_subs(&self.subs, out),
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

    /// The pretty writer, iterative: `(node, indent, next sub)` per open node.
    fn write_pretty(&self, out: &mut Vec<u8>, indent: usize) {
        fn pad(out: &mut Vec<u8>, n: usize) {
            out.extend(core::iter::repeat_n(b' ', n));
        }
        /// Writes a node up to its subs; true if it has subs (left open).
        fn open(t: &NodeTree, out: &mut Vec<u8>, indent: usize) -> bool {
            out.extend_from_slice(b"{\r\n");
            pad(out, indent + 2);
            out.extend_from_slice(b"\"nodeId\": ");
            write_u64(out, u64::from(t.node_id));
            for (flag, name) in [(t.root, "root"), (t.has_time_authority, "hasTimeAuthority")] {
                if flag {
                    out.extend_from_slice(b",\r\n");
                    pad(out, indent + 2);
                    out.push(b'"');
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\": true");
                }
            }
            if t.subs.is_empty() {
                close(out, indent);
                return false;
            }
            out.extend_from_slice(b",\r\n");
            pad(out, indent + 2);
            out.extend_from_slice(b"\"subs\": [\r\n");
            true
        }
        fn close(out: &mut Vec<u8>, indent: usize) {
            out.extend_from_slice(b"\r\n");
            pad(out, indent);
            out.push(b'}');
        }
        let mut stack: Vec<(&NodeTree, usize, usize)> = Vec::new();
        if open(self, out, indent) {
            stack.push((self, indent, 0));
        }
        while let Some((t, indent, next)) = stack.last_mut() {
            let (t, indent) = (*t, *indent);
            if let Some(sub) = t.subs.get(*next) {
                if *next > 0 {
                    out.extend_from_slice(b",\r\n");
                }
                *next += 1;
                pad(out, indent + 4);
                if open(sub, out, indent + 4) {
                    stack.push((sub, indent + 4, 0));
                }
            } else {
                out.extend_from_slice(b"\r\n");
                pad(out, indent + 2);
                out.push(b']');
                close(out, indent);
                stack.pop();
            }
        }
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

/// Writes comma-separated subtrees (compact), iteratively: `(subs, next)` per open level.
/// Returns whether it wrote any.
fn write_subs(subs: &[NodeTree], out: &mut Vec<u8>) -> bool {
    /// Writes a node's fields up to its subs; true if it has subs (left open as `"subs":[`).
    fn open(t: &NodeTree, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(b"{\"nodeId\":");
        write_u64(out, u64::from(t.node_id));
        if t.root {
            out.extend_from_slice(b",\"root\":true");
        }
        if t.has_time_authority {
            out.extend_from_slice(b",\"hasTimeAuthority\":true");
        }
        if t.subs.is_empty() {
            out.push(b'}');
            return false;
        }
        out.extend_from_slice(b",\"subs\":[");
        true
    }
    let mut stack: Vec<(&[NodeTree], usize)> = alloc::vec![(subs, 0)];
    while let Some((level, next)) = stack.last_mut() {
        let level: &[NodeTree] = level;
        if let Some(t) = level.get(*next) {
            if *next > 0 {
                out.push(b',');
            }
            *next += 1;
            if open(t, out) {
                stack.push((&t.subs, 0));
            }
        } else {
            stack.pop();
            if !stack.is_empty() {
                out.extend_from_slice(b"]}");
            }
        }
    }
    !subs.is_empty()
}
