//! What `serve` needs to know: listen addresses, what to advertise, the request limits and the
//! identity the response headers carry, and the authentication settings (`auth`). TLS will slot
//! in here (`tls`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// etcd's `--max-request-bytes` default: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// etcd's `--max-txn-ops` default.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// What gRPC may receive beyond `--max-request-bytes` (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Default `--watch-progress-notify-interval` (etcd: 10 minutes).
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(600);
/// Smallest progress interval; smaller values are raised to it (etcd: 100 ms).
pub const MIN_WATCH_PROGRESS_NOTIFY_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(100);
/// Default `--max-response-bytes`: gRPC-go's send limit in etcd (`math.MaxInt32`).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = i32::MAX as usize;
/// etcd's `--max-concurrent-streams` default (`math.MaxUint32`): HTTP/2 streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
/// Default `--max-watchers-per-stream` (Coffer's own; etcd has no limit).
pub const DEFAULT_MAX_WATCHERS_PER_STREAM: usize =
    coffer_store::watch::DEFAULT_MAX_WATCHERS_PER_STREAM;
/// Default `--max-watchers` (Coffer's own; etcd has no limit).
pub const DEFAULT_MAX_WATCHERS: usize = coffer_store::watch::DEFAULT_MAX_WATCHERS;
/// Snapshots served at once by default; each holds a full copy of the database on the data
/// directory's disk until it is sent.
pub const DEFAULT_MAX_CONCURRENT_SNAPSHOTS: usize = 1;
/// The peer URL a single member advertises (Coffer has no peers; etcd's default).
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// Default `--max-connections`: open client connections at once (Coffer's own flag).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a TLS handshake may take before the connection is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no open request that has sent nothing for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// etcd's `--grpc-keepalive-interval` default: 2 hours.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// etcd's `--grpc-keepalive-timeout` default: 20 seconds.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// etcd's `--grpc-keepalive-min-time` default: 5 seconds.
pub const DEFAULT_KEEPALIVE_MIN_TIME: Duration = Duration::from_secs(5);
/// How often the certificate, key, CA and CRL files are checked for changes.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Why a server configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A listen URL that is not `http[s]://host:port` or `unix[s]://path`.
    #[error("listen URL {url:?}: {reason}")]
    ListenUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No listen client URL at all.
    #[error("no listen client URL given")]
    NoListenUrl,
    /// A TLS listener without a certificate and key.
    #[error("listen URL {url:?} serves TLS: --cert-file and --key-file are required")]
    MissingCertKey {
        /// The URL as given.
        url: String,
    },
    /// A plaintext listener reachable from other hosts.
    #[error(
        "listen URL {url:?} serves plaintext HTTP on a non-loopback address: anyone on the \
         network could read and change every key. Use https:// with --cert-file and --key-file, \
         or add --insecure-listen-plaintext to accept that risk"
    )]
    PlaintextExposure {
        /// The URL as given.
        url: String,
    },
    /// A TLS flag that is wrong on its own or with the others.
    #[error("{0}")]
    TlsFlags(String),
    /// A certificate, key, CA or CRL file that cannot be used.
    #[error("{flag} {path}: {reason}")]
    TlsFile {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong (never the file's bytes).
        reason: String,
    },
}

/// A TLS protocol version for `--tls-min-version` / `--tls-max-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses etcd's spelling: `TLS1.2` or `TLS1.3`.
    pub fn parse(text: &str) -> Result<TlsVersion, String> {
        match text {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            "TLS1.0" | "TLS1.1" => Err(format!(
                "{text} is not supported (Coffer speaks TLS1.2 and TLS1.3)"
            )),
            _ => Err(format!(
                "unknown TLS version {text:?}; expected TLS1.2 or TLS1.3"
            )),
        }
    }
}

/// The TLS flags, etcd's names: `--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--client-cert-auth`, `--client-crl-file`, `--cipher-suites`, `--tls-min-version`,
/// `--tls-max-version`. Used by `https://` and `unixs://` listeners.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// `--cert-file`: the server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: the server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: CA bundle for client certificates; setting it turns client
    /// certificate authentication on.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--client-crl-file`: revoked client certificates (PEM CRLs).
    pub client_crl_file: Option<PathBuf>,
    /// `--cipher-suites`: IANA/Go names of the TLS 1.2 suites allowed (empty = rustls's).
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` (default TLS1.2).
    pub min_version: Option<TlsVersion>,
    /// `--tls-max-version` (default TLS1.3).
    pub max_version: Option<TlsVersion>,
    /// How often the files are checked for changes ([`DEFAULT_TLS_RELOAD_INTERVAL`] if `None`).
    pub reload_interval: Option<Duration>,
}

impl TlsConfig {
    /// Whether clients must present a certificate (`--client-cert-auth` or
    /// `--trusted-ca-file`).
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }
}

/// Connection handling: limits, timeouts and HTTP/2 keepalive.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// `--max-connections`: open client connections at once; more wait in the accept queue.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// A connection with no open request that sent nothing for this long is closed.
    pub idle_timeout: Duration,
    /// `--grpc-keepalive-interval`: HTTP/2 PING sent after this long without frames.
    pub keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: a PING unanswered this long closes the connection (and
    /// the Watch streams on it).
    pub keepalive_timeout: Duration,
    /// `--grpc-keepalive-min-time`: accepted for etcd compatibility; hyper cannot enforce a
    /// minimum interval between client pings.
    pub keepalive_min_time: Duration,
    /// `--insecure-listen-plaintext`: allow `http://` on non-loopback addresses.
    pub insecure_listen_plaintext: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            keepalive_min_time: DEFAULT_KEEPALIVE_MIN_TIME,
            insecure_listen_plaintext: false,
        }
    }
}

