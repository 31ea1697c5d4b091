//! Compaction (reference §1.6) and its persistence.

use coffer_proto::CompactionRequest;
use coffer_store::{Backend, Error};

use crate::common::*;

fn compact(rev: i64, physical: bool) -> CompactionRequest {
    CompactionRequest {
        revision: rev,
        physical,
    }
}

#[tokio::test]
async fn compact_errors_and_reads_around_it() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1").await; // 2
    put(&s, "a", "2").await; // 3
    put(&s, "b", "1").await; // 4
    del(&s, "b", "").await; // 5
    put(&s, "a", "3").await; // 6
    assert!(matches!(
        s.compact(compact(7, false)).await,
        Err(Error::FutureRev)
    ));
    let r = s.compact(compact(5, false)).await.unwrap();
    assert_eq!(
        rev_of(&r.header),
        6,
        "compaction does not create a revision"
    );
    assert!(matches!(
        s.compact(compact(5, false)).await,
        Err(Error::Compacted)
    ));
    assert!(matches!(
        s.compact(compact(3, true)).await,
        Err(Error::Compacted)
    ));
    let mut at = rr("a", "\0");
    at.revision = 4;
    assert!(matches!(
        s.range(&coffer_store::Caller::Internal, at.clone()).await,
        Err(Error::Compacted)
    ));
    at.revision = 5; // exactly the compact revision: allowed
    let r = get(&s, at).await;
    assert_eq!(keys(&r), vec!["a"]);
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(get(&s, rr("a", "")).await.kvs[0].version, 3);
    // physical waits for the removal
    s.compact(compact(6, true)).await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!((st.revision, st.compact_revision), (6, 6));
    let kv = get(&s, rr("a", "")).await.kvs[0].clone();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision),
        (&b"3"[..], 3, 2)
    );
}

#[tokio::test]
async fn compaction_survives_restart_and_revision_never_goes_back() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        for i in 0..50 {
            put(&s, &format!("k{}", i % 5), &format!("v{i}")).await;
        }
        del(&s, "k0", "").await; // 52
        s.compact(compact(52, true)).await.unwrap();
        s.close();
    }
    let s = open(d.path());
    let st = s.status().await.unwrap();
    assert_eq!((st.revision, st.compact_revision), (52, 52));
    let mut old = rr("k1", "");
    old.revision = 51;
    assert!(matches!(
        s.range(&coffer_store::Caller::Internal, old).await,
        Err(Error::Compacted)
    ));
    assert!(matches!(
        s.compact(compact(40, false)).await,
        Err(Error::Compacted)
    ));
    let r = get(&s, rr("k", "l")).await;
    assert_eq!(keys(&r), vec!["k1", "k2", "k3", "k4"]);
    assert_eq!(r.kvs[0].version, 10);
    assert_eq!(rev_of(&put(&s, "z", "z").await.header), 53);
}

#[tokio::test]
async fn logical_compaction_is_finished_in_batches_in_the_background() {
    let d = tempfile::tempdir().unwrap();
    let s = open_with(
        d.path(),
        coffer_store::StoreOptions {
            compaction_batch_limit: 3,
            ..Default::default()
        },
    );
    for i in 0..40 {
        put(&s, "k", &format!("{i}")).await;
    }
    s.compact(compact(41, false)).await.unwrap();
    // a later physical compaction returns only when everything before it is removed
    put(&s, "k", "last").await;
    s.compact(compact(42, true)).await.unwrap();
    drop(s);
    let s = open(d.path());
    let r = get(&s, rr("k", "")).await;
    assert_eq!(
        (r.kvs[0].version, r.kvs[0].value.as_slice()),
        (41, &b"last"[..])
    );
}

/// The revisions (main part) of every record in the engine file's `records` table, read with
/// redb directly after the store is closed and dropped (table `records`, 12-byte big-endian
/// revision keys, see `record.rs`).
fn engine_record_revisions(dir: &std::path::Path) -> Vec<i64> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
    let db = redb::Database::open(dir.join(coffer_store::DB_FILE)).unwrap();
    let rtxn = db.begin_read().unwrap();
    let table = rtxn.open_table(RECORDS).unwrap();
    table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, _) = e.unwrap();
            let k = k.value();
            assert_eq!(k.len(), 12, "record key of {} bytes", k.len());
            i64::from_be_bytes(k[..8].try_into().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn physical_compaction_removes_superseded_records_from_the_engine_file() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        for i in 0..50 {
            put(&s, &format!("k{}", i % 5), &format!("v{i}")).await; // 2..=51
        }
        del(&s, "k0", "").await; // 52
        s.close();
    }
    // Before: one record per revision.
    assert_eq!(
        engine_record_revisions(d.path()),
        (2..=52).collect::<Vec<_>>()
    );
    {
        let s = open(d.path());
        s.compact(compact(52, true)).await.unwrap();
        s.close();
    }
    // After: the latest version of k1..k4 (48..=51), and what revision 52's DELETE replaced
    // (k0 at 47) with the tombstone itself, kept for a watch opened at the compacted revision
    // (etcd-io/etcd#19179). Every older record is gone from the file.
    assert_eq!(
        engine_record_revisions(d.path()),
        vec![47, 48, 49, 50, 51, 52]
    );
    // The next compaction drops the tombstone and the version it deleted.
    {
        let s = open(d.path());
        put(&s, "z", "1").await; // 53
        s.compact(compact(53, true)).await.unwrap();
        s.close();
    }
    assert_eq!(engine_record_revisions(d.path()), vec![48, 49, 50, 51, 53]);
}

/// Records a refused purge commit was to remove stay queued, and are removed once the engine
/// accepts commits again: a failed group never drops compaction work (it used to be skipped
/// for ever, leaving the records in the file and marking the compaction finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_purge_keeps_its_records_queued() {
    use std::sync::atomic::Ordering;
    let d = tempfile::tempdir().unwrap();
    {
        let faults = std::sync::Arc::new(coffer_store::EngineFaults::default());
        let s = std::sync::Arc::new(open_with(
            d.path(),
            coffer_store::StoreOptions {
                compaction_batch_limit: 1,
                engine: coffer_store::EngineOptions {
                    faults: Some(std::sync::Arc::clone(&faults)),
                },
                ..coffer_store::StoreOptions::default()
            },
        ));
        for i in 0..10 {
            put(&*s, "k", &format!("v{i}")).await; // 2..=11
        }
        faults.refuse_purges.store(true, Ordering::SeqCst);
        let waiting = {
            let s = std::sync::Arc::clone(&s);
            tokio::spawn(async move { s.compact(compact(11, true)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "purged while commits were refused");
        faults.refuse_purges.store(false, Ordering::SeqCst);
        waiting.await.unwrap().unwrap();
        s.close();
    }
    // Revision 10 is what revision 11 replaced: kept until the next compaction (etcd #19179).
    assert_eq!(engine_record_revisions(d.path()), vec![10, 11]);
}
