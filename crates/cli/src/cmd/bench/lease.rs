//! `coffer bench lease-keepalive`: each of `--clients` clients grants one lease with TTL 100
//! (as etcd's tool does), opens one `LeaseKeepAlive` stream and renews its lease over it, one
//! request at a time, until `--total` keep-alives have been sent by all clients together. The
//! latency of a keep-alive is from just before its request is queued to the arrival of its
//! response; a response with TTL ≤ 0 (lease unknown or expired) counts as an error. The leases
//! are revoked at the end.

use super::Conn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use tokio::sync::mpsc;

use super::{count_errors, dial_all, spawn_progress, stop_progress, Args, Report};

/// TTL of the leases (etcd's tool uses 100 s).
const LEASE_TTL: i64 = 100;

/// Flags of `bench lease-keepalive`.
#[derive(Debug, clap::Args)]
pub struct LeaseKeepaliveArgs {
    /// Number of keep-alive requests (all clients together).
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
}

/// Runs the workload.
pub(super) async fn drive(args: &Args, l: &LeaseKeepaliveArgs) -> anyhow::Result<Report> {
    let channels = dial_all(args).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(done.clone(), l.total, "keep-alives");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let client = LeaseClient::new(channels[c % channels.len()].clone());
        tasks.push(tokio::spawn(client_loop(
            client,
            next.clone(),
            done.clone(),
            l.total,
        )));
    }
    let mut latencies = Vec::with_capacity(l.total as usize);
    let mut errors = Vec::new();
    for t in tasks {
        let (lat, errs) = t.await.context("a keep-alive client task failed")?;
        latencies.extend(lat);
        count_errors(&mut errors, errs);
    }
    let elapsed = start.elapsed();
    stop_progress(progress);
    let failed = latencies.is_empty() && l.total > 0;
    Ok(Report {
        latencies,
        errors,
        elapsed,
        unit: "requests",
        extra: vec![("lease_ttl", LEASE_TTL.into())],
        failed,
    })
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One client: grant, keep-alives over one stream, revoke.
async fn client_loop(
    mut client: LeaseClient<Conn>,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    total: u64,
) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let id = match client
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL,
            id: 0,
        })
        .await
    {
        Ok(r) => r.into_inner().id,
        Err(s) => {
            errors.push(format!("grant: {}", status_text(&s)));
            return (latencies, errors);
        }
    };
    // Requests are queued before the call is made: a server may send the response headers
    // only with its first message.
    let (tx, mut rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
    let mut requests = Some(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut inbound = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let t0 = Instant::now();
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            errors.push("keep-alive stream closed".to_owned());
            break;
        }
        if let Some(reqs) = requests.take() {
            match client.lease_keep_alive(reqs).await {
                Ok(r) => inbound = Some(r.into_inner()),
                Err(s) => {
                    errors.push(format!("keep-alive: {}", status_text(&s)));
                    break;
                }
            }
        }
        let Some(stream) = inbound.as_mut() else {
            break;
        };
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl > 0 => latencies.push(t0.elapsed()),
            Ok(Some(_)) => errors.push("keep-alive: lease not found (TTL 0)".to_owned()),
            Ok(None) => {
                errors.push("keep-alive: stream ended by the server".to_owned());
                break;
            }
            Err(s) => {
                errors.push(format!("keep-alive: {}", status_text(&s)));
                break;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    drop(tx);
    drop(inbound);
    let _ = client.lease_revoke(LeaseRevokeRequest { id }).await;
    (latencies, errors)
}
