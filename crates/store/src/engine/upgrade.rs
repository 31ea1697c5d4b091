//! Upgrades a data directory of storage format 1 (records, lease rows and meta without
//! checksums; a log whose entries have no trailer) to format 2, in place, at start: the old log
//! is replayed with format 1's rules, every record and lease row is rewritten with its
//! checksum, the meta becomes one checksummed row, all in one durable commit; then the old log
//! is removed (a crash before that leaves a log whose entries the new checkpoint covers).

use std::path::Path;

use coffer_proto::AlarmMember;
use redb::{Database, ReadableTable};

use super::{engine_err, Meta, FORMAT, LEASES, META, META_FORMAT, META_STATE, RECORDS};
use crate::record::{Record, Rev};
use crate::Error;

/// Format 1's meta rows (8-byte big-endian i64 each, alarms as a list).
const V1_ALARMS: &str = "alarms";

/// Upgrades the open format-1 `db` in `dir`; returns the new meta.
pub(super) fn upgrade_v1(db: &Database, dir: &Path, name: &str) -> Result<Meta, Error> {
    let mut wtxn = db.begin_write().map_err(engine_err("begin write"))?;
    wtxn.set_durability(redb::Durability::Immediate)
        .map_err(engine_err("durability"))?;
    let meta = {
        let mut meta = wtxn.open_table(META).map_err(engine_err("open meta"))?;
        let int = |t: &redb::Table<'_, &'static str, &'static [u8]>, n: &str| match t
            .get(n)
            .map_err(engine_err("read meta"))?
        {
            Some(g) => g
                .value()
                .try_into()
                .map(|b| Some(i64::from_be_bytes(b)))
                .map_err(|_| {
                    Error::Corrupt(format!("{name}: the format-1 meta entry {n:?} is damaged"))
                }),
            None => Ok(None),
        };
        let checkpoint = int(&meta, "wal_checkpoint_seq")?.unwrap_or(0) as u64;
        // Replay the old log first (records are then still in format 1).
        let wal_path = dir.join(crate::wal::WAL_FILE);
        let log = std::fs::read(&wal_path).unwrap_or_default();
        let mut last = checkpoint;
        {
            let mut records = wtxn
                .open_table(RECORDS)
                .map_err(engine_err("open records"))?;
            let mut leases = wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
            for ops in v1_log(&log, checkpoint) {
                for op in ops {
                    match op {
                        V1Op::PutRecord(k, v) => drop(
                            records
                                .insert(k.as_slice(), v.as_slice())
                                .map_err(engine_err("replay"))?,
                        ),
                        V1Op::DelRecord(k) => {
                            drop(records.remove(k.as_slice()).map_err(engine_err("replay"))?)
                        }
                        V1Op::Meta(n, v) => drop(
                            meta.insert(n.as_str(), v.to_be_bytes().as_slice())
                                .map_err(engine_err("replay"))?,
                        ),
                        V1Op::DelLease(id) => {
                            drop(leases.remove(id).map_err(engine_err("replay"))?)
                        }
                    }
                }
                last += 1;
            }
        }
        let alarms: Vec<AlarmMember> = match meta.get(V1_ALARMS).map_err(engine_err("read meta"))? {
            Some(g) => crate::alarm::decode(g.value())?,
            None => Vec::new(),
        };
        let m = Meta {
            cluster_id: int(&meta, "cluster_id")?.unwrap_or(0) as u64,
            member_id: int(&meta, "member_id")?.unwrap_or(0) as u64,
            current_revision: int(&meta, "current_revision")?.unwrap_or(1),
            scheduled_compact: int(&meta, "scheduled_compact_revision")?,
            finished_compact: int(&meta, "finished_compact_revision")?,
            wal_checkpoint_seq: last,
            alarms,
            write_counts: Vec::new(),
        };
        for n in [
            "cluster_id",
            "member_id",
            "current_revision",
            "scheduled_compact_revision",
            "finished_compact_revision",
            "wal_checkpoint_seq",
            V1_ALARMS,
        ] {
            meta.remove(n).map_err(engine_err("upgrade meta"))?;
        }
        meta.insert(META_FORMAT, FORMAT.to_be_bytes().as_slice())
            .map_err(engine_err("upgrade meta"))?;
        meta.insert(META_STATE, m.encode().as_slice())
            .map_err(engine_err("upgrade meta"))?;
        m
    };
    {
        let mut records = wtxn
            .open_table(RECORDS)
            .map_err(engine_err("open records"))?;
        let mut rewritten = Vec::new();
        let mut buf = Vec::new();
        for item in records.iter().map_err(engine_err("scan records"))? {
            let (k, v) = item.map_err(engine_err("scan records"))?;
            let rev = Rev::from_key(k.value())?;
            Record::decode_v1(rev, v.value())?.encode_into(rev, &mut buf)?;
            rewritten.push((rev, std::mem::take(&mut buf)));
        }
        for (rev, v) in rewritten {
            records
                .insert(rev.to_key().as_slice(), v.as_slice())
                .map_err(engine_err("upgrade a record"))?;
        }
        let mut leases = wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
        let mut rows = Vec::new();
        for item in leases.iter().map_err(engine_err("scan leases"))? {
            let (k, v) = item.map_err(engine_err("scan leases"))?;
            let (ttl, rem) = crate::lease::decode_v1(k.value(), v.value())?;
            rows.push((k.value(), ttl, rem));
        }
        for (id, ttl, rem) in rows {
            leases
                .insert(id, crate::lease::encode(id, ttl, rem).as_slice())
                .map_err(engine_err("upgrade a lease"))?;
        }
    }
    wtxn.commit().map_err(engine_err("commit the upgrade"))?;
    let wal_path = dir.join(crate::wal::WAL_FILE);
    if wal_path.exists() {
        std::fs::remove_file(&wal_path).map_err(|e| {
            Error::Engine(format!(
                "remove the format-1 log {}: {e}",
                wal_path.display()
            ))
        })?;
        crate::disk::sync_dir(dir)?;
    }
    tracing::info!(
        path = name,
        "upgraded the store to storage format 2 (checksummed records)"
    );
    Ok(meta)
}

