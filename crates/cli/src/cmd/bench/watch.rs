//! `coffer bench watch`: event delivery to many watchers, with etcd's flags.
//!
//! `--streams` Watch streams (stream s on connection s mod `--conns`) each create
//! `--watch-per-stream` watchers; watcher j watches key j mod `--watched-key-total` of the
//! watched keys (key i is `varint(i mod --key-space-size)` with `--sequential-keys`, else a
//! random key of the key space, `--key-size` bytes, as etcd's tool builds them). Once every
//! watcher is created, `--clients` putters send `--put-total` puts (put i to watched key
//! i mod `--watched-key-total`, at most `--put-rate` per second).
//!
//! Each put's value carries its index and the instant just before it was sent (nanoseconds
//! since the start of the run, in this process), so a watcher that receives the event knows
//! exactly which put it is and how long delivery took. Reported: latency percentiles over
//! every (put, watcher) delivery, events delivered per second (from the first put to the last
//! event), and per watcher the events missed, duplicated or unexpected. Any of those, or a
//! failed put, makes the run fail (exit status 1).

use super::Conn;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_proto::kv_client::KvClient;
use coffer_proto::mvccpb::event::EventType;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::{
    watch_request::RequestUnion, PutRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio::sync::{mpsc, oneshot, watch as signal};

use super::{
    count_errors, dial_all, parse_duration, spawn_progress, stop_progress, varint_key, Args,
    Report, XorShift,
};

/// Bytes at the start of every value: put index and send instant, both little-endian u64.
const STAMP_LEN: usize = 16;

/// Most memory the exactly-once bookkeeping (one bit per watcher and put) may take.
const MAX_BITSET_BYTES: u64 = 1 << 30;

/// Flags of `bench watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Number of Watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Number of watched keys (watcher j watches key j mod this).
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Number of puts to the watched keys.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Puts per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes (at least 16: the put's index and send instant).
    #[arg(long, default_value_t = 16)]
    pub val_size: usize,
    /// Number of distinct keys the watched keys are drawn from.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Watched key i is i mod key-space-size instead of a random one.
    #[arg(long)]
    pub sequential_keys: bool,
    /// How long to wait for missing events after the last put was acknowledged.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// What every task needs to know about the run.
struct Plan {
    /// The watched keys (`--watched-key-total` of them, possibly repeated).
    keys: Vec<Vec<u8>>,
    /// For each watched key, the index of its first occurrence in `keys` (its identity).
    key_id: Vec<usize>,
    /// Per key identity, how many puts go to it.
    expected_per_key: Vec<u64>,
    put_total: u64,
    watch_per_stream: usize,
    /// Start of the run; send instants are nanoseconds since it.
    epoch: Instant,
}

impl Plan {
    fn new(w: &WatchArgs, epoch: Instant) -> Plan {
        let mut rng = XorShift::seeded(11);
        let keys: Vec<Vec<u8>> = (0..w.watched_key_total as u64)
            .map(|i| {
                let n = if w.sequential_keys {
                    i % w.key_space_size
                } else {
                    rng.next() % w.key_space_size
                };
                varint_key(n, w.key_size)
            })
            .collect();
        let key_id: Vec<usize> = keys
            .iter()
            .map(|k| keys.iter().position(|o| o == k).unwrap_or(0))
            .collect();
        let mut expected_per_key = vec![0u64; keys.len()];
        let k = keys.len() as u64;
        for (slot, id) in key_id.iter().enumerate() {
            // Puts i with i mod k == slot: ceil((put_total - slot) / k).
            let slot = slot as u64;
            if w.put_total > slot {
                expected_per_key[*id] += (w.put_total - slot).div_ceil(k);
            }
        }
        Plan {
            keys,
            key_id,
            expected_per_key,
            put_total: w.put_total,
            watch_per_stream: w.watch_per_stream,
            epoch,
        }
    }

    /// Key slot of watcher `j` (global index).
    fn watcher_slot(&self, j: usize) -> usize {
        j % self.keys.len()
    }

    /// Key identity of put `i`.
    fn put_key_id(&self, i: u64) -> usize {
        self.key_id[(i % self.keys.len() as u64) as usize]
    }

    /// The value of put `i`, sent at `sent` nanoseconds after the epoch.
    fn value(i: u64, sent: u64, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size.max(STAMP_LEN)];
        v[..8].copy_from_slice(&i.to_le_bytes());
        v[8..16].copy_from_slice(&sent.to_le_bytes());
        v
    }

    /// The put index and send instant in a value, if it is one of ours.
    fn stamp(value: &[u8]) -> Option<(u64, u64)> {
        let i = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
        let sent = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
        Some((i, sent))
    }
}

/// One watcher's bookkeeping on the client side.
struct WatcherState {
    slot: usize,
    key_id: usize,
    /// One bit per put index.
    seen: Vec<u64>,
    distinct: u64,
}

/// What one stream's receiver found.
#[derive(Default)]
struct StreamResult {
    latencies: Vec<Duration>,
    /// Responses that carried events.
    responses: u64,
    distinct: u64,
    missed: u64,
    duplicated: u64,
    unexpected: u64,
    last_arrival: Option<Instant>,
    errors: Vec<String>,
}

/// Checks the flags.
fn validate(w: &WatchArgs) -> anyhow::Result<()> {
    if w.streams == 0 || w.watch_per_stream == 0 {
        bail!("--streams and --watch-per-stream must be at least 1");
    }
    if w.watched_key_total == 0 || w.key_space_size == 0 {
        bail!("--watched-key-total and --key-space-size must be at least 1");
    }
    if w.key_size == 0 {
        bail!("--key-size must be at least 1");
    }
    if w.val_size < STAMP_LEN {
        bail!(
            "--val-size {} is too small: values carry the put's index and send time ({STAMP_LEN} bytes)",
            w.val_size
        );
    }
    let watchers = (w.streams as u64).saturating_mul(w.watch_per_stream as u64);
    let bytes = watchers.saturating_mul(w.put_total.div_ceil(64).saturating_mul(8));
    if bytes > MAX_BITSET_BYTES {
        bail!(
            "{watchers} watchers × {} puts need {bytes} bytes of bookkeeping (limit {MAX_BITSET_BYTES}); use fewer watchers or puts",
            w.put_total
        );
    }
    Ok(())
}

/// Runs the workload.
pub(super) async fn drive(args: &Args, w: &WatchArgs) -> anyhow::Result<Report> {
    validate(w)?;
    let plan = Arc::new(Plan::new(w, Instant::now()));
    let channels = dial_all(args).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = signal::channel(false);

    // Watch phase: every stream creates its watchers and reports when all are created.
    let create_start = Instant::now();
    let mut streams = Vec::with_capacity(w.streams);
    let mut ready = Vec::with_capacity(w.streams);
    for s in 0..w.streams {
        let (ready_tx, ready_rx) = oneshot::channel();
        streams.push(tokio::spawn(stream_task(
            s,
            WatchClient::new(channels[s % channels.len()].clone()),
            Arc::clone(&plan),
            Arc::clone(&delivered),
            stop_rx.clone(),
            ready_tx,
        )));
        ready.push(ready_rx);
    }
    for r in ready {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                bail!("creating watchers failed: {e}");
            }
            Err(_) => {
                let _ = stop_tx.send(true);
                bail!("a watch stream task ended before its watchers were created");
            }
        }
    }
    let create_secs = create_start.elapsed().as_secs_f64();

    let watchers = w.streams * w.watch_per_stream;
    let expected: u64 = (0..watchers)
        .map(|j| plan.expected_per_key[plan.key_id[plan.watcher_slot(j)]])
        .sum();

    // Put phase.
    let progress = spawn_progress(Arc::clone(&delivered), expected, "events");
    let next = Arc::new(AtomicU64::new(0));
    let put_start = Instant::now();
    let mut putters = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        putters.push(tokio::spawn(put_loop(
            KvClient::new(channels[c % channels.len()].clone()),
            Arc::clone(&plan),
            Arc::clone(&next),
            w.put_rate,
            w.val_size,
            put_start,
        )));
    }
    let mut errors = Vec::new();
    let mut puts_ok = 0u64;
    for p in putters {
        let (ok, errs) = p.await.context("a putter task failed")?;
        puts_ok += ok;
        count_errors(&mut errors, errs);
    }
    let puts_done = Instant::now();
    let put_secs = (puts_done - put_start).as_secs_f64();

    // Drain: wait until every expected event arrived or the drain timeout passed.
    while delivered.load(Ordering::Acquire) < expected && puts_done.elapsed() < w.drain_timeout {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(true);
    stop_progress(progress);

    let mut total = StreamResult::default();
    for s in streams {
        let r = s.await.context("a watch stream task failed")?;
        total.latencies.extend(r.latencies);
        total.responses += r.responses;
        total.distinct += r.distinct;
        total.missed += r.missed;
        total.duplicated += r.duplicated;
        total.unexpected += r.unexpected;
        total.last_arrival = total.last_arrival.max(r.last_arrival);
        count_errors(&mut errors, r.errors);
    }
    let elapsed = match total.last_arrival {
        Some(t) if t > put_start => t - put_start,
        _ => puts_done - put_start,
    };
    let events_per_sec = if elapsed.as_secs_f64() > 0.0 {
        total.latencies.len() as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let distinct_keys = plan
        .key_id
        .iter()
        .enumerate()
        .filter(|(i, id)| i == *id)
        .count();
    let failed = total.missed > 0
        || total.duplicated > 0
        || total.unexpected > 0
        || !errors.is_empty()
        || (expected > 0 && total.latencies.is_empty());
    let extra = vec![
        ("streams", w.streams.into()),
        ("watchers", watchers.into()),
        ("watched_keys", distinct_keys.into()),
        ("put_rate", w.put_rate.into()),
        ("puts", puts_ok.into()),
        ("put_secs", round3(put_secs).into()),
        ("watch_create_secs", round3(create_secs).into()),
        ("events_expected", expected.into()),
        ("events_delivered", total.distinct.into()),
        ("event_responses", total.responses.into()),
        ("missed", total.missed.into()),
        ("duplicated", total.duplicated.into()),
        ("unexpected", total.unexpected.into()),
        (
            "events_per_sec",
            ((events_per_sec * 10.0).round() / 10.0).into(),
        ),
    ];
    Ok(Report {
        latencies: total.latencies,
        errors,
        elapsed,
        unit: "events",
        extra,
        failed,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One putter: takes put indexes from `next` until `put_total`, stamps and sends them.
async fn put_loop(
    mut kv: KvClient<Conn>,
    plan: Arc<Plan>,
    next: Arc<AtomicU64>,
    rate: u64,
    val_size: usize,
    start: Instant,
) -> (u64, Vec<String>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.put_total {
            break;
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let key = plan.keys[(i % plan.keys.len() as u64) as usize].clone();
        let sent = plan.epoch.elapsed().as_nanos() as u64;
        let req = PutRequest {
            key,
            value: Plan::value(i, sent, val_size),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(_) => ok += 1,
            Err(s) => errors.push(format!("put: {:?}: {}", s.code(), s.message())),
        }
    }
    (ok, errors)
}

/// One Watch stream: creates its watchers, reports readiness, then records every event until
/// told to stop.
async fn stream_task(
    s: usize,
    mut client: WatchClient<Conn>,
    plan: Arc<Plan>,
    delivered: Arc<AtomicU64>,
    mut stop: signal::Receiver<bool>,
    ready: oneshot::Sender<Result<(), String>>,
) -> StreamResult {
    let n = plan.watch_per_stream;
    let words = plan.put_total.div_ceil(64) as usize;
    let mut watchers: Vec<WatcherState> = (0..n)
        .map(|k| {
            let slot = plan.watcher_slot(s * n + k);
            WatcherState {
                slot,
                key_id: plan.key_id[slot],
                seen: vec![0; words],
                distinct: 0,
            }
        })
        .collect();
    // Create requests are queued before the call is made: a server may send the response
    // headers only with its first message.
    let (tx, mut rx) = mpsc::channel::<WatchRequest>(n + 1);
    for w in &watchers {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: plan.keys[w.slot].clone(),
                ..Default::default()
            })),
        };
        if tx.try_send(create).is_err() {
            let _ = ready.send(Err("internal: request queue full".into()));
            return StreamResult::default();
        }
    }
    let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut inbound = match client.watch(requests).await {
        Ok(r) => r.into_inner(),
        Err(st) => {
            let _ = ready.send(Err(format!(
                "stream {s}: {:?}: {}",
                st.code(),
                st.message()
            )));
            return StreamResult::default();
        }
    };
    // Created responses come in the order of the create requests.
    let mut ids: HashMap<i64, usize> = HashMap::with_capacity(n);
    while ids.len() < n {
        let failure = match inbound.message().await {
            Ok(Some(r)) if r.created && !r.canceled && r.watch_id >= 0 => {
                ids.insert(r.watch_id, ids.len());
                continue;
            }
            Ok(Some(r)) if r.created => {
                format!("stream {s}: watch create refused: {:?}", r.cancel_reason)
            }
            Ok(Some(_)) => continue,
            Ok(None) => format!("stream {s}: the server ended the stream"),
            Err(st) => format!("stream {s}: {:?}: {}", st.code(), st.message()),
        };
        let _ = ready.send(Err(failure));
        return StreamResult::default();
    }
    if ready.send(Ok(())).is_err() {
        return StreamResult::default();
    }

    let mut result = StreamResult::default();
    let expected: u64 = watchers
        .iter()
        .map(|w| plan.expected_per_key[w.key_id])
        .sum();
    result.latencies.reserve(expected as usize);
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = stop.changed() => break,
        };
        match msg {
            Ok(Some(resp)) => {
                let arrival = Instant::now();
                let new = record(&plan, &ids, &mut watchers, &mut result, resp, arrival);
                if new > 0 {
                    result.last_arrival = Some(arrival);
                    delivered.fetch_add(new, Ordering::Release);
                }
            }
            Ok(None) => {
                result
                    .errors
                    .push(format!("stream {s}: the server ended the stream"));
                break;
            }
            Err(st) => {
                result
                    .errors
                    .push(format!("stream {s}: {:?}: {}", st.code(), st.message()));
                break;
            }
        }
    }
    drop(tx);
    for w in &watchers {
        result.distinct += w.distinct;
        result.missed += plan.expected_per_key[w.key_id].saturating_sub(w.distinct);
    }
    result
}

