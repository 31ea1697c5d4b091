//! `coffer snapshot` [offline]: work with snapshot files (`etcdctl snapshot save` against
//! Coffer or etcd writes them; the format is etcd's backend layout, values sealed).
//!
//! `coffer snapshot restore FILE --data-dir DIR` builds a fresh data directory from a
//! snapshot. The keys come from the same flags `coffer serve` takes (`--default-key-file`,
//! `--encryption-provider-config`, `--etcd-prefix`, `--name`), loaded by serve's own code; every
//! value must open with them, so a restore with the wrong key fails before anything is served.
//! The data directory then records the default key's fingerprint, so `coffer serve` with the
//! same flags starts on it.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use coffer_seal::DefaultKey;
use coffer_store::snapshot::{restore, RestoreOptions};

use super::serve;

/// `coffer snapshot` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// [offline] Build a fresh data directory from a snapshot file.
    Restore(RestoreArgs),
}

/// Flags of `coffer snapshot restore`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "[offline] Build a fresh Coffer data directory from a snapshot file (what \
`etcdctl snapshot save` wrote, from Coffer or from etcd): every record, revision, the compaction \
revision and the leases (with their remaining TTL). Values are copied as they are, sealed; each \
one must open with the keys given here (the same flags as `coffer serve`), else nothing is \
restored. The new data directory gets new cluster and member ids, like etcd's restore.",
    after_help = "Examples:\n  coffer snapshot restore snap.db --data-dir /var/lib/coffer \
--default-key-file /etc/coffer/default.key\n  coffer snapshot restore snap.db --data-dir new.coffer \
--encryption-provider-config /etc/kubernetes/enc.yaml"
)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The data directory to create (must be missing or empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Name of the member; only used to find the default key file when --default-key-file is
    /// not given.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The default key file the snapshot's values were sealed with (as for `coffer serve`).
    #[arg(long)]
    pub default_key_file: Option<PathBuf>,
    /// kube-apiserver's EncryptionConfiguration the values were sealed with (as for `coffer
    /// serve`).
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix.
    #[arg(long, default_value = "/registry")]
    pub etcd_prefix: String,
    /// Do not check the snapshot's trailing SHA-256 (and accept a file without one, such as a
    /// copy of etcd's member/snap/db).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// `coffer serve`'s flags, parsed by serve's own definition so paths and keys resolve alike.
#[derive(Debug, Parser)]
struct ServeFlags {
    #[command(flatten)]
    serve: serve::Args,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::Restore(a) => run_restore(a),
    }
}

fn serve_plan(args: &RestoreArgs) -> anyhow::Result<serve::Plan> {
    let mut argv: Vec<std::ffi::OsString> = vec!["coffer-serve".into()];
    let mut flag = |name: &str, value: std::ffi::OsString| {
        argv.push(format!("--{name}").into());
        argv.push(value);
    };
    flag("name", args.name.clone().into());
    flag("data-dir", args.data_dir.clone().into());
    flag("etcd-prefix", args.etcd_prefix.clone().into());
    if let Some(k) = &args.default_key_file {
        flag("default-key-file", k.clone().into());
    }
    if let Some(c) = &args.encryption_provider_config {
        flag("encryption-provider-config", c.clone().into());
    }
    let flags = ServeFlags::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    serve::Plan::resolve(&flags.serve)
}

fn run_restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if !args.file.is_file() {
        bail!("snapshot file {} does not exist", args.file.display());
    }
    let plan = serve_plan(&args)?;
    let config = serve::load_config(&plan)?;
    let key =
        if serve::kms_only(&plan, config.as_ref())? {
            None
        } else {
            if !plan.key_file.exists() {
                bail!(
                    "the default key file {} does not exist; restore needs the key the snapshot's \
                 values were sealed with (the --default-key-file of the server it came from)",
                    plan.key_file.display()
                );
            }
            Some(DefaultKey::load(&plan.key_file).with_context(|| {
                format!("cannot load the default key {}", plan.key_file.display())
            })?)
        };
    let keyspace = serve::build_keyspace(&plan, config.as_ref(), key.as_ref())?;
    // Restored values are sealed anew: KMS providers need a write state first.
    if let Some((provider, e)) = keyspace.refresh_kms().into_iter().next() {
        bail!("KMS provider {provider}: {e}");
    }

    let terminal = std::io::stderr().is_terminal();
    let mut progress = |n: u64| eprint!("\rrestored {n} records");
    let info = restore(
        &args.file,
        &plan.data_dir,
        Arc::new(keyspace),
        RestoreOptions {
            skip_hash_check: args.skip_hash_check,
            progress: if terminal { Some(&mut progress) } else { None },
        },
    );
    if terminal {
        eprintln!();
    }
    let info = info.with_context(|| {
        format!(
            "cannot restore {} into {}",
            args.file.display(),
            plan.data_dir.display()
        )
    })?;
    // A keyspace sealed wholly under KMS has no default key to record.
    if let Some(key) = &key {
        serve::write_record(
            &plan.data_dir,
            &serve::Recorded {
                fingerprint: key.fingerprint(),
                key_file: plan.key_file.display().to_string(),
            },
        )
        .with_context(|| {
            format!(
                "restored {} but could not record its default key; remove it and restore again",
                plan.data_dir.display()
            )
        })?;
    }
    println!(
        "restored {} into {}: revision {}, compacted at {}, {} records ({} values checked), {} leases, {} users, {} roles",
        args.file.display(),
        plan.data_dir.display(),
        info.revision,
        info.compact_revision,
        info.records,
        info.values,
        info.leases,
        info.users,
        info.roles
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Args,
    }

    #[test]
    fn flags_parse() {
        let Cli {
            cmd: Args::Restore(a),
        } = Cli::try_parse_from([
            "x",
            "restore",
            "snap.db",
            "--data-dir",
            "d",
            "--default-key-file",
            "/k/default.key",
            "--skip-hash-check",
        ])
        .unwrap();
        assert_eq!(a.file, PathBuf::from("snap.db"));
        assert_eq!(a.data_dir, PathBuf::from("d"));
        assert!(a.skip_hash_check);
        assert_eq!(a.etcd_prefix, "/registry");
        assert!(Cli::try_parse_from(["x", "restore", "snap.db"]).is_err());
    }

    #[test]
    fn plan_follows_serve() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RestoreArgs {
            file: tmp.path().join("snap.db"),
            data_dir: tmp.path().join("data"),
            name: "default".into(),
            default_key_file: Some(tmp.path().join("data/inside.key")),
            encryption_provider_config: None,
            etcd_prefix: "/registry".into(),
            skip_hash_check: false,
        };
        // serve's rule: the key may not live inside the data directory.
        let err = serve_plan(&a).unwrap_err().to_string();
        assert!(err.contains("inside --data-dir"), "{err}");
    }
}
