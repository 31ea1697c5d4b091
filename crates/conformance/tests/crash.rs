//! Crash test: concurrent writers against the real `coffer serve` binary, SIGKILL in the middle
//! of the load, restart on the same data directory, then check that
//! - every acknowledged write is there with its value (a write in flight at the kill may or
//!   may not be, but nothing else),
//! - txns are atomic (both keys of a txn carry the same txn number),
//! - acknowledged deletes stay deleted,
//! - the revision never goes backwards (not below any acknowledged revision, nor below the
//!   revision seen before the previous crash).
//!
//! Several cycles run on the same data directory. Needs a built binary:
//! `cargo build -p coffer && cargo test -p coffer-conformance --test crash`
//! (`COFFER_BIN` overrides the path; `COFFER_CRASH_CYCLES` the number of cycles, default 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coffer_conformance::{CofferOptions, CofferProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::request_op::Request;
use coffer_proto::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

const WORKERS: usize = 8;

/// What a key should hold: the last acknowledged state (`None` = deleted) and, if a write was
/// in flight when the server died, the state that write would have produced.
#[derive(Debug, Clone, Default)]
struct KeyState {
    acked: Option<Option<Vec<u8>>>,
    acked_rev: i64,
    inflight: Option<Option<Vec<u8>>>,
}

/// One worker's keys (no two workers write the same key) and its highest acked revision.
#[derive(Debug, Default)]
struct WorkerModel {
    keys: BTreeMap<Vec<u8>, KeyState>,
    max_rev: i64,
    next: u64,
}

impl WorkerModel {
    fn begin(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.keys.entry(key.to_vec()).or_default().inflight = Some(value);
    }
    fn ack(&mut self, key: &[u8], rev: i64) {
        let st = self.keys.entry(key.to_vec()).or_default();
        if let Some(v) = st.inflight.take() {
            st.acked = Some(v);
            st.acked_rev = rev;
        }
        self.max_rev = self.max_rev.max(rev);
    }
}

fn nonce() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

