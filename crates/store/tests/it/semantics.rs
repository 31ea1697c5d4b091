//! Range, Put and DeleteRange semantics (reference §1.2–§1.4, §1.7).

use coffer_proto::{PutRequest, RangeRequest};
use coffer_store::{Backend, Error};

use crate::common::*;

#[tokio::test]
async fn empty_store_is_at_revision_one() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let r = get(&s, rr("a", "")).await;
    assert_eq!(rev_of(&r.header), 1);
    assert_eq!((r.count, r.kvs.len(), r.more), (0, 0, false));
    let st = s.status().await.unwrap();
    assert_eq!((st.revision, st.compact_revision), (1, 0));
    assert!(st.db_size > 0 && st.db_size_in_use > 0 && st.db_size_in_use <= st.db_size);
    assert_ne!(s.cluster_id(), 0);
    assert_ne!(s.member_id(), 0);
}

#[tokio::test]
async fn put_assigns_revisions_versions_and_prev_kv() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let p = put(&s, "a", "1").await;
    assert_eq!(rev_of(&p.header), 2);
    assert!(p.prev_kv.is_none());
    let p = s
        .put(
            &coffer_store::Caller::Internal,
            PutRequest {
                key: "a".into(),
                value: "2".into(),
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rev_of(&p.header), 3);
    let prev = p.prev_kv.unwrap();
    assert_eq!(
        (
            prev.value.as_slice(),
            prev.create_revision,
            prev.mod_revision,
            prev.version
        ),
        (&b"1"[..], 2, 2, 1)
    );
    // Same value again still writes a revision.
    put(&s, "a", "2").await;
    let r = get(&s, rr("a", "")).await;
    let kv = &r.kvs[0];
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        ),
        (&b"2"[..], 2, 4, 3, 0)
    );
    assert_eq!(rev_of(&r.header), 4);
}

#[tokio::test]
async fn delete_of_nothing_keeps_the_revision_and_tombstones_start_new_generations() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1").await;
    let r = del(&s, "zz", "").await;
    assert_eq!((r.deleted, rev_of(&r.header)), (0, 2));
    put(&s, "b", "2").await;
    put(&s, "c", "3").await;
    let r = del(&s, "a", "c").await;
    assert_eq!((r.deleted, rev_of(&r.header)), (2, 5));
    let prev: Vec<_> = r.prev_kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(prev, vec![b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(get(&s, rr("a", "")).await.count, 0);
    // History is still readable before the delete.
    let mut old = rr("a", "");
    old.revision = 4;
    let r = get(&s, old).await;
    assert_eq!((r.kvs.len(), rev_of(&r.header)), (1, 5));
    // New generation.
    put(&s, "a", "again").await;
    let kv = get(&s, rr("a", "")).await.kvs[0].clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
    // from-key and whole keyspace
    assert_eq!(keys(&get(&s, rr("\0", "\0")).await), vec!["a", "c"]);
    assert_eq!(keys(&get(&s, rr("b", "\0")).await), vec!["c"]);
    assert_eq!(get(&s, rr("c", "a")).await.count, 0);
}

#[tokio::test]
async fn range_revision_errors() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1").await;
    let mut r = rr("a", "");
    r.revision = 3;
    assert!(matches!(
        s.range(&coffer_store::Caller::Internal, r.clone()).await,
        Err(Error::FutureRev)
    ));
    r.revision = -5;
    assert_eq!(get(&s, r.clone()).await.kvs.len(), 1);
    r.revision = 1;
    assert_eq!(get(&s, r).await.kvs.len(), 0);
}

async fn abc(s: &impl Backend) {
    put(s, "a", "z").await; // 2
    put(s, "b", "y").await; // 3
    put(s, "c", "x").await; // 4
}

#[tokio::test]
async fn range_sort_limit_and_the_quirk() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    abc(&s).await;
    let base = rr("a", "\0");
    let q = |f: &dyn Fn(&mut RangeRequest)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    // The quirk: VALUE target, no order, limit 1 sorts only the first 2 keys.
    let r = get(
        &s,
        q(&|r| {
            r.sort_target = 4;
            r.limit = 1;
        }),
    )
    .await;
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["b".to_string()], true, 3)
    );
    let r = get(
        &s,
        q(&|r| {
            r.sort_target = 4;
            r.sort_order = 1;
            r.limit = 1;
        }),
    )
    .await;
    assert_eq!(keys(&r), vec!["c"]);
    // DESCEND alone = reverse key order.
    let r = get(&s, q(&|r| r.sort_order = 2)).await;
    assert_eq!(keys(&r), vec!["c", "b", "a"]);
    // MOD descend, CREATE ascend, VERSION
    let r = get(
        &s,
        q(&|r| {
            r.sort_target = 3;
            r.sort_order = 2;
        }),
    )
    .await;
    assert_eq!(keys(&r), vec!["c", "b", "a"]);
    let r = get(&s, q(&|r| r.sort_target = 2)).await;
    assert_eq!(keys(&r), vec!["a", "b", "c"]);
    put(&s, "c", "w").await;
    let r = get(
        &s,
        q(&|r| {
            r.sort_target = 1;
            r.sort_order = 2;
        }),
    )
    .await;
    assert_eq!(keys(&r)[0], "c");
    // limit/more without sort
    let r = get(&s, q(&|r| r.limit = 2)).await;
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "b".into()], true, 3)
    );
    let r = get(&s, q(&|r| r.limit = 3)).await;
    assert!(!r.more);
    // keys_only keeps everything but the value
    let r = get(&s, q(&|r| r.keys_only = true)).await;
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
    // count_only + limit: full count, no kvs, no more
    let r = get(
        &s,
        q(&|r| {
            r.count_only = true;
            r.limit = 1;
        }),
    )
    .await;
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
}

