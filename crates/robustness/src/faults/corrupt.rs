//! The `corrupt` fault: after a SIGKILL, one byte at a random offset of one file of the data
//! directory is flipped (Coffer: `coffer.redb` and `coffer.wal` in turn; etcd: any file), then
//! the server restarts. Two outcomes are acceptable:
//! - **refused**: the server exits non-zero and its output names the damaged file; the fault
//!   then restores the files as the crash left them (a restore from backup) and restarts;
//! - **served**: the server starts with the damage left in place and the run goes on; the
//!   checker then judges every answer (a read that fails is a failed read; a wrong value is a
//!   violation). A flip in bytes the server does not use (free pages, the log past its live
//!   part) lands here.
//!
//! Half of the offsets are drawn from the first 64 KiB of the file, half from all of it.
//! A refusal that does not name the file, or a server that hangs instead of starting, is a
//! scenario violation. Each flip and its outcome is in the report ([`Flip`]).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_conformance::{HarnessError, ServerKind};
use serde::Serialize;

use super::{blocking, Injector};
use crate::Error;

/// One flipped byte.
#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    /// The file, relative to the data directory.
    pub file: String,
    /// Its offset.
    pub offset: u64,
    /// The file's length.
    pub len: u64,
    /// `refused` (the server would not start; the byte was restored) or `served`.
    pub outcome: &'static str,
}

/// Every regular file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The content of every file under `dir` as the crash left it, to put back after a refusal (an
/// operator's restore from backup: a server that refused may already have written to its
/// files, e.g. an engine's own repair, so flipping the byte back is not enough).
fn backup(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    files(dir)
        .into_iter()
        .map(|p| fs::read(&p).map(|b| (p, b)))
        .collect()
}

fn restore(saved: &[(PathBuf, Vec<u8>)]) -> std::io::Result<()> {
    for (p, bytes) in saved {
        fs::write(p, bytes)?;
        OpenOptions::new().write(true).open(p)?.sync_all()?;
    }
    Ok(())
}

fn xor_byte(path: &Path, offset: u64, mask: u8) -> std::io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= mask;
    f.write_all_at(&b, offset)?;
    f.sync_data()
}

impl Injector {
    /// SIGKILL, flip a byte, restart; restore the files as they were before the flip if the
    /// server refuses to start.
    pub(super) async fn corrupt(&mut self) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(self.rng.below(25))).await;
        self.shared.set_up(false);
        let (data, kind) = blocking(&self.server, |s| {
            s.kill();
            (s.data_dir().to_path_buf(), s.kind())
        })
        .await?;
        self.stats.crashes += 1;
        let candidates: Vec<PathBuf> = match kind {
            // Each file in turn, so both are hit over a run.
            ServerKind::Coffer => ["coffer.redb", "coffer.wal"]
                .iter()
                .map(|n| data.join(n))
                .filter(|p| p.is_file())
                .collect(),
            ServerKind::Etcd => files(&data),
        };
        let pick = match kind {
            ServerKind::Coffer => candidates.get(self.stats.flips.len() % candidates.len().max(1)),
            ServerKind::Etcd => self.rng.pick(&candidates),
        };
        let Some(path) = pick.cloned() else {
            return super::restart(&self.server, &self.shared).await;
        };
        let io = |what: &'static str, e| Error::Io {
            what,
            path: path.clone(),
            source: e,
        };
        let len = fs::metadata(&path).map_err(|e| io("stat", e))?.len();
        if len == 0 {
            return super::restart(&self.server, &self.shared).await;
        }
        // Half of the flips hit the first 64 KiB (headers, the log's first records): a uniform
        // offset mostly lands in preallocated or free space.
        let offset = if self.rng.chance(50) {
            self.rng.below(len.min(64 * 1024))
        } else {
            self.rng.below(len)
        };
        let mask = 1 + self.rng.below(255) as u8;
        let saved = backup(&data).map_err(|e| io("back up the data directory of", e))?;
        xor_byte(&path, offset, mask).map_err(|e| io("flip a byte of", e))?;
        let name = path
            .strip_prefix(&data)
            .unwrap_or(&path)
            .display()
            .to_string();
        let started = blocking(&self.server, |s| s.restart()).await?;
        let outcome = match started {
            Ok(()) => {
                tracing::info!(file = %name, offset, len, "byte flipped, server serves");
                self.stats.flips.push(Flip {
                    file: name,
                    offset,
                    len,
                    outcome: "served",
                });
                self.shared.set_up(true);
                return Ok(());
            }
            Err(e) => {
                let (ok, detail) = match &e {
                    Error::Harness(HarnessError::Exited { log_tail, .. }) => {
                        let base = path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        (
                            log_tail.contains(&base),
                            format!("exited; its output:\n{log_tail}"),
                        )
                    }
                    other => (false, format!("did not start: {other}")),
                };
                if !ok {
                    self.violation(
                        "corrupt-refusal",
                        format!(
                            "after a byte flip at offset {offset} of {name} the server {detail}\n\
                             (a refusal must exit non-zero naming the damaged file)"
                        ),
                    );
                }
                restore(&saved).map_err(|e| io("restore the data directory of", e))?;
                "refused"
            }
        };
        tracing::info!(file = %name, offset, len, outcome, "byte flipped");
        self.stats.flips.push(Flip {
            file: name,
            offset,
            len,
            outcome,
        });
        super::restart(&self.server, &self.shared).await
    }
}
