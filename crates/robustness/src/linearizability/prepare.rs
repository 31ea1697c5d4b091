//! Sorts a history's operations for the search: each answered operation goes to the revision
//! its header names (as the writer of that revision, or as a non-writing operation at it),
//! operations with no answer become candidates to fill revisions nobody claims, and a value
//! seen by a read pins the uncertain write that wrote it to the revision the read showed.

use std::collections::{HashMap, HashSet};

use crate::history::{History, Operation, Outcome, Request, Response, TxnOp, TxnOpResult};

/// The operations that sit at one revision.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slot {
    /// Answered operations that report having written this revision.
    pub writers: Vec<usize>,
    /// Answered operations that did not write and ran while this was the current revision:
    /// lease grants first, then reads, then compactions in increasing compact revision.
    pub items: Vec<usize>,
    /// Answered lease revokes with this header revision: each either wrote this revision (the
    /// lease had keys) or did not (then it sits here like a read).
    pub revokes: Vec<usize>,
}

/// The history, sorted for the search.
#[derive(Debug)]
pub(crate) struct Prepared<'h> {
    pub ops: &'h [Operation],
    /// Indexed by revision, `0..=final_revision`.
    pub slots: Vec<Slot>,
    /// The highest header revision any answered operation reported.
    pub final_revision: i64,
    /// Unanswered operations that may have written, latest call first.
    pub uncertain: Vec<usize>,
    /// Uncertain operation pinned to a revision because a read saw its value there.
    pub pinned_at: HashMap<i64, usize>,
    pub pin_of: HashMap<usize, i64>,
    /// Uncertain puts a watcher saw at a revision (a hint for the search, not a constraint).
    pub hint_put: HashMap<i64, Vec<usize>>,
    /// Keys a watcher saw deleted at a revision (a hint).
    pub hint_delete: HashMap<i64, Vec<String>>,
    /// Leases an answered grant returned.
    pub granted: HashSet<i64>,
    /// For each revision, the smallest return time of an answered operation at this
    /// revision or later (`u64::MAX` if none): an uncertain write called after it cannot have
    /// produced this revision.
    pub suffix_min_ret: Vec<u64>,
    /// Which ops wrote each value (values are unique per write by the generator's contract).
    pub value_writers: HashMap<&'h str, Vec<usize>>,
    /// For each operation, the index of the first operation with an equal request.
    pub request_ids: Vec<usize>,
    /// Answered operations taken into account.
    pub answered: usize,
    /// Distinct keys the history touches.
    pub keys: usize,
}

/// An operation whose answer does not fit its request, or similar input the checker cannot
/// judge.
#[derive(Debug)]
pub(crate) struct Malformed(pub String);

/// Whether answered op `op` (with response `resp`) reports a write at its header revision.
/// Lease revokes are decided by the search.
pub(crate) fn reports_write(req: &Request, resp: &Response) -> bool {
    match (req, resp) {
        (Request::Put { .. }, Response::Put { .. }) => true,
        (Request::Delete { .. }, Response::Delete { deleted, .. }) => *deleted > 0,
        (
            Request::Txn {
                success, failure, ..
            },
            Response::Txn {
                succeeded, results, ..
            },
        ) => {
            let branch = if *succeeded { success } else { failure };
            branch.iter().any(|op| matches!(op, TxnOp::Put { .. }))
                || results
                    .iter()
                    .any(|r| matches!(r, TxnOpResult::Delete { deleted } if *deleted > 0))
        }
        _ => false,
    }
}

fn kinds_match(req: &Request, resp: &Response) -> bool {
    matches!(
        (req, resp),
        (Request::Put { .. }, Response::Put { .. })
            | (Request::Range { .. }, Response::Range { .. })
            | (Request::Delete { .. }, Response::Delete { .. })
            | (Request::Txn { .. }, Response::Txn { .. })
            | (Request::LeaseGrant { .. }, Response::LeaseGrant { .. })
            | (Request::LeaseRevoke { .. }, Response::LeaseRevoke { .. })
            | (Request::Compact { .. }, Response::Compact { .. })
    )
}

/// Keys a request names.
pub(crate) fn request_keys(req: &Request) -> Vec<&str> {
    match req {
        Request::Put { key, .. } | Request::Delete { key } => vec![key.as_str()],
        Request::Range { key, .. } => vec![key.as_str()],
        Request::Txn {
            compares,
            success,
            failure,
        } => {
            let mut keys: Vec<&str> = compares
                .iter()
                .map(|c| match c {
                    crate::history::Compare::ModRevisionEquals { key, .. }
                    | crate::history::Compare::ValueEquals { key, .. } => key.as_str(),
                })
                .chain(success.iter().chain(failure).map(|op| match op {
                    TxnOp::Put { key, .. } | TxnOp::Get { key } | TxnOp::Delete { key } => {
                        key.as_str()
                    }
                }))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        }
        Request::LeaseGrant { .. } | Request::LeaseRevoke { .. } | Request::Compact { .. } => {
            Vec::new()
        }
    }
}

