//! Tests for the `:authority` repairing connection wrapper.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::*;

/// The bytes etcdctl 3.4.23 sent for `endpoint status --endpoints http://127.0.0.1:34993`
/// to a listener that answered with an empty SETTINGS frame and a SETTINGS ack: preface,
/// SETTINGS, SETTINGS ack, HEADERS (HPACK with Huffman strings and incremental indexing,
/// `:authority` = `http://127.0.0.1:34993`), DATA, and the RST_STREAM(CANCEL) of its timeout.
const ETCDCTL_STATUS: &[u8] = include_bytes!("testdata/etcdctl-3.4.23-endpoint-status.bin");

/// A reader that hands out its bytes in chunks of at most `chunk` bytes, returning Pending
/// once before every chunk, to exercise every partial-frame state.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    pending_next: bool,
}

impl Trickle {
    fn new(data: Vec<u8>, chunk: usize) -> Self {
        Trickle {
            data,
            pos: 0,
            chunk,
            pending_next: true,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending_next {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

async fn rewrite_with_chunks(input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    let mut conn = AuthorityRepair::new(Trickle::new(input.to_vec(), chunk));
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await?;
    Ok(out)
}

async fn rewrite(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut conn = AuthorityRepair::new(input);
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await?;
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    typ: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn frame(typ: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut v = vec![len[1], len[2], len[3], typ, flags];
    v.extend_from_slice(&stream_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits a client byte stream (preface first) into frames; panics on truncation.
fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE, "starts with the preface");
    let mut p = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !p.is_empty() {
        assert!(p.len() >= 9, "truncated frame header");
        let len = usize::from(p[0]) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]);
        assert!(p.len() >= 9 + len, "truncated frame payload");
        frames.push(Frame {
            typ: p[3],
            flags: p[4],
            stream_id: u32::from_be_bytes([p[5], p[6], p[7], p[8]]),
            payload: p[9..9 + len].to_vec(),
        });
        p = &p[9 + len..];
    }
    frames
}

/// Header blocks as the server will see them: decoded in order by one decoder, like h2's
/// for the connection. With `literal_from = Some(n)`, checks that every block from the n-th
/// on is made only of literals without indexing (so it neither uses nor changes the server's
/// dynamic table) and that each such block also decodes with a fresh decoder.
fn server_view(frames: &[Frame], literal_from: Option<usize>) -> Vec<(u32, Vec<(String, String)>)> {
    let mut server = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut current: Option<(u32, Vec<u8>)> = None;
    for f in frames {
        match f.typ {
            TYPE_HEADERS => {
                assert!(current.is_none());
                assert_eq!(f.flags & FLAG_PADDED, 0, "padding is removed");
                assert!(f.payload.len() <= OUT_FRAME_SIZE);
                let start = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                current = Some((f.stream_id, f.payload[start..].to_vec()));
            }
            TYPE_CONTINUATION => {
                assert!(f.payload.len() <= OUT_FRAME_SIZE);
                let (id, block) = current.as_mut().expect("CONTINUATION after HEADERS");
                assert_eq!(*id, f.stream_id);
                block.extend_from_slice(&f.payload);
            }
            _ => {
                assert!(current.is_none(), "header block interrupted");
                continue;
            }
        }
        if f.flags & FLAG_END_HEADERS != 0 {
            let (id, block) = current.take().unwrap();
            let decoded = server.decode(&block).unwrap();
            if literal_from.is_some_and(|n| blocks.len() >= n) {
                assert_eq!(
                    literal_fields(&block),
                    decoded.len(),
                    "one literal per field"
                );
                assert_eq!(loona_hpack::Decoder::new().decode(&block).unwrap(), decoded);
            }
            let decoded: Vec<(String, String)> = decoded
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            blocks.push((id, decoded));
        }
    }
    assert!(current.is_none(), "unterminated header block");
    blocks
}

/// Walks a block checking each representation is 0x00 (literal without indexing, new
/// name) with raw strings; returns the field count.
fn literal_fields(mut block: &[u8]) -> usize {
    fn int7(p: &mut &[u8]) -> usize {
        let first = p[0];
        assert_eq!(first & 0x80, 0, "no Huffman");
        *p = &p[1..];
        let mut v = usize::from(first & 0x7f);
        if v < 127 {
            return v;
        }
        let mut shift = 0;
        loop {
            let b = p[0];
            *p = &p[1..];
            v += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return v;
            }
        }
    }
    let mut n = 0;
    while !block.is_empty() {
        assert_eq!(block[0], 0x00, "literal without indexing, new name");
        block = &block[1..];
        for _ in 0..2 {
            let len = int7(&mut block);
            block = &block[len..];
        }
        n += 1;
    }
    n
}

fn client_stream(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend_from_slice(&frame(0x4, 0, 0, &[])); // SETTINGS
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn get(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn strip_scheme_rule() {
    let r = |s: &str| strip_scheme(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
    assert_eq!(
        r("http://127.0.0.1:2379").as_deref(),
        Some("127.0.0.1:2379")
    );
    assert_eq!(
        r("https://etcd-0.example:2379").as_deref(),
        Some("etcd-0.example:2379")
    );
    assert_eq!(r("http://[::1]:2379/").as_deref(), Some("[::1]:2379"));
    assert_eq!(r("https://host/some/path?q=1").as_deref(), Some("host"));
    assert_eq!(r("unix+tls://h:1").as_deref(), Some("h:1"));
    // Valid authorities stay as they are.
    assert_eq!(r("127.0.0.1:2379"), None);
    assert_eq!(r("localhost"), None);
    assert_eq!(r("user@host:1"), None);
    // Nothing usable: left for h2 to judge.
    assert_eq!(r("http://"), None);
    assert_eq!(r("://host:1"), None);
    assert_eq!(r("ht tp://host:1"), None);
    assert_eq!(r("http://bad host:1"), None);
    assert_eq!(r("/var/run/kms.sock"), None);
}

#[tokio::test]
async fn etcdctl_capture_gets_a_valid_authority() {
    let out = rewrite(ETCDCTL_STATUS).await.unwrap();
    let before = parse_frames(ETCDCTL_STATUS);
    let after = parse_frames(&out);
    assert_eq!(before.len(), after.len());
    // Every non-header frame is passed through byte for byte, in order.
    for (b, a) in before.iter().zip(&after) {
        if b.typ != TYPE_HEADERS {
            assert_eq!(b, a);
        } else {
            assert_eq!((b.flags, b.stream_id), (a.flags, a.stream_id));
        }
    }
    // The original block really has the scheme in its authority.
    let original = before.iter().find(|f| f.typ == TYPE_HEADERS).unwrap();
    let orig = loona_hpack::Decoder::new()
        .decode(&original.payload)
        .unwrap();
    let orig_auth = orig.iter().find(|(n, _)| n == b":authority").unwrap();
    assert_eq!(orig_auth.1, b"http://127.0.0.1:34993");
    assert!(http::uri::Authority::try_from(orig_auth.1.as_slice()).is_err());

    let blocks = server_view(&after, Some(0));
    assert_eq!(blocks.len(), 1);
    let (id, headers) = &blocks[0];
    assert_eq!(*id, 1);
    assert_eq!(
        get(headers, ":authority").as_deref(),
        Some("127.0.0.1:34993")
    );
    assert_eq!(
        get(headers, ":path").as_deref(),
        Some("/etcdserverpb.Maintenance/Status")
    );
    assert_eq!(get(headers, ":method").as_deref(), Some("POST"));
    assert_eq!(
        get(headers, "content-type").as_deref(),
        Some("application/grpc")
    );
    // Apart from the authority, the same fields in the same order.
    assert_eq!(orig.len(), headers.len());
    for ((on, ov), (n, v)) in orig.iter().zip(headers) {
        assert_eq!(on, n.as_bytes());
        if n != ":authority" {
            assert_eq!(ov, v.as_bytes());
        }
    }
}

#[tokio::test]
async fn byte_by_byte_reads_give_the_same_output() {
    let whole = rewrite(ETCDCTL_STATUS).await.unwrap();
    for chunk in [1, 2, 3, 7, 9, 10, 64] {
        let trickled = rewrite_with_chunks(ETCDCTL_STATUS, chunk).await.unwrap();
        assert_eq!(trickled, whole, "chunk size {chunk}");
    }
}

/// RFC 7541 Appendix C.4: three requests with Huffman-coded strings whose later blocks
/// refer to dynamic-table entries the earlier ones inserted.
#[tokio::test]
async fn rfc7541_c4_requests_with_huffman_and_dynamic_table() {
    let c41 = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
    let c42 = hex::decode("828684be5886a8eb10649cbf").unwrap();
    let c43 = hex::decode("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf").unwrap();
    let input = client_stream(&[
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &c41),
        frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &c42),
        frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 5, &c43),
    ]);
    let out = rewrite(&input).await.unwrap();
    // Nothing to repair: the connection passes through byte for byte.
    assert_eq!(out, input);
    let blocks = server_view(&parse_frames(&out), None);
    let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        blocks[0].1,
        s(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com")
        ])
    );
    assert_eq!(
        blocks[1].1,
        s(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache")
        ])
    );
    assert_eq!(
        blocks[2].1,
        s(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value")
        ])
    );
}

