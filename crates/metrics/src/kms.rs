//! KMS metrics, both sides of the plugin socket.
//!
//! - [`kms()`]: the client side in `coffer serve` (and the offline tools), in the process-wide
//!   registry next to etcd's metrics: plugin calls by provider, RPC and result, their latency,
//!   the plugin's health, seeds cached, writes per key_id and the write window left.
//! - [`plugin()`]: `coffer kms-plugin`'s own registry (a plugin process exports no etcd
//!   metric), encoded by [`encode_plugin`].
//!
//! A key_id is public but may name a cloud account or an HSM: labels carry it only as
//! [`key_id_hash`], `sha256:` and the first 16 hex digits, as kube-apiserver logs it.

use std::sync::{Mutex, OnceLock, PoisonError};

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sha2::{Digest, Sha256};

use crate::MetricsError;

/// Latency buckets of plugin calls: 100 µs × 2^n, 16 buckets (100 µs to 3.3 s, the default
/// KMS timeout being 3 s).
fn call_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()
}

/// The client side's metrics (in the process-wide registry).
pub struct KmsMetrics {
    /// `coffer_kms_calls_total{provider,rpc,result}`: calls to a KMS plugin; `result` is `ok`
    /// or the gRPC code's name (`unavailable`, `deadline_exceeded`, …) or `invalid` for an
    /// answer that breaks the protocol.
    pub calls: IntCounterVec,
    /// `coffer_kms_call_duration_seconds{provider,rpc}`.
    pub call_duration: HistogramVec,
    /// `coffer_kms_healthy{provider}`: 1 when the last Status probe succeeded.
    pub healthy: IntGaugeVec,
    /// `coffer_kms_seeds_cached{provider}`: decrypted seeds/DEKs held in memory.
    pub seeds_cached: IntGaugeVec,
    /// `coffer_kms_writes_total{provider,key_id_hash}`: values sealed under each key_id.
    pub writes: IntCounterVec,
    /// `coffer_kms_write_window_seconds{provider}`: seconds left before writes stop without a
    /// healthy Status (0 when expired or never established).
    pub write_window: IntGaugeVec,
}

/// `coffer kms-plugin`'s metrics (its own registry).
pub struct PluginMetrics {
    registry: Registry,
    /// `coffer_kms_plugin_requests_total{rpc,result}`: `result` is `ok` or the gRPC code name.
    pub requests: IntCounterVec,
    /// `coffer_kms_plugin_request_duration_seconds{rpc}`.
    pub request_duration: HistogramVec,
    /// `coffer_kms_plugin_backend_errors_total{operation}`: failures of the KEK backend
    /// (`wrap`, `unwrap`, `session`, `health`).
    pub backend_errors: IntCounterVec,
    /// `coffer_kms_plugin_healthy`: 1 when the last health check's wrap and unwrap succeeded.
    pub healthy: IntGauge,
    /// `coffer_kms_plugin_key_id{key_id_hash}`: 1 for the current KEK's key_id.
    pub key_id: IntGaugeVec,
}

