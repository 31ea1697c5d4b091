//! The server over real sockets with the real embedded store and the real keyspace (default
//! key in memory): headers, every error path a client can reach through the wire, the
//! Maintenance and Cluster answers, limits, health, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coffer_proto::{
    alarm_request::AlarmAction, cluster_client::ClusterClient, downgrade_request::DowngradeAction,
    kv_client::KvClient, maintenance_client::MaintenanceClient, request_op::Request, AlarmRequest,
    AlarmType, CompactionRequest, DeleteRangeRequest, DowngradeRequest, HashKvRequest,
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use coffer_seal::{DefaultKey, Keyspace, RandomSource, SecretBytes, SystemRandom};
use coffer_server::ServerConfig;
use coffer_store::{EmbeddedStore, StoreOptions};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

mod auth;
mod http;
mod limits;
mod tls;
mod transport;

struct Running {
    endpoint: String,
    cluster_id: u64,
    member_id: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), coffer_server::ServeError>>,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

async fn start(max_request_bytes: usize) -> Running {
    start_with_quota(max_request_bytes, 0).await
}

async fn start_with_quota(max_request_bytes: usize, quota_backend_bytes: i64) -> Running {
    start_configured(quota_backend_bytes, |c| {
        c.max_request_bytes = max_request_bytes
    })
    .await
}

