//! The KMS plugin seen from seal: [`KeyService`] (KMS v2's Status/Encrypt/Decrypt, synchronous
//! because seal has no async runtime) and [`KeyServiceV1`] (KMS v1's Decrypt, read only).
//!
//! The gRPC client over a unix socket implements these traits in another crate. Here live the
//! traits, the message types, the connector that hands a provider its plugin
//! ([`KmsConnector`]), and [`LocalKeyService`]: Coffer's in-process key service that wraps
//! seeds with a local 32-byte key-encryption key (the default key of `coffer serve`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;

use crate::config::model::KmsConfiguration;
use crate::rng::RandomSource;
use crate::secret::SecretBytes;

/// A KMS call failed. The message comes from the plugin or the transport; it never holds key
/// material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyServiceError {
    /// The plugin could not be reached (or no client exists for it yet).
    #[error("{0}")]
    Unavailable(String),
    /// The plugin answered with an error, or with an answer that breaks the protocol.
    #[error("{0}")]
    Failed(String),
}

/// KMS v2 `StatusResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// `v2` or `v2beta1`.
    pub version: String,
    /// `ok` when healthy.
    pub healthz: String,
    /// The current key-encryption key's id (public).
    pub key_id: String,
}

/// KMS v2 `EncryptResponse`.
#[derive(Debug, Clone)]
pub struct EncryptResponse {
    /// The wrapped seed/DEK (stored in clear as `encryptedDEKSource`).
    pub ciphertext: Vec<u8>,
    /// Must equal the key_id of the Status that triggered the Encrypt.
    pub key_id: String,
    /// Stored in clear; keys must be fully qualified domain names.
    pub annotations: BTreeMap<String, Vec<u8>>,
}

/// KMS v2 `DecryptRequest` (without the uid, which is passed separately).
#[derive(Debug, Clone)]
pub struct DecryptRequest {
    /// The stored `encryptedDEKSource`.
    pub ciphertext: Vec<u8>,
    /// The stored keyID.
    pub key_id: String,
    /// The stored annotations.
    pub annotations: BTreeMap<String, Vec<u8>>,
}

/// A KMS v2 plugin. Calls block; implementations apply their own timeout.
pub trait KeyService: Send + Sync + fmt::Debug {
    /// The plugin's health, protocol version and current key_id.
    fn status(&self) -> Result<KeyStatus, KeyServiceError>;
    /// Wraps `plaintext` (a 32-byte seed) under the current key-encryption key.
    fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError>;
    /// Unwraps a stored `encryptedDEKSource`.
    fn decrypt(&self, uid: &str, request: &DecryptRequest) -> Result<SecretBytes, KeyServiceError>;
}

/// A KMS v1 plugin, as far as Coffer needs it: Coffer reads KMS v1 data but never writes it.
pub trait KeyServiceV1: Send + Sync + fmt::Debug {
    /// Unwraps a stored EDEK into the DEK.
    fn decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, KeyServiceError>;
}

/// Hands each `kms` entry of a configuration its plugin.
pub trait KmsConnector {
    /// The KMS v2 plugin for this entry.
    fn v2(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyService>, KeyServiceError>;
    /// The KMS v1 plugin for this entry.
    fn v1(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyServiceV1>, KeyServiceError>;
}

/// A connector for tools without a KMS client (today: all of them; the gRPC client is a later
/// issue). Each kms provider is built, but every call to its plugin fails with a message that
/// names the endpoint, so `coffer decrypt` can say exactly why a kms provider could not open a
/// value.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoKmsClient;

#[derive(Debug)]
struct Unreachable {
    message: String,
}

impl Unreachable {
    fn new(config: &KmsConfiguration) -> Self {
        Self {
            message: format!(
                "cannot reach KMS plugin {:?} at {}: this build of Coffer has no KMS gRPC client yet",
                config.name, config.endpoint
            ),
        }
    }
    fn err(&self) -> KeyServiceError {
        KeyServiceError::Unavailable(self.message.clone())
    }
}

impl KeyService for Unreachable {
    fn status(&self) -> Result<KeyStatus, KeyServiceError> {
        Err(self.err())
    }
    fn encrypt(&self, _uid: &str, _plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError> {
        Err(self.err())
    }
    fn decrypt(&self, _uid: &str, _r: &DecryptRequest) -> Result<SecretBytes, KeyServiceError> {
        Err(self.err())
    }
}

impl KeyServiceV1 for Unreachable {
    fn decrypt(&self, _ciphertext: &[u8]) -> Result<SecretBytes, KeyServiceError> {
        Err(self.err())
    }
}

impl KmsConnector for NoKmsClient {
    fn v2(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyService>, KeyServiceError> {
        Ok(Arc::new(Unreachable::new(config)))
    }
    fn v1(&self, config: &KmsConfiguration) -> Result<Arc<dyn KeyServiceV1>, KeyServiceError> {
        Ok(Arc::new(Unreachable::new(config)))
    }
}

/// A request uid for plugin calls (UUID-shaped, for log correlation only). Drawn from the OS
/// once per process and then counted, so it never consumes the keyspace's [`RandomSource`].
pub fn new_uid() -> String {
    static BASE: OnceLock<u128> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let mut b = [0u8; 16];
        // A constant base is acceptable if the OS refuses: uids are not secrets.
        let _ = getrandom::getrandom(&mut b);
        u128::from_be_bytes(b)
    });
    let n = base.wrapping_add(u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)));
    let b = n.to_be_bytes();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Label hashed with the KEK to name it (key_id and fingerprint; never the KEK).
const FINGERPRINT_LABEL: &[u8] = b"coffer fingerprint v1";
/// Additional data of the seed wrapping, binding wrapped seeds to this scheme.
const WRAP_AAD: &[u8] = b"coffer local kek wrap v1";
/// First byte of a wrapped seed: the wrap format version.
const WRAP_VERSION: u8 = 1;

/// The public fingerprint of a key: hex HMAC-SHA256(key, "coffer fingerprint v1").
pub fn fingerprint_of(key: &SecretBytes) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret());
    hex::encode(hmac::sign(&k, FINGERPRINT_LABEL).as_ref())
}

