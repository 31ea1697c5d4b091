//! `etcdserverpb.Watch`: one bidirectional stream carrying many watchers.
//!
//! Translation only: each request is handed to the store's watch hub ([`coffer_store::watch`])
//! through the stream's [`WatchStream`]; each [`Notice`] the hub queues becomes one
//! `WatchResponse` (or several, when a `fragment=true` watcher's response is too large). The
//! periodic progress ticker (`--watch-progress-notify-interval`, up to +10 % jitter per stream)
//! lives here. A client half-close does not end the stream: events keep flowing until the
//! client cancels the RPC. Logs carry ids and counts, never keys or values.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::mvccpb::{event::EventType, Event};
use coffer_proto::watch_create_request::FilterType;
use coffer_proto::{watch_request::RequestUnion, watch_server::Watch, WatchRequest, WatchResponse};
use coffer_store::{Notice, WatchHub, WatchSpec, WatchStream};
use futures::Stream;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use crate::state::Shared;

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

async fn serve_requests(
    mut stream: WatchStream,
    mut inbound: Streaming<WatchRequest>,
    interval: Duration,
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
                        stream.create(spec(&c), c.watch_id).await;
                    }
                    RequestUnion::CancelRequest(c) => stream.cancel(c.watch_id).await,
                    RequestUnion::ProgressRequest(_) => {
                        let sent = stream.request_progress();
                        debug!(sent, "watch progress request");
                    }
                },
                // Unknown request types are ignored.
                Some(Ok(WatchRequest { request_union: None })) => {}
                // Half-close or a broken request side: keep delivering until the client
                // cancels the RPC (etcd does the same).
                Some(Err(_)) | None => inbound_open = false,
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
                    let mut e = Event::clone(e);
                    if !prev_kv {
                        e.prev_kv = None;
                    }
                    e
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

/// Splits a response into consecutive ones of as many events as fit (at least one each),
/// `fragment=true` on all but the last.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let WatchResponse {
        header,
        watch_id,
        events,
        ..
    } = resp;
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = 0usize;
    for e in events {
        let len = e.encoded_len() + 8;
        if !cur.is_empty() && size + len >= limit {
            out.push(std::mem::take(&mut cur));
            size = 0;
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
            header,
            watch_id,
            events,
            fragment: i + 1 < n,
            ..Default::default()
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
        let inbound = request.into_inner();
        let (stream, rx) = self.hub.open_stream(STREAM_BUFFER);
        let interval = self
            .shared
            .config
            .watch_progress_notify_interval
            .max(crate::config::MIN_WATCH_PROGRESS_NOTIFY_INTERVAL);
        tokio::spawn(serve_requests(stream, inbound, interval));
        let shared = Arc::clone(&self.shared);
        let limit = shared.config.max_decoding_message_size();
        let out = futures::StreamExt::flat_map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            move |n| futures::stream::iter(responses(&shared, n, limit)),
        );
        Ok(Response::new(Box::pin(out)))
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
