//! Every validation rule, with etcd's exact error (code and text come from the error table,
//! which has its own test; here we check which error each request gets).

use coffer_proto::{
    compare, request_op::Request, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use super::*;

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn del_op(key: &str, end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
            prev_kv: false,
        })),
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })),
    }
}

fn cmp(key: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::ModRevision(0)),
    }
}

fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![cmp("c")],
        success,
        failure,
    }
}

fn check(req: &TxnRequest) -> Result<(), ServerError> {
    super::txn(req, 128)
}

fn is(res: Result<(), ServerError>, want: fn(&ServerError) -> bool) -> bool {
    matches!(res, Err(ref e) if want(e))
}

#[test]
fn range_needs_a_key() {
    assert!(matches!(
        range(&RangeRequest::default()),
        Err(ServerError::EmptyKey)
    ));
    let ok = RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    assert!(range(&ok).is_ok());
}

#[test]
fn range_sort_target_must_be_an_enum_value() {
    let ok = RangeRequest {
        key: b"a".to_vec(),
        sort_order: 2,
        sort_target: 4,
        ..Default::default()
    };
    assert!(range_sort_target(&ok).is_ok());
    for target in [5, 9, -1] {
        let bad = RangeRequest {
            sort_target: target,
            ..ok.clone()
        };
        assert!(
            matches!(range_sort_target(&bad), Err(ServerError::InvalidSortOption)),
            "{target}"
        );
    }
    // An unknown sort_order is not an error (etcd 3.4/3.5 just do not sort).
    for order in [3, -1, 7] {
        let odd = RangeRequest {
            sort_order: order,
            sort_target: 0,
            ..ok.clone()
        };
        assert!(range_sort_target(&odd).is_ok());
        assert!(range(&odd).is_ok());
    }
}

#[test]
fn delete_needs_a_key() {
    assert!(matches!(
        delete_range(&DeleteRangeRequest::default()),
        Err(ServerError::EmptyKey)
    ));
    let ok = DeleteRangeRequest {
        key: b"\x00".to_vec(),
        range_end: b"\x00".to_vec(),
        prev_kv: false,
    };
    assert!(delete_range(&ok).is_ok());
}

#[test]
fn put_rules_in_etcds_order() {
    // Empty key wins over everything else.
    let r = PutRequest {
        key: vec![],
        value: b"v".to_vec(),
        lease: 5,
        ignore_value: true,
        ignore_lease: true,
        prev_kv: false,
    };
    assert!(matches!(put(&r), Err(ServerError::EmptyKey)));
    // Then ignore_value with a value.
    let r = PutRequest {
        key: b"k".to_vec(),
        ..r
    };
    assert!(matches!(put(&r), Err(ServerError::ValueProvided)));
    // Then ignore_lease with a lease.
    let r = PutRequest { value: vec![], ..r };
    assert!(matches!(put(&r), Err(ServerError::LeaseProvided)));
    let r = PutRequest { lease: 0, ..r };
    assert!(put(&r).is_ok());
    // The flags alone are fine; a lease without ignore_lease is fine.
    let r = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        ..Default::default()
    };
    assert!(put(&r).is_ok());
}

#[test]
fn max_txn_ops_counts_the_longest_list() {
    let ops = |n: usize| (0..n).map(|i| put_op(&format!("k{i}"))).collect::<Vec<_>>();
    let at_limit = TxnRequest {
        compare: (0..128).map(|i| cmp(&format!("c{i}"))).collect(),
        success: ops(128),
        failure: ops(128),
    };
    assert!(check(&at_limit).is_ok());
    for which in 0..3 {
        let mut t = at_limit.clone();
        match which {
            0 => t.compare.push(cmp("c-extra")),
            1 => t.success.push(put_op("k-extra")),
            _ => t.failure.push(put_op("k-extra")),
        }
        assert!(
            matches!(check(&t), Err(ServerError::TooManyOps)),
            "list {which}"
        );
    }
}

