//! The single writer thread and its group commit.
//!
//! Every write (Put, DeleteRange, Txn, Compact) is a [`Command`] on one channel. The writer
//! takes everything pending, applies the requests in order against an overlay of the shared
//! key index (each writing request gets its own revision; no-op deletes and txns that write
//! nothing get none), writes all their records in ONE engine transaction, commits it durably
//! (fsync), and only then publishes the changes to the shared index and answers the group.
//! So a write is acknowledged only when durable, and no reader ever sees a write a crash could
//! take back (etcd #14140). A request that fails (key not found, lease not found, no space)
//! leaves no trace in the group; a commit that fails fails the whole group and leaves the
//! index untouched.
//!
//! Physical compaction runs here too, in batches folded into the following commits.

use crate::wal::WalOp;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::mvccpb::{event::EventType, Event, KeyValue};
use coffer_proto::{
    compare, request_op, response_op, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    ResponseOp, TxnResponse,
};
use redb::{ReadableTable, Table};
use tokio::sync::oneshot;

use crate::embedded::{engine_err, header, put_meta_i64, Shared, META, RECORDS};
use crate::index::{Entry, Index, Mutation};
use crate::lease::{self, LEASES};
use crate::range::{self, Candidate, Collect};
use crate::record::{Record, Rev};
use crate::watch::WatchHub;
use crate::{Error, StoreStatus};

/// Requests the writer serves at most per group.
const MAX_GROUP: usize = 4096;
/// etcd's per-key overhead in the quota cost of a put.
const KV_OVERHEAD: i64 = 256;

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A txn whose put values were sealed by the caller.
#[derive(Debug)]
pub(crate) struct TxnPlan {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// One op of a [`TxnPlan`].
#[derive(Debug)]
pub(crate) enum Op {
    Range(RangeRequest),
    /// The put and its value as sealed by the caller (`None` with `ignore_value`).
    Put(PutRequest, Option<Vec<u8>>),
    Delete(DeleteRangeRequest),
    Txn(TxnPlan),
    /// A `RequestOp` with no request set.
    Empty,
}

impl TxnPlan {
    fn cost(&self) -> i64 {
        fn ops(ops: &[Op]) -> i64 {
            ops.iter()
                .map(|op| match op {
                    Op::Put(p, _) => put_cost(p),
                    Op::Txn(t) => t.cost(),
                    _ => 0,
                })
                .sum()
        }
        ops(&self.success).max(ops(&self.failure))
    }

    fn reads_history(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            Op::Range(r) => r.revision > 0,
            Op::Txn(t) => t.reads_history(),
            _ => false,
        })
    }
}

fn put_cost(p: &PutRequest) -> i64 {
    (p.key.len() + p.value.len()) as i64 + KV_OVERHEAD
}

/// What the writer thread is asked to do.
pub(crate) enum Command {
    Put(PutRequest, Option<Vec<u8>>, Reply<PutResponse>),
    Delete(DeleteRangeRequest, Reply<DeleteRangeResponse>),
    Txn(TxnPlan, Reply<TxnResponse>),
    Compact(CompactionRequest, Reply<CompactionResponse>),
    Status(Reply<StoreStatus>),
    Defragment(Reply<()>),
    LeaseGrant(LeaseGrantRequest, Reply<LeaseGrantResponse>),
    /// Revoke (by a client or by expiry): one revision deleting the attached keys.
    LeaseRevoke(i64, Reply<LeaseRevokeResponse>),
    /// Persist every lease's remaining TTL.
    LeaseCheckpoint,
    /// Raise or clear an alarm; durable before it is answered.
    Alarm(crate::AlarmChange, Reply<Vec<coffer_proto::AlarmMember>>),
    Shutdown,
}

impl Command {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Put(..)
                | Command::Delete(..)
                | Command::Txn(..)
                | Command::Compact(..)
                | Command::LeaseRevoke(..)
        )
    }

    fn fail(self, err: impl Fn() -> Error) {
        // A caller that went away no longer needs its answer.
        match self {
            Command::Put(_, _, r) => drop(r.send(Err(err()))),
            Command::Delete(_, r) => drop(r.send(Err(err()))),
            Command::Txn(_, r) => drop(r.send(Err(err()))),
            Command::Compact(_, r) => drop(r.send(Err(err()))),
            Command::Status(r) => drop(r.send(Err(err()))),
            Command::Defragment(r) => drop(r.send(Err(err()))),
            Command::LeaseGrant(_, r) => drop(r.send(Err(err()))),
            Command::LeaseRevoke(_, r) => drop(r.send(Err(err()))),
            Command::Alarm(_, r) => drop(r.send(Err(err()))),
            Command::LeaseCheckpoint | Command::Shutdown => {}
        }
    }
}

/// An answer held back until the group is durable.
enum Answer {
    Put(Reply<PutResponse>, Result<PutResponse, Error>),
    Delete(
        Reply<DeleteRangeResponse>,
        Result<DeleteRangeResponse, Error>,
    ),
    Txn(Reply<TxnResponse>, Result<TxnResponse, Error>),
    Compact(Reply<CompactionResponse>, Result<CompactionResponse, Error>),
    Revoke(
        Reply<LeaseRevokeResponse>,
        Result<LeaseRevokeResponse, Error>,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Put(r, v) => drop(r.send(v)),
            Answer::Delete(r, v) => drop(r.send(v)),
            Answer::Txn(r, v) => drop(r.send(v)),
            Answer::Compact(r, v) => drop(r.send(v)),
            Answer::Revoke(r, v) => drop(r.send(v)),
        }
    }

    fn fail(self, err: Error) {
        match self {
            Answer::Put(r, _) => drop(r.send(Err(err))),
            Answer::Delete(r, _) => drop(r.send(Err(err))),
            Answer::Txn(r, _) => drop(r.send(Err(err))),
            Answer::Compact(r, _) => drop(r.send(Err(err))),
            Answer::Revoke(r, _) => drop(r.send(Err(err))),
        }
    }
}

