//! `etcdserverpb.Watch`: one bidirectional stream carrying many watchers.
//!
//! Translation only: each request is handed to the store's watch hub ([`coffer_store::watch`])
//! through the stream's [`WatchStream`]; each [`Notice`] the hub queues becomes one
//! `WatchResponse` (or several, when a `fragment=true` watcher's response is too large), after
//! the notices already queued are merged per watcher (`merge.rs`). The
//! periodic progress ticker (`--watch-progress-notify-interval`, up to +10 % jitter per stream)
//! lives here, as do the watcher limits (`--max-watchers-per-stream`, `--max-watchers`: a create
//! beyond them is refused with `etcdserver: too many requests`). A client half-close does not end the stream: events keep flowing until the
//! client cancels the RPC; a receive error ends it with that error. Logs carry ids and counts, never keys or values.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::mvccpb::{event::EventType, Event};
use coffer_proto::watch_create_request::FilterType;
use coffer_proto::{watch_request::RequestUnion, watch_server::Watch, WatchRequest, WatchResponse};
use coffer_store::{Caller, Notice, WatchHub, WatchSpec, WatchStream};
use futures::Stream;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use crate::caller::{caller_of, refused, target};
use crate::errors::ServerError;
use crate::state::Shared;

mod merge;

/// Notices buffered per stream before a synced watcher falls back to history (etcd: 128
/// responses per stream channel).
pub const STREAM_BUFFER: usize = 128;

/// The Watch service.
#[derive(Debug)]
pub struct WatchService {
    hub: Arc<WatchHub>,
    shared: Arc<Shared>,
}

impl WatchService {
    /// A Watch service over the store's hub.
    pub fn new(hub: Arc<WatchHub>, shared: Arc<Shared>) -> Self {
        WatchService { hub, shared }
    }
}

/// The response stream of one `Watch` call.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// A create request as the hub takes it.
fn spec(req: &coffer_proto::WatchCreateRequest) -> WatchSpec {
    WatchSpec {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        start_revision: req.start_revision,
        prev_kv: req.prev_kv,
        no_put: req.filters.contains(&(FilterType::Noput as i32)),
        no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
        progress_notify: req.progress_notify,
        fragment: req.fragment,
    }
}

/// The progress interval with up to +10 % jitter (so streams do not tick together).
fn jittered(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    interval + interval.mul_f64(f64::from(nanos % 1000) / 10_000.0)
}

/// Logs the denial of a watch create the store is about to refuse (it answers the client with
/// a cancelled create; the check here only names the refusal in the log, once).
fn log_refusal(hub: &WatchHub, caller: &Caller, c: &coffer_proto::WatchCreateRequest) {
    let view = hub.auth_view();
    if !view.enabled {
        return;
    }
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    let check = view.check(
        caller,
        key,
        &c.range_end,
        coffer_store::auth::PermType::Read,
    );
    if let Err(e) = check {
        let on = target(&view, key, &c.range_end);
        let _ = refused(caller, "watch", &on, ServerError::from(e));
    }
}