/// An in-process KMS v2 key service holding a local 32-byte key-encryption key.
///
/// Encrypt wraps the 32-byte seed as `0x01 ‖ nonce(12) ‖ AES-256-GCM(KEK, seed)`;
/// key_id is the KEK's [`fingerprint_of`] (a keyed hash; the KEK never leaves). Decrypt
/// refuses key_ids it did not issue, as the KMS plugin contract asks. A later
/// `coffer kms-plugin` serving the same key file gives the same key_id and reads the same data.
pub struct LocalKeyService {
    kek: LessSafeKey,
    key_id: String,
    rng: Arc<dyn RandomSource>,
}

/// Why a [`LocalKeyService`] could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LocalKeyError {
    /// The KEK must be 32 bytes.
    #[error("a local key-encryption key must be 32 bytes, got {0}")]
    KeySize(usize),
}

impl LocalKeyService {
    /// A key service for `kek` (32 bytes), drawing wrap nonces from `rng`.
    pub fn new(kek: &SecretBytes, rng: Arc<dyn RandomSource>) -> Result<Self, LocalKeyError> {
        if kek.len() != 32 {
            return Err(LocalKeyError::KeySize(kek.len()));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, kek.expose_secret())
            .map_err(|_| LocalKeyError::KeySize(kek.len()))?;
        Ok(Self {
            kek: LessSafeKey::new(unbound),
            key_id: fingerprint_of(kek),
            rng,
        })
    }

    /// The key_id this service reports (public).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Debug for LocalKeyService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyService")
            .field("key_id", &self.key_id)
            .field("kek", &crate::error::Redacted("KEK"))
            .finish()
    }
}

impl KeyService for LocalKeyService {
    fn status(&self) -> Result<KeyStatus, KeyServiceError> {
        Ok(KeyStatus {
            version: "v2".to_owned(),
            healthz: "ok".to_owned(),
            key_id: self.key_id.clone(),
        })
    }

    fn encrypt(&self, _uid: &str, plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|e| KeyServiceError::Failed(e.to_string()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(WRAP_AAD),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| KeyServiceError::Failed("wrapping the seed failed".to_owned()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(EncryptResponse {
            ciphertext: out,
            key_id: self.key_id.clone(),
            annotations: BTreeMap::new(),
        })
    }

    fn decrypt(
        &self,
        _uid: &str,
        request: &DecryptRequest,
    ) -> Result<SecretBytes, KeyServiceError> {
        if request.key_id != self.key_id {
            return Err(KeyServiceError::Failed(format!(
                "key_id {:?} was not issued by this key (its key_id is {:?})",
                request.key_id, self.key_id
            )));
        }
        let c = &request.ciphertext;
        if c.len() < 1 + NONCE_LEN + 16 || c[0] != WRAP_VERSION {
            return Err(KeyServiceError::Failed(
                "wrapped seed is malformed (not written by a Coffer local key)".to_owned(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&c[1..1 + NONCE_LEN]);
        let mut buf = c[1 + NONCE_LEN..].to_vec();
        let plain_len = self
            .kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(WRAP_AAD),
                &mut buf,
            )
            .map_err(|_| KeyServiceError::Failed("wrapped seed failed authentication".to_owned()))?
            .len();
        buf.truncate(plain_len);
        Ok(SecretBytes::new(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SystemRandom;

    fn svc(byte: u8) -> LocalKeyService {
        LocalKeyService::new(
            &SecretBytes::new(vec![byte; 32]),
            Arc::new(SystemRandom::new().unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn wraps_and_unwraps() {
        let s = svc(7);
        let r = s.encrypt("u", &[9u8; 32]).unwrap();
        assert_eq!(r.key_id, s.status().unwrap().key_id);
        let req = DecryptRequest {
            ciphertext: r.ciphertext.clone(),
            key_id: r.key_id.clone(),
            annotations: BTreeMap::new(),
        };
        assert_eq!(s.decrypt("u", &req).unwrap().expose_secret(), &[9u8; 32]);
        // Another KEK refuses: different key_id, and a forged key_id fails authentication.
        let other = svc(8);
        assert!(other.decrypt("u", &req).is_err());
        let forged = DecryptRequest {
            key_id: other.key_id().to_owned(),
            ..req
        };
        assert!(other.decrypt("u", &forged).is_err());
    }

    #[test]
    fn every_flipped_byte_of_a_wrapped_seed_fails() {
        let s = svc(3);
        let r = s.encrypt("u", &[1u8; 32]).unwrap();
        for i in 0..r.ciphertext.len() {
            let mut c = r.ciphertext.clone();
            c[i] ^= 0x01;
            let req = DecryptRequest {
                ciphertext: c,
                key_id: r.key_id.clone(),
                annotations: BTreeMap::new(),
            };
            assert!(s.decrypt("u", &req).is_err(), "byte {i}");
        }
    }

    #[test]
    fn uid_is_uuid_shaped_and_unique() {
        let a = new_uid();
        let b = new_uid();
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
