//! The traffic of one run: `clients` KV clients, each sending one request at a time with a
//! deadline, and `watchers` watchers, each holding one watch stream that it re-opens when the
//! stream breaks. Everything is recorded into a [`History`] as it happens ([`Shared`]).
//!
//! Requests come from a seeded [`gen::Generator`] per client; [`wire`] turns them into etcd's
//! gRPC messages and the answers back. The fault injector ([`crate::faults`]) drives the same
//! [`Shared`] state: it closes the gate while the server is down (clients wait instead of piling
//! up uncertain requests), sends its own recorded requests (a compaction right before a crash),
//! and reads the counters that tell it the quota alarm is up.

pub mod gen;
pub mod wire;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coffer_proto::watch_client::WatchClient;
use coffer_proto::watch_request::RequestUnion;
use coffer_proto::{WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::history::{History, Operation, Outcome, Request, Response, WatchCancel, WatchRecord};
use gen::{Generator, Rng, View};
use wire::Clients;

/// Watch clients are numbered from here, apart from KV clients.
pub const WATCH_CLIENT_BASE: u32 = 1000;
/// The fault injector's own requests (compaction before a crash, quota recovery) use this client.
pub const FAULT_CLIENT: u32 = 900;
/// The final read of the run uses this client.
pub const FINAL_CLIENT: u32 = 901;

/// How the traffic is shaped.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Run seed: every client's and watcher's random stream derives from it.
    pub seed: u64,
    /// KV clients.
    pub clients: u32,
    /// Watchers.
    pub watchers: u32,
    /// Keys in the keyspace (small, for contention).
    pub keys: usize,
    /// Deadline of one request; past it the outcome is unknown.
    pub request_timeout: Duration,
    /// Each client waits a random 0..=think_ms between requests.
    pub think_ms: u64,
    /// Values are padded to this many bytes (0: unpadded, a few bytes).
    pub value_bytes: usize,
    /// Whether clients send compactions now and then.
    pub compactions: bool,
    /// Record NOSPACE answers as uncertain (etcd: see [`Clients::with_nospace_uncertain`]).
    pub nospace_uncertain: bool,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            seed: 1,
            clients: 8,
            watchers: 8,
            keys: 10,
            request_timeout: Duration::from_secs(2),
            think_ms: 10,
            value_bytes: 0,
            compactions: true,
            nospace_uncertain: false,
        }
    }
}

/// Counters of a run, read by the fault injector and the report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered.
    pub ok: AtomicU64,
    /// Requests refused with a definite error.
    pub failed: AtomicU64,
    /// Requests whose outcome is unknown.
    pub unknown: AtomicU64,
    /// Writes refused with `database space exceeded`.
    pub nospace: AtomicU64,
    /// Writes (Put, Delete, Txn with a write in the branch taken, revoke) acknowledged.
    pub writes_ok: AtomicU64,
    /// Watch events received.
    pub watch_events: AtomicU64,
}

