//! KMS v2 (upstream `encrypt/envelope/kmsv2/envelope.go`): the stored value is
//! `k8s:enc:kms:v2:<name>:` ‖ protobuf [`object::EncryptedObject`].
//!
//! Reads accept both DEK source types: `AES_GCM_KEY` (the unwrapped 32 bytes are the AES key,
//! `encryptedData` = `nonce ‖ ct ‖ tag`) and `HKDF_SHA256_XNONCE_AES_GCM_SEED` (the unwrapped
//! bytes are an HKDF-SHA256 PRK; `encryptedData` = `info(32) ‖ nonce(12) ‖ ct ‖ tag`, key =
//! HKDF-Expand(seed, info), no Extract). The etcd key is the GCM additional data. Unwrapped
//! DEKs/seeds are cached by upstream's cache key, so a read calls the plugin once per distinct
//! `encryptedDEKSource`. A read is stale when its keyID or source type differs from the
//! current write state.
//!
//! Writes use a write state made by [`KmsV2::refresh`]: Status, then (on a new key_id) a
//! 32-byte seed drawn once and wrapped by the plugin's Encrypt; per write 32 bytes of info
//! and a 12-byte nonce, in that order, as upstream draws them. The legacy `AES_GCM_KEY`
//! writer (4 random bytes ‖ u64 LE counter from 1 000 000 001) exists only to reproduce
//! upstream vectors and sits behind [`KmsV2::dangerous_legacy_aes_gcm_key_writes`].
//!
//! Unlike upstream, reads work before the first successful Status (only writes need the write
//! state); such reads report `stale = false`.

pub mod object;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prost::Message;
use ring::aead::{LessSafeKey, AES_256_GCM};
use ring::hkdf;
use zeroize::Zeroizing;

use self::object::{EncryptedObject, AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED};
use super::aes::{GcmKey, GCM_NONCE_LEN, GCM_TAG_LEN};
use super::{prefixes, PrefixTransformer, Read, Transformer};
use crate::error::TransformError;
use crate::key_service::{new_uid, DecryptRequest, KeyService};
use crate::rng::RandomSource;

/// Size of the HKDF info drawn per write.
pub const INFO_LEN: usize = 32;
/// Size of the seed/DEK sent to the plugin.
pub const SEED_LEN: usize = 32;
/// Upper bound on cached DEKs/seeds (upstream has none; an arbitrary entry is dropped beyond).
pub const MAX_CACHED_KEYS: usize = 4096;
/// First counter value of the legacy AES_GCM_KEY writer (incremented before use).
const COUNTER_START: u64 = 1_000_000_000;

enum Unwrapped {
    Seed(hkdf::Prk),
    Key(GcmKey),
}

struct CachedKey {
    key: Unwrapped,
    source: Arc<str>,
}

enum WriteKey {
    Seed(hkdf::Prk),
    Key { gcm: GcmKey, counter: AtomicU64 },
}

struct WriteState {
    key_id: String,
    source_type: i32,
    key: WriteKey,
    /// Protobuf fields 2..5, encoded once; every write appends them after field 1.
    tail: Vec<u8>,
}

/// The KMS v2 envelope transformer for one `kms` provider (`apiVersion: v2`).
pub struct KmsV2 {
    name: String,
    service: Arc<dyn KeyService>,
    rng: Arc<dyn RandomSource>,
    write_type: i32,
    state: RwLock<Option<Arc<WriteState>>>,
    last_error: Mutex<Option<String>>,
    cache: RwLock<HashMap<[u8; 32], Arc<CachedKey>>>,
}

fn derive(prk: &hkdf::Prk, info: &[u8]) -> Result<GcmKey, TransformError> {
    let info = [info];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| TransformError::EncryptFailed("HKDF expand failed"))?;
    Ok(GcmKey::from_ring(LessSafeKey::new(okm.into())))
}

fn type_name(t: i32) -> &'static str {
    if t == HKDF_SHA256_XNONCE_AES_GCM_SEED {
        "HKDF_SHA256_XNONCE_AES_GCM_SEED"
    } else {
        "AES_GCM_KEY"
    }
}

