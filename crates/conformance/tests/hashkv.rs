//! HashKV against `coffer serve` as a check of the keyspace itself, not of the hash with
//! itself: it must change after a put, stay the same for a past revision while history grows,
//! and be identical after a crash, after a clean restart, and after `etcdctl snapshot save` +
//! `coffer snapshot restore` into a new data directory (same key). A value that depended on
//! anything but the plaintext keyspace (sealed bytes, nonces, engine layout) fails here.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test hashkv`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use coffer_conformance::client::connect;
use coffer_conformance::etcdctl;
use coffer_conformance::process::{coffer_binary, CofferOptions, CofferProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::{CompactionRequest, DeleteRangeRequest, HashKvRequest, PutRequest};

/// (hash, hash_revision, compact_revision) of HashKV at `revision` (0 = current).
async fn hash_at(endpoint: &str, revision: i64) -> (u32, i64, i64) {
    let mut m = MaintenanceClient::new(connect(endpoint).await.unwrap());
    let r = m
        .hash_kv(HashKvRequest { revision })
        .await
        .unwrap()
        .into_inner();
    (r.hash, r.hash_revision, r.compact_revision)
}

async fn put(endpoint: &str, k: &str, v: &str) -> i64 {
    let mut kv = KvClient::new(connect(endpoint).await.unwrap());
    kv.put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashkv_follows_the_keyspace_across_restart_and_snapshot_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = CofferProcess::start(CofferOptions::default()).unwrap();
    let ep = src.endpoint();
    for i in 0..6 {
        put(&ep, &format!("/k/{}", i % 3), &format!("v{i}")).await; // 2..=7
    }
    let mut kv = KvClient::new(connect(&ep).await.unwrap());
    kv.delete_range(DeleteRangeRequest {
        key: "/k/0".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // 8
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .unwrap();

    // The same state twice: the same hash; a put changes it; the past revision keeps its hash.
    let before = hash_at(&ep, 0).await;
    assert_eq!(before.1, 8);
    assert_eq!(before.2, 4, "compact_revision");
    assert_eq!(hash_at(&ep, 0).await, before);
    assert_eq!(put(&ep, "/k/1", "changed").await, 9);
    let after = hash_at(&ep, 0).await;
    assert_eq!((after.1, after.2), (9, 4));
    assert_ne!(after.0, before.0, "HashKV did not change after a put");
    assert_eq!(hash_at(&ep, 8).await, before, "the hash at 8 moved");
    // A put of the same value is still a new revision: a new hash.
    assert_eq!(put(&ep, "/k/1", "changed").await, 10);
    let now = hash_at(&ep, 0).await;
    assert_ne!(now.0, after.0, "HashKV ignores a same-value put");
    assert_eq!(hash_at(&ep, 9).await, after);

    // Crash, then clean restart, on the same data directory.
    src.kill();
    src.restart().unwrap();
    let ep = src.endpoint();
    assert_eq!(hash_at(&ep, 0).await, now, "after SIGKILL + restart");
    assert_eq!(
        hash_at(&ep, 8).await,
        before,
        "after SIGKILL + restart, at 8"
    );
    src.terminate(std::time::Duration::from_secs(10)).unwrap();
    src.restart().unwrap();
    let ep = src.endpoint();
    assert_eq!(hash_at(&ep, 0).await, now, "after a clean restart");
    assert_eq!(hash_at(&ep, 9).await, after, "after a clean restart, at 9");

    // etcdctl snapshot save, coffer snapshot restore into a new data directory, serve it.
    let file = tmp.path().join("snap.db");
    let out = etcdctl::run(&ep, &["snapshot", "save", file.to_str().unwrap()], None).unwrap();
    assert_eq!(out.code, 0, "snapshot save: {}\n{}", out.stdout, out.stderr);
    let mut dst = CofferProcess::start(CofferOptions {
        default_key_file: Some(src.key_file().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    dst.kill();
    std::fs::remove_dir_all(dst.data_dir()).unwrap();
    let out = Command::new(coffer_binary().unwrap())
        .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir"])
        .arg(dst.data_dir())
        .arg("--default-key-file")
        .arg(src.key_file())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dst.restart().unwrap();
    let dep = dst.endpoint();
    assert_eq!(hash_at(&dep, 0).await, now, "after snapshot restore");
    assert_eq!(
        hash_at(&dep, 8).await,
        before,
        "after snapshot restore, at 8"
    );
    // Both copies take the same write and still agree.
    let a = put(&ep, "/k/9", "x").await;
    let b = put(&dep, "/k/9", "x").await;
    assert_eq!(a, b);
    let h = hash_at(&ep, 0).await;
    assert_ne!(h.0, now.0);
    assert_eq!(hash_at(&dep, 0).await, h, "the restored copy diverged");
}
