//! The KMS plugin seen from seal: [`KeyService`] (KMS v2's Status/Encrypt/Decrypt, synchronous
//! because seal has no async runtime) and [`KeyServiceV1`] (KMS v1's Decrypt, read only).
//!
//! The gRPC client over a unix socket implements these traits in another crate. Here live the
//! traits, the message types, the connector that hands a provider its plugin
//! ([`KmsConnector`]), and [`LocalKeyService`]: Coffer's in-process key service that wraps
//! seeds with a key derived from a local 32-byte key file (the default key of `coffer serve`;
//! [`LocalKeys`] is the derivation).
//!
//! Zeroization: the file key and the derived keys live in zeroizing buffers, but the wrap keys
//! are expanded into ring's `LessSafeKey` (and the fingerprint/key_id keys into ring HMAC
//! states), which ring does not wipe on drop. Acceptable: these keys live as long as the
//! process, so a reader of its memory finds them live anyway; wiping on drop only helps against
//! a later leak of freed memory, and ring's constant-time AES-NI/CLMUL code is worth more.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

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

/// HKDF-SHA256 salt of the local key derivation (a fixed label: the file key is already uniform).
const DERIVE_SALT: &[u8] = b"coffer local key v2";
/// HKDF info of the key that wraps seeds.
const WRAP_KEY_INFO: &[u8] = b"coffer local key v2 wrap";
/// HKDF info of the key behind the public fingerprint.
const FINGERPRINT_KEY_INFO: &[u8] = b"coffer local key v2 fingerprint";
/// HKDF info of the key behind the public KMS v2 key_id.
const KEY_ID_KEY_INFO: &[u8] = b"coffer local key v2 key_id";
/// Message of the fingerprint HMAC.
const FINGERPRINT_LABEL: &[u8] = b"coffer fingerprint v2";
/// Message of the key_id HMAC.
const KEY_ID_LABEL: &[u8] = b"coffer key_id v2";
/// First derivation (read only): HMAC-SHA256(file key, this) was both fingerprint and key_id.
const LEGACY_FINGERPRINT_LABEL: &[u8] = b"coffer fingerprint v1";
/// Additional data of the seed wrapping, binding wrapped seeds to this scheme.
const WRAP_AAD: &[u8] = b"coffer local kek wrap v1";
/// First byte of a seed wrapped with the derived wrap key (written).
const WRAP_VERSION: u8 = 2;
/// First byte of a seed wrapped with the file key itself by the first derivation (read only).
const LEGACY_WRAP_VERSION: u8 = 1;

/// Everything made from a local key file's 32 bytes. [`LocalKeys::derive`] is the one place
/// the derivation lives, so the default key, `coffer serve` and a future KMS plugin serving the
/// same key file agree.
///
/// HKDF-SHA256 (salt `coffer local key v2`) expands the file key into three independent keys,
/// one per use: the AES-256-GCM key that wraps seeds, and the HMAC keys of the fingerprint and
/// of the key_id. So the file key never meets a cipher, and the two public values are unrelated
/// to each other and to the wrap key. Data written by the first derivation (the file key as
/// wrap key, wrap byte `0x01`; one HMAC of the file key as fingerprint and key_id) stays
/// readable: those values and that fingerprint are kept under `legacy_*`.
pub struct LocalKeys {
    wrap: Zeroizing<[u8; 32]>,
    fingerprint: String,
    key_id: String,
    legacy_wrap: SecretBytes,
    legacy_fingerprint: String,
}

