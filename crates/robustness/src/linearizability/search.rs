//! The search: replays the history revision by revision through the model
//! ([`super::model`]), placing every operation at a point of real time inside its call/return
//! interval, and backtracks over the only free choice left once header revisions are known:
//! which uncertain write (if any) produced a revision that no answered write claims.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::model::{Change, ShowKvs, State};
use super::prepare::{Prepared, Slot};
use crate::history::{Outcome, Request, Response, TxnOpResult};

/// Whether revisions no operation of the history claims are a violation (`Strict`, for a
/// whole history) or were written by operations left out (`Projection`, for a sub-history
/// restricted to some keys: such writes changed none of the keys the sub-history mentions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Strict,
    Projection,
}

/// Why the history cannot be linearized, at the deepest point the search reached.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The revision being replayed.
    pub revision: i64,
    /// The operation whose answer (or timing) the model could not accept.
    pub op: Option<usize>,
    /// Other operations the explanation names.
    pub related: Vec<usize>,
    /// Short name of the anomaly.
    pub kind: &'static str,
    /// What the model expected against what was seen.
    pub detail: String,
}

/// The linearization found.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub final_revision: i64,
    /// For each revision `2..=final_revision`: the operation that wrote it (`None` = left out
    /// of a projected sub-history) and the keys it changed.
    pub writes: Vec<(i64, Option<usize>, Vec<Change>)>,
    /// The uncertain operations that took effect.
    pub applied_uncertain: usize,
    /// Gaps the search had to choose a writer for.
    pub choice_points: usize,
    pub backtracks: usize,
}

/// Result of a search.
#[derive(Debug)]
pub(crate) enum SearchResult {
    Linearizable(Resolved),
    Violation(Failure),
    OutOfBudget(String),
}

/// Who wrote a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Op(usize),
    External,
}

#[derive(Debug, Clone)]
struct Snapshot {
    state: State,
    point: u64,
    pusher: Option<usize>,
    used_len: usize,
    used_hash: u64,
    writes_len: usize,
}

struct Frame {
    revision: i64,
    candidates: Vec<Writer>,
    next: usize,
    snapshot: Snapshot,
    key: (i64, u64, u64),
}

struct Engine<'p, 'h> {
    p: &'p Prepared<'h>,
    mode: Mode,
    state: State,
    /// Real-time point of the latest placed operation; everything placed later is at or
    /// after it.
    point: u64,
    /// The operation whose call time set `point`.
    pusher: Option<usize>,
    used: Vec<bool>,
    used_log: Vec<usize>,
    used_hash: u64,
    writes: Vec<(i64, Option<usize>, Vec<Change>)>,
    best: Option<Failure>,
    choice_points: usize,
    backtracks: usize,
}

