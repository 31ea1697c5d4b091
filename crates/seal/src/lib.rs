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
//! [`key_service::KeyService`] trait.

pub mod config;
pub mod providers;
pub mod secret;

pub use secret::SecretBytes;
