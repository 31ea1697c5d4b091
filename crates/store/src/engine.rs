//! The engine layer: the one owner of the redb file and the write-ahead log.
//!
//! - The table schema ([`RECORDS`], [`LEASES`], [`META`]) and the typed [`Meta`] live here.
//! - A change to durable state is a [`Batch`]; [`apply`] writes one into a redb transaction,
//!   and the same function applies it live and when the log is replayed.
//! - [`Engine::commit`] appends the batch to the log and `fdatasync`s it, then commits it to
//!   redb without a sync; or, for a checkpoint, commits it to redb durably and restarts the log.
//!   It says whether a failure happened before anything reached the disk ([`CommitError::NotWritten`])
//!   or after ([`CommitError::Unknown`]: the write may be durable and a restart replays it).
//! - [`Engine::open_and_replay`] creates or opens the data directory, verifies the engine file
//!   (redb's integrity check reads every page against its checksum), replays the log under its
//!   recovery rules ([`crate::wal`]) and returns the [`Meta`].
//! - Every record and lease row carries its own checksum, checked on every read, so damage
//!   after start is an error for that key, never a wrong value.

mod faults;
mod meta;
mod upgrade;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

pub use faults::EngineFaults;
pub(crate) use meta::Meta;

use crate::record::Rev;
use crate::wal::Wal;
use crate::Error;

/// Records by revision: 12-byte revision key → encoded, checksummed [`crate::record::Record`].
pub(crate) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Leases: id → granted TTL ‖ remaining ms at the last checkpoint ‖ checksum.
pub(crate) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// The auth state: `state` → the encoded [`crate::auth::AuthState`] (checksummed). Created by
/// the first auth change; a store without it has the default state (disabled, revision 1).
pub(crate) const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
/// `format` (8-byte BE i64) and `state` (the encoded [`Meta`]).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Name of the engine file inside the data directory.
pub const DB_FILE: &str = "coffer.redb";
/// Storage format: 2 = checksummed records, lease rows and meta.
pub(crate) const FORMAT: i64 = 2;
const META_FORMAT: &str = "format";
const META_STATE: &str = "state";
const AUTH_STATE: &str = "state";

/// One change to durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Insert a record (encoded with its checksum).
    PutRecord(Rev, Vec<u8>),
    /// Remove a record (physical compaction).
    DelRecord(Rev),
    /// Write a lease row.
    PutLease {
        /// Lease id.
        id: i64,
        /// Granted TTL (s).
        ttl: i64,
        /// Remaining ms at this checkpoint.
        remaining_ms: i64,
    },
    /// Remove a lease row.
    DelLease(i64),
    /// Replace the auth state row (the encoded [`crate::auth::AuthState`]).
    PutAuth(Vec<u8>),
}

/// What one commit changes: its ops, and the meta as it is after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub ops: Vec<Op>,
    pub meta: Meta,
}

impl Batch {
    /// A batch that only writes `meta`.
    pub(crate) fn meta(meta: Meta) -> Batch {
        Batch {
            ops: Vec::new(),
            meta,
        }
    }

    /// Bytes of records in the batch (for the disk reserve and the group cap).
    pub(crate) fn bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::PutRecord(_, v) => v.len() as u64 + 12,
                _ => 24,
            })
            .sum()
    }

    /// The log payload: tagged ops, then the meta row.
    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        for op in &self.ops {
            match op {
                Op::PutRecord(rev, v) => {
                    out.push(1);
                    out.extend_from_slice(&rev.to_key());
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
                Op::DelRecord(rev) => {
                    out.push(2);
                    out.extend_from_slice(&rev.to_key());
                }
                Op::PutLease {
                    id,
                    ttl,
                    remaining_ms,
                } => {
                    out.push(3);
                    out.extend_from_slice(&id.to_le_bytes());
                    out.extend_from_slice(&ttl.to_le_bytes());
                    out.extend_from_slice(&remaining_ms.to_le_bytes());
                }
                Op::DelLease(id) => {
                    out.push(4);
                    out.extend_from_slice(&id.to_le_bytes());
                }
                Op::PutAuth(v) => {
                    out.push(6);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        let meta = self.meta.encode();
        out.push(5);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
    }

    fn decode(mut b: &[u8], file: &str) -> Option<Batch> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Some(head)
        }
        fn int(b: &mut &[u8]) -> Option<i64> {
            Some(i64::from_le_bytes(take(b, 8)?.try_into().ok()?))
        }
        fn rev(b: &mut &[u8]) -> Option<Rev> {
            Rev::from_key(take(b, 12)?).ok()
        }
        fn bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
            let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
            take(b, n).map(<[u8]>::to_vec)
        }
        let mut ops = Vec::new();
        loop {
            let tag = take(&mut b, 1)?[0];
            ops.push(match tag {
                1 => Op::PutRecord(rev(&mut b)?, bytes(&mut b)?),
                2 => Op::DelRecord(rev(&mut b)?),
                3 => Op::PutLease {
                    id: int(&mut b)?,
                    ttl: int(&mut b)?,
                    remaining_ms: int(&mut b)?,
                },
                4 => Op::DelLease(int(&mut b)?),
                6 => Op::PutAuth(bytes(&mut b)?),
                5 => {
                    let meta = Meta::decode(&bytes(&mut b)?, file).ok()?;
                    return b.is_empty().then_some(Batch { ops, meta });
                }
                _ => return None,
            });
        }
    }
}

