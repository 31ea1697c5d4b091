//! KMS v2 (upstream `encrypt/envelope/kmsv2/envelope.go`): the stored value is
//! `k8s:enc:kms:v2:<name>:` ‖ protobuf [`object::EncryptedObject`].
//!
//! Reads accept both DEK source types: `AES_GCM_KEY` (the unwrapped 32 bytes are the AES key,
//! `encryptedData` = `nonce ‖ ct ‖ tag`) and `HKDF_SHA256_XNONCE_AES_GCM_SEED` (the unwrapped
//! bytes are an HKDF-SHA256 PRK; `encryptedData` = `info(32) ‖ nonce(12) ‖ ct ‖ tag`, key =
//! HKDF-Expand(seed, info), no Extract). The etcd key is the GCM additional data. A read is
//! stale when its keyID or source type differs from the current write state. Unlike upstream,
//! reads work before the first successful Status (only writes need the write state); such
//! reads report `stale = false`.
//!
//! - Unwrapped seeds are cached by upstream's cache key in a bounded, least-recently-used,
//!   single-flight cache with an optional maximum age ([`cache`]). A value written by the
//!   current write state is recognised by its bytes (the encoded fields 2–5 are the state's)
//!   and opened without decoding the protobuf, hashing the cache key or taking any exclusive
//!   lock.
//! - Writes use a write state made by [`KmsV2::refresh`]: Status, then (on a new key_id) a
//!   32-byte seed drawn once and wrapped by the plugin's Encrypt. Writes stop
//!   [`KmsV2::set_write_window`] after the last fully healthy Status ([`window`]).
//! - Per write, [`KmsV2::new`] draws 32 bytes of info and a 12-byte nonce, in that order, as
//!   kube-apiserver does. Coffer's writer, [`KmsV2::with_key_reuse`], keeps one derived key
//!   (one info) for [`WRITES_PER_DERIVED_KEY`] writes, each with a fresh random nonce
//!   ([`derived`]); readers keep [`READ_KEYS_PER_SEED`] derived keys per seed. The legacy
//!   `AES_GCM_KEY` writer (4 random bytes ‖ u64 LE counter from 1 000 000 001) exists only to
//!   reproduce upstream vectors and sits behind [`KmsV2::dangerous_legacy_aes_gcm_key_writes`].
//!
//! # Why reusing a derived key for N writes is safe
//!
//! - **Nonces under one derived key.** Each of the at most N = 2^20 writes under one derived
//!   key draws a uniformly random 96-bit nonce. The chance that any two collide is at most
//!   N²/2^97 = 2^-57, far below NIST SP 800-38D's bound for random nonces (at most 2^-32, which
//!   it meets by allowing up to 2^32 invocations per key). Summed over a seed's lifetime of W
//!   writes (⌈W/N⌉ derived keys), the bound is about W·N/2^97: 2^-32 is reached only after
//!   W = 2^45 (35 trillion) writes under one seed, and a seed lasts until the next restart or
//!   key_id change.
//! - **Keys of different infos are independent.** HKDF-Expand keyed by the secret seed is a
//!   PRF of the info; infos are 256 random bits, so two derived keys coincide only if two infos
//!   do (probability about K²/2^257 for K infos), and the nonce bound applies per key. A key
//!   derived for one info says nothing about the key of another.
//! - **A rewound VM snapshot** restores the in-memory derived key and its use counter, so the
//!   restored copy may write up to N more values under a key the other branch also used.
//!   Nonces do not depend on that counter: they come from the kernel per write, which
//!   reseeds on restore where the hypervisor signals it (`vmgenid`); the bound becomes
//!   (2N)²/2^97 = 2^-55. Where the kernel's output itself is replayed, nonces and infos repeat
//!   for kube-apiserver's one-info-per-write scheme and for aesgcm alike ([`crate::rng`]).
//!
//! N and [`READ_KEYS_PER_SEED`] were chosen with `benches/providers.rs`: a derivation (HKDF
//! plus the AES key schedule) costs about 0.7 µs, more than sealing 1 KiB, so one derivation
//! per thousand writes already makes it invisible; N = 2^20 keeps the number of distinct infos
//! in storage small, so readers hit their per-seed cache of 16 keys. Measured on a shared
//! 2-core machine, paired with aesgcm: writes at about 93 % of aesgcm's speed and reads of
//! Coffer-written values at about 98 % (kube-written values, one derivation each: 25 %).
//!
//! With key reuse, `coffer_kms_writes_total` is updated when a derived key is retired and
//! before every scrape (from the key's use counter), not on every write.

