//! # Repairing HTTP/2 `:authority` before h2 sees it
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint hashkv`, `defrag`) as
//! `passthrough:///http://127.0.0.1:2379`, so the client's HTTP/2 `:authority` pseudo-header
//! is `http://127.0.0.1:2379`. Go's gRPC server and etcd accept that; h2 rejects the stream
//! with `RST_STREAM(PROTOCOL_ERROR)` ("malformed authority") and has no switch to relax the
//! check. [`AuthorityRepair`] wraps an accepted connection (any `AsyncRead + AsyncWrite`:
//! TCP, TLS, unix socket) and rewrites such a value to `127.0.0.1:2379` on the way in.
//!
//! How: the write side (server → client) is passed through untouched. The read side parses
//! the client connection preface and then HTTP/2 frames. Every frame except a header block
//! (HEADERS plus its CONTINUATION frames) is passed through unchanged, left in place in the
//! caller's buffer. Every header block is HPACK-decoded by a decoder whose dynamic table
//! follows the client's encoder (our own small one in `hpack`: Huffman strings decode in
//! nanoseconds, indexed fields are borrowed), and its `:authority` value goes through the
//! repair rule.
//!
//! While no block on the connection has needed a repair, blocks are passed on byte for byte,
//! so h2's dynamic table is an exact copy of the client's and clients with valid authorities
//! (tonic, kube-apiserver) cost only the parsing. From the first block that needs a repair
//! on, every block is re-encoded using only "literal header field without indexing" with
//! plain (non-Huffman) strings and no dynamic table size updates: h2's table then never
//! changes again and nothing we send refers to it, whatever the client's encoder does. The
//! cost there is a few hundred bytes per request, parsed on loopback.
//!
//! Re-emitted blocks keep their stream id, END_STREAM and the PRIORITY fields; padding is
//! dropped; blocks larger than 16 384 bytes are split into CONTINUATION frames. "Never
//! indexed" literals become "without indexing": the difference only matters to
//! intermediaries, and h2 is the last hop.
//!
//! Limits are h2's own, as hyper's server configures it and tonic leaves it (see the
//! constants): a frame longer than [`MAX_FRAME_SIZE`], or one CONTINUATION more than h2
//! allows, is passed on unchanged with everything after it, and h2 closes the connection as
//! it would without us. A header list h2 would call abuse ([`MAX_HEADER_LIST`]) fails the
//! connection here. These limits must match the server's: one that raises
//! `max_frame_size` or `http2_max_header_list_size` would accept what we hand on unparsed. Anything that is not an HTTP/2 connection preface (e.g. HTTP/1.1) is
//! passed through untouched. Malformed framing or HPACK that would desync the two decoders
//! fails the connection with an [`std::io::Error`] of kind `InvalidData` (the client sees
//! the connection drop) and never panics.
//!
//! Memory: a connection holds a few hundred bytes of state plus a copy of the client's HPACK
//! dynamic table (at most [`MAX_DYNAMIC_TABLE`] bytes of fields). Buffers start empty, grow
//! with what arrives (a header block is at most [`MAX_HEADER_BLOCK`] bytes) and are freed
//! once the block is handed on.
//!
//! The repair rule is a plain function so other clients with odd authorities can get their
//! own: [`strip_scheme`] is the default; [`socket_path_to_localhost`] is for gRPC clients that
//! send a unix socket path (kube-apiserver before 1.32 talking to a KMS plugin,
//! kubernetes#126929).

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;
/// Largest frame payload h2 accepts: hyper's server SETTINGS_MAX_FRAME_SIZE (16 KiB, also
/// the protocol minimum), which tonic keeps unless `Server::max_frame_size` is set. Longer
/// frames are passed on for h2 to refuse (FRAME_SIZE_ERROR), never buffered.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// How many CONTINUATION frames without END_HEADERS h2 accepts in one block for hyper's
/// defaults (h2 `calc_max_continuation_frames`: `max(list size / frame size × 5/4, 5)`). One
/// more is passed on for h2 to refuse (ENHANCE_YOUR_CALM).
pub const MAX_CONTINUATION_FRAMES: usize = 5;
/// Largest encoded header block (all its frames' payloads): a HEADERS frame, the allowed
/// CONTINUATION frames and a final one, each at most [`MAX_FRAME_SIZE`].
pub const MAX_HEADER_BLOCK: usize = (MAX_CONTINUATION_FRAMES + 2) * MAX_FRAME_SIZE;
/// Largest decoded header list (RFC 7541 sizes: name + value + 32 per field). hyper's server
/// SETTINGS_MAX_HEADER_LIST_SIZE is 16 KiB: h2 refuses a stream over it but keeps the
/// connection, and drops the connection over 4 times that (its "abuse" limit). Blocks up to
/// the abuse limit are repaired and handed on for h2 to judge; larger ones fail here.
pub const MAX_HEADER_LIST: usize = 4 * 16 * 1024;
/// Largest HPACK dynamic table a client may ask for with a size update: h2's
/// SETTINGS_HEADER_TABLE_SIZE (the protocol default, 4096), above which h2 fails the
/// connection itself.
pub const MAX_DYNAMIC_TABLE: usize = 4096;
/// Largest frame payload we emit: the protocol's minimum SETTINGS_MAX_FRAME_SIZE.
const OUT_FRAME_SIZE: usize = 16_384;
/// Buffers larger than this are freed, not kept, once empty.
const KEEP_CAPACITY: usize = 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A repair rule: given an `:authority` value, the value to send on instead, or `None` to
/// leave it as it is.
pub type RepairRule = fn(&[u8]) -> Option<Vec<u8>>;