fn put_op(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

/// Writes until the connection fails or `stop` is set. Every op is recorded as in flight
/// before it is sent and as acknowledged when the answer arrives.
async fn worker(
    id: usize,
    cycle: usize,
    endpoint: String,
    mut model: WorkerModel,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> WorkerModel {
    let Ok(channel) = Channel::from_shared(endpoint).unwrap().connect().await else {
        return model;
    };
    let mut kv = KvClient::new(channel);
    let salt = nonce();
    while !stop.load(Ordering::Relaxed) {
        let i = model.next;
        model.next += 1;
        let result = match i % 5 {
            // A fresh key, written once.
            0 | 1 => {
                let key = format!("crash/w{id}/u{i}").into_bytes();
                let value = format!("unique-{id}-{i}-{salt}").into_bytes();
                model.begin(&key, Some(value.clone()));
                kv.put(PutRequest {
                    key: key.clone(),
                    value,
                    ..Default::default()
                })
                .await
                .map(|r| vec![(key, r.into_inner().header.unwrap().revision)])
            }
            // The worker's hot key, overwritten again and again.
            2 => {
                let key = format!("crash/w{id}/hot").into_bytes();
                let value = format!("hot-{id}-{cycle}-{i}-{salt}").into_bytes();
                model.begin(&key, Some(value.clone()));
                kv.put(PutRequest {
                    key: key.clone(),
                    value,
                    ..Default::default()
                })
                .await
                .map(|r| vec![(key, r.into_inner().header.unwrap().revision)])
            }
            // A txn writing two keys with the same txn number.
            3 => {
                let a = format!("crash/w{id}/txn-a").into_bytes();
                let b = format!("crash/w{id}/txn-b").into_bytes();
                let value = format!("txn-{id}-{i}-{salt}").into_bytes();
                model.begin(&a, Some(value.clone()));
                model.begin(&b, Some(value.clone()));
                kv.txn(TxnRequest {
                    compare: vec![],
                    success: vec![put_op(&a, &value), put_op(&b, &value)],
                    failure: vec![],
                })
                .await
                .map(|r| {
                    let rev = r.into_inner().header.unwrap().revision;
                    vec![(a, rev), (b, rev)]
                })
            }
            // Delete an earlier unique key.
            _ => {
                let victim = i.saturating_sub(4);
                let key = format!("crash/w{id}/u{victim}").into_bytes();
                if !model.keys.contains_key(&key) {
                    continue;
                }
                model.begin(&key, None);
                kv.delete_range(DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| vec![(key, r.into_inner().header.unwrap().revision)])
            }
        };
        match result {
            Ok(done) => {
                for (key, rev) in done {
                    model.ack(&key, rev);
                }
                acks.fetch_add(1, Ordering::Relaxed);
            }
            // The server died (or is dying): whatever is in flight stays "maybe".
            Err(_) => break,
        }
    }
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let cycles: usize = std::env::var("COFFER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let mut models: Vec<WorkerModel> = (0..WORKERS).map(|_| WorkerModel::default()).collect();
    let mut floor_rev = 1i64;
    let mut total_acks = 0u64;
    let mut total_secs = 0f64;

    for cycle in 0..cycles {
        let acks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = std::mem::take(&mut models)
            .into_iter()
            .enumerate()
            .map(|(id, model)| {
                tokio::spawn(worker(
                    id,
                    cycle,
                    coffer.endpoint(),
                    model,
                    acks.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        // Kill mid-load: after a varying number of acknowledged writes.
        let target = 150 + 100 * cycle as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let load_secs = started.elapsed().as_secs_f64();
        coffer.kill();
        let acked_now = acks.load(Ordering::Relaxed);
        assert!(
            acked_now >= target,
            "cycle {cycle}: only {acked_now} writes acknowledged in 60 s\n{}",
            coffer.log()
        );
        total_acks += acked_now;
        total_secs += load_secs;
        // The workers stop at their first failed request; the flag only covers a worker that
        // has not sent one since.
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            models.push(t.await.unwrap());
        }

        coffer.restart().unwrap();
        let channel = Channel::from_shared(coffer.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut kv = KvClient::new(channel).max_decoding_message_size(usize::MAX);
        let all = kv
            .range(RangeRequest {
                key: b"crash/".to_vec(),
                range_end: b"crash0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let revision = all.header.unwrap().revision;
        let on_disk: HashMap<Vec<u8>, (Vec<u8>, i64)> = all
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
            .collect();

        let max_acked = models.iter().map(|m| m.max_rev).max().unwrap_or(1);
        assert!(
            revision >= max_acked,
            "cycle {cycle}: revision {revision} after restart is below acknowledged revision {max_acked}"
        );
        assert!(
            revision >= floor_rev,
            "cycle {cycle}: revision went backwards: {revision} < {floor_rev}"
        );
        floor_rev = revision;

        let mut checked = 0usize;
        let mut inflight_applied = 0usize;
        for (id, model) in models.iter_mut().enumerate() {
            for (key, st) in model.keys.iter_mut() {
                let found = on_disk.get(key).map(|(v, _)| v.clone());
                let name = String::from_utf8_lossy(key).into_owned();
                let matches_acked = st.acked.as_ref().is_some_and(|a| *a == found);
                let never_acked_absent = st.acked.is_none() && found.is_none();
                let matches_inflight = st.inflight.as_ref().is_some_and(|f| *f == found);
                assert!(
                    matches_acked || never_acked_absent || matches_inflight,
                    "cycle {cycle}, worker {id}, key {name}: found {:?}, acknowledged {:?}, in flight {:?}",
                    found.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                    st.acked.as_ref().map(|a| a.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())),
                    st.inflight.as_ref().map(|a| a.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())),
                );
                if matches_acked {
                    if let Some((_, mod_rev)) = on_disk.get(key) {
                        assert!(
                            *mod_rev >= st.acked_rev,
                            "cycle {cycle}, key {name}: mod_revision {mod_rev} < acknowledged {}",
                            st.acked_rev
                        );
                    }
                }
                if !matches_acked && matches_inflight {
                    inflight_applied += 1;
                }
                // What is on disk now is the truth for the next cycle.
                st.acked = Some(found);
                st.inflight = None;
                checked += 1;
            }
            // Txn atomicity: both keys hold the same txn number.
            let a = on_disk.get(format!("crash/w{id}/txn-a").as_bytes());
            let b = on_disk.get(format!("crash/w{id}/txn-b").as_bytes());
            assert_eq!(
                a.map(|x| &x.0),
                b.map(|x| &x.0),
                "cycle {cycle}, worker {id}: a txn was applied halfway"
            );
            if let (Some(a), Some(b)) = (a, b) {
                assert_eq!(a.1, b.1, "one txn, one revision");
            }
        }
        // Nothing unexpected appeared under the prefix.
        for key in on_disk.keys() {
            assert!(
                models.iter().any(|m| m.keys.contains_key(key)),
                "cycle {cycle}: unexpected key {}",
                String::from_utf8_lossy(key)
            );
        }
        eprintln!(
            "cycle {cycle}: {acked_now} acknowledged writes in {load_secs:.2}s before SIGKILL; \
             {checked} keys checked after restart; {inflight_applied} in-flight writes had \
             landed; revision {revision}"
        );
    }
    eprintln!(
        "crash test: {cycles} SIGKILL cycles, {total_acks} acknowledged writes, \
         {:.0} writes/s under load ({WORKERS} concurrent clients)",
        total_acks as f64 / total_secs
    );
    coffer.terminate(Duration::from_secs(10)).unwrap();
}
