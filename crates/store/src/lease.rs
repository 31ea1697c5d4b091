//! Leases: grant, revoke, keep-alive, time-to-live, expiry, and their persistence.
//!
//! The lease set lives in memory ([`Leases`], in the store's shared state) and in the engine's
//! `leases` table: id (i64) → granted TTL (i64 BE) ‖ remaining TTL in milliseconds at the last
//! checkpoint (i64 BE). Grant and revoke go through the writer thread and are durable before
//! they are answered; a revoke deletes every attached key in ONE revision (sorted key order)
//! in the same engine transaction that removes the lease. Keep-alives renew in memory; the
//! remaining TTL of every lease is checkpointed every [`CHECKPOINT_INTERVAL`] and at shutdown.
//! At start each lease expires at `now + max(checkpointed remaining, MIN_TTL)`: time the
//! server was down never counts, and nothing expires before clients had a chance to renew
//! (decisions.md: remaining TTL frozen while down).
//!
//! Attachment follows the key index: the writer updates it when it publishes a group (a put
//! with a lease attaches, a put with another lease moves, a put with lease 0 or a delete
//! detaches) and it is rebuilt from the index at start.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::Error;

/// etcd's MaxLeaseTTL (seconds).
pub const MAX_TTL: i64 = 9_000_000_000;
/// Smallest TTL (seconds): etcd's `ceil(3 * election ticks / 2 * heartbeat)` with defaults.
pub const MIN_TTL: i64 = 2;
/// How often the expiry task looks for expired leases (etcd: 500 ms).
pub const EXPIRY_SCAN: Duration = Duration::from_millis(500);
/// How often remaining TTLs are checkpointed.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// One lease in memory.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// Granted TTL in seconds.
    pub ttl: i64,
    pub expiry: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What `LeaseTimeToLive` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease id.
    pub id: i64,
    /// Granted TTL in seconds.
    pub granted_ttl: i64,
    /// Remaining whole seconds (truncated), 0 when due.
    pub remaining: i64,
    /// Attached keys, sorted.
    pub keys: Vec<Vec<u8>>,
}

/// The in-memory lease set.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    pub map: HashMap<i64, Lease>,
    /// Next server-chosen id (positive int63).
    pub next_id: i64,
}

impl Leases {
    /// A fresh positive id not in use.
    pub fn fresh_id(&mut self) -> i64 {
        loop {
            self.next_id = self.next_id.wrapping_add(1) & i64::MAX;
            if self.next_id != 0 && !self.map.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Moves `key` from lease `old` to lease `new` (0 = none).
    pub fn reattach(&mut self, key: &[u8], old: i64, new: i64) {
        if old == new {
            return;
        }
        if let Some(l) = self.map.get_mut(&old) {
            l.keys.remove(key);
        }
        if let Some(l) = self.map.get_mut(&new) {
            l.keys.insert(key.to_vec());
        }
    }

    /// Status of a lease at `now`.
    pub fn status(&self, id: i64, now: Instant) -> Option<LeaseStatus> {
        let l = self.map.get(&id)?;
        Some(LeaseStatus {
            id,
            granted_ttl: l.ttl,
            remaining: l.expiry.saturating_duration_since(now).as_secs() as i64,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// Ids of leases due at `now`, soonest first.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut due: Vec<(Instant, i64)> = self
            .map
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, l)| (l.expiry, *id))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id).collect()
    }
}

/// A lease row: granted TTL ‖ remaining ms at the last checkpoint ‖ crc32 of (id ‖ both).
pub(crate) const ROW: usize = 20;

fn row_checksum(id: i64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_be_bytes());
    h.update(body);
    h.finalize()
}

/// Encodes the row of lease `id`, with its checksum.
pub(crate) fn encode(id: i64, ttl: i64, remaining_ms: i64) -> [u8; ROW] {
    let mut b = [0u8; ROW];
    b[..8].copy_from_slice(&ttl.to_be_bytes());
    b[8..16].copy_from_slice(&remaining_ms.to_be_bytes());
    let crc = row_checksum(id, &b[..16]);
    b[16..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Decodes the row of lease `id`: (granted TTL, remaining ms). A row that fails its checksum
/// (or belongs to another id) is [`Error::Corrupt`].
pub(crate) fn decode(id: i64, bytes: &[u8]) -> Result<(i64, i64), Error> {
    let corrupt = |what: &str| Error::Corrupt(format!("the row of lease {id} is damaged: {what}"));
    if bytes.len() != ROW {
        return Err(corrupt(&format!("{} bytes instead of {ROW}", bytes.len())));
    }
    let crc = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc != row_checksum(id, &bytes[..16]) {
        return Err(corrupt("checksum mismatch"));
    }
    decode_v1(id, &bytes[..16])
}

/// Decodes a lease row of storage format 1 (16 bytes, no checksum).
pub(crate) fn decode_v1(id: i64, bytes: &[u8]) -> Result<(i64, i64), Error> {
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("the row of lease {id} is not 16 bytes")))?;
    let mut ttl = [0u8; 8];
    let mut rem = [0u8; 8];
    ttl.copy_from_slice(&arr[..8]);
    rem.copy_from_slice(&arr[8..]);
    Ok((i64::from_be_bytes(ttl), i64::from_be_bytes(rem)))
}

/// The expiry at start for a checkpointed remaining TTL (never sooner than [`MIN_TTL`]).
pub(crate) fn expiry_at_start(now: Instant, remaining_ms: i64) -> Instant {
    let ms = remaining_ms.max(MIN_TTL * 1000) as u64;
    now + Duration::from_millis(ms)
}

/// Remaining milliseconds of a lease at `now`.
pub(crate) fn remaining_ms(l: &Lease, now: Instant) -> i64 {
    l.expiry.saturating_duration_since(now).as_millis() as i64
}

#[cfg(test)]
mod tests;
