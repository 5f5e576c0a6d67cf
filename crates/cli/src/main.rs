//! `pmesh`: the command-line front end. Each subcommand lives in its own module under `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// painlessMesh-compatible mesh node, simulator, firmware distribution and MQTT bridge.
#[derive(Debug, Parser)]
#[command(name = "pmesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode painlessMesh frames from stdin, one JSON object per frame.
    Decode(cmd::decode::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode(args) => cmd::decode::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pmesh: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
