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

use alloc::vec::Vec;

use crate::message::NodeSync;
use crate::tree::NodeTree;

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

/// A `subs` object whose members are being read; its children start at `start` on the
/// scratch stack.
struct Open {
    node_id: Option<u32>,
    root: Option<bool>,
    time_authority: Option<bool>,
    has_subs: bool,
    start: usize,
}

impl Open {
    fn new(start: usize) -> Open {
        Open {
            node_id: None,
            root: None,
            time_authority: None,
            has_subs: false,
            start,
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
    /// object is depth 1). Iterative: an explicit stack of open objects and one scratch stack
    /// of finished subtrees.
    fn subs(&mut self, depth: usize, max_depth: usize) -> Option<Vec<NodeTree>> {
        let mut open: Vec<Open> = Vec::new();
        let mut done: Vec<NodeTree> = Vec::new();
        // Just after a '[': an empty array, or its first element.
        let mut at_array_start = true;
        loop {
            if at_array_start && self.eat_if(b']') {
                // An empty array: it closed the `subs` of the innermost open object, or the
                // whole list.
                if open.is_empty() {
                    return Some(Vec::new());
                }
            } else {
                // An element: a `subs` object.
                at_array_start = false;
                if depth + 2 * open.len() + 1 > max_depth {
                    return None;
                }
                self.eat(b'{')?;
                open.push(Open::new(done.len()));
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
                    let subs = if obj.start > 0 {
                        done.split_off(obj.start) // exact size, one copy
                    } else {
                        let mut all = Vec::with_capacity(done.len());
                        all.append(&mut done); // keep the scratch buffer's capacity
                        all
                    };
                    done.push(NodeTree {
                        node_id: obj.node_id.unwrap_or(0),
                        root: obj.root.unwrap_or(false),
                        has_time_authority: obj.time_authority.unwrap_or(false),
                        subs,
                    });
                    // After an element: another one, or the end of its array.
                    if self.eat_if(b',') {
                        break;
                    }
                    self.eat(b']')?;
                    if open.is_empty() {
                        return Some(done);
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

/// See [`NodeSync::parse_frame`].
pub(crate) fn parse(frame: &[u8], max_depth: usize) -> Option<NodeSync> {
    let mut s = Scan { b: frame, i: 0 };
    if max_depth == 0 {
        return None;
    }
    s.eat(b'{')?;
    let (mut node_id, mut root, mut time_authority, mut subs) = (None, None, None, None);
    let (mut ty, mut dest, mut from) = (None, None, None);
    if !s.eat_if(b'}') {
        loop {
            match s.key()? {
                Key::NodeId if node_id.is_none() => node_id = Some(s.u32()?),
                Key::Root if root.is_none() => root = Some(s.bool()?),
                Key::TimeAuthority if time_authority.is_none() => time_authority = Some(s.bool()?),
                Key::Subs if subs.is_none() => {
                    s.eat(b'[')?;
                    if max_depth < 2 {
                        return None;
                    }
                    subs = Some(s.subs(2, max_depth)?);
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
    Some(NodeSync {
        ty,
        dest: dest.unwrap_or(0),
        from,
        tree: NodeTree {
            node_id: node_id.unwrap_or(from),
            root: root.unwrap_or(false),
            has_time_authority: time_authority.unwrap_or(false),
            subs: subs.unwrap_or_default(),
        },
    })
}
