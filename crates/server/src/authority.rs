//! # Repairing HTTP/2 `:authority` before h2 sees it
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint hashkv`, `defrag`) as
//! `passthrough:///http://127.0.0.1:2379`, so the client's HTTP/2 `:authority` pseudo-header
//! is `http://127.0.0.1:2379`. Go's gRPC server and etcd accept that; h2 rejects the stream
//! with `RST_STREAM(PROTOCOL_ERROR)` ("malformed authority") and has no switch to relax the
//! check. [`AuthorityRepair`] wraps every accepted connection and rewrites such a value to
//! `127.0.0.1:2379` on the way in.
//!
//! How: the write side (server → client) is passed through untouched. The read side parses
//! the client connection preface and then HTTP/2 frames. Every frame except a header block
//! (HEADERS plus its CONTINUATION frames) is passed through unchanged, payloads straight from
//! the socket. Every header block is HPACK-decoded by a decoder whose dynamic table follows
//! the client's encoder (our own small one in `hpack`: Huffman strings decode in nanoseconds,
//! indexed fields are borrowed), and its `:authority` value goes through the repair rule.
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
//! dropped; blocks larger than 16 384 bytes (the smallest SETTINGS_MAX_FRAME_SIZE a server can
//! have) are split into CONTINUATION frames. "Never indexed" literals become "without
//! indexing": the difference only matters to intermediaries, and h2 is the last hop.
//!
//! Anything that is not an HTTP/2 connection preface (e.g. HTTP/1.1) is passed through
//! untouched, so the server answers it as before. Malformed framing or HPACK that would desync
//! the two decoders fails the connection with an [`std::io::Error`] of kind `InvalidData`
//! (the client sees the connection drop) and never panics. Memory is bounded: one header
//! block is at most [`MAX_HEADER_BLOCK`] encoded bytes and [`MAX_HEADER_LIST`] decoded bytes;
//! the client's dynamic table at most [`MAX_DYNAMIC_TABLE`] bytes.
//!
//! The repair rule is a plain function so other clients with odd authorities (KMS plugins
//! that send a socket path) can get their own; [`strip_scheme`] is the default.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;
/// Largest encoded header block (all its frames' fragments) we buffer.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest decoded header list (RFC 7541 sizes: name + value + 32 per field).
pub const MAX_HEADER_LIST: usize = 1 << 20;
/// Largest HPACK dynamic table a client may ask for with a size update. h2 advertises 4096;
/// anything above what the server advertised is refused by h2 itself, so this only bounds
/// memory.
pub const MAX_DYNAMIC_TABLE: usize = 64 * 1024;
/// Largest frame payload we emit: the protocol's minimum SETTINGS_MAX_FRAME_SIZE.
const OUT_FRAME_SIZE: usize = 16_384;
/// How much we try to read from the socket at once into the frame buffer.
const READ_CHUNK: usize = 16 * 1024;

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
    /// Not HTTP/2 (no preface): everything passes through.
    Transparent,
}

/// A header block being collected from HEADERS + CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The block's frames as received, to pass on unchanged when nothing needs repair.
    raw: BytesMut,
}

/// The read-side state machine, independent of any socket.
struct Rewriter {
    phase: Phase,
    /// Bytes read from the client, not yet processed.
    inbuf: BytesMut,
    /// Bytes ready to hand to the server, ahead of any pass-through payload.
    out: BytesMut,
    /// Bytes of the current frame's payload still to pass through unchanged.
    passthrough: usize,
    block: Option<PendingBlock>,
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

impl Rewriter {
    fn new(rule: RepairRule) -> Self {
        let decoder = hpack::Decoder::new(MAX_DYNAMIC_TABLE);
        Rewriter {
            phase: Phase::Preface,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            passthrough: 0,
            block: None,
            decoder,
            rule,
            repaired: 0,
            rewriting: false,
            encoded: Vec::new(),
            failed: None,
        }
    }

