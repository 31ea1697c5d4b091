//! A watch opened at exactly the compacted revision must deliver that revision's events,
//! tombstones included, with their prev_kv. etcd 3.4.23 drops the tombstone at the compacted
//! revision, so such a watch misses the DELETE (etcd-io/etcd#19179); the fixed 3.5 releases
//! deliver it but without prev_kv, which kube-apiserver's watch cache treats as an error.
//! Coffer keeps the replaced versions until the next compaction and sends the DELETE with
//! prev_kv: a deliberate difference from every etcd release, not "3.4.23 is older". Checked
//! against `coffer serve`, also after a SIGKILL and restart, and against Debian's etcd 3.4.23
//! to show the test can fail there.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test watch_at_compact_revision`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coffer_conformance::client::connect;
use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::{
    watch_request::RequestUnion, CompactionRequest, DeleteRangeRequest, PutRequest,
    WatchCreateRequest, WatchRequest,
};

/// (event type, key, value, mod revision, prev_kv value) of every event a watch from `start`
/// on `key` with prev_kv receives within a short wait.
type Seen = Vec<(i32, String, String, i64, Option<String>)>;

/// Writes a@2, a@3, b@4, deletes a at 5, puts b at 6, compacts at 5 (physically).
async fn write_and_compact(endpoint: &str) {
    let mut kv = KvClient::new(connect(endpoint).await.unwrap());
    for (k, v) in [("/k/a", "1"), ("/k/a", "2"), ("/k/b", "1")] {
        kv.put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let d = kv
        .delete_range(DeleteRangeRequest {
            key: "/k/a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.header.unwrap().revision, 5);
    kv.put(PutRequest {
        key: "/k/b".into(),
        value: "2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    kv.compact(CompactionRequest {
        revision: 5,
        physical: true,
    })
    .await
    .unwrap();
}

async fn watch_from(endpoint: &str, start: i64) -> Seen {
    let mut w = WatchClient::new(connect(endpoint).await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "/k/".into(),
            range_end: "/k0".into(),
            start_revision: start,
            prev_kv: true,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    while let Ok(Ok(Some(r))) =
        tokio::time::timeout(Duration::from_millis(700), stream.message()).await
    {
        assert!(!r.canceled, "watch from {start} cancelled: {r:?}");
        for e in r.events {
            let kv = e.kv.unwrap();
            seen.push((
                e.r#type,
                text(&kv.key),
                text(&kv.value),
                kv.mod_revision,
                e.prev_kv.map(|p| text(&p.value)),
            ));
        }
    }
    drop(tx);
    seen
}

fn expected() -> Seen {
    vec![
        (1, "/k/a".into(), String::new(), 5, Some("2".into())),
        (0, "/k/b".into(), "2".into(), 6, Some("1".into())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_at_compact_revision_delivers_its_delete_etcd_19179() {
    let mut coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    write_and_compact(&coffer.endpoint()).await;
    assert_eq!(watch_from(&coffer.endpoint(), 5).await, expected());
    // The kept records survive a crash and the compaction's resumption on start.
    coffer.kill();
    coffer.restart().unwrap();
    assert_eq!(watch_from(&coffer.endpoint(), 5).await, expected());

    // The same against etcd 3.4.23, which has the bug: the DELETE at the compacted revision is
    // gone. A fixed etcd would deliver it without prev_kv, still not what Coffer must send.
    let etcd = EtcdProcess::start().unwrap();
    write_and_compact(&etcd.endpoint()).await;
    let got = watch_from(&etcd.endpoint(), 5).await;
    assert_ne!(
        got,
        expected(),
        "etcd now delivers the DELETE at the compacted revision (#19179 fixed?)"
    );
    assert!(
        got.iter().all(|e| e.3 != 5),
        "etcd 3.4.23 was expected to miss the revision-5 DELETE: {got:?}"
    );
}
