//! # coffer-bbolt: etcd's backend file format
//!
//! Reads and writes files in the on-disk format of [bbolt](https://github.com/etcd-io/bbolt)
//! (format version 2), the format of etcd's backend database (`member/snap/db`) and of the files
//! `etcdctl snapshot save` writes (those carry a SHA-256 of the data after the last page; this
//! crate neither writes nor checks it: [`Reader::size`] says where it starts).
//!
//! Only what etcd uses is supported: top-level buckets of plain key/value pairs. [`Writer`]
//! builds a file in one pass with bounded memory; [`Reader`] walks any bbolt file Go's bbolt
//! writes (inline buckets, overflow pages, persisted freelist or not, any page size) and treats
//! every byte as untrusted.
//!
//! ```
//! use std::io::Cursor;
//! use coffer_bbolt::{Reader, Writer};
//!
//! let mut w = Writer::new(Cursor::new(Vec::new()))?;
//! w.bucket(b"key")?;
//! w.put(b"k1", b"v1")?;
//! w.put(b"k2", &vec![7u8; 10_000])?; // spans overflow pages
//! let file = w.finish(1)?.into_inner();
//!
//! let mut r = Reader::open(Cursor::new(file))?;
//! let mut seen = Vec::new();
//! assert!(r.for_each(b"key", &mut |k, v| {
//!     seen.push((k.to_vec(), v.len()));
//!     Ok(())
//! })?);
//! assert_eq!(seen, vec![(b"k1".to_vec(), 2), (b"k2".to_vec(), 10_000)]);
//! assert!(!r.for_each(b"nope", &mut |_, _| Ok(()))?);
//! # Ok::<(), coffer_bbolt::Error>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod page;
mod read;
mod write;

pub use error::Error;
pub use page::PAGE_SIZE;
pub use read::Reader;
pub use write::Writer;
