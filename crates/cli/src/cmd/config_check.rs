//! `coffer config_check` (placeholder until its issue lands).

use std::process::ExitCode;

/// Flags of `coffer config_check`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("coffer config_check is not implemented yet")
}