/// Why a commit failed.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// Nothing reached the log or the engine file: the batch is not applied, anywhere.
    NotWritten(Error),
    /// The log append or the engine commit failed after bytes reached the disk: the batch may
    /// be durable, and a restart replays it if it is.
    Unknown(String),
}

/// Maps an engine error to [`Error::Engine`], saying what was being done.
pub(crate) fn engine_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Engine(format!("{what}: {e}"))
}

/// Writes `batch` into `wtxn`, stamping `checkpoint` into its meta. Live and in replay.
fn apply(wtxn: &redb::WriteTransaction, batch: &Batch, checkpoint: u64) -> Result<(), Error> {
    let mut records = wtxn
        .open_table(RECORDS)
        .map_err(engine_err("open records"))?;
    let mut leases = wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
    for op in &batch.ops {
        match op {
            Op::PutRecord(rev, v) => {
                records
                    .insert(rev.to_key().as_slice(), v.as_slice())
                    .map_err(engine_err("write a record"))?;
            }
            Op::DelRecord(rev) => {
                records
                    .remove(rev.to_key().as_slice())
                    .map_err(engine_err("remove a record"))?;
            }
            Op::PutLease {
                id,
                ttl,
                remaining_ms,
            } => {
                leases
                    .insert(
                        *id,
                        crate::lease::encode(*id, *ttl, *remaining_ms).as_slice(),
                    )
                    .map_err(engine_err("write a lease"))?;
            }
            Op::DelLease(id) => {
                leases.remove(*id).map_err(engine_err("remove a lease"))?;
            }
            Op::PutAuth(v) => {
                wtxn.open_table(AUTH)
                    .map_err(engine_err("open auth"))?
                    .insert(AUTH_STATE, v.as_slice())
                    .map_err(engine_err("write the auth state"))?;
            }
        }
    }
    let mut meta = wtxn.open_table(META).map_err(engine_err("open meta"))?;
    let mut m = batch.meta.clone();
    m.wal_checkpoint_seq = checkpoint;
    meta.insert(META_STATE, m.encode().as_slice())
        .map_err(engine_err("write meta"))?;
    Ok(())
}

/// Options of the engine (tests inject faults through them).
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Injected I/O faults (tests only; `None` in production).
    pub faults: Option<std::sync::Arc<EngineFaults>>,
}

/// The log and the checkpoint it is measured against; locked by the committer.
#[derive(Debug)]
struct Log {
    wal: Wal,
    /// The last log entry the engine holds durably.
    checkpoint: u64,
    buf: Vec<u8>,
}

/// The redb file and the log of one data directory.
#[derive(Debug)]
pub(crate) struct Engine {
    db: RwLock<Database>,
    log: Mutex<Log>,
    path: PathBuf,
    dir: PathBuf,
    faults: Option<std::sync::Arc<EngineFaults>>,
}