mod cache;
mod derived;
pub mod object;
mod window;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus::IntCounter;
use prost::Message;
use ring::hkdf;
use zeroize::Zeroizing;

use self::cache::{CacheKey, Entry, SeedCache};
pub use self::derived::READ_KEYS_PER_SEED;
use self::derived::{InUse, ReadKeys};
use self::object::{EncryptedObject, AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED};
pub use self::window::show_ms;
use self::window::Health;
pub use self::window::DEFAULT_WRITE_WINDOW;
use super::aes::{GcmKey, GCM_NONCE_LEN, GCM_TAG_LEN};
use super::{prefixes, PrefixTransformer, Read, Source, Transformer};
use crate::error::TransformError;
use crate::key_service::{new_uid, DecryptRequest, KeyService};
use crate::keyspace::KmsHealth;
use crate::rng::RandomSource;
use coffer_metrics::kms::key_id_hash;

/// Size of the HKDF info of a derived key.
pub const INFO_LEN: usize = 32;
/// Size of the seed/DEK sent to the plugin.
pub const SEED_LEN: usize = 32;
/// Default bound on cached seeds/DEKs per provider (least recently used evicted beyond it;
/// upstream has no bound).
pub const MAX_CACHED_KEYS: usize = 1024;
/// Writes under one derived key (one info) by [`KmsV2::with_key_reuse`].
pub const WRITES_PER_DERIVED_KEY: u64 = 1 << 20;
/// First counter value of the legacy AES_GCM_KEY writer (incremented before use).
const COUNTER_START: u64 = 1_000_000_000;

enum Unwrapped {
    Seed { prk: hkdf::Prk, reads: ReadKeys },
    Key(GcmKey),
}

struct CachedKey {
    key: Unwrapped,
    source: Source,
}

enum WriteKey {
    Seed(hkdf::Prk),
    Key { gcm: GcmKey, counter: AtomicU64 },
}

struct WriteState {
    key_id: String,
    key_id_hash: String,
    source_type: i32,
    key: WriteKey,
    /// Protobuf fields 2..5, encoded once; every write appends them after field 1.
    tail: Vec<u8>,
    /// The seed's read side (pinned in the cache while this state writes).
    entry: Arc<Entry<CachedKey>>,
    /// `coffer_kms_writes_total{provider,key_id_hash}`.
    writes: IntCounter,
}

/// What a write needs, behind one lock: the write state and Coffer's derived key in use.
struct Writer {
    state: Arc<WriteState>,
    in_use: Option<InUse>,
}

impl Writer {
    /// Adds the writes made under the derived key in use to `coffer_kms_writes_total` (with key
    /// reuse, writes are counted there, not one by one).
    fn report_writes(&self, per_key: u64) {
        if let Some(k) = &self.in_use {
            let n = k.unreported(per_key);
            if n > 0 {
                self.state.writes.inc_by(n);
            }
        }
    }
}

impl WriteState {
    /// The `encryptedData` of `data` if `data` is exactly `0x0a ‖ varint(len) ‖ encryptedData ‖
    /// tail`, a value written by this state (so its cache key is this state's).
    fn own_body<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        let rest = data
            .strip_suffix(self.tail.as_slice())?
            .strip_prefix(&[0x0a])?;
        let mut body = rest;
        let len = prost::encoding::decode_varint(&mut body).ok()?;
        (!body.is_empty() && u64::try_from(body.len()).ok()? == len).then_some(body)
    }
}

