//! Tampering, truncation and garbage: an authenticated value (aesgcm, secretbox, kms v2) with
//! any single byte flipped fails, never returns other plaintext; every truncation and garbage
//! fails cleanly (no panic).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use coffer_seal::config::model::EncryptionConfiguration;
use coffer_seal::key_service::{LocalKeyService, NoKmsClient};
use coffer_seal::providers::{build_chain, Transformer};
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{Keyspace, SecretBytes};
use common::*;

fn rng() -> Arc<dyn RandomSource> {
    Arc::new(SystemRandom::new().unwrap())
}

fn chain_for(
    id: &str,
) -> (
    coffer_seal::providers::PrefixTransformers,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
) {
    let v = vector(id);
    let plugin = v["kms_plugin"].as_str().unwrap_or("none").to_owned();
    let chain = build_chain(
        &providers_from_json(&v["providers"]),
        &MockConnector(plugin),
        &rng(),
    )
    .unwrap();
    (
        chain,
        hex_field(&v, "stored_hex"),
        v["etcd_key"].as_str().unwrap().as_bytes().to_vec(),
        hex_field(&v, "plaintext_hex"),
    )
}

#[test]
fn every_flipped_byte_of_an_authenticated_value_fails() {
    for id in [
        "aesgcm-k32-json-secret",
        "aesgcm-k16-len1",
        "aesgcm-k24-len17",
        "secretbox-k32-len17",
        "secretbox-k32-len0",
    ] {
        let (chain, stored, key, _) = chain_for(id);
        assert!(chain.from_storage(&stored, &key).is_ok(), "{id} baseline");
        for i in 0..stored.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = stored.clone();
                t[i] ^= bit;
                assert!(
                    chain.from_storage(&t, &key).is_err(),
                    "{id}: flipping byte {i} ({bit:#04x}) was accepted"
                );
            }
        }
    }
}

#[test]
fn kms_v2_flips_never_give_other_plaintext() {
    // With the upstream mock, keyID and annotations are not authenticated (the mock ignores
    // them), so a flip there may still read the right plaintext; it must never read another.
    for id in [
        "kmsv2-hkdf-mock-json-secret",
        "kmsv2-hkdf-two-annotations",
        "kmsv2-aesgcmkey-mock-len17",
    ] {
        let (chain, stored, key, plaintext) = chain_for(id);
        for i in 0..stored.len() {
            let mut t = stored.clone();
            t[i] ^= 0x01;
            if let Ok(r) = chain.from_storage(&t, &key) {
                assert_eq!(
                    r.plaintext, plaintext,
                    "{id}: byte {i} gave other plaintext"
                );
            }
        }
    }
}

fn default_keyspace() -> Keyspace {
    let rng = rng();
    let svc = LocalKeyService::new(&SecretBytes::new(vec![0x42; 32]), rng.clone()).unwrap();
    Keyspace::default_only(Arc::new(svc), rng).unwrap()
}

#[test]
fn every_flipped_byte_of_a_default_key_value_fails() {
    // Coffer's default key checks key_id and authenticates the wrapped seed, so with it every
    // byte of a KMS v2 value matters.
    let ks = default_keyspace();
    let key = b"/registry/secrets/default/db";
    let stored = ks.seal(key, b"{\"password\":\"hunter2\"}").unwrap();
    assert_eq!(
        ks.open(key, &stored).unwrap().plaintext,
        b"{\"password\":\"hunter2\"}"
    );
    for i in 0..stored.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = stored.clone();
            t[i] ^= bit;
            assert!(ks.open(key, &t).is_err(), "byte {i} ({bit:#04x}) accepted");
        }
    }
    assert!(ks
        .open(b"/registry/secrets/default/other", &stored)
        .is_err());
}

#[test]
fn every_truncation_fails_cleanly() {
    for id in [
        "aesgcm-k32-json-secret",
        "secretbox-k32-len17",
        "kmsv2-hkdf-mock-json-secret",
        "kmsv2-aesgcmkey-mock-json-secret",
        "kmsv1-gcm-json-secret",
        "aescbc-k32-len1000",
    ] {
        let (chain, stored, key, plaintext) = chain_for(id);
        let authenticated = !id.starts_with("aescbc") && !id.starts_with("kmsv1");
        for n in 0..stored.len() {
            let r = chain.from_storage(&stored[..n], &key);
            if id.starts_with("kmsv2") {
                // Cutting the unauthenticated annotations off at a field boundary still reads
                // (the mock ignores annotations); it must never read other plaintext.
                if let Ok(r) = r {
                    assert_eq!(r.plaintext, plaintext, "{id}: truncation to {n}");
                }
            } else if authenticated {
                assert!(r.is_err(), "{id}: truncation to {n} accepted");
            }
        }
    }
    let ks = default_keyspace();
    let stored = ks.seal(b"k", b"value").unwrap();
    for n in 0..stored.len() {
        assert!(
            ks.open(b"k", &stored[..n]).is_err(),
            "default key: truncation to {n}"
        );
    }
}

#[test]
fn garbage_after_every_prefix_fails_cleanly() {
    let (chain, _, key, _) = chain_for("kmsv2-hkdf-mock-json-secret");
    let mut seed = 0x1234_5678_u32;
    for len in 0..300 {
        let mut g = b"k8s:enc:kms:v2:kms-v2-mock:".to_vec();
        for _ in 0..len {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            g.push((seed >> 24) as u8);
        }
        assert!(chain.from_storage(&g, &key).is_err());
    }
    let empty = EncryptionConfiguration { resources: vec![] };
    let ks = Keyspace::new(&empty, "/registry", None, &NoKmsClient, rng()).unwrap();
    assert!(ks
        .open(b"/registry/secrets/a", b"k8s:enc:aesgcm:v1:x:garbage")
        .is_err());
}
