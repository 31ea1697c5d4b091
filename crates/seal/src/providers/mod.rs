//! The storage transformers of kube-apiserver, one module per provider, named after
//! `k8s.io/apiserver/pkg/storage/value/encrypt/{identity,aes,secretbox,envelope}` so a reviewer
//! can diff behaviour:
//!
//! - [`identity`]: no prefix, plaintext; refuses `k8s:enc:` data when read alone.
//! - [`aes`]: `aesgcm` (etcd key as AAD) and `aescbc` (no AAD, no integrity).
//! - [`secretbox`]: XSalsa20-Poly1305 (no AAD).
//! - [`envelope`]: KMS v1, read only (AES-GCM, then the legacy AES-CBC fallback).
//! - [`kmsv2`]: KMS v2 `EncryptedObject`, read (both DEK source types) and write (HKDF seed).
//!
//! [`PrefixTransformers`] is upstream's prefix dispatch (`transformer.go`), used at both levels:
//! providers of a resource rule, and keys inside an aes/secretbox provider. Write: first entry.
//! Read: every entry whose prefix matches, in order; first success wins, stale unless it was
//! entry 0 and the inner read was not stale; a failing empty prefix (identity) is skipped
//! silently; otherwise the aggregate of the failures, or the level's "no match" error.

pub mod aes;
pub mod envelope;
pub mod identity;
pub mod kmsv2;
pub mod secretbox;

use std::fmt;
use std::sync::Arc;

use crate::config::model::{Key, KeysConfiguration, KmsApiVersion, ProviderConfiguration};
use crate::error::{BuildError, TransformError};
use crate::key_service::KmsConnector;
use crate::rng::RandomSource;
use crate::seal_metrics::OpenCounters;
use crate::write_limit::WriteCounters;

/// Every encrypted value starts with this; identity refuses to read it.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

/// A successful read.
#[derive(Debug)]
pub struct Read {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Whether the value should be rewritten with the current write provider/key.
    pub stale: bool,
    /// Which provider and key opened it (e.g. `aesgcm key "key1"`); public names only.
    pub source: Arc<str>,
    /// The `open` counters of that provider key, resolved when it was built.
    pub(crate) counters: Arc<OpenCounters>,
}

/// Which provider key opens values: its public label and its metric handles, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    label: Arc<str>,
    counters: Arc<OpenCounters>,
}

impl Source {
    /// The source labelled `label` (public names only).
    pub(crate) fn new(label: Arc<str>) -> Self {
        Self {
            counters: Arc::new(OpenCounters::new(&label)),
            label,
        }
    }

