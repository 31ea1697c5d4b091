//! Coffer's default key: a 32-byte key-encryption key in a file, made on first start when no
//! `--encryption-provider-config` covers a key (decisions.md, "Encryption in coffer serve").
//!
//! Keys derived from the file's bytes ([`LocalKeys::derive`], HKDF-SHA256 with one label per
//! use) wrap KMS v2 seeds through [`LocalKeyService`] and give the public fingerprint and
//! key_id; values are stored as KMS v2 under the provider name [`PROVIDER_NAME`] (prefix
//! `k8s:enc:kms:v2:coffer-default:`), so a later `coffer kms-plugin` serving the same file
//! lets kube-apiserver read them. Values and data directories made by the first derivation
//! (the file key used directly) still open and match ([`DefaultKey::matches_fingerprint`]).
//!
//! File format (text, 0600, in a 0700 directory when Coffer creates the directory):
//!
//! ```text
//! coffer-default-key v1
//! <32 bytes, standard base64>
//! ```
//!
//! Creation writes a temporary file, fsyncs it, links it into place without replacing an
//! existing file, and fsyncs the directory. Loading refuses a file readable or writable by group
//! or others, a file of the wrong size and anything malformed, each with an error naming the
//! file. Only the [`DefaultKey::fingerprint`] (a keyed hash) is ever shown.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::key_service::{LocalKeyError, LocalKeyService, LocalKeys};
use crate::rng::RandomSource;
use crate::secret::SecretBytes;

/// The KMS v2 provider name of the default key.
pub const PROVIDER_NAME: &str = "coffer-default";
/// First line of the key file.
pub const HEADER: &str = "coffer-default-key v1";
/// Key size in bytes.
pub const KEY_LEN: usize = 32;
/// A key file is never larger than this.
const MAX_FILE_LEN: u64 = 1024;

/// What went wrong with the default key file. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefaultKeyError {
    /// A filesystem operation failed.
    #[error("default key file {path}: cannot {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What Coffer was doing.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is accessible to group or others.
    #[error("default key file {path} has mode {mode:04o}; it must be readable by its owner only (run: chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a Coffer key file.
    #[error("default key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key).
        reason: String,
    },
    /// The key has the wrong size.
    #[error("default key file {path} holds a {len}-byte key; expected {KEY_LEN} bytes")]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// The decoded size.
        len: usize,
    },
    /// The random source failed while generating a key.
    #[error("cannot generate a default key: {0}")]
    Random(String),
}

/// The default key, loaded or freshly created.
pub struct DefaultKey {
    keys: LocalKeys,
    path: PathBuf,
    created: bool,
}

/// The keys of a 32-byte file key (the size is checked by every caller first).
fn derive(key: &SecretBytes, path: &Path) -> Result<LocalKeys, DefaultKeyError> {
    LocalKeys::derive(key).map_err(|_| DefaultKeyError::WrongSize {
        path: path.to_owned(),
        len: key.len(),
    })
}

