//! Explains a violation: shrinks the history to a short sub-history that still fails at the
//! same operation for the same reason (checked as a projection, see
//! [`super::check_projection`]), and prints it for a human.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::prepare::{self, Prepared};
use super::search::{self, ns, Failure, Mode, SearchResult};
use crate::history::{History, Operation, Outcome, Request, Response, TxnOp};

/// The report text and the minimal history for `failure`, found within `min(budget, 10 s)`.
pub(crate) fn explain(
    h: &History,
    p: &Prepared<'_>,
    failure: &Failure,
    budget: Duration,
) -> (String, History) {
    let deadline = Instant::now() + budget.min(Duration::from_secs(10));
    let (kept, last, reproduced) = match failure.op {
        Some(target) => shrink(h, p, failure, target, deadline),
        None => {
            let mut kept: Vec<usize> = failure.related.clone();
            kept.sort_by_key(|&i| (h.operations[i].call, i));
            (kept, failure.clone(), false)
        }
    };
    let minimal = History {
        operations: kept.iter().map(|&i| h.operations[i].clone()).collect(),
        watches: Vec::new(),
        sealed_prev_kv: Vec::new(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "not linearizable: {} at revision {}\n  {}",
        failure.kind, failure.revision, failure.detail
    );
    if reproduced {
        let _ = writeln!(
            out,
            "shortest failing sub-history found: {} of {} operations, in real-time order \
             (#n = index in the full history; @R = header revision of the answer; revisions \
             written by operations left out are taken to be writes to other keys):",
            kept.len(),
            h.operations.len()
        );
    } else {
        let _ = writeln!(
            out,
            "operations involved ({} of {}), in real-time order (#n = index in the full \
             history; @R = header revision of the answer):",
            kept.len(),
            h.operations.len()
        );
    }
    for &i in &kept {
        let marker = if Some(i) == last.op { "=>" } else { "  " };
        let _ = writeln!(out, "{marker} {}", show_op(i, &h.operations[i]));
    }
    if reproduced && last.detail != failure.detail {
        let _ = writeln!(out, "in this sub-history: {}: {}", last.kind, last.detail);
    }
    (out, minimal)
}

/// One operation on one line.
fn show_op(i: usize, op: &Operation) -> String {
    let at = match &op.outcome {
        Outcome::Ok(r) => format!("@{}", r.revision()),
        _ => "@?".to_string(),
    };
    format!(
        "#{i:<6} client {:<3} call {} ret {} {at:<6} {}  ->  {}",
        op.client,
        ns(op.call),
        op.ret.map_or("none".to_string(), ns),
        show_request(&op.request),
        show_outcome(&op.outcome)
    )
}

fn show_txn_ops(ops: &[TxnOp]) -> String {
    ops.iter()
        .map(|op| match op {
            TxnOp::Put { key, value } => format!("put {key}={value}"),
            TxnOp::Get { key } => format!("get {key}"),
            TxnOp::Delete { key } => format!("del {key}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_request(r: &Request) -> String {
    match r {
        Request::Put { key, value, lease } if *lease != 0 => {
            format!("Put {key}={value} lease {lease}")
        }
        Request::Put { key, value, .. } => format!("Put {key}={value}"),
        Request::Range { key, end: None } => format!("Get {key}"),
        Request::Range {
            key,
            end: Some(end),
        } => format!("Range [{key}, {end})"),
        Request::Delete { key } => format!("Delete {key}"),
        Request::Txn {
            compares,
            success,
            failure,
        } => {
            let cmp: Vec<String> = compares
                .iter()
                .map(|c| match c {
                    crate::history::Compare::ModRevisionEquals { key, revision } => {
                        format!("mod({key})=={revision}")
                    }
                    crate::history::Compare::ValueEquals { key, value } => {
                        format!("value({key})=={value}")
                    }
                })
                .collect();
            format!(
                "Txn if {} then [{}] else [{}]",
                cmp.join(" && "),
                show_txn_ops(success),
                show_txn_ops(failure)
            )
        }
        Request::LeaseGrant { ttl } => format!("LeaseGrant ttl {ttl}"),
        Request::LeaseRevoke { id } => format!("LeaseRevoke {id}"),
        Request::Compact { revision } => format!("Compact {revision}"),
    }
}

fn show_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Failed(e) => format!("failed: {e}"),
        Outcome::Unknown(e) => format!("unknown: {e}"),
        Outcome::Ok(r) => match r {
            Response::Put { revision } => format!("ok rev {revision}"),
            Response::Range { kvs, .. } => {
                format!("ok {}", super::model::ShowKvs(kvs))
            }
            Response::Delete { deleted, .. } => format!("ok deleted {deleted}"),
            Response::Txn {
                succeeded, results, ..
            } => format!("ok succeeded={succeeded} {results:?}"),
            Response::LeaseGrant { id, .. } => format!("ok lease {id}"),
            Response::LeaseRevoke { .. } | Response::Compact { .. } => "ok".to_string(),
        },
    }
}

/// Checks the sub-history `ops` (indices into `h`) as a projection; returns the failure
/// with indices mapped back to `h`.
fn check_sub(h: &History, ops: &[usize], deadline: Instant) -> Option<Failure> {
    let sub = History {
        operations: ops.iter().map(|&i| h.operations[i].clone()).collect(),
        watches: Vec::new(),
        sealed_prev_kv: Vec::new(),
    };
    let p = prepare::prepare(&sub).ok()?;
    let left = deadline.saturating_duration_since(Instant::now());
    match search::search(&p, Mode::Projection, left) {
        SearchResult::Violation(mut f) => {
            f.op = f.op.map(|i| ops[i]);
            f.related = f.related.iter().map(|&i| ops[i]).collect();
            Some(f)
        }
        _ => None,
    }
}

fn shrink(
    h: &History,
    p: &Prepared<'_>,
    failure: &Failure,
    target: usize,
    deadline: Instant,
) -> (Vec<usize>, Failure, bool) {
    let ops = &h.operations;
    let same = |f: &Option<Failure>| {
        f.as_ref()
            .is_some_and(|f| f.op == Some(target) && f.kind == failure.kind)
    };
    let mut essential: BTreeSet<usize> = failure.related.iter().copied().collect();
    essential.insert(target);
    // Keys and leases the failure involves.
    let mut keys: HashSet<&str> = HashSet::new();
    let mut leases: HashSet<i64> = HashSet::new();
    let mut ranges: Vec<(&str, &str)> = Vec::new();
    for &i in &essential {
        keys.extend(prepare::request_keys(&ops[i].request));
        match &ops[i].request {
            Request::Range {
                key,
                end: Some(end),
            } => ranges.push((key, end)),
            Request::Put { lease, .. } | Request::LeaseRevoke { id: lease } if *lease != 0 => {
                leases.insert(*lease);
            }
            _ => {}
        }
        if let Outcome::Ok(Response::LeaseGrant { id, .. }) = &ops[i].outcome {
            leases.insert(*id);
        }
    }
    let compaction = matches!(ops[target].request, Request::Compact { .. });
    let relevant = |op: &Operation| -> bool {
        let touches_key = prepare::request_keys(&op.request)
            .iter()
            .any(|k| keys.contains(k) || ranges.iter().any(|(a, b)| *a <= *k && *k < *b));
        let touches_lease = match (&op.request, &op.outcome) {
            (Request::Put { lease, .. }, _) | (Request::LeaseRevoke { id: lease }, _) => {
                leases.contains(lease)
            }
            (_, Outcome::Ok(Response::LeaseGrant { id, .. })) => leases.contains(id),
            _ => false,
        };
        let compact = compaction && matches!(op.request, Request::Compact { .. });
        touches_key || touches_lease || compact
    };
    let in_window = |i: usize| match &ops[i].outcome {
        Outcome::Failed(_) => false,
        Outcome::Unknown(_) => true,
        Outcome::Ok(_) => search::slot_of(p, i).is_some_and(|r| r <= failure.revision),
    };
    let by_time = |v: &mut Vec<usize>| v.sort_by_key(|&i| (ops[i].call, i));
    let mut start: Vec<usize> = (0..ops.len())
        .filter(|&i| essential.contains(&i) || (in_window(i) && relevant(&ops[i])))
        .collect();
    by_time(&mut start);
    if !same(&check_sub(h, &start, deadline)) {
        start = (0..ops.len())
            .filter(|&i| essential.contains(&i) || in_window(i))
            .collect();
        by_time(&mut start);
        if !same(&check_sub(h, &start, deadline)) {
            let mut kept: Vec<usize> = essential.into_iter().collect();
            by_time(&mut kept);
            return (kept, failure.clone(), false);
        }
    }
    // Delta debugging on complements, never dropping the essential operations.
    let mut cur = start;
    let mut n = 2usize;
    while Instant::now() < deadline {
        let removable: Vec<usize> = cur
            .iter()
            .copied()
            .filter(|i| !essential.contains(i))
            .collect();
        if removable.is_empty() {
            break;
        }
        let n_eff = n.min(removable.len());
        let chunk = removable.len().div_ceil(n_eff);
        let mut reduced = false;
        for c in removable.chunks(chunk) {
            if Instant::now() >= deadline {
                break;
            }
            let drop: HashSet<usize> = c.iter().copied().collect();
            let candidate: Vec<usize> = cur.iter().copied().filter(|i| !drop.contains(i)).collect();
            if same(&check_sub(h, &candidate, deadline)) {
                cur = candidate;
                n = n_eff.saturating_sub(1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if chunk == 1 {
                break;
            }
            n = (n_eff * 2).min(removable.len());
        }
    }
    let last = check_sub(h, &cur, deadline).unwrap_or_else(|| failure.clone());
    (cur, last, true)
}
