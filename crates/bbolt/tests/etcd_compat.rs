//! Compatibility with Go's bbolt as etcd 3.4 uses it, checked with real etcd and etcdctl:
//! the Reader reads what etcd writes, and etcd accepts, restores and serves what the Writer
//! writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Write};
use std::path::Path;

use coffer_bbolt::{Reader, Writer};
use common::{
    big_value, decode_key_value, decode_revision, etcdctl_offline, free_port, make_etcd_snapshot,
    snapshot_status, Crc32c, Etcd, BIG_KEY,
};
use sha2::{Digest, Sha256};

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Splits a snapshot file into its bbolt data and checks the trailing SHA-256.
fn strip_hash(path: &Path) -> Vec<u8> {
    let mut data = std::fs::read(path).unwrap();
    assert!(
        data.len() > 32 && data.len() % 512 == 32,
        "snapshot of {} bytes",
        data.len()
    );
    let hash = data.split_off(data.len() - 32);
    assert_eq!(Sha256::digest(&data).as_slice(), hash.as_slice());
    data
}

/// Every bucket and entry of a bbolt file, through the Reader.
fn read_all(data: &[u8]) -> (Buckets, u64) {
    let mut r = Reader::open(Cursor::new(data)).unwrap();
    assert_eq!(r.size(), data.len() as u64);
    let mut out = Vec::new();
    for name in r.buckets().unwrap() {
        let mut entries = Vec::new();
        let found = r
            .for_each(&name, &mut |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert!(found);
        out.push((name, entries));
    }
    (out, r.txid())
}

/// What `etcdctl snapshot status` computes (hash, revision, total keys), from our reading.
fn status_of(buckets: &Buckets) -> (u64, u64, u64) {
    let mut crc = Crc32c::new();
    let (mut revision, mut total) = (0, 0);
    for (name, entries) in buckets {
        crc.update(name);
        for (k, v) in entries {
            crc.update(k);
            crc.update(v);
            if name == b"key" {
                revision = decode_revision(k).0;
            }
            total += 1;
        }
    }
    (u64::from(crc.finish()), revision, total)
}

/// The live keys of an etcd `key` bucket: replays revisions in order.
fn live_keys(buckets: &Buckets) -> BTreeMap<String, Vec<u8>> {
    let (_, entries) = buckets.iter().find(|(n, _)| n == b"key").unwrap();
    let mut live = BTreeMap::new();
    for (k, v) in entries {
        let (main, tombstone) = decode_revision(k);
        let kv = decode_key_value(v);
        let key = String::from_utf8(kv.key).unwrap();
        if tombstone {
            live.remove(&key);
        } else {
            assert_eq!(kv.mod_revision, main);
            live.insert(key, kv.value);
        }
    }
    live
}

#[test]
fn reader_reads_an_etcd_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap = make_etcd_snapshot(dir.path());
    let data = strip_hash(&snap.path);
    let (buckets, _) = read_all(&data);

    let names: Vec<String> = buckets
        .iter()
        .map(|(n, _)| String::from_utf8(n.clone()).unwrap())
        .collect();
    for want in ["key", "meta", "lease", "members", "cluster"] {
        assert!(
            names.iter().any(|n| n == want),
            "no bucket {want} in {names:?}"
        );
    }

    // The keys and values that were put, decoded from the `key` bucket.
    let live = live_keys(&buckets);
    assert_eq!(live.len(), snap.expected.len());
    for (key, value) in &snap.expected {
        assert_eq!(live.get(key), Some(value), "value of {key}");
    }
    assert_eq!(live[BIG_KEY], big_value());

    // The leased key carries its lease, and the lease bucket holds that lease.
    let (_, keys) = buckets.iter().find(|(n, _)| n == b"key").unwrap();
    let leased = keys
        .iter()
        .map(|(_, v)| decode_key_value(v))
        .find(|kv| kv.key == b"/registry/test/leased")
        .unwrap();
    assert_ne!(leased.lease, 0);
    let (_, leases) = buckets.iter().find(|(n, _)| n == b"lease").unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].0, leased.lease.to_be_bytes());

    // Everything bbolt itself sees: same hash over every bucket, key and value.
    let status = snapshot_status(&snap.path).unwrap();
    assert_eq!(
        status_of(&buckets),
        (status.hash, status.revision, status.total_key)
    );
    assert_eq!(status.total_size, data.len() as u64);

    // The file with its hash still appended reads the same.
    let mut r = Reader::open(File::open(&snap.path).unwrap()).unwrap();
    assert_eq!(r.size() + 32, std::fs::metadata(&snap.path).unwrap().len());
    assert_eq!(r.buckets().unwrap().len(), buckets.len());
}