fn mix(i: usize) -> u64 {
    let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fail(revision: i64, op: usize, kind: &'static str, detail: String) -> Failure {
    Failure {
        revision,
        op: Some(op),
        related: Vec::new(),
        kind,
        detail,
    }
}

impl<'p, 'h> Engine<'p, 'h> {
    fn new(p: &'p Prepared<'h>, mode: Mode) -> Self {
        Engine {
            p,
            mode,
            state: State::new(),
            point: 0,
            pusher: None,
            used: vec![false; p.ops.len()],
            used_log: Vec::new(),
            used_hash: 0,
            writes: Vec::new(),
            best: None,
            choice_points: 0,
            backtracks: 0,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            point: self.point,
            pusher: self.pusher,
            used_len: self.used_log.len(),
            used_hash: self.used_hash,
            writes_len: self.writes.len(),
        }
    }

    fn restore(&mut self, s: &Snapshot) {
        self.state = s.state.clone();
        self.point = s.point;
        self.pusher = s.pusher;
        while self.used_log.len() > s.used_len {
            if let Some(i) = self.used_log.pop() {
                self.used[i] = false;
            }
        }
        self.used_hash = s.used_hash;
        self.writes.truncate(s.writes_len);
    }

    fn note(&mut self, f: Failure) {
        let deeper = self.best.as_ref().is_none_or(|b| f.revision > b.revision);
        if deeper {
            self.best = Some(f);
        }
    }

    /// Places `op` at the earliest real-time point not before `floor` and inside its
    /// interval.
    fn place(
        &self,
        revision: i64,
        op: usize,
        floor: u64,
        floor_by: Option<usize>,
    ) -> Result<u64, Failure> {
        let o = &self.p.ops[op];
        let at = floor.max(o.call);
        let ret = o.ret.unwrap_or(u64::MAX);
        if at > ret {
            let mut f = fail(
                revision,
                op,
                "real-time order",
                match floor_by {
                    Some(b) => format!(
                        "#{op} returned at {} but, at revision {revision}, must take effect after #{b}, which was only called at {} (at revision {}): the order the revisions (or compact revisions) impose contradicts real time",
                        ns(ret),
                        ns(self.p.ops[b].call),
                        slot_of(self.p, b).map_or("?".to_string(), |r| r.to_string()),
                    ),
                    None => format!("#{op} cannot be placed at revision {revision}"),
                },
            );
            f.related.extend(floor_by);
            return Err(f);
        }
        Ok(at)
    }

    fn advance(&mut self, at: u64, op: usize) {
        if at > self.point {
            self.point = at;
            if at == self.p.ops[op].call {
                self.pusher = Some(op);
            }
        }
    }

    fn fixed_writer(&self, rev: i64) -> Option<Writer> {
        let slot = &self.p.slots[rev as usize];
        if let Some(&w) = slot.writers.first() {
            return Some(Writer::Op(w));
        }
        match self.p.pinned_at.get(&rev) {
            Some(&u) if !self.used[u] => Some(Writer::Op(u)),
            _ => None,
        }
    }

    fn would_write(&self, op: usize) -> bool {
        let s = &self.state;
        match &self.p.ops[op].request {
            Request::Put { lease, .. } => *lease == 0 || s.lease_exists(*lease, &self.p.granted),
            Request::Delete { key } => s.kvs.contains_key(key),
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let branch = if s.compares_hold(compares) {
                    success
                } else {
                    failure
                };
                branch.iter().any(|op| match op {
                    crate::history::TxnOp::Put { .. } => true,
                    crate::history::TxnOp::Delete { key } => s.kvs.contains_key(key),
                    crate::history::TxnOp::Get { .. } => false,
                })
            }
            Request::LeaseRevoke { id } => {
                s.lease_exists(*id, &self.p.granted) && !s.lease_keys(*id).is_empty()
            }
            _ => false,
        }
    }

    fn candidates(&self, rev: i64) -> Vec<Writer> {
        let slot = &self.p.slots[rev as usize];
        let limit = self.p.suffix_min_ret[rev as usize];
        let mut hinted = Vec::new();
        let mut rest = Vec::new();
        for &r in &slot.revokes {
            if self.would_write(r) {
                rest.push(Writer::Op(r));
            }
        }
        let mut requests_seen = HashSet::new();
        let hint_put = self.p.hint_put.get(&rev);
        let hint_delete = self.p.hint_delete.get(&rev);
        for &u in &self.p.uncertain {
            if self.used[u] || self.p.pin_of.contains_key(&u) || self.p.ops[u].call > limit {
                continue;
            }
            // Two unused uncertain writes with the same request (say, two deletes of one
            // key) lead to the same states: try one of them.
            if !self.would_write(u) || !requests_seen.insert(self.p.request_ids[u]) {
                continue;
            }
            let is_hinted = hint_put.is_some_and(|h| h.contains(&u))
                || hint_delete.is_some_and(|keys| {
                    super::prepare::request_keys(&self.p.ops[u].request)
                        .iter()
                        .any(|k| keys.iter().any(|d| d == k))
                        && !matches!(self.p.ops[u].request, Request::Put { .. })
                });
            if is_hinted {
                hinted.push(Writer::Op(u));
            } else {
                rest.push(Writer::Op(u));
            }
        }
        hinted.extend(rest);
        if self.mode == Mode::Projection {
            // In a projection most unclaimed revisions were written to other keys: try that
            // first.
            hinted.insert(0, Writer::External);
        }
        hinted
    }

    /// Applies `writer` as the write that makes revision `rev`, then every non-writing
    /// operation at `rev`.
    fn run_slot(&mut self, rev: i64, writer: Option<Writer>) -> Result<(), Failure> {
        let slot: &Slot = &self.p.slots[rev as usize];
        if slot.writers.len() > 1 {
            let mut f = fail(
                rev,
                slot.writers[1],
                "duplicate revision",
                format!(
                    "#{} and #{} both report writing revision {rev}",
                    slot.writers[0], slot.writers[1]
                ),
            );
            f.related.push(slot.writers[0]);
            return Err(f);
        }
        let mut chosen_revoke = None;
        match writer {
            None => {}
            Some(Writer::External) => {
                self.state.revision = rev;
                self.writes.push((rev, None, Vec::new()));
            }
            Some(Writer::Op(w)) => {
                let at = self.place(rev, w, self.point, self.pusher)?;
                let changes = self.apply_write(rev, w)?;
                self.state.revision = rev;
                self.writes.push((rev, Some(w), changes));
                if matches!(self.p.ops[w].outcome, Outcome::Unknown(_)) {
                    self.used[w] = true;
                    self.used_log.push(w);
                    // A multiset hash of the requests: uncertain writes with equal requests
                    // are interchangeable (see `candidates`), so the cache treats them alike.
                    self.used_hash = self.used_hash.wrapping_add(mix(self.p.request_ids[w]));
                } else if matches!(self.p.ops[w].request, Request::LeaseRevoke { .. }) {
                    chosen_revoke = Some(w);
                }
                self.advance(at, w);
            }
        }
        let (floor, floor_by) = (self.point, self.pusher);
        let mut latest = (self.point, self.pusher);
        let mut lease_points: HashMap<i64, (u64, Option<usize>)> = HashMap::new();
        let mut compact_point = (floor, floor_by);
        let revokes = slot.revokes.iter().filter(|&&r| Some(r) != chosen_revoke);
        // Grants first, then reads, then revokes, then compactions (see `Slot::items`).
        let (grants_reads, compacts): (Vec<usize>, Vec<usize>) = slot
            .items
            .iter()
            .partition(|&&i| !matches!(self.p.ops[i].request, Request::Compact { .. }));
        for &i in grants_reads.iter().chain(revokes).chain(&compacts) {
            let req = &self.p.ops[i].request;
            // Compactions form one chain (ordered by compact revision), and a lease's grant
            // comes before its revoke; everything else only follows the slot's write.
            let (f, by) = match req {
                Request::Compact { .. } => compact_point,
                Request::LeaseRevoke { id } => *lease_points.get(id).unwrap_or(&(floor, floor_by)),
                _ => (floor, floor_by),
            };
            let at = self.place(rev, i, f, by)?;
            self.apply_read(rev, i)?;
            let by_here = if at == self.p.ops[i].call {
                Some(i)
            } else {
                by
            };
            match req {
                Request::Compact { .. } => compact_point = (at, by_here),
                Request::LeaseGrant { .. } => {
                    if let Some(Response::LeaseGrant { id, .. }) = ok_response(self.p, i) {
                        lease_points.insert(*id, (at, by_here));
                    }
                }
                _ => {}
            }
            if at > latest.0 {
                latest = (at, Some(i));
            }
        }
        if latest.0 > self.point {
            self.point = latest.0;
            self.pusher = latest.1;
        }
        Ok(())
    }

    fn apply_write(&mut self, rev: i64, w: usize) -> Result<Vec<Change>, Failure> {
        let op = &self.p.ops[w];
        let resp = ok_response(self.p, w);
        let granted = &self.p.granted;
        match &op.request {
            Request::Put { key, value, lease } => {
                if *lease != 0 && !self.state.lease_exists(*lease, granted) {
                    return Err(fail(
                        rev,
                        w,
                        "lease",
                        format!("#{w} puts {key} with lease {lease}, which does not exist at revision {}", rev - 1),
                    ));
                }
                Ok(vec![self.state.put(key, value, *lease, rev)])
            }
            Request::Delete { key } => {
                if let Some(Response::Delete { deleted, .. }) = resp {
                    if *deleted != 1 {
                        return Err(fail(
                            rev,
                            w,
                            "delete count",
                            format!("#{w} deleted one key but reports deleted={deleted}"),
                        ));
                    }
                }
                match self.state.delete(key) {
                    Some(c) => Ok(vec![c]),
                    None => Err(fail(
                        rev,
                        w,
                        "delete of a missing key",
                        format!("#{w} reports deleting {key} at revision {rev}, but the model has no {key} at revision {}", rev - 1),
                    )),
                }
            }
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let run = self.state.txn(compares, success, failure);
                if let Some(Response::Txn {
                    succeeded, results, ..
                }) = resp
                {
                    check_txn(rev, w, *succeeded, results, &run.results, run.succeeded)?;
                }
                if run.changes.is_empty() {
                    return Err(fail(
                        rev,
                        w,
                        "txn",
                        format!("#{w} would not write at revision {rev}: its branch changes nothing in the model"),
                    ));
                }
                Ok(run.changes)
            }
            Request::LeaseRevoke { id } => {
                if !self.state.lease_exists(*id, granted) {
                    return Err(fail(
                        rev,
                        w,
                        "lease",
                        format!(
                            "#{w} revokes lease {id}, which does not exist at revision {}",
                            rev - 1
                        ),
                    ));
                }
                let keys = self.state.lease_keys(*id);
                if keys.is_empty() {
                    return Err(fail(rev, w, "lease", format!("#{w} revokes lease {id}, which has no keys: it cannot write revision {rev}")));
                }
                self.drop_lease(*id);
                Ok(keys.iter().filter_map(|k| self.state.delete(k)).collect())
            }
            _ => Err(fail(rev, w, "not a write", format!("#{w} cannot write"))),
        }
    }

    fn drop_lease(&mut self, id: i64) {
        if self.p.granted.contains(&id) {
            self.state.live_leases.remove(&id);
        } else {
            self.state.dead_foreign_leases.insert(id);
        }
    }

    fn apply_read(&mut self, rev: i64, i: usize) -> Result<(), Failure> {
        let op = &self.p.ops[i];
        let Some(resp) = ok_response(self.p, i) else {
            return Ok(());
        };
        match (&op.request, resp) {
            (Request::Range { key, end }, Response::Range { kvs, .. }) => {
                let want = self.state.range(key, end.as_deref());
                if &want != kvs {
                    let what = match end {
                        Some(e) => format!("[{key}, {e})"),
                        None => key.clone(),
                    };
                    let mut f = fail(
                        rev,
                        i,
                        stale_or_wrong(self.p, kvs, &want),
                        format!(
                            "#{i} read {what} at revision {rev}: the model has {}, the answer was {}",
                            ShowKvs(&want),
                            ShowKvs(kvs)
                        ),
                    );
                    f.related = writers_of(self.p, kvs.iter().chain(&want));
                    return Err(f);
                }
            }
            (Request::Delete { key }, Response::Delete { .. }) => {
                if let Some(kv) = self.state.kvs.get(key) {
                    let want = [kv.to_key_value(key)];
                    let mut f = fail(
                        rev,
                        i,
                        "stale read",
                        format!(
                            "#{i} deleted nothing at revision {rev}, but the model has {}",
                            ShowKvs(&want)
                        ),
                    );
                    f.related = writers_of(self.p, want.iter());
                    return Err(f);
                }
            }
            (
                Request::Txn {
                    compares,
                    success,
                    failure,
                },
                Response::Txn {
                    succeeded, results, ..
                },
            ) => {
                let run = self.state.txn(compares, success, failure);
                check_txn(rev, i, *succeeded, results, &run.results, run.succeeded)?;
                if !run.changes.is_empty() {
                    return Err(fail(
                        rev,
                        i,
                        "txn",
                        format!("#{i} reports no write (header revision {rev}), but in the model its branch writes"),
                    ));
                }
            }
            (Request::LeaseGrant { .. }, Response::LeaseGrant { id, .. }) => {
                self.grant(rev, i, *id)?;
            }
            (Request::LeaseRevoke { id }, Response::LeaseRevoke { .. }) => {
                if !self.state.lease_exists(*id, &self.p.granted) {
                    return Err(fail(
                        rev,
                        i,
                        "lease",
                        format!(
                            "#{i} revoked lease {id} at revision {rev}, which does not exist then"
                        ),
                    ));
                }
                let keys = self.state.lease_keys(*id);
                if !keys.is_empty() {
                    return Err(fail(
                        rev,
                        i,
                        "lease",
                        format!("#{i} revoked lease {id} with header revision {rev}, but the lease has keys {keys:?} then, so the revoke must have written revision {}", rev + 1),
                    ));
                }
                self.drop_lease(*id);
            }
            (Request::Compact { revision }, Response::Compact { .. }) => {
                if *revision > rev {
                    return Err(fail(rev, i, "compact", format!("#{i} compacted to {revision} while the current revision was {rev} (future revision)")));
                }
                if *revision <= self.state.compact_revision {
                    return Err(fail(
                        rev,
                        i,
                        "compact",
                        format!("#{i} compacted to {revision}, but the store was already compacted to {}", self.state.compact_revision),
                    ));
                }
                self.state.compact_revision = *revision;
            }
            _ => {}
        }
        Ok(())
    }

    fn grant(&mut self, rev: i64, i: usize, id: i64) -> Result<(), Failure> {
        if self.state.live_leases.insert(id) {
            Ok(())
        } else {
            Err(fail(
                rev,
                i,
                "lease",
                format!("#{i} was granted lease {id}, which already exists"),
            ))
        }
    }

    /// What determines the rest of the search at a gap. The real-time point is left out on
    /// purpose: it only ever grows by the calls of answered operations (the same on every
    /// path) and of uncertain writes, and an uncertain write is only chosen for revision `g`
    /// when its call is at or before every return of an answered operation at `g` or later
    /// (`suffix_min_ret`), so its call can never make a later placement fail.
    fn memo_key(&self, rev: i64) -> (i64, u64, u64) {
        (rev, self.state.fingerprint(), self.used_hash)
    }
}

