//! The key-file backend: Coffer's default-key file (`coffer-default-key v1`, mode 0600) as the
//! KEK, for development and for moving a cluster that runs on `coffer serve`'s default key to
//! a plugin.
//!
//! Wrapping is [`coffer_seal::LocalKeyService`]'s, so the key_id is the default key's and
//! every seed `coffer serve` wrapped with that file opens here. More files may be given as
//! decrypt-only old keys. Loading refuses a file readable or writable by group or others
//! (the error names the file, its mode and `chmod 600`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_seal::key_service::{DecryptRequest, KeyService, KeyServiceError};
use coffer_seal::{DefaultKey, LocalKeyService, RandomSource, SystemRandom};
use zeroize::Zeroizing;

use super::backend::{Backend, Wrapped};
use super::PluginError;

/// The annotation value of key-file ciphertexts.
pub const KEY_FILE_FORMAT: &str = "coffer-local-key-v2";

/// A KEK from a key file, with optional decrypt-only old keys.
#[derive(Debug)]
pub struct KeyFileBackend {
    path: PathBuf,
    current: LocalKeyService,
    old: Vec<LocalKeyService>,
}

impl KeyFileBackend {
    /// Loads the current key file and the old ones (decrypt only).
    pub fn load(path: &Path, old: &[PathBuf]) -> Result<Self, PluginError> {
        let rng: Arc<dyn RandomSource> =
            Arc::new(SystemRandom::new().map_err(|e| PluginError::Internal(e.to_string()))?);
        let service = |p: &Path| -> Result<LocalKeyService, PluginError> {
            DefaultKey::load(p)?
                .key_service(rng.clone())
                .map_err(|e| PluginError::Config(format!("key file {}: {e}", p.display())))
        };
        Ok(Self {
            path: path.to_owned(),
            current: service(path)?,
            old: old.iter().map(|p| service(p)).collect::<Result<_, _>>()?,
        })
    }

    /// The current key_id (the default key's).
    pub fn key_id(&self) -> &str {
        self.current.key_id()
    }

    fn issued_by(&self, key_id: &str) -> Option<&LocalKeyService> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|s| s.key_id() == key_id)
    }
}

fn seal_error(e: KeyServiceError) -> PluginError {
    PluginError::InvalidArgument(e.to_string())
}

impl Backend for KeyFileBackend {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn format(&self) -> &'static str {
        KEY_FILE_FORMAT
    }

    fn accepts_unannotated(&self) -> bool {
        true
    }

    fn refresh(&self) -> Result<String, PluginError> {
        Ok(self.current.key_id().to_owned())
    }

    fn current_key_id(&self) -> Option<String> {
        Some(self.current.key_id().to_owned())
    }

    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, PluginError> {
        let r = self
            .current
            .encrypt("", plaintext)
            .map_err(|e| PluginError::Internal(format!("{}: wrap: {e}", self.describe())))?;
        Ok(Wrapped {
            ciphertext: r.ciphertext,
            key_id: r.key_id,
        })
    }

    fn unwrap(&self, key_id: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        let request = DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            key_id: key_id.to_owned(),
            annotations: BTreeMap::new(),
        };
        let open = |s: &LocalKeyService| {
            s.decrypt("", &request)
                .map(|plain| Zeroizing::new(plain.expose_secret().to_vec()))
        };
        if let Some(service) = self.issued_by(key_id) {
            return open(service).map_err(seal_error);
        }
        // A key_id of the first derivation (values written by early `coffer serve`s): each
        // service recognises its own.
        for service in std::iter::once(&self.current).chain(&self.old) {
            if let Ok(plain) = open(service) {
                return Ok(plain);
            }
        }
        Err(PluginError::NotFound(format!(
            "key_id {} was not issued by this plugin's key files",
            coffer_metrics::kms::key_id_hash(key_id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn same_key_id_as_the_default_key_and_reads_its_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.key");
        let key = DefaultKey::load_or_create(&path).unwrap();
        let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
        let serve = key.key_service(rng).unwrap();
        let backend = KeyFileBackend::load(&path, &[]).unwrap();
        assert_eq!(backend.key_id(), serve.key_id());
        let wrapped = serve.encrypt("u", &[7u8; 32]).unwrap();
        let opened = backend
            .unwrap(&wrapped.key_id, &wrapped.ciphertext)
            .unwrap();
        assert_eq!(opened.as_slice(), &[7u8; 32]);
        assert_eq!(
            super::super::backend::round_trip(&backend).unwrap(),
            serve.key_id()
        );
    }

    #[test]
    fn old_keys_decrypt_only_and_unknown_key_ids_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old.key");
        let new_path = dir.path().join("new.key");
        DefaultKey::load_or_create(&old_path).unwrap();
        DefaultKey::load_or_create(&new_path).unwrap();
        let old = KeyFileBackend::load(&old_path, &[]).unwrap();
        let sealed = old.wrap(&[1u8; 32]).unwrap();
        let both = KeyFileBackend::load(&new_path, std::slice::from_ref(&old_path)).unwrap();
        assert_ne!(both.key_id(), old.key_id());
        assert_eq!(both.wrap(&[2u8; 32]).unwrap().key_id, both.key_id());
        let opened = both.unwrap(&sealed.key_id, &sealed.ciphertext).unwrap();
        assert_eq!(opened.as_slice(), &[1u8; 32]);
        let only_new = KeyFileBackend::load(&new_path, &[]).unwrap();
        let e = only_new
            .unwrap(&sealed.key_id, &sealed.ciphertext)
            .unwrap_err();
        assert!(matches!(e, PluginError::NotFound(_)), "{e}");
        let mut bad = sealed.ciphertext.clone();
        bad[20] ^= 1;
        let e = both.unwrap(&sealed.key_id, &bad).unwrap_err();
        assert!(matches!(e, PluginError::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        DefaultKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyFileBackend::load(&path, &[]).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
