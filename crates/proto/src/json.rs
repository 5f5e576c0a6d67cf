//! A small JSON reader and writer for painlessMesh frames.
//!
//! Why not serde_json: stock painlessMesh relays emit frames serde_json rejects by design
//! (raw control characters inside strings, bytes that are not UTF-8, spec §14), its default
//! recursion limit stops NodeTrees at 63 levels, and the reference's typed reads need to see
//! the JSON kind of every number (`is<uint32_t>` versus `as<uint32_t>`). This reader keeps
//! strings as bytes (lossless), caps nesting depth explicitly (never overflowing the stack),
//! keeps object keys in order with "last duplicate wins", and reports the byte offset of any
//! error. The writer always emits valid JSON syntax (control characters escaped); bytes that
//! are not UTF-8 pass through unchanged, exactly as a stock node relays them.

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

/// Nesting depth the reference accepts (ArduinoJson `NestingLimit(255)`), i.e. 127 NodeTree levels.
pub const DEFAULT_MAX_DEPTH: usize = 255;

/// A parsed JSON value. Strings are bytes: painlessMesh payloads need not be UTF-8.
///
/// Parsing, writing and cloning are iterative (explicit stacks), so a value nested to the
/// depth limit needs little call stack; dropping one recurses with small frames (about 4 KiB
/// for 255 levels in a release build).
#[derive(Debug, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Any number, with its JSON kind kept.
    Number(Number),
    /// A string's bytes after unescaping.
    String(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// An object, keys in first-seen order.
    Object(Object),
}

impl Clone for Value {
    fn clone(&self) -> Self {
        /// A container being copied: its source members not yet copied, and the copies so far.
        enum Open<'a> {
            Array(core::slice::Iter<'a, Value>, Vec<Value>),
            Object(
                core::slice::Iter<'a, (Key, Value)>,
                Vec<(Key, Value)>,
                Option<Key>,
            ),
        }
        let mut stack: Vec<Open<'_>> = Vec::new();
        let mut next = self;
        loop {
            // Copy `next`: a scalar is done at once, a container is opened.
            let mut done = match next {
                Value::Null => Value::Null,
                Value::Bool(b) => Value::Bool(*b),
                Value::Number(n) => Value::Number(*n),
                Value::String(s) => Value::String(s.clone()),
                Value::Array(items) => {
                    stack.push(Open::Array(items.iter(), Vec::with_capacity(items.len())));
                    Value::Null
                }
                Value::Object(o) => {
                    stack.push(Open::Object(
                        o.entries.iter(),
                        Vec::with_capacity(o.entries.len()),
                        None,
                    ));
                    Value::Null
                }
            };
            let mut completed = !matches!(next, Value::Array(_) | Value::Object(_));
            // Hand finished copies up and find the next member to copy.
            loop {
                let Some(top) = stack.last_mut() else {
                    return done;
                };
                match top {
                    Open::Array(src, copies) => {
                        if completed {
                            copies.push(core::mem::replace(&mut done, Value::Null));
                        }
                        if let Some(v) = src.next() {
                            next = v;
                            break;
                        }
                        let Some(Open::Array(_, copies)) = stack.pop() else {
                            unreachable!()
                        };
                        done = Value::Array(copies);
                    }
                    Open::Object(src, copies, key) => {
                        if completed {
                            let k = key.take().expect("a member was being copied");
                            copies.push((k, core::mem::replace(&mut done, Value::Null)));
                        }
                        if let Some((k, v)) = src.next() {
                            *key = Some(k.clone());
                            next = v;
                            break;
                        }
                        let Some(Open::Object(_, copies, _)) = stack.pop() else {
                            unreachable!()
                        };
                        done = Value::Object(Object { entries: copies });
                    }
                }
                completed = true;
            }
        }
    }
}

/// A JSON number as it was written: integers keep full 64-bit precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// A non-negative integer that fits u64.
    UInt(u64),
    /// A negative integer that fits i64.
    Int(i64),
    /// A number with a fraction or exponent, or an integer too large for 64 bits.
    Float(f64),
}

