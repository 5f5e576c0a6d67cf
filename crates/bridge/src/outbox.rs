//! A bounded, durable outbox for events and alerts.
//!
//! Every entry gets a sequence number (carried in the payload as `seq`, the consumer's dedupe
//! and gap-detection key) when it is created and stays until the broker acknowledged it
//! (PUBACK). With a file, every append and acknowledgement is written before the bridge goes
//! on, so a gateway that is killed replays what was not acknowledged, in order, with the
//! original payload (and so the original timestamp).
//!
//! File format: JSON lines, `{"put":{..entry..}}` and `{"ack":seq}`; the first line of a
//! compacted file is `{"next":seq}` so numbering never restarts. A torn last line (the
//! process died mid-write) is skipped and counted. Hand-written rather than a database crate:
//! an append-only log of a few thousand lines needs nothing more.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One queued publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number (unique, increasing).
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// Payload (JSON text).
    pub payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Next(u64),
    Put(Entry),
    Ack(u64),
}

/// The outbox.
#[derive(Debug)]
pub struct Outbox {
    pending: BTreeMap<u64, Entry>,
    next_seq: u64,
    capacity: usize,
    file: Option<(PathBuf, File)>,
    fsync: bool,
    lines_in_file: usize,
    /// Entries dropped because the outbox was full (oldest first).
    pub dropped: u64,
    /// Lines of the file that could not be read at startup.
    pub corrupt_lines: u64,
    /// Write errors on the file (the entry is still kept in memory).
    pub io_errors: u64,
}

impl Outbox {
    /// An outbox kept in memory only.
    pub fn in_memory(capacity: usize) -> Self {
        Self {
            pending: BTreeMap::new(),
            next_seq: 1,
            capacity: capacity.max(1),
            file: None,
            fsync: false,
            lines_in_file: 0,
            dropped: 0,
            corrupt_lines: 0,
            io_errors: 0,
        }
    }

    /// Opens (or creates) the outbox file at `path` and loads what was not acknowledged.
    pub fn open(path: &Path, capacity: usize, fsync: bool) -> std::io::Result<Self> {
        let mut ob = Self::in_memory(capacity);
        ob.fsync = fsync;
        if path.exists() {
            for line in BufReader::new(File::open(path)?).lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Next(n)) => ob.next_seq = ob.next_seq.max(n),
                    Ok(Line::Put(e)) => {
                        ob.next_seq = ob.next_seq.max(e.seq + 1);
                        ob.pending.insert(e.seq, e);
                    }
                    Ok(Line::Ack(s)) => {
                        ob.pending.remove(&s);
                    }
                    Err(_) => ob.corrupt_lines += 1,
                }
            }
        }
        while ob.pending.len() > ob.capacity {
            ob.pending.pop_first();
            ob.dropped += 1;
        }
        // Rewrite compactly: header + pending entries.
        ob.compact_to(path)?;
        Ok(ob)
    }

    fn compact_to(&mut self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf =
                serde_json::to_string(&Line::Next(self.next_seq)).map_err(std::io::Error::other)?;
            buf.push('\n');
            for e in self.pending.values() {
                buf.push_str(
                    &serde_json::to_string(&Line::Put(e.clone())).map_err(std::io::Error::other)?,
                );
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let f = OpenOptions::new().append(true).open(path)?;
        self.lines_in_file = 1 + self.pending.len();
        self.file = Some((path.to_path_buf(), f));
        Ok(())
    }

    fn write_line(&mut self, line: &Line) {
        let Some((_, f)) = self.file.as_mut() else {
            return;
        };
        let mut text = match serde_json::to_string(line) {
            Ok(t) => t,
            Err(_) => {
                self.io_errors += 1;
                return;
            }
        };
        text.push('\n');
        let ok = f.write_all(text.as_bytes()).is_ok() && (!self.fsync || f.sync_data().is_ok());
        if !ok {
            self.io_errors += 1;
        }
        self.lines_in_file += 1;
        // Compact once acknowledged lines dominate, so the file stays proportional to what is pending.
        if self.lines_in_file > 1024 && self.lines_in_file > 4 * (self.pending.len() + 1) {
            let path = self.file.as_ref().map(|(p, _)| p.clone());
            if let Some(p) = path
                && self.compact_to(&p).is_err()
            {
                self.io_errors += 1;
            }
        }
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues a payload built for sequence number `seq` (from [`Outbox::next_seq`]); returns it.
    /// When full, the oldest entry is dropped and counted.
    pub fn push(&mut self, topic: String, payload: String) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.pending.len() >= self.capacity {
            if let Some((old, _)) = self.pending.pop_first() {
                self.write_line(&Line::Ack(old));
            }
            self.dropped += 1;
        }
        let e = Entry {
            seq,
            topic,
            payload,
        };
        self.write_line(&Line::Put(e.clone()));
        self.pending.insert(seq, e);
        seq
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        if self.pending.remove(&seq).is_some() {
            self.write_line(&Line::Ack(seq));
        }
    }

    /// Entries not yet acknowledged, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.pending.values()
    }

    /// Entries not yet acknowledged with a sequence number above `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        self.pending.range(seq.saturating_add(1)..).map(|(_, e)| e)
    }

    /// An entry by sequence number.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.pending.get(&seq)
    }

    /// Number of entries waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pmesh-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn survives_reopen_in_order_without_acked() {
        let p = tmpdir("reopen").join("outbox.jsonl");
        {
            let mut ob = Outbox::open(&p, 100, false).unwrap();
            for i in 0..10 {
                ob.push("t".into(), format!("{{\"i\":{i}}}"));
            }
            ob.ack(3);
            ob.ack(4);
        }
        // Simulate a torn last line from a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"put\":{\"seq\":11,\"top").unwrap();
        drop(f);
        let mut ob = Outbox::open(&p, 100, false).unwrap();
        let seqs: Vec<u64> = ob.pending().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 5, 6, 7, 8, 9, 10]);
        assert_eq!(ob.corrupt_lines, 1);
        assert_eq!(ob.push("t".into(), "{}".into()), 11, "numbering continues");
        for s in 1..=11 {
            ob.ack(s);
        }
        drop(ob);
        let ob = Outbox::open(&p, 100, false).unwrap();
        assert!(ob.is_empty());
        assert_eq!(
            ob.next_seq(),
            12,
            "numbering survives a fully acknowledged, compacted file"
        );
    }

    #[test]
    fn bounded_drops_oldest_and_counts() {
        let mut ob = Outbox::in_memory(3);
        for i in 0..5 {
            ob.push("t".into(), i.to_string());
        }
        assert_eq!(
            ob.pending().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(ob.dropped, 2);
    }

    #[test]
    fn after_walks_what_is_left_in_order() {
        let mut ob = Outbox::in_memory(10);
        for i in 0..5 {
            ob.push("t".into(), i.to_string());
        }
        ob.ack(2);
        ob.ack(4);
        let seqs = |from| ob.after(from).map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(0), vec![1, 3, 5]);
        assert_eq!(seqs(1), vec![3, 5]);
        assert_eq!(seqs(5), Vec::<u64>::new());
        assert_eq!(seqs(u64::MAX), Vec::<u64>::new());
    }

    #[test]
    fn file_compacts() {
        let p = tmpdir("compact").join("outbox.jsonl");
        let mut ob = Outbox::open(&p, 100, false).unwrap();
        for _ in 0..5000 {
            let s = ob.push("t".into(), "{}".into());
            ob.ack(s);
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines < 2100, "file kept {lines} lines");
    }
}
