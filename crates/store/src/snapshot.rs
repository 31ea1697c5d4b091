//! Snapshots in etcd's own backend layout, and restoring a data directory from one.
//!
//! A snapshot is a bbolt file laid out as etcd lays out its backend (`etcd-api.md` §3), so that
//! `etcdctl snapshot status`/`snapshot restore` accept it and an etcd started on the restored
//! directory serves every key. Values stay exactly as Coffer stores them, i.e. SEALED: a
//! snapshot never holds a plaintext value that was encrypted at rest.
//!
//! Buckets written (all top-level, plain key/value pairs):
//! - `key`: one entry per record. Key: 8-byte big-endian main revision, `_`, 8-byte big-endian
//!   sub revision, plus a trailing `t` for a tombstone. Value: protobuf `mvccpb.KeyValue` (a
//!   tombstone holds only its key).
//! - `lease`: 8-byte big-endian id → protobuf `leasepb.Lease{ID=1, TTL=2, RemainingTTL=3}`, the
//!   remaining TTL (seconds, rounded up) taken from the live lease set when the lease is in it.
//! - `meta`: `consistent_index` (8-byte big-endian; a restore rewrites it),
//!   `scheduledCompactRev` and `finishedCompactRev` (17-byte revisions, sub 0), as etcd's mvcc
//!   store writes them.
//! - `auth`: `authEnabled` (1 byte, 1 or 0) and `authRevision` (8-byte big-endian), as etcd's
//!   auth store keeps them; `authUsers`: user name → `authpb.User` (the bcrypt hash as etcd
//!   stores it); `authRoles`: role name → `authpb.Role`.
//! - `alarm`, `cluster`, `members`, `members_removed`: empty (etcd creates what it needs in them
//!   when it starts; a restore replaces the membership).
//!
//! Everything comes from ONE engine read transaction (records, counters and lease rows are one
//! consistent state). [`SnapshotFile`] is built in a temporary file in the data directory
//! (0600, unlinked at once so nothing is left behind) and read out in chunks followed by the
//! SHA-256 of all the bytes, the stream `etcdctl snapshot save` expects.
//!
//! [`restore`] reads such a file (from Coffer or from etcd) back into a fresh data directory:
//! same records, revisions, compaction state, leases and auth state. It checks that every value opens with
//! the given sealer before anything is served, so restoring with the wrong key fails at once,
//! naming the key (never the value).
//!
//! This module is the only place that knows the snapshot format.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer_proto::authpb;
use coffer_proto::mvccpb::KeyValue;
use prost::Message;
use redb::ReadableTable;
use sha2::{Digest, Sha256};

use crate::engine::{self, engine_err, Batch, Engine, EngineOptions, Op, RECORDS};
use crate::lease;
use crate::record::{Record, Rev};
use crate::sealer::Sealer;
use crate::state::Shared;
use crate::{EmbeddedStore, Error, StoreOptions};

/// Bytes per snapshot chunk (etcd sends 32 KiB).
pub const CHUNK_SIZE: usize = 32 * 1024;
/// Length of the trailing digest.
pub const HASH_LEN: usize = 32;

const BUCKET_KEY: &[u8] = b"key";
const BUCKET_META: &[u8] = b"meta";
const BUCKET_LEASE: &[u8] = b"lease";
const BUCKET_AUTH: &[u8] = b"auth";
const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
/// Buckets etcd keeps that Coffer leaves empty, after `alarm` (bbolt order: by name).
const EMPTY_BUCKETS: [&[u8]; 3] = [b"cluster", b"members", b"members_removed"];
const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const META_SCHEDULED: &[u8] = b"scheduledCompactRev";
const META_FINISHED: &[u8] = b"finishedCompactRev";
/// 8-byte main, `_`, 8-byte sub.
const REV_LEN: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct LeaseRow {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    /// Seconds left at the last checkpoint; 0 = unknown (the full TTL applies).
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// The keyspace revision the snapshot was taken at.
    pub revision: i64,
    /// The compaction revision (0 when never compacted).
    pub compact_revision: i64,
    /// Records (puts and tombstones) in the `key` bucket.
    pub records: u64,
    /// Leases in the `lease` bucket.
    pub leases: u64,
    /// Entries in all buckets (what `etcdctl snapshot status` reports as total keys).
    pub total_entries: u64,
    /// Size of the bbolt file in bytes, without the trailing digest.
    pub size: u64,
}

