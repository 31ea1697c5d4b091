//! Plain HTTP on the client port (and on `--listen-metrics-urls`): the endpoints load
//! balancers and Prometheus reach etcd on, answered as etcd 3.5 answers them.
//!
//! - `/health`: `{"health":"true","reason":""}` (200), or 503 with `"health":"false"` and the
//!   first reason: an active alarm (`ALARM NOSPACE`, `ALARM CORRUPT`; `?exclude=NOSPACE` skips
//!   one), the store unable to write (Coffer's own reason: writes stopped after a commit of
//!   unknown outcome, or a full disk), or a failed read (`RANGE ERROR:...`).
//! - `/livez`, `/readyz` and one path per check (`/readyz/linearizable_read`): `ok`, `?verbose`
//!   lists the checks, `?exclude=NAME` skips one; a failure is 503 with the list. With a KMS
//!   plugin configured `/readyz` adds Coffer's `kms_providers` (every plugin answered a
//!   healthy Status and its write window is open); `/livez` and `/health` never look at KMS.
//! - `/version`: etcd's JSON with [`crate::ETCD_VERSION`] (etcd serves it on the client port
//!   only; Coffer on the metrics port too).
//! - `/metrics`: [`coffer_metrics::encode`], sizes and watcher count refreshed first.
//!
//! Every endpoint but `/metrics` answers anything other than GET with etcd's 405.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::{AlarmType, RangeRequest};
use coffer_store::Backend;
use http::{header, Method, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::state::Shared;

/// The checks behind `/livez`, in the order `?verbose` lists them.
const LIVEZ: &[&str] = &["serializable_read"];
/// The checks behind `/readyz`, in the order `?verbose` lists them.
const READYZ: &[&str] = &[
    "data_corruption",
    "serializable_read",
    "linearizable_read",
    "non_learner",
];
/// `/readyz` with the `kms_providers` check, when the keyspace uses a KMS plugin.
const READYZ_KMS: &[&str] = &[
    "data_corruption",
    "serializable_read",
    "linearizable_read",
    "non_learner",
    "kms_providers",
];

/// The path without its query (`/readyz?verbose` → `/readyz`).
fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// Whether `path` is one of the HTTP endpoints (anything else on the client port is gRPC).
/// A query (`/readyz?verbose`) may be included.
pub fn is_endpoint(path: &str) -> bool {
    let p = path_only(path);
    matches!(
        p,
        "/health" | "/livez" | "/readyz" | "/version" | "/metrics"
    ) || check_path(p, READYZ_KMS).is_some()
}

/// `/livez/NAME` or `/readyz/NAME` of a registered check (`readyz`: the `/readyz` checks
/// served) → (its root's checks, NAME).
fn check_path<'a>(
    path: &'a str,
    readyz: &'static [&'static str],
) -> Option<(&'static [&'static str], &'a str)> {
    let (root, name) = path.strip_prefix('/')?.split_once('/')?;
    let checks = match root {
        "livez" => LIVEZ,
        "readyz" => readyz,
        _ => return None,
    };
    checks.contains(&name).then_some((checks, name))
}

/// Values of `name` in a query string (`exclude=NOSPACE&exclude=CORRUPT`), empty ones skipped.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .split('&')
        .filter_map(move |kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            _ => None,
        })
        .filter(|v| !v.is_empty())
}

/// Whether `name` appears in the query at all (`?verbose` or `?verbose=1`).
fn query_has(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name)
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

/// What Go's `http.Error` writes: the message and a newline, as plain text, `nosniff`.
fn go_error(status: StatusCode, message: &str) -> Response<String> {
    let mut r = response(status, TEXT, format!("{message}\n"));
    r.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn method_not_allowed() -> Response<String> {
    let mut r = go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    r
}

/// The answer to an HTTP request for `path` (the request target: the path, with its query if
/// any; the body of the request is never read).
pub async fn respond<B: Backend>(
    backend: &B,
    shared: &Shared,
    method: &http::Method,
    path: &str,
) -> Response<String> {
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    if p == "/metrics" {
        // promhttp answers every method.
        return metrics(backend).await;
    }
    if !is_endpoint(p) {
        return go_error(StatusCode::NOT_FOUND, "404 page not found");
    }
    if method != Method::GET {
        return method_not_allowed();
    }
    match p {
        "/health" => health(backend, query).await,
        "/version" => version(shared),
        "/livez" => checks(backend, shared, LIVEZ, query, true).await,
        "/readyz" => checks(backend, shared, readyz(shared), query, true).await,
        _ => match check_path(p, readyz(shared)) {
            Some((_, name)) => checks(backend, shared, &[name], query, false).await,
            None => go_error(StatusCode::NOT_FOUND, "404 page not found"),
        },
    }
}

/// The checks of `/readyz`: etcd's, and `kms_providers` when a KMS plugin is configured.
fn readyz(shared: &Shared) -> &'static [&'static str] {
    if shared.config.kms_ready.is_some() {
        READYZ_KMS
    } else {
        READYZ
    }
}

fn version(shared: &Shared) -> Response<String> {
    let _ = shared;
    let body = format!(
        r#"{{"etcdserver":"{}","etcdcluster":"{}"}}"#,
        crate::ETCD_VERSION,
        cluster_version()
    );
    response(StatusCode::OK, "application/json", body)
}

/// The cluster version etcd reports: the server's major.minor with patch 0.
fn cluster_version() -> String {
    let mut parts = crate::ETCD_VERSION.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}.0"),
        _ => crate::ETCD_VERSION.to_owned(),
    }
}

