//! Data, revision and compaction survive a reopen; revision never goes backwards.

use coffer_proto::CompactionRequest;
use coffer_store::Backend;

use crate::common::*;

#[tokio::test]
async fn data_and_revision_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (cluster, member) = {
        let s = open(d.path());
        put(&s, "a", "1").await; // 2
        put(&s, "b", "2").await; // 3
        put(&s, "a", "3").await; // 4
        del(&s, "b", "").await; // 5
        (s.cluster_id(), s.member_id())
    }; // dropped: closes
    let s = open(d.path());
    assert_eq!((s.cluster_id(), s.member_id()), (cluster, member));
    assert_eq!(s.current_revision(), 5);
    let kv = get(&s, rr("a", "")).await.kvs[0].clone();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"3"[..], 2, 4, 2)
    );
    let mut old = rr("b", "");
    old.revision = 4;
    assert_eq!(get(&s, old).await.kvs[0].value, b"2");
    assert_eq!(get(&s, rr("b", "")).await.count, 0);
    put(&s, "b", "new").await;
    let kv = get(&s, rr("b", "")).await.kvs[0].clone();
    assert_eq!((kv.create_revision, kv.version), (6, 1));
}

#[tokio::test]
async fn revision_survives_when_its_records_were_compacted_away() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        put(&s, "a", "1").await; // 2
        del(&s, "a", "").await; // 3
        s.compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await
        .unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.current_revision(), 3);
    assert_eq!(rev_of(&put(&s, "a", "2").await.header), 4);
}

#[tokio::test]
async fn closed_store_answers_stopped() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    s.close();
    assert!(matches!(
        s.put(
            &coffer_store::Caller::Internal,
            coffer_proto::PutRequest {
                key: "a".into(),
                ..Default::default()
            }
        )
        .await,
        Err(coffer_store::Error::Stopped)
    ));
    assert!(matches!(
        s.range(&coffer_store::Caller::Internal, rr("a", "")).await,
        Err(coffer_store::Error::Stopped)
    ));
    // A second store on the same directory works after close.
    drop(s);
    let s = open(d.path());
    put(&s, "a", "1").await;
}

/// Power loss after acknowledgements: the engine's own commits of a group are not synced (the
/// write-ahead log is), so the engine file may come back as of its last durable commit. The
/// test puts back a copy of the engine file taken at that commit (the open) and keeps the log:
/// every acknowledged write must come back from the log replay.
#[tokio::test]
async fn acknowledged_writes_survive_losing_the_unsynced_engine_commits() {
    let d = tempfile::tempdir().unwrap();
    let engine = d.path().join("coffer.redb");
    let durable_copy = d.path().join("engine-at-last-sync");
    {
        let s = open(d.path());
        std::fs::copy(&engine, &durable_copy).unwrap();
        for i in 0..50 {
            put(&s, &format!("k{i:02}"), &format!("v{i}")).await; // revisions 2..=51
        }
        del(&s, "k00", "").await; // 52
        s.compact(CompactionRequest {
            revision: 10,
            physical: true,
        })
        .await
        .unwrap();
        put(&s, "k01", "again").await; // 53
    }
    std::fs::copy(&durable_copy, &engine).unwrap();
    let s = open(d.path());
    assert_eq!(s.current_revision(), 53);
    let all = get(&s, rr("k", "l")).await;
    assert_eq!(all.count, 49);
    assert_eq!(get(&s, rr("k01", "")).await.kvs[0].value, b"again");
    assert_eq!(get(&s, rr("k49", "")).await.kvs[0].value, b"v49");
    let mut old = rr("k01", "");
    old.revision = 9;
    assert!(
        s.range(&coffer_store::Caller::Internal, old).await.is_err(),
        "the compaction was replayed too"
    );
    assert_eq!(rev_of(&put(&s, "k50", "x").await.header), 54);
}
