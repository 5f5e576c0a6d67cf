//! A direct reader for NODE_SYNC frames of the usual shape, building the [`NodeTree`] without
//! an intermediate JSON value tree (see [`NodeSync::parse_frame`]).
//!
//! It accepts only what every stock node sends: one object with the keys `nodeId`, `root`,
//! `hasTimeAuthority`, `subs`, `type` (5 or 6), `dest` and `from`, each at most once, plain
//! double-quoted keys, unsigned integers, `true`/`false`, nested `subs` objects with `nodeId`,
//! `root`, `hasTimeAuthority` and `subs`, JSON whitespace anywhere. Anything else — another key,
//! a `routing` field, a duplicate, a number in another form, an escape in a key, too deep,
//! malformed — makes it answer `None`, and the caller decodes the frame the general way, which
//! gives the reference's answer (or the precise error). So whenever it answers, its answer is
//! the general decoder's (checked by property tests on random and mutated frames).
//!
//! One scanner feeds two builders ([`Sink`]): a [`NodeTree`] ([`parse`]) or a [`FlatTree`]
//! ([`parse_flat`]), which takes no allocation per node and reuses its buffers.

use alloc::vec::Vec;

use crate::message::{NodeSync, SyncHeader};
use crate::tree::{FlatTree, NodeTree};

/// Where the scanner puts the `subs` objects it reads, in document order (pre-order).
trait Sink {
    /// A `subs` object opens.
    fn open(&mut self);
    /// The innermost open object closed, with these fields.
    fn close(&mut self, node_id: u32, root: bool, time_authority: bool);
}

/// Builds [`NodeTree`]s: finished subtrees wait on one scratch stack until their parent closes.
#[derive(Default)]
struct TreeSink {
    /// Where each open object's children start on `done`.
    starts: Vec<usize>,
    done: Vec<NodeTree>,
}

impl Sink for TreeSink {
    fn open(&mut self) {
        self.starts.push(self.done.len());
    }

    fn close(&mut self, node_id: u32, root: bool, time_authority: bool) {
        let start = self.starts.pop().unwrap_or(0);
        let subs = if start > 0 {
            self.done.split_off(start) // exact size, one copy
        } else {
            let mut all = Vec::with_capacity(self.done.len());
            all.append(&mut self.done); // keep the scratch buffer's capacity
            all
        };
        self.done.push(NodeTree {
            node_id,
            root,
            has_time_authority: time_authority,
            subs,
        });
    }
}

/// Builds a [`FlatTree`] in place: an object's entry is made when it opens and filled in
/// when it closes (its fields may come after its `subs`).
struct FlatSink<'a> {
    tree: &'a mut FlatTree,
    open: Vec<usize>,
}

impl Sink for FlatSink<'_> {
    fn open(&mut self) {
        let i = self.tree.open();
        self.open.push(i);
    }

    fn close(&mut self, node_id: u32, root: bool, time_authority: bool) {
        let i = self.open.pop().unwrap_or(0);
        self.tree.close(i, node_id, root, time_authority);
    }
}

/// The keys a NODE_SYNC frame has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    NodeId,
    Root,
    TimeAuthority,
    Subs,
    Type,
    Dest,
    From,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

/// A `subs` object whose members are being read.
struct Open {
    node_id: Option<u32>,
    root: Option<bool>,
    time_authority: Option<bool>,
    has_subs: bool,
}

impl Open {
    fn new() -> Open {
        Open {
            node_id: None,
            root: None,
            time_authority: None,
            has_subs: false,
        }
    }
}