fn ok_response<'a>(p: &'a Prepared<'_>, i: usize) -> Option<&'a Response> {
    match &p.ops[i].outcome {
        Outcome::Ok(r) => Some(r),
        _ => None,
    }
}

/// The revision an answered operation sits at.
pub(crate) fn slot_of(p: &Prepared<'_>, i: usize) -> Option<i64> {
    ok_response(p, i).map(Response::revision)
}

fn writers_of<'a>(
    p: &Prepared<'_>,
    kvs: impl Iterator<Item = &'a crate::history::KeyValue>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for kv in kvs {
        if let Some(ws) = p.value_writers.get(kv.value.as_str()) {
            out.extend(ws.iter().copied());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn stale_or_wrong(
    p: &Prepared<'_>,
    got: &[crate::history::KeyValue],
    want: &[crate::history::KeyValue],
) -> &'static str {
    if got
        .iter()
        .any(|kv| !p.value_writers.contains_key(kv.value.as_str()))
    {
        "value never written"
    } else if got.iter().any(|g| {
        want.iter()
            .any(|w| w.key == g.key && w.mod_revision > g.mod_revision)
    }) {
        "stale read"
    } else {
        "wrong read"
    }
}

fn check_txn(
    rev: i64,
    i: usize,
    got_succeeded: bool,
    got: &[TxnOpResult],
    want: &[TxnOpResult],
    want_succeeded: bool,
) -> Result<(), Failure> {
    if got_succeeded != want_succeeded {
        return Err(fail(
            rev,
            i,
            "txn compare",
            format!(
                "#{i}: the model evaluates the compares to {want_succeeded} at revision {}, the answer says succeeded={got_succeeded}",
                rev - 1
            ),
        ));
    }
    if got != want {
        return Err(fail(
            rev,
            i,
            "txn results",
            format!("#{i}: the model's results are {want:?}, the answer's are {got:?}"),
        ));
    }
    Ok(())
}

