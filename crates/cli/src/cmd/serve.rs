//! `coffer serve` [online]: the etcd v3 API on the embedded store, every value sealed at rest.
//!
//! Wiring: the default key file (made on first start, outside the data directory) and the
//! optional `--encryption-provider-config` become a `coffer_seal::Keyspace`; the keyspace
//! seals and opens values inside `coffer_store::EmbeddedStore`; `coffer_server::serve` speaks
//! etcd's gRPC API over the store.
//!
//! The data directory records the fingerprint of the default key it was first started with
//! (`default-key.fingerprint`: a keyed hash, never the key). A later start with that file
//! missing or holding another key is refused with an error naming the expected file, so a
//! new key never silently lands on old data.
//!
//! Flags use etcd's names (and `ETCD_*` environment variables) where they mean the same, and
//! kube-apiserver's for `--encryption-provider-config` and `--etcd-prefix`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use coffer_seal::config::EncryptionConfiguration;
use coffer_seal::{DefaultKey, Keyspace, RandomSource, SystemRandom};
use coffer_server::ServerConfig;
use coffer_store::{EmbeddedStore, StoreOptions};
use tracing::{info, warn};

/// Name of the fingerprint record inside the data directory.
pub const FINGERPRINT_FILE: &str = "default-key.fingerprint";
/// First line of the fingerprint record.
const FINGERPRINT_HEADER: &str = "coffer-default-key-fingerprint v1";
/// How long open requests may take to finish after SIGTERM/SIGINT (a second signal stops at
/// once).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `coffer serve`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "[online] Serve the etcd v3 gRPC API (KV, Watch, Lease, Maintenance with Snapshot, \
Cluster, Auth, health) from an \
embedded store in --data-dir. Every value is sealed before it reaches the disk, in \
kube-apiserver's own formats: keys that a rule of --encryption-provider-config covers use that \
rule's providers; every other key uses Coffer's default key (KMS v2 format), kept in \
--default-key-file outside the data directory and created on first start.\n\n\
Snapshots (etcdctl snapshot save) are etcd's bbolt layout with the values still sealed; \
`coffer snapshot restore` turns one back into a data directory. Writes are refused while the \
NOSPACE alarm is active (--quota-backend-bytes) or the disk has less than 16 MiB free.\n\n\
TLS: https:// and unixs:// listen URLs serve TLS with --cert-file and --key-file; \
--trusted-ca-file (or --client-cert-auth with it) requires client certificates signed by that CA, \
checked against --client-crl-file. The files are re-read when they change. gRPC and the HTTP \
endpoints (/health, /version, /metrics) share each port. Plaintext http:// is refused on \
non-loopback addresses unless --insecure-listen-plaintext is given. See docs/tls.md.\n\n\
Auth: etcd's Auth service (users, roles, permissions, simple and JWT tokens, the client \
certificate's Common Name as the user); see docs/auth.md.",
    after_help = "Examples:\n  coffer serve\n  coffer serve --name node1 --data-dir /var/lib/coffer \
--listen-client-urls http://127.0.0.1:2379\n  coffer serve --encryption-provider-config /etc/kubernetes/enc.yaml\n  \
coffer serve --listen-client-urls https://0.0.0.0:2379 --cert-file server.crt --key-file server.key \
--trusted-ca-file ca.crt"
)]
pub struct Args {
    /// Human-readable name of this member (MemberList).
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Data directory [default: <name>.coffer].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on: http://host:port, https://host:port (TLS),
    /// unix://path or unixs://path (a unix socket, mode 0600; TLS with unixs).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: Vec<String>,
    /// Comma-separated URLs (http://host:port) to serve /metrics, /health, /livez, /readyz and
    /// /version on, over plain HTTP/1.1.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// Comma-separated client URLs advertised in MemberList [default: the listen URLs].
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// Largest write request accepted, in bytes (gRPC accepts 512 KiB more).
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = coffer_server::config::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most operations in one txn list (compares, success or failure).
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = coffer_server::config::DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: usize,
    /// Most concurrent HTTP/2 streams (RPCs) per client connection (etcd's flag and default,
    /// 2^32-1).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = coffer_server::config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Largest response sent, in bytes; a Range or Txn whose response would be larger is
    /// refused with RESOURCE_EXHAUSTED. Coffer's own flag: etcd has no flag, its gRPC send
    /// limit is fixed at this default (2^31-1).
    #[arg(long, default_value_t = coffer_server::config::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,
    /// Most watchers on one Watch stream; a create beyond it is refused ("etcdserver: too
    /// many requests"). Coffer's own flag: etcd has no such limit.
    #[arg(long, default_value_t = coffer_server::config::DEFAULT_MAX_WATCHERS_PER_STREAM)]
    pub max_watchers_per_stream: usize,
    /// Most watchers over all streams; a create beyond it is refused ("etcdserver: too many
    /// requests"). Coffer's own flag: etcd has no such limit.
    #[arg(long, default_value_t = coffer_server::config::DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// Most Maintenance.Snapshot calls at once (each holds a full copy of the database on the
    /// data directory's disk until sent); more are refused ("etcdserver: too many requests").
    /// Coffer's own flag: etcd has no such limit.
    #[arg(long, default_value_t = coffer_server::config::DEFAULT_MAX_CONCURRENT_SNAPSHOTS)]
    pub max_concurrent_snapshots: usize,
    /// Most leases the store holds; a LeaseGrant beyond it is refused until leases are
    /// revoked or expire. Coffer's own flag: etcd has no such limit.
    #[arg(long, default_value_t = coffer_store::DEFAULT_MAX_LEASES)]
    pub max_leases: usize,
    /// Backend quota in bytes: 0 = 2 GiB (etcd's default), negative = none.
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Interval of periodic watch progress notifications, a Go duration such as `5s` or `10m`
    /// (kubeadm sets 5s; values under 100ms are raised to 100ms). etcd 3.4/3.5 call this flag
    /// --experimental-watch-progress-notify-interval; both names are accepted.
    #[arg(
        long,
        env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL",
        alias = "experimental-watch-progress-notify-interval",
        default_value = "10m",
        value_parser = parse_interval
    )]
    pub watch_progress_notify_interval: std::time::Duration,
    /// Auth token type: `simple`, or `jwt,pub-key=<pem>,priv-key=<pem>,sign-method=<alg>,ttl=<dur>`.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Lifetime in seconds of a simple auth token after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = coffer_server::auth::token::DEFAULT_AUTH_TOKEN_TTL_SECS)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of stored password hashes (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = coffer_server::auth::password::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// kube-apiserver's EncryptionConfiguration (YAML or JSON); keys no rule covers still use
    /// the default key.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix: where resource keys live.
    #[arg(long, default_value = "/registry")]
    pub etcd_prefix: String,
    /// How often each KMS plugin is asked for its Status while healthy (kube-apiserver: 1m);
    /// after a failure it is asked every 10s (or this, if shorter).
    #[arg(long, default_value = "1m", value_name = "DURATION", value_parser = parse_interval)]
    pub kms_status_interval: std::time::Duration,
    /// How long writes under a KMS provider go on with its current seed after the plugin's last
    /// healthy Status (kube-apiserver: 3m). Unlike kube-apiserver, a Status that answers but is
    /// not healthy does not extend it. Must be more than twice --kms-status-interval.
    #[arg(long, default_value = "3m", value_name = "DURATION", value_parser = parse_interval)]
    pub kms_write_window: std::time::Duration,
    /// Coffer's default key file (0600), outside the data directory
    /// [default: $XDG_CONFIG_HOME/coffer/<name>.key, else ~/.config/coffer/<name>.key].
    #[arg(long)]
    pub default_key_file: Option<PathBuf>,
    /// Server TLS certificate chain (PEM), for https:// and unixs:// listeners.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Server TLS private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs client certificates; setting it turns client certificate
    /// authentication on.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file on TLS listeners.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Certificate revocation lists (PEM) for client certificates; a revoked one is refused
    /// at the handshake.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Comma-separated TLS 1.2 cipher suites (IANA/Go names such as
    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256); only ECDHE with AES-GCM or ChaCha20-Poly1305
    /// is supported. TLS 1.3 suites are always on.
    #[arg(long, env = "ETCD_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// Lowest TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", value_parser = coffer_server::TlsVersion::parse)]
    pub tls_min_version: Option<coffer_server::TlsVersion>,
    /// Highest TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", value_parser = coffer_server::TlsVersion::parse)]
    pub tls_max_version: Option<coffer_server::TlsVersion>,
    /// Allow plaintext http:// listen URLs on non-loopback addresses (anyone on the network
    /// can then read and change every key). Coffer's own flag; warned about every 10 minutes.
    #[arg(long)]
    pub insecure_listen_plaintext: bool,
    /// Most client connections open at once; more wait in the accept queue. Coffer's own flag.
    #[arg(long, default_value_t = coffer_server::config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// HTTP/2 PING interval on a quiet connection (a Go duration).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_interval)]
    pub grpc_keepalive_interval: std::time::Duration,
    /// How long a PING may go unanswered before the connection and its streams (watchers) are
    /// dropped.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_interval)]
    pub grpc_keepalive_timeout: std::time::Duration,
    /// Accepted for etcd compatibility and NOT enforced: hyper's HTTP/2 server cannot refuse
    /// clients that ping more often than this (etcd answers them with GOAWAY).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = parse_interval)]
    pub grpc_keepalive_min_time: std::time::Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace, or e.g. `coffer_server=debug`).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, &args.log_level)?;
    let plan = Plan::resolve(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("coffer-serve")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(plan))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("--log-level {level:?} is not a level or filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Flags resolved into paths and settings, checked for conflicts.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    name: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) key_file: PathBuf,
    listen: Vec<String>,
    advertise: Vec<String>,
    listen_metrics: Vec<String>,
    max_request_bytes: usize,
    max_txn_ops: usize,
    max_concurrent_streams: u32,
    max_response_bytes: usize,
    max_watchers_per_stream: usize,
    max_watchers: usize,
    max_concurrent_snapshots: usize,
    max_leases: usize,
    quota_backend_bytes: i64,
    watch_progress_notify_interval: std::time::Duration,
    config: Option<PathBuf>,
    etcd_prefix: String,
    kms_status_interval: std::time::Duration,
    kms_write_window: std::time::Duration,
    auth: coffer_server::config::AuthConfig,
    tls: Option<coffer_server::TlsConfig>,
    transport: coffer_server::TransportConfig,
}

