//! A replay of what kube-apiserver sends to its storage (etcd-api.md §2), on Debian's etcd
//! 3.4.23 and on `coffer serve`, answers compared: optimistic create, GuaranteedUpdate with
//! retry on the returned kv, Delete with precondition, paginated lists pinned to a revision,
//! count and keys-only lists, the compaction cycle on `compact_rev_key`, the health probe and the
//! Status version gate for RequestWatchProgress.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test kube_replay`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coffer_conformance::client::Session;
use coffer_conformance::runner::side_by_side;
use coffer_conformance::transcript::ExpectedDifference;
use coffer_proto::{
    response_op, CompactionRequest, KeyValue, LeaseGrantRequest, PutRequest, RangeRequest,
    TxnResponse,
};
use common::*;
use serde_json::{json, Value};

const PODS: &str = "/registry/pods/";

const EXPECTED: &[ExpectedDifference] = &[ExpectedDifference {
    scenario: "version_gate",
    step: "status version gate",
    issue: "etcd-io/etcd#15220 (RequestProgress fixed by #17557 in 3.4.31/3.5.13); decisions.md",
    why: "etcd 3.4.23 fails kube-apiserver's gate (RequestWatchProgress off); Coffer reports \
          3.5.21 and implements 3.5.13+ RequestProgress, so it passes",
    expected_from_etcd: |v| {
        *v = json!({"version": "3.5.21", "supports_request_watch_progress": true})
    },
}];

/// kube-apiserver's `endpointSupportsRequestWatchProgress`: semver `>= 3.4.31` and not in
/// `[3.5.0, 3.5.13)`; anything unparsable is unsupported.
fn supports_request_watch_progress(version: &str) -> bool {
    let Some(v) = parse_semver(version) else {
        return false;
    };
    v >= (3, 4, 31, true) && !((3, 5, 0, true)..(3, 5, 13, true)).contains(&v)
}

/// `(major, minor, patch, is_release)`: a pre-release sorts before its release.
fn parse_semver(s: &str) -> Option<(u64, u64, u64, bool)> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let s = s.split('+').next()?;
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) if !p.is_empty() => (c, true),
        Some(_) => return None,
        None => (s, false),
    };
    let mut it = core.split('.');
    let mut num = || -> Option<u64> {
        let p = it.next()?;
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        p.parse().ok()
    };
    let (a, b, c) = (num()?, num()?, num()?);
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c, !pre))
}

#[test]
fn version_gate_matches_kube() {
    assert!(!supports_request_watch_progress("3.4.23"));
    assert!(!supports_request_watch_progress("3.4.30"));
    assert!(supports_request_watch_progress("3.4.31"));
    assert!(!supports_request_watch_progress("3.5.0"));
    assert!(!supports_request_watch_progress("3.5.12"));
    assert!(!supports_request_watch_progress("3.5.13-rc.0"));
    assert!(supports_request_watch_progress("3.5.13"));
    assert!(supports_request_watch_progress("3.5.21"));
    assert!(supports_request_watch_progress("3.6.0"));
    assert!(!supports_request_watch_progress("garbage"));
    assert!(!supports_request_watch_progress("3.5"));
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Err(report) = side_by_side(stringify!($name), EXPECTED, scenarios::$name).await {
                    panic!("{report}");
                }
            }
        )*
    };
}

replay_tests!(
    version_gate,
    objects_lifecycle,
    paginated_lists,
    compaction_cycle
);

mod scenarios {
    use super::*;

    fn key(name: &str) -> String {
        format!("{PODS}default/{name}")
    }

    fn first_kv(t: &TxnResponse) -> Option<KeyValue> {
        match t.responses.first()?.response.as_ref()? {
            response_op::Response::ResponseRange(r) => r.kvs.first().cloned(),
            _ => None,
        }
    }

    /// kube's create: `Txn{MOD(key) == 0 → Put}`.
    async fn create(
        s: &mut Session,
        label: &str,
        k: &str,
        v: &str,
        lease: i64,
    ) -> Option<TxnResponse> {
        s.txn(
            label,
            txn(
                vec![cmp(k, MOD, EQUAL, 0, "")],
                vec![op_put(PutRequest { lease, ..put(k, v) })],
                vec![],
            ),
        )
        .await
    }

    /// kube's GuaranteedUpdate: `Txn{MOD(key) == orig → Put, else Range}`, retried with the kv the
    /// failure branch returned.
    async fn guaranteed_update(s: &mut Session, label: &str, k: &str, orig_mod: i64, v: &str) {
        let mut orig = orig_mod;
        for attempt in 0..3 {
            let r = s
                .txn(
                    &format!("{label} attempt {attempt}"),
                    txn(
                        vec![cmp(k, MOD, EQUAL, orig, "")],
                        vec![op_put(put(k, v))],
                        vec![op_range(range(k))],
                    ),
                )
                .await;
            match r {
                Some(t) if t.succeeded => return,
                Some(t) => match first_kv(&t) {
                    Some(kv) => orig = kv.mod_revision,
                    None => return,
                },
                None => return,
            }
        }
    }

