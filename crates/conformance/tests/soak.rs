//! Watch soak: many writers and many watchers for a bounded time, then a check that every
//! watcher saw exactly the events it should have, in revision order, once each, with the right
//! prev_kv, and nothing split or skipped.
//!
//! During the run: writers put, delete (single keys and ranges) and run txns on a small shared
//! keyspace (`/soak/a/..`, `/soak/b/..`); a lease task grants leases, attaches keys (its own
//! `/soak/l/..`), revokes some and lets others expire; a compactor runs kube's
//! `compact_rev_key` cycle twice; watchers (prefix, single-key, range and from-key watches, some
//! with prev_kv, progress_notify or a filter, some from a past or future revision) live on
//! several streams, more are added and some cancelled during the run; RequestProgress is sent
//! like kube's consistent reads; one stream stops reading for a while, so its watchers fall
//! behind across a compaction.
//!
//! The expected history is rebuilt afterwards from the writers' acknowledged answers (each
//! answer's revision and, from `prev_kv`, the keys a delete removed), the lease task's revokes
//! and expiries (an expiry is the one revision no acknowledged write produced between the lease
//! keys' last write and the moment they were seen gone), and checked against a final Range of
//! the whole keyspace. Each watcher's expected events follow from its range, filters and start.
//! A watcher cancelled by the server must have been cancelled with `compact_revision` above
//! everything it received, after a prefix of its events that ends on a revision boundary.
//!
//! Coffer runs the full size; etcd 3.4.23 runs a smaller size in the same test, to check the
//! test itself. What etcd is not checked for: its RequestProgress answers (etcd-io/etcd#15220:
//! 3.4.23 answers at once, before queued events; the count is printed), and the slow-reader
//! stream is off on etcd, for two reasons: etcd-io/etcd#17529 (fixed in 3.4.31: a slow watcher
//! whose next revision gets compacted may skip events instead of being cancelled), and, observed
//! here, grpc-go writing a flow-controlled stream in so many small DATA frames that our own
//! HTTP/2 client (h2) closes the connection with GOAWAY `too_many_data_frames`.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test soak -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_conformance::client::connect;
use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdOptions, EtcdProcess};
use coffer_conformance::watch::{
    create_request, is_progress_notification, WatchSender, WatchStream,
};
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::mvccpb::{Event, KeyValue};
use coffer_proto::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest,
};
use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::Channel;

/// Periodic progress notifications every 200 ms on both servers.
const PROGRESS_FLAG: &str = "--experimental-watch-progress-notify-interval=200ms";
const PUT: i32 = 0;
const DELETE: i32 = 1;
/// Keys per shared prefix (`/soak/a/00`..).
const KEYS: usize = 16;

/// How big a run is.
#[derive(Debug, Clone)]
struct Config {
    /// Writers on `/soak/a` and `/soak/b`.
    writers: usize,
    /// How long writers run.
    duration: Duration,
    /// Watch streams.
    streams: usize,
    /// Watchers created before the writers start, spread over the streams.
    initial_watchers: usize,
    /// Watchers added during the run.
    added_watchers: usize,
    /// Watchers cancelled by the client during the run.
    cancelled_watchers: usize,
    /// Stream 0 stops reading for a while around the first compaction.
    slow_stream: bool,
    /// RequestProgress answers are checked (a `watch_id = -1` answer at R: every event <= R
    /// was delivered on that stream before it).
    check_requested_progress: bool,
}

/// Small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn shared_key(prefix: char, i: usize) -> Vec<u8> {
    format!("/soak/{prefix}/{i:02}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// What the writers did.

/// One change inside a revision, in order.
#[derive(Debug, Clone)]
enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Del {
        key: Vec<u8>,
    },
}

/// An acknowledged write that created a revision.
#[derive(Debug, Clone)]
struct Write {
    rev: i64,
    ops: Vec<Op>,
    what: String,
}

/// A lease expiry: the keys, deleted in the one revision in `(after, by]` no write claimed.
#[derive(Debug, Clone)]
struct Expiry {
    after: i64,
    by: i64,
    keys: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Log {
    writes: Vec<Write>,
    expiries: Vec<Expiry>,
    errors: Vec<String>,
}

fn rev_of(h: &Option<coffer_proto::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(0)
}

fn put_req(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }
}

fn del_req(key: &[u8], end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        prev_kv: true,
    }
}

fn sorted_keys(kvs: &[KeyValue]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = kvs.iter().map(|k| k.key.clone()).collect();
    keys.sort();
    keys
}