/// The default rule: an authority that h2 would reject but that looks like
/// `scheme://host[:port][/path...]` becomes `host[:port]`, when that is a valid authority.
/// Valid authorities and anything else are left alone (h2 then decides, as before).
pub fn strip_scheme(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let sep = value.windows(3).position(|w| w == b"://")?;
    let scheme = &value[..sep];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return None;
    }
    let rest = &value[sep + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    if host.is_empty() || http::uri::Authority::try_from(host).is_err() {
        return None;
    }
    Some(host.to_vec())
}

/// A rule for gRPC over unix sockets: an authority h2 would reject that is a socket path
/// (`/run/kms.sock`, `unix:/run/kms.sock`, `unix:///run/kms.sock`) becomes `localhost`, which is what newer gRPC clients send for unix sockets. Everything
/// else goes through [`strip_scheme`].
pub fn socket_path_to_localhost(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let path = value.strip_prefix(b"unix:").unwrap_or(value);
    if path.starts_with(b"/") {
        return Some(b"localhost".to_vec());
    }
    strip_scheme(value)
}

/// Why a connection's header stream could not be repaired. The connection is then dropped.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RepairError {
    /// The HPACK data of a header block could not be decoded.
    #[error("HTTP/2 header block on stream {stream_id}: HPACK decoding failed: {reason}")]
    Hpack {
        /// The stream the block belongs to.
        stream_id: u32,
        /// What the decoder reported.
        reason: String,
    },
    /// A HEADERS or CONTINUATION frame is malformed or out of order.
    #[error("HTTP/2 frame on stream {stream_id}: {reason}")]
    Framing {
        /// The stream the frame belongs to.
        stream_id: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header block is larger than we buffer.
    #[error("HTTP/2 header block on stream {stream_id} exceeds {limit} bytes")]
    TooLarge {
        /// The stream the block belongs to.
        stream_id: u32,
        /// The limit exceeded.
        limit: usize,
    },
}

impl From<RepairError> for io::Error {
    fn from(e: RepairError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 24-byte connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2 (no preface), or h2 is about to refuse the connection: everything passes
    /// through.
    Transparent,
}

/// A header block being collected from HEADERS + CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The block's frames as received, to pass on unchanged when nothing needs repair.
    raw: BytesMut,
    /// Where the HPACK fragments are in `raw` (one per frame).
    fragments: [Range<u32>; MAX_CONTINUATION_FRAMES + 2],
    frames: usize,
    fragment_len: usize,
}

