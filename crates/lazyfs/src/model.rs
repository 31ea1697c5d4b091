//! The file system's state: an inode table over the backing directory, with every write not
//! yet fsynced kept in memory, and every directory change not yet fsynced kept out of the
//! backing directory.
//!
//! The backing directory always holds exactly what a disk would hold after a power cut at this
//! moment (plus the hidden orphan directory, see below). A file's content as the mount shows it
//! is its durable content (the backing file) overlaid with the pages written since its last
//! fsync; a directory's listing is kept in memory and written to the backing directory (create,
//! rename, unlink, mkdir, rmdir) when the directory is fsynced.
//!
//! A file or directory that must be durable before it has a durable name (fsync of a file whose
//! directory entry was never fsynced, or of a file unlinked while open) lives in the orphan
//! directory `.lazyfs-orphans` of the backing root, which a power cut empties: its data is lost
//! with its name, as on a real disk.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Name of the hidden directory of the backing root that holds orphans.
pub const ORPHANS: &str = ".lazyfs-orphans";
/// Granularity of the unsynced-data overlay.
pub const PAGE: u64 = 4096;
/// Inode number of the root.
pub const ROOT: u64 = 1;

/// What a power cut keeps of the writes not yet fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every file is as of its last fsync.
    DropAll,
    /// For each file, a random prefix (seeded) of its writes and truncations since its last
    /// fsync, in the order they were made: what a disk that wrote some of its queue shows.
    RandomPrefix(u64),
}

/// What a power cut dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced writes.
    pub files_with_unsynced_writes: usize,
    /// Unsynced writes and truncations dropped.
    pub writes_dropped: usize,
    /// Unsynced writes and truncations kept (a random prefix).
    pub writes_kept: usize,
    /// Directories whose listing had changed since their last fsync.
    pub directories_with_unsynced_entries: usize,
}

/// One write or truncation since the last fsync, in order.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One file or directory.
#[derive(Debug)]
pub struct Inode {
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last change (not persisted).
    pub mtime: SystemTime,
    /// Directory entries naming it.
    pub links: u32,
    /// Open handles.
    open: u32,
    /// Where its durable content is in the backing directory, if anywhere.
    durable: Option<PathBuf>,
    /// The backing file, open while `durable` is set (files only).
    file: Option<File>,
    /// Current size.
    pub size: u64,
    /// Size of the durable content.
    durable_len: u64,
    /// Durable bytes at or past this offset are hidden (truncated since the last fsync).
    floor: u64,
    /// Pages written since the last fsync, by page index.
    pages: BTreeMap<u64, Vec<u8>>,
    /// Writes and truncations since the last fsync, in order.
    log: Vec<Op>,
    /// The directory's listing as the mount shows it.
    pub entries: BTreeMap<OsString, u64>,
    /// The directory's listing as of its last fsync (what the backing directory holds).
    durable_entries: BTreeMap<OsString, u64>,
}

impl Inode {
    fn new(kind: Kind, mode: u32, uid: u32, gid: u32) -> Inode {
        Inode {
            kind,
            mode,
            uid,
            gid,
            mtime: SystemTime::now(),
            links: 1,
            open: 0,
            durable: None,
            file: None,
            size: 0,
            durable_len: 0,
            floor: u64::MAX,
            pages: BTreeMap::new(),
            log: Vec::new(),
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
        }
    }
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The whole state.
#[derive(Debug)]
pub struct Model {
    backing: PathBuf,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
}

impl Model {
    /// Loads the backing directory (removing a leftover orphan directory).
    pub fn load(backing: &Path) -> io::Result<Model> {
        let mut m = Model {
            backing: backing.to_path_buf(),
            inodes: BTreeMap::new(),
            next_ino: ROOT + 1,
        };
        m.reload()?;
        Ok(m)
    }

    fn orphans(&self) -> PathBuf {
        self.backing.join(ORPHANS)
    }

