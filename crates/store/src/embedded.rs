//! The embedded backend: one redb file in the data directory, the in-memory key index, the
//! writer thread ([`crate::writer`]) and the read path.
//!
//! Reads take the index lock only to pick the visible revisions and open an engine snapshot;
//! records are read and values opened (decrypted) after the lock is released. Because the
//! writer publishes to the index only after its commit is durable, a read sees exactly the
//! writes acknowledged before it started, and never one a crash could take back.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use coffer_proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::index::Index;
use crate::lease::{self, LeaseStatus, Leases, LEASES};
use crate::range::{self, Candidate, Collect};
use crate::record::{Record, Rev};
use crate::sealer::Sealer;
use crate::watch::WatchHub;
use crate::writer::{self, Command, CommitListener, CommittedRevision, Writer};
use crate::{Backend, Error, StoreStatus};

/// Records by revision: 12-byte revision key → encoded [`Record`].
pub(crate) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Revision counters and identities.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Name of the engine file inside the data directory.
pub const DB_FILE: &str = "coffer.redb";
/// Layout version written to `meta`.
const FORMAT_VERSION: i64 = 1;
/// Quota when `quota_backend_bytes` is 0 (etcd's default, 2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

/// Options of the embedded store.
#[derive(Clone)]
pub struct StoreOptions {
    /// `--quota-backend-bytes`: 0 = 2 GiB (etcd's default), negative = no quota. A write whose
    /// cost (key + value + 256 bytes per put) would take the file beyond it fails with
    /// [`Error::NoSpace`].
    pub quota_backend_bytes: i64,
    /// Records deleted per commit by physical compaction (etcd's
    /// `--experimental-compaction-batch-limit`, default 1000).
    pub compaction_batch_limit: usize,
    /// Called with every durable group's revisions (plaintext events with prev_kv), before the
    /// clients are answered: the hook for the watch hub.
    pub commit_listener: Option<Arc<dyn CommitListener>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            quota_backend_bytes: 0,
            compaction_batch_limit: 1000,
            commit_listener: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("quota_backend_bytes", &self.quota_backend_bytes)
            .field("compaction_batch_limit", &self.compaction_batch_limit)
            .field("commit_listener", &self.commit_listener.is_some())
            .finish()
    }
}

/// State shared by the readers and the writer thread.
pub(crate) struct Shared {
    db: RwLock<Database>,
    index: RwLock<Index>,
    pub(crate) sealer: Arc<dyn Sealer>,
    pub(crate) listener: Option<Arc<dyn CommitListener>>,
    /// Effective quota in bytes; <= 0 means none.
    pub(crate) quota: i64,
    pub(crate) compaction_batch: usize,
    pub(crate) path: PathBuf,
    pub(crate) db_size: AtomicI64,
    pub(crate) commits: AtomicU64,
    pub(crate) stopped: AtomicBool,
    leases: Mutex<Leases>,
    /// Active alarms, as persisted in `meta` ([`crate::alarm`]).
    alarms: Mutex<Vec<coffer_proto::AlarmMember>>,
}

impl Shared {
    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way readers
        // could misread (updates are plain pushes), so a poisoned lock is still usable.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease set. Lock order: the index lock (if taken) before this one.
    pub(crate) fn leases(&self) -> MutexGuard<'_, Leases> {
        // Updates are single map operations; a poisoned set is still consistent.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The alarm list (changed only by the writer thread, after its durable commit).
    pub(crate) fn alarms(&self) -> MutexGuard<'_, Vec<coffer_proto::AlarmMember>> {
        // Updates replace or push whole entries; a poisoned list is still consistent.
        self.alarms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read_db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_db(&self) -> RwLockWriteGuard<'_, Database> {
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn file_size(&self) -> i64 {
        fs::metadata(&self.path).map_or(0, |m| m.len() as i64)
    }

    pub(crate) fn refresh_size(&self) {
        self.db_size.store(self.file_size(), Ordering::Relaxed);
    }
}

/// Maps an engine error to [`Error::Engine`] with what was being done.
pub(crate) fn engine_err<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Engine(format!("{what}: {e}"))
}

