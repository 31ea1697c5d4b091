//! `coffer bench`: a load generator in the manner of etcd's `benchmark` tool, for Coffer and for
//! any etcd. Same global flags (`--endpoints`, `--conns`, `--clients`, `--dial-timeout`) and the
//! same workloads (`put`, `range`, `txn-put`, `watch`, `lease-keepalive`) with etcd's defaults,
//! so one command line measures both servers on equal terms. Prints throughput and latency
//! (average, min, max, standard deviation, percentiles p10 … p99.9) as text like etcd's tool or
//! as JSON (`--output json`).
//!
//! This module holds the flags, the dispatch and the report; the workloads live in [`kv`]
//! (put, range, txn-put), [`watch`] (event delivery to many watchers) and [`lease`]
//! (keep-alives). Connections are spread over the endpoints round-robin; client or stream i
//! uses connection i mod `--conns`. With etcd's `--cacert`/`--cert`/`--key` the connections use
//! TLS (an endpoint without a scheme then means `https://`); with `--user name:password` each
//! connection authenticates once and sends the token with every request.

mod kv;
mod lease;
mod watch;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use kv::{PutArgs, RangeArgs, TxnPutArgs};
pub use lease::LeaseKeepaliveArgs;
pub use watch::WatchArgs;

/// Flags of `coffer bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// gRPC endpoints, comma separated (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (tasks) sharing the connections. For `watch`: the number of
    /// concurrent putters.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Time allowed to establish each connection (e.g. `2s`, `500ms`).
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Report format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Verify the servers' certificates with this CA bundle (PEM); turns TLS on.
    #[arg(long, global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for TLS; needs --key.
    #[arg(long, global = true)]
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", id = "tls_key", global = true)]
    pub key_file: Option<std::path::PathBuf>,
    /// `username:password`: each connection calls Authenticate once and sends the token.
    #[arg(long, global = true, value_parser = parse_user)]
    pub user: Option<Credentials>,
    /// The workload.
    #[command(subcommand)]
    pub workload: Workload,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable, like etcd's benchmark tool.
    Text,
    /// One JSON object.
    Json,
}

/// The workloads.
#[derive(Debug, clap::Subcommand)]
pub enum Workload {
    /// Put keys (`--sequential-keys` uses i mod --key-space-size, else random keys).
    Put(PutArgs),
    /// Range over KEY (or [KEY, END)) repeatedly.
    Range(RangeArgs),
    /// Transactions of --txn-ops puts each.
    TxnPut(TxnPutArgs),
    /// Event delivery: --streams × --watch-per-stream watchers, then --put-total puts to the
    /// watched keys; latency from just before each Put is sent to each watcher's event, and a
    /// check that every watcher got every event exactly once.
    Watch(WatchArgs),
    /// Each client grants one lease (TTL 100) and renews it over one KeepAlive stream;
    /// latency of each keep-alive request → response.
    LeaseKeepalive(LeaseKeepaliveArgs),
}

/// `--user`: a name and a password, the password never printed.
#[derive(Clone)]
pub struct Credentials {
    name: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.name)
    }
}

fn parse_user(s: &str) -> Result<Credentials, String> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(Credentials {
            name: name.to_owned(),
            password: password.to_owned(),
        }),
        _ => Err("expected name:password".to_owned()),
    }
}

/// A connection that adds the `token` metadata (when authenticated) to every request.
pub(crate) type Conn = InterceptedService<Channel, TokenInterceptor>;

/// Adds the auth token of its connection to each request.
#[derive(Clone)]
pub(crate) struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

/// Parses `1s`, `500ms`, `2m` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 2s, 500ms, 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Go's `binary.PutVarint` (zigzag + LEB128) into a zero-filled key of `size` bytes, as etcd's
/// tool builds its keys.
fn varint_key(n: u64, size: usize) -> Vec<u8> {
    let mut key = vec![0u8; size.max(1)];
    let signed = n as i64;
    let mut ux = ((signed << 1) ^ (signed >> 63)) as u64;
    let mut i = 0;
    while i < key.len() {
        let byte = (ux & 0x7f) as u8;
        ux >>= 7;
        if ux == 0 {
            key[i] = byte;
            break;
        }
        key[i] = byte | 0x80;
        i += 1;
    }
    key
}

/// A small xorshift generator: benchmark keys need spread, not secrecy.
struct XorShift(u64);

