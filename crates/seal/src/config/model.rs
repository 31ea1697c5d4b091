//! The validated EncryptionConfiguration, as the rest of Coffer sees it: decoded key secrets in
//! [`SecretBytes`], KMS defaults applied. Parsing and validation (in `parse`/`validate`) are the
//! only way to build one from a file, so a value of these types is always valid.

use std::time::Duration;

use crate::secret::SecretBytes;

/// A whole `EncryptionConfiguration` (or legacy `EncryptionConfig`), in file order.
#[derive(Debug, Clone)]
pub struct EncryptionConfiguration {
    /// Resource rules, in file order (earlier wins).
    pub resources: Vec<ResourceConfiguration>,
}

/// One `resources[i]` entry.
#[derive(Debug, Clone)]
pub struct ResourceConfiguration {
    /// The resource strings as written (`secrets`, `deployments.apps`, `*.`, `*.apps`, `*.*`).
    pub resources: Vec<String>,
    /// Providers in order; `[0]` writes.
    pub providers: Vec<ProviderConfiguration>,
}

/// One `providers[j]` element: exactly one provider.
#[derive(Debug, Clone)]
pub enum ProviderConfiguration {
    /// `aesgcm: {keys: [...]}`
    AesGcm(KeysConfiguration),
    /// `aescbc: {keys: [...]}`
    AesCbc(KeysConfiguration),
    /// `secretbox: {keys: [...]}`
    Secretbox(KeysConfiguration),
    /// `identity: {}`
    Identity,
    /// `kms: {...}`
    Kms(KmsConfiguration),
}

/// The `keys` list of an aesgcm/aescbc/secretbox provider.
#[derive(Debug, Clone)]
pub struct KeysConfiguration {
    /// Keys in order; `[0]` writes.
    pub keys: Vec<Key>,
}

/// A named key. The name is part of the stored prefix; the secret is already base64-decoded.
#[derive(Debug, Clone)]
pub struct Key {
    /// Key name (non-empty; embedded in the stored prefix).
    pub name: String,
    /// The raw key (16/24/32 bytes for AES, 32 for secretbox).
    pub secret: SecretBytes,
}

/// KMS `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsApiVersion {
    /// KMS v1 (deprecated; read only in Coffer).
    V1,
    /// KMS v2.
    V2,
}

/// A `kms:` provider, defaults applied (`timeout` 3s, `apiVersion` v1, `cachesize` 1000 for v1).
#[derive(Debug, Clone)]
pub struct KmsConfiguration {
    /// `apiVersion`.
    pub api_version: KmsApiVersion,
    /// `name`, embedded in the stored prefix.
    pub name: String,
    /// `endpoint`, `unix:///path` or `unix:///@abstract`.
    pub endpoint: String,
    /// `cachesize` (v1 only); negative disables the cache.
    pub cache_size: Option<i32>,
    /// `timeout` per gRPC call.
    pub timeout: Duration,
}
