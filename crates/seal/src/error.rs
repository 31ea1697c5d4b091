//! Errors of the transformers, with kube-apiserver's exact texts.
//!
//! [`TransformError`] reproduces upstream's messages (`cipher: message authentication failed`,
//! `no matching prefix found`, ...) so that `coffer decrypt` says what kube-apiserver would say.
//! None of them carries key bytes or plaintext; the server maps every one of them to an opaque
//! etcd error on the wire, so they never act as a padding or tag oracle for a client.

use std::fmt;

use crate::key_service::KeyServiceError;
use crate::rng::RandomError;

/// Why a provider could not read (or write) a value.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The payload is shorter than the cipher's fixed header (IV, nonce, info).
    #[error("the stored data was shorter than the required size")]
    ShortData,
    /// AES-CBC: the ciphertext is not a whole number of blocks.
    #[error("the stored data is not a multiple of the block size")]
    NotBlockMultiple,
    /// AES-CBC: empty ciphertext, or a padding length of 0 or beyond the data. (Upstream
    /// panics on an IV-only payload; Coffer reports this error.)
    #[error("invalid PKCS7 data (empty or not padded)")]
    InvalidPkcs7Data,
    /// AES-CBC: the padding bytes differ.
    #[error("invalid padding on input")]
    InvalidPadding,
    /// AES-GCM: wrong key, tampered value, or a value moved to another etcd key.
    #[error("cipher: message authentication failed")]
    AuthenticationFailed,
    /// secretbox: authentication failed (upstream's misleading text, kept verbatim).
    #[error("output array was not large enough for encryption")]
    SecretboxOpenFailed,
    /// A resource without rule (plain identity) was given a `k8s:enc:` value.
    #[error("identity transformer tried to read encrypted data")]
    IdentityReadEncrypted,
    /// No provider prefix matched the value.
    #[error("no matching prefix found")]
    NoMatchingPrefix,
    /// The AES provider matched but none of its key names did.
    #[error("no matching key was found for the provided AES transformer")]
    NoMatchingAesKey,
    /// The secretbox provider matched but none of its key names did.
    #[error("no matching key was found for the provided Secretbox transformer")]
    NoMatchingSecretboxKey,
    /// Several matching providers (or ciphers) failed; upstream's aggregate rendering
    /// (`[e1, e2]`, nested aggregates flattened, duplicates dropped).
    #[error("{}", render_aggregate(.0))]
    Aggregate(Vec<TransformError>),
    /// KMS v1: the EDEK length prefix is missing or longer than the data.
    #[error("invalid data encountered by envelope transformer: failed to read uint16 length prefixed data")]
    EnvelopeLengthPrefix,
    /// KMS v1: the plugin's Decrypt failed (returned unwrapped, as upstream does).
    #[error("{0}")]
    KmsV1Plugin(KeyServiceError),
    /// KMS v1 is read-only in Coffer.
    #[error("KMS v1 provider {name:?} cannot write: KMS v1 is deprecated and Coffer only reads it; put a kms v2 provider first")]
    KmsV1ReadOnly {
        /// The provider name.
        name: String,
    },
    /// KMS v2: the plugin's Decrypt failed.
    #[error("failed to decrypt DEK, error: {0}")]
    KmsV2DecryptDek(KeyServiceError),
    /// KMS v2: the EncryptedObject is not valid protobuf.
    #[error("proto: cannot parse invalid wire-format data")]
    ProtoDecode,
    /// KMS v2: the EncryptedObject failed validation (`unknown encryptedDEKSourceType: 2`,
    /// `failed to validate annotations: ...`). Holds public metadata only.
    #[error("{0}")]
    InvalidEncryptedObject(String),
    /// The plugin returned a DEK of a size AES does not accept.
    #[error("crypto/aes: invalid key size {0}")]
    InvalidKeySize(usize),
    /// The plugin returned a seed shorter than 32 bytes.
    #[error("invalid seed length {0} used for key generation")]
    InvalidSeedLength(usize),
    /// KMS v2: no write state yet (the plugin has not answered Status and Encrypt).
    #[error("kms v2 provider {name:?} has no data key to write with yet: {reason}")]
    KmsV2NoWriteState {
        /// The provider name.
        name: String,
        /// Why the last attempt to get one failed.
        reason: String,
    },
    /// KMS v2: Status, Encrypt or the key_id checks failed while establishing a write key.
    #[error("kms v2 provider {name:?}: {reason}")]
    KmsV2Rotation {
        /// The provider name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// KMS v2: the write window closed (no fully healthy Status for longer than the window);
    /// reads go on. Names the provider, the key_id's hash and the times.
    #[error(
        "kms v2 provider {name:?}: writes stopped: no healthy Status from the plugin for {} \
         (write window {}); key_id {key_id_hash}",
        crate::providers::kmsv2::show_ms(*since_ms),
        crate::providers::kmsv2::show_ms(*window_ms)
    )]
    KmsV2WritesStopped {
        /// The provider name.
        name: String,
        /// Milliseconds since the last fully healthy Status (shown as e.g. `190 s`).
        since_ms: u64,
        /// The write window in milliseconds.
        window_ms: u64,
        /// The write state's key_id as `sha256:…`.
        key_id_hash: String,
    },
    /// KMS v2 legacy AES_GCM_KEY writes: the nonce counter is exhausted.
    #[error("kms v2 provider {name:?}: nonce counter exhausted; a new data key is required")]
    NonceCounterExhausted {
        /// The provider name.
        name: String,
    },
    /// aesgcm: the key has sealed as many values as Coffer allows under one key with random
    /// nonces. Names the key (never its bytes) and says how to rotate.
    #[error(
        "aesgcm key {key_name:?} (write counter {counter_id}) has sealed {writes} values, \
             Coffer's limit for one key with random 96-bit nonces ({limit}); new writes under it \
             are refused (reads still work). To write again, {}",
        crate::write_limit::ROTATION_STEPS
    )]
    WriteLimitReached {
        /// The key's name in the configuration.
        key_name: String,
        /// The key's write counter id (public).
        counter_id: String,
        /// Writes counted under the key.
        writes: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The random source failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The cipher refused to encrypt (message too long for the cipher).
    #[error("encryption failed: {0}")]
    EncryptFailed(&'static str),
    /// A provider list with no provider (cannot happen after config validation).
    #[error("no provider configured to write with")]
    NoWriteProvider,
}

impl TransformError {
    /// Upstream's `errors.Reduce(errors.NewAggregate(errs))`: `None` for no error, the error
    /// itself for one, an aggregate for several.
    pub(crate) fn reduce(mut errs: Vec<TransformError>) -> Option<TransformError> {
        match errs.len() {
            0 => None,
            1 => errs.pop(),
            _ => Some(TransformError::Aggregate(errs)),
        }
    }
}

fn collect_messages(errs: &[TransformError], seen: &mut Vec<String>) {
    for e in errs {
        if let TransformError::Aggregate(inner) = e {
            collect_messages(inner, seen);
        } else {
            let msg = e.to_string();
            if !seen.contains(&msg) {
                seen.push(msg);
            }
        }
    }
}

/// apimachinery's `aggregate.Error()`: one message alone, several as `[a, b]`.
fn render_aggregate(errs: &[TransformError]) -> String {
    let mut seen = Vec::new();
    collect_messages(errs, &mut seen);
    if seen.len() == 1 {
        seen.pop().unwrap_or_default()
    } else {
        format!("[{}]", seen.join(", "))
    }
}

/// [`crate::keyspace::Keyspace::seal`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
#[error("cannot seal the value of key {key:?} with {provider}: {cause}")]
pub struct SealError {
    /// The etcd key (stored in clear, so not secret), lossily decoded.
    pub key: String,
    /// The provider that should have written it.
    pub provider: String,
    /// Why it failed.
    pub cause: TransformError,
}

/// [`crate::keyspace::Keyspace::open`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
#[error("cannot open the value of key {key:?}: {cause}")]
pub struct OpenError {
    /// The etcd key, lossily decoded.
    pub key: String,
    /// Upstream's error for this read.
    pub cause: TransformError,
}

/// Building transformers from a configuration failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A key of the wrong size (the config validator normally catches this first).
    #[error("{provider} key {name:?} is {len} bytes, expected one of {expected}")]
    KeySize {
        /// `aesgcm`, `aescbc` or `secretbox`.
        provider: &'static str,
        /// The key's name.
        name: String,
        /// Its decoded length.
        len: usize,
        /// The allowed lengths.
        expected: &'static str,
    },
    /// A provider with an empty `keys` list.
    #[error("{provider} provider has no keys")]
    NoKeys {
        /// `aesgcm`, `aescbc` or `secretbox`.
        provider: &'static str,
    },
    /// A resource entry with no providers.
    #[error("resource rule {rule:?} has no providers")]
    NoProviders {
        /// The resource string.
        rule: String,
    },
    /// [`crate::Keyspace::new_kms_only`] was given a configuration whose `*.*` rule does not
    /// write with a KMS v2 provider.
    #[error("cannot seal every key with KMS v2: the configuration {reason}; add a `*.*` rule whose first provider is a kms v2 provider")]
    NotKmsOnly {
        /// Why, e.g. "has no `*.*` rule".
        reason: String,
    },
    /// Connecting a KMS provider to its plugin failed.
    #[error("kms provider {name:?}: {cause}")]
    Kms {
        /// The provider name.
        name: String,
        /// Why.
        cause: KeyServiceError,
    },
}

/// Lossy, printable form of an etcd key for error messages (keys are stored in clear).
pub(crate) fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Debug helper: prints only a label, never the wrapped value.
pub(crate) struct Redacted(pub &'static str);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_renders_like_apimachinery() {
        let one = TransformError::Aggregate(vec![TransformError::AuthenticationFailed]);
        assert_eq!(one.to_string(), "cipher: message authentication failed");
        let two = TransformError::Aggregate(vec![
            TransformError::AuthenticationFailed,
            TransformError::NotBlockMultiple,
        ]);
        assert_eq!(
            two.to_string(),
            "[cipher: message authentication failed, the stored data is not a multiple of the block size]"
        );
        let nested = TransformError::Aggregate(vec![
            two.clone(),
            TransformError::AuthenticationFailed,
            TransformError::ShortData,
        ]);
        assert_eq!(
            nested.to_string(),
            "[cipher: message authentication failed, the stored data is not a multiple of the block size, the stored data was shorter than the required size]"
        );
    }
}
