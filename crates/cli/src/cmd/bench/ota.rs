//! `pmesh bench ota`.

use std::process::ExitCode;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh bench ota is not implemented yet")
}
