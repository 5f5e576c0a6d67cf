//! `pmesh send`, `pmesh nodes`, `pmesh topology`: one-shot commands against a running node.

use std::process::ExitCode;

/// Arguments of `pmesh send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {}

/// Arguments of `pmesh nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {}

/// Arguments of `pmesh topology`.
#[derive(Debug, clap::Args)]
pub struct TopologyArgs {}

/// `pmesh send`.
pub fn send(_args: SendArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh send is not implemented yet")
}

/// `pmesh nodes`.
pub fn nodes(_args: NodesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh nodes is not implemented yet")
}

/// `pmesh topology`.
pub fn topology(_args: TopologyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("pmesh topology is not implemented yet")
}
