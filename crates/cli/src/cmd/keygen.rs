//! `coffer keygen` (placeholder until its issue lands).

use std::process::ExitCode;

/// Flags of `coffer keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("coffer keygen is not implemented yet")
}
