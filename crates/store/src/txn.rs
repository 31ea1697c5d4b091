//! Txn requests as the writer applies them: the plan (put values sealed by the caller before
//! the request is queued), the quota cost of its costlier branch, and etcd's `compareKV`.

use coffer_proto::{compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest};

use crate::index::Entry;
use crate::Error;

/// A txn whose put values were sealed by the caller.
#[derive(Debug)]
pub(crate) struct TxnPlan {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One op of a [`TxnPlan`].
#[derive(Debug)]
pub(crate) enum TxnOp {
    Range(RangeRequest),
    /// The put and its value as sealed by the caller (`None` with `ignore_value`).
    Put(PutRequest, Option<Vec<u8>>),
    Delete(DeleteRangeRequest),
    Txn(TxnPlan),
    /// A `RequestOp` with no request set.
    Empty,
}

impl TxnPlan {
    pub(crate) fn cost(&self) -> i64 {
        fn ops(ops: &[TxnOp]) -> i64 {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put(p, _) => put_cost(p),
                    TxnOp::Txn(t) => t.cost(),
                    _ => 0,
                })
                .sum()
        }
        ops(&self.success).max(ops(&self.failure))
    }

    pub(crate) fn reads_history(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            TxnOp::Range(r) => r.revision > 0,
            TxnOp::Txn(t) => t.reads_history(),
            _ => false,
        })
    }
}

pub(crate) use crate::quota::put_cost;

/// etcd's `compareKV`: `entry`/`value` are `None` for an absent key (a zero KeyValue).
pub(crate) fn compare_kv(c: &Compare, entry: Option<&Entry>, value: Option<&[u8]>) -> bool {
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
    ) -> Result<Vec<TxnOp>, Error> {
        list.into_iter()
            .map(|op| {
                Ok(match op.request {
                    Some(request_op::Request::RequestRange(r)) => TxnOp::Range(r),
                    Some(request_op::Request::RequestPut(p)) => {
                        let sealed = seal_put(&p)?;
                        TxnOp::Put(p, sealed)
                    }
                    Some(request_op::Request::RequestDeleteRange(d)) => TxnOp::Delete(d),
                    Some(request_op::Request::RequestTxn(t)) => TxnOp::Txn(plan_txn(t, seal_put)?),
                    None => TxnOp::Empty,
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
