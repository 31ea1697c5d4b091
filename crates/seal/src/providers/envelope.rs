//! KMS v1 (upstream `encrypt/envelope/envelope.go`), read only: Coffer never writes KMS v1
//! (deprecated upstream, refused by default since Kubernetes 1.29).
//!
//! Stored: `k8s:enc:kms:v1:<name>:` ‖ u16 BE len(EDEK) ‖ EDEK ‖ payload. The plugin unwraps
//! the EDEK into a 32-byte DEK (cached by EDEK). The payload is AES-GCM (1.25+, etcd key as
//! additional data); if that fails the legacy AES-CBC reader is tried (pre-1.25 data) and a CBC
//! hit is stale. CBC has no integrity, so the fallback can return garbage for a GCM value that
//! fails (e.g. moved to another etcd key) about once in 256 tries; upstream does the same
//! (`kmsv1-cbc-fallback-garbage`). Coffer keeps the fallback so pre-1.25 data stays readable,
//! reports such reads as stale and names the fallback in the read's source.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::aes::{CbcKey, GcmKey};
use super::{Read, Source, Transformer};
use crate::error::TransformError;
use crate::key_service::KeyServiceV1;

/// Default DEK cache size (upstream `cachesize` default).
pub const DEFAULT_CACHE_SIZE: usize = 1000;

struct Dek {
    gcm: GcmKey,
    cbc: CbcKey,
}

/// The KMS v1 envelope transformer (read only).
pub struct KmsV1 {
    name: String,
    service: Arc<dyn KeyServiceV1>,
    cache: Option<Mutex<HashMap<Vec<u8>, Arc<Dek>>>>,
    cache_size: usize,
    gcm_source: Source,
    cbc_source: Source,
}

impl KmsV1 {
    /// A KMS v1 provider named `name`; `cache_size` as in the config (negative disables).
    pub fn new(name: &str, service: Arc<dyn KeyServiceV1>, cache_size: Option<i32>) -> Self {
        let size = cache_size.unwrap_or(DEFAULT_CACHE_SIZE as i32);
        Self {
            name: name.to_owned(),
            service,
            cache: (size > 0).then(|| Mutex::new(HashMap::new())),
            cache_size: usize::try_from(size).unwrap_or(0),
            gcm_source: Source::new(format!("kms v1 {name:?} (AES-GCM)").into()),
            cbc_source: Source::new(
                format!("kms v1 {name:?} (legacy AES-CBC fallback: unauthenticated, stale)").into(),
            ),
        }
    }

    fn dek(&self, edek: &[u8]) -> Result<Arc<Dek>, TransformError> {
        if let Some(cache) = &self.cache {
            let map = cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(d) = map.get(edek) {
                return Ok(d.clone());
            }
        }
        let key = self
            .service
            .decrypt(edek)
            .map_err(TransformError::KmsV1Plugin)?;
        let dek = Arc::new(Dek {
            gcm: GcmKey::new(key.expose_secret())?,
            cbc: CbcKey::new(key.expose_secret())?,
        });
        if let Some(cache) = &self.cache {
            let mut map = cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= self.cache_size {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
            map.insert(edek.to_vec(), dek.clone());
        }
        Ok(dek)
    }
}

impl fmt::Debug for KmsV1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsV1")
            .field("name", &self.name)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Transformer for KmsV1 {
    fn from_storage(&self, data: &[u8], etcd_key: &[u8]) -> Result<Read, TransformError> {
        if data.len() < 2 {
            return Err(TransformError::EnvelopeLengthPrefix);
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let Some(edek) = data.get(2..2 + len) else {
            return Err(TransformError::EnvelopeLengthPrefix);
        };
        let payload = &data[2 + len..];
        let dek = self.dek(edek)?;
        let gcm_err = match dek.gcm.open(payload, etcd_key) {
            Ok(plaintext) => return Ok(self.gcm_source.read(plaintext, false)),
            Err(e) => e,
        };
        match dek.cbc.open(payload) {
            Ok(plaintext) => Ok(self.cbc_source.read(plaintext, true)),
            Err(cbc_err) => Err(TransformError::Aggregate(vec![gcm_err, cbc_err])),
        }
    }

    fn to_storage_into(
        &self,
        _plaintext: &[u8],
        _etcd_key: &[u8],
        _out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        Err(TransformError::KmsV1ReadOnly {
            name: self.name.clone(),
        })
    }
}
