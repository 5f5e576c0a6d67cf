//! `pmesh ota ...`: firmware distribution from the command line.

use std::process::ExitCode;

/// `pmesh ota` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Offer a firmware file to the mesh and follow the rollout.
    Push(PushArgs),
}

/// Arguments of `pmesh ota push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {}

/// Runs the command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Push(_) => anyhow::bail!("pmesh ota push is not implemented yet"),
    }
}