/// One writer: puts, deletes, range deletes, txns and GuaranteedUpdates on the shared keys.
async fn writer(ch: Channel, id: usize, until: Instant) -> Log {
    let mut kv = KvClient::new(ch);
    let mut rng = Rng::new(1000 + id as u64);
    let mut log = Log::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let prefix = if rng.chance(60) { 'a' } else { 'b' };
        let k = shared_key(prefix, rng.below(KEYS as u64) as usize);
        let value = format!("w{id}-{n}").into_bytes();
        let choice = rng.below(100);
        let result: Result<(), tonic::Status> = async {
            if choice < 40 {
                let r = kv.put(put_req(&k, &value, 0)).await?.into_inner();
                log.writes.push(Write {
                    rev: rev_of(&r.header),
                    ops: vec![Op::Put {
                        key: k.clone(),
                        value: value.clone(),
                        lease: 0,
                    }],
                    what: "put".into(),
                });
            } else if choice < 55 {
                let r = kv.delete_range(del_req(&k, &[])).await?.into_inner();
                if r.deleted > 0 {
                    log.writes.push(Write {
                        rev: rev_of(&r.header),
                        ops: sorted_keys(&r.prev_kvs)
                            .into_iter()
                            .map(|key| Op::Del { key })
                            .collect(),
                        what: "delete".into(),
                    });
                }
            } else if choice < 62 {
                let from = rng.below(KEYS as u64 - 4) as usize;
                let (a, b) = (
                    shared_key(prefix, from),
                    shared_key(prefix, from + 1 + rng.below(4) as usize),
                );
                let r = kv.delete_range(del_req(&a, &b)).await?.into_inner();
                if r.deleted > 0 {
                    log.writes.push(Write {
                        rev: rev_of(&r.header),
                        ops: sorted_keys(&r.prev_kvs)
                            .into_iter()
                            .map(|key| Op::Del { key })
                            .collect(),
                        what: "delete range".into(),
                    });
                }
            } else if choice < 85 {
                // Txn on three distinct keys: if k exists, put k2 and delete k3; else put k
                // and read k3.
                let other = if prefix == 'a' { 'b' } else { 'a' };
                let k2 = shared_key(other, rng.below(KEYS as u64) as usize);
                let mut k3 = shared_key(prefix, rng.below(KEYS as u64) as usize);
                if k3 == k {
                    k3 = shared_key(other, KEYS - 1 - rng.below(2) as usize);
                }
                if k3 == k2 {
                    k3 = k.clone();
                    k3.push(b'x');
                }
                let req = TxnRequest {
                    compare: vec![Compare {
                        key: k.clone(),
                        target: 0,
                        result: 1,
                        target_union: Some(compare::TargetUnion::Version(0)),
                        range_end: vec![],
                    }],
                    success: vec![op_put(put_req(&k2, &value, 0)), op_del(del_req(&k3, &[]))],
                    failure: vec![
                        op_put(put_req(&k, &value, 0)),
                        op_range(RangeRequest {
                            key: k3.clone(),
                            ..Default::default()
                        }),
                    ],
                };
                let r = kv.txn(req).await?.into_inner();
                let mut ops = Vec::new();
                for (i, resp) in r.responses.iter().enumerate() {
                    match (&resp.response, r.succeeded, i) {
                        (Some(response_op::Response::ResponsePut(_)), true, _) => {
                            ops.push(Op::Put {
                                key: k2.clone(),
                                value: value.clone(),
                                lease: 0,
                            })
                        }
                        (Some(response_op::Response::ResponsePut(_)), false, _) => {
                            ops.push(Op::Put {
                                key: k.clone(),
                                value: value.clone(),
                                lease: 0,
                            })
                        }
                        (Some(response_op::Response::ResponseDeleteRange(d)), _, _) => ops.extend(
                            sorted_keys(&d.prev_kvs)
                                .into_iter()
                                .map(|key| Op::Del { key }),
                        ),
                        _ => {}
                    }
                }
                if !ops.is_empty() {
                    log.writes.push(Write {
                        rev: rev_of(&r.header),
                        ops,
                        what: format!("txn succeeded={}", r.succeeded),
                    });
                }
            } else {
                // GuaranteedUpdate: read, then Txn{MOD == read → put, else range}.
                let got = kv
                    .range(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let m = got.kvs.first().map(|x| x.mod_revision).unwrap_or(0);
                let req = TxnRequest {
                    compare: vec![Compare {
                        key: k.clone(),
                        target: 2,
                        result: 0,
                        target_union: Some(compare::TargetUnion::ModRevision(m)),
                        range_end: vec![],
                    }],
                    success: vec![op_put(put_req(&k, &value, 0))],
                    failure: vec![op_range(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })],
                };
                let r = kv.txn(req).await?.into_inner();
                if r.succeeded {
                    log.writes.push(Write {
                        rev: rev_of(&r.header),
                        ops: vec![Op::Put {
                            key: k.clone(),
                            value: value.clone(),
                            lease: 0,
                        }],
                        what: "guaranteed update".into(),
                    });
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            log.errors.push(format!("writer {id}: {e}"));
        }
    }
    log
}

fn op_put(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(p)),
    }
}
fn op_del(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(d)),
    }
}
fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

