//! `coffer encrypt` and `coffer decrypt` with kms providers, as a user runs them: the real
//! binary, a real plugin socket served by the mock plugin (Kubernetes' base64 mock), and every
//! KMS vector that kube-apiserver's own transformers wrote.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_kms::mock::MockPlugin;
use serde_json::json;

mod common;
use common::{run, stderr};

const KEY: &str = "/registry/secrets/default/db-creds";

fn vectors() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../seal/tests/data/k8s-transformers.json"
    );
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["vectors"].as_array().unwrap().clone()
}

/// An EncryptionConfiguration (JSON) with one `*.*` rule over `providers`, every kms provider
/// pointed at `endpoint`.
fn write_config(dir: &Path, file: &str, providers: &serde_json::Value, endpoint: &str) -> PathBuf {
    let mut providers = providers.clone();
    for p in providers.as_array_mut().unwrap() {
        if let Some(kms) = p.get_mut("kms") {
            kms["endpoint"] = json!(endpoint);
        }
    }
    let doc = json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{ "resources": ["*.*"], "providers": providers }],
    });
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn kms_v2(name: &str, timeout: &str) -> serde_json::Value {
    json!([{ "kms": { "apiVersion": "v2", "name": name, "timeout": timeout } }])
}

#[test]
fn every_kms_vector_decrypts_through_the_binary_and_the_mock_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("kms.sock").display());
    let mock = MockPlugin::start(&endpoint).unwrap();
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v.get("kms_plugin").is_some()) {
        seen += 1;
        let id = v["id"].as_str().unwrap();
        let config = write_config(
            dir.path(),
            &format!("{id}.json"),
            &v["providers"],
            &endpoint,
        );
        let key = v["etcd_key"].as_str().unwrap();
        let out = run(
            &["decrypt", "--hex", "--key", key],
            &config,
            v["stored_hex"].as_str().unwrap().as_bytes(),
        );
        let err = stderr(&out);
        if v["expect"] == "ok" {
            assert!(out.status.success(), "{id}: {err}");
            let plaintext = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                plaintext.trim(),
                v["plaintext_hex"].as_str().unwrap(),
                "{id}"
            );
            // Vectors written while the writer used AES_GCM_KEY DEKs read stale here, since
            // Coffer's writer uses seeds; every other vector reads as upstream reads it.
            let legacy_writer = v["providers"][0]["kms"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("legacydek"));
            let stale = v["expect_stale"].as_bool().unwrap() || legacy_writer;
            assert!(
                err.contains(if stale { "stale: yes" } else { "stale: no" }),
                "{id}: {err}"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{id}: {err}");
            assert!(out.stdout.is_empty(), "{id}");
            assert!(err.starts_with("error: "), "{id}: {err}");
            let upstream = v["upstream_error"].as_str().unwrap().replace('\u{a0}', " ");
            if !upstream.starts_with("UPSTREAM PANIC") {
                assert!(err.contains(&upstream), "{id}: {err}\nexpected: {upstream}");
            }
        }
    }
    assert_eq!(seen, 28, "KMS vectors in the file");
    let calls = mock.calls();
    assert!(calls.decrypt > 0 && calls.v1_decrypt > 0, "{calls:?}");
    assert_eq!(mock.authorities(), vec!["localhost".to_owned()]);
}

#[test]
fn encrypt_then_decrypt_round_trip_with_kms_v2() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("kms.sock").display());
    let mock = MockPlugin::start(&endpoint).unwrap();
    let config = write_config(dir.path(), "enc.json", &kms_v2("vault", "3s"), &endpoint);
    let enc = run(&["encrypt", "--key", KEY], &config, b"hunter2");
    assert!(enc.status.success(), "{}", stderr(&enc));
    assert!(enc.stdout.starts_with(b"k8s:enc:kms:v2:vault:"));
    assert!(!enc.stdout.windows(7).any(|w| w == b"hunter2"));
    assert!(
        stderr(&enc).contains("kms v2 \"vault\""),
        "{}",
        stderr(&enc)
    );
    assert_eq!(mock.calls().encrypt, 1, "one seed for the encrypt run");
    let dec = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert!(dec.status.success(), "{}", stderr(&dec));
    assert_eq!(dec.stdout, b"hunter2");
    // The value's seed came back through one Decrypt; the Status asked afterwards (for
    // staleness) makes the run's own write seed, as kube-apiserver's first Status does.
    assert_eq!((mock.calls().encrypt, mock.calls().decrypt), (2, 1));
    assert!(stderr(&dec).contains("stale: no"), "{}", stderr(&dec));
    // Staleness is against the plugin's current key_id, asked after opening.
    mock.set_key_id("2");
    let dec = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert_eq!(dec.stdout, b"hunter2");
    assert!(stderr(&dec).contains("stale: yes"), "{}", stderr(&dec));
    mock.set_healthz("token gone");
    let dec = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert_eq!(dec.stdout, b"hunter2", "reads need no healthy Status");
    let e = stderr(&dec);
    assert!(
        e.contains("stale: unknown (kms v2 \"vault\" answered no Status")
            && e.contains("token gone"),
        "{e}"
    );
    assert_eq!(mock.calls().decrypt, 3, "one per decrypt run");
    mock.set_healthz("ok");

    // A plugin that refuses: a clear error naming the code, nothing on stdout.
    mock.fail_with(Some(tonic::Code::PermissionDenied));
    let out = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e = stderr(&out);
    assert!(
        e.contains("code = PermissionDenied") && e.contains(&endpoint),
        "{e}"
    );
}

#[test]
fn an_absent_plugin_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("absent.sock").display());
    let config = write_config(dir.path(), "enc.json", &kms_v2("vault", "300ms"), &endpoint);
    let started = Instant::now();
    let out = run(&["encrypt", "--key", KEY], &config, b"x");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "kms v2 \"vault\" (plugin at {endpoint}, timeout 300ms) has no write key"
        )),
        "{e}"
    );
    assert!(
        e.contains("the plugin socket never became reachable"),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    // One Status call (building the keyspace asks nothing), cut at the timeout: well under
    // two timeouts and a process start.
    assert!(
        started.elapsed() < Duration::from_millis(600 + 400),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let out = run(
        &["decrypt", "--key", KEY],
        &config,
        b"k8s:enc:kms:v2:vault:\x0a\x03abc\x12\x011\x1a\x01x",
    );
    // The Decrypt and the diagnosis's own try, each cut at the timeout; no Status.
    assert!(
        started.elapsed() < Duration::from_millis(2 * 300 + 400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains(&endpoint) && e.contains("never became reachable"),
        "{e}"
    );
}