/// A response header with only the revision (the server adds cluster and member ids).
pub(crate) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

pub(crate) fn put_meta_i64(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    name: &str,
    v: i64,
) -> Result<(), Error> {
    meta.insert(name, v.to_be_bytes().as_slice())
        .map_err(engine_err("write meta"))?;
    Ok(())
}

pub(crate) fn get_meta_i64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<i64>, Error> {
    let Some(g) = meta.get(name).map_err(engine_err("read meta"))? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = g
        .value()
        .try_into()
        .map_err(|_| Error::Engine(format!("corrupt meta entry {name:?}: not 8 bytes")))?;
    Ok(Some(i64::from_be_bytes(bytes)))
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

/// The embedded, durable MVCC store. Cheap to share behind an `Arc`; [`Backend`] is also
/// implemented for `Arc<EmbeddedStore>`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Stops (by dropping the sender) and joins the lease expiry thread.
    expiry: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    hub: Arc<WatchHub>,
    cluster_id: u64,
    member_id: u64,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.shared.path)
            .field("cluster_id", &self.cluster_id)
            .field("member_id", &self.member_id)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, rebuilds the key index, resumes an
    /// unfinished compaction and starts the writer thread.
    pub fn open(
        data_dir: &Path,
        sealer: Arc<dyn Sealer>,
        opts: StoreOptions,
    ) -> Result<EmbeddedStore, Error> {
        create_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let existed = path.exists();
        if !existed {
            create_private_file(&path)?;
        }
        let db = Database::create(&path).map_err(|e| {
            Error::Engine(format!(
                "cannot open the engine file {}: {e}",
                path.display()
            ))
        })?;
        if !existed {
            // Make the new file's directory entry durable too.
            fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::Engine(format!("sync {}: {e}", data_dir.display())))?;
        }

        // Replay what the write-ahead log holds beyond the last durable engine commit.
        let wal = {
            let checkpoint = {
                let rtxn = db.begin_read().map_err(engine_err("begin read"))?;
                match rtxn.open_table(META) {
                    Ok(meta) => get_meta_i64(&meta, "wal_checkpoint_seq")?.unwrap_or(0),
                    Err(redb::TableError::TableDoesNotExist(_)) => 0,
                    Err(e) => return Err(Error::Engine(format!("open meta: {e}"))),
                }
            };
            let (mut wal, replay) =
                crate::wal::Wal::open(data_dir, u64::try_from(checkpoint).unwrap_or(0))?;
            if !replay.is_empty() {
                let mut wtxn = db.begin_write().map_err(engine_err("begin write"))?;
                wtxn.set_durability(redb::Durability::Immediate)
                    .map_err(engine_err("durability"))?;
                crate::wal::apply(&wtxn, &replay)?;
                crate::wal::mark_checkpoint(&wtxn, wal.last_seq())?;
                wtxn.commit()
                    .map_err(engine_err("commit the replayed log"))?;
                tracing::info!(entries = replay.len(), "replayed the write-ahead log");
            }
            wal.reset();
            wal
        };

        // Create the tables and identities on first start.
        let (cluster_id, member_id, current, scheduled, finished, alarms) = {
            let mut wtxn = db.begin_write().map_err(engine_err("begin write"))?;
            wtxn.set_durability(redb::Durability::Immediate)
                .map_err(engine_err("durability"))?;
            let ids;
            {
                wtxn.open_table(RECORDS)
                    .map_err(engine_err("open records"))?;
                wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
                let mut meta = wtxn.open_table(META).map_err(engine_err("open meta"))?;
                match get_meta_i64(&meta, "format")? {
                    None => put_meta_i64(&mut meta, "format", FORMAT_VERSION)?,
                    Some(FORMAT_VERSION) => {}
                    Some(other) => {
                        return Err(Error::Engine(format!(
                        "{} has storage format {other}; this version reads format {FORMAT_VERSION}",
                        path.display()
                    )))
                    }
                }
                let mut id = |name: &str| -> Result<u64, Error> {
                    match get_meta_i64(&meta, name)? {
                        Some(v) => Ok(v as u64),
                        None => {
                            let v = random_id()?;
                            put_meta_i64(&mut meta, name, v as i64)?;
                            Ok(v)
                        }
                    }
                };
                let cluster = id("cluster_id")?;
                let member = id("member_id")?;
                ids = (
                    cluster,
                    member,
                    get_meta_i64(&meta, "current_revision")?.unwrap_or(1),
                    get_meta_i64(&meta, "scheduled_compact_revision")?,
                    get_meta_i64(&meta, "finished_compact_revision")?,
                    match meta
                        .get(crate::alarm::META_KEY)
                        .map_err(engine_err("read meta"))?
                    {
                        Some(g) => crate::alarm::decode(g.value())?,
                        None => Vec::new(),
                    },
                );
            }
            wtxn.commit().map_err(engine_err("commit"))?;
            ids
        };

        // Rebuild the index from the records.
        let mut index = Index::new();
        {
            let rtxn = db.begin_read().map_err(engine_err("begin read"))?;
            let table = rtxn
                .open_table(RECORDS)
                .map_err(engine_err("open records"))?;
            let mut max = 1;
            for item in table.iter().map_err(engine_err("scan records"))? {
                let (k, v) = item.map_err(engine_err("scan records"))?;
                let rev = Rev::from_key(k.value())?;
                max = max.max(rev.main);
                match Record::decode(rev, v.value())? {
                    Record::Put {
                        key,
                        create_revision,
                        version,
                        lease,
                        ..
                    } => index.restore_put(key, rev, create_revision, version, lease),
                    Record::Tombstone { key } => index.apply(&crate::index::Mutation::Delete {
                        key: key.to_vec(),
                        rev,
                    }),
                }
            }
            index.current = current.max(max);
        }
        // Leases: expiry = now + checkpointed remaining TTL (downtime does not count);
        // attachments from the index.
        let mut leases = Leases {
            next_id: (random_id()? >> 17) as i64,
            ..Default::default()
        };
        {
            let now = Instant::now();
            let rtxn = db.begin_read().map_err(engine_err("begin read"))?;
            let table = rtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
            for item in table.iter().map_err(engine_err("scan leases"))? {
                let (k, v) = item.map_err(engine_err("scan leases"))?;
                let id = k.value();
                let (ttl, remaining) = lease::decode(id, v.value())?;
                leases.map.insert(
                    id,
                    lease::Lease {
                        ttl,
                        expiry: lease::expiry_at_start(now, remaining),
                        keys: Default::default(),
                    },
                );
            }
            index.visit(&[0], &[0], index.current, |k, e| {
                if e.lease != 0 {
                    leases.reattach(k, 0, e.lease);
                }
                true
            });
        }
        let mut resume = None;
        if let Some(at) = scheduled {
            index.compacted = at;
            let removed = index.compact(at);
            if finished.is_none_or(|f| f < at) {
                tracing::info!(
                    revision = at,
                    records = removed.len(),
                    "resuming an unfinished compaction"
                );
                resume = Some((at, removed));
            }
        }
        tracing::info!(
            path = %path.display(),
            revision = index.current,
            keys = index.key_count(),
            "store opened"
        );

        let quota = match opts.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            q => q,
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(db),
            index: RwLock::new(index),
            sealer,
            listener: opts.commit_listener,
            quota,
            compaction_batch: opts.compaction_batch_limit.max(1),
            path,
            db_size: AtomicI64::new(0),
            commits: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            leases: Mutex::new(leases),
            alarms: Mutex::new(alarms),
        });
        shared.refresh_size();
        let current = shared.read_index().current;
        let hub = WatchHub::new(
            current,
            Arc::new(EmbeddedHistory {
                shared: Arc::clone(&shared),
            }),
        );
        let (tx, rx) = mpsc::channel();
        let w = Writer::new(Arc::clone(&shared), rx, resume, Arc::clone(&hub), wal);
        let handle = std::thread::Builder::new()
            .name("coffer-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| Error::Engine(format!("cannot start the writer thread: {e}")))?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let expiry = {
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("coffer-lease-expiry".into())
                .spawn(move || expiry_loop(&shared, &tx, &stop_rx))
                .map_err(|e| Error::Engine(format!("cannot start the lease expiry thread: {e}")))?
        };
        Ok(EmbeddedStore {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            expiry: Mutex::new(Some((stop_tx, expiry))),
            hub,
            cluster_id,
            member_id,
        })
    }

    /// The cluster id persisted at first start (nonzero).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The member id persisted at first start (nonzero).
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// Number of durable engine commits since open (each commits one group of writes).
    pub fn commit_count(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The store's watch hub.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Current revision.
    pub fn current_revision(&self) -> i64 {
        self.shared.read_index().current
    }

    /// A consistent snapshot in etcd's backend layout, values sealed ([`crate::snapshot`]),
    /// built in a temporary file in the data directory and ready to stream. Blocks while the
    /// file is written (call it off the async runtime); writes go on meanwhile.
    pub fn snapshot(&self) -> Result<crate::snapshot::SnapshotFile, Error> {
        let dir = self.shared.path.parent().unwrap_or(Path::new("."));
        crate::snapshot::snapshot_file(&self.shared, dir)
    }

    /// Writes a snapshot ([`EmbeddedStore::snapshot`]) to a new file at `path` (0600), without
    /// the trailing digest.
    pub fn snapshot_to(&self, path: &Path) -> Result<crate::snapshot::SnapshotInfo, Error> {
        crate::snapshot::write_to(&self.shared, path)
    }

    /// Rewrites the engine file without free pages. Writes wait meanwhile; reads wait while the
    /// file is rewritten.
    pub async fn defragment(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Defragment(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Stops the writer after the requests already queued, and waits for it.
    pub fn close(&self) {
        let expiry = self.expiry.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, handle)) = expiry {
            drop(stop);
            if handle.join().is_err() {
                tracing::error!("the lease expiry thread panicked");
            }
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            // An error means the writer is already gone.
            let _ = tx.send(Command::Shutdown);
        }
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| Error::Stopped),
            None => Err(Error::Stopped),
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    fn seal_put(&self, p: &PutRequest) -> Result<Option<Vec<u8>>, Error> {
        if p.ignore_value {
            return Ok(None);
        }
        self.shared
            .sealer
            .seal(&p.key, &p.value)
            .map(Some)
            .map_err(|reason| Error::Seal {
                key: String::from_utf8_lossy(&p.key).into_owned(),
                reason,
            })
    }

    fn range_now(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let collect = Collect::for_request(req);
        let mut cands = Vec::new();
        let mut count = 0i64;
        let (current, snapshot) = {
            let ix = self.shared.read_index();
            let current = ix.current;
            if req.revision > current {
                return Err(Error::FutureRev);
            }
            let at = if req.revision <= 0 {
                current
            } else {
                req.revision
            };
            if at < ix.compacted {
                return Err(Error::Compacted);
            }
            ix.visit(&req.key, &req.range_end, at, |k, entry| {
                count += 1;
                if collect.wants(cands.len()) {
                    cands.push(Candidate {
                        key: k.to_vec(),
                        entry,
                        plain: None,
                    });
                }
                true
            });
            // The snapshot must be taken before the index lock is released, so physical
            // compaction cannot remove a record this read still needs.
            let snapshot = if collect.needs_values(req) && !cands.is_empty() {
                Some(
                    self.shared
                        .read_db()
                        .begin_read()
                        .map_err(engine_err("begin read"))?,
                )
            } else {
                None
            };
            (current, snapshot)
        };
        let table = match &snapshot {
            Some(t) => Some(t.open_table(RECORDS).map_err(engine_err("open records"))?),
            None => None,
        };
        let shared = &*self.shared;
        let (kvs, more) = range::finish(req, cands, &mut |c: &Candidate| match &table {
            Some(t) => writer::load_value(t, shared, &c.key, c.entry.rev),
            None => Err(Error::Engine("internal: no snapshot for values".into())),
        })?;
        Ok(RangeResponse {
            header: Some(header(current)),
            kvs,
            more,
            count,
        })
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Creates the engine file readable by its owner only (0600, as etcd creates its files), so the
/// sealed values and the key names are not world-readable.
fn create_private_file(path: &Path) -> Result<(), Error> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map(drop).map_err(|e| {
        Error::Engine(format!(
            "cannot create the engine file {}: {e}",
            path.display()
        ))
    })
}

/// Revokes expired leases every [`lease::EXPIRY_SCAN`] and checkpoints remaining TTLs every
/// [`lease::CHECKPOINT_INTERVAL`], until `stop`'s sender is dropped.
fn expiry_loop(shared: &Shared, tx: &Sender<Command>, stop: &mpsc::Receiver<()>) {
    let mut last_checkpoint = Instant::now();
    loop {
        match stop.recv_timeout(lease::EXPIRY_SCAN) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let due = shared.leases().expired(Instant::now());
        for id in due {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::LeaseRevoke(id, reply)).is_err() {
                return;
            }
            match rx.blocking_recv() {
                Ok(Ok(_)) => tracing::debug!(lease = id, "lease expired and revoked"),
                // Revoked by a client meanwhile.
                Ok(Err(Error::LeaseNotFound)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed")
                }
                Err(_) => return,
            }
        }
        if last_checkpoint.elapsed() >= lease::CHECKPOINT_INTERVAL {
            last_checkpoint = Instant::now();
            if tx.send(Command::LeaseCheckpoint).is_err() {
                return;
            }
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| {
        Error::Engine(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))
    })
}