impl XorShift {
    fn seeded(stream: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        XorShift((t ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = XorShift::seeded(7);
    (0..n).map(|_| (rng.next() >> 24) as u8).collect()
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.conns == 0 || args.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    if args.endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let (name, report) = match &args.workload {
        Workload::Put(_) | Workload::Range(_) | Workload::TxnPut(_) => {
            let (name, total, rate, generator) = kv::prepare(&args.workload)?;
            (name, rt.block_on(kv::drive(&args, total, rate, generator))?)
        }
        Workload::Watch(w) => ("watch", rt.block_on(watch::drive(&args, w))?),
        Workload::LeaseKeepalive(l) => ("lease-keepalive", rt.block_on(lease::drive(&args, l))?),
    };
    match args.output {
        OutputFormat::Text => print!("{}", report.text(name)),
        OutputFormat::Json => println!("{}", report.json(name, &args)),
    }
    Ok(if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The TLS settings of `--cacert`, `--cert` and `--key`, if any is given.
fn tls_config(args: &Args) -> anyhow::Result<Option<ClientTlsConfig>> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    let mut on = false;
    if let Some(ca) = &args.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read("--cacert", ca)?));
        on = true;
    }
    match (&args.cert, &args.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
            on = true;
        }
        (None, None) => {}
        _ => bail!("--cert and --key go together"),
    }
    Ok(on.then_some(tls))
}

/// Opens one gRPC connection and, with `--user`, authenticates on it.
async fn dial(endpoint: &str, args: &Args, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Conn> {
    let timeout = args.dial_timeout;
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.clone())
            .with_context(|| format!("TLS settings for {url}"))?;
    }
    let channel = ep
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url} within {timeout:?}"))?;
    let token = match &args.user {
        None => None,
        Some(user) => {
            let reply = coffer_proto::auth_client::AuthClient::new(channel.clone())
                .authenticate(coffer_proto::AuthenticateRequest {
                    name: user.name.clone(),
                    password: user.password.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .with_context(|| format!("cannot authenticate as {:?} at {url}", user.name))?;
            let token = MetadataValue::try_from(reply.into_inner().token)
                .context("the server's auth token is not ASCII")?;
            Some(token)
        }
    };
    Ok(InterceptedService::new(channel, TokenInterceptor(token)))
}

/// Opens `--conns` connections, spread over the endpoints round-robin.
async fn dial_all(args: &Args) -> anyhow::Result<Vec<Conn>> {
    let tls = tls_config(args)?;
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let ep = &args.endpoints[i % args.endpoints.len()];
        channels.push(dial(ep, args, tls.as_ref()).await?);
    }
    Ok(channels)
}

/// Folds error messages into (message, count) pairs, first occurrence first.
fn count_errors(errors: &mut Vec<(String, u64)>, new: impl IntoIterator<Item = String>) {
    for e in new {
        match errors.iter_mut().find(|(m, _)| *m == e) {
            Some((_, n)) => *n += 1,
            None => errors.push((e, 1)),
        }
    }
}

