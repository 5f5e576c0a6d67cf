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
    /// Run a simulated mesh (deterministic, virtual time) and report on it.
    Sim(Box<cmd::sim::Args>),
    /// Benchmarks whose figures go into docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
    /// Run a mesh node on this host (TCP, painlessMesh port 5555 by default).
    Node(cmd::node::Args),
    /// Firmware distribution (OTA).
    #[command(subcommand)]
    Ota(cmd::ota::Command),
    /// Firmware signing keys (ed25519), kept offline.
    #[command(subcommand)]
    Key(cmd::sign::KeyCommand),
    /// Send a message through a running node.
    Send(cmd::control::SendArgs),
    /// List the nodes a running node knows.
    Nodes(cmd::control::NodesArgs),
    /// Show the mesh topology as a running node sees it.
    Topology(cmd::control::TopologyArgs),
    /// Print a running node's events as JSON lines (messages, links, topology, time, OTA).
    Events(cmd::control::EventsArgs),
    /// A simulated mesh behind a real gateway, with OTA rollout, MQTT bridge and /metrics.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode(args) => cmd::decode::run(args),
        Command::Sim(args) => cmd::sim::run(*args),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Node(args) => cmd::node::run(args),
        Command::Ota(c) => cmd::ota::run(c),
        Command::Key(c) => cmd::sign::run_key(c),
        Command::Send(args) => cmd::control::send(args),
        Command::Nodes(args) => cmd::control::nodes(args),
        Command::Topology(args) => cmd::control::topology(args),
        Command::Events(args) => cmd::control::events(args),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pmesh: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