/// Formats nanoseconds as seconds with microseconds.
pub(crate) fn ns(t: u64) -> String {
    if t == u64::MAX {
        return "never".to_string();
    }
    format!("{}.{:06}s", t / 1_000_000_000, (t % 1_000_000_000) / 1000)
}

/// Runs the search over `p` within `budget`.
pub(crate) fn search(p: &Prepared<'_>, mode: Mode, budget: Duration) -> SearchResult {
    let start = Instant::now();
    if let Some(f) = precheck(p, mode) {
        return SearchResult::Violation(f);
    }
    let mut e = Engine::new(p, mode);
    let mut frames: Vec<Frame> = Vec::new();
    let mut memo: HashSet<(i64, u64, u64)> = HashSet::new();
    let mut rev: i64 = 1;
    let mut forced: Option<Writer> = None;
    let mut steps: u64 = 0;
    loop {
        steps += 1;
        if steps.is_multiple_of(64) && start.elapsed() > budget {
            let deepest = e.best.as_ref().map_or(String::new(), |f| {
                format!(
                    "; deepest failure so far (maybe only a wrong guess): {} at revision {}: {}",
                    f.kind, f.revision, f.detail
                )
            });
            return SearchResult::OutOfBudget(format!(
                "search budget of {budget:?} spent at revision {rev} of {} ({} choice points, {} backtracks){deepest}",
                p.final_revision, e.choice_points, e.backtracks
            ));
        }
        if rev > p.final_revision {
            return SearchResult::Linearizable(Resolved {
                final_revision: p.final_revision,
                applied_uncertain: e.used_log.len(),
                writes: e.writes,
                choice_points: e.choice_points,
                backtracks: e.backtracks,
            });
        }
        let outcome: Result<(), Option<Failure>> = if rev == 1 {
            let slot = &p.slots[1];
            match slot.writers.first() {
                Some(&w) => Err(Some(fail(
                    1,
                    w,
                    "revision",
                    format!("#{w} reports writing revision 1, but an empty store is at revision 1 and the first write makes 2"),
                ))),
                None => e.run_slot(1, None).map_err(Some),
            }
        } else {
            let writer = match forced.take() {
                Some(w) => Ok(w),
                None => match e.fixed_writer(rev) {
                    Some(w) => Ok(w),
                    None => {
                        let key = e.memo_key(rev);
                        if memo.contains(&key) {
                            // Explored before from this very configuration: fails again.
                            Err(None)
                        } else {
                            let cands = e.candidates(rev);
                            match cands.first() {
                                None => Err(Some(gap_failure(p, rev))),
                                Some(&first) => {
                                    e.choice_points += 1;
                                    if cands.len() > 1 {
                                        frames.push(Frame {
                                            revision: rev,
                                            candidates: cands,
                                            next: 1,
                                            snapshot: e.snapshot(),
                                            key,
                                        });
                                    }
                                    Ok(first)
                                }
                            }
                        }
                    }
                },
            };
            writer.and_then(|w| e.run_slot(rev, Some(w)).map_err(Some))
        };
        match outcome {
            Ok(()) => rev += 1,
            Err(f) => {
                if let Some(f) = f {
                    e.note(f);
                }
                loop {
                    let Some(frame) = frames.last_mut() else {
                        let best = e.best.take().unwrap_or_else(|| gap_failure(p, rev));
                        return SearchResult::Violation(best);
                    };
                    if frame.next < frame.candidates.len() {
                        let w = frame.candidates[frame.next];
                        frame.next += 1;
                        let snap = frame.snapshot.clone();
                        rev = frame.revision;
                        e.restore(&snap);
                        e.backtracks += 1;
                        forced = Some(w);
                        break;
                    }
                    memo.insert(frame.key);
                    frames.pop();
                }
            }
        }
    }
}

