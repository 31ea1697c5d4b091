//! Authentication and permissions over real sockets: etcd 3.5.21's permission table over every
//! RPC for a user with READ on `/a/`, a user with WRITE on `/b/`, root and no user (allowed and
//! denied, exact code and text), then the refusals of `Authenticate` and of tokens (wrong
//! password, unknown user, expired simple token, forged JWT, the failure limit, a `no_password`
//! user) and the client certificate's Common Name as the user.

use coffer_proto::auth_client::AuthClient;
use coffer_proto::authpb::{permission::Type as PermType, Permission, UserAddOptions};
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::{
    compare, watch_request::RequestUnion, AuthDisableRequest, AuthEnableRequest,
    AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthStatusRequest, AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest, AuthenticateRequest,
    Compare, DefragmentRequest, HashKvRequest, HashRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberListRequest, MemberRemoveRequest, SnapshotRequest, WatchCreateRequest, WatchRequest,
};
use coffer_server::auth::password::BcryptCost;
use tokio_stream::StreamExt;

use super::*;

const EMPTY: (Code, &str) = (Code::InvalidArgument, "etcdserver: user name is empty");
const DENIED: (Code, &str) = (Code::PermissionDenied, "etcdserver: permission denied");
const BAD_TOKEN: (Code, &str) = (Code::Unauthenticated, "etcdserver: invalid auth token");
const AUTH_FAILED: (Code, &str) = (
    Code::InvalidArgument,
    "etcdserver: authentication failed, invalid user ID or password",
);
/// etcd 3.5's Maintenance server sends the auth store's error unconverted.
const M_DENIED: (Code, &str) = (Code::Unknown, "auth: permission denied");
const M_EMPTY: (Code, &str) = (Code::Unknown, "auth: user name is empty");

/// `msg` with the token (none for `None`).
fn with<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("token", t.parse().unwrap());
    }
    req
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, want: (Code, &str), what: &str) {
    match r {
        Ok(v) => panic!("{what}: allowed, want {want:?}: {v:?}"),
        Err(s) => {
            assert_eq!((s.code(), s.message()), want, "{what}");
        }
    }
}

fn expect_ok<T>(r: Result<T, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|s| panic!("{what}: refused: {:?} {}", s.code(), s.message()))
}

async fn start_auth(configure: impl FnOnce(&mut ServerConfig)) -> Running {
    start_configured(0, |c| {
        c.max_txn_ops = 128;
        c.auth.bcrypt_cost = BcryptCost::new(4).unwrap();
        configure(c);
    })
    .await
}

fn add(name: &str, password: &str) -> AuthUserAddRequest {
    AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        ..Default::default()
    }
}

fn prefix_perm(t: PermType, prefix: &str) -> Permission {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    Permission {
        perm_type: t as i32,
        key: prefix.into(),
        range_end: end,
    }
}

/// root (root role), `ra` (READ on `/a/`), `wb` (WRITE on `/b/`), `np` (no password); keys
/// `/a/1` and `/b/1`; auth enabled.
async fn setup(ch: &Channel) {
    let mut auth = AuthClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    kv.put(put("/a/1", b"a")).await.unwrap();
    kv.put(put("/b/1", b"b")).await.unwrap();
    for (name, pw) in [("root", "rootpw"), ("ra", "rapw"), ("wb", "wbpw")] {
        auth.user_add(add(name, pw)).await.unwrap();
    }
    auth.user_add(AuthUserAddRequest {
        name: "np".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await
    .unwrap();
    for (role, perm) in [
        ("reader", prefix_perm(PermType::Read, "/a/")),
        ("writer", prefix_perm(PermType::Write, "/b/")),
    ] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm),
        })
        .await
        .unwrap();
    }
    for (user, role) in [("root", "root"), ("ra", "reader"), ("wb", "writer")] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
}

async fn login(ch: &Channel, name: &str, password: &str) -> String {
    AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn op_put(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put(key, b"v"))),
    }
}

fn op_range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range(key, ""))),
    }
}

