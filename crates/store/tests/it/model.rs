//! Random op sequences against the store and a simple in-memory model (a full snapshot of the
//! keyspace per revision); every response is compared. The store is reopened at random points.

use std::collections::BTreeMap;

use coffer_proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    mvccpb::KeyValue,
    request_op::Request,
    response_op::Response,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use coffer_store::{Backend, EmbeddedStore, Error};
use proptest::prelude::*;

use crate::common::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    Range {
        key: u8,
        end: Option<u8>,
        back: i64,
        limit: i64,
        sort: i32,
        keys_only: bool,
        count_only: bool,
    },
    /// if value(key) == v then put(key2, v2) else delete(key)
    Txn(u8, u8, u8, u8),
    Compact(i64),
    Reopen,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 0..4u8).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0..6u8, proptest::option::of(0..7u8)).prop_map(|(k, e)| Op::Delete(k, e)),
        4 => (0..6u8, proptest::option::of(0..7u8), 0..4i64, 0..4i64, 0..3i32, any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(key, end, back, limit, sort, keys_only, count_only)| Op::Range { key, end, back, limit, sort, keys_only, count_only }),
        2 => (0..6u8, 0..4u8, 0..6u8, 0..4u8).prop_map(|(a, b, c, d)| Op::Txn(a, b, c, d)),
        1 => (0..6i64).prop_map(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// states[r] = the keyspace at revision r (states[0] unused, states[1] empty).
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: -1,
        }
    }
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn cur(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().unwrap()
    }
    fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
        if end.is_empty() {
            k == key
        } else if end == [0] {
            k >= key
        } else {
            k >= key && k < end
        }
    }
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        let rev = self.rev() + 1;
        let mut s = self.cur().clone();
        let prev = s.get(&k).cloned();
        s.insert(
            k.clone(),
            KeyValue {
                key: k,
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                value: v,
                lease: 0,
            },
        );
        self.states.push(s);
    }
    fn delete(&mut self, key: &[u8], end: &[u8]) -> i64 {
        let mut s = self.cur().clone();
        let before = s.len();
        s.retain(|k, _| !Self::in_range(k, key, end));
        let n = (before - s.len()) as i64;
        if n > 0 {
            self.states.push(s);
        }
        n
    }
}

fn end_of(e: Option<u8>) -> Vec<u8> {
    match e {
        None => vec![],
        Some(6) => vec![0],
        Some(x) => key(x),
    }
}

async fn run(ops: Vec<Op>) {
    let d = tempfile::tempdir().unwrap();
    let mut s: EmbeddedStore = open(d.path());
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let r = s
                    .put(
                        &coffer_store::Caller::Internal,
                        PutRequest {
                            key: key(k),
                            value: vec![v; 3],
                            prev_kv: true,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                let prev = m.cur().get(&key(k)).cloned();
                m.put(key(k), vec![v; 3]);
                assert_eq!(r.prev_kv, prev);
                assert_eq!(rev_of(&r.header), m.rev());
            }
            Op::Delete(k, e) => {
                let end = end_of(e);
                let r = s
                    .delete_range(
                        &coffer_store::Caller::Internal,
                        DeleteRangeRequest {
                            key: key(k),
                            range_end: end.clone(),
                            prev_kv: true,
                        },
                    )
                    .await
                    .unwrap();
                let prev: Vec<KeyValue> = m
                    .cur()
                    .iter()
                    .filter(|(kk, _)| Model::in_range(kk, &key(k), &end))
                    .map(|(_, v)| v.clone())
                    .collect();
                assert_eq!(r.deleted, m.delete(&key(k), &end));
                assert_eq!(r.prev_kvs, prev);
                assert_eq!(rev_of(&r.header), m.rev());
            }
            Op::Range {
                key: k,
                end,
                back,
                limit,
                sort,
                keys_only,
                count_only,
            } => {
                let end = end_of(end);
                let at = if back == 0 {
                    0
                } else {
                    (m.rev() - back).max(1)
                };
                let req = RangeRequest {
                    key: key(k),
                    range_end: end.clone(),
                    revision: at,
                    limit,
                    sort_order: sort,
                    keys_only,
                    count_only,
                    ..Default::default()
                };
                let got = s.range(&coffer_store::Caller::Internal, req).await;
                let read_at = if at == 0 { m.rev() } else { at };
                if read_at < m.compacted {
                    assert!(matches!(got, Err(Error::Compacted)), "{got:?}");
                    continue;
                }
                let got = got.unwrap();
                let mut all: Vec<KeyValue> = m.states[read_at as usize]
                    .iter()
                    .filter(|(kk, _)| Model::in_range(kk, &key(k), &end))
                    .map(|(_, v)| v.clone())
                    .collect();
                let count = all.len() as i64;
                if sort == 2 {
                    all.reverse();
                }
                let mut more = false;
                if limit > 0 && all.len() > limit as usize {
                    all.truncate(limit as usize);
                    more = true;
                }
                if keys_only {
                    all.iter_mut().for_each(|kv| kv.value.clear());
                }
                if count_only {
                    all.clear();
                    more = false;
                }
                assert_eq!(got.count, count);
                assert_eq!(got.more, more);
                assert_eq!(got.kvs, all);
                assert_eq!(rev_of(&got.header), m.rev());
            }
            Op::Txn(a, v, b, w) => {
                let cond = m
                    .cur()
                    .get(&key(a))
                    .is_some_and(|kv| kv.value == vec![v; 3]);
                let t = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key(a),
                        target_union: Some(TargetUnion::Value(vec![v; 3])),
                        range_end: vec![],
                    }],
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key(b),
                            value: vec![w; 3],
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: key(a),
                            ..Default::default()
                        })),
                    }],
                };
                let r = s.txn(&coffer_store::Caller::Internal, t).await.unwrap();
                assert_eq!(r.succeeded, cond);
                let deleted = if cond {
                    m.put(key(b), vec![w; 3]);
                    None
                } else {
                    Some(m.delete(&key(a), &[]))
                };
                assert_eq!(rev_of(&r.header), m.rev());
                match (r.responses[0].response.as_ref().unwrap(), deleted) {
                    (Response::ResponsePut(p), None) => assert_eq!(rev_of(&p.header), m.rev()),
                    (Response::ResponseDeleteRange(d), Some(n)) => assert_eq!(d.deleted, n),
                    (other, _) => panic!("unexpected {other:?}"),
                }
            }
            Op::Compact(back) => {
                let at = m.rev() - back;
                let r = s
                    .compact(CompactionRequest {
                        revision: at,
                        physical: back % 2 == 0,
                    })
                    .await;
                if at <= m.compacted {
                    assert!(matches!(r, Err(Error::Compacted)), "{r:?}");
                } else {
                    r.unwrap();
                    m.compacted = at;
                }
            }
            Op::Reopen => {
                s.close();
                drop(s);
                s = open(d.path());
                assert_eq!(s.current_revision(), m.rev());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