impl Plan {
    pub(crate) fn resolve(args: &Args) -> anyhow::Result<Plan> {
        if args.name.is_empty() {
            bail!("--name must not be empty (MemberList clients skip nameless members)");
        }
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.coffer", args.name)));
        let key_file = match &args.default_key_file {
            Some(p) => p.clone(),
            None => default_key_path(&args.name)?,
        };
        if args.kms_write_window <= args.kms_status_interval * 2 {
            bail!(
                "--kms-write-window ({:?}) must be more than twice --kms-status-interval ({:?}): \
                 otherwise writes would stop between two healthy Status answers",
                args.kms_write_window,
                args.kms_status_interval
            );
        }
        let data_abs = full_path(&data_dir)?;
        let key_abs = full_path(&key_file)?;
        if key_abs.starts_with(&data_abs) {
            bail!(
                "--default-key-file {} is inside --data-dir {}: the key must live outside the \
                 data directory, so that a copy of the data is not a copy of its key",
                key_file.display(),
                data_dir.display()
            );
        }
        let listen: Vec<String> = args
            .listen_client_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if listen.is_empty() {
            bail!("--listen-client-urls is empty");
        }
        for url in &listen {
            coffer_server::config::ListenUrl::parse(url)
                .with_context(|| "--listen-client-urls".to_owned())?;
        }
        let mut advertise: Vec<String> = args
            .advertise_client_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if advertise.is_empty() {
            advertise = listen.clone();
        }
        for url in &advertise {
            if !["http://", "https://", "unix://", "unixs://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                bail!("--advertise-client-urls {url:?}: expected http[s]://host:port");
            }
        }
        let tls = coffer_server::TlsConfig {
            cert_file: args.cert_file.clone(),
            key_file: args.key_file.clone(),
            trusted_ca_file: args.trusted_ca_file.clone(),
            client_cert_auth: args.client_cert_auth,
            client_crl_file: args.client_crl_file.clone(),
            cipher_suites: args
                .cipher_suites
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            min_version: args.tls_min_version,
            max_version: args.tls_max_version,
            reload_interval: None,
        };
        let any_tls = tls.cert_file.is_some()
            || tls.key_file.is_some()
            || tls.trusted_ca_file.is_some()
            || tls.client_cert_auth
            || tls.client_crl_file.is_some()
            || !tls.cipher_suites.is_empty()
            || tls.min_version.is_some()
            || tls.max_version.is_some();
        if args.max_connections == 0 {
            bail!("--max-connections must be positive");
        }
        let transport = coffer_server::TransportConfig {
            max_connections: args.max_connections,
            keepalive_interval: args.grpc_keepalive_interval,
            keepalive_timeout: args.grpc_keepalive_timeout,
            keepalive_min_time: args.grpc_keepalive_min_time,
            insecure_listen_plaintext: args.insecure_listen_plaintext,
            ..coffer_server::TransportConfig::default()
        };
        let listen_metrics: Vec<String> = args
            .listen_metrics_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for url in &listen_metrics {
            let parsed = coffer_server::config::ListenUrl::parse(url)
                .with_context(|| "--listen-metrics-urls".to_owned())?;
            if parsed.tls || matches!(parsed.addr, coffer_server::config::ListenAddr::Unix(_)) {
                bail!("--listen-metrics-urls {url:?}: expected http://host:port (plain HTTP only)");
            }
        }
        if args.max_request_bytes == 0 {
            bail!("--max-request-bytes must be positive");
        }
        if args.max_txn_ops == 0 {
            bail!("--max-txn-ops must be positive");
        }
        for (flag, value) in [
            (
                "--max-concurrent-streams",
                args.max_concurrent_streams as usize,
            ),
            ("--max-response-bytes", args.max_response_bytes),
            ("--max-watchers-per-stream", args.max_watchers_per_stream),
            ("--max-watchers", args.max_watchers),
            ("--max-concurrent-snapshots", args.max_concurrent_snapshots),
            ("--max-leases", args.max_leases),
        ] {
            if value == 0 {
                bail!("{flag} must be positive");
            }
        }
        if args.etcd_prefix.is_empty() || !args.etcd_prefix.starts_with('/') {
            bail!(
                "--etcd-prefix {:?}: expected an absolute key prefix such as /registry",
                args.etcd_prefix
            );
        }
        let auth = resolve_auth(args)?;
        Ok(Plan {
            name: args.name.clone(),
            data_dir: data_abs,
            key_file: key_abs,
            listen,
            advertise,
            listen_metrics,
            max_request_bytes: args.max_request_bytes,
            max_txn_ops: args.max_txn_ops,
            max_concurrent_streams: args.max_concurrent_streams,
            max_response_bytes: args.max_response_bytes,
            max_watchers_per_stream: args.max_watchers_per_stream,
            max_watchers: args.max_watchers,
            max_concurrent_snapshots: args.max_concurrent_snapshots,
            max_leases: args.max_leases,
            quota_backend_bytes: args.quota_backend_bytes,
            watch_progress_notify_interval: args.watch_progress_notify_interval,
            kms_status_interval: args.kms_status_interval,
            kms_write_window: args.kms_write_window,
            config: args.encryption_provider_config.clone(),
            etcd_prefix: args.etcd_prefix.clone(),
            auth,
            tls: any_tls.then_some(tls),
            transport,
        })
    }
}

