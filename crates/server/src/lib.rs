//! # coffer-server: etcd's v3 gRPC API over a Coffer store
//!
//! The tonic services (KV, Watch, Lease, Maintenance, Cluster, Auth and `grpc.health.v1`;
//! every request's caller is resolved in [`caller`]), request limits
//! (`--max-request-bytes`, `--max-txn-ops`, `--max-response-bytes`, `--max-concurrent-streams`,
//! the watcher and snapshot limits), request validation, and the one table that maps
//! store errors to etcd's gRPC codes and `etcdserver: ...` strings. Thin: it translates,
//! checks and delegates to the store.
//!
//! [`serve`] binds every listen URL (TCP or unix socket, plaintext or TLS, see `transport`)
//! and serves until the shutdown future completes, then drains the open requests.

pub mod auth;
pub mod caller;
pub mod cluster;
pub mod config;
pub mod errors;
pub mod grpc_metrics;
mod hash;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod state;
pub mod tls;
mod transport;
pub mod validate;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::{
    cluster_server::ClusterServer, kv_server::KvServer, maintenance_server::MaintenanceServer,
};
use coffer_store::Backend;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use config::{ConfigError, ReadyCheck, ServerConfig, TlsConfig, TlsVersion, TransportConfig};
pub use errors::ServerError;
pub use maintenance::{Defragment, SnapshotSource};

/// The etcd version Coffer reports in `Maintenance.Status`: a 3.5 release at or above 3.5.13,
/// whose RequestProgress behaviour Coffer implements (kube-apiserver gates on it). Coffer's own
/// version is in `coffer --version` and the logs.
pub const ETCD_VERSION: &str = "3.5.21";

/// How often the `--insecure-listen-plaintext` warning is repeated.
const PLAINTEXT_WARNING_PERIOD: Duration = Duration::from_secs(600);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address is taken by another process.
    #[error("cannot listen on {addr} (from {url}): address already in use")]
    AddrInUse {
        /// The listen URL.
        url: String,
        /// The resolved address.
        addr: SocketAddr,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} (from {url}): {source}")]
    Bind {
        /// The listen URL.
        url: String,
        /// The resolved address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A unix socket could not be bound.
    #[error("cannot listen on unix socket {path} (from {url}): {source}")]
    BindUnix {
        /// The listen URL.
        url: String,
        /// The socket file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Bound listeners, ready to serve. Binding first lets callers learn the real ports
/// (a listen URL may use port 0); the TLS files are read here too, so a bad one stops the
/// start.
#[derive(Debug)]
pub struct Listeners {
    listeners: Vec<transport::Listener>,
    tls: Option<tls::TlsReloader>,
    /// Plaintext listeners on non-loopback addresses (allowed by --insecure-listen-plaintext).
    exposed: Vec<String>,
    /// `--listen-metrics-urls`: plain HTTP only ([`http::serve_metrics`]).
    metrics: Vec<TcpListener>,
}

impl Listeners {
    /// The TCP addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                transport::Listener::Tcp { listener, .. } => listener.local_addr().ok(),
                transport::Listener::Unix { .. } => None,
            })
            .collect()
    }

    /// The unix socket files bound.
    pub fn unix_paths(&self) -> Vec<PathBuf> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                transport::Listener::Unix { path, .. } => Some(path.clone()),
                transport::Listener::Tcp { .. } => None,
            })
            .collect()
    }

    /// The metrics addresses actually bound.
    pub fn metrics_addrs(&self) -> Vec<SocketAddr> {
        self.metrics
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Binds every `--listen-client-urls` entry (each host may resolve to several addresses),
/// after checking the TLS and plaintext rules and loading the TLS files. Must run inside a
/// tokio runtime (the TLS reloader is a task).
pub async fn bind(config: &ServerConfig) -> Result<Listeners, ServeError> {
    if config.listen_client_urls.is_empty() {
        return Err(ConfigError::NoListenUrl.into());
    }
    let mut resolved = Vec::new();
    for url in &config.listen_client_urls {
        let parsed = config::ListenUrl::parse(url)?;
        let addrs = parsed.resolve(url).await?;
        resolved.push((url.clone(), parsed, addrs));
    }
    config::check_listeners(config, &resolved)?;
    let tls = match &config.tls {
        Some(t) if resolved.iter().any(|(_, p, _)| p.tls) => Some(tls::TlsReloader::start(t)?),
        _ => None,
    };
    let mut listeners = Vec::new();
    let mut exposed = Vec::new();
    for (url, parsed, addrs) in resolved {
        if let config::ListenAddr::Unix(path) = &parsed.addr {
            let listener = coffer_authority::unix_socket::bind_private(path).map_err(|source| {
                ServeError::BindUnix {
                    url: url.clone(),
                    path: path.clone(),
                    source,
                }
            })?;
            listeners.push(transport::Listener::Unix {
                listener,
                path: path.clone(),
                tls: parsed.tls,
            });
            continue;
        }
        if !parsed.tls && addrs.iter().any(|a| !a.ip().is_loopback()) {
            exposed.push(url.clone());
        }
        for addr in addrs {
            let listener = bind_tcp(&url, addr).await?;
            listeners.push(transport::Listener::Tcp {
                listener,
                tls: parsed.tls,
            });
        }
    }
    Ok(Listeners {
        listeners,
        tls,
        exposed,
        metrics: bind_metrics(&config.listen_metrics_urls).await?,
    })
}

/// Binds one TCP address of `url`.
async fn bind_tcp(url: &str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::AddrInUse {
                url: url.to_owned(),
                addr,
            }
        } else {
            ServeError::Bind {
                url: url.to_owned(),
                addr,
                source,
            }
        }
    })
}