/// What to do with a frame, judged from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Pass the header and `len` payload bytes through unchanged.
    Pass(usize),
    /// A HEADERS frame, or a CONTINUATION of the current block, to collect.
    Collect,
    /// Pass this frame and the rest of the connection through unchanged: h2 will refuse it.
    GiveUp,
}

/// A frame header's fields.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    typ: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(h: &[u8]) -> Option<FrameHead> {
        let h: &[u8; FRAME_HEADER_LEN] = h.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(FrameHead {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            typ: h[3],
            flags: h[4],
            stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

/// The read-side state machine, independent of any socket.
struct Rewriter {
    phase: Phase,
    /// Bytes read from the client, not yet processed: only partial frame headers and header
    /// frames land here (pass-through bytes stay in the reader's buffer).
    inbuf: BytesMut,
    /// Bytes ready to hand to the server, ahead of any pass-through payload.
    out: BytesMut,
    /// Bytes of the current frame's payload still to pass through unchanged.
    passthrough: usize,
    block: Option<Box<PendingBlock>>,
    decoder: hpack::Decoder,
    rule: RepairRule,
    /// How many `:authority` values were rewritten on this connection.
    repaired: u64,
    /// Whether header blocks are re-encoded. Until the first block that needs a repair, blocks
    /// pass unchanged, so h2's dynamic table is a copy of the client's. From then on every
    /// block is re-encoded as literals that leave h2's table as it was; nothing we send
    /// refers to it, so it no longer matters that it stops following the client's.
    rewriting: bool,
    /// Scratch space for re-encoded blocks.
    encoded: Vec<u8>,
    failed: Option<RepairError>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("phase", &self.phase)
            .field("buffered", &self.inbuf.len())
            .field("ready", &self.out.len())
            .field("passthrough", &self.passthrough)
            .field("repaired", &self.repaired)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Empties `buf`, freeing its allocation if it has grown beyond [`KEEP_CAPACITY`].
fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    }
}

impl Rewriter {
    fn new(rule: RepairRule) -> Self {
        Rewriter {
            phase: Phase::Preface,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            passthrough: 0,
            block: None,
            decoder: hpack::Decoder::new(MAX_DYNAMIC_TABLE),
            rule,
            repaired: 0,
            rewriting: false,
            encoded: Vec::new(),
            failed: None,
        }
    }

    /// Bytes held in buffers (allocated capacity), for tests of the memory bound.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.inbuf.capacity()
            + self.out.capacity()
            + self.block.as_ref().map_or(0, |b| b.raw.capacity())
            + self.encoded.capacity()
            + self.decoder.buffered()
    }

    fn classify(&self, h: &FrameHead) -> Result<Class, RepairError> {
        let framing = |reason| RepairError::Framing {
            stream_id: h.stream_id,
            reason,
        };
        if h.len > MAX_FRAME_SIZE {
            return Ok(Class::GiveUp);
        }
        match &self.block {
            Some(block) => {
                if h.typ != TYPE_CONTINUATION {
                    return Err(framing("a header block was interrupted by another frame"));
                }
                if block.stream_id != h.stream_id {
                    return Err(framing(
                        "CONTINUATION for a different stream than its HEADERS",
                    ));
                }
                let last = h.flags & FLAG_END_HEADERS != 0;
                // `frames` counts the HEADERS frame too.
                if !last && block.frames > MAX_CONTINUATION_FRAMES {
                    return Ok(Class::GiveUp);
                }
                Ok(Class::Collect)
            }
            None => match h.typ {
                TYPE_HEADERS => Ok(Class::Collect),
                TYPE_PUSH_PROMISE => Err(framing("a client must not send PUSH_PROMISE")),
                // Includes a CONTINUATION without a block, which h2 rejects itself.
                _ => Ok(Class::Pass(h.len)),
            },
        }
    }

    /// Decides how many of `bytes`, newly read and following everything processed so far,
    /// pass through unchanged where they are. The rest must go through
    /// [`Rewriter::process`] via `inbuf`.
    fn scan(&mut self, bytes: &[u8]) -> usize {
        if !self.inbuf.is_empty() || !self.out.is_empty() || self.block.is_some() {
            return 0;
        }
        let mut pos = 0;
        loop {
            match self.phase {
                Phase::Transparent => return bytes.len(),
                Phase::Preface => return pos,
                Phase::Frames => {}
            }
            let n = self.passthrough.min(bytes.len() - pos);
            self.passthrough -= n;
            pos += n;
            let Some(h) = FrameHead::parse(&bytes[pos..]) else {
                return pos;
            };
            match self.classify(&h) {
                Ok(Class::Pass(len)) => {
                    self.passthrough = len;
                    pos += FRAME_HEADER_LEN;
                }
                Ok(Class::GiveUp) => self.give_up(),
                Ok(Class::Collect) | Err(_) => return pos,
            }
        }
    }

    /// Stops parsing: a pending block goes out as received, and everything from here on
    /// passes through.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        self.phase = Phase::Transparent;
        self.passthrough = 0;
    }

    /// Processes as much of `inbuf` as possible: complete frames go to `out` (header blocks
    /// rewritten), and a pass-through frame's header goes to `out` with its payload left
    /// to pass through. Returns how many more bytes are needed before the next step can be
    /// taken (0 when `out` or the pass-through has something).
    fn process(&mut self) -> Result<usize, RepairError> {
        loop {
            match self.phase {
                Phase::Transparent => return Ok(0),
                Phase::Preface => {
                    let n = self.inbuf.len().min(PREFACE.len());
                    if self.inbuf[..n] != PREFACE[..n] {
                        self.phase = Phase::Transparent;
                        return Ok(0);
                    }
                    if n < PREFACE.len() {
                        return Ok(PREFACE.len() - n);
                    }
                    self.out.extend_from_slice(PREFACE);
                    self.inbuf.advance(PREFACE.len());
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.passthrough > 0 {
                        return Ok(0);
                    }
                    let Some(h) = FrameHead::parse(&self.inbuf) else {
                        release(&mut self.inbuf);
                        return Ok(FRAME_HEADER_LEN - self.inbuf.len());
                    };
                    match self.classify(&h)? {
                        Class::Pass(len) => {
                            self.out.extend_from_slice(&self.inbuf[..FRAME_HEADER_LEN]);
                            self.inbuf.advance(FRAME_HEADER_LEN);
                            self.passthrough = len;
                        }
                        Class::GiveUp => self.give_up(),
                        Class::Collect => {
                            let total = FRAME_HEADER_LEN + h.len;
                            if self.inbuf.len() < total {
                                return Ok(total - self.inbuf.len());
                            }
                            let frame = self.inbuf.split_to(total);
                            self.collect(&h, frame)?;
                        }
                    }
                }
            }
        }
    }

    /// Adds a complete HEADERS or CONTINUATION frame to the pending block, and finishes the
    /// block on END_HEADERS.
    fn collect(&mut self, h: &FrameHead, frame: BytesMut) -> Result<(), RepairError> {
        let payload = start_fragment(h, &frame)?;
        let block = match self.block.as_mut() {
            None => {
                let fields = FRAME_HEADER_LEN + usize::from(h.flags & FLAG_PADDED != 0);
                let priority = if h.flags & FLAG_PRIORITY != 0 {
                    frame
                        .get(fields..)
                        .and_then(|p| p.first_chunk::<5>())
                        .copied()
                } else {
                    None
                };
                self.block.insert(Box::new(PendingBlock {
                    stream_id: h.stream_id,
                    end_stream: h.flags & FLAG_END_STREAM != 0,
                    priority,
                    raw: frame,
                    fragments: Default::default(),
                    frames: 0,
                    fragment_len: 0,
                }))
            }
            Some(block) => {
                block.raw.extend_from_slice(&frame);
                block
            }
        };
        let base = block.raw.len() - (FRAME_HEADER_LEN + h.len);
        // Offsets within a block are below MAX_HEADER_BLOCK plus frame headers, far below
        // u32::MAX.
        let start = (base + payload.start) as u32;
        let end = (base + payload.end) as u32;
        block.fragment_len += payload.len();
        if let Some(slot) = block.fragments.get_mut(block.frames) {
            *slot = start..end;
        }
        block.frames += 1;
        if block.fragment_len > MAX_HEADER_BLOCK {
            return Err(RepairError::TooLarge {
                stream_id: h.stream_id,
                limit: MAX_HEADER_BLOCK,
            });
        }
        if h.flags & FLAG_END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish_block(&block)?;
            }
            release(&mut self.inbuf);
            self.decoder.release();
        }
        Ok(())
    }

    /// Decodes a complete header block and appends it to `out`: its original frames while the
    /// connection has needed no repair, else re-encoded frames (see [`Rewriter::rewriting`]).
    fn finish_block(&mut self, block: &PendingBlock) -> Result<(), RepairError> {
        let joined;
        let fragment: &[u8] = match &block.fragments[..block.frames.min(block.fragments.len())] {
            [one] => &block.raw[one.start as usize..one.end as usize],
            many => {
                joined = many
                    .iter()
                    .flat_map(|r| &block.raw[r.start as usize..r.end as usize])
                    .copied()
                    .collect::<Vec<u8>>();
                &joined
            }
        };
        let rule = self.rule;
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let mut list_size = 0usize;
        let mut repaired = false;
        self.decoder
            .decode(fragment, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_LIST {
                    return;
                }
                let replacement = if name == b":authority" {
                    rule(value)
                } else {
                    None
                };
                repaired |= replacement.is_some();
                encode_literal(&mut encoded, name, replacement.as_deref().unwrap_or(value));
            })
            .map_err(|e| RepairError::Hpack {
                stream_id: block.stream_id,
                reason: e.to_string(),
            })?;
        if list_size > MAX_HEADER_LIST {
            return Err(RepairError::TooLarge {
                stream_id: block.stream_id,
                limit: MAX_HEADER_LIST,
            });
        }
        if repaired {
            self.repaired += 1;
            if self.repaired == 1 {
                tracing::debug!(
                    stream_id = block.stream_id,
                    "rewrote an :authority h2 would reject"
                );
            }
        }
        if self.rewriting || repaired {
            self.rewriting = true;
            write_block_frames(&mut self.out, block, &encoded);
        } else {
            self.out.extend_from_slice(&block.raw);
        }
        if encoded.capacity() <= KEEP_CAPACITY {
            self.encoded = encoded;
        }
        Ok(())
    }
}