#[test]
fn etcd_accepts_restores_and_serves_a_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let snap = make_etcd_snapshot(dir.path());
    let data = strip_hash(&snap.path);
    let (buckets, txid) = read_all(&data);

    // Write everything again with the Writer, buckets in reverse order (any order is allowed).
    let ours = dir.path().join("coffer.snapshot.db");
    let mut w = Writer::new(File::create(&ours).unwrap()).unwrap();
    for (name, entries) in buckets.iter().rev() {
        w.bucket(name).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
    }
    let mut file = w.finish(txid).unwrap();
    file.flush().unwrap();
    drop(file);
    let written = std::fs::read(&ours).unwrap();
    let mut with_hash = written.clone();
    with_hash.extend_from_slice(&Sha256::digest(&written));
    std::fs::write(&ours, &with_hash).unwrap();

    // Our own Reader gives back exactly what went in.
    assert_eq!(read_all(&written).0, buckets);

    // etcdctl (bbolt's tx.Check included) accepts it and sees the same content.
    let original = snapshot_status(&snap.path).unwrap();
    let copy = snapshot_status(&ours).unwrap();
    assert_eq!(
        (copy.hash, copy.revision, copy.total_key),
        (original.hash, original.revision, original.total_key)
    );

    // Restore it and serve it with a real etcd.
    let restored = dir.path().join("restored");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = etcdctl_offline(&[
        "snapshot",
        "restore",
        ours.to_str().unwrap(),
        &format!("--data-dir={}", restored.display()),
        "--name=default",
        &format!("--initial-cluster=default={peer_url}"),
        &format!("--initial-advertise-peer-urls={peer_url}"),
    ]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = Etcd::start_with_peer(&restored, peer);
    assert_eq!(etcd.peer_url, peer_url);
    let listing = etcd.ctl(&["get", "--prefix", "/registry/test/"], None);
    let lines: Vec<&[u8]> = listing
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let served: BTreeMap<String, Vec<u8>> = lines
        .chunks(2)
        .map(|kv| (String::from_utf8(kv[0].to_vec()).unwrap(), kv[1].to_vec()))
        .collect();
    assert_eq!(served, snap.expected);

    // The restored store takes writes and keeps its revision history going.
    etcd.ctl(&["put", "/registry/test/after-restore", "yes"], None);
    let got = etcd.ctl(
        &["get", "/registry/test/after-restore", "--print-value-only"],
        None,
    );
    assert_eq!(got, b"yes\n");
    let got = etcd.ctl(&["get", BIG_KEY, "--print-value-only"], None);
    assert_eq!(got[..got.len() - 1], big_value()[..]);
}

#[test]
fn etcdctl_checks_written_deep_trees_and_overflow_pages() {
    // Shapes etcd's own snapshot above does not reach: several branch levels, 1 KiB keys,
    // values of many pages, empty buckets, single-entry buckets.
    let mut buckets: Buckets = Vec::new();
    let wide = (0..20_000u32)
        .map(|i| {
            (
                format!("k{i:07}").into_bytes(),
                i.to_be_bytes().repeat(i as usize % 30),
            )
        })
        .collect();
    buckets.push((b"wide".to_vec(), wide));
    let deep = (0..3_000u32)
        .map(|i| {
            let mut k = format!("{i:08}").into_bytes();
            k.resize(1024, b'k');
            (k, vec![i as u8; (i as usize * 7) % 9000])
        })
        .collect();
    buckets.push((b"deep".to_vec(), deep));
    let huge = (0..5u8)
        .map(|i| (vec![b'h', i], vec![i; 300_000]))
        .collect();
    buckets.push((b"huge".to_vec(), huge));
    buckets.push((b"empty".to_vec(), Vec::new()));
    buckets.push((b"one".to_vec(), vec![(b"only".to_vec(), b"entry".to_vec())]));
    buckets.sort();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.db");
    let mut w = Writer::new(File::create(&path).unwrap()).unwrap();
    for (name, entries) in &buckets {
        w.bucket(name).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
    }
    w.finish(7).unwrap().sync_all().unwrap();
    let file = std::fs::read(&path).unwrap();
    let levels = common::layout::branch_levels(&file, common::layout::bucket_root(&file, b"deep"));
    assert!(levels >= 4, "{levels} branch levels");

    let status = snapshot_status(&path).unwrap();
    let (hash, _, total) = status_of(&buckets);
    assert_eq!((status.hash, status.total_key), (hash, total));
    assert_eq!(status.total_size, file.len() as u64);
}
