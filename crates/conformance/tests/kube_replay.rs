//! A replay of what kube-apiserver sends to its storage (etcd-api.md §2), on Debian's etcd
//! 3.4.23 and on `coffer serve`, answers compared: optimistic create, GuaranteedUpdate with
//! retry on the returned kv, Delete with precondition, paginated lists pinned to a revision,
//! count and keys-only lists, the compaction cycle on `compact_rev_key`, the health probe and the
//! Status version gate for RequestWatchProgress; and the watch cache's side: one prefix watch
//! per resource from the list's revision + 1 with `prev_kv` and `progress_notify` on one shared
//! stream, RequestProgress for consistent reads from the cache, periodic progress notifications
//! (bookmarks) with `--experimental-watch-progress-notify-interval=500ms` on both servers,
//! Events written with leases shared by many keys and deleted in one revision when a lease
//! expires, and compaction while the cache watches.
//!
//! Periodic progress notifications arrive at times neither server controls, so they are not in
//! the transcripts; every one is checked instead (after a notification at revision R, no event
//! at or below R may arrive for that watcher) and the violations, if any, are a transcript step.
//!
//! `replay_over_mutual_tls` runs part of it with both servers on mutual TLS.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test kube_replay`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coffer_conformance::client::Session;
use coffer_conformance::runner::{side_by_side, side_by_side_tls, side_by_side_with};
use coffer_conformance::transcript::ExpectedDifference;
use coffer_conformance::watch::{is_progress_notification, WatchStream};
use coffer_proto::watch_request::RequestUnion;
use coffer_proto::{
    response_op, CompactionRequest, KeyValue, LeaseGrantRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, TxnResponse,
    WatchCreateRequest, WatchResponse,
};
use common::*;
use serde_json::{json, Value};

const PODS: &str = "/registry/pods/";

/// Periodic progress notifications every 500 ms on both servers (kubeadm uses 5 s).
const BOOKMARK_INTERVAL_FLAG: &str = "--experimental-watch-progress-notify-interval=500ms";

const EXPECTED: &[ExpectedDifference] = &[
    ExpectedDifference {
        scenario: "version_gate",
        step: "status version gate",
        issue:
            "etcd-io/etcd#15220 (RequestProgress fixed by #17557 in 3.4.31/3.5.13); decisions.md",
        why: "etcd 3.4.23 fails kube-apiserver's gate (RequestWatchProgress off); Coffer reports \
              3.5.21 and implements 3.5.13+ RequestProgress, so it passes",
        expected_from_etcd: |v| {
            *v = json!({"version": "3.5.21", "supports_request_watch_progress": true})
        },
    },
    ExpectedDifference {
        scenario: "watch_cache",
        step: "consistent read: RequestProgress while the watch catches up",
        issue: "etcd-io/etcd#15220 (fixed by #15237 in 3.4.25/3.5.8, final form #17557 in \
                3.4.31/3.5.13)",
        why: "etcd 3.4.23 answers RequestProgress at once with the current revision while the \
              new watcher's history is still queued, so the catch-up events arrive after a \
              progress notification that already covered them (kube would serve a stale list); \
              Coffer answers only once the stream's watchers are synced, after the events",
        expected_from_etcd: |v| {
            let after = std::mem::take(&mut v["after_answer"]["events"]);
            if let (Some(before), Some(after)) = (
                v["before_answer"]["events"].as_object_mut(),
                after.as_object(),
            ) {
                for (id, responses) in after {
                    let list = before.entry(id.clone()).or_insert_with(|| json!([]));
                    if let (Some(list), Some(more)) = (list.as_array_mut(), responses.as_array()) {
                        list.extend(more.iter().cloned());
                    }
                }
            }
            v["after_answer"]["events"] = json!({});
        },
    },
    ExpectedDifference {
        scenario: "watch_from_compacted_delete",
        step: "watch x from the compact revision (a DELETE)",
        issue: "etcd-io/etcd#18089 (fixed by #18274 in 3.4.34/3.5.16; etcd-api.md §5.3)",
        why: "etcd 3.4.23 compacts away a tombstone whose revision equals the compact revision, \
              so a watch from that revision never sees the DELETE; fixed etcd keeps the \
              tombstone and delivers it; Coffer keeps what revision R replaced until the next \
              compaction, so its DELETE also carries prev_kv (watch.rs, #19179 family)",
        expected_from_etcd: |v| {
            v["events"] = json!({"0": [compacted_delete_response(0, vec![])]});
        },
    },
    ExpectedDifference {
        scenario: "watch_from_compacted_delete",
        step: "watch pods from the compact revision",
        issue: "etcd-io/etcd#18089 (fixed by #18274 in 3.4.34/3.5.16; etcd-api.md §5.3)",
        why: "as above: the catch-up batch from the compact revision starts with the DELETE \
              kept by the fix, then the later PUT",
        expected_from_etcd: |v| {
            let later: Vec<Value> = v["events"]["1"][0]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            v["events"]["1"] = json!([compacted_delete_response(1, later)]);
        },
    },
    ExpectedDifference {
        scenario: "watch_cache",
        step: "future-start watcher while the store is below its start",
        issue: "etcd-io/etcd#20221 (fixed by #20229 in 3.4.38/3.5.22/3.6.2)",
        why: "etcd 3.4.23 counts a watcher whose start revision is in the future as synced and \
              sends it periodic progress notifications at revisions below its start; newer etcd \
              and Coffer send none until the store reaches the start",
        expected_from_etcd: |v| v["notified_below_start"] = json!(false),
    },
];