impl Engine {
    /// Opens (creating on first start) the data directory's engine file and log, replays the
    /// log and returns the engine with its meta. Damage is refused with [`Error::Corrupt`].
    pub(crate) fn open_and_replay(
        dir: &Path,
        opts: EngineOptions,
    ) -> Result<(Engine, Meta), Error> {
        crate::disk::create_dir_durably(dir)?;
        let path = dir.join(DB_FILE);
        let file_existed = path.exists();
        let file = open_private(&path, !file_existed)?;
        if !file_existed {
            crate::disk::sync_dir(dir)?;
        }
        let backend = faults::Backend::new(file, opts.faults.clone()).map_err(|e| {
            Error::Engine(format!(
                "cannot open the engine file {}: {e}",
                path.display()
            ))
        })?;
        let name = path.display().to_string();
        let db = Database::builder()
            .set_check_integrity_on_open(file_existed)
            .create_with_backend(backend)
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => {
                    Error::Corrupt(format!(
                        "{name}: the engine file failed its integrity check ({what}); restore \
                         the data directory from a backup or a snapshot"
                    ))
                }
                e => Error::Engine(format!("cannot open the engine file {name}: {e}")),
            })?;

        // Format and meta; a file without them was created but never committed to.
        let (format, meta) = {
            let rtxn = db.begin_read().map_err(engine_err("begin read"))?;
            match rtxn.open_table(META) {
                Ok(t) => {
                    let format = match t.get(META_FORMAT).map_err(engine_err("read meta"))? {
                        Some(g) => {
                            Some(i64::from_be_bytes(g.value().try_into().map_err(|_| {
                                Error::Corrupt(format!("{name}: the format entry is damaged"))
                            })?))
                        }
                        None => None,
                    };
                    let meta = match t.get(META_STATE).map_err(engine_err("read meta"))? {
                        Some(g) => Some(Meta::decode(g.value(), &name)?),
                        None => None,
                    };
                    (format, meta)
                }
                Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
                Err(e) => return Err(Error::Engine(format!("open meta: {e}"))),
            }
        };
        let mut upgraded = None;
        let fresh = match format {
            None => true,
            Some(FORMAT) => false,
            Some(1) => {
                upgraded = Some(upgrade::upgrade_v1(&db, dir, &name)?);
                false
            }
            Some(other) => {
                return Err(Error::Engine(format!(
                    "{name} has storage format {other}; this version reads format {FORMAT}"
                )))
            }
        };
        let meta = match (fresh, upgraded.or(meta)) {
            (true, _) => Meta {
                cluster_id: random_id()?,
                member_id: random_id()?,
                current_revision: 1,
                ..Meta::default()
            },
            (false, Some(m)) => m,
            (false, None) => {
                return Err(Error::Corrupt(format!(
                    "{name}: the store's meta row is missing"
                )))
            }
        };

        // An upgrade removed format 1's log; a new one starts after its checkpoint.
        let new_log = fresh || format == Some(1);
        let (wal, payloads) = Wal::open_beside(dir, meta.wal_checkpoint_seq, new_log, &path)?;
        let mut meta = meta;
        let mut batches = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let batch = Batch::decode(p, &name).ok_or_else(|| {
                Error::Corrupt(format!(
                    "{}: log entry {} passed its checksum but does not decode",
                    dir.join(crate::wal::WAL_FILE).display(),
                    meta.wal_checkpoint_seq + 1 + i as u64
                ))
            })?;
            batches.push(batch);
        }
        let engine = Engine {
            db: RwLock::new(db),
            log: Mutex::new(Log {
                checkpoint: meta.wal_checkpoint_seq,
                wal,
                buf: Vec::new(),
            }),
            path,
            dir: dir.to_path_buf(),
            faults: opts.faults,
        };
        // One durable commit: the replayed batches (or, on first start, the format and meta).
        {
            let db = engine.read_db();
            let mut wtxn = db.begin_write().map_err(engine_err("begin write"))?;
            wtxn.set_durability(redb::Durability::Immediate)
                .map_err(engine_err("durability"))?;
            let mut log = engine.lock_log();
            let checkpoint = log.wal.last_seq();
            if fresh {
                wtxn.open_table(META)
                    .map_err(engine_err("open meta"))?
                    .insert(META_FORMAT, FORMAT.to_be_bytes().as_slice())
                    .map_err(engine_err("write meta"))?;
                apply(&wtxn, &Batch::meta(meta.clone()), checkpoint)?;
            }
            for b in &batches {
                apply(&wtxn, b, checkpoint)?;
                meta = b.meta.clone();
            }
            meta.wal_checkpoint_seq = checkpoint;
            wtxn.commit()
                .map_err(engine_err("commit the replayed log"))?;
            log.checkpoint = checkpoint;
            log.wal.reset();
        }
        if !batches.is_empty() {
            tracing::info!(entries = batches.len(), "replayed the write-ahead log");
        }
        Ok((engine, meta))
    }

    fn lock_log(&self) -> MutexGuard<'_, Log> {
        // The log's state is updated only after each successful step.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commits `batch`: logged and synced there, then into redb without a sync; or, when
    /// `checkpoint` is asked or the log is due for one or cannot take the batch, into redb
    /// durably, restarting the log.
    pub(crate) fn commit(&self, batch: &Batch, checkpoint: bool) -> Result<(), CommitError> {
        if let Some(f) = &self.faults {
            let purges = batch.ops.iter().any(|op| matches!(op, Op::DelRecord(_)));
            f.before_commit(purges)
                .map_err(|e| CommitError::NotWritten(Error::Engine(e)))?;
        }
        let mut log = self.lock_log();
        let log = &mut *log;
        // Encoded only for the log: a checkpoint goes to the engine alone.
        let logged = !checkpoint && !log.wal.wants_checkpoint() && {
            batch.encode(&mut log.buf);
            log.wal.fits(log.buf.len())
        };
        let db = self.read_db();
        let not_written = CommitError::NotWritten;
        let mut wtxn = db
            .begin_write()
            .map_err(|e| not_written(Error::Engine(format!("begin write: {e}"))))?;
        wtxn.set_durability(if logged {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        })
        .map_err(|e| not_written(Error::Engine(format!("durability: {e}"))))?;
        let stamp = if logged {
            log.checkpoint
        } else {
            log.wal.last_seq()
        };
        apply(&wtxn, batch, stamp).map_err(not_written)?;
        if logged {
            if let Some(f) = &self.faults {
                f.before_log_append().map_err(CommitError::Unknown)?;
            }
            log.wal
                .append(&log.buf)
                .map_err(|e| CommitError::Unknown(e.to_string()))?;
            if let Some(f) = &self.faults {
                f.before_engine_commit().map_err(CommitError::Unknown)?;
            }
        }
        let started = std::time::Instant::now();
        wtxn.commit()
            .map_err(|e| CommitError::Unknown(format!("engine commit: {e}")))?;
        coffer_metrics::metrics()
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        if !logged {
            log.checkpoint = stamp;
            log.wal.reset();
        }
        Ok(())
    }

    /// A consistent read view of the engine (sees every commit made before it began).
    pub(crate) fn read(&self) -> Result<ReadTransaction, Error> {
        self.read_db()
            .begin_read()
            .map_err(engine_err("begin read"))
    }

    /// Size of the engine file in bytes.
    pub(crate) fn file_size(&self) -> i64 {
        fs::metadata(&self.path).map_or(0, |m| m.len() as i64)
    }

    /// Bytes of the file in use by live pages.
    pub(crate) fn in_use(&self) -> Result<i64, Error> {
        let db = self.read_db();
        let wtxn = db
            .begin_write()
            .map_err(engine_err("begin a status transaction"))?;
        let stats = wtxn.stats().map_err(engine_err("read engine statistics"))?;
        let in_use = stats.allocated_pages() as i64 * stats.page_size() as i64;
        wtxn.abort()
            .map_err(engine_err("end a status transaction"))?;
        Ok(in_use)
    }

    /// Rewrites the file without free pages, waiting (up to 10 s) for readers to finish.
    pub(crate) fn defragment(&self) -> Result<(), Error> {
        for _ in 0..10_000 {
            let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
            match db.compact() {
                Ok(_) => return Ok(()),
                Err(redb::CompactionError::TransactionInProgress) => {
                    drop(db);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(Error::Engine(format!("defragment: {e}"))),
            }
        }
        Err(Error::Engine(
            "defragment: readers kept the engine busy for 10 s; try again".into(),
        ))
    }

    /// Calls `f` with every record, in revision order (start-up index rebuild). Each record's
    /// checksum is verified.
    pub(crate) fn scan_records(
        &self,
        mut f: impl FnMut(Rev, crate::record::Record<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let rtxn = self.read()?;
        let table = rtxn
            .open_table(RECORDS)
            .map_err(engine_err("open records"))?;
        for item in table.iter().map_err(engine_err("scan records"))? {
            let (k, v) = item.map_err(engine_err("scan records"))?;
            let rev = Rev::from_key(k.value())?;
            f(rev, crate::record::Record::decode(rev, v.value())?)?;
        }
        Ok(())
    }

    /// Every lease row: `(id, granted ttl, remaining ms)`.
    pub(crate) fn leases(&self) -> Result<Vec<(i64, i64, i64)>, Error> {
        let rtxn = self.read()?;
        lease_rows(&rtxn)
    }
}

/// Every lease row of a read view: `(id, granted ttl, remaining ms)`, checksums verified.
pub(crate) fn lease_rows(rtxn: &ReadTransaction) -> Result<Vec<(i64, i64, i64)>, Error> {
    let table = rtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
    let mut out = Vec::new();
    for item in table.iter().map_err(engine_err("scan leases"))? {
        let (k, v) = item.map_err(engine_err("scan leases"))?;
        let id = k.value();
        let (ttl, rem) = crate::lease::decode(id, v.value())?;
        out.push((id, ttl, rem));
    }
    Ok(out)
}

/// The auth state of a read view (the default state when no change was ever made).
pub(crate) fn read_auth(rtxn: &ReadTransaction) -> Result<crate::auth::AuthState, Error> {
    let t = match rtxn.open_table(AUTH) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
        Err(e) => return Err(Error::Engine(format!("open auth: {e}"))),
    };
    match t
        .get(AUTH_STATE)
        .map_err(engine_err("read the auth state"))?
    {
        Some(g) => crate::auth::AuthState::decode(g.value()),
        None => Ok(Default::default()),
    }
}

