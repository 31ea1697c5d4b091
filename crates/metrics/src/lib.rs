//! # coffer-metrics: one process-wide Prometheus registry
//!
//! Every crate records into the handles of [`metrics()`]; the HTTP endpoint calls [`encode`].
//! Names, types, labels and help texts are etcd 3.5's where a metric means the same
//! (`etcd_*`, `grpc_server_*`); Coffer's own are under `coffer_`. No label ever carries a key
//! byte, a value or a secret: seal labels name a provider and a key *name* from the
//! `EncryptionConfiguration`, gRPC labels a method from a fixed table.
//!
//! Built on the `prometheus` crate (TiKV's, Apache-2.0) rather than `prometheus-client`: its
//! text encoder writes the Prometheus 0.0.4 exposition format exactly as etcd's Go client
//! does (a counter's `# TYPE` line names the `_total` sample, no OpenMetrics `# EOF`, the same
//! label order), so a scrape of Coffer reads like a scrape of etcd to Prometheus, its
//! recording rules and etcd's dashboards. `prometheus-client` writes OpenMetrics, whose
//! counter `# TYPE` lines name the family without `_total`.

pub mod kms;

use std::collections::HashMap;
use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Why a metric could not be registered or encoded (a programming error, never outside input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The Prometheus library refused a definition or an encoding.
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The `Content-Type` of [`encode`]'s text (etcd's, the 0.0.4 text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// etcd's disk latency buckets: 0.001 × 2^n seconds, 14 buckets (1 ms to 8.192 s).
fn disk_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

/// Prometheus' default buckets, which go-grpc-prometheus uses for `grpc_server_handling_seconds`.
fn grpc_buckets() -> Vec<f64> {
    prometheus::DEFAULT_BUCKETS.to_vec()
}

/// Every metric Coffer exports. Handles are cheap to clone and to record into.
pub struct Metrics {
    registry: Registry,
    /// `etcd_server_has_leader`: 1 (a single member always leads).
    pub has_leader: IntGauge,
    /// `etcd_mvcc_db_total_size_in_bytes`: the backend files' size (set at scrape).
    pub db_total_size: IntGauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`: bytes in use by live data (set at scrape).
    pub db_total_size_in_use: IntGauge,
    /// `etcd_debugging_mvcc_keys_total`: keys in the index (set after each commit).
    pub keys_total: IntGauge,
    /// `etcd_disk_backend_commit_duration_seconds`: the storage engine's commit.
    pub backend_commit: Histogram,
    /// `etcd_disk_wal_fsync_duration_seconds`: the write-ahead log's `fdatasync`.
    pub wal_fsync: Histogram,
    /// `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`.
    pub grpc_started: IntCounterVec,
    /// `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
    pub grpc_handled: IntCounterVec,
    /// `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`.
    pub grpc_handling: HistogramVec,
    /// `coffer_seal_operations_total{operation,provider,key,result}`.
    pub seal_operations: IntCounterVec,
    /// `coffer_decrypt_failures_total`: stored values no provider could open.
    pub decrypt_failures: IntCounter,
    /// `coffer_commit_group_size`: write requests committed together in one group.
    pub group_size: Histogram,
    /// `coffer_watchers`: open watchers (set at scrape).
    pub watchers: IntGauge,
    /// `coffer_auth_denied_total{rpc}`: requests refused by access control.
    pub auth_denied: IntCounterVec,
    /// The KMS client's metrics ([`kms::kms`]).
    pub kms: kms::KmsMetrics,
}

impl Metrics {
    fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str, buckets| -> Result<Histogram, MetricsError> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, MetricsError>(c)
        };
        const GRPC: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been \
                 application-level handled by the server.",
            )
            .buckets(grpc_buckets()),
            &GRPC,
        )?;
        registry.register(Box::new(grpc_handling.clone()))?;
        let decrypt_failures = IntCounter::new(
            "coffer_decrypt_failures_total",
            "Stored values that no provider of their rule could open.",
        )?;
        registry.register(Box::new(decrypt_failures.clone()))?;

        let m = Metrics {
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_total_size_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            keys_total: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            backend_commit: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk_buckets(),
            )?,
            wal_fsync: histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            )?,
            grpc_started: counters(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &GRPC,
            )?,
            grpc_handled: counters(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )?,
            grpc_handling,
            seal_operations: counters(
                "coffer_seal_operations_total",
                "Seal (write) and open (read) operations by provider, key name and result \
                 (ok, stale: opened by a key that no longer writes, error).",
                &["operation", "provider", "key", "result"],
            )?,
            decrypt_failures,
            group_size: histogram(
                "coffer_commit_group_size",
                "Write requests committed together in one group (one log append and fdatasync).",
                exponential_buckets(1.0, 2.0, 11)?,
            )?,
            watchers: gauge("coffer_watchers", "Open watchers.")?,
            auth_denied: counters(
                "coffer_auth_denied_total",
                "Requests refused by access control, by RPC.",
                &["rpc"],
            )?,
            kms: kms::KmsMetrics::new(&registry)?,
            registry,
        };
        m.has_leader.set(1);
        Ok(m)
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| match Metrics::new() {
        Ok(m) => m,
        // Every definition above is fixed: a failure is a bug caught by the unit tests.
        Err(e) => panic!("metric definitions are invalid: {e}"),
    })
}

/// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn encode() -> String {
    kms::run_scrape_hooks();
    let families = metrics().registry.gather();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts one request refused by access control for `rpc` (e.g. `Range`, `Authenticate`).
pub fn auth_denied(rpc: &str) {
    metrics().auth_denied.with_label_values(&[rpc]).inc();
}

/// Seal operation names for [`record_seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealOp {
    /// A value was sealed for writing.
    Seal,
    /// A stored value was opened for reading.
    Open,
}

/// The outcome of a seal operation for [`record_seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealResult {
    /// Done with the current write key.
    Ok,
    /// Opened, but by a provider or key that no longer writes.
    Stale,
    /// Failed.
    Error,
}

/// Counts one seal or open by the provider `label` (the seal crate's public label, e.g.
/// `aesgcm key "key1"`, `aesgcm (keys "k1", "k2")` or `kms v2 "coffer-default"`): the
/// provider is the text before the first quote or parenthesis, the key the first quoted name.
pub fn record_seal(op: SealOp, label: &str, result: SealResult) {
    seal_counter(op, label, result).inc();
}

/// The counter [`record_seal`] increments, for callers that resolve it once and then only
/// increment it (a per-value lookup hashes the labels and locks the family's map).
pub fn seal_counter(op: SealOp, label: &str, result: SealResult) -> IntCounter {
    let (provider, key) = split_label(label);
    let op = match op {
        SealOp::Seal => "seal",
        SealOp::Open => "open",
    };
    let result = match result {
        SealResult::Ok => "ok",
        SealResult::Stale => "stale",
        SealResult::Error => "error",
    };
    metrics()
        .seal_operations
        .with_label_values(&[op, provider, key, result])
}

/// `aesgcm key "key1"` → (`aesgcm`, `key1`); `identity` → (`identity`, ``).
fn split_label(label: &str) -> (&str, &str) {
    let end = label.find(['"', '(']).unwrap_or(label.len());
    let provider = label[..end].trim();
    let provider = provider.strip_suffix(" key").unwrap_or(provider);
    let key = label
        .split_once('"')
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(k, _)| k);
    (provider, key)
}

/// The gRPC stream kind of a method, as go-grpc-prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    /// The `grpc_type` label.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// One gRPC method's series, created up front (as go-grpc-prometheus does, so every method and
/// code reads 0 before its first call) and resolved once, so recording is a few atomic adds.
pub struct GrpcHandles {
    started: IntCounter,
    handling: Histogram,
    handled: Vec<IntCounter>,
}

impl GrpcHandles {
    /// Counts the start of a call.
    pub fn started(&self) {
        self.started.inc();
    }

    /// Counts the end of a call with `grpc-status` `code`, `seconds` after it started.
    pub fn handled(&self, code: u32, seconds: f64) {
        let i = usize::try_from(code).map_or(2, |c| if c <= 16 { c } else { 2 });
        if let Some(c) = self.handled.get(i) {
            c.inc();
        }
        self.handling.observe(seconds);
    }
}

/// Every path of [`grpc_method`]'s table, e.g. `/etcdserverpb.KV/Range`.
const GRPC_PATHS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

fn grpc_table(m: &Metrics) -> HashMap<&'static str, GrpcHandles> {
    let mut table = HashMap::new();
    for path in GRPC_PATHS {
        let Some((kind, service, method)) = grpc_method(path) else {
            continue;
        };
        let labels = [kind.as_str(), service, method];
        let handled = (0..=16)
            .map(|code| {
                m.grpc_handled.with_label_values(&[
                    kind.as_str(),
                    service,
                    method,
                    grpc_code_name(code),
                ])
            })
            .collect();
        table.insert(
            *path,
            GrpcHandles {
                started: m.grpc_started.with_label_values(&labels),
                handling: m.grpc_handling.with_label_values(&labels),
                handled,
            },
        );
    }
    table
}

