//! A power-loss test file system (in the manner of LazyFS, which etcd's robustness suite
//! uses): a FUSE pass-through over a backing directory that keeps every write not yet fsynced
//! in memory and every directory change not yet fsynced out of the backing directory, so that a
//! simulated power cut ([`LazyFs::power_cut`]) can drop them. After a cut the mount serves the
//! backing directory: what a disk would hold after losing power.
//!
//! - `fsync`/`fdatasync` of a file writes its content (not its name) to the backing directory;
//! - `fsync` of a directory writes its entries (create, rename, unlink, mkdir, rmdir);
//! - a cut drops all unsynced data, or for each file a seeded random prefix of its unsynced
//!   writes ([`Cut`]), and every unsynced directory entry.
//!
//! Mounting needs `/dev/fuse` and root (`fuser` then mounts directly, without `fusermount3`).
//!
//! ```no_run
//! let fs = coffer_lazyfs::mount("/tmp/backing".as_ref(), "/tmp/mnt".as_ref())?;
//! // ... a process writes under /tmp/mnt and is killed ...
//! let report = fs.power_cut(coffer_lazyfs::Cut::DropAll)?;
//! println!("{report:?}");
//! fs.unmount()?;
//! # Ok::<(), coffer_lazyfs::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod fs;
mod model;

pub use model::{Cut, CutReport};

/// What can go wrong mounting, cutting or unmounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backing directory cannot be read.
    #[error("cannot load the backing directory {path}: {source}")]
    Backing {
        /// The backing directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The FUSE mount failed (no `/dev/fuse`, not root, mount point missing).
    #[error("cannot mount a FUSE file system on {path} (needs /dev/fuse and root): {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The power cut could not rewrite the backing directory.
    #[error("power cut on {path}: {source}")]
    Cut {
        /// The backing directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Unmounting failed (e.g. a process still uses the mount).
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A mounted power-loss file system; unmounted on drop.
pub struct LazyFs {
    session: Option<fuser::BackgroundSession>,
    model: Arc<Mutex<model::Model>>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Mounts `backing` at `mountpoint` (both existing directories).
pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, Error> {
    let model = model::Model::load(backing).map_err(|e| Error::Backing {
        path: backing.to_path_buf(),
        source: e,
    })?;
    let model = Arc::new(Mutex::new(model));
    let filesystem = fs::LazyFilesystem {
        model: Arc::clone(&model),
        backing: backing.to_path_buf(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("coffer-lazyfs".into()),
        fuser::MountOption::Subtype("coffer-lazyfs".into()),
    ];
    let session =
        fuser::spawn_mount(filesystem, mountpoint, &config).map_err(|e| Error::Mount {
            path: mountpoint.to_path_buf(),
            source: e,
        })?;
    tracing::info!(backing = %backing.display(), mountpoint = %mountpoint.display(), "mounted");
    Ok(LazyFs {
        session: Some(session),
        model,
        backing: backing.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl LazyFs {
    /// The power cut. Stop (kill) the processes using the mount first: a file they still hold
    /// open keeps serving the dropped data from the kernel's page cache until reopened.
    pub fn power_cut(&self, cut: Cut) -> Result<CutReport, Error> {
        let mut m = self
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let report = m.power_cut(cut).map_err(|e| Error::Cut {
            path: self.backing.clone(),
            source: e,
        })?;
        tracing::info!(?cut, ?report, "power cut");
        Ok(report)
    }

    /// Makes everything durable now (as a clean shutdown would): for setup steps whose
    /// durability is not under test.
    pub fn sync_all(&self) -> Result<(), Error> {
        let mut m = self
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.sync_all().map_err(|e| Error::Cut {
            path: self.backing.clone(),
            source: e,
        })
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (unsynced data is dropped, as after a cut).
    pub fn unmount(mut self) -> Result<(), Error> {
        match self.session.take() {
            Some(s) => s.umount_and_join().map_err(|e| Error::Unmount {
                path: self.mountpoint.clone(),
                source: e,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed");
            }
        }
    }
}
