//! The single writer thread: grouping, commit, compaction and publishing.
//!
//! Every change is a [`Command`] on one bounded queue. The writer takes what is pending, plans
//! the write requests as one group ([`crate::plan`], no side effects), adds a batch of physical
//! compaction, and commits the batch through the engine (log append + `fdatasync`, then the
//! engine). Only then does it publish the group to the shared index and leases, feed the
//! watch hub and answer. So a write is acknowledged only when durable, no reader sees a write a
//! crash could take back (etcd #14140), and a failed request leaves no trace.
//!
//! When a commit fails before anything reached the disk, the group's requests get a definite
//! error and nothing changes. When it fails after (the log append's `fdatasync`, or the engine
//! commit after the append), the group's outcome is unknown: its requests get
//! [`Error::OutcomeUnknown`], and the store refuses writes until a restart replays the log
//! (reads go on), so a write reported as failed never reappears without a restart telling
//! clients to look again.
//!
//! Lease grants and checkpoints and alarm changes are durable checkpoints of their own.

use std::collections::VecDeque;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    TxnResponse,
};

use crate::auth::{AuthChange, AuthChanged};
use crate::engine::{Batch, CommitError, Meta, Op, RECORDS};
use crate::index::Mutation;
use crate::lease;
use crate::plan::{header, GroupPlan, Planner, Reply, Request};
use crate::record::Rev;
use crate::state::Shared;
use crate::txn::TxnPlan;
use crate::watch::WatchHub;
use crate::{Caller, Error, StoreStatus};

pub use crate::events::{CommitListener, CommittedRevision};

/// Requests the writer serves at most per group.
const MAX_GROUP: usize = 4096;
/// Record bytes after which a group takes no more requests (one request may exceed it alone;
/// the server's request-size limit bounds that). With [`crate::disk::needed_for`] this bounds
/// the free space a group needs.
pub(crate) const MAX_GROUP_BYTES: u64 = 16 * 1024 * 1024;
/// Commands the writer's queue holds; beyond it requests get etcd's `too many requests`.
pub const QUEUE: usize = 16 * 1024;
/// Lease rows rewritten per checkpoint, the stalest first (the others keep their last
/// checkpointed remaining TTL, which is never shorter than the real one).
const CHECKPOINT_BATCH: usize = 10_000;

/// What the writer thread is asked to do.
pub(crate) enum Command {
    Write(Request),
    Status(Reply<StoreStatus>),
    Defragment(Reply<()>),
    LeaseGrant(LeaseGrantRequest, Reply<LeaseGrantResponse>),
    /// Persist leases' remaining TTLs.
    LeaseCheckpoint,
    /// Raise or clear an alarm; durable before it is answered.
    Alarm(crate::AlarmChange, Reply<Vec<coffer_proto::AlarmMember>>),
    /// An auth change by a caller; logged and durable before it is answered.
    Auth(Caller, AuthChange, Reply<AuthChanged>),
    Shutdown,
}

impl Command {
    pub(crate) fn put(
        req: PutRequest,
        sealed: Option<Vec<u8>>,
        caller: Caller,
        r: Reply<PutResponse>,
    ) -> Self {
        Command::Write(Request::Put(req, sealed, caller, r))
    }
    pub(crate) fn delete(
        req: DeleteRangeRequest,
        caller: Caller,
        r: Reply<DeleteRangeResponse>,
    ) -> Self {
        Command::Write(Request::Delete(req, caller, r))
    }
    pub(crate) fn txn(plan: TxnPlan, caller: Caller, r: Reply<TxnResponse>) -> Self {
        Command::Write(Request::Txn(plan, caller, r))
    }
    pub(crate) fn compact(req: CompactionRequest, r: Reply<CompactionResponse>) -> Self {
        Command::Write(Request::Compact(req, r))
    }
    pub(crate) fn revoke(id: i64, caller: Caller, r: Reply<LeaseRevokeResponse>) -> Self {
        Command::Write(Request::LeaseRevoke(id, caller, r))
    }

    fn is_write(&self) -> bool {
        matches!(self, Command::Write(_))
    }