/// The changes of one revision, with plaintext values, for a future watch hub.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRevision {
    /// The revision.
    pub revision: i64,
    /// Its events in sub-revision order; `prev_kv` is filled when the key existed.
    pub events: Vec<Event>,
}

/// Receives every committed revision, after it is durable and before clients are answered.
/// Called on the writer thread: keep it quick (hand off to a channel).
pub trait CommitListener: Send + Sync + 'static {
    /// The revisions of one durable group, in order.
    fn committed(&self, revisions: &[CommittedRevision]);
}

/// A key's latest state as a request sees it.
#[derive(Debug, Clone)]
struct Live {
    entry: Entry,
    /// Plaintext of writes made in this group; `None` = read the record of `entry.rev`.
    plain: Option<Arc<[u8]>>,
}

/// One change a request makes, merged into the group once the request has succeeded.
enum Write {
    Put {
        key: Vec<u8>,
        entry: Entry,
        sealed: Vec<u8>,
        plain: Arc<[u8]>,
        prev: Option<Live>,
    },
    Delete {
        key: Vec<u8>,
        rev: Rev,
        prev: Live,
    },
}

/// The state of one request being applied: its own overlay (later ops of a txn see earlier
/// ones) and the writes it would make at revision `rev`.
struct ReqState {
    rev: i64,
    local: BTreeMap<Vec<u8>, Option<Live>>,
    writes: Vec<Write>,
}

impl ReqState {
    fn new(rev: i64) -> Self {
        ReqState {
            rev,
            local: BTreeMap::new(),
            writes: Vec::new(),
        }
    }

    fn wrote(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The revision a read in this request sees as current.
    fn current(&self) -> i64 {
        if self.wrote() {
            self.rev
        } else {
            self.rev - 1
        }
    }

    fn next_rev(&self) -> Rev {
        Rev::new(self.rev, self.writes.len() as u32)
    }
}

/// Which branch every (nested) txn takes, decided before any op runs.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

/// Physical compaction work left to do.
#[derive(Default)]
struct CompactionWork {
    queue: VecDeque<Rev>,
    target: i64,
    /// A compaction was scheduled and its `finished` mark is not written yet.
    unfinished: bool,
    waiters: Vec<(Reply<CompactionResponse>, i64)>,
}

/// The writer thread's state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    hub: Arc<WatchHub>,
    rx: Receiver<Command>,
    compaction: CompactionWork,
    /// The write-ahead log each group is made durable in before its (unsynced) engine commit.
    wal: std::cell::RefCell<crate::wal::Wal>,
}