/// The series of the gRPC method at `path` (`/etcdserverpb.KV/Range`); `None` for a path
/// Coffer does not serve, which is not counted.
pub fn grpc(path: &str) -> Option<&'static GrpcHandles> {
    static TABLE: OnceLock<HashMap<&'static str, GrpcHandles>> = OnceLock::new();
    TABLE.get_or_init(|| grpc_table(metrics())).get(path)
}

/// A method of a service Coffer serves, from a request path (`/etcdserverpb.KV/Range`);
/// `None` for any other path, which is never counted (labels stay a fixed set).
pub fn grpc_method(path: &str) -> Option<(GrpcType, &'static str, &'static str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let (service, methods): (&'static str, &[&'static str]) = match service {
        "etcdserverpb.KV" => (
            "etcdserverpb.KV",
            &["Range", "Put", "DeleteRange", "Txn", "Compact"],
        ),
        "etcdserverpb.Watch" => ("etcdserverpb.Watch", &["Watch"]),
        "etcdserverpb.Lease" => (
            "etcdserverpb.Lease",
            &[
                "LeaseGrant",
                "LeaseRevoke",
                "LeaseKeepAlive",
                "LeaseTimeToLive",
                "LeaseLeases",
            ],
        ),
        "etcdserverpb.Cluster" => (
            "etcdserverpb.Cluster",
            &[
                "MemberAdd",
                "MemberRemove",
                "MemberUpdate",
                "MemberList",
                "MemberPromote",
            ],
        ),
        "etcdserverpb.Maintenance" => (
            "etcdserverpb.Maintenance",
            &[
                "Alarm",
                "Status",
                "Defragment",
                "Hash",
                "HashKV",
                "Snapshot",
                "MoveLeader",
                "Downgrade",
            ],
        ),
        "etcdserverpb.Auth" => (
            "etcdserverpb.Auth",
            &[
                "AuthEnable",
                "AuthDisable",
                "AuthStatus",
                "Authenticate",
                "UserAdd",
                "UserGet",
                "UserList",
                "UserDelete",
                "UserChangePassword",
                "UserGrantRole",
                "UserRevokeRole",
                "RoleAdd",
                "RoleGet",
                "RoleList",
                "RoleDelete",
                "RoleGrantPermission",
                "RoleRevokePermission",
            ],
        ),
        "grpc.health.v1.Health" => ("grpc.health.v1.Health", &["Check", "Watch"]),
        _ => return None,
    };
    let method = *methods.iter().find(|m| **m == method)?;
    let kind = match (service, method) {
        ("etcdserverpb.Watch", _) | (_, "LeaseKeepAlive") => GrpcType::BidiStream,
        (_, "Snapshot") | ("grpc.health.v1.Health", "Watch") => GrpcType::ServerStream,
        _ => GrpcType::Unary,
    };
    Some((kind, service, method))
}

