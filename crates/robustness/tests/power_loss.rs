//! Coffer's store alone on the power-loss file system (`coffer-lazyfs`): `coffer serve` starts
//! on a fresh mount (it creates its key directory and key file and every file of its data
//! directory itself; the data directory is provisioned),
//! N keys are put and acknowledged, the server is SIGKILLed and the power cut (every unsynced
//! write and directory entry dropped), and after a restart all N keys must be there with their
//! values. Needs root and /dev/fuse, and a built `coffer`.

#![allow(clippy::unwrap_used)]

use std::fs;

use coffer_conformance::{CofferOptions, CofferProcess};
use coffer_lazyfs::Cut;
use coffer_proto::kv_client::KvClient;
use coffer_proto::{PutRequest, RangeRequest};

const N: usize = 200;

fn check(cut: Cut) {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir_all(backing.join("data")).unwrap();
    fs::create_dir(&mnt).unwrap();
    let lazy = coffer_lazyfs::mount(&backing, &mnt).unwrap();
    let data = mnt.join("data");
    let mut server = CofferProcess::start(CofferOptions {
        default_key_file: Some(mnt.join("keys").join("default.key")),
        ..Default::default()
    })
    .unwrap();
    // The harness's data directory becomes a symlink to the (empty) one on the mount.
    server.kill();
    fs::remove_dir_all(server.data_dir()).unwrap();
    std::os::unix::fs::symlink(&data, server.data_dir()).unwrap();
    server.restart().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoint = server.endpoint();
    rt.block_on(async {
        let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
        for i in 0..N {
            kv.put(PutRequest {
                key: format!("/registry/secrets/power/k{i}").into_bytes(),
                value: format!("v{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    assert!(
        data.join("coffer.redb").exists(),
        "the data is not on the mount"
    );
    server.kill();
    let report = lazy.power_cut(cut).unwrap();
    eprintln!("power cut {cut:?}: {report:?}");
    if let Err(e) = server.restart() {
        panic!("coffer serve did not start again after the power cut ({report:?}): {e}");
    }
    let endpoint = server.endpoint();
    let kvs = rt.block_on(async {
        let mut kv = KvClient::connect(endpoint).await.unwrap();
        kv.range(RangeRequest {
            key: b"/registry/secrets/power/".to_vec(),
            range_end: b"/registry/secrets/power0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
    });
    let mut missing = Vec::new();
    for i in 0..N {
        let key = format!("/registry/secrets/power/k{i}");
        match kvs.iter().find(|kv| kv.key == key.as_bytes()) {
            Some(kv) => assert_eq!(kv.value, format!("v{i}").into_bytes(), "{key}"),
            None => missing.push(key),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {N} acknowledged keys lost after a power cut: {missing:?}",
        missing.len()
    );
    drop(server);
    lazy.unmount().unwrap();
}

#[test]
fn acknowledged_puts_survive_a_power_cut() {
    check(Cut::DropAll);
}

#[test]
fn acknowledged_puts_survive_a_torn_power_cut() {
    check(Cut::RandomPrefix(7));
}
