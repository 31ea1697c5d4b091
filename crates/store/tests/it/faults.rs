//! The store under faults a SIGKILL cannot show: values it cannot open, a damaged or missing
//! log, commits whose outcome is unknown, and its bounds. Each test names the rule it proves.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_proto::mvccpb::event::EventType;
use coffer_proto::{DeleteRangeRequest, LeaseGrantRequest, PutRequest};
use coffer_store::watch::{Notice, WatchSpec};
use coffer_store::{
    Backend, EmbeddedStore, EngineFaults, EngineOptions, Error, Sealer, StoreOptions,
};

use crate::common::*;

/// The test sealer, with keys whose values it can no longer open (as after a key was removed
/// from the encryption config, or while a KMS plugin is unreachable).
struct LockedOut {
    inner: XorTestSealer,
    locked: Mutex<HashSet<Vec<u8>>>,
}

impl LockedOut {
    fn new() -> Arc<Self> {
        Arc::new(LockedOut {
            inner: XorTestSealer,
            locked: Mutex::new(HashSet::new()),
        })
    }
    fn lock(&self, key: &str) {
        self.locked.lock().unwrap().insert(key.as_bytes().to_vec());
    }
}

impl Sealer for LockedOut {
    fn seal(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        self.inner.seal(key, plaintext)
    }
    fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        if self.locked.lock().unwrap().contains(key) {
            return Err("no key of the config opens this value".into());
        }
        self.inner.open(key, stored)
    }
}

async fn next_events(
    rx: &mut tokio::sync::mpsc::Receiver<Notice>,
) -> (i64, Vec<coffer_proto::mvccpb::Event>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Notice::Events {
                events, revision, ..
            })) => return (revision, events.iter().map(|e| (**e).clone()).collect()),
            Ok(Some(_)) => continue,
            other => panic!("no events: {other:?}"),
        }
    }
}

/// KEP-3926's unsafe deletion sends a plain DeleteRange for a key kube-apiserver cannot
/// decrypt. It must work while prev_kv watchers are open, delete every key of the range in one
/// revision, and give the watchers their DELETE events with a `prev_kv`: the value as stored
/// when it cannot be opened. Before, the request failed after the openable key's tombstone was
/// already in the engine transaction: the next put reused the revision, and a restart brought
/// back what the client was told did not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_value_is_deleted_whole_with_prev_kv_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = LockedOut::new();
    let s = EmbeddedStore::open(dir.path(), sealer.clone(), StoreOptions::default()).unwrap();
    put(&s, "p/a", "va").await;
    put(&s, "p/b", "vb").await;
    sealer.lock("p/b");
    // A read of the unopenable key is an error naming the key, never the stored bytes.
    match s
        .range(&coffer_store::Caller::Internal, rr("p/b", ""))
        .await
    {
        Err(Error::Open { key, .. }) => assert_eq!(key, "p/b"),
        other => panic!("{other:?}"),
    }
    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    ws.create(
        WatchSpec {
            key: b"p/".to_vec(),
            range_end: b"p0".to_vec(),
            prev_kv: true,
            ..Default::default()
        },
        0,
        &coffer_store::Caller::Internal,
    )
    .await;
    assert!(matches!(rx.recv().await, Some(Notice::Created { .. })));

    let before = s.current_revision();
    let resp = s
        .delete_range(
            &coffer_store::Caller::Internal,
            DeleteRangeRequest {
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec(),
                prev_kv: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(resp.deleted, 2);
    assert_eq!(rev_of(&resp.header), before + 1);
    assert_eq!(resp.prev_kvs[0].value, b"va");
    assert!(resp.prev_kvs[1].value.starts_with(b"xor:"), "as stored");
    let (revision, events) = next_events(&mut rx).await;
    assert_eq!(revision, before + 1);
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.r#type, EventType::Delete as i32);
    }
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"va");
    let stored = &events[1].prev_kv.as_ref().unwrap().value;
    assert!(stored.starts_with(b"xor:"), "the value as stored");
    assert_eq!(events[1].prev_kv.as_ref().unwrap().mod_revision, before);

    // The next write takes the next revision; after a restart both keys stay deleted.
    let r = put(&s, "q", "1").await;
    assert_eq!(rev_of(&r.header), before + 2);
    drop((ws, rx, hub));
    s.close();
    drop(s);
    let s = EmbeddedStore::open(dir.path(), sealer, StoreOptions::default()).unwrap();
    assert!(get(&s, rr("p/", "p0")).await.kvs.is_empty());
    assert_eq!(s.current_revision(), before + 2);
}

