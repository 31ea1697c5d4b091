//! The pure step of a group commit: requests in, a [`GroupPlan`] out (the engine batch's
//! record ops, the index mutations, the watch events and every request's answer), with no side
//! effect on the engine, the index or the leases.
//!
//! Each request is applied against an overlay of the published index (the keys written earlier
//! in the group, then its own writes) and gets the next revision if it writes. Everything a
//! request can fail on (a missing lease or key, the quota, a value that cannot be opened for a
//! compare or a read, a damaged record) happens while it is turned into its records, mutations
//! and events; only when all of that succeeded are they added to the group. So a failed request
//! leaves no trace and every request is applied whole or not at all.
//!
//! A previous value that cannot be opened (`prev_kv` of an event or a response) is passed on as
//! stored ([`Want::PrevKv`]): deleting such a key works, and watchers still get its DELETE with a
//! `prev_kv`.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_proto::mvccpb::KeyValue;
use coffer_proto::{
    compare, response_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnResponse,
};
use redb::ReadOnlyTable;
use tokio::sync::oneshot;

use crate::auth::{AuthState, PermType, Subject};
use crate::engine::Op;
use crate::events::{self, CommittedRevision};
use crate::index::{Entry, Index, Mutation};
use crate::range::{self, Candidate, Collect};
use crate::record::{Record, Rev};
use crate::state::{load_value, Shared, Want};
use crate::txn::{compare_kv, put_cost, TxnOp, TxnPlan};
use crate::{Caller, Error};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A response header with only the revision (the server adds cluster and member ids).
pub(crate) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

/// An answer held back until the group is durable.
pub(crate) enum Answer {
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
    /// Sends the planned answer.
    pub(crate) fn send(self) {
        // A caller that went away no longer needs its answer.
        match self {
            Answer::Put(r, v) => drop(r.send(v)),
            Answer::Delete(r, v) => drop(r.send(v)),
            Answer::Txn(r, v) => drop(r.send(v)),
            Answer::Compact(r, v) => drop(r.send(v)),
            Answer::Revoke(r, v) => drop(r.send(v)),
        }
    }

    /// Sends `err` instead: the group was not committed. A request that had already failed
    /// keeps its own (definite) error.
    pub(crate) fn fail(self, err: &impl Fn() -> Error) {
        match self {
            Answer::Put(r, v) => drop(r.send(v.and_then(|_| Err(err())))),
            Answer::Delete(r, v) => drop(r.send(v.and_then(|_| Err(err())))),
            Answer::Txn(r, v) => drop(r.send(v.and_then(|_| Err(err())))),
            Answer::Compact(r, v) => drop(r.send(v.and_then(|_| Err(err())))),
            Answer::Revoke(r, v) => drop(r.send(v.and_then(|_| Err(err())))),
        }
    }
}

/// A write request for the planner.
pub(crate) enum Request {
    Put(PutRequest, Option<Vec<u8>>, Caller, Reply<PutResponse>),
    Delete(DeleteRangeRequest, Caller, Reply<DeleteRangeResponse>),
    Txn(TxnPlan, Caller, Reply<TxnResponse>),
    /// Compaction needs no permission (as etcd).
    Compact(CompactionRequest, Reply<CompactionResponse>),
    /// Revoke (by a client, or by expiry as [`Caller::Internal`]): one revision deleting the
    /// attached keys.
    LeaseRevoke(i64, Caller, Reply<LeaseRevokeResponse>),
}

/// What a group would change, once committed.
pub(crate) struct GroupPlan {
    /// Record inserts (compaction removals are added by the writer).
    pub ops: Vec<Op>,
    pub mutations: Vec<Mutation>,
    pub answers: Vec<Answer>,
    pub events: Vec<CommittedRevision>,
    /// The current revision after the group.
    pub cur: i64,
    /// A compaction accepted by the group.
    pub scheduled: Option<i64>,
    pub physical_waiters: Vec<(Reply<CompactionResponse>, i64)>,
    /// A lease revoked by the group (then its only request).
    pub revoked: Option<i64>,
    /// Bytes of the records planned.
    pub bytes: u64,
}

/// DeleteRange: WRITE on the range, READ too with `prev_kv`.
fn permit_delete(s: &Subject<'_>, d: &DeleteRangeRequest) -> Result<(), Error> {
    s.check(&d.key, &d.range_end, PermType::Write)?;
    if d.prev_kv {
        s.check(&d.key, &d.range_end, PermType::Read)?;
    }
    Ok(())
}

