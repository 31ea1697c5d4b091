//! [`Writer`]: builds a bbolt file in one pass.
//!
//! Pages are written in order of page id: the two meta pages as placeholders and an empty
//! freelist page first (pages 0, 1, 2), then for each bucket its leaf pages as entries arrive and
//! its branch pages as they fill up (a B+tree built bottom-up, one pending page per level), then
//! the root bucket's pages, and last the two meta pages over the placeholders. Memory stays at a
//! few pages per tree level plus the largest value, whatever the size of the file.
//!
//! Pages are filled up to the page size (a page holding one element larger than a page gets
//! overflow pages). Every page below the high water mark is reachable, so bbolt's consistency
//! check (`tx.Check`, run by `etcdctl snapshot status`) accepts the file.

use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use crate::error::Error;
use crate::page::{
    bucket_header, lay_out, Element, Meta, PageHeader, ELEMENT_BUCKET, ELEMENT_SIZE, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, MAX_KEY_SIZE, MAX_VALUE_SIZE, PAGE_HEADER_SIZE, PAGE_SIZE,
};

/// Page id of the (always empty) freelist page this writer writes.
const FREELIST_PAGE: u64 = 2;

/// Builds a bbolt file in one pass, with bounded memory: entries are written to leaf pages as
/// they come, branch pages and the meta pages at the end.
///
/// The file starts at the position `out` has when given to [`Writer::new`].
///
/// ```
/// use std::io::Cursor;
/// let mut w = coffer_bbolt::Writer::new(Cursor::new(Vec::new()))?;
/// w.bucket(b"key")?;
/// w.put(b"a", b"1")?;
/// w.put(b"b", b"2")?;
/// w.bucket(b"meta")?;
/// let file = w.finish(1)?.into_inner();
///
/// let mut r = coffer_bbolt::Reader::open(Cursor::new(file))?;
/// assert_eq!(r.buckets()?, vec![b"key".to_vec(), b"meta".to_vec()]);
/// # Ok::<(), coffer_bbolt::Error>(())
/// ```
pub struct Writer<W: Write + Seek> {
    sink: Sink<W>,
    /// Finished buckets: name to root page.
    done: BTreeMap<Vec<u8>, u64>,
    /// The bucket being written.
    current: Option<(Vec<u8>, Tree)>,
}

impl<W: Write + Seek> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("next_page", &self.sink.next)
            .field("buckets_done", &self.done.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file at the current position of `out`.
    pub fn new(mut out: W) -> Result<Self, Error> {
        let base = out
            .stream_position()
            .map_err(Error::io("finding the start of the output"))?;
        let mut sink = Sink {
            out: BufWriter::with_capacity(16 * PAGE_SIZE, out),
            base,
            next: 0,
        };
        // Meta placeholders, overwritten by finish().
        sink.append(&[0u8; 2 * PAGE_SIZE])?;
        let mut freelist = [0u8; PAGE_SIZE];
        PageHeader {
            id: FREELIST_PAGE,
            flags: FLAG_FREELIST,
            count: 0,
            overflow: 0,
        }
        .write(&mut freelist);
        sink.append(&freelist)?;
        Ok(Writer {
            sink,
            done: BTreeMap::new(),
            current: None,
        })
    }

    /// Starts a top-level bucket (ends the previous one). Bucket names must be unique; any order.
    pub fn bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        check_name(name)?;
        let taken =
            self.done.contains_key(name) || self.current.as_ref().is_some_and(|(n, _)| n == name);
        if taken {
            return Err(Error::DuplicateBucket {
                bucket: lossy(name),
            });
        }
        self.end_bucket()?;
        self.current = Some((name.to_vec(), Tree::new(lossy(name), 0)));
        Ok(())
    }

    /// Adds an entry to the current bucket; keys strictly ascending (bytewise) within a bucket,
    /// else [`Error::Unordered`]. Values of any size up to bbolt's limit (overflow pages).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let Some((_, tree)) = self.current.as_mut() else {
            return Err(Error::NoBucket);
        };
        tree.put(&mut self.sink, key, value)
    }

    /// Writes the root bucket, an empty freelist and both meta pages (txid given); flushes and
    /// gives back the output, positioned at the end of the file.
    ///
    /// The meta page `txid % 2` gets `txid`, the other one `txid - 1` (both point at the same
    /// tree), as bbolt itself leaves them after a commit.
    pub fn finish(mut self, txid: u64) -> Result<W, Error> {
        self.end_bucket()?;
        let mut root = Tree::new(String::from("<root bucket>"), ELEMENT_BUCKET);
        for (name, page) in &self.done {
            root.put(&mut self.sink, name, &bucket_header(*page, 0))?;
        }
        let root_page = root.finish(&mut self.sink)?;

        let pgid = self.sink.next;
        let mut metas = vec![0u8; 2 * PAGE_SIZE];
        for (i, page) in metas.chunks_mut(PAGE_SIZE).enumerate() {
            let id = i as u64;
            let page_txid = if id == txid % 2 {
                txid
            } else {
                txid.saturating_sub(1)
            };
            Meta {
                page_size: PAGE_SIZE as u32,
                flags: 0,
                root: root_page,
                root_sequence: 0,
                freelist: FREELIST_PAGE,
                pgid,
                txid: page_txid,
            }
            .write_page(id, page);
        }
        let out = &mut self.sink.out;
        let base = self.sink.base;
        out.seek(SeekFrom::Start(base))
            .map_err(Error::io("seeking to the meta pages"))?;
        out.write_all(&metas)
            .map_err(Error::io("writing the meta pages"))?;
        out.seek(SeekFrom::Start(base + pgid * PAGE_SIZE as u64))
            .map_err(Error::io("seeking to the end of the file"))?;
        out.flush().map_err(Error::io("flushing the file"))?;
        self.sink.out.into_inner().map_err(|e| Error::Io {
            context: "flushing the file",
            source: e.into_error(),
        })
    }

    fn end_bucket(&mut self) -> Result<(), Error> {
        if let Some((name, tree)) = self.current.take() {
            let root = tree.finish(&mut self.sink)?;
            self.done.insert(name, root);
        }
        Ok(())
    }
}