/// The catch-up response Coffer must send in `watch_from_compacted_delete`: the DELETE of
/// `/registry/pods/default/x` at revision 4, with its prev_kv (Coffer keeps the versions
/// revision 4 replaced until the next compaction, as in watch.rs; fixed etcd keeps the
/// tombstone but has no prev_kv for it, which kube would reject), then `later` events, header
/// at the current revision 5.
fn compacted_delete_response(watch_id: i64, later: Vec<Value>) -> Value {
    let mut events = vec![json!({
        "type": "DELETE",
        "kv": {"key": "/registry/pods/default/x", "create_revision": 0, "mod_revision": 4,
               "version": 0, "value": "", "lease": 0},
        "prev_kv": {"key": "/registry/pods/default/x", "create_revision": 2, "mod_revision": 2,
               "version": 1, "value": "v1", "lease": 0},
    })];
    events.extend(later);
    json!({"header": {"revision": 5}, "watch_id": watch_id, "created": false, "canceled": false,
           "compact_revision": 0, "cancel_reason": "", "fragment": false, "events": events})
}

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
    compaction_cycle,
    watch_from_compacted_delete
);

/// Scenarios that need periodic progress notifications: both servers get
/// [`BOOKMARK_INTERVAL_FLAG`].
macro_rules! replay_tests_with_bookmarks {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let flags = [BOOKMARK_INTERVAL_FLAG];
                if let Err(report) =
                    side_by_side_with(stringify!($name), EXPECTED, &flags, scenarios::$name).await
                {
                    panic!("{report}");
                }
            }
        )*
    };
}

replay_tests_with_bookmarks!(watch_cache, event_lease_expiry, compaction_with_watch_cache);