/// A JSON object: key/value pairs in first-seen order; a duplicate key replaces the value in place.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Object {
    entries: Vec<(Key, Value)>,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks up a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let key = key.as_bytes();
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v)
    }

    /// Inserts or replaces (keeping the original position, as ArduinoJson does).
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: Value) {
        let key = key.into();
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k.as_bytes() == key) {
            slot.1 = value;
        } else {
            self.entries.push((Key::from_slice(&key), value));
        }
    }

    /// Removes a key, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self
            .entries
            .iter()
            .position(|(k, _)| k.as_bytes() == key.as_bytes())?;
        Some(self.entries.remove(pos).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_bytes(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds an object from parsed entries, applying "last duplicate wins, first position".
    fn from_entries(mut entries: Vec<(Key, Value)>) -> Object {
        if entries.len() > 1 && has_duplicates(&entries) {
            entries = dedup_last_wins(entries);
        }
        Object { entries }
    }
}

/// True if two entries share a key. Small objects (every NodeTree object, every header) are
/// checked pairwise; large ones by sorting, so a hostile frame with thousands of keys costs
/// O(n log n), not O(n²).
fn has_duplicates(entries: &[(Key, Value)]) -> bool {
    if entries.len() <= 8 {
        return entries.iter().enumerate().any(|(i, (k, _))| {
            entries[..i]
                .iter()
                .any(|(j, _)| j.as_bytes() == k.as_bytes())
        });
    }
    let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_bytes()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

/// Keeps each key once, at its first position, with the value of its last occurrence.
fn dedup_last_wins(entries: Vec<(Key, Value)>) -> Vec<(Key, Value)> {
    let n = entries.len();
    // For every entry, the index of the first entry with the same key.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        entries[a]
            .0
            .as_bytes()
            .cmp(entries[b].0.as_bytes())
            .then(a.cmp(&b))
    });
    let mut first_of = alloc::vec![0usize; n];
    let mut group_start = 0;
    for (i, &idx) in order.iter().enumerate() {
        if i > 0 && entries[order[i - 1]].0.as_bytes() != entries[idx].0.as_bytes() {
            group_start = i;
        }
        first_of[idx] = order[group_start];
    }
    let mut slots: Vec<Option<(Key, Value)>> = alloc::vec![None; 0];
    slots.resize_with(n, || None);
    for (idx, (k, v)) in entries.into_iter().enumerate() {
        let first = first_of[idx];
        match &mut slots[first] {
            Some(slot) => slot.1 = v,
            empty => *empty = Some((k, v)),
        }
    }
    slots.into_iter().flatten().collect()
}

/// An object key: up to 22 bytes are stored inline (every painlessMesh key), longer ones on
/// the heap, so parsing a NodeTree allocates nothing per key.
#[derive(Clone)]
enum Key {
    Inline(u8, [u8; 22]),
    Heap(alloc::boxed::Box<[u8]>),
}