/// The HPACK fragment's range within a complete HEADERS or CONTINUATION frame (header
/// included): padding and priority fields stripped.
fn start_fragment(h: &FrameHead, frame: &[u8]) -> Result<Range<usize>, RepairError> {
    let framing = |reason| RepairError::Framing {
        stream_id: h.stream_id,
        reason,
    };
    let mut start = FRAME_HEADER_LEN;
    let end = frame.len();
    if h.typ != TYPE_HEADERS {
        return Ok(start..end);
    }
    let mut pad = 0usize;
    if h.flags & FLAG_PADDED != 0 {
        let &first = frame
            .get(start)
            .ok_or(framing("PADDED HEADERS frame without a pad length"))?;
        pad = usize::from(first);
        start += 1;
    }
    if h.flags & FLAG_PRIORITY != 0 {
        start += 5;
        if start > end {
            return Err(framing(
                "PRIORITY HEADERS frame too short for its priority fields",
            ));
        }
    }
    let Some(fragment_end) = end.checked_sub(pad).filter(|&e| e >= start) else {
        return Err(framing("HEADERS padding longer than the frame"));
    };
    Ok(start..fragment_end)
}

/// Appends an HPACK integer with an `n`-bit prefix; `first` carries the bits above the prefix.
fn encode_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        // Fits in the prefix: value < 2^prefix_bits <= 128.
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends a raw (non-Huffman) HPACK string literal.
fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends a "literal header field without indexing — new name" (RFC 7541 §6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_str(out, name);
    encode_str(out, value);
}

