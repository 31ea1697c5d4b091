//! Auth in the store: changes are durable (restart and crash), requests are checked against the
//! auth state as they apply (etcd's permission table, row by row, allowed and denied), a
//! request authenticated before an auth change is refused, and a denied request leaves nothing.

use std::path::Path;

use coffer_proto::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use coffer_store::auth::{PasswordHash, PermType, Permission};
use coffer_store::watch::{Notice, WatchSpec};
use coffer_store::{AuthChange, Backend, Caller, EmbeddedStore, Error};

use crate::common::*;

const INTERNAL: &Caller = &Caller::Internal;

fn perm(t: PermType, key: &str, end: &str) -> Option<Permission> {
    Some(Permission {
        perm_type: t,
        key: key.into(),
        range_end: end.into(),
    })
}

async fn change(s: &EmbeddedStore, c: AuthChange) {
    s.auth_change(INTERNAL, c).await.unwrap();
}

/// Root, and user `u` with: READWRITE on `[a, b)`, READ on key `c`, WRITE on `[d, e)`,
/// READ from `r` on. Auth enabled. Returns `u` as a caller at the current auth revision.
async fn setup(s: &EmbeddedStore) -> Caller {
    let users = [
        ("root", "root"),
        ("u", "ra"),
        ("u", "rc"),
        ("u", "wd"),
        ("u", "rr"),
    ];
    for name in ["root", "u"] {
        change(
            s,
            AuthChange::UserAdd {
                name: name.into(),
                password_hash: Some(PasswordHash(b"$2a$10$x".to_vec())),
                no_password: false,
            },
        )
        .await;
    }
    for (role, p) in [
        ("ra", perm(PermType::ReadWrite, "a", "b")),
        ("rc", perm(PermType::Read, "c", "")),
        ("wd", perm(PermType::Write, "d", "e")),
        ("rr", perm(PermType::Read, "r", "\0")),
    ] {
        change(s, AuthChange::RoleAdd { name: role.into() }).await;
        change(
            s,
            AuthChange::RoleGrantPermission {
                role: role.into(),
                perm: p,
            },
        )
        .await;
    }
    for (user, role) in users {
        change(
            s,
            AuthChange::UserGrantRole {
                user: user.into(),
                role: role.into(),
            },
        )
        .await;
    }
    change(s, AuthChange::Enable).await;
    assert!(s.auth_enabled());
    Caller::user("u", s.auth_view().revision)
}

fn put_req(k: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn denied<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::PermissionDenied)), "{r:?}");
}

fn op_put(k: &str, prev_kv: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            prev_kv,
            ..put_req(k)
        })),
    }
}

fn op_range(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(rr(k, ""))),
    }
}

fn op_del(k: &str, prev_kv: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: k.into(),
                prev_kv,
                ..Default::default()
            },
        )),
    }
}

