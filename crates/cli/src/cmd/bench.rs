//! `coffer bench`: a load generator in the manner of etcd's `benchmark` tool, for Coffer and for
//! any etcd. Same global flags (`--endpoints`, `--conns`, `--clients`, `--dial-timeout`) and the
//! same workloads (`put`, `range`, `txn-put`) with etcd's defaults, so one command line measures
//! both servers on equal terms. Prints throughput and latency (average, min, max, standard
//! deviation, percentiles p10 … p99.9) as text like etcd's tool or as JSON (`--output json`).
//!
//! `--clients` tasks share `--conns` gRPC connections (client i uses connection i mod conns);
//! connections are spread over the endpoints round-robin. Every request is timed on its own; a
//! failed request counts as an error and its latency is not recorded.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_proto::kv_client::KvClient;
use coffer_proto::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::{Channel, Endpoint};

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
    /// Number of concurrent clients (tasks) sharing the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Time allowed to establish each connection (e.g. `2s`, `500ms`).
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Report format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
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
}

/// Flags of `bench put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use keys i mod key-space-size instead of random keys.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Requests per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// Flags of `bench range`.
#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    /// The key (or first key of the range).
    pub key: String,
    /// The range end (exclusive); none = the single key.
    pub end: Option<String>,
    /// Number of requests.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// `l` (linearizable) or `s` (serializable).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Requests per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// Flags of `bench txn-put`.
#[derive(Debug, clap::Args)]
pub struct TxnPutArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u64,
    /// Number of transactions.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Transactions per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
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

