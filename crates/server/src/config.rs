//! What `serve` needs to know: listen addresses, what to advertise, the request limits and the
//! identity the response headers carry. TLS and authentication will slot in here (`tls`).

use std::net::SocketAddr;

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

/// Why a server configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A listen URL that is not `http://host:port`.
    #[error("listen URL {url:?}: {reason}")]
    ListenUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No listen URL at all.
    #[error("no listen client URL given")]
    NoListenUrl,
}

/// Placeholder for the TLS settings of a later issue (`--cert-file`, `--key-file`,
/// `--client-cert-auth`, `--trusted-ca-file`). `serve` refuses a config that sets it.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {}

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
    /// TLS (a later issue); must be `None` for now.
    pub tls: Option<TlsConfig>,
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
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_watchers_per_stream: DEFAULT_MAX_WATCHERS_PER_STREAM,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_concurrent_snapshots: DEFAULT_MAX_CONCURRENT_SNAPSHOTS,
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

/// A listen URL split into host and port, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    /// Host name or IP literal (brackets removed from IPv6).
    pub host: String,
    /// TCP port (0 = any free port).
    pub port: u16,
}

impl ListenUrl {
    /// Parses `http://host:port`. `https` waits for TLS; unix sockets are not supported yet.
    pub fn parse(url: &str) -> Result<ListenUrl, ConfigError> {
        let bad = |reason: &str| ConfigError::ListenUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") || url.starts_with("unixs://") {
            return Err(bad("TLS listeners are not supported yet; use http://"));
        } else if url.starts_with("unix://") {
            return Err(bad(
                "unix socket listeners are not supported yet; use http://",
            ));
        } else {
            return Err(bad("expected http://host:port"));
        };
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
            host: host.to_owned(),
            port,
        })
    }

    /// Resolves the host to socket addresses.
    pub async fn resolve(&self, url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| ConfigError::ListenUrl {
                url: url.to_owned(),
                reason: format!("cannot resolve host {:?}: {e}", self.host),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ConfigError::ListenUrl {
                url: url.to_owned(),
                reason: format!("host {:?} resolves to no address", self.host),
            });
        }
        Ok(addrs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        assert_eq!(
            ListenUrl::parse("http://127.0.0.1:2379").unwrap(),
            ListenUrl {
                host: "127.0.0.1".into(),
                port: 2379
            }
        );
        assert_eq!(
            ListenUrl::parse("http://[::1]:0/").unwrap(),
            ListenUrl {
                host: "::1".into(),
                port: 0
            }
        );
        assert_eq!(
            ListenUrl::parse("http://localhost:1").unwrap().host,
            "localhost"
        );
        for bad in [
            "127.0.0.1:2379",
            "https://127.0.0.1:2379",
            "unix://sock",
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