/// Authentication settings: `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `--auth-token` (default `simple`).
    pub token: crate::auth::token::TokenSpec,
    /// `--auth-token-ttl`: lifetime of a simple token after its last use (default 300 s).
    pub token_ttl: std::time::Duration,
    /// `--bcrypt-cost` (default 10).
    pub bcrypt_cost: crate::auth::password::BcryptCost,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: crate::auth::token::TokenSpec::Simple,
            token_ttl: std::time::Duration::from_secs(
                crate::auth::token::DEFAULT_AUTH_TOKEN_TTL_SECS,
            ),
            bcrypt_cost: crate::auth::password::BcryptCost::default(),
        }
    }
}

/// Everything `serve` needs besides the store.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--name`: the member name in MemberList.
    pub name: String,
    /// `--listen-client-urls`, each `http://host:port`.
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls` (MemberList `clientURLs`).
    pub advertise_client_urls: Vec<String>,
    /// `--listen-metrics-urls`, each `http://host:port`: plain HTTP/1.1 with `/metrics`,
    /// `/health`, `/livez`, `/readyz` and `/version` (empty: none).
    pub listen_metrics_urls: Vec<String>,
    /// Peer URLs shown in MemberList.
    pub peer_urls: Vec<String>,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// Cluster id in every response header (persisted by the store).
    pub cluster_id: u64,
    /// Member id in every response header (persisted by the store).
    pub member_id: u64,
    /// The TLS flags; `None` when none is given (then only `http://` and `unix://` listen).
    pub tls: Option<TlsConfig>,
    /// Connection limits, timeouts and keepalive.
    pub transport: TransportConfig,
    /// `--watch-progress-notify-interval` / `--experimental-watch-progress-notify-interval`:
    /// period of progress notifications to watchers with `progress_notify` (values below
    /// [`MIN_WATCH_PROGRESS_NOTIFY_INTERVAL`] are raised to it when serving).
    pub watch_progress_notify_interval: std::time::Duration,
    /// `--max-response-bytes`: the largest response sent; a Range or Txn whose response would
    /// be larger is refused with gRPC-go's `RESOURCE_EXHAUSTED` text.
    pub max_response_bytes: usize,
    /// `--max-concurrent-streams`: HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
    pub max_concurrent_streams: u32,
    /// `--max-watchers-per-stream`: watchers one Watch stream may hold.
    pub max_watchers_per_stream: usize,
    /// `--max-watchers`: watchers the server holds over all streams.
    pub max_watchers: usize,
    /// Maintenance.Snapshot calls served at once; more get `etcdserver: too many requests`.
    pub max_concurrent_snapshots: usize,
    /// Authentication settings.
    pub auth: AuthConfig,
    /// The `kms_providers` readiness check: whether every KMS plugin the keyspace uses is
    /// healthy (`Err` names the failing ones). `None`: no KMS plugin, the check passes. Only
    /// `/readyz` runs it, never `/livez` or `/health`: a KMS outage must not make a
    /// supervisor restart the server and empty its seed cache (kubernetes #93968).
    pub kms_ready: Option<ReadyCheck>,
}

/// A readiness check the binary adds (see [`ServerConfig::kms_ready`]).
#[derive(Clone)]
pub struct ReadyCheck(pub std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyCheck")
    }
}

impl ServerConfig {
    /// A configuration with etcd's defaults for everything but the identity.
    pub fn new(cluster_id: u64, member_id: u64) -> Self {
        ServerConfig {
            name: "default".to_owned(),
            listen_client_urls: vec!["http://127.0.0.1:2379".to_owned()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".to_owned()],
            listen_metrics_urls: Vec::new(),
            peer_urls: vec![DEFAULT_PEER_URL.to_owned()],
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            cluster_id,
            member_id,
            tls: None,
            transport: TransportConfig::default(),
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watchers_per_stream: DEFAULT_MAX_WATCHERS_PER_STREAM,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_concurrent_snapshots: DEFAULT_MAX_CONCURRENT_SNAPSHOTS,
            auth: AuthConfig::default(),
            kms_ready: None,
        }
    }

    /// The largest gRPC message the server sends: `max_response_bytes`, and never less than
    /// what it accepts.
    pub fn max_encoding_message_size(&self) -> usize {
        self.max_response_bytes
            .max(self.max_decoding_message_size())
    }

    /// The largest gRPC message the server accepts: `max_request_bytes` + 512 KiB.
    pub fn max_decoding_message_size(&self) -> usize {
        self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
    }
}

/// The listen URL forms, for errors.
const LISTEN_URL_FORMS: &str =
    "expected http://host:port, https://host:port, unix://path or unixs://path";

/// Where a listen URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP host name or IP literal (brackets removed from IPv6) and port (0 = any free).
    Tcp {
        /// Host name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix socket file.
    Unix(PathBuf),
}

/// A parsed listen URL: `http://` or `https://host:port`, `unix://` or `unixs://path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    /// Where to listen.
    pub addr: ListenAddr,
    /// Whether connections are TLS (`https`, `unixs`).
    pub tls: bool,
}

