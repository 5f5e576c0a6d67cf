//! Classic (10/11/12) and pmesh (710–716) OTA frames: decoded and written on their own
//! (`pmesh_fuzz::ota_check`), and fed through a node running the OTA plugin (classic
//! receiver, pmesh agent, distributor) from an upstream and a downstream neighbour
//! (`pmesh_fuzz::records`). The seeds are real rollouts recorded from a distributor.
//!
//! Input: `[config knobs][records...]`.
//!
//! Invariants: the frame checks of `ota_check` (round trips, manifest layout), and the
//! node's (`pmesh_fuzz::host`): the sink opened only for an offer naming this node's role and
//! hardware, an image committed only if an offer named its hash, memory under the caps,
//! relayed frames unchanged; no panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pmesh_fuzz::host::{Host, Knobs};
use pmesh_fuzz::input::Input;
use pmesh_fuzz::records;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut host = Host::new(Knobs(input.u8()));
    records::start(&mut host);
    records::run(&mut host, &mut input);
});
