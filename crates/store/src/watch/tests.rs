//! Tests of the watch hub against a real embedded store (redb in a temp dir).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coffer_proto::mvccpb::event::EventType;
use coffer_proto::{CompactionRequest, DeleteRangeRequest, PutRequest};
use tokio::sync::mpsc;

use super::*;
use crate::{Backend, EmbeddedStore, Sealer, StoreOptions};

/// TEST ONLY: a sealer that prefixes `t:` (values still round-trip through the engine).
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

fn store(dir: &tempfile::TempDir) -> Arc<EmbeddedStore> {
    Arc::new(
        EmbeddedStore::open(dir.path(), Arc::new(TestSealer), StoreOptions::default()).unwrap(),
    )
}

async fn put(s: &EmbeddedStore, k: &str, v: &str) -> i64 {
    s.put(
        &crate::Caller::Internal,
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .header
    .unwrap()
    .revision
}

fn prefix(p: &str, start: i64) -> WatchSpec {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchSpec {
        key: p.into(),
        range_end: end,
        start_revision: start,
        prev_kv: true,
        ..Default::default()
    }
}

async fn recv(rx: &mut mpsc::Receiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notice within 10 s")
        .expect("stream closed")
}

/// Collects event notices of `watch_id` until `n` events arrived; returns (revision, key,
/// type, prev value) per event.
async fn events(
    rx: &mut mpsc::Receiver<Notice>,
    n: usize,
) -> Vec<(i64, String, EventType, Option<String>)> {
    let mut out = Vec::new();
    while out.len() < n {
        match recv(rx).await {
            Notice::Events { events, .. } => {
                for e in events {
                    let kv = e.kv.clone().unwrap();
                    out.push((
                        kv.mod_revision,
                        String::from_utf8(kv.key).unwrap(),
                        EventType::try_from(e.r#type).unwrap(),
                        e.prev_kv
                            .as_ref()
                            .map(|p| String::from_utf8(p.value.clone()).unwrap()),
                    ));
                }
            }
            Notice::Progress { .. } => {}
            other => panic!("unexpected notice {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_in_order_with_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    assert_eq!(
        ws.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(0)
    );
    assert_eq!(
        recv(&mut rx).await,
        Notice::Created {
            watch_id: 0,
            revision: 1
        }
    );
    put(&s, "a1", "x").await;
    put(&s, "b", "ignored").await;
    put(&s, "a1", "y").await;
    s.delete_range(
        &crate::Caller::Internal,
        DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv: false,
        },
    )
    .await
    .unwrap();
    let got = events(&mut rx, 3).await;
    assert_eq!(
        got,
        vec![
            (2, "a1".into(), EventType::Put, None),
            (4, "a1".into(), EventType::Put, Some("x".into())),
            (5, "a1".into(), EventType::Delete, Some("y".into())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_catch_up_then_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for i in 0..10 {
        put(&s, "k", &format!("v{i}")).await; // revs 2..=11
    }
    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    ws.create(prefix("k", 3), 7, &crate::Caller::Internal).await;
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created {
            watch_id: 7,
            revision: 11
        }
    ));
    // Writes racing with the catch-up.
    for i in 10..15 {
        put(&s, "k", &format!("v{i}")).await; // revs 12..=16
    }
    let got = events(&mut rx, 14).await;
    let revs: Vec<i64> = got.iter().map(|e| e.0).collect();
    assert_eq!(revs, (3..=16).collect::<Vec<_>>());
    assert_eq!(got[0].3.as_deref(), Some("v0"));
    assert_eq!(got[13].3.as_deref(), Some("v13"));
    // Synced now: a progress request is answered at the current revision.
    assert!(ws.request_progress());
    assert_eq!(
        recv(&mut rx).await,
        Notice::Progress {
            watch_id: -1,
            revision: 16
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_created_then_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for i in 0..8 {
        put(&s, "k", &format!("v{i}")).await; // revs 2..=9
    }
    s.compact(CompactionRequest {
        revision: 6,
        physical: true,
    })
    .await
    .unwrap();
    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(16);
    ws.create(prefix("k", 3), 0, &crate::Caller::Internal).await;
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created { watch_id: 0, .. }
    ));
    match recv(&mut rx).await {
        Notice::Canceled {
            watch_id,
            compact_revision,
            reason,
            ..
        } => {
            assert_eq!((watch_id, compact_revision, reason.as_str()), (0, 6, ""));
        }
        other => panic!("{other:?}"),
    }
    // Watching from exactly the compacted revision is fine.
    ws.create(prefix("k", 6), 0, &crate::Caller::Internal).await;
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created { watch_id: 1, .. }
    ));
    let revs: Vec<i64> = events(&mut rx, 4).await.iter().map(|e| e.0).collect();
    assert_eq!(revs, vec![6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_never_stalls_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let hub = Arc::clone(s.hub());
    // A channel of 2 notices that nobody reads during the writes.
    let (mut slow, mut slow_rx) = hub.open_stream(2);
    slow.create(prefix("k", 0), 0, &crate::Caller::Internal)
        .await;
    // A fast watcher on another stream.
    let (mut fast, mut fast_rx) = hub.open_stream(1024);
    fast.create(prefix("k", 0), 0, &crate::Caller::Internal)
        .await;
    assert!(matches!(recv(&mut fast_rx).await, Notice::Created { .. }));
    let writes = tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..200 {
            put(&s, &format!("k{}", i % 7), &format!("v{i}")).await; // revs 2..=201
        }
    })
    .await;
    assert!(writes.is_ok(), "writes stalled behind a slow watcher");
    let fast_revs: Vec<i64> = events(&mut fast_rx, 200)
        .await
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(fast_revs, (2..=201).collect::<Vec<_>>());
    assert!(matches!(recv(&mut slow_rx).await, Notice::Created { .. }));
    let slow_events = events(&mut slow_rx, 200).await;
    let slow_revs: Vec<i64> = slow_events.iter().map(|e| e.0).collect();
    assert_eq!(slow_revs, (2..=201).collect::<Vec<_>>());
    // prev_kv from the revision before, also for the events read back from history.
    for (rev, key, _, prev) in &slow_events {
        let i = rev - 2;
        if i >= 7 {
            assert_eq!(
                prev.as_deref(),
                Some(format!("v{}", i - 7).as_str()),
                "{key}@{rev}"
            );
        } else {
            assert_eq!(prev, &None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_behind_compaction_is_cancelled_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let hub = Arc::clone(s.hub());
    let (mut slow, mut slow_rx) = hub.open_stream(1);
    slow.create(prefix("k", 0), 0, &crate::Caller::Internal)
        .await;
    assert!(matches!(recv(&mut slow_rx).await, Notice::Created { .. }));
    for i in 0..30 {
        put(&s, "k", &format!("v{i}")).await; // revs 2..=31
    }
    s.compact(CompactionRequest {
        revision: 25,
        physical: true,
    })
    .await
    .unwrap();
    // Whatever arrives must be contiguous from 2; then a compaction cancel.
    let mut next = 2;
    loop {
        match recv(&mut slow_rx).await {
            Notice::Events { events, .. } => {
                for e in events {
                    assert_eq!(
                        e.kv.as_ref().unwrap().mod_revision,
                        next,
                        "gap or duplicate"
                    );
                    next += 1;
                }
            }
            Notice::Canceled {
                compact_revision, ..
            } => {
                assert_eq!(compact_revision, 25);
                assert!(next < 25, "cancelled although history was available");
                break;
            }
            other => panic!("{other:?}"),
        }
        assert!(next <= 32);
        if next == 32 {
            // Delivered everything before compaction removed it: acceptable too.
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_ranges_and_progress_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let hub = Arc::clone(s.hub());
    let (mut ws, mut rx) = hub.open_stream(64);
    // No watcher: a progress request gets nothing.
    assert!(!ws.request_progress());
    // Explicit 1, then auto → 0, then auto → 2.
    assert_eq!(
        ws.create(prefix("a", 0), 1, &crate::Caller::Internal).await,
        Some(1)
    );
    assert_eq!(
        ws.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(0)
    );
    assert_eq!(
        ws.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(2)
    );
    // Duplicate explicit id, empty range.
    assert_eq!(
        ws.create(prefix("a", 0), 1, &crate::Caller::Internal).await,
        None
    );
    let empty = WatchSpec {
        key: b"b".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    };
    assert_eq!(ws.create(empty, 0, &crate::Caller::Internal).await, None);
    assert_eq!(
        ws.create(prefix("a", -3), 0, &crate::Caller::Internal)
            .await,
        None
    );
    for id in [1, 0, 2] {
        assert!(matches!(recv(&mut rx).await, Notice::Created { watch_id, .. } if watch_id == id));
    }
    for reason in [
        REASON_DUPLICATE_ID,
        REASON_EMPTY_RANGE,
        REASON_NEGATIVE_START,
    ] {
        assert!(matches!(recv(&mut rx).await, Notice::Refused { reason: r, .. } if r == reason));
    }
    // Cancel 2; unknown ids get no reply; the auto counter moves on to 3.
    ws.cancel(2).await;
    ws.cancel(99).await;
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Canceled {
            watch_id: 2,
            compact_revision: 0,
            ..
        }
    ));
    assert_eq!(
        ws.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(3)
    );
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created { watch_id: 3, .. }
    ));
    // Wait for the catch-up task to mark them synced.
    let mut answered = false;
    for _ in 0..100 {
        if ws.request_progress() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered);
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Progress {
            watch_id: -1,
            revision: 1
        }
    ));
    // A watcher with a future start: no progress answer, no periodic notification (#20221).
    let future = WatchSpec {
        progress_notify: true,
        ..prefix("z", 100)
    };
    assert_eq!(
        ws.create(future, 0, &crate::Caller::Internal).await,
        Some(4)
    );
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created { watch_id: 4, .. }
    ));
    // Every other watcher on the stream is synced (answered above), so a `true` here could
    // only come from ignoring the future start; polled for a while, never a false pass.
    for _ in 0..20 {
        assert!(
            !ws.request_progress(),
            "progress answered below a future start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ws.progress_tick();
    put(&s, "q", "1").await;
    ws.progress_tick();
    // progress_tick queues synchronously: had either tick sent anything, it would come before
    // the cancel's answer, so the next notice must be exactly that answer.
    ws.cancel(4).await;
    assert_eq!(
        recv(&mut rx).await,
        Notice::Canceled {
            watch_id: 4,
            compact_revision: 0,
            reason: String::new(),
            revision: 2,
        }
    );
    // A periodic tick reaches a synced progress_notify watcher that got no events.
    let pn = WatchSpec {
        progress_notify: true,
        ..prefix("p", 0)
    };
    assert_eq!(ws.create(pn, 0, &crate::Caller::Internal).await, Some(5));
    assert!(matches!(
        recv(&mut rx).await,
        Notice::Created { watch_id: 5, .. }
    ));
    // Wait until it is synced (a RequestProgress is answered only then), not a fixed time.
    let mut answered = false;
    for _ in 0..1000 {
        if ws.request_progress() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "watcher 5 never synced");
    assert_eq!(
        recv(&mut rx).await,
        Notice::Progress {
            watch_id: -1,
            revision: 2
        }
    );
    // One tick: exactly one notification to watcher 5; a second tick right after, with no
    // event between, gives exactly one more (it got nothing since the previous tick).
    ws.progress_tick();
    ws.progress_tick();
    for _ in 0..2 {
        assert_eq!(
            recv(&mut rx).await,
            Notice::Progress {
                watch_id: 5,
                revision: 2
            }
        );
    }
    assert!(rx.try_recv().is_err(), "two ticks, two notifications");
    drop(ws);
    assert_eq!(hub.watcher_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_limits_refuse_creates_per_stream_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let hub = Arc::clone(s.hub());
    let (mut a, mut rx_a) = hub.open_stream(64);
    let (mut b, mut rx_b) = hub.open_stream(64);
    a.set_limits(2, 3);
    b.set_limits(10, 3);
    assert_eq!(
        a.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(0)
    );
    assert_eq!(
        a.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(1)
    );
    // Third on stream a: over its per-stream limit.
    assert_eq!(
        a.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        None
    );
    assert_eq!(
        b.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(0)
    );
    // Fourth in the hub: over the total limit, on a stream with room.
    assert_eq!(
        b.create(prefix("a", 0), 7, &crate::Caller::Internal).await,
        None
    );
    assert_eq!(hub.watcher_count(), 3);
    for _ in 0..2 {
        assert!(matches!(recv(&mut rx_a).await, Notice::Created { .. }));
    }
    assert_eq!(
        recv(&mut rx_a).await,
        Notice::Refused {
            reason: REASON_TOO_MANY_WATCHERS.into(),
            revision: 1
        }
    );
    assert!(matches!(
        recv(&mut rx_b).await,
        Notice::Created { watch_id: 0, .. }
    ));
    assert!(
        matches!(recv(&mut rx_b).await, Notice::Refused { reason, .. } if reason == REASON_TOO_MANY_WATCHERS)
    );
    // A cancel frees a place; a refused create took no auto id.
    a.cancel(0).await;
    assert!(matches!(
        recv(&mut rx_a).await,
        Notice::Canceled { watch_id: 0, .. }
    ));
    assert_eq!(
        b.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        Some(1)
    );
    assert_eq!(
        a.create(prefix("a", 0), 0, &crate::Caller::Internal).await,
        None
    );
    // The remaining watchers still get events.
    put(&s, "a", "1").await;
    assert!(matches!(
        recv(&mut rx_b).await,
        Notice::Created { watch_id: 1, .. }
    ));
    let got = events(&mut rx_b, 2).await;
    assert_eq!(got.len(), 2);
}
