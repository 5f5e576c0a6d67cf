//! `Node::handle_bytes` and the rest of the node's inputs, with the OTA and status plugins,
//! over several connections, driven by a script (`pmesh_fuzz::script`: connect, disconnect,
//! bytes, well-formed peer frames, time, application sends, offers).
//!
//! Input: `[config knobs][ops...]`.
//!
//! Invariants: see `pmesh_fuzz::host` (relayed bytes identical to received, transmits only
//! to known connections, memory under the caps, timers make progress, firmware only as
//! offered), checked after every op; no panic anywhere.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmesh_fuzz::host::{Host, Knobs};
use pmesh_fuzz::input::Input;
use pmesh_fuzz::script;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut host = Host::new(Knobs(input.u8()));
    script::run(&mut host, &mut input);
});