/// Frames a re-encoded block as HEADERS (+ CONTINUATION) frames of at most
/// [`OUT_FRAME_SIZE`] bytes.
fn write_block_frames(out: &mut BytesMut, block: &PendingBlock, encoded: &[u8]) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first_cap = OUT_FRAME_SIZE - prio_len;
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_cap));
    let mut flags = 0u8;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(encoded.len() + FRAME_HEADER_LEN * (2 + encoded.len() / OUT_FRAME_SIZE) + 5);
    put_frame_header(
        out,
        prio_len + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream_id,
    );
    if let Some(p) = &block.priority {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(OUT_FRAME_SIZE));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, block.stream_id);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, typ: u8, flags: u8, stream_id: u32) {
    // len <= OUT_FRAME_SIZE < 2^24.
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], typ, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// An accepted connection whose client → server HTTP/2 header blocks are rewritten so
/// h2 accepts a `scheme://host:port` `:authority` (see the module docs).
#[derive(Debug)]
pub struct AuthorityRepair<S> {
    inner: S,
    rw: Rewriter,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    /// Wraps a connection with the default rule, [`strip_scheme`].
    pub fn new(inner: S) -> Self {
        Self::with_rule(inner, strip_scheme)
    }

    /// Wraps a connection with a custom `:authority` rule.
    pub fn with_rule(inner: S, rule: RepairRule) -> Self {
        AuthorityRepair {
            inner,
            rw: Rewriter::new(rule),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped connection, mutably. Reading from it directly desynchronises the repair.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// How many `:authority` values this connection has had rewritten so far.
    pub fn repaired(&self) -> u64 {
        self.rw.repaired
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rw = &mut this.rw;
        // Fill `buf` with everything available without I/O; touch the socket only when
        // nothing has been handed over yet in this call.
        let start_len = buf.filled().len();
        loop {
            let filled_any = buf.filled().len() > start_len;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &rw.failed {
                if filled_any {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(e.clone().into()));
            }
            // 1. Frames already prepared.
            if !rw.out.is_empty() {
                let n = rw.out.len().min(buf.remaining());
                buf.put_slice(&rw.out[..n]);
                rw.out.advance(n);
                release(&mut rw.out);
                continue;
            }
            // 2. Buffered payload bytes passed through unchanged.
            let transparent = rw.phase == Phase::Transparent;
            if (transparent || rw.passthrough > 0) && !rw.inbuf.is_empty() {
                let limit = if transparent {
                    usize::MAX
                } else {
                    rw.passthrough
                };
                let n = rw.inbuf.len().min(limit).min(buf.remaining());
                buf.put_slice(&rw.inbuf[..n]);
                rw.inbuf.advance(n);
                release(&mut rw.inbuf);
                if !transparent {
                    rw.passthrough -= n;
                }
                continue;
            }
            // 3. Parse what is buffered.
            let need = if transparent || rw.passthrough > 0 {
                1
            } else {
                match rw.process() {
                    Ok(need) => need,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping an HTTP/2 connection");
                        rw.failed = Some(e);
                        continue;
                    }
                }
            };
            // Hand over whatever is ready before waiting for more: the client may be waiting
            // for an answer to exactly these bytes.
            if need == 0 || !rw.out.is_empty() {
                continue;
            }
            if this.eof {
                // A truncated frame or block: hand over what there is as it came, and let
                // the server see the EOF.
                if rw.inbuf.is_empty() && rw.block.is_none() {
                    return Poll::Ready(Ok(()));
                }
                rw.give_up();
                continue;
            }
            if filled_any {
                return Poll::Ready(Ok(()));
            }
            // 4. Read from the socket straight into the caller's buffer. Bytes that pass
            //    through unchanged stay there; from the first that needs parsing on, they
            //    move to `inbuf`.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            if n == 0 {
                this.eof = true;
                continue;
            }
            let keep = rw.scan(&buf.filled()[before..]);
            if keep < n {
                rw.inbuf.extend_from_slice(&buf.filled()[before + keep..]);
                buf.set_filled(before + keep);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRepair<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

mod hpack;
pub mod unix_socket;

#[cfg(test)]
mod tests;
