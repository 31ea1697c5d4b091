//! # coffer-seal: Kubernetes encryption at rest, byte for byte
//!
//! The only crate in Coffer that touches key material. It reads an `EncryptionConfiguration`
//! exactly as kube-apiserver does ([`config`]), maps etcd keys to resource rules, and seals and
//! opens values with the providers kube-apiserver uses (`identity`, `aescbc`, `aesgcm`,
//! `secretbox`, `kms` v1 read and v2 read/write) in their exact stored formats ([`providers`]).
//! [`keyspace::Keyspace`] is the one entry point the server and the CLI use:
//! `seal(etcd_key, plaintext)` and `open(etcd_key, stored)`.
//!
//! No network code and no async runtime live here; the KMS gRPC client plugs in through the
//! [`key_service::KeyService`] trait. Coffer's own default key ([`default_key`]) is a KMS v2
//! provider backed by an in-process [`key_service::LocalKeyService`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod default_key;
pub mod durable;
pub mod error;
pub mod key_service;
pub mod keyspace;
pub mod providers;
pub mod rng;
mod seal_metrics;
pub mod secret;
pub mod write_limit;

pub use default_key::DefaultKey;
pub use error::{BuildError, OpenError, SealError, TransformError};
pub use key_service::{KeyService, LocalKeyService};
pub use keyspace::{kms_seals_everything, Keyspace, KmsHealth, Opened};
pub use rng::{RandomSource, SystemRandom};
pub use secret::SecretBytes;
pub use write_limit::{WriteCount, WriteLimits};