/// What [`restore`] built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreInfo {
    /// The revision of the restored store.
    pub revision: i64,
    /// The compaction revision (0 when never compacted).
    pub compact_revision: i64,
    /// Records copied.
    pub records: u64,
    /// Of those, values checked to open with the sealer.
    pub values: u64,
    /// Leases copied.
    pub leases: u64,
    /// Auth users copied.
    pub users: u64,
    /// Auth roles copied.
    pub roles: u64,
}

/// Options of [`restore`].
#[derive(Default)]
pub struct RestoreOptions<'a> {
    /// Do not compare the trailing SHA-256 (etcdutl's `--skip-hash-check`); also accepts a
    /// file without one (a copy of a backend file).
    pub skip_hash_check: bool,
    /// Called now and then with the number of records copied so far.
    pub progress: Option<&'a mut dyn FnMut(u64)>,
}

impl std::fmt::Debug for RestoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("skip_hash_check", &self.skip_hash_check)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A file could not be read or written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The target directory already holds files.
    #[error(
        "the target data directory {0} is not empty; restore builds a fresh data directory \
         (pick a new path or empty it)"
    )]
    NotEmpty(PathBuf),
    /// The file's length does not leave room for a SHA-256 after whole 512-byte blocks.
    #[error(
        "{path} has no trailing SHA-256 ({size} bytes is not a multiple of 512 plus 32); a \
         file from `etcdctl snapshot save` always has one (use --skip-hash-check for a copy of a \
         backend file)"
    )]
    NoHash {
        /// The snapshot file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The trailing SHA-256 does not match the content.
    #[error(
        "{path} is damaged: its trailing SHA-256 is {expected} but the content hashes to \
         {actual}"
    )]
    HashMismatch {
        /// The snapshot file.
        path: PathBuf,
        /// The digest stored in the file.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// The file is not a bbolt file, or is damaged.
    #[error("{path} is not a readable bbolt snapshot: {source}")]
    Bbolt {
        /// The snapshot file.
        path: PathBuf,
        /// What the reader found.
        source: coffer_bbolt::Error,
    },
    /// The bbolt file does not hold etcd's layout.
    #[error("{path}: {what}")]
    Format {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong, and where.
        what: String,
    },
    /// A value does not open with the configured keys.
    #[error(
        "the value of key {key:?} (revision {revision}) does not open with the configured keys \
         ({reason}); restore with the default key file and --encryption-provider-config the \
         snapshot was sealed with. Nothing was restored."
    )]
    Seal {
        /// The etcd key, lossily printed.
        key: String,
        /// Its revision.
        revision: i64,
        /// What the sealer said (never a value).
        reason: String,
    },
    /// The store could not be created or written.
    #[error("cannot build the store: {0}")]
    Store(#[from] Error),
}

// ----------------------------------------------------------------------------------------------
// Writing

/// The etcd `key`-bucket key of a revision.
fn etcd_rev_key(rev: Rev, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_LEN + 1);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&i64::from(rev.sub).to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE_MARK);
    }
    k
}

/// etcd's 17-byte encoding of a main revision (sub 0), as in `meta`.
fn etcd_rev_bytes(main: i64) -> Vec<u8> {
    etcd_rev_key(Rev::new(main, 0), false)
}

/// Record bytes per durable commit of a restore.
const RESTORE_BATCH_BYTES: usize = 32 << 20;

fn bbolt_err(e: coffer_bbolt::Error) -> Error {
    Error::Engine(format!("write the snapshot: {e}"))
}

