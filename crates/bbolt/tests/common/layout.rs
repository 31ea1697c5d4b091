//! Hand-written knowledge of bbolt's page layout, for tests that inspect or damage files
//! (independent of the crate's own page module on purpose).

const PS: usize = 4096;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// FNV-1a 64 (Go's hash/fnv New64a).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Byte offset of meta field `field` (offset within the meta struct) of meta page `page`.
pub fn meta_at(page: usize, field: usize) -> usize {
    page * PS + 16 + field
}

pub const META_ROOT: usize = 16;
pub const META_PGID: usize = 40;

/// Recomputes the checksum of meta page `page`.
pub fn fix_meta_checksum(file: &mut [u8], page: usize) {
    let start = meta_at(page, 0);
    let sum = fnv1a64(&file[start..start + 56]);
    set_u64(file, start + 56, sum);
}

/// Sets a meta field in both meta pages, with valid checksums.
pub fn set_meta_u64(file: &mut [u8], field: usize, v: u64) {
    for page in 0..2 {
        set_u64(file, meta_at(page, field), v);
        fix_meta_checksum(file, page);
    }
}

pub fn page_flags(file: &[u8], id: u64) -> u16 {
    u16_at(file, id as usize * PS + 8)
}

pub fn page_count(file: &[u8], id: u64) -> u16 {
    u16_at(file, id as usize * PS + 10)
}

/// Byte offset of element `i` of page `id`.
pub fn elem_at(id: u64, i: usize) -> usize {
    id as usize * PS + 16 + 16 * i
}

/// Child page of branch element `i` of page `id`.
pub fn branch_child(file: &[u8], id: u64, i: usize) -> u64 {
    u64_at(file, elem_at(id, i) + 8)
}

/// Root page of top-level bucket `name` (0 if inline), assuming a one-leaf root bucket.
pub fn bucket_root(file: &[u8], name: &[u8]) -> u64 {
    let root = u64_at(file, meta_at(0, META_ROOT));
    assert_eq!(page_flags(file, root), 0x02, "root bucket is one leaf page");
    for i in 0..page_count(file, root) as usize {
        let at = elem_at(root, i);
        let pos = u32_at(file, at + 4) as usize;
        let ksize = u32_at(file, at + 8) as usize;
        if &file[at + pos..at + pos + ksize] == name {
            return u64_at(file, at + pos + ksize);
        }
    }
    panic!("no bucket {name:?}");
}

/// Number of branch levels above the leaves of a tree rooted at `id` (along the first child).
pub fn branch_levels(file: &[u8], mut id: u64) -> usize {
    let mut levels = 0;
    while page_flags(file, id) == 0x01 {
        levels += 1;
        id = branch_child(file, id, 0);
    }
    levels
}