/// A keys-only, one-key read of the empty key, as etcd's health checks send.
async fn read_check<B: Backend>(backend: &B, serializable: bool) -> Result<(), String> {
    let req = RangeRequest {
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    // The health check is the server's own read: it holds with auth on, as in etcd.
    backend
        .range(&coffer_store::Caller::Internal, req)
        .await
        .map(|_| ())
        .map_err(|e| crate::ServerError::from(e).to_string())
}

async fn health<B: Backend>(backend: &B, query: &str) -> Response<String> {
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let mut reason = None;
    for alarm in backend.alarms() {
        let name = AlarmType::try_from(alarm.alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        if excluded.contains(&name) {
            continue;
        }
        reason = Some(match name {
            "NOSPACE" | "CORRUPT" => format!("ALARM {name}"),
            _ => "ALARM UNKNOWN".to_owned(),
        });
        break;
    }
    if reason.is_none() {
        reason = backend.write_health().err();
    }
    if reason.is_none() {
        let serializable = query_values(query, "serializable").any(|v| v == "true");
        reason = read_check(backend, serializable)
            .await
            .err()
            .map(|e| format!("RANGE ERROR:{e}"));
    }
    match reason {
        None => response(
            StatusCode::OK,
            TEXT,
            r#"{"health":"true","reason":""}"#.to_owned(),
        ),
        Some(reason) => {
            debug!(%reason, "/health false");
            let body = serde_json_string(&reason);
            go_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(r#"{{"health":"false","reason":{body}}}"#),
            )
        }
    }
}

/// `s` as a JSON string literal.
fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn run_check<B: Backend>(backend: &B, shared: &Shared, name: &str) -> Result<(), String> {
    match name {
        "data_corruption" => {
            let corrupt = backend
                .alarms()
                .iter()
                .any(|a| a.alarm == AlarmType::Corrupt as i32);
            if corrupt {
                Err("alarm activated: CORRUPT".to_owned())
            } else {
                Ok(())
            }
        }
        "serializable_read" => read_check(backend, true).await,
        "linearizable_read" => read_check(backend, false).await,
        "kms_providers" => match &shared.config.kms_ready {
            Some(check) => (check.0)(),
            None => Ok(()),
        },
        // A single member is never a learner.
        _ => Ok(()),
    }
}

/// `/livez`, `/readyz` (`root`: `?exclude=` applies) or one of their checks.
async fn checks<B: Backend>(
    backend: &B,
    shared: &Shared,
    names: &[&str],
    query: &str,
    root: bool,
) -> Response<String> {
    let excluded: Vec<&str> = if root {
        query_values(query, "exclude").collect()
    } else {
        Vec::new()
    };
    let mut report = String::new();
    let mut failed = false;
    for name in names.iter().filter(|n| !excluded.contains(n)) {
        match run_check(backend, shared, name).await {
            Ok(()) => report.push_str(&format!("[+]{name} ok\n")),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{name} failed: {e}\n"));
            }
        }
    }
    if failed {
        return go_error(StatusCode::SERVICE_UNAVAILABLE, &report);
    }
    let mut r = response(
        StatusCode::OK,
        TEXT,
        if query_has(query, "verbose") {
            report + "ok\n"
        } else {
            "ok\n".to_owned()
        },
    );
    r.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// Refreshes what is read at scrape time, then encodes every metric.
async fn metrics<B: Backend>(backend: &B) -> Response<String> {
    let m = coffer_metrics::metrics();
    if let Ok(s) = backend.status().await {
        m.db_total_size.set(s.db_size);
        m.db_total_size_in_use.set(s.db_size_in_use);
    }
    if let Some(hub) = backend.watch_hub() {
        m.watchers
            .set(i64::try_from(hub.watcher_count()).unwrap_or(i64::MAX));
    }
    response(
        StatusCode::OK,
        coffer_metrics::CONTENT_TYPE,
        coffer_metrics::encode(),
    )
}

/// Serves the HTTP endpoints over plain HTTP/1.1 on `listener` (`--listen-metrics-urls`)
/// until `shutdown` completes. Connections already open finish on their own.
pub async fn serve_metrics<B, F>(
    listener: TcpListener,
    backend: Arc<B>,
    shared: Arc<Shared>,
    shutdown: F,
) where
    B: Backend,
    F: Future<Output = ()>,
{
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics and health over plain HTTP");
    }
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
        };
        let backend = backend.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let backend = backend.clone();
                let shared = shared.clone();
                async move {
                    let target = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |pq| pq.as_str())
                        .to_owned();
                    let resp = respond(&*backend, &shared, req.method(), &target).await;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|body| http_body_util::Full::new(Bytes::from(body))),
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_check_paths() {
        for p in [
            "/health",
            "/health?exclude=NOSPACE",
            "/livez",
            "/readyz?verbose",
            "/readyz/linearizable_read",
            "/livez/serializable_read",
            "/version",
            "/metrics",
        ] {
            assert!(is_endpoint(p), "{p}");
        }
        for p in [
            "/",
            "/v3/kv/range",
            "/livez/nope",
            "/readyz/",
            "/etcdserverpb.KV/Range",
        ] {
            assert!(!is_endpoint(p), "{p}");
        }
    }

    #[test]
    fn query_parsing() {
        let q = "exclude=NOSPACE&verbose&exclude=&serializable=true";
        assert_eq!(query_values(q, "exclude").collect::<Vec<_>>(), ["NOSPACE"]);
        assert!(query_has(q, "verbose"));
        assert!(!query_has(q, "verb"));
        assert!(query_values(q, "serializable").any(|v| v == "true"));
    }

    #[test]
    fn version_and_json() {
        assert_eq!(cluster_version(), "3.5.0");
        assert_eq!(serde_json_string("a\"b<"), r#""a\"b\u003c""#);
    }
}
