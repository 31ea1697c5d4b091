//! The `power` fault: the data directory (and Coffer's default key file) live on the
//! power-loss file system (`coffer-lazyfs`); at random moments under traffic the server is
//! SIGKILLed and the file system loses power: every write not fsynced (or, half of the time, all
//! but a random prefix of each file's unsynced writes) and every directory entry whose
//! directory was not fsynced are dropped. Then the server restarts on what a disk would hold.
//! Nothing acknowledged may be lost (the linearizability checker) and the server must start.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use coffer_lazyfs::{Cut, CutReport, LazyFs};

use super::{blocking, restart, tail, Injector, Server};
use crate::Error;

fn fail(reason: String) -> Error {
    Error::Fault {
        fault: "power",
        reason,
    }
}

/// The mounted power-loss file system of a run; unmounted (then removed) on drop.
pub struct PowerDisk {
    // Field order: unmount before the directory is removed.
    fs: LazyFs,
    _dir: tempfile::TempDir,
}

impl PowerDisk {
    /// Mounts a fresh one, with empty `data` and `keys` directories already durable (as an
    /// operator provisions them; that Coffer makes the directories it creates itself durable is
    /// the store's power-loss test, `tests/power_loss.rs`).
    pub fn mount() -> Result<PowerDisk, Error> {
        let dir = tempfile::Builder::new()
            .prefix("coffer-power-")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        for d in [&backing, &mnt, &backing.join("data"), &backing.join("keys")] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|e| fail(format!("cannot create {}: {e}", d.display())))?;
        }
        let fs = coffer_lazyfs::mount(&backing, &mnt).map_err(|e| fail(e.to_string()))?;
        Ok(PowerDisk { fs, _dir: dir })
    }

    /// Coffer's `--default-key-file` on the mount (the file is created by Coffer).
    pub fn key_file(&self) -> PathBuf {
        self.fs.mountpoint().join("keys").join("default.key")
    }

    /// The data directory on the mount.
    pub fn data_dir(&self) -> PathBuf {
        self.fs.mountpoint().join("data")
    }

    /// The power cut (the server must be killed first).
    pub fn cut(&self, cut: Cut) -> Result<CutReport, Error> {
        self.fs.power_cut(cut).map_err(|e| fail(e.to_string()))
    }
}

impl Server {
    /// Replaces the data directory by a symlink to the (empty) one on the power-loss file
    /// system and restarts: from here on everything the server writes is on the mount.
    pub(super) fn move_to_power_disk(&mut self) -> Result<(), Error> {
        let Some(target) = self.power.as_ref().map(PowerDisk::data_dir) else {
            return Ok(());
        };
        self.kill();
        let data = self.data_dir().to_path_buf();
        fs::remove_dir_all(&data).map_err(|e| Error::Io {
            what: "remove",
            path: data.clone(),
            source: e,
        })?;
        std::os::unix::fs::symlink(&target, &data).map_err(|e| Error::Io {
            what: "symlink the data directory to the power-loss file system",
            path: data.clone(),
            source: e,
        })?;
        self.restart()
    }

    /// Kills the server and cuts the power of its file system.
    pub fn power_cut(&mut self, cut: Cut) -> Result<CutReport, Error> {
        self.kill();
        match &self.power {
            Some(p) => p.cut(cut),
            None => Err(fail(
                "the server was not started on the power-loss file system".into(),
            )),
        }
    }
}

impl Injector {
    /// SIGKILL, power cut, restart.
    pub(super) async fn power_cut(&mut self) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(self.rng.below(25))).await;
        let cut = if self.rng.chance(50) {
            Cut::DropAll
        } else {
            Cut::RandomPrefix(self.rng.below(u64::MAX))
        };
        self.shared.set_up(false);
        let report = blocking(&self.server, move |s| s.power_cut(cut)).await??;
        self.stats.crashes += 1;
        self.stats.power_cuts += 1;
        self.stats.power_writes_dropped += report.writes_dropped as u64;
        tracing::info!(?cut, ?report, "server killed, power cut");
        tokio::time::sleep(Duration::from_millis(100 + self.rng.below(400))).await;
        if let Err(e) = restart(&self.server, &self.shared).await {
            let log = blocking(&self.server, |s| tail(&s.log(), 20)).await?;
            return Err(fail(format!(
                "the server did not start again after power cut {} ({cut:?}, {report:?}): {e}\n\
                 last log lines:\n{log}",
                self.stats.power_cuts
            )));
        }
        Ok(())
    }
}
