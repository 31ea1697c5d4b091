//! HKDF-derived AES-256-GCM keys of one seed: reused for a bounded number of writes, and
//! cached for reads by their `info`.
//!
//! kube-apiserver derives a new key for every write (a fresh 32-byte `info` each time), so
//! every value pays HKDF-Expand plus an AES key schedule, and a read derives again. Coffer's
//! writer ([`InUse`]) keeps one derived key for up to `per_key` writes, each with its own
//! fresh random 12-byte nonce and the key's `info` in the value, then draws a new `info`. The
//! stored format is unchanged, so kube-apiserver reads these values as its own. Readers keep a
//! few derived keys per seed ([`ReadKeys`]), keyed by the full `info`.
//!
//! [`seal_with_new_info`] is kube-apiserver's writer: info, then nonce, drawn per write, in
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

/// Appends the protobuf field 1 header (`0x0a`, length) and the info of a value whose
/// `encryptedData` is `info ‖ nonce ‖ ct ‖ tag` for `plaintext_len` bytes.
fn header(out: &mut Vec<u8>, info: &[u8; INFO_LEN], plaintext_len: usize) {
    out.push(0x0a);
    let len = INFO_LEN + GCM_NONCE_LEN + plaintext_len + GCM_TAG_LEN;
    prost::encoding::encode_varint(len as u64, out);
    out.extend_from_slice(info);
}

/// kube-apiserver's writer: a new info and nonce per write (drawn in that order) and a key
/// derived per write. Appends `encryptedData` as a protobuf field 1.
pub(crate) fn seal_with_new_info(
    prk: &hkdf::Prk,
    rng: &dyn RandomSource,
    etcd_key: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    let mut info = [0u8; INFO_LEN];
    rng.fill(&mut info)?;
    let mut nonce = [0u8; GCM_NONCE_LEN];
    rng.fill(&mut nonce)?;
    let key = derive(prk, &info)?;
    header(out, &info, plaintext.len());
    key.seal_append(nonce, etcd_key, plaintext, out)
}

/// Coffer's writer: one derived key (one info) for up to `per_key` writes.
pub(crate) struct InUse {
    info: [u8; INFO_LEN],
    key: GcmKey,
    /// Writes attempted under this key (beyond `per_key`, attempts that found it spent).
    uses: AtomicU64,
    /// Writes already added to the `coffer_kms_writes_total` counter.
    reported: AtomicU64,
}

impl InUse {
    /// A new info drawn from `rng` and its key derived from `prk`.
    pub(crate) fn new(prk: &hkdf::Prk, rng: &dyn RandomSource) -> Result<Self, TransformError> {
        let mut info = [0u8; INFO_LEN];
        rng.fill(&mut info)?;
        Ok(Self {
            key: derive(prk, &info)?,
            info,
            uses: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        })
    }

    /// Appends `encryptedData` as a protobuf field 1 under this key with `nonce` (fresh and
    /// random), or `None`, having written nothing, when the key's `per_key` writes are used.
    pub(crate) fn try_seal(
        &self,
        per_key: u64,
        nonce: [u8; GCM_NONCE_LEN],
        etcd_key: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Result<(), TransformError>> {
        if self.uses.fetch_add(1, Ordering::Relaxed) >= per_key {
            return None;
        }
        header(out, &self.info, plaintext.len());
        Some(self.key.seal_append(nonce, etcd_key, plaintext, out))
    }

    /// Opens `buf` (`info ‖ nonce ‖ ct ‖ tag`) in place if its info is this key's; `None`
    /// (nothing done) for another info.
    pub(crate) fn open_own(
        &self,
        buf: &mut Vec<u8>,
        etcd_key: &[u8],
    ) -> Option<Result<(), TransformError>> {
        buf.starts_with(&self.info)
            .then(|| self.key.open_within(buf, INFO_LEN, etcd_key))
    }

    /// Whether its writes are used up.
    pub(crate) fn spent(&self, per_key: u64) -> bool {
        self.uses.load(Ordering::Relaxed) >= per_key
    }

    /// Writes made under this key and not reported yet; each write is reported once.
    pub(crate) fn unreported(&self, per_key: u64) -> u64 {
        let made = self.uses.load(Ordering::Relaxed).min(per_key);
        let before = self.reported.fetch_max(made, Ordering::Relaxed);
        made.saturating_sub(before)
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
    fn value(prk: &hkdf::Prk, info_byte: u8) -> Vec<u8> {
        let mut info = [info_byte; INFO_LEN];
        info[0] = 0;
        let key = derive(prk, &info).unwrap();
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
        let prk = prk();
        let reads = ReadKeys::new();
        let open = |v: &[u8]| {
            let mut buf = v.to_vec();
            reads.open(&prk, &mut buf, b"k").unwrap();
            assert_eq!(buf, b"plain");
        };
        let (a, b, c) = (value(&prk, 1), value(&prk, 2), value(&prk, 3));
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
        assert!(reads.open(&prk, &mut bad, b"k").is_err());
        let mut short = vec![0u8; 10];
        assert!(matches!(
            reads.open(&prk, &mut short, b"k"),
            Err(TransformError::ShortData)
        ));
    }

    #[test]
    fn a_derived_key_serves_n_writes_and_reports_each_once() {
        let rng = SystemRandom::new().unwrap();
        let key = InUse::new(&prk(), &rng).unwrap();
        let mut infos = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            key.try_seal(2, [1; GCM_NONCE_LEN], b"k", b"v", &mut out)
                .unwrap()
                .unwrap();
            infos.push(out[2..2 + INFO_LEN].to_vec());
        }
        assert_eq!(infos[0], infos[1]);
        assert_eq!(key.unreported(2), 2);
        assert_eq!(key.unreported(2), 0);
        let mut out = Vec::new();
        assert!(key
            .try_seal(2, [2; GCM_NONCE_LEN], b"k", b"v", &mut out)
            .is_none());
        assert!(out.is_empty() && key.spent(2));
        assert_eq!(key.unreported(2), 0, "a refused attempt is no write");
        let other = InUse::new(&prk(), &rng).unwrap();
        assert_ne!(other.info, key.info);
    }
}
