//! `aesgcm` and `aescbc` (upstream `encrypt/aes/aes.go`), one key each; the per-key
//! `<name>:` prefixes and the provider prefix are added by [`super::PrefixTransformers`].
//!
//! - aesgcm: `nonce(12) ‖ ciphertext ‖ tag(16)`, random nonce, the etcd key as additional data.
//!   AES-128/256 run on `ring`; AES-192 (which `ring` lacks) on RustCrypto's `aes-gcm`.
//! - aescbc: `iv(16) ‖ AES-CBC(PKCS#7(plaintext))`, no additional data and no integrity.
//!   Reads check padding as upstream does (any pad length up to the data, every pad byte equal)
//!   so a value reads the same as in kube-apiserver, except that an IV-only payload is an error
//!   where upstream panics.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};

use super::{Read, Source, Transformer};
use crate::error::{BuildError, TransformError};
use crate::rng::RandomSource;
use crate::secret::SecretBytes;
use crate::write_limit::{KeyCounter, WriteCounters};

/// GCM nonce size.
pub const GCM_NONCE_LEN: usize = 12;
/// GCM tag size.
pub const GCM_TAG_LEN: usize = 16;
/// AES block size (and CBC IV size).
pub const BLOCK_LEN: usize = 16;

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, U12>;

/// An AES-GCM key of 16, 24 or 32 bytes, ready to use.
pub(crate) enum GcmKey {
    Ring(Box<LessSafeKey>),
    Aes192(Box<Aes192Gcm>),
}

impl GcmKey {
    /// A key as Go's `aes.NewCipher` accepts: 16, 24 or 32 bytes.
    pub(crate) fn new(key: &[u8]) -> Result<Self, TransformError> {
        let ring_key = |alg| {
            UnboundKey::new(alg, key)
                .map(|k| GcmKey::Ring(Box::new(LessSafeKey::new(k))))
                .map_err(|_| TransformError::InvalidKeySize(key.len()))
        };
        match key.len() {
            16 => ring_key(&AES_128_GCM),
            32 => ring_key(&AES_256_GCM),
            24 => Aes192Gcm::new_from_slice(key)
                .map(|k| GcmKey::Aes192(Box::new(k)))
                .map_err(|_| TransformError::InvalidKeySize(24)),
            n => Err(TransformError::InvalidKeySize(n)),
        }
    }

    /// From a ring key (HKDF output).
    pub(crate) fn from_ring(key: LessSafeKey) -> Self {
        GcmKey::Ring(Box::new(key))
    }

    /// Appends `nonce ‖ ciphertext ‖ tag` to `out`, encrypting in place inside `out`.
    pub(crate) fn seal_append(
        &self,
        nonce: [u8; GCM_NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self {
            GcmKey::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut out[start..],
                    )
                    .map_err(|_| TransformError::EncryptFailed("AES-GCM refused the input"))?;
                out.extend_from_slice(tag.as_ref());
            }
            GcmKey::Aes192(k) => {
                let tag = k
                    .encrypt_in_place_detached(
                        GenericArray::from_slice(&nonce),
                        aad,
                        &mut out[start..],
                    )
                    .map_err(|_| TransformError::EncryptFailed("AES-GCM refused the input"))?;
                out.extend_from_slice(&tag);
            }
        }
        Ok(())
    }

    /// Opens `buf[nonce_at..]` = `nonce ‖ ciphertext ‖ tag` in place; on success `buf` holds
    /// exactly the plaintext. Go's `gcm.Open` rules: short nonce → [`TransformError::ShortData`],
    /// anything else wrong (including a short tag) → authentication failure.
    pub(crate) fn open_within(
        &self,
        buf: &mut Vec<u8>,
        nonce_at: usize,
        aad: &[u8],
    ) -> Result<(), TransformError> {
        let ct_at = nonce_at + GCM_NONCE_LEN;
        if buf.len() < ct_at {
            return Err(TransformError::ShortData);
        }
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&buf[nonce_at..ct_at]);
        if buf.len() - ct_at < GCM_TAG_LEN {
            return Err(TransformError::AuthenticationFailed);
        }
        match self {
            GcmKey::Ring(k) => {
                let len = k
                    .open_within(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        buf,
                        ct_at..,
                    )
                    .map_err(|_| TransformError::AuthenticationFailed)?
                    .len();
                buf.truncate(len);
            }
            GcmKey::Aes192(k) => {
                let tag_at = buf.len() - GCM_TAG_LEN;
                let tag = *GenericArray::from_slice(&buf[tag_at..]);
                k.decrypt_in_place_detached(
                    GenericArray::from_slice(&nonce),
                    aad,
                    &mut buf[ct_at..tag_at],
                    &tag,
                )
                .map_err(|_| TransformError::AuthenticationFailed)?;
                buf.copy_within(ct_at..tag_at, 0);
                buf.truncate(tag_at - ct_at);
            }
        }
        Ok(())
    }

    /// Opens `data` = `nonce ‖ ciphertext ‖ tag` into a new buffer.
    pub(crate) fn open(&self, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, TransformError> {
        if data.len() < GCM_NONCE_LEN {
            return Err(TransformError::ShortData);
        }
        let mut buf = data.to_vec();
        self.open_within(&mut buf, 0, aad)?;
        Ok(buf)
    }
}