#[test]
fn nested_txn_gets_the_remaining_budget() {
    // max 4, outer lists have 2 ops: a nested txn may have up to 2.
    let nested = |n: usize| txn_op((0..n).map(|i| put_op(&format!("n{i}"))).collect(), vec![]);
    let ok = TxnRequest {
        compare: vec![],
        success: vec![put_op("a"), nested(2)],
        failure: vec![],
    };
    assert!(super::txn(&ok, 4).is_ok());
    let too_many = TxnRequest {
        compare: vec![],
        success: vec![put_op("a"), nested(3)],
        failure: vec![],
    };
    assert!(matches!(
        super::txn(&too_many, 4),
        Err(ServerError::TooManyOps)
    ));
    // The failure list of the nested txn counts too, and compares count for the outer n.
    let via_compares = TxnRequest {
        compare: vec![cmp("x"), cmp("y"), cmp("z")],
        success: vec![txn_op(vec![], vec![put_op("p"), put_op("q")])],
        failure: vec![],
    };
    assert!(matches!(
        super::txn(&via_compares, 4),
        Err(ServerError::TooManyOps)
    ));
}

#[test]
fn too_many_ops_is_checked_before_keys() {
    let mut t = TxnRequest {
        compare: vec![cmp("")],
        success: (0..3).map(|i| put_op(&format!("k{i}"))).collect(),
        failure: vec![],
    };
    assert!(matches!(super::txn(&t, 2), Err(ServerError::TooManyOps)));
    t.success.truncate(2);
    assert!(matches!(super::txn(&t, 2), Err(ServerError::EmptyKey)));
}

#[test]
fn empty_keys_anywhere_in_a_txn() {
    let mut t = txn(vec![], vec![]);
    t.compare.push(cmp(""));
    assert!(matches!(check(&t), Err(ServerError::EmptyKey)));

    for bad in [put_op(""), del_op("", b""), range_op("")] {
        let t = txn(vec![bad.clone()], vec![]);
        assert!(matches!(check(&t), Err(ServerError::EmptyKey)));
        let t = txn(vec![], vec![bad.clone()]);
        assert!(matches!(check(&t), Err(ServerError::EmptyKey)));
        let t = txn(vec![txn_op(vec![], vec![bad])], vec![]);
        assert!(matches!(check(&t), Err(ServerError::EmptyKey)));
    }
    // A nested compare with an empty key.
    let nested = RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare: vec![cmp("")],
            success: vec![],
            failure: vec![],
        })),
    };
    assert!(matches!(
        check(&txn(vec![nested], vec![])),
        Err(ServerError::EmptyKey)
    ));
}

#[test]
fn nested_ops_follow_the_put_rules() {
    let ignore_value = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    assert!(matches!(
        check(&txn(vec![], vec![ignore_value])),
        Err(ServerError::ValueProvided)
    ));
    let ignore_lease = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b"k".to_vec(),
            lease: 1,
            ignore_lease: true,
            ..Default::default()
        })),
    };
    assert!(matches!(
        check(&txn(vec![txn_op(vec![ignore_lease], vec![])], vec![])),
        Err(ServerError::LeaseProvided)
    ));
}

#[test]
fn an_empty_request_op_is_key_not_found() {
    let empty = RequestOp { request: None };
    assert!(matches!(
        check(&txn(vec![empty.clone()], vec![])),
        Err(ServerError::KeyNotFound)
    ));
    assert!(matches!(
        check(&txn(vec![txn_op(vec![], vec![empty])], vec![])),
        Err(ServerError::KeyNotFound)
    ));
}

#[test]
fn shape_errors_come_before_duplicate_keys() {
    let t = txn(vec![put_op("a"), put_op("a"), put_op("")], vec![]);
    assert!(matches!(check(&t), Err(ServerError::EmptyKey)));
}

#[test]
fn duplicate_puts_in_one_list() {
    let dup = |e: &ServerError| matches!(e, ServerError::DuplicateKey);
    assert!(is(check(&txn(vec![put_op("a"), put_op("a")], vec![])), dup));
    assert!(is(check(&txn(vec![], vec![put_op("a"), put_op("a")])), dup));
    // The same key in success and in failure is fine.
    assert!(check(&txn(vec![put_op("a")], vec![put_op("a")])).is_ok());
    // Different keys are fine; ranges never conflict.
    assert!(check(&txn(vec![put_op("a"), put_op("b"), range_op("a")], vec![])).is_ok());
}

