//! `coffer encrypt` [offline]: a plaintext value on stdin becomes exactly the value
//! kube-apiserver would store in etcd for `--key` under `--encryption-provider-config`, on
//! stdout. A key no rule covers is stored as plaintext (as kube-apiserver does), with a warning.
//!
//! KMS providers reach their plugins through the gRPC client (`coffer_kms::client`). A kms v2
//! provider needs a write key first: its plugin is asked for Status (and, for a new key_id,
//! wraps a fresh seed) before the value is sealed; when that fails the command says which
//! provider and which plugin endpoint failed, and why.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use coffer_kms::client::GrpcConnector;
use coffer_seal::config::model::{
    EncryptionConfiguration, KmsApiVersion, KmsConfiguration, ProviderConfiguration,
};
use coffer_seal::{Keyspace, SystemRandom};

/// Flags of `coffer encrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EncryptionConfiguration file (kube-apiserver's flag of the same name).
    #[arg(long, value_name = "FILE")]
    pub encryption_provider_config: PathBuf,
    /// The etcd key the value is stored under (authenticated data for aesgcm and kms), e.g.
    /// /registry/secrets/default/db-creds.
    #[arg(long, value_name = "ETCD_KEY")]
    pub key: String,
    /// Read the plaintext as hex and print the stored value as hex.
    #[arg(long)]
    pub hex: bool,
    /// kube-apiserver's --etcd-prefix.
    #[arg(long, default_value = "/registry", value_name = "PREFIX")]
    pub etcd_prefix: String,
}

/// Reads stdin, hex-decoding it when asked.
pub(crate) fn read_input(hex: bool) -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read stdin")?;
    if !hex {
        return Ok(input);
    }
    let text: String = String::from_utf8(input)
        .context("--hex: stdin is not text")?
        .split_whitespace()
        .collect();
    hex::decode(text).context("--hex: stdin is not valid hex")
}

/// Writes `bytes` to stdout, hex-encoded (with a newline) when asked.
pub(crate) fn write_output(bytes: &[u8], hex: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if hex {
        writeln!(out, "{}", hex::encode(bytes))?;
    } else {
        out.write_all(bytes)?;
    }
    out.flush().context("cannot write stdout")
}

/// Loads the config and builds a keyspace without a default provider (kube-apiserver's view),
/// its kms providers connected to their plugins.
pub(crate) fn keyspace(
    config: &std::path::Path,
    etcd_prefix: &str,
) -> anyhow::Result<(EncryptionConfiguration, Keyspace)> {
    let config = coffer_seal::config::load(config)?;
    let rng = SystemRandom::new().context("cannot seed the random generator")?;
    let kms = GrpcConnector::new().context("cannot start the KMS client")?;
    let keyspace = Keyspace::new(&config, etcd_prefix, None, &kms, Arc::new(rng))
        .context("cannot build the providers of the configuration")?;
    Ok((config, keyspace))
}

/// The kms v2 provider a keyspace labels `kms v2 "<name>"`, if `label` is one.
fn kms_v2_provider<'a>(
    config: &'a EncryptionConfiguration,
    label: &str,
) -> Option<&'a KmsConfiguration> {
    config
        .resources
        .iter()
        .flat_map(|r| &r.providers)
        .find_map(|p| match p {
            ProviderConfiguration::Kms(k)
                if k.api_version == KmsApiVersion::V2
                    && label == format!("kms v2 {:?}", k.name) =>
            {
                Some(k)
            }
            _ => None,
        })
}

/// Asks every kms v2 plugin for its Status (and a wrapped seed on a new key_id); one line per
/// provider that failed, naming it and its plugin's endpoint.
fn refresh_kms(config: &EncryptionConfiguration, keyspace: &Keyspace) -> Vec<String> {
    keyspace
        .refresh_kms()
        .into_iter()
        .map(|(label, e)| match kms_v2_provider(config, &label) {
            Some(k) => format!(
                "{label} (plugin at {}, timeout {:?}) has no write key: {e}",
                k.endpoint, k.timeout
            ),
            None => format!("{label} has no write key: {e}"),
        })
        .collect()
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, ks) = keyspace(&args.encryption_provider_config, &args.etcd_prefix)?;
    let plaintext = read_input(args.hex)?;
    let kms_failures = refresh_kms(&config, &ks);
    let key = args.key.as_bytes();
    let (rule, writer) = ks.describe(key);
    if !ks.is_covered(key) {
        eprintln!(
            "warning: no resource rule covers {:?}; kube-apiserver stores it unencrypted, so the output is the plaintext",
            args.key
        );
    }
    match ks.seal(key, &plaintext) {
        Ok(stored) => {
            for f in &kms_failures {
                eprintln!("warning: {f}");
            }
            write_output(&stored, args.hex)?;
            eprintln!("encrypted with {writer} (rule {rule})");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for f in &kms_failures {
                eprintln!("error: {f}");
            }
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
