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

/// The tree as the node writes it (`nodeId`, `root` and `hasTimeAuthority` when set, `subs`
/// when not empty). Recursive, like any serde value: the depth is bounded by the JSON depth
/// limit the tree was read with (`Config::max_depth`).
#[cfg(feature = "serde")]
impl serde::Serialize for NodeTree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = 1
            + usize::from(self.root)
            + usize::from(self.has_time_authority)
            + usize::from(!self.subs.is_empty());
        let mut m = s.serialize_map(Some(entries))?;
        m.serialize_entry("nodeId", &self.node_id)?;
        if self.root {
            m.serialize_entry("root", &true)?;
        }
        if self.has_time_authority {
            m.serialize_entry("hasTimeAuthority", &true)?;
        }
        if !self.subs.is_empty() {
            m.serialize_entry("subs", &self.subs)?;
        }
        m.end()
    }
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

/// One node of a [`FlatTree`]: its id and flags, and where its subtree ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlatNode {
    /// The node's id.
    pub node_id: u32,
    /// `root:true`.
    pub root: bool,
    /// `hasTimeAuthority:true`.
    pub has_time_authority: bool,
    /// Index one past this node's last descendant: its subtree is `nodes[i..end]`.
    pub end: u32,
}

/// A [`NodeTree`] in two flat buffers: its nodes in pre-order (each with the end of its
/// subtree) and its compact JSON. This is how a node keeps each neighbour's tree: a NODE_SYNC
/// parses straight into it without one allocation per node ([`crate::NodeSync::parse_frame_flat`]),
/// comparing two trees is comparing two slices, the node list, routes, sizes and loop checks
/// are scans of one array, and the JSON goes into outgoing NODE_SYNC frames as it is.
///
/// Equality is [`NodeTree`] equality (ids, flags and the order of `subs`); the JSON is always
/// what [`NodeTree::to_json`] writes for the same tree.
#[derive(Clone, Debug)]
pub struct FlatTree {
    nodes: Vec<FlatNode>,
    json: Vec<u8>,
}

impl PartialEq for FlatTree {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Eq for FlatTree {}

impl Default for FlatTree {
    /// The leaf `{"nodeId":0}`.
    fn default() -> Self {
        FlatTree::leaf(0)
    }
}

impl FlatTree {
    /// A single node without flags.
    pub fn leaf(node_id: u32) -> Self {
        let mut t = FlatTree {
            nodes: alloc::vec![FlatNode {
                node_id,
                root: false,
                has_time_authority: false,
                end: 1,
            }],
            json: Vec::new(),
        };
        t.write_json();
        t
    }

    /// The flat form of `tree`.
    pub fn from_tree(tree: &NodeTree) -> Self {
        let mut nodes = Vec::new();
        // (node, index of its entry, next sub); an entry's end is set once its subtree is in.
        let mut stack: Vec<(&NodeTree, usize, usize)> = alloc::vec![(tree, 0, 0)];
        nodes.push(flat_node(tree));
        while let Some(&mut (t, at, ref mut next)) = stack.last_mut() {
            if let Some(sub) = t.subs.get(*next) {
                *next += 1;
                let i = nodes.len();
                nodes.push(flat_node(sub));
                stack.push((sub, i, 0));
            } else {
                nodes[at].end = nodes.len() as u32;
                stack.pop();
            }
        }
        let mut t = FlatTree {
            nodes,
            json: Vec::new(),
        };
        t.write_json();
        t
    }

    /// The same tree as a [`NodeTree`].
    pub fn to_tree(&self) -> NodeTree {
        /// A copy whose subs are still being read; its subtree ends at `end`.
        struct Pending {
            tree: NodeTree,
            end: u32,
        }
        let open = |n: &FlatNode| Pending {
            tree: NodeTree {
                node_id: n.node_id,
                root: n.root,
                has_time_authority: n.has_time_authority,
                subs: Vec::new(),
            },
            end: n.end,
        };
        let mut stack = alloc::vec![open(&self.nodes[0])];
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            close_up_to(&mut stack, i as u32);
            stack.push(open(n));
        }
        close_up_to(&mut stack, self.nodes.len() as u32);
        return stack.pop().expect("the root").tree;

        /// Closes every pending node whose subtree ends at or before `i` into its parent.
        fn close_up_to(stack: &mut Vec<Pending>, i: u32) {
            while stack.len() > 1 && stack.last().is_some_and(|p| p.end <= i) {
                let done = stack.pop().expect("non-empty").tree;
                stack.last_mut().expect("has a parent").tree.subs.push(done);
            }
        }
    }