/// The meta row of a read view.
pub(crate) fn read_meta(rtxn: &ReadTransaction) -> Result<Meta, Error> {
    let t = rtxn.open_table(META).map_err(engine_err("open meta"))?;
    let g = t
        .get(META_STATE)
        .map_err(engine_err("read meta"))?
        .ok_or_else(|| Error::Corrupt("the store's meta row is missing".into()))?;
    Meta::decode(g.value(), DB_FILE)
}

/// Reads the record of `rev` from a read view; `None` if there is none. The checksum is
/// verified by the decoder the caller applies ([`crate::record::Record::decode`]).
pub(crate) fn get_record<'t>(
    table: &'t impl ReadableTable<&'static [u8], &'static [u8]>,
    rev: Rev,
) -> Result<Option<redb::AccessGuard<'t, &'static [u8]>>, Error> {
    table
        .get(rev.to_key().as_slice())
        .map_err(engine_err("read a record"))
}

/// The write counts persisted in the stopped store of `data_dir` (for `coffer config check`).
/// A store in use by a running server cannot be opened: the error says so.
pub fn read_write_counts(data_dir: &Path) -> Result<Vec<(String, u64)>, Error> {
    let path = data_dir.join(DB_FILE);
    let db = Database::builder().open_read_only(&path).map_err(|e| {
        Error::Engine(format!(
            "cannot open {} read-only (is the server running on it?): {e}",
            path.display()
        ))
    })?;
    let rtxn = db.begin_read().map_err(engine_err("begin read"))?;
    Ok(read_meta(&rtxn)?.write_counts)
}

