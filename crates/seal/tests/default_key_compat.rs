//! Values sealed with the default key's first derivation (the file key itself wrapped seeds and
//! keyed the fingerprint/key_id HMAC) stay readable, and their data directories' recorded
//! fingerprint is still accepted (`data/default-key-v1.json`, written by that code).
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use base64::Engine as _;
use coffer_seal::{DefaultKey, Keyspace, RandomSource, SecretBytes, SystemRandom};
use serde_json::Value;

const FIXTURE: &str = include_str!("data/default-key-v1.json");

fn fixture() -> (Value, SecretBytes) {
    let v: Value = serde_json::from_str(FIXTURE).unwrap();
    let key = hex::decode(v["file_key_hex"].as_str().unwrap()).unwrap();
    (v, SecretBytes::new(key))
}

fn keyspace(key: &DefaultKey) -> Keyspace {
    let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
    Keyspace::default_only(Arc::new(key.key_service(rng.clone()).unwrap()), rng).unwrap()
}

fn check(key: &DefaultKey, v: &Value) {
    let old_fp = v["fingerprint_v1"].as_str().unwrap();
    // A new fingerprint, but the recorded old one still matches (and no other does).
    assert_ne!(key.fingerprint(), old_fp);
    assert!(key.matches_fingerprint(old_fp));
    assert!(key.matches_fingerprint(&key.fingerprint()));
    assert!(!key.matches_fingerprint(&"0".repeat(64)));
    let other = DefaultKey::from_secret(SecretBytes::new(vec![0; 32])).unwrap();
    assert!(!other.matches_fingerprint(old_fp));

    let ks = keyspace(key);
    for value in v["values"].as_array().unwrap() {
        let etcd_key = value["etcd_key"].as_str().unwrap().as_bytes();
        let stored = hex::decode(value["stored_hex"].as_str().unwrap()).unwrap();
        let plaintext = hex::decode(value["plaintext_hex"].as_str().unwrap()).unwrap();
        // The old key_id is in the stored value; the new one is not.
        let old_kid = old_fp.as_bytes();
        assert!(stored.windows(old_kid.len()).any(|w| w == old_kid));
        let opened = ks.open(etcd_key, &stored).unwrap();
        assert_eq!(opened.plaintext, plaintext);
        // Written under the old key_id: stale, so `coffer rotate` rewrites it.
        assert!(opened.stale, "{}", opened.provider);
        // A new write uses the new key_id and is current.
        let resealed = ks.seal(etcd_key, &plaintext).unwrap();
        assert!(!resealed.windows(old_kid.len()).any(|w| w == old_kid));
        let reopened = ks.open(etcd_key, &resealed).unwrap();
        assert_eq!(reopened.plaintext, plaintext);
        assert!(!reopened.stale);
        // Tampering with the old value still fails.
        let mut bad = stored.clone();
        let last = bad.len() - 40;
        bad[last] ^= 1;
        assert!(ks.open(etcd_key, &bad).is_err());
    }
    // Another key opens none of them.
    let ks_other = keyspace(&other);
    let first = &v["values"][0];
    let stored = hex::decode(first["stored_hex"].as_str().unwrap()).unwrap();
    assert!(ks_other
        .open(first["etcd_key"].as_str().unwrap().as_bytes(), &stored)
        .is_err());
}

#[test]
fn first_derivation_values_open_and_fingerprint_matches_in_memory() {
    let (v, key) = fixture();
    check(&DefaultKey::from_secret(key).unwrap(), &v);
}

#[test]
fn first_derivation_values_open_from_a_key_file() {
    let (v, key) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(
        f,
        "coffer-default-key v1\n{}",
        base64::engine::general_purpose::STANDARD.encode(key.expose_secret())
    )
    .unwrap();
    drop(f);
    check(&DefaultKey::load(&path).unwrap(), &v);
}
