//! Request builders shared by the side-by-side and kube replay tests.
#![allow(dead_code)]

use coffer_proto::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

/// Compare targets (etcd's `Compare.CompareTarget`).
pub const VERSION: i32 = 0;
pub const CREATE: i32 = 1;
pub const MOD: i32 = 2;
pub const VALUE: i32 = 3;
pub const LEASE: i32 = 4;
/// Compare results (etcd's `Compare.CompareResult`).
pub const EQUAL: i32 = 0;
pub const GREATER: i32 = 1;
pub const LESS: i32 = 2;
pub const NOT_EQUAL: i32 = 3;

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

pub fn span(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

pub fn del(key: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        ..Default::default()
    }
}

pub fn del_span(key: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

/// `Compare{key, target, result}` with the operand matching the target (integers for
/// VERSION/CREATE/MOD/LEASE, `value` for VALUE).
pub fn cmp(key: &str, target: i32, result: i32, n: i64, value: &str) -> Compare {
    let target_union = Some(match target {
        VERSION => compare::TargetUnion::Version(n),
        CREATE => compare::TargetUnion::CreateRevision(n),
        MOD => compare::TargetUnion::ModRevision(n),
        VALUE => compare::TargetUnion::Value(b(value)),
        _ => compare::TargetUnion::Lease(n),
    });
    Compare {
        key: b(key),
        target,
        result,
        target_union,
        range_end: Vec::new(),
    }
}

pub fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

pub fn op_put(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(p)),
    }
}

pub fn op_del(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(d)),
    }
}

pub fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// etcd's client-side prefix end (`clientv3.GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last().copied() {
        if last < 0xff {
            if let Some(l) = end.last_mut() {
                *l = last + 1;
            }
            return end;
        }
        end.pop();
    }
    vec![0]
}
