//! The `grpc_server_*` metrics (go-grpc-prometheus' names, as etcd exports them): a tower
//! layer around the gRPC router that counts each call of a known method when it starts and
//! when it ends, with the code from the `grpc-status` header (a trailers-only answer) or
//! trailer. A streaming call ends with its response stream; one dropped before a status
//! (the client went away) counts as `Canceled`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use coffer_metrics::GrpcHandles;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;

/// The layer that puts [`GrpcMetrics`] around the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// Counts gRPC calls into [`coffer_metrics`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// A call being measured: its method's series and when it started.
struct Call {
    handles: &'static GrpcHandles,
    started: Instant,
}

impl Call {
    fn finish(self, code: u32) {
        self.handles
            .handled(code, self.started.elapsed().as_secs_f64());
    }
}

/// `grpc-status` from `headers`, if present (an unparsable one is `Unknown`).
fn status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get("grpc-status")?;
    Some(v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(2))
}

/// `CANCELLED`: the stream ended without a status.
const CANCELED: u32 = 1;
/// `UNKNOWN`: the router itself failed.
const UNKNOWN: u32 = 2;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let call = coffer_metrics::grpc(req.uri().path()).map(|handles| {
            handles.started();
            Call {
                handles,
                started: Instant::now(),
            }
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => {
                    let (parts, inner) = resp.into_parts();
                    let call = match (call, status(&parts.headers)) {
                        (Some(c), Some(code)) => {
                            c.finish(code);
                            None
                        }
                        (call, _) => call,
                    };
                    Ok(Response::from_parts(parts, MetricsBody { inner, call }))
                }
                Err(e) => {
                    if let Some(c) = call {
                        c.finish(UNKNOWN);
                    }
                    Err(e)
                }
            }
        })
    }
}

/// A response body that counts its call when the status trailer passes (or when dropped
/// before one).
pub struct MetricsBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Drop for MetricsBody<B> {
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.finish(CANCELED);
        }
    }
}

impl<B: Body + Unpin> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.call.is_some() {
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                if let Some(code) = frame.trailers_ref().and_then(status) {
                    if let Some(c) = self.call.take() {
                        c.finish(code);
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