/// The lease task: alternately a 30 s lease with keys that is revoked, and a short lease
/// (asks TTL 1, the server raises it to its minimum) whose keys are left to expire.
async fn lease_task(ch: Channel, until: Instant) -> Log {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    let mut log = Log::default();
    let mut cycle = 0;
    while Instant::now() < until {
        cycle += 1;
        let result: Result<(), String> = async {
            let ttl = if cycle % 2 == 1 { 30 } else { 1 };
            let id = lease
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .id;
            let mut keys = Vec::new();
            let mut last = 0;
            for j in [3, 1, 2] {
                let key = format!("/soak/l/{cycle:03}-{j}").into_bytes();
                let value = format!("lease {cycle} key {j}").into_bytes();
                let r = kv
                    .put(put_req(&key, &value, id))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                last = rev_of(&r.header);
                log.writes.push(Write {
                    rev: last,
                    ops: vec![Op::Put {
                        key: key.clone(),
                        value,
                        lease: id,
                    }],
                    what: format!("put with lease (cycle {cycle})"),
                });
                keys.push(key);
            }
            keys.sort();
            if ttl == 30 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r = lease
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                log.writes.push(Write {
                    rev: rev_of(&r.header),
                    ops: keys.iter().map(|k| Op::Del { key: k.clone() }).collect(),
                    what: format!("lease revoke (cycle {cycle})"),
                });
            } else {
                let prefix = format!("/soak/l/{cycle:03}-").into_bytes();
                let mut end = prefix.clone();
                *end.last_mut().unwrap() += 1;
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let r = kv
                        .range(RangeRequest {
                            key: prefix.clone(),
                            range_end: end.clone(),
                            count_only: true,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .into_inner();
                    if r.count == 0 {
                        log.expiries.push(Expiry {
                            after: last,
                            by: rev_of(&r.header),
                            keys: keys.clone(),
                        });
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(15) {
                        return Err(format!("lease of cycle {cycle} did not expire in 15 s"));
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            log.errors.push(format!("lease task: {e}"));
            break;
        }
    }
    log
}

/// kube's compactor, twice: the `compact_rev_key` txn, then Compact at a revision some way
/// behind the current one. Returns the log and the compaction revisions.
async fn compactor(
    ch: Channel,
    start: Instant,
    duration: Duration,
    compacted: Arc<AtomicI64>,
) -> (Log, Vec<i64>) {
    let mut kv = KvClient::new(ch);
    let mut log = Log::default();
    let mut revs = Vec::new();
    for (cycle, at) in [0.35f64, 0.65].into_iter().enumerate() {
        let when = start + duration.mul_f64(at);
        tokio::time::sleep_until(when.into()).await;
        let result: Result<(), tonic::Status> = async {
            let cur = rev_of(
                &kv.range(RangeRequest {
                    key: b"compact_rev_key".to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .header,
            );
            let target = (cur - 60).max(1);
            let value = target.to_string().into_bytes();
            let r = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        key: b"compact_rev_key".to_vec(),
                        target: 0,
                        result: 0,
                        target_union: Some(compare::TargetUnion::Version(cycle as i64)),
                        range_end: vec![],
                    }],
                    success: vec![op_put(put_req(b"compact_rev_key", &value, 0))],
                    failure: vec![op_range(RangeRequest {
                        key: b"compact_rev_key".to_vec(),
                        ..Default::default()
                    })],
                })
                .await?
                .into_inner();
            if r.succeeded {
                log.writes.push(Write {
                    rev: rev_of(&r.header),
                    ops: vec![Op::Put {
                        key: b"compact_rev_key".to_vec(),
                        value,
                        lease: 0,
                    }],
                    what: "compactor txn".into(),
                });
                kv.compact(CompactionRequest {
                    revision: target,
                    physical: false,
                })
                .await?;
                compacted.fetch_max(target, Ordering::SeqCst);
                revs.push(target);
            } else {
                log.errors
                    .push(format!("compactor txn {cycle} lost its race"));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            log.errors.push(format!("compactor: {e}"));
        }
    }
    (log, revs)
}

// ---------------------------------------------------------------------------------------------
// Watchers.

/// What a watcher asked for.
#[derive(Debug, Clone)]
struct Spec {
    key: Vec<u8>,
    end: Vec<u8>,
    start: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

impl Spec {
    fn matches(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.key.as_slice()
        } else if self.end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.end.as_slice()
        }
    }

    fn request(&self) -> WatchCreateRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(0);
        }
        if self.no_delete {
            filters.push(1);
        }
        WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.end.clone(),
            start_revision: self.start,
            prev_kv: self.prev_kv,
            progress_notify: self.progress_notify,
            filters,
            ..Default::default()
        }
    }

    fn describe(&self) -> String {
        format!(
            "[{}, {}) start {} prev_kv {} progress {} noput {} nodelete {}",
            String::from_utf8_lossy(&self.key),
            String::from_utf8_lossy(&self.end).replace('\0', "\\0"),
            self.start,
            self.prev_kv,
            self.progress_notify,
            self.no_put,
            self.no_delete
        )
    }
}

/// A random watcher; `current` is the store's revision now.
fn random_spec(rng: &mut Rng, current: i64, allow_past: bool) -> Spec {
    let (key, end): (Vec<u8>, Vec<u8>) = match rng.below(100) {
        0..=24 => (b"/soak/".to_vec(), b"/soak0".to_vec()),
        25..=44 => (b"/soak/a/".to_vec(), b"/soak/a0".to_vec()),
        45..=59 => (b"/soak/b/".to_vec(), b"/soak/b0".to_vec()),
        60..=69 => (b"/soak/l/".to_vec(), b"/soak/l0".to_vec()),
        70..=89 => {
            let p = if rng.chance(50) { 'a' } else { 'b' };
            (shared_key(p, rng.below(KEYS as u64) as usize), Vec::new())
        }
        90..=94 => (shared_key('a', 4), shared_key('a', 10)),
        _ => (b"/soak/b/".to_vec(), vec![0]),
    };
    let start = match rng.below(100) {
        0..=59 => 0,
        60..=84 if allow_past => (current - rng.below(80) as i64).max(1),
        60..=84 => 0,
        _ => current + 1 + rng.below(150) as i64,
    };
    let filter = rng.below(100);
    Spec {
        key,
        end,
        start,
        prev_kv: rng.chance(50),
        progress_notify: rng.chance(50),
        no_put: filter < 8,
        no_delete: (8..16).contains(&filter),
    }
}

/// One watcher as the client knows it.
#[derive(Debug, Clone)]
struct WatcherInfo {
    spec: Spec,
    stream: usize,
    /// Highest compaction finished before the create was sent.
    compacted_at_create: i64,
    cancel_requested: bool,
}

/// What a stream's receiver saw, in order.
#[derive(Debug, Clone)]
enum Seen {
    Created {
        w: usize,
        watch_id: i64,
        rev: i64,
    },
    Canceled {
        w: usize,
        compact: i64,
        reason: String,
    },
    Events {
        w: usize,
        rev: i64,
        fragment: bool,
        events: Vec<Event>,
    },
    Progress {
        watch_id: i64,
        rev: i64,
    },
    Stray(String),
}

#[derive(Debug, Default)]
struct StreamLog {
    pending: VecDeque<usize>,
    by_id: HashMap<i64, usize>,
    seen: Vec<Seen>,
    ended: Option<String>,
    send_errors: Vec<String>,
}

struct Streams {
    senders: Vec<AsyncMutex<WatchSender>>,
    logs: Vec<Arc<Mutex<StreamLog>>>,
    watchers: Arc<Mutex<Vec<WatcherInfo>>>,
    compacted: Arc<AtomicI64>,
}

impl Streams {
    /// Sends a create; the stream's log learns the id from the created response (in order).
    async fn create(&self, stream: usize, spec: Spec) {
        let sender = self.senders[stream].lock().await;
        let w = {
            let mut ws = self.watchers.lock().unwrap();
            ws.push(WatcherInfo {
                spec: spec.clone(),
                stream,
                compacted_at_create: self.compacted.load(Ordering::SeqCst),
                cancel_requested: false,
            });
            ws.len() - 1
        };
        self.logs[stream].lock().unwrap().pending.push_back(w);
        if let Err(e) = sender.create(spec.request()).await {
            self.send_failed(stream, &e.to_string());
        }
    }

