//! The input of the OTA target: the node has an upstream neighbour (connection 0, which it
//! dialled) and a downstream one (connection 1), and the input is what arrives on them:
//! records `[ctl][chunk]`, where ctl bit 0 picks the connection and ctl >> 4 the clock step
//! taken before the bytes arrive (an index into [`STEPS`]; 14 and 15: no step). Every
//! complete frame is also checked on its own ([`crate::ota_check`]).

use std::time::Duration;

use pmesh_node::{ConnId, Direction};
use pmesh_proto::framing::FrameDecoder;

use crate::host::{Host, MAX_FRAME};
use crate::input::{Input, Writer};
use crate::ota_check;
use crate::script::STEPS;

/// Upstream connection (towards the distributor).
pub const UP: ConnId = ConnId(0);
/// Downstream connection.
pub const DOWN: ConnId = ConnId(1);
/// At most this many records run per input.
pub const MAX_RECORDS: usize = 512;

/// Opens both connections.
pub fn start(host: &mut Host) {
    host.connect(UP, Direction::Station);
    host.connect(DOWN, Direction::Ap);
}

/// Runs the records of `input` against `host` (after [`start`]).
pub fn run(host: &mut Host, input: &mut Input<'_>) {
    let mut framers = [FrameDecoder::new(MAX_FRAME), FrameDecoder::new(MAX_FRAME)];
    for _ in 0..MAX_RECORDS {
        if input.is_empty() {
            break;
        }
        let ctl = input.u8();
        let data = input.chunk();
        if let Some(step) = STEPS.get(usize::from(ctl >> 4)) {
            host.advance(*step, 64);
        }
        let side = usize::from(ctl & 1);
        framers[side].push(data, |f| {
            if let Ok(frame) = f {
                ota_check::check_frame(&frame[..frame.len() - 1]);
            }
        });
        host.bytes(if side == 0 { UP } else { DOWN }, data);
    }
    host.advance(Duration::from_secs(120), 256);
}

impl Writer {
    /// A record: `data` arrives on connection `side` after clock step `step`.
    pub fn record(&mut self, side: u8, step: u8, data: &[u8]) -> &mut Self {
        self.u8((step << 4) | (side & 1)).chunk(data)
    }
}