    /// Answers the command with `err` without doing it.
    pub(crate) fn fail(self, err: impl Fn() -> Error) {
        // A caller that went away no longer needs its answer.
        match self {
            Command::Write(Request::Put(_, _, _, r)) => drop(r.send(Err(err()))),
            Command::Write(Request::Delete(_, _, r)) => drop(r.send(Err(err()))),
            Command::Write(Request::Txn(_, _, r)) => drop(r.send(Err(err()))),
            Command::Write(Request::Compact(_, r)) => drop(r.send(Err(err()))),
            Command::Write(Request::LeaseRevoke(_, _, r)) => drop(r.send(Err(err()))),
            Command::Auth(_, _, r) => drop(r.send(Err(err()))),
            Command::Status(r) => drop(r.send(Err(err()))),
            Command::Defragment(r) => drop(r.send(Err(err()))),
            Command::LeaseGrant(_, r) => drop(r.send(Err(err()))),
            Command::Alarm(_, r) => drop(r.send(Err(err()))),
            Command::LeaseCheckpoint | Command::Shutdown => {}
        }
    }
}

/// Fails the write commands at the front of `pending`.
fn fail_writes(pending: &mut VecDeque<Command>, err: impl Fn() -> Error) {
    while pending.front().is_some_and(Command::is_write) {
        if let Some(c) = pending.pop_front() {
            c.fail(&err);
        }
    }
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
    /// The meta as of the last commit; every commit writes it whole.
    meta: Meta,
    /// Where the next lease checkpoint starts (ids are checkpointed in rotation).
    checkpoint_cursor: i64,
}