/// `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`, checked (JWT key files loaded).
fn resolve_auth(args: &Args) -> anyhow::Result<coffer_server::config::AuthConfig> {
    use coffer_server::auth::{password::BcryptCost, token};
    let auth = coffer_server::config::AuthConfig {
        token: token::TokenSpec::parse(&args.auth_token)?,
        token_ttl: std::time::Duration::from_secs(args.auth_token_ttl),
        bcrypt_cost: BcryptCost::new(args.bcrypt_cost).map_err(anyhow::Error::msg)?,
    };
    token::new_provider(&auth.token, auth.token_ttl)?;
    Ok(auth)
}

/// A positive Go duration (`5s`, `1m30s`, `500ms`), as etcd's duration flags take.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let nanos = coffer_seal::config::parse_go_duration(text)?;
    match u64::try_from(nanos) {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_nanos(n)),
        _ => Err(format!("{text:?} is not a positive duration")),
    }
}

/// `$XDG_CONFIG_HOME/coffer/<name>.key`, else `$HOME/.config/coffer/<name>.key`.
fn default_key_path(name: &str) -> anyhow::Result<PathBuf> {
    if name.contains('/') || name == "." || name == ".." {
        bail!("--name {name:?} cannot name a key file; pass --default-key-file");
    }
    let file = format!("{name}.key");
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("coffer").join(file));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home)
            .join(".config")
            .join("coffer")
            .join(file));
    }
    bail!("neither XDG_CONFIG_HOME nor HOME is set: pass --default-key-file")
}

