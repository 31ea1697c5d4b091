//! One run: start the server, run the traffic and the fault schedule for a while, read every
//! key once more, check the history, and report. A failing run's history is saved as JSON in
//! the run directory so it can be checked again offline (`coffer-robustness check FILE`), and
//! the report says how to replay it (`--seed N`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_conformance::pki::MutualTls;
use coffer_conformance::ServerKind;
use serde::Serialize;

use crate::expected::{self, Finding, Source};
use crate::faults::{FaultKind, FaultStats, Injector, Server, ServerOptions};
use crate::history::{History, Outcome, Request};
use crate::traffic::wire::Clients;
use crate::traffic::{self, gen, Shared, TrafficConfig, FINAL_CLIENT};
use crate::{linearizability, watch_check, Error};

/// Default `--quota-backend-bytes` of a quota run, per server: small enough that the traffic
/// reaches it within seconds, large enough that compaction and defragment bring the backend
/// back under it.
pub fn default_quota(kind: ServerKind) -> i64 {
    match kind {
        ServerKind::Etcd => 1024 * 1024,
        ServerKind::Coffer => 1024 * 1024,
    }
}

/// Value size of a quota run.
pub const QUOTA_VALUE_BYTES: usize = 1024;

/// Size of the tmpfs of a full-disk run (MiB).
pub const DEFAULT_TMPFS_MIB: u64 = 48;
/// Smallest tmpfs for etcd (two 64 MiB preallocated WAL segments and room to spare).
pub const ETCD_TMPFS_MIB: u64 = 256;

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server.
    pub target: ServerKind,
    /// Seed of the traffic and the fault schedule.
    pub seed: u64,
    /// How long traffic runs (faults included).
    pub duration: Duration,
    /// KV clients, watchers, keys, deadline.
    pub traffic: TrafficConfig,
    /// Faults injected.
    pub faults: Vec<FaultKind>,
    /// `--quota-backend-bytes` (none: [`default_quota`] when the quota fault is on).
    pub quota_backend_bytes: Option<i64>,
    /// tmpfs size for the disk fault.
    pub tmpfs_mib: u64,
    /// Time budget of the linearizability check.
    pub check_budget: Duration,
    /// Where a failing run's history and server log are saved.
    pub run_dir: PathBuf,
    /// Save the history even when the run passes.
    pub always_save: bool,
    /// The coffer binary (none: `$COFFER_BIN` or next to the running executable).
    pub coffer_binary: Option<PathBuf>,
    /// Mutual TLS: a CA, server and client certificates generated in the run directory, the
    /// server started with etcd's TLS flags and `--client-cert-auth`, every client and watcher
    /// presenting the client certificate.
    pub tls: bool,
}

impl RunConfig {
    /// A 30 s run with 8 clients and 8 watchers, no faults.
    pub fn new(target: ServerKind, seed: u64) -> Self {
        RunConfig {
            target,
            seed,
            duration: Duration::from_secs(30),
            traffic: TrafficConfig {
                seed,
                ..TrafficConfig::default()
            },
            faults: Vec::new(),
            quota_backend_bytes: None,
            tmpfs_mib: DEFAULT_TMPFS_MIB,
            check_budget: Duration::from_secs(60),
            run_dir: PathBuf::from("robustness-runs"),
            always_save: false,
            coffer_binary: None,
            tls: false,
        }
    }

    /// With these faults.
    pub fn with_faults(mut self, faults: &[FaultKind]) -> Self {
        self.faults = faults.to_vec();
        self
    }

    /// With this duration.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        let mut cmd = format!(
            "cargo run -p coffer-robustness -- run --target {} --seed {} --duration {}s \
             --clients {} --watchers {}",
            self.target,
            self.seed,
            self.duration.as_secs(),
            self.traffic.clients,
            self.traffic.watchers
        );
        if !faults.is_empty() {
            let _ = write!(cmd, " --faults {}", faults.join(","));
        }
        if self.tls {
            cmd.push_str(" --tls");
        }
        cmd
    }
}

