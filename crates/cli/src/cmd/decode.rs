//! `pmesh decode`: reads painlessMesh frames from stdin and prints one JSON object per frame.
//!
//! A debugging tool for captures: every frame gets a line, a bad frame says what is wrong and
//! where (`at` is the byte offset of the frame in the input, `error_at` the offset of the
//! fault), and decoding goes on with the next frame. Exit status 0 when every frame was ok,
//! 1 otherwise (2 when stdin cannot be read).
//!
//! Framing is pmesh-proto's own `FrameDecoder` (the one every pmesh link uses), fed one
//! delimiter at a time so each frame's position in the stream is known.

use std::io::{self, BufWriter, Read, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use pmesh_proto::json::Value;
use pmesh_proto::packages::{Generation, Package};
use pmesh_proto::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME, DecodeError, Envelope, FrameDecoder, Message, UserMessage,
};
use serde_json::{Value as J, json};

/// Arguments of `pmesh decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Frames are separated by newlines instead of NUL bytes (a trailing CR is ignored,
    /// blank lines are skipped).
    #[arg(long)]
    pub lines: bool,
    /// Largest frame accepted, in bytes; longer ones are reported and skipped, as a pmesh
    /// node drops them.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stdin = io::stdin().lock();
    let stdout = BufWriter::new(io::stdout().lock());
    let summary = decode_stream(stdin, stdout, &args)?;
    Ok(if summary.bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Frames reported as ok.
    pub ok: u64,
    /// Frames reported as not ok.
    pub bad: u64,
}

/// Decodes every frame of `input`, writing one JSON line per frame to `out`. A closed `out`
/// (e.g. `| head`) ends the run quietly; a read error is returned.
pub fn decode_stream(
    mut input: impl Read,
    out: impl Write,
    args: &Args,
) -> anyhow::Result<Summary> {
    let mut d = StreamDecoder::new(out, args);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading stdin"),
        };
        if let Err(e) = d.feed(&buf[..n]) {
            return closed_or(e, d.summary);
        }
    }
    if let Err(e) = d.finish() {
        return closed_or(e, d.summary);
    }
    Ok(d.summary)
}

fn closed_or(e: io::Error, summary: Summary) -> anyhow::Result<Summary> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(summary)
    } else {
        Err(e).context("writing stdout")
    }
}

/// Splits the input into frames with their stream offsets and reports each one.
struct StreamDecoder<W: Write> {
    out: W,
    framer: FrameDecoder,
    delimiter: u8,
    lines: bool,
    /// Offset of the next byte to be fed.
    pos: u64,
    /// Offset where the current (unterminated) frame starts.
    frame_start: u64,
    /// The current frame went over the cap (reported when it ends).
    oversized: bool,
    summary: Summary,
}

impl<W: Write> StreamDecoder<W> {
    fn new(out: W, args: &Args) -> Self {
        let delimiter = if args.lines { b'\n' } else { 0 };
        StreamDecoder {
            out,
            framer: FrameDecoder::with_delimiter(args.max_frame, delimiter),
            delimiter,
            lines: args.lines,
            pos: 0,
            frame_start: 0,
            oversized: false,
            summary: Summary::default(),
        }
    }

