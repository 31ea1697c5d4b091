//! Settles uncertain writes from the watch events, before the checks (as etcd's robustness
//! suite patches its history). A write with no answer may have happened at any later revision
//! or never; reads alone often cannot tell (nobody read the key in between, or its value could
//! not be opened), and then the search's guess can put another uncertain write in its place,
//! which the watch check would hold against a correct server.
//!
//! A revision that no answered write claims, where the watchers saw events, was written by an
//! uncertain write. When exactly one uncertain write can explain those events (values are
//! unique, so a put names its request; a delete must be the only uncertain write that could
//! delete that key then), it is recorded as having happened there. Nothing else changes: the
//! search still places every other uncertain write, and every read is still checked.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{EventKind, History, Outcome, Request, Response, TxnOp, TxnOpResult};

/// One change: `(kind, key, value)` (kind 0 put, 1 delete; value empty for deletes).
type Change = (u8, String, String);
/// The changes watchers saw at one revision.
type Seen = BTreeSet<Change>;

fn kind_code(k: EventKind) -> u8 {
    match k {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    }
}

/// What an uncertain write would have written if it took effect (its success branch for a
/// txn), or `None` when that is not fully known (txn gets, lease revokes).
fn effects(req: &Request) -> Option<Vec<Change>> {
    match req {
        Request::Put { key, value, .. } => Some(vec![(0, key.clone(), value.clone())]),
        Request::Delete { key } => Some(vec![(1, key.clone(), String::new())]),
        Request::Txn { success, .. } => success
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => Some((0, key.clone(), value.clone())),
                TxnOp::Delete { key } => Some((1, key.clone(), String::new())),
                TxnOp::Get { .. } => None,
            })
            .collect(),
        _ => None,
    }
}

