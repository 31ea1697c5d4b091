//! HKDF-derived AES-256-GCM keys of one seed: reused for a bounded number of writes, and
//! cached for reads by their `info`.
//!
//! kube-apiserver derives a new key for every write (a fresh 32-byte `info` each time), so
//! every value pays HKDF-Expand plus an AES key schedule, and a read derives again. Coffer's
//! writer ([`WriteKeys`] with `per_key` > 1) keeps one derived key for up to `per_key` writes,
//! each with its own fresh random 12-byte nonce and the key's `info` in the value, then draws a
//! new `info`. The stored format is unchanged, so kube-apiserver reads these values as its own.
//! Readers keep a few derived keys per seed ([`ReadKeys`]), keyed by the full `info`.
//!
//! With `per_key` = 1 the writer is kube-apiserver's: info, then nonce, drawn per write, in
//! that order (the vectors replay upstream's randomness through it).
//!
//! The safety argument is in [`super`]'s module docs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use ring::aead::{LessSafeKey, AES_256_GCM};
use ring::hkdf;

use super::{GCM_NONCE_LEN, GCM_TAG_LEN, INFO_LEN};
use crate::error::TransformError;
use crate::providers::aes::GcmKey;
use crate::rng::RandomSource;

/// HKDF-Expand(seed, info) as an AES-256-GCM key (no Extract, as upstream).
pub(crate) fn derive(prk: &hkdf::Prk, info: &[u8]) -> Result<GcmKey, TransformError> {
    let info = [info];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| TransformError::EncryptFailed("HKDF expand failed"))?;
    Ok(GcmKey::from_ring(LessSafeKey::new(okm.into())))
}

struct InUse {
    info: [u8; INFO_LEN],
    key: GcmKey,
    uses: AtomicU64,
}

/// The write side: the seed and the derived key in use.
pub(crate) struct WriteKeys {
    prk: hkdf::Prk,
    per_key: u64,
    current: RwLock<Option<InUse>>,
}

impl WriteKeys {
    /// Writes under `prk`, one derived key per `per_key` writes (at least 1).
    pub(crate) fn new(prk: hkdf::Prk, per_key: u64) -> Self {
        Self {
            prk,
            per_key: per_key.max(1),
            current: RwLock::new(None),
        }
    }

    /// Appends `encryptedData` as a protobuf field 1 (`0x0a`, length, info ‖ nonce ‖ ct ‖ tag).
    pub(crate) fn seal(
        &self,
        rng: &dyn RandomSource,
        etcd_key: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        let header = |out: &mut Vec<u8>, info: &[u8; INFO_LEN]| {
            out.push(0x0a);
            let len = INFO_LEN + GCM_NONCE_LEN + plaintext.len() + GCM_TAG_LEN;
            prost::encoding::encode_varint(len as u64, out);
            out.extend_from_slice(info);
        };
        if self.per_key == 1 {
            let mut info = [0u8; INFO_LEN];
            rng.fill(&mut info)?;
            let mut nonce = [0u8; GCM_NONCE_LEN];
            rng.fill(&mut nonce)?;
            let key = derive(&self.prk, &info)?;
            header(out, &info);
            return key.seal_append(nonce, etcd_key, plaintext, out);
        }
        let mut nonce = [0u8; GCM_NONCE_LEN];
        rng.fill(&mut nonce)?;
        loop {
            {
                let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(k) = current.as_ref() {
                    if k.uses.fetch_add(1, Ordering::Relaxed) < self.per_key {
                        header(out, &k.info);
                        return k.key.seal_append(nonce, etcd_key, plaintext, out);
                    }
                }
            }
            self.next_key(rng)?;
        }
    }

    /// Draws a new info and derives its key, unless another writer already did.
    fn next_key(&self, rng: &dyn RandomSource) -> Result<(), TransformError> {
        let mut info = [0u8; INFO_LEN];
        rng.fill(&mut info)?;
        let key = derive(&self.prk, &info)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let spent = current
            .as_ref()
            .is_none_or(|k| k.uses.load(Ordering::Relaxed) >= self.per_key);
        if spent {
            *current = Some(InUse {
                info,
                key,
                uses: AtomicU64::new(0),
            });
        }
        Ok(())
    }
}

/// Number of derived keys a seed keeps for reads.
pub const READ_KEYS_PER_SEED: usize = 16;

struct ReadSlot {
    key: RwLock<Option<([u8; INFO_LEN], GcmKey)>>,
    /// The first 8 bytes of the last info that missed here: a key is kept only when its info
    /// misses twice, so values written one info per value (kube-apiserver's) never take the
    /// slot's write lock.
    last_miss: AtomicU64,
}

/// The read side: a few derived keys of one seed, direct-mapped by the info's first byte.
pub(crate) struct ReadKeys {
    slots: Vec<ReadSlot>,
}

impl ReadKeys {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..READ_KEYS_PER_SEED)
                .map(|_| ReadSlot {
                    key: RwLock::new(None),
                    last_miss: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Opens `buf` = info ‖ nonce ‖ ct ‖ tag in place (the plaintext is left in `buf`).
    pub(crate) fn open(
        &self,
        prk: &hkdf::Prk,
        buf: &mut Vec<u8>,
        etcd_key: &[u8],
    ) -> Result<(), TransformError> {
        let mut info = [0u8; INFO_LEN];
        info.copy_from_slice(buf.get(..INFO_LEN).ok_or(TransformError::ShortData)?);
        let slot = &self.slots[usize::from(info[0]) % READ_KEYS_PER_SEED];
        {
            let cached = slot.key.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((i, key)) = cached.as_ref() {
                if *i == info {
                    return key.open_within(buf, INFO_LEN, etcd_key);
                }
            }
        }
        let key = derive(prk, &info)?;
        key.open_within(buf, INFO_LEN, etcd_key)?;
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&info[..8]);
        let fp = u64::from_le_bytes(fp);
        if slot.last_miss.swap(fp, Ordering::Relaxed) == fp {
            if let Ok(mut cached) = slot.key.try_write() {
                *cached = Some((info, key));
            }
        }
        Ok(())
    }
}
