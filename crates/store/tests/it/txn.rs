//! Txn semantics (reference §1.5).

use coffer_proto::{
    compare::{CompareResult as R, CompareTarget as T, TargetUnion as U},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, TxnResponse,
};
use coffer_store::{Backend, Error};

use crate::common::*;

fn cmp(key: &str, target: T, result: R, u: Option<U>) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: u,
        range_end: vec![],
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}
fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(rr(k, ""))),
    }
}
fn op_del(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}
fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

async fn check(s: &impl Backend, c: Compare) -> bool {
    s.txn(
        &coffer_store::Caller::Internal,
        TxnRequest {
            compare: vec![c],
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .succeeded
}

fn headers(t: &TxnResponse) -> Vec<Option<i64>> {
    t.responses
        .iter()
        .map(|r| match r.response.as_ref().unwrap() {
            Response::ResponseRange(x) => x.header.as_ref().map(|h| h.revision),
            Response::ResponsePut(x) => x.header.as_ref().map(|h| h.revision),
            Response::ResponseDeleteRange(x) => x.header.as_ref().map(|h| h.revision),
            Response::ResponseTxn(x) => x.header.as_ref().map(|h| h.revision),
        })
        .collect()
}

#[tokio::test]
async fn compare_targets_and_results() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "k", "bbb").await; // rev 2
    put(&s, "k", "ccc").await; // rev 3, version 2, create 2
    assert!(check(&s, cmp("k", T::Version, R::Equal, Some(U::Version(2)))).await);
    assert!(check(&s, cmp("k", T::Version, R::Greater, Some(U::Version(1)))).await);
    assert!(
        check(
            &s,
            cmp("k", T::Create, R::Equal, Some(U::CreateRevision(2)))
        )
        .await
    );
    assert!(check(&s, cmp("k", T::Mod, R::Less, Some(U::ModRevision(4)))).await);
    assert!(check(&s, cmp("k", T::Mod, R::NotEqual, Some(U::ModRevision(2)))).await);
    assert!(check(&s, cmp("k", T::Lease, R::Equal, Some(U::Lease(0)))).await);
    // Plaintext value compares (the stored bytes are sealed).
    assert!(
        check(
            &s,
            cmp("k", T::Value, R::Equal, Some(U::Value("ccc".into())))
        )
        .await
    );
    assert!(
        check(
            &s,
            cmp("k", T::Value, R::Greater, Some(U::Value("cca".into())))
        )
        .await
    );
    assert!(
        !check(
            &s,
            cmp("k", T::Value, R::Less, Some(U::Value("cca".into())))
        )
        .await
    );
    // A union member of another kind counts as unset (0).
    assert!(check(&s, cmp("k", T::Mod, R::Greater, Some(U::Version(99)))).await);
    assert!(!check(&s, cmp("k", T::Mod, R::Equal, Some(U::Version(3)))).await);
    // Result outside the enum evaluates true.
    let mut odd = cmp("k", T::Version, R::Equal, Some(U::Version(42)));
    odd.result = 17;
    assert!(check(&s, odd).await);
    // Absent key: zero KeyValue, except VALUE which is always false.
    assert!(check(&s, cmp("nope", T::Mod, R::Equal, Some(U::ModRevision(0)))).await);
    assert!(check(&s, cmp("nope", T::Version, R::Equal, None)).await);
    assert!(
        !check(
            &s,
            cmp("nope", T::Value, R::NotEqual, Some(U::Value("x".into())))
        )
        .await
    );
    assert!(!check(&s, cmp("nope", T::Value, R::Equal, None)).await);
    assert_eq!(s.current_revision(), 3, "compare-only txns do not bump");
}

#[tokio::test]
async fn compares_over_ranges() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a1", "x").await;
    put(&s, "a2", "x").await;
    put(&s, "b", "y").await;
    let mut c = cmp("a", T::Value, R::Equal, Some(U::Value("x".into())));
    c.range_end = "b".into();
    assert!(check(&s, c.clone()).await);
    c.range_end = "c".into();
    assert!(!check(&s, c).await);
    // Empty range: zero KeyValue once; VALUE false.
    let mut c = cmp("x", T::Version, R::Equal, Some(U::Version(0)));
    c.range_end = "y".into();
    assert!(check(&s, c).await);
    let mut c = cmp("x", T::Value, R::NotEqual, None);
    c.range_end = "y".into();
    assert!(!check(&s, c).await);
}

