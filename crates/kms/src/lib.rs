//! # coffer-kms: both sides of Kubernetes' KMS plugin socket
//!
//! - [`client`]: the KMS v2 gRPC client (and KMS v1, read only, for migrating off it) that
//!   `coffer serve` and the offline tools plug into `coffer-seal` through its
//!   [`coffer_seal::KeyService`] trait. It dials unix sockets (abstract ones too) with the
//!   config's per-call timeout, sends `:authority: localhost` as kube-apiserver 1.32+ does, and
//!   checks every field of every answer as kube-apiserver does.
//! - [`plugin`]: `coffer kms-plugin`, a KMS v2 plugin whose key-encryption key lives in an HSM
//!   (PKCS#11) or, for development, in a key file of the default key's format.
//! - [`mock`]: a plugin that behaves like Kubernetes' own mock (ciphertext = base64 of the
//!   plaintext, key_id `1`), served over a real unix socket, for tests and for reading the
//!   upstream vectors; it counts calls and can be made to fail.
//! - [`poller`]: `coffer serve`'s Status poller (1 min healthy, 10 s after a failure).
//! - [`endpoint`]: `unix:///path` and `unix:///@abstract` endpoints, dialled and bound.
//!
//! Only the plugin's backends touch the key-encryption key; the seeds the client unwraps go
//! straight to `coffer-seal`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod endpoint;
pub mod mock;
pub mod plugin;
pub mod poller;

/// Code generated from the plugin protos (`proto/`).
pub mod proto {
    /// KMS v2 (`package v2`).
    pub mod v2 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("v2");
    }
    /// KMS v1 (`package v1beta1`), deprecated upstream; Coffer only reads its data.
    pub mod v1beta1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("v1beta1");
    }
}
