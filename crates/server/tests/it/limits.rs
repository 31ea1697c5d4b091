//! The bounds one client could otherwise exhaust the server with, over real sockets: watchers
//! per stream and in total, concurrent snapshots, response size and HTTP/2 streams per
//! connection. Each answer is the error etcd (or gRPC-go under etcd) gives.

use coffer_proto::watch_client::WatchClient;
use coffer_proto::{watch_request::RequestUnion, SnapshotRequest, WatchCreateRequest};
use coffer_proto::{WatchRequest, WatchResponse};
use tokio_stream::wrappers::ReceiverStream;

use super::*;

fn create(key: &str) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

/// Opens a Watch stream on `channel`, sends one create per key and returns the responses.
async fn watch_creates(
    channel: Channel,
    keys: &[&str],
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
    Vec<WatchResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for k in keys {
        tx.send(create(k)).await.unwrap();
    }
    let mut inbound = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in keys {
        let r = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("stream open");
        got.push(r);
    }
    (tx, inbound, got)
}

fn refused(r: &WatchResponse) -> bool {
    r.watch_id == -1
        && r.created
        && r.canceled
        && r.cancel_reason == "etcdserver: too many requests"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_beyond_the_limits_are_refused() {
    let r = start_configured(0, |c| {
        c.max_watchers_per_stream = 2;
        c.max_watchers = 3;
    })
    .await;
    let (_tx1, _in1, got) = watch_creates(channel(&r).await, &["a", "b", "c"]).await;
    assert!(got[..2].iter().all(|w| w.created && !w.canceled), "{got:?}");
    assert!(refused(&got[2]), "per-stream limit: {:?}", got[2]);
    // A second stream: one more fits under the total, the next does not.
    let (_tx2, _in2, got) = watch_creates(channel(&r).await, &["d", "e"]).await;
    assert!(got[0].created && !got[0].canceled, "{got:?}");
    assert!(refused(&got[1]), "total limit: {:?}", got[1]);
    shutdown(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_snapshots_are_bounded() {
    let r = start_configured(0, |_| {}).await;
    let mut kv = KvClient::new(channel(&r).await);
    // Several times the 4 chunks of 32 KiB the server buffers, so the first snapshot is still
    // being sent while the second is asked for.
    for i in 0..16 {
        kv.put(put(&format!("k{i}"), &vec![b'v'; 64 * 1024]))
            .await
            .unwrap();
    }
    let mut m = MaintenanceClient::new(channel(&r).await);
    let mut first = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    assert!(first.message().await.unwrap().is_some());
    let err = m.snapshot(SnapshotRequest {}).await.unwrap_err();
    // etcd sends its "too many requests" as UNKNOWN (a client-side error value, no status).
    assert_status(err, Code::Unknown, "etcdserver: too many requests");
    // Once the first is gone (client went away), a new one runs.
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        match m.snapshot(SnapshotRequest {}).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                let mut bytes = 0;
                while let Some(chunk) = s.message().await.unwrap() {
                    bytes += chunk.blob.len();
                }
                assert!(bytes > 16 * 64 * 1024, "{bytes}");
                ok = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unknown, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(ok, "the permit was never released");
    shutdown(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_response_bytes_is_refused() {
    let r = start_configured(0, |c| c.max_response_bytes = 10_000).await;
    let mut kv = KvClient::new(channel(&r).await);
    for k in ["p1", "p2", "p3"] {
        kv.put(put(k, &[b'x'; 4000])).await.unwrap();
    }
    let one = RangeRequest {
        key: "p1".into(),
        ..Default::default()
    };
    assert_eq!(kv.range(one).await.unwrap().into_inner().kvs.len(), 1);
    let all = RangeRequest {
        key: "p".into(),
        range_end: "q".into(),
        ..Default::default()
    };
    let check = |err: tonic::Status| {
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        let msg = err.message();
        assert!(
            msg.starts_with("grpc: trying to send message larger than max (")
                && msg.ends_with(" vs. 10000)"),
            "{msg}"
        );
    };
    check(kv.range(all.clone()).await.unwrap_err());
    // The same range inside a txn.
    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestRange(all.clone())),
        }],
        failure: vec![],
    };
    check(kv.txn(txn).await.unwrap_err());
    // keys_only fits.
    let keys = RangeRequest {
        keys_only: true,
        ..all
    };
    assert_eq!(kv.range(keys).await.unwrap().into_inner().kvs.len(), 3);
    shutdown(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_bounds_streams_per_connection() {
    let r = start_configured(0, |c| c.max_concurrent_streams = 1).await;
    let ch = channel(&r).await;
    // One open Watch stream takes the connection's only stream.
    let (tx, inbound, got) = watch_creates(ch.clone(), &["a"]).await;
    assert!(got[0].created);
    let mut kv = KvClient::new(ch);
    let range = RangeRequest {
        key: "a".into(),
        ..Default::default()
    };
    let blocked = tokio::time::timeout(Duration::from_millis(500), kv.range(range.clone())).await;
    assert!(blocked.is_err(), "a second stream was opened: {blocked:?}");
    // The stream ends: the request goes through.
    drop(tx);
    drop(inbound);
    let done = tokio::time::timeout(Duration::from_secs(10), kv.range(range)).await;
    assert!(done.expect("range after the watch ended").is_ok());
    shutdown(r).await;
}
