//! The `v2.KeyManagementService` of `coffer kms-plugin`.
//!
//! - **Status**: `version` `v2`; `healthz` `ok` only after a real wrap and unwrap through the
//!   backend ([`HealthCheck`]: the result is cached 5 s after a success and 1 s after a
//!   failure, so a constant Status poll costs the token one round trip every 5 s), otherwise a
//!   short reason; `key_id` the current KEK's, kept through outages. Before any key_id is
//!   known (the token or its first key not there since start), Status fails `Unavailable`
//!   with the reason.
//! - **Encrypt**: wraps the plaintext under the current KEK; the answer carries the key_id and
//!   one annotation, [`super::FORMAT_ANNOTATION`], naming the wrapping format.
//! - **Decrypt**: refuses an empty request, a format annotation of another backend (and a
//!   missing one where the backend requires it), and key_ids it did not issue (`NotFound`).
//!
//! Errors are gRPC statuses: `InvalidArgument` (malformed request, ciphertext that does not
//! authenticate), `NotFound` (unknown key_id), `Unavailable` (backend unreachable),
//! `Internal` (anything else). Each call is logged with its uid and the key_id's hash, and
//! counted in `coffer_metrics::kms::plugin()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_metrics::kms::{key_id_hash, plugin as metrics};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::backend::{round_trip, Backend};
use super::{PluginError, FORMAT_ANNOTATION};
use crate::proto::v2::key_management_service_server::KeyManagementService;
use crate::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};

/// How long a successful health check is reused.
pub const HEALTHY_TTL: Duration = Duration::from_secs(5);
/// How long a failed health check is reused.
pub const UNHEALTHY_TTL: Duration = Duration::from_secs(1);
/// Largest ciphertext kube-apiserver accepts (`encryptedDEKSource`).
const MAX_CIPHERTEXT: usize = 1024;
/// Largest plaintext accepted: what still wraps into [`MAX_CIPHERTEXT`] bytes with room for
/// any backend's overhead (kube-apiserver sends 32 bytes).
const MAX_PLAINTEXT: usize = 512;
/// Longest `healthz` reason sent.
const MAX_REASON: usize = 512;

/// The result of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the wrap and unwrap succeeded.
    pub healthy: bool,
    /// `ok`, or why not.
    pub reason: String,
    /// The current key_id (the last known one when the check failed; empty when none is).
    pub key_id: String,
}

/// The cached wrap-and-unwrap health check, shared by Status and `/healthz`.
#[derive(Debug)]
pub struct HealthCheck {
    backend: Arc<dyn Backend>,
    cache: tokio::sync::Mutex<Option<(Instant, Health)>>,
}

impl HealthCheck {
    /// A check of `backend`; nothing runs until [`HealthCheck::check`].
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached result, or a new round trip through the backend when it has expired.
    /// Concurrent callers share one round trip.
    pub async fn check(&self) -> Health {
        let mut cache = self.cache.lock().await;
        if let Some((at, health)) = cache.as_ref() {
            let ttl = if health.healthy {
                HEALTHY_TTL
            } else {
                UNHEALTHY_TTL
            };
            if at.elapsed() < ttl {
                return health.clone();
            }
        }
        let backend = self.backend.clone();
        let result = blocking(move || round_trip(backend.as_ref())).await;
        let m = metrics();
        let health = match result {
            Ok(key_id) => {
                m.healthy.set(1);
                m.set_key_id(&key_id);
                Health {
                    healthy: true,
                    reason: "ok".to_owned(),
                    key_id,
                }
            }
            Err(e) => {
                m.healthy.set(0);
                m.backend_errors.with_label_values(&["health"]).inc();
                let mut reason = e.to_string();
                if reason.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                let previous = cache.as_ref().map(|(_, h)| h.healthy);
                if previous != Some(false) {
                    warn!(backend = %self.backend.describe(), reason = %reason, "health check failed");
                }
                Health {
                    healthy: false,
                    reason,
                    key_id: self.backend.current_key_id().unwrap_or_default(),
                }
            }
        };
        if health.healthy && cache.as_ref().is_some_and(|(_, h)| !h.healthy) {
            info!(backend = %self.backend.describe(), "health check passes again");
        }
        *cache = Some((Instant::now(), health.clone()));
        health
    }
}

/// The gRPC service over a backend.
#[derive(Debug, Clone)]
pub struct KmsPluginService {
    backend: Arc<dyn Backend>,
    health: Arc<HealthCheck>,
}

impl KmsPluginService {
    /// The service for `backend`, sharing `health` with the `/healthz` endpoint.
    pub fn new(backend: Arc<dyn Backend>, health: Arc<HealthCheck>) -> Self {
        Self { backend, health }
    }
}

/// `InvalidArgument`, as a status.
fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A gRPC code name in snake case (`invalid_argument`), as the metrics label it.
fn code_label(code: tonic::Code) -> &'static str {
    coffer_metrics::grpc_code_label(code as u32)
}

/// Records a finished call.
fn record<T>(rpc: &str, started: Instant, result: &Result<T, Status>) {
    let label = match result {
        Ok(_) => "ok",
        Err(s) => code_label(s.code()),
    };
    metrics().request(rpc, label, started.elapsed().as_secs_f64());
}

/// Runs a backend call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(PluginError::Internal(format!("backend call: {e}"))))
}

