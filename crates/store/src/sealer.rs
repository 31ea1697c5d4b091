//! How the store seals values before they reach the engine and opens them after: the
//! [`Sealer`] trait, and its implementation for `coffer_seal`'s keyspace (every value goes
//! through kube-apiserver's formats, the etcd key as authenticated data).
//!
//! Errors from a sealer carry a reason for operators; they must never contain a value or key
//! material.

/// Seals and opens values. The etcd key is passed so formats that authenticate it can.
pub trait Sealer: Send + Sync + 'static {
    /// Seals `plaintext` stored at `key`; the result is what goes to disk.
    fn seal(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String>;
    /// Opens `stored` bytes read from `key`, returning the plaintext.
    fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String>;
    /// Writes sealed so far under each key whose writes are counted (aesgcm's nonce budget),
    /// by a counter id that names the key without revealing it. The store persists them in
    /// every commit.
    fn write_counts(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// Raises the counters to the persisted counts (at start).
    fn restore_write_counts(&self, counts: &[(String, u64)]) {
        let _ = counts;
    }
    /// [`Sealer::seal`], saying when the failure is a KMS plugin that is unavailable (the
    /// caller may retry later) rather than a fault of the value or the configuration.
    fn seal_detailed(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealFailure> {
        self.seal(key, plaintext).map_err(|reason| SealFailure {
            reason,
            kms_unavailable: None,
        })
    }
}

/// Why [`Sealer::seal_detailed`] failed.
#[derive(Debug, Clone)]
pub struct SealFailure {
    /// The seal's message (names providers and failures, never values).
    pub reason: String,
    /// The KMS provider (its configured name) whose plugin is unavailable, when that is why.
    pub kms_unavailable: Option<String>,
}

/// The real sealer: kube-apiserver's formats through `coffer_seal`'s keyspace. Errors carry
/// the seal crate's messages, which name providers and failures, never values or keys.
impl Sealer for coffer_seal::Keyspace {
    fn seal(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        coffer_seal::Keyspace::seal(self, key, plaintext).map_err(|e| e.to_string())
    }

    fn seal_detailed(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealFailure> {
        use coffer_seal::TransformError as T;
        coffer_seal::Keyspace::seal(self, key, plaintext).map_err(|e| SealFailure {
            reason: e.to_string(),
            kms_unavailable: match &e.cause {
                T::KmsV2NoWriteState { name, .. } | T::KmsV2WritesStopped { name, .. } => {
                    Some(name.clone())
                }
                _ => None,
            },
        })
    }

    fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        coffer_seal::Keyspace::open(self, key, stored)
            .map(|o| o.plaintext)
            .map_err(|e| e.to_string())
    }

    fn write_counts(&self) -> Vec<(String, u64)> {
        coffer_seal::Keyspace::write_counts(self)
            .into_iter()
            .map(|c| (c.counter_id, c.writes))
            .collect()
    }

    fn restore_write_counts(&self, counts: &[(String, u64)]) {
        let counts: Vec<coffer_seal::WriteCount> = counts
            .iter()
            .map(|(id, n)| coffer_seal::WriteCount {
                counter_id: id.clone(),
                writes: *n,
            })
            .collect();
        coffer_seal::Keyspace::restore_write_counts(self, &counts);
    }
}