impl Scan<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace and consumes `c`.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// Skips whitespace and consumes `c` if it is next.
    fn eat_if(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    /// One of the known keys, written plainly (`"nodeId"` …), and the `:` after it; None for
    /// any other key.
    fn key(&mut self) -> Option<Key> {
        self.ws();
        let rest = &self.b[self.i..];
        let (key, len) = match rest.get(1)? {
            b'n' if rest.starts_with(b"\"nodeId\"") => (Key::NodeId, 8),
            b's' if rest.starts_with(b"\"subs\"") => (Key::Subs, 6),
            b'r' if rest.starts_with(b"\"root\"") => (Key::Root, 6),
            b'h' if rest.starts_with(b"\"hasTimeAuthority\"") => (Key::TimeAuthority, 18),
            b't' if rest.starts_with(b"\"type\"") => (Key::Type, 6),
            b'd' if rest.starts_with(b"\"dest\"") => (Key::Dest, 6),
            b'f' if rest.starts_with(b"\"from\"") => (Key::From, 6),
            _ => return None,
        };
        self.i += len;
        self.eat(b':')?;
        Some(key)
    }

    /// An unsigned integer in u32 range, digits only, not followed by anything that would
    /// make it another kind of number.
    fn u32(&mut self) -> Option<u32> {
        self.ws();
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.b.get(self.i) {
            n = n * 10 + u64::from(d - b'0');
            if n > u64::from(u32::MAX) {
                return None;
            }
            self.i += 1;
        }
        let next = self.b.get(self.i).copied();
        if self.i == start
            || next.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
        {
            return None;
        }
        Some(n as u32)
    }

    fn bool(&mut self) -> Option<bool> {
        self.ws();
        let rest = &self.b[self.i..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        if rest
            .get(len)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return None;
        }
        self.i += len;
        Some(value)
    }

    /// The `subs` array whose `[` was just consumed, at nesting depth `depth` (the top-level
    /// object is depth 1), its objects handed to `sink`. Iterative: an explicit stack of open
    /// objects.
    fn subs(&mut self, depth: usize, max_depth: usize, sink: &mut impl Sink) -> Option<()> {
        let mut open: Vec<Open> = Vec::new();
        // Just after a '[': an empty array, or its first element.
        let mut at_array_start = true;
        loop {
            if at_array_start && self.eat_if(b']') {
                // An empty array: it closed the `subs` of the innermost open object, or the
                // whole list.
                if open.is_empty() {
                    return Some(());
                }
            } else {
                // An element: a `subs` object.
                at_array_start = false;
                if depth + 2 * open.len() + 1 > max_depth {
                    return None;
                }
                self.eat(b'{')?;
                open.push(Open::new());
                sink.open();
                let mut first = true;
                // Read members until the object closes or a nested `subs` array opens.
                let nested = loop {
                    if first && self.eat_if(b'}') {
                        break false;
                    }
                    first = false;
                    let key = self.key()?;
                    let obj = open.last_mut()?;
                    match key {
                        Key::NodeId if obj.node_id.is_none() => obj.node_id = Some(self.u32()?),
                        Key::Root if obj.root.is_none() => obj.root = Some(self.bool()?),
                        Key::TimeAuthority if obj.time_authority.is_none() => {
                            obj.time_authority = Some(self.bool()?)
                        }
                        Key::Subs if !obj.has_subs => {
                            obj.has_subs = true;
                            self.eat(b'[')?;
                            if depth + 2 * open.len() > max_depth {
                                return None;
                            }
                            break true;
                        }
                        _ => return None,
                    }
                    if self.eat_if(b'}') {
                        break false;
                    }
                    self.eat(b',')?;
                };
                if nested {
                    at_array_start = true;
                    continue;
                }
            }
            // Close finished objects (and the arrays they end) up the stack.
            loop {
                if at_array_start {
                    // The array that just closed empty belongs to the innermost open object,
                    // whose remaining members follow.
                    at_array_start = false;
                } else {
                    let obj = open.pop()?;
                    sink.close(
                        obj.node_id.unwrap_or(0),
                        obj.root.unwrap_or(false),
                        obj.time_authority.unwrap_or(false),
                    );
                    // After an element: another one, or the end of its array.
                    if self.eat_if(b',') {
                        break;
                    }
                    self.eat(b']')?;
                    if open.is_empty() {
                        return Some(());
                    }
                }
                // The array closed was the `subs` of the innermost open object: read its
                // remaining members (no second `subs`, so none nests).
                loop {
                    if self.eat_if(b'}') {
                        break;
                    }
                    self.eat(b',')?;
                    let key = self.key()?;
                    let obj = open.last_mut()?;
                    match key {
                        Key::NodeId if obj.node_id.is_none() => obj.node_id = Some(self.u32()?),
                        Key::Root if obj.root.is_none() => obj.root = Some(self.bool()?),
                        Key::TimeAuthority if obj.time_authority.is_none() => {
                            obj.time_authority = Some(self.bool()?)
                        }
                        _ => return None,
                    }
                }
            }
        }
    }
}

/// The top-level object of a NODE_SYNC frame: its header and its own tree fields; its `subs`
/// went to the sink.
struct Top {
    header: SyncHeader,
    node_id: u32,
    root: bool,
    time_authority: bool,
}