#[test]
fn put_inside_a_delete_of_the_same_list() {
    let dup = |e: &ServerError| matches!(e, ServerError::DuplicateKey);
    // Point delete, either order.
    assert!(is(
        check(&txn(vec![del_op("a", b""), put_op("a")], vec![])),
        dup
    ));
    assert!(is(
        check(&txn(vec![put_op("a"), del_op("a", b"")], vec![])),
        dup
    ));
    // Interval [a, c) covers b but not c.
    assert!(is(
        check(&txn(vec![del_op("a", b"c"), put_op("b")], vec![])),
        dup
    ));
    assert!(check(&txn(vec![del_op("a", b"c"), put_op("c")], vec![])).is_ok());
    // A delete in failure does not conflict with a put in success.
    assert!(check(&txn(vec![put_op("a")], vec![del_op("a", b"")])).is_ok());
}

#[test]
fn from_key_and_inverted_deletes_never_conflict() {
    // [x, "\x00") is empty in etcd's interval tree.
    assert!(check(&txn(vec![del_op("x", b"\x00"), put_op("x5")], vec![])).is_ok());
    assert!(check(&txn(vec![del_op("x", b"\x00"), put_op("x")], vec![])).is_ok());
    // range_end <= key: empty.
    assert!(check(&txn(vec![del_op("m", b"c"), put_op("m")], vec![])).is_ok());
    assert!(check(&txn(vec![del_op("m", b"m"), put_op("m")], vec![])).is_ok());
}

#[test]
fn two_deletes_are_allowed() {
    assert!(check(&txn(vec![del_op("a", b""), del_op("a", b"")], vec![])).is_ok());
    assert!(check(&txn(vec![del_op("a", b"z"), del_op("b", b"c")], vec![])).is_ok());
}

#[test]
fn nested_puts_against_outer_and_sibling_ops() {
    let dup = |e: &ServerError| matches!(e, ServerError::DuplicateKey);
    // Nested put vs. an outer put, either order.
    assert!(is(
        check(&txn(
            vec![txn_op(vec![put_op("a")], vec![]), put_op("a")],
            vec![]
        )),
        dup
    ));
    assert!(is(
        check(&txn(
            vec![put_op("a"), txn_op(vec![put_op("a")], vec![])],
            vec![]
        )),
        dup
    ));
    // Nested put vs. an outer delete, either order.
    assert!(is(
        check(&txn(
            vec![txn_op(vec![put_op("a")], vec![]), del_op("a", b"")],
            vec![]
        )),
        dup
    ));
    assert!(is(
        check(&txn(
            vec![del_op("a", b"b"), txn_op(vec![], vec![put_op("a")])],
            vec![]
        )),
        dup
    ));
    // Two sibling nested txns putting the same key.
    assert!(is(
        check(&txn(
            vec![
                txn_op(vec![put_op("a")], vec![]),
                txn_op(vec![], vec![put_op("a")])
            ],
            vec![]
        )),
        dup
    ));
    // The same key in a nested txn's success and failure is fine.
    assert!(check(&txn(
        vec![txn_op(vec![put_op("a")], vec![put_op("a")])],
        vec![]
    ))
    .is_ok());
}

#[test]
fn nested_deletes_and_ordering_exceptions() {
    let dup = |e: &ServerError| matches!(e, ServerError::DuplicateKey);
    // A nested put followed by a later sibling nested txn deleting the key passes.
    assert!(check(&txn(
        vec![
            txn_op(vec![put_op("a")], vec![]),
            txn_op(vec![del_op("a", b"")], vec![])
        ],
        vec![]
    ))
    .is_ok());
    // The other order (delete in an earlier sibling) is a duplicate.
    assert!(is(
        check(&txn(
            vec![
                txn_op(vec![del_op("a", b"")], vec![]),
                txn_op(vec![put_op("a")], vec![])
            ],
            vec![]
        )),
        dup
    ));
    // A nested txn's failure puts are not checked against its own success deletes.
    assert!(check(&txn(
        vec![txn_op(vec![del_op("a", b"")], vec![put_op("a")])],
        vec![]
    ))
    .is_ok());
    // But inside one nested list the usual rule holds.
    assert!(is(
        check(&txn(
            vec![txn_op(vec![del_op("a", b""), put_op("a")], vec![])],
            vec![]
        )),
        dup
    ));
    // Deletes from nested txns (even two levels down) conflict with this level's puts.
    let deep_delete = txn_op(vec![txn_op(vec![del_op("a", b"b")], vec![])], vec![]);
    assert!(is(
        check(&txn(vec![deep_delete.clone(), put_op("a")], vec![])),
        dup
    ));
    assert!(is(check(&txn(vec![put_op("a"), deep_delete], vec![])), dup));
    // The outer failure list is checked on its own.
    assert!(is(
        check(&txn(
            vec![],
            vec![txn_op(vec![put_op("z")], vec![]), put_op("z")]
        )),
        dup
    ));
}