/// Values a request writes, with their keys.
pub(crate) fn written_values(req: &Request) -> Vec<(&str, &str)> {
    match req {
        Request::Put { key, value, .. } => vec![(key.as_str(), value.as_str())],
        Request::Txn {
            success, failure, ..
        } => success
            .iter()
            .chain(failure)
            .filter_map(|op| match op {
                TxnOp::Put { key, value } => Some((key.as_str(), value.as_str())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Key-values an answer shows.
pub(crate) fn observed(resp: &Response) -> Vec<&crate::history::KeyValue> {
    match resp {
        Response::Range { kvs, .. } => kvs.iter().collect(),
        Response::Txn { results, .. } => results
            .iter()
            .flat_map(|r| match r {
                TxnOpResult::Get { kvs } => kvs.iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn sort_rank(req: &Request) -> (u8, i64) {
    match req {
        Request::LeaseGrant { .. } => (0, 0),
        Request::Compact { revision } => (2, *revision),
        _ => (1, 0),
    }
}

/// Sorts `h` for the search.
pub(crate) fn prepare(h: &History) -> Result<Prepared<'_>, Malformed> {
    let ops = &h.operations[..];
    let mut final_revision = 1;
    let mut keys: HashSet<&str> = HashSet::new();
    let mut value_writers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(ret) = op.ret {
            if ret < op.call {
                return Err(Malformed(format!(
                    "operation #{i} returned at {ret} before its call at {}",
                    op.call
                )));
            }
        }
        keys.extend(request_keys(&op.request));
        for (_, v) in written_values(&op.request) {
            value_writers.entry(v).or_default().push(i);
        }
        if let Outcome::Ok(resp) = &op.outcome {
            if !kinds_match(&op.request, resp) {
                return Err(Malformed(format!(
                    "operation #{i}: the answer {resp:?} does not fit the request {:?}",
                    op.request
                )));
            }
            final_revision = final_revision.max(resp.revision());
        }
    }
    let size = usize::try_from(final_revision).unwrap_or(0) + 1;
    let mut slots = vec![Slot::default(); size];
    let mut uncertain = Vec::new();
    let mut granted = HashSet::new();
    let mut answered = 0;
    for (i, op) in ops.iter().enumerate() {
        match &op.outcome {
            Outcome::Failed(_) => {}
            Outcome::Unknown(_) => {
                if matches!(
                    op.request,
                    Request::Put { .. }
                        | Request::Delete { .. }
                        | Request::Txn { .. }
                        | Request::LeaseRevoke { .. }
                ) {
                    uncertain.push(i);
                }
            }
            Outcome::Ok(resp) => {
                answered += 1;
                let rev = resp.revision();
                if rev < 1 {
                    return Err(Malformed(format!(
                        "operation #{i} reports header revision {rev} (revisions start at 1)"
                    )));
                }
                // rev <= final_revision by construction.
                let slot = &mut slots[rev as usize];
                if let Response::LeaseGrant { id, .. } = resp {
                    granted.insert(*id);
                }
                if matches!(resp, Response::LeaseRevoke { .. }) {
                    slot.revokes.push(i);
                } else if reports_write(&op.request, resp) {
                    slot.writers.push(i);
                } else {
                    slot.items.push(i);
                }
            }
        }
    }
    for slot in &mut slots {
        slot.items.sort_by_key(|&i| sort_rank(&ops[i].request));
    }
    uncertain.sort_by_key(|&i| std::cmp::Reverse(ops[i].call));

    // Pins: a read that shows value v with mod_revision r says the write of v made revision r.
    let mut pinned_at = HashMap::new();
    let mut pin_of = HashMap::new();
    let is_uncertain = |i: usize| matches!(ops[i].outcome, Outcome::Unknown(_));
    for op in ops {
        let Outcome::Ok(resp) = &op.outcome else {
            continue;
        };
        for kv in observed(resp) {
            let Some(writers) = value_writers.get(kv.value.as_str()) else {
                continue;
            };
            let &[w] = &writers[..] else { continue };
            let r = kv.mod_revision;
            if !is_uncertain(w) || r < 2 || r > final_revision || pin_of.contains_key(&w) {
                continue;
            }
            let slot = &slots[r as usize];
            if slot.writers.is_empty() && !pinned_at.contains_key(&r) {
                pinned_at.insert(r, w);
                pin_of.insert(w, r);
            }
        }
    }
    // Hints from watchers.
    let mut hint_put: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut hint_delete: HashMap<i64, Vec<String>> = HashMap::new();
    for w in &h.watches {
        for ev in &w.events {
            let r = ev.kv.mod_revision;
            match ev.kind {
                crate::history::EventKind::Put => {
                    if let Some(&[u]) = value_writers.get(ev.kv.value.as_str()).map(|v| &v[..]) {
                        if is_uncertain(u) {
                            let e = hint_put.entry(r).or_default();
                            if !e.contains(&u) {
                                e.push(u);
                            }
                        }
                    }
                }
                crate::history::EventKind::Delete => {
                    let e = hint_delete.entry(r).or_default();
                    if !e.contains(&ev.kv.key) {
                        e.push(ev.kv.key.clone());
                    }
                }
            }
        }
    }

    let mut suffix_min_ret = vec![u64::MAX; size + 1];
    for r in (0..size).rev() {
        let slot = &slots[r];
        let here = slot
            .writers
            .iter()
            .chain(&slot.items)
            .chain(&slot.revokes)
            .map(|&i| ops[i].ret.unwrap_or(u64::MAX))
            .min()
            .unwrap_or(u64::MAX);
        suffix_min_ret[r] = here.min(suffix_min_ret[r + 1]);
    }

    // `Request` has no `Hash`; its debug form is a faithful key, and only uncertain
    // operations need one.
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut request_ids: Vec<usize> = (0..ops.len()).collect();
    for &u in &uncertain {
        request_ids[u] = *first_of.entry(format!("{:?}", ops[u].request)).or_insert(u);
    }

    Ok(Prepared {
        request_ids,
        ops,
        slots,
        final_revision,
        uncertain,
        pinned_at,
        pin_of,
        hint_put,
        hint_delete,
        granted,
        suffix_min_ret,
        value_writers,
        answered,
        keys: keys.len(),
    })
}