    /// A request could not be sent: the stream is gone (its receiver records why).
    fn send_failed(&self, stream: usize, error: &str) {
        let mut l = self.logs[stream].lock().unwrap();
        l.send_errors.push(error.to_string());
    }

    /// Cancels a created watcher on `stream` chosen by `pick`, if there is one.
    async fn cancel_one(&self, stream: usize, pick: u64) -> bool {
        let sender = self.senders[stream].lock().await;
        let target = {
            let log = self.logs[stream].lock().unwrap();
            let mut ids: Vec<(i64, usize)> = log.by_id.iter().map(|(i, w)| (*i, *w)).collect();
            ids.sort();
            let ws = self.watchers.lock().unwrap();
            let live: Vec<(i64, usize)> = ids
                .into_iter()
                .filter(|(_, w)| *w != usize::MAX && !ws[*w].cancel_requested)
                .collect();
            if live.is_empty() {
                None
            } else {
                Some(live[(pick % live.len() as u64) as usize])
            }
        };
        let Some((id, w)) = target else { return false };
        self.watchers.lock().unwrap()[w].cancel_requested = true;
        if let Err(e) = sender.cancel(id).await {
            self.send_failed(stream, &e.to_string());
        }
        true
    }
}

/// Reads one stream into its log. The slow stream stops reading during `pause`.
async fn receiver(
    mut rx: tonic::Streaming<coffer_proto::WatchResponse>,
    log: Arc<Mutex<StreamLog>>,
    pause: Option<(Instant, Duration)>,
) {
    let mut paused = false;
    loop {
        if let (Some((at, d)), false) = (pause, paused) {
            if Instant::now() >= at {
                paused = true;
                tokio::time::sleep(d).await;
            }
        }
        let msg = match pause {
            Some((at, _)) if !paused => {
                match tokio::time::timeout_at(at.into(), rx.message()).await {
                    Err(_) => continue,
                    Ok(m) => m,
                }
            }
            _ => rx.message().await,
        };
        let r = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                log.lock().unwrap().ended = Some("stream ended by the server".into());
                return;
            }
            Err(e) => {
                log.lock().unwrap().ended = Some(format!("stream failed: {e}"));
                return;
            }
        };
        let rev = rev_of(&r.header);
        let mut l = log.lock().unwrap();
        let seen = if r.created {
            match l.pending.pop_front() {
                Some(w) => {
                    if r.watch_id >= 0 && !r.canceled {
                        l.by_id.insert(r.watch_id, w);
                    }
                    if r.canceled {
                        Seen::Stray(format!("create of watcher {w} refused: {r:?}"))
                    } else {
                        Seen::Created {
                            w,
                            watch_id: r.watch_id,
                            rev,
                        }
                    }
                }
                None => Seen::Stray(format!("created response with no create pending: {r:?}")),
            }
        } else if is_progress_notification(&r) {
            Seen::Progress {
                watch_id: r.watch_id,
                rev,
            }
        } else {
            match l.by_id.get(&r.watch_id).copied() {
                None => Seen::Stray(format!(
                    "response for unknown watch id {}: {r:?}",
                    r.watch_id
                )),
                Some(w) if r.canceled => {
                    l.by_id.remove(&r.watch_id);
                    Seen::Canceled {
                        w,
                        compact: r.compact_revision,
                        reason: r.cancel_reason.clone(),
                    }
                }
                Some(w) => Seen::Events {
                    w,
                    rev,
                    fragment: r.fragment,
                    events: r.events,
                },
            }
        };
        l.seen.push(seen);
    }
}

// ---------------------------------------------------------------------------------------------
// The expected history.

/// One revision's events (kv and prev_kv as the store had them).
struct History {
    /// (revision, events) in revision order.
    revisions: Vec<(i64, Vec<Event>)>,
    /// The keyspace after the last revision.
    state: BTreeMap<Vec<u8>, KeyValue>,
}

fn rebuild(mut writes: Vec<Write>, expiries: &[Expiry], final_rev: i64) -> Result<History, String> {
    let mut by_rev: BTreeMap<i64, Write> = BTreeMap::new();
    writes.sort_by_key(|w| w.rev);
    for w in writes {
        if let Some(other) = by_rev.get(&w.rev) {
            return Err(format!(
                "revision {} claimed by two acknowledged writes: {} and {}",
                w.rev, other.what, w.what
            ));
        }
        by_rev.insert(w.rev, w);
    }
    for e in expiries {
        let free: Vec<i64> = (e.after + 1..=e.by)
            .filter(|r| !by_rev.contains_key(r))
            .collect();
        if free.len() != 1 {
            return Err(format!(
                "lease expiry of {:?} expected in exactly one unclaimed revision in ({}, {}], found {:?}",
                e.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(),
                e.after,
                e.by,
                free
            ));
        }
        by_rev.insert(
            free[0],
            Write {
                rev: free[0],
                ops: e.keys.iter().map(|k| Op::Del { key: k.clone() }).collect(),
                what: "lease expiry".into(),
            },
        );
    }
    let missing: Vec<i64> = (2..=final_rev)
        .filter(|r| !by_rev.contains_key(r))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "revisions no acknowledged write explains (first 20 of {}): {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    let mut state: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut revisions = Vec::new();
    for (rev, w) in by_rev {
        let mut events = Vec::new();
        for op in w.ops {
            match op {
                Op::Put { key, value, lease } => {
                    let prev = state.get(&key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
                        mod_revision: rev,
                        version: prev.as_ref().map(|p| p.version).unwrap_or(0) + 1,
                        value,
                        lease,
                    };
                    state.insert(key, kv.clone());
                    events.push(Event {
                        r#type: PUT,
                        kv: Some(kv),
                        prev_kv: prev,
                    });
                }
                Op::Del { key } => {
                    let Some(prev) = state.remove(&key) else {
                        return Err(format!(
                            "revision {rev} ({}) deletes {} which the rebuilt state does not have",
                            w.what,
                            String::from_utf8_lossy(&key)
                        ));
                    };
                    let kv = KeyValue {
                        key,
                        mod_revision: rev,
                        ..Default::default()
                    };
                    events.push(Event {
                        r#type: DELETE,
                        kv: Some(kv),
                        prev_kv: Some(prev),
                    });
                }
            }
        }
        revisions.push((rev, events));
    }
    Ok(History { revisions, state })
}

