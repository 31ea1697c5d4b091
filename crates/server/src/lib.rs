//! # coffer-server: etcd's v3 gRPC API over a Coffer store
//!
//! The tonic services (KV, Watch, Lease, Maintenance, Cluster, Auth and `grpc.health.v1`;
//! every request's caller is resolved in [`caller`]), request limits
//! (`--max-request-bytes`, `--max-txn-ops`, `--max-response-bytes`, `--max-concurrent-streams`,
//! the watcher and snapshot limits), request validation, and the one table that maps
//! store errors to etcd's gRPC codes and `etcdserver: ...` strings. Thin: it translates,
//! checks and delegates to the store.
//!
//! [`serve`] binds every listen URL and serves until the shutdown future completes, then
//! drains the open requests.

pub mod auth;
pub mod authority;
pub mod caller;
pub mod cluster;
pub mod config;
pub mod errors;
mod hash;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod state;
pub mod validate;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use coffer_proto::{
    cluster_server::ClusterServer, kv_server::KvServer, maintenance_server::MaintenanceServer,
};
use coffer_store::Backend;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::info;

pub use config::{ConfigError, ServerConfig, TlsConfig};
pub use errors::ServerError;
pub use maintenance::{Defragment, SnapshotSource};

/// The etcd version Coffer reports in `Maintenance.Status`: a 3.5 release at or above 3.5.13,
/// whose RequestProgress behaviour Coffer implements (kube-apiserver gates on it). Coffer's own
/// version is in `coffer --version` and the logs.
pub const ETCD_VERSION: &str = "3.5.21";

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
    /// TLS was configured; it arrives with a later issue.
    #[error("TLS is not supported yet")]
    TlsUnsupported,
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Bound listeners, ready to serve. Binding first lets callers learn the real ports
/// (a listen URL may use port 0).
#[derive(Debug)]
pub struct Listeners {
    listeners: Vec<TcpListener>,
}

impl Listeners {
    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Binds every `--listen-client-urls` entry (each host may resolve to several addresses).
pub async fn bind(config: &ServerConfig) -> Result<Listeners, ServeError> {
    if config.tls.is_some() {
        return Err(ServeError::TlsUnsupported);
    }
    if config.listen_client_urls.is_empty() {
        return Err(ConfigError::NoListenUrl.into());
    }
    let mut listeners = Vec::new();
    for url in &config.listen_client_urls {
        let parsed = config::ListenUrl::parse(url)?;
        for addr in parsed.resolve(url).await? {
            let listener = TcpListener::bind(addr).await.map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    ServeError::AddrInUse {
                        url: url.clone(),
                        addr,
                    }
                } else {
                    ServeError::Bind {
                        url: url.clone(),
                        addr,
                        source,
                    }
                }
            })?;
            listeners.push(listener);
        }
    }
    Ok(listeners.into())
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(listeners: Vec<TcpListener>) -> Self {
        Listeners { listeners }
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
    if config.tls.is_some() {
        return Err(ServeError::TlsUnsupported);
    }
    let max_recv = config.max_decoding_message_size();
    let max_send = config.max_encoding_message_size();
    let max_streams = config.max_concurrent_streams;
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
    let cluster = ClusterServer::new(cluster::ClusterService::new(backend, shared.clone()))
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(max_send);
    // The reporter starts with service "" SERVING, as etcd registers it.
    let (_health_reporter, health) = tonic_health::server::health_reporter();

    // Watch, Lease and Auth are added here by their issues; TLS and the auth check become a
    // layer on this builder.
    let watch = watch_hub.map(|hub| {
        coffer_proto::watch_server::WatchServer::new(watch::WatchService::new(hub, shared.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(max_send)
    });
    let router = Server::builder()
        .max_concurrent_streams(Some(max_streams))
        .layer(wire::EtcdWireLayer)
        .add_service(health)
        .add_service(kv)
        .add_service(maintenance)
        .add_service(cluster)
        .add_service(auth)
        .add_optional_service(watch)
        .add_service(lease);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addrs = listeners.local_addrs();
    let servers = futures::future::try_join_all(listeners.listeners.into_iter().map(|listener| {
        // Every connection goes through AuthorityRepair: etcdctl 3.4 sends `:authority`
        // values h2 rejects (see authority.rs).
        let incoming = futures::TryStreamExt::map_ok(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            authority::AuthorityRepair::new,
        );
        let mut stop = stop_rx.clone();
        let router = router.clone();
        async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    // An error means the sender is gone, which also means stop.
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }
    }));
    info!(
        addrs = ?addrs,
        etcd_version = ETCD_VERSION,
        member_id = format_args!("{:x}", shared.config.member_id),
        cluster_id = format_args!("{:x}", shared.config.cluster_id),
        "serving the etcd v3 API"
    );

    tokio::pin!(servers);
    tokio::pin!(shutdown);
    tokio::select! {
        res = &mut servers => {
            res?;
            return Ok(());
        }
        () = &mut shutdown => {
            info!("shutting down: no new connections; draining open requests");
            // End Watch and LeaseKeepAlive streams, then stop the listeners and drain.
            shared.stop();
            // Receivers are alive as long as the servers are.
            let _ = stop_tx.send(true);
        }
    }
    servers.await?;
    info!("all listeners stopped");
    Ok(())
}
