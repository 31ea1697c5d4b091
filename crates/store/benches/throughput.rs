//! Put and linearizable-range throughput of the embedded store with the real keyspace
//! (KMS v2 default-key sealing), 1 and 64 concurrent clients, plus two references on the same
//! disk: a raw append + fdatasync loop (the floor for one durable write), and, when
//! `ETCD_ENDPOINT` is set (e.g. `http://127.0.0.1:23790`), the same loads against that etcd
//! over gRPC. Run: `cargo bench -p coffer-store --bench throughput`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::{PutRequest, RangeRequest};
use coffer_store::{Backend, EmbeddedStore, StoreOptions};

const VALUE: usize = 256;

fn report(what: &str, n: usize, clients: usize, elapsed: Duration) {
    println!(
        "{what:<34} clients={clients:<3} ops={n:<6} {:>9.0} ops/s  avg latency {:>7.3} ms",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 * clients as f64 / n as f64
    );
}

async fn run<F, Fut>(clients: usize, per: usize, f: F) -> Duration
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                f(c, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn keyspace() -> Arc<coffer_seal::Keyspace> {
    let rng: Arc<dyn coffer_seal::RandomSource> =
        Arc::new(coffer_seal::SystemRandom::new().unwrap());
    let service = coffer_seal::LocalKeyService::new(
        &coffer_seal::SecretBytes::new(vec![7u8; 32]),
        Arc::clone(&rng),
    )
    .unwrap();
    Arc::new(
        coffer_seal::Keyspace::new(
            &coffer_seal::config::model::EncryptionConfiguration { resources: vec![] },
            "/registry",
            Some(Arc::new(service)),
            &coffer_seal::key_service::NoKmsClient,
            rng,
        )
        .unwrap(),
    )
}

fn put_req(c: usize, i: usize) -> PutRequest {
    PutRequest {
        key: format!("{c:03}{i:05}").into_bytes(),
        value: vec![b'v'; VALUE],
        ..Default::default()
    }
}

async fn store_loads(dir: &std::path::Path) {
    let s = Arc::new(EmbeddedStore::open(dir, keyspace(), StoreOptions::default()).unwrap());
    for (clients, per) in [(1usize, 500usize), (64, 300)] {
        let st = Arc::clone(&s);
        let before = s.commit_count();
        let t = run(clients, per, move |c, i| {
            let st = Arc::clone(&st);
            async move {
                st.put(&coffer_store::Caller::Internal, put_req(c, i))
                    .await
                    .unwrap();
            }
        })
        .await;
        report("coffer-store put (sealed)", clients * per, clients, t);
        println!(
            "{:<34} {} commits for {} puts",
            "",
            s.commit_count() - before,
            clients * per
        );
    }
    for (clients, per) in [(1usize, 20000usize), (64, 2000)] {
        let st = Arc::clone(&s);
        let t = run(clients, per, move |c, _| {
            let st = Arc::clone(&st);
            async move {
                let r = st
                    .range(
                        &coffer_store::Caller::Internal,
                        RangeRequest {
                            key: format!("{:03}00001", c % 64).into_bytes(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(r.kvs.len(), 1);
            }
        })
        .await;
        report("coffer-store range (opened)", clients * per, clients, t);
    }
}

fn fdatasync_floor(dir: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("wal"))
        .unwrap();
    let rec = vec![0u8; 300];
    let n = 500;
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&rec).unwrap();
        f.sync_data().unwrap();
    }
    report("raw append + fdatasync", n, 1, start.elapsed());
}

async fn etcd_loads(endpoint: String) {
    use coffer_proto::kv_client::KvClient;
    let ch = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (clients, per) in [(1usize, 500usize), (64, 300)] {
        let ch = ch.clone();
        let t = run(clients, per, move |c, i| {
            let mut kv = KvClient::new(ch.clone());
            async move {
                kv.put(put_req(c, i)).await.unwrap();
            }
        })
        .await;
        report("etcd put (gRPC, loopback)", clients * per, clients, t);
    }
    for (clients, per) in [(1usize, 5000usize), (64, 500)] {
        let ch = ch.clone();
        let t = run(clients, per, move |c, _| {
            let mut kv = KvClient::new(ch.clone());
            async move {
                kv.range(RangeRequest {
                    key: format!("{:03}00001", c % 64).into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        })
        .await;
        report("etcd range (gRPC, loopback)", clients * per, clients, t);
    }
}

fn main() {
    let dir = std::env::var("BENCH_DIR").map_or_else(
        |_| tempfile::tempdir().unwrap(),
        |d| tempfile::tempdir_in(d).unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    fdatasync_floor(dir.path());
    rt.block_on(store_loads(dir.path()));
    if let Ok(ep) = std::env::var("ETCD_ENDPOINT") {
        rt.block_on(etcd_loads(ep));
    }
}