    /// Processes as much of `inbuf` as possible: complete frames go to `out` (header blocks
    /// rewritten), and a pass-through frame's header goes to `out` with its payload left
    /// for [`Rewriter::passthrough`]. Returns how many more bytes are needed before the next
    /// step can be taken (0 when `out` or the pass-through has something).
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
                    if self.inbuf.len() < FRAME_HEADER_LEN {
                        return Ok(FRAME_HEADER_LEN - self.inbuf.len());
                    }
                    let h = &self.inbuf[..FRAME_HEADER_LEN];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let typ = h[3];
                    let flags = h[4];
                    let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    let header_frame =
                        typ == TYPE_HEADERS || (typ == TYPE_CONTINUATION && self.block.is_some());
                    if self.block.is_some() && typ != TYPE_CONTINUATION {
                        return Err(RepairError::Framing {
                            stream_id,
                            reason: "a header block was interrupted by another frame",
                        });
                    }
                    if typ == TYPE_PUSH_PROMISE {
                        return Err(RepairError::Framing {
                            stream_id,
                            reason: "a client must not send PUSH_PROMISE",
                        });
                    }
                    if !header_frame {
                        // Includes a CONTINUATION without a block, which h2 rejects itself.
                        self.out.extend_from_slice(&self.inbuf[..FRAME_HEADER_LEN]);
                        self.inbuf.advance(FRAME_HEADER_LEN);
                        self.passthrough = len;
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK {
                        return Err(RepairError::TooLarge {
                            stream_id,
                            limit: MAX_HEADER_BLOCK,
                        });
                    }
                    let total = FRAME_HEADER_LEN + len;
                    if self.inbuf.len() < total {
                        return Ok(total - self.inbuf.len());
                    }
                    let frame = self.inbuf.split_to(total);
                    let payload = &frame[FRAME_HEADER_LEN..];
                    if typ == TYPE_HEADERS {
                        let mut block = start_block(stream_id, flags, payload)?;
                        block.raw = frame;
                        self.block = Some(block);
                    } else if let Some(block) = self.block.as_mut() {
                        if block.stream_id != stream_id {
                            return Err(RepairError::Framing {
                                stream_id,
                                reason: "CONTINUATION for a different stream than its HEADERS",
                            });
                        }
                        if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                            return Err(RepairError::TooLarge {
                                stream_id,
                                limit: MAX_HEADER_BLOCK,
                            });
                        }
                        block.fragment.extend_from_slice(payload);
                        // Padding and empty frames are counted here.
                        if block.raw.len() + frame.len() > 2 * MAX_HEADER_BLOCK {
                            return Err(RepairError::TooLarge {
                                stream_id,
                                limit: 2 * MAX_HEADER_BLOCK,
                            });
                        }
                        block.raw.extend_from_slice(&frame);
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        if let Some(block) = self.block.take() {
                            self.finish_block(&block)?;
                        }
                    }
                }
            }
        }
    }

    /// Decodes a complete header block and appends it to `out`: its original frames while the
    /// connection has needed no repair, else re-encoded frames (see [`Rewriter::rewriting`]).
    fn finish_block(&mut self, block: &PendingBlock) -> Result<(), RepairError> {
        let rule = self.rule;
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let mut list_size = 0usize;
        let mut repaired = false;
        self.decoder
            .decode(&block.fragment, |name, value| {
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
                    "rewrote a scheme://host:port :authority to host:port"
                );
            }
        }
        if self.rewriting || repaired {
            self.rewriting = true;
            write_block_frames(&mut self.out, block, &encoded);
        } else {
            self.out.extend_from_slice(&block.raw);
        }
        self.encoded = encoded;
        Ok(())
    }
}