/// The KMS v2 envelope transformer for one `kms` provider (`apiVersion: v2`).
pub struct KmsV2 {
    name: String,
    service: Arc<dyn KeyService>,
    rng: Arc<dyn RandomSource>,
    write_type: i32,
    writes_per_key: u64,
    /// Shared with the scrape hook that reports writes made under a derived key.
    writer: Arc<RwLock<Option<Writer>>>,
    /// The write state's tail length (for [`Transformer::overhead`] without a lock).
    tail_len: AtomicUsize,
    health: Arc<Health>,
    cache: SeedCache<CachedKey>,
}

fn type_name(t: i32) -> &'static str {
    if t == HKDF_SHA256_XNONCE_AES_GCM_SEED {
        "HKDF_SHA256_XNONCE_AES_GCM_SEED"
    } else {
        "AES_GCM_KEY"
    }
}

impl KmsV2 {
    fn build(
        name: &str,
        service: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
        write_type: i32,
        writes_per_key: u64,
    ) -> Self {
        let gauge = coffer_metrics::kms::kms()
            .seeds_cached
            .with_label_values(&[name]);
        let writer: Arc<RwLock<Option<Writer>>> = Arc::new(RwLock::new(None));
        let weak = Arc::downgrade(&writer);
        coffer_metrics::kms::on_scrape(move || {
            if let Some(w) = weak.upgrade() {
                if let Some(w) = w.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
                    w.report_writes(writes_per_key);
                }
            }
        });
        Self {
            name: name.to_owned(),
            service,
            rng,
            write_type,
            writes_per_key,
            writer,
            tail_len: AtomicUsize::new(256),
            health: Health::new(name),
            cache: SeedCache::new(MAX_CACHED_KEYS, gauge),
        }
    }

    /// A provider named `name` (its prefix is `k8s:enc:kms:v2:<name>:`) writing HKDF-seed
    /// values exactly as kube-apiserver does: a new info and nonce drawn per write, in that
    /// order, and a key derived per write. Call [`KmsV2::refresh`] to establish the write state.
    pub fn new(name: &str, service: Arc<dyn KeyService>, rng: Arc<dyn RandomSource>) -> Self {
        Self::build(name, service, rng, HKDF_SHA256_XNONCE_AES_GCM_SEED, 1)
    }

    /// Coffer's writer: the same format as [`KmsV2::new`], one derived key (one info) for
    /// [`WRITES_PER_DERIVED_KEY`] writes, a fresh random nonce per write (module docs).
    pub fn with_key_reuse(
        name: &str,
        service: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
    ) -> Self {
        Self::with_writes_per_derived_key(name, service, rng, WRITES_PER_DERIVED_KEY)
    }

    /// [`KmsV2::with_key_reuse`] with `writes` writes per derived key (at least 1; 1 is
    /// kube-apiserver's scheme). Values above [`WRITES_PER_DERIVED_KEY`] are lowered to it, so
    /// the module docs' bound holds.
    pub fn with_writes_per_derived_key(
        name: &str,
        service: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
        writes: u64,
    ) -> Self {
        Self::build(
            name,
            service,
            rng,
            HKDF_SHA256_XNONCE_AES_GCM_SEED,
            writes.clamp(1, WRITES_PER_DERIVED_KEY),
        )
    }

    /// DANGEROUS: writes `AES_GCM_KEY` values (one DEK per write state, counter nonces), as
    /// kube-apiserver 1.27–1.28 did with the KDF gate off. Only for reproducing upstream
    /// vectors; a rewound counter (VM snapshot) would reuse nonces.
    pub fn dangerous_legacy_aes_gcm_key_writes(
        name: &str,
        service: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
    ) -> Self {
        Self::build(name, service, rng, AES_GCM_KEY, 1)
    }

    /// The provider's name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored prefix, `k8s:enc:kms:v2:<name>:`.
    pub fn prefix(&self) -> String {
        format!("{}{}:", prefixes::KMS_V2, self.name)
    }

    /// This provider as a top-level prefix entry.
    pub fn into_prefix_transformer(self) -> PrefixTransformer {
        Arc::new(self).prefix_transformer()
    }

    /// A top-level prefix entry sharing this provider.
    pub fn prefix_transformer(self: &Arc<Self>) -> PrefixTransformer {
        let label = format!("kms v2 {:?}", self.name);
        PrefixTransformer::new(self.prefix(), self.clone(), label)
    }

    /// Sets how long writes go on after the last fully healthy Status (default
    /// [`DEFAULT_WRITE_WINDOW`], 3 minutes). Takes effect at once.
    pub fn set_write_window(&self, window: Duration) {
        self.health.set_window(Some(window));
    }

    /// No write window: for an in-process key service whose Status cannot fail.
    pub(crate) fn disable_write_window(&self) {
        self.health.set_window(None);
    }

    /// Sets the maximum age of a cached seed (`None`, the default: no expiry). An older entry
    /// is unwrapped again by the plugin on its next use; the current write seed is exempt.
    /// The price: while the plugin is down, values under seeds older than this cannot be read
    /// (kubernetes #132967), which is why there is no expiry by default.
    pub fn set_seed_max_age(&self, max_age: Option<Duration>) {
        self.cache.set_max_age(max_age);
    }

    /// Sets the bound on cached seeds (default [`MAX_CACHED_KEYS`], at least 1).
    pub fn set_seed_cache_capacity(&self, capacity: usize) {
        self.cache.set_capacity(capacity);
    }

    /// Seeds/DEKs cached now.
    pub fn seeds_cached(&self) -> usize {
        self.cache.len()
    }

    /// The key_id of the current write state, if any (public).
    pub fn current_key_id(&self) -> Option<String> {
        self.current().map(|s| s.key_id.clone())
    }

    /// The provider's health as [`crate::Keyspace::kms_health`] reports it.
    pub fn health(&self) -> KmsHealth {
        let state = self.current();
        let error = self.health.last_error();
        KmsHealth {
            provider: self.name.clone(),
            // A write state exists only once a probe ran, so no error means the last succeeded.
            healthy: error.is_none() && state.is_some() && self.health.check_write().is_ok(),
            error,
            key_id_hash: state.map(|s| s.key_id_hash.clone()),
            write_window_left: self.health.window_left(),
        }
    }

    fn current(&self) -> Option<Arc<WriteState>> {
        self.writer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|w| w.state.clone())
    }

    /// Upstream's probe, stricter: Status must be fully healthy (healthz exactly `ok`, version
    /// valid and unchanged since the first Status, key_id valid) before anything else happens.
    /// Then, on a new key_id (or no write state yet), a new seed is drawn and wrapped by
    /// Encrypt, whose key_id must equal Status'. Only then does the write window re-open.
    /// Returns whether a new write state was made. The server calls this periodically.
    pub fn refresh(&self) -> Result<bool, TransformError> {
        let result = self.probe();
        self.health.record(result.as_ref().err().cloned());
        result.map_err(|reason| TransformError::KmsV2Rotation {
            name: self.name.clone(),
            reason,
        })
    }

    fn probe(&self) -> Result<bool, String> {
        let name = &self.name;
        let status = self.service.status().map_err(|e| {
            format!("failed to perform status section of the healthz check for KMS Provider {name}, error: {e}")
        })?;
        let received = window::now_ns();
        if status.version != "v2" && status.version != "v2beta1" {
            return Err(format!(
                "kmsv2 Provider {name} is not healthy, error: expected KMSv2 API version v2, got {}",
                status.version
            ));
        }
        self.health
            .check_version(&status.version)
            .map_err(|e| format!("kmsv2 Provider {name} is not healthy, error: {e}"))?;
        if status.healthz != "ok" {
            return Err(format!(
                "kmsv2 Provider {name} is not healthy, error: got unexpected healthz status: {}",
                status.healthz
            ));
        }
        object::validate_key_id(&status.key_id).map_err(|e| {
            format!(
                "got invalid KMSv2 KeyID hash {:?}: {e}",
                key_id_hash(&status.key_id)
            )
        })?;
        let rotate = match self.current() {
            Some(s) => s.key_id != status.key_id || s.source_type != self.write_type,
            None => true,
        };
        let new_state = if rotate {
            Some(self.new_state(&status.key_id)?)
        } else {
            None
        };
        self.health.mark_healthy(received);
        if let Some(s) = new_state {
            tracing::info!(provider = %self.name, key_id_hash = %s.key_id_hash,
                source_type = type_name(s.source_type), "kms v2: new data key seed for writes");
            self.tail_len.store(s.tail.len(), Ordering::Relaxed);
            let mut writer = self.writer.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(old) = writer.as_ref() {
                old.report_writes(self.writes_per_key);
            }
            *writer = Some(Writer {
                state: Arc::new(s),
                in_use: None,
            });
        }
        Ok(rotate)
    }

    fn new_state(&self, status_key_id: &str) -> Result<WriteState, String> {
        let mut secret = Zeroizing::new([0u8; SEED_LEN]);
        self.rng
            .fill(&mut secret[..])
            .map_err(|e| format!("failed to generate DEK source: {e}"))?;
        let resp = self
            .service
            .encrypt(&new_uid(), &secret[..])
            .map_err(|e| format!("failed to encrypt DEK source: {e}"))?;
        if resp.key_id != status_key_id {
            return Err(format!(
                "failed to rotate DEK: Encrypt returned key_id hash {:?} but Status reported {:?}",
                key_id_hash(&resp.key_id),
                key_id_hash(status_key_id)
            ));
        }
        object::validate_parts(&resp.ciphertext, &resp.key_id, &resp.annotations)
            .map_err(|e| format!("plugin's Encrypt response is invalid: {e}"))?;
        let (write_key, read_key) = if self.write_type == HKDF_SHA256_XNONCE_AES_GCM_SEED {
            let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret[..]);
            (
                WriteKey::Seed(prk.clone()),
                Unwrapped::Seed {
                    prk,
                    reads: ReadKeys::new(),
                },
            )
        } else {
            let key = |s: &[u8]| GcmKey::new(s).map_err(|e| e.to_string());
            (
                WriteKey::Key {
                    gcm: key(&secret[..])?,
                    counter: AtomicU64::new(COUNTER_START),
                },
                Unwrapped::Key(key(&secret[..])?),
            )
        };
        let tail = EncryptedObject {
            encrypted_data: Vec::new(),
            key_id: resp.key_id.clone(),
            encrypted_dek_source: resp.ciphertext.clone(),
            annotations: resp.annotations.clone(),
            encrypted_dek_source_type: self.write_type,
        }
        .encode_to_vec();
        let ck = object::cache_key(
            self.write_type,
            &resp.ciphertext,
            &resp.key_id,
            &resp.annotations,
        );
        self.cache.pin(ck);
        let entry = self.cache.insert(ck, self.cached(read_key, &resp.key_id));
        let hash = key_id_hash(&resp.key_id);
        let writes = coffer_metrics::kms::kms()
            .writes
            .with_label_values(&[&self.name, &hash]);
        Ok(WriteState {
            key_id: resp.key_id,
            key_id_hash: hash,
            source_type: self.write_type,
            key: write_key,
            tail,
            entry,
            writes,
        })
    }

    fn cached(&self, key: Unwrapped, key_id: &str) -> CachedKey {
        let source_type = match key {
            Unwrapped::Seed { .. } => HKDF_SHA256_XNONCE_AES_GCM_SEED,
            Unwrapped::Key(_) => AES_GCM_KEY,
        };
        let label = format!(
            "kms v2 {:?} key_id {:?} ({})",
            self.name,
            key_id,
            type_name(source_type)
        );
        CachedKey {
            key,
            source: Source::new(label.into()),
        }
    }

    /// Asks the plugin to unwrap the seed/DEK of `obj` (a cache miss).
    fn unwrap_key(&self, obj: &EncryptedObject) -> Result<CachedKey, TransformError> {
        let request = DecryptRequest {
            ciphertext: obj.encrypted_dek_source.clone(),
            key_id: obj.key_id.clone(),
            annotations: obj.annotations.clone(),
        };
        let secret = self
            .service
            .decrypt(&new_uid(), &request)
            .map_err(TransformError::KmsV2DecryptDek)?;
        let key = if obj.encrypted_dek_source_type == HKDF_SHA256_XNONCE_AES_GCM_SEED {
            if secret.len() < SEED_LEN {
                return Err(TransformError::InvalidSeedLength(secret.len()));
            }
            Unwrapped::Seed {
                prk: hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret.expose_secret()),
                reads: ReadKeys::new(),
            }
        } else {
            Unwrapped::Key(GcmKey::new(secret.expose_secret())?)
        };
        Ok(self.cached(key, &obj.key_id))
    }

    fn no_write_state(&self) -> TransformError {
        TransformError::KmsV2NoWriteState {
            name: self.name.clone(),
            reason: self
                .health
                .last_error()
                .unwrap_or_else(|| "the plugin has not been asked yet".to_owned()),
        }
    }

    /// Draws the next info and derives its key (no lock held), then puts it in use unless
    /// another writer already did or the write state changed meanwhile.
    fn next_derived_key(&self) -> Result<(), TransformError> {
        let Some(state) = self.current() else {
            return Err(self.no_write_state());
        };
        let WriteKey::Seed(prk) = &state.key else {
            return Ok(());
        };
        let fresh = InUse::new(prk, &*self.rng)?;
        let mut writer = self.writer.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = writer.as_mut() {
            let spent = w
                .in_use
                .as_ref()
                .is_none_or(|k| k.spent(self.writes_per_key));
            if spent && Arc::ptr_eq(&w.state, &state) {
                w.report_writes(self.writes_per_key);
                w.in_use = Some(fresh);
            }
        }
        Ok(())
    }

    /// The legacy `AES_GCM_KEY` writer: 4 random bytes ‖ a u64 LE counter as the nonce.
    fn seal_legacy(
        &self,
        gcm: &GcmKey,
        counter: &AtomicU64,
        etcd_key: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.rng.fill(&mut nonce[..4])?;
        let n = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_add(1))
            .map_err(|_| TransformError::NonceCounterExhausted {
                name: self.name.clone(),
            })?
            + 1;
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        out.push(0x0a);
        let body = GCM_NONCE_LEN + plaintext.len() + GCM_TAG_LEN;
        prost::encoding::encode_varint(body as u64, out);
        gcm.seal_append(nonce, etcd_key, plaintext, out)
    }

    fn writes_stopped(&self, state: &WriteState, closed: window::Closed) -> TransformError {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        TransformError::KmsV2WritesStopped {
            name: self.name.clone(),
            since_ms: closed.since.map_or(u64::MAX, ms),
            window_ms: ms(closed.window),
            key_id_hash: state.key_id_hash.clone(),
        }
    }
}

