//! `coffer kms-plugin` [online]: a KMS v2 plugin for kube-apiserver (and for `coffer serve`'s
//! kms providers) whose key-encryption key lives in a PKCS#11 token or, for development, in a
//! key file of the default key's format. `coffer kms-plugin rotate` makes a new KEK in the
//! token; `coffer kms-plugin keys` lists the key_ids the token holds.
//!
//! The PIN comes from a file or an environment variable, never from the command line (where
//! `ps` would show it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use coffer_kms::endpoint::SocketAddress;
use coffer_kms::plugin::server::parse_metrics_url;
use coffer_kms::plugin::{
    Backend, KeyFileBackend, Pin, Pkcs11Backend, Pkcs11Config, PluginError, ServeOptions,
    TokenSelector,
};
use tracing::{info, warn};

use super::serve::{init_logging, LogFormat};

/// How long in-flight calls may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The examples of `--help` (a macro so that `concat!` can take it).
macro_rules! examples {
    () => {
        "Examples:
  export COFFER_PKCS11_PIN=1234     # or keep it in a 0600 file: --pin-file
  # the first key in a fresh token, then serve
  coffer kms-plugin rotate --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token-label kms \\
      --pin-env COFFER_PKCS11_PIN
  coffer kms-plugin --listen unix:///var/run/kmsplugin/kms.sock --pin-env COFFER_PKCS11_PIN \\
      --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token-label kms \\
      --listen-metrics-urls http://127.0.0.1:8083
  # development: the default key file of coffer serve
  coffer kms-plugin --listen unix:///@coffer-kms --key-file ~/.config/coffer/default.key"
    };
}

/// Flags of `coffer kms-plugin`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = examples!(),
    after_long_help = concat!(
        "Serve the KMS v2 plugin API on a unix socket. The key-encryption key (KEK) stays in a \
PKCS#11 token (an HSM; AES-256 generated in the token, sensitive and non-extractable; seeds \
wrapped with CKM_AES_GCM inside it, a random 12-byte IV per call and the key_id as authenticated \
data) or, for development, in a coffer default-key file (the same key_id and format as coffer \
serve's default key).\n\n\
Status answers healthz \"ok\" only after a real wrap and unwrap through the backend (cached 5 s \
after success, 1 s after failure). A token that is not there yet at start is waited for (Status \
unhealthy, saying why); a PIN the token refuses exits at start and, if the PIN changes under a \
running plugin, is never sent again (so retries cannot lock the token). Rotate with `coffer kms-plugin rotate`: the new KEK becomes \
current within 5 s in a running plugin and older KEKs keep decrypting.\n\n",
        examples!()
    )
)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Generate a new KEK in the token (the first one on an empty token); it becomes current
    /// and older KEKs stay for Decrypt. Prints the new key_id.
    Rotate(BackendArgs),
    /// List the key_ids of the KEKs in the token, oldest first (the last is current).
    Keys(BackendArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where to listen: unix:///path/to/socket (a 0600 socket file) or unix:///@name (a Linux
    /// abstract socket). kube-apiserver's EncryptionConfiguration names the same endpoint.
    #[arg(long, env = "COFFER_KMS_LISTEN", required = true)]
    listen: Option<String>,
    /// Comma-separated http://IP:PORT URLs serving /healthz (200 ok, 503 with the reason) and
    /// /metrics.
    #[arg(long, env = "COFFER_KMS_LISTEN_METRICS_URLS", value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Where the KEK is: a PKCS#11 token or key files.
#[derive(Debug, Clone, clap::Args)]
struct BackendArgs {
    /// PKCS#11 module (shared library) of the token, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "COFFER_PKCS11_MODULE", conflicts_with = "key_file")]
    pkcs11_module: Option<PathBuf>,
    /// Label of the token.
    #[arg(long, env = "COFFER_PKCS11_TOKEN_LABEL", conflicts_with = "slot")]
    token_label: Option<String>,
    /// Slot id of the token (instead of --token-label).
    #[arg(long, env = "COFFER_PKCS11_SLOT")]
    slot: Option<u64>,
    /// File holding the token's user PIN (one line; mode 0600 or 0400, refused if group or
    /// others may read it).
    #[arg(long, env = "COFFER_PKCS11_PIN_FILE", conflicts_with = "pin_env")]
    pin_file: Option<PathBuf>,
    /// Name of the environment variable holding the token's user PIN.
    #[arg(long)]
    pin_env: Option<String>,
    /// CKA_LABEL of the KEKs in the token.
    #[arg(
        long,
        env = "COFFER_PKCS11_KEY_LABEL",
        default_value = "coffer-kms-kek"
    )]
    key_label: String,
    /// Key file (coffer default-key format, mode 0600) to use as the KEK instead of a token.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Older key files, for Decrypt only (repeatable).
    #[arg(long, requires = "key_file")]
    old_key_file: Vec<PathBuf>,
}

