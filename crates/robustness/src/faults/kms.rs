//! The `kms` fault: Coffer seals every key under a KMS v2 provider (a `*.*` rule, so no local
//! default key) whose plugin is a real `coffer kms-plugin` process (key-file backend) on a unix
//! socket. At random moments the plugin is SIGKILLed, left down for 0.3–5 s (sometimes past
//! the server's write window), and started again. Under traffic:
//! - every request is whole or not at all (the linearizability checker): a write refused
//!   because the plugin is unavailable is `Unavailable` naming the provider, and is checked as
//!   not applied;
//! - reads go on while the plugin is down: a probe reads every key (their seeds are cached);
//! - writes come back once the plugin answers again (the traffic's acknowledged writes grow
//!   within 10 s).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{blocking, Injector, Server};
use crate::Error;

/// How often Coffer asks the plugin for its Status while healthy (`--kms-status-interval`).
pub const STATUS_INTERVAL: &str = "300ms";
/// How long writes go on after the last healthy Status (`--kms-write-window`).
pub const WRITE_WINDOW: &str = "2s";

fn fail(reason: String) -> Error {
    Error::Fault {
        fault: "kms",
        reason,
    }
}

/// The plugin process, its key file, socket and the EncryptionConfiguration that names it.
pub struct KmsPlugin {
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
    /// The EncryptionConfiguration (`*.*` → kms v2 at the plugin's socket).
    pub config: PathBuf,
}

impl KmsPlugin {
    /// Writes a fresh key file and the config, and starts the plugin.
    pub fn start(binary: &Path) -> Result<KmsPlugin, Error> {
        let dir = tempfile::Builder::new()
            .prefix("coffer-robustness-kms")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let key_file = dir.path().join("kek.key");
        coffer_seal::DefaultKey::load_or_create(&key_file)
            .map_err(|e| fail(format!("cannot write the key file: {e}")))?;
        let config = dir.path().join("encryption.yaml");
        fs::write(
            &config,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n\
                 resources:\n  - resources: [\"*.*\"]\n    providers:\n      - kms:\n          \
                 apiVersion: v2\n          name: robustness\n          endpoint: unix://{}\n          \
                 timeout: 1s\n",
                dir.path().join("kms.sock").display()
            ),
        )
        .map_err(|e| fail(format!("cannot write the config: {e}")))?;
        let mut plugin = KmsPlugin {
            dir,
            binary: binary.to_path_buf(),
            child: None,
            config,
        };
        plugin.restart()?;
        Ok(plugin)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("kms.sock")
    }

    /// SIGKILL (and reap) the plugin.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the plugin and waits until its socket accepts connections.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("plugin.log"))
            .map_err(|e| fail(format!("cannot open the plugin log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| fail(format!("cannot open the plugin log: {e}")))?;
        let child = Command::new(&self.binary)
            .arg("kms-plugin")
            .arg("--listen")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--key-file")
            .arg(self.dir.path().join("kek.key"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let log = fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default();
        Err(fail(format!(
            "coffer kms-plugin did not listen on {} within 5 s; its log:\n{log}",
            self.socket().display()
        )))
    }
}

impl Drop for KmsPlugin {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    fn kms_plugin(&mut self) -> Result<&mut KmsPlugin, Error> {
        self.kms.as_mut().ok_or_else(|| {
            fail("the server was not started with a KMS plugin (Coffer only)".into())
        })
    }
}

impl Injector {
    /// Kills the plugin, probes reads while it is down, restarts it, probes that writes work.
    pub(super) async fn kms_outage(&mut self) -> Result<(), Error> {
        blocking(&self.server, |s| s.kms_plugin().map(KmsPlugin::kill)).await??;
        self.stats.kms_outages += 1;
        let down = Duration::from_millis(300 + self.rng.below(4700));
        tracing::info!(?down, "KMS plugin killed");
        // Reads go on: every key opens (its seed is cached) or does not exist.
        tokio::time::sleep(down / 2).await;
        let mut refused = Vec::new();
        for (key, answer) in self.probe_keys(true).await {
            match answer {
                Some(Ok(true)) => self.stats.kms_reads_during_outage += 1,
                Some(Ok(false)) => {}
                Some(Err(status)) => refused.push(format!("{key}: {}", status.message())),
                None => refused.push(format!("{key}: timed out")),
            }
        }
        if !refused.is_empty() {
            self.violation(
                "kms-read",
                format!(
                    "reads failed while the KMS plugin was down (cached seeds must keep them \
                     working): {}",
                    refused.join("; ")
                ),
            );
        }
        tokio::time::sleep(down - down / 2).await;
        blocking(&self.server, |s| {
            s.kms_plugin().and_then(KmsPlugin::restart)
        })
        .await??;
        tracing::info!("KMS plugin restarted");
        self.kms_writes_resume().await
    }

    /// Writes work again within a few Status intervals of the plugin's return: the traffic's
    /// count of acknowledged writes grows.
    async fn kms_writes_resume(&mut self) -> Result<(), Error> {
        let before = self.shared.counters.writes_ok.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.shared.counters.writes_ok.load(Ordering::SeqCst) > before {
                return Ok(());
            }
        }
        self.violation(
            "kms-recovery",
            "no write succeeded within 10 s of the KMS plugin's return".to_owned(),
        );
        Ok(())
    }
}