/// An absolute path with `.`/`..` removed and the longest existing ancestor canonicalised
/// (symlinks resolved), so two spellings of one place compare equal.
fn full_path(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(n) => rest.push(n.to_owned()),
            None => break,
        }
        if !existing.pop() {
            break;
        }
    }
    let mut out = fs::canonicalize(&existing).unwrap_or(existing);
    for n in rest.into_iter().rev() {
        out.push(n);
    }
    Ok(out)
}

/// What the data directory says about its key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) fingerprint: String,
    pub(crate) key_file: String,
}

fn read_record(data_dir: &Path) -> anyhow::Result<Option<Recorded>> {
    let path = data_dir.join(FINGERPRINT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = text.lines();
    let (Some(FINGERPRINT_HEADER), Some(fp), Some(file)) =
        (lines.next(), lines.next(), lines.next())
    else {
        bail!(
            "{} is malformed (expected a {FINGERPRINT_HEADER:?} record)",
            path.display()
        );
    };
    if fp.len() < 16 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} is malformed (bad fingerprint line)", path.display());
    }
    Ok(Some(Recorded {
        fingerprint: fp.to_owned(),
        key_file: file.to_owned(),
    }))
}

/// Writes the record atomically: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_record(data_dir: &Path, rec: &Recorded) -> anyhow::Result<()> {
    let path = data_dir.join(FINGERPRINT_FILE);
    let tmp = data_dir.join(format!("{FINGERPRINT_FILE}.tmp"));
    let ctx = || format!("cannot write {}", path.display());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(ctx)?;
    writeln!(
        f,
        "{FINGERPRINT_HEADER}\n{}\n{}",
        rec.fingerprint, rec.key_file
    )
    .with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    drop(f);
    fs::rename(&tmp, &path).with_context(ctx)?;
    fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .with_context(ctx)?;
    Ok(())
}

