//! `coffer encrypt` (placeholder until its issue lands).

use std::process::ExitCode;

/// Flags of `coffer encrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("coffer encrypt is not implemented yet")
}