/// Writes a snapshot of the store into `out` from one engine read transaction.
pub(crate) fn write<W: Write + Seek>(shared: &Shared, out: W) -> Result<(W, SnapshotInfo), Error> {
    if shared.stopped.load(Ordering::Relaxed) {
        return Err(Error::Stopped);
    }
    let rtxn = shared.engine.read()?;
    let records = rtxn
        .open_table(RECORDS)
        .map_err(engine_err("open records"))?;
    let meta = engine::read_meta(&rtxn)?;
    let lease_rows = engine::lease_rows(&rtxn)?;
    let current = meta.current_revision;
    let scheduled = meta.scheduled_compact;
    let finished = meta.finished_compact;

    // Remaining TTLs: the live set is fresher than the last checkpoint in the engine.
    let now = Instant::now();
    let live: HashMap<i64, i64> = shared
        .leases()
        .map
        .iter()
        .map(|(id, l)| (*id, lease::remaining_ms(l, now)))
        .collect();

    let mut info = SnapshotInfo {
        revision: current,
        compact_revision: scheduled.unwrap_or(0).max(0),
        ..Default::default()
    };
    let auth = engine::read_auth(&rtxn)?;
    let mut w = coffer_bbolt::Writer::new(out).map_err(bbolt_err)?;
    w.bucket(b"alarm").map_err(bbolt_err)?;
    w.bucket(BUCKET_AUTH).map_err(bbolt_err)?;
    w.put(AUTH_ENABLED, &[u8::from(auth.enabled)])
        .map_err(bbolt_err)?;
    w.put(AUTH_REVISION, &auth.revision.to_be_bytes())
        .map_err(bbolt_err)?;
    // BTreeMaps: already in key order.
    w.bucket(BUCKET_AUTH_ROLES).map_err(bbolt_err)?;
    for (name, role) in &auth.roles {
        w.put(name.as_bytes(), &role.to_proto().encode_to_vec())
            .map_err(bbolt_err)?;
    }
    w.bucket(BUCKET_AUTH_USERS).map_err(bbolt_err)?;
    for (name, user) in &auth.users {
        w.put(name.as_bytes(), &user.to_proto().encode_to_vec())
            .map_err(bbolt_err)?;
    }
    let auth_entries = 2 + auth.roles.len() as u64 + auth.users.len() as u64;
    for name in EMPTY_BUCKETS {
        w.bucket(name).map_err(bbolt_err)?;
    }

    w.bucket(BUCKET_KEY).map_err(bbolt_err)?;
    let mut buf = Vec::new();
    for item in records.iter().map_err(engine_err("scan records"))? {
        let (k, v) = item.map_err(engine_err("scan records"))?;
        let rev = Rev::from_key(k.value())?;
        let (key, kv) = match Record::decode(rev, v.value())? {
            Record::Put {
                key,
                create_revision,
                version,
                lease,
                sealed,
            } => (
                etcd_rev_key(rev, false),
                KeyValue {
                    key: key.to_vec(),
                    create_revision,
                    mod_revision: rev.main,
                    version,
                    value: sealed.to_vec(),
                    lease,
                },
            ),
            Record::Tombstone { key } => (
                etcd_rev_key(rev, true),
                KeyValue {
                    key: key.to_vec(),
                    ..Default::default()
                },
            ),
        };
        buf.clear();
        kv.encode(&mut buf)
            .map_err(|e| Error::Engine(format!("encode a snapshot record: {e}")))?;
        w.put(&key, &buf).map_err(bbolt_err)?;
        info.records += 1;
    }

    w.bucket(BUCKET_LEASE).map_err(bbolt_err)?;
    let mut leases = Vec::new();
    for (id, ttl, checkpointed_ms) in lease_rows {
        let ms = live.get(&id).copied().unwrap_or(checkpointed_ms).max(0);
        // Rounded up; at least 1 so that 0 ("unknown, full TTL") is never written.
        let remaining_ttl = (ms.saturating_add(999) / 1000).max(1);
        let row = LeaseRow {
            id,
            ttl,
            remaining_ttl,
        };
        leases.push((id.to_be_bytes(), row.encode_to_vec()));
    }
    // Big-endian bytes of negative ids sort after the positive ones.
    leases.sort();
    for (k, v) in &leases {
        w.put(k, v).map_err(bbolt_err)?;
    }
    info.leases = leases.len() as u64;

    w.bucket(BUCKET_META).map_err(bbolt_err)?;
    let mut metas: Vec<(&[u8], Vec<u8>)> = vec![(
        META_CONSISTENT_INDEX,
        u64::try_from(current).unwrap_or(0).to_be_bytes().to_vec(),
    )];
    if let Some(at) = finished {
        metas.push((META_FINISHED, etcd_rev_bytes(at)));
    }
    if let Some(at) = scheduled {
        metas.push((META_SCHEDULED, etcd_rev_bytes(at)));
    }
    metas.sort();
    for (k, v) in &metas {
        w.put(k, v).map_err(bbolt_err)?;
    }
    info.total_entries = info.records + info.leases + metas.len() as u64 + auth_entries;

    let txid = u64::try_from(current).unwrap_or(1).max(1);
    let mut out = w.finish(txid).map_err(bbolt_err)?;
    info.size = out
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::Engine(format!("size of the snapshot: {e}")))?;
    Ok((out, info))
}

