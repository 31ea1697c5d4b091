//! State the services share: the member's identity for response headers, the limits (with the
//! snapshot semaphore) and the shutdown signal. (Alarms live in the store, which persists them.)

use std::sync::Arc;

use coffer_proto::ResponseHeader;

use crate::config::ServerConfig;

/// The raft term a single member reports (etcd shows 2 on a fresh single member).
pub const RAFT_TERM: u64 = 2;

/// Shared by every service of one server.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the server was started with.
    pub config: ServerConfig,
    /// Set once shutdown begins: long-lived streams (Watch, LeaseKeepAlive) end on it, so a
    /// graceful stop does not wait for clients that would never hang up.
    stopping: tokio::sync::watch::Sender<bool>,
    /// One permit per Maintenance.Snapshot that may run (`max_concurrent_snapshots`).
    pub snapshots: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Wraps a configuration.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Shared {
            snapshots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_snapshots)),
            config,
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Starts shutdown: every stream wrapped by [`Shared::until_stopped`] ends.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// `stream`, ended early once shutdown begins.
    pub fn until_stopped<S: futures::Stream>(
        &self,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> {
        let mut stopping = self.stopping.subscribe();
        futures::StreamExt::take_until(stream, async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopping.wait_for(|s| *s).await;
        })
    }

    /// A header with this member's ids, the raft term and `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.member_id,
            revision,
            raft_term: RAFT_TERM,
        }
    }

    /// Fills the ids and term into a header the store returned (keeping its revision).
    pub fn stamp(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}
