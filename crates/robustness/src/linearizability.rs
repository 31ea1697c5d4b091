//! Linearizability checker for etcd's key-value model.
//!
//! # The model
//!
//! A single-member etcd keyspace ([`model`]): key → (value, create_revision, mod_revision,
//! version, lease), the current revision (1 for an empty store; every Put, every write
//! Txn, every Delete that deleted and every lease revoke that deleted keys adds exactly 1;
//! a Txn whose branch writes nothing, a Delete of nothing, a revoke of a lease without keys,
//! a lease grant and a compaction add nothing), the live leases and the compact revision.
//! Every answer's header revision is checked exactly against the model.
//!
//! # The search, and why it can be cut up
//!
//! Porcupine and Knossos search over all orders of concurrent operations (Wing & Gong /
//! Lowe: pick any operation that may go next, apply it to the model, backtrack on
//! failure, cache (linearized set, state)). For etcd most of that freedom is gone, because
//! every answer names a revision ([`prepare`]):
//!
//! * an answered write that reports revision `R` must be *the* operation that moved the
//!   store from `R-1` to `R` (revisions are dense and never reused), so two writes
//!   reporting the same `R` are a violation at once;
//! * an answered non-writing operation with header `R` (a read, a Txn that wrote nothing, a
//!   Delete of nothing, a grant, a compaction) ran while the store was at `R`: after the
//!   write of `R` and before the write of `R+1`;
//! * so every linearization has the shape `w2, ops@2, w3, ops@3, …` where `wR` is fixed
//!   when an answered write claims `R`. The only free choices are (a) which *unanswered*
//!   write (or which answered revoke, whose answer does not say whether it deleted keys)
//!   produced a revision nobody claims, and (b) the order of operations inside one `ops@R`
//!   group — but those do not change the keyspace, and their effects on leases and the
//!   compact revision are ordered explicitly (grant before revoke of the same lease,
//!   compactions by compact revision).
//!
//! [`search`] therefore replays revisions in order. For each operation it picks the
//! earliest real-time point inside `[call, return]` that is not before the point of
//! anything before it in this order (an uncertain operation's return is +∞). For a fixed
//! order of writes this greedy placement succeeds iff any placement does (interval chain
//! scheduling), and operations inside one group are independent of each other's points
//! except along the explicit chains. A revision no answered write claims is a *choice
//! point*: if a read showed a value with that `mod_revision`, the unanswered write of that
//! (unique) value is forced there (every valid linearization must put it there);
//! otherwise every unanswered write that was called early enough and would write in the
//! current state is tried, watcher-confirmed ones first, latest call first, with
//! backtracking and a cache of failed configurations (revision, state, set of used
//! uncertain writes, real-time point). An uncertain write that never fills a revision
//! never took effect (or took effect without writing: a Delete of nothing, a Txn branch
//! without writes, which the model cannot tell from not happening), which is exactly
//! Knossos' "may take effect once, or never". Failed answers did not take effect and are
//! not replayed; unanswered reads, grants and compactions are dropped (they cannot change
//! what any other answer shows: an uncertain compaction could only make later compactions
//! fail, and failed ones are not checked).
//!
//! *Partitioning.* Naive per-key partitioning is unsound for etcd because the global
//! revision couples keys (a read of `a` at revision 9 depends on how many writes to *other*
//! keys came before). Here the coupling is resolved first and globally (the write order
//! above, cheap because revisions pin it), and then every read is checked against only the
//! keys it names at its revision: the per-key checks are independent given the write
//! order, which is what `partitions` in [`Verdict::Ok`] counts (distinct keys). The
//! projection of a history on some keys, with revisions written by left-out operations
//! treated as writes to other keys ([`check_projection`]), is used only to explain a
//! violation already found: if the projection is not linearizable, neither is the whole,
//! but not conversely, so it never decides a verdict.
//!
//! # Reports
//!
//! On a violation the deepest failure the search reached is shrunk ([`report`]): the
//! history is projected on the keys of the failing operation and the operations it
//! names, cut at its revision, and operations are dropped in halves, quarters, … down to one
//! (delta debugging) while the projection still fails at the same operation for the same
//! reason. The report lists the remaining operations in real-time order with the model's
//! expectation.
//!
//! # Limits
//!
//! Range requests read only the current revision (the generator does not send
//! `revision`); failed answers are not checked against the state (a wrong
//! `compacted` error goes unnoticed); leases never granted by an answered operation are
//! assumed to exist until revoked; lease expiry is not modelled (TTLs outlive a run).

mod model;
mod prepare;
mod report;
mod search;

use std::time::Duration;

pub(crate) use search::Resolved;

use crate::history::History;

/// Result of a linearizability check.
#[derive(Debug)]
pub enum Verdict {
    /// The history is linearizable.
    Ok {
        operations: usize,
        partitions: usize,
    },
    /// It is not; `minimal` is the shortest failing sub-history found.
    Violation { report: String, minimal: History },
    /// The search ran out of budget.
    Unknown { reason: String },
}

/// Checks `h` against the etcd KV model, giving up with [`Verdict::Unknown`] after `budget`
/// of searching (shrinking a violation takes at most another `min(budget, 10 s)`).
pub fn check(h: &History, budget: Duration) -> Verdict {
    run(h, budget, search::Mode::Strict)
}

/// Checks `h` as a *projection*: a sub-history of a larger one, restricted to some keys.
/// Revisions that no operation of `h` can have written are taken to be writes, by
/// operations left out, to keys `h` does not mention. This is how a
/// [`Verdict::Violation`]'s `minimal` history is meant to be checked again; a violation
/// of the projection implies one of the whole history, not the other way round.
pub fn check_projection(h: &History, budget: Duration) -> Verdict {
    run(h, budget, search::Mode::Projection)
}

fn run(h: &History, budget: Duration, mode: search::Mode) -> Verdict {
    let prepared = match prepare::prepare(h) {
        Ok(p) => p,
        Err(prepare::Malformed(reason)) => {
            return Verdict::Unknown {
                reason: format!("malformed history: {reason}"),
            }
        }
    };
    match search::search(&prepared, mode, budget) {
        search::SearchResult::Linearizable(r) => {
            tracing::debug!(
                operations = h.operations.len(),
                answered = prepared.answered,
                revisions = r.final_revision,
                applied_uncertain = r.applied_uncertain,
                choice_points = r.choice_points,
                backtracks = r.backtracks,
                "history is linearizable"
            );
            Verdict::Ok {
                operations: h.operations.len(),
                partitions: prepared.keys,
            }
        }
        search::SearchResult::OutOfBudget(reason) => Verdict::Unknown { reason },
        search::SearchResult::Violation(failure) => {
            let (report, minimal) = report::explain(h, &prepared, &failure, budget);
            Verdict::Violation { report, minimal }
        }
    }
}

/// The linearization of `h`'s writes, if the check finds one within `budget`: the watch
/// validator's "final history".
pub(crate) fn resolve(h: &History, budget: Duration) -> Option<Resolved> {
    let prepared = prepare::prepare(h).ok()?;
    match search::search(&prepared, search::Mode::Strict, budget) {
        search::SearchResult::Linearizable(r) => Some(r),
        _ => None,
    }
}

/// Whether an answered operation reports a write at its header revision, and that revision.
pub(crate) fn reported_write(op: &crate::history::Operation) -> Option<i64> {
    match &op.outcome {
        crate::history::Outcome::Ok(resp) if prepare::reports_write(&op.request, resp) => {
            Some(resp.revision())
        }
        _ => None,
    }
}
