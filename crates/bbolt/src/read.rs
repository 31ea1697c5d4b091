//! [`Reader`]: reads the top-level buckets of a bbolt file.
//!
//! Nothing in the file is trusted: every page id is checked against the high water mark and the
//! file length, every element against its page, keys must come in strictly ascending order, and
//! each page may be visited once per walk (a bitset over the file's pages), so a corrupt file
//! gives [`Error::Corrupt`], never a panic, a huge allocation or an endless loop.

use std::io::{Read, Seek, SeekFrom};

use crate::error::Error;
use crate::page::{
    u32_at, u64_at, Meta, PageHeader, BUCKET_HEADER_SIZE, ELEMENT_BUCKET, ELEMENT_SIZE,
    FLAG_BRANCH, FLAG_LEAF, NO_FREELIST, PAGE_HEADER_SIZE, PAGE_SIZE,
};

/// Deepest B+tree accepted (bbolt trees are a handful of levels deep).
const MAX_DEPTH: usize = 64;

/// Reads a bbolt file (written by Go's bbolt / etcd, or by [`crate::Writer`]).
///
/// The file starts at the position `inner` has when given to [`Reader::open`]; bytes after the
/// last page (such as the SHA-256 that `etcdctl snapshot save` appends) are ignored. Each page
/// read is one seek and one read on `inner`.
pub struct Reader<R: Read + Seek> {
    inner: R,
    base: u64,
    meta: Meta,
    page_size: u64,
}

impl<R: Read + Seek> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A leaf or branch page read from the file (or an inline bucket's page), with its element
/// count checked to fit.
struct Page {
    id: u64,
    flags: u16,
    count: usize,
    buf: Vec<u8>,
}

/// One element of a page, bounds checked.
enum Elem<'a> {
    Leaf {
        flags: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
    Branch {
        key: &'a [u8],
        child: u64,
    },
}

impl Page {
    /// Parses a page held in `buf` whose header is already known to be a leaf or branch.
    fn new(id: u64, buf: Vec<u8>) -> Result<Page, Error> {
        let header = PageHeader::parse(&buf);
        let count = usize::from(header.count);
        if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > buf.len() {
            return Err(Error::corrupt(
                id,
                format!("{count} elements do not fit in {} bytes", buf.len()),
            ));
        }
        Ok(Page {
            id,
            flags: header.flags,
            count,
            buf,
        })
    }

    fn elem(&self, i: usize) -> Result<Elem<'_>, Error> {
        let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let b = &self.buf;
        let (pos, ksize, vsize) = if self.flags == FLAG_LEAF {
            (u32_at(b, at + 4), u32_at(b, at + 8), u32_at(b, at + 12))
        } else {
            (u32_at(b, at), u32_at(b, at + 4), 0)
        };
        let start = at as u64 + u64::from(pos);
        let key_end = start + u64::from(ksize);
        let end = key_end + u64::from(vsize);
        if end > b.len() as u64 {
            return Err(Error::corrupt(
                self.id,
                format!(
                    "element {i} (offset {pos}, key {ksize} bytes, value {vsize} bytes) ends \
                     past the page ({} bytes)",
                    b.len()
                ),
            ));
        }
        if ksize == 0 {
            return Err(Error::corrupt(
                self.id,
                format!("element {i} has an empty key"),
            ));
        }
        // In bounds: end <= b.len(), which fits usize.
        let (start, key_end, end) = (start as usize, key_end as usize, end as usize);
        Ok(if self.flags == FLAG_LEAF {
            Elem::Leaf {
                flags: u32_at(b, at),
                key: &b[start..key_end],
                value: &b[key_end..end],
            }
        } else {
            Elem::Branch {
                key: &b[start..key_end],
                child: u64_at(b, at + 8),
            }
        })
    }
}

/// Called for each leaf element in order: (page, element flags, key, value).
type LeafVisitor<'a> = dyn FnMut(u64, u32, &[u8], &[u8]) -> Result<(), Error> + 'a;