impl Key {
    fn from_slice(b: &[u8]) -> Key {
        if b.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..b.len()].copy_from_slice(b);
            Key::Inline(b.len() as u8, buf)
        } else {
            Key::Heap(b.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(len, buf) => &buf[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&alloc::string::String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// Why a frame is not JSON the reference would accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// What went wrong.
    pub kind: JsonErrorKind,
    /// Byte offset in the input where it went wrong.
    pub offset: usize,
}

/// Kinds of JSON errors, named after the reference's `DeserializationError` where they map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Nothing but whitespace (`EmptyInput`).
    Empty,
    /// The input ended inside a value (`IncompleteInput`).
    Incomplete,
    /// Nesting deeper than the limit (`TooDeep`).
    TooDeep,
    /// A byte that cannot start or continue a value here (`InvalidInput`).
    Unexpected(u8),
    /// An invalid escape sequence inside a string (`InvalidInput`).
    BadEscape,
    /// A malformed number (`InvalidInput`).
    BadNumber,
}

impl JsonErrorKind {
    /// The reference's `DeserializationError` name for this kind (`EmptyInput`,
    /// `IncompleteInput`, `TooDeep`, `InvalidInput`).
    pub fn reference_name(self) -> &'static str {
        match self {
            JsonErrorKind::Empty => "EmptyInput",
            JsonErrorKind::Incomplete => "IncompleteInput",
            JsonErrorKind::TooDeep => "TooDeep",
            JsonErrorKind::Unexpected(_) | JsonErrorKind::BadEscape | JsonErrorKind::BadNumber => {
                "InvalidInput"
            }
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            JsonErrorKind::Empty => write!(f, "empty input"),
            JsonErrorKind::Incomplete => {
                write!(f, "input ends inside a value at byte {}", self.offset)
            }
            JsonErrorKind::TooDeep => {
                write!(f, "nesting deeper than the limit at byte {}", self.offset)
            }
            JsonErrorKind::Unexpected(b) if b.is_ascii_graphic() => {
                write!(f, "unexpected '{}' at byte {}", b as char, self.offset)
            }
            JsonErrorKind::Unexpected(b) => {
                write!(f, "unexpected byte 0x{b:02x} at byte {}", self.offset)
            }
            JsonErrorKind::BadEscape => write!(f, "invalid string escape at byte {}", self.offset),
            JsonErrorKind::BadNumber => write!(f, "malformed number at byte {}", self.offset),
        }
    }
}

impl core::error::Error for JsonError {}

/// Parses the first JSON value in `input`; trailing bytes are ignored, as the reference does.
///
/// Accepted beyond strict JSON, because a stock node accepts (and relays) them: raw control
/// characters and non-UTF-8 bytes inside strings, single-quoted strings, unquoted keys,
/// leading `+`, leading zeros, `.5` and `5.`. Rejected like the reference: comments, trailing
/// commas, `NaN`, `Infinity`, hex literals, a byte-order mark.
pub fn parse(input: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let mut p = Parser {
        input,
        pos: 0,
        max_depth,
    };
    p.skip_ws();
    if p.pos == input.len() {
        return Err(JsonError {
            kind: JsonErrorKind::Empty,
            offset: 0,
        });
    }
    p.document()
}