/// Creates `path` for writing, readable by its owner only.
fn create_private(path: &Path) -> io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Writes a snapshot to a new file at `path` (0600; refuses an existing file), without the
/// trailing digest: the bbolt file itself.
pub(crate) fn write_to(shared: &Shared, path: &Path) -> Result<SnapshotInfo, Error> {
    let io_err = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| Error::Engine(format!("{what} {}: {e}", path.display()))
    };
    let file = create_private(path).map_err(io_err("create the snapshot file"))?;
    let result = write(shared, BufWriter::new(file)).and_then(|(out, info)| {
        let file = out
            .into_inner()
            .map_err(|e| Error::Engine(format!("write {}: {}", path.display(), e.error())))?;
        file.sync_all().map_err(io_err("sync"))?;
        Ok(info)
    });
    if result.is_err() {
        // Nothing half-written stays behind.
        let _ = fs::remove_file(path);
    }
    result
}

/// A snapshot ready to stream: the bbolt file, then its SHA-256.
pub struct SnapshotFile {
    file: File,
    info: SnapshotInfo,
    hasher: Sha256,
    sent: u64,
    done: bool,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("info", &self.info)
            .field("sent", &self.sent)
            .finish()
    }
}

/// One piece of the snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The bytes (at most [`CHUNK_SIZE`]; the last chunk is the 32-byte digest).
    pub blob: Vec<u8>,
    /// Bytes of the file left after this chunk (0 for the digest).
    pub remaining: u64,
}

impl SnapshotFile {
    /// What the snapshot holds.
    pub fn info(&self) -> SnapshotInfo {
        self.info
    }

    /// The next chunk: the file in [`CHUNK_SIZE`] pieces, then the SHA-256 of all of them;
    /// `None` after that.
    pub fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, Error> {
        if self.done {
            return Ok(None);
        }
        let left = self.info.size - self.sent;
        if left == 0 {
            self.done = true;
            let digest = std::mem::take(&mut self.hasher).finalize();
            return Ok(Some(SnapshotChunk {
                blob: digest.to_vec(),
                remaining: 0,
            }));
        }
        let n = left.min(CHUNK_SIZE as u64) as usize;
        let mut blob = vec![0u8; n];
        self.file
            .read_exact(&mut blob)
            .map_err(|e| Error::Engine(format!("read the snapshot file: {e}")))?;
        self.hasher.update(&blob);
        self.sent += n as u64;
        Ok(Some(SnapshotChunk {
            blob,
            remaining: self.info.size - self.sent,
        }))
    }
}

impl Iterator for SnapshotFile {
    type Item = Result<SnapshotChunk, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// Builds a snapshot in a temporary file in `dir` (0600, unlinked at once).
pub(crate) fn snapshot_file(shared: &Shared, dir: &Path) -> Result<SnapshotFile, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".snapshot-{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let file = create_private(&path)
        .map_err(|e| Error::Engine(format!("create the snapshot file {}: {e}", path.display())))?;
    // The open handle keeps the data; the name goes now, so a crash leaves nothing behind.
    let unlinked = fs::remove_file(&path);
    let result = write(shared, BufWriter::new(file));
    if unlinked.is_err() {
        let _ = fs::remove_file(&path);
    }
    let (out, info) = result?;
    let mut file = out
        .into_inner()
        .map_err(|e| Error::Engine(format!("write the snapshot file: {}", e.error())))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::Engine(format!("rewind the snapshot file: {e}")))?;
    Ok(SnapshotFile {
        file,
        info,
        hasher: Sha256::new(),
        sent: 0,
        done: false,
    })
}

