//! `Maintenance.Hash` and `Maintenance.HashKV`: a deterministic digest of the keyspace at a
//! revision, for consistency checks between members or across a restore.
//!
//! etcd hashes its raw bbolt records (CRC32-Castagnoli). Coffer's stored bytes are randomised
//! ciphertexts, so a hash of them would differ between two copies of the same data; the digest
//! is therefore taken over the *plaintext* state (invariant 4): every live key at the revision
//! with its create/mod revision, version, lease and value, in key order, read through the
//! backend in pages so memory stays bounded. The value is the first four bytes of a SHA-256 of
//! that canonical encoding. It is not comparable with etcd's number, only with Coffer's own.

use coffer_proto::RangeRequest;
use coffer_store::Backend;
use sha2::{Digest, Sha256};

use crate::errors::ServerError;

/// Keys read per page while hashing.
const PAGE: i64 = 1000;

/// The result of hashing the keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyspaceHash {
    /// The digest.
    pub hash: u32,
    /// The revision that was hashed.
    pub hash_revision: i64,
    /// The store's compacted revision (0 when never compacted).
    pub compact_revision: i64,
    /// The store's current revision when the hash was taken.
    pub current_revision: i64,
}

/// Hashes the keyspace at `revision` (0 = current). As etcd's `HashByRev`, an explicit
/// revision at or below the compacted one fails with `Compacted` and one above the current
/// with `FutureRev`; 0 always hashes the current revision, even when it is the compacted one.
pub(crate) async fn hash_keyspace<B: Backend>(
    backend: &B,
    revision: i64,
) -> Result<KeyspaceHash, ServerError> {
    let st = backend.status().await?;
    let at = if revision > 0 { revision } else { st.revision };
    if at > st.revision {
        return Err(coffer_store::Error::FutureRev.into());
    }
    if revision > 0 && st.compact_revision > 0 && at <= st.compact_revision {
        return Err(coffer_store::Error::Compacted.into());
    }
    let mut digest = Sha256::new();
    let mut from = vec![0u8];
    loop {
        // The server's own read of the whole keyspace: who may ask for the hash is the
        // Maintenance service's check (admin), not a key permission.
        let page = backend
            .range(
                &coffer_store::Caller::Internal,
                RangeRequest {
                    key: from.clone(),
                    range_end: vec![0],
                    revision: at,
                    limit: PAGE,
                    ..Default::default()
                },
            )
            .await?;
        for kv in &page.kvs {
            for field in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                digest.update(field.to_be_bytes());
            }
            digest.update((kv.key.len() as u64).to_be_bytes());
            digest.update(&kv.key);
            digest.update((kv.value.len() as u64).to_be_bytes());
            digest.update(&kv.value);
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    let sum = digest.finalize();
    Ok(KeyspaceHash {
        hash: u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]),
        hash_revision: at,
        compact_revision: st.compact_revision,
        current_revision: st.revision,
    })
}