/// Many requests from an indexing encoder (every repeat is a dynamic-table reference,
/// the table overflows and evicts): first 60 with valid authorities (passed through
/// unchanged, so h2's table fills up), then some with a scheme (from the first of those on,
/// every block is re-encoded as literals, and later blocks still decode correctly).
#[tokio::test]
async fn long_connection_with_dynamic_table_eviction() {
    const FIRST_REPAIR: u32 = 60;
    let mut enc = loona_hpack::Encoder::new();
    let mut parts = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let stream_id = 2 * i + 1;
        let authority = if i >= FIRST_REPAIR && i % 3 == 0 {
            format!("http://10.0.0.{}:2379", i % 7)
        } else {
            format!("10.0.0.{}:2379", i % 7)
        };
        let path = format!("/etcdserverpb.KV/Range{}", i % 11);
        let filler = "x".repeat((i as usize * 37) % 900);
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"x-filler", filler.as_bytes()),
        ];
        let block = enc.encode(headers);
        parts.push(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, &block));
        parts.push(frame(
            0x0,
            FLAG_END_STREAM,
            stream_id,
            &[0, 0, 0, 0, 1, i as u8],
        ));
        expected.push((stream_id, authority.replace("http://", ""), path, filler));
    }
    let input = client_stream(&parts);
    let out = rewrite_with_chunks(&input, 1000).await.unwrap();
    let frames = parse_frames(&out);
    let blocks = server_view(&frames, Some(FIRST_REPAIR as usize));
    assert_eq!(blocks.len(), expected.len());
    // Until the first repair the bytes are the client's own.
    let first_repair_frame = parse_frames(&input)
        .iter()
        .position(|f| f.typ == TYPE_HEADERS && f.stream_id == 2 * FIRST_REPAIR + 1)
        .unwrap();
    assert_eq!(
        frames[..first_repair_frame],
        parse_frames(&input)[..first_repair_frame]
    );
    for ((id, headers), (eid, auth, path, filler)) in blocks.iter().zip(&expected) {
        assert_eq!(id, eid);
        assert_eq!(get(headers, ":authority").as_ref(), Some(auth));
        assert_eq!(get(headers, ":path").as_ref(), Some(path));
        assert_eq!(get(headers, "x-filler").as_ref(), Some(filler));
    }
    // DATA frames unchanged.
    let data: Vec<_> = frames.iter().filter(|f| f.typ == 0).collect();
    assert_eq!(data.len(), 200);
    for (i, f) in data.iter().enumerate() {
        assert_eq!(f.payload, [0, 0, 0, 0, 1, i as u8]);
    }
}

#[tokio::test]
async fn padding_priority_and_continuation_in_and_out() {
    let mut enc = loona_hpack::Encoder::new();
    let big = "v".repeat(40_000);
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":authority", b"https://example.test:443"),
        (b"x-big", big.as_bytes()),
    ];
    let block = enc.encode(headers);
    // HEADERS with padding and priority carrying the first 100 bytes, then two CONTINUATIONs.
    let mut payload = vec![3u8]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 1, 15]); // exclusive, depends on 1, weight 15
    payload.extend_from_slice(&block[..100]);
    payload.extend_from_slice(&[0, 0, 0]);
    let input = client_stream(&[
        frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &payload,
        ),
        frame(TYPE_CONTINUATION, 0, 3, &block[100..16_000]),
        frame(TYPE_CONTINUATION, 0, 3, &block[16_000..32_000]),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[32_000..]),
    ]);
    let frames = parse_frames(&rewrite(&input).await.unwrap());
    let first = &frames[1];
    assert_eq!(first.typ, TYPE_HEADERS);
    assert_eq!(first.flags, FLAG_PRIORITY | FLAG_END_STREAM);
    assert_eq!(&first.payload[..5], &[0x80, 0, 0, 1, 15]);
    assert_eq!(first.payload.len(), OUT_FRAME_SIZE);
    assert!(frames[2..].iter().all(|f| f.typ == TYPE_CONTINUATION));
    assert_eq!(frames.last().unwrap().flags, FLAG_END_HEADERS);
    let blocks = server_view(&frames, Some(0));
    assert_eq!(
        get(&blocks[0].1, ":authority").as_deref(),
        Some("example.test:443")
    );
    assert_eq!(get(&blocks[0].1, "x-big"), Some(big));
}

#[tokio::test]
async fn not_http2_is_passed_through() {
    let input = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".repeat(100);
    assert_eq!(rewrite(&input).await.unwrap(), input);
    assert_eq!(rewrite_with_chunks(&input, 5).await.unwrap(), input);
    assert_eq!(rewrite(b"PRI").await.unwrap(), b"PRI");
}

