//! The cost of the per-record checksum: encoding and decoding (with verification) a record
//! with a 256-byte sealed value, the size the KV benchmarks write. Compare with a put's cost
//! through the store (tens of microseconds, README's benchmark tables).
//!
//! `cargo bench -p coffer-store --bench record`

use coffer_store::record::{Record, Rev};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn record(c: &mut Criterion) {
    let sealed = vec![0x5au8; 256 + 60];
    let rec = Record::Put {
        key: b"/registry/secrets/default/bench-0001",
        create_revision: 12,
        version: 3,
        lease: 0,
        sealed: &sealed,
    };
    let rev = Rev::new(123_456, 0);
    let mut buf = Vec::new();
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode with checksum", |b| {
        b.iter(|| rec.encode_into(rev, &mut buf).map(|()| buf.len()))
    });
    rec.encode_into(rev, &mut buf).ok();
    g.bench_function("decode and verify", |b| {
        b.iter(|| Record::decode(rev, &buf).map(|r| r.key().len()))
    });
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
