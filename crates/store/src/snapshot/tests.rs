//! Snapshot → restore round trips against real embedded stores (redb in temp dirs), without
//! processes. The etcd side (etcdctl, a real etcd on the restored file) is tested in
//! `crates/conformance/tests/snapshot.rs`.

use std::sync::Arc;

use coffer_proto::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
};
use sha2::{Digest, Sha256};

use super::*;
use crate::{Backend, EmbeddedStore, Error, Sealer, StoreOptions};

/// TEST ONLY: "seals" by XOR with a one-byte key, behind a tag naming the key; opening with
/// another key fails, like a real wrong key.
struct Keyed(u8);

impl Sealer for Keyed {
    fn seal(&self, _key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let mut v = vec![b'K', self.0];
        v.extend(plaintext.iter().map(|b| b ^ self.0));
        Ok(v)
    }
    fn open(&self, _key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        match stored {
            [b'K', k, rest @ ..] if *k == self.0 => Ok(rest.iter().map(|b| b ^ self.0).collect()),
            [b'K', k, ..] => Err(format!("sealed with test key {k}, not {}", self.0)),
            _ => Err("not sealed by the test sealer".into()),
        }
    }
}

fn open(dir: &Path, key: u8) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(dir, Arc::new(Keyed(key)), StoreOptions::default()).unwrap())
}

const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

async fn put(s: &EmbeddedStore, k: &str, v: &str, lease: i64) -> i64 {
    s.put(
        &crate::Caller::Internal,
        PutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .header
    .unwrap()
    .revision
}

async fn range_all(s: &EmbeddedStore, rev: i64) -> Result<Vec<KeyValue>, Error> {
    s.range(
        &crate::Caller::Internal,
        RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        },
    )
    .await
    .map(|r| r.kvs)
}