/// The linearizability verdict, as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum LinStatus {
    /// Linearizable.
    Ok {
        /// Operations checked.
        operations: usize,
        /// Independent partitions.
        partitions: usize,
    },
    /// Not linearizable (the report is among the findings).
    Violation,
    /// The check ran out of budget: no verdict.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `coffer` or `etcd`.
    pub target: String,
    /// Seed.
    pub seed: u64,
    /// Faults injected.
    pub faults: Vec<FaultKind>,
    /// Whether the server and its clients spoke mutual TLS.
    pub tls: bool,
    /// Seconds of traffic.
    pub duration_secs: f64,
    /// Operations in the history (the final read included).
    pub operations: usize,
    /// Of which answered.
    pub ok: usize,
    /// Of which refused with a definite error.
    pub failed: usize,
    /// Of which with an unknown outcome.
    pub uncertain: usize,
    /// Writes refused with NOSPACE.
    pub nospace: usize,
    /// Watch records (one per watch opened).
    pub watches: usize,
    /// Watch events received.
    pub watch_events: usize,
    /// What the fault injector did.
    pub fault_stats: FaultStats,
    /// Linearizability verdict.
    pub linearizability: LinStatus,
    /// Every violation found, each marked expected (with its upstream issue) or not.
    pub findings: Vec<Finding>,
    /// Findings not explained by a known bug of the target.
    pub unexpected: usize,
    /// Where the history was saved (failing runs).
    pub history_file: Option<PathBuf>,
    /// How to replay this run.
    pub replay: String,
    /// No unexpected violation and a conclusive linearizability verdict.
    pub passed: bool,
}

impl RunReport {
    /// A human summary (several lines).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let fs = &self.fault_stats;
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        if self.replay.is_empty() {
            let _ = writeln!(s, "target {} (saved history)", self.target);
        } else {
            let _ = writeln!(
                s,
                "target {} seed {} faults [{}]{}, {:.1} s of traffic",
                self.target,
                self.seed,
                faults.join(","),
                if self.tls { " over mutual TLS" } else { "" },
                self.duration_secs
            );
        }
        let _ = writeln!(
            s,
            "operations: {} ({} ok, {} failed, {} uncertain, {} NOSPACE)",
            self.operations, self.ok, self.failed, self.uncertain, self.nospace
        );
        let _ = writeln!(
            s,
            "watches: {} opened, {} events checked",
            self.watches, self.watch_events
        );
        if !self.replay.is_empty() {
            let _ = writeln!(
            s,
            "faults: {} crashes ({} after compaction, {} after defragment), {} pauses, {} quota \
             alarm cycles, {} disk fills ({} writes acknowledged and {} refused while full), {} \
             unexpected exits",
            fs.crashes,
            fs.crashes_after_compact,
            fs.crashes_after_defrag,
            fs.pauses,
            fs.quota_cycles,
            fs.disk_fills,
            fs.disk_acked_while_full,
            fs.disk_refused_while_full,
            fs.unexpected_exits
        );
        }
        if fs.kms_outages > 0 {
            let _ = writeln!(
                s,
                "KMS plugin outages: {} ({} stored values read by the probe while it was down)",
                fs.kms_outages, fs.kms_reads_during_outage
            );
        }
        if fs.power_cuts > 0 || !fs.flips.is_empty() || fs.unopenable_restarts > 0 {
            let refused = fs.flips.iter().filter(|f| f.outcome == "refused").count();
            let _ = writeln!(
                s,
                "power cuts: {} ({} unsynced writes dropped); byte flips: {} ({} refused, {} \
                 served); restarts without a sealing key: {} ({} probe reads refused)",
                fs.power_cuts,
                fs.power_writes_dropped,
                fs.flips.len(),
                refused,
                fs.flips.len() - refused,
                fs.unopenable_restarts,
                fs.unopenable_reads_refused
            );
            for f in &fs.flips {
                let _ = writeln!(
                    s,
                    "  flip {} @ {} of {} bytes: {}",
                    f.file, f.offset, f.len, f.outcome
                );
            }
        }
        let lin = match &self.linearizability {
            LinStatus::Ok {
                operations,
                partitions,
            } => format!("linearizable ({operations} operations, {partitions} partitions)"),
            LinStatus::Violation => "VIOLATION".to_string(),
            LinStatus::Unknown { reason } => format!("no verdict ({reason})"),
        };
        let _ = writeln!(s, "linearizability: {lin}");
        let expected = self.findings.len() - self.unexpected;
        let _ = writeln!(
            s,
            "violations: {} unexpected, {} expected",
            self.unexpected, expected
        );
        for f in &self.findings {
            let _ = writeln!(s, "  - {f}");
        }
        if let Some(h) = &self.history_file {
            let _ = writeln!(s, "history saved: {}", h.display());
            let _ = writeln!(s, "re-check: coffer-robustness check {}", h.display());
        }
        if !self.replay.is_empty() {
            let _ = writeln!(s, "replay: {}", self.replay);
        }
        let _ = write!(s, "{}", if self.passed { "PASS" } else { "FAIL" });
        s
    }
}

