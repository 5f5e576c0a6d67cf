//! Shared helpers for the vector tests: loading `testdata/vectors/*.json` and reading fields.

#![allow(dead_code)] // each test binary uses a different subset

use serde_json::Value as J;

/// Loads a vector file from `<repo>/testdata/vectors/` (a copy of the shared spec's vectors).
pub fn vectors(name: &str) -> J {
    let path = format!(
        "{}/../../testdata/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Lowercase hex decoding (the vectors' `*_hex` fields).
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Lowercase hex encoding.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of a field given either as `name` (text) or `name_hex`.
pub fn bytes_field(obj: &J, name: &str) -> Option<Vec<u8>> {
    if let Some(s) = obj.get(name).and_then(J::as_str) {
        return Some(s.as_bytes().to_vec());
    }
    obj.get(format!("{name}_hex"))
        .and_then(J::as_str)
        .map(unhex)
}

/// An integer field.
pub fn int(obj: &J, name: &str) -> i64 {
    obj.get(name)
        .and_then(J::as_i64)
        .unwrap_or_else(|| panic!("no integer {name} in {obj}"))
}

/// A u32 field.
pub fn u32f(obj: &J, name: &str) -> u32 {
    u32::try_from(int(obj, name)).unwrap()
}

/// A string field.
pub fn text<'a>(obj: &'a J, name: &str) -> &'a str {
    obj.get(name)
        .and_then(J::as_str)
        .unwrap_or_else(|| panic!("no string {name} in {obj}"))
}

/// A bool field.
pub fn flag(obj: &J, name: &str) -> bool {
    obj.get(name)
        .and_then(J::as_bool)
        .unwrap_or_else(|| panic!("no bool {name} in {obj}"))
}

/// Shows bytes as text when they are UTF-8, else hex (for assertion messages).
pub fn show(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("hex:{}", hex(b)),
    }
}
