//! What the gRPC service needs from a key-encryption-key store: wrap a seed under the current
//! KEK, unwrap one under any KEK it issued, and say which KEK is current.
//!
//! Calls block (a PKCS#11 token answers synchronously); the service runs them on tokio's
//! blocking pool. Implementations are [`super::Pkcs11Backend`] and
//! [`super::KeyFileBackend`].

use std::fmt;

use zeroize::Zeroizing;

use super::PluginError;

/// A seed wrapped under the current KEK.
#[derive(Debug, Clone)]
pub struct Wrapped {
    /// The wrapped bytes (stored by kube-apiserver as `encryptedDEKSource`, ≤ 1024 bytes).
    pub ciphertext: Vec<u8>,
    /// The key_id of the KEK that wrapped them.
    pub key_id: String,
}

/// A store of key-encryption keys.
pub trait Backend: Send + Sync + fmt::Debug {
    /// What the backend is, for logs and errors (`PKCS#11 token "kms"`, `key file /etc/k`).
    fn describe(&self) -> String;

    /// The value of the [`super::FORMAT_ANNOTATION`] on this backend's ciphertexts.
    fn format(&self) -> &'static str;

    /// Whether Decrypt accepts ciphertexts without the format annotation (the key file's, which
    /// `coffer serve` wrote without one).
    fn accepts_unannotated(&self) -> bool;

    /// Reloads the list of KEKs (a `rotate` by another process shows up here) and returns the
    /// current key_id. Fails when the backend cannot be reached or its current KEK is gone.
    fn refresh(&self) -> Result<String, PluginError>;

    /// The last key_id [`Backend::refresh`] reported, kept through outages (a key_id must not
    /// change because the backend is down).
    fn current_key_id(&self) -> Option<String>;

    /// Wraps `plaintext` under the current KEK.
    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, PluginError>;

    /// Unwraps `ciphertext` with the KEK `key_id` names. A key_id this backend did not issue
    /// is [`PluginError::NotFound`]; a ciphertext that does not authenticate is
    /// [`PluginError::InvalidArgument`].
    fn unwrap(&self, key_id: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError>;
}

/// One health probe through a backend: reload the KEK list, wrap 32 random bytes, unwrap them
/// and compare. Returns the current key_id.
pub fn round_trip(backend: &dyn Backend) -> Result<String, PluginError> {
    let key_id = backend.refresh()?;
    let mut probe = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut probe[..])
        .map_err(|_| PluginError::Internal("the system random source failed".to_owned()))?;
    let wrapped = backend.wrap(&probe[..])?;
    if wrapped.key_id != key_id {
        return Err(PluginError::Unavailable(format!(
            "{}: the current key changed during the health check",
            backend.describe()
        )));
    }
    let opened = backend.unwrap(&wrapped.key_id, &wrapped.ciphertext)?;
    if opened.as_slice() != &probe[..] {
        return Err(PluginError::Internal(format!(
            "{}: unwrapping the health probe gave different bytes",
            backend.describe()
        )));
    }
    Ok(key_id)
}
