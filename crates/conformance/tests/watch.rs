//! Watch, end to end: the same watch scenario against a fresh Debian etcd 3.4.23 and a fresh
//! `coffer serve` (real processes, real gRPC streams), answers normalized (member/cluster ids
//! and raft term dropped) and compared, except for the differences listed in [`EXPECTED`]
//! where 3.4.23 is older than the etcd 3.5.13+ behaviour Coffer implements.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test watch`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coffer_conformance::client::connect;
use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::{
    watch_request::RequestUnion, CompactionRequest, DeleteRangeRequest, PutRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Streaming;

/// One step's normalized answer: the responses received (none = `[]`).
type Transcript = Vec<(&'static str, Value)>;

/// Steps where etcd 3.4.23 differs, with the upstream issue, and the answer 3.5.13+ gives.
const EXPECTED: &[(&str, &str)] = &[
    (
        "progress request, no watchers",
        "etcd-io/etcd#15220 (3.4.23 answers RequestProgress at once even with no watcher; \
         3.4.31+/3.5.13+ send nothing)",
    ),
    (
        "progress request, future-start watcher",
        "etcd-io/etcd#15220 + #20221 (3.4.23 treats a future-start watcher as synced and \
         answers; 3.5.22+ send nothing until the store reaches the start)",
    ),
];

fn norm(r: &WatchResponse) -> Value {
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            let kv = |kv: &coffer_proto::mvccpb::KeyValue| {
                json!({
                    "key": String::from_utf8_lossy(&kv.key),
                    "value": String::from_utf8_lossy(&kv.value),
                    "create": kv.create_revision,
                    "mod": kv.mod_revision,
                    "version": kv.version,
                    "lease": kv.lease,
                })
            };
            json!({
                "type": e.r#type,
                "kv": e.kv.as_ref().map(kv),
                "prev_kv": e.prev_kv.as_ref().map(kv),
            })
        })
        .collect();
    json!({
        "revision": r.header.map(|h| h.revision),
        "watch_id": r.watch_id,
        "created": r.created,
        "canceled": r.canceled,
        "compact_revision": r.compact_revision,
        "cancel_reason": r.cancel_reason,
        "fragment": r.fragment,
        "events": events,
    })
}

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl Stream {
    /// Opens a stream with its first request already queued (etcd sends the response
    /// headers only with the first message).
    async fn open(endpoint: &str, first: RequestUnion) -> Stream {
        let ch = connect(endpoint).await.unwrap();
        let (tx, req_rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(first),
        })
        .await
        .unwrap();
        let rx = WatchClient::new(ch)
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    /// Receives responses until `n` arrived, or until nothing came for `quiet`.
    async fn take(&mut self, n: usize, quiet: Duration) -> Value {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(quiet, self.rx.message()).await {
                Ok(Ok(Some(r))) => out.push(norm(&r)),
                Ok(other) => panic!("stream ended: {other:?}"),
                Err(_) => break,
            }
        }
        Value::Array(out)
    }
}

fn create(key: &str, end: &str, start: i64, id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        prev_kv: true,
        watch_id: id,
        ..Default::default()
    }
}

async fn scenario(endpoint: &str) -> Transcript {
    let wait = Duration::from_secs(5);
    let quiet = Duration::from_millis(700);
    let mut t = Transcript::new();
    let mut kv = KvClient::new(connect(endpoint).await.unwrap());
    let put = |k: &str, v: &str| PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };

    let mut a = Stream::open(
        endpoint,
        RequestUnion::CreateRequest(create("/a/", "/a0", 0, 0)),
    )
    .await;
    t.push(("create prefix, auto id", a.take(1, wait).await));
    kv.put(put("/a/1", "x")).await.unwrap();
    kv.put(put("/b", "z")).await.unwrap();
    kv.put(put("/a/1", "y")).await.unwrap();
    kv.delete_range(DeleteRangeRequest {
        key: "/a/".into(),
        range_end: "/a0".into(),
        prev_kv: false,
    })
    .await
    .unwrap();
    t.push(("live events with prev_kv", a.take(3, wait).await));

    // History from revision 2, explicit id 5, delete-only filter on another watcher.
    a.create(create("/a/1", "", 2, 5)).await;
    t.push(("create from history, id 5", a.take(2, wait).await));
    a.create(WatchCreateRequest {
        filters: vec![0],
        ..create("/", "\0", 1, 0)
    })
    .await;
    t.push(("create NOPUT from rev 1, auto id", a.take(2, wait).await));
    a.create(create("/a/1", "", 0, 5)).await;
    t.push(("duplicate id", a.take(1, wait).await));
    a.create(create("/z", "/a", 0, 0)).await;
    t.push(("empty range", a.take(1, wait).await));
    a.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 5,
    }))
    .await;
    t.push(("cancel 5", a.take(1, wait).await));
    a.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 77,
    }))
    .await;
    t.push(("cancel unknown", a.take(1, quiet).await));
    a.create(create("/a/", "/a0", 0, 0)).await;
    t.push(("auto id after cancel", a.take(1, wait).await));
    a.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    t.push(("progress request, synced", a.take(1, wait).await));

    // Compaction: a watcher below it is created, then cancelled.
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .unwrap();
    a.create(create("/a/", "/a0", 2, 0)).await;
    t.push(("create below compaction", a.take(2, wait).await));
    a.create(create("/a/", "/a0", 4, 0)).await;
    t.push(("create at compaction", a.take(2, wait).await));

    // A second stream: progress with no watcher, then a future-start watcher.
    let mut b = Stream::open(
        endpoint,
        RequestUnion::ProgressRequest(WatchProgressRequest {}),
    )
    .await;
    t.push(("progress request, no watchers", b.take(1, quiet).await));
    b.create(WatchCreateRequest {
        progress_notify: true,
        ..create("/f", "", 100, 0)
    })
    .await;
    t.push(("create future start", b.take(1, wait).await));
    b.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    t.push((
        "progress request, future-start watcher",
        b.take(1, quiet).await,
    ));
    t
}

fn run(endpoint: String) -> Transcript {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(&endpoint))
}

#[test]
fn watch_side_by_side() {
    let etcd = EtcdProcess::start().unwrap();
    let coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let from_etcd = run(etcd.endpoint());
    let from_coffer = run(coffer.endpoint());
    if std::env::var_os("COFFER_CONFORMANCE_DUMP").is_some() {
        for ((step, e), (_, c)) in from_etcd.iter().zip(&from_coffer) {
            println!("{step}\n  etcd:   {e}\n  coffer: {c}");
        }
    }
    assert_eq!(from_etcd.len(), from_coffer.len());
    let mut failures = Vec::new();
    for ((step, e), (_, c)) in from_etcd.iter().zip(&from_coffer) {
        if let Some((_, issue)) = EXPECTED.iter().find(|(s, _)| s == step) {
            // 3.4.23 answers; 3.5.13+ (Coffer) must send nothing at all.
            assert_eq!(
                e.as_array().map(Vec::len),
                Some(1),
                "{step}: etcd 3.4.23 changed? {e}"
            );
            assert_eq!(c, &json!([]), "{step} ({issue}): Coffer must not answer");
            continue;
        }
        if e != c {
            failures.push(format!("{step}\n  etcd:   {e}\n  coffer: {c}"));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
    // Sanity: the scenario really saw events and a compaction cancel.
    let all = serde_json::to_string(&from_coffer).unwrap();
    assert!(all.contains("\"compact_revision\":4"), "{all}");
    assert!(all.contains("\"prev_kv\":{"), "{all}");
}
