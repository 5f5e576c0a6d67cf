//! `pmesh bench relay`.

use std::process::ExitCode;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh bench relay is not implemented yet")
}