#[tokio::test]
async fn big_data_frames_pass_through_unchanged() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut parts = Vec::new();
    for chunk in body.chunks(16_384) {
        parts.push(frame(0x0, 0, 1, chunk));
    }
    parts.push(frame(0x3, 0, 1, &[0, 0, 0, 8])); // RST_STREAM
    let input = client_stream(&parts);
    assert_eq!(rewrite(&input).await.unwrap(), input);
    assert_eq!(rewrite_with_chunks(&input, 4093).await.unwrap(), input);
}

async fn expect_invalid(input: Vec<u8>, what: &str) {
    let err = rewrite(&input).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}");
    let msg = err.to_string();
    assert!(msg.contains(what), "{msg:?} should mention {what:?}");
}

#[tokio::test]
async fn malformed_input_fails_the_connection() {
    // Index 70 does not exist (static table has 61 entries, the dynamic one is empty).
    expect_invalid(
        client_stream(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])]),
        "HPACK decoding failed",
    )
    .await;
    // A header block interrupted by a DATA frame.
    expect_invalid(
        client_stream(&[frame(TYPE_HEADERS, 0, 1, &[0x82]), frame(0, 0, 1, b"x")]),
        "interrupted",
    )
    .await;
    // CONTINUATION for another stream.
    expect_invalid(
        client_stream(&[
            frame(TYPE_HEADERS, 0, 1, &[0x82]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]),
        ]),
        "different stream",
    )
    .await;
    // Padding longer than the frame.
    expect_invalid(
        client_stream(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[9, 0x82],
        )]),
        "padding",
    )
    .await;
    // A dynamic table size update above the bound.
    let mut upd = Vec::new();
    encode_int(&mut upd, 0x20, 5, MAX_DYNAMIC_TABLE + 1);
    upd.push(0x82);
    expect_invalid(
        client_stream(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &upd)]),
        "HPACK decoding failed",
    )
    .await;
    // A decoded list over the limit: one 4000-byte entry referenced 300 times.
    let mut enc = loona_hpack::Encoder::new();
    let v = "z".repeat(4000);
    let headers: Vec<(&[u8], &[u8])> = vec![(b"x-a", v.as_bytes())];
    let mut block = enc.encode(headers);
    block.extend(std::iter::repeat_n(0xbe, 300));
    expect_invalid(
        client_stream(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]),
        "exceeds",
    )
    .await;
}

#[tokio::test]
async fn truncated_stream_ends_cleanly() {
    let cut = &ETCDCTL_STATUS[..60];
    let out = rewrite(cut).await.unwrap();
    // The preface and complete frames come out; the partial HEADERS is forwarded raw.
    assert_eq!(out, cut);
}

#[test]
fn hpack_integers_round_trip() {
    // 7-bit prefix, as a string length: a literal whose value has `len` bytes.
    for len in [0, 1, 126, 127, 128, 1337, 1 << 20] {
        let mut b = Vec::new();
        encode_literal(&mut b, b"a", &vec![b'q'; len]);
        let d = loona_hpack::Decoder::new().decode(&b).unwrap();
        assert_eq!(d, vec![(b"a".to_vec(), vec![b'q'; len])]);
    }
    // 5-bit prefix, as a dynamic table size update before an indexed field.
    for size in [0, 30, 31, 32, 1337, 4096] {
        let mut b = Vec::new();
        encode_int(&mut b, 0x20, 5, size);
        b.push(0x82);
        let mut dec = loona_hpack::Decoder::new();
        dec.set_max_allowed_table_size(size);
        assert!(dec.decode(&b).is_ok(), "size {size}");
        let mut dec = loona_hpack::Decoder::new();
        dec.set_max_allowed_table_size(size.saturating_sub(1));
        assert_eq!(
            dec.decode(&b).is_ok(),
            size == 0,
            "size {size} over the limit"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes after the preface: an error or some output, never a panic or hang.
    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&bytes);
        let _ = rt.block_on(rewrite(&input));
    }

    /// Arbitrary HPACK fragments in well-formed HEADERS frames, across several blocks so
    /// dynamic-table state carries over.
    #[test]
    fn arbitrary_header_blocks_never_panic(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
        flags in any::<u8>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let parts: Vec<Vec<u8>> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| frame(TYPE_HEADERS, flags | FLAG_END_HEADERS, 2 * i as u32 + 1, b))
            .collect();
        let _ = rt.block_on(rewrite(&client_stream(&parts)));
    }

    /// Whatever a well-behaved encoder sends decodes on the server side to the same list,
    /// with only the authority repaired.
    #[test]
    fn encoded_lists_survive(
        lists in proptest::collection::vec(
            proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..8), 1..8),
        chunk in 1usize..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut enc = loona_hpack::Encoder::new();
        let mut parts = Vec::new();
        for (i, list) in lists.iter().enumerate() {
            let mut headers: Vec<(&[u8], &[u8])> = vec![(b":authority", b"http://h:1")];
            headers.extend(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            parts.push(frame(TYPE_HEADERS, FLAG_END_HEADERS, 2 * i as u32 + 1, &enc.encode(headers)));
        }
        let out = rt.block_on(rewrite_with_chunks(&client_stream(&parts), chunk)).unwrap();
        let blocks = server_view(&parse_frames(&out), Some(0));
        prop_assert_eq!(blocks.len(), lists.len());
        for ((_, got), list) in blocks.iter().zip(&lists) {
            prop_assert_eq!(&got[0], &(":authority".to_string(), "h:1".to_string()));
            prop_assert_eq!(&got[1..], &list[..]);
        }
    }
}

/// A decoded header list.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Our decoder against the reference codec, field by field.
fn ours(dec: &mut hpack::Decoder, block: &[u8]) -> Result<Fields, hpack::HpackError> {
    let mut v = Vec::new();
    dec.decode(block, |n, value| v.push((n.to_vec(), value.to_vec())))?;
    Ok(v)
}

#[test]
fn static_table_matches_the_reference() {
    for index in 1..=61u8 {
        let block = [0x80 | index];
        let reference = loona_hpack::Decoder::new().decode(&block).unwrap();
        let mine = ours(&mut hpack::Decoder::new(MAX_DYNAMIC_TABLE), &block).unwrap();
        assert_eq!(mine, reference, "static index {index}");
    }
    assert!(ours(&mut hpack::Decoder::new(MAX_DYNAMIC_TABLE), &[0x80 | 62]).is_err());
    assert!(ours(&mut hpack::Decoder::new(MAX_DYNAMIC_TABLE), &[0x80]).is_err());
}

