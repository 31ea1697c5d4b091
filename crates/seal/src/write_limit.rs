//! Write counts per `aesgcm` key, and the limit that makes Coffer refuse to seal under a key.
//!
//! aesgcm draws a random 96-bit nonce per write, so two writes under one key collide with a
//! probability that grows with the square of the writes: NIST SP 800-38D caps random nonces at
//! 2^32 per key, and Kubernetes' documentation says to rotate an aesgcm key every 200,000
//! writes. Coffer sees every write, so it counts them (one atomic per key, in memory):
//!
//! - from [`WriteLimits::warn_from`] writes on, a `tracing` warning at the crossing and then
//!   every [`WriteLimits::warn_every`] writes, with the rotation steps;
//! - at [`WriteLimits::refuse_at`] writes, new seals under the key fail with
//!   [`TransformError::WriteLimitReached`] (reads keep working).
//!
//! The default hard limit is 2^32 − 2^24: the store persists the counts from time to time, so a
//! crash or a restored backup can forget the writes since the last persisted count, and the
//! margin of 2^24 (16.7 million writes) keeps the true count under 2^32 through such losses.
//!
//! Counters are identified by `aesgcm/<key name>/<16 hex digits>`: the hex is the first 8 bytes
//! of HMAC-SHA256(key, "coffer aesgcm write counter v1"), stable for a key across restarts,
//! different for two keys with the same name, and (a keyed PRF, truncated) revealing nothing of
//! the key. Two names for the same key bytes share one count, since the nonce space is the key's.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ring::hmac;

use crate::error::TransformError;
use crate::secret::SecretBytes;

/// Kubernetes' advice: rotate an aesgcm key every 200,000 writes.
pub const DEFAULT_WARN_FROM: u64 = 200_000;
/// After the first warning, one more every this many writes.
pub const DEFAULT_WARN_EVERY: u64 = 100_000;
/// 2^32 (the random-nonce bound per key) minus a 2^24 margin for counts lost in a crash.
pub const DEFAULT_REFUSE_AT: u64 = (1 << 32) - (1 << 24);

/// What an operator does when an aesgcm key has sealed too many values.
pub const ROTATION_STEPS: &str = "rotate the key: add a new key FIRST in the aesgcm provider's \
    keys list (keep the old one after it for reads), restart or reload coffer, then re-encrypt \
    the old values with `coffer rotate` (or `kubectl get secrets -A -o json | kubectl replace -f -`) \
    and remove the old key once nothing uses it";

/// Label of the HMAC that names a key's counter.
const COUNTER_LABEL: &[u8] = b"coffer aesgcm write counter v1";

/// The thresholds of the write counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// First write count that logs a warning.
    pub warn_from: u64,
    /// Writes between two further warnings (at least 1).
    pub warn_every: u64,
    /// Write count at which new seals under the key are refused.
    pub refuse_at: u64,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            warn_from: DEFAULT_WARN_FROM,
            warn_every: DEFAULT_WARN_EVERY,
            refuse_at: DEFAULT_REFUSE_AT,
        }
    }
}

/// One counted key's writes, as the store persists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteCount {
    /// `aesgcm/<key name>/<16 hex digits>`: stable per key, reveals nothing of it.
    pub counter_id: String,
    /// Values sealed under the key.
    pub writes: u64,
}

/// The limits, shared by every counter of a keyspace and changeable at run time.
#[derive(Debug)]
struct SharedLimits {
    warn_from: AtomicU64,
    warn_every: AtomicU64,
    refuse_at: AtomicU64,
}

impl SharedLimits {
    fn new(l: WriteLimits) -> Self {
        let s = Self {
            warn_from: AtomicU64::new(0),
            warn_every: AtomicU64::new(0),
            refuse_at: AtomicU64::new(0),
        };
        s.store(l);
        s
    }

    fn store(&self, l: WriteLimits) {
        self.warn_from.store(l.warn_from, Ordering::Relaxed);
        self.warn_every
            .store(l.warn_every.max(1), Ordering::Relaxed);
        self.refuse_at.store(l.refuse_at, Ordering::Relaxed);
    }

    fn load(&self) -> WriteLimits {
        WriteLimits {
            warn_from: self.warn_from.load(Ordering::Relaxed),
            warn_every: self.warn_every.load(Ordering::Relaxed),
            refuse_at: self.refuse_at.load(Ordering::Relaxed),
        }
    }
}

/// The write count of one key, held by its aesgcm transformer.
pub struct KeyCounter {
    /// The counter id of the first name the key was configured under.
    counter_id: String,
    key_name: String,
    writes: AtomicU64,
    limits: Arc<SharedLimits>,
}

