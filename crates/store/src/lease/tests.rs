//! Lease tests against a real embedded store (redb in a temp dir).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coffer_proto::mvccpb::event::EventType;
use coffer_proto::{DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest};

use crate::watch::{Notice, WatchSpec};
use crate::{Backend, EmbeddedStore, Error, Sealer, StoreOptions};

/// TEST ONLY: a sealer that prefixes `t:`.
struct TestSealer;

impl Sealer for TestSealer {
    fn seal(&self, _key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let mut v = b"t:".to_vec();
        v.extend_from_slice(plaintext);
        Ok(v)
    }
    fn open(&self, _key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        stored
            .strip_prefix(b"t:")
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not sealed by the test sealer".into())
    }
}

fn open(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(dir, Arc::new(TestSealer), StoreOptions::default()).unwrap())
}

async fn grant(s: &EmbeddedStore, id: i64, ttl: i64) -> Result<(i64, i64), Error> {
    s.lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .map(|r| (r.id, r.ttl))
}

async fn put(s: &EmbeddedStore, k: &str, lease: i64) -> Result<i64, Error> {
    s.put(
        &crate::Caller::Internal,
        PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        },
    )
    .await
    .map(|r| r.header.unwrap().revision)
}

async fn exists(s: &EmbeddedStore, k: &str) -> bool {
    s.range(
        &crate::Caller::Internal,
        RangeRequest {
            key: k.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .count
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_revoke_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (id, ttl) = grant(&s, 0, 60).await.unwrap();
    assert!(id > 0);
    assert_eq!(ttl, 60);
    assert_eq!(grant(&s, -5, 1).await.unwrap(), (-5, 2));
    assert!(matches!(grant(&s, -5, 10).await, Err(Error::LeaseExist)));
    assert!(matches!(
        grant(&s, 0, 9_000_000_001).await,
        Err(Error::LeaseTtlTooLarge)
    ));
    assert!(matches!(
        put(&s, "x", 12345).await,
        Err(Error::LeaseNotFound)
    ));

    put(&s, "b", id).await.unwrap();
    put(&s, "a", id).await.unwrap();
    put(&s, "c", id).await.unwrap();
    put(&s, "c", 0).await.unwrap(); // detaches
    put(&s, "d", id).await.unwrap();
    s.delete_range(
        &crate::Caller::Internal,
        DeleteRangeRequest {
            key: b"d".to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap(); // detaches
    put(&s, "e", -5).await.unwrap();
    put(&s, "e", id).await.unwrap(); // moves
    let st = s
        .lease_status(&crate::Caller::Internal, id, true)
        .unwrap()
        .unwrap();
    assert_eq!(st.keys, vec![b"a".to_vec(), b"b".to_vec(), b"e".to_vec()]);
    assert_eq!(st.granted_ttl, 60);
    assert!((58..=60).contains(&st.remaining), "{}", st.remaining);
    assert!(s
        .lease_status(&crate::Caller::Internal, -5, true)
        .unwrap()
        .unwrap()
        .keys
        .is_empty());

    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    ws.create(
        WatchSpec {
            key: vec![0],
            range_end: vec![0],
            prev_kv: true,
            ..Default::default()
        },
        0,
        &crate::Caller::Internal,
    )
    .await;
    assert!(matches!(rx.recv().await, Some(Notice::Created { .. })));
    let before = s.current_revision();
    let resp = s.lease_revoke(&crate::Caller::Internal, id).await.unwrap();
    assert_eq!(resp.header.unwrap().revision, before + 1);
    for k in ["a", "b", "e"] {
        assert!(!exists(&s, k).await, "{k}");
    }
    assert!(exists(&s, "c").await);
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Notice::Events {
            events, revision, ..
        })) => {
            assert_eq!(revision, before + 1);
            let keys: Vec<&[u8]> = events
                .iter()
                .map(|e| {
                    assert_eq!(e.r#type, EventType::Delete as i32);
                    assert!(e.prev_kv.is_some());
                    e.kv.as_ref().unwrap().key.as_slice()
                })
                .collect();
            assert_eq!(keys, vec![b"a".as_slice(), b"b", b"e"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(s
        .lease_status(&crate::Caller::Internal, id, true)
        .unwrap()
        .is_none());
    assert!(matches!(
        s.lease_revoke(&crate::Caller::Internal, id).await,
        Err(Error::LeaseNotFound)
    ));
    // An empty lease's revoke writes no revision.
    let rev = s.current_revision();
    s.lease_revoke(&crate::Caller::Internal, -5).await.unwrap();
    assert_eq!(s.current_revision(), rev);
    assert!(s.lease_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.lease_keep_alive(777).unwrap().ttl, 0);
    let (id, _) = grant(&s, 0, 2).await.unwrap();
    let (long, _) = grant(&s, 0, 100).await.unwrap();
    put(&s, "short", id).await.unwrap();
    put(&s, "long", long).await.unwrap();
    assert_eq!(s.lease_ids(), vec![id, long]);
    // Keep it alive past its TTL.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(s.lease_keep_alive(id).unwrap().ttl, 2);
    }
    assert!(exists(&s, "short").await);
    // Then let it expire.
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !exists(&s, "short").await {
            gone = true;
            break;
        }
    }
    assert!(gone, "expired lease not revoked");
    assert!(s
        .lease_status(&crate::Caller::Internal, id, true)
        .unwrap()
        .is_none());
    assert_eq!(s.lease_keep_alive(id).unwrap().ttl, 0);
    assert!(exists(&s, "long").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_is_frozen_across_restart() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    // Bounds from measured times, not fixed windows: `alive` over-estimates how long the lease
    // ran while the store was open, `down` under-estimates the downtime.
    let t0 = Instant::now();
    let (id, rev) = {
        let s = open(dir.path());
        let (id, _) = grant(&s, 0, 30).await.unwrap();
        let rev = put(&s, "k", id).await.unwrap();
        // At least 1.2 s alive, so a TTL reset to full (29 whole seconds) is told apart from
        // the frozen one (28 at most).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        s.close();
        (id, rev)
    };
    let t1 = Instant::now();
    // Downtime must not count.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t2 = Instant::now();
    let s = open(dir.path());
    let st = s
        .lease_status(&crate::Caller::Internal, id, true)
        .unwrap()
        .unwrap();
    let alive = (t1 - t0) + t2.elapsed();
    let down = t2 - t1;
    assert_eq!(st.granted_ttl, 30);
    // Frozen: floor(30 - actual alive time) >= floor(30 - alive). Had the downtime counted,
    // remaining would be <= floor(30 - 1.2 - down), below that bound unless this machine
    // needed more than `down` - 1 s for opening, granting and closing.
    let lowest = (30.0 - alive.as_secs_f64()).floor() as i64;
    assert!(
        st.remaining >= lowest,
        "downtime counted: {} < {lowest} (alive {alive:?}, down {down:?})",
        st.remaining
    );
    assert!(st.remaining <= 28, "reset to full: {}", st.remaining);
    assert_eq!(st.keys, vec![b"k".to_vec()]);
    assert_eq!(s.current_revision(), rev);
    // The lease still works after the restart.
    s.lease_revoke(&crate::Caller::Internal, id).await.unwrap();
    assert!(!exists(&s, "k").await);
}
