//! Invariants of pmesh's JSON reader and writer (`pmesh_proto::json`), shared by the targets
//! that parse frames.

use pmesh_proto::json::{self, Number, Value};

use crate::heap;

/// Most heap one parse may hold at once, per input byte (plus a constant): the value tree and
/// the parser's scratch stacks are linear in the input; this is the bound the target enforces.
pub const PARSE_HEAP_PER_BYTE: usize = 64;
/// The constant part of that bound.
pub const PARSE_HEAP_BASE: usize = 16 * 1024;

/// Parses `text` and checks everything that must hold of the result; returns it.
///
/// - the parse holds at most `PARSE_HEAP_PER_BYTE` heap bytes per input byte;
/// - an error's offset lies inside the input;
/// - what parses writes back as JSON that parses to the same value (numbers by value: the
///   writer prints `5.0` as `5`, infinities as `null`), and writing that again gives the
///   same bytes (the writer's output is a fixed point);
/// - a clone is equal to the original;
/// - strict JSON (what serde_json accepts) parses, to the value serde_json reads.
pub fn check_parse(text: &[u8], max_depth: usize) -> Option<Value> {
    let (parsed, peak) = heap::peak_during(|| json::parse(text, max_depth));
    let bound = PARSE_HEAP_PER_BYTE * text.len() + PARSE_HEAP_BASE;
    assert!(
        peak <= bound,
        "parsing {} bytes held {peak} heap bytes (bound {bound})",
        text.len()
    );
    compare_with_serde(text, max_depth, parsed.as_ref().ok());
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            assert!(
                e.offset <= text.len(),
                "{e:?} past the end ({})",
                text.len()
            );
            return None;
        }
    };
    let written = value.to_vec();
    let reread = json::parse(&written, max_depth).unwrap_or_else(|e| {
        panic!(
            "our own output does not parse back ({e}): {:?}",
            String::from_utf8_lossy(&written)
        )
    });
    assert!(
        same_value(&value, &reread),
        "rewritten value differs: {value:?} -> {:?} -> {reread:?}",
        String::from_utf8_lossy(&written)
    );
    assert_eq!(
        reread.to_vec(),
        written,
        "writing the re-read value changed its bytes"
    );
    assert!(value.clone() == value, "clone differs");
    Some(value)
}

/// The same JSON value: structure, keys in order, string bytes; numbers by value (an integer
/// and a float of the same value are the same, as the writer prints integral floats as
/// integers); a non-finite float is `null` (the writer's documented output for it).
pub fn same_value(a: &Value, b: &Value) -> bool {
    let mut stack = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        let same = match (a, b) {
            (Value::Null, Value::Null) => true,
            (Value::Number(Number::Float(f)), Value::Null)
            | (Value::Null, Value::Number(Number::Float(f))) => !f.is_finite(),
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Number(x), Value::Number(y)) => same_number(*x, *y),
            (Value::String(x), Value::String(y)) => x == y,
            (Value::Array(x), Value::Array(y)) => {
                stack.extend(x.iter().zip(y));
                x.len() == y.len()
            }
            (Value::Object(x), Value::Object(y)) => {
                let keys_match =
                    x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| p.0 == q.0);
                stack.extend(x.iter().zip(y.iter()).map(|(p, q)| (p.1, q.1)));
                keys_match
            }
            _ => false,
        };
        if !same {
            return false;
        }
    }
    true
}

fn same_number(x: Number, y: Number) -> bool {
    match (x, y) {
        (Number::UInt(a), Number::UInt(b)) => a == b,
        (Number::Int(a), Number::Int(b)) => a == b,
        (Number::UInt(_), Number::Int(_)) | (Number::Int(_), Number::UInt(_)) => false,
        _ => x.to_f64() == y.to_f64(),
    }
}

/// Containers in `text` at most, counting every bracket (strings included): an upper bound of
/// its nesting, cheap to get.
fn brackets(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b'[' || b == b'{').count()
}

/// Differential check: where serde_json accepts `text` as strict JSON (UTF-8, one value,
/// nothing after it) nested no deeper than `max_depth`, our reader must accept it and read the
/// same value. (serde_json recurses per level, so only inputs with few brackets are compared.)
fn compare_with_serde(text: &[u8], max_depth: usize, ours: Option<&Value>) {
    if brackets(text) > 512 {
        return;
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let Ok(theirs) = serde::Deserialize::deserialize(&mut de).and_then(|v: serde_json::Value| {
        de.end()?;
        Ok(v)
    }) else {
        return;
    };
    if text_depth(text) > max_depth {
        assert!(
            ours.is_none(),
            "accepted JSON nested deeper than {max_depth}"
        );
        return;
    }
    let ours = ours.unwrap_or_else(|| {
        panic!(
            "rejected strict JSON that serde_json reads: {:?}",
            String::from_utf8_lossy(text)
        )
    });
    assert!(
        same_as_serde(ours, &theirs),
        "read {ours:?}, serde_json reads {theirs:?}"
    );
}

/// Deepest nesting in strict JSON text (duplicate keys included: a value that a later duplicate
/// replaces still counts against the reader's depth limit).
fn text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn same_as_serde(ours: &Value, theirs: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (ours, theirs) {
        (Value::Null, J::Null) => true,
        (Value::Bool(a), J::Bool(b)) => a == b,
        (Value::String(a), J::String(b)) => a == b.as_bytes(),
        (Value::Number(n), J::Number(m)) => match (*n, m.as_u64(), m.as_i64(), m.as_f64()) {
            (Number::UInt(a), Some(b), _, _) => a == b,
            (Number::Int(a), _, Some(b), _) => a == b,
            (Number::Float(a), None, None, Some(b)) => a.to_bits() == b.to_bits(),
            // `-0`: serde_json reads the float -0.0, we read the integer 0 as the reference
            // does (`is<uint32_t>` holds for it).
            (Number::UInt(0), None, None, Some(b)) => b == 0.0,
            _ => false,
        },
        (Value::Array(a), J::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_as_serde(x, y))
        }
        (Value::Object(a), J::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| b.get(k))
                        .is_some_and(|w| same_as_serde(v, w))
                })
        }
        _ => false,
    }
}
