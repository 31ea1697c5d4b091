//! Request validation done before a request reaches the store, exactly as etcd's
//! `etcdserver/api/v3rpc/key.go` does it (`checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkRequestOp`, `checkIntervals`), plus the
//! `--max-request-bytes` limit etcd applies to the raft entry of every write and the
//! `--max-response-bytes` limit on what a Range or Txn sends back.
//!
//! The order of the checks is etcd's, so a request with several faults gets etcd's error.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use coffer_proto::range_request::SortTarget;
use coffer_proto::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::Message;

use crate::errors::ServerError;

/// `checkRangeRequest`: the key must not be empty.
pub fn range(req: &RangeRequest) -> Result<(), ServerError> {
    if req.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// The sort check etcd 3.4/3.5 make when they apply a Range (3.6 moved it into
/// `checkRangeRequest`): a `sort_target` outside its enum is `invalid sort option`, found
/// only after the read itself succeeded (a compacted or future revision is reported first).
/// A `sort_order` outside its enum is not an error: it sorts nothing (observed on 3.4.23).
pub fn range_sort_target(req: &RangeRequest) -> Result<(), ServerError> {
    if SortTarget::try_from(req.sort_target).is_err() {
        return Err(ServerError::InvalidSortOption);
    }
    Ok(())
}

/// `checkPutRequest`: non-empty key; `ignore_value` without a value; `ignore_lease` without a
/// lease.
pub fn put(req: &PutRequest) -> Result<(), ServerError> {
    if req.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

/// `checkDeleteRequest`: the key must not be empty.
pub fn delete_range(req: &DeleteRangeRequest) -> Result<(), ServerError> {
    if req.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// Everything etcd checks on a Txn before executing it: `checkTxnRequest` (operation limits,
/// compare keys, each op as its standalone RPC), then `checkIntervals` on `success` and on
/// `failure` separately (the duplicate-key rule).
pub fn txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), ServerError> {
    txn_shape(req, max_txn_ops)?;
    intervals(&req.success)?;
    intervals(&req.failure)?;
    Ok(())
}

/// `checkTxnRequest`: `max(len(compare), len(success), len(failure)) <= max_txn_ops`; every
/// compare key non-empty; every op valid, nested txns with the limit `max_txn_ops - n`.
fn txn_shape(req: &TxnRequest, max_txn_ops: usize) -> Result<(), ServerError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(ServerError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    let nested_limit = max_txn_ops - ops;
    for op in req.success.iter().chain(req.failure.iter()) {
        request_op(op, nested_limit)?;
    }
    Ok(())
}

/// `checkRequestOp`: each op is validated like its RPC; an op with nothing set is
/// `key not found`.
fn request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), ServerError> {
    match &op.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(r)) => put(r),
        Some(Request::RequestDeleteRange(r)) => delete_range(r),
        Some(Request::RequestTxn(r)) => txn_shape(r, max_txn_ops),
        None => Err(ServerError::KeyNotFound),
    }
}

/// Keys put in one list of ops (nested txns included), borrowed from the request.
type Puts<'a> = BTreeSet<&'a [u8]>;

/// The keys deleted in one list of ops (nested txns included): the union of the deleted
/// intervals, kept as disjoint non-empty `[begin, end)` ranges keyed by `begin`. A point
/// delete of `k` is `[k, k + "\x00")`, as in etcd's interval tree. A range whose `end` is
/// `"\x00"` or `<= begin` is empty there, so such deletes never conflict with a put (etcd
/// behaves the same way); they are not kept.
#[derive(Debug, Default)]
struct Deletes<'a> {
    ranges: BTreeMap<&'a [u8], Cow<'a, [u8]>>,
}

impl<'a> Deletes<'a> {
    fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Adds `[begin, end)`, merging it with the ranges it overlaps or touches.
    fn insert(&mut self, mut begin: &'a [u8], mut end: Cow<'a, [u8]>) {
        if end.as_ref() <= begin {
            return;
        }
        if let Some((&b, e)) = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin)))
            .next_back()
        {
            if e.as_ref() >= end.as_ref() {
                return;
            }
            if e.as_ref() >= begin {
                begin = b;
            }
        }
        // Every range starting in [begin, end] now lies inside or extends the new one.
        while let Some((&b, _)) = self
            .ranges
            .range::<[u8], _>((Bound::Included(begin), Bound::Unbounded))
            .next()
        {
            if b > end.as_ref() {
                break;
            }
            if let Some(e) = self.ranges.remove(b) {
                if e.as_ref() > end.as_ref() {
                    end = e;
                }
            }
        }
        self.ranges.insert(begin, end);
    }

    /// Whether a deleted range holds `key`.
    fn covers(&self, key: &[u8]) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| key < end.as_ref())
    }

    /// Whether a deleted range holds one of `puts`; looks up the smaller side in the larger.
    fn covers_any(&self, puts: &Puts<'_>) -> bool {
        if puts.len() <= self.len() {
            return puts.iter().any(|k| self.covers(k));
        }
        self.ranges.iter().any(|(&b, e)| {
            puts.range::<[u8], _>((Bound::Included(b), Bound::Excluded(e.as_ref())))
                .next()
                .is_some()
        })
    }

    /// Adds every range of `other`, inserting the smaller set into the larger.
    fn union(&mut self, mut other: Deletes<'a>) {
        if self.len() < other.len() {
            std::mem::swap(self, &mut other);
        }
        for (b, e) in other.ranges {
            self.insert(b, e);
        }
    }
}

