//! The NUL framer (`pmesh_proto::framing`) and the JSON reader/writer (`pmesh_proto::json`).
//!
//! Input: `[cap selector][depth selector][split seed u16][stream...]`. The stream is pushed
//! into a `FrameDecoder` whole and again in pieces cut by the seed; every frame is parsed.
//!
//! Invariants:
//! - the framer's output does not depend on how the stream is split, and is exactly the
//!   model's: the stream cut at each delimiter, empty frames skipped, frames over the cap
//!   reported once as oversized (`len` over the cap), the rest handed out with their
//!   delimiter; the unterminated tail comes out of `finish` unless it was cut;
//! - the framer never reserves more than the cap plus one byte, never buffers more than the
//!   cap, and its counters match the frames;
//! - JSON: see `pmesh_fuzz::json_check::check_parse` (heap bound, round trip, fixed point,
//!   agreement with serde_json on strict JSON).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmesh_fuzz::input::Input;
use pmesh_fuzz::json_check::check_parse;
use pmesh_proto::framing::{FrameDecoder, FrameError};

const CAPS: [usize; 8] = [
    1,
    2,
    7,
    64,
    300,
    4096,
    65_536,
    pmesh_proto::DEFAULT_MAX_FRAME,
];
const DEPTHS: [usize; 8] = [0, 1, 2, 3, 8, 64, 255, 1000];

/// What the framer hands out, with an oversized frame's `len` left out (it depends on where
/// the cut fell, which depends on the split).
#[derive(Debug, PartialEq)]
enum Out {
    Frame(Vec<u8>),
    Oversized,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8();
    let cap = CAPS[usize::from(selector & 7)];
    let delimiter = if selector & 8 == 0 { 0 } else { b'\n' };
    let depth = DEPTHS[usize::from(input.u8() & 7)];
    let seed = input.u16();
    let stream = input.rest();

    let expected = model(stream, cap, delimiter);
    let whole = run(stream, cap, delimiter, &[stream.len().max(1)]);
    assert_eq!(whole, expected, "framer differs from the model");
    let sizes = split_sizes(seed, stream.len());
    assert_eq!(
        run(stream, cap, delimiter, &sizes),
        expected,
        "framer output depends on the split {sizes:?}"
    );

    for out in &whole.0 {
        if let Out::Frame(frame) = out {
            let json = &frame[..frame.len() - 1];
            check_parse(json, depth);
            if depth != pmesh_proto::DEFAULT_MAX_DEPTH {
                check_parse(json, pmesh_proto::DEFAULT_MAX_DEPTH);
            }
        }
    }
    if let Some(tail) = &whole.1 {
        check_parse(tail, depth);
    }
});

/// Feeds `stream` in pieces of the given sizes (cycled); returns what came out, the tail
/// `finish` gave, and checks the memory and counter invariants along the way.
fn run(
    stream: &[u8],
    cap: usize,
    delimiter: u8,
    sizes: &[usize],
) -> (Vec<Out>, Option<Vec<u8>>, u64) {
    let mut dec = FrameDecoder::with_delimiter(cap, delimiter);
    let mut outs = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        dec.push(piece, |f| {
            outs.push(match f {
                Ok(frame) => {
                    assert_eq!(
                        frame.last(),
                        Some(&delimiter),
                        "frame without its delimiter"
                    );
                    assert!(frame.len() - 1 <= cap, "frame over the cap handed out");
                    Out::Frame(frame.to_vec())
                }
                Err(FrameError::Oversized { len }) => {
                    assert!(len > cap, "cut at {len} bytes, cap {cap}");
                    Out::Oversized
                }
            })
        });
        assert!(
            dec.buffered() <= cap,
            "{} buffered, cap {cap}",
            dec.buffered()
        );
        assert!(
            dec.buffer_capacity() <= cap + 1,
            "{} reserved, cap {cap}",
            dec.buffer_capacity()
        );
    }
    let stats = dec.stats();
    let frames = outs.iter().filter(|o| matches!(o, Out::Frame(_))).count();
    assert_eq!(stats.frames, frames as u64);
    assert_eq!(stats.oversized, (outs.len() - frames) as u64);
    assert_eq!(stats.bytes, stream.len() as u64);
    let tail = dec.finish().map(|b| b.to_vec());
    assert_eq!(dec.buffered(), 0, "finish leaves the decoder empty");
    (outs, tail, stats.empty)
}

/// The framing rule, written the obvious way over the whole stream.
fn model(stream: &[u8], cap: usize, delimiter: u8) -> (Vec<Out>, Option<Vec<u8>>, u64) {
    let mut outs = Vec::new();
    let mut empty = 0;
    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == delimiter).collect();
    let tail = pieces.pop().expect("split yields at least one piece");
    for piece in pieces {
        if piece.is_empty() {
            empty += 1;
        } else if piece.len() > cap {
            outs.push(Out::Oversized);
        } else {
            let mut frame = piece.to_vec();
            frame.push(delimiter);
            outs.push(Out::Frame(frame));
        }
    }
    let tail = if tail.len() > cap {
        outs.push(Out::Oversized);
        None
    } else {
        (!tail.is_empty()).then(|| tail.to_vec())
    };
    (outs, tail, empty)
}

/// Piece sizes from the seed: mostly small (1..=16 bytes), now and then up to 4 KiB.
fn split_sizes(seed: u16, len: usize) -> Vec<usize> {
    let mut x = u32::from(seed) | 1;
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < len && sizes.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = if x % 16 == 0 {
            1 + (x >> 8) as usize % 4096
        } else {
            1 + (x >> 8) as usize % 16
        };
        sizes.push(size);
        total += size;
    }
    if sizes.is_empty() {
        sizes.push(1);
    }
    sizes
}