#[test]
fn read_only_and_put_detection() {
    let ro = txn(
        vec![range_op("a"), txn_op(vec![range_op("b")], vec![])],
        vec![range_op("c")],
    );
    assert!(txn_is_read_only(&ro));
    assert!(!txn_has_put(&ro));
    let del = txn(vec![range_op("a")], vec![del_op("a", b"")]);
    assert!(!txn_is_read_only(&del));
    assert!(!txn_has_put(&del));
    let nested_put = txn(vec![txn_op(vec![], vec![put_op("a")])], vec![]);
    assert!(!txn_is_read_only(&nested_put));
    assert!(txn_has_put(&nested_put));
    assert!(txn_is_read_only(&TxnRequest::default()));
}

#[test]
fn request_size_limit() {
    let limit = 1024;
    let mut req = PutRequest {
        key: b"k".to_vec(),
        value: vec![b'x'; 900],
        ..Default::default()
    };
    assert!(request_size(&req, limit).is_ok());
    // Grow the value until the limit is crossed; the answer flips exactly once.
    let mut flipped_at = None;
    for extra in 0..200 {
        req.value = vec![b'x'; 900 + extra];
        if request_size(&req, limit).is_err() {
            flipped_at = Some(extra);
            break;
        }
    }
    let extra = flipped_at.expect("limit crossed");
    req.value = vec![b'x'; 900 + extra - 1];
    assert!(request_size(&req, limit).is_ok());
    req.value = vec![b'x'; 900 + extra];
    assert!(matches!(
        request_size(&req, limit),
        Err(ServerError::RequestTooLarge)
    ));
    // The envelope is a few bytes, not more.
    let total = req.encoded_len();
    assert!(total <= limit && total + 20 > limit, "total {total}");
    // 1.6 MiB against the default limit is too large, 1 MiB is fine.
    let default_limit = 1572864;
    req.value = vec![0; 1_677_722];
    assert!(request_size(&req, default_limit).is_err());
    req.value = vec![0; 1 << 20];
    assert!(request_size(&req, default_limit).is_ok());
}

/// TEST ONLY: the former quadratic `checkIntervals` (a list of deleted intervals scanned for
/// every put), kept as the oracle for the n log n one.
mod oracle {
    use std::collections::BTreeSet;

    use coffer_proto::{request_op::Request, RequestOp};

    #[derive(Debug, Clone)]
    pub struct Deleted {
        begin: Vec<u8>,
        end: Option<Vec<u8>>,
    }

    impl Deleted {
        fn contains(&self, key: &[u8]) -> bool {
            match &self.end {
                None => self.begin.as_slice() == key,
                Some(end) => self.begin.as_slice() <= key && key < end.as_slice(),
            }
        }
    }

    fn deletes_contain(dels: &[Deleted], key: &[u8]) -> bool {
        dels.iter().any(|d| d.contains(key))
    }

    pub type Level = (BTreeSet<Vec<u8>>, Vec<Deleted>);

