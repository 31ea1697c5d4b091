//! The power-loss file system against real files through a real FUSE mount: what is fsynced
//! survives a cut, what is not does not (needs root and /dev/fuse).

#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use coffer_lazyfs::{mount, Cut, LazyFs};

struct Fixture {
    _dir: tempfile::TempDir,
    fs: LazyFs,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let fs = mount(&backing, &mnt).unwrap();
        Fixture { _dir: dir, fs }
    }
    fn mnt(&self) -> &Path {
        self.fs.mountpoint()
    }
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[test]
fn unsynced_write_is_gone_after_a_cut() {
    let f = Fixture::new();
    let p = f.mnt().join("a");
    let mut file = File::create(&p).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_data().unwrap();
    sync_dir(f.mnt());
    file.write_all_at(b"LOST", 2).unwrap();
    file.write_all(b"-tail").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"duLOSTe-tail");
    drop(file);
    let r = f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(r.writes_dropped, 2);
    assert_eq!(fs::read(&p).unwrap(), b"durable");
}

#[test]
fn fsynced_write_stays() {
    let f = Fixture::new();
    let p = f.mnt().join("a");
    let mut file = File::create(&p).unwrap();
    sync_dir(f.mnt());
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    file.write_all(&big).unwrap();
    file.sync_data().unwrap();
    drop(file);
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(fs::read(&p).unwrap(), big);
    assert_eq!(fs::read(f.fs.backing().join("a")).unwrap(), big);
}

#[test]
fn created_file_without_directory_fsync_is_gone() {
    let f = Fixture::new();
    let p = f.mnt().join("new");
    let mut file = File::create(&p).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert!(p.exists());
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert!(!p.exists(), "the file's name was never made durable");
    assert_eq!(fs::read_dir(f.mnt()).unwrap().count(), 0);
}

#[test]
fn created_file_with_directory_fsync_stays() {
    let f = Fixture::new();
    let sub = f.mnt().join("sub");
    fs::create_dir(&sub).unwrap();
    sync_dir(f.mnt());
    let p = sub.join("new");
    fs::write(&p, b"data").unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    sync_dir(&sub);
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"data");
}

#[test]
fn rename_and_unlink_are_durable_only_after_directory_fsync() {
    let f = Fixture::new();
    let (a, b, c) = (f.mnt().join("a"), f.mnt().join("b"), f.mnt().join("c"));
    fs::write(&a, b"A").unwrap();
    fs::write(&c, b"C").unwrap();
    f.fs.sync_all().unwrap();
    fs::rename(&a, &b).unwrap();
    fs::remove_file(&c).unwrap();
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"A");
    assert!(!b.exists());
    assert_eq!(fs::read(&c).unwrap(), b"C");
    fs::rename(&a, &b).unwrap();
    fs::remove_file(&c).unwrap();
    sync_dir(f.mnt());
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert!(!a.exists() && !c.exists());
    assert_eq!(fs::read(&b).unwrap(), b"A");
}

#[test]
fn atomic_replace_by_rename_over_an_existing_file() {
    let f = Fixture::new();
    let (t, k) = (f.mnt().join("key.tmp"), f.mnt().join("key"));
    fs::write(&k, b"old").unwrap();
    f.fs.sync_all().unwrap();
    let mut tmp = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&t)
        .unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(&t, &k).unwrap();
    sync_dir(f.mnt());
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"new");
    assert!(!t.exists());
}

#[test]
fn truncation_and_set_len_follow_the_same_rules() {
    let f = Fixture::new();
    let p = f.mnt().join("a");
    fs::write(&p, vec![7u8; 10_000]).unwrap();
    f.fs.sync_all().unwrap();
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    file.set_len(100).unwrap();
    file.set_len(5000).unwrap();
    let now = fs::read(&p).unwrap();
    assert_eq!(now.len(), 5000);
    assert!(
        now[100..].iter().all(|&b| b == 0),
        "truncated bytes must read as zeros"
    );
    file.sync_data().unwrap();
    file.set_len(0).unwrap();
    drop(file);
    f.fs.power_cut(Cut::DropAll).unwrap();
    let after = fs::read(&p).unwrap();
    assert_eq!(after.len(), 5000);
    assert!(after[..100].iter().all(|&b| b == 7) && after[100..].iter().all(|&b| b == 0));
}

#[test]
fn random_prefix_keeps_writes_in_order() {
    for seed in 0..8 {
        let f = Fixture::new();
        let p = f.mnt().join("log");
        let file = File::create(&p).unwrap();
        sync_dir(f.mnt());
        for i in 0..10u8 {
            file.write_all_at(&[i + 1; 10], u64::from(i) * 10).unwrap();
        }
        drop(file);
        let r = f.fs.power_cut(Cut::RandomPrefix(seed)).unwrap();
        assert_eq!(r.writes_kept + r.writes_dropped, 10);
        let after = fs::read(&p).unwrap();
        assert_eq!(after.len(), r.writes_kept * 10, "seed {seed}");
        for (i, chunk) in after.chunks(10).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8 + 1), "seed {seed}");
        }
    }
}

#[test]
fn locks_work_on_the_mount() {
    let f = Fixture::new();
    let p = f.mnt().join("db");
    let a = File::create(&p).unwrap();
    a.try_lock().unwrap();
    let b = File::open(&p).unwrap();
    assert!(
        b.try_lock().is_err(),
        "a second exclusive lock must be refused"
    );
}

/// Coffer's default key file: written to a temporary name, fsynced, hard-linked into place,
/// the temporary name removed, the directory fsynced.
#[test]
fn hard_link_into_place_then_directory_fsync() {
    let f = Fixture::new();
    let keys = f.mnt().join("keys");
    fs::create_dir(&keys).unwrap();
    sync_dir(f.mnt());
    let (t, k) = (keys.join(".key.tmp"), keys.join("key"));
    let mut tmp = File::create(&t).unwrap();
    tmp.write_all(b"secret").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::hard_link(&t, &k).unwrap();
    assert_eq!(fs::metadata(&k).unwrap().nlink(), 2);
    fs::remove_file(&t).unwrap();
    sync_dir(&keys);
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(fs::read(&k).unwrap(), b"secret");
    assert!(!t.exists());
    // Without the directory fsync the new name is gone.
    fs::hard_link(&k, keys.join("second")).unwrap();
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert!(!keys.join("second").exists());
    assert_eq!(fs::read(&k).unwrap(), b"secret");
}

/// A directory created by mkdir is itself a directory entry: without an fsync of its parent
/// it is gone after a cut, with everything in it, even if it was fsynced.
#[test]
fn new_directory_without_parent_fsync_is_gone() {
    let f = Fixture::new();
    let d = f.mnt().join("keys");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("k"), b"x").unwrap();
    File::open(d.join("k")).unwrap().sync_all().unwrap();
    sync_dir(&d);
    f.fs.power_cut(Cut::DropAll).unwrap();
    assert!(!d.exists());
}