/// Binds every `--listen-metrics-urls` entry: plain HTTP ([`http::serve_metrics`]).
async fn bind_metrics(urls: &[String]) -> Result<Vec<TcpListener>, ServeError> {
    let mut listeners = Vec::new();
    for url in urls {
        let parsed = config::ListenUrl::parse(url)?;
        for addr in parsed.resolve(url).await? {
            listeners.push(bind_tcp(url, addr).await?);
        }
    }
    Ok(listeners)
}

impl From<Vec<TcpListener>> for Listeners {
    /// Plaintext TCP listeners (tests bind their own).
    fn from(listeners: Vec<TcpListener>) -> Self {
        Listeners {
            listeners: listeners
                .into_iter()
                .map(|listener| transport::Listener::Tcp {
                    listener,
                    tls: false,
                })
                .collect(),
            tls: None,
            exposed: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// Binds and serves until `shutdown` completes, then stops accepting and drains.
pub async fn serve<B, F>(
    config: ServerConfig,
    backend: Arc<B>,
    shutdown: F,
) -> Result<(), ServeError>
where
    B: Backend + Defragment + maintenance::SnapshotSource,
    F: Future<Output = ()>,
{
    let listeners = bind(&config).await?;
    serve_on(listeners, config, backend, shutdown).await
}

/// Serves on already-bound listeners until `shutdown` completes, then drains.
pub async fn serve_on<B, F>(
    listeners: Listeners,
    config: ServerConfig,
    backend: Arc<B>,
    shutdown: F,
) -> Result<(), ServeError>
where
    B: Backend + Defragment + maintenance::SnapshotSource,
    F: Future<Output = ()>,
{
    let max_recv = config.max_decoding_message_size();
    let max_send = config.max_encoding_message_size();
    let max_streams = config.max_concurrent_streams;
    let transport_config = config.transport.clone();
    let shared = state::Shared::new(config);

    let kv = KvServer::new(kv::KvService::new(backend.clone(), shared.clone()))
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(max_send);
    let maintenance = MaintenanceServer::new(maintenance::MaintenanceService::new(
        backend.clone(),
        shared.clone(),
    ))
    .max_decoding_message_size(max_recv)
    .max_encoding_message_size(max_send);
    let watch_hub = backend.watch_hub();
    let lease = coffer_proto::lease_server::LeaseServer::new(lease::LeaseService::new(
        backend.clone(),
        shared.clone(),
    ))
    .max_decoding_message_size(max_recv)
    .max_encoding_message_size(max_send);
    let auth = auth::service::server(backend.clone(), shared.clone());
    let cluster = ClusterServer::new(cluster::ClusterService::new(
        backend.clone(),
        shared.clone(),
    ))
    .max_decoding_message_size(max_recv)
    .max_encoding_message_size(max_send);
    // The reporter starts with service "" SERVING, as etcd registers it.
    let (_health_reporter, health) = tonic_health::server::health_reporter();

    // Auth is added here by its issue.
    let watch = watch_hub.map(|hub| {
        coffer_proto::watch_server::WatchServer::new(watch::WatchService::new(hub, shared.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(max_send)
    });
    let mut routes = tonic::service::Routes::new(health)
        .add_service(kv)
        .add_service(maintenance)
        .add_service(cluster)
        .add_service(auth)
        .add_service(lease);
    if let Some(watch) = watch {
        routes = routes.add_service(watch);
    }
    // The metrics layer is outside the wire rewrite: it sees the code the client gets.
    let grpc = tower_layer::Layer::layer(
        &grpc_metrics::GrpcMetricsLayer,
        tower_layer::Layer::layer(&wire::EtcdWireLayer, routes.prepare()),
    );
    let http: transport::HttpFn = {
        let (backend, shared) = (backend.clone(), shared.clone());
        Arc::new(move |method, path| {
            let (backend, shared) = (backend.clone(), shared.clone());
            Box::pin(async move { http::respond(&*backend, &shared, &method, &path).await })
        })
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let conn_shared = Arc::new(transport::Shared {
        grpc,
        http,
        builder: transport::builder(&transport_config, max_streams),
        connections: Arc::new(tokio::sync::Semaphore::new(
            transport_config.max_connections,
        )),
        transport: transport_config,
        tls: listeners.tls.clone(),
        stop: stop_rx,
    });
    let addrs = listeners.local_addrs();
    let paths = listeners.unix_paths();
    let exposed = listeners.exposed.clone();
    // Every accept loop and connection task holds a sender; all gone = drained.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    for listener in listeners.listeners {
        tokio::spawn(transport::accept_loop(
            listener,
            conn_shared.clone(),
            done_tx.clone(),
        ));
    }
    for listener in listeners.metrics {
        let mut stop = conn_shared.stop.clone();
        let done = done_tx.clone();
        let (backend, shared) = (backend.clone(), shared.clone());
        tokio::spawn(async move {
            http::serve_metrics(listener, backend, shared, async move {
                // An error means the sender is gone, which also means stop.
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            drop(done);
        });
    }
    drop(done_tx);
    drop(conn_shared);
    let warner = (!exposed.is_empty()).then(|| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PLAINTEXT_WARNING_PERIOD);
            loop {
                tick.tick().await;
                warn!(
                    urls = ?exposed,
                    "--insecure-listen-plaintext: serving plaintext HTTP on non-loopback \
                     addresses; anyone on the network can read and change every key"
                );
            }
        })
    });
    info!(
        addrs = ?addrs,
        unix_sockets = ?paths,
        etcd_version = ETCD_VERSION,
        member_id = format_args!("{:x}", shared.config.member_id),
        cluster_id = format_args!("{:x}", shared.config.cluster_id),
        "serving the etcd v3 API"
    );

    shutdown.await;
    info!("shutting down: no new connections; draining open requests");
    // End Watch and LeaseKeepAlive streams, then stop the listeners and drain.
    shared.stop();
    let _ = stop_tx.send(true);
    if let Some(w) = warner {
        w.abort();
    }
    // Returns None once every accept loop and connection task has ended.
    let _ = done_rx.recv().await;
    info!("all listeners stopped");
    Ok(())
}
