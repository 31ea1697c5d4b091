//! No key byte (raw, base64 or hex) shows in the Debug or Display of a configuration with every
//! provider, its keyspace, a default key, a local key service, or any error they return.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use coffer_seal::config::model::{
    EncryptionConfiguration, Key, KeysConfiguration, KmsApiVersion, KmsConfiguration,
    ProviderConfiguration, ResourceConfiguration,
};
use coffer_seal::key_service::LocalKeyService;
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{DefaultKey, Keyspace, SecretBytes};
use common::MockConnector;

fn key(name: &str, byte: u8, len: usize) -> KeysConfiguration {
    KeysConfiguration {
        keys: vec![Key {
            name: name.to_owned(),
            secret: SecretBytes::new(vec![byte; len]),
        }],
    }
}

fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        base64::engine::general_purpose::STANDARD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
        format!("{bytes:?}"),
        String::from_utf8_lossy(bytes).into_owned(),
    ]
}

#[test]
fn nothing_shows_key_bytes() {
    // Distinct, recognisable key bytes per provider.
    let secrets: Vec<(u8, usize)> = vec![(0xa1, 32), (0xb2, 24), (0x4b, 32), (0x4c, 32)];
    let config = EncryptionConfiguration {
        resources: vec![ResourceConfiguration {
            resources: vec!["secrets".into()],
            providers: vec![
                ProviderConfiguration::AesGcm(key("g", 0xa1, 32)),
                ProviderConfiguration::AesCbc(key("c", 0xb2, 24)),
                ProviderConfiguration::Secretbox(key("s", 0x4b, 32)),
                ProviderConfiguration::Identity,
                ProviderConfiguration::Kms(KmsConfiguration {
                    api_version: KmsApiVersion::V2,
                    name: "k2".into(),
                    endpoint: "unix:///tmp/k.sock".into(),
                    cache_size: None,
                    timeout: std::time::Duration::from_secs(3),
                }),
            ],
        }],
    };
    let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
    let kek = SecretBytes::new(vec![0x4c; 32]);
    let default = DefaultKey::from_secret(kek.clone()).unwrap();
    let svc = LocalKeyService::new(&kek, rng.clone()).unwrap();
    let ks = Keyspace::new(
        &config,
        "/registry",
        Some(Arc::new(default.key_service(rng.clone()).unwrap())),
        &MockConnector("base64-mock-v2".into()),
        rng,
    )
    .unwrap();
    let mut shown = vec![
        format!("{config:?}"),
        format!("{ks:?}"),
        format!("{default:?}"),
        format!("{svc:?}"),
        default.fingerprint(),
    ];
    // Errors from every provider.
    for stored in [
        &b"k8s:enc:aesgcm:v1:g:0123456789abcdefghijklmnop"[..],
        b"k8s:enc:aescbc:v1:c:0123456789abcdef0123456789abcdef",
        b"k8s:enc:secretbox:v1:s:0123456789abcdef0123456789abcdef01234567",
        b"k8s:enc:kms:v2:k2:\x0a\x01x",
        b"k8s:enc:nope",
    ] {
        let d = ks.diagnose(b"/registry/secrets/a/b", stored);
        shown.push(format!("{d:?}"));
        if let Err(e) = &d.result {
            shown.push(e.to_string());
        }
    }
    let sealed = ks.seal(b"/registry/secrets/a/b", b"value").unwrap();
    shown.push(format!(
        "{:?}",
        ks.open(b"/registry/secrets/a/b", &sealed).unwrap()
    ));
    for text in &shown {
        for (byte, len) in &secrets {
            for f in forms(&vec![*byte; *len]) {
                assert!(!text.contains(&f), "key bytes {byte:#x} shown in: {text}");
            }
        }
    }
    assert!(format!("{ks:?}").contains("secrets"));
}