/// A key's latest state as a request sees it.
#[derive(Debug, Clone)]
struct Live {
    entry: Entry,
    /// Plaintext of writes made in this group; `None` = read the record of `entry.rev`.
    plain: Option<Arc<[u8]>>,
}

/// One change a request makes.
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

/// A group being planned against the published index and an engine read view.
pub(crate) struct Planner<'a> {
    shared: &'a Shared,
    base: &'a Index,
    table: &'a ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// Latest state of keys written earlier in the group (`None` = deleted).
    group: BTreeMap<Vec<u8>, Option<Live>>,
    compacted: i64,
    /// Quota bytes of the files plus the group's puts so far.
    db_size: i64,
    cost: i64,
    /// Collect events for the watch hub and the listener.
    want_events: bool,
    /// The auth state every request of the group is checked against (auth changes are
    /// applied between groups).
    auth: Arc<AuthState>,
    plan: GroupPlan,
}

/// A request's changes, ready to be added to the group.
struct Merged {
    ops: Vec<Op>,
    mutations: Vec<Mutation>,
    events: Vec<coffer_proto::mvccpb::Event>,
    overlay: Vec<(Vec<u8>, Option<Live>)>,
    bytes: u64,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        base: &'a Index,
        table: &'a ReadOnlyTable<&'static [u8], &'static [u8]>,
        want_events: bool,
    ) -> Self {
        Planner {
            shared,
            base,
            table,
            group: BTreeMap::new(),
            compacted: base.compacted,
            db_size: shared.db_size.load(std::sync::atomic::Ordering::Relaxed),
            cost: 0,
            want_events,
            auth: shared.auth(),
            plan: GroupPlan {
                ops: Vec::new(),
                mutations: Vec::new(),
                answers: Vec::new(),
                events: Vec::new(),
                cur: base.current,
                scheduled: None,
                physical_waiters: Vec::new(),
                revoked: None,
                bytes: 0,
            },
        }
    }

    /// The group's current revision so far.
    pub(crate) fn cur(&self) -> i64 {
        self.plan.cur
    }

    /// Requests planned so far.
    pub(crate) fn len(&self) -> usize {
        self.plan.answers.len() + self.plan.physical_waiters.len()
    }

    /// Record bytes planned so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.plan.bytes
    }

    pub(crate) fn finish(self) -> GroupPlan {
        self.plan
    }

    /// Plans one request; its answer (success or a definite failure) waits for the commit.
    pub(crate) fn apply(&mut self, req: Request) {
        let next = self.plan.cur + 1;
        match req {
            Request::Put(req, sealed, caller, reply) => {
                let cost = put_cost(&req);
                let res = self.permit(&caller, |me, s| me.permit_put(s, &req));
                let res = res.and_then(|()| self.check_quota(cost)).and_then(|()| {
                    let mut rs = ReqState::new(next);
                    let resp = self.put(&mut rs, &req, sealed)?;
                    self.merge(rs, cost)?;
                    Ok(resp)
                });
                self.plan.answers.push(Answer::Put(reply, res));
            }
            Request::Delete(req, caller, reply) => {
                let mut rs = ReqState::new(next);
                let res = self.permit(&caller, |_, s| permit_delete(s, &req));
                let res = res
                    .and_then(|()| self.delete(&mut rs, &req))
                    .and_then(|mut resp| {
                        resp.header = Some(header(rs.current()));
                        self.merge(rs, 0)?;
                        Ok(resp)
                    });
                self.plan.answers.push(Answer::Delete(reply, res));
            }
            Request::Txn(mut plan, caller, reply) => {
                let cost = plan.cost();
                let res = self.permit(&caller, |me, s| me.permit_txn(s, &plan));
                let res = res.and_then(|()| self.check_quota(cost)).and_then(|()| {
                    let mut rs = ReqState::new(next);
                    let path = self.decide(&rs, &plan)?;
                    let mut resp = self.txn(&mut rs, &mut plan, &path)?;
                    resp.header = Some(header(rs.current()));
                    self.merge(rs, cost)?;
                    Ok(resp)
                });
                self.plan.answers.push(Answer::Txn(reply, res));
            }
            Request::Compact(req, reply) => {
                let at = req.revision;
                let res = if at <= self.compacted {
                    Err(Error::Compacted)
                } else if at > self.plan.cur {
                    Err(Error::FutureRev)
                } else {
                    self.compacted = at;
                    self.plan.scheduled = Some(at);
                    if req.physical {
                        self.plan.physical_waiters.push((reply, at));
                        return;
                    }
                    Ok(CompactionResponse {
                        header: Some(header(self.plan.cur)),
                    })
                };
                self.plan.answers.push(Answer::Compact(reply, res));
            }
            Request::LeaseRevoke(id, caller, reply) => {
                let res = self
                    .permit(&caller, |me, s| me.permit_lease_keys(s, id))
                    .and_then(|()| self.revoke(id));
                self.plan.answers.push(Answer::Revoke(reply, res));
            }
        }
    }

    // ---- permissions (etcd's apply-time checks, against the group's auth state) ----------

    /// Resolves `caller` against the auth state and runs `check` for it.
    fn permit(
        &self,
        caller: &Caller,
        check: impl FnOnce(&Self, &Subject<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let auth = Arc::clone(&self.auth);
        let subject = auth.subject(caller)?;
        match subject {
            Subject::All => Ok(()),
            s => check(self, &s),
        }
    }

    /// WRITE on every key attached to lease `id` (LeaseRevoke, a Put onto the lease).
    fn permit_lease_keys(&self, s: &Subject<'_>, id: i64) -> Result<(), Error> {
        let keys: Vec<Vec<u8>> = match self.shared.leases().map.get(&id) {
            Some(l) => l.keys.iter().cloned().collect(),
            None => return Ok(()),
        };
        keys.iter()
            .try_for_each(|k| s.check(k, &[], PermType::Write))
    }

    /// Put: WRITE on the key, READ too with `prev_kv`, WRITE on the target lease's keys.
    fn permit_put(&self, s: &Subject<'_>, p: &PutRequest) -> Result<(), Error> {
        s.check(&p.key, &[], PermType::Write)?;
        if p.prev_kv {
            s.check(&p.key, &[], PermType::Read)?;
        }
        if p.lease != 0 {
            self.permit_lease_keys(s, p.lease)?;
        }
        Ok(())
    }

    /// Txn: READ on every compare; every op of both branches, nested txns included, with the
    /// standalone checks (etcd 3.5.30+).
    fn permit_txn(&self, s: &Subject<'_>, t: &TxnPlan) -> Result<(), Error> {
        for c in &t.compare {
            s.check(&c.key, &c.range_end, PermType::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                TxnOp::Range(r) => s.check(&r.key, &r.range_end, PermType::Read)?,
                TxnOp::Put(p, _) => self.permit_put(s, p)?,
                TxnOp::Delete(d) => permit_delete(s, d)?,
                TxnOp::Txn(t) => self.permit_txn(s, t)?,
                TxnOp::Empty => {}
            }
        }
        Ok(())
    }

    /// Deletes every key attached to lease `id` in one revision (sorted key order).
    fn revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let keys: Vec<Vec<u8>> = match self.shared.leases().map.get(&id) {
            Some(l) => l.keys.iter().cloned().collect(),
            None => return Err(Error::LeaseNotFound),
        };
        let mut rs = ReqState::new(self.plan.cur + 1);
        for key in keys {
            if let Some(prev) = self.lookup(&rs, &key) {
                let rev = rs.next_rev();
                rs.local.insert(key.clone(), None);
                rs.writes.push(Write::Delete { key, rev, prev });
            }
        }
        let rev = rs.current();
        self.merge(rs, 0)?;
        self.plan.revoked = Some(id);
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

    /// Turns a successful request into its records, index mutations and events, and only if
    /// every step succeeds adds them to the group.
    fn merge(&mut self, rs: ReqState, cost: i64) -> Result<(), Error> {
        if !rs.wrote() {
            return Ok(());
        }
        let mut m = Merged {
            ops: Vec::with_capacity(rs.writes.len()),
            mutations: Vec::with_capacity(rs.writes.len()),
            events: Vec::new(),
            overlay: Vec::with_capacity(rs.writes.len()),
            bytes: 0,
        };
        for w in &rs.writes {
            let mut buf = Vec::new();
            let (key, rev, live, mutation) = match w {
                Write::Put {
                    key,
                    entry,
                    sealed,
                    plain,
                    ..
                } => {
                    Record::Put {
                        key,
                        create_revision: entry.create,
                        version: entry.version,
                        lease: entry.lease,
                        sealed,
                    }
                    .encode_into(entry.rev, &mut buf)?;
                    let live = Live {
                        entry: *entry,
                        plain: Some(Arc::clone(plain)),
                    };
                    let mutation = Mutation::Put {
                        key: key.clone(),
                        rev: entry.rev,
                        lease: entry.lease,
                    };
                    (key, entry.rev, Some(live), mutation)
                }
                Write::Delete { key, rev, .. } => {
                    Record::Tombstone { key }.encode_into(*rev, &mut buf)?;
                    let mutation = Mutation::Delete {
                        key: key.clone(),
                        rev: *rev,
                    };
                    (key, *rev, None, mutation)
                }
            };
            if self.want_events {
                m.events.push(self.event(w)?);
            }
            m.bytes += buf.len() as u64;
            m.ops.push(Op::PutRecord(rev, buf));
            m.mutations.push(mutation);
            m.overlay.push((key.clone(), live));
        }
        // Nothing below can fail.
        self.plan.ops.append(&mut m.ops);
        self.plan.mutations.append(&mut m.mutations);
        self.plan.bytes += m.bytes;
        self.group.extend(m.overlay);
        self.plan.cur = rs.rev;
        self.cost += cost;
        if self.want_events {
            for e in m.events {
                events::push(&mut self.plan.events, rs.rev, e);
            }
        }
        Ok(())
    }

    fn event(&self, w: &Write) -> Result<coffer_proto::mvccpb::Event, Error> {
        Ok(match w {
            Write::Put {
                key,
                entry,
                plain,
                prev,
                ..
            } => events::event(
                key.clone(),
                entry.rev.main,
                Some(events::kv(key.clone(), entry, plain.to_vec())),
                match prev {
                    Some(p) => Some(self.full_kv(key, p, Want::PrevKv)?),
                    None => None,
                },
            ),
            Write::Delete { key, rev, prev } => events::event(
                key.clone(),
                rev.main,
                None,
                Some(self.full_kv(key, prev, Want::PrevKv)?),
            ),
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

    fn value(&self, key: &[u8], live: &Live, want: Want) -> Result<Vec<u8>, Error> {
        match &live.plain {
            Some(p) => Ok(p.to_vec()),
            None => load_value(self.table, self.shared, key, live.entry.rev, want),
        }
    }

    fn full_kv(&self, key: &[u8], live: &Live, want: Want) -> Result<KeyValue, Error> {
        Ok(events::kv(
            key.to_vec(),
            &live.entry,
            self.value(key, live, want)?,
        ))
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
        let (plain, sealed): (Arc<[u8]>, Vec<u8>) = match (req.ignore_value, sealed, &prev) {
            (true, _, Some(p)) => {
                let v = self.value(&req.key, p, Want::Plain)?;
                let s = self.shared.seal(&req.key, &v)?;
                (Arc::from(v), s)
            }
            (true, _, None) => return Err(Error::KeyNotFound),
            (false, _, None) if req.ignore_lease => return Err(Error::KeyNotFound),
            (false, Some(s), _) => (Arc::from(req.value.as_slice()), s),
            (false, None, _) => {
                let s = self.shared.seal(&req.key, &req.value)?;
                (Arc::from(req.value.as_slice()), s)
            }
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
            (Some(p), true) => Some(self.full_kv(&req.key, p, Want::PrevKv)?),
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
                prev_kvs.push(self.full_kv(&key, &l, Want::PrevKv)?);
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
            (cands, count) = range::collect(self.base, req, at, &collect);
        } else {
            // Prevented by committing the group before such a txn.
            return Err(Error::Engine(format!(
                "internal: revision {at} is not committed yet"
            )));
        }
        let (kvs, more) = range::finish(req, cands, &mut |c: &Candidate| {
            load_value(self.table, self.shared, &c.key, c.entry.rev, Want::Plain)
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
            if let TxnOp::Txn(t) = op {
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
                Some(self.value(key, l, Want::Plain)?)
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
                TxnOp::Range(r) => response_op::Response::ResponseRange(self.range(rs, r)?),
                TxnOp::Put(p, sealed) => {
                    let sealed = sealed.take();
                    response_op::Response::ResponsePut(self.put(rs, p, sealed)?)
                }
                TxnOp::Delete(d) => {
                    let mut resp = self.delete(rs, d)?;
                    resp.header = Some(header(rs.current()));
                    response_op::Response::ResponseDeleteRange(resp)
                }
                TxnOp::Txn(t) => {
                    let sub = nested.next().ok_or_else(|| {
                        Error::Engine("internal: txn path does not match the txn".into())
                    })?;
                    let mut resp = self.txn(rs, t, sub)?;
                    resp.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(resp)
                }
                TxnOp::Empty => return Err(Error::KeyNotFound),
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