impl LocalKeys {
    /// Derives the keys of a 32-byte file key.
    pub fn derive(file_key: &SecretBytes) -> Result<Self, LocalKeyError> {
        if file_key.len() != 32 {
            return Err(LocalKeyError::KeySize(file_key.len()));
        }
        let [wrap, fingerprint_key, key_id_key] = expand_keys(file_key)?;
        let label_mac = |key: &[u8], label: &[u8]| {
            hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label).as_ref())
        };
        Ok(Self {
            wrap,
            fingerprint: label_mac(&fingerprint_key[..], FINGERPRINT_LABEL),
            key_id: label_mac(&key_id_key[..], KEY_ID_LABEL),
            legacy_wrap: file_key.clone(),
            legacy_fingerprint: label_mac(file_key.expose_secret(), LEGACY_FINGERPRINT_LABEL),
        })
    }

    /// The public fingerprint (hex): what the data directory records and logs show.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The first derivation's fingerprint (hex), which data directories made before the
    /// derivation changed still record; it was also the key_id of their values.
    pub fn legacy_fingerprint(&self) -> &str {
        &self.legacy_fingerprint
    }

    /// The KMS v2 key_id (public, stored in clear in every value).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `recorded` is this key's fingerprint, current or first derivation.
    pub fn matches_fingerprint(&self, recorded: &str) -> bool {
        recorded == self.fingerprint || recorded == self.legacy_fingerprint
    }
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeys")
            .field("fingerprint", &self.fingerprint)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// HKDF-SHA256 of the file key: the wrap key, the fingerprint key and the key_id key.
fn expand_keys(file_key: &SecretBytes) -> Result<[Zeroizing<[u8; 32]>; 3], LocalKeyError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(file_key.expose_secret());
    let expand = |info: &[u8]| {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            .map_err(|_| LocalKeyError::KeySize(file_key.len()))?;
        Ok(out)
    };
    Ok([
        expand(WRAP_KEY_INFO)?,
        expand(FINGERPRINT_KEY_INFO)?,
        expand(KEY_ID_KEY_INFO)?,
    ])
}

/// An in-process KMS v2 key service holding a local 32-byte key (Coffer's default key).
///
/// The keys come from [`LocalKeys::derive`]. Encrypt wraps the 32-byte seed as
/// `0x02 ‖ nonce(12) ‖ AES-256-GCM(wrap key, seed)` and reports the derived key_id. Decrypt
/// also opens what the first derivation wrote (`0x01 ‖ nonce ‖ AES-256-GCM(file key, seed)`
/// under the first key_id), and refuses key_ids it did not issue, as the KMS plugin contract
/// asks. A later `coffer kms-plugin` serving the same key file gives the same key_id and reads
/// the same data.
pub struct LocalKeyService {
    wrap: LessSafeKey,
    legacy_wrap: LessSafeKey,
    key_id: String,
    legacy_key_id: String,
    rng: Arc<dyn RandomSource>,
}

/// Why a [`LocalKeyService`] could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LocalKeyError {
    /// The key must be 32 bytes.
    #[error("a local key-encryption key must be 32 bytes, got {0}")]
    KeySize(usize),
}

impl LocalKeyService {
    /// A key service for the 32-byte file key `kek`, drawing wrap nonces from `rng`.
    pub fn new(kek: &SecretBytes, rng: Arc<dyn RandomSource>) -> Result<Self, LocalKeyError> {
        Self::from_keys(&LocalKeys::derive(kek)?, rng)
    }