/// Scans a whole frame, handing the top-level `subs` objects to `sink`.
fn scan(frame: &[u8], max_depth: usize, sink: &mut impl Sink) -> Option<Top> {
    let mut s = Scan { b: frame, i: 0 };
    if max_depth == 0 {
        return None;
    }
    s.eat(b'{')?;
    let (mut node_id, mut root, mut time_authority, mut has_subs) = (None, None, None, false);
    let (mut ty, mut dest, mut from) = (None, None, None);
    if !s.eat_if(b'}') {
        loop {
            match s.key()? {
                Key::NodeId if node_id.is_none() => node_id = Some(s.u32()?),
                Key::Root if root.is_none() => root = Some(s.bool()?),
                Key::TimeAuthority if time_authority.is_none() => time_authority = Some(s.bool()?),
                Key::Subs if !has_subs => {
                    has_subs = true;
                    s.eat(b'[')?;
                    if max_depth < 2 {
                        return None;
                    }
                    s.subs(2, max_depth, sink)?;
                }
                Key::Type if ty.is_none() => ty = Some(s.u32()?),
                Key::Dest if dest.is_none() => dest = Some(s.u32()?),
                Key::From if from.is_none() => from = Some(s.u32()?),
                _ => return None,
            }
            if s.eat_if(b'}') {
                break;
            }
            s.eat(b',')?;
        }
    }
    let ty = match ty? {
        5 => 5,
        6 => 6,
        _ => return None,
    };
    let from = from.unwrap_or(0);
    Some(Top {
        header: SyncHeader {
            ty,
            dest: dest.unwrap_or(0),
            from,
        },
        node_id: node_id.unwrap_or(from),
        root: root.unwrap_or(false),
        time_authority: time_authority.unwrap_or(false),
    })
}

/// See [`NodeSync::parse_frame`].
pub(crate) fn parse(frame: &[u8], max_depth: usize) -> Option<NodeSync> {
    let mut sink = TreeSink::default();
    let top = scan(frame, max_depth, &mut sink)?;
    Some(NodeSync {
        ty: top.header.ty,
        dest: top.header.dest,
        from: top.header.from,
        tree: NodeTree {
            node_id: top.node_id,
            root: top.root,
            has_time_authority: top.time_authority,
            subs: sink.done,
        },
    })
}

/// See [`NodeSync::parse_frame_flat`]. Frames in the canonical form every pmesh and stock node
/// writes take [`parse_canonical`]; anything else the scanner.
pub(crate) fn parse_flat(
    frame: &[u8],
    max_depth: usize,
    tree: &mut FlatTree,
) -> Option<SyncHeader> {
    parse_canonical(frame, max_depth, tree).or_else(|| parse_scanned(frame, max_depth, tree))
}

/// The scanner into a [`FlatTree`].
fn parse_scanned(frame: &[u8], max_depth: usize, tree: &mut FlatTree) -> Option<SyncHeader> {
    tree.begin();
    let top_index = tree.open();
    let mut sink = FlatSink {
        tree: &mut *tree,
        open: Vec::new(),
    };
    let top = scan(frame, max_depth, &mut sink)?;
    tree.close(top_index, top.node_id, top.root, top.time_authority);
    tree.finish();
    Some(top.header)
}

