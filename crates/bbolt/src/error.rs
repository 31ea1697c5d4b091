//! The one error type of this crate.
//!
//! Errors name the page or bucket where something went wrong, never key or value bytes (values
//! in an etcd backend are user data and may be secrets): keys are counted, not shown.

use std::io;

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What this crate was doing.
        context: &'static str,
        /// The error of the reader or writer.
        source: io::Error,
    },

    /// The file is not a valid bbolt file: truncated, bad meta pages, pages out of range, a
    /// cycle between pages, elements outside their page, keys out of order, ...
    #[error("corrupt bbolt file at page {page}: {what}")]
    Corrupt {
        /// The page where the problem shows (0 or 1 for the meta pages).
        page: u64,
        /// What is wrong.
        what: String,
    },

    /// The file is valid bbolt but uses something this crate does not support (nested buckets,
    /// keys at the top level).
    #[error("unsupported bbolt content at page {page}: {what}")]
    Unsupported {
        /// The page holding it.
        page: u64,
        /// What it is.
        what: String,
    },

    /// [`crate::Writer::put`] got a key not strictly greater than the previous key of the bucket.
    #[error("key {index} of bucket {bucket:?} is not greater than the key before it (keys must be strictly ascending)")]
    Unordered {
        /// The bucket (lossy UTF-8).
        bucket: String,
        /// 0-based index of the offending entry in the bucket.
        index: u64,
    },

    /// [`crate::Writer::bucket`] got a name it already had.
    #[error("bucket {bucket:?} is given twice")]
    DuplicateBucket {
        /// The bucket (lossy UTF-8).
        bucket: String,
    },

    /// [`crate::Writer::put`] was called before any [`crate::Writer::bucket`].
    #[error("put called before any bucket was started")]
    NoBucket,

    /// A key or bucket name bbolt cannot store (empty, or longer than 32768 bytes), or a value
    /// longer than bbolt's limit (2^31 - 2 bytes).
    #[error("invalid {what} in bucket {bucket:?} at entry {index}: {reason}")]
    Invalid {
        /// "key", "value" or "bucket name".
        what: &'static str,
        /// The bucket (lossy UTF-8; empty for a bucket name).
        bucket: String,
        /// 0-based index of the entry in the bucket.
        index: u64,
        /// Why.
        reason: String,
    },

    /// The visitor given to [`crate::Reader::for_each`] stopped the walk with its own error.
    #[error("stopped by the caller: {0}")]
    Aborted(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }

    pub(crate) fn corrupt(page: u64, what: impl Into<String>) -> Error {
        Error::Corrupt {
            page,
            what: what.into(),
        }
    }
}