/// An open container while parsing: where its children start on the scratch stacks.
enum Open {
    Array { start: usize },
    Object { start: usize, key: Key },
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, kind: JsonErrorKind) -> Result<T, JsonError> {
        Err(JsonError {
            kind,
            offset: self.pos,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn unexpected<T>(&self) -> Result<T, JsonError> {
        match self.peek() {
            None => self.err(JsonErrorKind::Incomplete),
            Some(b) => self.err(JsonErrorKind::Unexpected(b)),
        }
    }

    /// Parses one value. Iterative, with explicit stacks: nesting costs heap (bounded by
    /// `max_depth`), never call stack, and every container is allocated once at its exact size
    /// when it closes (children wait on the shared scratch stacks until then).
    fn document(&mut self) -> Result<Value, JsonError> {
        let mut open: Vec<Open> = Vec::new();
        let mut items: Vec<Value> = Vec::new();
        let mut entries: Vec<(Key, Value)> = Vec::new();
        'value: loop {
            // Parse the start of a value: a scalar completes at once, a container opens.
            self.skip_ws();
            let mut done = match self.peek() {
                None => return self.err(JsonErrorKind::Incomplete),
                Some(c @ (b'{' | b'[')) => {
                    if open.len() >= self.max_depth {
                        return self.err(JsonErrorKind::TooDeep);
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if c == b'{' {
                        if self.peek() == Some(b'}') {
                            self.pos += 1;
                            Value::Object(Object::new())
                        } else {
                            let key = self.key()?;
                            open.push(Open::Object {
                                start: entries.len(),
                                key,
                            });
                            continue 'value;
                        }
                    } else if self.peek() == Some(b']') {
                        self.pos += 1;
                        Value::Array(Vec::new())
                    } else {
                        open.push(Open::Array { start: items.len() });
                        continue 'value;
                    }
                }
                Some(q @ (b'"' | b'\'')) => {
                    self.pos += 1;
                    Value::String(self.string(q)?.into_owned())
                }
                Some(b'-' | b'+' | b'.' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true", Value::Bool(true))?,
                Some(b'f') => self.literal(b"false", Value::Bool(false))?,
                Some(b'n') => self.literal(b"null", Value::Null)?,
                Some(_) => return self.unexpected(),
            };
            // Hand the finished value to its container; close containers that end here.
            loop {
                let Some(top) = open.last_mut() else {
                    return Ok(done);
                };
                match top {
                    Open::Array { start } => {
                        items.push(done);
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                continue 'value;
                            }
                            Some(b']') => {
                                self.pos += 1;
                                let start = *start;
                                open.pop();
                                done = Value::Array(take_tail(&mut items, start));
                            }
                            _ => return self.unexpected(),
                        }
                    }
                    Open::Object { start, key } => {
                        let key = core::mem::replace(key, Key::Inline(0, [0; 22]));
                        entries.push((key, done));
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                let next = self.key()?;
                                if let Some(Open::Object { key, .. }) = open.last_mut() {
                                    *key = next;
                                }
                                continue 'value;
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                let start = *start;
                                open.pop();
                                done = Value::Object(Object::from_entries(take_tail(
                                    &mut entries,
                                    start,
                                )));
                            }
                            _ => return self.unexpected(),
                        }
                    }
                }
            }
        }
    }

    /// Reads an object key (double- or single-quoted, or bare) and the `:` after it.
    fn key(&mut self) -> Result<Key, JsonError> {
        self.skip_ws();
        let key = match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                Key::from_slice(&self.string(q)?)
            }
            Some(b) if is_bare_key_byte(b) => {
                let start = self.pos;
                while self.peek().is_some_and(is_bare_key_byte) {
                    self.pos += 1;
                }
                Key::from_slice(&self.input[start..self.pos])
            }
            _ => return self.unexpected(),
        };
        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.unexpected();
        }
        self.pos += 1;
        Ok(key)
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, JsonError> {
        let rest = &self.input[self.pos..];
        let n = rest.len().min(word.len());
        if rest[..n] != word[..n] {
            let bad = rest.iter().zip(word).position(|(a, b)| a != b).unwrap_or(0);
            self.pos += bad;
            return self.unexpected();
        }
        if n < word.len() {
            self.pos += n;
            return self.err(JsonErrorKind::Incomplete);
        }
        self.pos += word.len();
        Ok(value)
    }

    /// Reads a string body after its opening quote; raw bytes (control characters, invalid
    /// UTF-8) are kept as they are.
    fn string(&mut self, quote: u8) -> Result<Cow<'a, [u8]>, JsonError> {
        let input = self.input;
        let start = self.pos;
        // Fast path: no escapes, borrow the bytes.
        let first = memchr::memchr2(quote, b'\\', &input[start..]);
        if let Some(end) = first
            && input[start + end] == quote
        {
            self.pos = start + end + 1;
            return Ok(Cow::Borrowed(&input[start..start + end]));
        }
        // Copy the runs between escapes in one go each.
        let mut out = Vec::with_capacity(first.unwrap_or(0) + 16);
        let mut next = first;
        self.pos = start;
        loop {
            let Some(run) = next else {
                self.pos = input.len();
                return self.err(JsonErrorKind::Incomplete);
            };
            out.extend_from_slice(&input[self.pos..self.pos + run]);
            self.pos += run + 1;
            if input[self.pos - 1] == quote {
                return Ok(Cow::Owned(out));
            }
            let Some(e) = self.peek() else {
                return self.err(JsonErrorKind::Incomplete);
            };
            self.pos += 1;
            match e {
                b'"' | b'\\' | b'/' | b'\'' => out.push(e),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let hi = self.hex4()?;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        // A high surrogate must be followed by an escaped low one; a lone one
                        // is dropped, as the reference drops it.
                        let rest = &self.input[self.pos..];
                        if rest.len() >= 6 && rest[0] == b'\\' && rest[1] == b'u' {
                            let save = self.pos;
                            self.pos += 2;
                            let lo = self.hex4()?;
                            if (0xDC00..0xE000).contains(&lo) {
                                Some(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                self.pos = save;
                                None
                            }
                        } else {
                            None
                        }
                    } else if (0xDC00..0xE000).contains(&hi) {
                        None
                    } else {
                        Some(hi)
                    };
                    if let Some(c) = code.and_then(char::from_u32) {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                _ => {
                    self.pos -= 1;
                    return self.err(JsonErrorKind::BadEscape);
                }
            }
            next = memchr::memchr2(quote, b'\\', &input[self.pos..]);
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let Some(b) = self.peek() else {
                return self.err(JsonErrorKind::Incomplete);
            };
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return self.err(JsonErrorKind::BadEscape),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        let negative = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b'+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let int_start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        if int_end == int_start && self.pos - int_end <= 1 {
            // No digit at all ("-", "+", ".").
            return if self.peek().is_none() {
                self.err(JsonErrorKind::Incomplete)
            } else {
                self.err(JsonErrorKind::BadNumber)
            };
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            let exp_start = self.pos;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.pos == exp_start {
                return self.err(JsonErrorKind::BadNumber);
            }
        }
        // A number glued to letters (0x10, 1abc) is not a number.
        if self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return self.err(JsonErrorKind::BadNumber);
        }
        let digits = &self.input[int_start..int_end];
        if !is_float && let Some(n) = parse_u64(digits) {
            return Ok(Value::Number(if !negative {
                Number::UInt(n)
            } else if n == 0 {
                Number::UInt(0)
            } else if n <= 1 << 63 {
                Number::Int((n as i64).wrapping_neg())
            } else {
                Number::Float(-(n as f64))
            }));
        }
        // Floats (and integers beyond 64 bits) go through core's correct float parser.
        let text = core::str::from_utf8(&self.input[start..self.pos]).unwrap_or("0");
        let text = text.strip_prefix('+').unwrap_or(text);
        match text.parse::<f64>() {
            Ok(f) => Ok(Value::Number(Number::Float(f))),
            Err(_) => {
                // "5." is accepted by the reference; Rust's parser accepts it too, but be safe.
                let trimmed = text.trim_end_matches('.');
                match trimmed.parse::<f64>() {
                    Ok(f) => Ok(Value::Number(Number::Float(f))),
                    Err(_) => Err(JsonError {
                        kind: JsonErrorKind::BadNumber,
                        offset: start,
                    }),
                }
            }
        }
    }
}