/// Parses a HEADERS frame payload: strips padding, keeps the priority fields.
fn start_block(stream_id: u32, flags: u8, payload: &[u8]) -> Result<PendingBlock, RepairError> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&first, rest) = p.split_first().ok_or(RepairError::Framing {
            stream_id,
            reason: "PADDED HEADERS frame without a pad length",
        })?;
        pad = usize::from(first);
        p = rest;
    }
    let priority = if flags & FLAG_PRIORITY != 0 {
        let Some((fields, rest)) = p.split_first_chunk::<5>() else {
            return Err(RepairError::Framing {
                stream_id,
                reason: "PRIORITY HEADERS frame too short for its priority fields",
            });
        };
        p = rest;
        Some(*fields)
    } else {
        None
    };
    let Some(fragment_len) = p.len().checked_sub(pad) else {
        return Err(RepairError::Framing {
            stream_id,
            reason: "HEADERS padding longer than the frame",
        });
    };
    Ok(PendingBlock {
        stream_id,
        end_stream: flags & FLAG_END_STREAM != 0,
        priority,
        fragment: p[..fragment_len].to_vec(),
        raw: BytesMut::new(),
    })
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

    /// How many `:authority` values this connection has had rewritten so far.
    pub fn repaired(&self) -> u64 {
        self.rw.repaired
    }
}

/// Reads from `inner` into `buf`'s unfilled part, at most `limit` bytes. Returns the count.
fn poll_read_limited<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    limit: usize,
) -> Poll<io::Result<usize>> {
    let want = buf.remaining().min(limit);
    let dst = buf.initialize_unfilled_to(want);
    let mut sub = ReadBuf::new(dst);
    ready!(Pin::new(inner).poll_read(cx, &mut sub))?;
    let n = sub.filled().len();
    buf.advance(n);
    Poll::Ready(Ok(n))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Fill `buf` with everything available without I/O; touch the socket only when
        // nothing has been handed over yet in this call.
        let start_len = buf.filled().len();
        loop {
            let filled_any = buf.filled().len() > start_len;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.rw.failed {
                if filled_any {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(e.clone().into()));
            }
            // 1. Frames already prepared.
            if !this.rw.out.is_empty() {
                let n = this.rw.out.len().min(buf.remaining());
                buf.put_slice(&this.rw.out[..n]);
                this.rw.out.advance(n);
                continue;
            }
            // 2. Payload bytes passed through unchanged: from the buffer, else straight from
            //    the socket into the caller's buffer.
            let transparent = this.rw.phase == Phase::Transparent;
            if transparent || this.rw.passthrough > 0 {
                let limit = if transparent {
                    usize::MAX
                } else {
                    this.rw.passthrough
                };
                let n = if !this.rw.inbuf.is_empty() {
                    let n = this.rw.inbuf.len().min(limit).min(buf.remaining());
                    buf.put_slice(&this.rw.inbuf[..n]);
                    this.rw.inbuf.advance(n);
                    n
                } else if this.eof || filled_any {
                    return Poll::Ready(Ok(()));
                } else {
                    let n = ready!(poll_read_limited(&mut this.inner, cx, buf, limit))?;
                    if n == 0 {
                        this.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    n
                };
                if !transparent {
                    this.rw.passthrough -= n;
                }
                continue;
            }
            // 3. Parse what is buffered.
            let need = match this.rw.process() {
                Ok(need) => need,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an HTTP/2 connection");
                    this.rw.failed = Some(e);
                    continue;
                }
            };
            // Hand over whatever is ready before waiting for more: the client may be waiting
            // for an answer to exactly these bytes.
            if need == 0 || !this.rw.out.is_empty() {
                continue;
            }
            if this.eof {
                // A truncated frame: hand over what there is and let the server see the EOF.
                if this.rw.inbuf.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let rest = this.rw.inbuf.split();
                this.rw.out.extend_from_slice(&rest);
                continue;
            }
            if filled_any {
                return Poll::Ready(Ok(()));
            }
            // 4. Read more from the socket into the frame buffer.
            let start = this.rw.inbuf.len();
            this.rw.inbuf.resize(start + need.max(READ_CHUNK), 0);
            let mut rb = ReadBuf::new(&mut this.rw.inbuf[start..]);
            let res = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.rw.inbuf.truncate(start + n);
            ready!(res)?;
            if n == 0 {
                this.eof = true;
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

impl<S: Connected> Connected for AuthorityRepair<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

mod hpack;

#[cfg(test)]
mod tests;