impl KeyCounter {
    /// Counts one write, or refuses it at the limit. Call before drawing the nonce.
    pub(crate) fn admit(&self) -> Result<(), TransformError> {
        let limits = self.limits.load();
        let prev = self
            .writes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limits.refuse_at).then_some(n + 1)
            })
            .map_err(|writes| TransformError::WriteLimitReached {
                key_name: self.key_name.clone(),
                counter_id: self.counter_id.clone(),
                writes,
                limit: limits.refuse_at,
            })?;
        let n = prev + 1;
        if n >= limits.warn_from && (n - limits.warn_from).is_multiple_of(limits.warn_every) {
            self.warn(n, limits);
        }
        Ok(())
    }

    fn warn(&self, writes: u64, limits: WriteLimits) {
        tracing::warn!(
            key = %self.key_name,
            counter = %self.counter_id,
            writes,
            refuse_at = limits.refuse_at,
            "{}",
            warning_text(&self.key_name, writes, limits)
        );
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

fn warning_text(key_name: &str, writes: u64, limits: WriteLimits) -> String {
    format!(
        "aesgcm key {key_name:?} has sealed {writes} values with random nonces (Kubernetes \
         advises rotating every {DEFAULT_WARN_FROM}; Coffer refuses new writes under it at \
         {}): {ROTATION_STEPS}",
        limits.refuse_at
    )
}

impl fmt::Debug for KeyCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCounter")
            .field("counter_id", &self.counter_id)
            .field("writes", &self.writes())
            .finish()
    }
}

/// The counter id of `key` configured as `key_name` in an aesgcm provider.
pub fn counter_id(key_name: &str, key: &SecretBytes) -> String {
    id_for(key_name, key_tag(key))
}

fn id_for(key_name: &str, tag: [u8; 8]) -> String {
    format!("aesgcm/{key_name}/{}", hex::encode(tag))
}

fn key_tag(key: &SecretBytes) -> [u8; 8] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&hmac::sign(&k, COUNTER_LABEL).as_ref()[..8]);
    tag
}

/// Every counter of a keyspace: one per key (by key bytes), under each name it is configured.
#[derive(Debug)]
pub struct WriteCounters {
    limits: Arc<SharedLimits>,
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    by_key: HashMap<[u8; 8], Arc<KeyCounter>>,
    /// Counter id → counter, in the order first seen.
    named: Vec<(String, Arc<KeyCounter>)>,
}

impl Registry {
    /// Each key's counter once, by the id of its first name.
    fn keys(&self) -> Vec<&Arc<KeyCounter>> {
        let mut keys: Vec<&Arc<KeyCounter>> = self.by_key.values().collect();
        keys.sort_by(|a, b| a.counter_id.cmp(&b.counter_id));
        keys
    }
}

impl Default for WriteCounters {
    fn default() -> Self {
        Self::new(WriteLimits::default())
    }
}

impl WriteCounters {
    /// An empty set of counters with these limits.
    pub fn new(limits: WriteLimits) -> Self {
        Self {
            limits: Arc::new(SharedLimits::new(limits)),
            inner: Mutex::new(Registry::default()),
        }
    }

    /// The counter of `key` (configured as `key_name`), made on first use.
    pub(crate) fn counter(&self, key_name: &str, key: &SecretBytes) -> Arc<KeyCounter> {
        let tag = key_tag(key);
        let id = id_for(key_name, tag);
        let mut reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let counter = reg
            .by_key
            .entry(tag)
            .or_insert_with(|| {
                Arc::new(KeyCounter {
                    counter_id: id.clone(),
                    key_name: key_name.to_owned(),
                    writes: AtomicU64::new(0),
                    limits: self.limits.clone(),
                })
            })
            .clone();
        if !reg.named.iter().any(|(n, _)| *n == id) {
            reg.named.push((id, counter.clone()));
        }
        counter
    }

    /// The current count of every counter, sorted by id.
    pub fn counts(&self) -> Vec<WriteCount> {
        let reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<WriteCount> = reg
            .named
            .iter()
            .map(|(id, c)| WriteCount {
                counter_id: id.clone(),
                writes: c.writes(),
            })
            .collect();
        out.sort_by(|a, b| a.counter_id.cmp(&b.counter_id));
        out
    }

    /// Raises each counter named in `counts` to at least the given value; unknown ids are
    /// ignored (keys no longer configured). Warns for keys already past the warning threshold.
    pub fn restore(&self, counts: &[WriteCount]) {
        let reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for wc in counts {
            if let Some((_, c)) = reg.named.iter().find(|(id, _)| *id == wc.counter_id) {
                c.writes.fetch_max(wc.writes, Ordering::Relaxed);
            }
        }
        let limits = self.limits.load();
        for c in reg.keys() {
            let n = c.writes();
            if n >= limits.warn_from {
                c.warn(n, limits);
            }
        }
    }

    /// One operator-facing line per key at or past the warning threshold.
    pub fn warnings(&self) -> Vec<String> {
        let limits = self.limits.load();
        let reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        reg.keys()
            .into_iter()
            .filter(|c| c.writes() >= limits.warn_from)
            .map(|c| warning_text(&c.key_name, c.writes(), limits))
            .collect()
    }

    /// Replaces the limits of every counter (tests; operators who want a stricter limit).
    pub fn set_limits(&self, limits: WriteLimits) {
        self.limits.store(limits);
    }

    /// The limits in force.
    pub fn limits(&self) -> WriteLimits {
        self.limits.load()
    }
}