// ----------------------------------------------------------------------------------------------
// Reading

/// The first `len` bytes of a file, as a Read + Seek of their own (the bbolt file without the
/// trailing digest).
struct Window {
    file: File,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the snapshot",
            )),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a snapshot file, checks (unless told not to) and strips its trailing SHA-256.
fn open_snapshot(path: &Path, skip_hash_check: bool) -> Result<Window, RestoreError> {
    let io_err = |what: &'static str| {
        move |source| RestoreError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = File::open(path).map_err(io_err("open the snapshot"))?;
    let size = file
        .metadata()
        .map_err(io_err("read the size of the snapshot"))?
        .len();
    let has_hash = size % 512 == HASH_LEN as u64;
    if !has_hash {
        if !skip_hash_check {
            return Err(RestoreError::NoHash {
                path: path.to_path_buf(),
                size,
            });
        }
        return Ok(Window {
            file,
            len: size,
            pos: 0,
        });
    }
    let len = size - HASH_LEN as u64;
    if !skip_hash_check {
        let mut hasher = Sha256::new();
        let mut left = len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])
                .map_err(io_err("read the snapshot"))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let mut stored = [0u8; HASH_LEN];
        file.read_exact(&mut stored)
            .map_err(io_err("read the snapshot's SHA-256"))?;
        let actual = hasher.finalize();
        if actual.as_slice() != stored {
            return Err(RestoreError::HashMismatch {
                path: path.to_path_buf(),
                expected: hex(&stored),
                actual: hex(&actual),
            });
        }
    }
    Ok(Window { file, len, pos: 0 })
}

/// Parses a `key`-bucket key: (revision, tombstone).
fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        REV_LEN => false,
        n if n == REV_LEN + 1 && k[REV_LEN] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// A `meta` revision value: etcd's 17-byte revision (main first); 8 bytes are accepted too.
fn parse_meta_rev(v: &[u8]) -> Option<i64> {
    if v.len() != REV_LEN && v.len() != 8 {
        return None;
    }
    Some(i64::from_be_bytes(v[..8].try_into().ok()?))
}