fn txn(compare_key: Option<&str>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: compare_key
            .map(|k| Compare {
                key: k.into(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        success,
        failure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permission_table_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let u = &setup(&s).await;
    for k in ["a1", "c", "d1", "z"] {
        s.put(INTERNAL, put_req(k)).await.unwrap();
    }

    // Range: READ on the whole range.
    s.range(u, rr("a1", "")).await.unwrap();
    s.range(u, rr("a", "b")).await.unwrap();
    s.range(u, rr("c", "")).await.unwrap();
    s.range(u, rr("r", "\0")).await.unwrap();
    denied(s.range(u, rr("a", "c")).await); // [b, c) is not covered
    denied(s.range(u, rr("d1", "")).await); // write-only
    denied(s.range(u, rr("q", "\0")).await);

    // Put: WRITE; + READ with prev_kv.
    s.put(u, put_req("a2")).await.unwrap();
    s.put(u, put_req("d2")).await.unwrap();
    denied(s.put(u, put_req("c")).await);
    denied(s.put(u, put_req("z")).await);
    s.put(
        u,
        PutRequest {
            prev_kv: true,
            ..put_req("a2")
        },
    )
    .await
    .unwrap();
    denied(
        s.put(
            u,
            PutRequest {
                prev_kv: true,
                ..put_req("d2")
            },
        )
        .await,
    );

    // Put onto a lease: + WRITE on every key already attached to it.
    let lease = s
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .id;
    s.put(
        INTERNAL,
        PutRequest {
            lease,
            ..put_req("d3")
        },
    )
    .await
    .unwrap();
    s.put(
        u,
        PutRequest {
            lease,
            ..put_req("a3")
        },
    )
    .await
    .unwrap();
    let other = s
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .id;
    s.put(
        INTERNAL,
        PutRequest {
            lease: other,
            ..put_req("z")
        },
    )
    .await
    .unwrap();
    denied(
        s.put(
            u,
            PutRequest {
                lease: other,
                ..put_req("a4")
            },
        )
        .await,
    );

    // LeaseTimeToLive with keys: READ on every attached key; without keys: nothing.
    denied(s.lease_status(u, lease, true)); // d3 is write-only
    assert!(s.lease_status(u, lease, false).unwrap().is_some());
    let readable = s
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .id;
    s.put(
        INTERNAL,
        PutRequest {
            lease: readable,
            ..put_req("a5")
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.lease_status(u, readable, true).unwrap().unwrap().keys,
        vec![b"a5".to_vec()]
    );

    // DeleteRange: WRITE on the range; + READ with prev_kv.
    let del = |k: &str, end: &str, prev_kv| DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        prev_kv,
    };
    s.delete_range(u, del("d2", "", false)).await.unwrap();
    s.delete_range(u, del("a", "b", true)).await.unwrap();
    denied(s.delete_range(u, del("d", "e", true)).await);
    denied(s.delete_range(u, del("c", "", false)).await);
    denied(s.delete_range(u, del("a", "e", false)).await);

    // LeaseRevoke: WRITE on every attached key.
    denied(s.lease_revoke(u, other).await);
    s.lease_revoke(u, lease).await.unwrap(); // a3, d3: both writable

    // Txn: READ on compares; both branches, whichever runs.
    s.txn(
        u,
        txn(Some("c"), vec![op_range("c")], vec![op_put("a1", false)]),
    )
    .await
    .unwrap();
    denied(s.txn(u, txn(Some("d1"), vec![], vec![])).await);
    denied(
        s.txn(
            u,
            txn(Some("c"), vec![op_range("c")], vec![op_put("z", false)]),
        )
        .await,
    );
    denied(s.txn(u, txn(None, vec![op_del("c", false)], vec![])).await);
    denied(s.txn(u, txn(None, vec![op_range("d1")], vec![])).await);
    denied(s.txn(u, txn(None, vec![op_del("d1", true)], vec![])).await);
    // A Put in a txn gets the standalone checks (prev_kv needs READ).
    s.txn(u, txn(None, vec![op_put("a1", true)], vec![]))
        .await
        .unwrap();
    denied(s.txn(u, txn(None, vec![op_put("d1", true)], vec![])).await);
    // Nested txns are checked (etcd 3.5.28+; 3.4 does not check them).
    let nested = |inner: TxnRequest| RequestOp {
        request: Some(request_op::Request::RequestTxn(inner)),
    };
    s.txn(
        u,
        txn(
            None,
            vec![nested(txn(None, vec![op_put("a1", false)], vec![]))],
            vec![],
        ),
    )
    .await
    .unwrap();
    denied(
        s.txn(
            u,
            txn(
                None,
                vec![],
                vec![nested(txn(None, vec![], vec![op_put("z", false)]))],
            ),
        )
        .await,
    );

    // Compact: no check at all (as etcd), even anonymous.
    let cur = s.current_revision();
    s.compact(CompactionRequest {
        revision: cur,
        physical: false,
    })
    .await
    .unwrap();

    // Watch create: READ on the range; a refusal is a cancelled create with etcd's reason.
    let hub = std::sync::Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    let spec = |k: &str, end: &str| WatchSpec {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    };
    assert_eq!(ws.create(spec("a", "b"), 0, u).await, Some(0));
    assert!(matches!(
        rx.recv().await,
        Some(Notice::Created { watch_id: 0, .. })
    ));
    assert_eq!(ws.create(spec("d", "e"), 0, u).await, None);
    match rx.recv().await {
        Some(Notice::Refused { reason, .. }) => assert_eq!(
            reason,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(ws.create(spec("a", ""), 0, &Caller::Anonymous).await, None);
    match rx.recv().await {
        Some(Notice::Refused { reason, .. }) => assert_eq!(
            reason,
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        ),
        other => panic!("{other:?}"),
    }

    // The root role bypasses everything; an unknown user and no user are refused.
    let root = &Caller::user("root", s.auth_view().revision);
    s.put(root, put_req("z")).await.unwrap();
    s.range(root, rr("\0", "\0")).await.unwrap();
    denied(
        s.put(
            &Caller::user("ghost", s.auth_view().revision),
            put_req("a1"),
        )
        .await,
    );
    let r = s.put(&Caller::Anonymous, put_req("a1")).await;
    assert!(matches!(r, Err(Error::UserEmpty)), "{r:?}");
    let r = s.range(&Caller::Anonymous, rr("a1", "")).await;
    assert!(matches!(r, Err(Error::UserEmpty)), "{r:?}");
}

/// etcd stamps each request with the auth revision it was checked at and refuses it at apply
/// if auth changed in between; the client authenticates again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_before_an_auth_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let u = setup(&s).await;
    s.put(&u, put_req("a1")).await.unwrap();
    // Any change, even one unrelated to `u`.
    change(
        &s,
        AuthChange::RoleAdd {
            name: "other".into(),
        },
    )
    .await;
    for r in [
        s.put(&u, put_req("a1")).await.map(|_| ()),
        s.range(&u, rr("a1", "")).await.map(|_| ()),
        s.delete_range(
            &u,
            DeleteRangeRequest {
                key: b"a1".to_vec(),
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
        s.txn(&u, txn(Some("a1"), vec![], vec![])).await.map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::AuthOldRevision)), "{r:?}");
        assert_eq!(r.unwrap_err().to_string(), "revision of auth store is old");
    }
    // Re-authenticated at the new revision, it works again.
    let u = Caller::user("u", s.auth_view().revision);
    s.put(&u, put_req("a1")).await.unwrap();
}

/// A denied request changes nothing: not the revision, not a key, not a watcher's view; and a
/// permitted request of the same group is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open(dir.path()));
    let u = setup(&s).await;
    let before = s.current_revision();
    // Allowed put first, then a denied op: the whole txn is refused.
    let r = s
        .txn(
            &u,
            txn(None, vec![op_put("a1", false), op_put("z", false)], vec![]),
        )
        .await;
    denied(r);
    assert_eq!(s.current_revision(), before);
    assert!(get(&*s, rr("a1", "")).await.kvs.is_empty());
    // Denied and permitted requests racing into one group.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (s, u) = (std::sync::Arc::clone(&s), u.clone());
        tasks.push(tokio::spawn(async move {
            let k = if i % 2 == 0 {
                format!("a{i}")
            } else {
                format!("z{i}")
            };
            s.put(&u, put_req(&k)).await.map(|_| ())
        }));
    }
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i % 2 == 0 {
            r.unwrap();
            ok += 1;
        } else {
            denied(r);
        }
    }
    assert_eq!(s.current_revision(), before + ok);
    assert!(get(&*s, rr("z", "\0")).await.kvs.is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// An acknowledged auth change survives a clean restart, and a crash: the engine file as of
/// its last durable commit plus the log must bring it back (replayed by the same apply), with
/// the keyspace writes around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_survive_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // The engine file as of its last durable commit (the open's).
    let durable = std::fs::read(dir.path().join(coffer_store::DB_FILE)).unwrap();
    put(&s, "before", "1").await;
    let u = setup(&s).await;
    put(&s, "after", "1").await;
    let view = s.auth_view();
    let Caller::User { auth_revision, .. } = &u else {
        panic!("{u:?}")
    };
    assert_eq!(view.revision, *auth_revision);
    // The crash: log as written, engine file as last synced.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    std::fs::write(crashed.path().join(coffer_store::DB_FILE), &durable).unwrap();
    s.close();
    drop(s);

    for d in [dir.path(), crashed.path()] {
        let s = open(d);
        assert_eq!(*s.auth_view(), *view, "{}", d.display());
        assert!(s.auth_view().is_admin("root"));
        assert_eq!(s.current_revision(), 3);
        denied(s.put(&u, put_req("z")).await);
        s.put(&u, put_req("a1")).await.unwrap();
        s.close();
    }
}

/// A store that never had an auth change (every data directory made before auth existed)
/// opens with auth disabled at revision 1, and anonymous requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_auth_opens_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "k", "v").await;
    s.close();
    drop(s);
    let s = open(dir.path());
    assert!(!s.auth_enabled());
    assert_eq!(s.auth_view().revision, 1);
    s.put(&Caller::Anonymous, put_req("k")).await.unwrap();
    s.range(
        &Caller::Anonymous,
        RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// Who may change auth, through the store: anyone while disabled, then admins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_change_auth_once_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let u = setup(&s).await;
    let rev = s.auth_view().revision;
    let c = || AuthChange::RoleAdd { name: "x".into() };
    let r = s.auth_change(&u, c()).await;
    assert!(matches!(r, Err(Error::PermissionDenied)), "{r:?}");
    let r = s.auth_change(&Caller::Anonymous, c()).await;
    assert!(matches!(r, Err(Error::UserEmpty)), "{r:?}");
    assert_eq!(
        s.auth_view().revision,
        rev,
        "a refused change bumps nothing"
    );
    let done = s
        .auth_change(&Caller::user("root", rev), c())
        .await
        .unwrap();
    assert_eq!(done.auth_revision, rev + 1);
    assert_eq!(done.revision, s.current_revision());
    // A no-op answers the unchanged revision.
    let again = s
        .auth_change(&Caller::user("root", rev + 1), AuthChange::Enable)
        .await
        .unwrap();
    assert_eq!(again.auth_revision, rev + 1);
}

/// The auth state goes into a snapshot's `auth`, `authUsers` and `authRoles` buckets and
/// comes back whole on restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_keeps_the_auth_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    setup(&s).await;
    change(
        &s,
        AuthChange::UserAdd {
            name: "cn-only".into(),
            password_hash: None,
            no_password: true,
        },
    )
    .await;
    let file = dir.path().join("snap.db");
    s.snapshot_to(&file).unwrap();
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    let info = coffer_store::snapshot::restore(
        &file,
        &target,
        std::sync::Arc::new(XorTestSealer),
        coffer_store::snapshot::RestoreOptions {
            skip_hash_check: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((info.users, info.roles), (3, 4));
    let r = open(&target);
    assert_eq!(*r.auth_view(), *s.auth_view());
}
