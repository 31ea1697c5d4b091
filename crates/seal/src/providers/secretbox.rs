//! `secretbox` (upstream `encrypt/secretbox/secretbox.go`): NaCl secretbox, XSalsa20-Poly1305
//! with a 32-byte key; stored as `nonce(24) ‖ tag(16) ‖ ciphertext`. No additional data, so a
//! value copied under another etcd key still opens (as upstream).

use std::fmt;
use std::sync::Arc;

use crypto_secretbox::aead::generic_array::GenericArray;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;

use super::{Read, Source, Transformer};
use crate::error::{BuildError, TransformError};
use crate::rng::RandomSource;
use crate::secret::SecretBytes;

/// Nonce size.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag size (`secretbox.Overhead`).
pub const TAG_LEN: usize = 16;

/// The `secretbox` transformer for one key.
pub struct Secretbox {
    cipher: XSalsa20Poly1305,
    rng: Arc<dyn RandomSource>,
    source: Source,
}

impl Secretbox {
    /// One secretbox key (exactly 32 bytes).
    pub fn new(
        secret: &SecretBytes,
        rng: Arc<dyn RandomSource>,
        label: Arc<str>,
    ) -> Result<Self, BuildError> {
        let err = || BuildError::KeySize {
            provider: "secretbox",
            name: String::new(),
            len: secret.len(),
            expected: "[32]",
        };
        if secret.len() != 32 {
            return Err(err());
        }
        let cipher = XSalsa20Poly1305::new_from_slice(secret.expose_secret()).map_err(|_| err())?;
        Ok(Self {
            cipher,
            rng,
            source: Source::new(label),
        })
    }
}

impl fmt::Debug for Secretbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secretbox")
            .field("label", self.source.label())
            .field("key", &crate::error::Redacted("key"))
            .finish()
    }
}

impl Transformer for Secretbox {
    fn from_storage(&self, data: &[u8], _etcd_key: &[u8]) -> Result<Read, TransformError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(TransformError::ShortData);
        }
        let nonce = GenericArray::from_slice(&data[..NONCE_LEN]);
        let tag = GenericArray::from_slice(&data[NONCE_LEN..NONCE_LEN + TAG_LEN]);
        let mut buf = data[NONCE_LEN + TAG_LEN..].to_vec();
        self.cipher
            .decrypt_in_place_detached(nonce, b"", &mut buf, tag)
            .map_err(|_| TransformError::SecretboxOpenFailed)?;
        Ok(self.source.read(buf, false))
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        _etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        out.extend_from_slice(&nonce);
        let tag_at = out.len();
        out.extend_from_slice(&[0u8; TAG_LEN]);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut out[start..])
            .map_err(|_| TransformError::EncryptFailed("secretbox refused the input"))?;
        out[tag_at..start].copy_from_slice(&tag);
        Ok(())
    }

    fn overhead(&self) -> usize {
        NONCE_LEN + TAG_LEN + 32
    }
}