/// One prepared request.
#[derive(Clone)]
enum Request {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

/// Builds request number `i` of the workload.
struct Generator {
    workload: WorkloadSpec,
    value: Vec<u8>,
}

enum WorkloadSpec {
    Put {
        key_size: usize,
        key_space: u64,
        sequential: bool,
    },
    Range(RangeRequest),
    TxnPut {
        key_size: usize,
        key_space: u64,
        ops: u64,
    },
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

impl Generator {
    fn request(&self, i: u64, rng: &mut XorShift) -> Request {
        match &self.workload {
            WorkloadSpec::Put {
                key_size,
                key_space,
                sequential,
            } => {
                let n = if *sequential {
                    i % key_space
                } else {
                    rng.next() % key_space
                };
                Request::Put(PutRequest {
                    key: varint_key(n, *key_size),
                    value: self.value.clone(),
                    ..Default::default()
                })
            }
            WorkloadSpec::Range(r) => Request::Range(r.clone()),
            WorkloadSpec::TxnPut {
                key_size,
                key_space,
                ops,
            } => {
                let success = (0..*ops)
                    .map(|j| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: varint_key((i * ops + j) % key_space, *key_size),
                            value: self.value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                Request::Txn(TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                })
            }
        }
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
    let (name, total, rate, generator) = match &args.workload {
        Workload::Put(p) => {
            if p.key_space_size == 0 {
                bail!("--key-space-size must be at least 1");
            }
            (
                "put",
                p.total,
                p.rate,
                Generator {
                    workload: WorkloadSpec::Put {
                        key_size: p.key_size,
                        key_space: p.key_space_size,
                        sequential: p.sequential_keys,
                    },
                    value: random_bytes(p.val_size),
                },
            )
        }
        Workload::Range(r) => (
            "range",
            r.total,
            r.rate,
            Generator {
                workload: WorkloadSpec::Range(RangeRequest {
                    key: r.key.as_bytes().to_vec(),
                    range_end: r.end.as_deref().unwrap_or("").as_bytes().to_vec(),
                    serializable: r.consistency == "s",
                    ..Default::default()
                }),
                value: Vec::new(),
            },
        ),
        Workload::TxnPut(t) => {
            if t.key_space_size == 0 || t.txn_ops == 0 {
                bail!("--key-space-size and --txn-ops must be at least 1");
            }
            if t.txn_ops > t.key_space_size {
                bail!(
                    "--txn-ops {} exceeds --key-space-size {}: a txn would put the same key twice",
                    t.txn_ops,
                    t.key_space_size
                );
            }
            (
                "txn-put",
                t.total,
                t.rate,
                Generator {
                    workload: WorkloadSpec::TxnPut {
                        key_size: t.key_size,
                        key_space: t.key_space_size,
                        ops: t.txn_ops,
                    },
                    value: random_bytes(t.val_size),
                },
            )
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let report = rt.block_on(drive(&args, total, rate, Arc::new(generator)))?;
    match args.output {
        OutputFormat::Text => print!("{}", report.text(name)),
        OutputFormat::Json => println!("{}", report.json(name, &args)),
    }
    Ok(if report.latencies.is_empty() && total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn dial(endpoint: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let ep = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    ep.connect()
        .await
        .with_context(|| format!("cannot connect to {url} within {timeout:?}"))
}

async fn drive(
    args: &Args,
    total: u64,
    rate: u64,
    generator: Arc<Generator>,
) -> anyhow::Result<Report> {
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let ep = &args.endpoints[i % args.endpoints.len()];
        channels.push(dial(ep, args.dial_timeout).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(done.clone(), total);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let kv = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let done = done.clone();
        let generator = generator.clone();
        tasks.push(tokio::spawn(client_loop(
            kv, next, done, generator, total, rate, start, c as u64,
        )));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors: Vec<(String, u64)> = Vec::new();
    for t in tasks {
        let (lat, errs) = t.await.context("a benchmark client task failed")?;
        latencies.extend(lat);
        for e in errs {
            match errors.iter_mut().find(|(m, _)| *m == e) {
                Some((_, n)) => *n += 1,
                None => errors.push((e, 1)),
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some((stop, handle)) = progress {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = handle.join();
    }
    Ok(Report {
        latencies,
        errors,
        elapsed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    mut kv: KvClient<Channel>,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    generator: Arc<Generator>,
    total: u64,
    rate: u64,
    start: Instant,
    stream: u64,
) -> (Vec<Duration>, Vec<String>) {
    let mut rng = XorShift::seeded(stream + 1);
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let req = generator.request(i, &mut rng);
        let t0 = Instant::now();
        let result = match req {
            Request::Put(r) => kv.put(r).await.map(|_| ()),
            Request::Range(r) => kv.range(r).await.map(|_| ()),
            Request::Txn(r) => kv.txn(r).await.map(|_| ()),
        };
        let took = t0.elapsed();
        match result {
            Ok(()) => latencies.push(took),
            Err(s) => errors.push(format!("{:?}: {}", s.code(), s.message())),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (latencies, errors)
}

type ProgressHandle = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

/// A line on stderr rewritten every 500 ms, only when stderr is a terminal.
fn spawn_progress(done: Arc<AtomicU64>, total: u64) -> Option<ProgressHandle> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
                "\r{d}/{total} requests ({pct:5.1}%) {:6.1}s",
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

/// What a run measured.
struct Report {
    latencies: Vec<Duration>,
    errors: Vec<(String, u64)>,
    elapsed: Duration,
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
        let mut out = format!(
            "{name}: {} requests ok, {} errors\n\nSummary:\n  Total:\t{:.4} secs.\n  Slowest:\t{:.4} secs.\n  Fastest:\t{:.4} secs.\n  Average:\t{:.4} secs.\n  Stddev:\t{:.4} secs.\n  Requests/sec:\t{:.4}\n\nLatency distribution:\n",
            s.count,
            self.errors.iter().map(|(_, n)| n).sum::<u64>(),
            self.elapsed.as_secs_f64(),
            s.max,
            s.min,
            s.avg,
            s.stddev,
            s.rps
        );
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
        serde_json::json!({
            "workload": name,
            "endpoints": args.endpoints,
            "conns": args.conns,
            "clients": args.clients,
            "ok": s.count,
            "errors": self.errors.iter().map(|(m, n)| serde_json::json!({"message": m, "count": n})).collect::<Vec<_>>(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "requests_per_sec": (s.rps * 10.0).round() / 10.0,
            "latency_ms": latency,
        })
        .to_string()
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
        };
        let s = r.stats();
        assert_eq!(s.count, 100);
        assert!((s.percentiles[1].1 - 0.050).abs() < 1e-9);
        assert!((s.percentiles[5].1 - 0.100).abs() < 1e-9);
        assert!((s.min - 0.001).abs() < 1e-9 && (s.max - 0.100).abs() < 1e-9);
        assert!((s.rps - 100.0).abs() < 1e-9);
    }

    #[test]
    fn txn_put_keys_are_distinct_within_a_txn() {
        let g = Generator {
            workload: WorkloadSpec::TxnPut {
                key_size: 8,
                key_space: 100,
                ops: 4,
            },
            value: vec![1],
        };
        let Request::Txn(t) = g.request(3, &mut XorShift::seeded(1)) else {
            panic!("not a txn")
        };
        let keys: std::collections::BTreeSet<Vec<u8>> = t
            .success
            .iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => Some(p.key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(keys.len(), 4);
    }
}
