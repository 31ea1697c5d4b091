//! The Status poller of `coffer serve`: asks every KMS v2 plugin of a keyspace for its Status
//! as kube-apiserver does (every minute while all are healthy, every 10 s after a failure),
//! so a key_id change makes a new seed and a healthy answer keeps the write window open.
//!
//! `coffer serve` asks the first Status right after building the keyspace; its [`failures`]
//! start the poller (a failure means the next round comes after 10 s) and serving goes on
//! (plugin and server may start in either order): reads of decryptable values work, writes
//! under the plugin wait for its first healthy Status.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use coffer_seal::Keyspace;
use tracing::{info, warn};

/// Poll interval after a failure (kube-apiserver's; `coffer serve` polls a healthy plugin every
/// `--kms-status-interval`, one minute by default, as kube-apiserver does).
pub const FAILED_INTERVAL: Duration = Duration::from_secs(10);

/// The unhealthy KMS providers of `keyspace` as `provider: reason` lines, as its last Status
/// round left them (empty when all are healthy).
pub fn failures(keyspace: &Keyspace) -> Vec<String> {
    keyspace
        .kms_health()
        .into_iter()
        .filter(|h| !h.healthy)
        .map(|h| match h.error {
            Some(e) => format!("{}: {e}", h.provider),
            None => format!("{}: no healthy Status yet", h.provider),
        })
        .collect()
}

/// One round of Status calls. Returns [`failures`] and logs changes against `previous`.
fn probe(keyspace: &Keyspace, previous: &[String]) -> Vec<String> {
    keyspace.refresh_kms();
    let failures = failures(keyspace);
    for f in failures.iter().filter(|f| !previous.contains(f)) {
        warn!(failure = %f, "KMS plugin unhealthy");
    }
    if failures.is_empty() && !previous.is_empty() {
        info!("every KMS plugin answers a healthy Status again");
    }
    failures
}

/// The background poller; stops when dropped or on [`StatusPoller::stop`].
#[derive(Debug)]
pub struct StatusPoller {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusPoller {
    /// Starts polling `keyspace`'s plugins every `healthy` while all are healthy and every
    /// `failed` after a failure; `failures` are those of the first Status round.
    pub fn spawn(
        keyspace: Arc<Keyspace>,
        mut failures: Vec<String>,
        healthy: Duration,
        failed: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kms-status".to_owned())
            .spawn(move || loop {
                let wait = if failures.is_empty() { healthy } else { failed };
                match rx.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => failures = probe(&keyspace, &failures),
                    _ => return,
                }
            })?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops polling and waits for the thread (at most one plugin call's timeout).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StatusPoller {
    fn drop(&mut self) {
        self.halt();
    }
}