/// A backend error as a status, counted under `operation`.
fn backend_status(operation: &str, e: &PluginError) -> Status {
    if !matches!(
        e,
        PluginError::InvalidArgument(_) | PluginError::NotFound(_)
    ) {
        metrics()
            .backend_errors
            .with_label_values(&[operation])
            .inc();
    }
    Status::new(e.code(), e.to_string())
}

/// The longest caller-given text (a request's uid, an annotation) a log line or error repeats.
const LOGGABLE_CHARS: usize = 128;

/// `text` as a log line or error may show it: control characters escaped (no forged log
/// lines), cut at [`LOGGABLE_CHARS`] characters with `…` (a caller cannot flood the log).
fn loggable(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .take(LOGGABLE_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(LOGGABLE_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

impl KmsPluginService {
    async fn encrypt_inner(&self, req: EncryptRequest) -> Result<EncryptResponse, Status> {
        let uid = loggable(&req.uid);
        let plaintext = Zeroizing::new(req.plaintext);
        if plaintext.is_empty() {
            return Err(invalid("the plaintext is empty"));
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(invalid(format!(
                "the plaintext is {} bytes; at most {MAX_PLAINTEXT} are accepted",
                plaintext.len()
            )));
        }
        let backend = self.backend.clone();
        let wrapped = blocking(move || backend.wrap(&plaintext))
            .await
            .map_err(|e| {
                warn!(%uid, error = %e, "Encrypt failed");
                backend_status("wrap", &e)
            })?;
        if wrapped.ciphertext.is_empty() || wrapped.ciphertext.len() > MAX_CIPHERTEXT {
            return Err(Status::internal(format!(
                "the backend returned a {}-byte ciphertext",
                wrapped.ciphertext.len()
            )));
        }
        info!(%uid, key_id_hash = %key_id_hash(&wrapped.key_id), "Encrypt");
        Ok(EncryptResponse {
            ciphertext: wrapped.ciphertext,
            key_id: wrapped.key_id,
            annotations: HashMap::from([(
                FORMAT_ANNOTATION.to_owned(),
                self.backend.format().as_bytes().to_vec(),
            )]),
        })
    }

    async fn decrypt_inner(&self, req: DecryptRequest) -> Result<DecryptResponse, Status> {
        let uid = loggable(&req.uid);
        let hash = key_id_hash(&req.key_id);
        if req.key_id.is_empty() {
            return Err(invalid("the key_id is empty"));
        }
        if req.ciphertext.is_empty() {
            return Err(invalid("the ciphertext is empty"));
        }
        match req.annotations.get(FORMAT_ANNOTATION) {
            Some(v) if v.as_slice() != self.backend.format().as_bytes() => {
                return Err(invalid(format!(
                    "annotation {FORMAT_ANNOTATION} is \"{}\"; this plugin writes {:?}",
                    loggable(&String::from_utf8_lossy(v)),
                    self.backend.format()
                )));
            }
            None if !self.backend.accepts_unannotated() => {
                return Err(invalid(format!(
                    "annotation {FORMAT_ANNOTATION} is missing: the ciphertext was not written \
                     by this plugin"
                )));
            }
            _ => {}
        }
        let backend = self.backend.clone();
        let key_id = req.key_id;
        let ciphertext = req.ciphertext;
        let plaintext = blocking(move || backend.unwrap(&key_id, &ciphertext))
            .await
            .map_err(|e| {
                warn!(%uid, key_id_hash = %hash, error = %e, "Decrypt failed");
                backend_status("unwrap", &e)
            })?;
        info!(%uid, key_id_hash = %hash, "Decrypt");
        Ok(DecryptResponse {
            plaintext: plaintext.to_vec(),
        })
    }
}

#[tonic::async_trait]
impl KeyManagementService for KmsPluginService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let health = self.health.check().await;
        debug!(healthz = %health.reason, key_id_hash = %key_id_hash(&health.key_id), "Status");
        // No key_id known yet (the token or its first key is not there since start): an
        // answer would need an empty key_id, which kube-apiserver refuses as invalid without
        // saying why; the error carries the reason instead.
        let result = if health.key_id.is_empty() {
            Err(Status::unavailable(health.reason))
        } else {
            Ok(StatusResponse {
                version: "v2".to_owned(),
                healthz: health.reason,
                key_id: health.key_id,
            })
        };
        record("Status", started, &result);
        result.map(Response::new)
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let started = Instant::now();
        let result = self.decrypt_inner(request.into_inner()).await;
        record("Decrypt", started, &result);
        result.map(Response::new)
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let started = Instant::now();
        let result = self.encrypt_inner(request.into_inner()).await;
        record("Encrypt", started, &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_text_is_escaped_and_capped_before_it_is_logged() {
        let uuid = "5d0bd7a4-2a47-4bb8-9a3b-0c1f6d3c9e21";
        assert_eq!(loggable(uuid), uuid);
        assert_eq!(
            loggable("a\nlevel=ERROR forged\u{1b}[31m"),
            "a\\nlevel=ERROR forged\\u{1b}[31m"
        );
        let long = "é".repeat(10_000);
        let shown = loggable(&long);
        assert_eq!(shown.chars().count(), LOGGABLE_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(
            loggable(&"x".repeat(LOGGABLE_CHARS)),
            "x".repeat(LOGGABLE_CHARS)
        );
    }

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(code_label(tonic::Code::InvalidArgument), "invalid_argument");
        assert_eq!(code_label(tonic::Code::NotFound), "not_found");
        assert_eq!(code_label(tonic::Code::Unavailable), "unavailable");
    }
}