impl Backend for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Error> {
        self.range_now(&req)
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse, Error> {
        let sealed = self.seal_put(&req)?;
        self.call(|tx| Command::Put(req, sealed, tx)).await
    }

    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        self.call(|tx| Command::Delete(req, tx)).await
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Error> {
        let plan = writer::plan_txn(req, &mut |p| self.seal_put(p))?;
        self.call(|tx| Command::Txn(plan, tx)).await
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Error> {
        self.call(|tx| Command::Compact(req, tx)).await
    }

    async fn status(&self) -> Result<StoreStatus, Error> {
        self.call(Command::Status).await
    }

    fn watch_hub(&self) -> Option<Arc<WatchHub>> {
        Some(Arc::clone(&self.hub))
    }

    async fn lease_grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse, Error> {
        self.call(|tx| Command::LeaseGrant(req, tx)).await
    }

    async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.call(|tx| Command::LeaseRevoke(id, tx)).await
    }

    fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        let revision = self.shared.read_index().current;
        let now = Instant::now();
        let mut leases = self.shared.leases();
        let ttl = match leases.map.get_mut(&id) {
            // An expired lease waits for its revoke: report it gone.
            Some(l) if l.expiry > now => {
                l.expiry = now + std::time::Duration::from_secs(l.ttl as u64);
                l.ttl
            }
            _ => 0,
        };
        Ok(LeaseKeepAliveResponse {
            header: Some(header(revision)),
            id,
            ttl,
        })
    }

    fn revision_now(&self) -> Option<i64> {
        Some(self.shared.read_index().current)
    }

    fn lease_status(&self, id: i64) -> Option<LeaseStatus> {
        self.shared.leases().status(id, Instant::now())
    }

    fn alarms(&self) -> Vec<coffer_proto::AlarmMember> {
        self.shared.alarms().clone()
    }

    async fn change_alarm(
        &self,
        change: crate::AlarmChange,
    ) -> Result<Vec<coffer_proto::AlarmMember>, Error> {
        self.call(|tx| Command::Alarm(change, tx)).await
    }

    fn lease_ids(&self) -> Vec<i64> {
        let now = Instant::now();
        let leases = self.shared.leases();
        let mut ids: Vec<(i64, i64)> = leases
            .map
            .iter()
            .map(|(id, l)| (lease::remaining_ms(l, now), *id))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}