/// The events `spec` must receive from revision `from` on.
fn expected_for(h: &History, spec: &Spec, from: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for (rev, events) in &h.revisions {
        if *rev < from {
            continue;
        }
        for e in events {
            let kv = e.kv.as_ref().unwrap();
            if !spec.matches(&kv.key)
                || (spec.no_put && e.r#type == PUT)
                || (spec.no_delete && e.r#type == DELETE)
            {
                continue;
            }
            let mut e = e.clone();
            if !spec.prev_kv {
                e.prev_kv = None;
            }
            out.push(e);
        }
    }
    out
}

/// COFFER BUG marker: a DELETE lost at a compaction revision is etcd-io/etcd#18089 (3.4.23's
/// bug, fixed by #18274 in 3.4.34/3.5.16), reproduced deterministically by kube_replay's
/// `watch_from_compacted_delete`.
fn compacted_delete_hint(
    name: &str,
    missing: Option<&Event>,
    compactions: &[i64],
) -> Option<String> {
    let e = missing?;
    let rev = e.kv.as_ref()?.mod_revision;
    (e.r#type == DELETE && compactions.contains(&rev)).then(|| {
        format!(
            "{name}: COFFER BUG etcd-io/etcd#18089: the missing event is a DELETE at compaction \
             revision {rev}, skipped instead of delivered (see kube_replay \
             watch_from_compacted_delete)"
        )
    })
}

fn show(e: &Event) -> String {
    let kv = e.kv.as_ref().unwrap();
    let p = e.prev_kv.as_ref().map(|p| {
        format!(
            "prev(mod {} ver {} {:?} lease {})",
            p.mod_revision,
            p.version,
            String::from_utf8_lossy(&p.value),
            p.lease
        )
    });
    format!(
        "{} {} @{} (create {} ver {} {:?} lease {}) {}",
        if e.r#type == PUT { "PUT" } else { "DELETE" },
        String::from_utf8_lossy(&kv.key),
        kv.mod_revision,
        kv.create_revision,
        kv.version,
        String::from_utf8_lossy(&kv.value),
        kv.lease,
        p.unwrap_or_else(|| "no prev".into())
    )
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug, Default)]
struct Report {
    failures: Vec<String>,
    figures: Vec<String>,
}