    /// A key service for keys already derived.
    pub fn from_keys(keys: &LocalKeys, rng: Arc<dyn RandomSource>) -> Result<Self, LocalKeyError> {
        let aes = |k: &[u8]| {
            UnboundKey::new(&AES_256_GCM, k)
                .map(LessSafeKey::new)
                .map_err(|_| LocalKeyError::KeySize(k.len()))
        };
        Ok(Self {
            wrap: aes(&keys.wrap[..])?,
            legacy_wrap: aes(keys.legacy_wrap.expose_secret())?,
            key_id: keys.key_id.clone(),
            legacy_key_id: keys.legacy_fingerprint.clone(),
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
            .wrap
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
        // Each key_id was only ever issued with its own wrap format.
        let (wrap, version) = if request.key_id == self.key_id {
            (&self.wrap, WRAP_VERSION)
        } else if request.key_id == self.legacy_key_id {
            (&self.legacy_wrap, LEGACY_WRAP_VERSION)
        } else {
            return Err(KeyServiceError::Failed(format!(
                "key_id {:?} was not issued by this key (its key_id is {:?})",
                request.key_id, self.key_id
            )));
        };
        let c = &request.ciphertext;
        if c.len() < 1 + NONCE_LEN + 16 || c[0] != version {
            return Err(KeyServiceError::Failed(
                "wrapped seed is malformed (not written by a Coffer local key)".to_owned(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&c[1..1 + NONCE_LEN]);
        let mut buf = c[1 + NONCE_LEN..].to_vec();
        let plain_len = wrap
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
    fn derived_keys_differ_from_each_other_and_from_the_file_key() {
        for byte in [0u8, 7, 0xff] {
            let file = SecretBytes::new(vec![byte; 32]);
            let [wrap, fp, kid] = expand_keys(&file).unwrap();
            let all = [file.expose_secret(), &wrap[..], &fp[..], &kid[..]];
            for i in 0..all.len() {
                for j in i + 1..all.len() {
                    assert_ne!(all[i], all[j], "keys {i} and {j} of file key {byte}");
                }
            }
            let keys = LocalKeys::derive(&file).unwrap();
            assert_eq!(&keys.wrap[..], &wrap[..]);
            let public = [keys.fingerprint(), keys.key_id(), keys.legacy_fingerprint()];
            assert_eq!(
                public
                    .iter()
                    .collect::<std::collections::HashSet<_>>()
                    .len(),
                3
            );
            assert!(public.iter().all(|p| p.len() == 64));
            assert!(keys.matches_fingerprint(keys.fingerprint()));
            assert!(keys.matches_fingerprint(keys.legacy_fingerprint()));
            assert!(!keys.matches_fingerprint(keys.key_id()));
            // Stable: the same file key derives the same keys.
            let again = LocalKeys::derive(&file).unwrap();
            assert_eq!(&again.wrap[..], &wrap[..]);
            assert_eq!(again.fingerprint(), keys.fingerprint());
        }
        assert!(LocalKeys::derive(&SecretBytes::new(vec![1; 16])).is_err());
    }

    #[test]
    fn writes_the_derived_wrap_and_reads_the_first_derivation() {
        let file = SecretBytes::new(vec![5; 32]);
        let s = LocalKeyService::new(&file, Arc::new(SystemRandom::new().unwrap())).unwrap();
        let keys = LocalKeys::derive(&file).unwrap();
        let r = s.encrypt("u", &[9u8; 32]).unwrap();
        assert_eq!(r.ciphertext[0], 2);
        assert_eq!(r.key_id, keys.key_id());
        // The wrap key is not the file key: the file key cannot open a new wrap.
        let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, file.expose_secret()).unwrap());
        let mut body = r.ciphertext[13..].to_vec();
        let nonce = Nonce::try_assume_unique_for_key(&r.ciphertext[1..13]).unwrap();
        assert!(raw
            .open_in_place(nonce, Aad::from(WRAP_AAD), &mut body)
            .is_err());
        // A seed wrapped the first way (file key, byte 0x01, first key_id) still opens.
        let mut old = vec![1u8];
        old.extend_from_slice(&[3u8; 12]);
        let mut seed = vec![4u8; 32];
        let tag = raw
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([3u8; 12]),
                Aad::from(WRAP_AAD),
                &mut seed,
            )
            .unwrap();
        old.extend_from_slice(&seed);
        old.extend_from_slice(tag.as_ref());
        let req = |ciphertext: Vec<u8>, key_id: &str| DecryptRequest {
            ciphertext,
            key_id: key_id.to_owned(),
            annotations: BTreeMap::new(),
        };
        let opened = s.decrypt("u", &req(old.clone(), keys.legacy_fingerprint()));
        assert_eq!(opened.unwrap().expose_secret(), &[4u8; 32]);
        // Each key_id only with its own format.
        assert!(s.decrypt("u", &req(old, keys.key_id())).is_err());
        assert!(s
            .decrypt("u", &req(r.ciphertext.clone(), keys.legacy_fingerprint()))
            .is_err());
        assert!(s.decrypt("u", &req(r.ciphertext, keys.key_id())).is_ok());
    }

    #[test]
    fn uid_is_uuid_shaped_and_unique() {
        let a = new_uid();
        let b = new_uid();
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