impl KmsV2 {
    /// A provider named `name` (its prefix is `k8s:enc:kms:v2:<name>:`) writing with HKDF
    /// seeds. Call [`KmsV2::refresh`] to establish the write state.
    pub fn new(name: &str, service: Arc<dyn KeyService>, rng: Arc<dyn RandomSource>) -> Self {
        Self {
            name: name.to_owned(),
            service,
            rng,
            write_type: HKDF_SHA256_XNONCE_AES_GCM_SEED,
            state: RwLock::new(None),
            last_error: Mutex::new(None),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// DANGEROUS: writes `AES_GCM_KEY` values (one DEK per write state, counter nonces), as
    /// kube-apiserver 1.27–1.28 did with the KDF gate off. Only for reproducing upstream
    /// vectors; a rewound counter (VM snapshot) would reuse nonces.
    pub fn dangerous_legacy_aes_gcm_key_writes(
        name: &str,
        service: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            write_type: AES_GCM_KEY,
            ..Self::new(name, service, rng)
        }
    }

    /// The stored prefix, `k8s:enc:kms:v2:<name>:`.
    pub fn prefix(&self) -> String {
        format!("{}{}:", prefixes::KMS_V2, self.name)
    }

    /// This provider as a top-level prefix entry.
    pub fn into_prefix_transformer(self) -> PrefixTransformer {
        let prefix = self.prefix();
        let label = format!("kms v2 {:?}", self.name);
        PrefixTransformer::new(prefix, Arc::new(self), label)
    }

    /// The key_id of the current write state, if any (public).
    pub fn current_key_id(&self) -> Option<String> {
        self.current().map(|s| s.key_id.clone())
    }

    fn current(&self) -> Option<Arc<WriteState>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, reason: String) -> TransformError {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
        TransformError::KmsV2Rotation {
            name: self.name.clone(),
            reason,
        }
    }

    /// Upstream's probe: Status; on a new key_id (or no write state yet) a new seed is drawn
    /// and wrapped by Encrypt, whose key_id must equal Status'. Then the health checks.
    /// Returns whether a new write state was made. The server calls this periodically.
    pub fn refresh(&self) -> Result<bool, TransformError> {
        let status = self.service.status().map_err(|e| {
            self.fail(format!(
                "failed to perform status section of the healthz check for KMS Provider {}, error: {e}",
                self.name
            ))
        })?;
        if let Err(e) = object::validate_key_id(&status.key_id) {
            return Err(self.fail(format!("got invalid KMSv2 KeyID: {e}")));
        }
        let rotate = match self.current() {
            Some(s) => s.key_id != status.key_id || s.source_type != self.write_type,
            None => true,
        };
        if rotate {
            self.rotate(&status.key_id)?;
        }
        if status.healthz != "ok" {
            return Err(self.fail(format!(
                "kmsv2 Provider {} is not healthy, error: got unexpected healthz status: {}",
                self.name, status.healthz
            )));
        }
        if status.version != "v2" && status.version != "v2beta1" {
            return Err(self.fail(format!(
                "kmsv2 Provider {} is not healthy, error: expected KMSv2 API version v2, got {}",
                self.name, status.version
            )));
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(rotate)
    }

    fn rotate(&self, status_key_id: &str) -> Result<(), TransformError> {
        let mut secret = Zeroizing::new([0u8; SEED_LEN]);
        self.rng.fill(&mut secret[..])?;
        let resp = self
            .service
            .encrypt(&new_uid(), &secret[..])
            .map_err(|e| self.fail(format!("failed to encrypt DEK source: {e}")))?;
        if resp.key_id != status_key_id {
            return Err(self.fail(format!(
                "failed to rotate DEK: Encrypt returned key_id {:?} but Status reported {:?}",
                resp.key_id, status_key_id
            )));
        }
        object::validate_parts(&resp.ciphertext, &resp.key_id, &resp.annotations)
            .map_err(|e| self.fail(format!("plugin's Encrypt response is invalid: {e}")))?;
        let (write_key, read_key) = if self.write_type == HKDF_SHA256_XNONCE_AES_GCM_SEED {
            let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret[..]);
            (WriteKey::Seed(prk.clone()), Unwrapped::Seed(prk))
        } else {
            (
                WriteKey::Key {
                    gcm: GcmKey::new(&secret[..])?,
                    counter: AtomicU64::new(COUNTER_START),
                },
                Unwrapped::Key(GcmKey::new(&secret[..])?),
            )
        };
        let tail_obj = EncryptedObject {
            encrypted_data: Vec::new(),
            key_id: resp.key_id.clone(),
            encrypted_dek_source: resp.ciphertext.clone(),
            annotations: resp.annotations.clone(),
            encrypted_dek_source_type: self.write_type,
        };
        let tail = tail_obj.encode_to_vec();
        let ck = object::cache_key(
            self.write_type,
            &resp.ciphertext,
            &resp.key_id,
            &resp.annotations,
        );
        self.insert_cached(ck, read_key, &resp.key_id);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(WriteState {
            key_id: resp.key_id,
            source_type: self.write_type,
            key: write_key,
            tail,
        }));
        Ok(())
    }

    fn insert_cached(&self, ck: [u8; 32], key: Unwrapped, key_id: &str) -> Arc<CachedKey> {
        let source_type = match key {
            Unwrapped::Seed(_) => HKDF_SHA256_XNONCE_AES_GCM_SEED,
            Unwrapped::Key(_) => AES_GCM_KEY,
        };
        let entry = Arc::new(CachedKey {
            key,
            source: format!(
                "kms v2 {:?} key_id {:?} ({})",
                self.name,
                key_id,
                type_name(source_type)
            )
            .into(),
        });
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_KEYS {
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.insert(ck, entry.clone());
        entry
    }

    fn unwrap_key(&self, obj: &EncryptedObject) -> Result<Arc<CachedKey>, TransformError> {
        let ck = object::cache_key(
            obj.encrypted_dek_source_type,
            &obj.encrypted_dek_source,
            &obj.key_id,
            &obj.annotations,
        );
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ck)
        {
            return Ok(hit.clone());
        }
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
            Unwrapped::Seed(hkdf::Prk::new_less_safe(
                hkdf::HKDF_SHA256,
                secret.expose_secret(),
            ))
        } else {
            Unwrapped::Key(GcmKey::new(secret.expose_secret())?)
        };
        Ok(self.insert_cached(ck, key, &obj.key_id))
    }
}

