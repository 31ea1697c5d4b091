//! A small HPACK (RFC 7541) decoder for [`crate::AuthorityRepair`]: static table, dynamic
//! table with eviction and size updates, integers, raw and Huffman strings. It follows the
//! client's encoder so every header block can be read; it never panics on any input and
//! bounds its memory (dynamic table at most the allowed size).
//!
//! Written for the hot path: indexed fields are passed to the callback as borrowed slices,
//! and Huffman strings are decoded with the canonical-code method (the RFC's code is
//! canonical: codes are assigned in order of length, then symbol), which needs only the
//! code length of each symbol.

use std::collections::VecDeque;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("header block truncated")]
    Truncated,
    /// An integer is longer than any sane value.
    #[error("integer too large")]
    IntegerOverflow,
    /// A table index is 0 or beyond the static and dynamic tables.
    #[error("table index {0} out of range")]
    BadIndex(usize),
    /// A size update asks for more than allowed.
    #[error("dynamic table size update to {requested} exceeds the allowed {allowed}")]
    TableTooLarge {
        /// Requested size.
        requested: usize,
        /// Allowed maximum.
        allowed: usize,
    },
    /// A size update after the first field of a block.
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
    /// A Huffman string is malformed (EOS inside, bad or long padding).
    #[error("invalid Huffman-coded string")]
    Huffman,
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 Appendix B: the Huffman code length, in bits, of each symbol 0..=255 and EOS
/// (256). The codes themselves follow canonically.
pub(super) const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const MAX_CODE_LEN: usize = 30;
const EOS: u16 = 256;

/// Canonical-code decoding tables: for each length, the first code, how many codes have
/// that length, and where their symbols start in `symbols` (sorted by length, then symbol).
struct Canonical {
    first_code: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

const fn build_canonical() -> Canonical {
    let mut count = [0u32; MAX_CODE_LEN + 1];
    let mut i = 0;
    while i < 257 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut first_code = [0u32; MAX_CODE_LEN + 1];
    let mut offset = [0u16; MAX_CODE_LEN + 1];
    let mut code = 0u32;
    let mut off = 0u16;
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        code = (code + count[len - 1]) << 1;
        first_code[len] = code;
        offset[len] = off;
        off += count[len] as u16;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        let mut s = 0;
        while s < 257 {
            if CODE_LENGTHS[s] as usize == len {
                symbols[next[len] as usize] = s as u16;
                next[len] += 1;
            }
            s += 1;
        }
        len += 1;
    }
    Canonical {
        first_code,
        count,
        offset,
        symbols,
    }
}

static CANONICAL: Canonical = build_canonical();

/// Decodes a Huffman-coded string (RFC 7541 §5.2) into `out`.
pub fn huffman_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let c = &CANONICAL;
    let mut code = 0u32;
    let mut len = 0usize;
    let mut all_ones = true;
    for &byte in input {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code = (code << 1) | bit;
            all_ones &= bit == 1;
            len += 1;
            if len > MAX_CODE_LEN {
                return Err(HpackError::Huffman);
            }
            let delta = code.wrapping_sub(c.first_code[len]);
            if code >= c.first_code[len] && delta < c.count[len] {
                let sym = c.symbols[usize::from(c.offset[len]) + delta as usize];
                if sym == EOS {
                    return Err(HpackError::Huffman);
                }
                // Symbols other than EOS are < 256.
                out.push(sym as u8);
                code = 0;
                len = 0;
                all_ones = true;
            }
        }
    }
    // Padding: at most 7 bits, all ones (the most significant bits of EOS).
    if len > 7 || !all_ones {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// A decoder's view of one header block's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, HpackError> {
        let first = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        let max = (1usize << prefix_bits) - 1;
        let mut value = usize::from(first) & max;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
            self.pos += 1;
            // Five continuation bytes reach 2^35: far beyond any header or table size.
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// A string literal: borrowed if raw, decoded into `scratch` if Huffman-coded.
    fn string<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Result<Str<'a, 's>, HpackError> {
        let huffman = self.buf.get(self.pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            scratch.clear();
            huffman_decode(raw, scratch)?;
            Ok(Str::Scratch(scratch))
        } else {
            Ok(Str::Raw(raw))
        }
    }
}

enum Str<'a, 's> {
    Raw(&'a [u8]),
    Scratch(&'s [u8]),
}

impl Str<'_, '_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Str::Raw(b) | Str::Scratch(b) => b,
        }
    }
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// The decoder state of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    allowed: usize,
    name_scratch: Vec<u8>,
    value_scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder with the protocol's initial table size (4096) that accepts size updates up
    /// to `allowed` bytes.
    pub fn new(allowed: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: 4096.min(allowed),
            allowed,
            name_scratch: Vec::new(),
            value_scratch: Vec::new(),
        }
    }

    /// Frees the scratch buffers if a large block made them grow.
    pub fn release(&mut self) {
        for scratch in [&mut self.name_scratch, &mut self.value_scratch] {
            if scratch.capacity() > 1024 {
                *scratch = Vec::new();
            }
        }
    }

    /// Bytes held: the dynamic table's fields and the scratch buffers.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.size + self.name_scratch.capacity() + self.value_scratch.capacity()
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok((n, v));
        }
        self.table
            .get(index - STATIC_TABLE.len() - 1)
            .map(|(n, v)| (&**n, &**v))
            .ok_or(HpackError::BadIndex(index))
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.table.push_front((name.into(), value.into()));
        self.size += size;
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field in
    /// order. Updates the dynamic table as the encoder did.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut cur = Cursor { buf: block, pos: 0 };
        let mut seen_field = false;
        while let Some(&first) = block.get(cur.pos) {
            if first & 0x80 != 0 {
                let index = cur.integer(7)?;
                let (n, v) = self.get(index)?;
                field(n, v);
            } else if first & 0xe0 == 0x20 {
                if seen_field {
                    return Err(HpackError::LateSizeUpdate);
                }
                let requested = cur.integer(5)?;
                if requested > self.allowed {
                    return Err(HpackError::TableTooLarge {
                        requested,
                        allowed: self.allowed,
                    });
                }
                self.max_size = requested;
                self.evict_to(requested);
                continue;
            } else {
                let (prefix, index_it) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let name_index = cur.integer(prefix)?;
                let mut name_scratch = std::mem::take(&mut self.name_scratch);
                let mut value_scratch = std::mem::take(&mut self.value_scratch);
                let result = (|| {
                    let name_str;
                    let name: &[u8] = if name_index == 0 {
                        name_str = cur.string(&mut name_scratch)?;
                        name_str.bytes()
                    } else {
                        self.get(name_index)?.0
                    };
                    let value = cur.string(&mut value_scratch)?;
                    field(name, value.bytes());
                    Ok::<_, HpackError>(index_it.then(|| (name.to_vec(), value.bytes().to_vec())))
                })();
                self.name_scratch = name_scratch;
                self.value_scratch = value_scratch;
                if let Some((n, v)) = result? {
                    self.insert(&n, &v);
                }
            }
            seen_field = true;
        }
        Ok(())
    }
}
