//! The quota cost of a request, as etcd's `backendQuota` estimates it before a write is
//! validated (`server/etcdserver/quota.go`): a put costs its key and value plus a per-key
//! overhead, a txn its costlier branch, a lease grant a fixed overhead; anything else is free.

use coffer_proto::{request_op, PutRequest, RequestOp, TxnRequest};

/// etcd's `kvOverhead`: the estimated cost of a key's metadata.
pub const KV_OVERHEAD: i64 = 256;
/// etcd's `leaseOverhead`: the estimated cost of storing a lease.
pub const LEASE_OVERHEAD: i64 = 64;

/// The cost of a put.
pub fn put_cost(p: &PutRequest) -> i64 {
    (p.key.len() + p.value.len()) as i64 + KV_OVERHEAD
}

/// The cost of a txn: the costlier of its branches, nested txns included.
pub fn txn_cost(t: &TxnRequest) -> i64 {
    fn ops(ops: &[RequestOp]) -> i64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                Some(request_op::Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    }
    ops(&t.success).max(ops(&t.failure))
}

/// Whether a request of `cost` fits: etcd's `Available`, `size + cost < quota` (a free
/// request always fits; a quota of 0 or less means none).
pub fn fits(size: i64, cost: i64, quota: i64) -> bool {
    quota <= 0 || cost == 0 || size + cost < quota
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_etcd() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 10],
            ..Default::default()
        };
        assert_eq!(put_cost(&put), 267);
        let op = |p: &PutRequest| RequestOp {
            request: Some(request_op::Request::RequestPut(p.clone())),
        };
        let txn = TxnRequest {
            success: vec![op(&put), op(&put)],
            failure: vec![op(&put)],
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn), 2 * 267);
        assert!(fits(10, 0, 10));
        assert!(fits(10, 5, 0));
        assert!(!fits(5, 5, 10));
        assert!(fits(4, 5, 10));
    }
}