/// A NODE_SYNC frame exactly as [`crate::NodeSync::to_json`] writes it — compact, tree fields in
/// [`NodeTree::write_json`]'s order and omissions (`nodeId`, `root` and `hasTimeAuthority` only
/// when true, `subs` only when not empty), then `type`, `dest`, `from`, integers without
/// leading zeros — read with fixed literals instead of the general scanner. The tree's bytes
/// are then its canonical JSON and are copied, not rewritten. `None` for anything else
/// (including every frame the scanner declines): the caller scans it.
fn parse_canonical(frame: &[u8], max_depth: usize, tree: &mut FlatTree) -> Option<SyncHeader> {
    /// An object whose `subs` array is open: its entry and its fields.
    struct Parent {
        index: usize,
        node_id: u32,
        root: bool,
        time_authority: bool,
    }
    let mut c = Canon { b: frame, i: 0 };
    if max_depth == 0 {
        return None;
    }
    tree.begin();
    let top = tree.open();
    let (node_id, root, time_authority, has_subs) = c.object_head()?;
    if has_subs {
        // Objects at level L (the top's children are level 1) are at JSON depth 2L + 1, the
        // `subs` array they open at 2L + 2, as the scanner counts.
        if max_depth < 2 {
            return None;
        }
        let mut open: Vec<Parent> = Vec::new();
        'element: loop {
            let level = open.len() + 1;
            if 2 * level + 1 > max_depth {
                return None;
            }
            let index = tree.open();
            let (id, r, ta, subs) = c.object_head()?;
            if subs {
                if 2 * level + 2 > max_depth {
                    return None;
                }
                open.push(Parent {
                    index,
                    node_id: id,
                    root: r,
                    time_authority: ta,
                });
                continue;
            }
            c.lit(b"}")?;
            tree.close(index, id, r, ta);
            // After an element: the next one, or the end of its array (and of its parent).
            loop {
                if c.lit(b",").is_some() {
                    continue 'element;
                }
                c.lit(b"]")?;
                let Some(p) = open.pop() else {
                    break 'element; // the top object's `subs`
                };
                c.lit(b"}")?;
                tree.close(p.index, p.node_id, p.root, p.time_authority);
            }
        }
    }
    let fields_end = c.i;
    c.lit(b",\"type\":")?;
    let ty = match c.b.get(c.i)? {
        b'5' => 5,
        b'6' => 6,
        _ => return None,
    };
    c.i += 1;
    c.lit(b",\"dest\":")?;
    let dest = c.u32()?;
    c.lit(b",\"from\":")?;
    let from = c.u32()?;
    c.lit(b"}")?;
    if c.i != frame.len() {
        return None;
    }
    tree.close(top, node_id, root, time_authority);
    // The tree's JSON: its fields as they stand in the frame, closed.
    tree.finish_with_json(&frame[..fields_end]);
    tree.push_json(b'}');
    Some(SyncHeader { ty, dest, from })
}

/// The canonical reader's cursor.
struct Canon<'a> {
    b: &'a [u8],
    i: usize,
}