fn check_name(name: &[u8]) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_KEY_SIZE {
        "longer than 32768 bytes"
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what: "bucket name",
        bucket: String::new(),
        index: 0,
        reason: reason.to_string(),
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where pages go: the output and the next free page id.
struct Sink<W: Write> {
    out: BufWriter<W>,
    base: u64,
    next: u64,
}

impl<W: Write> Sink<W> {
    /// Appends whole pages (`bytes.len()` is a multiple of the page size).
    fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out
            .write_all(bytes)
            .map_err(Error::io("writing pages"))?;
        self.next += (bytes.len() / PAGE_SIZE) as u64;
        Ok(())
    }
}

/// Elements of one page being filled.
#[derive(Default)]
struct Pending {
    /// (flags, key length, value length, child page).
    elems: Vec<(u32, usize, usize, u64)>,
    /// Keys and values, one after the other.
    data: Vec<u8>,
}

impl Pending {
    fn size(&self) -> usize {
        PAGE_HEADER_SIZE + ELEMENT_SIZE * self.elems.len() + self.data.len()
    }

    /// Whether an element of this size still goes on this page (an empty page takes anything).
    fn fits(&self, key: usize, value: usize) -> bool {
        self.elems.is_empty()
            || (self.size() + ELEMENT_SIZE + key + value <= PAGE_SIZE
                && self.elems.len() < usize::from(u16::MAX))
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8], child: u64) {
        self.elems.push((flags, key.len(), value.len(), child));
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    /// Writes the page, empties it, returns (its first key, its page id).
    fn write<W: Write>(&mut self, sink: &mut Sink<W>, flags: u16) -> Result<(Vec<u8>, u64), Error> {
        let mut elements = Vec::with_capacity(self.elems.len());
        let mut at = 0;
        for &(flags, klen, vlen, child) in &self.elems {
            elements.push(Element {
                flags,
                key: &self.data[at..at + klen],
                value: &self.data[at + klen..at + klen + vlen],
                child,
            });
            at += klen + vlen;
        }
        let first_key = elements.first().map(|e| e.key.to_vec()).unwrap_or_default();
        let id = sink.next;
        let (bytes, _) = lay_out(id, flags, &elements);
        sink.append(&bytes)?;
        self.elems.clear();
        self.data.clear();
        Ok((first_key, id))
    }
}

/// A B+tree built bottom-up from entries in key order.
struct Tree {
    bucket: String,
    /// Element flags of every leaf entry (ELEMENT_BUCKET for the root bucket).
    leaf_flags: u32,
    leaf: Pending,
    /// branches[0] collects leaf pages, branches[1] collects branches[0] pages, ...
    branches: Vec<Pending>,
    entries: u64,
    last_key: Vec<u8>,
}

impl Tree {
    fn new(bucket: String, leaf_flags: u32) -> Tree {
        Tree {
            bucket,
            leaf_flags,
            leaf: Pending::default(),
            branches: Vec::new(),
            entries: 0,
            last_key: Vec::new(),
        }
    }

    fn put<W: Write>(&mut self, sink: &mut Sink<W>, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let index = self.entries;
        let invalid = |what: &'static str, reason: &str| Error::Invalid {
            what,
            bucket: self.bucket.clone(),
            index,
            reason: reason.to_string(),
        };
        if key.is_empty() {
            return Err(invalid("key", "empty"));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(invalid("key", "longer than 32768 bytes"));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(invalid("value", "longer than 2147483646 bytes"));
        }
        if index > 0 && key <= self.last_key.as_slice() {
            return Err(Error::Unordered {
                bucket: self.bucket.clone(),
                index,
            });
        }
        if !self.leaf.fits(key.len(), value.len()) {
            let (first, id) = self.leaf.write(sink, FLAG_LEAF)?;
            self.push_child(sink, 0, first, id)?;
        }
        self.leaf.push(self.leaf_flags, key, value, 0);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.entries += 1;
        Ok(())
    }

    /// Adds a child page to the branch page pending at `level`, writing that one first if full.
    fn push_child<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        level: usize,
        key: Vec<u8>,
        child: u64,
    ) -> Result<(), Error> {
        if level == self.branches.len() {
            self.branches.push(Pending::default());
        }
        if !self.branches[level].fits(key.len(), 0) {
            let (first, id) = self.branches[level].write(sink, FLAG_BRANCH)?;
            self.push_child(sink, level + 1, first, id)?;
        }
        self.branches[level].push(0, &key, &[], child);
        Ok(())
    }

    /// Writes what is pending, bottom up, and returns the root page.
    fn finish<W: Write>(mut self, sink: &mut Sink<W>) -> Result<u64, Error> {
        let (first, id) = self.leaf.write(sink, FLAG_LEAF)?;
        if self.branches.is_empty() {
            // One leaf (possibly empty): it is the root.
            return Ok(id);
        }
        self.push_child(sink, 0, first, id)?;
        let mut level = 0;
        loop {
            // Every level holds at least two children here: one pushed when the level was
            // created, one pushed by the level below at finish.
            let (first, id) = self.branches[level].write(sink, FLAG_BRANCH)?;
            if level + 1 == self.branches.len() {
                return Ok(id);
            }
            self.push_child(sink, level + 1, first, id)?;
            level += 1;
        }
    }
}