    /// kube's Delete with precondition and retry.
    async fn guarded_delete(s: &mut Session, label: &str, k: &str, orig_mod: i64) {
        let mut orig = orig_mod;
        for attempt in 0..3 {
            let r = s
                .txn(
                    &format!("{label} attempt {attempt}"),
                    txn(
                        vec![cmp(k, MOD, EQUAL, orig, "")],
                        vec![op_del(del(k))],
                        vec![op_range(range(k))],
                    ),
                )
                .await;
            match r {
                Some(t) if t.succeeded => return,
                Some(t) => match first_kv(&t) {
                    Some(kv) => orig = kv.mod_revision,
                    None => return,
                },
                None => return,
            }
        }
    }

    /// Replaces a server-chosen lease id by a placeholder wherever a `lease` field holds it.
    fn mask_lease(v: &mut Value, id: i64) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if (k == "lease" || k == "id") && x.as_i64() == Some(id) {
                        *x = json!("<granted lease>");
                    } else {
                        mask_lease(x, id);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| mask_lease(x, id)),
            _ => {}
        }
    }

    pub async fn version_gate(mut s: Session) -> Session {
        s.range("health probe", range("/registry/health")).await;
        let st = s.maintenance.status(coffer_proto::StatusRequest {}).await;
        let answer = match st {
            Ok(r) => {
                let v = r.into_inner().version;
                json!({"version": v, "supports_request_watch_progress": supports_request_watch_progress(&v)})
            }
            Err(e) => coffer_conformance::json::status(&e),
        };
        s.record("status version gate", json!({"status": {}}), answer);
        s
    }

    pub async fn objects_lifecycle(mut s: Session) -> Session {
        s.range("health probe", range("/registry/health")).await;
        s.range(
            "current RV",
            RangeRequest {
                limit: 1,
                ..range(PODS)
            },
        )
        .await;
        for i in 1..=3 {
            create(
                &mut s,
                &format!("create p{i}"),
                &key(&format!("p{i}")),
                &format!("spec{i}"),
                0,
            )
            .await;
        }
        create(
            &mut s,
            "create p1 again (already exists)",
            &key("p1"),
            "dup",
            0,
        )
        .await;
        // Events: a lease granted with TTL ttl+window, many keys on it, never kept alive.
        let grant = s
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 3660, id: 0 })
            .await;
        let lease_id = match &grant {
            Ok(r) => r.get_ref().id,
            Err(_) => 0,
        };
        let answer = match grant {
            Ok(r) => {
                let r = r.into_inner();
                json!({"id_positive": r.id > 0, "ttl": r.ttl, "error": r.error})
            }
            Err(e) => coffer_conformance::json::status(&e),
        };
        s.record(
            "lease grant for events",
            json!({"lease_grant": {"ttl": 3660}}),
            answer,
        );
        for i in 1..=2 {
            create(
                &mut s,
                &format!("create event {i}"),
                &format!("/registry/events/default/e{i}"),
                "event",
                lease_id,
            )
            .await;
        }
        // Get object at latest and at a resource version.
        let got = s
            .range(
                "get p1",
                RangeRequest {
                    limit: 1,
                    ..range(&key("p1"))
                },
            )
            .await;
        let p1_mod = got
            .as_ref()
            .and_then(|r| r.kvs.first())
            .map(|kv| kv.mod_revision)
            .unwrap_or(0);
        s.range(
            "get p1 at its RV",
            RangeRequest {
                limit: 1,
                revision: p1_mod,
                ..range(&key("p1"))
            },
        )
        .await;
        s.range(
            "get p1 at future RV",
            RangeRequest {
                limit: 1,
                revision: 10_000,
                ..range(&key("p1"))
            },
        )
        .await;
        // Update with the right revision, then with a stale one (retry path).
        guaranteed_update(&mut s, "update p1 fresh", &key("p1"), p1_mod, "spec1-v2").await;
        guaranteed_update(&mut s, "update p1 stale", &key("p1"), p1_mod, "spec1-v3").await;
        guaranteed_update(&mut s, "update missing p9", &key("p9"), 5, "x").await;
        // Delete with a stale precondition, retried.
        guarded_delete(&mut s, "delete p2 stale", &key("p2"), 1).await;
        guarded_delete(&mut s, "delete p2 gone", &key("p2"), 1).await;
        s.range(
            "list pods",
            span(PODS, &String::from_utf8_lossy(&prefix_end(PODS.as_bytes()))),
        )
        .await;
        s.range(
            "list events",
            span("/registry/events/", "/registry/events0"),
        )
        .await;
        for step in &mut s.transcript.steps {
            mask_lease(&mut step.answer, lease_id);
            mask_lease(&mut step.request, lease_id);
        }
        s
    }

    pub async fn paginated_lists(mut s: Session) -> Session {
        for i in 0..7 {
            create(
                &mut s,
                &format!("create p{i}"),
                &key(&format!("p{i}")),
                "v",
                0,
            )
            .await;
        }
        create(
            &mut s,
            "create other ns",
            &format!("{PODS}kube-system/x"),
            "v",
            0,
        )
        .await;
        let end = prefix_end(PODS.as_bytes());
        s.range(
            "count (Stats)",
            RangeRequest {
                count_only: true,
                ..span(PODS, "")
            }
            .with_end(&end),
        )
        .await;
        s.range(
            "keys only (size estimate)",
            RangeRequest {
                keys_only: true,
                ..span(PODS, "")
            }
            .with_end(&end),
        )
        .await;
        // Paginated list, limit 3, pinned to the first page's revision; a write lands between pages.
        let mut start = PODS.as_bytes().to_vec();
        let mut pinned = 0;
        for page in 0..5 {
            let r = s
                .range(
                    &format!("list page {page}"),
                    RangeRequest {
                        key: start.clone(),
                        range_end: end.clone(),
                        limit: 3,
                        revision: pinned,
                        ..Default::default()
                    },
                )
                .await;
            let Some(r) = r else { break };
            let has_more = (r.kvs.len() as i64) < r.count;
            s.record(
                &format!("page {page} hasMore"),
                json!({"computed": "len(kvs) < count"}),
                json!({"has_more": has_more, "more": r.more}),
            );
            if page == 0 {
                pinned = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                create(&mut s, "create during list", &key("p3a"), "late", 0).await;
            }
            let Some(last) = r.kvs.last() else { break };
            if !has_more {
                break;
            }
            start = last.key.clone();
            start.push(0);
        }
        // Watch-cache initial list: limit 10000, paginated with `more`.
        s.range(
            "watch cache initial list",
            RangeRequest {
                limit: 10_000,
                ..span(PODS, "")
            }
            .with_end(&end),
        )
        .await;
        s
    }

    pub async fn compaction_cycle(mut s: Session) -> Session {
        for i in 0..4 {
            create(
                &mut s,
                &format!("create p{i}"),
                &key(&format!("p{i}")),
                "v",
                0,
            )
            .await;
        }
        let end = prefix_end(PODS.as_bytes());
        let first = s
            .range(
                "list at current",
                RangeRequest {
                    limit: 2,
                    ..span(PODS, "")
                }
                .with_end(&end),
            )
            .await;
        let list_rev = first
            .and_then(|r| r.header.map(|h| h.revision))
            .unwrap_or(0);
        // Cycle 1: compact_rev_key absent (version 0), R = 0 → no Compact.
        let mut t = 0;
        let mut r_prev = 0;
        for cycle in 1..=3 {
            let r = s
                .txn(
                    &format!("compaction cycle {cycle} version txn"),
                    txn(
                        vec![cmp("compact_rev_key", VERSION, EQUAL, t, "")],
                        vec![op_put(put("compact_rev_key", &r_prev.to_string()))],
                        vec![op_range(range("compact_rev_key"))],
                    ),
                )
                .await;
            let Some(r) = r else { break };
            let cur = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            if r.succeeded {
                t += 1;
                if r_prev != 0 {
                    s.compact(
                        &format!("compaction cycle {cycle} compact"),
                        CompactionRequest {
                            revision: r_prev,
                            physical: false,
                        },
                    )
                    .await;
                }
            } else if let Some(kv) = first_kv(&r) {
                t = kv.version;
            }
            r_prev = cur;
            for i in 0..2 {
                create(
                    &mut s,
                    &format!("cycle {cycle} write {i}"),
                    &key(&format!("c{cycle}-{i}")),
                    "v",
                    0,
                )
                .await;
            }
        }
        // A stale apiserver (old t) loses the race and learns the current version.
        s.txn(
            "stale compaction txn",
            txn(
                vec![cmp("compact_rev_key", VERSION, EQUAL, 1, "")],
                vec![op_put(put("compact_rev_key", "1"))],
                vec![op_range(range("compact_rev_key"))],
            ),
        )
        .await;
        s.range(
            "continue list at compacted revision",
            RangeRequest {
                key: {
                    let mut k = key("p1").into_bytes();
                    k.push(0);
                    k
                },
                limit: 2,
                revision: list_rev,
                ..Default::default()
            }
            .with_end(&end),
        )
        .await;
        s.range(
            "list at future revision",
            RangeRequest {
                revision: 100_000,
                ..span(PODS, "")
            }
            .with_end(&end),
        )
        .await;
        s.range("compact_rev_key", range("compact_rev_key")).await;
        s.range(
            "list after compaction",
            RangeRequest {
                keys_only: true,
                ..span(PODS, "")
            }
            .with_end(&end),
        )
        .await;
        s
    }

    trait WithEnd {
        fn with_end(self, end: &[u8]) -> Self;
    }

    impl WithEnd for RangeRequest {
        fn with_end(mut self, end: &[u8]) -> Self {
            self.range_end = end.to_vec();
            self
        }
    }
}
