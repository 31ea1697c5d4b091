//! Fuzzes the HTTP/2 `:authority` repair: any client byte stream, read in pieces of any size
//! into buffers of any size, must give the same bytes (or the same failure) as when read in
//! one go, never a panic or a hang. (What the output means to h2 is checked by the property
//! tests in `crates/authority/src/tests.rs`.)
//!
//! Input: byte 0 picks the rule (bit 0) and whether the connection preface is prepended
//! (bit 1 clear), byte 1 the reader's piece size, byte 2 the caller's buffer size; the rest
//! is the stream. Seed: the etcdctl capture behind three bytes, e.g.
//! `mkdir -p corpus/authority_repair && (printf '\002\007\003';
//! cat ../crates/authority/src/testdata/etcdctl-3.4.23-endpoint-status.bin)
//! > corpus/authority_repair/etcdctl`, then build and run with the stable recipe in
//! `Cargo.toml` (`--bin authority_repair`, run with `-max_len=70000 corpus/authority_repair`).
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use coffer_authority::{socket_path_to_localhost, strip_scheme, AuthorityRepair, RepairRule};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Hands out its bytes `piece` at a time, pending before each piece.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
    pending_next: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if std::mem::replace(&mut self.pending_next, false) {
            return Poll::Pending;
        }
        self.pending_next = true;
        let n = self.piece.min(buf.remaining()).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Reads `conn` to the end (or its error) with buffers of `read_size` bytes.
fn read_all<S: AsyncRead + Unpin>(
    mut conn: AuthorityRepair<S>,
    read_size: usize,
) -> Result<Vec<u8>, String> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut tmp = vec![0u8; read_size];
    // Each poll either hands out bytes, consumes input, or ends: bound the loop anyway.
    for _ in 0..1_000_000 {
        let mut rb = ReadBuf::new(&mut tmp);
        match Pin::new(&mut conn).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => return Err(e.to_string()),
            Poll::Pending => {}
        }
    }
    panic!("no progress");
}

fuzz_target!(|data: &[u8]| {
    let [mode, piece, read_size, rest @ ..] = data else {
        return;
    };
    let rule: RepairRule = if mode & 1 == 0 {
        strip_scheme
    } else {
        socket_path_to_localhost
    };
    let mut input = Vec::new();
    if mode & 2 == 0 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(rest);
    let piece = usize::from(*piece) + 1;
    let read_size = usize::from(*read_size) * 64 + 1;

    let whole = read_all(AuthorityRepair::with_rule(&input[..], rule), input.len() + 1);
    let pieces = read_all(
        AuthorityRepair::with_rule(
            Pieces {
                data: &input,
                piece,
                pending_next: true,
            },
            rule,
        ),
        read_size,
    );
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert!(a == b, "output depends on how the input was split"),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("whole: {whole:?}, pieces: {pieces:?}"),
    }
});