type ProgressHandle = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// A line on stderr rewritten every 500 ms, only when stderr is a terminal.
fn spawn_progress(done: Arc<AtomicU64>, total: u64, unit: &'static str) -> Option<ProgressHandle> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let start = Instant::now();
        loop {
            let finished = stop2.load(Ordering::Relaxed);
            let d = done.load(Ordering::Relaxed);
            let pct = if total == 0 {
                100.0
            } else {
                d as f64 * 100.0 / total as f64
            };
            eprint!(
                "\r{d}/{total} {unit} ({pct:5.1}%) {:6.1}s",
                start.elapsed().as_secs_f64()
            );
            if finished {
                eprintln!();
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    Some((stop, handle))
}

fn stop_progress(progress: Option<ProgressHandle>) {
    if let Some((stop, handle)) = progress {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
}

/// What a run measured.
struct Report {
    /// One latency per successful request (or delivered event).
    latencies: Vec<Duration>,
    /// Failed requests, grouped by message.
    errors: Vec<(String, u64)>,
    /// Wall time the throughput is computed over.
    elapsed: Duration,
    /// What one latency sample is ("requests", "events").
    unit: &'static str,
    /// Workload-specific figures, printed after the summary and added to the JSON object.
    extra: Vec<(&'static str, serde_json::Value)>,
    /// The run failed (no successful request, or a workload check failed): exit non-zero.
    failed: bool,
}

/// The percentiles etcd's tool prints.
const PERCENTILES: [f64; 6] = [10.0, 50.0, 90.0, 95.0, 99.0, 99.9];

struct Stats {
    count: usize,
    rps: f64,
    avg: f64,
    min: f64,
    max: f64,
    stddev: f64,
    percentiles: Vec<(f64, f64)>,
}

impl Report {
    fn stats(&self) -> Stats {
        let mut secs: Vec<f64> = self.latencies.iter().map(Duration::as_secs_f64).collect();
        secs.sort_by(f64::total_cmp);
        let n = secs.len();
        let elapsed = self.elapsed.as_secs_f64();
        let avg = if n == 0 {
            0.0
        } else {
            secs.iter().sum::<f64>() / n as f64
        };
        let var = if n == 0 {
            0.0
        } else {
            secs.iter().map(|x| (x - avg) * (x - avg)).sum::<f64>() / n as f64
        };
        let percentiles = PERCENTILES
            .iter()
            .map(|p| {
                let v = if n == 0 {
                    0.0
                } else {
                    let idx = ((p / 100.0) * n as f64).ceil() as usize;
                    secs[idx.clamp(1, n) - 1]
                };
                (*p, v)
            })
            .collect();
        Stats {
            count: n,
            rps: if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            },
            avg,
            min: secs.first().copied().unwrap_or(0.0),
            max: secs.last().copied().unwrap_or(0.0),
            stddev: var.sqrt(),
            percentiles,
        }
    }

    fn text(&self, name: &str) -> String {
        let s = self.stats();
        let unit = self.unit;
        let mut out = format!(
            "{name}: {} {unit} ok, {} errors\n\nSummary:\n  Total:\t{:.4} secs.\n  Slowest:\t{:.4} secs.\n  Fastest:\t{:.4} secs.\n  Average:\t{:.4} secs.\n  Stddev:\t{:.4} secs.\n  {}/sec:\t{:.4}\n",
            s.count,
            self.errors.iter().map(|(_, n)| n).sum::<u64>(),
            self.elapsed.as_secs_f64(),
            s.max,
            s.min,
            s.avg,
            s.stddev,
            capitalized(unit),
            s.rps
        );
        for (k, v) in &self.extra {
            out.push_str(&format!("  {k}:\t{v}\n"));
        }
        out.push_str("\nLatency distribution:\n");
        for (p, v) in &s.percentiles {
            out.push_str(&format!("  {p}% in {v:.4} secs.\n"));
        }
        if !self.errors.is_empty() {
            out.push_str("\nError distribution:\n");
            for (m, n) in &self.errors {
                out.push_str(&format!("  [{n}]\t{m}\n"));
            }
        }
        out
    }

    fn json(&self, name: &str, args: &Args) -> String {
        let s = self.stats();
        let ms = |x: f64| (x * 1e6).round() / 1e3;
        let mut latency = serde_json::Map::new();
        latency.insert("avg".into(), ms(s.avg).into());
        latency.insert("min".into(), ms(s.min).into());
        latency.insert("max".into(), ms(s.max).into());
        latency.insert("stddev".into(), ms(s.stddev).into());
        for (p, v) in &s.percentiles {
            latency.insert(format!("p{p}"), ms(*v).into());
        }
        let mut obj = serde_json::json!({
            "workload": name,
            "endpoints": args.endpoints,
            "conns": args.conns,
            "clients": args.clients,
            "unit": self.unit,
            "ok": s.count,
            "errors": self.errors.iter().map(|(m, n)| serde_json::json!({"message": m, "count": n})).collect::<Vec<_>>(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "requests_per_sec": (s.rps * 10.0).round() / 10.0,
            "latency_ms": latency,
            "failed": self.failed,
        });
        if let Some(map) = obj.as_object_mut() {
            for (k, v) in &self.extra {
                map.insert((*k).to_owned(), v.clone());
            }
        }
        obj.to_string()
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn varint_keys_match_go() {
        // Go: binary.PutVarint(buf, 1) → [2], (300) → [0xd8, 0x04]
        assert_eq!(varint_key(1, 4), vec![2, 0, 0, 0]);
        assert_eq!(varint_key(300, 3), vec![0xd8, 0x04, 0]);
        assert_eq!(varint_key(0, 2), vec![0, 0]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let r = Report {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            errors: vec![],
            elapsed: Duration::from_secs(1),
            unit: "requests",
            extra: vec![],
            failed: false,
        };
        let s = r.stats();
        assert_eq!(s.count, 100);
        assert!((s.percentiles[1].1 - 0.050).abs() < 1e-9);
        assert!((s.percentiles[5].1 - 0.100).abs() < 1e-9);
        assert!((s.min - 0.001).abs() < 1e-9 && (s.max - 0.100).abs() < 1e-9);
        assert!((s.rps - 100.0).abs() < 1e-9);
    }

    #[test]
    fn extra_figures_reach_text_and_json() {
        let r = Report {
            latencies: vec![Duration::from_millis(2)],
            errors: vec![],
            elapsed: Duration::from_secs(1),
            unit: "events",
            extra: vec![("missed", 3.into())],
            failed: true,
        };
        assert!(r.text("watch").contains("missed:\t3"));
        assert!(r.text("watch").contains("Events/sec"));
        let args = Args {
            endpoints: vec!["127.0.0.1:1".into()],
            conns: 1,
            clients: 1,
            dial_timeout: Duration::from_secs(1),
            output: OutputFormat::Json,
            cacert: None,
            cert: None,
            key_file: None,
            user: parse_user("u:secret-pw").ok(),
            workload: Workload::LeaseKeepalive(LeaseKeepaliveArgs { total: 1 }),
        };
        assert!(!format!("{args:?}").contains("secret-pw"));
        let json = r.json("watch", &args);
        assert!(!json.contains("secret-pw"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["missed"], 3);
        assert_eq!(v["failed"], true);
        assert_eq!(v["ok"], 1);
    }
}