/// Whether two key sets share a key; looks up the smaller in the larger.
fn intersects(a: &Puts<'_>, b: &Puts<'_>) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().any(|k| large.contains(k))
}

/// Adds `other` to `into`, inserting the smaller set into the larger.
fn union_puts<'a>(into: &mut Puts<'a>, mut other: Puts<'a>) {
    if into.len() < other.len() {
        std::mem::swap(into, &mut other);
    }
    into.extend(other);
}

/// `checkIntervals` for one list of ops: returns the keys put and the keys deleted in it
/// (nested txns included) so the caller can check them against its own level.
///
/// Order matters and is etcd's: this level's deletes are collected first; then each nested
/// txn's puts are checked against those and against the deletes of *earlier* nested txns
/// (a nested txn's `failure` puts are not checked against its own `success` deletes, and a
/// key put in a nested `success` may be put again in the same nested `failure`); finally this
/// level's puts are checked against every put and delete collected so far.
///
/// O(n log² n) in the number of ops: sets are merged smaller-into-larger and each overlap
/// check looks up the smaller side in the larger (etcd walks an interval tree instead).
fn intervals(ops: &[RequestOp]) -> Result<(Puts<'_>, Deletes<'_>), ServerError> {
    let mut dels = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let end = if d.range_end.is_empty() {
                let mut point = d.key.clone();
                point.push(0);
                Cow::Owned(point)
            } else {
                Cow::Borrowed(d.range_end.as_slice())
            };
            dels.insert(&d.key, end);
        }
    }

    let mut puts = Puts::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&nested.success)?;
        let (puts_else, dels_else) = intervals(&nested.failure)?;
        // The same key in the nested txn's success and failure is fine: only one runs.
        if intersects(&puts, &puts_then)
            || intersects(&puts, &puts_else)
            || dels.covers_any(&puts_then)
            || dels.covers_any(&puts_else)
        {
            return Err(ServerError::DuplicateKey);
        }
        union_puts(&mut puts, puts_then);
        union_puts(&mut puts, puts_else);
        dels.union(dels_then);
        dels.union(dels_else);
    }

    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if !puts.insert(&p.key) || dels.covers(&p.key) {
            return Err(ServerError::DuplicateKey);
        }
    }
    Ok((puts, dels))
}

/// Whether every op of the txn, in both branches and nested txns, is a Range. etcd serves such
/// a txn without a raft entry, so the size limit does not apply to it.
pub fn txn_is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(nested)) => txn_is_read_only(nested),
            _ => false,
        })
}

/// Whether the txn contains a Put anywhere (both branches, nested txns): such a txn has a
/// non-zero quota cost and is refused while NOSPACE is active.
pub fn txn_has_put(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(nested)) => txn_has_put(nested),
            _ => false,
        })
}

/// Bytes etcd adds around a request when it wraps it in its internal raft entry: the request
/// header (field 100, a 2-byte tag, its length, and an ID of up to 10 varint bytes with its
/// tag) and the request's own tag and length prefix.
fn raft_envelope_len(body_len: usize) -> usize {
    2 + 1 + 1 + 10 + 1 + prost::encoding::encoded_len_varint(body_len as u64)
}

/// `--max-request-bytes`: etcd refuses a write whose raft entry is larger than the limit.
pub fn request_size<M: Message>(req: &M, max_request_bytes: usize) -> Result<(), ServerError> {
    let body = req.encoded_len();
    if body + raft_envelope_len(body) > max_request_bytes {
        return Err(ServerError::RequestTooLarge);
    }
    Ok(())
}

/// `--max-response-bytes`: a response larger than the limit is refused as gRPC-go refuses a
/// message over the server's send limit (etcd's is `math.MaxInt32`).
pub fn response_size<M: Message>(resp: &M, max_response_bytes: usize) -> Result<(), ServerError> {
    let size = resp.encoded_len();
    if size > max_response_bytes {
        tracing::debug!(
            size,
            limit = max_response_bytes,
            "response refused: larger than --max-response-bytes"
        );
        return Err(ServerError::ResponseTooLarge {
            size,
            limit: max_response_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