fn calls(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
    Ok(IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
    Ok(IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn latency(name: &str, help: &str, labels: &[&str]) -> Result<HistogramVec, MetricsError> {
    Ok(HistogramVec::new(
        HistogramOpts::new(name, help).buckets(call_buckets()),
        labels,
    )?)
}

impl KmsMetrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let m = Self {
            calls: calls(
                "coffer_kms_calls_total",
                "Calls to a KMS plugin by provider, RPC and result (ok, a gRPC code name, or \
                 invalid for an answer that breaks the protocol).",
                &["provider", "rpc", "result"],
            )?,
            call_duration: latency(
                "coffer_kms_call_duration_seconds",
                "Latency of calls to a KMS plugin, by provider and RPC.",
                &["provider", "rpc"],
            )?,
            healthy: gauges(
                "coffer_kms_healthy",
                "Whether the KMS plugin's last Status probe succeeded (1) or not (0).",
                &["provider"],
            )?,
            seeds_cached: gauges(
                "coffer_kms_seeds_cached",
                "Decrypted KMS v2 seeds and DEKs held in memory, by provider.",
                &["provider"],
            )?,
            writes: calls(
                "coffer_kms_writes_total",
                "Values sealed by a KMS v2 provider, by provider and key_id (as sha256:hash).",
                &["provider", "key_id_hash"],
            )?,
            write_window: gauges(
                "coffer_kms_write_window_seconds",
                "Seconds left before writes stop unless the KMS plugin answers a healthy \
                 Status (0: expired or never established).",
                &["provider"],
            )?,
        };
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.call_duration.clone()))?;
        registry.register(Box::new(m.healthy.clone()))?;
        registry.register(Box::new(m.seeds_cached.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        registry.register(Box::new(m.write_window.clone()))?;
        Ok(m)
    }

    /// Records one plugin call.
    pub fn call(&self, provider: &str, rpc: &str, result: &str, seconds: f64) {
        self.calls.with_label_values(&[provider, rpc, result]).inc();
        self.call_duration
            .with_label_values(&[provider, rpc])
            .observe(seconds);
    }
}

impl PluginMetrics {
    fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let m = Self {
            requests: calls(
                "coffer_kms_plugin_requests_total",
                "KMS plugin requests by RPC and result (ok or a gRPC code name).",
                &["rpc", "result"],
            )?,
            request_duration: latency(
                "coffer_kms_plugin_request_duration_seconds",
                "Latency of KMS plugin requests, by RPC.",
                &["rpc"],
            )?,
            backend_errors: calls(
                "coffer_kms_plugin_backend_errors_total",
                "Failures of the key-encryption-key backend, by operation (wrap, unwrap, \
                 session, health).",
                &["operation"],
            )?,
            healthy: IntGauge::new(
                "coffer_kms_plugin_healthy",
                "Whether the last health check wrapped and unwrapped through the backend (1).",
            )?,
            key_id: gauges(
                "coffer_kms_plugin_key_id",
                "1 for the current key-encryption key's key_id (as sha256:hash).",
                &["key_id_hash"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.request_duration.clone()))?;
        m.registry.register(Box::new(m.backend_errors.clone()))?;
        m.registry.register(Box::new(m.healthy.clone()))?;
        m.registry.register(Box::new(m.key_id.clone()))?;
        Ok(m)
    }

    /// Records one request answered by the plugin.
    pub fn request(&self, rpc: &str, result: &str, seconds: f64) {
        self.requests.with_label_values(&[rpc, result]).inc();
        self.request_duration
            .with_label_values(&[rpc])
            .observe(seconds);
    }

    /// Marks `key_id` as the current one (and no other).
    pub fn set_key_id(&self, key_id: &str) {
        self.key_id.reset();
        self.key_id
            .with_label_values(&[&key_id_hash(key_id)])
            .set(1);
    }
}

/// The client side's KMS metrics.
pub fn kms() -> &'static KmsMetrics {
    &crate::metrics().kms
}

/// `coffer kms-plugin`'s metrics.
pub fn plugin() -> &'static PluginMetrics {
    static PLUGIN: OnceLock<PluginMetrics> = OnceLock::new();
    PLUGIN.get_or_init(|| match PluginMetrics::new() {
        Ok(m) => m,
        // Every definition above is fixed: a failure is a bug caught by the unit tests.
        Err(e) => panic!("plugin metric definitions are invalid: {e}"),
    })
}

/// The plugin's metrics in the Prometheus text format ([`crate::CONTENT_TYPE`]).
pub fn encode_plugin() -> String {
    let families = plugin().registry.gather();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key_id as metrics and logs show it: `sha256:` and the first 16 hex digits of its SHA-256.
pub fn key_id_hash(key_id: &str) -> String {
    let digest = Sha256::digest(key_id.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..8]))
}

type Hook = Box<dyn Fn() + Send + Sync>;

fn hooks() -> &'static Mutex<Vec<Hook>> {
    static HOOKS: OnceLock<Mutex<Vec<Hook>>> = OnceLock::new();
    HOOKS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Runs `hook` before every [`crate::encode`] (e.g. to set a gauge that is a function of time,
/// such as the write window left). Hooks must be quick and must not call `encode`.
pub fn on_scrape(hook: impl Fn() + Send + Sync + 'static) {
    hooks()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Box::new(hook));
}

pub(crate) fn run_scrape_hooks() {
    for hook in hooks()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_hash_is_short_and_stable() {
        let h = key_id_hash("1");
        assert_eq!(
            h, "sha256:6b86b273ff34fce1",
            "sha256(\"1\") starts 6b86b273ff34fce1"
        );
        assert_ne!(key_id_hash("2"), h);
    }

    #[test]
    fn plugin_registry_holds_only_plugin_metrics() {
        plugin().request("Status", "ok", 0.001);
        plugin().set_key_id("k1");
        plugin().set_key_id("k2");
        let text = encode_plugin();
        assert!(text.contains("coffer_kms_plugin_requests_total{result=\"ok\",rpc=\"Status\"} 1"));
        assert!(text.contains(&format!("key_id_hash=\"{}\"", key_id_hash("k2"))));
        assert!(
            !text.contains(&key_id_hash("k1")),
            "only the current key_id"
        );
        assert!(!text.contains("etcd_"), "{text}");
    }

    #[test]
    fn client_kms_metrics_are_in_the_main_registry() {
        kms().call("p1", "Encrypt", "ok", 0.002);
        kms().healthy.with_label_values(&["p1"]).set(1);
        let text = crate::encode();
        assert!(text
            .contains("coffer_kms_calls_total{provider=\"p1\",result=\"ok\",rpc=\"Encrypt\"} 1"));
        assert!(text.contains("coffer_kms_healthy{provider=\"p1\"} 1"));
    }
}