    /// The nodes in pre-order (the top node first).
    pub fn nodes(&self) -> &[FlatNode] {
        &self.nodes
    }

    /// Compact JSON, exactly [`NodeTree::to_json`] of the same tree.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The top node's id.
    pub fn node_id(&self) -> u32 {
        self.nodes[0].node_id
    }

    /// The top node's `root` flag.
    pub fn root(&self) -> bool {
        self.nodes[0].root
    }

    /// The top node's `hasTimeAuthority` flag.
    pub fn has_time_authority(&self) -> bool {
        self.nodes[0].has_time_authority
    }

    /// Sets the top node's `hasTimeAuthority` flag (and rewrites the JSON if it changed).
    pub fn set_has_time_authority(&mut self, value: bool) {
        if self.nodes[0].has_time_authority != value {
            self.nodes[0].has_time_authority = value;
            self.write_json();
        }
    }

    /// Number of nodes, the top one included (`layout::size`).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Number of subtrees under the top node.
    pub fn subs_len(&self) -> usize {
        let mut count = 0;
        let mut i = 1;
        while i < self.nodes.len() {
            count += 1;
            i = self.nodes[i].end as usize;
        }
        count
    }

    /// True if `id` appears anywhere in the tree.
    pub fn contains(&self, id: u32) -> bool {
        self.nodes.iter().any(|n| n.node_id == id)
    }

    /// True if `id` appears anywhere below the top node.
    pub fn subs_contain(&self, id: u32) -> bool {
        self.nodes[1..].iter().any(|n| n.node_id == id)
    }

    /// True if any node has `root:true` (`layout::isRooted`).
    pub fn is_rooted(&self) -> bool {
        self.nodes.iter().any(|n| n.root)
    }

    /// Every id, pre-order (`layout::asList` with the top node).
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes.iter().map(|n| n.node_id)
    }

    /// The ids from the top node down to the first node (pre-order) with id `id`, both
    /// included; `None` if `id` is not in the tree.
    pub fn path_to(&self, id: u32) -> Option<Vec<u32>> {
        let target = self.nodes.iter().position(|n| n.node_id == id)?;
        let mut path = alloc::vec![self.nodes[0].node_id];
        let mut i = 0;
        while i != target {
            // Children of i start at i + 1; step over siblings to the one holding `target`.
            let mut child = i + 1;
            while self.nodes[child].end as usize <= target {
                child = self.nodes[child].end as usize;
            }
            i = child;
            path.push(self.nodes[i].node_id);
        }
        Some(path)
    }

    /// Heap bytes held (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * core::mem::size_of::<FlatNode>() + self.json.capacity()
    }

    /// Starts filling this tree from a parser: clears it, keeping the buffers.
    pub(crate) fn begin(&mut self) {
        self.nodes.clear();
        self.json.clear();
    }

    /// Parser: opens a node (pre-order) and returns its index.
    pub(crate) fn open(&mut self) -> usize {
        self.nodes.push(FlatNode::default());
        self.nodes.len() - 1
    }

    /// Parser: the node at `index` is complete: its fields, and its subtree ends here.
    pub(crate) fn close(&mut self, index: usize, node_id: u32, root: bool, time_authority: bool) {
        let end = self.nodes.len() as u32;
        self.nodes[index] = FlatNode {
            node_id,
            root,
            has_time_authority: time_authority,
            end,
        };
    }

    /// Parser: every node is in; writes the JSON.
    pub(crate) fn finish(&mut self) {
        self.write_json();
    }

    /// Parser: every node is in, and `json` is exactly what [`NodeTree::write_json`] writes
    /// for them (the parser checked the bytes were in that canonical form).
    pub(crate) fn finish_with_json(&mut self, json: &[u8]) {
        self.json.clear();
        self.json.extend_from_slice(json);
    }

    /// Parser: appends to the JSON `finish_with_json` gave.
    pub(crate) fn push_json(&mut self, byte: u8) {
        self.json.push(byte);
    }

    /// Writes `json` from `nodes`, in [`NodeTree::write_json`]'s field order and omissions.
    fn write_json(&mut self) {
        let out = &mut self.json;
        out.clear();
        out.reserve(self.nodes.len() * 16);
        // Ends of the nodes whose `subs` array is open, innermost last.
        let mut open: Vec<u32> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out.extend_from_slice(b"{\"nodeId\":");
            write_u64(out, u64::from(n.node_id));
            if n.root {
                out.extend_from_slice(b",\"root\":true");
            }
            if n.has_time_authority {
                out.extend_from_slice(b",\"hasTimeAuthority\":true");
            }
            let next = i as u32 + 1;
            if n.end > next {
                out.extend_from_slice(b",\"subs\":[");
                open.push(n.end);
                continue;
            }
            out.push(b'}');
            while open.last() == Some(&next) {
                out.extend_from_slice(b"]}");
                open.pop();
            }
            if !open.is_empty() {
                out.push(b',');
            }
        }
    }
}