fn open_private(path: &Path, create: bool) -> Result<fs::File, Error> {
    let mut o = fs::OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true);
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| {
        Error::Engine(format!(
            "cannot open the engine file {}: {e}",
            path.display()
        ))
    })
}

fn random_id() -> Result<u64, Error> {
    loop {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b)
            .map_err(|e| Error::Engine(format!("no randomness for the cluster id: {e}")))?;
        let id = u64::from_be_bytes(b);
        if id != 0 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(i: i64) -> Batch {
        let mut rec = Vec::new();
        crate::record::Record::Put {
            key: b"k",
            create_revision: 2,
            version: i,
            lease: 0,
            sealed: b"v",
        }
        .encode_into(Rev::new(i, 0), &mut rec)
        .unwrap();
        Batch {
            ops: vec![
                Op::PutRecord(Rev::new(i, 0), rec),
                Op::DelRecord(Rev::new(i - 1, 0)),
                Op::PutLease {
                    id: i,
                    ttl: 10,
                    remaining_ms: 9000,
                },
                Op::DelLease(-i),
                Op::PutAuth(vec![i as u8; 3]),
            ],
            meta: Meta {
                current_revision: i,
                ..Meta::default()
            },
        }
    }

    #[test]
    fn batches_round_trip_through_the_log_encoding() {
        let b = batch(7);
        let mut buf = Vec::new();
        b.encode(&mut buf);
        assert_eq!(Batch::decode(&buf, "f"), Some(b));
        for n in 0..buf.len() {
            assert_eq!(Batch::decode(&buf[..n], "f"), None);
        }
    }

    #[test]
    fn logged_commits_come_back_after_losing_the_unsynced_engine_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = Engine::open_and_replay(dir.path(), EngineOptions::default()).unwrap();
        // The engine file as of its last durable commit.
        let durable = fs::read(dir.path().join(DB_FILE)).unwrap();
        for i in 2..=5 {
            engine.commit(&batch(i), false).unwrap();
        }
        drop(engine);
        fs::write(dir.path().join(DB_FILE), &durable).unwrap();
        let (engine, meta) = Engine::open_and_replay(dir.path(), EngineOptions::default()).unwrap();
        assert_eq!(meta.current_revision, 5);
        let mut seen = Vec::new();
        engine
            .scan_records(|rev, _| {
                seen.push(rev.main);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![5]);
        assert_eq!(
            engine.leases().unwrap(),
            vec![(2, 10, 9000), (3, 10, 9000), (4, 10, 9000), (5, 10, 9000)]
        );
    }
}
