//! The embedded backend: one redb file in the data directory, the in-memory key index, the
//! writer thread ([`crate::writer`]) and the read path.
//!
//! Reads take the index lock only to pick the visible revisions and open an engine snapshot;
//! records are read and values opened (decrypted) after the lock is released. Because the
//! writer publishes to the index only after its commit is durable, a read sees exactly the
//! writes acknowledged before it started, and never one a crash could take back.

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use coffer_proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tokio::sync::oneshot;

use crate::auth::{AuthChange, AuthChanged, AuthState, PermType};
use crate::engine::{Engine, EngineOptions, RECORDS};
use crate::history::EmbeddedHistory;
use crate::index::Index;
use crate::lease::{self, LeaseStatus, Leases};
use crate::plan::header;
use crate::range::{self, Candidate, Collect};
use crate::record::Record;
use crate::sealer::Sealer;
use crate::state::{load_value, Settings, Shared, Want};
use crate::watch::WatchHub;
use crate::writer::{Command, CommitListener, Writer};
use crate::{Backend, Caller, Error, StoreStatus};

pub use crate::engine::DB_FILE;

/// Quota when `quota_backend_bytes` is 0 (etcd's default, 2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Default most leases a store holds (`--max-leases`).
pub const DEFAULT_MAX_LEASES: usize = 1_000_000;

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
    /// Most leases the store holds; a grant beyond it fails with [`Error::TooManyLeases`].
    pub max_leases: usize,
    /// Commands the writer's queue holds; beyond it requests fail at once with etcd's
    /// `too many requests` (default [`crate::writer::QUEUE`]).
    pub writer_queue: usize,
    /// Engine options (injected faults, in tests).
    pub engine: EngineOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            quota_backend_bytes: 0,
            compaction_batch_limit: 1000,
            commit_listener: None,
            max_leases: DEFAULT_MAX_LEASES,
            writer_queue: crate::writer::QUEUE,
            engine: EngineOptions::default(),
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("quota_backend_bytes", &self.quota_backend_bytes)
            .field("compaction_batch_limit", &self.compaction_batch_limit)
            .field("commit_listener", &self.commit_listener.is_some())
            .field("max_leases", &self.max_leases)
            .finish()
    }
}