/// Where a bucket's tree starts.
enum Root {
    Page(u64),
    /// An inline bucket: its leaf page, and the page holding the bucket entry (for errors).
    Inline(Vec<u8>, u64),
}

impl<R: Read + Seek> Reader<R> {
    /// Checks the meta pages (magic, version, checksum, page ids within the file; picks the
    /// valid one with the highest txid).
    pub fn open(mut inner: R) -> Result<Self, Error> {
        let base = inner
            .stream_position()
            .map_err(Error::io("finding the start of the file"))?;
        let end = inner
            .seek(SeekFrom::End(0))
            .map_err(Error::io("finding the length of the file"))?;
        let len = end.saturating_sub(base);

        let first = read_meta(&mut inner, base, len, 0);
        let second_at = match &first {
            Ok(m) => u64::from(m.page_size),
            Err(_) => PAGE_SIZE as u64,
        };
        let second = read_meta(&mut inner, base, len, second_at);
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => {
                return Err(Error::corrupt(
                    0,
                    format!("no valid meta page (page 0: {a}; page 1: {b})"),
                ))
            }
        };
        Ok(Reader {
            inner,
            base,
            page_size: u64::from(meta.page_size),
            meta,
        })
    }

    /// Transaction id of the meta page in use.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// Page size of the file.
    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// Size of the bbolt data in bytes (pages in use times page size): where a trailing
    /// snapshot SHA-256 starts. bbolt's `tx.Size()`.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Names of the top-level buckets, sorted.
    pub fn buckets(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        let mut names = Vec::new();
        self.walk(Root::Page(self.meta.root), &mut |page, flags, key, _| {
            if flags & ELEMENT_BUCKET == 0 {
                return Err(top_level_key(page));
            }
            names.push(key.to_vec());
            Ok(())
        })?;
        Ok(names)
    }

    /// Every entry of a top-level bucket in key order; returns false if there is no such bucket.
    /// A visitor error stops the walk and is returned as is (wrap your own errors in
    /// [`Error::Aborted`]).
    #[allow(clippy::type_complexity)] // the signature the snapshot code is written against
    pub fn for_each(
        &mut self,
        bucket: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let Some(root) = self.find_bucket(bucket)? else {
            return Ok(false);
        };
        self.walk(root, &mut |page, flags, key, value| {
            if flags & ELEMENT_BUCKET != 0 {
                return Err(Error::Unsupported {
                    page,
                    what: "nested bucket (etcd files have none)".to_string(),
                });
            }
            f(key, value)
        })?;
        Ok(true)
    }

    /// Finds a top-level bucket's tree.
    fn find_bucket(&mut self, name: &[u8]) -> Result<Option<Root>, Error> {
        let mut found = None;
        self.walk(
            Root::Page(self.meta.root),
            &mut |page, flags, key, value| {
                if flags & ELEMENT_BUCKET == 0 {
                    return Err(top_level_key(page));
                }
                if key == name {
                    found = Some((page, value.to_vec()));
                }
                Ok(())
            },
        )?;
        let Some((page, value)) = found else {
            return Ok(None);
        };
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(Error::corrupt(
                page,
                format!("bucket header of {} bytes (want 16)", value.len()),
            ));
        }
        let root = u64_at(&value, 0);
        if root != 0 {
            return Ok(Some(Root::Page(root)));
        }
        let inline = value[BUCKET_HEADER_SIZE..].to_vec();
        if inline.len() < PAGE_HEADER_SIZE {
            return Err(Error::corrupt(
                page,
                format!("inline bucket page of {} bytes", inline.len()),
            ));
        }
        Ok(Some(Root::Inline(inline, page)))
    }

    /// Visits every leaf element of a tree in order: (page, flags, key, value).
    fn walk(&mut self, root: Root, visit: &mut LeafVisitor<'_>) -> Result<(), Error> {
        let first = match root {
            Root::Page(id) => id,
            Root::Inline(buf, owner) => {
                let flags = PageHeader::parse(&buf).flags;
                if flags != FLAG_LEAF {
                    return Err(Error::corrupt(
                        owner,
                        format!("inline bucket page has flags {flags:#x} (want leaf 0x02)"),
                    ));
                }
                let page = Page::new(owner, buf)?;
                return visit_leaf(&page, &mut KeyCheck::default(), visit);
            }
        };
        let mut visited = vec![0u64; self.meta.pgid.div_ceil(64) as usize];
        let mut keys = KeyCheck::default();
        let mut stack = vec![Frame {
            page: self.load(first, &mut visited)?,
            next: 0,
            upper: None,
        }];
        while let Some(frame) = stack.last_mut() {
            let page = &frame.page;
            if page.flags == FLAG_LEAF {
                if let Some(leaf) = stack.pop() {
                    keys.upper = leaf.upper;
                    visit_leaf(&leaf.page, &mut keys, visit)?;
                }
                continue;
            }
            if frame.next == page.count {
                if page.count == 0 {
                    return Err(Error::corrupt(page.id, "branch page without elements"));
                }
                stack.pop();
                continue;
            }
            let i = frame.next;
            let Elem::Branch { key, child } = page.elem(i)? else {
                return unreachable_leaf(page.id);
            };
            // The child's keys lie in [key, next key of this page, or this page's own bound).
            let upper = if i + 1 < page.count {
                let Elem::Branch { key: next_key, .. } = page.elem(i + 1)? else {
                    return unreachable_leaf(page.id);
                };
                if next_key <= key {
                    return Err(Error::corrupt(
                        page.id,
                        format!("branch key {} is not greater than the key before it", i + 1),
                    ));
                }
                Some(next_key.to_vec())
            } else {
                frame.upper.clone()
            };
            keys.lower = Some(key.to_vec());
            frame.next += 1;
            if stack.len() >= MAX_DEPTH {
                return Err(Error::corrupt(
                    child,
                    format!("tree deeper than {MAX_DEPTH} levels"),
                ));
            }
            let page = self.load(child, &mut visited)?;
            stack.push(Frame {
                page,
                next: 0,
                upper,
            });
        }
        Ok(())
    }

    /// Reads a leaf or branch page (with its overflow pages), once per walk.
    fn load(&mut self, id: u64, visited: &mut [u64]) -> Result<Page, Error> {
        let pgid = self.meta.pgid;
        if id < 2 || id >= pgid {
            return Err(Error::corrupt(
                id,
                format!("page id out of range (pages 2..{pgid} hold data)"),
            ));
        }
        let at = self.base + id * self.page_size;
        let mut raw = [0u8; PAGE_HEADER_SIZE];
        self.inner
            .seek(SeekFrom::Start(at))
            .map_err(Error::io("seeking to a page"))?;
        self.inner
            .read_exact(&mut raw)
            .map_err(Error::io("reading a page header"))?;
        let header = PageHeader::parse(&raw);
        if header.id != id {
            return Err(Error::corrupt(
                id,
                format!("page header says page {}", header.id),
            ));
        }
        if header.flags != FLAG_LEAF && header.flags != FLAG_BRANCH {
            return Err(Error::corrupt(
                id,
                format!(
                    "page flags {:#x} where a leaf (0x02) or branch (0x01) page belongs",
                    header.flags
                ),
            ));
        }
        let last = id + u64::from(header.overflow);
        if last >= pgid {
            return Err(Error::corrupt(
                id,
                format!(
                    "{} overflow pages run past the last page {}",
                    header.overflow,
                    pgid - 1
                ),
            ));
        }
        for p in id..=last {
            let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if visited[word] & bit != 0 {
                return Err(Error::corrupt(
                    p,
                    "page referenced twice (cycle or shared page)",
                ));
            }
            visited[word] |= bit;
        }
        // In range: (last + 1) * page_size <= file length, checked at open.
        let len = ((last - id + 1) * self.page_size) as usize;
        let mut buf = vec![0u8; len];
        buf[..PAGE_HEADER_SIZE].copy_from_slice(&raw);
        self.inner
            .read_exact(&mut buf[PAGE_HEADER_SIZE..])
            .map_err(Error::io("reading a page"))?;
        Page::new(id, buf)
    }
}

