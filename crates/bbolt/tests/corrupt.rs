//! Damaged files give an Error, never a panic or a hang: targeted damage (truncation, meta
//! pages, page ids, cycles, element offsets) and random byte flips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use coffer_bbolt::{Error, Reader, Writer};
use common::layout::{
    branch_child, bucket_root, elem_at, meta_at, page_flags, set_meta_u64, set_u32, set_u64,
    META_PGID, META_ROOT,
};
use proptest::prelude::*;

/// A valid file: a bucket with a two-level tree, one with a multi-page value, an empty one.
fn sample() -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"tree").unwrap();
    for i in 0..3000u32 {
        w.put(format!("key-{i:06}").as_bytes(), &i.to_le_bytes())
            .unwrap();
    }
    w.bucket(b"big").unwrap();
    w.put(b"value", &vec![9u8; 10_000]).unwrap();
    w.bucket(b"empty").unwrap();
    w.finish(4).unwrap().into_inner()
}

/// A small valid file for the random flips (each case reads it all).
fn small_sample() -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    w.bucket(b"a").unwrap();
    for i in 0..400u32 {
        w.put(format!("k{i:04}").as_bytes(), b"v").unwrap();
    }
    w.bucket(b"b").unwrap();
    w.put(b"big", &vec![1u8; 5000]).unwrap();
    w.bucket(b"c").unwrap();
    w.finish(2).unwrap().into_inner()
}

