//! Property tests: every provider round-trips random keys, plaintexts and etcd keys, and no
//! decoder (EncryptedObject, each provider, the whole keyspace) panics on arbitrary bytes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use coffer_seal::config::model::{Key, KeysConfiguration, ProviderConfiguration};
use coffer_seal::key_service::{LocalKeyService, NoKmsClient};
use coffer_seal::providers::kmsv2::object::{validate, EncryptedObject};
use coffer_seal::providers::{build_chain, Transformer};
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{Keyspace, SecretBytes};
use common::*;
use proptest::prelude::*;
use prost::Message;

fn rng() -> Arc<dyn RandomSource> {
    Arc::new(SystemRandom::new().unwrap())
}

fn keys(name: &str, secret: Vec<u8>) -> KeysConfiguration {
    KeysConfiguration {
        keys: vec![Key {
            name: name.to_owned(),
            secret: SecretBytes::new(secret),
        }],
    }
}

fn aes_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 16),
        prop::collection::vec(any::<u8>(), 24),
        prop::collection::vec(any::<u8>(), 32),
    ]
}

fn provider() -> impl Strategy<Value = ProviderConfiguration> {
    let name = "[a-z0-9:_-]{1,12}";
    prop_oneof![
        (name, aes_key()).prop_map(|(n, k)| ProviderConfiguration::AesGcm(keys(&n, k))),
        (name, aes_key()).prop_map(|(n, k)| ProviderConfiguration::AesCbc(keys(&n, k))),
        (name, prop::collection::vec(any::<u8>(), 32))
            .prop_map(|(n, k)| ProviderConfiguration::Secretbox(keys(&n, k))),
        Just(ProviderConfiguration::Identity),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_provider_round_trips(
        p in provider(),
        plaintext in prop::collection::vec(any::<u8>(), 0..2048),
        etcd_key in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let chain = build_chain(std::slice::from_ref(&p), &NoKmsClient, &rng()).unwrap();
        let stored = chain.to_storage(&plaintext, &etcd_key).unwrap();
        let is_identity = matches!(p, ProviderConfiguration::Identity);
        if is_identity && plaintext.starts_with(b"k8s:enc:") {
            // identity refuses to read what looks encrypted (upstream); skipped silently in a
            // list, so the whole list reports no match.
            prop_assert!(chain.from_storage(&stored, &etcd_key).is_err());
        } else {
            let r = chain.from_storage(&stored, &etcd_key).unwrap();
            prop_assert_eq!(r.plaintext, plaintext);
            prop_assert!(!r.stale);
        }
    }

    #[test]
    fn kms_v2_default_key_round_trips(
        kek in prop::collection::vec(any::<u8>(), 32),
        plaintext in prop::collection::vec(any::<u8>(), 0..2048),
        etcd_key in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let rng = rng();
        let svc = LocalKeyService::new(&SecretBytes::new(kek), rng.clone()).unwrap();
        let ks = Keyspace::default_only(Arc::new(svc), rng).unwrap();
        let stored = ks.seal(&etcd_key, &plaintext).unwrap();
        prop_assert!(stored.starts_with(b"k8s:enc:kms:v2:coffer-default:"));
        let r = ks.open(&etcd_key, &stored).unwrap();
        prop_assert_eq!(r.plaintext, plaintext);
        prop_assert!(!r.stale);
    }

    #[test]
    fn encrypted_object_decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(o) = EncryptedObject::decode(data.as_slice()) {
            let _ = validate(&o);
        }
    }

    #[test]
    fn provider_reads_never_panic(
        which in 0usize..6,
        data in prop::collection::vec(any::<u8>(), 0..400),
        etcd_key in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let (id, prefix): (&str, &[u8]) = [
            ("aesgcm-k32-len1", b"k8s:enc:aesgcm:v1:key1:" as &[u8]),
            ("aescbc-k16-len1", b"k8s:enc:aescbc:v1:key1:"),
            ("secretbox-k32-len1", b"k8s:enc:secretbox:v1:key1:"),
            ("kmsv1-gcm-len0", b"k8s:enc:kms:v1:kms-v1-mock:"),
            ("kmsv2-hkdf-mock-json-secret", b"k8s:enc:kms:v2:kms-v2-mock:"),
            ("identity-empty", b""),
        ][which];
        let v = vector(id);
        let plugin = v["kms_plugin"].as_str().unwrap_or("base64-mock-v2").to_owned();
        let chain = build_chain(&providers_from_json(&v["providers"]), &MockConnector(plugin), &rng()).unwrap();
        let _ = chain.from_storage(&data, &etcd_key);
        let mut with_prefix = prefix.to_vec();
        with_prefix.extend_from_slice(&data);
        let _ = chain.from_storage(&with_prefix, &etcd_key);
    }

    #[test]
    fn keyspace_open_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..400),
        etcd_key in "(/registry/)?[a-z./]{0,30}",
    ) {
        let rng = rng();
        let svc = LocalKeyService::new(&SecretBytes::new(vec![1; 32]), rng.clone()).unwrap();
        let ks = Keyspace::default_only(Arc::new(svc), rng).unwrap();
        let _ = ks.open(etcd_key.as_bytes(), &data);
        let mut prefixed = b"k8s:enc:kms:v2:coffer-default:".to_vec();
        prefixed.extend_from_slice(&data);
        prop_assert!(ks.open(etcd_key.as_bytes(), &prefixed).is_err());
    }
}