/// Loads (or on a fresh data directory, creates) the default key and checks it against the
/// data directory's record.
fn default_key(plan: &Plan) -> anyhow::Result<DefaultKey> {
    let record = read_record(&plan.data_dir)?;
    let db = plan.data_dir.join(coffer_store::DB_FILE);
    match record {
        Some(rec) => {
            let key = match DefaultKey::load(&plan.key_file) {
                Ok(k) => k,
                Err(coffer_seal::default_key::DefaultKeyError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    bail!(
                        "the default key file {} does not exist, but data directory {} was \
                         sealed with the default key from {} (fingerprint {}); restore that \
                         file or point --default-key-file at it. Refusing to create a new key \
                         over existing data.",
                        plan.key_file.display(),
                        plan.data_dir.display(),
                        rec.key_file,
                        rec.fingerprint
                    );
                }
                Err(e) => return Err(e.into()),
            };
            // The record may hold the fingerprint of the key's first derivation.
            if !key.matches_fingerprint(&rec.fingerprint) {
                bail!(
                    "the default key file {} holds a different key (fingerprint {}) than the one \
                     data directory {} was sealed with (fingerprint {}, from file {}); start with \
                     --default-key-file pointing at that file",
                    plan.key_file.display(),
                    key.fingerprint(),
                    plan.data_dir.display(),
                    rec.fingerprint,
                    rec.key_file
                );
            }
            Ok(key)
        }
        None => {
            if db.exists() {
                bail!(
                    "data directory {} holds data ({}) but no {FINGERPRINT_FILE} record of the \
                     default key it was sealed with; refusing to guess. If it was started with a \
                     config whose *.* rule writes with KMS, start it with that config again; if \
                     you know the default key, write the record with that key's fingerprint",
                    plan.data_dir.display(),
                    db.display()
                );
            }
            let key = DefaultKey::load_or_create(&plan.key_file)?;
            write_record(
                &plan.data_dir,
                &Recorded {
                    fingerprint: key.fingerprint(),
                    key_file: plan.key_file.display().to_string(),
                },
            )?;
            Ok(key)
        }
    }
}

/// `--encryption-provider-config`, loaded and checked (its warnings logged), if given.
pub(crate) fn load_config(plan: &Plan) -> anyhow::Result<Option<EncryptionConfiguration>> {
    let Some(path) = &plan.config else {
        return Ok(None);
    };
    let config = coffer_seal::config::load(path).map_err(|e| {
        anyhow::anyhow!(
            "--encryption-provider-config {}: invalid:\n  {}",
            path.display(),
            e.lines().join("\n  ")
        )
    })?;
    let report = coffer_seal::config::check(&config, &plan.etcd_prefix);
    for w in &report.warnings {
        warn!(code = w.code, at = %w.path, "encryption config: {}", w.message);
    }
    let identity_writes = report
        .rules
        .iter()
        .filter(|r| r.write.kind == "identity")
        .count();
    if identity_writes > 0 {
        warn!(
            rules = identity_writes,
            "the encryption config says identity (plaintext) for some resources: their values \
             are stored UNENCRYPTED on disk"
        );
    }
    info!(
        file = %path.display(),
        rules = report.rules.len(),
        "encryption provider config loaded"
    );
    Ok(Some(config))
}

/// Whether keys no rule covers are sealed by the config's `*.*` KMS provider, with no local
/// default key at all: the config's `*.*` rule writes with KMS v2 and the data directory was
/// not started on the default key (it has no record of one).
pub(crate) fn kms_only(
    plan: &Plan,
    config: Option<&EncryptionConfiguration>,
) -> anyhow::Result<bool> {
    let Some(config) = config else {
        return Ok(false);
    };
    if !coffer_seal::keyspace::kms_seals_everything(config) {
        return Ok(false);
    }
    if let Some(rec) = read_record(&plan.data_dir)? {
        warn!(
            key_file = %rec.key_file,
            "the config's *.* rule writes with KMS, but this data directory was started on the \
             local default key: keys outside the config's resources (compact_rev_key, ...) stay \
             sealed with it, so the key file is still needed"
        );
        return Ok(false);
    }
    Ok(true)
}

/// The keyspace of `config` (or of the default key alone). `key` is the default key that
/// seals keys no rule covers; `None` only when [`kms_only`] holds. KMS providers talk to
/// their plugins over the gRPC client; no Status is asked here.
pub(crate) fn build_keyspace(
    plan: &Plan,
    config: Option<&EncryptionConfiguration>,
    key: Option<&DefaultKey>,
) -> anyhow::Result<Keyspace> {
    let rng: Arc<dyn RandomSource> =
        Arc::new(SystemRandom::new().context("cannot seed the random number generator")?);
    let connector =
        coffer_kms::client::GrpcConnector::new().context("cannot start the KMS client")?;
    let context = || {
        plan.config.as_ref().map_or_else(
            || "the default keyspace".to_owned(),
            |p| format!("--encryption-provider-config {}", p.display()),
        )
    };
    let Some(key) = key else {
        let config = config.context("a keyspace without a default key needs a config")?;
        return Keyspace::new_kms_only(config, &plan.etcd_prefix, &connector, rng)
            .with_context(context);
    };
    let service = Arc::new(
        key.key_service(rng.clone())
            .context("cannot use the default key")?,
    );
    match config {
        None => Keyspace::default_only(service, rng).with_context(context),
        Some(config) => Keyspace::new(config, &plan.etcd_prefix, Some(service), &connector, rng)
            .with_context(context),
    }
}

/// The `kms_providers` readiness check: every KMS provider's plugin answered a healthy
/// Status and its write window is open.
fn kms_ready(keyspace: Arc<Keyspace>) -> coffer_server::ReadyCheck {
    coffer_server::ReadyCheck(Arc::new(move || {
        let failing = coffer_kms::poller::failures(&keyspace);
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }))
}