/// The embedded store's history, for the watch hub's catch-up reads.
pub(crate) struct EmbeddedHistory {
    pub(crate) shared: Arc<Shared>,
}

/// A record found by a history scan, before its value is opened.
struct Found {
    rev: Rev,
    key: Vec<u8>,
    /// `(create_revision, version, lease, sealed)` of a put; `None` for a tombstone.
    put: Option<(i64, i64, i64, Vec<u8>)>,
    /// The key's version visible at `rev.main - 1` (the event's prev_kv), if any.
    prev: Option<crate::index::Entry>,
}

impl crate::watch::History for EmbeddedHistory {
    fn read(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        max: i64,
    ) -> Result<crate::watch::HistoryRead, Error> {
        use coffer_proto::mvccpb::{event::EventType, Event, KeyValue};
        let shared = &*self.shared;
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let Some(bounds) = crate::index::key_bounds(key, range_end) else {
            return Ok(crate::watch::HistoryRead::Batch {
                revisions: Vec::new(),
                through: from - 1,
                current: shared.read_index().current,
            });
        };
        let in_range = |k: &[u8]| {
            use std::ops::RangeBounds;
            RangeBounds::<[u8]>::contains(&bounds, k)
        };
        // Scan records and look up previous versions under the index lock, so compaction
        // cannot remove what the scan relies on; open values after releasing it.
        let (found, current, through, snapshot) = {
            let ix = shared.read_index();
            if from < ix.compacted {
                return Ok(crate::watch::HistoryRead::Compacted(ix.compacted));
            }
            let current = ix.current;
            let from = from.max(1);
            let to = current.min(from.saturating_add(max.max(1) - 1));
            if to < from {
                return Ok(crate::watch::HistoryRead::Batch {
                    revisions: Vec::new(),
                    through: from - 1,
                    current,
                });
            }
            let snapshot = shared
                .read_db()
                .begin_read()
                .map_err(engine_err("begin read"))?;
            let mut found = Vec::new();
            {
                let table = snapshot
                    .open_table(RECORDS)
                    .map_err(engine_err("open records"))?;
                let lo = Rev::new(from, 0).to_key();
                let hi = Rev::new(to + 1, 0).to_key();
                for item in table
                    .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                    .map_err(engine_err("scan records"))?
                {
                    let (k, v) = item.map_err(engine_err("scan records"))?;
                    let rev = Rev::from_key(k.value())?;
                    let rec = Record::decode(rev, v.value())?;
                    let rkey = rec.key();
                    if !in_range(rkey) {
                        continue;
                    }
                    let put = match rec {
                        Record::Put {
                            create_revision,
                            version,
                            lease,
                            sealed,
                            ..
                        } => Some((create_revision, version, lease, sealed.to_vec())),
                        Record::Tombstone { .. } => None,
                    };
                    let is_create = matches!(put, Some((c, _, _, _)) if c == rev.main);
                    let prev = if is_create {
                        None
                    } else {
                        ix.get(rkey, rev.main - 1)
                    };
                    found.push(Found {
                        rev,
                        key: rkey.to_vec(),
                        put,
                        prev,
                    });
                }
            }
            (found, current, to, snapshot)
        };
        let table = snapshot
            .open_table(RECORDS)
            .map_err(engine_err("open records"))?;
        let mut revisions: Vec<CommittedRevision> = Vec::new();
        for f in found {
            let prev_kv = match f.prev {
                Some(e) => Some(KeyValue {
                    key: f.key.clone(),
                    create_revision: e.create,
                    mod_revision: e.rev.main,
                    version: e.version,
                    value: writer::load_value(&table, shared, &f.key, e.rev)?,
                    lease: e.lease,
                }),
                None => None,
            };
            let event = match f.put {
                Some((create_revision, version, lease, sealed)) => {
                    let value =
                        shared
                            .sealer
                            .open(&f.key, &sealed)
                            .map_err(|reason| Error::Open {
                                key: String::from_utf8_lossy(&f.key).into_owned(),
                                reason,
                            })?;
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(KeyValue {
                            key: f.key,
                            create_revision,
                            mod_revision: f.rev.main,
                            version,
                            value,
                            lease,
                        }),
                        prev_kv,
                    }
                }
                None => Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: f.key,
                        mod_revision: f.rev.main,
                        ..Default::default()
                    }),
                    prev_kv,
                },
            };
            match revisions.last_mut() {
                Some(r) if r.revision == f.rev.main => r.events.push(event),
                _ => revisions.push(CommittedRevision {
                    revision: f.rev.main,
                    events: vec![event],
                }),
            }
        }
        Ok(crate::watch::HistoryRead::Batch {
            revisions,
            through,
            current,
        })
    }
}