fn flat_node(t: &NodeTree) -> FlatNode {
    FlatNode {
        node_id: t.node_id,
        root: t.root,
        has_time_authority: t.has_time_authority,
        end: 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NodeTrees up to 6 levels deep with up to 4 subs per node; ids from a small range so
    /// that ids repeat and lookups hit.
    pub(crate) fn node_tree() -> impl Strategy<Value = NodeTree> {
        let leaf = (0u32..40, any::<bool>(), any::<bool>()).prop_map(|(id, root, ta)| NodeTree {
            node_id: id,
            root,
            has_time_authority: ta,
            subs: Vec::new(),
        });
        leaf.prop_recursive(6, 64, 4, |inner| {
            (
                0u32..40,
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(inner, 0..4),
            )
                .prop_map(|(id, root, ta, subs)| NodeTree {
                    node_id: id,
                    root,
                    has_time_authority: ta,
                    subs,
                })
        })
    }

    /// The reference path: `NodeTree` walked recursively.
    fn path(t: &NodeTree, id: u32, out: &mut Vec<u32>) -> bool {
        out.push(t.node_id);
        if t.node_id == id || t.subs.iter().any(|s| path(s, id, out)) {
            return true;
        }
        out.pop();
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Everything a node reads from a FlatTree is what the NodeTree says.
        #[test]
        fn flat_tree_answers_as_the_node_tree(t in node_tree(), id in 0u32..40) {
            let f = FlatTree::from_tree(&t);
            prop_assert_eq!(f.to_tree(), t.clone());
            prop_assert_eq!(f.json(), &t.to_json()[..]);
            prop_assert_eq!(f.size(), t.size());
            prop_assert_eq!(f.subs_len(), t.subs.len());
            prop_assert_eq!(f.is_rooted(), t.is_rooted());
            prop_assert_eq!(f.contains(id), t.contains(id));
            prop_assert_eq!(f.subs_contain(id), t.subs_contain(id));
            prop_assert_eq!(f.ids().collect::<Vec<_>>(), t.node_list(true));
            let mut want = Vec::new();
            let found = path(&t, id, &mut want);
            prop_assert_eq!(f.path_to(id), found.then_some(want));
            prop_assert_eq!(
                (f.node_id(), f.root(), f.has_time_authority()),
                (t.node_id, t.root, t.has_time_authority)
            );
        }

        /// FlatTree equality is NodeTree equality (ids, flags, order and shape of subs).
        #[test]
        fn flat_equality_is_tree_equality(a in node_tree(), b in node_tree(), edit in 0usize..4) {
            prop_assert_eq!(FlatTree::from_tree(&a) == FlatTree::from_tree(&b), a == b);
            // Near misses: the same tree with one thing changed.
            let mut c = a.clone();
            match edit {
                0 => c.root = !c.root,
                1 => c.subs.reverse(),
                2 => c.subs.push(NodeTree::leaf(7)),
                _ => {
                    if let Some(s) = c.subs.first_mut() {
                        s.subs.push(NodeTree::leaf(0));
                    }
                }
            }
            prop_assert_eq!(FlatTree::from_tree(&a) == FlatTree::from_tree(&c), a == c);
        }
    }

    #[test]
    fn setting_the_time_authority_rewrites_the_json() {
        let mut f = FlatTree::leaf(5);
        assert_eq!(f.json(), b"{\"nodeId\":5}");
        f.set_has_time_authority(true);
        assert_eq!(f.json(), b"{\"nodeId\":5,\"hasTimeAuthority\":true}");
        assert_eq!(FlatTree::default().json(), b"{\"nodeId\":0}");
    }

    #[test]
    fn deep_chains_need_no_recursion() {
        let mut t = NodeTree::leaf(0);
        for id in 1..5_000 {
            t = NodeTree {
                node_id: id,
                subs: alloc::vec![t],
                ..NodeTree::default()
            };
        }
        let f = FlatTree::from_tree(&t);
        assert_eq!(f.size(), 5_000);
        assert_eq!(f.path_to(0).map(|p| p.len()), Some(5_000));
        assert_eq!(f.json(), &t.to_json()[..]);
        assert_eq!(f.to_tree(), t);
    }
}
