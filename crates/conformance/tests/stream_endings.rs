//! How long-lived streams end. When the server stops (SIGTERM to a real `coffer serve`), open
//! Watch, LeaseKeepAlive and Snapshot streams end with etcd's `Unavailable`
//! `etcdserver: server stopped`, never with a clean end: clientv3 takes a clean end as final
//! (a watcher would stop watching), and a snapshot cut off must not look complete. A Watch
//! request that does not decode ends the RPC with an error, side by side with Debian's etcd
//! 3.4.23, instead of leaving the stream open and deaf.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test stream_endings`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use coffer_conformance::client::connect;
use coffer_conformance::process::{AnyServer, CofferOptions, CofferProcess, ServerKind};
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::request_op::Request;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::{
    watch_request::RequestUnion, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RequestOp,
    SnapshotRequest, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio_stream::StreamExt;
use tonic::Code;

/// Waits for the next item of a stream, at most 10 s.
async fn next<T>(s: &mut tonic::Streaming<T>) -> Option<Result<T, tonic::Status>> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no answer within 10 s")
}

fn assert_stopped(what: &str, item: Option<Result<impl std::fmt::Debug, tonic::Status>>) {
    match item {
        Some(Err(s)) => {
            assert_eq!(s.code(), Code::Unavailable, "{what}: {s:?}");
            assert_eq!(s.message(), "etcdserver: server stopped", "{what}");
        }
        other => panic!("{what} ended with {other:?}, not Unavailable `server stopped`"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_watch_keepalive_and_snapshot_streams_with_server_stopped() {
    let mut server = CofferProcess::start(CofferOptions::default()).unwrap();
    let ep = server.endpoint();
    let ch = connect(&ep).await.unwrap();

    // About 10 MiB, so the snapshot cannot fit in the transport's buffers before it is read.
    let mut kv = KvClient::new(ch.clone());
    for t in 0..10 {
        let success = (0..64)
            .map(|i| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: format!("/fill/{t:02}/{i:02}").into_bytes(),
                    value: vec![b'x'; 16 * 1024],
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .unwrap();
    }

    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
    watch_tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"/w/".to_vec(),
                range_end: b"/w0".to_vec(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut watch = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
        .await
        .unwrap()
        .into_inner();
    let created: WatchResponse = next(&mut watch).await.unwrap().unwrap();
    assert!(created.created);

    let mut lease = LeaseClient::new(ch.clone());
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let (ka_tx, ka_rx) = tokio::sync::mpsc::channel(4);
    ka_tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut keepalive = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(ka_rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut keepalive).await.unwrap().unwrap().id, id);

    let mut snapshot = MaintenanceClient::new(ch.clone())
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut snapshot).await.unwrap().unwrap();
    assert!(
        first.remaining_bytes > 4 * 1024 * 1024,
        "{}",
        first.remaining_bytes
    );

    let pid = server.pid().unwrap();
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);

    assert_stopped("the watch stream", next(&mut watch).await);
    assert_stopped("the keep-alive stream", next(&mut keepalive).await);
    // The snapshot: the chunks already sent, then the error; never its last chunk.
    let end = loop {
        match next(&mut snapshot).await {
            Some(Ok(chunk)) => assert_ne!(
                chunk.remaining_bytes, 0,
                "the snapshot was sent whole: stop earlier"
            ),
            other => break other,
        }
    };
    assert_stopped("the snapshot stream", end);
    drop((watch_tx, ka_tx));

    let deadline = Instant::now() + Duration::from_secs(15);
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Encodes as field 1 with the wrong wire type for WatchRequest (a varint where etcd's
/// `create_request` message is): every server must fail to decode it.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAWatchRequest {
    #[prost(uint64, tag = "1")]
    create_request: u64,
}

/// What the RPC answers after a request that does not decode: the code it ended with.
async fn watch_after_garbage(endpoint: &str) -> Code {
    let ch = connect(endpoint).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    // The request side stays open: only the bad message can end the RPC.
    let requests = tokio_stream::iter(vec![NotAWatchRequest { create_request: 7 }])
        .chain(tokio_stream::pending());
    let call = grpc.streaming(
        tonic::Request::new(requests),
        tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
        tonic_prost::ProstCodec::<NotAWatchRequest, WatchResponse>::default(),
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), async move {
        match call.await {
            Err(s) => s.code(),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(_)) => {}
                        Some(Err(s)) => break s.code(),
                        None => break Code::Ok,
                    }
                }
            }
        }
    })
    .await;
    answer.expect("the watch stream stayed open after a request that does not decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_request_that_does_not_decode_ends_the_rpc_as_on_etcd() {
    let etcd = AnyServer::start(ServerKind::Etcd).unwrap();
    let coffer = AnyServer::start(ServerKind::Coffer).unwrap();
    let want = watch_after_garbage(&etcd.endpoint()).await;
    let got = watch_after_garbage(&coffer.endpoint()).await;
    assert_eq!(want, Code::Internal, "etcd's answer changed");
    assert_eq!(got, want);
}