/// Runs the whole thing.
pub async fn run(cfg: RunConfig) -> Result<RunReport, Error> {
    let started = Instant::now();
    let mut traffic_cfg = cfg.traffic.clone();
    traffic_cfg.seed = cfg.seed;
    traffic_cfg.nospace_uncertain = expected::nospace_may_apply(cfg.target);
    let fills = cfg.faults.contains(&FaultKind::Quota) || cfg.faults.contains(&FaultKind::Disk);
    if fills && traffic_cfg.value_bytes == 0 {
        // Fill the quota (or the disk) within seconds: bigger values, and no compaction by the
        // clients (the quota recovery compacts).
        traffic_cfg.value_bytes = QUOTA_VALUE_BYTES;
        traffic_cfg.compactions = false;
    }
    // Kept until the run ends: the server is restarted with these files.
    let tls = if cfg.tls {
        Some(generate_pki(&cfg.run_dir)?)
    } else {
        None
    };
    let opts = ServerOptions {
        quota_backend_bytes: if cfg.faults.contains(&FaultKind::Quota) {
            Some(
                cfg.quota_backend_bytes
                    .unwrap_or_else(|| default_quota(cfg.target)),
            )
        } else {
            cfg.quota_backend_bytes
        },
        tmpfs_mib: cfg
            .faults
            .contains(&FaultKind::Disk)
            .then_some(match cfg.target {
                // etcd preallocates 64 MiB WAL segments.
                ServerKind::Etcd => cfg.tmpfs_mib.max(ETCD_TMPFS_MIB),
                ServerKind::Coffer => cfg.tmpfs_mib,
            }),
        coffer_binary: cfg.coffer_binary.clone(),
        power: cfg.faults.contains(&FaultKind::Power),
        sealing: cfg.faults.contains(&FaultKind::Unopenable),
        kms: cfg.faults.contains(&FaultKind::Kms),
        tls: tls.as_ref().map(|(_, files)| files.clone()),
    };
    let target = cfg.target;
    let server = tokio::task::spawn_blocking(move || Server::start(target, &opts))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    let endpoint = server.endpoint();
    let server_tls = endpoint.starts_with("https://");
    tracing::info!(%endpoint, target = %cfg.target, seed = cfg.seed, "server started");
    let server = Arc::new(Mutex::new(server));
    let chan =
        |ep: &str| traffic::channel(ep).map_err(|e| Error::Task(format!("channel to {ep}: {e}")));

    let shared = Shared::new();
    let mut kv_tasks = Vec::new();
    for c in 0..traffic_cfg.clients {
        kv_tasks.push(tokio::spawn(traffic::kv_client(
            Arc::clone(&shared),
            traffic_cfg.clone(),
            c,
            chan(&endpoint)?,
        )));
    }
    let mut watch_tasks = Vec::new();
    for w in 0..traffic_cfg.watchers {
        watch_tasks.push(tokio::spawn(traffic::watcher(
            Arc::clone(&shared),
            traffic_cfg.clone(),
            w,
            chan(&endpoint)?,
        )));
    }

    let mut injector = Injector::new(
        Arc::clone(&server),
        Arc::clone(&shared),
        cfg.seed,
        &cfg.faults,
        chan(&endpoint)?,
        traffic_cfg.request_timeout,
    );
    let until = tokio::time::Instant::now() + cfg.duration;
    let injected = injector.run(until).await;
    shared.stop_clients();
    for t in kv_tasks {
        t.await.map_err(|e| Error::Task(e.to_string()))?;
    }
    injected?;
    let traffic_secs = started.elapsed().as_secs_f64();

    // The final read: every key, linearizable, retried until the server answers.
    let mut clients = Clients::new(chan(&endpoint)?);
    let mut final_rev = None;
    let mut last_err = String::new();
    for _ in 0..20 {
        let o = shared
            .execute(
                &mut clients,
                FINAL_CLIENT,
                Request::Range {
                    key: gen::PREFIX.to_string(),
                    end: Some(gen::PREFIX_END.to_string()),
                },
                traffic_cfg.request_timeout,
            )
            .await;
        match o {
            Outcome::Ok(crate::history::Response::Range { revision, .. }) => {
                final_rev = Some(revision);
                break;
            }
            other => last_err = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(final_rev) = final_rev else {
        return Err(Error::FinalRead(last_err));
    };
    shared.finish_watchers(final_rev);
    for t in watch_tasks {
        t.await.map_err(|e| Error::Task(e.to_string()))?;
    }
    let mut history = shared.history();
    history.sealed_prev_kv = injector.stats.unopenable_windows.clone();
    let server_log = {
        let s = Arc::clone(&server);
        tokio::task::spawn_blocking(move || {
            let mut s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let log = s.log();
            s.kill();
            log
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    };
    drop(server);

    let mut report = check_history(&history, cfg.target, cfg.check_budget).await?;
    report.seed = cfg.seed;
    report.faults = cfg.faults.clone();
    report.tls = server_tls;
    report.duration_secs = traffic_secs;
    report.replay = cfg.replay_command();
    for v in &injector.stats.violations {
        let f = expected::classify(
            cfg.target,
            Finding::new(Source::Scenario, v.kind, v.detail.clone()),
        );
        if f.expected.is_none() {
            report.unexpected += 1;
        }
        report.findings.push(f);
    }
    if cfg.faults.contains(&FaultKind::Quota) && injector.stats.quota_cycles == 0 {
        report.unexpected += 1;
        report.findings.push(Finding::new(
            Source::Scenario,
            "quota-not-reached",
            "the quota fault was on but the traffic never hit NOSPACE: the alarm was never raised"
                .into(),
        ));
    }
    if cfg.faults.contains(&FaultKind::Disk)
        && injector.stats.disk_fills > 0
        && injector.stats.disk_refused_while_full == 0
    {
        report.unexpected += 1;
        report.findings.push(Finding::new(
            Source::Scenario,
            "disk-not-full",
            format!(
                "the disk was filled {} times but no request failed: the full-disk fault was \
                 not exercised ({} writes acknowledged while full)",
                injector.stats.disk_fills, injector.stats.disk_acked_while_full
            ),
        ));
    }
    report.fault_stats = injector.stats.clone();
    report.passed =
        report.unexpected == 0 && !matches!(report.linearizability, LinStatus::Unknown { .. });
    if !report.passed || cfg.always_save {
        let dir = cfg
            .run_dir
            .join(format!("{}-seed{}-{}", cfg.target, cfg.seed, unix_secs()));
        let file = save(&dir, &history, &server_log)?;
        report.history_file = Some(file);
    }
    Ok(report)
}

/// A fresh CA, server and client certificates in a new directory under `run_dir` (removed
/// when the returned guard is dropped).
fn generate_pki(run_dir: &Path) -> Result<(tempfile::TempDir, MutualTls), Error> {
    std::fs::create_dir_all(run_dir).map_err(|source| Error::Io {
        what: "create the run directory",
        path: run_dir.to_path_buf(),
        source,
    })?;
    let dir = tempfile::Builder::new()
        .prefix("tls-")
        .tempdir_in(run_dir)
        .map_err(|source| Error::Io {
            what: "create a directory for certificates in",
            path: run_dir.to_path_buf(),
            source,
        })?;
    let files = MutualTls::generate(dir.path())
        .map_err(|e| Error::Tls(format!("cannot generate the certificates: {e}")))?;
    Ok((dir, files))
}

/// Checks a history (from a run or a saved file) and reports what was found. `target` decides
/// which failures are expected.
pub async fn check_history(
    history: &History,
    target: ServerKind,
    budget: Duration,
) -> Result<RunReport, Error> {
    // Uncertain writes the watch events settle are checked as answered (see `settle`).
    let h = Arc::new(crate::settle::settle(history));
    let hh = Arc::clone(&h);
    let verdict = tokio::task::spawn_blocking(move || linearizability::check(&hh, budget))
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
    let hh = Arc::clone(&h);
    let watch = tokio::task::spawn_blocking(move || watch_check::check(&hh))
        .await
        .map_err(|e| Error::Task(e.to_string()))?;

    let mut findings = Vec::new();
    let lin = match verdict {
        linearizability::Verdict::Ok {
            operations,
            partitions,
        } => LinStatus::Ok {
            operations,
            partitions,
        },
        linearizability::Verdict::Violation { report, minimal } => {
            let detail = format!(
                "{report}\n(minimal failing sub-history: {} operations)",
                minimal.operations.len()
            );
            findings.push(expected::classify(
                target,
                Finding::new(Source::Linearizability, "linearizability", detail),
            ));
            LinStatus::Violation
        }
        linearizability::Verdict::Unknown { reason } => LinStatus::Unknown { reason },
    };
    for v in watch {
        findings.push(expected::classify(
            target,
            Finding::new(Source::Watch, v.kind, v.to_string()),
        ));
    }
    let unexpected = findings.iter().filter(|f| f.expected.is_none()).count();
    let count =
        |p: fn(&Outcome) -> bool| history.operations.iter().filter(|o| p(&o.outcome)).count();
    Ok(RunReport {
        target: target.to_string(),
        seed: 0,
        faults: Vec::new(),
        tls: false,
        duration_secs: 0.0,
        operations: history.operations.len(),
        ok: count(|o| matches!(o, Outcome::Ok(_))),
        failed: count(|o| matches!(o, Outcome::Failed(_))),
        uncertain: count(|o| matches!(o, Outcome::Unknown(_))),
        nospace: history
            .operations
            .iter()
            .filter(|o| {
                matches!(&o.outcome, Outcome::Failed(m) | Outcome::Unknown(m) if traffic::wire::is_nospace(m))
            })
            .count(),
        watches: history.watches.len(),
        watch_events: history.watches.iter().map(|w| w.events.len()).sum(),
        fault_stats: FaultStats::default(),
        passed: unexpected == 0 && !matches!(lin, LinStatus::Unknown { .. }),
        linearizability: lin,
        findings,
        unexpected,
        history_file: None,
        replay: String::new(),
    })
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Saves `history.json` and `server.log` in `dir`; returns the history's path.
fn save(dir: &Path, history: &History, log: &str) -> Result<PathBuf, Error> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::Io {
            what,
            path,
            source: e,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let file = dir.join("history.json");
    let json = serde_json::to_vec(history).map_err(|e| Error::Parse {
        path: file.clone(),
        source: e,
    })?;
    std::fs::write(&file, json).map_err(io("write", &file))?;
    let log_file = dir.join("server.log");
    std::fs::write(&log_file, log).map_err(io("write", &log_file))?;
    Ok(file)
}

/// Loads a saved history.
pub fn load(path: &Path) -> Result<History, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        what: "read",
        path: path.to_path_buf(),
        source: e,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        source: e,
    })
}