impl BackendArgs {
    /// The token backend; `serving`: it may start before its token appears.
    fn pkcs11(&self, serving: bool) -> anyhow::Result<Pkcs11Backend> {
        let Some(module) = self.pkcs11_module.clone() else {
            bail!(
                "name the KEK's home: --pkcs11-module (with --token-label or --slot) or --key-file"
            );
        };
        let token = match (&self.token_label, self.slot) {
            (Some(l), None) => TokenSelector::Label(l.clone()),
            (None, Some(s)) => TokenSelector::Slot(s),
            _ => bail!("name the token with --token-label or --slot"),
        };
        let pin = match (&self.pin_file, &self.pin_env) {
            (Some(f), None) => Pin::from_file(f)?,
            (None, Some(name)) => Pin::from_env(name)?,
            _ => bail!(
                "give the token's PIN with --pin-file or --pin-env (never on the command line)"
            ),
        };
        let config = Pkcs11Config {
            module,
            token,
            pin,
            key_label: self.key_label.clone(),
        };
        Ok(if serving {
            Pkcs11Backend::open_waiting_for_token(config)?
        } else {
            Pkcs11Backend::open(config)?
        })
    }

    fn open(&self, serving: bool) -> anyhow::Result<Arc<dyn Backend>> {
        match &self.key_file {
            Some(path) => Ok(Arc::new(KeyFileBackend::load(path, &self.old_key_file)?)),
            None => Ok(Arc::new(self.pkcs11(serving)?)),
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(Action::Rotate(backend)) => {
            init_logging(LogFormat::Text, "warn")?;
            if backend.key_file.is_some() {
                bail!(
                    "a key file is rotated by hand: make a new one (coffer serve makes it on \
                     first start), serve it with --key-file and pass the old one as \
                     --old-key-file"
                );
            }
            let token = backend.pkcs11(false)?;
            let key_id = token.rotate()?;
            println!("{key_id}");
            eprintln!(
                "new key-encryption key in {}: it is current now; a running plugin reports it \
                 within 5 s and older keys keep decrypting",
                token.describe()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Action::Keys(backend)) => {
            init_logging(LogFormat::Text, "warn")?;
            let key_ids = match &backend.key_file {
                Some(_) => vec![backend.open(false)?.refresh()?],
                None => backend.pkcs11(false)?.key_ids()?,
            };
            for k in key_ids {
                println!("{k}");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => serve(args.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, &args.log_level)?;
    let listen = args.listen.as_deref().unwrap_or_default();
    let listen = SocketAddress::parse(listen)?;
    let metrics = args
        .listen_metrics_urls
        .iter()
        .filter(|u| !u.is_empty())
        .map(|u| parse_metrics_url(u))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(addr) = metrics.iter().find(|a| !a.ip().is_loopback()) {
        // Health and metrics carry no key, seed or PIN (key_ids only hashed); said once, as
        // every plaintext exposure is.
        warn!(
            %addr,
            "--listen-metrics-urls serves plain HTTP beyond loopback: anyone who can reach it \
             reads the plugin's health and metrics (no keys, seeds or PINs are in them)"
        );
    }
    let backend = args.backend.open(true)?;
    match backend.refresh() {
        Ok(key_id) => info!(
            backend = %backend.describe(),
            key_id_hash = %coffer_kms::plugin::key_id_hash(&key_id),
            "key-encryption key ready"
        ),
        // A token not there yet (a network HSM still coming up, a static pod started first):
        // serve, answering an unhealthy Status that says why, until it appears.
        Err(PluginError::Unavailable(why)) => warn!(
            backend = %backend.describe(),
            reason = %why,
            "no key-encryption key yet: serving, Status unhealthy until the token and its key \
             are there"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot use {}", backend.describe())),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("coffer-kms-plugin")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        };
        let options = ServeOptions {
            listen,
            metrics,
            drain_timeout: DRAIN_TIMEOUT,
        };
        coffer_kms::plugin::serve(backend, options, shutdown)
            .await
            .context("the KMS plugin stopped with an error")
    })?;
    Ok(ExitCode::SUCCESS)
}
