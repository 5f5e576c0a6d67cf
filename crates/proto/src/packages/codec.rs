//! The plumbing every package shares: how one field type is read and written ([`Field`]),
//! nested objects ([`Section`]), the [`Reader`] that remembers which keys a type knows (so the
//! rest is kept in `extra`), the [`ObjWriter`] that writes `"key":value` pairs, and the two
//! derived values some packages write but never read ([`count`], [`seconds`]).
//!
//! The package and section macros (`macros.rs`) expand into calls of these; the hand-written
//! StatusPackage calls them directly.

use alloc::vec::Vec;

use super::{HEADER_KEYS, Header, Text};
use crate::json::{Number, Object, Value, write_i64, write_str, write_u64};

/// How one field type is read and written.
pub(super) trait Field: Sized {
    /// ArduinoJson `as<T>()`: the plain-assignment read.
    fn read_as(v: Option<&Value>) -> Self;
    /// `is<T>() ? as<T>() : none`: the read behind `jsonObj[k] | default`.
    fn read_is(v: Option<&Value>) -> Option<Self>;
    /// Writes the value.
    fn write(&self, out: &mut Vec<u8>);
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn read_as(v: Option<&Value>) -> Self {
                v.and_then(Value::to_i64_lenient).and_then(|i| <$t>::try_from(i).ok()).unwrap_or(0)
            }
            fn read_is(v: Option<&Value>) -> Option<Self> {
                match v? {
                    Value::Number(Number::UInt(n)) => <$t>::try_from(*n).ok(),
                    Value::Number(Number::Int(n)) => <$t>::try_from(*n).ok(),
                    _ => None,
                }
            }
            fn write(&self, out: &mut Vec<u8>) {
                write_i64(out, i64::from(*self));
            }
        }
    )*};
}
int_field!(u8, u16, i8, i32);

impl Field for u32 {
    fn read_as(v: Option<&Value>) -> Self {
        v.map(Value::to_u32_lenient).unwrap_or(0)
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(Number::UInt(n)) => u32::try_from(*n).ok(),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_u64(out, u64::from(*self));
    }
}

impl Field for bool {
    fn read_as(v: Option<&Value>) -> Self {
        match v {
            Some(Value::Bool(b)) => *b,
            Some(other) => other.to_i64_lenient().is_some_and(|i| i != 0),
            None => false,
        }
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        v?.as_bool()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

fn lenient_f64(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Number(n)) => n.to_f64(),
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::String(s)) => core::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0),
        _ => 0.0,
    }
}

impl Field for f64 {
    fn read_as(v: Option<&Value>) -> Self {
        lenient_f64(v)
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(n) => Some(n.to_f64()),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        Number::Float(*self).write(out);
    }
}

impl Field for f32 {
    fn read_as(v: Option<&Value>) -> Self {
        lenient_f64(v) as f32
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Number(n) => Some(n.to_f64() as f32),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        crate::json::write_f32(out, *self);
    }
}

impl Field for Text {
    fn read_as(v: Option<&Value>) -> Self {
        Text(v.map(Value::to_text).unwrap_or_else(|| b"null".to_vec()))
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::String(s) => Some(Text(s.clone())),
            _ => None,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, &self.0);
    }
}

/// `std::vector<uint32_t>` read element by element with `as<uint32_t>()`.
impl Field for Vec<u32> {
    fn read_as(v: Option<&Value>) -> Self {
        match v {
            Some(Value::Array(items)) => items.iter().map(Value::to_u32_lenient).collect(),
            _ => Vec::new(),
        }
    }
    fn read_is(v: Option<&Value>) -> Option<Self> {
        matches!(v, Some(Value::Array(_))).then(|| Self::read_as(v))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_u64(out, u64::from(*id));
        }
        out.push(b']');
    }
}

/// A JSON object nested in a package (array element or configuration section).
pub(super) trait Section: Sized {
    /// Reads the object's fields; what is left stays in the reader for `obj_rest`.
    fn read(r: &mut Reader<'_>) -> Self;
    /// Writes the object's fields (without the braces).
    fn write_fields(&self, w: &mut ObjWriter<'_>);
}

/// An object field: read when it is an object (`is<JsonObject>()`), else all defaults, as the
/// reference reads a missing or mistyped section.
fn read_section<S: Section>(v: Option<&Value>) -> S {
    let empty = Object::new();
    let obj = match v {
        Some(Value::Object(o)) => o,
        _ => &empty,
    };
    let mut r = Reader::new(obj);
    S::read(&mut r)
}

fn write_section<S: Section>(s: &S, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut w = ObjWriter::new(out);
    s.write_fields(&mut w);
    out.push(b'}');
}

/// An array of sections: every element is read (non-objects as all-default elements).
fn read_section_array<S: Section>(v: Option<&Value>) -> Vec<S> {
    match v {
        Some(Value::Array(items)) => items.iter().map(|item| read_section(Some(item))).collect(),
        _ => Vec::new(),
    }
}

fn write_section_array<S: Section>(items: &[S], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_section(item, out);
    }
    out.push(b']');
}

/// Reads fields of an object and remembers which keys it looked at, so the rest can be kept.
///
/// The method names are the read styles of the package and section macros: a field declared
/// `= read_or("k", 0)` is read with `r.read_or("k", 0)`.
pub(super) struct Reader<'a> {
    obj: &'a Object,
    known: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(obj: &'a Object) -> Self {
        Reader {
            obj,
            known: Vec::with_capacity(24),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.obj.get(key)
    }

    /// Whether any of `keys` is present (without marking them known).
    pub(super) fn has_any(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.obj.get(k).is_some())
    }

