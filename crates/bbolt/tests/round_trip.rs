//! Writer then Reader gives back exactly what went in: random buckets (empty ones, values
//! spanning overflow pages, long keys making deep trees) and a large deterministic case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;

use coffer_bbolt::{Error, Reader, Writer};
use common::layout::{branch_levels, bucket_root};
use proptest::prelude::*;

type Bucket = BTreeMap<Vec<u8>, Vec<u8>>;
type Db = BTreeMap<Vec<u8>, Bucket>;

/// Writes buckets in the given order (entries in key order).
fn write(buckets: &[(Vec<u8>, Bucket)], txid: u64) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    for (name, entries) in buckets {
        w.bucket(name).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
    }
    w.finish(txid).unwrap().into_inner()
}

fn read(file: &[u8]) -> Db {
    let mut r = Reader::open(Cursor::new(file)).unwrap();
    let mut db = Db::new();
    let names = r.buckets().unwrap();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "bucket names come sorted");
    for name in names {
        let mut entries = Vec::new();
        assert!(r
            .for_each(&name, &mut |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap());
        let bucket: Bucket = entries.iter().cloned().collect();
        assert_eq!(bucket.len(), entries.len(), "no key twice");
        assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "keys come in order"
        );
        db.insert(name, bucket);
    }
    db
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..200),
        // Large values (overflow pages) from a seed: generating each byte would be slow.
        1 => (any::<u8>(), 4000usize..20_000)
            .prop_map(|(seed, n)| (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect()),
    ]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 1..24),
        // Long keys (few to a branch page: deep trees), a random head and a filler tail.
        1 => (prop::collection::vec(any::<u8>(), 1..6), 500usize..1500).prop_map(|(mut k, n)| {
            k.resize(n, b'~');
            k
        }),
    ]
}

fn bucket() -> impl Strategy<Value = Bucket> {
    prop_oneof![
        1 => Just(Bucket::new()),
        4 => prop::collection::btree_map(key(), value(), 1..300),
    ]
}

fn db() -> impl Strategy<Value = Vec<(Vec<u8>, Bucket)>> {
    prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..12), bucket(), 0..6)
        .prop_map(|m| m.into_iter().collect())
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn writer_then_reader_gives_back_the_same(buckets in db(), txid in 0u64..1000) {
        let file = write(&buckets, txid);
        prop_assert_eq!(file.len() % 4096, 0);
        let want: Db = buckets.into_iter().collect();
        prop_assert_eq!(read(&file), want);
        prop_assert_eq!(Reader::open(Cursor::new(&file)).unwrap().txid(), txid);
    }
}

#[test]
fn thousands_of_keys_make_several_branch_levels() {
    let mut wide = Bucket::new();
    for i in 0..20_000u32 {
        wide.insert(
            format!("/registry/pods/ns-{}/pod-{i:06}", i % 37).into_bytes(),
            i.to_be_bytes().repeat(i as usize % 40),
        );
    }
    let mut deep = Bucket::new();
    for i in 0..3_000u32 {
        // 1 KiB keys: four to a branch page, so the tree grows tall.
        let mut k = format!("{i:08}").into_bytes();
        k.resize(1024, b'k');
        deep.insert(k, vec![i as u8; (i as usize * 7) % 9000]);
    }
    let buckets = vec![
        (b"wide".to_vec(), wide),
        (b"empty".to_vec(), Bucket::new()),
        (b"deep".to_vec(), deep),
    ];
    let file = write(&buckets, 12345);
    assert!(branch_levels(&file, bucket_root(&file, b"wide")) >= 2);
    assert!(branch_levels(&file, bucket_root(&file, b"deep")) >= 4);
    let want: Db = buckets.into_iter().collect();
    assert_eq!(read(&file), want);
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    assert!(matches!(w.put(b"k", b"v"), Err(Error::NoBucket)));
    w.bucket(b"a").unwrap();
    w.put(b"k2", b"v").unwrap();
    assert!(matches!(
        w.put(b"k2", b"v"),
        Err(Error::Unordered { index: 1, .. })
    ));
    assert!(matches!(w.put(b"k1", b"v"), Err(Error::Unordered { .. })));
    assert!(matches!(
        w.put(b"", b"v"),
        Err(Error::Invalid { what: "key", .. })
    ));
    assert!(matches!(
        w.put(&vec![1u8; 32769], b"v"),
        Err(Error::Invalid { what: "key", .. })
    ));
    assert!(matches!(w.bucket(b"a"), Err(Error::DuplicateBucket { .. })));
    assert!(matches!(
        w.bucket(b""),
        Err(Error::Invalid {
            what: "bucket name",
            ..
        })
    ));
    w.bucket(b"b").unwrap();
    w.put(b"k1", b"v").unwrap(); // a new bucket starts a new key order
    assert!(matches!(w.bucket(b"a"), Err(Error::DuplicateBucket { .. })));
    // Rejected calls leave the writer usable.
    let file = w.finish(3).unwrap().into_inner();
    let db = read(&file);
    assert_eq!(db[&b"a".to_vec()].len(), 1);
    assert_eq!(db[&b"b".to_vec()].len(), 1);
}

#[test]
fn errors_do_not_show_keys() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"authUsers").unwrap();
    w.put(b"secret-user-name", b"v").unwrap();
    let err = w.put(b"another-secret", b"v").unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("authUsers"), "{shown}");
}

#[test]
fn writer_starts_at_the_output_position() {
    let mut out = Cursor::new(b"prefix".to_vec());
    out.set_position(6);
    let mut w = Writer::new(out).unwrap();
    w.bucket(b"b").unwrap();
    w.put(b"k", b"v").unwrap();
    let mut out = w.finish(1).unwrap();
    assert_eq!(&out.get_ref()[..6], b"prefix");
    out.set_position(6);
    let mut r = Reader::open(out).unwrap();
    let mut seen = Vec::new();
    r.for_each(b"b", &mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![(b"k".to_vec(), b"v".to_vec())]);
}

#[test]
fn visitor_errors_stop_the_walk() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"b").unwrap();
    for i in 0..1000u32 {
        w.put(&i.to_be_bytes(), b"v").unwrap();
    }
    let file = w.finish(1).unwrap().into_inner();
    let mut r = Reader::open(Cursor::new(file)).unwrap();
    let mut calls = 0;
    let err = r
        .for_each(b"b", &mut |_, _| {
            calls += 1;
            if calls == 10 {
                return Err(Error::Aborted("enough".into()));
            }
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, Error::Aborted(_)));
    assert_eq!(calls, 10);
}