    /// The label.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// A read of `plaintext` by this source.
    pub(crate) fn read(&self, plaintext: Vec<u8>, stale: bool) -> Read {
        Read {
            plaintext,
            stale,
            source: self.label.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// One of kube-apiserver's storage transformers.
pub trait Transformer: Send + Sync + fmt::Debug {
    /// Opens `data` (the provider's prefix already removed by the caller) stored under
    /// `etcd_key`. (Named after upstream's `TransformFromStorage`.)
    #[allow(clippy::wrong_self_convention)]
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError>;

    /// Appends the stored form of `plaintext` (without this transformer's own outer prefix) to
    /// `out`. Writing into the caller's buffer lets the whole value (prefixes, nonce,
    /// ciphertext, tag) be built in one allocation and encrypted in place.
    fn to_storage_into(
        &self,
        plaintext: &[u8],
        etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError>;

    /// Bytes this transformer adds to a plaintext at most (a capacity hint).
    fn overhead(&self) -> usize {
        64
    }

    /// Re-checks the provider's key source (KMS v2: Status, and a new seed on a new key_id).
    /// A no-op for providers with local keys.
    fn refresh(&self) -> Result<(), TransformError> {
        Ok(())
    }

    /// The stored form of `plaintext` in a new buffer.
    fn to_storage(&self, plaintext: &[u8], etcd_key: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut out = Vec::with_capacity(plaintext.len() + self.overhead());
        self.to_storage_into(plaintext, etcd_key, &mut out)?;
        Ok(out)
    }
}

/// A transformer selected by a prefix of the stored value.
#[derive(Debug, Clone)]
pub struct PrefixTransformer {
    prefix: Vec<u8>,
    transformer: Arc<dyn Transformer>,
    label: Arc<str>,
}

impl PrefixTransformer {
    /// `transformer` under `prefix`; `label` names it in diagnostics (no key material).
    pub fn new(
        prefix: impl Into<Vec<u8>>,
        transformer: Arc<dyn Transformer>,
        label: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            transformer,
            label: label.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The diagnostic label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The transformer behind the prefix.
    pub fn transformer(&self) -> &Arc<dyn Transformer> {
        &self.transformer
    }
}

/// What a [`PrefixTransformers`] level reports when nothing matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// Top level: `no matching prefix found`.
    Prefix,
    /// Inside aesgcm/aescbc: `no matching key was found for the provided AES transformer`.
    AesKey,
    /// Inside secretbox: `no matching key was found for the provided Secretbox transformer`.
    SecretboxKey,
}

impl NoMatch {
    fn error(self) -> TransformError {
        match self {
            NoMatch::Prefix => TransformError::NoMatchingPrefix,
            NoMatch::AesKey => TransformError::NoMatchingAesKey,
            NoMatch::SecretboxKey => TransformError::NoMatchingSecretboxKey,
        }
    }
}

/// Upstream's `prefixTransformers`: an ordered list of prefix → transformer.
#[derive(Debug, Clone)]
pub struct PrefixTransformers {
    entries: Vec<PrefixTransformer>,
    no_match: NoMatch,
}

impl PrefixTransformers {
    /// A level with these entries (entry 0 writes).
    pub fn new(entries: Vec<PrefixTransformer>, no_match: NoMatch) -> Self {
        Self { entries, no_match }
    }

    /// The entries in order.
    pub fn entries(&self) -> &[PrefixTransformer] {
        &self.entries
    }

    /// Label of the writing entry.
    pub fn write_label(&self) -> &str {
        self.entries.first().map_or("(none)", |e| e.label())
    }
}

impl Transformer for PrefixTransformers {
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError> {
        let mut errs = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let Some(rest) = data.strip_prefix(entry.prefix.as_slice()) else {
                continue;
            };
            match entry.transformer.from_storage(rest, etcd_key) {
                Ok(mut read) => {
                    read.stale |= i != 0;
                    return Ok(read);
                }
                // An identity entry (empty prefix) that fails is skipped silently.
                Err(_) if entry.prefix.is_empty() => {}
                Err(e) => errs.push(e),
            }
        }
        Err(TransformError::reduce(errs).unwrap_or_else(|| self.no_match.error()))
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let first = self
            .entries
            .first()
            .ok_or(TransformError::NoWriteProvider)?;
        out.extend_from_slice(&first.prefix);
        first.transformer.to_storage_into(plaintext, etcd_key, out)
    }

    fn refresh(&self) -> Result<(), TransformError> {
        let errs: Vec<_> = self
            .entries
            .iter()
            .filter_map(|e| e.transformer.refresh().err())
            .collect();
        TransformError::reduce(errs).map_or(Ok(()), Err)
    }

    fn overhead(&self) -> usize {
        self.entries
            .first()
            .map_or(0, |e| e.prefix.len() + e.transformer.overhead())
    }
}

/// The prefix of each provider kind.
pub mod prefixes {
    /// `aescbc`.
    pub const AESCBC: &str = "k8s:enc:aescbc:v1:";
    /// `aesgcm`.
    pub const AESGCM: &str = "k8s:enc:aesgcm:v1:";
    /// `secretbox`.
    pub const SECRETBOX: &str = "k8s:enc:secretbox:v1:";
    /// `kms` v1, followed by `<name>:`.
    pub const KMS_V1: &str = "k8s:enc:kms:v1:";
    /// `kms` v2, followed by `<name>:`.
    pub const KMS_V2: &str = "k8s:enc:kms:v2:";
}

/// Builds one provider (as a top-level prefix entry) from its configuration, with aesgcm write
/// counts of its own (a [`crate::Keyspace`] shares one set of counts between its providers).
pub fn build_provider(
    provider: &ProviderConfiguration,
    kms: &dyn KmsConnector,
    rng: &Arc<dyn RandomSource>,
) -> Result<PrefixTransformer, BuildError> {
    build_counted(provider, kms, rng, &WriteCounters::default())
}

/// [`build_provider`] counting aesgcm writes in `counters`.
pub fn build_counted(
    provider: &ProviderConfiguration,
    kms: &dyn KmsConnector,
    rng: &Arc<dyn RandomSource>,
    counters: &WriteCounters,
) -> Result<PrefixTransformer, BuildError> {
    build_collecting(provider, kms, rng, counters, &mut Vec::new())
}

/// [`build_counted`], also handing each KMS v2 provider built to `kms_v2` (the keyspace
/// reports their health and sets their windows and cache limits). KMS v2 providers write with
/// [`kmsv2::KmsV2::with_key_reuse`], once refreshed: building asks no plugin anything.
pub(crate) fn build_collecting(
    provider: &ProviderConfiguration,
    kms: &dyn KmsConnector,
    rng: &Arc<dyn RandomSource>,
    counters: &WriteCounters,
    kms_v2: &mut Vec<Arc<kmsv2::KmsV2>>,
) -> Result<PrefixTransformer, BuildError> {
    Ok(match provider {
        ProviderConfiguration::Identity => {
            PrefixTransformer::new(Vec::new(), Arc::new(identity::Identity), "identity")
        }
        ProviderConfiguration::AesGcm(keys) => keyed(
            prefixes::AESGCM,
            "aesgcm",
            keys,
            NoMatch::AesKey,
            |key, label| {
                Ok(Arc::new(aes::AesGcm::new(
                    &key.name,
                    &key.secret,
                    rng.clone(),
                    label,
                    counters,
                )?))
            },
        )?,
        ProviderConfiguration::AesCbc(keys) => keyed(
            prefixes::AESCBC,
            "aescbc",
            keys,
            NoMatch::AesKey,
            |key, label| Ok(Arc::new(aes::AesCbc::new(&key.secret, rng.clone(), label)?)),
        )?,
        ProviderConfiguration::Secretbox(keys) => keyed(
            prefixes::SECRETBOX,
            "secretbox",
            keys,
            NoMatch::SecretboxKey,
            |key, label| {
                Ok(Arc::new(secretbox::Secretbox::new(
                    &key.secret,
                    rng.clone(),
                    label,
                )?))
            },
        )?,
        ProviderConfiguration::Kms(cfg) => match cfg.api_version {
            KmsApiVersion::V1 => {
                let service = kms.v1(cfg).map_err(|cause| BuildError::Kms {
                    name: cfg.name.clone(),
                    cause,
                })?;
                let t = envelope::KmsV1::new(&cfg.name, service, cfg.cache_size);
                PrefixTransformer::new(
                    format!("{}{}:", prefixes::KMS_V1, cfg.name),
                    Arc::new(t),
                    format!("kms v1 {:?}", cfg.name),
                )
            }
            KmsApiVersion::V2 => {
                let service = kms.v2(cfg).map_err(|cause| BuildError::Kms {
                    name: cfg.name.clone(),
                    cause,
                })?;
                // No plugin call here: building never waits on a plugin. Writes need a first
                // Status (`Transformer::refresh`, `Keyspace::refresh_kms`); reads do not.
                let t = Arc::new(kmsv2::KmsV2::with_key_reuse(
                    &cfg.name,
                    service,
                    rng.clone(),
                ));
                kms_v2.push(t.clone());
                t.prefix_transformer()
            }
        },
    })
}

fn keyed(
    prefix: &str,
    kind: &'static str,
    keys: &KeysConfiguration,
    no_match: NoMatch,
    make: impl Fn(&Key, Arc<str>) -> Result<Arc<dyn Transformer>, BuildError>,
) -> Result<PrefixTransformer, BuildError> {
    if keys.keys.is_empty() {
        return Err(BuildError::NoKeys { provider: kind });
    }
    let mut entries = Vec::with_capacity(keys.keys.len());
    let mut names = Vec::with_capacity(keys.keys.len());
    for key in &keys.keys {
        let label: Arc<str> = format!("{kind} key {:?}", key.name).into();
        let t = make(key, label.clone()).map_err(|e| match e {
            BuildError::KeySize {
                provider,
                len,
                expected,
                ..
            } => BuildError::KeySize {
                provider,
                name: key.name.clone(),
                len,
                expected,
            },
            other => other,
        })?;
        entries.push(PrefixTransformer::new(format!("{}:", key.name), t, label));
        names.push(format!("{:?}", key.name));
    }
    Ok(PrefixTransformer::new(
        prefix,
        Arc::new(PrefixTransformers::new(entries, no_match)),
        format!("{kind} (keys {})", names.join(", ")),
    ))
}

/// Builds a resource rule's provider list as one top-level [`PrefixTransformers`].
pub fn build_chain(
    providers: &[ProviderConfiguration],
    kms: &dyn KmsConnector,
    rng: &Arc<dyn RandomSource>,
) -> Result<PrefixTransformers, BuildError> {
    let counters = WriteCounters::default();
    let entries = providers
        .iter()
        .map(|p| build_counted(p, kms, rng, &counters))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PrefixTransformers::new(entries, NoMatch::Prefix))
}
