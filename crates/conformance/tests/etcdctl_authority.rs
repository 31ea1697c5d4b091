//! Regression test: etcdctl 3.4 commands that dial `passthrough:///http://127.0.0.1:PORT`
//! send `:authority: http://127.0.0.1:PORT`, which h2 rejects (RST_STREAM PROTOCOL_ERROR)
//! unless `coffer serve` repairs it (crates/authority, `coffer-authority`). Runs Debian's etcdctl
//! against the real binary: `endpoint status`, `defrag`, and `put`/`get` (which dial a plain
//! `host:port` authority) on the same server, and checks each succeeds.
//!
//! Needs a built binary: `cargo build -p coffer && cargo test -p coffer-conformance --test
//! etcdctl_authority` (`COFFER_BIN` overrides the path, `ETCDCTL_BIN` the client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_conformance::{etcdctl, CofferOptions, CofferProcess};
use serde_json::Value;

fn ok(endpoint: &str, args: &[&str]) -> etcdctl::Output {
    let out = etcdctl::run(endpoint, args, None).unwrap();
    assert_eq!(
        out.code, 0,
        "etcdctl {args:?} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        !out.stderr.contains("PROTOCOL_ERROR"),
        "etcdctl {args:?}: {}",
        out.stderr
    );
    out
}

#[test]
fn etcdctl_scheme_authority_commands_succeed() {
    let coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let endpoint = coffer.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");

    ok(&endpoint, &["put", "greeting", "hello"]);

    let status = ok(&endpoint, &["endpoint", "status", "-w", "json"]);
    let list: Value = serde_json::from_str(&status.stdout).unwrap();
    let entry = &list[0];
    assert_eq!(entry["Endpoint"], endpoint.as_str(), "{list}");
    assert!(
        entry["Status"]["header"]["revision"].as_i64().unwrap() >= 2,
        "{list}"
    );
    assert!(
        entry["Status"]["version"]
            .as_str()
            .unwrap()
            .starts_with("3."),
        "{list}"
    );

    let defrag = ok(&endpoint, &["defrag"]);
    assert!(
        defrag.stdout.contains("Finished defragmenting etcd member"),
        "{}",
        defrag.stdout
    );

    // The same connection path still serves ordinary requests, before and after.
    let get = ok(&endpoint, &["get", "greeting", "--print-value-only"]);
    assert_eq!(get.stdout.trim_end(), "hello");

    // Several endpoints at once (etcdctl dials each as passthrough:///URL).
    let both = format!("{endpoint},{endpoint}");
    let status = ok(&both, &["endpoint", "status", "-w", "json"]);
    let list: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // The server logged nothing about dropped connections.
    let log = coffer.log();
    assert!(!log.contains("dropping an HTTP/2 connection"), "{log}");
}

/// Large requests from a tonic (h2) client pass through the wrapper: a put over the size
/// limit is refused, and the connection keeps serving. (Regression: the wrapper once held
/// back a ready END_STREAM frame while waiting for more input, which hung the next call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_from_an_h2_client_pass_through() {
    use coffer_proto::kv_client::KvClient;
    use coffer_proto::{PutRequest, RangeRequest};
    use std::time::Duration;

    let coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(coffer.endpoint())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let big = PutRequest {
        key: b"big".to_vec(),
        value: vec![b'v'; 1_600_000],
        ..Default::default()
    };
    let res = kv.put(big).await;
    let err = res.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let ok = PutRequest {
        key: b"fits".to_vec(),
        value: vec![b'v'; 1_000_000],
        ..Default::default()
    };
    kv.put(ok).await.unwrap();
    let got = kv
        .range(RangeRequest {
            key: b"fits".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value.len(), 1_000_000);
}