#[tokio::test]
async fn count_ignores_filters_and_limit() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    for k in ["a", "b", "c", "d", "e"] {
        put(&s, k, "v").await; // revisions 2..6
    }
    let mut r = rr("a", "\0");
    r.min_mod_revision = 4;
    r.max_mod_revision = 4;
    r.limit = 1;
    let resp = get(&s, r).await;
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["c".into()], false, 5)
    );
    let mut r = rr("a", "\0");
    r.min_create_revision = 3;
    r.limit = 1;
    let resp = get(&s, r).await;
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["b".into()], true, 5)
    );
    let mut r = rr("a", "\0");
    r.max_create_revision = 3;
    assert_eq!(keys(&get(&s, r).await), vec!["a", "b"]);
}

#[tokio::test]
async fn ignore_value_ignore_lease_and_leases() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let iv = PutRequest {
        key: "a".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert!(matches!(
        s.put(&coffer_store::Caller::Internal, iv.clone()).await,
        Err(Error::KeyNotFound)
    ));
    let il = PutRequest {
        key: "a".into(),
        value: "x".into(),
        ignore_lease: true,
        ..Default::default()
    };
    assert!(matches!(
        s.put(&coffer_store::Caller::Internal, il.clone()).await,
        Err(Error::KeyNotFound)
    ));
    let leased = PutRequest {
        key: "a".into(),
        value: "x".into(),
        lease: 7,
        ..Default::default()
    };
    assert!(matches!(
        s.put(&coffer_store::Caller::Internal, leased).await,
        Err(Error::LeaseNotFound)
    ));
    assert_eq!(s.current_revision(), 1, "failed puts must not bump");
    put(&s, "a", "orig").await;
    let p = s.put(&coffer_store::Caller::Internal, iv).await.unwrap();
    assert_eq!(rev_of(&p.header), 3);
    let kv = get(&s, rr("a", "")).await.kvs[0].clone();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"orig"[..], 2));
    s.put(&coffer_store::Caller::Internal, il).await.unwrap();
    assert_eq!(get(&s, rr("a", "")).await.kvs[0].value, b"x");
}

#[tokio::test]
async fn quota_gives_nospace_for_puts_but_deletes_pass() {
    let d = tempfile::tempdir().unwrap();
    let s = open_with(
        d.path(),
        coffer_store::StoreOptions {
            quota_backend_bytes: 1, // smaller than any file
            ..Default::default()
        },
    );
    let e = s
        .put(
            &coffer_store::Caller::Internal,
            PutRequest {
                key: "a".into(),
                value: "v".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(e, Err(Error::NoSpace)));
    assert_eq!(del(&s, "a", "").await.deleted, 0);
    let unlimited = tempfile::tempdir().unwrap();
    let s = open_with(
        unlimited.path(),
        coffer_store::StoreOptions {
            quota_backend_bytes: -1,
            ..Default::default()
        },
    );
    put(&s, "a", "v").await;
}

#[tokio::test]
async fn commit_listener_gets_plaintext_events_with_prev_kv() {
    use std::sync::{Arc, Mutex};
    struct L(Mutex<Vec<coffer_store::CommittedRevision>>);
    impl coffer_store::CommitListener for L {
        fn committed(&self, revs: &[coffer_store::CommittedRevision]) {
            self.0.lock().unwrap().extend_from_slice(revs);
        }
    }
    let l = Arc::new(L(Mutex::new(Vec::new())));
    let d = tempfile::tempdir().unwrap();
    let s = open_with(
        d.path(),
        coffer_store::StoreOptions {
            commit_listener: Some(l.clone()),
            ..Default::default()
        },
    );
    put(&s, "a", "1").await;
    put(&s, "a", "2").await;
    del(&s, "a", "").await;
    del(&s, "a", "").await; // no-op: no event
    let got = l.0.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let e = &got[1].events[0];
    assert_eq!(e.kv.as_ref().unwrap().value, b"2");
    assert_eq!(e.prev_kv.as_ref().unwrap().value, b"1");
    let e = &got[2].events[0];
    assert_eq!(e.r#type, 1);
    assert_eq!(e.kv.as_ref().unwrap().mod_revision, 4);
    assert_eq!(e.prev_kv.as_ref().unwrap().value, b"2");
}