impl Canon<'_> {
    /// Consumes `s` if it comes next.
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(s) {
            self.i += s.len();
            Some(())
        } else {
            None
        }
    }

    /// `{"nodeId":N[,"root":true][,"hasTimeAuthority":true]` and, if next, `,"subs":[`
    /// (then true). `[]` never follows: an empty `subs` is not canonical.
    fn object_head(&mut self) -> Option<(u32, bool, bool, bool)> {
        self.lit(b"{\"nodeId\":")?;
        let id = self.u32()?;
        let root = self.lit(b",\"root\":true").is_some();
        let ta = self.lit(b",\"hasTimeAuthority\":true").is_some();
        let subs = self.lit(b",\"subs\":[").is_some();
        if subs && self.b.get(self.i) != Some(&b'{') {
            return None;
        }
        Some((id, root, ta, subs))
    }

    /// A u32 in canonical decimal: no sign, no leading zero, not followed by a digit or
    /// anything that would make it another kind of number.
    fn u32(&mut self) -> Option<u32> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.b.get(self.i) {
            n = n * 10 + u64::from(d - b'0');
            if n > u64::from(u32::MAX) {
                return None;
            }
            self.i += 1;
        }
        let len = self.i - start;
        if len == 0 || (len > 1 && self.b[start] == b'0') {
            return None;
        }
        Some(n as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_MAX_DEPTH;
    use crate::tree::NodeTree;
    use crate::tree::tests::node_tree;
    use proptest::prelude::*;

    /// Both builders agree: `parse_flat` answers exactly when `parse` does, with the same
    /// header and the flat form of the same tree, whatever was in the buffer before.
    fn agree(frame: &[u8], max_depth: usize, scratch: &mut FlatTree) -> Result<(), TestCaseError> {
        let tree = parse(frame, max_depth);
        let flat = parse_flat(frame, max_depth, scratch);
        prop_assert_eq!(
            tree.is_some(),
            flat.is_some(),
            "{:?}",
            alloc::string::String::from_utf8_lossy(frame)
        );
        if let (Some(sync), Some(header)) = (tree, flat) {
            prop_assert_eq!(
                header,
                SyncHeader {
                    ty: sync.ty,
                    dest: sync.dest,
                    from: sync.from
                }
            );
            prop_assert_eq!(&*scratch, &FlatTree::from_tree(&sync.tree));
            prop_assert_eq!(scratch.json(), &sync.tree.to_json()[..]);
        }
        // The canonical reader never answers differently either (it may decline more).
        let mut canonical = FlatTree::leaf(7);
        if let Some(header) = parse_canonical(frame, max_depth, &mut canonical) {
            let sync = parse(frame, max_depth);
            prop_assert!(
                sync.is_some(),
                "{:?}",
                alloc::string::String::from_utf8_lossy(frame)
            );
            let sync = sync.unwrap();
            prop_assert_eq!(
                (header.ty, header.dest, header.from),
                (sync.ty, sync.dest, sync.from)
            );
            prop_assert_eq!(&canonical, &FlatTree::from_tree(&sync.tree));
            prop_assert_eq!(canonical.json(), &sync.tree.to_json()[..]);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn flat_and_tree_builders_agree_on_written_frames(
            trees in proptest::collection::vec(node_tree(), 1..4),
            ty in 5i32..7,
            space in any::<bool>(),
        ) {
            let mut scratch = FlatTree::leaf(99);
            for tree in trees {
                let sync = NodeSync { ty, dest: 3, from: tree.node_id, tree };
                let mut frame = sync.to_json();
                if space {
                    frame = frame
                        .iter()
                        .flat_map(|&b| if b == b',' { alloc::vec![b, b' '] } else { alloc::vec![b] })
                        .collect();
                }
                agree(&frame, DEFAULT_MAX_DEPTH, &mut scratch)?;
                // What nodes write takes the canonical reader, not the scanner.
                let canonical = parse_canonical(&frame, DEFAULT_MAX_DEPTH, &mut scratch);
                prop_assert_eq!(canonical.is_some(), !space);
            }
        }

        #[test]
        fn flat_and_tree_builders_agree_on_mangled_frames(
            seed in 0usize..SEEDS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..5),
            depth in 0usize..12,
        ) {
            let mut frame = SEEDS[seed].as_bytes().to_vec();
            for (pos, byte, op) in edits {
                let at = pos % (frame.len() + 1);
                match op {
                    0 if at < frame.len() => frame[at] = byte,
                    1 => {
                        const ALPHABET: &[u8] = b"{}[],:\"0123456789truefalsnodeIdsubsroot -";
                        frame.insert(at, ALPHABET[usize::from(byte) % ALPHABET.len()])
                    }
                    _ => frame.truncate(at),
                }
            }
            let mut scratch = FlatTree::leaf(1);
            agree(&frame, depth, &mut scratch)?;
            agree(&frame, DEFAULT_MAX_DEPTH, &mut scratch)?;
        }
    }

    /// A chain as deep as the limit allows (128 nodes: JSON depth 255) is read by both readers;
    /// one level more by neither.
    #[test]
    fn canonical_reader_keeps_the_depth_limit() {
        for levels in [1usize, 2, 63, 127, 128, 129, 300] {
            let mut tree = NodeTree::leaf(levels as u32);
            for id in (1..levels as u32).rev() {
                tree = NodeTree {
                    node_id: id,
                    subs: alloc::vec![tree],
                    ..NodeTree::default()
                };
            }
            let frame = NodeSync {
                ty: 5,
                dest: 0,
                from: 1,
                tree,
            }
            .to_json();
            let mut flat = FlatTree::default();
            let scanned = parse(&frame, DEFAULT_MAX_DEPTH).is_some();
            let canonical = parse_canonical(&frame, DEFAULT_MAX_DEPTH, &mut flat).is_some();
            assert_eq!(scanned, levels <= 128, "{levels} levels");
            assert_eq!(canonical, scanned, "{levels} levels");
            if canonical {
                assert_eq!(flat.size(), levels);
            }
        }
    }

    const SEEDS: &[&str] = &[
        r#"{"type":6,"dest":2428398258,"from":3907768579,"subs":[{"nodeId":3959373838,"subs":[{"nodeId":416992913},{"nodeId":1895675348,"root":true}]}]}"#,
        r#"{"nodeId":3907768579,"hasTimeAuthority":true,"subs":[{"nodeId":3959373838,"subs":[{"nodeId":416992913},{"nodeId":1895675348,"root":true,"subs":[]}]}],"type":5,"dest":2428398258,"from":3907768579}"#,
        r#"{"nodeId":1,"root":false,"subs":[{"nodeId":2,"hasTimeAuthority":false,"subs":[{"nodeId":3,"subs":[{"nodeId":4}]}],"root":true},{"subs":[]}],"type":6,"dest":0,"from":1}"#,
    ];
}