/// A page on the walk's path and where the walk is in it.
struct Frame {
    page: Page,
    /// Next element to descend into (branch pages).
    next: usize,
    /// Keys below this page must be less than this (the parent's next key).
    upper: Option<Vec<u8>>,
}

/// What the next leaf keys must respect.
#[derive(Default)]
struct KeyCheck {
    /// The last key seen: the next must be greater.
    last: Option<Vec<u8>>,
    /// The key of the branch element just descended through: the next key must not be less.
    lower: Option<Vec<u8>>,
    /// The bound of the current leaf's parent: its keys must be less.
    upper: Option<Vec<u8>>,
}

/// Visits the elements of a leaf page, checking that keys ascend and stay within the range
/// the branch pages above give them.
fn visit_leaf(page: &Page, keys: &mut KeyCheck, visit: &mut LeafVisitor<'_>) -> Result<(), Error> {
    for i in 0..page.count {
        let Elem::Leaf { flags, key, value } = page.elem(i)? else {
            return unreachable_leaf(page.id);
        };
        let out_of_order = |why: &str| {
            Err(Error::corrupt(
                page.id,
                format!("key of element {i} is {why}"),
            ))
        };
        if keys.last.as_deref().is_some_and(|last| key <= last) {
            return out_of_order("not greater than the key before it");
        }
        if keys
            .lower
            .take()
            .is_some_and(|lower| key < lower.as_slice())
        {
            return out_of_order("less than the key of its parent branch element");
        }
        if keys.upper.as_deref().is_some_and(|upper| key >= upper) {
            return out_of_order("not less than the next key of its parent branch page");
        }
        let last = keys.last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
        visit(page.id, flags, key, value)?;
    }
    Ok(())
}