/// Opens `buf` (`encryptedData`) with a cached key.
fn open_with(
    key: &CachedKey,
    mut buf: Vec<u8>,
    etcd_key: &[u8],
    stale: bool,
) -> Result<Read, TransformError> {
    match &key.key {
        Unwrapped::Seed { prk, reads } => reads.open(prk, &mut buf, etcd_key)?,
        Unwrapped::Key(gcm) => gcm.open_within(&mut buf, 0, etcd_key)?,
    }
    Ok(key.source.read(buf, stale))
}

impl Drop for KmsV2 {
    fn drop(&mut self) {
        if let Some(w) = self
            .writer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            w.report_writes(self.writes_per_key);
        }
    }
}

impl fmt::Debug for KmsV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsV2")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("write_type", &type_name(self.write_type))
            .field("writes_per_key", &self.writes_per_key)
            .field(
                "key_id_hash",
                &self.current().map(|s| s.key_id_hash.clone()),
            )
            .finish_non_exhaustive()
    }
}

impl Transformer for KmsV2 {
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError> {
        // The write state a value not written under it is judged stale against (one lock).
        let current = {
            let writer = self.writer.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(w) = writer.as_ref() {
                if let Some(body) = w.state.own_body(data) {
                    // Written under the derived key in use: no derivation, no cache lookup.
                    let mut buf = body.to_vec();
                    if let Some(opened) = w
                        .in_use
                        .as_ref()
                        .and_then(|k| k.open_own(&mut buf, etcd_key))
                    {
                        opened?;
                        return Ok(w.state.entry.value.source.read(buf, false));
                    }
                    return open_with(&w.state.entry.value, buf, etcd_key, false);
                }
            }
            writer.as_ref().map(|w| w.state.clone())
        };
        let obj = EncryptedObject::decode(data).map_err(|_| TransformError::ProtoDecode)?;
        object::validate(&obj)?;
        let ck: CacheKey = object::cache_key(
            obj.encrypted_dek_source_type,
            &obj.encrypted_dek_source,
            &obj.key_id,
            &obj.annotations,
        );
        let entry = self.cache.get_or_load(ck, || self.unwrap_key(&obj))?;
        let stale = current.is_some_and(|s| {
            s.key_id != obj.key_id || s.source_type != obj.encrypted_dek_source_type
        });
        open_with(&entry.value, obj.encrypted_data, etcd_key, stale)
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let reuse = self.writes_per_key > 1;
        let mut nonce = [0u8; GCM_NONCE_LEN];
        if reuse {
            self.rng.fill(&mut nonce)?;
        }
        loop {
            {
                let writer = self.writer.read().unwrap_or_else(PoisonError::into_inner);
                let Some(w) = writer.as_ref() else {
                    return Err(self.no_write_state());
                };
                if let Err(closed) = self.health.check_write() {
                    return Err(self.writes_stopped(&w.state, closed));
                }
                match &w.state.key {
                    WriteKey::Seed(_) if reuse => {
                        let sealed = w.in_use.as_ref().and_then(|k| {
                            k.try_seal(self.writes_per_key, nonce, etcd_key, plaintext, out)
                        });
                        if let Some(result) = sealed {
                            result?;
                            out.extend_from_slice(&w.state.tail);
                            return Ok(());
                        }
                    }
                    WriteKey::Seed(prk) => {
                        derived::seal_with_new_info(prk, &*self.rng, etcd_key, plaintext, out)?;
                        out.extend_from_slice(&w.state.tail);
                        w.state.writes.inc();
                        return Ok(());
                    }
                    WriteKey::Key { gcm, counter } => {
                        self.seal_legacy(gcm, counter, etcd_key, plaintext, out)?;
                        out.extend_from_slice(&w.state.tail);
                        w.state.writes.inc();
                        return Ok(());
                    }
                }
            }
            // The derived key in use is spent (or there is none yet).
            self.next_derived_key()?;
        }
    }

    fn refresh(&self) -> Result<(), TransformError> {
        KmsV2::refresh(self).map(|_| ())
    }

    fn overhead(&self) -> usize {
        INFO_LEN + GCM_NONCE_LEN + GCM_TAG_LEN + 16 + self.tail_len.load(Ordering::Relaxed)
    }
}
