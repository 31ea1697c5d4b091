//! One gRPC `Watch` stream for tests: open it with its first request (etcd sends the response
//! headers only once the first message arrived), send creates, cancels and progress requests,
//! and receive responses with a timeout.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coffer_conformance::HarnessError> {
//! use coffer_conformance::watch::{create_request, WatchStream};
//! use std::time::Duration;
//!
//! let mut w = WatchStream::open("http://127.0.0.1:2379", create_request(b"/a/", b"/a0")).await?;
//! let created = w.next(Duration::from_secs(5)).await?; // Some(response) or None on timeout
//! w.request_progress().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use coffer_proto::watch_client::WatchClient;
use coffer_proto::watch_request::RequestUnion;
use coffer_proto::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::HarnessError;

/// How many requests may wait to be sent on one stream.
const REQUEST_QUEUE: usize = 1024;

/// The sending half of a [`WatchStream`], usable from another task.
#[derive(Debug, Clone)]
pub struct WatchSender {
    tx: mpsc::Sender<WatchRequest>,
    endpoint: String,
}

impl WatchSender {
    /// Sends one request.
    pub async fn send(&self, r: RequestUnion) -> Result<(), HarnessError> {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .map_err(|_| HarnessError::Watch {
                endpoint: self.endpoint.clone(),
                message: "the stream's request side is closed".into(),
            })
    }

    /// Sends a `WatchCreateRequest`.
    pub async fn create(&self, c: WatchCreateRequest) -> Result<(), HarnessError> {
        self.send(RequestUnion::CreateRequest(c)).await
    }

    /// Sends a `WatchCancelRequest`.
    pub async fn cancel(&self, watch_id: i64) -> Result<(), HarnessError> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    /// Sends a `WatchProgressRequest` (RequestProgress).
    pub async fn request_progress(&self) -> Result<(), HarnessError> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }
}

/// A bidirectional `Watch` call.
#[derive(Debug)]
pub struct WatchStream {
    sender: WatchSender,
    rx: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Connects to `endpoint` and opens a stream whose first request is `first`.
    pub async fn open(endpoint: &str, first: RequestUnion) -> Result<Self, HarnessError> {
        let ch = crate::client::connect(endpoint).await?;
        Self::open_on(ch, endpoint, first).await
    }

    /// Opens a stream on an existing channel (several streams may share one connection, as
    /// clientv3's do); `endpoint` is only used in messages.
    pub async fn open_on(
        channel: Channel,
        endpoint: &str,
        first: RequestUnion,
    ) -> Result<Self, HarnessError> {
        let (tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
        let sender = WatchSender {
            tx,
            endpoint: endpoint.to_string(),
        };
        sender.send(first).await?;
        let rx = WatchClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| HarnessError::Watch {
                endpoint: endpoint.to_string(),
                message: format!("open failed: {s}"),
            })?
            .into_inner();
        Ok(WatchStream { sender, rx })
    }

    /// A handle for sending on this stream from elsewhere.
    pub fn sender(&self) -> WatchSender {
        self.sender.clone()
    }

    /// Splits into the sending handle and the response stream (for a receiver task).
    pub fn split(self) -> (WatchSender, Streaming<WatchResponse>) {
        (self.sender, self.rx)
    }

    /// Sends one request.
    pub async fn send(&self, r: RequestUnion) -> Result<(), HarnessError> {
        self.sender.send(r).await
    }

    /// Sends a `WatchCreateRequest`.
    pub async fn create(&self, c: WatchCreateRequest) -> Result<(), HarnessError> {
        self.sender.create(c).await
    }

    /// Sends a `WatchCancelRequest`.
    pub async fn cancel(&self, watch_id: i64) -> Result<(), HarnessError> {
        self.sender.cancel(watch_id).await
    }

    /// Sends a `WatchProgressRequest`.
    pub async fn request_progress(&self) -> Result<(), HarnessError> {
        self.sender.request_progress().await
    }

    /// The next response, or `None` if nothing arrived within `timeout`. An ended or failed
    /// stream is an error.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<WatchResponse>, HarnessError> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(r))) => Ok(Some(r)),
            Ok(Ok(None)) => Err(HarnessError::Watch {
                endpoint: self.sender.endpoint.clone(),
                message: "the server ended the stream".into(),
            }),
            Ok(Err(s)) => Err(HarnessError::Watch {
                endpoint: self.sender.endpoint.clone(),
                message: format!("stream failed: {s}"),
            }),
        }
    }
}

/// A create request for `[key, range_end)` (empty `range_end` = one key) from the current
/// revision, every option off.
pub fn create_request(key: &[u8], range_end: &[u8]) -> RequestUnion {
    RequestUnion::CreateRequest(WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    })
}

/// clientv3's test for a progress notification (`WatchResponse.IsProgressNotify`): no events,
/// not created, not canceled, no compact revision, and a header revision.
pub fn is_progress_notification(r: &WatchResponse) -> bool {
    r.events.is_empty()
        && !r.created
        && !r.canceled
        && r.compact_revision == 0
        && r.header.as_ref().is_some_and(|h| h.revision != 0)
}
