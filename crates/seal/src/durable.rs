//! Directories made durably: each directory created is recorded in its parent with an
//! `fsync` of the parent, so a power cut right after first start cannot lose the directory of
//! the default key or of the data (and the files made in it). Shared with the store.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Makes the entries of `dir` (files created, linked or renamed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents with mode 0700, fsyncing each new directory's parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_every_missing_level_private() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("a/b/c");
        create_dir_all(&d).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            let m = std::fs::metadata(root.path().join(p)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{p}");
        }
        create_dir_all(&d).unwrap();
    }
}
