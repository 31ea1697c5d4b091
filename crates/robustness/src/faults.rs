//! The server under test and the faults injected into it.
//!
//! [`Server`] owns the process (Coffer through `CofferProcess`, etcd through `EtcdProcess`, both
//! from `coffer-conformance`) and, for the full-disk fault, a small tmpfs holding its data
//! directory. [`inject`] runs the fault schedule, drawn from the run seed:
//! - `kill`: SIGKILL at a random moment, in one of three places: mid-traffic (a group commit
//!   in flight), right after a compaction was sent, right after a defragment was sent; then a
//!   restart on the same data directory.
//! - `pause`: SIGSTOP for 1–3 s, then SIGCONT.
//! - `quota`: the server runs with a small `--quota-backend-bytes`; whenever writes fail with
//!   `database space exceeded` the injector compacts, defragments, disarms the NOSPACE alarm
//!   and checks that writes succeed again.
//! - `disk`: a ballast file fills the tmpfs until writes fail; the injector checks the server
//!   is alive (or exited saying why), frees the space, restarts if needed, checks writes
//!   succeed again, and crashes the server once more so the checker sees whether anything
//!   acknowledged was lost.
//!
//! - `power`, `corrupt`, `unopenable`, `kms`: see [`power`], [`corrupt`], [`unopenable`],
//!   [`kms`].
//!
//! Scenario checks that are not about the history (writes come back after the alarm is
//! disarmed, the server does not die silently) are returned as [`ScenarioViolation`]s.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coffer_conformance::pki::MutualTls;
use coffer_conformance::{CofferOptions, CofferProcess, EtcdOptions, EtcdProcess, ServerKind};
use coffer_proto::alarm_request::AlarmAction;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::{AlarmRequest, AlarmType, DefragmentRequest};
use serde::Serialize;
use tonic::transport::Channel;

use crate::history::{Outcome, Request};
use crate::traffic::gen::Rng;
use crate::traffic::wire::Clients;
use crate::traffic::{Shared, FAULT_CLIENT};
use crate::Error;

pub mod corrupt;
pub mod kms;
pub mod power;
pub mod unopenable;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// The quota alarm (NOSPACE), raised and disarmed.
    Quota,
    /// A full disk (tmpfs), filled and freed.
    Disk,
    /// SIGKILL and a power cut of the FUSE file system holding the data (and the key file).
    Power,
    /// SIGKILL, one byte of a data file flipped, restart.
    Corrupt,
    /// Restart without the key that sealed some values, later with it again.
    Unopenable,
    /// Every key sealed under a KMS plugin; the plugin SIGKILLed and restarted.
    Kms,
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "quota" => Ok(FaultKind::Quota),
            "disk" => Ok(FaultKind::Disk),
            "power" => Ok(FaultKind::Power),
            "corrupt" => Ok(FaultKind::Corrupt),
            "unopenable" => Ok(FaultKind::Unopenable),
            "kms" => Ok(FaultKind::Kms),
            other => Err(format!(
                "unknown fault {other:?}: expected kill, pause, quota, disk, power, corrupt, \
                 unopenable or kms"
            )),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Quota => "quota",
            FaultKind::Disk => "disk",
            FaultKind::Power => "power",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Unopenable => "unopenable",
            FaultKind::Kms => "kms",
        })
    }
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: Option<i64>,
    /// Put the data directory on a tmpfs of this many MiB (for the full-disk fault).
    pub tmpfs_mib: Option<u64>,
    /// The coffer binary (none: `coffer_conformance::process::coffer_binary`).
    pub coffer_binary: Option<PathBuf>,
    /// Put the data directory (and Coffer's default key file) on the power-loss file system.
    pub power: bool,
    /// Run Coffer with an EncryptionConfiguration of two aesgcm keys (the `unopenable` fault).
    pub sealing: bool,
    /// Run Coffer with every key sealed under a `coffer kms-plugin` process (the `kms` fault).
    pub kms: bool,
    /// Serve `https://` with mutual TLS (these certificates, client certificates required),
    /// across every restart; the harness's clients connect with the client certificate.
    pub tls: Option<MutualTls>,
}