/// The answer the write would have had at `revision`, given what was seen there.
fn response(req: &Request, revision: i64, seen: &Seen) -> Option<Response> {
    let deleted = |key: &str| i64::from(seen.contains(&(1, key.to_string(), String::new())));
    match req {
        Request::Put { .. } => Some(Response::Put { revision }),
        Request::Delete { key } => Some(Response::Delete {
            revision,
            deleted: deleted(key),
        }),
        Request::Txn { success, .. } => {
            let results = success
                .iter()
                .map(|op| match op {
                    TxnOp::Put { .. } => Some(TxnOpResult::Put),
                    TxnOp::Delete { key } => Some(TxnOpResult::Delete {
                        deleted: deleted(key),
                    }),
                    TxnOp::Get { .. } => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Response::Txn {
                revision,
                succeeded: true,
                results,
            })
        }
        _ => None,
    }
}

/// Whether an answered operation's request wrote a revision (its header revision is then taken).
fn claims(req: &Request, resp: &Response) -> bool {
    match (req, resp) {
        (Request::Put { .. }, _) | (Request::LeaseRevoke { .. }, _) => true,
        (_, Response::Delete { deleted, .. }) => *deleted > 0,
        (_, Response::Txn { results, .. }) => results.iter().any(|r| match r {
            TxnOpResult::Put => true,
            TxnOpResult::Delete { deleted } => *deleted > 0,
            TxnOpResult::Get { .. } => false,
        }),
        _ => false,
    }
}

/// `h` with the uncertain writes the watch events settle recorded as answered.
pub fn settle(h: &History) -> History {
    let mut seen: BTreeMap<i64, Seen> = BTreeMap::new();
    for w in &h.watches {
        for e in &w.events {
            let value = match e.kind {
                EventKind::Put => e.kv.value.clone(),
                EventKind::Delete => String::new(),
            };
            seen.entry(e.kv.mod_revision).or_default().insert((
                kind_code(e.kind),
                e.kv.key.clone(),
                value,
            ));
        }
    }
    let mut claimed = BTreeSet::new();
    // (return time, header revision) of every answer: a write sent after an answer at revision
    // R can only take effect above R.
    let mut answered: Vec<(u64, i64)> = Vec::new();
    for op in &h.operations {
        if let Outcome::Ok(resp) = &op.outcome {
            if claims(&op.request, resp) {
                claimed.insert(resp.revision());
            }
            if let Some(ret) = op.ret {
                answered.push((ret, resp.revision()));
            }
        }
    }
    answered.sort_unstable();
    let mut floor_at = Vec::with_capacity(answered.len());
    let mut max = 0;
    for (ret, rev) in &answered {
        max = max.max(*rev);
        floor_at.push((*ret, max));
    }
    let floor = |call: u64| -> i64 {
        let i = floor_at.partition_point(|(ret, _)| *ret < call);
        if i == 0 {
            0
        } else {
            floor_at[i - 1].1
        }
    };

    let uncertain: Vec<(usize, Vec<Change>, i64)> = h
        .operations
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op.outcome, Outcome::Unknown(_)))
        .filter_map(|(i, op)| Some((i, effects(&op.request)?, floor(op.call))))
        .collect();
    let mut out = h.clone();
    let mut settled = BTreeSet::new();
    for (&rev, events) in &seen {
        if claimed.contains(&rev) {
            continue;
        }
        // Uncertain writes whose effects cover what was seen at `rev` and that were sent
        // before `rev` could be written.
        let fits: Vec<usize> = uncertain
            .iter()
            .filter(|(i, eff, floor)| {
                !settled.contains(i)
                    && *floor < rev
                    && events.iter().all(|e| eff.contains(e))
                    && eff.iter().any(|e| events.contains(e))
            })
            .map(|(i, _, _)| *i)
            .collect();
        let [i] = fits[..] else { continue };
        let Some(resp) = response(&h.operations[i].request, rev, events) else {
            continue;
        };
        out.operations[i].outcome = Outcome::Ok(resp);
        settled.insert(i);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::history::{KeyValue, Operation, WatchEvent, WatchRecord};

    fn op(call: u64, ret: Option<u64>, request: Request, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            call,
            ret,
            request,
            outcome,
        }
    }

    fn delete_event(key: &str, rev: i64) -> WatchEvent {
        WatchEvent {
            response_revision: rev,
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.into(),
                value: String::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    /// Two uncertain writes of one key, the watch showing which one happened: the delete is
    /// settled at its revision, the txn's put (never seen) stays uncertain.
    #[test]
    fn a_delete_seen_by_a_watcher_is_settled_and_the_other_write_is_not() {
        let unknown = || Outcome::Unknown("no answer within 2s".into());
        let h = History {
            operations: vec![
                op(
                    0,
                    Some(5),
                    Request::Put {
                        key: "k".into(),
                        value: "a".into(),
                        lease: 0,
                    },
                    Outcome::Ok(Response::Put { revision: 2 }),
                ),
                op(10, None, Request::Delete { key: "k".into() }, unknown()),
                op(
                    11,
                    None,
                    Request::Txn {
                        compares: vec![],
                        success: vec![TxnOp::Put {
                            key: "k".into(),
                            value: "b".into(),
                        }],
                        failure: vec![],
                    },
                    unknown(),
                ),
            ],
            watches: vec![WatchRecord {
                client: 100,
                key: "k".into(),
                range_end: None,
                start_revision: 1,
                created_revision: 1,
                prev_kv: false,
                events: vec![delete_event("k", 3)],
                progress: vec![],
                cancel: None,
                broken: false,
            }],
            sealed_prev_kv: vec![],
        };
        let s = settle(&h);
        assert_eq!(
            s.operations[1].outcome,
            Outcome::Ok(Response::Delete {
                revision: 3,
                deleted: 1
            })
        );
        assert_eq!(s.operations[2].outcome, h.operations[2].outcome);
        // An answered write at that revision leaves everything as it was.
        let mut claimed = h.clone();
        claimed.operations[0].outcome = Outcome::Ok(Response::Put { revision: 3 });
        assert_eq!(settle(&claimed).operations, claimed.operations);
        // Two uncertain deletes of the key: ambiguous, nothing is settled.
        let mut two = h.clone();
        two.operations[2].request = Request::Delete { key: "k".into() };
        assert_eq!(settle(&two).operations, two.operations);
    }
}
