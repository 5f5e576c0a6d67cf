//! `pmesh bench sim`.

use std::process::ExitCode;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh bench sim is not implemented yet")
}