async fn serve(plan: Plan) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        etcd_api = coffer_server::ETCD_VERSION,
        "coffer serve starting"
    );
    // Each new directory durable in its parent: a power cut right after the first start must
    // not lose the data directory, its fingerprint record or the key.
    coffer_seal::durable::create_dir_all(&plan.data_dir)
        .with_context(|| format!("cannot create data directory {}", plan.data_dir.display()))?;

    let config = load_config(&plan)?;
    let key = if kms_only(&plan, config.as_ref())? {
        info!(
            "the config's *.* rule writes with KMS: every key is sealed under the KMS plugin; \
             no local default key is read or created"
        );
        None
    } else {
        let key = default_key(&plan)?;
        info!(
            file = %key.path().display(),
            fingerprint = %key.fingerprint(),
            created = key.created(),
            "default key file"
        );
        if key.created() {
            warn!(
                file = %key.path().display(),
                "created a new default key; back it up: without it the data cannot be read"
            );
        }
        Some(key)
    };
    if plan.config.is_none() {
        warn!(
            "no --encryption-provider-config: every value is sealed with the local default key; \
             production should use a KMS v2 provider so the key-encryption key stays in an HSM"
        );
    }
    // The keyspace is built, then each KMS plugin asked for its first Status: blocking calls,
    // off the runtime. The default key is dropped (and wiped) once its key service exists.
    let build_plan = plan.clone();
    let keyspace = tokio::task::spawn_blocking(move || {
        let keyspace = build_keyspace(&build_plan, config.as_ref(), key.as_ref())?;
        keyspace.set_kms_write_window(build_plan.kms_write_window);
        keyspace.refresh_kms();
        anyhow::Ok(keyspace)
    })
    .await
    .context("building the keyspace panicked")??;
    let keyspace = Arc::new(keyspace);
    // A failed first Status is logged and serving goes on (plugin and server may start in
    // either order); the poller keeps asking.
    let uses_kms = !keyspace.kms_health().is_empty();
    let poller = if uses_kms {
        let failures = coffer_kms::poller::failures(&keyspace);
        for f in &failures {
            warn!(failure = %f, "KMS plugin unhealthy at start; writes under it wait for a healthy Status");
        }
        let healthy = plan.kms_status_interval;
        let failed = healthy.min(coffer_kms::poller::FAILED_INTERVAL);
        Some(
            coffer_kms::poller::StatusPoller::spawn(keyspace.clone(), failures, healthy, failed)
                .context("cannot start the KMS Status poller")?,
        )
    } else {
        None
    };

    let data_dir = plan.data_dir.clone();
    let keyspace_for_store = keyspace.clone();
    let quota = plan.quota_backend_bytes;
    let max_leases = plan.max_leases;
    let store = tokio::task::spawn_blocking(move || {
        EmbeddedStore::open(
            &data_dir,
            keyspace_for_store,
            StoreOptions {
                quota_backend_bytes: quota,
                max_leases,
                ..StoreOptions::default()
            },
        )
    })
    .await
    .context("the store opener panicked")?
    .with_context(|| format!("cannot open the store in {}", plan.data_dir.display()))?;
    let store = Arc::new(store);
    info!(
        data_dir = %plan.data_dir.display(),
        revision = store.current_revision(),
        "store open"
    );

    let mut config = ServerConfig::new(store.cluster_id(), store.member_id());
    config.name = plan.name.clone();
    config.listen_client_urls = plan.listen.clone();
    config.advertise_client_urls = plan.advertise.clone();
    config.listen_metrics_urls = plan.listen_metrics.clone();
    if let Some(url) = plan.listen_metrics.iter().find(|u| !is_loopback_url(u)) {
        // Metrics and health carry no key, value or secret, so plain HTTP beyond loopback is
        // allowed; said once, as every plaintext exposure is.
        warn!(
            url = %url,
            "--listen-metrics-urls serves plain HTTP beyond loopback: anyone who can reach it \
             reads the metrics (no keys, values or secrets are in them)"
        );
    }
    config.max_request_bytes = plan.max_request_bytes;
    config.max_txn_ops = plan.max_txn_ops;
    config.max_concurrent_streams = plan.max_concurrent_streams;
    config.max_response_bytes = plan.max_response_bytes;
    config.max_watchers_per_stream = plan.max_watchers_per_stream;
    config.max_watchers = plan.max_watchers;
    config.max_concurrent_snapshots = plan.max_concurrent_snapshots;
    config.watch_progress_notify_interval = plan.watch_progress_notify_interval;
    config.auth = plan.auth.clone();
    config.tls = plan.tls.clone();
    config.transport = plan.transport.clone();
    config.kms_ready = uses_kms.then(|| kms_ready(keyspace.clone()));

    // Without the handlers a SIGTERM would kill the process without the drain and the final
    // commit: refuse to serve rather than serve without a clean stop.
    let mut signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            store.close();
            return Err(e).context(
                "cannot register the SIGTERM/SIGINT handlers, so the server could not stop \
                 cleanly; not serving",
            );
        }
    };
    let listeners = match coffer_server::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            store.close();
            return Err(e).context("cannot start serving");
        }
    };
    for addr in listeners.local_addrs() {
        info!(%addr, "ready to serve client requests");
    }
    for path in listeners.unix_paths() {
        info!(path = %path.display(), "ready to serve client requests");
    }
    for addr in listeners.metrics_addrs() {
        info!(%addr, "ready to serve metrics and health");
    }

    let (sig_tx, sig_rx) = tokio::sync::watch::channel(0u32);
    let signals = tokio::spawn(async move {
        loop {
            signals.recv().await;
            sig_tx.send_modify(|n| *n += 1);
        }
    });
    let mut first = sig_rx.clone();
    let shutdown = async move {
        let _ = first.wait_for(|n| *n >= 1).await;
    };
    let mut forced = sig_rx.clone();
    let drain_guard = async move {
        let _ = forced.wait_for(|n| *n >= 1).await;
        tokio::select! {
            _ = forced.wait_for(|n| *n >= 2) => Forced::SecondSignal,
            () = tokio::time::sleep(DRAIN_TIMEOUT) => Forced::Timeout,
        }
    };
    let served = tokio::select! {
        r = coffer_server::serve_on(listeners, config, store.clone(), shutdown) => r.map(|()| None),
        forced = drain_guard => Ok(Some(forced)),
    };
    signals.abort();
    // Writes already queued finish and are made durable before the writer stops.
    store.close();
    if let Some(p) = poller {
        let _ = tokio::task::spawn_blocking(move || p.stop()).await;
    }
    match served.context("the server stopped with an error")? {
        None => {
            info!("coffer serve stopped");
            Ok(())
        }
        Some(forced) => {
            warn!("{forced}");
            Err(anyhow::anyhow!("{forced}"))
        }
    }
}

