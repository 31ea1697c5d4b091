//! The `coffer` binary: flags (etcd's and kube-apiserver's names where they mean the same),
//! wiring and output. Each subcommand lives in its own module under `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Coffer keeps the data Kubernetes stores in etcd encrypted at rest, in kube-apiserver's own
/// formats.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// [online] Serve the etcd v3 API, encrypting every value at rest.
    Serve(Box<cmd::serve::Args>),
    /// [offline] Generate a fresh key, printed as a provider block for an EncryptionConfiguration.
    Keygen(cmd::keygen::Args),
    /// [offline] Work with EncryptionConfiguration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// [offline] Encrypt a plaintext value exactly as kube-apiserver would store it.
    Encrypt(cmd::encrypt::Args),
    /// [offline] Decrypt a stored value; report which provider and key opened it.
    Decrypt(cmd::decrypt::Args),
    /// [online] Load generator in the manner of etcd's benchmark tool.
    Bench(cmd::bench::Args),
    /// [offline] Work with snapshot files (restore a data directory from one).
    #[command(subcommand)]
    Snapshot(cmd::snapshot::Args),
    /// [offline] Create and check the TLS certificates for serving over HTTPS (kubeadm's layout).
    #[command(subcommand)]
    Certs(cmd::certs::Args),
    /// [online] Serve a KMS v2 plugin whose key-encryption key is in a PKCS#11 token (HSM) or a
    /// key file; `rotate` makes a new key.
    KmsPlugin(cmd::kms_plugin::Args),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate an EncryptionConfiguration and show, per rule, which provider writes and reads.
    Check(cmd::config_check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Config(ConfigCommand::Check(args)) => cmd::config_check::run(args),
        Command::Encrypt(args) => cmd::encrypt::run(args),
        Command::Decrypt(args) => cmd::decrypt::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Snapshot(args) => cmd::snapshot::run(args),
        Command::Certs(args) => cmd::certs::run(args),
        Command::KmsPlugin(args) => cmd::kms_plugin::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