/// RFC 7541 §4.4: an entry larger than the whole table empties it; and §4.3: a size
/// update evicts. Checked against the reference, block by block.
#[test]
fn table_eviction_edges_match_the_reference() {
    let mut insert_small = vec![0x40];
    encode_str(&mut insert_small, b"a");
    encode_str(&mut insert_small, b"b");
    let mut shrink_then_insert_big = Vec::new();
    encode_int(&mut shrink_then_insert_big, 0x20, 5, 60);
    shrink_then_insert_big.push(0x40);
    encode_str(&mut shrink_then_insert_big, b"n");
    encode_str(&mut shrink_then_insert_big, &[b'v'; 40]);
    let mut shrink_to_zero = Vec::new();
    encode_int(&mut shrink_to_zero, 0x20, 5, 0);
    shrink_to_zero.push(0x82);
    for blocks in [
        vec![insert_small.clone(), shrink_then_insert_big, vec![0xbe]],
        vec![insert_small.clone(), vec![0xbe], shrink_to_zero, vec![0xbe]],
    ] {
        let mut reference = loona_hpack::Decoder::new();
        let mut mine = hpack::Decoder::new(MAX_DYNAMIC_TABLE);
        for block in &blocks {
            let r = reference.decode(block);
            let m = ours(&mut mine, block);
            assert_eq!(m.as_ref().ok(), r.as_ref().ok(), "{block:x?}");
        }
        // The last block refers to an entry that must be gone.
        assert!(ours(&mut mine, &[0xbe]).is_err());
    }
}

