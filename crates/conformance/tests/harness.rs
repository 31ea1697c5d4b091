//! Checks of the process harness itself, on Debian's etcd: a restart keeps the data directory
//! and the endpoint, `kill` and `terminate` stop the process, and a missing binary is a clear
//! error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coffer_conformance::client::Session;
use coffer_conformance::{CofferOptions, CofferProcess, EtcdProcess, HarnessError};
use coffer_proto::{PutRequest, RangeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_data_and_endpoint() {
    let mut etcd = EtcdProcess::start().unwrap();
    let ep = etcd.endpoint();
    let mut s = Session::connect(&ep).await.unwrap();
    s.kv.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let pid = etcd.pid().unwrap();
    etcd.kill();
    assert!(!etcd.is_running());
    assert!(etcd.pid().is_none());
    etcd.restart().unwrap();
    assert_ne!(etcd.pid().unwrap(), pid);
    assert_eq!(etcd.endpoint(), ep);
    let mut s = Session::connect(&ep).await.unwrap();
    let r =
        s.kv.range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value, b"v");
    assert!(etcd.data_dir().join("member").is_dir());
    etcd.terminate(Duration::from_secs(20)).unwrap();
    assert!(!etcd.is_running());
    assert!(!etcd.log().is_empty());
}

#[test]
fn two_etcds_get_distinct_ports() {
    let a = EtcdProcess::start().unwrap();
    let b = EtcdProcess::start().unwrap();
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.data_dir(), b.data_dir());
}

#[test]
fn missing_coffer_binary_is_a_clear_error() {
    let opts = CofferOptions {
        binary: Some("/nonexistent/coffer".into()),
        ..Default::default()
    };
    let err = CofferProcess::start(opts).unwrap_err();
    assert!(matches!(err, HarnessError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/coffer"), "{err}");
}