enum Proc {
    Etcd(EtcdProcess),
    Coffer(CofferProcess),
}

/// A tmpfs mounted for the full-disk fault; unmounted on drop.
struct Tmpfs {
    mount_point: PathBuf,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// The server under test.
pub struct Server {
    kind: ServerKind,
    // Field order matters: the process is killed (dropped) before the tmpfs is unmounted.
    proc: Proc,
    tmpfs: Option<Tmpfs>,
    power: Option<power::PowerDisk>,
    sealing: Option<unopenable::Sealing>,
    kms: Option<kms::KmsPlugin>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint())
            .field("tmpfs", &self.tmpfs.as_ref().map(|t| t.mount_point.clone()))
            .finish()
    }
}

impl Server {
    /// Starts `kind` with a fresh data directory (blocking).
    pub fn start(kind: ServerKind, opts: &ServerOptions) -> Result<Server, Error> {
        let mut extra = Vec::new();
        if let Some(q) = opts.quota_backend_bytes {
            extra.push("--quota-backend-bytes".to_string());
            extra.push(q.to_string());
        }
        let power = opts.power.then(power::PowerDisk::mount).transpose()?;
        let sealing = match (opts.sealing, kind) {
            (true, ServerKind::Coffer) => Some(unopenable::Sealing::new()?),
            _ => None,
        };
        let kms = match (opts.kms, kind) {
            (true, ServerKind::Coffer) => {
                let binary = match &opts.coffer_binary {
                    Some(b) => b.clone(),
                    None => coffer_conformance::process::coffer_binary()?,
                };
                extra.extend(
                    [
                        "--kms-status-interval",
                        kms::STATUS_INTERVAL,
                        "--kms-write-window",
                        kms::WRITE_WINDOW,
                    ]
                    .map(String::from),
                );
                Some(kms::KmsPlugin::start(&binary)?)
            }
            _ => None,
        };
        let proc = match kind {
            ServerKind::Etcd => Proc::Etcd(EtcdProcess::start_with(EtcdOptions {
                extra_args: extra,
                tls: opts.tls.clone(),
            })?),
            ServerKind::Coffer => Proc::Coffer(CofferProcess::start(CofferOptions {
                extra_args: extra,
                binary: opts.coffer_binary.clone(),
                default_key_file: power.as_ref().map(power::PowerDisk::key_file),
                encryption_provider_config: sealing
                    .as_ref()
                    .map(|s| s.both.clone())
                    .or_else(|| kms.as_ref().map(|k| k.config.clone())),
                tls: opts.tls.clone(),
                ..Default::default()
            })?),
        };
        let mut server = Server {
            kind,
            proc,
            tmpfs: None,
            power,
            sealing,
            kms,
        };
        if let Some(mib) = opts.tmpfs_mib {
            server.move_to_tmpfs(mib)?;
        }
        if server.power.is_some() {
            server.move_to_power_disk()?;
        }
        Ok(server)
    }