/// Opens and reads everything; the number of entries seen, or the first error.
fn read_everything(file: &[u8]) -> Result<usize, Error> {
    let mut r = Reader::open(Cursor::new(file))?;
    let mut n = 0;
    for name in r.buckets()? {
        r.for_each(&name, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
    }
    Ok(n)
}

fn corrupt_at(result: Result<usize, Error>) -> (u64, String) {
    match result {
        Err(Error::Corrupt { page, what }) => (page, what),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

#[test]
fn the_sample_is_valid() {
    assert_eq!(read_everything(&sample()).unwrap(), 3001);
    assert_eq!(read_everything(&small_sample()).unwrap(), 401);
}

#[test]
fn truncated_files() {
    let file = sample();
    for len in [
        0,
        10,
        100,
        4096,
        8191,
        8192,
        3 * 4096,
        file.len() - 4096,
        file.len() - 1,
    ] {
        let (page, what) = corrupt_at(read_everything(&file[..len]));
        assert_eq!(page, 0, "{len}: {what}");
        assert!(
            what.contains("truncated") || what.contains("too short"),
            "{len}: {what}"
        );
    }
}

#[test]
fn meta_pages() {
    let file = sample();

    // One bad meta page: the other one is used.
    let mut one_bad = file.clone();
    one_bad[meta_at(0, 0)] ^= 0xff;
    assert_eq!(read_everything(&one_bad).unwrap(), 3001);

    let mut bad_magic = file.clone();
    bad_magic[meta_at(0, 0)] ^= 0xff;
    bad_magic[meta_at(1, 0)] ^= 0xff;
    let (_, what) = corrupt_at(read_everything(&bad_magic));
    assert!(what.contains("bad magic"), "{what}");

    let mut bad_sum = file.clone();
    bad_sum[meta_at(0, META_ROOT)] ^= 1;
    bad_sum[meta_at(1, META_ROOT)] ^= 1;
    let (_, what) = corrupt_at(read_everything(&bad_sum));
    assert!(what.contains("checksum"), "{what}");

    let mut bad_version = file.clone();
    set_u32(&mut bad_version, meta_at(0, 4), 3);
    set_u32(&mut bad_version, meta_at(1, 4), 3);
    let (_, what) = corrupt_at(read_everything(&bad_version));
    assert!(what.contains("version"), "{what}");
}

#[test]
fn page_ids_out_of_range() {
    let file = sample();
    let pages = (file.len() / 4096) as u64;

    let mut root_past_end = file.clone();
    set_meta_u64(&mut root_past_end, META_ROOT, pages + 5);
    let (_, what) = corrupt_at(read_everything(&root_past_end));
    assert!(what.contains("root page"), "{what}");

    let mut root_is_meta = file.clone();
    set_meta_u64(&mut root_is_meta, META_ROOT, 1);
    corrupt_at(read_everything(&root_is_meta));

    let mut hwm_past_end = file.clone();
    set_meta_u64(&mut hwm_past_end, META_PGID, u64::MAX / 2);
    let (_, what) = corrupt_at(read_everything(&hwm_past_end));
    assert!(what.contains("truncated"), "{what}");

    // A branch element pointing past the end of the file.
    let tree = bucket_root(&file, b"tree");
    assert_eq!(page_flags(&file, tree), 0x01);
    let mut child_past_end = file.clone();
    set_u64(&mut child_past_end, elem_at(tree, 1) + 8, pages + 100);
    let (page, what) = corrupt_at(read_everything(&child_past_end));
    assert_eq!(page, pages + 100);
    assert!(what.contains("out of range"), "{what}");

    // A bucket pointing at the freelist page (not a leaf or branch).
    let mut child_is_freelist = file.clone();
    set_u64(&mut child_is_freelist, elem_at(tree, 0) + 8, 2);
    let (_, what) = corrupt_at(read_everything(&child_is_freelist));
    assert!(what.contains("flags"), "{what}");

    // Overflow running past the end.
    let leaf = branch_child(&file, tree, 0);
    let mut overflow_past_end = file.clone();
    set_u32(&mut overflow_past_end, leaf as usize * 4096 + 12, u32::MAX);
    let (_, what) = corrupt_at(read_everything(&overflow_past_end));
    assert!(what.contains("overflow"), "{what}");
}

#[test]
fn cyclic_and_shared_pages() {
    let file = sample();
    let tree = bucket_root(&file, b"tree");

    // The branch page as its own child.
    let mut self_loop = file.clone();
    set_u64(&mut self_loop, elem_at(tree, 2) + 8, tree);
    let (_, what) = corrupt_at(read_everything(&self_loop));
    assert!(what.contains("referenced twice"), "{what}");

    // Two elements sharing one child.
    let mut shared = file.clone();
    let first = branch_child(&file, tree, 0);
    set_u64(&mut shared, elem_at(tree, 1) + 8, first);
    corrupt_at(read_everything(&shared));

    // A branch element pointing at the root bucket's page.
    let root = common::layout::u64_at(&file, meta_at(0, META_ROOT));
    let mut bucket_is_root = file.clone();
    set_u64(&mut bucket_is_root, elem_at(tree, 0) + 8, root);
    // Its keys are outside the branch element's range (and would be nested buckets).
    let (page, what) = corrupt_at(read_everything(&bucket_is_root));
    assert_eq!(page, root, "{what}");
}

#[test]
fn elements_outside_their_page() {
    let file = sample();
    let tree = bucket_root(&file, b"tree");
    let leaf = branch_child(&file, tree, 0);

    let mut far_pos = file.clone();
    set_u32(&mut far_pos, elem_at(leaf, 3) + 4, 0xffff_ff00);
    let (page, what) = corrupt_at(read_everything(&far_pos));
    assert_eq!(page, leaf);
    assert!(what.contains("past the page"), "{what}");

    let mut huge_value = file.clone();
    set_u32(&mut huge_value, elem_at(leaf, 0) + 12, u32::MAX);
    corrupt_at(read_everything(&huge_value));

    let mut branch_key = file.clone();
    set_u32(&mut branch_key, elem_at(tree, 0) + 4, 100_000);
    corrupt_at(read_everything(&branch_key));

    let mut too_many = file.clone();
    set_u32(&mut too_many, leaf as usize * 4096 + 10, 0xffff);
    let (_, what) = corrupt_at(read_everything(&too_many));
    assert!(what.contains("do not fit"), "{what}");

    // Keys swapped: out of order.
    let mut unordered = file.clone();
    let k0 = elem_at(leaf, 0);
    let k1 = elem_at(leaf, 1);
    let pos0 = common::layout::u32_at(&file, k0 + 4) as usize + k0;
    let pos1 = common::layout::u32_at(&file, k1 + 4) as usize + k1;
    unordered[pos0..pos0 + 10].copy_from_slice(&file[pos1..pos1 + 10]);
    unordered[pos1..pos1 + 10].copy_from_slice(&file[pos0..pos0 + 10]);
    let (_, what) = corrupt_at(read_everything(&unordered));
    assert!(what.contains("not greater"), "{what}");
}

#[test]
fn branch_keys_must_bound_their_children() {
    let file = sample();
    let tree = bucket_root(&file, b"tree");
    let key_of = |file: &[u8], i: usize| {
        let at = elem_at(tree, i);
        // Branch element: pos u32, ksize u32, pgid u64.
        let pos = common::layout::u32_at(file, at) as usize + at;
        let ksize = common::layout::u32_at(file, at + 4) as usize;
        pos..pos + ksize
    };

    // Branch key 1 raised above the first key of its child.
    let mut raised = file.clone();
    let k1 = key_of(&file, 1);
    raised[k1.end - 1] += 1;
    let (page, what) = corrupt_at(read_everything(&raised));
    assert_eq!(page, branch_child(&file, tree, 1));
    assert!(what.contains("less than the key of its parent"), "{what}");

    // Branch key 2 lowered below the last keys of child 1 (still above branch key 1).
    let mut lowered = file.clone();
    let k2 = key_of(&file, 2);
    let mut low = file[k1.clone()].to_vec();
    *low.last_mut().unwrap() += 1;
    lowered[k2].copy_from_slice(&low);
    let (_, what) = corrupt_at(read_everything(&lowered));
    assert!(what.contains("next key of its parent"), "{what}");

    // Branch keys out of order.
    let mut swapped = file.clone();
    swapped[k1.clone()].copy_from_slice(b"zzzzzzzzzz");
    let (page, what) = corrupt_at(read_everything(&swapped));
    assert_eq!(page, tree);
    assert!(what.contains("branch key 2"), "{what}");
}

#[test]
fn inline_buckets_are_checked() {
    // Turn the empty bucket into an inline one pointing at garbage.
    let file = sample();
    let mut inline = file.clone();
    let root = common::layout::u64_at(&file, meta_at(0, META_ROOT));
    // Element 1 of the root leaf is "empty" (sorted: big, empty, tree).
    let at = elem_at(root, 1);
    let pos = common::layout::u32_at(&file, at + 4) as usize;
    let ksize = common::layout::u32_at(&file, at + 8) as usize;
    set_u64(&mut inline, at + pos + ksize, 0);
    let err = read_everything(&inline).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_byte_flips_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        truncate in prop::option::weighted(0.1, any::<prop::sample::Index>()),
    ) {
        let mut file = small_sample();
        for (at, xor) in flips {
            let i = at.index(file.len());
            file[i] ^= xor;
        }
        if let Some(at) = truncate {
            let len = at.index(file.len());
            file.truncate(len);
        }
        // Any outcome but a panic or a hang is fine; errors must print.
        if let Err(e) = read_everything(&file) {
            let _ = e.to_string();
        }
    }

    #[test]
    fn flips_in_meta_pages_never_panic(
        flips in prop::collection::vec((0usize..160, 1u8..=255), 1..4),
    ) {
        // Flip bytes of the meta area and fix the checksums, so the damage gets past them.
        let mut file = small_sample();
        for (at, xor) in flips {
            let page = at / 80;
            file[meta_at(page, 0) + (at % 80).min(55)] ^= xor;
            common::layout::fix_meta_checksum(&mut file, page);
        }
        if let Err(e) = read_everything(&file) {
            let _ = e.to_string();
        }
    }
}