/// A store with overwrites, deletes, a lease, a compaction and writes after it.
async fn populate(s: &EmbeddedStore) -> (i64, i64) {
    let lease = s
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .id;
    for i in 0..300 {
        let l = if i % 50 == 0 { lease } else { 0 };
        put(
            s,
            &format!("/registry/secrets/k{i:04}"),
            &format!("{MARKER}-{i}"),
            l,
        )
        .await;
    }
    for i in (0..300).step_by(7) {
        put(
            s,
            &format!("/registry/secrets/k{i:04}"),
            &format!("{MARKER}-v2-{i}"),
            0,
        )
        .await;
    }
    for i in (0..300).step_by(11) {
        s.delete_range(
            &crate::Caller::Internal,
            DeleteRangeRequest {
                key: format!("/registry/secrets/k{i:04}").into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let at = s.current_revision() - 5;
    s.compact(CompactionRequest {
        revision: at,
        physical: true,
    })
    .await
    .unwrap();
    // A large value spans overflow pages.
    put(s, "/big", &"x".repeat(100_000), 0).await;
    put(s, "/after", "compaction", 0).await;
    (at, lease)
}

fn snapshot_bytes(s: &EmbeddedStore) -> (Vec<u8>, SnapshotInfo) {
    let mut snap = s.snapshot().unwrap();
    let info = snap.info();
    let mut out = Vec::new();
    let mut pieces = Vec::new();
    for c in &mut snap {
        let c = c.unwrap();
        pieces.push((c.blob.len(), c.remaining));
        out.extend_from_slice(&c.blob);
    }
    // Chunks of at most 32 KiB, remaining counting down to 0, then the 32-byte digest.
    let (last, body) = pieces.split_last().unwrap();
    assert_eq!(*last, (HASH_LEN, 0));
    let mut left = info.size;
    for (len, remaining) in body {
        assert!(*len <= CHUNK_SIZE && *len > 0);
        left -= *len as u64;
        assert_eq!(*remaining, left);
    }
    assert_eq!(left, 0);
    assert_eq!(out.len() as u64, info.size + HASH_LEN as u64);
    assert_eq!(out.len() % 512, HASH_LEN, "etcdctl's size check");
    let body = &out[..out.len() - HASH_LEN];
    assert_eq!(
        Sha256::digest(body).as_slice(),
        &out[out.len() - HASH_LEN..]
    );
    (out, info)
}

#[tokio::test]
async fn snapshot_restores_every_record_revision_compaction_and_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(&tmp.path().join("src"), 7);
    let (compacted, lease) = populate(&src).await;
    let current = src.current_revision();
    let (bytes, info) = snapshot_bytes(&src);
    assert_eq!(info.revision, current);
    assert_eq!(info.compact_revision, compacted);
    assert_eq!(info.leases, 1);
    // No temporary file is left in the data directory.
    let names: Vec<_> = fs::read_dir(tmp.path().join("src"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("snapshot")), "{names:?}");
    // Values stay sealed.
    assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));

    let file = tmp.path().join("snap.db");
    fs::write(&file, &bytes).unwrap();
    let mut calls = 0;
    let mut progress = |_n: u64| calls += 1;
    let restored = restore(
        &file,
        &tmp.path().join("dst"),
        Arc::new(Keyed(7)),
        RestoreOptions {
            skip_hash_check: false,
            progress: Some(&mut progress),
        },
    )
    .unwrap();
    assert!(calls >= 1);
    assert_eq!(restored.revision, current);
    assert_eq!(restored.compact_revision, compacted);
    assert_eq!(restored.records, info.records);
    assert_eq!(restored.leases, 1);

    let dst = open(&tmp.path().join("dst"), 7);
    assert_eq!(dst.current_revision(), current);
    assert_ne!(
        dst.cluster_id(),
        src.cluster_id(),
        "a restore is a new cluster"
    );
    for rev in [0, compacted, compacted + 2, current - 1] {
        let a = range_all(&src, rev).await.unwrap();
        let b = range_all(&dst, rev).await.unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "keyspace at revision {rev}");
    }
    assert!(matches!(
        range_all(&dst, compacted - 1).await,
        Err(Error::Compacted)
    ));
    let st = dst
        .lease_status(&crate::Caller::Internal, lease, true)
        .unwrap()
        .expect("lease restored");
    assert_eq!(st.granted_ttl, 600);
    assert!(st.remaining > 500 && st.remaining <= 600, "{st:?}");
    assert_eq!(
        st.keys,
        src.lease_status(&crate::Caller::Internal, lease, true)
            .unwrap()
            .unwrap()
            .keys
    );
    assert!(!st.keys.is_empty());
    // Revisions go on from where the snapshot was.
    assert_eq!(put(&dst, "/new", "v", 0).await, current + 1);

    // A snapshot of the restored store holds the same records.
    let (_, again) = snapshot_bytes(&dst);
    assert_eq!(again.records, info.records + 1);
}

#[tokio::test]
async fn wrong_key_damage_and_non_empty_targets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(&tmp.path().join("src"), 7);
    populate(&src).await;
    let (bytes, _) = snapshot_bytes(&src);
    let file = tmp.path().join("snap.db");
    fs::write(&file, &bytes).unwrap();

    // Wrong key: refused, naming a key, and nothing left behind.
    let target = tmp.path().join("wrong-key");
    let err = restore(
        &file,
        &target,
        Arc::new(Keyed(8)),
        RestoreOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RestoreError::Seal { .. }), "{msg}");
    assert!(msg.contains("/registry/secrets/k0"), "{msg}");
    assert!(msg.contains("sealed with test key 7"), "{msg}");
    assert!(!msg.contains(MARKER));
    assert!(!target.exists());

    // An existing empty directory is used, and emptied again on failure.
    fs::create_dir(&target).unwrap();
    assert!(restore(
        &file,
        &target,
        Arc::new(Keyed(8)),
        RestoreOptions::default()
    )
    .is_err());
    assert!(target.is_dir());
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

    // Non-empty target.
    fs::write(target.join("x"), b"x").unwrap();
    let err = restore(
        &file,
        &target,
        Arc::new(Keyed(7)),
        RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty(_)), "{err}");
    assert!(target.join("x").exists());

    // A flipped byte: both hashes named.
    let mut bad = bytes.clone();
    bad[5000] ^= 1;
    let damaged = tmp.path().join("damaged.db");
    fs::write(&damaged, &bad).unwrap();
    let err = restore(
        &damaged,
        &tmp.path().join("d1"),
        Arc::new(Keyed(7)),
        RestoreOptions::default(),
    )
    .unwrap_err();
    let expected = hex(&bytes[bytes.len() - HASH_LEN..]);
    let actual = hex(&Sha256::digest(&bad[..bad.len() - HASH_LEN]));
    match &err {
        RestoreError::HashMismatch {
            expected: e,
            actual: a,
            ..
        } => {
            assert_eq!((e, a), (&expected, &actual));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&expected) && err.to_string().contains(&actual));

    // No digest: refused unless --skip-hash-check.
    let raw = tmp.path().join("raw.db");
    let info = src.snapshot_to(&raw).unwrap();
    assert_eq!(fs::metadata(&raw).unwrap().len(), info.size);
    let err = restore(
        &raw,
        &tmp.path().join("d2"),
        Arc::new(Keyed(7)),
        RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RestoreError::NoHash { .. }), "{err}");
    let ok = restore(
        &raw,
        &tmp.path().join("d3"),
        Arc::new(Keyed(7)),
        RestoreOptions {
            skip_hash_check: true,
            progress: None,
        },
    )
    .unwrap();
    assert_eq!(ok.records, info.records);

    // Not a bbolt file at all.
    let junk = tmp.path().join("junk.db");
    let mut j = vec![0u8; 4096 * 4];
    j.extend_from_slice(&Sha256::digest(&j));
    fs::write(&junk, &j).unwrap();
    let err = restore(
        &junk,
        &tmp.path().join("d4"),
        Arc::new(Keyed(7)),
        RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RestoreError::Bbolt { .. }), "{err}");
}