fn gap_failure(p: &Prepared<'_>, rev: i64) -> Failure {
    let neighbour = |r: i64| {
        p.slots
            .get(r as usize)
            .and_then(|s| s.writers.first().copied())
    };
    let related: Vec<usize> = [neighbour(rev - 1), neighbour(rev + 1)]
        .into_iter()
        .flatten()
        .collect();
    Failure {
        revision: rev,
        op: None,
        related,
        kind: "revision without a write",
        detail: format!(
            "revision {rev} was reported (the highest header revision is {}) but no operation of the history can have written it: no answered write reports it and no unanswered write fits",
            p.final_revision
        ),
    }
}

/// Violations found without searching: two writes reporting one revision, and (for a whole
/// history) more unclaimed revisions up to some point than unanswered writes sent early
/// enough to fill them. The second is Hall's condition for the matching of unclaimed
/// revisions to uncertain writes: an uncertain write can fill revision `g` only if it was
/// called before every answered operation at `g` or later returned, and these sets grow
/// with `g`, so the matching exists only if the k-th unclaimed revision has at least `k`
/// candidates (revokes answered at that revision count too).
fn precheck(p: &Prepared<'_>, mode: Mode) -> Option<Failure> {
    for (rev, slot) in p.slots.iter().enumerate() {
        if let [a, b, ..] = slot.writers[..] {
            return Some(Failure {
                revision: rev as i64,
                op: Some(b),
                related: vec![a],
                kind: "duplicate revision",
                detail: format!("#{a} and #{b} both report writing revision {rev}"),
            });
        }
    }
    if let Some(f) = precheck_values(p) {
        return Some(f);
    }
    if mode == Mode::Projection {
        return None;
    }
    let mut calls: Vec<u64> = p
        .uncertain
        .iter()
        .filter(|u| !p.pin_of.contains_key(u))
        .map(|&u| p.ops[u].call)
        .collect();
    calls.sort_unstable();
    let mut gaps = 0usize;
    let mut revokes = 0usize;
    for rev in 2..=p.final_revision {
        let slot = &p.slots[rev as usize];
        revokes += slot.revokes.len();
        if !slot.writers.is_empty() || p.pinned_at.contains_key(&rev) {
            continue;
        }
        gaps += 1;
        let limit = p.suffix_min_ret[rev as usize];
        let eligible = calls.partition_point(|&c| c <= limit) + revokes;
        if eligible < gaps {
            let mut f = gap_failure(p, rev);
            f.detail = format!(
                "{gaps} revisions up to {rev} were written by no answered operation, but only {eligible} unanswered writes (or revokes) were sent early enough to have written them (revision {rev} must precede an answer returned at {})",
                ns(limit)
            );
            return Some(f);
        }
    }
    None
}

