//! The full-disk guard. A write that hits ENOSPC inside the engine leaves redb refusing every
//! later write until it is reopened. So the writer checks the data directory's free space
//! (`statvfs`) before each group and each durable commit, and refuses the writes with
//! [`Error::DiskFull`] while less than [`RESERVE`] is free: nothing reaches the log or the
//! engine, nothing acknowledged is at risk, reads go on, and writes resume by themselves once
//! an operator frees space. (The log file is preallocated with real blocks, so appends to it
//! never need new space.) Something else filling the disk between the check and the commit can
//! still make the engine fail; the server then says so and a restart replays the log.

use std::path::Path;

use crate::Error;

/// Free space kept before a write: room for one large commit group's pages (COW B-tree pages,
/// the values, the engine's header) with a wide margin.
pub const RESERVE: u64 = 16 * 1024 * 1024;

/// `Ok` when the file system holding `dir` has at least [`RESERVE`] bytes free for the server.
/// A file system that cannot report its free space is not refused.
pub(crate) fn check(dir: &Path) -> Result<(), Error> {
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    if available < RESERVE {
        return Err(Error::DiskFull {
            available,
            needed: RESERVE,
        });
    }
    Ok(())
}