fn txn(compare_key: Option<&str>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: compare_key
            .map(|k| Compare {
                key: k.into(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Greater as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        success,
        failure,
    }
}

/// Opens a watch on `key` as `token` and returns its first response.
async fn watch_first(ch: &Channel, token: Option<&str>, key: &str) -> coffer_proto::WatchResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = WatchClient::new(ch.clone())
        .watch(with(token, tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(tx);
    first
}

#[tokio::test]
async fn the_permission_table_over_every_rpc() {
    let r = start_auth(|_| {}).await;
    let ch = channel(&r).await;
    setup(&ch).await;
    let root = login(&ch, "root", "rootpw").await;
    let ra = login(&ch, "ra", "rapw").await;
    let wb = login(&ch, "wb", "wbpw").await;
    let (root, ra, wb) = (Some(root.as_str()), Some(ra.as_str()), Some(wb.as_str()));
    let mut kv = KvClient::new(ch.clone());

    // Range: READ on the whole range.
    for (who, t, key, end, want) in [
        ("ra", ra, "/a/1", "", None),
        ("ra", ra, "/a/", "/a0", None),
        ("ra", ra, "/b/1", "", Some(DENIED)),
        ("ra", ra, "/a/", "/b0", Some(DENIED)),
        ("wb", wb, "/b/1", "", Some(DENIED)),
        ("root", root, "/", "/z", None),
        ("none", None, "/a/1", "", Some(EMPTY)),
        ("bad", Some("nope.1"), "/a/1", "", Some(BAD_TOKEN)),
    ] {
        let res = kv.range(with(t, range(key, end))).await;
        let what = format!("range {key}..{end} as {who}");
        match want {
            None => drop(expect_ok(res, &what)),
            Some(w) => expect_err(res, w, &what),
        }
    }
    // Put: WRITE (and READ for prev_kv).
    for (who, t, key, prev_kv, want) in [
        ("wb", wb, "/b/2", false, None),
        ("wb", wb, "/b/2", true, Some(DENIED)),
        ("wb", wb, "/a/2", false, Some(DENIED)),
        ("ra", ra, "/a/2", false, Some(DENIED)),
        ("root", root, "/c", true, None),
        ("none", None, "/b/2", false, Some(EMPTY)),
    ] {
        let req = PutRequest {
            prev_kv,
            ..put(key, b"x")
        };
        let res = kv.put(with(t, req)).await;
        let what = format!("put {key} prev_kv={prev_kv} as {who}");
        match want {
            None => drop(expect_ok(res, &what)),
            Some(w) => expect_err(res, w, &what),
        }
    }
    // DeleteRange: WRITE on the range.
    let del = |k: &str, e: &str| DeleteRangeRequest {
        key: k.into(),
        range_end: e.into(),
        ..Default::default()
    };
    expect_ok(
        kv.delete_range(with(wb, del("/b/2", ""))).await,
        "wb del /b/2",
    );
    expect_err(
        kv.delete_range(with(ra, del("/a/1", ""))).await,
        DENIED,
        "ra del",
    );
    expect_err(
        kv.delete_range(with(wb, del("/b/", "/c"))).await,
        DENIED,
        "wb del /b/../c",
    );
    expect_err(
        kv.delete_range(with(None, del("/b/1", ""))).await,
        EMPTY,
        "anonymous del",
    );

    // Txn: compares READ, both branches checked, nested txns checked.
    let ok = kv
        .txn(with(
            ra,
            txn(Some("/a/1"), vec![op_range("/a/1")], vec![op_range("/a/2")]),
        ))
        .await;
    assert!(expect_ok(ok, "ra read-only txn").into_inner().succeeded);
    expect_err(
        kv.txn(with(wb, txn(Some("/a/1"), vec![op_put("/b/3")], vec![])))
            .await,
        DENIED,
        "wb compare on /a/",
    );
    expect_err(
        kv.txn(with(
            wb,
            txn(None, vec![op_put("/b/3")], vec![op_put("/a/3")]),
        ))
        .await,
        DENIED,
        "wb failure branch writes /a/ (not taken)",
    );
    expect_err(
        kv.txn(with(
            ra,
            txn(None, vec![op_range("/a/1")], vec![op_range("/b/1")]),
        ))
        .await,
        DENIED,
        "ra failure branch reads /b/ (not taken)",
    );
    let nested = RequestOp {
        request: Some(Request::RequestTxn(txn(None, vec![op_put("/a/4")], vec![]))),
    };
    expect_err(
        kv.txn(with(wb, txn(None, vec![op_put("/b/4"), nested], vec![])))
            .await,
        DENIED,
        "wb nested txn writes /a/",
    );
    expect_ok(
        kv.txn(with(
            wb,
            txn(None, vec![op_put("/b/4")], vec![op_put("/b/5")]),
        ))
        .await,
        "wb txn on /b/",
    );
    expect_err(
        kv.txn(with(None, txn(None, vec![op_range("/a/1")], vec![])))
            .await,
        EMPTY,
        "anonymous txn",
    );

    // Compact: no permission needed, not even a user.
    expect_ok(
        kv.compact(with(
            None,
            CompactionRequest {
                revision: 1,
                physical: false,
            },
        ))
        .await,
        "anonymous compact",
    );

    // Leases: grant, keep-alive, leases need nothing; revoke needs WRITE on attached keys,
    // time-to-live with keys READ on them.
    let mut lease = LeaseClient::new(ch.clone());
    let id = expect_ok(
        lease
            .lease_grant(with(None, LeaseGrantRequest { ttl: 600, id: 0 }))
            .await,
        "anonymous lease grant",
    )
    .into_inner()
    .id;
    kv.put(with(
        root,
        PutRequest {
            lease: id,
            ..put("/a/leased", b"l")
        },
    ))
    .await
    .unwrap();
    expect_ok(
        lease.lease_leases(with(None, LeaseLeasesRequest {})).await,
        "anonymous leases",
    );
    let ka = lease
        .lease_keep_alive(with(
            None,
            tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]),
        ))
        .await;
    let mut ka = expect_ok(ka, "anonymous keep-alive").into_inner();
    assert!(ka.next().await.unwrap().unwrap().ttl > 0);
    let ttl = |keys| LeaseTimeToLiveRequest { id, keys };
    let got = expect_ok(
        lease.lease_time_to_live(with(ra, ttl(true))).await,
        "ra ttl keys",
    );
    assert_eq!(got.into_inner().keys, vec![b"/a/leased".to_vec()]);
    expect_err(
        lease.lease_time_to_live(with(wb, ttl(true))).await,
        DENIED,
        "wb ttl keys",
    );
    expect_ok(
        lease.lease_time_to_live(with(wb, ttl(false))).await,
        "wb ttl without keys",
    );
    expect_err(
        lease
            .lease_revoke(with(ra, LeaseRevokeRequest { id }))
            .await,
        DENIED,
        "ra revoke",
    );
    expect_err(
        lease
            .lease_revoke(with(wb, LeaseRevokeRequest { id }))
            .await,
        DENIED,
        "wb revoke",
    );
    expect_err(
        lease
            .lease_revoke(with(None, LeaseRevokeRequest { id }))
            .await,
        EMPTY,
        "anon revoke",
    );
    expect_ok(
        lease
            .lease_revoke(with(root, LeaseRevokeRequest { id }))
            .await,
        "root revoke",
    );

    // Watch: READ on the range; a refusal is a cancelled create.
    let created = watch_first(&ch, ra, "/a/1").await;
    assert!(created.created && !created.canceled, "{created:?}");
    for (who, t, want) in [
        (
            "wb",
            wb,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        ),
        (
            "none",
            None,
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
        ),
    ] {
        let refused = watch_first(&ch, t, "/a/1").await;
        assert!(refused.created && refused.canceled, "{who}: {refused:?}");
        assert_eq!(refused.cancel_reason, want, "{who}");
    }
    let bad = WatchClient::new(ch.clone())
        .watch(with(
            Some("nope.1"),
            tokio_stream::iter(Vec::<WatchRequest>::new()),
        ))
        .await;
    expect_err(bad.map(|_| ()), BAD_TOKEN, "watch with a bad token");

    // Maintenance: Status and Alarm need nothing; Hash, HashKV, Defragment, Snapshot admin.
    let mut m = MaintenanceClient::new(ch.clone());
    expect_ok(
        m.status(with(None, StatusRequest {})).await,
        "anonymous status",
    );
    expect_ok(
        m.alarm(with(None, AlarmRequest::default())).await,
        "anonymous alarm get",
    );
    expect_err(
        m.status(with(Some("nope.1"), StatusRequest {})).await,
        BAD_TOKEN,
        "bad token status",
    );
    expect_err(m.hash(with(ra, HashRequest {})).await, M_DENIED, "ra hash");
    expect_err(
        m.hash(with(None, HashRequest {})).await,
        M_EMPTY,
        "anonymous hash",
    );
    expect_err(
        m.hash_kv(with(wb, HashKvRequest { revision: 0 })).await,
        M_DENIED,
        "wb hashkv",
    );
    expect_err(
        m.defragment(with(ra, DefragmentRequest {})).await,
        M_DENIED,
        "ra defrag",
    );
    expect_err(
        m.snapshot(with(ra, SnapshotRequest {})).await.map(|_| ()),
        M_DENIED,
        "ra snapshot",
    );
    expect_ok(m.hash(with(root, HashRequest {})).await, "root hash");
    expect_ok(
        m.hash_kv(with(root, HashKvRequest { revision: 0 })).await,
        "root hashkv",
    );
    expect_ok(
        m.defragment(with(root, DefragmentRequest {})).await,
        "root defrag",
    );
    let mut snap = expect_ok(
        m.snapshot(with(root, SnapshotRequest {})).await,
        "root snapshot",
    )
    .into_inner();
    assert!(snap.next().await.unwrap().is_ok());
    drop(snap);

    // Cluster: MemberList needs nothing, changes are admin (root then gets the member answer).
    let mut c = ClusterClient::new(ch.clone());
    expect_ok(
        c.member_list(with(None, MemberListRequest::default()))
            .await,
        "anon member list",
    );
    let remove = || MemberRemoveRequest { id: 1 };
    expect_err(
        c.member_remove(with(ra, remove())).await,
        DENIED,
        "ra member remove",
    );
    expect_err(
        c.member_remove(with(None, remove())).await,
        EMPTY,
        "anon member remove",
    );
    expect_err(
        c.member_add(with(
            wb,
            MemberAddRequest {
                peer_ur_ls: vec!["http://10.0.0.1:2380".into()],
                is_learner: false,
            },
        ))
        .await,
        DENIED,
        "wb member add",
    );
    expect_err(
        c.member_remove(with(root, remove())).await,
        (Code::NotFound, "etcdserver: member not found"),
        "root member remove of an unknown id",
    );

    // Auth: admin, except UserGet of oneself and RoleGet of a held role.
    let mut a = AuthClient::new(ch.clone());
    let user_get = |n: &str| AuthUserGetRequest { name: n.into() };
    let role_get = |n: &str| AuthRoleGetRequest { role: n.into() };
    let roles = expect_ok(a.user_get(with(ra, user_get("ra"))).await, "ra gets itself");
    assert_eq!(roles.into_inner().roles, vec!["reader".to_owned()]);
    expect_err(
        a.user_get(with(ra, user_get("wb"))).await,
        DENIED,
        "ra gets wb",
    );
    expect_err(
        a.user_get(with(None, user_get("wb"))).await,
        EMPTY,
        "anonymous user get",
    );
    let perms = expect_ok(
        a.role_get(with(ra, role_get("reader"))).await,
        "ra gets its role",
    );
    assert_eq!(
        perms.into_inner().perm,
        vec![prefix_perm(PermType::Read, "/a/")]
    );
    expect_err(
        a.role_get(with(ra, role_get("writer"))).await,
        DENIED,
        "ra gets writer",
    );
    expect_err(
        a.user_list(with(ra, AuthUserListRequest {})).await,
        DENIED,
        "ra user list",
    );
    expect_err(
        a.role_list(with(wb, AuthRoleListRequest {})).await,
        DENIED,
        "wb role list",
    );
    expect_err(
        a.auth_status(with(ra, AuthStatusRequest {})).await,
        DENIED,
        "ra auth status",
    );
    expect_err(
        a.user_add(with(ra, add("eve", "x"))).await,
        DENIED,
        "ra user add",
    );
    expect_err(
        a.auth_disable(with(wb, AuthDisableRequest {})).await,
        DENIED,
        "wb auth disable",
    );
    let users = expect_ok(
        a.user_list(with(root, AuthUserListRequest {})).await,
        "root user list",
    );
    assert_eq!(users.into_inner().users, ["np", "ra", "root", "wb"]);
    let status = expect_ok(
        a.auth_status(with(root, AuthStatusRequest {})).await,
        "root status",
    );
    let status = status.into_inner();
    assert!(status.enabled);
    assert!(status.auth_revision > 1, "{status:?}");
    assert!(status.header.unwrap().revision > 1);

    // grpc.health answers without a token, and with a bad one.
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for token in [None, Some("nope.1")] {
        let check = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let resp = expect_ok(h.check(with(token, check)).await, "health");
        assert_eq!(resp.into_inner().status, 1, "SERVING");
    }

    // A password change drops the user's simple tokens; the new password works.
    expect_ok(
        a.user_change_password(with(
            root,
            AuthUserChangePasswordRequest {
                name: "ra".into(),
                password: "rapw2".into(),
                hashed_password: String::new(),
            },
        ))
        .await,
        "root changes ra's password",
    );
    expect_err(
        kv.range(with(ra, range("/a/1", ""))).await,
        BAD_TOKEN,
        "ra's old token",
    );
    let ra2 = login(&ch, "ra", "rapw2").await;
    expect_ok(
        kv.range(with(Some(&ra2), range("/a/1", ""))).await,
        "ra's new token",
    );
    // Deleting a user drops its tokens.
    expect_ok(
        a.user_delete(with(root, AuthUserDeleteRequest { name: "wb".into() }))
            .await,
        "delete wb",
    );
    expect_err(
        kv.range(with(wb, range("/b/1", ""))).await,
        BAD_TOKEN,
        "deleted wb's token",
    );
    // Disabling auth drops every token; requests then need none.
    expect_ok(
        a.auth_disable(with(root, AuthDisableRequest {})).await,
        "root disables",
    );
    expect_ok(
        kv.put(with(None, put("/z", b"z"))).await,
        "anonymous put after disable",
    );
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
    expect_err(
        kv.range(with(root, range("/a/1", ""))).await,
        BAD_TOKEN,
        "root's token after disable",
    );
    shutdown(r).await;
}

#[tokio::test]
async fn authenticate_refusals() {
    let r = start_auth(|_| {}).await;
    let ch = channel(&r).await;
    let mut a = AuthClient::new(ch.clone());
    let auth = |name: &str, password: &str| AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    expect_err(
        a.authenticate(auth("root", "x")).await,
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        "while disabled",
    );
    // A user added with etcd 3.5's hashed_password (base64 of a bcrypt hash); a password
    // bcrypt cannot take is refused as Go's bcrypt refuses it.
    let hash = coffer_server::auth::password::hash(
        coffer_server::auth::Secret::new("hp-pw"),
        BcryptCost::new(4).unwrap(),
    )
    .await
    .unwrap();
    use base64::Engine as _;
    a.user_add(AuthUserAddRequest {
        name: "hp".into(),
        hashed_password: base64::engine::general_purpose::STANDARD.encode(hash),
        ..Default::default()
    })
    .await
    .unwrap();
    expect_err(
        a.user_add(add("long", &"x".repeat(73))).await,
        (Code::Unknown, "bcrypt: password length exceeds 72 bytes"),
        "a 73-byte password",
    );
    setup(&ch).await;
    expect_ok(
        a.authenticate(auth("hp", "hp-pw")).await,
        "the hashed_password user",
    );
    expect_err(
        a.authenticate(auth("ra", "wrong")).await,
        AUTH_FAILED,
        "wrong password",
    );
    expect_err(
        a.authenticate(auth("nosuch", "rapw")).await,
        AUTH_FAILED,
        "unknown user",
    );
    expect_err(
        a.authenticate(auth("np", "")).await,
        (
            Code::Unknown,
            "auth: authentication failed, password was given for no password user",
        ),
        "no_password user",
    );
    // The failure limit (5 failures per user name and per address, then one a second): the
    // three failures above counted for this address, so the third bad try as wb is refused
    // before its password is checked, and so is then the right password.
    for i in 0..2 {
        expect_err(
            a.authenticate(auth("wb", "bad")).await,
            AUTH_FAILED,
            &format!("wb try {i}"),
        );
    }
    let limited = a.authenticate(auth("wb", "wbpw")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited
            .message()
            .starts_with("etcdserver: too many failed authentications, retry in "),
        "{limited:?}"
    );
    shutdown(r).await;
}

#[tokio::test]
async fn a_simple_token_expires_after_its_ttl() {
    let r = start_auth(|c| c.auth.token_ttl = Duration::from_secs(1)).await;
    let ch = channel(&r).await;
    setup(&ch).await;
    let token = login(&ch, "ra", "rapw").await;
    let mut kv = KvClient::new(ch.clone());
    // Each use restarts the lifetime.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        expect_ok(
            kv.range(with(Some(&token), range("/a/1", ""))).await,
            "in use",
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_err(
        kv.range(with(Some(&token), range("/a/1", ""))).await,
        BAD_TOKEN,
        "expired",
    );
    shutdown(r).await;
}

#[tokio::test]
async fn a_jwt_with_a_bad_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, b"a secret of thirty-two bytes....").unwrap();
    let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", key.display());
    let r = start_auth(|c| {
        c.auth.token = coffer_server::auth::token::TokenSpec::parse(&spec).unwrap();
    })
    .await;
    let ch = channel(&r).await;
    setup(&ch).await;
    let token = login(&ch, "ra", "rapw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let mut kv = KvClient::new(ch.clone());
    expect_ok(
        kv.range(with(Some(&token), range("/a/1", ""))).await,
        "the JWT",
    );
    // Flip one character of the signature.
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.to_owned().into_bytes();
    sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
    let forged = format!("{head}.{}", String::from_utf8(sig).unwrap());
    expect_err(
        kv.range(with(Some(&forged), range("/a/1", ""))).await,
        BAD_TOKEN,
        "forged",
    );
    // A JWT carries the auth revision it was issued at: after an auth change it is old.
    AuthClient::new(ch.clone())
        .role_add(with(
            Some(&login(&ch, "root", "rootpw").await),
            AuthRoleAddRequest { name: "x".into() },
        ))
        .await
        .unwrap();
    expect_err(
        kv.range(with(Some(&token), range("/a/1", ""))).await,
        (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
        "a JWT from before the change",
    );
    shutdown(r).await;
}

/// The client certificate's Common Name names the user when no token is given; a token wins.
/// The TLS transport puts the Common Name into the request's `Peer`; here the test does.
#[tokio::test]
async fn the_certificate_common_name_is_the_user() {
    use coffer_proto::auth_server::Auth;
    use coffer_proto::kv_server::Kv;
    use coffer_server::auth::service::AuthService;
    use coffer_server::kv::KvService;
    use coffer_server::peer::Peer;
    let r = start_auth(|_| {}).await;
    let ch = channel(&r).await;
    setup(&ch).await;
    let mut config = ServerConfig::new(r.cluster_id, r.member_id);
    config.auth.bcrypt_cost = BcryptCost::new(4).unwrap();
    // Without client certificate authentication a Common Name names nobody.
    let no_cert_auth = KvService::new(
        r.store.clone(),
        coffer_server::state::Shared::new(config.clone()),
    );
    config.tls = Some(coffer_server::TlsConfig {
        client_cert_auth: true,
        ..Default::default()
    });
    let shared = coffer_server::state::Shared::new(config);
    let kv = KvService::new(r.store.clone(), shared.clone());
    let auth = AuthService::new(r.store.clone(), shared);
    let as_cn = |cn: Option<&str>, token: Option<&str>, key: &str| {
        let mut req = with(token, range(key, ""));
        req.extensions_mut().insert(Peer {
            addr: Some("127.0.0.1:4000".parse().unwrap()),
            common_name: cn.map(Into::into),
            tls: true,
        });
        req
    };
    expect_ok(
        kv.range(as_cn(Some("ra"), None, "/a/1")).await,
        "CN ra reads /a/",
    );
    expect_err(
        no_cert_auth.range(as_cn(Some("ra"), None, "/a/1")).await,
        EMPTY,
        "CN ra without --client-cert-auth",
    );
    expect_err(
        kv.range(as_cn(Some("ra"), None, "/b/1")).await,
        DENIED,
        "CN ra reads /b/",
    );
    expect_err(
        kv.range(as_cn(Some("ghost"), None, "/a/1")).await,
        DENIED,
        "CN of no user",
    );
    expect_err(kv.range(as_cn(None, None, "/a/1")).await, EMPTY, "no CN");
    // The no_password user exists for certificates: it reads nothing, but is a user.
    expect_err(
        kv.range(as_cn(Some("np"), None, "/a/1")).await,
        DENIED,
        "CN np",
    );
    let token = auth
        .authenticate(tonic::Request::new(AuthenticateRequest {
            name: "wb".into(),
            password: "wbpw".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    expect_err(
        kv.range(as_cn(Some("ra"), Some(&token), "/a/1")).await,
        DENIED,
        "the token (wb) wins over the CN (ra)",
    );
    expect_err(
        kv.range(as_cn(Some("ra"), Some("nope.1"), "/a/1")).await,
        BAD_TOKEN,
        "a bad token is not replaced by the CN",
    );
    shutdown(r).await;
}