impl ListenUrl {
    /// Parses a listen URL. For unix sockets everything after `unix://` is the socket path,
    /// as in etcd (`unix://localhost:2379` is the file `localhost:2379` in the working
    /// directory; `unix:///run/coffer.sock` an absolute path).
    pub fn parse(url: &str) -> Result<ListenUrl, ConfigError> {
        let bad = |reason: &str| ConfigError::ListenUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(LISTEN_URL_FORMS))?;
        let (unix, tls) = match scheme {
            "http" => (false, false),
            "https" => (false, true),
            "unix" => (true, false),
            "unixs" => (true, true),
            _ => return Err(bad(LISTEN_URL_FORMS)),
        };
        if unix {
            if rest.is_empty() || rest.contains('?') || rest.contains('#') {
                return Err(bad("expected unix[s]://path"));
            }
            return Ok(ListenUrl {
                addr: ListenAddr::Unix(PathBuf::from(rest)),
                tls,
            });
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad("a listen URL has no path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated [ in IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :port"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number between 0 and 65535"))?;
        Ok(ListenUrl {
            addr: ListenAddr::Tcp {
                host: host.to_owned(),
                port,
            },
            tls,
        })
    }

    /// Resolves a TCP host to socket addresses (none for a unix socket).
    pub async fn resolve(&self, url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        let ListenAddr::Tcp { host, port } = &self.addr else {
            return Ok(Vec::new());
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| ConfigError::ListenUrl {
                url: url.to_owned(),
                reason: format!("cannot resolve host {host:?}: {e}"),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ConfigError::ListenUrl {
                url: url.to_owned(),
                reason: format!("host {host:?} resolves to no address"),
            });
        }
        Ok(addrs)
    }
}

/// Checks the listen URLs against the TLS and plaintext rules: TLS listeners need
/// `--cert-file` and `--key-file`; `--client-cert-auth` needs `--trusted-ca-file`; plaintext
/// `http://` on a non-loopback address needs `--insecure-listen-plaintext`. `resolved` holds
/// each TCP URL's addresses.
pub fn check_listeners(
    config: &ServerConfig,
    resolved: &[(String, ListenUrl, Vec<SocketAddr>)],
) -> Result<(), ConfigError> {
    let empty = TlsConfig::default();
    let tls = config.tls.as_ref().unwrap_or(&empty);
    if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
        return Err(ConfigError::TlsFlags(
            "--client-cert-auth needs --trusted-ca-file: the CA bundle that signs the client \
             certificates"
                .to_owned(),
        ));
    }
    if tls.client_crl_file.is_some() && tls.trusted_ca_file.is_none() {
        return Err(ConfigError::TlsFlags(
            "--client-crl-file needs --trusted-ca-file (and client certificate authentication)"
                .to_owned(),
        ));
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(ConfigError::TlsFlags(
            "--cert-file and --key-file go together: give both or neither".to_owned(),
        ));
    }
    for (url, parsed, addrs) in resolved {
        if parsed.tls {
            if tls.cert_file.is_none() || tls.key_file.is_none() {
                return Err(ConfigError::MissingCertKey { url: url.clone() });
            }
        } else if matches!(parsed.addr, ListenAddr::Tcp { .. })
            && !config.transport.insecure_listen_plaintext
            && addrs.iter().any(|a| !a.ip().is_loopback())
        {
            return Err(ConfigError::PlaintextExposure { url: url.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        let tcp = |host: &str, port| ListenAddr::Tcp {
            host: host.into(),
            port,
        };
        let parsed = ListenUrl::parse("http://127.0.0.1:2379").unwrap();
        assert_eq!((parsed.addr, parsed.tls), (tcp("127.0.0.1", 2379), false));
        let parsed = ListenUrl::parse("https://[::1]:0/").unwrap();
        assert_eq!((parsed.addr, parsed.tls), (tcp("::1", 0), true));
        let parsed = ListenUrl::parse("unix://localhost:2379").unwrap();
        assert_eq!(
            (parsed.addr, parsed.tls),
            (ListenAddr::Unix("localhost:2379".into()), false)
        );
        let parsed = ListenUrl::parse("unixs:///run/c.sock").unwrap();
        assert_eq!(
            (parsed.addr, parsed.tls),
            (ListenAddr::Unix("/run/c.sock".into()), true)
        );
        for bad in [
            "127.0.0.1:2379",
            "ftp://127.0.0.1:2379",
            "unix://",
            "http://127.0.0.1",
            "http://:2379",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:2379/x",
            "http://[::1:2379",
        ] {
            let err = ListenUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
