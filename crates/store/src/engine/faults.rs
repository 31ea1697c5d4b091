//! Injected I/O faults, for tests of the recovery rules that a real disk cannot be made to show
//! on demand: a failed `fdatasync` of the engine file (behind redb's `StorageBackend`, so redb
//! sees a real I/O error), and a failure between the log append and the engine commit. In
//! production no [`EngineFaults`] is configured and the backend is redb's own file backend.

use std::fmt;
use std::fs::File;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::StorageBackend;

/// Switches for injected faults; shared with the test that flips them.
#[derive(Debug, Default)]
pub struct EngineFaults {
    /// The engine file's `fdatasync` fails (a durable commit fails inside redb).
    pub fail_engine_sync: AtomicBool,
    /// The log append fails before it writes.
    pub fail_log_append: AtomicBool,
    /// The engine commit fails after the log append was made durable.
    pub fail_engine_commit: AtomicBool,
    /// Commits that remove records (physical compaction) are refused before anything is
    /// written, as a refusing engine would.
    pub refuse_purges: AtomicBool,
}

impl EngineFaults {
    pub(crate) fn before_log_append(&self) -> Result<(), String> {
        if self.fail_log_append.load(Ordering::SeqCst) {
            return Err("injected fault: the log append failed".into());
        }
        Ok(())
    }

    pub(crate) fn before_commit(&self, purges: bool) -> Result<(), String> {
        if purges && self.refuse_purges.load(Ordering::SeqCst) {
            return Err("injected fault: the engine refused the commit".into());
        }
        Ok(())
    }

    pub(crate) fn before_engine_commit(&self) -> Result<(), String> {
        if self.fail_engine_commit.load(Ordering::SeqCst) {
            return Err("injected fault: the engine commit failed after the log append".into());
        }
        Ok(())
    }
}

/// redb's file backend, with the injected sync fault.
pub(crate) struct Backend {
    inner: FileBackend,
    faults: Option<Arc<EngineFaults>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

impl Backend {
    pub(crate) fn new(
        file: File,
        faults: Option<Arc<EngineFaults>>,
    ) -> Result<Self, redb::DatabaseError> {
        Ok(Backend {
            inner: FileBackend::new(file)?,
            faults,
        })
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if let Some(f) = &self.faults {
            if f.fail_engine_sync.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected fault: fdatasync failed"));
            }
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
