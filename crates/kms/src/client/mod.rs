//! The KMS plugin client: [`GrpcConnector`] hands each `kms` provider of an
//! EncryptionConfiguration a gRPC client for its plugin socket, implementing `coffer-seal`'s
//! synchronous [`KeyService`](coffer_seal::KeyService) (KMS v2) and
//! [`KeyServiceV1`](coffer_seal::key_service::KeyServiceV1) (KMS v1, read only).
//!
//! How a call runs. Seal's traits block, and they are called from tokio workers, from
//! `spawn_blocking` threads and from plain threads. So the connector owns a small
//! current-thread tokio runtime on a dedicated thread (`coffer-kms-client`), shared by all the
//! providers it connected; a call spawns its RPC there and waits on a std channel. The caller is
//! never made to run a runtime (`block_on`) and is blocked at most the provider's `timeout`
//! plus [`CALLER_GRACE`].
//!
//! Transport, as kube-apiserver 1.32+: one lazily connected channel per provider, plain HTTP/2
//! over the unix socket of `endpoint` (`unix:///path`, or `unix:///@name` for a Linux abstract
//! socket), `:authority: localhost`. Wait-for-ready: while the socket is absent or refuses
//! connections, the call retries with a short backoff until its deadline, so a plugin that
//! starts after Coffer is picked up within one call's timeout. The deadline covers the whole
//! call (KMS v1's one-time Version check included).
//!
//! Checks, as kube-apiserver makes them (upstream's texts): Status `version` is `v2` or
//! `v2beta1` and never changes after the first answer; Status `key_id` non-empty and at most
//! 1024 bytes; an Encrypt answer passes `ValidateEncryptedObject`'s checks on the plugin's parts
//! (ciphertext non-empty and at most 1024 bytes, key_id valid, annotation keys fully qualified
//! domain names, annotations at most 32768 bytes in all); a Decrypt answer is non-empty. A
//! `healthz` other than `ok` is not refused here: seal reports it, after using the key_id, as
//! upstream does. KMS v1: Version is called once before the first Decrypt and must answer
//! `v1beta1`; every request carries `version: "v1beta1"`.
//!
//! Errors: [`KeyServiceError::Unavailable`](coffer_seal::key_service::KeyServiceError) when
//! the plugin cannot be reached or does not answer in time (gRPC `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`), [`KeyServiceError::Failed`](coffer_seal::key_service::KeyServiceError)
//! when it refuses (any other code) or breaks the protocol. Each names the provider, the
//! endpoint, the RPC and the gRPC code. Every call is counted in
//! `coffer_metrics::kms::kms().call` with result `ok`, the code in snake case, or `invalid`.
//!
//! Key material: a seed to wrap is held in a zeroizing buffer and copied into the request
//! message for each attempt; an unwrapped seed moves from the response message straight into
//! a [`SecretBytes`](coffer_seal::SecretBytes) without a copy. The request message and the
//! HTTP/2 buffers of tonic and prost are not wiped. No plaintext, seed or key_id (except as
//! `key_id_hash`) ever reaches an error, a log line or a metric.

mod call;
mod runtime;
mod v1;
mod v2;

use std::sync::Arc;

use coffer_seal::config::KmsConfiguration;
use coffer_seal::key_service::{KeyService, KeyServiceError, KeyServiceV1, KmsConnector};

use crate::endpoint::{EndpointError, SocketAddress};

pub use call::CALLER_GRACE;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The runtime thread could not be started.
    #[error("cannot start the KMS client's runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The provider's endpoint is not a unix socket URL.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// Connects `kms` providers to their plugins over gRPC (see the module docs). Cheap to clone;
/// all clones and all the services they made share one runtime thread, which stops when the
/// last of them is dropped.
#[derive(Debug, Clone)]
pub struct GrpcConnector {
    runtime: Arc<runtime::ClientRuntime>,
}

impl GrpcConnector {
    /// Starts the client's runtime thread. No plugin is dialled until a call needs it.
    pub fn new() -> Result<Self, ClientError> {
        Ok(Self {
            runtime: runtime::ClientRuntime::start().map_err(ClientError::Runtime)?,
        })
    }

    fn target(&self, config: &KmsConfiguration) -> Result<call::Target, ClientError> {
        let address = SocketAddress::parse(&config.endpoint)?;
        Ok(call::Target::new(
            self.runtime.clone(),
            config.name.clone(),
            config.endpoint.clone(),
            address,
            config.timeout,
        ))
    }
}

fn build_error(config: &KmsConfiguration, e: ClientError) -> KeyServiceError {
    KeyServiceError::Failed(format!(
        "KMS provider {:?}: cannot make a client for {}: {e}",
        config.name, config.endpoint
    ))
}

impl KmsConnector for GrpcConnector {
    fn v2(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyService>, KeyServiceError> {
        let target = self.target(config).map_err(|e| build_error(config, e))?;
        Ok(Arc::new(v2::V2Service::new(target)))
    }

    fn v1(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyServiceV1>, KeyServiceError> {
        let target = self.target(config).map_err(|e| build_error(config, e))?;
        Ok(Arc::new(v1::V1Service::new(target)))
    }
}