async fn soak(endpoint: &str, cfg: &Config, server: &str) -> Report {
    let mut report = Report::default();
    let write_ch = connect(endpoint).await.unwrap();
    let watch_ch = connect(endpoint).await.unwrap();
    let mut kv = KvClient::new(write_ch.clone());
    let compacted = Arc::new(AtomicI64::new(0));

    // Seed every shared key once.
    let mut seed = Log::default();
    for p in ['a', 'b'] {
        for i in 0..KEYS {
            let k = shared_key(p, i);
            let r = kv.put(put_req(&k, b"seed", 0)).await.unwrap().into_inner();
            seed.writes.push(Write {
                rev: rev_of(&r.header),
                ops: vec![Op::Put {
                    key: k,
                    value: b"seed".to_vec(),
                    lease: 0,
                }],
                what: "seed".into(),
            });
        }
    }

    // Streams and their receivers.
    let run_start = Instant::now() + Duration::from_millis(500);
    let mut senders = Vec::new();
    let mut logs = Vec::new();
    let mut receivers = Vec::new();
    for s in 0..cfg.streams {
        // Open each stream with a watcher on a key nobody writes (not checked; it keeps the
        // ids of the checked watchers from 1 on, the same on both servers).
        // The slow stream has its own connection with small HTTP/2 windows, so that when
        // it stops reading the server has to hold its events back.
        let ch = if cfg.slow_stream && s == 0 {
            tonic::transport::Endpoint::from_shared(endpoint.to_string())
                .unwrap()
                .initial_stream_window_size(Some(64 * 1024))
                .initial_connection_window_size(Some(64 * 1024))
                .connect()
                .await
                .unwrap()
        } else {
            watch_ch.clone()
        };
        let ws = WatchStream::open_on(ch, endpoint, create_request(b"/soak-unused", b""))
            .await
            .unwrap();
        let (tx, rx) = ws.split();
        let log = Arc::new(Mutex::new(StreamLog::default()));
        log.lock().unwrap().pending.push_back(usize::MAX);
        let pause = (cfg.slow_stream && s == 0).then(|| {
            (
                run_start + cfg.duration.mul_f64(0.25),
                Duration::from_millis(2500),
            )
        });
        receivers.push(tokio::spawn(receiver(rx, log.clone(), pause)));
        senders.push(AsyncMutex::new(tx));
        logs.push(log);
    }
    let streams = Arc::new(Streams {
        senders,
        logs,
        watchers: Arc::new(Mutex::new(Vec::new())),
        compacted: compacted.clone(),
    });

    let mut rng = Rng::new(7);
    let current = rev_of(
        &kv.range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header,
    );
    for i in 0..cfg.initial_watchers {
        let spec = random_spec(&mut rng, current, true);
        streams.create(i % cfg.streams, spec).await;
    }

    // Writers, lease task, compactor, churn, progress requests.
    tokio::time::sleep_until(run_start.into()).await;
    let until = run_start + cfg.duration;
    let mut tasks = Vec::new();
    for id in 0..cfg.writers {
        tasks.push(tokio::spawn(writer(write_ch.clone(), id, until)));
    }
    tasks.push(tokio::spawn(lease_task(write_ch.clone(), until)));
    let compactor_task = tokio::spawn(compactor(
        write_ch.clone(),
        run_start,
        cfg.duration,
        compacted.clone(),
    ));
    let churn = {
        let streams = streams.clone();
        let mut kv = kv.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(99);
            let steps = cfg.added_watchers + cfg.cancelled_watchers;
            let gap = cfg.duration.mul_f64(0.8) / steps.max(1) as u32;
            let (mut added, mut cancelled) = (0, 0);
            while added < cfg.added_watchers || cancelled < cfg.cancelled_watchers {
                tokio::time::sleep(gap).await;
                let s = rng.below(cfg.streams as u64) as usize;
                if added < cfg.added_watchers
                    && (cancelled >= cfg.cancelled_watchers || rng.chance(55))
                {
                    let cur = rev_of(
                        &kv.range(RangeRequest {
                            key: b"x".to_vec(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .header,
                    );
                    let mut spec = random_spec(&mut rng, cur, true);
                    // Now and then, a watch from revision 2: compacted once the first
                    // compaction ran, so it must be cancelled with compact_revision.
                    if added % 6 == 5 {
                        spec.start = 2;
                    }
                    streams.create(s, spec).await;
                    added += 1;
                } else if streams.cancel_one(s, rng.next()).await {
                    cancelled += 1;
                }
            }
        })
    };
    let progress = {
        let streams = streams.clone();
        let n = cfg.streams;
        tokio::spawn(async move {
            let mut rng = Rng::new(5);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let s = rng.below(n as u64) as usize;
                let sent = streams.senders[s].lock().await.request_progress().await;
                if let Err(e) = sent {
                    streams.send_failed(s, &e.to_string());
                }
            }
        })
    };

    let mut all = seed;
    for t in tasks {
        let log = t.await.unwrap();
        all.writes.extend(log.writes);
        all.expiries.extend(log.expiries);
        all.errors.extend(log.errors);
    }
    let (clog, compactions) = compactor_task.await.unwrap();
    all.writes.extend(clog.writes);
    all.errors.extend(clog.errors);
    churn.await.unwrap();
    progress.await.unwrap();
    let final_rev = rev_of(
        &kv.range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header,
    );
    let elapsed = run_start.elapsed();
    report.failures.extend(all.errors.iter().cloned());

    let history = match rebuild(all.writes.clone(), &all.expiries, final_rev) {
        Ok(h) => h,
        Err(e) => {
            report
                .failures
                .push(format!("cannot rebuild the history: {e}"));
            return report;
        }
    };
    // The rebuilt keyspace must be the server's.
    let everything = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let server_state: BTreeMap<Vec<u8>, KeyValue> = everything
        .kvs
        .into_iter()
        .map(|k| (k.key.clone(), k))
        .collect();
    if server_state != history.state {
        let only_server: Vec<String> = server_state
            .iter()
            .filter(|(k, v)| history.state.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| format!("{} {v:?}", String::from_utf8_lossy(k)))
            .collect();
        let only_rebuilt: Vec<String> = history
            .state
            .iter()
            .filter(|(k, v)| server_state.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| format!("{} {v:?}", String::from_utf8_lossy(k)))
            .collect();
        report.failures.push(format!("rebuilt keyspace differs from the server's: server {only_server:?} rebuilt {only_rebuilt:?}"));
    }

    // Wait until every live watcher received what it should have (or 20 s).
    let expected_of = |w: usize, info: &WatcherInfo, log: &StreamLog| -> Option<Vec<Event>> {
        let created = log.seen.iter().find_map(|s| match s {
            Seen::Created { w: x, rev, .. } if *x == w => Some(*rev),
            _ => None,
        })?;
        let from = if info.spec.start > 0 {
            info.spec.start
        } else {
            created + 1
        };
        Some(expected_for(&history, &info.spec, from))
    };
    let wait_start = Instant::now();
    loop {
        let watchers = streams.watchers.lock().unwrap().clone();
        let mut waiting = 0;
        for (s, l) in streams.logs.iter().enumerate() {
            let l = l.lock().unwrap();
            let mut got: HashMap<usize, usize> = HashMap::new();
            let mut done: Vec<usize> = Vec::new();
            for seen in &l.seen {
                match seen {
                    Seen::Events { w, events, .. } => *got.entry(*w).or_default() += events.len(),
                    Seen::Canceled { w, .. } => done.push(*w),
                    _ => {}
                }
            }
            for (w, info) in watchers.iter().enumerate().filter(|(_, i)| i.stream == s) {
                if done.contains(&w) || l.ended.is_some() {
                    continue;
                }
                match expected_of(w, info, &l) {
                    None => waiting += 1,
                    Some(exp) if info.cancel_requested => {
                        let _ = exp;
                        waiting += 1;
                    }
                    Some(exp) => {
                        if got.get(&w).copied().unwrap_or(0) < exp.len() {
                            waiting += 1;
                        }
                    }
                }
            }
        }
        if waiting == 0 || wait_start.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivery_wait = wait_start.elapsed();
    // Anything extra (duplicates) shows up now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for r in &receivers {
        r.abort();
    }

    // Check every watcher.
    let watchers = streams.watchers.lock().unwrap().clone();
    let mut delivered = 0usize;
    let mut known_10681 = 0usize;
    let mut compaction_cancels = 0;
    let mut slow_cancels = 0;
    let mut stale_creates = 0;
    let mut client_cancels = 0;
    let mut progress_checked = 0;
    let mut etcd_early_progress = 0;
    for (s, l) in streams.logs.iter().enumerate() {
        let l = l.lock().unwrap();
        if let Some(e) = &l.ended {
            report.failures.push(format!("stream {s}: {e}"));
        }
        if let Some(e) = l.send_errors.first() {
            report.failures.push(format!(
                "stream {s}: {} requests could not be sent, first: {e}",
                l.send_errors.len()
            ));
        }
        for seen in &l.seen {
            if let Seen::Stray(m) = seen {
                report.failures.push(format!("stream {s}: {m}"));
            }
        }
        // Per watcher: expected events, what arrived, position of each arrival in the log.
        let mut exp_by_w: HashMap<usize, Vec<Event>> = HashMap::new();
        let mut got_by_w: HashMap<usize, Vec<(usize, Event)>> = HashMap::new();
        let mut resp_by_w: HashMap<usize, Vec<(i64, bool, i64, i64)>> = HashMap::new();
        let mut end_by_w: HashMap<usize, (usize, i64, String)> = HashMap::new();
        let mut created_at: HashMap<usize, (usize, i64)> = HashMap::new();
        for (pos, seen) in l.seen.iter().enumerate() {
            match seen {
                Seen::Created { w, watch_id, rev } if *w != usize::MAX => {
                    created_at.insert(*w, (pos, *watch_id));
                    let _ = rev;
                }
                Seen::Events {
                    w,
                    rev,
                    fragment,
                    events,
                } => {
                    if end_by_w.contains_key(w) {
                        report
                            .failures
                            .push(format!("stream {s} watcher {w}: events after its cancel"));
                    }
                    let first = events
                        .first()
                        .and_then(|e| e.kv.as_ref())
                        .map(|k| k.mod_revision)
                        .unwrap_or(0);
                    let last = events
                        .last()
                        .and_then(|e| e.kv.as_ref())
                        .map(|k| k.mod_revision)
                        .unwrap_or(0);
                    resp_by_w
                        .entry(*w)
                        .or_default()
                        .push((*rev, *fragment, first, last));
                    for e in events {
                        got_by_w.entry(*w).or_default().push((pos, e.clone()));
                    }
                }
                Seen::Canceled { w, compact, reason } => {
                    end_by_w.insert(*w, (pos, *compact, reason.clone()));
                }
                _ => {}
            }
        }
        for (w, info) in watchers.iter().enumerate().filter(|(_, i)| i.stream == s) {
            let name = format!("stream {s} watcher {w} ({})", info.spec.describe());
            let Some(mut exp) = expected_of(w, info, &l) else {
                report.failures.push(format!("{name}: never created"));
                continue;
            };
            let got: Vec<Event> = got_by_w
                .get(&w)
                .map(|v| v.iter().map(|(_, e)| e.clone()).collect())
                .unwrap_or_default();
            if server.starts_with("etcd") {
                // etcd-io/etcd#10681 (expected of etcd only): an event without its prev_kv when
                // the previous version was compacted while the watcher caught up.
                for (g, e) in got.iter().zip(exp.iter_mut()) {
                    let compacted_prev = e
                        .prev_kv
                        .as_ref()
                        .is_some_and(|p| compactions.iter().any(|c| *c > p.mod_revision));
                    if g.prev_kv.is_none() && compacted_prev {
                        let mut without = e.clone();
                        without.prev_kv = None;
                        if *g == without {
                            *e = without;
                            known_10681 += 1;
                        }
                    }
                }
            }
            delivered += got.len();
            // Revisions are never split across responses, and headers are not behind events.
            let resps = resp_by_w.get(&w).cloned().unwrap_or_default();
            for pair in resps.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if !a.1 && a.3 == b.2 {
                    report.failures.push(format!(
                        "{name}: revision {} split across two responses",
                        a.3
                    ));
                }
            }
            for r in &resps {
                if r.0 < r.3 {
                    report.failures.push(format!(
                        "{name}: response header revision {} below its event at {}",
                        r.0, r.3
                    ));
                }
            }
            let n = got.len();
            let prefix_ok = n <= exp.len() && got[..] == exp[..n];
            if !prefix_ok {
                let i = (0..n).find(|i| exp.get(*i) != Some(&got[*i])).unwrap_or(n);
                report
                    .failures
                    .extend(compacted_delete_hint(&name, exp.get(i), &compactions));
                report.failures.push(format!(
                    "{name}: event #{i} differs (received {n}, expected {}):\n    got      {}\n    expected {}",
                    exp.len(),
                    got.get(i).map(show).unwrap_or_else(|| "nothing".into()),
                    exp.get(i).map(show).unwrap_or_else(|| "nothing".into()),
                ));
                continue;
            }
            let on_boundary = n == 0
                || n == exp.len()
                || exp[n].kv.as_ref().unwrap().mod_revision
                    != exp[n - 1].kv.as_ref().unwrap().mod_revision;
            let last_got = got.last().map(|e| e.kv.as_ref().unwrap().mod_revision);
            match end_by_w.get(&w) {
                Some((_, compact, reason)) if *compact > 0 => {
                    compaction_cancels += 1;
                    if s == 0 && cfg.slow_stream {
                        slow_cancels += 1;
                    }
                    if info.spec.start > 0 && info.spec.start < info.compacted_at_create {
                        stale_creates += 1;
                    }
                    if !compactions.contains(compact) {
                        report.failures.push(format!("{name}: cancelled with compact_revision {compact}, not a compaction we ran ({compactions:?})"));
                    }
                    if !reason.is_empty() {
                        report
                            .failures
                            .push(format!("{name}: compaction cancel with a reason: {reason}"));
                    }
                    if last_got.is_some_and(|r| r >= *compact) {
                        report.failures.push(format!("{name}: cancelled with compact_revision {compact} after receiving revision {}", last_got.unwrap_or(0)));
                    }
                    if info.spec.start > 0 && info.spec.start >= *compact && n == 0 {
                        report.failures.push(format!(
                            "{name}: start {} is not below compact_revision {compact}",
                            info.spec.start
                        ));
                    }
                    if !on_boundary {
                        report.failures.push(format!(
                            "{name}: cancelled in the middle of revision {}",
                            last_got.unwrap_or(0)
                        ));
                    }
                }
                Some((_, _, reason)) => {
                    client_cancels += 1;
                    if !info.cancel_requested {
                        report.failures.push(format!("{name}: cancelled by the server without compaction (reason {reason:?})"));
                    }
                    if !on_boundary {
                        report.failures.push(format!(
                            "{name}: cancel ended the watcher in the middle of revision {}",
                            last_got.unwrap_or(0)
                        ));
                    }
                }
                None => {
                    if info.cancel_requested {
                        report
                            .failures
                            .push(format!("{name}: cancel requested, never confirmed"));
                    }
                    if info.spec.start > 0 && info.spec.start < info.compacted_at_create {
                        report.failures.push(format!(
                            "{name}: created below the compaction ({}) and not cancelled with compact_revision",
                            info.compacted_at_create
                        ));
                    }
                    if n != exp.len() && !info.cancel_requested {
                        report.failures.extend(compacted_delete_hint(
                            &name,
                            exp.get(n),
                            &compactions,
                        ));
                        // A live watcher must have every event.
                        report.failures.push(format!(
                            "{name}: received {n} of {} events (missing from {})",
                            exp.len(),
                            show(&exp[n])
                        ));
                    }
                }
            }
            exp_by_w.insert(w, exp);
        }
        // Progress notifications: at revision R, every expected event <= R was delivered first.
        for (pos, seen) in l.seen.iter().enumerate() {
            let Seen::Progress { watch_id, rev } = seen else {
                continue;
            };
            let targets: Vec<usize> = if *watch_id == -1 {
                created_at
                    .iter()
                    .filter(|(w, (p, _))| *p < pos && end_by_w.get(*w).is_none_or(|e| e.0 > pos))
                    .map(|(w, _)| *w)
                    .collect()
            } else {
                created_at
                    .iter()
                    .filter(|(_, (p, id))| *id == *watch_id && *p < pos)
                    .map(|(w, _)| *w)
                    .collect()
            };
            for w in targets {
                let Some(exp) = exp_by_w.get(&w) else {
                    continue;
                };
                let due = exp
                    .iter()
                    .filter(|e| e.kv.as_ref().unwrap().mod_revision <= *rev)
                    .count();
                let before = got_by_w
                    .get(&w)
                    .map(|v| v.iter().filter(|(p, _)| *p < pos).count())
                    .unwrap_or(0);
                if *watch_id == -1 {
                    progress_checked += 1;
                }
                if before < due {
                    if *watch_id == -1 && !cfg.check_requested_progress {
                        etcd_early_progress += 1;
                        continue;
                    }
                    report.failures.push(format!(
                        "stream {s} watcher {w}: progress notification (watch_id {watch_id}) at revision {rev} before {} of its events at or below it",
                        due - before
                    ));
                }
            }
        }
    }
    report.figures.push(format!(
        "{server}: {} writers, {:?} of writes, revisions 1..{final_rev} ({} writes + {} expiries), {} watchers on {} streams, {} events delivered, {} compaction cancels ({} on the slow stream, {} of watches created below a compaction), {} client cancels, compactions at {compactions:?}, delivery wait {:?}, {} RequestProgress answers checked{}",
        cfg.writers,
        elapsed,
        all.writes.len(),
        all.expiries.len(),
        watchers.len(),
        cfg.streams,
        delivered,
        compaction_cancels,
        slow_cancels,
        stale_creates,
        client_cancels,
        delivery_wait,
        progress_checked,
        if cfg.check_requested_progress { String::new() } else { format!(" (not enforced: {etcd_early_progress} answered early, etcd-io/etcd#15220)") },
    ));
    if known_10681 > 0 {
        report.figures.push(format!(
            "{server}: {known_10681} events without prev_kv after a compaction (etcd-io/etcd#10681, expected of etcd only)"
        ));
    }
    if compactions.len() != 2 {
        report
            .failures
            .push(format!("expected two compactions, ran {compactions:?}"));
    }
    if all.expiries.is_empty() {
        report
            .failures
            .push("no lease expired during the run".into());
    }
    report
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const COFFER_SIZE: Config = Config {
    writers: 8,
    duration: Duration::from_secs(10),
    streams: 10,
    initial_watchers: 150,
    added_watchers: 50,
    cancelled_watchers: 25,
    slow_stream: true,
    check_requested_progress: true,
};