    /// Feeds bytes one delimiter at a time, so each frame's end (and start) offset is known.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let end = memchr(self.delimiter, data).map_or(data.len(), |i| i + 1);
            let (piece, rest) = data.split_at(end);
            let mut got = None;
            self.framer.push(piece, |f| got = Some(f));
            self.pos += piece.len() as u64;
            if got.as_ref().is_some_and(Result::is_err) {
                self.oversized = true;
            }
            if piece.last() == Some(&self.delimiter) {
                let start = self.frame_start;
                self.frame_start = self.pos;
                if std::mem::take(&mut self.oversized) {
                    let len = self.pos - 1 - start;
                    self.report_oversized(start, Some(len))?;
                } else if let Some(Ok(frame)) = got {
                    self.report_frame(&frame[..frame.len() - 1], start, false)?;
                }
            }
            data = rest;
        }
        Ok(())
    }

    /// End of input: a frame still open is reported (without its terminator).
    fn finish(&mut self) -> io::Result<()> {
        let start = self.frame_start;
        let tail = self.framer.finish();
        if std::mem::take(&mut self.oversized) {
            self.report_oversized(start, None)?;
        } else if let Some(tail) = tail
            && !tail.iter().all(u8::is_ascii_whitespace)
        {
            self.report_frame(&tail, start, true)?;
        }
        self.out.flush()
    }

    fn report_oversized(&mut self, at: u64, len: Option<u64>) -> io::Result<()> {
        let cap = self.framer.max_frame();
        let error = match len {
            Some(len) => format!("oversized: {len} bytes, over the {cap}-byte frame cap; skipped"),
            None => format!(
                "oversized: over the {cap}-byte frame cap, and the input ended before its end; skipped"
            ),
        };
        self.emit(vec![
            ("ok", json!(false)),
            ("at", json!(at)),
            ("kind", json!("oversized")),
            ("error", json!(error)),
        ])
    }

    fn report_frame(&mut self, mut frame: &[u8], at: u64, unterminated: bool) -> io::Result<()> {
        if self.lines && frame.last() == Some(&b'\r') {
            frame = &frame[..frame.len() - 1];
        }
        if self.lines && frame.iter().all(u8::is_ascii_whitespace) {
            return Ok(()); // a blank line is not a frame
        }
        let mut fields = describe(frame, at);
        if unterminated {
            let terminator = if self.lines { "newline" } else { "NUL" };
            fields.push(("unterminated", json!(true)));
            if let Some((_, J::String(e))) = fields.iter_mut().find(|(k, _)| *k == "error") {
                e.push_str(&format!(
                    " (the input ended before the frame's terminating {terminator})"
                ));
            }
        }
        self.emit(fields)
    }

    fn emit(&mut self, fields: Vec<(&'static str, J)>) -> io::Result<()> {
        if fields.first().is_some_and(|(_, v)| *v == json!(true)) {
            self.summary.ok += 1;
        } else {
            self.summary.bad += 1;
        }
        let mut line = String::from("{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&J::String((*k).to_string()).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
        line.push_str("}\n");
        self.out.write_all(line.as_bytes())
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The report for one frame: `ok` first, then what the frame is or why it is not ok.
fn describe(frame: &[u8], at: u64) -> Vec<(&'static str, J)> {
    let bad = |kind: &str, error: String| {
        vec![
            ("ok", json!(false)),
            ("at", json!(at)),
            ("kind", json!(kind)),
            ("error", json!(error)),
        ]
    };
    let env = match Envelope::parse(frame, DEFAULT_MAX_DEPTH) {
        Ok(env) => env,
        Err(DecodeError::Json(e)) => {
            let mut f = bad("json", format!("invalid JSON: {e}"));
            f.push(("error_at", json!(at + e.offset as u64)));
            return f;
        }
        Err(e @ DecodeError::NotAnObject(_)) => return bad("not_an_object", e.to_string()),
    };
    let mut f = vec![
        ("ok", json!(true)),
        ("at", json!(at)),
        ("type", json!(env.ty)),
        ("routing", json!(env.routing.name())),
        ("from", json!(env.from)),
    ];
    if env.get("dest").is_some() {
        f.push(("dest", json!(env.dest)));
    }
    match env.decode() {
        Message::NodeSyncRequest(s) | Message::NodeSyncReply(s) => {
            f.push(("node_id", json!(s.tree.node_id)));
            f.push(("tree_size", json!(s.tree.size())));
            f.push(("rooted", json!(s.tree.is_rooted())));
            if s.tree.has_time_authority {
                f.push(("has_time_authority", json!(true)));
            }
        }
        Message::TimeSync(t) | Message::TimeDelay(t) => {
            f.push(("time_type", json!(t.time_type)));
            let msg = env.get("msg").and_then(Value::as_object);
            for (key, value) in [("t0", t.t0), ("t1", t.t1), ("t2", t.t2)] {
                if msg.is_some_and(|m| m.get(key).is_some()) {
                    f.push((key, json!(value)));
                }
            }
        }
        Message::Single(m) | Message::Broadcast(m) => describe_user_message(&m, &mut f),
        Message::OtaAnnounce(a) => ota_fields(&a.info, &mut f),
        Message::OtaDataRequest(r) => {
            ota_fields(&r.info, &mut f);
            f.push(("partNo", json!(r.part_no)));
        }
        Message::OtaData(d) => {
            ota_fields(&d.info, &mut f);
            f.push(("partNo", json!(d.part_no)));
            match d.decode_data() {
                Ok(bytes) => f.push(("data_len", json!(bytes.len()))),
                Err(e) => {
                    let mut out = bad("base64", format!("OTA `data` field is not base64: {e}"));
                    out.extend(f.into_iter().skip(2)); // keep type, routing, from, ...
                    return out;
                }
            }
        }
        Message::Package(p) => package_fields(&p, &mut f),
        Message::Control => f.push(("note", json!("CONTROL (7): deprecated, dropped by nodes"))),
        Message::Unknown => {
            if env.ty == 0 && env.get("type").is_none() {
                f.push(("note", json!("no type field: a node drops it")));
            }
        }
    }
    f
}

fn describe_user_message(m: &UserMessage, f: &mut Vec<(&'static str, J)>) {
    match std::str::from_utf8(&m.msg) {
        Ok(text) => f.push(("msg", json!(text))),
        Err(_) => f.push(("msg_hex", json!(hex(&m.msg)))),
    }
    if let Some(inner) = m.inner_package(DEFAULT_MAX_DEPTH) {
        f.push(("inner_type", json!(inner.ty)));
        if let Some(p) = Package::decode(&inner) {
            package_fields(&p, f);
        }
    }
}

fn ota_fields(info: &pmesh_proto::ota::FirmwareInfo, f: &mut Vec<(&'static str, J)>) {
    f.push(("md5", json!(info.md5)));
    f.push(("role", json!(info.role)));
    f.push(("hardware", json!(info.hardware)));
    f.push(("noPart", json!(info.no_part)));
    f.push(("forced", json!(info.forced)));
    f.push(("broadcasted", json!(info.broadcasted)));
    f.push(("compressed", json!(info.compressed)));
}

fn package_fields(p: &Package, f: &mut Vec<(&'static str, J)>) {
    f.push(("package", json!(p.name())));
    let generation = match p.generation() {
        Generation::Phase2 => "phase2",
        Generation::Head => "current",
    };
    f.push(("generation", json!(generation)));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(input: &[u8], lines: bool) -> (Vec<J>, Summary) {
        let args = Args {
            lines,
            max_frame: 64,
        };
        let mut out = Vec::new();
        let summary = decode_stream(input, &mut out, &args).unwrap();
        let text = String::from_utf8(out).unwrap();
        (
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            summary,
        )
    }

    #[test]
    fn offsets_follow_the_stream() {
        let (out, s) = run_on(b"{\"type\":8}\0\0{\"type\":9,\0", false);
        assert_eq!(s, Summary { ok: 1, bad: 1 });
        assert_eq!(out[0]["at"], 0);
        assert_eq!(out[1]["at"], 12);
        assert_eq!(out[1]["error_at"], 12 + 10);
    }

    #[test]
    fn oversized_is_reported_with_its_length() {
        let mut input = vec![b'x'; 100];
        input.push(0);
        input.extend_from_slice(b"{\"type\":5}\0");
        let (out, s) = run_on(&input, false);
        assert_eq!(s, Summary { ok: 1, bad: 1 });
        assert_eq!(out[0]["kind"], "oversized");
        assert!(
            out[0]["error"].as_str().unwrap().contains("100 bytes"),
            "{}",
            out[0]
        );
        assert_eq!(out[1]["at"], 101);
    }

    #[test]
    fn lines_mode_strips_cr_and_skips_blank_lines() {
        let (out, s) = run_on(b"{\"type\":9}\r\n\n  \n{\"type\":8}", true);
        assert_eq!(s, Summary { ok: 2, bad: 0 });
        assert_eq!(out[1]["at"], 16);
        assert_eq!(out[1]["unterminated"], true);
    }
}
