//! `coffer kms-plugin`: a KMS v2 plugin whose key-encryption key (KEK) never leaves its
//! backend.
//!
//! - [`backend`]: the [`Backend`] trait (wrap, unwrap, the current key_id) and the two
//!   backends: [`Pkcs11Backend`] (an AES-256 KEK generated inside a PKCS#11 token; wrapping
//!   happens in the token with CKM_AES_GCM) and [`KeyFileBackend`] (Coffer's default-key file,
//!   giving the same key_id and reading the same data as `coffer serve`'s default key).
//! - [`service`]: the `v2.KeyManagementService` gRPC service: Status with a cached health
//!   check that really wraps and unwraps, Encrypt, Decrypt, with gRPC codes that mean
//!   something.
//! - [`server`]: the unix-socket listener (file or abstract), the `:authority` repair for
//!   kube-apiserver < 1.32, HTTP/2 by hyper, graceful stop, and the plain HTTP `/healthz` and
//!   `/metrics` listener.
//! - [`softhsm`]: a throwaway SoftHSM2 token for tests.
//!
//! No key byte, PIN or plaintext appears in an error, a log line, `Debug` output or a metric;
//! key_ids appear in logs and metrics only as `coffer_metrics::kms::key_id_hash`.

pub mod backend;
pub mod keyfile;
pub mod pkcs11;
pub mod server;
pub mod service;
pub mod softhsm;

pub use backend::{Backend, Wrapped};
pub use coffer_metrics::kms::key_id_hash;
pub use keyfile::KeyFileBackend;
pub use pkcs11::{Pin, Pkcs11Backend, Pkcs11Config, TokenSelector};
pub use server::{serve, ServeOptions};
pub use service::{HealthCheck, KmsPluginService};

/// The annotation every Encrypt answer carries (an FQDN, as kube-apiserver requires); its value
/// names the backend's wrapping format, and Decrypt checks it.
pub const FORMAT_ANNOTATION: &str = "format.kms.coffer.dev";

/// Why the plugin or one of its backends failed. Messages name the operation and the token
/// or file; they never hold key bytes, a PIN or a plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// A setting is wrong (flags, a missing key, an unsupported mechanism).
    #[error("{0}")]
    Config(String),
    /// The backend cannot be reached now (token gone, session lost, key deleted).
    #[error("{0}")]
    Unavailable(String),
    /// The request names a key_id this plugin did not issue.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or its ciphertext does not authenticate.
    #[error("{0}")]
    InvalidArgument(String),
    /// Anything else the backend reported.
    #[error("{0}")]
    Internal(String),
    /// The key file could not be used.
    #[error(transparent)]
    KeyFile(#[from] coffer_seal::default_key::DefaultKeyError),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the plugin was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl PluginError {
    /// The gRPC code a client sees for this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            PluginError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            PluginError::NotFound(_) => tonic::Code::NotFound,
            PluginError::Unavailable(_) | PluginError::Io { .. } => tonic::Code::Unavailable,
            PluginError::Config(_) | PluginError::Internal(_) | PluginError::KeyFile(_) => {
                tonic::Code::Internal
            }
        }
    }
}
