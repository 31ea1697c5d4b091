//! Small rewrites of what tonic itself answers, so that the wire matches etcd's grpc-go
//! server byte for byte where clients can see a difference.
//!
//! Today one: a request larger than the gRPC receive limit (`--max-request-bytes` + 512 KiB).
//! tonic answers `OUT_OF_RANGE "Error, decoded message length too large: found N bytes, the
//! limit is: M bytes"`; grpc-go (and so etcd) answers `RESOURCE_EXHAUSTED "grpc: received
//! message larger than max (N vs. M)"`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::MapOk;
use futures::TryFutureExt;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::Service;

/// The layer that puts [`EtcdWire`] around the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdWireLayer;

impl<S> tower_layer::Layer<S> for EtcdWireLayer {
    type Service = EtcdWire<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EtcdWire { inner }
    }
}

/// Rewrites tonic's own error answers into grpc-go's.
#[derive(Debug, Clone)]
pub struct EtcdWire<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EtcdWire<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<WireBody<ResBody>>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(Response<ResBody>) -> Response<WireBody<ResBody>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.inner.call(req).map_ok(rewrite::<ResBody>)
    }
}

const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// `found N bytes, the limit is: M bytes` → `(N, M)`.
fn sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// Decodes `%XX` escapes (the grpc-message header encoding); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response body whose trailers get the same rewrite as the headers (tonic sends a decode
/// error in the trailers of a normal response, not as a trailers-only response).
#[derive(Debug)]
pub struct WireBody<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for WireBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        rewrite_status(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn rewrite<B>(resp: Response<B>) -> Response<WireBody<B>> {
    let (mut parts, inner) = resp.into_parts();
    rewrite_status(&mut parts.headers);
    Response::from_parts(parts, WireBody { inner })
}

fn rewrite_status(headers: &mut HeaderMap) {
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return;
    }
    // tonic percent-encodes the message (spaces as %20).
    let Some((found, limit)) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .as_deref()
        .and_then(sizes)
    else {
        return;
    };
    let message = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_tonics_message() {
        assert_eq!(
            sizes("Error, decoded message length too large: found 528404 bytes, the limit is: 528384 bytes"),
            Some((528404, 528384))
        );
        assert_eq!(sizes("something else"), None);
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn rewrites_only_that_error() {
        let resp = Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "Error,%20decoded%20message%20length%20too%20large:%20found%2010%20bytes,%20the%20limit%20is:%205%20bytes",
            )
            .body(())
            .unwrap();
        let out = rewrite(resp);
        assert_eq!(out.headers()["grpc-status"], "8");
        assert_eq!(
            out.headers()["grpc-message"],
            "grpc: received message larger than max (10 vs. 5)"
        );
        let other = Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "etcdserver: mvcc: required revision is a future revision",
            )
            .body(())
            .unwrap();
        let out = rewrite(other);
        assert_eq!(out.headers()["grpc-status"], "11");
    }
}