/// The `grpc_code` label for a `grpc-status` value (grpc-go's names).
pub fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A `grpc-status` value in snake case (`invalid_argument`), the `result` label of Coffer's
/// KMS call metrics (client and plugin).
pub fn grpc_code_label(code: u32) -> &'static str {
    match code {
        0 => "ok",
        1 => "cancelled",
        3 => "invalid_argument",
        4 => "deadline_exceeded",
        5 => "not_found",
        6 => "already_exists",
        7 => "permission_denied",
        8 => "resource_exhausted",
        9 => "failed_precondition",
        10 => "aborted",
        11 => "out_of_range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data_loss",
        16 => "unauthenticated",
        _ => "unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_the_code_names_in_snake_case() {
        for code in 0..=16 {
            let name = grpc_code_name(code);
            let mut snake = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 && name != "OK" {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            // Go spells the code "Canceled"; the label keeps gRPC's "cancelled".
            let expected = if code == 1 {
                "cancelled".to_owned()
            } else {
                snake
            };
            assert_eq!(grpc_code_label(code), expected, "code {code}");
        }
    }

    /// The `# TYPE` line of `name` in `text`.
    fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        let prefix = format!("# TYPE {name} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    #[test]
    fn encodes_etcd_names_types_and_buckets() {
        metrics().wal_fsync.observe(0.0015);
        metrics().backend_commit.observe(0.02);
        metrics()
            .grpc_handled
            .with_label_values(&["unary", "etcdserverpb.KV", "Put", "OK"])
            .inc();
        metrics()
            .grpc_started
            .with_label_values(&["unary", "etcdserverpb.KV", "Put"])
            .inc();
        metrics()
            .grpc_handling
            .with_label_values(&["unary", "etcdserverpb.KV", "Put"])
            .observe(0.001);
        let text = encode();
        for (name, kind) in [
            ("etcd_server_has_leader", "gauge"),
            ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
            ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
            ("etcd_debugging_mvcc_keys_total", "gauge"),
            ("etcd_disk_backend_commit_duration_seconds", "histogram"),
            ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
            ("grpc_server_handled_total", "counter"),
            ("grpc_server_started_total", "counter"),
            ("grpc_server_handling_seconds", "histogram"),
            ("coffer_commit_group_size", "histogram"),
            ("coffer_watchers", "gauge"),
        ] {
            assert_eq!(type_of(&text, name), Some(kind), "{name} in\n{text}");
        }
        assert!(text.contains("etcd_server_has_leader 1\n"));
        // etcd's 14 buckets, 1 ms to 8.192 s; 1.5 ms lands in the 2 ms bucket.
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n"));
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("etcd_disk_backend_commit_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, 15, "14 buckets and +Inf");
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",\
             grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} "
        ));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn seal_labels_name_provider_and_key_only() {
        record_seal(SealOp::Seal, "aesgcm (keys \"k1\", \"k2\")", SealResult::Ok);
        record_seal(SealOp::Open, "aesgcm key \"k2\"", SealResult::Stale);
        record_seal(SealOp::Open, "kms v2 \"coffer-default\"", SealResult::Ok);
        record_seal(SealOp::Open, "identity", SealResult::Error);
        let text = encode();
        for line in [
            "coffer_seal_operations_total{key=\"k1\",operation=\"seal\",provider=\"aesgcm\",result=\"ok\"} ",
            "coffer_seal_operations_total{key=\"k2\",operation=\"open\",provider=\"aesgcm\",result=\"stale\"} ",
            "coffer_seal_operations_total{key=\"coffer-default\",operation=\"open\",provider=\"kms v2\",result=\"ok\"} ",
            "coffer_seal_operations_total{key=\"\",operation=\"open\",provider=\"identity\",result=\"error\"} ",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn auth_denials_count_by_rpc() {
        auth_denied("Range");
        auth_denied("Range");
        let v = metrics().auth_denied.with_label_values(&["Range"]).get();
        assert!(v >= 2, "{v}");
        assert!(encode().contains("# TYPE coffer_auth_denied_total counter"));
    }

    #[test]
    fn grpc_methods_come_from_a_fixed_table() {
        assert_eq!(
            grpc_method("/etcdserverpb.KV/Range"),
            Some((GrpcType::Unary, "etcdserverpb.KV", "Range"))
        );
        assert_eq!(
            grpc_method("/etcdserverpb.Watch/Watch"),
            Some((GrpcType::BidiStream, "etcdserverpb.Watch", "Watch"))
        );
        assert_eq!(
            grpc_method("/etcdserverpb.Lease/LeaseKeepAlive").map(|m| m.0),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(
            grpc_method("/etcdserverpb.Maintenance/Snapshot").map(|m| m.0),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(grpc_method("/etcdserverpb.KV/Nope"), None);
        assert_eq!(grpc_method("/x.Y/Range"), None);
        assert_eq!(grpc_method("/health"), None);
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(8), "ResourceExhausted");
        assert_eq!(grpc_code_name(99), "Unknown");
        for path in GRPC_PATHS {
            assert!(grpc_method(path).is_some(), "{path}");
        }
    }

    #[test]
    fn grpc_series_exist_before_the_first_call_and_count_by_code() {
        let range = grpc("/etcdserverpb.KV/Compact").expect("known method");
        assert!(grpc("/etcdserverpb.KV/Nope").is_none());
        let zero = "grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Compact\",\
                    grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0\n";
        assert!(encode().contains(zero));
        range.started();
        range.handled(11, 0.002);
        let text = encode();
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Compact\",\
             grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
        ));
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Compact\",grpc_service=\"etcdserverpb.KV\",\
             grpc_type=\"unary\"} 1\n"
        ));
    }
}
