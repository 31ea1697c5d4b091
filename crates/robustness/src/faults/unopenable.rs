//! The `unopenable` fault: Coffer runs with an EncryptionConfiguration sealing Secrets with
//! aesgcm (keys `a`, then `b`); at random moments it is killed and restarted with a config
//! that has only `b`, so values sealed under `a` cannot be opened, and later restarted with
//! both again. Under traffic and `prev_kv` watchers:
//! - every request is whole or not at all (the linearizability checker);
//! - a read of an unopenable key fails, and the error names the key (a probe of every key
//!   after each such restart; the traffic's failed reads are failed reads, not violations);
//! - a delete of such a key succeeds, and watchers get its DELETE event with `prev_kv` holding
//!   the value as stored (`k8s:enc:aesgcm:v1:a:...`): the watch checker accepts sealed bytes
//!   for a `prev_kv` only for events delivered in the recorded windows
//!   (`History::sealed_prev_kv`), every other field exact.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use coffer_proto::kv_client::KvClient;
use coffer_proto::RangeRequest;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::{blocking, Injector, Proc, Server};
use crate::traffic::gen;
use crate::Error;

fn fail(reason: String) -> Error {
    Error::Fault {
        fault: "unopenable",
        reason,
    }
}

/// The two EncryptionConfigurations of a run, and whether the one without `a` is in use.
pub struct Sealing {
    _dir: tempfile::TempDir,
    /// Keys `a` (writes) and `b`.
    pub both: PathBuf,
    /// Key `b` only.
    pub only_b: PathBuf,
    /// The server's revision when it was started with `only_b`, while it runs with it.
    since: Option<i64>,
}

fn config(keys: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  \
         - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n",
    );
    for (name, secret) in keys {
        s.push_str(&format!(
            "            - name: {name}\n              secret: {secret}\n"
        ));
    }
    s
}

impl Sealing {
    /// Writes both configs (fresh random keys) to a private temporary directory.
    pub fn new() -> Result<Sealing, Error> {
        let dir = tempfile::Builder::new()
            .prefix("coffer-sealing-")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let mut secret = || {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            base64::engine::general_purpose::STANDARD.encode(k)
        };
        let (a, b) = (secret(), secret());
        let both = dir.path().join("both.yaml");
        let only_b = dir.path().join("only-b.yaml");
        for (path, text) in [
            (&both, config(&[("a", &a), ("b", &b)])),
            (&only_b, config(&[("b", &b)])),
        ] {
            fs::write(path, text).map_err(|e| Error::Io {
                what: "write",
                path: path.clone(),
                source: e,
            })?;
        }
        Ok(Sealing {
            _dir: dir,
            both,
            only_b,
            since: None,
        })
    }
}

impl Server {
    /// Restarts Coffer with `--encryption-provider-config` set to one of the two configs.
    fn restart_sealed(&mut self, only_b: bool) -> Result<(), Error> {
        let Some(s) = &self.sealing else {
            return Err(fail(
                "the server was not started with an EncryptionConfiguration (Coffer only)".into(),
            ));
        };
        let path = if only_b { &s.only_b } else { &s.both };
        let Proc::Coffer(p) = &mut self.proc else {
            return Err(fail("the unopenable fault runs against Coffer only".into()));
        };
        let mut args = p.args().to_vec();
        if let Some(i) = args
            .iter()
            .position(|a| a == "--encryption-provider-config")
        {
            if let Some(v) = args.get_mut(i + 1) {
                *v = path.display().to_string();
            }
        }
        p.restart_with_args(args)?;
        Ok(())
    }
}

impl Injector {
    /// The server's current revision, from a read of a key nobody writes.
    async fn current_revision(&self) -> Result<i64, Error> {
        let mut kv = KvClient::new(self.channel.clone());
        for _ in 0..20 {
            let r = tokio::time::timeout(
                self.timeout,
                kv.range(RangeRequest {
                    key: format!("{}-probe", gen::PREFIX_END).into_bytes(),
                    ..Default::default()
                }),
            )
            .await;
            if let Ok(Ok(resp)) = r {
                return Ok(resp.get_ref().header.as_ref().map_or(0, |h| h.revision));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(fail(
            "the server did not answer a read after the restart".into(),
        ))
    }

    /// Holds the KV clients and lets their requests in flight finish before a config switch.
    /// A write cut by the restart would be uncertain, and one sealed under the key about to be
    /// removed could never be read back to settle it: its place in the history would be a
    /// guess the watch check cannot hold the server to. (Crashes under traffic are the `kill`
    /// fault's job.)
    async fn quiesce(&self) {
        self.shared.set_up(false);
        tokio::time::sleep(self.timeout + Duration::from_millis(250)).await;
    }

    /// Alternates: restart without key `a` (and probe every key), or with both keys again.
    pub(super) async fn unopenable(&mut self) -> Result<(), Error> {
        let since = blocking(&self.server, |s| s.sealing.as_ref().map(|x| x.since)).await?;
        let Some(since) = since else {
            return Err(fail(
                "the server was not started with an EncryptionConfiguration (Coffer only)".into(),
            ));
        };
        if since.is_some() {
            return self.unopenable_end().await;
        }
        self.quiesce().await;
        blocking(&self.server, |s| s.restart_sealed(true)).await??;
        let from = self.current_revision().await?;
        blocking(&self.server, move |s| {
            if let Some(x) = s.sealing.as_mut() {
                x.since = Some(from);
            }
        })
        .await?;
        self.stats.unopenable_restarts += 1;
        tracing::info!(revision = from, "restarted without key a");
        // Every key either opens or fails with the error that says its value cannot be opened
        // (the key and the reason go to the server log, not to the client).
        let mut unnamed = Vec::new();
        for (key, answer) in self.probe_keys(false).await {
            if let Some(Err(status)) = answer {
                self.stats.unopenable_reads_refused += 1;
                if status.code() != tonic::Code::Internal
                    || !status.message().contains("could not be opened")
                {
                    unnamed.push(format!("{key} ({:?}: {})", status.code(), status.message()));
                }
            }
        }
        if !unnamed.is_empty() {
            self.violation(
                "unopenable-error",
                format!(
                    "reads of unopenable values failed with another error: {}",
                    unnamed.join("; ")
                ),
            );
        }
        self.shared.set_up(true);
        Ok(())
    }

    /// Restarts with both keys if the server runs without `a`; records the window.
    pub(super) async fn unopenable_end(&mut self) -> Result<(), Error> {
        let since = blocking(&self.server, |s| s.sealing.as_ref().and_then(|x| x.since)).await?;
        let Some(from) = since else {
            return Ok(());
        };
        self.quiesce().await;
        blocking(&self.server, |s| s.restart_sealed(false)).await??;
        let to = self.current_revision().await?;
        blocking(&self.server, |s| {
            if let Some(x) = s.sealing.as_mut() {
                x.since = None;
            }
        })
        .await?;
        self.stats.unopenable_windows.push((from, to));
        tracing::info!(from, to, "restarted with both keys");
        self.shared.set_up(true);
        Ok(())
    }
}
