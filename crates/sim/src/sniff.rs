//! Reads a frame's top-level `type` without parsing it, for the per-type counters.
//!
//! pmesh and stock nodes write `type` first (`{"type":9,...}`) except in NODE_SYNC, which ends
//! with `,"type":5,"dest":D,"from":F}`; those two shapes are recognised directly (NODE_SYNC
//! frames are O(nodes) bytes, so scanning them whole for every send would cost as much as the
//! mesh itself). Anything else gets a string- and depth-aware scan.

/// The top-level `type` of one frame's JSON (NUL excluded), or 0 if it has none.
pub fn frame_type(json: &[u8]) -> i32 {
    if let Some(rest) = json.strip_prefix(b"{\"type\":")
        && let Some((v, _)) = int_prefix(rest)
    {
        return v;
    }
    if let Some(v) = sync_trailer(json) {
        return v;
    }
    scan(json).unwrap_or(0)
}

fn int_prefix(s: &[u8]) -> Option<(i32, usize)> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 9 {
        return None;
    }
    let mut v: i32 = 0;
    for &c in &digits[..n] {
        v = v * 10 + i32::from(c - b'0');
    }
    Some((if neg { -v } else { v }, n + usize::from(neg)))
}

/// `..."type":T,"dest":D,"from":F}` at the very end.
fn sync_trailer(json: &[u8]) -> Option<i32> {
    let tail_start = json.len().saturating_sub(64);
    let tail = &json[tail_start..];
    let pos = memchr::memmem::rfind(tail, b",\"type\":")?;
    let rest = &tail[pos + 8..];
    let (ty, n) = int_prefix(rest)?;
    let rest = rest[n..].strip_prefix(b",\"dest\":")?;
    let (_, n) = digits(rest)?;
    let rest = rest[n..].strip_prefix(b",\"from\":")?;
    let (_, n) = digits(rest)?;
    (&rest[n..] == b"}").then_some(ty)
}

fn digits(s: &[u8]) -> Option<((), usize)> {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    (n > 0).then_some(((), n))
}

fn scan(json: &[u8]) -> Option<i32> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && &json[start..i.min(json.len())] == b"type" {
                    let mut j = i + 1;
                    while j < json.len() && (json[j] == b' ' || json[j] == b':') {
                        j += 1;
                    }
                    let quoted = json.get(j) == Some(&b'"');
                    return int_prefix(&json[j + usize::from(quoted)..]).map(|(v, _)| v);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The report name of a message type.
pub fn type_name(ty: i32) -> &'static str {
    match ty {
        3 => "TIME_DELAY",
        4 => "TIME_SYNC",
        5 => "NODE_SYNC_REQUEST",
        6 => "NODE_SYNC_REPLY",
        7 => "CONTROL",
        8 => "BROADCAST",
        9 => "SINGLE",
        10 => "OTA_ANNOUNCE",
        11 => "OTA_DATA_REQUEST",
        12 => "OTA_DATA",
        0 => "NO_TYPE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(frame_type(br#"{"type":9,"dest":1,"from":2,"msg":"x"}"#), 9);
        assert_eq!(
            frame_type(br#"{"nodeId":1,"subs":[{"nodeId":2}],"type":5,"dest":0,"from":1}"#),
            5
        );
        assert_eq!(
            frame_type(br#"{"dest":1,"msg":{"type":2},"type":"12","from":3}"#),
            12
        );
        assert_eq!(frame_type(br#"{"a":{"type":3},"b":"\"type\":4"}"#), 0);
        assert_eq!(frame_type(br#"{"x":{"type":6,"dest":1,"from":2}}"#), 0);
        assert_eq!(frame_type(b"garbage"), 0);
    }
}
