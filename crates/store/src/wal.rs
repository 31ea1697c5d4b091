//! The write-ahead log in front of the engine, as etcd keeps its WAL in front of bbolt.
//!
//! A redb commit that is durable on its own writes several scattered pages before its
//! `fdatasync`; a group's mutations appended to one preallocated file and `fdatasync`ed cost one
//! sequential write. So each group is appended here and made durable first, then committed to
//! redb *without* an fsync (`Durability::None`), and only then acknowledged. Every durable redb
//! commit (periodically, when the log fills, on lease writes and at shutdown) records the last
//! log sequence number it covers (`wal_checkpoint_seq` in `meta`) and the log starts again at
//! offset 0. At start the entries after the checkpoint are replayed into redb, in order.
//!
//! Entry: `len u32 LE ‖ crc32 u32 LE (of seq ‖ payload) ‖ seq u64 LE ‖ payload`. A scan stops
//! at the first entry whose checksum fails or whose sequence number is not the next one, so the
//! remains of older entries after a restart at offset 0 and a torn last write are never applied.
//! Replaying an entry whose effects redb already holds is harmless: every operation sets or
//! removes one row to a fixed value.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::{ReadableTableMetadata, WriteTransaction};

use crate::embedded::{put_meta_i64, META, RECORDS};
use crate::lease::LEASES;
use crate::Error;

/// The log file under the data directory.
pub(crate) const WAL_FILE: &str = "coffer.wal";
/// Preallocated size: writes into allocated blocks keep `fdatasync` to the data itself.
const CAPACITY: u64 = 8 * 1024 * 1024;
/// A checkpoint is taken once the log holds this much.
const CHECKPOINT_AT: u64 = CAPACITY / 2;
const HEADER: usize = 16;

/// One engine mutation, as the writer applied it to the redb transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WalOp {
    /// Insert a record (revision key → encoded record with its sealed value).
    PutRecord(Vec<u8>, Vec<u8>),
    /// Remove a record (physical compaction).
    DelRecord(Vec<u8>),
    /// Set an i64 in `meta`.
    Meta(String, i64),
    /// Remove a lease row.
    DelLease(i64),
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Engine(format!("{what} {}: {e}", path.display()))
}

/// The open log.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    offset: u64,
    last_seq: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (creating and preallocating) the log in `dir` and returns the entries after
    /// `checkpoint_seq`, in order, for replay.
    pub(crate) fn open(dir: &Path, checkpoint_seq: u64) -> Result<(Wal, Vec<Vec<WalOp>>), Error> {
        let path = dir.join(WAL_FILE);
        let existed = path.exists();
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut file = o
            .open(&path)
            .map_err(io_err("cannot open the log", &path))?;
        let len = file
            .metadata()
            .map_err(io_err("cannot stat the log", &path))?
            .len();
        let mut entries = Vec::new();
        let mut last_seq = checkpoint_seq;
        if existed && len > 0 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut bytes))
                .map_err(io_err("cannot read the log", &path))?;
            // The log is one run of consecutive sequence numbers from offset 0; entries the
            // checkpoint already covers are skipped, the rest replayed.
            let mut at = 0usize;
            let mut prev: Option<u64> = None;
            while let Some((seq, ops, next)) = decode_entry(&bytes, at) {
                match prev {
                    None if seq > checkpoint_seq + 1 => {
                        return Err(Error::Engine(format!(
                            "{}: the write-ahead log starts at entry {seq} but the engine's \
                             last checkpoint is {checkpoint_seq}: entries are missing; refusing \
                             to start rather than lose acknowledged writes",
                            path.display()
                        )))
                    }
                    Some(p) if seq != p + 1 => break,
                    _ => {}
                }
                if seq > checkpoint_seq {
                    entries.push(ops);
                    last_seq = seq;
                }
                prev = Some(seq);
                at = next;
            }
        }
        if len < CAPACITY {
            // Real zeros, not a sparse extension: later writes then allocate nothing.
            let zeros = vec![0u8; 1 << 20];
            file.seek(SeekFrom::Start(len))
                .map_err(io_err("cannot extend the log", &path))?;
            let mut left = CAPACITY - len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])
                    .map_err(io_err("cannot extend the log", &path))?;
                left -= n as u64;
            }
            file.sync_all()
                .map_err(io_err("cannot sync the log", &path))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("cannot sync", dir))?;
        }
        Ok((
            Wal {
                file,
                path,
                offset: 0,
                last_seq,
                buf: Vec::new(),
            },
            entries,
        ))
    }

    /// Sequence number of the last entry appended (or replayed).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether the next commit should be a durable checkpoint instead of a log append.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.offset >= CHECKPOINT_AT
    }

    /// Appends `ops` as the next entry and makes it durable. `Ok(false)`: no room, the caller
    /// commits durably instead.
    pub(crate) fn append(&mut self, ops: &[WalOp]) -> Result<bool, Error> {
        let seq = self.last_seq + 1;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; HEADER]);
        encode_ops(ops, &mut self.buf);
        let body_len = self.buf.len() - HEADER;
        if self.offset + self.buf.len() as u64 > CAPACITY {
            return Ok(false);
        }
        let len = u32::try_from(body_len)
            .map_err(|_| Error::Engine("a commit group is larger than 4 GiB".into()))?;
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&self.buf[8..]);
        let crc = h.finalize();
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&self.buf, self.offset)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("cannot append to the log", &self.path))?;
        self.offset += self.buf.len() as u64;
        self.last_seq = seq;
        Ok(true)
    }

    /// After a durable commit that recorded `last_seq` as its checkpoint: start over.
    pub(crate) fn reset(&mut self) {
        self.offset = 0;
    }
}

