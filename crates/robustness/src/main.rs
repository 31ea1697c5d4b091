//! `coffer-robustness`: run the robustness suite against Coffer or etcd, or re-check a saved
//! history.
//!
//! ```text
//! coffer-robustness run --target coffer --seed 7 --duration 30s --faults kill,pause
//! coffer-robustness run --target etcd --tls     # mutual TLS, certificates in the run dir
//! coffer-robustness --duration 30m          # `run` is the default subcommand
//! coffer-robustness check robustness-runs/coffer-seed7-.../history.json
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use coffer_conformance::ServerKind;
use coffer_robustness::faults::FaultKind;
use coffer_robustness::run::{self, RunConfig, RunReport};

#[derive(Parser)]
#[command(
    name = "coffer-robustness",
    version,
    about = "Random concurrent traffic under crashes, pauses, the quota alarm and a full disk, \
             checked for linearizability and watch guarantees",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Without a subcommand: `run` with these options.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a server, run traffic and faults, check the history.
    Run(RunArgs),
    /// Check a saved history again.
    Check(CheckArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Coffer,
    Etcd,
}

impl From<Target> for ServerKind {
    fn from(t: Target) -> Self {
        match t {
            Target::Coffer => ServerKind::Coffer,
            Target::Etcd => ServerKind::Etcd,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value_t = Target::Coffer)]
    target: Target,
    /// Seed (random when omitted; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the traffic runs: e.g. 30s, 5m, 1h.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// KV clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Watchers.
    #[arg(long, default_value_t = 8)]
    watchers: u32,
    /// Keys in the keyspace.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Faults, comma separated: kill, pause, quota, disk, power, corrupt, unopenable, kms; `none`
    /// (or empty) for none.
    #[arg(long, default_value = "kill,pause")]
    faults: String,
    /// Per-request deadline (past it the outcome is unknown).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Budget of the linearizability check.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    check_budget: Duration,
    /// `--quota-backend-bytes` for the server (default with the quota fault: 1 MiB).
    #[arg(long)]
    quota_backend_bytes: Option<i64>,
    /// Where failing runs save their history and server log.
    #[arg(long, default_value = "robustness-runs")]
    run_dir: PathBuf,
    /// Save the history even when the run passes.
    #[arg(long)]
    save: bool,
    /// The coffer binary (default: $COFFER_BIN, else `coffer` next to this executable).
    #[arg(long)]
    coffer_bin: Option<PathBuf>,
    /// Mutual TLS: the server on `https://` with a CA, server and client certificates
    /// generated in the run directory and `--client-cert-auth`; every client, watcher and probe
    /// presents the client certificate.
    #[arg(long)]
    tls: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// A `history.json` saved by a run.
    file: PathBuf,
    /// Which server produced it (decides which failures are expected).
    #[arg(long, value_enum, default_value_t = Target::Coffer)]
    target: Target,
    /// Budget of the linearizability check.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    check_budget: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `90`, `90s`, `500ms`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 5m, 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    })
}

/// `kill,pause` → the faults; `none` or empty → no fault.
fn parse_faults(s: &str) -> anyhow::Result<Vec<FaultKind>> {
    let mut out = Vec::new();
    for part in s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "none")
    {
        let f: FaultKind = part
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--faults: {e}"))?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64 ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

fn print(report: &RunReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Text => println!("{}", report.summary()),
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coffer-robustness: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.cmd.unwrap_or(Cmd::Run(cli.run)) {
        Cmd::Run(a) => {
            if a.clients == 0 {
                bail!("--clients must be at least 1");
            }
            let faults = parse_faults(&a.faults)?;
            let seed = a.seed.unwrap_or_else(random_seed);
            eprintln!("coffer-robustness: seed {seed} (replay with --seed {seed})");
            let mut cfg = RunConfig::new(a.target.into(), seed)
                .with_faults(&faults)
                .with_duration(a.duration);
            cfg.traffic.clients = a.clients;
            cfg.traffic.watchers = a.watchers;
            cfg.traffic.keys = a.keys.max(1);
            cfg.traffic.request_timeout = a.request_timeout;
            cfg.check_budget = a.check_budget;
            cfg.quota_backend_bytes = a.quota_backend_bytes;
            cfg.run_dir = a.run_dir;
            cfg.always_save = a.save;
            cfg.coffer_binary = a.coffer_bin;
            cfg.tls = a.tls;
            let report = rt.block_on(run::run(cfg))?;
            print(&report, a.output)?;
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Check(a) => {
            let history = run::load(&a.file)?;
            let mut report = rt.block_on(run::check_history(
                &history,
                a.target.into(),
                a.check_budget,
            ))?;
            report.history_file = Some(a.file);
            print(&report, a.output)?;
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