/// Element kinds follow the page flags; this only guards against a mix-up in this module.
fn unreachable_leaf<T>(page: u64) -> Result<T, Error> {
    Err(Error::corrupt(
        page,
        "element kind does not match page kind",
    ))
}

fn top_level_key(page: u64) -> Error {
    Error::Unsupported {
        page,
        what: "plain key in the root bucket (only buckets belong there)".to_string(),
    }
}

/// Reads and checks the meta page at byte `at` of a file of `len` bytes.
fn read_meta<R: Read + Seek>(inner: &mut R, base: u64, len: u64, at: u64) -> Result<Meta, String> {
    let mut page = [0u8; 80];
    if at + page.len() as u64 > len {
        return Err(format!("file of {len} bytes is too short"));
    }
    inner
        .seek(SeekFrom::Start(base + at))
        .and_then(|_| inner.read_exact(&mut page))
        .map_err(|e| format!("read failed: {e}"))?;
    let meta = Meta::parse(&page)?;
    let ps = u64::from(meta.page_size);
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return Err(format!("unsupported page size {ps}"));
    }
    match meta.pgid.checked_mul(ps) {
        Some(size) if size <= len => {}
        _ => {
            return Err(format!(
                "file truncated: {} pages of {ps} bytes do not fit in {len} bytes",
                meta.pgid
            ))
        }
    }
    if meta.root < 2 || meta.root >= meta.pgid {
        return Err(format!(
            "root page {} out of range 2..{}",
            meta.root, meta.pgid
        ));
    }
    if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pgid) {
        return Err(format!(
            "freelist page {} out of range 2..{}",
            meta.freelist, meta.pgid
        ));
    }
    Ok(meta)
}
