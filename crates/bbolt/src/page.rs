//! Byte layouts of bbolt's on-disk format (go.etcd.io/bbolt, format version 2).
//!
//! All integers are little endian. A file is a sequence of pages of `page_size` bytes (4096 here):
//!
//! ```text
//! page header (16 bytes): id u64 | flags u16 | count u16 | overflow u32
//!   flags: branch 0x01, leaf 0x02, meta 0x04, freelist 0x10
//!   overflow: how many pages follow this one as its continuation (no header of their own)
//! page 0, 1: meta, at offset 16 of the page (64 bytes):
//!   magic u32 = 0xED0CDAED | version u32 = 2 | page_size u32 | flags u32
//!   | root bucket {root pgid u64, sequence u64} | freelist pgid u64 | pgid (high water mark) u64
//!   | txid u64 | checksum u64 = FNV-1a 64 of the 56 bytes before it
//! leaf page: count elements {flags u32 (0x01 = bucket), pos u32, ksize u32, vsize u32}, then data;
//!   pos is the distance from the element's own first byte to its key, the value follows the key
//! branch page: count elements {pos u32, ksize u32, pgid u64}, then the keys; each key is the
//!   first key of the child page
//! freelist page: count free page ids u64 (count 0xFFFF: the real count is the first u64)
//! bucket value (leaf element with flag 0x01): {root pgid u64, sequence u64}; root 0 means an
//!   inline bucket whose leaf page follows the 16 bytes inside the value itself
//! ```
//!
//! The meta page with the highest txid whose checksum is valid is the current one; its root
//! bucket is a B+tree whose leaf entries are the top-level buckets.

/// Size of the pages this crate writes.
pub const PAGE_SIZE: usize = 4096;
/// Size of a page header.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of a leaf element and of a branch element.
pub const ELEMENT_SIZE: usize = 16;
/// Size of the bucket header stored as a bucket's value.
pub const BUCKET_HEADER_SIZE: usize = 16;

/// Page flag of a branch page.
pub const FLAG_BRANCH: u16 = 0x01;
/// Page flag of a leaf page.
pub const FLAG_LEAF: u16 = 0x02;
/// Page flag of a meta page.
pub const FLAG_META: u16 = 0x04;
/// Page flag of a freelist page.
pub const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a bucket header.
pub const ELEMENT_BUCKET: u32 = 0x01;

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The data format version this crate reads and writes.
pub const VERSION: u32 = 2;
/// Meta freelist value meaning "freelist not persisted" (bbolt's NoFreelistSync, used by etcd).
pub const NO_FREELIST: u64 = u64::MAX;

/// bbolt's largest key.
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's largest value.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// Offset of the meta structure in a meta page.
const META_OFFSET: usize = PAGE_HEADER_SIZE;
/// Bytes covered by the meta checksum (magic up to txid).
const META_SUMMED: usize = 56;

/// Reads a little-endian u16 at `at`; the caller guarantees the bounds.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

/// Reads a little-endian u32 at `at`; the caller guarantees the bounds.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads a little-endian u64 at `at`; the caller guarantees the bounds.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    /// Parses the first 16 bytes of `b` (which must hold them).
    pub fn parse(b: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    /// Writes the header into the first 16 bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        put_u64(b, 0, self.id);
        put_u16(b, 8, self.flags);
        put_u16(b, 10, self.count);
        put_u32(b, 12, self.overflow);
    }
}

/// The content of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket (whose entries are the top-level buckets).
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// High water mark: number of pages in use (file size / page size).
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// Writes a whole meta page (header included, checksum computed) into `page`, which must
    /// be at least 80 bytes long and zeroed elsewhere.
    pub fn write_page(&self, page_id: u64, page: &mut [u8]) {
        PageHeader {
            id: page_id,
            flags: FLAG_META,
            count: 0,
            overflow: 0,
        }
        .write(page);
        let m = META_OFFSET;
        put_u32(page, m, MAGIC);
        put_u32(page, m + 4, VERSION);
        put_u32(page, m + 8, self.page_size);
        put_u32(page, m + 12, self.flags);
        put_u64(page, m + 16, self.root);
        put_u64(page, m + 24, self.root_sequence);
        put_u64(page, m + 32, self.freelist);
        put_u64(page, m + 40, self.pgid);
        put_u64(page, m + 48, self.txid);
        let sum = fnv1a64(&page[m..m + META_SUMMED]);
        put_u64(page, m + META_SUMMED, sum);
    }

    /// Parses and validates (magic, version, checksum) the meta page in `page`, which holds at
    /// least the first 80 bytes of the page. Returns what is wrong otherwise.
    pub fn parse(page: &[u8]) -> Result<Meta, String> {
        if page.len() < META_OFFSET + META_SUMMED + 8 {
            return Err(format!("meta page truncated to {} bytes", page.len()));
        }
        let m = META_OFFSET;
        let magic = u32_at(page, m);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x} (want {MAGIC:#010x})"));
        }
        let version = u32_at(page, m + 4);
        if version != VERSION {
            return Err(format!("unsupported version {version} (want {VERSION})"));
        }
        let stored = u64_at(page, m + META_SUMMED);
        let computed = fnv1a64(&page[m..m + META_SUMMED]);
        if stored != computed {
            return Err(format!(
                "bad checksum {stored:#018x} (computed {computed:#018x})"
            ));
        }
        Ok(Meta {
            page_size: u32_at(page, m + 8),
            flags: u32_at(page, m + 12),
            root: u64_at(page, m + 16),
            root_sequence: u64_at(page, m + 24),
            freelist: u64_at(page, m + 32),
            pgid: u64_at(page, m + 40),
            txid: u64_at(page, m + 48),
        })
    }
}