#[test]
fn huffman_every_symbol_matches_the_reference() {
    // RFC 7541 C.4.1: "www.example.com".
    let mut out = Vec::new();
    hpack::huffman_decode(&hex::decode("f1e3c2e5f23a6ba0ab90f4ff").unwrap(), &mut out).unwrap();
    assert_eq!(out, b"www.example.com");
    // Every symbol: encode all 256 byte values with codes derived canonically from our
    // length table; the reference decoder (which has the RFC's explicit codes) must read
    // them back, and so must ours.
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let encoded = huffman_encode(&all);
    let mut block = vec![0x00, 0x01, b'a'];
    encode_int(&mut block, 0x80, 7, encoded.len());
    block.extend_from_slice(&encoded);
    let reference = loona_hpack::Decoder::new().decode(&block).unwrap();
    assert_eq!(reference[0].1, all);
    let mut out = Vec::new();
    hpack::huffman_decode(&encoded, &mut out).unwrap();
    assert_eq!(out, all);
    // A real Go encoder's block (Huffman strings, incremental indexing).
    let frames = parse_frames(ETCDCTL_STATUS);
    let block = &frames
        .iter()
        .find(|f| f.typ == TYPE_HEADERS)
        .unwrap()
        .payload;
    let reference = loona_hpack::Decoder::new().decode(block).unwrap();
    let mine = ours(&mut hpack::Decoder::new(MAX_DYNAMIC_TABLE), block).unwrap();
    assert_eq!(mine, reference);
    // Malformed: EOS inside (30 one bits), padding of zeros, padding longer than 7 bits.
    for bad in [&[0xff, 0xff, 0xff, 0xfc][..], &[0x00], &[0x1f, 0xff]] {
        let mut out = Vec::new();
        assert!(hpack::huffman_decode(bad, &mut out).is_err(), "{bad:x?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes: our Huffman decoder and the reference agree on success and result.
    #[test]
    fn huffman_agrees_with_reference(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut block = Vec::new();
        block.push(0x00);
        block.push(0x01);
        block.push(b'a');
        let mut len = Vec::new();
        encode_int(&mut len, 0x80, 7, bytes.len());
        block.extend_from_slice(&len);
        block.extend_from_slice(&bytes);
        let reference = loona_hpack::Decoder::new().decode(&block).ok();
        let mine = ours(&mut hpack::Decoder::new(MAX_DYNAMIC_TABLE), &block).ok();
        prop_assert_eq!(mine, reference);
    }

    /// Any sequence of blocks, random bytes or made of plausible representations: same
    /// fields and same success as the reference, with the dynamic table carried over between
    /// blocks. Where RFC 7541 §4.2 (and h2) and the reference differ on dynamic table size
    /// updates, see [`expected_by_reference`].
    #[test]
    fn decoder_agrees_with_reference(
        blocks in proptest::collection::vec(
            prop_oneof![
                1 => proptest::collection::vec(any::<u8>(), 0..200),
                12 => block_of_representations(),
            ],
            1..8,
        ),
    ) {
        let mut reference = loona_hpack::Decoder::new();
        reference.set_max_allowed_table_size(MAX_DYNAMIC_TABLE);
        let mut mine = hpack::Decoder::new(MAX_DYNAMIC_TABLE);
        for block in &blocks {
            let m = ours(&mut mine, block);
            match expected_by_reference(&mut reference, block) {
                Expected::Fields(Ok(r)) => {
                    prop_assert_eq!(m, Ok(r), "block {:x?}", block);
                }
                Expected::Fields(Err(e)) => {
                    prop_assert!(m.is_err(), "reference fails ({:?}) on {:x?}, we decode {:?}", e, block, m);
                    return Ok(());
                }
                Expected::LateSizeUpdate { before_ok } => {
                    if before_ok {
                        prop_assert_eq!(m, Err(hpack::HpackError::LateSizeUpdate), "block {:x?}", block);
                    } else {
                        prop_assert!(m.is_err(), "block {:x?}", block);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Blocks from an indexing encoder: identical decoding, across eviction.
    #[test]
    fn encoder_output_decodes_identically(
        lists in proptest::collection::vec(
            proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,300}"), 0..10), 1..12),
    ) {
        let mut enc = loona_hpack::Encoder::new();
        let mut mine = hpack::Decoder::new(MAX_DYNAMIC_TABLE);
        for list in &lists {
            let headers: Vec<(&[u8], &[u8])> =
                list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
            let block = enc.encode(headers);
            let got = ours(&mut mine, &block).unwrap();
            let want: Vec<(Vec<u8>, Vec<u8>)> =
                list.iter().map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes())).collect();
            prop_assert_eq!(got, want);
        }
    }
}

/// A header block shaped like a real one, to reach deep states: up to two dynamic table
/// size updates, then field representations (see [`representation`]).
fn block_of_representations() -> impl Strategy<Value = Vec<u8>> {
    let size_update = prop_oneof![0usize..300, 0usize..4200].prop_map(|size| {
        let mut out = Vec::new();
        encode_int(&mut out, 0x20, 5, size);
        out
    });
    (
        proptest::collection::vec(size_update, 0..3),
        proptest::collection::vec(representation(), 0..12),
    )
        .prop_map(|(updates, fields)| [updates.concat(), fields.concat()].concat())
}

/// One HPACK representation, or something close to one: an indexed field (static or
/// dynamic), a literal with or without indexing (new or indexed name, raw or Huffman
/// strings), rarely a dynamic table size update (late, if fields came before) or a few
/// random bytes.
fn representation() -> impl Strategy<Value = Vec<u8>> {
    let bytes = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
    ];
    let string = (any::<bool>(), bytes).prop_map(|(huffman, s)| {
        let mut out = Vec::new();
        if huffman {
            let coded = huffman_encode(&s);
            encode_int(&mut out, 0x80, 7, coded.len());
            out.extend_from_slice(&coded);
        } else {
            encode_str(&mut out, &s);
        }
        out
    });
    prop_oneof![
        18 => prop_oneof![8 => 1usize..62, 1 => 62usize..68].prop_map(|i| {
            let mut out = Vec::new();
            encode_int(&mut out, 0x80, 7, i);
            out
        }),
        16 => (
            prop_oneof![3 => Just((0x40u8, 6u32)), 1 => Just((0x00, 4)), 1 => Just((0x10, 4))],
            prop_oneof![4 => Just(0usize), 4 => 1usize..62, 1 => 62usize..66],
            string.clone(),
            string,
        )
            .prop_map(|((first, bits), name_index, name, value)| {
                let mut out = Vec::new();
                encode_int(&mut out, first, bits, name_index);
                if name_index == 0 {
                    out.extend_from_slice(&name);
                }
                out.extend_from_slice(&value);
                out
            }),
        1 => (0usize..5000).prop_map(|size| {
            let mut out = Vec::new();
            encode_int(&mut out, 0x20, 5, size);
            out
        }),
        1 => proptest::collection::vec(any::<u8>(), 1..4),
    ]
}

/// What our decoder must do with a block, judged by the reference decoder.
#[derive(Debug)]
enum Expected {
    /// The reference's fields or failure.
    Fields(Result<Fields, loona_hpack::decoder::DecoderError>),
    /// A size update after a field: RFC 7541 §4.2 and h2 refuse it, the reference accepts
    /// it. `before_ok`: whether the reference decodes the block up to that update.
    LateSizeUpdate { before_ok: bool },
}

/// Decodes `block` with the reference, settling the two places where it departs from
/// RFC 7541 §4.2 and h2, both about dynamic table size updates (first byte `001xxxxx`):
/// it accepts one after a field (we refuse it: [`Expected::LateSizeUpdate`]), and it
/// refuses a block that ends with one, such as a block of only a size update (we accept
/// it: the reference then decodes the block with a static `:method: GET` appended, which
/// leaves its table as it was, and the field is taken off again).
fn expected_by_reference(reference: &mut loona_hpack::Decoder, block: &[u8]) -> Expected {
    let reps = representations(block);
    let mut seen_field = false;
    let mut start = 0;
    for &(is_size_update, end) in &reps {
        if is_size_update && seen_field {
            let before_ok = reference.decode(&block[..start]).is_ok();
            return Expected::LateSizeUpdate { before_ok };
        }
        seen_field |= !is_size_update;
        start = end;
    }
    let complete = reps.last().map_or(0, |&(_, end)| end) == block.len();
    let ends_with_update = reps.last().is_some_and(|&(update, _)| update);
    if complete && ends_with_update {
        let mut with_field = block.to_vec();
        with_field.push(0x82);
        return Expected::Fields(reference.decode(&with_field).map(|mut fields| {
            assert_eq!(fields.pop(), Some((b":method".to_vec(), b"GET".to_vec())));
            fields
        }));
    }
    Expected::Fields(reference.decode(block))
}

/// Where each representation of a block ends, and whether it is a size update, found
/// from the integer and string-length prefixes alone (no table, no Huffman). Stops at the
/// first one that is truncated or has an absurd integer.
fn representations(block: &[u8]) -> Vec<(bool, usize)> {
    fn int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Option<usize> {
        let max = (1usize << prefix_bits) - 1;
        let mut value = usize::from(*block.get(*pos)?) & max;
        *pos += 1;
        if value < max {
            return Some(value);
        }
        for shift in (0..28).step_by(7) {
            let b = *block.get(*pos)?;
            *pos += 1;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn string(block: &[u8], pos: &mut usize) -> Option<()> {
        let len = int(block, pos, 7)?;
        *pos = pos.checked_add(len).filter(|&end| end <= block.len())?;
        Some(())
    }
    let mut reps = Vec::new();
    let mut pos = 0;
    while let Some(&first) = block.get(pos) {
        let size_update = first & 0xe0 == 0x20;
        let ok = if first & 0x80 != 0 {
            int(block, &mut pos, 7).map(drop)
        } else if size_update {
            int(block, &mut pos, 5).map(drop)
        } else {
            let bits = if first & 0x40 != 0 { 6 } else { 4 };
            int(block, &mut pos, bits).and_then(|name_index| {
                if name_index == 0 {
                    string(block, &mut pos)?;
                }
                string(block, &mut pos)
            })
        };
        if ok.is_none() {
            break;
        }
        reps.push((size_update, pos));
    }
    reps
}

/// Huffman-encodes with canonical codes computed from `hpack::CODE_LENGTHS`.
fn huffman_encode(data: &[u8]) -> Vec<u8> {
    let lengths = hpack::CODE_LENGTHS;
    let mut order: Vec<usize> = (0..257).collect();
    order.sort_by_key(|&s| (lengths[s], s));
    let mut codes = [0u64; 257];
    let mut code = 0u64;
    let mut prev = lengths[order[0]];
    for (k, &s) in order.iter().enumerate() {
        if k > 0 {
            code = (code + 1) << (lengths[s] - prev);
        }
        prev = lengths[s];
        codes[s] = code;
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in data {
        let len = u32::from(lengths[usize::from(b)]);
        acc = (acc << len) | codes[usize::from(b)];
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

/// A reader that hands out its bytes, then stays Pending forever (a client waiting for an
/// answer). Everything it sent must reach the server without more input.
struct ThenSilence {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for ThenSilence {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos == self.data.len() {
            return Poll::Pending;
        }
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Regression: a frame completed in the output buffer while the input ended mid-way through
/// the next frame header must be delivered, not held until more input arrives (that hung a
/// tonic client whose request ended with an empty END_STREAM DATA frame). Polls by hand with
/// a waker that does nothing, so nothing but the reader's own progress can deliver bytes.
#[tokio::test]
async fn ready_frames_are_delivered_without_more_input() {
    let mut enc = loona_hpack::Encoder::new();
    let headers: Vec<(&[u8], &[u8])> = vec![(b":authority", b"http://h:1")];
    let block = enc.encode(headers);
    let cases = [
        client_stream(&[frame(0x0, FLAG_END_STREAM, 1, &[])]),
        client_stream(&[
            frame(0x0, 0, 1, b"abc"),
            frame(0x0, FLAG_END_STREAM, 1, &[]),
        ]),
        client_stream(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &block,
        )]),
        client_stream(&[frame(0x8, 0, 0, &[0, 0, 1, 0])]), // WINDOW_UPDATE
    ];
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for input in cases {
        let expected = rewrite(&input).await.unwrap();
        for chunk in [1, 5, 9, 10, 4096] {
            let mut conn = AuthorityRepair::new(ThenSilence {
                data: input.clone(),
                pos: 0,
                chunk,
            });
            let mut got = Vec::new();
            loop {
                let mut tmp = [0u8; 64];
                let mut rb = ReadBuf::new(&mut tmp);
                match Pin::new(&mut conn).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                        got.extend_from_slice(rb.filled())
                    }
                    Poll::Ready(Ok(())) => panic!("unexpected EOF"),
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => break,
                }
            }
            assert_eq!(got, expected, "chunk {chunk}");
        }
    }
}

#[test]
fn socket_path_rule() {
    let r = |s: &str| socket_path_to_localhost(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
    for path in [
        "/var/run/kms.sock",
        "unix:/tmp/kms.socket",
        "unix:///tmp/kms.socket",
    ] {
        assert_eq!(r(path).as_deref(), Some("localhost"), "{path}");
    }
    // Valid authorities (`@name` is an empty userinfo and a host) stay.
    assert_eq!(r("localhost"), None);
    assert_eq!(r("kms:1"), None);
    assert_eq!(r("@abstract"), None);
    assert_eq!(r("http://h:1").as_deref(), Some("h:1"));
}

/// A test reader that says how far it has got.
trait Position {
    fn position(&self) -> usize;
}

impl Position for ThenSilence {
    fn position(&self) -> usize {
        self.pos
    }
}

impl Position for Chunked {
    fn position(&self) -> usize {
        self.pos
    }
}

/// Hands `conn` everything its reader has, polling with a waker that does nothing, and
/// records the most it ever buffered. Stops at EOF, an error, or when the reader is pending
/// without having handed out anything new since the last time.
fn drain<S: AsyncRead + Position + Unpin>(
    conn: &mut AuthorityRepair<S>,
    read_size: usize,
) -> (Vec<u8>, Option<io::Error>, usize) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    let mut most = 0;
    let mut last_pending_at = None;
    let mut tmp = vec![0u8; read_size];
    loop {
        let mut rb = ReadBuf::new(&mut tmp);
        let res = Pin::new(&mut *conn).poll_read(&mut cx, &mut rb);
        most = most.max(conn.rw.buffered());
        match res {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return (out, None, most),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => return (out, Some(e), most),
            Poll::Pending => {
                let at = conn.get_ref().position();
                if last_pending_at.replace(at) == Some(at) {
                    return (out, None, most);
                }
            }
        }
    }
}

fn silent(data: Vec<u8>, chunk: usize) -> AuthorityRepair<ThenSilence> {
    AuthorityRepair::new(ThenSilence {
        data,
        pos: 0,
        chunk,
    })
}

/// A frame header announcing `len` payload bytes that never come.
fn announced(typ: u8, flags: u8, len: usize) -> Vec<u8> {
    let mut h = frame(typ, flags, 1, &[]);
    h[..3].copy_from_slice(&u32::try_from(len).unwrap().to_be_bytes()[1..]);
    h
}

/// The review's case: 33 bytes (preface and a frame header announcing a 1 MiB header
/// block) used to reserve 1 MiB. A frame over h2's limit is now handed on at once for h2 to
/// refuse; one within it is only buffered as its bytes arrive.
#[test]
fn announced_sizes_reserve_nothing() {
    for len in [1 << 20, MAX_FRAME_SIZE + 1, (1 << 24) - 1] {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&announced(TYPE_HEADERS, 0, len));
        let (out, err, most) = drain(&mut silent(input.clone(), 4096), 8192);
        assert!(err.is_none());
        assert_eq!(out, input, "passed on for h2 to refuse");
        assert!(most < 256, "{len}: buffered {most}");
    }
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&announced(TYPE_HEADERS, FLAG_END_HEADERS, MAX_FRAME_SIZE));
    input.extend_from_slice(&[0x82; 100]);
    let mut conn = silent(input, 4096);
    let (out, err, most) = drain(&mut conn, 8192);
    assert!(err.is_none());
    assert_eq!(out, PREFACE);
    assert!(most < 256, "buffered {most}");
}

/// Frames longer than h2's SETTINGS_MAX_FRAME_SIZE end the parsing: that frame and
/// everything after it pass through unchanged (h2 answers FRAME_SIZE_ERROR), even a later
/// block that would need a repair.
#[tokio::test]
async fn oversized_frames_hand_the_rest_to_h2() {
    let mut enc = loona_hpack::Encoder::new();
    let repair: Vec<(&[u8], &[u8])> = vec![(b":authority", b"http://h:1")];
    let first = frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &enc.encode(repair.clone()),
    );
    let last = frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &enc.encode(repair));
    for oversized in [
        frame(0x0, 0, 1, &vec![7; MAX_FRAME_SIZE + 1]),
        frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &vec![0x82; MAX_FRAME_SIZE + 1],
        ),
    ] {
        let input = client_stream(&[first.clone(), oversized.clone(), last.clone()]);
        let out = rewrite_with_chunks(&input, 1000).await.unwrap();
        let tail = [oversized.as_slice(), &last].concat();
        assert!(out.ends_with(&tail));
        let head = &out[..out.len() - tail.len()];
        let blocks = server_view(&parse_frames(head), Some(0));
        assert_eq!(get(&blocks[0].1, ":authority").as_deref(), Some("h:1"));
    }
    // Exactly the limit is still parsed.
    let big = "v".repeat(MAX_FRAME_SIZE - 40);
    let headers: Vec<(&[u8], &[u8])> = vec![(b":authority", b"http://h:1"), (b"x", big.as_bytes())];
    let block = loona_hpack::Encoder::new().encode(headers);
    let mut payload = block.clone();
    payload.resize(MAX_FRAME_SIZE, 0x82);
    let input = client_stream(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &payload)]);
    let blocks = server_view(&parse_frames(&rewrite(&input).await.unwrap()), Some(0));
    assert_eq!(get(&blocks[0].1, ":authority").as_deref(), Some("h:1"));
}