/// Serves one stream's requests. A receive error (a request that does not decode, a broken
/// request side) ends the RPC with that error, as etcd's `recvLoop` does; `failed` carries it
/// to the response stream.
async fn serve_requests(
    mut stream: WatchStream,
    mut inbound: Streaming<WatchRequest>,
    interval: Duration,
    failed: tokio::sync::oneshot::Sender<Status>,
    caller: Caller,
    hub: Arc<WatchHub>,
) {
    let mut ticker = tokio::time::interval(jittered(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut inbound_open = true;
    loop {
        tokio::select! {
            msg = inbound.next(), if inbound_open => match msg {
                Some(Ok(WatchRequest { request_union: Some(req) })) => match req {
                    RequestUnion::CreateRequest(c) => {
                        debug!(key_len = c.key.len(), start = c.start_revision, watch_id = c.watch_id, "watch create");
                        log_refusal(&hub, &caller, &c);
                        stream.create(spec(&c), c.watch_id, &caller).await;
                    }
                    RequestUnion::CancelRequest(c) => stream.cancel(c.watch_id).await,
                    RequestUnion::ProgressRequest(_) => {
                        let sent = stream.request_progress();
                        debug!(sent, "watch progress request");
                    }
                },
                // Unknown request types are ignored.
                Some(Ok(WatchRequest { request_union: None })) => {}
                // Half-close: keep delivering until the client cancels the RPC (etcd does
                // the same).
                None => inbound_open = false,
                Some(Err(status)) => {
                    debug!(code = ?status.code(), "watch stream receive error: ending the RPC");
                    let _ = failed.send(status);
                    break;
                }
            },
            _ = ticker.tick() => stream.progress_tick(),
            () = stream.closed() => break,
        }
    }
    debug!("watch stream closed");
}

/// Turns one notice into the responses the client sees.
fn responses(
    shared: &Shared,
    notice: Notice,
    fragment_limit: usize,
) -> Vec<Result<WatchResponse, Status>> {
    let base = |watch_id: i64, revision: i64| WatchResponse {
        header: Some(shared.header(revision)),
        watch_id,
        ..Default::default()
    };
    let one = match notice {
        Notice::Created { watch_id, revision } => WatchResponse {
            created: true,
            ..base(watch_id, revision)
        },
        Notice::Refused { reason, revision } => WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..base(-1, revision)
        },
        Notice::Progress { watch_id, revision } => base(watch_id, revision),
        Notice::Canceled {
            watch_id,
            compact_revision,
            reason,
            revision,
        } => WatchResponse {
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..base(watch_id, revision)
        },
        Notice::Events {
            watch_id,
            revision,
            events,
            prev_kv,
            fragment,
        } => {
            let events: Vec<Event> = events
                .iter()
                .map(|e| {
                    if prev_kv {
                        Event::clone(e)
                    } else {
                        // Not cloned only to be dropped.
                        Event {
                            r#type: e.r#type,
                            kv: e.kv.clone(),
                            prev_kv: None,
                        }
                    }
                })
                .collect();
            let resp = WatchResponse {
                events,
                ..base(watch_id, revision)
            };
            if fragment && resp.events.len() >= 2 && resp.encoded_len() >= fragment_limit {
                return fragments(resp, fragment_limit)
                    .into_iter()
                    .map(Ok)
                    .collect();
            }
            resp
        }
    };
    vec![Ok(one)]
}

/// Splits a response as etcd's `sendFragments` does: consecutive responses each with as many
/// events as keep its encoded size below `limit` (at least one event each), `fragment=true` on
/// all but the last.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let WatchResponse {
        header,
        watch_id,
        events,
        ..
    } = resp;
    let empty = WatchResponse {
        header,
        watch_id,
        fragment: true,
        ..Default::default()
    };
    let base = empty.encoded_len();
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = base;
    for e in events {
        // Field 11 of WatchResponse: tag, length prefix and the event.
        let len = prost::encoding::message::encoded_len(11, &e);
        if !cur.is_empty() && size + len >= limit {
            out.push(std::mem::take(&mut cur));
            size = base;
        }
        size += len;
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, events)| WatchResponse {
            events,
            fragment: i + 1 < n,
            ..empty.clone()
        })
        .collect()
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    #[instrument(skip_all, name = "watch")]
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller_of(&request, &self.shared, &self.hub.auth_view())?;
        let inbound = request.into_inner();
        let (mut stream, rx) = self.hub.open_stream(STREAM_BUFFER);
        stream.set_limits(
            self.shared.config.max_watchers_per_stream,
            self.shared.config.max_watchers,
        );
        let interval = self
            .shared
            .config
            .watch_progress_notify_interval
            .max(crate::config::MIN_WATCH_PROGRESS_NOTIFY_INTERVAL);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let hub = Arc::clone(&self.hub);
        tokio::spawn(serve_requests(
            stream, inbound, interval, failed_tx, caller, hub,
        ));
        let shared = Arc::clone(&self.shared);
        let limit = shared.config.max_decoding_message_size();
        // Notices already queued are taken together and merged per watcher (merge.rs), so a
        // stream that fell behind catches up in few, larger responses; no waiting for more.
        let out = futures::StreamExt::flat_map(
            futures::StreamExt::ready_chunks(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                merge::BATCH,
            ),
            move |batch| {
                let out: Vec<_> = merge::merge(batch)
                    .into_iter()
                    .flat_map(|n| responses(&shared, n, limit))
                    .collect();
                futures::stream::iter(out)
            },
        );
        let failed = async move {
            match failed_rx.await {
                Ok(status) => status,
                // The request loop ended without an error: only the stop or the client ends it.
                Err(_) => std::future::pending().await,
            }
        };
        let out = crate::state::end_with(out, failed);
        Ok(Response::new(Box::pin(self.shared.until_stopped(out))))
    }
}