impl fmt::Debug for KmsV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsV2")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("write_type", &type_name(self.write_type))
            .field("key_id", &self.current_key_id())
            .finish_non_exhaustive()
    }
}

impl Transformer for KmsV2 {
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError> {
        let obj = EncryptedObject::decode(data).map_err(|_| TransformError::ProtoDecode)?;
        object::validate(&obj)?;
        let key = self.unwrap_key(&obj)?;
        let stale = self.current().is_some_and(|s| {
            s.key_id != obj.key_id || s.source_type != obj.encrypted_dek_source_type
        });
        let mut buf = obj.encrypted_data;
        match &key.key {
            Unwrapped::Seed(prk) => {
                if buf.len() < INFO_LEN {
                    return Err(TransformError::ShortData);
                }
                derive(prk, &buf[..INFO_LEN])?.open_within(&mut buf, INFO_LEN, etcd_key)?;
            }
            Unwrapped::Key(gcm) => gcm.open_within(&mut buf, 0, etcd_key)?,
        }
        Ok(Read {
            plaintext: buf,
            stale,
            source: key.source.clone(),
        })
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let state = self
            .current()
            .ok_or_else(|| TransformError::KmsV2NoWriteState {
                name: self.name.clone(),
                reason: self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "the plugin has not been asked yet".to_owned()),
            })?;
        let body = GCM_NONCE_LEN + plaintext.len() + GCM_TAG_LEN;
        match &state.key {
            WriteKey::Seed(prk) => {
                let mut info = [0u8; INFO_LEN];
                self.rng.fill(&mut info)?;
                let mut nonce = [0u8; GCM_NONCE_LEN];
                self.rng.fill(&mut nonce)?;
                let key = derive(prk, &info)?;
                out.push(0x0a);
                prost::encoding::encode_varint((INFO_LEN + body) as u64, out);
                out.extend_from_slice(&info);
                key.seal_append(nonce, etcd_key, plaintext, out)?;
            }
            WriteKey::Key { gcm, counter } => {
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
                prost::encoding::encode_varint(body as u64, out);
                gcm.seal_append(nonce, etcd_key, plaintext, out)?;
            }
        }
        out.extend_from_slice(&state.tail);
        Ok(())
    }

    fn refresh(&self) -> Result<(), TransformError> {
        KmsV2::refresh(self).map(|_| ())
    }

    fn overhead(&self) -> usize {
        INFO_LEN + GCM_NONCE_LEN + GCM_TAG_LEN + 16 + self.current().map_or(256, |s| s.tail.len())
    }
}
