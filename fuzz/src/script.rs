//! The script language of the node targets: one op byte, then its operands (see [`Op`]).
//! Ops that build frames (`Sync`, `Time`, `User`) save the fuzzer from discovering the JSON
//! of a well-formed peer before it can reach the states behind it; raw bytes (`Bytes`) reach
//! everything else.

use std::time::Duration;

use pmesh_node::{ConnId, Direction};
use pmesh_ota::{MemorySource, Offer};
use pmesh_proto::NodeTree;
use pmesh_proto::message::{NodeSync, TimeMessage, UserMessage, types};

use crate::host::{CONNS, HARDWARE, Host, ME, ROLE};
use crate::input::{Input, Writer};

/// Peer ids a script names by index: a few ordinary ids, this node's own, 0 and the largest.
pub const IDS: [u32; 8] = [2, 3, 4, 5, 6, ME, 0, u32::MAX];

/// Clock steps a script names by index.
pub const STEPS: [Duration; 14] = [
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(11),
    Duration::from_secs(30),
    Duration::from_secs(61),
    Duration::from_secs(600),
    Duration::from_micros(1 << 32), // the u32 microsecond clock wraps
];

/// Ops, by the op byte modulo their count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `conn`: a connection opens (bit 2 of `conn`: we dialled).
    Connect = 0,
    /// `conn`: it closes under the node.
    Disconnect,
    /// `conn`: the application closes it.
    Close,
    /// `conn, chunk`: raw bytes arrive.
    Bytes,
    /// `step`: time passes (index into [`STEPS`], or 0xFF then u32 µs).
    Advance,
    /// `conn, from, flags, n, n × id`: a NODE_SYNC arrives (flags: bit 0 reply, bit 1 root,
    /// bit 2 time authority, bit 3 the subs nest as a chain instead of a list).
    Sync,
    /// `conn, ty, from, dest, time_type, t0 u32`: a TIME_SYNC or TIME_DELAY arrives.
    Time,
    /// `conn, ty, from, dest, chunk`: a BROADCAST or SINGLE arrives.
    User,
    /// `kind, dest, chunk`: the application sends (kind: 0 single, 1 broadcast, 2 with
    /// itself, 3 delay measurement).
    App,
    /// `flags, size u16, seed`: this node offers an image of at most 3 KiB (small: compressed
    /// offers deflate it several times) in chunks of 256 bytes, or the default size with
    /// flag bit 5 (flags: bit 0 pmesh, bit 1 compressed, bit 2 broadcast, bit 3 forced,
    /// bit 4 another role).
    Offer,
    /// `kind, ms u16`: apply the rollout in `ms` (kind even) or cancel it.
    Apply,
    /// `flags`: root (bit 0) and time authority (bit 1).
    Flags,
}

const OPS: [Op; 12] = [
    Op::Connect,
    Op::Disconnect,
    Op::Close,
    Op::Bytes,
    Op::Advance,
    Op::Sync,
    Op::Time,
    Op::User,
    Op::App,
    Op::Offer,
    Op::Apply,
    Op::Flags,
];

/// At most this many ops run per input (inputs are at most a few KiB anyway).
pub const MAX_OPS: usize = 256;

fn conn(b: u8) -> ConnId {
    ConnId(u64::from(b) % CONNS)
}

fn id(b: u8) -> u32 {
    IDS[usize::from(b) % IDS.len()]
}

/// Runs a script against `host`.
pub fn run(host: &mut Host, input: &mut Input<'_>) {
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        step(host, input);
    }
    // Let the node's timers run out the script's consequences.
    host.advance(Duration::from_secs(120), 256);
}

