//! Fuzzes every decoder of stored values: the KMS v2 EncryptedObject (decode + validation), each
//! provider's read path and the whole keyspace. Any panic is a bug; errors are expected.
#![no_main]

use std::sync::{Arc, OnceLock};

use coffer_seal::config::model::{
    EncryptionConfiguration, Key, KeysConfiguration, ProviderConfiguration, ResourceConfiguration,
};
use coffer_seal::key_service::{LocalKeyService, NoKmsClient};
use coffer_seal::providers::kmsv2::object::{validate, EncryptedObject};
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{Keyspace, SecretBytes};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn keys(byte: u8, len: usize) -> KeysConfiguration {
    KeysConfiguration {
        keys: vec![
            Key { name: "k1".into(), secret: SecretBytes::new(vec![byte; len]) },
            Key { name: "k2".into(), secret: SecretBytes::new(vec![byte ^ 1; len]) },
        ],
    }
}

fn keyspace() -> &'static Keyspace {
    static KS: OnceLock<Keyspace> = OnceLock::new();
    KS.get_or_init(|| {
        let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
        let config = EncryptionConfiguration {
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".into()],
                providers: vec![
                    ProviderConfiguration::AesGcm(keys(1, 32)),
                    ProviderConfiguration::AesCbc(keys(2, 16)),
                    ProviderConfiguration::Secretbox(keys(3, 32)),
                    ProviderConfiguration::Identity,
                ],
            }],
        };
        let svc = LocalKeyService::new(&SecretBytes::new(vec![4; 32]), rng.clone()).unwrap();
        Keyspace::new(&config, "/registry", Some(Arc::new(svc)), &NoKmsClient, rng).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = EncryptedObject::decode(data) {
        let _ = validate(&o);
    }
    let ks = keyspace();
    let _ = ks.open(b"/registry/secrets/ns/name", data);
    let _ = ks.open(b"compact_rev_key", data);
    for prefix in [
        &b"k8s:enc:aesgcm:v1:k1:"[..],
        b"k8s:enc:aescbc:v1:k2:",
        b"k8s:enc:secretbox:v1:k1:",
        b"k8s:enc:kms:v2:coffer-default:",
    ] {
        let mut v = prefix.to_vec();
        v.extend_from_slice(data);
        let _ = ks.open(b"/registry/secrets/ns/name", &v);
        let _ = ks.open(b"compact_rev_key", &v);
    }
});