/// The embedded, durable MVCC store. Cheap to share behind an `Arc`; [`Backend`] is also
/// implemented for `Arc<EmbeddedStore>`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<SyncSender<Command>>>,
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
            .field("path", &self.shared.engine.path())
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
        let (engine, meta) = Engine::open_and_replay(data_dir, opts.engine.clone())?;
        let auth = crate::engine::read_auth(&engine.read()?)?;
        sealer.restore_write_counts(&meta.write_counts);

        // Rebuild the index from the records (each checksum verified).
        let mut index = Index::new();
        let mut max = 1;
        engine.scan_records(|rev, rec| {
            max = max.max(rev.main);
            match rec {
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
            Ok(())
        })?;
        index.current = meta.current_revision.max(max);
        // Leases: expiry = now + checkpointed remaining TTL (downtime does not count);
        // attachments from the index.
        let mut leases = Leases {
            next_id: (random_u64()? >> 17) as i64,
            ..Default::default()
        };
        let now = Instant::now();
        for (id, ttl, remaining) in engine.leases()? {
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
        let mut resume = None;
        if let Some(at) = meta.scheduled_compact {
            index.compacted = at;
            let removed = index.compact(at);
            if meta.finished_compact.is_none_or(|f| f < at) {
                tracing::info!(
                    revision = at,
                    records = removed.len(),
                    "resuming an unfinished compaction"
                );
                resume = Some((at, removed));
            }
        }
        tracing::info!(
            path = %engine.path().display(),
            revision = index.current,
            keys = index.key_count(),
            "store opened"
        );
        coffer_metrics::metrics()
            .keys_total
            .set(i64::try_from(index.live_count()).unwrap_or(i64::MAX));

        let quota = match opts.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            q => q,
        };
        let (cluster_id, member_id) = (meta.cluster_id, meta.member_id);
        let shared = Arc::new(Shared::new(
            engine,
            index,
            sealer,
            leases,
            meta.alarms.clone(),
            auth,
            Settings {
                listener: opts.commit_listener,
                quota,
                compaction_batch: opts.compaction_batch_limit,
                max_leases: opts.max_leases,
            },
        ));
        let current = shared.read_index().current;
        let hub = WatchHub::new(
            current,
            Arc::new(EmbeddedHistory {
                shared: Arc::clone(&shared),
            }),
        );
        let (tx, rx) = mpsc::sync_channel(opts.writer_queue.max(1));
        let w = Writer::new(Arc::clone(&shared), rx, resume, Arc::clone(&hub), meta);
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
        crate::snapshot::snapshot_file(&self.shared, self.shared.engine.dir())
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

    /// Queues `cmd` for the writer without waiting: a full queue is etcd's `too many
    /// requests`, never a blocked runtime thread.
    fn send(&self, cmd: Command) -> Result<(), Error> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.try_send(cmd).map_err(|e| match e {
                TrySendError::Full(_) => Error::TooManyRequests,
                TrySendError::Disconnected(_) => Error::Stopped,
            }),
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
        self.shared.seal(&p.key, &p.value).map(Some)
    }

    fn range_now(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let collect = Collect::for_request(req);
        let (current, cands, count, snapshot) = {
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
            let (cands, count) = range::collect(&ix, req, at, &collect);
            // The snapshot must be taken before the index lock is released, so physical
            // compaction cannot remove a record this read still needs.
            let snapshot = if collect.needs_values(req) && !cands.is_empty() {
                Some(self.shared.engine.read()?)
            } else {
                None
            };
            (current, cands, count, snapshot)
        };
        let table = match &snapshot {
            Some(t) => Some(
                t.open_table(RECORDS)
                    .map_err(|e| Error::Engine(format!("open records: {e}")))?,
            ),
            None => None,
        };
        let shared = &*self.shared;
        let (kvs, more) = range::finish(req, cands, &mut |c: &Candidate| match &table {
            Some(t) => load_value(t, shared, &c.key, c.entry.rev, Want::Plain),
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

/// Revokes expired leases every [`lease::EXPIRY_SCAN`] and checkpoints remaining TTLs every
/// [`lease::CHECKPOINT_INTERVAL`], until `stop`'s sender is dropped.
fn expiry_loop(shared: &Shared, tx: &SyncSender<Command>, stop: &mpsc::Receiver<()>) {
    let mut last_checkpoint = Instant::now();
    loop {
        match stop.recv_timeout(lease::EXPIRY_SCAN) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let due = shared.leases().expired(Instant::now());
        for id in due {
            let (reply, rx) = oneshot::channel();
            if tx
                .send(Command::revoke(id, Caller::Internal, reply))
                .is_err()
            {
                return;
            }
            match rx.blocking_recv() {
                Ok(Ok(_)) => tracing::debug!(lease = id, "lease expired and revoked"),
                // Revoked by a client meanwhile; or writes are stopped (said once, at the stop).
                Ok(Err(Error::LeaseNotFound | Error::WritesStopped(_))) => {}
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

fn random_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::Engine(format!("no randomness for lease ids: {e}")))?;
    Ok(u64::from_be_bytes(b))
}

impl Backend for EmbeddedStore {
    async fn range(&self, caller: &Caller, req: RangeRequest) -> Result<RangeResponse, Error> {
        self.shared
            .auth()
            .check(caller, &req.key, &req.range_end, PermType::Read)?;
        self.range_now(&req)
    }

    async fn put(&self, caller: &Caller, req: PutRequest) -> Result<PutResponse, Error> {
        let sealed = self.seal_put(&req)?;
        let caller = caller.clone();
        self.call(|tx| Command::put(req, sealed, caller, tx)).await
    }

    async fn delete_range(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        let caller = caller.clone();
        self.call(|tx| Command::delete(req, caller, tx)).await
    }

    async fn txn(&self, caller: &Caller, req: TxnRequest) -> Result<TxnResponse, Error> {
        let plan = crate::txn::plan_txn(req, &mut |p| self.seal_put(p))?;
        let caller = caller.clone();
        self.call(|tx| Command::txn(plan, caller, tx)).await
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Error> {
        self.call(|tx| Command::compact(req, tx)).await
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

    async fn lease_revoke(&self, caller: &Caller, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let caller = caller.clone();
        self.call(|tx| Command::revoke(id, caller, tx)).await
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

    fn lease_status(
        &self,
        caller: &Caller,
        id: i64,
        keys: bool,
    ) -> Result<Option<LeaseStatus>, Error> {
        let status = self.shared.leases().status(id, Instant::now());
        if let (true, Some(st)) = (keys, &status) {
            let auth = self.shared.auth();
            let subject = auth.subject(caller)?;
            for k in &st.keys {
                subject.check(k, &[], PermType::Read)?;
            }
        }
        Ok(status)
    }

    fn auth_view(&self) -> Arc<AuthState> {
        self.shared.auth()
    }

    fn auth_enabled(&self) -> bool {
        self.shared.auth().enabled
    }

    async fn auth_change(&self, caller: &Caller, change: AuthChange) -> Result<AuthChanged, Error> {
        let caller = caller.clone();
        self.call(|tx| Command::Auth(caller, change, tx)).await
    }

    fn alarms(&self) -> Vec<coffer_proto::AlarmMember> {
        self.shared.alarms().clone()
    }

    fn quota_allows(&self, cost: i64) -> bool {
        let size = self
            .shared
            .db_size
            .load(std::sync::atomic::Ordering::Relaxed);
        crate::quota::fits(size, cost, self.shared.quota)
    }

    fn write_health(&self) -> Result<(), String> {
        if let Some(why) = self.shared.writes_stopped() {
            return Err(Error::WritesStopped(why).to_string());
        }
        crate::disk::check(self.shared.engine.dir(), crate::disk::RESERVE)
            .map_err(|e| e.to_string())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    struct Plain;
    impl Sealer for Plain {
        fn seal(&self, _key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
            Ok(plaintext.to_vec())
        }
        fn open(&self, _key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
            Ok(stored.to_vec())
        }
    }

    /// A clean shutdown always ends with a durable checkpoint, leases or not: the engine file
    /// then covers every log entry, and a power cut after it needs no replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_checkpoints_without_leases() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Arc::new(Plain), StoreOptions::default()).unwrap();
        for i in 0..20 {
            s.put(
                &Caller::Internal,
                PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        assert!(s.lease_ids().is_empty());
        s.close();
        drop(s);
        let checkpoint = {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let rtxn = db.begin_read().unwrap();
            crate::engine::read_meta(&rtxn).unwrap().wal_checkpoint_seq
        };
        let (wal, replay) = crate::wal::Wal::open(dir.path(), checkpoint, false).unwrap();
        assert!(
            replay.is_empty(),
            "{} entries after the checkpoint",
            replay.len()
        );
        assert_eq!(wal.last_seq(), 20);
    }
}
