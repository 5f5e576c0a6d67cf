//! `pmesh decode`: reads frames from stdin and prints one JSON object per frame.

use std::process::ExitCode;

/// Arguments of `pmesh decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Frames are separated by newlines instead of NUL bytes.
    #[arg(long)]
    pub lines: bool,
}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh decode is not implemented yet")
}