/// A representative part of the replay over mutual TLS (both servers with `--cert-file`,
/// `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, every client and watch stream
/// presenting a client certificate): kube's object lifecycle (optimistic create,
/// GuaranteedUpdate, guarded delete), paginated lists, and the watch cache's shared stream
/// through a compaction. The whole replay over plaintext is the tests above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_mutual_tls() {
    let mut failures = Vec::new();
    let runs = [
        side_by_side_tls(
            "objects_lifecycle",
            EXPECTED,
            &[],
            scenarios::objects_lifecycle,
        )
        .await,
        side_by_side_tls("paginated_lists", EXPECTED, &[], scenarios::paginated_lists).await,
        side_by_side_tls(
            "compaction_with_watch_cache",
            EXPECTED,
            &[BOOKMARK_INTERVAL_FLAG],
            scenarios::compaction_with_watch_cache,
        )
        .await,
    ];
    for r in runs {
        if let Err(report) = r {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One Watch stream as kube's watch cache uses it. Responses are sorted into created/canceled
/// (`control`), event responses per watch id, and answers to RequestProgress (`watch_id = -1`);
/// periodic progress notifications are set aside and checked: after a notification at
/// revision R for a watcher (or a RequestProgress answer at R, when `check_requested`), an
/// event at or below R for it is a violation.
struct CacheStream {
    stream: WatchStream,
    check_requested: bool,
    /// Highest revision announced by a progress notification, per watch id (-1 = stream).
    announced: BTreeMap<i64, i64>,
    /// Periodic notifications: (watch id, revision).
    periodic: Vec<(i64, i64)>,
    violations: Vec<String>,
}

/// Responses sorted by [`CacheStream`].
#[derive(Default)]
struct Collected {
    control: Vec<Value>,
    events: BTreeMap<i64, Vec<Value>>,
    progress: Vec<Value>,
    n_events: usize,
}

impl Collected {
    fn to_json(&self) -> Value {
        let events: serde_json::Map<String, Value> = self
            .events
            .iter()
            .map(|(id, v)| (id.to_string(), json!(v)))
            .collect();
        json!({"control": self.control, "events": events, "progress": self.progress})
    }
}

/// Deadline for responses a step waits for.
const WAIT: Duration = Duration::from_secs(10);
/// How long a step keeps reading after it got what it waited for (duplicates, extras).
const SETTLE: Duration = Duration::from_millis(300);

impl CacheStream {
    async fn open(endpoint: &str, first: WatchCreateRequest) -> CacheStream {
        CacheStream {
            stream: WatchStream::open(endpoint, RequestUnion::CreateRequest(first))
                .await
                .unwrap(),
            check_requested: true,
            announced: BTreeMap::new(),
            periodic: Vec::new(),
            violations: Vec::new(),
        }
    }

    fn sort(&mut self, r: WatchResponse, into: &mut Collected) {
        let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if is_progress_notification(&r) {
            if r.watch_id == -1 {
                into.progress
                    .push(coffer_conformance::json::watch_response(&r));
                if !self.check_requested {
                    return;
                }
            } else {
                self.periodic.push((r.watch_id, rev));
            }
            let a = self.announced.entry(r.watch_id).or_insert(0);
            *a = (*a).max(rev);
            return;
        }
        if r.created || r.canceled {
            into.control
                .push(coffer_conformance::json::watch_response(&r));
            return;
        }
        let floor = self
            .announced
            .get(&r.watch_id)
            .copied()
            .unwrap_or(0)
            .max(self.announced.get(&-1).copied().unwrap_or(0));
        for e in &r.events {
            let m = e.kv.as_ref().map(|k| k.mod_revision).unwrap_or(0);
            if m <= floor {
                self.violations.push(format!(
                    "watch {}: event at revision {m} after a progress notification at {floor}",
                    r.watch_id
                ));
            }
        }
        into.n_events += r.events.len();
        into.events
            .entry(r.watch_id)
            .or_default()
            .push(coffer_conformance::json::watch_response(&r));
    }

    /// Reads until `events` events and `control` created/canceled responses arrived (or
    /// [`WAIT`] passed), then for [`SETTLE`] more.
    async fn collect(&mut self, events: usize, control: usize) -> Collected {
        let mut c = Collected::default();
        let deadline = Instant::now() + WAIT;
        while (c.n_events < events || c.control.len() < control) && Instant::now() < deadline {
            if let Some(r) = self.stream.next(Duration::from_millis(100)).await.unwrap() {
                self.sort(r, &mut c);
            }
        }
        self.read_for(SETTLE, &mut c).await;
        c
    }

    /// Like [`CacheStream::collect`] with `max` instead of [`WAIT`] (for steps whose events may
    /// legitimately never come on one of the servers).
    async fn collect_within(&mut self, events: usize, control: usize, max: Duration) -> Collected {
        let mut c = Collected::default();
        let deadline = Instant::now() + max;
        while (c.n_events < events || c.control.len() < control) && Instant::now() < deadline {
            if let Some(r) = self.stream.next(Duration::from_millis(50)).await.unwrap() {
                self.sort(r, &mut c);
            }
        }
        self.read_for(SETTLE, &mut c).await;
        c
    }

    async fn read_for(&mut self, d: Duration, into: &mut Collected) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(r) = self.stream.next(left).await.unwrap() {
                self.sort(r, into);
            }
        }
    }

    /// kube's consistent read from the cache: RequestProgress, asked again every 100 ms until
    /// an answer at `target` or above arrives; what came before and after the answer.
    async fn wait_fresh(&mut self, target: i64) -> Value {
        let mut before = Collected::default();
        let deadline = Instant::now() + WAIT;
        let mut answer = None;
        self.stream.request_progress().await.unwrap();
        let mut asked = Instant::now();
        while answer.is_none() && Instant::now() < deadline {
            if asked.elapsed() >= Duration::from_millis(100) {
                self.stream.request_progress().await.unwrap();
                asked = Instant::now();
            }
            let Some(r) = self.stream.next(Duration::from_millis(20)).await.unwrap() else {
                continue;
            };
            let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            let is_answer = is_progress_notification(&r) && r.watch_id == -1 && rev >= target;
            self.sort(r, &mut before);
            if is_answer {
                answer = Some(rev);
            }
        }
        // Answers to the extra asks may follow: only events and control count after this.
        let mut after = Collected::default();
        self.read_for(Duration::from_millis(500), &mut after).await;
        let answer_json = before.progress.pop();
        json!({
            "target": target,
            "answered_at": answer,
            "answer": answer_json,
            "before_answer": before.to_json(),
            "after_answer": {"control": after.control, "events": after.to_json()["events"]},
        })
    }

    /// Waits for a periodic notification at `at_least` or above for each of `ids`; their
    /// revisions, and anything else that arrived meanwhile.
    async fn bookmarks(&mut self, ids: &[i64], at_least: i64) -> Value {
        let mut other = Collected::default();
        let seen_before = self.periodic.len();
        let deadline = Instant::now() + WAIT;
        let found = |p: &[(i64, i64)], id: i64| {
            p.iter()
                .find(|(w, r)| *w == id && *r >= at_least)
                .map(|(_, r)| *r)
        };
        while Instant::now() < deadline
            && ids
                .iter()
                .any(|id| found(&self.periodic[seen_before..], *id).is_none())
        {
            if let Some(r) = self.stream.next(Duration::from_millis(100)).await.unwrap() {
                self.sort(r, &mut other);
            }
        }
        let got: serde_json::Map<String, Value> = ids
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    json!(found(&self.periodic[seen_before..], *id)),
                )
            })
            .collect();
        json!({"first_bookmark_revision": got, "other_responses": other.to_json()})
    }
}