    /// Moves the data directory onto a fresh tmpfs of `mib` MiB: stop, mount, copy, symlink,
    /// restart.
    fn move_to_tmpfs(&mut self, mib: u64) -> Result<(), Error> {
        let fail = |reason: String| Error::Fault {
            fault: "disk",
            reason,
        };
        self.kill();
        let root = self.root_dir().to_path_buf();
        let data = self.data_dir().to_path_buf();
        let mount_point = root.join("disk");
        fs::create_dir_all(&mount_point).map_err(|e| Error::Io {
            what: "create",
            path: mount_point.clone(),
            source: e,
        })?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&mount_point)
            .output()
            .map_err(|e| fail(format!("cannot run mount: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "`mount -t tmpfs -o size={mib}m tmpfs {}` failed ({}): {}; the full-disk \
                 fault needs root (CAP_SYS_ADMIN) to mount a small tmpfs for the data directory",
                mount_point.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.tmpfs = Some(Tmpfs {
            mount_point: mount_point.clone(),
        });
        let moved = mount_point.join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&data)
            .arg(&moved)
            .status()
            .map_err(|e| fail(format!("cannot run cp: {e}")))?;
        if !status.success() {
            return Err(fail(format!(
                "cannot copy {} to the tmpfs {}",
                data.display(),
                moved.display()
            )));
        }
        fs::remove_dir_all(&data).map_err(|e| Error::Io {
            what: "remove",
            path: data.clone(),
            source: e,
        })?;
        std::os::unix::fs::symlink(&moved, &data).map_err(|e| Error::Io {
            what: "symlink the data directory to the tmpfs",
            path: data.clone(),
            source: e,
        })?;
        self.restart()
    }

    /// The ballast file that fills the tmpfs (`None` without one).
    pub fn ballast_path(&self) -> Option<PathBuf> {
        self.tmpfs.as_ref().map(|t| t.mount_point.join("ballast"))
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        match &self.proc {
            Proc::Etcd(p) => p.endpoint(),
            Proc::Coffer(p) => p.endpoint(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        match &mut self.proc {
            Proc::Etcd(p) => p.kill(),
            Proc::Coffer(p) => p.kill(),
        }
    }

    /// Kill if running, start again on the same data directory and ports, wait until ready.
    pub fn restart(&mut self) -> Result<(), Error> {
        match &mut self.proc {
            Proc::Etcd(p) => p.restart()?,
            Proc::Coffer(p) => p.restart()?,
        }
        Ok(())
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        match &self.proc {
            Proc::Etcd(p) => p.pid(),
            Proc::Coffer(p) => p.pid(),
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.proc {
            Proc::Etcd(p) => p.is_running(),
            Proc::Coffer(p) => p.is_running(),
        }
    }

    /// Everything the server printed, across restarts.
    pub fn log(&self) -> String {
        match &self.proc {
            Proc::Etcd(p) => p.log(),
            Proc::Coffer(p) => p.log(),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        match &self.proc {
            Proc::Etcd(p) => p.data_dir(),
            Proc::Coffer(p) => p.data_dir(),
        }
    }

    fn root_dir(&self) -> &Path {
        match &self.proc {
            Proc::Etcd(p) => p.root_dir(),
            Proc::Coffer(p) => p.root_dir(),
        }
    }
}

/// Sends a signal with `kill(1)` (the workspace forbids `unsafe`, so no direct `kill(2)`).
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A scenario check that failed (not a history violation).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioViolation {
    /// Which guarantee: `quota-recovery`, `disk-recovery`, `disk-exit`, `server-died`, `restart`.
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for ScenarioViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What the injector did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultStats {
    /// SIGKILLs followed by a restart.
    pub crashes: u64,
    /// Of which right after a compaction was sent.
    pub crashes_after_compact: u64,
    /// Of which right after a defragment was sent.
    pub crashes_after_defrag: u64,
    /// SIGSTOP/SIGCONT pauses.
    pub pauses: u64,
    /// NOSPACE alarms raised by the traffic and disarmed.
    pub quota_cycles: u64,
    /// Times the disk was filled and freed.
    pub disk_fills: u64,
    /// Writes acknowledged while the disk was full (they must survive the crash that follows).
    pub disk_acked_while_full: u64,
    /// Requests refused or left uncertain while the disk was full.
    pub disk_refused_while_full: u64,
    /// Times the server exited on its own (e.g. on a full disk) and was restarted.
    pub unexpected_exits: u64,
    /// Scenario checks that failed.
    pub violations: Vec<ScenarioViolation>,
    /// Power cuts (each after a SIGKILL).
    pub power_cuts: u64,
    /// Unsynced writes the power cuts dropped.
    pub power_writes_dropped: u64,
    /// Every byte flipped by the `corrupt` fault and what the server did with it.
    pub flips: Vec<corrupt::Flip>,
    /// Restarts without the key that sealed some values.
    pub unopenable_restarts: u64,
    /// Reads refused during those restarts (the probe of every key; each must name its key).
    pub unopenable_reads_refused: u64,
    /// Revision ranges `[from, to]` served without that key (`History::sealed_prev_kv`).
    pub unopenable_windows: Vec<(i64, i64)>,
    /// Times the KMS plugin was killed and restarted.
    pub kms_outages: u64,
    /// Probe reads that returned a stored value while the plugin was down.
    pub kms_reads_during_outage: u64,
}

/// Shared handle on the server for the injector and the run.
pub type ServerHandle = Arc<Mutex<Server>>;

fn lock(s: &ServerHandle) -> MutexGuard<'_, Server> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on the server in a blocking thread.
async fn blocking<T: Send + 'static>(
    server: &ServerHandle,
    f: impl FnOnce(&mut Server) -> T + Send + 'static,
) -> Result<T, Error> {
    let s = Arc::clone(server);
    tokio::task::spawn_blocking(move || f(&mut lock(&s)))
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

/// Restarts the server with the clients held back meanwhile.
async fn restart(server: &ServerHandle, shared: &Shared) -> Result<(), Error> {
    shared.set_up(false);
    let started = std::time::Instant::now();
    let r = blocking(server, |s| s.restart()).await?;
    tracing::info!(took = ?started.elapsed(), ok = r.is_ok(), "server restarted");
    shared.set_up(true);
    r
}

/// The fault injector.
pub struct Injector {
    server: ServerHandle,
    shared: Arc<Shared>,
    rng: Rng,
    faults: Vec<FaultKind>,
    channel: Channel,
    timeout: Duration,
    /// What it did.
    pub stats: FaultStats,
    nospace_seen: u64,
}

impl fmt::Debug for Injector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Injector")
            .field("faults", &self.faults)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Which timed fault comes next: every kind asked for comes once before any repeats (in an
/// order drawn from the seed), so a short run with several kinds cannot miss one by chance;
/// after that, uniformly at random.
#[derive(Debug, Clone)]
struct Schedule {
    kinds: Vec<FaultKind>,
    not_yet: Vec<FaultKind>,
}

impl Schedule {
    fn new(kinds: Vec<FaultKind>) -> Self {
        Schedule {
            not_yet: kinds.clone(),
            kinds,
        }
    }

    fn next(&mut self, rng: &mut Rng) -> Option<FaultKind> {
        let pool = if self.not_yet.is_empty() {
            &self.kinds
        } else {
            &self.not_yet
        };
        let fault = rng.pick(pool).copied()?;
        self.not_yet.retain(|f| *f != fault);
        Some(fault)
    }
}

impl Injector {
    /// An injector of `faults` into `server`, its schedule drawn from `seed`.
    pub fn new(
        server: ServerHandle,
        shared: Arc<Shared>,
        seed: u64,
        faults: &[FaultKind],
        channel: Channel,
        timeout: Duration,
    ) -> Self {
        Injector {
            server,
            shared,
            rng: Rng::new(seed, 0xFA17),
            faults: faults.to_vec(),
            channel,
            timeout,
            stats: FaultStats::default(),
            nospace_seen: 0,
        }
    }

    fn violation(&mut self, kind: &'static str, detail: String) {
        tracing::warn!(kind, %detail, "scenario check failed");
        self.stats
            .violations
            .push(ScenarioViolation { kind, detail });
    }

    /// Injects faults until `until` (a tokio instant), then makes sure the server runs.
    pub async fn run(&mut self, until: tokio::time::Instant) -> Result<(), Error> {
        let timed: Vec<FaultKind> = self
            .faults
            .iter()
            .copied()
            .filter(|f| {
                matches!(
                    f,
                    FaultKind::Kill
                        | FaultKind::Pause
                        | FaultKind::Disk
                        | FaultKind::Power
                        | FaultKind::Corrupt
                        | FaultKind::Unopenable
                        | FaultKind::Kms
                )
            })
            .collect();
        let quota = self.faults.contains(&FaultKind::Quota);
        let mut disk_done = 0u32;
        let mut schedule = Schedule::new(timed);
        let mut next = tokio::time::Instant::now() + self.gap();
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.check_alive().await?;
            if quota {
                self.quota_cycle().await?;
            }
            if tokio::time::Instant::now() < next {
                continue;
            }
            let Some(fault) = schedule.next(&mut self.rng) else {
                continue;
            };
            match fault {
                FaultKind::Kill => self.kill().await?,
                FaultKind::Pause => self.pause().await?,
                // The disk is filled at most twice per run: it takes a few seconds each time.
                FaultKind::Disk if disk_done < 2 => {
                    disk_done += 1;
                    self.full_disk().await?;
                }
                FaultKind::Power => self.power_cut().await?,
                FaultKind::Corrupt => self.corrupt().await?,
                FaultKind::Unopenable => self.unopenable().await?,
                FaultKind::Kms => self.kms_outage().await?,
                _ => {}
            }
            next = tokio::time::Instant::now() + self.gap();
        }
        self.check_alive().await?;
        self.unopenable_end().await?;
        Ok(())
    }

    /// Reads each of the traffic's first 16 keys once, each read cut at the request timeout:
    /// per key, the answer (`Ok(true)` when a stored value was read, `Ok(false)` when the key
    /// does not exist) or the error, `None` when it timed out.
    async fn probe_keys(
        &self,
        serializable: bool,
    ) -> Vec<(String, Option<Result<bool, tonic::Status>>)> {
        let mut kv = coffer_proto::kv_client::KvClient::new(self.channel.clone());
        let mut answers = Vec::with_capacity(16);
        for i in 0..16 {
            let key = crate::traffic::gen::key(i);
            let r = tokio::time::timeout(
                self.timeout,
                kv.range(coffer_proto::RangeRequest {
                    key: key.clone().into_bytes(),
                    serializable,
                    ..Default::default()
                }),
            )
            .await;
            answers.push((
                key,
                r.ok().map(|r| r.map(|a| !a.into_inner().kvs.is_empty())),
            ));
        }
        answers
    }

    /// Time between two faults: 0.5–2 s.
    fn gap(&mut self) -> Duration {
        Duration::from_millis(500 + self.rng.below(1500))
    }

    /// Restarts a server that exited on its own, reporting it.
    async fn check_alive(&mut self) -> Result<(), Error> {
        let running = blocking(&self.server, |s| s.is_running()).await?;
        if running {
            return Ok(());
        }
        self.stats.unexpected_exits += 1;
        let tail = blocking(&self.server, |s| tail(&s.log(), 15)).await?;
        self.violation(
            "server-died",
            format!("the server exited without being killed; last log lines:\n{tail}"),
        );
        restart(&self.server, &self.shared).await
    }

    async fn kill(&mut self) -> Result<(), Error> {
        let variant = self.rng.below(3);
        let delay = Duration::from_millis(self.rng.below(25));
        let mut pending = None;
        match variant {
            1 => {
                // A compaction to a recent revision, recorded, then the crash.
                let back = self.rng.range_i64(0, 5);
                let revision = (self.shared.revision() - back).max(1);
                let shared = Arc::clone(&self.shared);
                let mut clients = Clients::new(self.channel.clone());
                let timeout = self.timeout;
                pending = Some(tokio::spawn(async move {
                    shared
                        .execute(
                            &mut clients,
                            FAULT_CLIENT,
                            Request::Compact { revision },
                            timeout,
                        )
                        .await;
                }));
                self.stats.crashes_after_compact += 1;
            }
            2 => {
                let mut m = MaintenanceClient::new(self.channel.clone());
                let timeout = self.timeout;
                pending = Some(tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, m.defragment(DefragmentRequest {})).await;
                }));
                self.stats.crashes_after_defrag += 1;
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        self.shared.set_up(false);
        blocking(&self.server, |s| s.kill()).await?;
        self.stats.crashes += 1;
        tracing::info!(variant, "server killed");
        if let Some(p) = pending {
            let _ = p.await;
        }
        tokio::time::sleep(Duration::from_millis(100 + self.rng.below(400))).await;
        restart(&self.server, &self.shared).await
    }

    async fn pause(&mut self) -> Result<(), Error> {
        let Some(pid) = blocking(&self.server, |s| s.pid()).await? else {
            return Ok(());
        };
        let hold = Duration::from_millis(1000 + self.rng.below(2000));
        if !signal(pid, "STOP") {
            return Err(Error::Fault {
                fault: "pause",
                reason: format!("`kill -STOP {pid}` failed"),
            });
        }
        tracing::info!(?hold, "server paused");
        tokio::time::sleep(hold).await;
        let resumed = signal(pid, "CONT");
        self.stats.pauses += 1;
        if !resumed {
            return Err(Error::Fault {
                fault: "pause",
                reason: format!("`kill -CONT {pid}` failed"),
            });
        }
        Ok(())
    }

    /// When the traffic hit NOSPACE: compact, defragment, disarm, check writes come back.
    async fn quota_cycle(&mut self) -> Result<(), Error> {
        let seen = self.shared.counters.nospace.load(Ordering::SeqCst);
        if seen == self.nospace_seen {
            return Ok(());
        }
        // Let the traffic see the alarm for a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut clients = Clients::new(self.channel.clone());
        let revision = self.shared.revision();
        let compact = self
            .shared
            .execute(
                &mut clients,
                FAULT_CLIENT,
                Request::Compact { revision },
                self.timeout,
            )
            .await;
        let mut m = MaintenanceClient::new(self.channel.clone());
        let long = self.timeout * 5;
        let defrag = tokio::time::timeout(long, m.defragment(DefragmentRequest {})).await;
        let alarms = tokio::time::timeout(
            self.timeout,
            m.alarm(AlarmRequest {
                action: AlarmAction::Get as i32,
                member_id: 0,
                alarm: AlarmType::None as i32,
            }),
        )
        .await;
        let mut disarmed = 0;
        if let Ok(Ok(list)) = &alarms {
            for a in &list.get_ref().alarms {
                if a.alarm == AlarmType::Nospace as i32 {
                    let r = tokio::time::timeout(
                        self.timeout,
                        m.alarm(AlarmRequest {
                            action: AlarmAction::Deactivate as i32,
                            member_id: a.member_id,
                            alarm: a.alarm,
                        }),
                    )
                    .await;
                    if matches!(r, Ok(Ok(_))) {
                        disarmed += 1;
                    }
                }
            }
        }
        let mut problems = Vec::new();
        if matches!(compact, Outcome::Unknown(_)) {
            problems.push(format!("compaction to {revision} got no answer"));
        }
        if !matches!(defrag, Ok(Ok(_))) {
            problems.push(format!("defragment failed: {defrag:?}"));
        }
        if disarmed == 0 {
            problems.push(format!(
                "no NOSPACE alarm to disarm (alarm list: {alarms:?})"
            ));
        }
        // Writes must succeed again.
        let before = self.shared.counters.writes_ok.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut recovered = false;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.shared.counters.writes_ok.load(Ordering::SeqCst) > before {
                recovered = true;
                break;
            }
        }
        if !recovered {
            problems.push("no write succeeded within 5 s after the alarm was disarmed".into());
        }
        self.nospace_seen = self.shared.counters.nospace.load(Ordering::SeqCst);
        self.stats.quota_cycles += 1;
        tracing::info!(
            cycle = self.stats.quota_cycles,
            recovered,
            "quota alarm cycle"
        );
        if !problems.is_empty() {
            self.violation("quota-recovery", problems.join("; "));
        }
        Ok(())
    }

    /// Fills the tmpfs until writes fail, frees it, checks the server recovers.
    async fn full_disk(&mut self) -> Result<(), Error> {
        let Some(ballast) = blocking(&self.server, |s| s.ballast_path()).await? else {
            return Err(Error::Fault {
                fault: "disk",
                reason: "the server was not started on a tmpfs (ServerOptions::tmpfs_mib)".into(),
            });
        };
        let path = ballast.clone();
        let written = tokio::task::spawn_blocking(move || fill(&path))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|e| Error::Io {
                what: "write the ballast file",
                path: ballast.clone(),
                source: e,
            })?;
        tracing::info!(bytes = written, "disk filled");
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        let (ok0, failed0, unknown0) = (
            c.writes_ok.load(Ordering::SeqCst),
            c.failed.load(Ordering::SeqCst),
            c.unknown.load(Ordering::SeqCst),
        );
        // Keep the disk full until writes have failed for a second (at most 8 s: a server may
        // have room left in preallocated files).
        let refused = || {
            c.failed.load(Ordering::SeqCst) - failed0 + c.unknown.load(Ordering::SeqCst) - unknown0
        };
        let full_until = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut first_refusal = None;
        while tokio::time::Instant::now() < full_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if refused() > 0 && first_refusal.is_none() {
                first_refusal = Some(tokio::time::Instant::now());
            }
            if first_refusal.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                break;
            }
        }
        let acked_while_full = c.writes_ok.load(Ordering::SeqCst) - ok0;
        let refused = refused();
        self.stats.disk_acked_while_full += acked_while_full;
        self.stats.disk_refused_while_full += refused;
        tracing::info!(acked_while_full, refused, "traffic on a full disk");
        let running = blocking(&self.server, |s| s.is_running()).await?;
        fs::remove_file(&ballast).map_err(|e| Error::Io {
            what: "remove the ballast file",
            path: ballast.clone(),
            source: e,
        })?;
        self.stats.disk_fills += 1;
        if !running {
            let log = blocking(&self.server, |s| s.log()).await?;
            let lower = log.to_lowercase();
            if !(lower.contains("no space left") || lower.contains("disk full")) {
                self.violation(
                    "disk-exit",
                    format!(
                        "the server exited on a full disk without saying why; last log lines:\n{}",
                        tail(&log, 15)
                    ),
                );
            }
            self.stats.unexpected_exits += 1;
            restart(&self.server, &self.shared).await?;
        }
        let before = c.writes_ok.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut recovered = false;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if c.writes_ok.load(Ordering::SeqCst) > before {
                recovered = true;
                break;
            }
        }
        if !recovered {
            self.violation(
                "disk-recovery",
                format!(
                    "no write succeeded within 10 s after the disk space was freed (server was \
                     {}); restarting it",
                    if running {
                        "still running"
                    } else {
                        "restarted"
                    }
                ),
            );
        }
        // A crash now: whatever was acknowledged, before or after the full disk, must survive.
        self.shared.set_up(false);
        blocking(&self.server, |s| s.kill()).await?;
        self.stats.crashes += 1;
        restart(&self.server, &self.shared).await
    }
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    let mut f = fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e),
            }
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// Last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of kill and pause once missed its crash: six draws, all pauses. Whatever the
    /// seed, the first draws now cover every kind asked for.
    #[test]
    fn every_kind_comes_before_any_repeats() {
        let kinds = vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Power];
        for seed in 0..2000 {
            let mut rng = Rng::new(seed, 0xFA17);
            let mut schedule = Schedule::new(kinds.clone());
            let mut first: Vec<FaultKind> = (0..kinds.len())
                .filter_map(|_| schedule.next(&mut rng))
                .collect();
            first.sort_by_key(|k| kinds.iter().position(|x| x == k));
            assert_eq!(first, kinds, "seed {seed}");
        }
        let mut rng = Rng::new(1, 0xFA17);
        let mut schedule = Schedule::new(kinds.clone());
        let later: Vec<FaultKind> = (0..200).filter_map(|_| schedule.next(&mut rng)).collect();
        for k in &kinds {
            assert!(
                later.iter().filter(|x| *x == k).count() > 30,
                "{k:?} after the first round"
            );
        }
        assert_eq!(Schedule::new(Vec::new()).next(&mut rng), None);
    }
}