/// Why a drain was cut short: the stop is then not clean, and the exit status says so.
#[derive(Debug, Clone, Copy)]
enum Forced {
    SecondSignal,
    Timeout,
}

impl std::fmt::Display for Forced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self {
            Forced::SecondSignal => "a second signal arrived".to_owned(),
            Forced::Timeout => format!(
                "open requests did not finish within {}s",
                DRAIN_TIMEOUT.as_secs()
            ),
        };
        write!(
            f,
            "stopped without draining: {why}; requests still open were cut off (writes already \
             queued were made durable)"
        )
    }
}

/// SIGTERM and SIGINT, registered once before serving.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}

/// Whether a listen URL's host is a loopback address or `localhost`.
fn is_loopback_url(url: &str) -> bool {
    coffer_server::config::ListenUrl::parse(url).is_ok_and(|u| match u.addr {
        coffer_server::config::ListenAddr::Tcp { host, .. } => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        coffer_server::config::ListenAddr::Unix(_) => true,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let mut full = vec!["serve"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn the_kms_write_window_must_exceed_twice_the_status_interval() {
        let defaults = parse(&["--default-key-file", "/tmp/k"]).unwrap();
        assert_eq!(defaults.kms_status_interval, Duration::from_secs(60));
        assert_eq!(defaults.kms_write_window, Duration::from_secs(180));
        assert!(Plan::resolve(&defaults).is_ok());
        let short = [
            "--default-key-file",
            "/tmp/k",
            "--kms-status-interval",
            "1m",
            "--kms-write-window",
            "2m",
        ];
        let err = Plan::resolve(&parse(&short).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--kms-write-window") && err.contains("--kms-status-interval"),
            "{err}"
        );
        let tight = [
            "--default-key-file",
            "/tmp/k",
            "--kms-status-interval",
            "300ms",
            "--kms-write-window",
            "1s",
        ];
        assert!(Plan::resolve(&parse(&tight).unwrap()).is_ok());
    }

    #[test]
    fn defaults_follow_etcd() {
        let args = parse(&["--default-key-file", "/tmp/k"]).unwrap();
        assert_eq!(args.name, "default");
        assert_eq!(args.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(args.max_request_bytes, 1_572_864);
        assert_eq!(args.max_txn_ops, 128);
        assert_eq!(args.max_concurrent_streams, u32::MAX);
        assert_eq!(args.max_response_bytes, 2_147_483_647);
        assert_eq!(args.max_watchers_per_stream, 10_000);
        assert_eq!(args.max_watchers, 100_000);
        assert_eq!(args.max_concurrent_snapshots, 1);
        assert_eq!(args.quota_backend_bytes, 0);
        assert_eq!(args.etcd_prefix, "/registry");
        let plan = Plan::resolve(&args).unwrap();
        assert_eq!(plan.auth, coffer_server::config::AuthConfig::default());
        assert!(plan.data_dir.ends_with("default.coffer"));
        assert_eq!(plan.advertise, plan.listen);
    }

    #[test]
    fn lists_and_negative_quota() {
        let args = parse(&[
            "--listen-client-urls",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--quota-backend-bytes",
            "-1",
            "--default-key-file",
            "/tmp/k",
        ])
        .unwrap();
        assert_eq!(args.listen_client_urls.len(), 2);
        assert_eq!(args.quota_backend_bytes, -1);
    }

    #[test]
    fn auth_flags_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hs.key");
        std::fs::write(&key, b"secret").unwrap();
        let jwt = format!("jwt,priv-key={},sign-method=HS512,ttl=1m", key.display());
        let args = parse(&[
            "--default-key-file",
            "/tmp/k",
            "--auth-token",
            &jwt,
            "--auth-token-ttl",
            "30",
            "--bcrypt-cost",
            "4",
        ])
        .unwrap();
        let plan = Plan::resolve(&args).unwrap();
        assert!(matches!(
            plan.auth.token,
            coffer_server::auth::token::TokenSpec::Jwt(_)
        ));
        assert_eq!(plan.auth.token_ttl, std::time::Duration::from_secs(30));
        assert_eq!(plan.auth.bcrypt_cost.get(), 4);
        for (flag, value, needle) in [
            ("--bcrypt-cost", "3", "--bcrypt-cost 3 is out of range"),
            ("--bcrypt-cost", "32", "--bcrypt-cost 32"),
            ("--auth-token", "jwt2", "invalid auth options"),
            ("--auth-token", "jwt,sign-method=HS256", "missing key data"),
            (
                "--auth-token",
                "jwt,sign-method=XS1,priv-key=/k",
                "signature method",
            ),
            (
                "--auth-token",
                "jwt,sign-method=RS256,priv-key=/nonexistent",
                "/nonexistent",
            ),
            ("--auth-token-ttl", "0", "--auth-token-ttl must be positive"),
        ] {
            let args = parse(&["--default-key-file", "/tmp/k", flag, value]).unwrap();
            let err = format!("{:#}", Plan::resolve(&args).unwrap_err());
            assert!(err.contains(needle), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn key_inside_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args = parse(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--default-key-file",
            data.join("sub/../k.key").to_str().unwrap(),
        ])
        .unwrap();
        let err = Plan::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("inside --data-dir"), "{err}");
        // A sibling directory whose name merely starts the same way is fine.
        let args = parse(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--default-key-file",
            dir.path().join("data-keys/k.key").to_str().unwrap(),
        ])
        .unwrap();
        assert!(Plan::resolve(&args).is_ok());
    }

    #[test]
    fn bad_listen_url_is_refused() {
        let args = parse(&[
            "--listen-client-urls",
            "ftp://127.0.0.1:2379",
            "--default-key-file",
            "/tmp/k",
        ])
        .unwrap();
        let err = format!("{:#}", Plan::resolve(&args).unwrap_err());
        assert!(err.contains("ftp://127.0.0.1:2379"), "{err}");
    }

    #[test]
    fn listen_metrics_urls_are_plain_http() {
        let args = parse(&[
            "--listen-metrics-urls",
            "http://127.0.0.1:2381,http://[::1]:2382",
            "--default-key-file",
            "/tmp/k",
        ])
        .unwrap();
        let plan = Plan::resolve(&args).unwrap();
        assert_eq!(plan.listen_metrics.len(), 2);
        assert!(plan.listen_metrics.iter().all(|u| is_loopback_url(u)));
        assert!(is_loopback_url("http://localhost:2381"));
        assert!(!is_loopback_url("http://0.0.0.0:2381"));
        assert!(!is_loopback_url("http://10.0.0.1:2381"));
        let args = parse(&[
            "--listen-metrics-urls",
            "https://127.0.0.1:2381",
            "--default-key-file",
            "/tmp/k",
        ])
        .unwrap();
        let err = format!("{:#}", Plan::resolve(&args).unwrap_err());
        assert!(err.contains("--listen-metrics-urls"), "{err}");
        assert!(parse(&["--default-key-file", "/tmp/k"])
            .unwrap()
            .listen_metrics_urls
            .is_empty());
    }

    /// A data directory made before the default key's derivation changed records the first
    /// derivation's fingerprint (crates/seal/tests/data/default-key-v1.json); it still starts.
    #[test]
    fn data_dir_with_the_first_derivations_fingerprint_still_starts() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (data, key_file) = (dir.path().join("data"), dir.path().join("k.key"));
        fs::create_dir(&data).unwrap();
        let key = hex::decode("030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dc")
            .unwrap();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .unwrap();
        writeln!(
            f,
            "coffer-default-key v1\n{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
        .unwrap();
        let args = parse(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--default-key-file",
            key_file.to_str().unwrap(),
        ])
        .unwrap();
        let plan = Plan::resolve(&args).unwrap();
        for (fingerprint, ok) in [
            (
                "016afcbf0e88652f2325fe0eb205760038cbb40fda0f567bbfb5d6d97a6b2c1c",
                true,
            ),
            ("ab".repeat(32).as_str(), false),
        ] {
            let rec = Recorded {
                fingerprint: fingerprint.to_owned(),
                key_file: key_file.display().to_string(),
            };
            write_record(&data, &rec).unwrap();
            assert_eq!(default_key(&plan).is_ok(), ok, "{fingerprint}");
        }
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), None);
        let rec = Recorded {
            fingerprint: "ab".repeat(16),
            key_file: "/etc/coffer/k.key".into(),
        };
        write_record(dir.path(), &rec).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Some(rec));
        fs::write(dir.path().join(FINGERPRINT_FILE), "garbage").unwrap();
        assert!(read_record(dir.path()).is_err());
    }
}