#[test]
fn etcd_revision_keys() {
    let k = etcd_rev_key(Rev::new(0x0102, 3), false);
    assert_eq!(k, [0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]);
    assert_eq!(parse_rev_key(&k), Some((0x0102, 3, false)));
    let t = etcd_rev_key(Rev::new(9, 0), true);
    assert_eq!(t.len(), 18);
    assert_eq!(parse_rev_key(&t), Some((9, 0, true)));
    assert_eq!(parse_rev_key(&t[..16]), None);
    let mut bad = k.clone();
    bad[8] = b'-';
    assert_eq!(parse_rev_key(&bad), None);
    assert_eq!(parse_meta_rev(&etcd_rev_bytes(42)), Some(42));
    assert_eq!(parse_meta_rev(&[1, 2, 3]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_one_consistent_revision_while_writes_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(&tmp.path().join("src"), 7);
    for i in 0..2000 {
        put(&src, &format!("/k/{i:05}"), &format!("v{i}"), 0).await;
    }
    let writer = {
        let src = Arc::clone(&src);
        tokio::spawn(async move {
            for i in 0..300 {
                put(&src, &format!("/k/{:05}", i * 5), &format!("w{i}"), 0).await;
                put(&src, &format!("/new/{i:05}"), "n", 0).await;
            }
        })
    };
    // Take it while the writes go on.
    while src.current_revision() < 2001 + 100 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let started = std::time::Instant::now();
    let (bytes, info) = {
        let src = Arc::clone(&src);
        tokio::task::spawn_blocking(move || snapshot_bytes(&src))
            .await
            .unwrap()
    };
    let took = started.elapsed();
    writer.await.unwrap();
    let end = src.current_revision();
    assert!(
        info.revision >= 2101 && info.revision < end,
        "snapshot at {} (writes ended at {end})",
        info.revision
    );
    eprintln!(
        "snapshot of {} records: {} bytes in {took:?}",
        info.records,
        bytes.len()
    );
    let file = tmp.path().join("snap.db");
    fs::write(&file, &bytes).unwrap();
    restore(
        &file,
        &tmp.path().join("dst"),
        Arc::new(Keyed(7)),
        RestoreOptions::default(),
    )
    .unwrap();
    let dst = open(&tmp.path().join("dst"), 7);
    assert_eq!(dst.current_revision(), info.revision);
    // Exactly the keyspace at the snapshot's revision: nothing before it missing, nothing
    // after it included.
    assert_eq!(
        range_all(&dst, 0).await.unwrap(),
        range_all(&src, info.revision).await.unwrap()
    );
}