/// Records `wal_checkpoint_seq` in a transaction that is about to commit durably.
pub(crate) fn mark_checkpoint(wtxn: &WriteTransaction, seq: u64) -> Result<(), Error> {
    let mut meta = wtxn
        .open_table(META)
        .map_err(|e| Error::Engine(format!("open meta: {e}")))?;
    put_meta_i64(&mut meta, "wal_checkpoint_seq", seq as i64)
}

/// Applies replayed entries to a transaction.
pub(crate) fn apply(wtxn: &WriteTransaction, entries: &[Vec<WalOp>]) -> Result<(), Error> {
    let engine = |what: &'static str| move |e: redb::Error| Error::Engine(format!("{what}: {e}"));
    let mut records = wtxn
        .open_table(RECORDS)
        .map_err(|e| engine("open records")(e.into()))?;
    let mut meta = wtxn
        .open_table(META)
        .map_err(|e| engine("open meta")(e.into()))?;
    let mut leases = wtxn
        .open_table(LEASES)
        .map_err(|e| engine("open leases")(e.into()))?;
    for ops in entries {
        for op in ops {
            match op {
                WalOp::PutRecord(k, v) => {
                    records
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| engine("replay record")(e.into()))?;
                }
                WalOp::DelRecord(k) => {
                    records
                        .remove(k.as_slice())
                        .map_err(|e| engine("replay compaction")(e.into()))?;
                }
                WalOp::Meta(name, v) => put_meta_i64(&mut meta, name, *v)?,
                WalOp::DelLease(id) => {
                    leases
                        .remove(*id)
                        .map_err(|e| engine("replay lease removal")(e.into()))?;
                }
            }
        }
    }
    let _ = records.len();
    Ok(())
}

fn encode_ops(ops: &[WalOp], out: &mut Vec<u8>) {
    let put_bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match op {
            WalOp::PutRecord(k, v) => {
                out.push(1);
                put_bytes(out, k);
                put_bytes(out, v);
            }
            WalOp::DelRecord(k) => {
                out.push(2);
                put_bytes(out, k);
            }
            WalOp::Meta(name, v) => {
                out.push(3);
                put_bytes(out, name.as_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            WalOp::DelLease(id) => {
                out.push(4);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

/// Decodes the entry at `at`: `(seq, ops, next offset)`, or `None` at the end of the log, a
/// checksum mismatch or anything malformed.
fn decode_entry(bytes: &[u8], at: usize) -> Option<(u64, Vec<WalOp>, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let end = at.checked_add(HEADER)?.checked_add(len)?;
    let body = bytes.get(at + HEADER..end)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..16]);
    h.update(body);
    if h.finalize() != crc || seq == 0 {
        return None;
    }
    let ops = decode_ops(body)?;
    Some((seq, ops, end))
}

fn decode_ops(mut b: &[u8]) -> Option<Vec<WalOp>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
        take(b, n).map(<[u8]>::to_vec)
    }
    fn int(b: &mut &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }
    let mut ops = Vec::new();
    while !b.is_empty() {
        let tag = take(&mut b, 1)?[0];
        ops.push(match tag {
            1 => WalOp::PutRecord(bytes(&mut b)?, bytes(&mut b)?),
            2 => WalOp::DelRecord(bytes(&mut b)?),
            3 => WalOp::Meta(String::from_utf8(bytes(&mut b)?).ok()?, int(&mut b)?),
            4 => WalOp::DelLease(int(&mut b)?),
            _ => return None,
        });
    }
    Some(ops)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    fn ops(i: u8) -> Vec<WalOp> {
        vec![
            WalOp::PutRecord(vec![i; 12], vec![i; 40]),
            WalOp::DelRecord(vec![i; 12]),
            WalOp::Meta("current_revision".into(), i as i64),
            WalOp::DelLease(-(i as i64)),
        ]
    }

    #[test]
    fn entries_after_the_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), 0).unwrap();
        assert!(replay.is_empty());
        for i in 1..=5 {
            assert!(wal.append(&ops(i)).unwrap());
        }
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(replay, vec![ops(3), ops(4), ops(5)]);
        assert_eq!(wal.last_seq(), 5);
    }

    #[test]
    fn old_entries_after_a_restart_at_offset_zero_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        for i in 1..=4 {
            wal.append(&ops(i)).unwrap();
        }
        // Checkpoint at 4, then one new entry overwrites the start of the log.
        wal.reset();
        wal.append(&ops(5)).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 4).unwrap();
        assert_eq!(replay, vec![ops(5)]);
        // Checkpoint at 5 with nothing after it: nothing to replay.
        let (_, replay) = Wal::open(dir.path(), 5).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn a_torn_or_corrupt_entry_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        for i in 1..=3 {
            wal.append(&ops(i)).unwrap();
        }
        let second = wal.offset;
        drop(wal);
        // Flip a byte in the middle of the log: entries from the damaged one on are dropped.
        let path = dir.path().join(WAL_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let first_len = second as usize / 3;
        bytes[first_len + HEADER + 3] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (_, replay) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(replay, vec![ops(1)]);
    }

    #[test]
    fn file_is_preallocated_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path(), 0).unwrap());
        let m = fs::metadata(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(m.len(), CAPACITY);
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