/// Records one response; returns how many new (first-time, expected) events it carried.
fn record(
    plan: &Plan,
    ids: &HashMap<i64, usize>,
    watchers: &mut [WatcherState],
    result: &mut StreamResult,
    resp: WatchResponse,
    arrival: Instant,
) -> u64 {
    if resp.canceled {
        result.errors.push(format!(
            "watch {} canceled by the server (compact revision {}, reason {:?})",
            resp.watch_id, resp.compact_revision, resp.cancel_reason
        ));
        return 0;
    }
    if resp.events.is_empty() {
        // Progress notification.
        return 0;
    }
    result.responses += 1;
    let Some(w) = ids.get(&resp.watch_id).and_then(|&k| watchers.get_mut(k)) else {
        result.unexpected += resp.events.len() as u64;
        return 0;
    };
    let mut new = 0;
    for ev in resp.events {
        let stamp = ev
            .kv
            .as_ref()
            .filter(|kv| ev.r#type == EventType::Put as i32 && kv.key == plan.keys[w.slot])
            .and_then(|kv| Plan::stamp(&kv.value))
            .filter(|(i, _)| *i < plan.put_total && plan.put_key_id(*i) == w.key_id);
        let Some((i, sent)) = stamp else {
            result.unexpected += 1;
            continue;
        };
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if w.seen[word] & bit != 0 {
            result.duplicated += 1;
            continue;
        }
        w.seen[word] |= bit;
        w.distinct += 1;
        new += 1;
        let sent_at = plan.epoch + Duration::from_nanos(sent);
        result
            .latencies
            .push(arrival.saturating_duration_since(sent_at));
    }
    new
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use coffer_proto::mvccpb::{Event, KeyValue};

    fn args(watched: usize, space: u64, puts: u64, sequential: bool) -> WatchArgs {
        WatchArgs {
            streams: 2,
            watch_per_stream: 3,
            watched_key_total: watched,
            put_total: puts,
            put_rate: 0,
            key_size: 8,
            val_size: 16,
            key_space_size: space,
            sequential_keys: sequential,
            drain_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn expected_counts_follow_key_identity() {
        // 4 watched slots over a key space of 2: slots 0,2 are key 0 and slots 1,3 key 1.
        let p = Plan::new(&args(4, 2, 10, true), Instant::now());
        assert_eq!(p.key_id, vec![0, 1, 0, 1]);
        // Puts 0..10 go to slot i mod 4: key 0 gets i in {0,2,4,6,8}, key 1 the others.
        assert_eq!(p.expected_per_key, vec![5, 5, 0, 0]);
        assert_eq!(p.put_key_id(6), 0);
        assert_eq!(p.put_key_id(7), 1);
        let one = Plan::new(&args(1, 1, 1000, false), Instant::now());
        assert_eq!(one.expected_per_key, vec![1000]);
    }

    #[test]
    fn values_carry_index_and_send_time() {
        let v = Plan::value(42, 123_456, 32);
        assert_eq!(v.len(), 32);
        assert_eq!(Plan::stamp(&v), Some((42, 123_456)));
        assert_eq!(Plan::stamp(b"short"), None);
    }

    #[test]
    fn small_values_and_huge_bookkeeping_are_refused() {
        let mut a = args(1, 1, 10, false);
        a.val_size = 8;
        assert!(validate(&a).unwrap_err().to_string().contains("--val-size"));
        let mut b = args(1, 1, 100_000_000, false);
        b.streams = 1000;
        assert!(validate(&b)
            .unwrap_err()
            .to_string()
            .contains("bookkeeping"));
    }

    #[test]
    fn duplicates_and_strangers_are_counted() {
        let p = Plan::new(&args(1, 1, 4, false), Instant::now());
        let mut watchers = vec![WatcherState {
            slot: 0,
            key_id: 0,
            seen: vec![0; 1],
            distinct: 0,
        }];
        let ids = HashMap::from([(7i64, 0usize)]);
        let ev = |key: &[u8], value: Vec<u8>| Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                value,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let key = p.keys[0].clone();
        let resp = WatchResponse {
            watch_id: 7,
            events: vec![
                ev(&key, Plan::value(1, 0, 16)),
                ev(&key, Plan::value(1, 0, 16)),
                ev(&key, Plan::value(9, 0, 16)),
                ev(b"other", Plan::value(2, 0, 16)),
                ev(&key, Plan::value(3, 0, 16)),
            ],
            ..Default::default()
        };
        let mut r = StreamResult::default();
        let new = record(&p, &ids, &mut watchers, &mut r, resp, Instant::now());
        assert_eq!(new, 2);
        assert_eq!((r.duplicated, r.unexpected), (1, 2));
        assert_eq!(r.responses, 1);
        assert_eq!(r.latencies.len(), 2);
        assert_eq!(watchers[0].distinct, 2);
    }
}