impl Writer {
    /// `resume`: records still to delete for an unfinished compaction at `target`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        resume: Option<(i64, Vec<Rev>)>,
        hub: Arc<WatchHub>,
        meta: Meta,
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
            meta,
            checkpoint_cursor: i64::MIN,
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
                    Some(Command::Defragment(reply)) => {
                        let res = self.shared.engine.defragment();
                        self.shared.refresh_size();
                        drop(reply.send(res))
                    }
                    Some(Command::LeaseGrant(req, reply)) => drop(reply.send(self.grant(req))),
                    Some(Command::LeaseCheckpoint) => self.checkpoint(false),
                    Some(Command::Alarm(change, reply)) => drop(reply.send(self.alarm(change))),
                    Some(Command::Auth(caller, change, reply)) => {
                        drop(reply.send(self.auth(&caller, &change)))
                    }
                    Some(Command::Shutdown) => {
                        // Always: the log is then empty and the engine file complete.
                        self.checkpoint(true);
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

    /// Commits a batch of the writer's own (outside a group) durably, as a checkpoint. An
    /// unknown outcome stops writes.
    fn commit_checkpoint(&mut self, batch: Batch) -> Result<(), Error> {
        self.commit_own(batch, true)
    }

    /// Commits a batch of the writer's own (outside a group): through the log (`checkpoint`
    /// false) or straight into the engine durably. An unknown outcome stops writes.
    fn commit_own(&mut self, batch: Batch, checkpoint: bool) -> Result<(), Error> {
        if let Some(why) = self.shared.writes_stopped() {
            return Err(Error::WritesStopped(why));
        }
        crate::disk::check(
            self.shared.engine.dir(),
            crate::disk::needed_for(batch.bytes()),
        )?;
        match self.shared.engine.commit(&batch, checkpoint) {
            Ok(()) => {
                self.meta = batch.meta;
                Ok(())
            }
            Err(CommitError::NotWritten(e)) => Err(e),
            Err(CommitError::Unknown(why)) => {
                self.shared.stop_writes(&why);
                Err(Error::OutcomeUnknown(why))
            }
        }
    }

    /// LeaseGrant: durable before it is answered; does not bump the revision.
    fn grant(&mut self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse, Error> {
        if req.ttl > lease::MAX_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = req.ttl.max(lease::MIN_TTL);
        let id = {
            let mut leases = self.shared.leases();
            if leases.map.len() >= self.shared.max_leases {
                return Err(Error::TooManyLeases {
                    max: self.shared.max_leases,
                });
            }
            if req.id == 0 {
                leases.fresh_id()
            } else if leases.map.contains_key(&req.id) {
                return Err(Error::LeaseExist);
            } else {
                req.id
            }
        };
        self.commit_checkpoint(Batch {
            ops: vec![Op::PutLease {
                id,
                ttl,
                remaining_ms: ttl.saturating_mul(1000),
            }],
            meta: self.meta.clone(),
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
    fn alarm(
        &mut self,
        change: crate::AlarmChange,
    ) -> Result<Vec<coffer_proto::AlarmMember>, Error> {
        let mut list = self.shared.alarms().clone();
        let answer = crate::alarm::apply(&mut list, change);
        if list == *self.shared.alarms() {
            return Ok(answer);
        }
        let mut meta = self.meta.clone();
        meta.alarms = list.clone();
        self.commit_checkpoint(Batch::meta(meta))?;
        *self.shared.alarms() = list;
        Ok(answer)
    }

    /// An auth change: checked against the caller and applied to the current state, logged
    /// and durable (with the meta, so it is ordered with the data around it), then published.
    /// A no-op answers the unchanged revision and writes nothing.
    fn auth(&mut self, caller: &Caller, change: &AuthChange) -> Result<AuthChanged, Error> {
        let current = self.shared.auth();
        let revision = self.shared.read_index().current;
        let Some(next) = current.changed_by(caller, change)? else {
            return Ok(AuthChanged {
                auth_revision: current.revision,
                revision,
            });
        };
        self.commit_own(
            Batch {
                ops: vec![Op::PutAuth(next.encode())],
                meta: self.meta.clone(),
            },
            false,
        )?;
        let answer = AuthChanged {
            auth_revision: next.revision,
            revision,
        };
        self.shared.set_auth(next);
        Ok(answer)
    }

    /// Persists leases' remaining TTLs (at most [`CHECKPOINT_BATCH`] rows, in rotation) in a
    /// durable checkpoint, which also empties the log. `all`: every lease (at shutdown).
    /// Logged, not fatal, on failure.
    fn checkpoint(&mut self, all: bool) {
        let now = Instant::now();
        let mut rows: Vec<(i64, i64, i64)> = self
            .shared
            .leases()
            .map
            .iter()
            .map(|(id, l)| (*id, l.ttl, lease::remaining_ms(l, now)))
            .collect();
        rows.sort_unstable();
        if !all && rows.len() > CHECKPOINT_BATCH {
            let start = rows.partition_point(|r| r.0 <= self.checkpoint_cursor);
            rows.rotate_left(start);
            rows.truncate(CHECKPOINT_BATCH);
        }
        self.checkpoint_cursor = match rows.last() {
            Some(r) if rows.len() == CHECKPOINT_BATCH => r.0,
            _ => i64::MIN,
        };
        let n = rows.len();
        let batch = Batch {
            ops: rows
                .into_iter()
                .map(|(id, ttl, remaining_ms)| Op::PutLease {
                    id,
                    ttl,
                    remaining_ms,
                })
                .collect(),
            meta: self.meta.clone(),
        };
        if let Err(e) = self.commit_checkpoint(batch) {
            // The remaining TTLs stay as last checkpointed; a later checkpoint catches up.
            tracing::warn!(error = %e, leases = n, "lease checkpoint failed");
        }
    }

    fn status(&self) -> Result<StoreStatus, Error> {
        let (revision, compacted) = {
            let ix = self.shared.read_index();
            (ix.current, ix.compacted)
        };
        let db_size = self.shared.engine.file_size();
        let in_use = self.shared.engine.in_use()?;
        Ok(StoreStatus {
            revision,
            compact_revision: compacted.max(0),
            db_size,
            db_size_in_use: in_use.min(db_size),
        })
    }

    /// Plans the write commands at the front of `pending` as one group and commits it.
    fn run_group(&mut self, pending: &mut VecDeque<Command>) {
        let shared = Arc::clone(&self.shared);
        if let Some(why) = shared.writes_stopped() {
            fail_writes(pending, || Error::WritesStopped(why.clone()));
            if pending.is_empty() && self.compaction.unfinished {
                // Compaction waits for the restart too.
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        // Decided once per group: a watcher created meanwhile catches up from history.
        let want_events = shared.listener.is_some() || self.hub.active();
        let planned = {
            let base = shared.read_index();
            let view = shared.engine.read().and_then(|r| {
                let t = r
                    .open_table(RECORDS)
                    .map_err(|e| Error::Engine(format!("open records: {e}")))?;
                Ok((r, t))
            });
            let (_rtxn, table) = match view {
                Ok(v) => v,
                Err(e) => {
                    drop(base);
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "the engine cannot be read; writes refused");
                    fail_writes(pending, || Error::Engine(msg.clone()));
                    return;
                }
            };
            let mut planner = Planner::new(&shared, &base, &table, want_events);
            while let Some(cmd) = pending.front() {
                if planner.len() >= MAX_GROUP || planner.bytes() >= MAX_GROUP_BYTES {
                    break;
                }
                let Command::Write(req) = cmd else { break };
                if let Request::Txn(t, _, _) = req {
                    // A txn reading a past revision written earlier in this group would need
                    // history the index does not have yet: commit what we have first.
                    if planner.cur() > base.current && t.reads_history() {
                        break;
                    }
                }
                // A revoke reads the published lease attachments: it starts a group of its own
                // and ends it.
                let revoke = matches!(req, Request::LeaseRevoke(..));
                if revoke && planner.len() > 0 {
                    break;
                }
                if let Some(Command::Write(req)) = pending.pop_front() {
                    planner.apply(req);
                }
                if revoke {
                    break;
                }
            }
            planner.finish()
        };
        self.commit_group(planned, want_events);
    }

    fn commit_group(&mut self, plan: GroupPlan, want_events: bool) {
        let shared = Arc::clone(&self.shared);
        let GroupPlan {
            mut ops,
            mutations,
            answers,
            events,
            cur,
            scheduled,
            physical_waiters,
            revoked,
            bytes: _,
        } = plan;
        // A batch of physical compaction, removed from the queue only once committed.
        let purge = self.compaction.queue.len().min(shared.compaction_batch);
        ops.extend(
            self.compaction
                .queue
                .iter()
                .take(purge)
                .map(|rev| Op::DelRecord(*rev)),
        );
        let finished = (scheduled.is_none()
            && self.compaction.unfinished
            && self.compaction.queue.len() == purge)
            .then_some(self.compaction.target);
        if let Some(id) = revoked {
            ops.push(Op::DelLease(id));
        }
        if ops.is_empty() && scheduled.is_none() && finished.is_none() {
            // Nothing to write: every request failed or wrote nothing (a no-op delete, a txn of
            // ranges) and is answered at the current revision.
            for a in answers {
                a.send();
            }
            return;
        }
        coffer_metrics::metrics()
            .group_size
            .observe(answers.len() as f64);
        let mut meta = self.meta.clone();
        meta.current_revision = cur;
        if let Some(at) = scheduled {
            meta.scheduled_compact = Some(at);
        }
        if let Some(at) = finished {
            meta.finished_compact = Some(at);
        }
        meta.write_counts = shared.sealer.write_counts();
        let batch = Batch { ops, meta };

        let idle = answers.is_empty() && physical_waiters.is_empty();
        let outcome =
            crate::disk::check(shared.engine.dir(), crate::disk::needed_for(batch.bytes()))
                .map_err(CommitError::NotWritten)
                .and_then(|()| shared.engine.commit(&batch, false));
        match outcome {
            Ok(()) => {}
            Err(CommitError::NotWritten(e)) => {
                match &e {
                    Error::DiskFull { .. } => tracing::warn!(error = %e, "writes refused"),
                    _ => tracing::error!(error = %e, "group commit failed; nothing was written"),
                }
                let msg = e.to_string();
                let err = || match &e {
                    Error::DiskFull { available, needed } => Error::DiskFull {
                        available: *available,
                        needed: *needed,
                    },
                    _ => Error::Engine(msg.clone()),
                };
                for a in answers {
                    a.fail(&err);
                }
                for (w, _) in physical_waiters {
                    drop(w.send(Err(err())));
                }
                if idle {
                    // Only compaction work was due: wait (for space, for the engine) instead of
                    // spinning; the work stays queued.
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
            Err(CommitError::Unknown(why)) => {
                shared.stop_writes(&why);
                let err = || Error::OutcomeUnknown(why.clone());
                for a in answers {
                    a.fail(&err);
                }
                for (w, _) in physical_waiters {
                    drop(w.send(Err(err())));
                }
                return;
            }
        }

        self.meta = batch.meta;
        self.compaction.queue.drain(..purge);
        shared.commits.fetch_add(1, AtomicOrdering::Relaxed);
        shared.refresh_size();
        let removed = publish(&shared, &mutations, revoked, cur, scheduled);
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
}

/// Publishes a committed group to the shared index and leases; returns the records a new
/// compaction frees.
fn publish(
    shared: &Shared,
    mutations: &[Mutation],
    revoked: Option<i64>,
    cur: i64,
    scheduled: Option<i64>,
) -> Vec<Rev> {
    let mut ix = shared.write_index();
    let mut leases = shared.leases();
    // Live keys gained (a put of a missing or deleted key) minus lost (a delete of a live one).
    let mut live_delta = 0i64;
    for m in mutations {
        let (key, new) = match m {
            Mutation::Put { key, lease, .. } => (key, *lease),
            Mutation::Delete { key, .. } => (key, 0),
        };
        let latest = ix.latest(key);
        match (m, &latest) {
            (Mutation::Put { .. }, None) => live_delta += 1,
            (Mutation::Delete { .. }, Some(_)) => live_delta -= 1,
            _ => {}
        }
        let old = latest.map_or(0, |e| e.lease);
        leases.reattach(key, old, new);
        ix.apply(m);
    }
    if live_delta != 0 {
        coffer_metrics::metrics().keys_total.add(live_delta);
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
}