impl fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GcmKey([redacted])")
    }
}

/// The `aesgcm` transformer for one key. Counts its writes and refuses them at the write limit
/// ([`crate::write_limit`]).
pub struct AesGcm {
    key: GcmKey,
    rng: Arc<dyn RandomSource>,
    source: Source,
    writes: Arc<KeyCounter>,
}

impl AesGcm {
    /// One aesgcm key (16, 24 or 32 bytes) named `name`, counted in `counters`.
    pub fn new(
        name: &str,
        secret: &SecretBytes,
        rng: Arc<dyn RandomSource>,
        label: Arc<str>,
        counters: &WriteCounters,
    ) -> Result<Self, BuildError> {
        let key = GcmKey::new(secret.expose_secret()).map_err(|_| BuildError::KeySize {
            provider: "aesgcm",
            name: String::new(),
            len: secret.len(),
            expected: "[16 24 32]",
        })?;
        Ok(Self {
            key,
            rng,
            source: Source::new(label),
            writes: counters.counter(name, secret),
        })
    }
}

impl fmt::Debug for AesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesGcm")
            .field("label", self.source.label())
            .field("key", &crate::error::Redacted("key"))
            .finish()
    }
}

impl Transformer for AesGcm {
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError> {
        Ok(self.source.read(self.key.open(data, etcd_key)?, false))
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        self.writes.admit()?;
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        self.key.seal_append(nonce, etcd_key, plaintext, out)
    }

    fn overhead(&self) -> usize {
        GCM_NONCE_LEN + GCM_TAG_LEN + 32
    }
}

/// An AES block cipher of 16, 24 or 32 bytes for CBC.
#[derive(Clone)]
pub(crate) enum CbcKey {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl CbcKey {
    pub(crate) fn new(key: &[u8]) -> Result<Self, TransformError> {
        use aes::cipher::KeyInit as _;
        let bad = |_| TransformError::InvalidKeySize(key.len());
        Ok(match key.len() {
            16 => CbcKey::A128(aes::Aes128::new_from_slice(key).map_err(bad)?),
            24 => CbcKey::A192(aes::Aes192::new_from_slice(key).map_err(bad)?),
            32 => CbcKey::A256(aes::Aes256::new_from_slice(key).map_err(bad)?),
            n => return Err(TransformError::InvalidKeySize(n)),
        })
    }

    /// Appends `iv ‖ CBC(PKCS#7(plaintext))` to `out`.
    pub(crate) fn seal_append(
        &self,
        iv: [u8; BLOCK_LEN],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        out.extend_from_slice(&iv);
        let start = out.len();
        let padded = (plaintext.len() / BLOCK_LEN + 1) * BLOCK_LEN;
        out.extend_from_slice(plaintext);
        out.resize(start + padded, 0);
        let buf = &mut out[start..];
        let iv = GenericArray::from_slice(&iv);
        let n = plaintext.len();
        let res = match self {
            CbcKey::A128(c) => cbc::Encryptor::inner_iv_init(c.clone(), iv)
                .encrypt_padded_mut::<Pkcs7>(buf, n)
                .map(|_| ()),
            CbcKey::A192(c) => cbc::Encryptor::inner_iv_init(c.clone(), iv)
                .encrypt_padded_mut::<Pkcs7>(buf, n)
                .map(|_| ()),
            CbcKey::A256(c) => cbc::Encryptor::inner_iv_init(c.clone(), iv)
                .encrypt_padded_mut::<Pkcs7>(buf, n)
                .map(|_| ()),
        };
        res.map_err(|_| TransformError::EncryptFailed("AES-CBC padding failed"))
    }

