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
    /// The first 8 bytes of the last info that missed here. A key replaces the slot's key only
    /// when its info misses twice in a row, so a seed whose values each have their own info
    /// (kube-apiserver's writer) takes a slot's write lock once, to fill it, and never again.
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
        let again = slot.last_miss.swap(fp, Ordering::Relaxed) == fp;
        if again
            || slot
                .key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
        {
            if let Ok(mut cached) = slot.key.try_write() {
                *cached = Some((info, key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SystemRandom;

    fn prk() -> hkdf::Prk {
        hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &[7u8; 32])
    }

    /// A value for slot 0 under `info_byte` (first info byte 0, the rest `info_byte`).
    fn value(keys: &WriteKeys, info_byte: u8) -> Vec<u8> {
        let mut info = [info_byte; INFO_LEN];
        info[0] = 0;
        let key = derive(&keys.prk, &info).unwrap();
        let mut out = info.to_vec();
        key.seal_append([1; GCM_NONCE_LEN], b"k", b"plain", &mut out)
            .unwrap();
        out
    }

    fn cached_info(reads: &ReadKeys) -> Option<u8> {
        reads.slots[0]
            .key
            .read()
            .unwrap()
            .as_ref()
            .map(|(i, _)| i[1])
    }

    #[test]
    fn a_slot_fills_when_empty_and_changes_only_for_an_info_seen_twice_in_a_row() {
        let keys = WriteKeys::new(prk(), 1);
        let reads = ReadKeys::new();
        let open = |v: &[u8]| {
            let mut buf = v.to_vec();
            reads.open(&keys.prk, &mut buf, b"k").unwrap();
            assert_eq!(buf, b"plain");
        };
        let (a, b, c) = (value(&keys, 1), value(&keys, 2), value(&keys, 3));
        open(&a);
        assert_eq!(cached_info(&reads), Some(1), "empty slot filled");
        open(&b);
        open(&c);
        open(&b);
        assert_eq!(cached_info(&reads), Some(1), "one info per value: kept");
        open(&b);
        assert_eq!(cached_info(&reads), Some(2), "twice in a row: replaced");
        open(&b);
        // A tampered value under a cached info still fails.
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(reads.open(&keys.prk, &mut bad, b"k").is_err());
        let mut short = vec![0u8; 10];
        assert!(matches!(
            reads.open(&keys.prk, &mut short, b"k"),
            Err(TransformError::ShortData)
        ));
    }

    #[test]
    fn the_writer_draws_a_new_info_after_n_writes() {
        let rng = SystemRandom::new().unwrap();
        let keys = WriteKeys::new(prk(), 2);
        let infos: Vec<Vec<u8>> = (0..5)
            .map(|_| {
                let mut out = Vec::new();
                keys.seal(&rng, b"k", b"v", &mut out).unwrap();
                out[2..2 + INFO_LEN].to_vec()
            })
            .collect();
        assert_eq!(infos[0], infos[1]);
        assert_ne!(infos[1], infos[2]);
        assert_eq!(infos[2], infos[3]);
        assert_ne!(infos[3], infos[4]);
    }
}