#[tokio::test]
async fn kube_style_create_and_update() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let create = TxnRequest {
        compare: vec![cmp(
            "/registry/pods/p",
            T::Mod,
            R::Equal,
            Some(U::ModRevision(0)),
        )],
        success: vec![op_put("/registry/pods/p", "v1")],
        failure: vec![op_get("/registry/pods/p")],
    };
    let t = s
        .txn(&coffer_store::Caller::Internal, create.clone())
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(rev_of(&t.header), 2);
    let t = s
        .txn(&coffer_store::Caller::Internal, create)
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(
        rev_of(&t.header),
        2,
        "failed branch without writes: no bump"
    );
    match t.responses[0].response.as_ref().unwrap() {
        Response::ResponseRange(r) => assert_eq!(r.kvs[0].value, b"v1"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn header_rules_and_read_your_writes() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    for i in 0..3 {
        put(&s, &format!("x{i}"), "v").await; // current 4
    }
    let t = s
        .txn(
            &coffer_store::Caller::Internal,
            TxnRequest {
                success: vec![
                    op_get("a"),
                    op_del("missing"),
                    op_put("a", "1"),
                    op_del("missing"),
                    op_get("a"),
                    op_put("b", "2"),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        headers(&t),
        vec![Some(4), Some(4), Some(5), Some(5), Some(5), Some(5)]
    );
    assert_eq!(rev_of(&t.header), 5);
    match t.responses[4].response.as_ref().unwrap() {
        Response::ResponseRange(r) => {
            assert_eq!(r.kvs[0].value, b"1");
            assert_eq!(r.kvs[0].mod_revision, 5);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Both puts share revision 5.
    let r = get(&s, rr("a", "c")).await;
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == 5));
    // Delete in the txn removes keys: its own header shows the new revision.
    let t = s
        .txn(
            &coffer_store::Caller::Internal,
            TxnRequest {
                success: vec![op_del("a"), op_get("a"), op_put("a", "again")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(headers(&t), vec![Some(6), Some(6), Some(6)]);
    let kv = get(&s, rr("a", "")).await.kvs[0].clone();
    assert_eq!((kv.create_revision, kv.version), (6, 1));
}

#[tokio::test]
async fn nested_txns_are_decided_from_the_pre_txn_view() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "flag", "0").await; // 2
    let inner = TxnRequest {
        // Sees flag = "0" even though the outer txn writes "1" first.
        compare: vec![cmp("flag", T::Value, R::Equal, Some(U::Value("0".into())))],
        success: vec![op_put("inner", "saw-old"), op_get("flag")],
        failure: vec![op_put("inner", "saw-new")],
    };
    let t = s
        .txn(
            &coffer_store::Caller::Internal,
            TxnRequest {
                success: vec![op_put("flag", "1"), op_txn(inner)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rev_of(&t.header), 3);
    assert_eq!(headers(&t), vec![Some(3), Some(0)]);
    match t.responses[1].response.as_ref().unwrap() {
        Response::ResponseTxn(n) => {
            assert!(n.succeeded);
            assert_eq!(headers(n), vec![Some(3), Some(3)]);
            match n.responses[1].response.as_ref().unwrap() {
                // ... but its ops see the outer txn's earlier write.
                Response::ResponseRange(r) => assert_eq!(r.kvs[0].value, b"1"),
                other => panic!("unexpected {other:?}"),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(get(&s, rr("inner", "")).await.kvs[0].value, b"saw-old");
}

#[tokio::test]
async fn runtime_errors_fail_the_whole_txn() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let t = TxnRequest {
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: "missing".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&coffer_store::Caller::Internal, t).await,
        Err(Error::KeyNotFound)
    ));
    let t = TxnRequest {
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: "b".into(),
                    lease: 5,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&coffer_store::Caller::Internal, t).await,
        Err(Error::LeaseNotFound)
    ));
    let mut future = rr("a", "");
    future.revision = 9;
    let t = TxnRequest {
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(Request::RequestRange(future)),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&coffer_store::Caller::Internal, t).await,
        Err(Error::FutureRev)
    ));
    assert_eq!(s.current_revision(), 1);
    assert_eq!(get(&s, rr("a", "")).await.count, 0);
}

#[tokio::test]
async fn txn_range_at_a_past_revision() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1").await; // 2
    put(&s, "a", "2").await; // 3
    let mut past = rr("a", "");
    past.revision = 2;
    let t = s
        .txn(
            &coffer_store::Caller::Internal,
            TxnRequest {
                success: vec![
                    op_put("a", "3"),
                    RequestOp {
                        request: Some(Request::RequestRange(past)),
                    },
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    match t.responses[1].response.as_ref().unwrap() {
        Response::ResponseRange(r) => {
            assert_eq!(r.kvs[0].value, b"1");
            assert_eq!(rev_of(&r.header), 4);
        }
        other => panic!("unexpected {other:?}"),
    }
}