    /// `Ok` when etcd accepts the list, `Err(())` for a duplicate key.
    pub fn intervals(ops: &[RequestOp]) -> Result<Level, ()> {
        let mut dels: Vec<Deleted> = ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                    begin: d.key.clone(),
                    end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
                }),
                _ => None,
            })
            .collect();
        let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
        for op in ops {
            let Some(Request::RequestTxn(nested)) = &op.request else {
                continue;
            };
            let (puts_then, dels_then) = intervals(&nested.success)?;
            let (puts_else, dels_else) = intervals(&nested.failure)?;
            for key in &puts_then {
                if puts.contains(key) || deletes_contain(&dels, key) {
                    return Err(());
                }
                puts.insert(key.clone());
            }
            for key in &puts_else {
                if puts.contains(key) && !puts_then.contains(key) {
                    return Err(());
                }
                if deletes_contain(&dels, key) {
                    return Err(());
                }
                puts.insert(key.clone());
            }
            dels.extend(dels_then);
            dels.extend(dels_else);
        }
        for op in ops {
            let Some(Request::RequestPut(p)) = &op.request else {
                continue;
            };
            if puts.contains(&p.key) || deletes_contain(&dels, &p.key) {
                return Err(());
            }
            puts.insert(p.key.clone());
        }
        Ok((puts, dels))
    }
}

fn new_accepts(ops: &[RequestOp]) -> bool {
    match super::intervals(ops) {
        Ok(_) => true,
        Err(ServerError::DuplicateKey) => false,
        Err(e) => panic!("{e}"),
    }
}

/// A random op over a tiny keyspace (so keys and ranges collide often), nested txns up to
/// `depth` levels.
fn arb_op(depth: u32) -> impl proptest::strategy::Strategy<Value = RequestOp> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec!["a", "a\0", "ab", "b", "ba", "c", "d"]);
    let end = prop::sample::select(vec![
        &b""[..],
        b"\0",
        b"a",
        b"a\0",
        b"ab",
        b"b",
        b"c",
        b"d",
        b"z",
    ]);
    let leaf = prop_oneof![
        4 => key.clone().prop_map(put_op),
        3 => (key.clone(), end).prop_map(|(k, e)| del_op(k, e)),
        1 => key.prop_map(range_op),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        (
            proptest::collection::vec(inner.clone(), 0..5),
            proptest::collection::vec(inner, 0..5),
        )
            .prop_map(|(s, f)| txn_op(s, f))
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

    /// The n log n check accepts and refuses exactly what the quadratic one (etcd's
    /// semantics) does, on random lists with nested txns, point and range deletes, empty and
    /// from-key ranges.
    #[test]
    fn duplicate_check_matches_the_quadratic_oracle(
        ops in proptest::collection::vec(arb_op(3), 0..8),
    ) {
        let want = oracle::intervals(&ops).is_ok();
        proptest::prop_assert_eq!(new_accepts(&ops), want, "ops: {:?}", ops);
    }
}

/// A valid txn of 32,768 leaves under the default limits (8 + 8 nested txns, each with
/// 16 + 16 nested txns, each with two lists of 32 leaves that put 16 distinct keys and delete
/// 16 other distinct keys).
fn wide_txn() -> TxnRequest {
    let mut n = 0u32;
    let mut leaf_list = || -> Vec<RequestOp> {
        (0..32)
            .map(|i| {
                n += 1;
                let k = format!("k{n:06}");
                if i % 2 == 0 {
                    put_op(&k)
                } else {
                    del_op(&k, b"")
                }
            })
            .collect()
    };
    let mut level2 =
        || -> Vec<RequestOp> { (0..16).map(|_| txn_op(leaf_list(), leaf_list())).collect() };
    let level1: Vec<RequestOp> = (0..16).map(|_| txn_op(level2(), level2())).collect();
    let (success, failure) = level1.split_at(8);
    txn(success.to_vec(), failure.to_vec())
}

#[test]
fn a_wide_txn_is_accepted_within_the_limits() {
    let t = wide_txn();
    assert!(check(&t).is_ok());
    assert!(request_size(&t, crate::config::DEFAULT_MAX_REQUEST_BYTES).is_ok());
}

/// Not a timed test: prints the old and new duplicate check's time on the 32k-leaf txn.
/// `cargo test -p coffer-server --release --lib duplicate_check_figure -- --ignored --nocapture`
#[test]
#[ignore = "benchmark figure, run by hand"]
fn duplicate_check_figure() {
    let t = wide_txn();
    let time = |f: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        assert!(f());
        started.elapsed()
    };
    let old =
        time(&|| oracle::intervals(&t.success).is_ok() && oracle::intervals(&t.failure).is_ok());
    let new = time(&|| new_accepts(&t.success) && new_accepts(&t.failure));
    println!("32,768 leaves: quadratic {old:?}, n log n {new:?}");
}