/// A txn whose later op fails (a VALUE compare or a read of an unopenable value needs its
/// plaintext) fails whole: its earlier writes leave no record, no revision and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_txn_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = LockedOut::new();
    let s = EmbeddedStore::open(dir.path(), sealer.clone(), StoreOptions::default()).unwrap();
    put(&s, "a", "1").await;
    put(&s, "b", "2").await;
    sealer.lock("b");
    let before = s.current_revision();
    let txn = coffer_proto::TxnRequest {
        success: vec![
            coffer_proto::RequestOp {
                request: Some(coffer_proto::request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    },
                )),
            },
            coffer_proto::RequestOp {
                request: Some(coffer_proto::request_op::Request::RequestRange(rr("b", ""))),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        s.txn(&coffer_store::Caller::Internal, txn).await,
        Err(Error::Open { .. })
    ));
    assert_eq!(s.current_revision(), before);
    assert_eq!(keys(&get(&s, rr("a", "")).await), vec!["a"]);
    let r = put(&s, "c", "3").await;
    assert_eq!(rev_of(&r.header), before + 1);
    s.close();
    drop(s);
    let s = EmbeddedStore::open(dir.path(), sealer, StoreOptions::default()).unwrap();
    assert_eq!(keys(&get(&s, rr("a", "")).await), vec!["a"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The data directory as a crash would leave it: the files copied while the store runs.
async fn crashed_copy_with_writes(n: usize) -> (tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..n {
        put(&s, &format!("k{i:03}"), &format!("v{i}")).await;
    }
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    drop(s);
    (dir, crashed)
}

/// etcd refuses a WAL with a CRC mismatch; so does Coffer. One flipped byte in the live part
/// of the log used to end the replay there and start anyway: up to thousands of acknowledged
/// writes lost, the revision going back, and the next put reusing a revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_entry_refuses_to_start() {
    let (_dir, crashed) = crashed_copy_with_writes(50).await;
    // Undamaged, the copy opens with every acknowledged write.
    let clean = tempfile::tempdir().unwrap();
    copy_dir(crashed.path(), clean.path());
    let s = open(clean.path());
    assert_eq!(get(&s, rr("k", "l")).await.count, 50);
    assert_eq!(s.current_revision(), 51);
    drop(s);

    let wal = crashed.path().join("coffer.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    // A byte of the 10th entry's payload (entries are small and alike: ~100 bytes each).
    let at = bytes.iter().position(|b| *b != 0).unwrap() + 1000;
    bytes[at] ^= 0x10;
    std::fs::write(&wal, &bytes).unwrap();
    match EmbeddedStore::open(
        crashed.path(),
        Arc::new(XorTestSealer),
        StoreOptions::default(),
    ) {
        Err(Error::Corrupt(msg)) => {
            assert!(msg.contains("coffer.wal"), "{msg}");
            assert!(msg.contains("offset"), "{msg}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started on a damaged log"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_refuses_to_start() {
    let (_dir, crashed) = crashed_copy_with_writes(5).await;
    std::fs::remove_file(crashed.path().join("coffer.wal")).unwrap();
    match EmbeddedStore::open(
        crashed.path(),
        Arc::new(XorTestSealer),
        StoreOptions::default(),
    ) {
        Err(Error::Corrupt(msg)) => assert!(msg.contains("missing"), "{msg}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started without its log"),
    }
}

async fn try_put(s: &EmbeddedStore, k: &str, v: &str) -> Result<coffer_proto::PutResponse, Error> {
    s.put(
        &coffer_store::Caller::Internal,
        PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        },
    )
    .await
}

fn faulty(dir: &Path) -> (EmbeddedStore, Arc<EngineFaults>) {
    let faults = Arc::new(EngineFaults::default());
    let s = open_with(
        dir,
        StoreOptions {
            engine: EngineOptions {
                faults: Some(Arc::clone(&faults)),
            },
            ..StoreOptions::default()
        },
    );
    (s, faults)
}

/// The log append was durable, then the engine commit failed: the client must not get a
/// definite error for a write that a restart brings back. It gets "outcome unknown", writes
/// stop (reads go on), and the restart settles it from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_engine_commit_failed_is_unknown_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (s, faults) = faulty(dir.path());
    put(&s, "k", "v1").await;
    faults.fail_engine_commit.store(true, Ordering::SeqCst);
    let r = try_put(&s, "k", "v2").await;
    assert!(matches!(r, Err(Error::OutcomeUnknown(_))), "{r:?}");
    faults.fail_engine_commit.store(false, Ordering::SeqCst);
    // Writes stay refused; reads still answer what was acknowledged.
    let r = try_put(&s, "other", "x").await;
    assert!(matches!(r, Err(Error::WritesStopped(_))), "{r:?}");
    assert!(matches!(
        s.lease_grant(LeaseGrantRequest { ttl: 10, id: 0 }).await,
        Err(Error::WritesStopped(_))
    ));
    assert_eq!(get(&s, rr("k", "")).await.kvs[0].value, b"v1");
    s.close();
    drop(s);
    let s = open(dir.path());
    let kv = &get(&s, rr("k", "")).await.kvs[0];
    assert_eq!(kv.value, b"v2", "the logged write is replayed");
    assert_eq!(kv.mod_revision, 3);
    assert!(get(&s, rr("other", "")).await.kvs.is_empty());
    assert_eq!(rev_of(&put(&s, "z", "1").await.header), 4);
}

/// A durable engine commit (a lease grant is one) whose fdatasync fails inside redb: the
/// outcome is unknown, writes stop, and after a restart the store is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_engine_sync_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, faults) = faulty(dir.path());
    put(&s, "k", "v1").await;
    assert_eq!(s.write_health(), Ok(()));
    faults.fail_engine_sync.store(true, Ordering::SeqCst);
    let r = s.lease_grant(LeaseGrantRequest { ttl: 10, id: 7 }).await;
    assert!(matches!(r, Err(Error::OutcomeUnknown(_))), "{r:?}");
    faults.fail_engine_sync.store(false, Ordering::SeqCst);
    let r = try_put(&s, "k", "v2").await;
    assert!(matches!(r, Err(Error::WritesStopped(_))), "{r:?}");
    // What /health reports.
    let why = s.write_health().unwrap_err();
    assert!(why.contains("stopped accepting writes"), "{why}");
    s.close();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.write_health(), Ok(()));
    assert_eq!(get(&s, rr("k", "")).await.kvs[0].value, b"v1");
    assert_eq!(rev_of(&put(&s, "k", "v3").await.header), 3);
}

/// A log append that fails before writing: definite failure is not claimed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_append_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (s, faults) = faulty(dir.path());
    faults.fail_log_append.store(true, Ordering::SeqCst);
    let r = try_put(&s, "k", "v").await;
    assert!(matches!(r, Err(Error::OutcomeUnknown(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(
        dir.path(),
        StoreOptions {
            max_leases: 3,
            ..StoreOptions::default()
        },
    );
    for id in 1..=3 {
        s.lease_grant(LeaseGrantRequest { ttl: 60, id })
            .await
            .unwrap();
    }
    match s.lease_grant(LeaseGrantRequest { ttl: 60, id: 4 }).await {
        Err(Error::TooManyLeases { max: 3 }) => {}
        other => panic!("{other:?}"),
    }
    s.lease_revoke(&coffer_store::Caller::Internal, 1)
        .await
        .unwrap();
    s.lease_grant(LeaseGrantRequest { ttl: 60, id: 4 })
        .await
        .unwrap();
}

/// The writer's queue is bounded: a burst beyond it gets etcd's `too many requests` at once,
/// and every write that was accepted is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open_with(
        dir.path(),
        StoreOptions {
            writer_queue: 8,
            ..StoreOptions::default()
        },
    ));
    let n = 2000;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.put(
                &coffer_store::Caller::Internal,
                PutRequest {
                    key: format!("k{i:06}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                },
            )
            .await
        }));
    }
    let (mut ok, mut busy) = (0i64, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::TooManyRequests) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0, "no request was refused");
    assert_eq!(get(&s, rr("k", "l")).await.count, ok);
    assert_eq!(s.current_revision(), 1 + ok);
}