impl DefaultKey {
    /// Loads the key at `path`, or creates it (and its directory, 0700) if the file does not
    /// exist. Check [`DefaultKey::created`] to warn that a new key was made.
    pub fn load_or_create(path: &Path) -> Result<Self, DefaultKeyError> {
        match Self::load(path) {
            Err(DefaultKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                match Self::create(path) {
                    // Another process created it first: use theirs.
                    Err(DefaultKeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Self::load(path)
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Loads an existing key file; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, DefaultKeyError> {
        let io = |action| {
            move |source| DefaultKeyError::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let mut file = File::open(path).map_err(io("open it"))?;
        let meta = file.metadata().map_err(io("read its metadata"))?;
        if !meta.is_file() {
            return Err(DefaultKeyError::Malformed {
                path: path.to_owned(),
                reason: "not a regular file".to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DefaultKeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_FILE_LEN {
            return Err(DefaultKeyError::Malformed {
                path: path.to_owned(),
                reason: format!("{} bytes is too large for a key file", meta.len()),
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io("read it"))?;
        let malformed = |reason: &str| DefaultKeyError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed(&format!("the first line must be {HEADER:?}")));
        }
        let encoded = lines
            .next()
            .ok_or_else(|| malformed("the second line (the base64 key) is missing"))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(malformed("unexpected text after the key line"));
        }
        let key = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| malformed("the key line is not valid base64"))?,
        );
        if key.len() != KEY_LEN {
            return Err(DefaultKeyError::WrongSize {
                path: path.to_owned(),
                len: key.len(),
            });
        }
        Ok(Self {
            keys: derive(&SecretBytes::new(key.to_vec()), path)?,
            path: path.to_owned(),
            created: false,
        })
    }

    fn create(path: &Path) -> Result<Self, DefaultKeyError> {
        let io = |p: &Path, action| {
            let p = p.to_owned();
            move |source| DefaultKeyError::Io {
                path: p,
                action,
                source,
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir, "create its directory"))?;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(&mut key[..]).map_err(|e| DefaultKeyError::Random(e.to_string()))?;
        let text = Zeroizing::new(format!(
            "{HEADER}\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(&key[..])
        ));
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "key".to_owned());
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp, "create a temporary file"))?;
            f.write_all(text.as_bytes())
                .map_err(io(&tmp, "write the key"))?;
            f.sync_all().map_err(io(&tmp, "fsync the key"))?;
            // A hard link never replaces an existing key file.
            fs::hard_link(&tmp, path).map_err(io(path, "link the new key into place"))?;
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir, "fsync the directory"))?;
        Ok(Self {
            keys: derive(&SecretBytes::new(key.to_vec()), path)?,
            path: path.to_owned(),
            created: true,
        })
    }

    /// A key held only in memory (tests, benchmarks).
    pub fn from_secret(key: SecretBytes) -> Result<Self, DefaultKeyError> {
        if key.len() != KEY_LEN {
            return Err(DefaultKeyError::WrongSize {
                path: PathBuf::from("(memory)"),
                len: key.len(),
            });
        }
        let path = PathBuf::from("(memory)");
        Ok(Self {
            keys: derive(&key, &path)?,
            path,
            created: false,
        })
    }

    /// The public fingerprint (hex of an HMAC under a key derived from the file key; see
    /// [`LocalKeys`]): stable, never the key. Data directories record it.
    pub fn fingerprint(&self) -> String {
        self.keys.fingerprint().to_owned()
    }

    /// Whether a recorded fingerprint is this key's: the current one, or the one the first key
    /// derivation gave (data directories made before the derivation changed record that one).
    pub fn matches_fingerprint(&self, recorded: &str) -> bool {
        self.keys.matches_fingerprint(recorded)
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this call created the file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The in-process KMS v2 key service for this key.
    /// (The size was checked on load, so the error cannot happen in practice.)
    pub fn key_service(
        &self,
        rng: Arc<dyn RandomSource>,
    ) -> Result<LocalKeyService, LocalKeyError> {
        LocalKeyService::from_keys(&self.keys, rng)
    }
}

impl fmt::Debug for DefaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_0600_in_0700_dir_and_reloads_same_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys/sub/default.key");
        let k = DefaultKey::load_or_create(&path).unwrap();
        assert!(k.created());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&tmp.path().join("keys")), 0o700);
        let again = DefaultKey::load_or_create(&path).unwrap();
        assert!(!again.created());
        assert_eq!(k.fingerprint(), again.fingerprint());
        assert_eq!(k.fingerprint().len(), 64);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("coffer-default-key v1\n"));
        // Nothing but the path and the fingerprint is shown.
        let key_b64 = text.lines().nth(1).unwrap();
        assert!(!format!("{k:?}").contains(key_b64));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_group_or_world_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        DefaultKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = DefaultKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(e, DefaultKeyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    fn write(path: &Path, text: &str) {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn refuses_wrong_size_and_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        write(&path, "coffer-default-key v1\nAAAA\n");
        assert!(matches!(
            DefaultKey::load_or_create(&path).unwrap_err(),
            DefaultKeyError::WrongSize { len: 3, .. }
        ));
        for bad in [
            "",
            "garbage\n",
            "coffer-default-key v1\n",
            "coffer-default-key v1\n!!!notbase64!!!\n",
            "coffer-default-key v2\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            "coffer-default-key v1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nextra\n",
        ] {
            write(&path, bad);
            let e = DefaultKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(e, DefaultKeyError::Malformed { .. }),
                "{bad:?}: {e}"
            );
            // Never silently replaced.
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
        write(
            &path,
            "coffer-default-key v1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        );
        assert!(DefaultKey::load(&path).is_ok());
        assert!(DefaultKey::load(&tmp.path().join("missing")).is_err());
    }
}