impl Writer {
    /// `resume`: records still to delete for an unfinished compaction at `target`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        resume: Option<(i64, Vec<Rev>)>,
        hub: Arc<WatchHub>,
        wal: crate::wal::Wal,
    ) -> Self {
        let (target, queue, unfinished) = match resume {
            Some((t, q)) => (t, q.into(), true),
            None => (0, VecDeque::new(), false),
        };
        Writer {
            shared,
            hub,
            rx,
            compaction: CompactionWork {
                queue,
                target,
                unfinished,
                waiters: Vec::new(),
            },
            wal: std::cell::RefCell::new(wal),
        }
    }

    /// Runs until shut down or until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut pending: VecDeque<Command> = VecDeque::new();
        loop {
            if pending.is_empty() {
                let first = if !self.compaction.unfinished {
                    match self.rx.recv() {
                        Ok(c) => c,
                        Err(_) => break,
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty) => {
                            // Idle: a commit with only compaction work.
                            self.run_group(&mut pending);
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                };
                pending.push_back(first);
            }
            while pending.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(c) => pending.push_back(c),
                    Err(_) => break,
                }
            }
            match pending.front() {
                Some(c) if c.is_write() => self.run_group(&mut pending),
                _ => match pending.pop_front() {
                    Some(Command::Status(reply)) => drop(reply.send(self.status())),
                    Some(Command::Defragment(reply)) => drop(reply.send(self.defragment())),
                    Some(Command::LeaseGrant(req, reply)) => drop(reply.send(self.grant(req))),
                    Some(Command::LeaseCheckpoint) => self.checkpoint(),
                    Some(Command::Alarm(change, reply)) => drop(reply.send(self.alarm(change))),
                    Some(Command::Shutdown) => {
                        self.checkpoint();
                        break;
                    }
                    Some(other) => other.fail(|| Error::Engine("unexpected command".into())),
                    None => {}
                },
            }
        }
        self.shared.stopped.store(true, AtomicOrdering::SeqCst);
        for c in pending.drain(..) {
            c.fail(|| Error::Stopped);
        }
        while let Ok(c) = self.rx.try_recv() {
            c.fail(|| Error::Stopped);
        }
        for (w, _) in self.compaction.waiters.drain(..) {
            drop(w.send(Err(Error::Stopped)));
        }
    }

    /// LeaseGrant: durable before it is answered; does not bump the revision.
    fn grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse, Error> {
        if req.ttl > lease::MAX_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = req.ttl.max(lease::MIN_TTL);
        crate::disk::check(self.dir())?;
        let id = {
            let mut leases = self.shared.leases();
            if req.id == 0 {
                leases.fresh_id()
            } else if leases.map.contains_key(&req.id) {
                return Err(Error::LeaseExist);
            } else {
                req.id
            }
        };
        self.commit_durably(|wtxn| {
            let mut t = wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
            t.insert(id, lease::encode(ttl, ttl.saturating_mul(1000)).as_slice())
                .map_err(engine_err("write lease"))?;
            Ok(())
        })?;
        self.shared.leases().map.insert(
            id,
            lease::Lease {
                ttl,
                expiry: Instant::now() + Duration::from_secs(ttl as u64),
                keys: Default::default(),
            },
        );
        Ok(LeaseGrantResponse {
            header: Some(header(self.shared.read_index().current)),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// Raises or clears an alarm: the new list is durable before memory and the caller see it.
    fn alarm(&self, change: crate::AlarmChange) -> Result<Vec<coffer_proto::AlarmMember>, Error> {
        let mut list = self.shared.alarms().clone();
        let answer = crate::alarm::apply(&mut list, change);
        if list == *self.shared.alarms() {
            return Ok(answer);
        }
        crate::disk::check(self.dir())?;
        self.commit_durably(|wtxn| {
            let mut meta = wtxn.open_table(META).map_err(engine_err("open meta"))?;
            meta.insert(
                crate::alarm::META_KEY,
                crate::alarm::encode(&list).as_slice(),
            )
            .map_err(engine_err("write alarms"))?;
            Ok(())
        })?;
        *self.shared.alarms() = list;
        Ok(answer)
    }

    /// Persists every lease's remaining TTL (logged, not fatal, on failure).
    fn checkpoint(&self) {
        let now = Instant::now();
        let rows: Vec<(i64, i64, i64)> = self
            .shared
            .leases()
            .map
            .iter()
            .map(|(id, l)| (*id, l.ttl, lease::remaining_ms(l, now)))
            .collect();
        if rows.is_empty() {
            return;
        }
        if let Err(e) = crate::disk::check(self.dir()) {
            // The remaining TTLs stay as last checkpointed; a later checkpoint catches up.
            tracing::warn!(error = %e, "lease checkpoint skipped");
            return;
        }
        let res = self.commit_durably(|wtxn| {
            let mut t = wtxn.open_table(LEASES).map_err(engine_err("open leases"))?;
            for (id, ttl, rem) in &rows {
                t.insert(*id, lease::encode(*ttl, *rem).as_slice())
                    .map_err(engine_err("write lease"))?;
            }
            Ok(())
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, leases = rows.len(), "lease checkpoint failed");
        }
    }

    /// Writes `fill`'s changes in a transaction of their own, committed durably as a log
    /// checkpoint (lease grants and checkpoints, alarms: rare writes outside commit groups).
    fn commit_durably(
        &self,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut wtxn = self
            .shared
            .read_db()
            .begin_write()
            .map_err(engine_err("begin write"))?;
        wtxn.set_durability(redb::Durability::Immediate)
            .map_err(engine_err("durability"))?;
        fill(&wtxn)?;
        self.commit_checkpoint(wtxn)
    }

    /// Commits `wtxn` durably as a log checkpoint: it covers every entry appended so far (each
    /// was committed to the engine after its append), so the log starts again.
    fn commit_checkpoint(&self, wtxn: redb::WriteTransaction) -> Result<(), Error> {
        let mut wal = self.wal.borrow_mut();
        crate::wal::mark_checkpoint(&wtxn, wal.last_seq())?;
        wtxn.commit().map_err(engine_err("commit"))?;
        wal.reset();
        Ok(())
    }

    fn status(&self) -> Result<StoreStatus, Error> {
        let (revision, compacted) = {
            let ix = self.shared.read_index();
            (ix.current, ix.compacted)
        };
        let db_size = self.shared.file_size();
        let wtxn = self
            .shared
            .read_db()
            .begin_write()
            .map_err(engine_err("begin a status transaction"))?;
        let stats = wtxn.stats().map_err(engine_err("read engine statistics"))?;
        let in_use = stats.allocated_pages() as i64 * stats.page_size() as i64;
        wtxn.abort()
            .map_err(engine_err("end a status transaction"))?;
        Ok(StoreStatus {
            revision,
            compact_revision: compacted.max(0),
            db_size,
            db_size_in_use: in_use.min(db_size),
        })
    }

    fn defragment(&self) -> Result<(), Error> {
        // Readers hold engine snapshots for a moment; wait for them to end.
        for _ in 0..10_000 {
            let mut db = self.shared.write_db();
            match db.compact() {
                Ok(_) => {
                    drop(db);
                    self.shared.refresh_size();
                    return Ok(());
                }
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

    /// The data directory (for the full-disk guard).
    fn dir(&self) -> &std::path::Path {
        self.shared
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
    }

    /// Applies write commands from the front of `pending` as one durable group.
    fn run_group(&mut self, pending: &mut VecDeque<Command>) {
        let shared = Arc::clone(&self.shared);
        if let Err(full) = crate::disk::check(self.dir()) {
            if pending.is_empty() {
                // Only compaction work was due: wait for space instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            tracing::warn!(error = %full, "write refused");
            let (available, needed) = match full {
                Error::DiskFull { available, needed } => (available, needed),
                _ => (0, crate::disk::RESERVE),
            };
            while pending.front().is_some_and(Command::is_write) {
                if let Some(c) = pending.pop_front() {
                    c.fail(|| Error::DiskFull { available, needed });
                }
            }
            return;
        }
        let wtxn = match shared.read_db().begin_write() {
            Ok(mut t) => {
                if let Err(e) = t.set_durability(redb::Durability::Immediate) {
                    tracing::error!(error = %e, "cannot request durable commits");
                }
                t
            }
            Err(e) => {
                let msg = format!("begin write: {e} (restart the server to let the engine repair)");
                tracing::error!(error = %msg, "the engine refuses writes");
                while pending.front().is_some_and(Command::is_write) {
                    if let Some(c) = pending.pop_front() {
                        c.fail(|| Error::Engine(msg.clone()));
                    }
                }
                return;
            }
        };

        // Decided once per group: a watcher created meanwhile catches up from history.
        let want_events = shared.listener.is_some() || self.hub.active();
        let outcome = {
            let base = shared.read_index();
            let mut table = match wtxn.open_table(RECORDS) {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("open records: {e}");
                    drop(base);
                    while pending.front().is_some_and(Command::is_write) {
                        if let Some(c) = pending.pop_front() {
                            c.fail(|| Error::Engine(msg.clone()));
                        }
                    }
                    return;
                }
            };
            let mut g = Group {
                shared: &shared,
                base: &base,
                table: &mut table,
                group: BTreeMap::new(),
                cur: base.current,
                compacted: base.compacted,
                mutations: Vec::new(),
                answers: Vec::new(),
                events: Vec::new(),
                cost: 0,
                scheduled: None,
                physical_waiters: Vec::new(),
                poisoned: None,
                db_size: shared.db_size.load(AtomicOrdering::Relaxed),
                want_events,
                revoked: None,
                wal_ops: Vec::new(),
            };
            while let Some(cmd) = pending.front() {
                if !cmd.is_write() || g.answers.len() >= MAX_GROUP {
                    break;
                }
                if let Command::Txn(t, _) = cmd {
                    // A txn reading a past revision written earlier in this group would need
                    // history the index does not have yet: commit what we have first.
                    if g.cur > base.current && t.reads_history() {
                        break;
                    }
                }
                // A revoke reads the published lease attachments: it starts a group of its own
                // and ends it.
                let revoke = matches!(cmd, Command::LeaseRevoke(..));
                if revoke && !g.answers.is_empty() {
                    break;
                }
                if let Some(cmd) = pending.pop_front() {
                    g.apply(cmd);
                }
                if g.poisoned.is_some() || revoke {
                    break;
                }
            }
            // Fold a batch of physical compaction into this commit.
            let mut deleted = 0usize;
            let limit = shared.compaction_batch;
            while deleted < limit && g.poisoned.is_none() {
                let Some(rev) = self.compaction.queue.pop_front() else {
                    break;
                };
                if let Err(e) = g.table.remove(rev.to_key().as_slice()) {
                    g.poisoned = Some(format!("compaction delete: {e}"));
                }
                g.wal_ops
                    .push(crate::wal::WalOp::DelRecord(rev.to_key().to_vec()));
                deleted += 1;
            }
            g.finish()
        };
        let GroupOutcome {
            mut wal_ops,
            mutations,
            answers,
            events,
            cur,
            scheduled,
            physical_waiters,
            poisoned,
            revoked,
        } = outcome;

        let finished = if scheduled.is_none()
            && self.compaction.unfinished
            && self.compaction.queue.is_empty()
        {
            Some(self.compaction.target)
        } else {
            None
        };
        let result: Result<(), String> = match poisoned {
            Some(msg) => {
                if let Err(e) = wtxn.abort() {
                    tracing::warn!(error = %e, "aborting a failed group");
                }
                Err(msg)
            }
            None => wtxn_meta(wtxn, cur, scheduled, finished)
                .and_then(|w| remove_lease(w, revoked))
                .and_then(|w| {
                    wal_ops.push(WalOp::Meta("current_revision".into(), cur));
                    if let Some(at) = scheduled {
                        wal_ops.push(WalOp::Meta("scheduled_compact_revision".into(), at));
                    }
                    if let Some(at) = finished {
                        wal_ops.push(WalOp::Meta("finished_compact_revision".into(), at));
                    }
                    if let Some(id) = revoked {
                        wal_ops.push(WalOp::DelLease(id));
                    }
                    self.commit_group(w, &wal_ops)
                }),
        };
        match result {
            Ok(()) => {
                shared.commits.fetch_add(1, AtomicOrdering::Relaxed);
                shared.refresh_size();
                let removed = {
                    let mut ix = shared.write_index();
                    let mut leases = shared.leases();
                    for m in &mutations {
                        let (key, new) = match m {
                            Mutation::Put { key, lease, .. } => (key, *lease),
                            Mutation::Delete { key, .. } => (key, 0),
                        };
                        let old = ix.latest(key).map_or(0, |e| e.lease);
                        leases.reattach(key, old, new);
                        ix.apply(m);
                    }
                    if let Some(id) = revoked {
                        leases.map.remove(&id);
                    }
                    drop(leases);
                    ix.current = cur;
                    match scheduled {
                        Some(at) => {
                            ix.compacted = at;
                            ix.compact(at)
                        }
                        None => Vec::new(),
                    }
                };
                if let Some(at) = scheduled {
                    self.compaction.queue.extend(removed);
                    self.compaction.target = at;
                    self.compaction.unfinished = true;
                }
                self.compaction.waiters.extend(physical_waiters);
                if let Some(done) = finished {
                    self.compaction.unfinished = false;
                    let (ready, waiting): (Vec<_>, Vec<_>) = self
                        .compaction
                        .waiters
                        .drain(..)
                        .partition(|(_, at)| *at <= done);
                    self.compaction.waiters = waiting;
                    for (w, _) in ready {
                        drop(w.send(Ok(CompactionResponse {
                            header: Some(header(cur)),
                        })));
                    }
                }
                if let (Some(l), false) = (&shared.listener, events.is_empty()) {
                    l.committed(&events);
                }
                self.hub.committed(want_events.then_some(events), cur);
                for a in answers {
                    a.send();
                }
            }
            Err(msg) => {
                tracing::error!(error = %msg, "group commit failed; no request of the group was applied");
                for a in answers {
                    a.fail(Error::Engine(msg.clone()));
                }
                for (w, _) in physical_waiters {
                    drop(w.send(Err(Error::Engine(msg.clone()))));
                }
            }
        }
    }
}

/// Removes a revoked lease's row in the group's transaction.
fn remove_lease(
    wtxn: redb::WriteTransaction,
    revoked: Option<i64>,
) -> Result<redb::WriteTransaction, String> {
    if let Some(id) = revoked {
        let mut t = wtxn
            .open_table(LEASES)
            .map_err(|e| format!("open leases: {e}"))?;
        t.remove(id).map_err(|e| format!("remove lease: {e}"))?;
    }
    Ok(wtxn)
}

/// Writes the revision counters into the group's transaction; errors are returned as text.
fn wtxn_meta(
    wtxn: redb::WriteTransaction,
    cur: i64,
    scheduled: Option<i64>,
    finished: Option<i64>,
) -> Result<redb::WriteTransaction, String> {
    {
        let mut meta = wtxn
            .open_table(META)
            .map_err(|e| format!("open meta: {e}"))?;
        put_meta_i64(&mut meta, "current_revision", cur).map_err(|e| e.to_string())?;
        if let Some(at) = scheduled {
            put_meta_i64(&mut meta, "scheduled_compact_revision", at).map_err(|e| e.to_string())?;
        }
        if let Some(at) = finished {
            put_meta_i64(&mut meta, "finished_compact_revision", at).map_err(|e| e.to_string())?;
        }
    }
    Ok(wtxn)
}

/// Commits a group: appended to the log and synced there, then committed to the engine
/// without a sync; or, when the log wants a checkpoint or is full, committed durably.
impl Writer {
    fn commit_group(&self, mut w: redb::WriteTransaction, ops: &[WalOp]) -> Result<(), String> {
        let logged = {
            let mut wal = self.wal.borrow_mut();
            !wal.wants_checkpoint() && wal.append(ops).map_err(|e| e.to_string())?
        };
        if logged {
            w.set_durability(redb::Durability::None)
                .map_err(|e| format!("durability: {e}"))?;
            w.commit().map_err(|e| format!("commit: {e}"))
        } else {
            self.commit_checkpoint(w).map_err(|e| e.to_string())
        }
    }
}

struct GroupOutcome {
    wal_ops: Vec<WalOp>,
    revoked: Option<i64>,
    mutations: Vec<Mutation>,
    answers: Vec<Answer>,
    events: Vec<CommittedRevision>,
    cur: i64,
    scheduled: Option<i64>,
    physical_waiters: Vec<(Reply<CompactionResponse>, i64)>,
    poisoned: Option<String>,
}

/// A group being applied inside one engine write transaction.
struct Group<'a, 't> {
    shared: &'a Shared,
    base: &'a Index,
    table: &'a mut Table<'t, &'static [u8], &'static [u8]>,
    /// Latest state of keys written earlier in the group (`None` = deleted).
    group: BTreeMap<Vec<u8>, Option<Live>>,
    /// Current revision including the group's writes so far.
    cur: i64,
    compacted: i64,
    mutations: Vec<Mutation>,
    answers: Vec<Answer>,
    events: Vec<CommittedRevision>,
    cost: i64,
    scheduled: Option<i64>,
    physical_waiters: Vec<(Reply<CompactionResponse>, i64)>,
    /// Set when the engine transaction can no longer be trusted.
    poisoned: Option<String>,
    db_size: i64,
    /// Collect events for the watch hub and the listener.
    want_events: bool,
    /// A lease revoked by this group (it is then the group's only request).
    revoked: Option<i64>,
    /// The group's engine mutations, for the write-ahead log.
    wal_ops: Vec<WalOp>,
}

impl Group<'_, '_> {
    fn finish(self) -> GroupOutcome {
        GroupOutcome {
            wal_ops: self.wal_ops,
            mutations: self.mutations,
            answers: self.answers,
            events: self.events,
            cur: self.cur,
            scheduled: self.scheduled,
            physical_waiters: self.physical_waiters,
            poisoned: self.poisoned,
            revoked: self.revoked,
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Put(req, sealed, reply) => {
                let res = self.check_quota(put_cost(&req)).and_then(|()| {
                    let mut rs = ReqState::new(self.cur + 1);
                    let resp = self.put(&mut rs, &req, sealed)?;
                    self.merge(rs, put_cost(&req))?;
                    Ok(resp)
                });
                self.answers.push(Answer::Put(reply, res));
            }
            Command::Delete(req, reply) => {
                let mut rs = ReqState::new(self.cur + 1);
                let res = self.delete(&mut rs, &req).and_then(|mut resp| {
                    let rev = rs.current();
                    self.merge(rs, 0)?;
                    resp.header = Some(header(rev));
                    Ok(resp)
                });
                self.answers.push(Answer::Delete(reply, res));
            }
            Command::Txn(mut plan, reply) => {
                let cost = plan.cost();
                let res = self.check_quota(cost).and_then(|()| {
                    let mut rs = ReqState::new(self.cur + 1);
                    let path = self.decide(&rs, &plan)?;
                    let mut resp = self.txn(&mut rs, &mut plan, &path)?;
                    resp.header = Some(header(rs.current()));
                    self.merge(rs, cost)?;
                    Ok(resp)
                });
                self.answers.push(Answer::Txn(reply, res));
            }
            Command::Compact(req, reply) => {
                let at = req.revision;
                if at <= self.compacted {
                    self.answers
                        .push(Answer::Compact(reply, Err(Error::Compacted)));
                } else if at > self.cur {
                    self.answers
                        .push(Answer::Compact(reply, Err(Error::FutureRev)));
                } else {
                    self.compacted = at;
                    self.scheduled = Some(at);
                    if req.physical {
                        self.physical_waiters.push((reply, at));
                    } else {
                        self.answers.push(Answer::Compact(
                            reply,
                            Ok(CompactionResponse {
                                header: Some(header(self.cur)),
                            }),
                        ));
                    }
                }
            }
            Command::LeaseRevoke(id, reply) => {
                let res = self.revoke(id);
                self.answers.push(Answer::Revoke(reply, res));
            }
            other => other.fail(|| Error::Engine("not a write".into())),
        }
    }

    /// Deletes every key attached to lease `id` in one revision (sorted key order).
    fn revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let keys: Vec<Vec<u8>> = match self.shared.leases().map.get(&id) {
            Some(l) => l.keys.iter().cloned().collect(),
            None => return Err(Error::LeaseNotFound),
        };
        let mut rs = ReqState::new(self.cur + 1);
        for key in keys {
            if let Some(prev) = self.lookup(&rs, &key) {
                let rev = rs.next_rev();
                rs.local.insert(key.clone(), None);
                rs.writes.push(Write::Delete { key, rev, prev });
            }
        }
        let rev = rs.current();
        self.merge(rs, 0)?;
        self.revoked = Some(id);
        Ok(LeaseRevokeResponse {
            header: Some(header(rev)),
        })
    }

    fn check_quota(&self, cost: i64) -> Result<(), Error> {
        let quota = self.shared.quota;
        if quota > 0 && cost > 0 && self.db_size + self.cost + cost > quota {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Makes a successful request part of the group: records into the engine transaction,
    /// index mutations and overlay for later requests, events for the listener.
    fn merge(&mut self, rs: ReqState, cost: i64) -> Result<(), Error> {
        if !rs.wrote() {
            return Ok(());
        }
        let want_events = self.want_events;
        let mut events = Vec::new();
        let mut buf = Vec::new();
        for w in rs.writes {
            let (key, rev, record_res, live) = match &w {
                Write::Put {
                    key,
                    entry,
                    sealed,
                    plain,
                    ..
                } => {
                    let rec = Record::Put {
                        key,
                        create_revision: entry.create,
                        version: entry.version,
                        lease: entry.lease,
                        sealed,
                    };
                    (
                        key.clone(),
                        entry.rev,
                        rec.encode_into(&mut buf),
                        Some(Live {
                            entry: *entry,
                            plain: Some(Arc::clone(plain)),
                        }),
                    )
                }
                Write::Delete { key, rev, .. } => {
                    let rec = Record::Tombstone { key };
                    (key.clone(), *rev, rec.encode_into(&mut buf), None)
                }
            };
            record_res?;
            if let Err(e) = self.table.insert(rev.to_key().as_slice(), buf.as_slice()) {
                let msg = format!("write record: {e}");
                self.poisoned = Some(msg.clone());
                return Err(Error::Engine(msg));
            }
            self.wal_ops
                .push(WalOp::PutRecord(rev.to_key().to_vec(), buf.clone()));
            if want_events {
                events.push(self.event(&w)?);
            }
            match w {
                Write::Put { entry, .. } => self.mutations.push(Mutation::Put {
                    key: key.clone(),
                    rev: entry.rev,
                    lease: entry.lease,
                }),
                Write::Delete { rev, .. } => self.mutations.push(Mutation::Delete {
                    key: key.clone(),
                    rev,
                }),
            }
            self.group.insert(key, live);
        }
        self.cur = rs.rev;
        self.cost += cost;
        if want_events {
            self.events.push(CommittedRevision {
                revision: rs.rev,
                events,
            });
        }
        Ok(())
    }

    fn event(&self, w: &Write) -> Result<Event, Error> {
        Ok(match w {
            Write::Put {
                key,
                entry,
                plain,
                prev,
                ..
            } => Event {
                r#type: EventType::Put as i32,
                kv: Some(kv(key.clone(), entry, plain.to_vec())),
                prev_kv: match prev {
                    Some(p) => Some(self.full_kv(key, p)?),
                    None => None,
                },
            },
            Write::Delete { key, rev, prev } => Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: rev.main,
                    ..Default::default()
                }),
                prev_kv: Some(self.full_kv(key, prev)?),
            },
        })
    }

    // ---- views -------------------------------------------------------------------------

    fn lookup(&self, rs: &ReqState, key: &[u8]) -> Option<Live> {
        if let Some(l) = rs.local.get(key) {
            return l.clone();
        }
        if let Some(l) = self.group.get(key) {
            return l.clone();
        }
        self.base
            .latest(key)
            .map(|entry| Live { entry, plain: None })
    }

    /// Every live key in `(key, end)` as the request sees it now, in key order.
    fn live_range(&self, rs: &ReqState, key: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Live)> {
        if end.is_empty() {
            return self
                .lookup(rs, key)
                .map(|l| vec![(key.to_vec(), l)])
                .unwrap_or_default();
        }
        let Some(bounds) = crate::index::key_bounds(key, end) else {
            return Vec::new();
        };
        let mut merged: BTreeMap<Vec<u8>, Live> = BTreeMap::new();
        self.base.visit(key, end, self.base.current, |k, entry| {
            merged.insert(k.to_vec(), Live { entry, plain: None });
            true
        });
        for layer in [&self.group, &rs.local] {
            for (k, l) in layer.range::<[u8], _>(bounds) {
                match l {
                    Some(l) => merged.insert(k.clone(), l.clone()),
                    None => merged.remove(k),
                };
            }
        }
        merged.into_iter().collect()
    }

    fn value(&self, key: &[u8], live: &Live) -> Result<Vec<u8>, Error> {
        match &live.plain {
            Some(p) => Ok(p.to_vec()),
            None => load_value(&*self.table, self.shared, key, live.entry.rev),
        }
    }

    fn full_kv(&self, key: &[u8], live: &Live) -> Result<KeyValue, Error> {
        Ok(kv(key.to_vec(), &live.entry, self.value(key, live)?))
    }

    // ---- operations ----------------------------------------------------------------------

    fn put(
        &mut self,
        rs: &mut ReqState,
        req: &PutRequest,
        sealed: Option<Vec<u8>>,
    ) -> Result<PutResponse, Error> {
        if req.lease != 0 && !req.ignore_lease && !self.shared.leases().map.contains_key(&req.lease)
        {
            return Err(Error::LeaseNotFound);
        }
        let prev = self.lookup(rs, &req.key);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let (plain, sealed): (Arc<[u8]>, Vec<u8>) = match (req.ignore_value, sealed, &prev) {
            (true, _, Some(p)) => {
                let v = self.value(&req.key, p)?;
                let s = seal(self.shared, &req.key, &v)?;
                (Arc::from(v), s)
            }
            (false, Some(s), _) => (Arc::from(req.value.as_slice()), s),
            (false, None, _) => {
                let s = seal(self.shared, &req.key, &req.value)?;
                (Arc::from(req.value.as_slice()), s)
            }
            (true, _, None) => return Err(Error::KeyNotFound),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.entry.lease,
            _ => req.lease,
        };
        let rev = rs.next_rev();
        let entry = Entry {
            rev,
            create: prev.as_ref().map_or(rev.main, |p| p.entry.create),
            version: prev.as_ref().map_or(1, |p| p.entry.version + 1),
            lease,
        };
        let prev_kv = match (&prev, req.prev_kv) {
            (Some(p), true) => Some(self.full_kv(&req.key, p)?),
            _ => None,
        };
        rs.local.insert(
            req.key.clone(),
            Some(Live {
                entry,
                plain: Some(Arc::clone(&plain)),
            }),
        );
        rs.writes.push(Write::Put {
            key: req.key.clone(),
            entry,
            sealed,
            plain,
            prev,
        });
        Ok(PutResponse {
            header: Some(header(rs.rev)),
            prev_kv,
        })
    }

    /// Deletes; the caller sets the header.
    fn delete(
        &mut self,
        rs: &mut ReqState,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        let live = self.live_range(rs, &req.key, &req.range_end);
        let mut prev_kvs = Vec::new();
        let deleted = live.len() as i64;
        for (key, l) in live {
            if req.prev_kv {
                prev_kvs.push(self.full_kv(&key, &l)?);
            }
            let rev = rs.next_rev();
            rs.local.insert(key.clone(), None);
            rs.writes.push(Write::Delete { key, rev, prev: l });
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        })
    }

    fn range(&self, rs: &ReqState, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let cur = rs.current();
        if req.revision > cur {
            return Err(Error::FutureRev);
        }
        let at = if req.revision <= 0 { cur } else { req.revision };
        if at < self.compacted {
            return Err(Error::Compacted);
        }
        let collect = Collect::for_request(req);
        let mut cands = Vec::new();
        let mut count = 0i64;
        if at == cur {
            for (key, l) in self.live_range(rs, &req.key, &req.range_end) {
                count += 1;
                if collect.wants(cands.len()) {
                    cands.push(Candidate {
                        key,
                        entry: l.entry,
                        plain: l.plain.map(|p| p.to_vec()),
                    });
                }
            }
        } else if at <= self.base.current {
            self.base.visit(&req.key, &req.range_end, at, |k, entry| {
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
        } else {
            // Prevented by committing the group before such a txn.
            return Err(Error::Engine(format!(
                "internal: revision {at} is not committed yet"
            )));
        }
        let table = &*self.table;
        let shared = self.shared;
        let (kvs, more) = range::finish(req, cands, &mut |c: &Candidate| {
            load_value(table, shared, &c.key, c.entry.rev)
        })?;
        Ok(RangeResponse {
            header: Some(header(cur)),
            kvs,
            more,
            count,
        })
    }

    fn decide(&self, rs: &ReqState, plan: &TxnPlan) -> Result<Path, Error> {
        let mut succeeded = true;
        for c in &plan.compare {
            if !self.compare(rs, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &plan.success
        } else {
            &plan.failure
        };
        let mut nested = Vec::new();
        for op in ops {
            if let Op::Txn(t) = op {
                nested.push(self.decide(rs, t)?);
            }
        }
        Ok(Path { succeeded, nested })
    }

    fn compare(&self, rs: &ReqState, c: &Compare) -> Result<bool, Error> {
        let live = self.live_range(rs, &c.key, &c.range_end);
        if live.is_empty() {
            if c.target == compare::CompareTarget::Value as i32 {
                return Ok(false);
            }
            return Ok(compare_kv(c, None, None));
        }
        for (key, l) in &live {
            let value = if c.target == compare::CompareTarget::Value as i32 {
                Some(self.value(key, l)?)
            } else {
                None
            };
            if !compare_kv(c, Some(&l.entry), value.as_deref()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn txn(
        &mut self,
        rs: &mut ReqState,
        plan: &mut TxnPlan,
        path: &Path,
    ) -> Result<TxnResponse, Error> {
        let ops = if path.succeeded {
            &mut plan.success
        } else {
            &mut plan.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            let response = match op {
                Op::Range(r) => response_op::Response::ResponseRange(self.range(rs, r)?),
                Op::Put(p, sealed) => {
                    let sealed = sealed.take();
                    response_op::Response::ResponsePut(self.put(rs, p, sealed)?)
                }
                Op::Delete(d) => {
                    let mut resp = self.delete(rs, d)?;
                    resp.header = Some(header(rs.current()));
                    response_op::Response::ResponseDeleteRange(resp)
                }
                Op::Txn(t) => {
                    let sub = nested.next().ok_or_else(|| {
                        Error::Engine("internal: txn path does not match the txn".into())
                    })?;
                    let mut resp = self.txn(rs, t, sub)?;
                    resp.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(resp)
                }
                Op::Empty => return Err(Error::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        })
    }
}

fn kv(key: Vec<u8>, e: &Entry, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key,
        create_revision: e.create,
        mod_revision: e.rev.main,
        version: e.version,
        value,
        lease: e.lease,
    }
}

fn seal(shared: &Shared, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, Error> {
    shared
        .sealer
        .seal(key, plain)
        .map_err(|reason| Error::Seal {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        })
}

/// Reads the record of `rev` and opens its value.
pub(crate) fn load_value(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    shared: &Shared,
    key: &[u8],
    rev: Rev,
) -> Result<Vec<u8>, Error> {
    let guard = table
        .get(rev.to_key().as_slice())
        .map_err(engine_err("read record"))?
        .ok_or_else(|| {
            Error::Engine(format!(
                "record {}.{} of key {:?} is missing",
                rev.main,
                rev.sub,
                String::from_utf8_lossy(key)
            ))
        })?;
    match Record::decode(rev, guard.value())? {
        Record::Put { sealed, .. } => {
            shared
                .sealer
                .open(key, sealed)
                .map_err(|reason| Error::Open {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason,
                })
        }
        Record::Tombstone { .. } => Err(Error::Engine(format!(
            "record {}.{} is a tombstone where a value was expected",
            rev.main, rev.sub
        ))),
    }
}

/// etcd's `compareKV`: `entry`/`value` are `None` for an absent key (a zero KeyValue).
fn compare_kv(c: &Compare, entry: Option<&Entry>, value: Option<&[u8]>) -> bool {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let int = |have: i64, want: Option<i64>| have.cmp(&want.unwrap_or(0));
    let ord = match T::try_from(c.target) {
        Ok(T::Version) => int(
            entry.map_or(0, |e| e.version),
            match c.target_union {
                Some(U::Version(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(T::Create) => int(
            entry.map_or(0, |e| e.create),
            match c.target_union {
                Some(U::CreateRevision(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(T::Mod) => int(
            entry.map_or(0, |e| e.rev.main),
            match c.target_union {
                Some(U::ModRevision(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(T::Lease) => int(
            entry.map_or(0, |e| e.lease),
            match c.target_union {
                Some(U::Lease(v)) => Some(v),
                _ => None,
            },
        ),
        Ok(T::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(U::Value(v)) => v,
                _ => &[],
            };
            value.unwrap_or(&[]).cmp(want)
        }
        Err(_) => std::cmp::Ordering::Equal,
    };
    match R::try_from(c.result) {
        Ok(R::Equal) => ord.is_eq(),
        Ok(R::NotEqual) => ord.is_ne(),
        Ok(R::Greater) => ord.is_gt(),
        Ok(R::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// Seals one put of a txn (`None` for `ignore_value`).
pub(crate) type SealPut<'a> = dyn FnMut(&PutRequest) -> Result<Option<Vec<u8>>, Error> + 'a;

/// Turns a request op tree into a plan; `seal` seals each put value.
pub(crate) fn plan_txn(
    req: coffer_proto::TxnRequest,
    seal_put: &mut SealPut<'_>,
) -> Result<TxnPlan, Error> {
    fn ops(
        list: Vec<coffer_proto::RequestOp>,
        seal_put: &mut SealPut<'_>,
    ) -> Result<Vec<Op>, Error> {
        list.into_iter()
            .map(|op| {
                Ok(match op.request {
                    Some(request_op::Request::RequestRange(r)) => Op::Range(r),
                    Some(request_op::Request::RequestPut(p)) => {
                        let sealed = seal_put(&p)?;
                        Op::Put(p, sealed)
                    }
                    Some(request_op::Request::RequestDeleteRange(d)) => Op::Delete(d),
                    Some(request_op::Request::RequestTxn(t)) => Op::Txn(plan_txn(t, seal_put)?),
                    None => Op::Empty,
                })
            })
            .collect()
    }
    Ok(TxnPlan {
        compare: req.compare,
        success: ops(req.success, seal_put)?,
        failure: ops(req.failure, seal_put)?,
    })
}
