//! The full-disk guard. A write that hits ENOSPC inside the engine leaves redb refusing every
//! later write until it is reopened. So the writer checks the data directory's free space
//! (`statvfs`) before each group and each durable commit, and refuses the writes with
//! [`Error::DiskFull`] while less than the group needs ([`needed_for`]: [`RESERVE`] plus three
//! times the group's bytes) is free: nothing reaches the log or the
//! engine, nothing acknowledged is at risk, reads go on, and writes resume by themselves once
//! an operator frees space. (The log file is preallocated with real blocks, so appends to it
//! never need new space.) Something else filling the disk between the check and the commit can
//! still make the engine fail; the server then says so and a restart replays the log.

use std::path::Path;

use crate::Error;

/// Free space kept beyond what a write itself needs: room for the engine's own pages (COW
/// B-tree branches, the header, a durable checkpoint's copy of the meta) with a wide margin.
pub const RESERVE: u64 = 16 * 1024 * 1024;

/// How many bytes of free space a batch of `bytes` may take in the engine file: its records
/// are written once into new copy-on-write leaf pages, whose neighbours and branches are copied
/// too; three times the payload is a wide margin over that (the writer caps a group's bytes,
/// so this bound is finite for every group it takes).
pub(crate) fn needed_for(bytes: u64) -> u64 {
    RESERVE.saturating_add(bytes.saturating_mul(3))
}

/// `Ok` when the file system holding `dir` has at least `needed` bytes free for the server.
/// A file system that cannot report its free space is not refused.
pub(crate) fn check(dir: &Path, needed: u64) -> Result<(), Error> {
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    if available < needed {
        return Err(Error::DiskFull { available, needed });
    }
    Ok(())
}

/// Makes `dir`'s entries (files created or renamed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    coffer_seal::durable::sync_dir(dir)
        .map_err(|e| Error::Engine(format!("cannot sync the directory {}: {e}", dir.display())))
}

/// Creates `dir` and any missing parents with mode 0700, each new directory's entry durable in
/// its parent (a power cut right after first start must not lose the data directory).
pub fn create_dir_durably(dir: &Path) -> Result<(), Error> {
    coffer_seal::durable::create_dir_all(dir).map_err(|e| {
        Error::Engine(format!(
            "cannot create the directory {}: {e}",
            dir.display()
        ))
    })
}