/// FNV-1a, 64 bits (Go's hash/fnv New64a), the meta page checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Writes a bucket header {root, sequence} as a 16-byte value.
pub fn bucket_header(root: u64, sequence: u64) -> [u8; BUCKET_HEADER_SIZE] {
    let mut b = [0u8; BUCKET_HEADER_SIZE];
    put_u64(&mut b, 0, root);
    put_u64(&mut b, 8, sequence);
    b
}

/// One element to lay out on a leaf or branch page.
pub struct Element<'a> {
    /// Leaf: element flags; branch: unused.
    pub flags: u32,
    pub key: &'a [u8],
    /// Leaf: the value; branch: empty.
    pub value: &'a [u8],
    /// Branch: the child page; leaf: unused.
    pub child: u64,
}

/// Lays out a leaf (`FLAG_LEAF`) or branch (`FLAG_BRANCH`) page: header, element array, data.
/// Returns the bytes, padded to whole pages, and the overflow count. The caller keeps
/// `elements.len() <= u16::MAX` and the total under 4 GiB pages.
pub fn lay_out(id: u64, flags: u16, elements: &[Element<'_>]) -> (Vec<u8>, u32) {
    let data_len: usize = elements.iter().map(|e| e.key.len() + e.value.len()).sum();
    let used = PAGE_HEADER_SIZE + ELEMENT_SIZE * elements.len() + data_len;
    let pages = used.div_ceil(PAGE_SIZE).max(1);
    let mut buf = vec![0u8; pages * PAGE_SIZE];
    let overflow = u32::try_from(pages - 1).unwrap_or(u32::MAX);
    PageHeader {
        id,
        flags,
        count: u16::try_from(elements.len()).unwrap_or(u16::MAX),
        overflow,
    }
    .write(&mut buf);
    let mut data_at = PAGE_HEADER_SIZE + ELEMENT_SIZE * elements.len();
    for (i, e) in elements.iter().enumerate() {
        let el = PAGE_HEADER_SIZE + ELEMENT_SIZE * i;
        // Positions fit in u32: a page's content stays far below 4 GiB (values <= 2 GiB).
        let pos = (data_at - el) as u32;
        if flags == FLAG_LEAF {
            put_u32(&mut buf, el, e.flags);
            put_u32(&mut buf, el + 4, pos);
            put_u32(&mut buf, el + 8, e.key.len() as u32);
            put_u32(&mut buf, el + 12, e.value.len() as u32);
        } else {
            put_u32(&mut buf, el, pos);
            put_u32(&mut buf, el + 4, e.key.len() as u32);
            put_u64(&mut buf, el + 8, e.child);
        }
        buf[data_at..data_at + e.key.len()].copy_from_slice(e.key);
        data_at += e.key.len();
        buf[data_at..data_at + e.value.len()].copy_from_slice(e.value);
        data_at += e.value.len();
    }
    (buf, overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_go_vectors() {
        // Values of Go's hash/fnv New64a.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn meta_round_trip_and_checksum() {
        let meta = Meta {
            page_size: 4096,
            flags: 0,
            root: 7,
            root_sequence: 0,
            freelist: 2,
            pgid: 9,
            txid: 42,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        meta.write_page(0, &mut page);
        assert_eq!(Meta::parse(&page), Ok(meta));
        page[16 + 20] ^= 1;
        assert!(Meta::parse(&page).unwrap_err().contains("checksum"));
    }
}
