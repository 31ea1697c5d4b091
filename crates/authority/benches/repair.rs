//! Throughput of the `:authority` repair on a client stream held in memory, read in 16 KiB
//! buffers (what h2 asks for): gRPC requests that need no repair (tonic, kube-apiserver),
//! requests that do (etcdctl 3.4), and large DATA frames.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use coffer_authority::AuthorityRepair;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, typ: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], typ, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A connection of `requests` unary gRPC calls: HEADERS from an indexing encoder, then a
/// 100-byte DATA frame with END_STREAM.
fn grpc_stream(authority: &str, requests: u32) -> Vec<u8> {
    let mut enc = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    for i in 0..requests {
        let id = 2 * i + 1;
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"grpc-go/1.26.0"),
        ];
        frame(&mut out, 0x1, 0x4, id, &enc.encode(headers));
        frame(&mut out, 0x0, 0x1, id, &[7; 100]);
    }
    out
}

fn data_stream(bytes: usize) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    for chunk in vec![7u8; bytes].chunks(16_384) {
        frame(&mut out, 0x0, 0, 1, chunk);
    }
    out
}

/// Reads the whole stream through the repair; returns the byte count.
fn read_through(input: &[u8], buf: &mut [u8]) -> usize {
    let mut conn = AuthorityRepair::new(input);
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut conn).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return total,
            Poll::Ready(Ok(())) => total += rb.filled().len(),
            other => panic!("{other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("grpc_no_repair_1000", grpc_stream("127.0.0.1:2379", 1000)),
        (
            "grpc_repair_1000",
            grpc_stream("http://127.0.0.1:2379", 1000),
        ),
        ("data_4MiB", data_stream(4 << 20)),
    ];
    let mut group = c.benchmark_group("authority_repair");
    let mut buf = vec![0u8; 16 * 1024];
    for (name, input) in &cases {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(*name, |b| b.iter(|| read_through(input, &mut buf)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