/// State shared by the clients, the watchers and the fault injector.
#[derive(Debug)]
pub struct Shared {
    start: Instant,
    history: Mutex<History>,
    revision: AtomicI64,
    compacted: AtomicI64,
    leases: Mutex<Vec<i64>>,
    up: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    finish: watch::Sender<i64>,
    /// Counters.
    pub counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Fresh state; the clock of the history starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Shared {
            start: Instant::now(),
            history: Mutex::new(History::default()),
            revision: AtomicI64::new(1),
            compacted: AtomicI64::new(0),
            leases: Mutex::new(Vec::new()),
            up: watch::Sender::new(true),
            stop: watch::Sender::new(false),
            finish: watch::Sender::new(0),
            counters: Counters::default(),
        })
    }

    /// Nanoseconds since the start of the run.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Highest revision seen in any answer.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// Highest compaction revision acknowledged.
    pub fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::SeqCst)
    }

    fn view(&self) -> View {
        View {
            revision: self.revision(),
            compacted: self.compacted(),
            leases: lock(&self.leases).clone(),
        }
    }

    /// Marks the server down (clients wait) or up again.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Tells the KV clients to stop after their current request.
    pub fn stop_clients(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the KV clients were told to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Tells the watchers to finish once they have the events up to `revision`.
    pub fn finish_watchers(&self, revision: i64) {
        self.finish.send_replace(revision.max(1));
    }

    /// Waits until the server is up; false if the clients were told to stop meanwhile.
    async fn wait_up(&self) -> bool {
        let mut up = self.up.subscribe();
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow_and_update() {
                return false;
            }
            if *up.borrow_and_update() {
                return true;
            }
            tokio::select! {
                r = up.changed() => if r.is_err() { return false; },
                r = stop.changed() => if r.is_err() { return false; },
            }
        }
    }

    /// Sends `req` as `client` with deadline `timeout`, records it in the history and learns
    /// from the answer (revision, leases, compaction).
    pub async fn execute(
        &self,
        clients: &mut Clients,
        client: u32,
        req: Request,
        timeout: Duration,
    ) -> Outcome {
        let call = self.now();
        let outcome = match tokio::time::timeout(timeout, clients.execute(&req)).await {
            Ok(o) => o,
            Err(_) => Outcome::Unknown(format!("no answer within {timeout:?}")),
        };
        let ret = match outcome {
            Outcome::Unknown(_) => None,
            _ => Some(self.now()),
        };
        self.learn(&req, &outcome);
        lock(&self.history).operations.push(Operation {
            client,
            call,
            ret,
            request: req,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn see_revision(&self, rev: i64) {
        self.revision.fetch_max(rev, Ordering::SeqCst);
    }

    fn learn(&self, req: &Request, outcome: &Outcome) {
        let c = &self.counters;
        match outcome {
            Outcome::Ok(_) => c.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed(_) => c.failed.fetch_add(1, Ordering::Relaxed),
            Outcome::Unknown(_) => c.unknown.fetch_add(1, Ordering::Relaxed),
        };
        if let Outcome::Failed(msg) | Outcome::Unknown(msg) = outcome {
            if wire::is_nospace(msg) {
                c.nospace.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Request::LeaseRevoke { id } = req {
            lock(&self.leases).retain(|l| l != id);
        }
        let Outcome::Ok(resp) = outcome else {
            return;
        };
        self.see_revision(resp.revision());
        let write = match (req, resp) {
            (Request::Put { .. }, _) | (Request::Delete { .. }, _) => true,
            (
                Request::Txn {
                    success, failure, ..
                },
                Response::Txn { succeeded, .. },
            ) => {
                let ops = if *succeeded { success } else { failure };
                ops.iter()
                    .any(|o| !matches!(o, crate::history::TxnOp::Get { .. }))
            }
            (_, Response::LeaseGrant { id, .. }) => {
                lock(&self.leases).push(*id);
                false
            }
            (Request::Compact { revision }, _) => {
                self.compacted.fetch_max(*revision, Ordering::SeqCst);
                false
            }
            _ => false,
        };
        if write {
            c.writes_ok.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The history recorded so far.
    pub fn history(&self) -> History {
        lock(&self.history).clone()
    }

    fn push_watch(&self, rec: WatchRecord) {
        lock(&self.history).watches.push(rec);
    }
}

/// A channel to `endpoint` that connects on first use and reconnects after a restart; over
/// mutual TLS when the endpoint is an `https://` one the harness registered
/// (`coffer_conformance::tls`).
pub fn channel(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    let ep = Endpoint::from_shared(coffer_conformance::tls::dial_uri(endpoint))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    Ok(coffer_conformance::tls::connect_lazy(endpoint, ep))
}

/// One KV client: sends requests until told to stop.
pub async fn kv_client(shared: Arc<Shared>, cfg: TrafficConfig, client: u32, channel: Channel) {
    let mut gen = Generator::new(cfg.seed, client, cfg.keys)
        .with_value_bytes(cfg.value_bytes)
        .with_compactions(cfg.compactions);
    let mut clients = Clients::new(channel).with_nospace_uncertain(cfg.nospace_uncertain);
    while shared.wait_up().await {
        let req = gen.next(&shared.view());
        let outcome = shared
            .execute(&mut clients, client, req.clone(), cfg.request_timeout)
            .await;
        gen.observe(&req, &outcome);
        let mut pause = gen.think_ms(cfg.think_ms);
        if matches!(outcome, Outcome::Unknown(_)) {
            pause += 50;
        }
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// How a watch stream ended.
enum End {
    /// The stream failed (connection broken, server gone, create not answered in time).
    Broken,
    /// The server cancelled the watch.
    Cancelled,
    /// The watcher closed it after its lifetime.
    Closed,
    /// The run is over and every event up to the final revision arrived (or the stream stayed
    /// quiet long enough after the final read).
    Finished,
}

/// What to watch.
#[derive(Debug, Clone)]
struct Target {
    key: String,
    range_end: Option<String>,
    prev_kv: bool,
    start: i64,
}

/// One watcher: opens watches from random start revisions until the run finishes.
pub async fn watcher(shared: Arc<Shared>, cfg: TrafficConfig, id: u32, channel: Channel) {
    let mut rng = Rng::new(cfg.seed, 0x5741_5443_0000 + u64::from(id));
    let client = WATCH_CLIENT_BASE + id;
    let mut finish = shared.finish.subscribe();
    let mut resume: Option<Target> = None;
    loop {
        if *finish.borrow_and_update() > 0 {
            return;
        }
        // Wait for the server (or the end of the run).
        let mut up = shared.up.subscribe();
        while !*up.borrow_and_update() {
            tokio::select! {
                _ = up.changed() => {}
                _ = finish.changed() => return,
            }
        }
        let target = resume.take().unwrap_or_else(|| {
            let (key, range_end) = if rng.chance(50) {
                (gen::PREFIX.to_string(), Some(gen::PREFIX_END.to_string()))
            } else {
                let n = u64::try_from(cfg.keys).unwrap_or(1);
                (gen::key(usize::try_from(rng.below(n)).unwrap_or(0)), None)
            };
            let start = if rng.chance(10) {
                0
            } else {
                rng.range_i64(shared.compacted().max(1), shared.revision() + 2)
            };
            Target {
                key,
                range_end,
                prev_kv: rng.chance(50),
                start,
            }
        });
        let mut rec = WatchRecord {
            client,
            key: target.key.clone(),
            range_end: target.range_end.clone(),
            start_revision: target.start,
            created_revision: 0,
            prev_kv: target.prev_kv,
            events: Vec::new(),
            progress: Vec::new(),
            cancel: None,
            broken: false,
        };
        let lifetime =
            Duration::from_millis(u64::try_from(rng.range_i64(1500, 8000)).unwrap_or(3000));
        let end = drive(&shared, &channel, &mut rec, lifetime, cfg.request_timeout).await;
        let created = rec.created_revision > 0;
        match end {
            End::Broken => {
                rec.broken = true;
                // Re-open where this one stopped.
                let next = rec
                    .events
                    .last()
                    .map(|e| e.kv.mod_revision + 1)
                    .or((rec.start_revision > 0).then_some(rec.start_revision))
                    .or(created.then_some(rec.created_revision + 1))
                    .unwrap_or(0);
                resume = Some(Target {
                    start: next,
                    ..target
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Closed mid-run by the watcher: events after the last one received are unknown,
            // exactly as for a broken stream.
            End::Closed => rec.broken = true,
            End::Cancelled | End::Finished => {}
        }
        if created {
            shared.push_watch(rec);
        }
        if matches!(end, End::Finished) {
            return;
        }
    }
}

/// Runs one watch until it ends; fills `rec`.
async fn drive(
    shared: &Shared,
    channel: &Channel,
    rec: &mut WatchRecord,
    lifetime: Duration,
    timeout: Duration,
) -> End {
    let (tx, rx) = mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: rec.key.clone().into_bytes(),
            range_end: rec.range_end.clone().unwrap_or_default().into_bytes(),
            start_revision: rec.start_revision,
            prev_kv: rec.prev_kv,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return End::Broken;
    }
    let mut client = WatchClient::new(channel.clone());
    let open = tokio::time::timeout(
        timeout,
        client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let mut stream = match open {
        Ok(Ok(s)) => s.into_inner(),
        _ => return End::Broken,
    };
    let mut finish = shared.finish.subscribe();
    let now = tokio::time::Instant::now();
    let close_at = now + lifetime;
    let created_by = now + timeout;
    // After the final read: the revision every event up to which must arrive, and the time
    // the watcher gives up waiting for quiet streams.
    let mut final_rev = *finish.borrow_and_update();
    let quiet = Duration::from_millis(1500);
    let mut quiet_deadline = (final_rev > 0).then(|| now + quiet);
    loop {
        let last = rec.events.last().map(|e| e.kv.mod_revision).unwrap_or(0);
        if final_rev > 0
            && rec.created_revision > 0
            && (last >= final_rev || rec.start_revision > final_rev)
        {
            return End::Finished;
        }
        let wake = if rec.created_revision == 0 {
            created_by
        } else {
            quiet_deadline.unwrap_or(close_at)
        };
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(r)) => {
                    let revision = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                    shared.see_revision(revision);
                    if r.created {
                        rec.created_revision = revision;
                    }
                    for e in &r.events {
                        rec.events.push(wire::event(e, revision));
                        shared.counters.watch_events.fetch_add(1, Ordering::Relaxed);
                    }
                    if r.canceled {
                        rec.cancel = Some(WatchCancel {
                            compact_revision: r.compact_revision,
                            reason: r.cancel_reason.clone(),
                        });
                        return End::Cancelled;
                    }
                    if !r.created && r.events.is_empty() {
                        rec.progress.push(revision);
                    }
                    if final_rev > 0 {
                        // Still receiving: give quiet streams a little more time.
                        quiet_deadline = Some(tokio::time::Instant::now() + quiet);
                    }
                }
                Ok(None) | Err(_) => return End::Broken,
            },
            _ = tokio::time::sleep_until(wake) => {
                if rec.created_revision == 0 {
                    return End::Broken;
                }
                return if final_rev > 0 { End::Finished } else { End::Closed };
            }
            r = finish.changed(), if final_rev == 0 => {
                if r.is_err() {
                    return End::Broken;
                }
                final_rev = *finish.borrow_and_update();
                quiet_deadline = Some(tokio::time::Instant::now() + quiet);
            }
        }
    }
}
