//! The key-value workloads of `coffer bench`: `put`, `range` and `txn-put`.
//!
//! `--clients` tasks share `--conns` gRPC connections (client i uses connection i mod conns).
//! Every request is timed on its own; a failed request counts as an error and its latency is
//! not recorded. `--rate` spaces request i at `i / rate` seconds after the start.

use super::Conn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_proto::kv_client::KvClient;
use coffer_proto::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::{
    count_errors, dial_all, random_bytes, spawn_progress, stop_progress, varint_key, Args, Report,
    Workload, XorShift,
};

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
    /// A prefix put before every key (Coffer's own: lets a user whose role holds one prefix
    /// run the benchmark with auth on).
    #[arg(long, default_value = "")]
    pub key_prefix: String,
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

/// One prepared request.
#[derive(Clone)]
enum Request {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

/// Builds request number `i` of the workload.
pub(super) struct Generator {
    workload: WorkloadSpec,
    value: Vec<u8>,
}

enum WorkloadSpec {
    Put {
        prefix: Vec<u8>,
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

impl Generator {
    fn request(&self, i: u64, rng: &mut XorShift) -> Request {
        match &self.workload {
            WorkloadSpec::Put {
                prefix,
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
                    key: [prefix.as_slice(), &varint_key(n, *key_size)].concat(),
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

/// Checks the flags of a key-value workload and returns its name, total, rate and generator.
pub(super) fn prepare(workload: &Workload) -> anyhow::Result<(&'static str, u64, u64, Generator)> {
    Ok(match workload {
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
                        prefix: p.key_prefix.as_bytes().to_vec(),
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
        Workload::Watch(_) | Workload::LeaseKeepalive(_) => {
            bail!("internal: not a key-value workload")
        }
    })
}

/// Runs `total` requests over `--clients` tasks.
pub(super) async fn drive(
    args: &Args,
    total: u64,
    rate: u64,
    generator: Generator,
) -> anyhow::Result<Report> {
    let generator = Arc::new(generator);
    let channels = dial_all(args).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(done.clone(), total, "requests");
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
        count_errors(&mut errors, errs);
    }
    let elapsed = start.elapsed();
    stop_progress(progress);
    let failed = latencies.is_empty() && total > 0;
    Ok(Report {
        latencies,
        errors,
        elapsed,
        unit: "requests",
        extra: Vec::new(),
        failed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    mut kv: KvClient<Conn>,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
