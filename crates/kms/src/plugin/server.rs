//! Serving the plugin: a unix socket (a 0600 file, or an abstract name) → the `:authority`
//! repair (kube-apiserver before 1.32 sends the socket path, which h2 refuses) → hyper's
//! HTTP/2 → the tonic service; plus, optionally, plain HTTP listeners for `/healthz` (200 `ok`
//! or 503 with the reason, from the same cached check as Status) and `/metrics`.
//!
//! On shutdown the listener closes and its socket file is removed at once, every connection is
//! told to finish (HTTP/2 GOAWAY) and in-flight calls complete, within a drain timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::backend::Backend;
use super::service::{HealthCheck, KmsPluginService};
use super::PluginError;
use crate::endpoint::SocketAddress;
use crate::proto::v2::key_management_service_server::KeyManagementServiceServer;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The gRPC socket.
    pub listen: SocketAddress,
    /// Plain HTTP listeners for `/healthz` and `/metrics`.
    pub metrics: Vec<SocketAddr>,
    /// How long in-flight calls may take to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// Parses a `--listen-metrics-urls` entry: `http://HOST:PORT` with an IP address or
/// `localhost`.
pub fn parse_metrics_url(url: &str) -> Result<SocketAddr, PluginError> {
    let bad = |why: &str| PluginError::Config(format!("metrics URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("must start with http://"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(port) = hostport.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    hostport
        .parse()
        .map_err(|_| bad("expected http://IP:PORT (e.g. http://127.0.0.1:8083)"))
}

/// Binds the listeners and serves until `shutdown` resolves, then drains. The first health
/// check runs before the socket is bound, so a plugin whose backend fails at start says so
/// in its log at once.
pub async fn serve(
    backend: Arc<dyn Backend>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PluginError> {
    let health = Arc::new(HealthCheck::new(backend.clone()));
    let first = health.check().await;
    if first.healthy {
        info!(backend = %backend.describe(), key_id_hash = %coffer_metrics::kms::key_id_hash(&first.key_id), "backend healthy");
    }
    let mut metrics = Vec::new();
    for addr in &options.metrics {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| PluginError::Io {
                context: format!("cannot listen for metrics on {addr}"),
                source,
            })?;
        info!(addr = %listener.local_addr().unwrap_or(*addr), "serving /healthz and /metrics");
        metrics.push(listener);
    }
    let listener = options.listen.bind().map_err(|source| PluginError::Io {
        context: format!("cannot listen on {}", options.listen),
        source,
    })?;
    info!(endpoint = %options.listen, backend = %backend.describe(), "KMS v2 plugin listening");

    let mut http_tasks = JoinSet::new();
    for listener in metrics {
        http_tasks.spawn(serve_metrics(listener, health.clone()));
    }
    let grpc = KeyManagementServiceServer::new(KmsPluginService::new(backend, health));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    accept_until(&listener, &grpc, &stop_rx, &mut connections, shutdown).await;
    drop(listener);
    if let SocketAddress::Path(path) = &options.listen {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), error = %e, "cannot remove the socket file");
        }
    }
    info!(
        open = connections.len(),
        "stopped accepting; finishing in-flight calls"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "calls still open after the drain timeout were cut off"
        );
        connections.abort_all();
    }
    http_tasks.abort_all();
    info!("KMS plugin stopped");
    Ok(())
}

type Grpc = KeyManagementServiceServer<KmsPluginService>;

async fn accept_until(
    listener: &UnixListener,
    grpc: &Grpc,
    stop: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, grpc.clone(), stop.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    grpc: Grpc,
    mut stop: watch::Receiver<bool>,
) {
    let io = coffer_authority::AuthorityRepair::with_rule(
        stream,
        coffer_authority::socket_path_to_localhost,
    );
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(grpc));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

async fn serve_metrics(listener: TcpListener, health: Arc<HealthCheck>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = health.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(req.method(), req.uri().path(), &health).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    method: &http::Method,
    path: &str,
    health: &HealthCheck,
) -> http::Response<Full<Bytes>> {
    let text = |status: http::StatusCode, content_type: &str, body: String| {
        let mut r = http::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    if method != http::Method::GET && method != http::Method::HEAD {
        return text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        );
    }
    match path {
        "/healthz" | "/livez" | "/readyz" => {
            let h = health.check().await;
            let status = if h.healthy {
                http::StatusCode::OK
            } else {
                http::StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "text/plain; charset=utf-8", h.reason)
        }
        "/metrics" => text(
            http::StatusCode::OK,
            coffer_metrics::CONTENT_TYPE,
            coffer_metrics::kms::encode_plugin(),
        ),
        _ => text(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls() {
        assert_eq!(
            parse_metrics_url("http://127.0.0.1:8083").unwrap(),
            "127.0.0.1:8083".parse().unwrap()
        );
        assert_eq!(
            parse_metrics_url("http://localhost:9/").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_metrics_url("https://127.0.0.1:1").is_err());
        assert!(parse_metrics_url("http://127.0.0.1").is_err());
    }
}