/// h2 allows 5 CONTINUATION frames without END_HEADERS per block (hyper's defaults); with
/// a 6th it answers ENHANCE_YOUR_CALM. Up to the limit we repair; beyond it the block and
/// the rest pass through unchanged.
#[tokio::test]
async fn continuation_flood_is_left_to_h2() {
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":authority", b"http://h:1"),
        (b"x-a", b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ];
    let block = loona_hpack::Encoder::new().encode(headers);
    for continuations in [MAX_CONTINUATION_FRAMES, MAX_CONTINUATION_FRAMES + 1] {
        // HEADERS with one byte, then CONTINUATIONs of one byte, the last with the rest.
        let mut parts = vec![frame(TYPE_HEADERS, 0, 1, &block[..1])];
        for i in 0..continuations {
            parts.push(frame(TYPE_CONTINUATION, 0, 1, &block[1 + i..2 + i]));
        }
        parts.push(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            &block[1 + continuations..],
        ));
        let input = client_stream(&parts);
        let out = rewrite_with_chunks(&input, 7).await.unwrap();
        let blocks = server_view(&parse_frames(&out), None);
        let authority = get(&blocks[0].1, ":authority");
        if continuations <= MAX_CONTINUATION_FRAMES {
            assert_eq!(authority.as_deref(), Some("h:1"));
        } else {
            assert_eq!(out, input);
        }
    }
}