/// A fresh store in `dir/data` with a fixed default key in memory.
fn open_store(dir: &std::path::Path, quota_backend_bytes: i64) -> Arc<EmbeddedStore> {
    let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
    let key = DefaultKey::from_secret(SecretBytes::new(vec![7u8; 32])).unwrap();
    let keyspace =
        Keyspace::default_only(Arc::new(key.key_service(rng.clone()).unwrap()), rng).unwrap();
    Arc::new(
        EmbeddedStore::open(
            &dir.join("data"),
            Arc::new(keyspace),
            StoreOptions {
                quota_backend_bytes,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    )
}

/// A server on the default limits (but `--max-txn-ops 4`), changed by `configure`.
async fn start_configured(
    quota_backend_bytes: i64,
    configure: impl FnOnce(&mut ServerConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), quota_backend_bytes);
    let mut config = ServerConfig::new(store.cluster_id(), store.member_id());
    config.name = "it".into();
    config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
    config.advertise_client_urls = vec!["http://127.0.0.1:9".into()];
    config.max_txn_ops = 4;
    configure(&mut config);
    let listeners = coffer_server::bind(&config).await.unwrap();
    let addr = listeners.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(coffer_server::serve_on(
        listeners,
        config.clone(),
        store.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        endpoint: format!("http://{addr}"),
        cluster_id: config.cluster_id,
        member_id: config.member_id,
        stop: Some(tx),
        task,
        store,
        _dir: dir,
    }
}

async fn channel(r: &Running) -> Channel {
    Channel::from_shared(r.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn assert_status(err: tonic::Status, code: Code, msg: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(err.message(), msg);
}

#[tokio::test]
async fn kv_headers_and_errors_over_the_wire() {
    let r = start(4096).await;
    let mut kv = KvClient::new(channel(&r).await).max_decoding_message_size(usize::MAX);

    let resp = kv.put(put("a", b"1")).await.unwrap().into_inner();
    let h = resp.header.unwrap();
    assert_eq!(h.cluster_id, r.cluster_id);
    assert_eq!(h.member_id, r.member_id);
    assert_eq!(h.raft_term, 2);
    assert_eq!(h.revision, 2);

    let got = kv
        .range(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"1");
    assert_eq!(got.header.unwrap().member_id, r.member_id);

    assert_status(
        kv.range(RangeRequest::default()).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        kv.put(PutRequest {
            key: "a".into(),
            value: b"x".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        kv.put(PutRequest {
            key: "missing".into(),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        kv.delete_range(DeleteRangeRequest::default())
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let op = |k: &str| RequestOp {
        request: Some(Request::RequestPut(put(k, b"v"))),
    };
    assert_status(
        kv.txn(TxnRequest {
            compare: vec![],
            success: vec![op("a"), op("a")],
            failure: vec![],
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_status(
        kv.txn(TxnRequest {
            compare: vec![],
            success: (0..5).map(|i| op(&format!("k{i}"))).collect(),
            failure: vec![],
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_status(
        kv.range(RangeRequest {
            key: "a".into(),
            revision: 100,
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    kv.put(put("a", b"2")).await.unwrap();
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .unwrap();
    assert_status(
        kv.range(RangeRequest {
            key: "a".into(),
            revision: 2,
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );

    // Size limits: over max-request-bytes → etcd's error; a read-only txn has no limit;
    // over max + 512 KiB → gRPC's own RESOURCE_EXHAUSTED.
    assert_status(
        kv.put(put("big", &[0u8; 5000])).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let big_key = "r".repeat(5000);
    kv.txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: big_key.into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    })
    .await
    .unwrap();
    let err = kv
        .put(put("huge", &vec![0u8; 4096 + 512 * 1024 + 10]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.message(),
        format!(
            "grpc: received message larger than max ({} vs. {})",
            put("huge", &vec![0u8; 4096 + 512 * 1024 + 10]).encoded_len(),
            4096 + 512 * 1024
        )
    );

    // Auth is served: a fresh store has auth disabled at auth revision 1.
    let mut auth = coffer_proto::auth_client::AuthClient::new(channel(&r).await);
    let status = auth
        .auth_status(coffer_proto::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.enabled);
    assert_eq!(status.auth_revision, 1);
    assert_eq!(status.header.unwrap().member_id, r.member_id);

    shutdown(r).await;
}

#[tokio::test]
async fn maintenance_and_cluster() {
    let r = start(1 << 20).await;
    let ch = channel(&r).await;
    let mut m = MaintenanceClient::new(ch.clone());
    let mut c = ClusterClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    kv.put(put("x", b"y")).await.unwrap();

    let st = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.version, "3.5.21");
    assert_eq!(st.leader, r.member_id);
    assert_eq!(st.raft_term, 2);
    assert!(st.db_size > 0);
    assert_eq!(st.header.unwrap().revision, 2);
    assert!(st.raft_index >= 2);
    assert!(st.errors.is_empty());

    let members = c
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id, r.member_id);
    assert_eq!(members[0].name, "it");
    assert_eq!(members[0].client_ur_ls, vec!["http://127.0.0.1:9"]);
    assert!(!members[0].peer_ur_ls.is_empty());

    assert_status(
        c.member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://10.0.0.2:2380".into()],
            is_learner: false,
        })
        .await
        .unwrap_err(),
        Code::Unimplemented,
        "coffer: a single-member server cannot add members; Coffer always runs as one member: \
         for a standby, copy it with `etcdctl snapshot save` and `coffer snapshot restore`, or \
         use etcd for a multi-member cluster",
    );
    assert_status(
        c.member_add(MemberAddRequest {
            peer_ur_ls: vec!["10.0.0.2".into()],
            is_learner: false,
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    assert_status(
        c.member_remove(MemberRemoveRequest { id: 12345 })
            .await
            .unwrap_err(),
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        c.member_promote(MemberPromoteRequest { id: r.member_id })
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );

    m.move_leader(MoveLeaderRequest {
        target_id: r.member_id,
    })
    .await
    .unwrap();
    assert_status(
        m.move_leader(MoveLeaderRequest { target_id: 1 })
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    assert_status(
        m.downgrade(DowngradeRequest {
            action: DowngradeAction::Cancel as i32,
            version: String::new(),
        })
        .await
        .unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: no inflight downgrade job",
    );
    assert_status(
        m.downgrade(DowngradeRequest {
            action: DowngradeAction::Validate as i32,
            version: "3.4".into(),
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: wrong downgrade target version format",
    );
    assert_status(
        m.downgrade(DowngradeRequest {
            action: DowngradeAction::Enable as i32,
            version: "3.4.0".into(),
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: invalid downgrade target version",
    );
    // HashKV digests the plaintext keyspace: stable for the same state, FutureRev above it.
    let h1 = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let h2 = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h1.hash, h2.hash);
    let current = h1.header.as_ref().map_or(0, |h| h.revision);
    assert_eq!(h1.hash_revision, current);
    // A put changes it; the hash at the earlier revision stays what it was.
    kv.put(put("hash-probe", b"1")).await.unwrap();
    let h3 = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h3.hash_revision, current + 1);
    assert_ne!(h3.hash, h1.hash, "HashKV did not change after a put");
    let at = m
        .hash_kv(HashKvRequest { revision: current })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((at.hash, at.hash_revision), (h1.hash, current));
    let current = current + 1;
    assert_status(
        m.hash_kv(HashKvRequest {
            revision: current + 100,
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    // Alarms: NOSPACE refuses puts (and txns with puts) until disarmed; deletes still work.
    let alarm = |action: AlarmAction| AlarmRequest {
        action: action as i32,
        member_id: r.member_id,
        alarm: AlarmType::Nospace as i32,
    };
    let got = m.alarm(alarm(AlarmAction::Get)).await.unwrap().into_inner();
    assert!(got.alarms.is_empty());
    let act = m
        .alarm(alarm(AlarmAction::Activate))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(act.alarms.len(), 1);
    assert_status(
        kv.put(put("z", b"1")).await.unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    kv.delete_range(DeleteRangeRequest {
        key: "x".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        st.errors,
        vec![format!("memberID:{} alarm:NOSPACE ", r.member_id)]
    );
    let got = m
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.alarms.len(), 1);
    let de = m
        .alarm(alarm(AlarmAction::Deactivate))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(de.alarms.len(), 1);
    kv.put(put("z", b"1")).await.unwrap();

    // Defragment calls the store and keeps the data.
    m.defragment(coffer_proto::DefragmentRequest {})
        .await
        .unwrap();
    let got = kv
        .range(RangeRequest {
            key: "z".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"1");

    shutdown(r).await;
}

/// etcd checks the quota before anything else (`quotaLeaseServer`, `quotaKVServer`): over it,
/// a lease grant raises the NOSPACE alarm too, and an invalid put is NOSPACE, not its
/// validation error.
#[tokio::test]
async fn quota_is_checked_first_and_for_lease_grants() {
    let r = start_with_quota(1 << 20, 1).await;
    let ch = channel(&r).await;
    let mut lease = coffer_proto::lease_client::LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let mut m = MaintenanceClient::new(ch);
    assert_status(
        lease
            .lease_grant(coffer_proto::LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let alarms = m
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(alarms.len(), 1, "the lease grant did not raise NOSPACE");
    assert_status(
        kv.put(put("", b"1")).await.unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    shutdown(r).await;
}

#[tokio::test]
async fn quota_exceeded_raises_the_nospace_alarm() {
    // A quota smaller than the empty file: the first put exceeds it.
    let r = start_with_quota(1 << 20, 1).await;
    let ch = channel(&r).await;
    let mut kv = KvClient::new(ch.clone());
    let mut m = MaintenanceClient::new(ch);
    assert_status(
        kv.put(put("a", b"1")).await.unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let alarms = m
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].member_id, r.member_id);
    assert_eq!(alarms[0].alarm, AlarmType::Nospace as i32);
    // Deletes and reads still work while the alarm is active.
    kv.delete_range(DeleteRangeRequest {
        key: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    shutdown(r).await;
}

#[tokio::test]
async fn health_is_serving() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let r = start(1 << 20).await;
    let mut h = HealthClient::new(channel(&r).await);
    let resp = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, 1, "SERVING");
    shutdown(r).await;
}

async fn shutdown(mut r: Running) {
    let _ = r.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), &mut r.task)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .unwrap();
    r.store.close();
}