/// Moves `v[start..]` into a new vector of exactly that size (the container's final storage),
/// leaving the scratch stack's capacity in place for the next container.
fn take_tail<T>(v: &mut Vec<T>, start: usize) -> Vec<T> {
    if start > 0 {
        return v.split_off(start); // exact-size allocation, one memcpy
    }
    // `split_off(0)` would hand over the scratch buffer itself and allocate a new one of the
    // same capacity; move the elements out instead.
    let mut tail = Vec::with_capacity(v.len());
    tail.append(v);
    tail
}

fn is_bare_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Typed reads, mirroring the reference's two integer paths.

impl Value {
    /// The object inside, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// `as<uint32_t>()`: the lenient read the reference's typed decoders use. Numeric strings,
    /// floats (truncated) and bools convert; anything out of range, negative or unconvertible is 0.
    pub fn to_u32_lenient(&self) -> u32 {
        u32::try_from(self.to_i64_lenient().unwrap_or(0)).unwrap_or(0)
    }

    /// `as<int>()` on a 32-bit int: like [`Value::to_u32_lenient`] but signed.
    pub fn to_i32_lenient(&self) -> i32 {
        i32::try_from(self.to_i64_lenient().unwrap_or(0)).unwrap_or(0)
    }

    /// Lenient conversion to i64 (None when not convertible or out of range).
    pub fn to_i64_lenient(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.to_i64_truncating(),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::String(s) => {
                let text = core::str::from_utf8(s).ok()?;
                if let Ok(i) = text.parse::<i64>() {
                    return Some(i);
                }
                if text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
                {
                    let f = text.parse::<f64>().ok()?;
                    return Number::Float(f).to_i64_truncating();
                }
                None
            }
            _ => None,
        }
    }

    /// `is<uint32_t>()`: true only for a JSON integer in u32 range (floats, strings and bools
    /// are not). The reference uses this for `nodeId`, `t0`..`t2` and routing decisions.
    pub fn as_u32_strict(&self) -> Option<u32> {
        match self {
            Value::Number(Number::UInt(n)) => u32::try_from(*n).ok(),
            _ => None,
        }
    }

    /// `is<int>()`: a JSON integer in i32 range.
    pub fn as_i32_strict(&self) -> Option<i32> {
        match self {
            Value::Number(Number::UInt(n)) => i32::try_from(*n).ok(),
            Value::Number(Number::Int(n)) => i32::try_from(*n).ok(),
            _ => None,
        }
    }

    /// `is<bool>()`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// `as<String>()`: a string's bytes; any other value becomes its JSON text (`null` too).
    pub fn to_text(&self) -> Vec<u8> {
        match self {
            Value::String(s) => s.clone(),
            other => {
                let mut out = Vec::new();
                other.write(&mut out);
                out
            }
        }
    }

    /// Compact serialization (no whitespace), always valid JSON syntax. Iterative, so deep
    /// nesting costs heap, not stack.
    pub fn write(&self, out: &mut Vec<u8>) {
        /// An open container and whether a member was written yet.
        enum Open<'a> {
            Array(core::slice::Iter<'a, Value>, bool),
            Object(core::slice::Iter<'a, (Key, Value)>, bool),
        }
        let mut stack: Vec<Open<'_>> = Vec::new();
        let mut next = Some(self);
        loop {
            if let Some(v) = next.take() {
                match v {
                    Value::Null => out.extend_from_slice(b"null"),
                    Value::Bool(true) => out.extend_from_slice(b"true"),
                    Value::Bool(false) => out.extend_from_slice(b"false"),
                    Value::Number(n) => n.write(out),
                    Value::String(s) => write_str(out, s),
                    Value::Array(items) => {
                        out.push(b'[');
                        stack.push(Open::Array(items.iter(), false));
                    }
                    Value::Object(o) => {
                        out.push(b'{');
                        stack.push(Open::Object(o.entries.iter(), false));
                    }
                }
            }
            let Some(top) = stack.last_mut() else {
                return;
            };
            match top {
                Open::Array(items, started) => match items.next() {
                    Some(v) => {
                        if core::mem::replace(started, true) {
                            out.push(b',');
                        }
                        next = Some(v);
                    }
                    None => {
                        out.push(b']');
                        stack.pop();
                    }
                },
                Open::Object(entries, started) => match entries.next() {
                    Some((k, v)) => {
                        if core::mem::replace(started, true) {
                            out.push(b',');
                        }
                        write_str(out, k.as_bytes());
                        out.push(b':');
                        next = Some(v);
                    }
                    None => {
                        out.push(b'}');
                        stack.pop();
                    }
                },
            }
        }
    }

    /// Serialized form as a `Vec<u8>`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

impl Number {
    /// Truncates toward zero; None when out of i64 range or not finite.
    pub fn to_i64_truncating(self) -> Option<i64> {
        match self {
            Number::UInt(n) => i64::try_from(n).ok(),
            Number::Int(n) => Some(n),
            Number::Float(f) => {
                if f.is_finite() && f > -9.223_372_036_854_776e18 && f < 9.223_372_036_854_776e18 {
                    Some(f as i64)
                } else {
                    None
                }
            }
        }
    }

    /// The value as f64.
    pub fn to_f64(self) -> f64 {
        match self {
            Number::UInt(n) => n as f64,
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        }
    }

    /// Writes the number. Integers exactly; floats in the shortest form that reads back to
    /// the same `f64` (integral values below 1e15 without a fraction, very large or small ones
    /// with an exponent); NaN and infinities, which JSON cannot express, as `null`.
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Number::UInt(n) => write_u64(out, n),
            Number::Int(n) => write_i64(out, n),
            Number::Float(f) => write_f64(out, f),
        }
    }
}

