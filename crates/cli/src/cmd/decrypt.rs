//! `coffer decrypt` (placeholder until its issue lands).

use std::process::ExitCode;

/// Flags of `coffer decrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("coffer decrypt is not implemented yet")
}
