//! Coffer's accept loop: TCP and unix listeners, TLS (when the URL asks for it), the HTTP/2
//! `:authority` repair, and one hyper connection per client that speaks HTTP/1.1 and HTTP/2.
//! Each request gets a [`Peer`] extension and goes either to the plain HTTP endpoints
//! ([`crate::http`]) or to the gRPC services.
//!
//! Hardening: the connection count is capped (`--max-connections`; more wait in the kernel's
//! accept queue), TLS handshakes run in their own tasks with a timeout, a connection with no
//! open request that sends nothing for the idle timeout is closed, and HTTP/2 keepalive pings
//! drop dead peers (and their Watch streams). On shutdown the listeners stop, every
//! connection is told to finish (HTTP/2 GOAWAY) and open requests complete.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::config::TransportConfig;
use crate::peer::Peer;
use crate::tls::{self, TlsReloader};
use coffer_authority::AuthorityRepair;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    /// A TCP socket.
    Tcp { listener: TcpListener, tls: bool },
    /// A unix socket; its file is removed when serving ends.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        tls: bool,
    },
}

/// The response body of every request.
pub(crate) type ResBody = UnsyncBoxBody<Bytes, tonic::Status>;

/// The gRPC side, as one tower service.
pub(crate) type Grpc =
    crate::grpc_metrics::GrpcMetrics<crate::wire::EtcdWire<tonic::service::Routes>>;

/// The plain HTTP side: answers one request from its method and path.
pub(crate) type HttpFn = Arc<
    dyn Fn(
            http::Method,
            String,
        ) -> Pin<Box<dyn std::future::Future<Output = http::Response<String>> + Send>>
        + Send
        + Sync,
>;

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) grpc: Grpc,
    pub(crate) http: HttpFn,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) transport: TransportConfig,
    pub(crate) tls: Option<TlsReloader>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) connections: Arc<Semaphore>,
}

/// hyper's connection builder with the HTTP/2 settings of the flags.
pub(crate) fn builder(
    transport: &TransportConfig,
    max_streams: u32,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(transport.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .keep_alive_interval(transport.keepalive_interval)
        .keep_alive_timeout(transport.keepalive_timeout);
    // h2's header limits stay hyper's defaults (16 KiB header list, 16 KiB frames): the
    // `:authority` repair in front of h2 is built for exactly those (coffer-authority).
    builder
}

/// Accepts on `listener` until stop, spawning one task per connection. Each task holds a
/// clone of `done` until its connection is closed.
pub(crate) async fn accept_loop(listener: Listener, shared: Arc<Shared>, done: mpsc::Sender<()>) {
    let mut stop = shared.stop.clone();
    loop {
        let permit = tokio::select! {
            p = shared.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (conn, tls) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let done = done.clone();
        tokio::spawn(async move {
            match conn {
                Accepted::Tcp(stream, addr) => {
                    let _ = stream.set_nodelay(true);
                    if tls && !starts_like_tls(&stream, &shared).await {
                        debug!(%addr, "not a TLS client on a TLS port; closing");
                    } else {
                        serve_io(stream, Some(addr), tls, &shared).await;
                    }
                }
                Accepted::Unix(stream) => serve_io(stream, None, tls, &shared).await,
            }
            drop(permit);
            drop(done);
        });
    }
    if let Listener::Unix { path, .. } = &listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Accepted, bool)> {
    match listener {
        Listener::Tcp { listener, tls } => {
            let (s, addr) = listener.accept().await?;
            Ok((Accepted::Tcp(s, addr), *tls))
        }
        Listener::Unix { listener, tls, .. } => {
            let (s, _) = listener.accept().await?;
            Ok((Accepted::Unix(s), *tls))
        }
    }
}

/// Whether the first byte a TCP client sends starts a TLS handshake record: a plaintext
/// client on a TLS port gets its connection closed without a byte in answer.
async fn starts_like_tls(stream: &tokio::net::TcpStream, shared: &Shared) -> bool {
    let mut first = [0u8; 1];
    let mut stop = shared.stop.clone();
    tokio::select! {
        r = tokio::time::timeout(shared.transport.handshake_timeout, stream.peek(&mut first)) => {
            matches!(r, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE_RECORD
        }
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// TLS (if asked), then HTTP on one accepted connection.
async fn serve_io<IO>(io: IO, addr: Option<SocketAddr>, tls: bool, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(reloader) = shared.tls.as_ref().filter(|_| tls) else {
        let peer = Peer {
            addr,
            common_name: None,
            tls: false,
        };
        return serve_http(AuthorityRepair::new(io), peer, shared).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(reloader.current());
    let mut stop = shared.stop.clone();
    let handshake = tokio::time::timeout(shared.transport.handshake_timeout, acceptor.accept(io));
    // A handshake still under way at shutdown is dropped: it has no request to finish.
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(peer = ?addr, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                info!(peer = ?addr, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let common_name = tls::common_name(stream.get_ref().1.peer_certificates());
    let peer = Peer {
        addr,
        common_name,
        tls: true,
    };
    serve_http(AuthorityRepair::new(stream), peer, shared).await;
}

/// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves, the connection idles out, or
/// the server stops (then open requests finish first).
async fn serve_http<IO>(io: IO, peer: Peer, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last_read = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(Activity {
        inner: io,
        started,
        last_read: last_read.clone(),
    });
    let service = Router {
        grpc: shared.grpc.clone(),
        http: shared.http.clone(),
        peer: peer.clone(),
        in_flight: in_flight.clone(),
    };
    let conn = shared.builder.serve_connection(
        io,
        hyper::service::service_fn(move |req| service.route(req)),
    );
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    let idle = shared.transport.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(peer = ?peer.addr, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(
                    last_read.load(Ordering::Relaxed),
                ));
                if in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
                    debug!(peer = ?peer.addr, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Sends each request to the HTTP endpoints or to gRPC, with the connection's [`Peer`].
#[derive(Clone)]
struct Router {
    grpc: Grpc,
    http: HttpFn,
    peer: Peer,
    in_flight: Arc<AtomicUsize>,
}

impl Router {
    fn route(
        &self,
        mut req: http::Request<Incoming>,
    ) -> Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<ResBody>, Infallible>> + Send>,
    > {
        req.extensions_mut().insert(self.peer.clone());
        let guard = InFlight::new(&self.in_flight);
        if crate::http::is_endpoint(req.uri().path()) {
            // With the query: `/readyz?verbose`, `/health?exclude=NOSPACE`.
            let target = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
            let answer = (self.http)(req.method().clone(), target);
            return Box::pin(async move {
                let response = answer.await;
                drop(guard);
                Ok(response.map(|body| {
                    Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }))
            });
        }
        let mut grpc = self.grpc.clone();
        Box::pin(async move {
            // The router is always ready; poll_ready is still the tower contract.
            std::future::poll_fn(|cx| {
                Service::<http::Request<Incoming>>::poll_ready(&mut grpc, cx)
            })
            .await?;
            let response = grpc.call(req).await?;
            // The request counts as open until its response body (a Watch stream, say) ends.
            Ok(response.map(|body| {
                body.map_frame(move |frame| {
                    let _open = &guard;
                    frame
                })
                .boxed_unsync()
            }))
        })
    }
}

/// Counts an open request while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records when the client last sent bytes (milliseconds since the connection started).
struct Activity<IO> {
    inner: IO,
    started: Instant,
    last_read: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Activity<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last_read.store(ms, Ordering::Relaxed);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Activity<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
