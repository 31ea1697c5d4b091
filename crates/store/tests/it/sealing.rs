//! The engine files never hold a value's plaintext when the sealer transforms it.

use std::path::Path;

use coffer_store::Backend;

use crate::common::*;

const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut found = false;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            found |= files_contain(&p, needle);
        } else {
            let bytes = std::fs::read(&p).unwrap();
            found |= bytes.windows(needle.len()).any(|w| w == needle);
        }
    }
    found
}

async fn write_markers_and_check(s: coffer_store::EmbeddedStore, dir: &Path) {
    {
        let s = s;
        for i in 0..20 {
            put(
                &s,
                &format!("/registry/secrets/s{i}"),
                &format!("{MARKER}-{i}"),
            )
            .await;
        }
        // ignore_value rewrites and txn puts are sealed too
        s.put(
            &coffer_store::Caller::Internal,
            coffer_proto::PutRequest {
                key: "/registry/secrets/s0".into(),
                ignore_value: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let r = get(&s, rr("/registry/secrets/s1", "")).await;
        assert_eq!(r.kvs[0].value, format!("{MARKER}-1").as_bytes());
        // Txn compares and reads work on plaintext.
        let t = s
            .txn(
                &coffer_store::Caller::Internal,
                coffer_proto::TxnRequest {
                    compare: vec![coffer_proto::Compare {
                        key: "/registry/secrets/s2".into(),
                        target: coffer_proto::compare::CompareTarget::Value as i32,
                        target_union: Some(coffer_proto::compare::TargetUnion::Value(
                            format!("{MARKER}-2").into_bytes(),
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(t.succeeded);
        s.defragment().await.unwrap();
    }
    assert!(!files_contain(dir, MARKER.as_bytes()));
    // The scan does see what is stored in clear: key names.
    assert!(files_contain(dir, b"/registry/secrets/s7"));
}

#[tokio::test]
async fn no_plaintext_marker_on_disk_with_the_test_sealer() {
    let d = tempfile::tempdir().unwrap();
    write_markers_and_check(open(d.path()), d.path()).await;
}

#[tokio::test]
async fn no_plaintext_marker_on_disk_with_the_real_keyspace() {
    let d = tempfile::tempdir().unwrap();
    let ks = real_keyspace();
    let s = coffer_store::EmbeddedStore::open(d.path(), ks.clone(), Default::default()).unwrap();
    write_markers_and_check(s, d.path()).await;
    // Reopened with the same key, values read back.
    let s = coffer_store::EmbeddedStore::open(d.path(), ks, Default::default()).unwrap();
    let r = get(&s, rr("/registry/secrets/s3", "")).await;
    assert_eq!(r.kvs[0].value, format!("{MARKER}-3").as_bytes());
}

#[test]
fn engine_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = open(&data);
    drop(s);
    let file_mode = std::fs::metadata(data.join("coffer.redb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(file_mode & 0o777, 0o600, "engine file mode {file_mode:o}");
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "data dir mode {dir_mode:o}");
}