/// A connection costs a few hundred bytes of state; the buffers a large header block needed
/// are freed once it is handed on.
#[test]
fn idle_connections_are_small() {
    let state = std::mem::size_of::<Rewriter>();
    assert!(state <= 320, "{state} bytes");
    let big = "v".repeat(40_000);
    let headers: Vec<(&[u8], &[u8])> =
        vec![(b":authority", b"http://h:1"), (b"x-big", big.as_bytes())];
    let block = loona_hpack::Encoder::new().encode(headers);
    let mut parts = Vec::new();
    let mut chunks = block.chunks(MAX_FRAME_SIZE).peekable();
    let mut typ = TYPE_HEADERS;
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        parts.push(frame(typ, flags, 1, chunk));
        typ = TYPE_CONTINUATION;
    }
    let mut conn = silent(client_stream(&parts), 100_000);
    let (out, err, most) = drain(&mut conn, 16_384);
    assert!(err.is_none());
    assert!(most > 20_000, "the block was buffered: {most}");
    let blocks = server_view(&parse_frames(&out), Some(0));
    assert_eq!(get(&blocks[0].1, "x-big"), Some(big));
    let after = conn.rw.buffered();
    assert!(after <= 2 * KEEP_CAPACITY, "still holding {after} bytes");
    // The etcdctl capture (valid HTTP/2, one repair) leaves as little.
    let mut conn = silent(ETCDCTL_STATUS.to_vec(), 4096);
    drain(&mut conn, 16_384);
    assert!(conn.rw.buffered() <= 2 * KEEP_CAPACITY + MAX_DYNAMIC_TABLE);
}

/// What a server makes of a client byte stream: its frames, with header blocks decoded.
#[derive(Debug, PartialEq)]
enum Item {
    /// Any frame but HEADERS/CONTINUATION, byte for byte.
    Frame(Vec<u8>),
    /// A header block (padding aside).
    Block {
        stream_id: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        fields: Fields,
    },
}

/// Where [`semantics`] stopped.
#[derive(Debug, PartialEq)]
enum End {
    /// At the end of the stream, between frames.
    Complete,
    /// Not HTTP/2: no preface.
    NotHttp2,
    /// At this offset h2 takes over: a truncated frame, a frame over [`MAX_FRAME_SIZE`] or
    /// a CONTINUATION flood. From here on the bytes must pass unchanged.
    HandOver(usize),
    /// Something the repair refuses (bad framing or HPACK, a list over the limit).
    Invalid,
}

/// A header block [`semantics`] is collecting: start offset, stream, flags of its HEADERS,
/// priority fields, fragment, frames so far.
type ModelBlock = (usize, u32, u8, Option<Vec<u8>>, Vec<u8>, usize);

/// Parses a client stream the way h2 with hyper's limits would, decoding header blocks with
/// the reference decoder; with `rule`, applies it to `:authority` values.
fn semantics(bytes: &[u8], rule: Option<RepairRule>) -> (Vec<Item>, End) {
    let mut items = Vec::new();
    if !bytes.starts_with(PREFACE) {
        return (items, End::NotHttp2);
    }
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(MAX_DYNAMIC_TABLE);
    let mut pos = PREFACE.len();
    let mut block: Option<ModelBlock> = None;
    loop {
        let Some(h) = FrameHead::parse(&bytes[pos..]) else {
            let end = if pos == bytes.len() && block.is_none() {
                End::Complete
            } else {
                End::HandOver(block.map_or(pos, |b| b.0))
            };
            return (items, end);
        };
        let start = block.as_ref().map_or(pos, |b| b.0);
        if h.len > MAX_FRAME_SIZE {
            return (items, End::HandOver(start));
        }
        let Some(frame) = bytes.get(pos..pos + FRAME_HEADER_LEN + h.len) else {
            return (items, End::HandOver(start));
        };
        let payload = &frame[FRAME_HEADER_LEN..];
        let header_frame = h.typ == TYPE_HEADERS || h.typ == TYPE_CONTINUATION;
        match (&mut block, h.typ) {
            (None, TYPE_HEADERS) => {
                let Ok(range) = start_fragment(&h, frame) else {
                    return (items, End::Invalid);
                };
                let priority = (h.flags & FLAG_PRIORITY != 0).then(|| {
                    let p = FRAME_HEADER_LEN + usize::from(h.flags & FLAG_PADDED != 0);
                    frame[p..p + 5].to_vec()
                });
                block = Some((
                    pos,
                    h.stream_id,
                    h.flags,
                    priority,
                    frame[range].to_vec(),
                    1,
                ));
            }
            (Some(b), TYPE_CONTINUATION) if b.1 == h.stream_id => {
                if h.flags & FLAG_END_HEADERS == 0 && b.5 > MAX_CONTINUATION_FRAMES {
                    return (items, End::HandOver(start));
                }
                b.4.extend_from_slice(payload);
                b.5 += 1;
            }
            (Some(_), _) | (None, TYPE_PUSH_PROMISE) => return (items, End::Invalid),
            (None, _) => items.push(Item::Frame(frame.to_vec())),
        }
        pos += frame.len();
        if header_frame && h.flags & FLAG_END_HEADERS != 0 {
            if let Some((_, stream_id, flags, priority, fragment, _)) = block.take() {
                let Ok(mut fields) = decoder.decode(&fragment) else {
                    return (items, End::Invalid);
                };
                let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
                if size > MAX_HEADER_LIST {
                    return (items, End::Invalid);
                }
                for (name, value) in &mut fields {
                    if let (b":authority", Some(rule)) = (name.as_slice(), rule) {
                        if let Some(new) = rule(value) {
                            *value = new;
                        }
                    }
                }
                items.push(Item::Block {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fields,
                });
            }
        }
    }
}