/// Whether an event is a creation (a PUT whose create revision is its mod revision).
pub fn is_create(e: &Event) -> bool {
    e.r#type == EventType::Put as i32
        && e.kv
            .as_ref()
            .is_some_and(|kv| kv.create_revision == kv.mod_revision)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use coffer_proto::mvccpb::KeyValue;

    fn ev(key: &str, size: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; size],
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    /// TEST ONLY: stores values as given behind a prefix.
    struct PlainTestSealer;

    impl coffer_store::Sealer for PlainTestSealer {
        fn seal(&self, _key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
            Ok([b"t:".as_slice(), plaintext].concat())
        }
        fn open(&self, _key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
            stored
                .strip_prefix(b"t:")
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "not sealed by the test sealer".into())
        }
    }

    /// The next response, waiting at most 30 s (a generous bound for a loaded machine: the
    /// checks below wait for something that must come, never count what came in a window).
    async fn next_response(inbound: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .expect("no watch response within 30 s")
            .unwrap()
            .expect("watch stream ended")
    }

    /// Periodic progress notifications over real gRPC: only to `progress_notify` watchers,
    /// never to a watcher whose start revision is in the future (etcd #20221), none to a
    /// cancelled watcher, and never more often than the 100 ms minimum interval.
    ///
    /// Deterministic under load: all four watchers share the stream's ticker, so any tick that
    /// reaches `p` would reach `q` and `f` too if they were eligible; the n-th notification
    /// cannot arrive before n intervals after the stream opened (load only delays it); and
    /// after `p`'s cancel response, the witness `w` receiving two more notifications proves
    /// ticks went on (notices keep their order on the stream) while `p` received none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_progress_notifications() {
        use coffer_proto::watch_client::WatchClient;
        use coffer_proto::WatchCancelRequest;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            coffer_store::EmbeddedStore::open(
                dir.path(),
                Arc::new(PlainTestSealer),
                coffer_store::StoreOptions::default(),
            )
            .unwrap(),
        );
        let mut config = crate::ServerConfig::new(1, 2);
        config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
        // Below the minimum: raised to 100 ms.
        config.watch_progress_notify_interval = Duration::from_millis(10);
        let min_interval = crate::config::MIN_WATCH_PROGRESS_NOTIFY_INTERVAL;
        let listeners = crate::bind(&config).await.unwrap();
        let addr = listeners.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve_on(listeners, config, store, async move {
            let _ = stopped.await;
        }));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let create = |key: &str, start: i64, progress_notify: bool| WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(
                coffer_proto::WatchCreateRequest {
                    key: key.into(),
                    start_revision: start,
                    progress_notify,
                    ..Default::default()
                },
            )),
        };
        // Watch ids 0..=3 in this order.
        let (p, q, f, w) = (0, 1, 2, 3);
        tx.send(create("p", 0, true)).await.unwrap();
        tx.send(create("q", 0, false)).await.unwrap();
        tx.send(create("f", 1000, true)).await.unwrap();
        tx.send(create("w", 0, true)).await.unwrap();
        // Before the stream opens: its ticker starts later.
        let opened_before = std::time::Instant::now();
        let mut client = WatchClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut inbound = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let is_progress = |r: &WatchResponse| {
            assert!(
                r.events.is_empty() && !r.canceled && !r.created,
                "not a progress notification: {r:?}"
            );
            assert_eq!(r.header.as_ref().unwrap().revision, 1);
            assert!(
                r.watch_id == p || r.watch_id == w,
                "progress notification to watcher {} (q: no progress_notify, f: start in \
                 the future)",
                r.watch_id
            );
        };

        // Three notifications to `p` (and every create answered).
        let mut created = Vec::new();
        let mut to_p = 0;
        while to_p < 3 || created.len() < 4 {
            let r = next_response(&mut inbound).await;
            if r.created {
                created.push(r.watch_id);
                continue;
            }
            is_progress(&r);
            if r.watch_id == p {
                to_p += 1;
                let elapsed = opened_before.elapsed();
                assert!(
                    elapsed >= min_interval * to_p,
                    "notification {to_p} to p after {elapsed:?}: more often than every \
                     {min_interval:?}"
                );
            }
        }
        assert_eq!(created, [p, q, f, w]);

        // Cancel `p`: nothing more for it, while `w` keeps receiving notifications.
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: p,
            })),
        })
        .await
        .unwrap();
        loop {
            let r = next_response(&mut inbound).await;
            if r.canceled {
                assert_eq!(r.watch_id, p, "{r:?}");
                break;
            }
            is_progress(&r);
        }
        let mut to_w = 0;
        while to_w < 2 {
            let r = next_response(&mut inbound).await;
            is_progress(&r);
            assert_eq!(r.watch_id, w, "progress notification after cancel: {r:?}");
            to_w += 1;
        }
        drop(tx);
        drop(inbound);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn fragments_split_keep_every_event_in_order() {
        let events: Vec<Event> = (0..10).map(|i| ev(&format!("k{i}"), 1000)).collect();
        let resp = WatchResponse {
            watch_id: 3,
            events: events.clone(),
            ..Default::default()
        };
        let parts = fragments(resp, 2500);
        assert!(parts.len() >= 4, "{}", parts.len());
        let flat: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(flat, events);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < parts.len());
            assert_eq!(p.watch_id, 3);
            assert!(!p.events.is_empty());
        }
        assert!(is_create(&events[0]));
    }
}