    /// Upstream's CBC read: `iv(16) ‖ blocks`, PKCS#7 checked as Go does.
    pub(crate) fn open(&self, data: &[u8]) -> Result<Vec<u8>, TransformError> {
        if data.len() < BLOCK_LEN {
            return Err(TransformError::ShortData);
        }
        let (iv, body) = data.split_at(BLOCK_LEN);
        if !body.len().is_multiple_of(BLOCK_LEN) {
            return Err(TransformError::NotBlockMultiple);
        }
        if body.is_empty() {
            // Upstream indexes result[-1] here and panics (neg-aescbc-iv-only).
            return Err(TransformError::InvalidPkcs7Data);
        }
        let mut buf = body.to_vec();
        let iv = GenericArray::from_slice(iv);
        let ok = match self {
            CbcKey::A128(c) => cbc::Decryptor::inner_iv_init(c.clone(), iv)
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .is_ok(),
            CbcKey::A192(c) => cbc::Decryptor::inner_iv_init(c.clone(), iv)
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .is_ok(),
            CbcKey::A256(c) => cbc::Decryptor::inner_iv_init(c.clone(), iv)
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .is_ok(),
        };
        if !ok {
            return Err(TransformError::NotBlockMultiple);
        }
        let pad = usize::from(buf[buf.len() - 1]);
        if pad == 0 || pad > buf.len() {
            return Err(TransformError::InvalidPkcs7Data);
        }
        let size = buf.len() - pad;
        if buf[size..].iter().any(|&b| usize::from(b) != pad) {
            return Err(TransformError::InvalidPadding);
        }
        buf.truncate(size);
        Ok(buf)
    }
}

impl fmt::Debug for CbcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CbcKey([redacted])")
    }
}

/// The `aescbc` transformer for one key.
pub struct AesCbc {
    key: CbcKey,
    rng: Arc<dyn RandomSource>,
    source: Source,
}

impl AesCbc {
    /// One aescbc key (16, 24 or 32 bytes, as upstream accepts).
    pub fn new(
        secret: &SecretBytes,
        rng: Arc<dyn RandomSource>,
        label: Arc<str>,
    ) -> Result<Self, BuildError> {
        let key = CbcKey::new(secret.expose_secret()).map_err(|_| BuildError::KeySize {
            provider: "aescbc",
            name: String::new(),
            len: secret.len(),
            expected: "[16 24 32]",
        })?;
        Ok(Self {
            key,
            rng,
            source: Source::new(label),
        })
    }
}

impl fmt::Debug for AesCbc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesCbc")
            .field("label", self.source.label())
            .field("key", &crate::error::Redacted("key"))
            .finish()
    }
}

impl Transformer for AesCbc {
    fn from_storage(&self, data: &[u8], _etcd_key: &[u8]) -> Result<Read, TransformError> {
        Ok(self.source.read(self.key.open(data)?, false))
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        _etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let mut iv = [0u8; BLOCK_LEN];
        self.rng.fill(&mut iv)?;
        self.key.seal_append(iv, plaintext, out)
    }

    fn overhead(&self) -> usize {
        2 * BLOCK_LEN + 32
    }
}

#[cfg(test)]
mod tests {
    /// The RustCrypto key schedules wipe themselves on drop (the workspace enables their
    /// `zeroize` features; without them this does not compile). ring's AES-GCM keys cannot.
    #[test]
    fn rustcrypto_key_schedules_are_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<aes::Aes128>();
        wiped::<aes::Aes192>();
        wiped::<aes::Aes256>();
        wiped::<cbc::Encryptor<aes::Aes256>>();
        wiped::<cbc::Decryptor<aes::Aes128>>();
    }
}