    /// `x = obj[key]`.
    pub(super) fn read_as<T: Field>(&mut self, key: &'static str) -> T {
        T::read_as(self.get(key))
    }

    /// `x = obj[key] | default`.
    pub(super) fn read_or<T: Field>(&mut self, key: &'static str, default: T) -> T {
        T::read_is(self.get(key)).unwrap_or(default)
    }

    /// `obj[newer] | obj[older] | default`: the newer key when it is present, else the older.
    pub(super) fn read_or_older<T: Field>(
        &mut self,
        newer: &'static str,
        older: &'static str,
        default: T,
    ) -> T {
        let v = match self.get(newer) {
            Some(Value::Null) | None => self.get(older),
            present => {
                self.skip(older);
                present
            }
        };
        T::read_is(v).unwrap_or(default)
    }

    /// `message_type`: None when the frame has none (Phase 1/2 style), else the value read
    /// with `| default`.
    pub(super) fn message_type(&mut self, default: u16) -> Option<u16> {
        self.get("message_type")
            .map(|v| u16::read_is(Some(v)).unwrap_or(default))
    }

    /// A key the type knows but does not store (derived on output, e.g. `read_interval_s`).
    pub(super) fn skip(&mut self, key: &'static str) {
        self.known.push(key);
    }

    /// A nested object (`is<JsonObject>()`, else all defaults).
    pub(super) fn section<S: Section>(&mut self, key: &'static str) -> S {
        read_section(self.get(key))
    }

    /// An array of nested objects.
    pub(super) fn section_array<S: Section>(&mut self, key: &'static str) -> Vec<S> {
        read_section_array(self.get(key))
    }

    /// The fields not looked at, in wire order.
    fn rest(self) -> Object {
        let mut extra = Object::new();
        for (k, v) in self.obj.iter() {
            if !self.known.iter().any(|known| known.as_bytes() == k) {
                extra.insert(k.to_vec(), v.clone());
            }
        }
        extra
    }

    /// The fields of a package not looked at, the plugin header excepted.
    pub(super) fn rest_after_header(mut self) -> Object {
        self.known.extend_from_slice(&HEADER_KEYS);
        self.rest()
    }

    /// The rest of a nested section (no plugin header inside).
    pub(super) fn obj_rest(&mut self) -> Object {
        let r = Reader {
            obj: self.obj,
            known: core::mem::take(&mut self.known),
        };
        r.rest()
    }
}

/// Writes `"key":value` pairs with commas between them.
pub(super) struct ObjWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjWriter<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        ObjWriter { out, first: true }
    }

    fn key(&mut self, key: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    pub(super) fn put<T: Field>(&mut self, key: &str, value: &T) {
        self.key(key.as_bytes());
        value.write(self.out);
    }

    pub(super) fn put_section<S: Section>(&mut self, key: &str, value: &S) {
        self.key(key.as_bytes());
        write_section(value, self.out);
    }

    pub(super) fn put_section_array<S: Section>(&mut self, key: &str, items: &[S]) {
        self.key(key.as_bytes());
        write_section_array(items, self.out);
    }

    /// `message_type`, when the package has one.
    pub(super) fn message_type(&mut self, message_type: Option<u16>) {
        if let Some(mt) = message_type {
            self.put("message_type", &mt);
        }
    }

    /// The fields a type did not know, as they arrived.
    pub(super) fn extra(&mut self, extra: &Object) {
        for (k, v) in extra.iter() {
            self.key(k);
            v.write(self.out);
        }
    }
}

/// A package object: the header, the fields `body` writes, then `extra`.
pub(super) fn write_package(
    header: &Header,
    extra: &Object,
    body: impl FnOnce(&mut ObjWriter<'_>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let mut w = ObjWriter::new(&mut out);
    header.write(&mut w);
    body(&mut w);
    w.extra(extra);
    out.push(b'}');
    out
}

/// Derived value: an array's length (`nodeCount`, `totalConnections`, `alertCount`); the
/// reference writes the count of the entries it sends.
pub(super) fn count<T>(items: &[T]) -> u32 {
    items.len() as u32
}

/// Derived value: a millisecond field in whole seconds (`read_interval_s`, `timeout_s`, …).
pub(super) fn seconds(ms: &u32) -> u32 {
    ms / 1000
}