/// Appends formatted text to a byte buffer without an intermediate `String`.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes an `f64` as a JSON number (see [`Number::write`]).
pub fn write_f64(out: &mut Vec<u8>, f: f64) {
    use core::fmt::Write as _;
    if !f.is_finite() {
        out.extend_from_slice(b"null");
    } else if f.abs() < 1e15 && (f as i64) as f64 == f {
        write_i64(out, f as i64);
    } else if f.abs() >= 1e15 || f.abs() < 1e-5 {
        let _ = write!(VecWriter(out), "{f:e}");
    } else {
        let _ = write!(VecWriter(out), "{f}");
    }
}

/// Writes an `f32` (a C++ `float` field) in its own shortest form, so 0.95f32 is `0.95`.
pub fn write_f32(out: &mut Vec<u8>, f: f32) {
    use core::fmt::Write as _;
    if !f.is_finite() {
        out.extend_from_slice(b"null");
    } else if f.abs() < 1e7 && (f as i64) as f32 == f {
        write_i64(out, f as i64);
    } else if f.abs() >= 1e15 || f.abs() < 1e-5 {
        let _ = write!(VecWriter(out), "{f:e}");
    } else {
        let _ = write!(VecWriter(out), "{f}");
    }
}

/// Writes a JSON string literal. Escapes `"`, `\` and every control character, so the output
/// is valid JSON syntax; other bytes (including non-UTF-8) pass through unchanged.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Writes an unsigned integer in decimal without allocating.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes a signed integer in decimal.
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Value, JsonError> {
        parse(s.as_bytes(), DEFAULT_MAX_DEPTH)
    }

    #[test]
    fn parses_and_rewrites_compact() {
        let v = p(r#"{ "a" : [1, -2, 2.5, "x\ny", true, null], "b":{} }"#).unwrap();
        assert_eq!(v.to_vec(), br#"{"a":[1,-2,2.5,"x\ny",true,null],"b":{}}"#);
    }

    #[test]
    fn raw_control_and_invalid_utf8_kept() {
        let v = parse(b"{\"m\":\"a\x01b\xff\"}", 8).unwrap();
        let Value::Object(o) = v else { panic!() };
        assert_eq!(o.get("m"), Some(&Value::String(b"a\x01b\xff".to_vec())));
        let mut out = Vec::new();
        o.get("m").unwrap().write(&mut out);
        assert_eq!(out, b"\"a\\u0001b\xff\"");
    }

    #[test]
    fn depth_limit() {
        let ok = "[".repeat(255) + &"]".repeat(255);
        assert!(p(&ok).is_ok());
        let deep = "[".repeat(256) + &"]".repeat(256);
        assert_eq!(p(&deep).unwrap_err().kind, JsonErrorKind::TooDeep);
        // Far beyond the limit must not overflow the stack either.
        let huge = "[".repeat(1_000_000);
        assert_eq!(p(&huge).unwrap_err().kind, JsonErrorKind::TooDeep);
    }

    #[test]
    fn errors() {
        assert_eq!(p("").unwrap_err().kind, JsonErrorKind::Empty);
        assert_eq!(p("  ").unwrap_err().kind, JsonErrorKind::Empty);
        assert_eq!(p("{\"a\":1").unwrap_err().kind, JsonErrorKind::Incomplete);
        assert_eq!(
            p("{\"a\":broken}").unwrap_err().kind,
            JsonErrorKind::Unexpected(b'b')
        );
        assert_eq!(
            p("{\"a\":0x10}").unwrap_err().kind,
            JsonErrorKind::BadNumber
        );
        assert!(p("{\"a\":1,}").is_err());
        assert!(p("[1,]").is_err());
        assert!(p("{\"a\":NaN}").is_err());
        assert!(p("\u{feff}{}").is_err());
    }

    #[test]
    fn lenient_numbers_and_keys() {
        let v = p("{a:+5,'b':007,c:.5,d:5.,e:-0}").unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.get("a").unwrap().to_u32_lenient(), 5);
        assert_eq!(o.get("b").unwrap().as_u32_strict(), Some(7));
        assert_eq!(o.get("c").unwrap().to_u32_lenient(), 0);
        assert_eq!(o.get("d").unwrap().to_u32_lenient(), 5);
        assert_eq!(o.get("d").unwrap().as_u32_strict(), None);
        assert_eq!(o.get("e").unwrap().as_u32_strict(), Some(0));
    }

    #[test]
    fn duplicate_key_last_wins_in_place() {
        let v = p(r#"{"type":8,"dest":1,"type":9}"#).unwrap();
        assert_eq!(v.to_vec(), br#"{"type":9,"dest":1}"#);
    }

    #[test]
    fn unicode_escapes() {
        let v = p(r#""caf\u00e9 \ud83d\ude00 lone \ud800 x""#).unwrap();
        assert_eq!(v, Value::String("café 😀 lone  x".as_bytes().to_vec()));
    }

    #[test]
    fn duplicates_in_large_objects_keep_first_position_last_value() {
        let mut text = alloc::string::String::from("{");
        for i in 0..40 {
            text.push_str(&alloc::format!("\"k{}\":{},", i % 13, i));
        }
        text.push_str("\"a_key_longer_than_twenty_two_bytes\":1}");
        let v = p(&text).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 14);
        let keys: Vec<&[u8]> = o.iter().map(|(k, _)| k).collect();
        assert_eq!(keys[0], b"k0");
        assert_eq!(keys[12], b"k12");
        assert_eq!(keys[13], b"a_key_longer_than_twenty_two_bytes");
        // k0 was last written at i = 39.
        assert_eq!(o.get("k0").unwrap().as_u32_strict(), Some(39));
        assert_eq!(o.get("k5").unwrap().as_u32_strict(), Some(31));
    }

    #[test]
    fn clone_and_write_of_mixed_nesting() {
        let text = r#"{"a":[1,{"b":[[],{},"s",null,true,-2.5]},[[{"c":{"d":[0]}}]]],"e":{}}"#;
        let v = p(text).unwrap();
        let c = v.clone();
        assert_eq!(c, v);
        assert_eq!(c.to_vec(), text.as_bytes());
        assert_eq!(Value::Array(Vec::new()).clone().to_vec(), b"[]");
        assert_eq!(
            Value::Number(Number::UInt(3)).clone(),
            Value::Number(Number::UInt(3))
        );
    }

    #[test]
    fn float_text() {
        let w = |f: f64| {
            let mut out = Vec::new();
            write_f64(&mut out, f);
            alloc::string::String::from_utf8(out).unwrap()
        };
        assert_eq!(w(23.5), "23.5");
        assert_eq!(w(100.0), "100");
        assert_eq!(w(-0.0), "0");
        assert_eq!(w(1e300), "1e300");
        assert_eq!(w(1e-7), "1e-7");
        assert_eq!(w(f64::NAN), "null");
        let mut out = Vec::new();
        write_f32(&mut out, 0.95);
        assert_eq!(out, b"0.95");
    }
}