fn step(host: &mut Host, input: &mut Input<'_>) {
    let op = OPS[usize::from(input.u8()) % OPS.len()];
    match op {
        Op::Connect => {
            let b = input.u8();
            let direction = if b & 4 != 0 {
                Direction::Station
            } else {
                Direction::Ap
            };
            host.connect(conn(b), direction);
        }
        Op::Disconnect => host.disconnect(conn(input.u8())),
        Op::Close => host.close(conn(input.u8())),
        Op::Bytes => {
            let c = conn(input.u8());
            let data = input.chunk();
            host.bytes(c, data);
        }
        Op::Advance => {
            let b = input.u8();
            let by = match STEPS.get(usize::from(b)) {
                Some(d) => *d,
                None => Duration::from_micros(u64::from(input.u32())),
            };
            host.advance(by, 64);
        }
        Op::Sync => {
            let c = conn(input.u8());
            let from = id(input.u8());
            let flags = input.u8();
            let n = usize::from(input.u8() % 8);
            let subs: Vec<u32> = (0..n).map(|_| id(input.u8())).collect();
            host.bytes(c, &frame(&sync_json(from, flags, &subs)));
        }
        Op::Time => {
            let c = conn(input.u8());
            let ty = if input.u8() & 1 == 0 {
                types::TIME_SYNC
            } else {
                types::TIME_DELAY
            };
            let from = id(input.u8());
            let dest = id(input.u8());
            let time_type = i32::from(input.u8() % 4) - 1;
            let t0 = input.u32();
            let msg = TimeMessage {
                ty,
                dest,
                from,
                time_type,
                t0,
                t1: t0.wrapping_add(1000),
                t2: t0.wrapping_add(2000),
            };
            host.bytes(c, &frame(&msg.to_json()));
        }
        Op::User => {
            let c = conn(input.u8());
            let ty = if input.u8() & 1 == 0 {
                types::BROADCAST
            } else {
                types::SINGLE
            };
            let from = id(input.u8());
            let dest = id(input.u8());
            let msg = input.chunk().to_vec();
            let m = UserMessage {
                ty,
                dest,
                from,
                msg,
            };
            host.bytes(c, &frame(&m.to_json()));
        }
        Op::App => {
            let kind = input.u8();
            let dest = id(input.u8());
            let msg = input.chunk();
            match kind % 4 {
                0 => host.send_single(dest, msg),
                1 => host.send_broadcast(msg, false),
                2 => host.send_broadcast(msg, true),
                _ => host.delay_meas(dest),
            }
        }
        Op::Offer => {
            let flags = input.u8();
            let size = usize::from(input.u16() % 3072) + 1;
            let seed = input.u8();
            let image = image(size, seed);
            host.note_own_offer(&image);
            let role = if flags & 16 == 0 { ROLE } else { "other" };
            let mut offer = Offer::new(role, HARDWARE, MemorySource::new(image))
                .compressed(flags & 2 != 0)
                .broadcast(flags & 4 != 0)
                .forced(flags & 8 != 0)
                .chunk_size(if flags & 32 == 0 { 256 } else { 0 });
            if flags & 1 != 0 {
                offer = offer.pmesh();
            }
            host.offer(offer);
        }
        Op::Apply => {
            let kind = input.u8();
            let ms = u32::from(input.u16());
            host.apply_or_cancel((kind % 2 == 0).then_some(ms));
        }
        Op::Flags => {
            let f = input.u8();
            host.set_flags(f & 1 != 0, f & 2 != 0);
        }
    }
}

/// A firmware image: compressible text with some noise from `seed`.
pub fn image(size: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..size)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 8 == 0 {
                x as u8
            } else {
                b"pmesh firmware "[i % 15]
            }
        })
        .collect()
}

/// A NODE_SYNC from `from` whose subs are `subs` (a list, or a chain with flag bit 3).
pub fn sync_json(from: u32, flags: u8, subs: &[u32]) -> Vec<u8> {
    let mut tree = NodeTree {
        node_id: from,
        root: flags & 2 != 0,
        has_time_authority: flags & 4 != 0,
        subs: Vec::new(),
    };
    if flags & 8 != 0 {
        let mut chain: Option<NodeTree> = None;
        for &s in subs.iter().rev() {
            let mut t = NodeTree::leaf(s);
            t.subs.extend(chain.take());
            chain = Some(t);
        }
        tree.subs.extend(chain);
    } else {
        tree.subs = subs.iter().map(|&s| NodeTree::leaf(s)).collect();
    }
    let ty = if flags & 1 != 0 {
        types::NODE_SYNC_REPLY
    } else {
        types::NODE_SYNC_REQUEST
    };
    NodeSync {
        ty,
        dest: ME,
        from,
        tree,
    }
    .to_json()
}

/// JSON + NUL.
pub fn frame(json: &[u8]) -> Vec<u8> {
    let mut f = json.to_vec();
    f.push(0);
    f
}

/// Writes scripts (for seeds).
impl Writer {
    /// `Op` and its first operand byte.
    pub fn op(&mut self, op: Op, first: u8) -> &mut Self {
        self.u8(op as u8).u8(first)
    }

    /// A NODE_SYNC op: `from` and `subs` as indices into [`IDS`].
    pub fn sync(&mut self, conn: u8, from: u8, flags: u8, subs: &[u8]) -> &mut Self {
        self.op(Op::Sync, conn)
            .u8(from)
            .u8(flags)
            .u8(subs.len() as u8);
        for &s in subs {
            self.u8(s);
        }
        self
    }

    /// Raw bytes on a connection.
    pub fn raw(&mut self, conn: u8, data: &[u8]) -> &mut Self {
        self.op(Op::Bytes, conn).chunk(data)
    }

    /// Time passes by `STEPS[step]`.
    pub fn advance(&mut self, step: u8) -> &mut Self {
        self.op(Op::Advance, step)
    }
}
