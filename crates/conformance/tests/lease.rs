//! Leases, end to end: the same scenario against a fresh Debian etcd 3.4.23 and a fresh
//! `coffer serve`, answers normalized (ids the server chose and remaining TTLs checked, then
//! replaced by placeholders) and compared. No expected differences.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test lease`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use coffer_conformance::client::connect;
use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::watch_request::RequestUnion;
use coffer_proto::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, ResponseHeader, WatchCreateRequest,
    WatchRequest,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn rev(h: Option<ResponseHeader>) -> Value {
    json!(h.map(|h| h.revision))
}

fn err(s: tonic::Status) -> Value {
    json!({"code": format!("{:?}", s.code()), "message": s.message()})
}

async fn scenario(endpoint: &str) -> Vec<(&'static str, Value)> {
    let ch = connect(endpoint).await.unwrap();
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let mut t = Vec::new();
    let grant = |ttl: i64, id: i64| LeaseGrantRequest { ttl, id };

    let g = lease.grant_req(grant(60, 0)).await;
    let id = g.id;
    assert!(id > 0, "server-chosen id must be positive: {id}");
    t.push((
        "grant 60, server id",
        json!({"rev": rev(g.header), "id_positive": id > 0, "ttl": g.ttl, "error": g.error}),
    ));
    let g = lease.grant_req(grant(1, -5)).await;
    t.push((
        "grant -5 ttl 1",
        json!({"rev": rev(g.header), "id": g.id, "ttl": g.ttl}),
    ));
    let e = lease.lease_grant(grant(10, -5)).await.unwrap_err();
    t.push(("grant existing", err(e)));
    let e = lease
        .lease_grant(grant(9_000_000_001, 0))
        .await
        .unwrap_err();
    t.push(("grant too large", err(e)));

    let put = |k: &str, lease: i64| PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    kv.put(put("b", id)).await.unwrap();
    kv.put(put("a", id)).await.unwrap();
    let r = kv.put(put("c", 999)).await.unwrap_err();
    t.push(("put with unknown lease", err(r)));

    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert!((57..=60).contains(&ttl.ttl), "remaining {}", ttl.ttl);
    // etcd lists the keys in Go map order (unspecified): compare them sorted.
    let mut keys: Vec<String> = ttl
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    t.push((
        "time to live",
        json!({"rev": rev(ttl.header), "id_same": ttl.id == id, "granted": ttl.granted_ttl, "keys": keys}),
    ));
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 12345,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "time to live unknown",
        json!({"rev": rev(ttl.header), "id": ttl.id, "ttl": ttl.ttl, "granted": ttl.granted_ttl, "keys": ttl.keys.len()}),
    ));
    let ls = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<Value> = ls
        .leases
        .iter()
        .map(|l| if l.id == id { json!("L") } else { json!(l.id) })
        .collect();
    ids.sort_by_key(|v| v.to_string());
    t.push(("leases", json!({"rev": rev(ls.header), "ids": ids})));

    // Keep-alive stream: a known lease renews to its TTL, an unknown one gets TTL 0.
    let (tx, rx) = mpsc::channel(4);
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut ka = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = ka.message().await.unwrap().unwrap();
    t.push((
        "keep alive",
        json!({"rev": rev(r.header), "id_same": r.id == id, "ttl": r.ttl}),
    ));
    tx.send(LeaseKeepAliveRequest { id: 4242 }).await.unwrap();
    let r = ka.message().await.unwrap().unwrap();
    t.push((
        "keep alive unknown",
        json!({"rev": rev(r.header), "id": r.id, "ttl": r.ttl}),
    ));
    drop(tx);

    let r = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner();
    t.push(("revoke", json!({"rev": rev(r.header)})));
    let got = kv
        .range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "keys gone",
        json!({"rev": rev(got.header), "count": got.count}),
    ));
    let e = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap_err();
    t.push(("revoke again", err(e)));

    // Expiry: a 2 s lease with two keys goes away in one revision; a watcher with prev_kv
    // sees both DELETEs in one response (kube's watch cache needs the prev_kv).
    let (wtx, wrx) = mpsc::channel(4);
    wtx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"x".to_vec(),
            range_end: b"y".to_vec(),
            prev_kv: true,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut watch = WatchClient::new(connect(endpoint).await.unwrap())
        .watch(tokio_stream::wrappers::ReceiverStream::new(wrx))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().unwrap().created);
    let g = lease.grant_req(grant(2, 77)).await;
    kv.put(put("x1", g.id)).await.unwrap();
    kv.put(put("x2", g.id)).await.unwrap();
    let start = Instant::now();
    let before = kv
        .range(RangeRequest {
            key: b"x1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let mut gone_at = None;
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = kv
            .range(RangeRequest {
                key: b"x".to_vec(),
                range_end: b"y".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if r.count == 0 {
            gone_at = Some(r.header.unwrap().revision);
            break;
        }
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "expired too early: {waited:?}"
    );
    t.push((
        "expiry",
        json!({"expired": gone_at.is_some(), "revisions_used": gone_at.map(|r| r - before)}),
    ));
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 77,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    t.push(("expired lease ttl", json!({"ttl": ttl.ttl})));
    // Skip the two PUT events, then the expiry's DELETEs.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let evs: Vec<Value> = r
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                json!({
                    "type": e.r#type,
                    "key": String::from_utf8_lossy(&kv.key),
                    "rev_offset": kv.mod_revision - before,
                    "prev_lease_is_77": e.prev_kv.as_ref().map(|p| p.lease == 77),
                })
            })
            .collect();
        seen.push(json!(evs));
    }
    drop(wtx);
    t.push(("watch sees the expiry", json!(seen)));
    t
}

