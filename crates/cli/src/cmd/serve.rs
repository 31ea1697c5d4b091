//! `coffer serve` (placeholder until its issue lands).

use std::process::ExitCode;

/// Flags of `coffer serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("coffer serve is not implemented yet")
}
