//! Throughput of each provider's write (`to_storage`) and read (`from_storage`) at 1 KiB and
//! 64 KiB, through the same prefix dispatch the keyspace uses. `scripts/bench-seal` compares
//! aesgcm with `openssl speed -evp aes-256-gcm` on the same machine.
//!
//! The `random` group prices one random value at the sizes the providers draw (aesgcm nonce
//! 12 B, aescbc IV 16 B, secretbox nonce 24 B, KMS v2 info 32 B): the kernel's `getrandom`
//! per value (what [`SystemRandom`] does) against a user-space ChaCha20 behind a mutex (what
//! it did before; kept here only as the yardstick).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use coffer_seal::config::model::{Key, KeysConfiguration, ProviderConfiguration};
use coffer_seal::key_service::{LocalKeyService, NoKmsClient};
use coffer_seal::providers::{build_chain, Transformer};
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{Keyspace, SecretBytes};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 2] = [1024, 64 * 1024];
const ETCD_KEY: &[u8] = b"/registry/secrets/default/db-creds";

fn keys(byte: u8) -> KeysConfiguration {
    KeysConfiguration {
        keys: vec![Key {
            name: "key1".into(),
            secret: SecretBytes::new(vec![byte; 32]),
        }],
    }
}

/// A provider under test: its name, a write and a read.
type Subject = (
    &'static str,
    Box<dyn Fn(&[u8]) -> Vec<u8>>,
    Box<dyn Fn(&[u8]) -> Vec<u8>>,
);

fn bench(c: &mut Criterion) {
    let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().expect("OS randomness"));
    let mut subjects: Vec<Subject> = Vec::new();
    for (name, p) in [
        ("identity", ProviderConfiguration::Identity),
        ("aescbc", ProviderConfiguration::AesCbc(keys(1))),
        ("aesgcm", ProviderConfiguration::AesGcm(keys(2))),
        ("secretbox", ProviderConfiguration::Secretbox(keys(3))),
    ] {
        let chain = Arc::new(build_chain(&[p], &NoKmsClient, &rng).expect("chain"));
        let (w, r) = (chain.clone(), chain);
        subjects.push((
            name,
            Box::new(move |pt| w.to_storage(pt, ETCD_KEY).expect("seal")),
            Box::new(move |st| r.from_storage(st, ETCD_KEY).expect("open").plaintext),
        ));
    }
    let svc = LocalKeyService::new(&SecretBytes::new(vec![4; 32]), rng.clone()).expect("kek");
    let ks = Arc::new(Keyspace::default_only(Arc::new(svc), rng.clone()).expect("keyspace"));
    let (w, r) = (ks.clone(), ks);
    subjects.push((
        "kmsv2",
        Box::new(move |pt| w.seal(ETCD_KEY, pt).expect("seal")),
        Box::new(move |st| r.open(ETCD_KEY, st).expect("open").plaintext),
    ));

    for (op, is_write) in [("encrypt", true), ("decrypt", false)] {
        let mut group = c.benchmark_group(op);
        for size in SIZES {
            let plaintext = vec![0x5au8; size];
            group.throughput(Throughput::Bytes(size as u64));
            for (name, seal, open) in &subjects {
                let stored = seal(&plaintext);
                assert_eq!(open(&stored), plaintext);
                group.bench_with_input(BenchmarkId::new(*name, size), &size, |b, _| {
                    if is_write {
                        b.iter(|| seal(black_box(&plaintext)))
                    } else {
                        b.iter(|| open(black_box(&stored)))
                    }
                });
            }
        }
        group.finish();
    }
}

/// The generator `SystemRandom` used to be: ChaCha20 seeded once from the OS, behind a mutex.
struct UserSpaceChaCha(Mutex<rand_chacha::ChaCha20Rng>);

impl UserSpaceChaCha {
    fn fill(&self, buf: &mut [u8]) {
        use rand_core::RngCore as _;
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fill_bytes(buf);
    }
}

fn random(c: &mut Criterion) {
    use rand_core::SeedableRng as _;
    let kernel = SystemRandom::new().expect("OS randomness");
    let chacha = UserSpaceChaCha(Mutex::new(
        rand_chacha::ChaCha20Rng::from_rng(rand_core::OsRng).expect("seed"),
    ));
    let mut group = c.benchmark_group("random");
    for size in [12usize, 16, 24, 32] {
        let mut buf = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("kernel-getrandom", size), &size, |b, _| {
            b.iter(|| kernel.fill(black_box(&mut buf)).expect("getrandom"))
        });
        group.bench_with_input(BenchmarkId::new("user-chacha20", size), &size, |b, _| {
            b.iter(|| chacha.fill(black_box(&mut buf)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, random);
criterion_main!(benches);