trait GrantReq {
    async fn grant_req(&mut self, r: LeaseGrantRequest) -> coffer_proto::LeaseGrantResponse;
}

impl GrantReq for LeaseClient<tonic::transport::Channel> {
    async fn grant_req(&mut self, r: LeaseGrantRequest) -> coffer_proto::LeaseGrantResponse {
        self.lease_grant(r).await.unwrap().into_inner()
    }
}

fn run(endpoint: String) -> Vec<(&'static str, Value)> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(&endpoint))
}

#[test]
fn lease_side_by_side() {
    let etcd = EtcdProcess::start().unwrap();
    let coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let from_etcd = run(etcd.endpoint());
    let from_coffer = run(coffer.endpoint());
    let mut failures = Vec::new();
    for ((step, e), (_, c)) in from_etcd.iter().zip(&from_coffer) {
        if std::env::var_os("COFFER_CONFORMANCE_DUMP").is_some() {
            println!("{step}\n  etcd:   {e}\n  coffer: {c}");
        }
        if e != c {
            failures.push(format!("{step}\n  etcd:   {e}\n  coffer: {c}"));
        }
    }
    assert_eq!(from_etcd.len(), from_coffer.len());
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

/// Coffer only (etcd 3.4.23 resets every lease to `TTL + election timeout` on restart): the
/// remaining TTL is frozen while the server is down, after a clean stop and after a crash.
///
/// The bounds come from measured times, not fixed windows, so a slow machine widens them
/// instead of failing the test. Coffer reports `floor(30 - A)` for a 30 s lease that was alive
/// (server running) for `A` seconds: `alive_hi` over-estimates `A` (it counts every moment the
/// server may have been running, stopping and starting included), `alive_lo` under-estimates it.
/// - `remaining >= floor(30 - alive_hi)`: downtime did not count. Had it counted, remaining
///   would be `floor(30 - A - down)`, below the bound when `down` exceeds the measurement slack
///   `alive_hi - A` by a second. Most of that slack is the restart (the engine's integrity
///   check on open takes seconds in a debug build), so a restart is timed first and each
///   downtime is that long plus a few seconds.
/// - `remaining <= floor(30 - alive_lo)`: not reset to full (`floor(30 - time since start)`,
///   29 or 30 when queried promptly; `alive_lo` is at least 2 s, so the bound is 27 at most).
///
/// A crash loses the time since the last periodic checkpoint (every 5 s): that only raises the
/// remaining TTL, which stays below the clean-stop bound, so both bounds hold whether or not a
/// checkpoint happened before the kill.
#[test]
fn coffer_lease_ttl_frozen_across_restart() {
    /// Two millisecond truncations (checkpoint and restart) may each take off up to 1 ms.
    const TRUNCATION: Duration = Duration::from_millis(10);
    let floor_left = |alive: Duration| (30.0 - alive.as_secs_f64()).floor() as i64;
    let mut coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = coffer.endpoint();
    let ttl_of = |id: i64| {
        let endpoint = endpoint.clone();
        rt.block_on(async move {
            let ch = connect(&endpoint).await.unwrap();
            let mut lease = LeaseClient::new(ch.clone());
            let ttl = lease
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
                .await
                .unwrap()
                .into_inner();
            (ttl.ttl, ttl.keys.len())
        })
    };
    // How long a stop and start take here, before any lease exists.
    let before = Instant::now();
    coffer.terminate(Duration::from_secs(10)).unwrap();
    coffer.restart().unwrap();
    let restart_took = before.elapsed();

    let t0 = Instant::now();
    let id = rt.block_on(async {
        let ch = connect(&coffer.endpoint()).await.unwrap();
        let mut lease = LeaseClient::new(ch.clone());
        let id = lease
            .grant_req(LeaseGrantRequest { ttl: 30, id: 0 })
            .await
            .id;
        KvClient::new(ch)
            .put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: id,
                ..Default::default()
            })
            .await
            .unwrap();
        id
    });
    let granted = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    // Clean stop (remaining TTLs are checkpointed at shutdown), then down.
    let t1 = Instant::now();
    coffer.terminate(Duration::from_secs(10)).unwrap();
    let stopped = Instant::now();
    std::thread::sleep(restart_took + Duration::from_millis(2500));
    let t2 = Instant::now();
    coffer.restart().unwrap();
    let (ttl, keys) = ttl_of(id);
    let t3 = Instant::now();
    assert_eq!(keys, 1);
    // Alive: from before the grant until the process exited, and from the restart until the
    // answer. At least: from the grant's answer until SIGTERM.
    let alive_hi = (stopped - t0) + (t3 - t2) + TRUNCATION;
    let alive_lo = t1 - granted;
    let (down, lowest, highest) = (t2 - stopped, floor_left(alive_hi), floor_left(alive_lo));
    let seen = format!("alive {alive_lo:?}..{alive_hi:?}, down {down:?}, restart {restart_took:?}");
    eprintln!("clean restart: remaining {ttl}, bounds {lowest}..={highest} ({seen})");
    assert!(
        ttl >= lowest,
        "after a clean restart: downtime counted: {ttl} < {lowest} ({seen})"
    );
    assert!(
        ttl <= highest,
        "after a clean restart: reset: {ttl} > {highest} ({seen})"
    );

    // Crash 6 s after the restart (a periodic checkpoint is due after 5 s), then down.
    std::thread::sleep(Duration::from_secs(6));
    coffer.kill();
    let killed = Instant::now();
    std::thread::sleep(restart_took + Duration::from_secs(3));
    let t5 = Instant::now();
    coffer.restart().unwrap();
    let (ttl, keys) = ttl_of(id);
    let t6 = Instant::now();
    assert_eq!(keys, 1);
    let alive_hi = alive_hi + (killed - t3) + (t6 - t5) + TRUNCATION;
    let (down, lowest) = (t5 - killed, floor_left(alive_hi));
    let seen = format!("alive {alive_lo:?}..{alive_hi:?}, down {down:?}");
    eprintln!("crash: remaining {ttl}, bounds {lowest}..={highest} ({seen})");
    assert!(
        ttl >= lowest,
        "after a crash: downtime counted: {ttl} < {lowest} ({seen})"
    );
    assert!(
        ttl <= highest,
        "after a crash: reset: {ttl} > {highest} ({seen})"
    );
}