/// kube's watch-cache watch: a prefix, `prev_kv`, `progress_notify`, from `start`.
fn cache_watch(prefix: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(prefix),
        range_end: prefix_end(prefix.as_bytes()),
        start_revision: start,
        prev_kv: true,
        progress_notify: true,
        ..Default::default()
    }
}

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

    fn header_rev<T>(h: &Option<T>, f: impl Fn(&T) -> i64) -> i64 {
        h.as_ref().map(f).unwrap_or(0)
    }

    /// The mod revision of `k` in a list answer (0 when absent).
    fn mod_in(r: &Option<coffer_proto::RangeResponse>, k: &str) -> i64 {
        r.as_ref()
            .and_then(|r| r.kvs.iter().find(|kv| kv.key == k.as_bytes()))
            .map(|kv| kv.mod_revision)
            .unwrap_or(0)
    }

    /// kube's "current resource version" read: `Range{prefix, limit=1}`, header only.
    async fn current_rv(s: &mut Session, label: &str, prefix: &str) -> i64 {
        let r = s
            .range(
                label,
                RangeRequest {
                    limit: 1,
                    ..span(prefix, "")
                }
                .with_end(&prefix_end(prefix.as_bytes())),
            )
            .await;
        r.and_then(|r| r.header).map(|h| h.revision).unwrap_or(0)
    }

    /// The watch cache's initial list: `Range{prefix, limit=10000}` at the current revision.
    async fn cache_list(
        s: &mut Session,
        label: &str,
        prefix: &str,
    ) -> Option<coffer_proto::RangeResponse> {
        s.range(
            label,
            RangeRequest {
                limit: 10_000,
                ..span(prefix, "")
            }
            .with_end(&prefix_end(prefix.as_bytes())),
        )
        .await
    }

    fn watch_request_json(c: &WatchCreateRequest) -> Value {
        json!({"watch": coffer_conformance::json::watch_create_request(c)})
    }

    /// The watch cache: lists, then one prefix watch per resource on one stream from the
    /// list's revision + 1 (writes landed in between: replayed from history), live events with
    /// prev_kv, a consistent read through RequestProgress, bookmarks while idle, a watcher
    /// whose start is in the future (#20221), and a consistent read while a new watch is still
    /// catching up (#15220).
    pub async fn watch_cache(mut s: Session) -> Session {
        const CMS: &str = "/registry/configmaps/";
        let ep = s.endpoint.clone();
        for i in 1..=3 {
            let (k, v) = (key(&format!("p{i}")), format!("spec{i}"));
            create(&mut s, &format!("create p{i}"), &k, &v, 0).await;
        }
        let cm = |n: &str| format!("{CMS}default/{n}");
        create(&mut s, "create cm c0", &cm("c0"), "data0", 0).await;
        let pods = cache_list(&mut s, "list pods for the cache", PODS).await;
        let list_rev = header_rev(&pods.as_ref().and_then(|p| p.header), |h| h.revision);
        cache_list(&mut s, "list configmaps for the cache", CMS).await;
        // Writes between the list and the watch: the watch replays them from history.
        let p1 = mod_in(&pods, &key("p1"));
        guaranteed_update(
            &mut s,
            "update p1 before the watch",
            &key("p1"),
            p1,
            "spec1-v2",
        )
        .await;
        let p2 = mod_in(&pods, &key("p2"));
        guarded_delete(&mut s, "delete p2 before the watch", &key("p2"), p2).await;
        create(
            &mut s,
            "create cm c1 before the watch",
            &cm("c1"),
            "data1",
            0,
        )
        .await;

        let (wp, wc) = (
            cache_watch(PODS, list_rev + 1),
            cache_watch(CMS, list_rev + 1),
        );
        let mut a = CacheStream::open(&ep, wp.clone()).await;
        a.stream.create(wc.clone()).await.unwrap();
        let c = a.collect(3, 2).await;
        s.record(
            "watches from list revision + 1: created, then history",
            json!([watch_request_json(&wp), watch_request_json(&wc)]),
            c.to_json(),
        );

        // Live: GuaranteedUpdate fresh and stale, create + delete, an unwatched write.
        let p3 = mod_in(&pods, &key("p3"));
        guaranteed_update(&mut s, "update p3", &key("p3"), p3, "spec3-v2").await;
        guaranteed_update(&mut s, "update p1 stale", &key("p1"), p1, "spec1-v3").await;
        let p4 = create(&mut s, "create p4", &key("p4"), "spec4", 0).await;
        let p4_mod = header_rev(&p4.and_then(|t| t.header), |h| h.revision);
        guarded_delete(&mut s, "delete p4", &key("p4"), p4_mod).await;
        create(&mut s, "create cm c2", &cm("c2"), "data2", 0).await;
        create(
            &mut s,
            "create unwatched secret",
            "/registry/secrets/default/s",
            "x",
            0,
        )
        .await;
        let c = a.collect(5, 0).await;
        s.record("live events", json!({"collect": 5}), c.to_json());

        // Consistent list from the cache: current RV, then RequestProgress until caught up.
        let rv = current_rv(&mut s, "current RV for a consistent list", PODS).await;
        let fresh = a.wait_fresh(rv).await;
        s.record(
            "consistent read: RequestProgress on a synced stream",
            json!({"watch_progress": {}}),
            fresh,
        );
        // Idle: every watcher gets bookmarks at the current revision.
        let bm = a.bookmarks(&[0, 1], rv).await;
        s.record("bookmarks while idle", json!({"wait": "periodic"}), bm);

        // A watch from a resource version ahead of the store (own stream): no bookmark may
        // claim a revision below its start; its first event is the one at its start.
        const LEASES: &str = "/registry/leases/";
        let future = cache_watch(LEASES, rv + 2);
        let mut f = CacheStream::open(&ep, future.clone()).await;
        let c = f.collect(0, 1).await;
        s.record(
            "future-start watcher created",
            watch_request_json(&future),
            c.to_json(),
        );
        let mut idle = Collected::default();
        f.read_for(Duration::from_millis(1700), &mut idle).await;
        let below = f.periodic.iter().any(|(_, r)| *r < rv + 2);
        s.record(
            "future-start watcher while the store is below its start",
            json!({"wait_ms": 1700}),
            json!({"notified_below_start": below, "responses": idle.to_json()}),
        );
        let lk = format!("{LEASES}kube-system/holder");
        let l = create(
            &mut s,
            "create lease object (below the start)",
            &lk,
            "h1",
            0,
        )
        .await;
        let l_mod = header_rev(&l.and_then(|t| t.header), |h| h.revision);
        guaranteed_update(
            &mut s,
            "renew lease object (at the start)",
            &lk,
            l_mod,
            "h2",
        )
        .await;
        let c = f.collect(1, 0).await;
        s.record(
            "future-start watcher reaches its start",
            json!({"collect": 1}),
            c.to_json(),
        );

        // A consistent read while a new watch is still replaying history (kube: a cache that
        // just (re)started its watch). Five updates of p3, then the watch from before them.
        let before = current_rv(&mut s, "RV before the updates", PODS).await;
        let mut m = 0;
        for i in 0..5 {
            let r = s
                .txn(
                    &format!("update p3 #{i}"),
                    txn(
                        vec![],
                        vec![op_put(put(&key("p3"), &format!("v{i}")))],
                        vec![],
                    ),
                )
                .await;
            m = header_rev(&r.and_then(|t| t.header), |h| h.revision);
        }
        let rv = current_rv(&mut s, "current RV for the second consistent list", PODS).await;
        let catching_up = cache_watch(PODS, before + 1);
        let mut cu = CacheStream::open(&ep, catching_up.clone()).await;
        cu.check_requested = false;
        let fresh = cu.wait_fresh(rv).await;
        s.record(
            "consistent read: RequestProgress while the watch catches up",
            json!({"watch": watch_request_json(&catching_up), "then": "watch_progress", "last_update": m}),
            fresh,
        );

        s.record(
            "progress notifications never ahead of events",
            json!({"check": "every stream"}),
            json!({"cache": a.violations, "future": f.violations, "catching_up": cu.violations}),
        );
        s.record(
            "bookmarks were sent",
            json!({"check": "periodic notifications seen"}),
            json!({"cache": !a.periodic.is_empty()}),
        );
        s
    }

    /// Events (`--event-ttl`): the lease manager's shared leases, many Events on one lease,
    /// the lease expiring and deleting all of them in one revision, seen by the Events watch
    /// with prev_kv (sorted by key, as etcd's lessor deletes them). Also observes the
    /// minimum TTL each server grants.
    pub async fn event_lease_expiry(mut s: Session) -> Session {
        const EVENTS: &str = "/registry/events/";
        let ep = s.endpoint.clone();
        let mut masks: Vec<(i64, String)> = Vec::new();
        // Minimum TTL: what each server grants when asked for less.
        for ttl in [1, 0, -1] {
            let g = s.lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await;
            let answer = match &g {
                Ok(r) => {
                    json!({"ttl": r.get_ref().ttl, "rev": header_rev(&r.get_ref().header, |h| h.revision)})
                }
                Err(e) => coffer_conformance::json::status(e),
            };
            s.record(
                &format!("grant TTL {ttl}"),
                json!({"lease_grant": {"ttl": ttl}}),
                answer,
            );
            if let Ok(r) = g {
                let id = r.into_inner().id;
                let rv = s.lease.lease_revoke(LeaseRevokeRequest { id }).await;
                let answer = match rv {
                    Ok(r) => json!({"rev": header_rev(&r.into_inner().header, |h| h.revision)}),
                    Err(e) => coffer_conformance::json::status(&e),
                };
                s.record(
                    &format!("revoke the TTL {ttl} lease (no keys)"),
                    json!({"lease_revoke": {}}),
                    answer,
                );
            }
        }

        let list = cache_list(&mut s, "list events for the cache", EVENTS).await;
        let list_rev = header_rev(&list.and_then(|r| r.header), |h| h.revision);
        let wreq = cache_watch(EVENTS, list_rev + 1);
        let mut w = CacheStream::open(&ep, wreq.clone()).await;
        let c = w.collect(0, 1).await;
        s.record(
            "events watch created",
            watch_request_json(&wreq),
            c.to_json(),
        );

        // The lease manager with --event-ttl=1s: window min(5 % of 1 s, 60 s) = 0, so it asks
        // for TTL 1 and the server raises it to its minimum. A second, long bucket (1 h + 60 s).
        let granted = Instant::now();
        let grant = |s: &mut Session, ttl: i64, name: &'static str| {
            let mut lease = s.lease.clone();
            async move {
                let r = lease
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .unwrap()
                    .into_inner();
                (r.id, json!({"ttl": r.ttl, "id_positive": r.id > 0}), name)
            }
        };
        let (short, answer, name) = grant(&mut s, 1, "<short lease>").await;
        masks.push((short, name.into()));
        s.record(
            "grant the 1 s event lease",
            json!({"lease_grant": {"ttl": 1}}),
            answer,
        );
        let (long, answer, name) = grant(&mut s, 3660, "<long lease>").await;
        masks.push((long, name.into()));
        s.record(
            "grant the 1 h event lease",
            json!({"lease_grant": {"ttl": 3660}}),
            answer,
        );

        let ev = |n: &str| format!("{EVENTS}default/{n}");
        // Created out of key order: the expiry deletes them in key order.
        let short_names = [
            "web-7.17a",
            "api-2.17b",
            "node-c.17c",
            "web-1.17d",
            "db-0.17e",
            "api-9.17f",
            "job-x.180",
            "cron-a.181",
            "web-3.182",
            "dns-1.183",
            "api-0.184",
            "etcd-0.185",
        ];
        for n in short_names {
            create(
                &mut s,
                &format!("create event {n}"),
                &ev(n),
                &format!("evt {n}"),
                short,
            )
            .await;
        }
        for n in ["long-b.1", "long-a.2", "long-c.3"] {
            create(
                &mut s,
                &format!("create event {n}"),
                &ev(n),
                &format!("evt {n}"),
                long,
            )
            .await;
        }
        // An Event's count bumped: GuaranteedUpdate that keeps the lease.
        let k0 = ev(short_names[0]);
        s.txn(
            "update event web-7.17a (same lease)",
            txn(
                vec![cmp(&k0, VERSION, GREATER, 0, "")],
                vec![op_put(PutRequest {
                    lease: short,
                    ..put(&k0, "evt web-7.17a x2")
                })],
                vec![op_range(range(&k0))],
            ),
        )
        .await;
        let ttl = s
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: short,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut keys: Vec<String> = ttl
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        s.record(
            "time to live of the short lease",
            json!({"lease_time_to_live": {"keys": true}}),
            json!({"granted": ttl.granted_ttl, "remaining_le_granted": ttl.ttl <= ttl.granted_ttl, "keys": keys}),
        );
        let c = w.collect(16, 0).await;
        s.record(
            "events seen by the watch",
            json!({"collect": 16}),
            c.to_json(),
        );

        // Wait for the expiry: the short lease's 12 keys go, the long lease's 3 stay.
        let before = current_rv(&mut s, "RV before the expiry", EVENTS).await;
        let mut gone = None;
        let mut polls = 0;
        while granted.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            polls += 1;
            let r =
                s.kv.range(
                    RangeRequest {
                        count_only: true,
                        ..span(EVENTS, "")
                    }
                    .with_end(&prefix_end(EVENTS.as_bytes())),
                )
                .await
                .unwrap()
                .into_inner();
            if r.count == 3 {
                gone = r.header.map(|h| h.revision);
                break;
            }
        }
        let waited = granted.elapsed();
        s.record(
            "short lease expired",
            json!({"poll": "count of events until 3 remain"}),
            json!({
                "expired": gone.is_some(),
                "revisions_used": gone.map(|g| g - before),
                "not_before_one_second": waited >= Duration::from_secs(1),
                "polled": polls > 0,
            }),
        );
        let c = w.collect(12, 0).await;
        s.record(
            "expiry seen by the watch: 12 DELETEs in one revision",
            json!({"collect": 12}),
            c.to_json(),
        );

        let ttl = s
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: short,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        s.record(
            "expired lease",
            json!({"lease_time_to_live": {"keys": true}}),
            json!({"ttl": ttl.ttl, "granted": ttl.granted_ttl, "keys": ttl.keys.len()}),
        );
        let ttl = s
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: long,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut keys: Vec<String> = ttl
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        s.record(
            "long lease keeps its keys",
            json!({"lease_time_to_live": {"keys": true}}),
            json!({"granted": ttl.granted_ttl, "keys": keys}),
        );
        let ls = s
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut ids: Vec<Value> = ls.leases.iter().map(|l| json!(l.id)).collect();
        ids.sort_by_key(|v| v.to_string());
        s.record(
            "leases left",
            json!({"lease_leases": {}}),
            json!({"ids": ids}),
        );
        cache_list(&mut s, "events left", EVENTS).await;
        s.record(
            "progress notifications never ahead of events",
            json!({"check": "events stream"}),
            json!(w.violations),
        );
        for step in &mut s.transcript.steps {
            for (id, name) in &masks {
                mask_lease_as(&mut step.answer, *id, name);
                mask_lease_as(&mut step.request, *id, name);
            }
        }
        s
    }

    /// Compaction while the watch cache watches: the `compact_rev_key` cycle compacts below
    /// the watcher's position; it keeps receiving events, whose prev_kv come from below the
    /// compaction; a watch from the old list revision is cancelled with compact_revision; a
    /// watch from exactly the compact revision replays from there.
    pub async fn compaction_with_watch_cache(mut s: Session) -> Session {
        let ep = s.endpoint.clone();
        for i in 1..=3 {
            let (k, v) = (key(&format!("p{i}")), format!("spec{i}"));
            create(&mut s, &format!("create p{i}"), &k, &v, 0).await;
        }
        let pods = cache_list(&mut s, "list pods for the cache", PODS).await;
        let list_rev = header_rev(&pods.as_ref().and_then(|p| p.header), |h| h.revision);
        let wreq = cache_watch(PODS, list_rev + 1);
        let mut w = CacheStream::open(&ep, wreq.clone()).await;
        let c = w.collect(0, 1).await;
        s.record("pods watch created", watch_request_json(&wreq), c.to_json());
        let p1 = mod_in(&pods, &key("p1"));
        guaranteed_update(&mut s, "update p1", &key("p1"), p1, "spec1-v2").await;
        guaranteed_update(&mut s, "update p1 again", &key("p1"), p1 + 1, "spec1-v3").await;
        let c = w.collect(2, 0).await;
        s.record(
            "events before compaction",
            json!({"collect": 2}),
            c.to_json(),
        );

        // Two compactor cycles: the first only stamps compact_rev_key, the second compacts
        // at the revision the first one saw.
        let c1 = s
            .txn(
                "compactor cycle 1",
                txn(
                    vec![cmp("compact_rev_key", VERSION, EQUAL, 0, "")],
                    vec![op_put(put("compact_rev_key", "0"))],
                    vec![op_range(range("compact_rev_key"))],
                ),
            )
            .await;
        let r1 = header_rev(&c1.and_then(|t| t.header), |h| h.revision);
        create(&mut s, "create p4", &key("p4"), "spec4", 0).await;
        let c2 = s
            .txn(
                "compactor cycle 2",
                txn(
                    vec![cmp("compact_rev_key", VERSION, EQUAL, 1, "")],
                    vec![op_put(put("compact_rev_key", &r1.to_string()))],
                    vec![op_range(range("compact_rev_key"))],
                ),
            )
            .await;
        if c2.is_some_and(|t| t.succeeded) {
            s.compact(
                "compactor cycle 2 compact",
                CompactionRequest {
                    revision: r1,
                    physical: false,
                },
            )
            .await;
        }
        // prev_kv of these events are versions from below the compaction.
        let p2 = mod_in(&pods, &key("p2"));
        guaranteed_update(
            &mut s,
            "update p2 after compaction",
            &key("p2"),
            p2,
            "spec2-v2",
        )
        .await;
        let p3 = mod_in(&pods, &key("p3"));
        guarded_delete(&mut s, "delete p3 after compaction", &key("p3"), p3).await;
        let c = w.collect(3, 0).await;
        s.record(
            "events after compaction (prev_kv from below it)",
            json!({"collect": 3}),
            c.to_json(),
        );

        // An apiserver relisting late: watch from the old list revision → compacted.
        let late = cache_watch(PODS, list_rev + 1);
        w.stream.create(late.clone()).await.unwrap();
        let c = w.collect(0, 2).await;
        s.record(
            "watch from a compacted revision",
            watch_request_json(&late),
            c.to_json(),
        );
        // From exactly the compact revision: allowed, replays from there.
        let at = cache_watch(PODS, r1);
        w.stream.create(at.clone()).await.unwrap();
        let c = w.collect(3, 1).await;
        s.record(
            "watch from the compact revision",
            watch_request_json(&at),
            c.to_json(),
        );
        s.range(
            "list at the compacted list revision",
            RangeRequest {
                revision: list_rev,
                ..span(PODS, "")
            }
            .with_end(&prefix_end(PODS.as_bytes())),
        )
        .await;
        s.record(
            "progress notifications never ahead of events",
            json!({"check": "pods stream"}),
            json!(w.violations),
        );
        s
    }

    /// A watch resuming at exactly the compact revision when that revision is a DELETE: the
    /// tombstone must be delivered (etcd-api.md §5.3, etcd-io/etcd#19179, #18089), or the
    /// watcher cancelled; never skipped. Found by the soak test (a slow watcher whose next
    /// revision was the compaction's skipped the DELETE there).
    pub async fn watch_from_compacted_delete(mut s: Session) -> Session {
        let ep = s.endpoint.clone();
        let k = key("x");
        s.put_kv("put x", &k, "v1").await;
        s.put_kv("put other", &key("other"), "o1").await;
        let d = s.delete("delete x", del(&k)).await;
        let del_rev = header_rev(&d.and_then(|d| d.header), |h| h.revision);
        s.put_kv("put other again", &key("other"), "o2").await;
        s.compact(
            "compact at the delete",
            CompactionRequest {
                revision: del_rev,
                physical: true,
            },
        )
        .await;
        // COFFER BUG (found by the soak test): Coffer, like etcd 3.4.23 (etcd-io/etcd#18089),
        // loses the DELETE at the compact revision; fixed etcd (#18274, 3.4.34/3.5.16) keeps
        // the tombstone and delivers it. See the EXPECTED entries of this scenario.
        let single = WatchCreateRequest {
            key: b(&k),
            start_revision: del_rev,
            prev_kv: true,
            ..Default::default()
        };
        let mut w = CacheStream::open(&ep, single.clone()).await;
        let c = w.collect_within(1, 1, Duration::from_millis(1500)).await;
        s.record(
            "watch x from the compact revision (a DELETE)",
            watch_request_json(&single),
            c.to_json(),
        );
        let prefix = cache_watch(PODS, del_rev);
        w.stream.create(prefix.clone()).await.unwrap();
        let c = w.collect_within(2, 1, Duration::from_millis(1500)).await;
        s.record(
            "watch pods from the compact revision",
            watch_request_json(&prefix),
            c.to_json(),
        );
        let below = cache_watch(PODS, del_rev - 1);
        w.stream.create(below.clone()).await.unwrap();
        let c = w.collect(0, 2).await;
        s.record(
            "watch pods from below the compact revision",
            watch_request_json(&below),
            c.to_json(),
        );
        s
    }

    /// Replaces lease id `id` by `name` wherever a `lease` or `id` field holds it, and in
    /// lists of ids.
    fn mask_lease_as(v: &mut Value, id: i64, name: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if (k == "lease" || k == "id") && x.as_i64() == Some(id) {
                        *x = json!(name);
                    } else {
                        mask_lease_as(x, id, name);
                    }
                }
            }
            Value::Array(a) => {
                for x in a.iter_mut() {
                    if x.as_i64() == Some(id) {
                        *x = json!(name);
                    } else {
                        mask_lease_as(x, id, name);
                    }
                }
            }
            _ => {}
        }
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
