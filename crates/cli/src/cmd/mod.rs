//! One module per subcommand. Each has `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.
pub mod bench;
pub mod certs;
pub mod config_check;
pub mod decrypt;
pub mod encrypt;
pub mod keygen;
pub mod kms_plugin;
pub mod serve;
pub mod snapshot;