/// Whether `dir` is missing or an empty directory.
fn check_target(dir: &Path) -> Result<bool, RestoreError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty(dir.to_path_buf()));
            }
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(RestoreError::Io {
            what: "read the target directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Builds a fresh Coffer data directory in `data_dir` (missing or empty) from the etcd-layout
/// snapshot at `snapshot`: records, revisions, compaction state and leases (remaining TTL).
/// Every value is checked to open with `sealer` first; nothing is left behind on failure.
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    sealer: Arc<dyn Sealer>,
    opts: RestoreOptions<'_>,
) -> Result<RestoreInfo, RestoreError> {
    let created = check_target(data_dir)?;
    let window = open_snapshot(snapshot, opts.skip_hash_check)?;
    let result = restore_into(snapshot, window, data_dir, sealer, opts);
    if result.is_err() {
        if created {
            let _ = fs::remove_dir_all(data_dir);
        } else if let Ok(entries) = fs::read_dir(data_dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    result
}

fn restore_into(
    snapshot: &Path,
    window: Window,
    data_dir: &Path,
    sealer: Arc<dyn Sealer>,
    mut opts: RestoreOptions<'_>,
) -> Result<RestoreInfo, RestoreError> {
    let bbolt = |source| RestoreError::Bbolt {
        path: snapshot.to_path_buf(),
        source,
    };
    let bad = |what: String| RestoreError::Format {
        path: snapshot.to_path_buf(),
        what,
    };
    let mut reader = coffer_bbolt::Reader::open(window).map_err(bbolt)?;

    // An empty store first: the data directory, identities, tables and log exactly as a first
    // start makes them; then the snapshot's content through the engine, in durable batches.
    EmbeddedStore::open(data_dir, Arc::clone(&sealer), StoreOptions::default())?.close();
    let (engine, mut meta) = Engine::open_and_replay(data_dir, EngineOptions::default())?;
    let commit = |engine: &Engine, batch: &Batch| -> Result<(), Error> {
        engine.commit(batch, true).map_err(|e| match e {
            engine::CommitError::NotWritten(e) => e,
            engine::CommitError::Unknown(why) => Error::Engine(why),
        })
    };

    let mut info = RestoreInfo::default();
    let mut max_rev = 1i64;
    {
        let mut batch = Batch::meta(meta.clone());
        let mut batch_bytes = 0usize;
        let mut failed: Option<RestoreError> = None;
        let mut buf = Vec::new();
        let progress = &mut opts.progress;
        let found = reader
            .for_each(BUCKET_KEY, &mut |k, v| {
                if failed.is_some() {
                    return Ok(());
                }
                let mut step = || -> Result<(), RestoreError> {
                    let Some((main, sub, tombstone)) = parse_rev_key(k) else {
                        return Err(bad(format!(
                            "bucket \"key\" holds a key of {} bytes that is not a revision",
                            k.len()
                        )));
                    };
                    let rev = match (main >= 1, u32::try_from(sub)) {
                        (true, Ok(sub)) => Rev::new(main, sub),
                        _ => {
                            return Err(bad(format!(
                                "bucket \"key\": revision {main}.{sub} is out of range"
                            )))
                        }
                    };
                    let kv = KeyValue::decode(v).map_err(|e| {
                        bad(format!(
                            "bucket \"key\": the record at revision {main}.{sub} is not a \
                             KeyValue: {e}"
                        ))
                    })?;
                    let record = if tombstone {
                        Record::Tombstone { key: &kv.key }
                    } else {
                        if let Err(reason) = sealer.open(&kv.key, &kv.value) {
                            return Err(RestoreError::Seal {
                                key: String::from_utf8_lossy(&kv.key).into_owned(),
                                revision: main,
                                reason,
                            });
                        }
                        info.values += 1;
                        Record::Put {
                            key: &kv.key,
                            create_revision: kv.create_revision,
                            version: kv.version,
                            lease: kv.lease,
                            sealed: &kv.value,
                        }
                    };
                    record.encode_into(rev, &mut buf)?;
                    batch_bytes += buf.len();
                    batch.ops.push(Op::PutRecord(rev, std::mem::take(&mut buf)));
                    if batch_bytes >= RESTORE_BATCH_BYTES {
                        commit(&engine, &batch)?;
                        batch.ops.clear();
                        batch_bytes = 0;
                    }
                    max_rev = max_rev.max(main);
                    info.records += 1;
                    if info.records % 10_000 == 0 {
                        if let Some(p) = progress.as_mut() {
                            p(info.records);
                        }
                    }
                    Ok(())
                };
                if let Err(e) = step() {
                    failed = Some(e);
                }
                Ok(())
            })
            .map_err(bbolt)?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !found {
            return Err(bad("no bucket \"key\": not an etcd backend snapshot".into()));
        }
        commit(&engine, &batch)?;
    }

    let (mut scheduled, mut finished) = (None, None);
    {
        let mut failed = None;
        reader
            .for_each(BUCKET_META, &mut |k, v| {
                let slot = if k == META_SCHEDULED {
                    &mut scheduled
                } else if k == META_FINISHED {
                    &mut finished
                } else {
                    return Ok(());
                };
                match parse_meta_rev(v) {
                    Some(r) => *slot = Some(r),
                    None => {
                        failed = Some(bad(format!(
                            "bucket \"meta\": {} holds {} bytes, not a revision",
                            String::from_utf8_lossy(k),
                            v.len()
                        )))
                    }
                }
                Ok(())
            })
            .map_err(bbolt)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }

    let mut leases = Batch::meta(meta.clone());
    {
        let mut failed = None;
        reader
            .for_each(BUCKET_LEASE, &mut |k, v| {
                if failed.is_some() {
                    return Ok(());
                }
                let mut step = || -> Result<(), RestoreError> {
                    let row = LeaseRow::decode(v).map_err(|e| {
                        bad(format!("bucket \"lease\": an entry is not a Lease: {e}"))
                    })?;
                    if k != row.id.to_be_bytes().as_slice() {
                        return Err(bad(format!(
                            "bucket \"lease\": lease {} is stored under another key",
                            row.id
                        )));
                    }
                    let remaining = if row.remaining_ttl > 0 {
                        row.remaining_ttl
                    } else {
                        row.ttl
                    };
                    leases.ops.push(Op::PutLease {
                        id: row.id,
                        ttl: row.ttl,
                        remaining_ms: remaining.saturating_mul(1000),
                    });
                    info.leases += 1;
                    Ok(())
                };
                if let Err(e) = step() {
                    failed = Some(e);
                }
                Ok(())
            })
            .map_err(bbolt)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }

    let auth = read_auth(&mut reader).map_err(|e| match e {
        AuthReadError::Bbolt(e) => bbolt(e),
        AuthReadError::Format(what) => bad(what),
    })?;
    info.users = auth.users.len() as u64;
    info.roles = auth.roles.len() as u64;
    leases.ops.push(Op::PutAuth(auth.encode()));

    // As etcd: the revision is the newest record's, or the compaction's if that is newer
    // (compaction may have removed the newest tombstones).
    let compacted = finished.unwrap_or(0).max(0);
    let scheduled = scheduled.filter(|s| *s > compacted);
    let current = max_rev.max(compacted);
    meta.current_revision = current;
    // A scheduled but unfinished compaction is resumed when the store opens.
    meta.scheduled_compact = scheduled.or(finished.filter(|f| *f > 0));
    meta.finished_compact = finished.filter(|f| *f > 0);
    leases.meta = meta;
    commit(&engine, &leases)?;
    drop(engine);
    if let Some(p) = opts.progress.as_mut() {
        p(info.records);
    }
    info.revision = current;
    info.compact_revision = scheduled.unwrap_or(compacted);
    Ok(info)
}

enum AuthReadError {
    Bbolt(coffer_bbolt::Error),
    Format(String),
}

/// The auth state of an etcd-layout snapshot (the default state when it has none).
fn read_auth<R: Read + Seek>(
    reader: &mut coffer_bbolt::Reader<R>,
) -> Result<crate::auth::AuthState, AuthReadError> {
    use crate::auth::{AuthState, Role, User};
    let mut st = AuthState::default();
    let mut failed: Option<String> = None;
    reader
        .for_each(BUCKET_AUTH, &mut |k, v| {
            if k == AUTH_ENABLED {
                st.enabled = v == [1];
            } else if k == AUTH_REVISION {
                match <[u8; 8]>::try_from(v) {
                    Ok(b) => st.revision = u64::from_be_bytes(b),
                    Err(_) => {
                        failed = Some(format!(
                            "bucket \"auth\": authRevision holds {} bytes, not 8",
                            v.len()
                        ))
                    }
                }
            }
            Ok(())
        })
        .map_err(AuthReadError::Bbolt)?;
    reader
        .for_each(BUCKET_AUTH_USERS, &mut |_, v| {
            match authpb::User::decode(v)
                .map_err(|e| e.to_string())
                .and_then(User::from_proto)
            {
                Ok(u) => drop(st.users.insert(u.name.clone(), u)),
                Err(e) => failed = Some(format!("bucket \"authUsers\": {e}")),
            }
            Ok(())
        })
        .map_err(AuthReadError::Bbolt)?;
    reader
        .for_each(BUCKET_AUTH_ROLES, &mut |_, v| {
            match authpb::Role::decode(v)
                .map_err(|e| e.to_string())
                .and_then(Role::from_proto)
            {
                Ok(r) => drop(st.roles.insert(r.name.clone(), r)),
                Err(e) => failed = Some(format!("bucket \"authRoles\": {e}")),
            }
            Ok(())
        })
        .map_err(AuthReadError::Bbolt)?;
    match failed {
        Some(what) => Err(AuthReadError::Format(what)),
        None => Ok(st),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
