//! `coffer encrypt` and `coffer decrypt` as a user runs them: the real binary, real files,
//! stdin and stdout.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

mod common;
use common::{run, stderr};

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../seal/tests/data/k8s-transformers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vector(id: &str) -> serde_json::Value {
    vectors()["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap()
        .clone()
}

fn write_config(dir: &Path, providers_yaml: &str) -> PathBuf {
    let path = dir.join("encryption.yaml");
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n{providers_yaml}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn aesgcm(name: &str, secret: &str) -> String {
    format!("      - aesgcm:\n          keys:\n            - name: {name}\n              secret: {secret}\n")
}

const KEY: &str = "/registry/secrets/default/db-creds";
const SECRET_A: &str = "dGhpcyBpcyBhIDMyLWJ5dGUga2V5IGZvciB0ZXN0cyE=";

#[test]
fn round_trip_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &aesgcm("key1", SECRET_A));
    let enc = run(&["encrypt", "--key", KEY], &config, b"hello secret");
    assert!(enc.status.success(), "{}", stderr(&enc));
    assert!(enc.stdout.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    assert!(stderr(&enc).contains("aesgcm"));
    let dec = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert!(dec.status.success(), "{}", stderr(&dec));
    assert_eq!(dec.stdout, b"hello secret");
    let e = stderr(&dec);
    assert!(
        e.contains("aesgcm key \"key1\"") && e.contains("stale: no"),
        "{e}"
    );
    // The etcd key is authenticated: another key fails, with nothing on stdout.
    let moved = run(
        &["decrypt", "--key", "/registry/secrets/default/other"],
        &config,
        &enc.stdout,
    );
    assert_eq!(moved.status.code(), Some(1));
    assert!(moved.stdout.is_empty());
    assert!(stderr(&moved).contains("cipher: message authentication failed"));
}

#[test]
fn decrypts_an_upstream_vector_with_hex() {
    let v = vector("multikey-aesgcm-written-key2");
    let tmp = tempfile::tempdir().unwrap();
    let keys = v["read_providers"][0]["aesgcm"]["keys"].as_array().unwrap();
    let mut yaml = String::from("      - aesgcm:\n          keys:\n");
    for k in keys {
        yaml += &format!(
            "            - name: {}\n              secret: {}\n",
            k["name"].as_str().unwrap(),
            k["secret"].as_str().unwrap()
        );
    }
    let config = write_config(tmp.path(), &yaml);
    let out = run(
        &["decrypt", "--hex", "--key", v["etcd_key"].as_str().unwrap()],
        &config,
        v["stored_hex"].as_str().unwrap().as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap().trim(),
        v["plaintext_hex"].as_str().unwrap()
    );
    let e = stderr(&out);
    assert!(
        e.contains("key \"key2\"") && e.contains("stale: yes"),
        "{e}"
    );
}

#[test]
fn failure_lists_every_provider_and_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let other = write_config(tmp.path(), &aesgcm("key1", SECRET_A));
    let enc = run(&["encrypt", "--key", KEY], &other, b"x");
    assert!(enc.status.success());
    let config = write_config(
        tmp.path(),
        &format!(
            "{}      - identity: {{}}\n      - secretbox:\n          keys:\n            - name: sb\n              secret: {SECRET_A}\n      - kms:\n          apiVersion: v2\n          name: vault\n          endpoint: unix:///tmp/none.sock\n          timeout: 500ms\n",
            aesgcm("key1", "YW5vdGhlciBzZWNyZXQgb2YgMzIgYnl0ZXMgbG9uZyE=")
        ),
    );
    let out = run(&["decrypt", "--key", KEY], &config, &enc.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e = stderr(&out);
    assert!(
        e.contains("aesgcm (keys \"key1\"): failed: cipher: message authentication failed"),
        "{e}"
    );
    assert!(
        e.contains("identity: failed: identity transformer tried to read encrypted data"),
        "{e}"
    );
    assert!(e.contains("secretbox (keys \"sb\"): not tried"), "{e}");
    assert!(e.contains("kms v2 \"vault\": not tried"), "{e}");
    // A kms value reports that the plugin cannot be reached.
    let kms_value = b"k8s:enc:kms:v2:vault:\x0a\x03abc\x12\x011\x1a\x01x";
    let out = run(&["decrypt", "--key", KEY], &config, kms_value);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("plugin at unix:///tmp/none.sock")
            && stderr(&out).contains("never became reachable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn uncovered_keys_are_plaintext_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &aesgcm("key1", SECRET_A));
    let out = run(
        &["encrypt", "--key", "/registry/configmaps/ns/a"],
        &config,
        b"plain",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"plain");
    assert!(stderr(&out).contains("warning: no resource rule covers"));
}

#[test]
fn bad_hex_and_missing_config_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &aesgcm("key1", SECRET_A));
    let out = run(&["decrypt", "--hex", "--key", KEY], &config, b"zz");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("not valid hex"));
    let out = run(
        &["decrypt", "--key", KEY],
        &tmp.path().join("missing.yaml"),
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.yaml"), "{}", stderr(&out));
}
