//! `coffer decrypt` [offline]: a stored value on stdin is opened with the providers of
//! `--encryption-provider-config` for `--key`, as kube-apiserver would open it. The plaintext
//! goes to stdout; stderr says which provider and key opened it and whether it is stale. On
//! failure nothing goes to stdout, stderr lists every provider of the rule and why it failed,
//! and the exit code is 1. KMS providers ask their plugins through the gRPC client
//! (`coffer_kms::client`); an unreachable plugin is reported with its endpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use coffer_seal::keyspace::AttemptOutcome;

use super::encrypt::{keyspace, read_input, write_output};

/// Flags of `coffer decrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EncryptionConfiguration file (kube-apiserver's flag of the same name).
    #[arg(long, value_name = "FILE")]
    pub encryption_provider_config: PathBuf,
    /// The etcd key the value was read from (authenticated data for aesgcm and kms).
    #[arg(long, value_name = "ETCD_KEY")]
    pub key: String,
    /// Read the stored value as hex and print the plaintext as hex.
    #[arg(long)]
    pub hex: bool,
    /// kube-apiserver's --etcd-prefix.
    #[arg(long, default_value = "/registry", value_name = "PREFIX")]
    pub etcd_prefix: String,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, ks) = keyspace(&args.encryption_provider_config, &args.etcd_prefix)?;
    let stored = read_input(args.hex)?;
    let mut d = ks.diagnose(args.key.as_bytes(), &stored);
    // Staleness is judged against each KMS v2 plugin's current key_id, asked only once the
    // value opened: an unreachable plugin costs the Decrypt's wait alone. Opening again makes
    // no plugin call (the seed is cached).
    let mut status_failed = Vec::new();
    if d.result.is_ok() && !ks.kms_health().is_empty() {
        status_failed = ks.refresh_kms();
        d = ks.diagnose(args.key.as_bytes(), &stored);
    }
    match d.result {
        Ok(opened) => {
            write_output(&opened.plaintext, args.hex)?;
            let opener_failed = status_failed
                .iter()
                .find(|(provider, _)| opened.provider.starts_with(provider.as_str()));
            let stale = match opener_failed {
                Some((provider, e)) => format!("unknown ({provider} answered no Status: {e})"),
                None if opened.stale => {
                    "yes (kube-apiserver rewrites it with the first provider on the next update)"
                        .to_owned()
                }
                None => "no".to_owned(),
            };
            eprintln!(
                "decrypted by {} (rule {}); stale: {stale}",
                opened.provider, d.rule
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("rule: {}", d.rule);
            for a in &d.attempts {
                let what = match &a.outcome {
                    AttemptOutcome::PrefixMismatch => {
                        "not tried: its prefix does not match".to_owned()
                    }
                    AttemptOutcome::Failed(why) => format!("failed: {why}"),
                    AttemptOutcome::Opened { source, .. } => format!("opened by {source}"),
                };
                eprintln!("  {}: {what}", a.provider);
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
