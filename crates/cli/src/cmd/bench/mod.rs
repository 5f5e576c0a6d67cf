//! `pmesh bench ...`: benchmarks whose output goes into docs/BENCHMARKS.md.

use std::process::ExitCode;

pub mod campaign;
pub mod ota;
pub mod relay;
pub mod sim;
pub mod verify;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Simulator speed and time-sync accuracy at 50, 200 and 1,000 nodes.
    Sim(sim::Args),
    /// Staged OTA campaigns in the simulator: a crash-looping image halts, a good one staged
    /// against all at once.
    Campaign(campaign::Args),
    /// Firmware distribution: classic unicast, classic broadcast and pmesh modes side by side.
    Ota(ota::Args),
    /// Real processes on 127.0.0.1: relay throughput, idle memory, OTA relay CPU.
    Relay(relay::Args),
    /// Signed firmware: time to verify a manifest, a digest page and a chunk on this machine.
    Verify(verify::Args),
}

/// Runs a benchmark.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Sim(a) => sim::run(a),
        Command::Campaign(a) => campaign::run(a),
        Command::Ota(a) => ota::run(a),
        Command::Relay(a) => relay::run(a),
        Command::Verify(a) => verify::run(a),
    }
}
