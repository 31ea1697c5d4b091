//! Plain HTTP on the client port (and on `--listen-metrics-urls`): the endpoints load
//! balancers and Prometheus reach etcd on.

use coffer_store::Backend;

use crate::state::Shared;

/// Whether `path` is one of the HTTP endpoints (anything else on the client port is gRPC).
pub fn is_endpoint(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/livez" | "/readyz" | "/version" | "/metrics"
    )
}

/// The answer to an HTTP request for `path` (the body of the request is never read).
pub async fn respond<B: Backend>(
    backend: &B,
    shared: &Shared,
    method: &http::Method,
    path: &str,
) -> http::Response<String> {
    let _ = (backend, shared, method);
    let (status, body) = match path {
        "/health" => (
            http::StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "404 page not found\n".to_string(),
        ),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response
}