enum V1Op {
    PutRecord(Vec<u8>, Vec<u8>),
    DelRecord(Vec<u8>),
    Meta(String, i64),
    DelLease(i64),
}

/// Format 1's log: entries `len ‖ crc32(seq ‖ payload) ‖ seq ‖ payload` from offset 0, one run
/// of consecutive sequence numbers; those after `checkpoint`, in order.
fn v1_log(bytes: &[u8], checkpoint: u64) -> Vec<Vec<V1Op>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut prev: Option<u64> = None;
    while let Some((seq, ops, next)) = v1_entry(bytes, at) {
        if prev.is_some_and(|p| seq != p + 1) {
            break;
        }
        if seq > checkpoint {
            out.push(ops);
        }
        prev = Some(seq);
        at = next;
    }
    out
}

fn v1_entry(bytes: &[u8], at: usize) -> Option<(u64, Vec<V1Op>, usize)> {
    let h = bytes.get(at..at.checked_add(16)?)?;
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let end = at.checked_add(16)?.checked_add(len)?;
    let mut body = bytes.get(at + 16..end)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..16]);
    hasher.update(body);
    if hasher.finalize() != crc || seq == 0 {
        return None;
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn bytes_of(b: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
        take(b, n).map(<[u8]>::to_vec)
    }
    fn int(b: &mut &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }
    let mut ops = Vec::new();
    while !body.is_empty() {
        let tag = take(&mut body, 1)?[0];
        ops.push(match tag {
            1 => V1Op::PutRecord(bytes_of(&mut body)?, bytes_of(&mut body)?),
            2 => V1Op::DelRecord(bytes_of(&mut body)?),
            3 => V1Op::Meta(
                String::from_utf8(bytes_of(&mut body)?).ok()?,
                int(&mut body)?,
            ),
            4 => V1Op::DelLease(int(&mut body)?),
            _ => return None,
        });
    }
    Some((seq, ops, end))
}