/// One piece of a generated client stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A request's headers from the connection's (indexing, Huffman) encoder, split into
    /// HEADERS + CONTINUATION frames of at most `split` bytes, maybe padded, maybe with
    /// priority fields.
    Request {
        authority: String,
        fields: Vec<(String, String)>,
        split: usize,
        padded: Option<u8>,
        priority: bool,
        end_stream: bool,
    },
    /// A DATA (or other) frame of the given type and length.
    Other { typ: u8, len: usize },
    /// Bytes as they come: anything may happen.
    Garbage(Vec<u8>),
    /// A HEADERS frame with END_HEADERS and arbitrary HPACK data.
    BadHpack(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    let authority = prop_oneof![
        Just("127.0.0.1:2379".to_string()),
        Just("http://127.0.0.1:2379".to_string()),
        Just("https://[::1]:2379/x".to_string()),
        Just("/var/run/kms.sock".to_string()),
        "[ -~]{0,30}",
    ];
    // Few distinct fields, so later blocks refer to the dynamic table entries of earlier ones.
    let name = prop_oneof![
        3 => prop::sample::select(vec!["te", "content-type", "x-a"]).prop_map(String::from),
        1 => "[a-z-]{1,10}",
    ];
    let value = prop_oneof![
        3 => prop::sample::select(vec!["trailers", "application/grpc", "1"]).prop_map(String::from),
        2 => "[ -~]{0,40}",
        1 => "[a-z]{0,4000}",
    ];
    let request = (
        authority,
        proptest::collection::vec((name, value), 0..6),
        prop_oneof![
            2 => 1usize..40,
            1 => 40usize..2000,
            6 => Just(MAX_FRAME_SIZE),
            1 => Just(MAX_FRAME_SIZE + 1),
        ],
        proptest::option::of(any::<u8>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(authority, fields, split, padded, priority, end_stream)| Piece::Request {
                authority,
                fields,
                split,
                padded,
                priority,
                end_stream,
            },
        );
    prop_oneof![
        8 => request,
        4 => (
            prop_oneof![Just(0u8), Just(3), Just(4), Just(6), Just(8)],
            prop_oneof![8 => 0usize..300, 1 => Just(MAX_FRAME_SIZE), 1 => Just(MAX_FRAME_SIZE + 1)],
        )
            .prop_map(|(typ, len)| Piece::Other { typ, len }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Garbage),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::BadHpack),
    ]
}

/// Builds the client stream; `garbage` tells whether it holds anything not well-formed.
fn build_stream(pieces: &[Piece]) -> (Vec<u8>, bool) {
    let mut enc = loona_hpack::Encoder::new();
    let mut out = client_stream(&[]);
    let mut garbage = false;
    for (i, p) in pieces.iter().enumerate() {
        let stream_id = 2 * i as u32 + 1;
        match p {
            Piece::Request {
                authority,
                fields,
                split,
                padded,
                priority,
                end_stream,
            } => {
                let mut headers: Vec<(&[u8], &[u8])> =
                    vec![(b":method", b"POST"), (b":authority", authority.as_bytes())];
                headers.extend(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
                let block = enc.encode(headers);
                let mut chunks: Vec<&[u8]> = block.chunks(*split).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                for (k, chunk) in chunks.iter().enumerate() {
                    let mut flags = 0;
                    if k + 1 == chunks.len() {
                        flags |= FLAG_END_HEADERS;
                    }
                    let mut payload = Vec::new();
                    let typ = if k == 0 {
                        if *end_stream {
                            flags |= FLAG_END_STREAM;
                        }
                        if let Some(pad) = padded {
                            flags |= FLAG_PADDED;
                            payload.push(*pad);
                        }
                        if *priority {
                            flags |= FLAG_PRIORITY;
                            payload.extend_from_slice(&[0, 0, 0, 1, 200]);
                        }
                        TYPE_HEADERS
                    } else {
                        TYPE_CONTINUATION
                    };
                    payload.extend_from_slice(chunk);
                    if k == 0 {
                        payload.extend(std::iter::repeat_n(0, usize::from(padded.unwrap_or(0))));
                    }
                    out.extend_from_slice(&frame(typ, flags, stream_id, &payload));
                }
            }
            Piece::Other { typ, len } => {
                let payload: Vec<u8> = (0..*len).map(|k| k as u8).collect();
                out.extend_from_slice(&frame(*typ, 0, stream_id, &payload));
            }
            Piece::Garbage(bytes) => {
                garbage = true;
                out.extend_from_slice(bytes);
            }
            Piece::BadHpack(bytes) => {
                garbage = true;
                out.extend_from_slice(&frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, bytes));
            }
        }
    }
    (out, garbage)
}

/// A reader that hands out its bytes in the given chunk sizes (cycled), pending before
/// each chunk.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
    pending_next: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if std::mem::replace(&mut self.pending_next, false) {
            return Poll::Pending;
        }
        self.pending_next = true;
        let chunk = self.chunks[self.next % self.chunks.len()];
        self.next += 1;
        let n = chunk.min(buf.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// The most a connection may buffer: a header block's frames, its re-encoding, the
/// decoder's scratch space, and one read's worth of bytes.
const MEMORY_BOUND: usize = 2 * (MAX_HEADER_BLOCK + 7 * FRAME_HEADER_LEN)
    + MAX_HEADER_LIST
    + 2 * MAX_FRAME_SIZE
    + MAX_DYNAMIC_TABLE
    + 64 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Generated client streams (well-formed requests that need a repair or not, other
    /// frames, frames over the limits, garbage), read in arbitrary pieces into buffers of
    /// arbitrary size: never a panic; the output is the input, or what the server decodes
    /// from it equals what it would decode from the input with the repair applied, with
    /// whatever h2 is left to refuse passed on unchanged; memory stays bounded; an error
    /// only for input that has garbage in it.
    #[test]
    fn streams_are_repaired_or_passed_on(
        pieces in proptest::collection::vec(piece(), 0..10),
        chunks in proptest::collection::vec(prop_oneof![1usize..20, 1usize..70_000], 1..6),
        read_size in prop_oneof![1usize..64, 64usize..70_000],
        cut in proptest::option::weighted(0.2, any::<prop::sample::Index>()),
    ) {
        let (mut input, garbage) = build_stream(&pieces);
        if let Some(cut) = cut {
            input.truncate(cut.index(input.len() + 1));
        }
        let mut conn = AuthorityRepair::new(Chunked {
            data: input.clone(),
            pos: 0,
            chunks,
            next: 0,
            pending_next: true,
        });
        let (out, err, most) = drain(&mut conn, read_size);
        prop_assert!(most <= MEMORY_BOUND, "buffered {} bytes", most);
        let (want, end) = semantics(&input, Some(strip_scheme));
        if let Some(e) = err {
            prop_assert!(garbage || end == End::Invalid, "{}", e);
            return Ok(());
        }
        if out == input {
            // Nothing needed a repair (or nothing could be parsed).
            let (plain, _) = semantics(&input, None);
            prop_assert!(garbage || end == End::NotHttp2 || plain == want,
                "a repair was needed but the input was passed through");
            return Ok(());
        }
        let (got, got_end) = semantics(&out, None);
        match end {
            End::Complete => {
                prop_assert_eq!(got_end, End::Complete);
                prop_assert_eq!(got, want);
            }
            End::HandOver(at) => {
                prop_assert!(out.ends_with(&input[at..]), "the rest from {} passes unchanged", at);
                prop_assert!(got.len() >= want.len());
                prop_assert_eq!(&got[..want.len()], &want[..]);
            }
            End::Invalid => {
                // We accepted what the reference refused (only possible for garbage):
                // everything before agrees.
                prop_assert!(garbage);
                let n = want.len().min(got.len());
                prop_assert_eq!(&got[..n], &want[..n]);
            }
            End::NotHttp2 => prop_assert!(false, "not HTTP/2 but changed"),
        }
    }
}