    /// Forgets everything in memory and serves the backing directory again. Inode numbers are
    /// never reused, so the kernel cannot confuse a file of before with one of after.
    fn reload(&mut self) -> io::Result<()> {
        let orphans = self.orphans();
        if orphans.exists() {
            fs::remove_dir_all(&orphans)?;
        }
        self.inodes.clear();
        let meta = fs::metadata(&self.backing)?;
        let mut root = Inode::new(Kind::Dir, meta.mode() & 0o7777, meta.uid(), meta.gid());
        root.durable = Some(self.backing.clone());
        self.inodes.insert(ROOT, root);
        self.scan(ROOT)
    }

    fn scan(&mut self, dir: u64) -> io::Result<()> {
        let path = self.inode(dir)?.durable.clone().ok_or_else(enoent)?;
        let mut subdirs = Vec::new();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            if dir == ROOT && name == ORPHANS {
                continue;
            }
            let meta = entry.metadata()?;
            let kind = if meta.is_dir() {
                Kind::Dir
            } else if meta.is_file() {
                Kind::File
            } else {
                continue;
            };
            let mut node = Inode::new(kind, meta.mode() & 0o7777, meta.uid(), meta.gid());
            node.durable = Some(entry.path());
            if kind == Kind::File {
                node.file = Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(entry.path())?,
                );
                node.size = meta.len();
                node.durable_len = meta.len();
            }
            let ino = self.alloc(node);
            let d = self.inode_mut(dir)?;
            d.entries.insert(name.clone(), ino);
            d.durable_entries.insert(name, ino);
            if kind == Kind::Dir {
                subdirs.push(ino);
            }
        }
        for s in subdirs {
            self.scan(s)?;
        }
        Ok(())
    }

    fn alloc(&mut self, node: Inode) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, node);
        ino
    }

    /// An inode.
    pub fn inode(&self, ino: u64) -> io::Result<&Inode> {
        self.inodes.get(&ino).ok_or_else(enoent)
    }

    fn inode_mut(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(enoent)
    }

    fn dir(&self, ino: u64) -> io::Result<&Inode> {
        let d = self.inode(ino)?;
        if d.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(d)
    }

    /// The inode `name` in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<u64> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or_else(enoent)
    }

    /// Creates a file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<u64> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(errno(libc::EEXIST));
        }
        if parent == ROOT && name == ORPHANS {
            return Err(errno(libc::EACCES));
        }
        let ino = self.alloc(Inode::new(kind, mode & 0o7777, uid, gid));
        let d = self.inode_mut(parent)?;
        d.entries.insert(name.to_os_string(), ino);
        d.mtime = SystemTime::now();
        Ok(ino)
    }

    /// Removes `name` from `parent` (a directory only if empty and `dir`).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.inode(ino)?;
        match (node.kind, dir) {
            (Kind::Dir, false) => return Err(errno(libc::EISDIR)),
            (Kind::File, true) => return Err(errno(libc::ENOTDIR)),
            (Kind::Dir, true) if !node.entries.is_empty() => return Err(errno(libc::ENOTEMPTY)),
            _ => {}
        }
        let d = self.inode_mut(parent)?;
        d.entries.remove(name);
        d.mtime = SystemTime::now();
        self.unlinked(ino)
    }

    /// `ino` lost its name: drop it when nothing needs it any more.
    fn unlinked(&mut self, ino: u64) -> io::Result<()> {
        let node = self.inode_mut(ino)?;
        node.links = node.links.saturating_sub(1);
        self.maybe_drop_orphan(ino)
    }

    fn maybe_drop_orphan(&mut self, ino: u64) -> io::Result<()> {
        let orphans = self.orphans();
        let node = self.inode_mut(ino)?;
        if node.links > 0 || node.open > 0 {
            return Ok(());
        }
        if let Some(p) = node.durable.clone() {
            if p.starts_with(&orphans) {
                node.durable = None;
                node.file = None;
                remove_path(&p)?;
            }
        }
        Ok(())
    }

    /// Renames (no flags but `noreplace`).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        self.dir(newparent)?;
        if let Ok(old) = self.lookup(newparent, newname) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(errno(libc::EEXIST));
            }
            let (a, b) = (self.inode(ino)?.kind, self.inode(old)?);
            match (a, b.kind) {
                (Kind::File, Kind::Dir) => return Err(errno(libc::EISDIR)),
                (Kind::Dir, Kind::File) => return Err(errno(libc::ENOTDIR)),
                (Kind::Dir, Kind::Dir) if !b.entries.is_empty() => {
                    return Err(errno(libc::ENOTEMPTY))
                }
                _ => {}
            }
            self.inode_mut(newparent)?.entries.remove(newname);
            self.unlinked(old)?;
        }
        self.inode_mut(parent)?.entries.remove(name);
        let d = self.inode_mut(newparent)?;
        d.entries.insert(newname.to_os_string(), ino);
        d.mtime = SystemTime::now();
        Ok(())
    }

    /// A hard link `newname` in `newparent` to the file `ino`.
    pub fn link(&mut self, ino: u64, newparent: u64, newname: &OsStr) -> io::Result<()> {
        if self.inode(ino)?.kind != Kind::File {
            return Err(errno(libc::EPERM));
        }
        if self.dir(newparent)?.entries.contains_key(newname) {
            return Err(errno(libc::EEXIST));
        }
        if newparent == ROOT && newname == ORPHANS {
            return Err(errno(libc::EACCES));
        }
        self.inode_mut(ino)?.links += 1;
        let d = self.inode_mut(newparent)?;
        d.entries.insert(newname.to_os_string(), ino);
        d.mtime = SystemTime::now();
        Ok(())
    }

    /// Whether `path` in the backing directory is a name `ino` still has in the mount.
    fn is_current_name(&self, path: &Path, ino: u64) -> bool {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        self.inodes.values().any(|d| {
            d.kind == Kind::Dir
                && d.durable.as_deref() == Some(parent)
                && d.entries.get(name) == Some(&ino)
        })
    }

    /// A handle was opened.
    pub fn opened(&mut self, ino: u64) -> io::Result<()> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    /// A handle was closed.
    pub fn released(&mut self, ino: u64) -> io::Result<()> {
        let node = self.inode_mut(ino)?;
        node.open = node.open.saturating_sub(1);
        self.maybe_drop_orphan(ino)
    }

    /// Changes the permission bits (kept in memory and, where durable, on the backing file).
    pub fn chmod(&mut self, ino: u64, mode: u32) -> io::Result<()> {
        let node = self.inode_mut(ino)?;
        node.mode = mode & 0o7777;
        if let Some(p) = &node.durable {
            fs::set_permissions(p, fs::Permissions::from_mode(node.mode))?;
        }
        Ok(())
    }

    /// Reads what the mount shows: durable content overlaid with unsynced pages.
    pub fn read(&self, ino: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let node = self.inode(ino)?;
        if node.kind != Kind::File {
            return Err(errno(libc::EISDIR));
        }
        let end = offset.saturating_add(len).min(node.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let visible = node.floor.min(node.durable_len);
        if offset < visible {
            if let Some(f) = &node.file {
                let n = (visible.min(end) - offset) as usize;
                f.read_exact_at(&mut buf[..n], offset)?;
            }
        }
        for (&idx, page) in node.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let start = idx * PAGE;
            let from = start.max(offset);
            let to = (start + PAGE).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - start) as usize..(to - start) as usize]);
        }
        Ok(buf)
    }

    /// Writes into the unsynced overlay.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| errno(libc::EFBIG))?;
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        // Pages not in the overlay yet start from what the mount shows now.
        let mut fresh = Vec::new();
        {
            let node = self.inode(ino)?;
            for idx in first..=last {
                if !node.pages.contains_key(&idx) {
                    let mut page = self.read(ino, idx * PAGE, PAGE)?;
                    page.resize(PAGE as usize, 0);
                    fresh.push((idx, page));
                }
            }
        }
        let node = self.inode_mut(ino)?;
        node.pages.extend(fresh);
        for idx in first..=last {
            let start = idx * PAGE;
            let from = start.max(offset);
            let to = (start + PAGE).min(end);
            if let Some(page) = node.pages.get_mut(&idx) {
                page[(from - start) as usize..(to - start) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            }
        }
        node.size = node.size.max(end);
        node.mtime = SystemTime::now();
        node.log.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// Truncates or extends (unsynced).
    pub fn set_len(&mut self, ino: u64, len: u64) -> io::Result<()> {
        let node = self.inode_mut(ino)?;
        if node.kind != Kind::File {
            return Err(errno(libc::EISDIR));
        }
        if len < node.size {
            node.pages.retain(|&idx, _| idx * PAGE < len);
            if let Some(page) = node.pages.get_mut(&(len / PAGE)) {
                page[(len % PAGE) as usize..].fill(0);
            }
            node.floor = node.floor.min(len);
        }
        node.size = len;
        node.mtime = SystemTime::now();
        node.log.push(Op::SetLen(len));
        Ok(())
    }

    /// Gives `ino` a place in the orphan directory if it has no durable place yet.
    fn ensure_durable(&mut self, ino: u64) -> io::Result<PathBuf> {
        if let Some(p) = &self.inode(ino)?.durable {
            return Ok(p.clone());
        }
        let orphans = self.orphans();
        if !orphans.exists() {
            fs::DirBuilder::new().mode(0o700).create(&orphans)?;
        }
        let path = orphans.join(format!("ino-{ino}"));
        self.materialize(ino, &path)?;
        Ok(path)
    }

    /// Creates an empty file or directory for `ino` at `path` and makes it its durable place.
    fn materialize(&mut self, ino: u64, path: &Path) -> io::Result<()> {
        let node = self.inode_mut(ino)?;
        match node.kind {
            Kind::File => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(node.mode)
                    .open(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(node.mode))?;
                node.file = Some(f);
                node.durable_len = 0;
            }
            Kind::Dir => {
                fs::DirBuilder::new().mode(node.mode).create(path)?;
                node.durable_entries.clear();
            }
        }
        node.durable = Some(path.to_path_buf());
        Ok(())
    }

    /// fsync/fdatasync of a file: its content becomes durable (its name does not).
    pub fn sync_file(&mut self, ino: u64) -> io::Result<()> {
        if self.inode(ino)?.kind == Kind::Dir {
            return self.sync_dir(ino);
        }
        if self.inode(ino)?.log.is_empty() && self.inode(ino)?.durable.is_some() {
            return Ok(());
        }
        self.ensure_durable(ino)?;
        let node = self.inode_mut(ino)?;
        let Some(f) = &node.file else {
            return Err(enoent());
        };
        if node.floor < node.durable_len {
            f.set_len(node.floor)?;
        }
        for (&idx, page) in &node.pages {
            let start = idx * PAGE;
            if start >= node.size {
                continue;
            }
            let n = (node.size - start).min(PAGE) as usize;
            f.write_all_at(&page[..n], start)?;
        }
        f.set_len(node.size)?;
        node.durable_len = node.size;
        node.floor = u64::MAX;
        node.pages.clear();
        node.log.clear();
        Ok(())
    }

    /// fsync of a directory: its listing becomes durable (names created, renamed, removed).
    pub fn sync_dir(&mut self, dir: u64) -> io::Result<()> {
        let dpath = self.ensure_durable(dir)?;
        let entries = self.dir(dir)?.entries.clone();
        let durable_entries = self.dir(dir)?.durable_entries.clone();
        // Names that went away (or now name another inode) first, so that a rename within the
        // directory finds its target free.
        for (name, old) in &durable_entries {
            if entries.get(name) == Some(old) {
                continue;
            }
            let target = dpath.join(name);
            if self.inode(*old).ok().and_then(|n| n.durable.as_ref()) == Some(&target) {
                self.evict(*old)?;
            }
        }
        for (name, ino) in &entries {
            let target = dpath.join(name);
            let current = self.inode(*ino)?.durable.clone();
            if current.as_ref() == Some(&target) {
                continue;
            }
            if let Some(other) = self.holder_of(&target) {
                self.evict(other)?;
            } else if fs::symlink_metadata(&target).is_ok() {
                remove_path(&target)?;
            }
            match current {
                // A second name of a file whose first is still durable and current.
                Some(from)
                    if self.inode(*ino)?.kind == Kind::File
                        && self.is_current_name(&from, *ino) =>
                {
                    fs::hard_link(&from, &target)?;
                }
                Some(from) => {
                    fs::rename(&from, &target)?;
                    self.repath(&from, &target);
                }
                None => self.materialize(*ino, &target)?,
            }
        }
        self.inode_mut(dir)?.durable_entries = entries;
        Ok(())
    }

    /// The inode whose durable place is `path`.
    fn holder_of(&self, path: &Path) -> Option<u64> {
        self.inodes
            .iter()
            .find(|(_, n)| n.durable.as_deref() == Some(path))
            .map(|(&i, _)| i)
    }

    /// Moves `ino`'s durable place out of the way: into the orphans while something still
    /// needs it, else deleted.
    fn evict(&mut self, ino: u64) -> io::Result<()> {
        let node = self.inode(ino)?;
        let Some(from) = node.durable.clone() else {
            return Ok(());
        };
        if node.links > 0 || node.open > 0 {
            let orphans = self.orphans();
            if !orphans.exists() {
                fs::DirBuilder::new().mode(0o700).create(&orphans)?;
            }
            let to = orphans.join(format!("ino-{ino}"));
            fs::rename(&from, &to)?;
            self.repath(&from, &to);
        } else {
            remove_path(&from)?;
            let node = self.inode_mut(ino)?;
            node.durable = None;
            node.file = None;
        }
        Ok(())
    }

    /// Durable places under `from` moved to `to`.
    fn repath(&mut self, from: &Path, to: &Path) {
        for node in self.inodes.values_mut() {
            if let Some(p) = &node.durable {
                if let Ok(rest) = p.strip_prefix(from) {
                    node.durable = Some(if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    });
                }
            }
        }
    }

    /// Makes everything durable, as a clean shutdown would (for setup steps).
    pub fn sync_all(&mut self) -> io::Result<()> {
        let mut dirs = vec![ROOT];
        while let Some(d) = dirs.pop() {
            self.sync_dir(d)?;
            for &c in self.dir(d)?.entries.clone().values() {
                match self.inode(c)?.kind {
                    Kind::Dir => dirs.push(c),
                    Kind::File => self.sync_file(c)?,
                }
            }
        }
        Ok(())
    }

    /// The power cut: drop unsynced data (all, or all but a random prefix of each file's
    /// writes) and unsynced directory entries, then serve the backing directory.
    pub fn power_cut(&mut self, cut: Cut) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut rng = match cut {
            Cut::DropAll => None,
            Cut::RandomPrefix(seed) => Some(ChaCha8Rng::seed_from_u64(seed)),
        };
        let orphans = self.orphans();
        for node in self.inodes.values_mut() {
            if node.kind == Kind::Dir && node.entries != node.durable_entries {
                report.directories_with_unsynced_entries += 1;
            }
            if node.log.is_empty() {
                continue;
            }
            report.files_with_unsynced_writes += 1;
            let keep = match &mut rng {
                None => 0,
                Some(r) => (r.next_u64() % (node.log.len() as u64 + 1)) as usize,
            };
            report.writes_kept += keep;
            report.writes_dropped += node.log.len() - keep;
            let durable_name = node
                .durable
                .as_ref()
                .is_some_and(|p| !p.starts_with(&orphans));
            if let (true, Some(f)) = (durable_name, &node.file) {
                for op in &node.log[..keep] {
                    match op {
                        Op::Write { offset, data } => f.write_all_at(data, *offset)?,
                        Op::SetLen(len) => f.set_len(*len)?,
                    }
                }
            }
        }
        self.reload()?;
        Ok(report)
    }
}

fn remove_path(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