/// Values read that no write can explain, whatever the order: a value nobody wrote (or only
/// a failed request, or the branch of an answered txn not taken), a value whose answered
/// write reports another revision than the read shows, or a version newer than the read's
/// own header revision. These fail the same way in every linearization, so they are reported
/// before any search (and without the backtracking it would spend on them).
fn precheck_values(p: &Prepared<'_>) -> Option<Failure> {
    for (i, op) in p.ops.iter().enumerate() {
        let Outcome::Ok(resp) = &op.outcome else {
            continue;
        };
        let header = resp.revision();
        for kv in super::prepare::observed(resp) {
            let at = format!(
                "#{i} read {}={} (mod_revision {})",
                kv.key, kv.value, kv.mod_revision
            );
            if kv.mod_revision > header {
                return Some(fail(
                    header,
                    i,
                    "future version",
                    format!("{at} with header revision {header}"),
                ));
            }
            let writers: Vec<usize> = p
                .value_writers
                .get(kv.value.as_str())
                .map(|w| {
                    w.iter()
                        .copied()
                        .filter(|&w| writes_value(p, w, &kv.key, &kv.value) != Some(false))
                        .collect()
                })
                .unwrap_or_default();
            match writers[..] {
                [] => {
                    return Some(fail(
                        kv.mod_revision.min(header),
                        i,
                        "value never written",
                        format!(
                            "{at}, but no request that can have taken effect wrote {}={}",
                            kv.key, kv.value
                        ),
                    ))
                }
                [w] => {
                    if let Some(r) = crate::linearizability::reported_write(&p.ops[w]) {
                        if r != kv.mod_revision {
                            let mut f = fail(
                                kv.mod_revision.min(header),
                                i,
                                "wrong revision",
                                format!("{at}, but #{w} wrote it at revision {r}"),
                            );
                            f.related.push(w);
                            return Some(f);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// Whether op `w` wrote `key=value`: `Some(false)` when it certainly did not (failed, or an
/// answered txn that took the other branch), `None` when it may have.
fn writes_value(p: &Prepared<'_>, w: usize, key: &str, value: &str) -> Option<bool> {
    let op = &p.ops[w];
    match (&op.request, &op.outcome) {
        (_, Outcome::Failed(_)) => Some(false),
        (
            Request::Txn {
                success, failure, ..
            },
            Outcome::Ok(Response::Txn { succeeded, .. }),
        ) => {
            let branch = if *succeeded { success } else { failure };
            Some(branch.iter().any(|o| {
                matches!(o, crate::history::TxnOp::Put { key: k, value: v } if k == key && v == value)
            }))
        }
        (
            Request::Put {
                key: k, value: v, ..
            },
            Outcome::Ok(_),
        ) => Some(k == key && v == value),
        _ => None,
    }
}