/// etcd 3.4.23 checks the test itself, smaller; no slow stream and RequestProgress answers not
/// enforced (see the module documentation: etcd-io/etcd#17529, #15220, h2's flood guard).
const ETCD_SIZE: Config = Config {
    writers: 4,
    duration: Duration::from_secs(5),
    streams: 4,
    initial_watchers: 50,
    added_watchers: 20,
    cancelled_watchers: 10,
    slow_stream: false,
    check_requested_progress: false,
};

#[test]
fn soak_every_watcher_sees_every_event_once_in_order() {
    let flags = vec![PROGRESS_FLAG.to_string()];
    let coffer = CofferProcess::start(CofferOptions {
        extra_args: flags.clone(),
        ..Default::default()
    })
    .unwrap();
    let coffer_report = runtime().block_on(soak(&coffer.endpoint(), &COFFER_SIZE, "coffer"));
    drop(coffer);
    let etcd = EtcdProcess::start_with(EtcdOptions {
        extra_args: flags,
        ..Default::default()
    })
    .unwrap();
    let etcd_report = runtime().block_on(soak(&etcd.endpoint(), &ETCD_SIZE, "etcd 3.4.23"));
    drop(etcd);
    for f in coffer_report.figures.iter().chain(&etcd_report.figures) {
        println!("{f}");
    }
    let mut failures = Vec::new();
    for (who, r) in [
        ("coffer", &coffer_report),
        ("etcd 3.4.23 (test self-check)", &etcd_report),
    ] {
        for f in r.failures.iter().take(30) {
            failures.push(format!("[{who}] {f}"));
        }
        if r.failures.len() > 30 {
            failures.push(format!("[{who}] ... and {} more", r.failures.len() - 30));
        }
    }
    assert!(
        failures.is_empty(),
        "soak failures:\n{}",
        failures.join("\n")
    );
}
