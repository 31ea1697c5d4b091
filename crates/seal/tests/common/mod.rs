//! Test fixtures shared by the integration tests: the upstream vectors, a converter from their
//! JSON provider lists to config model values, the upstream mock KMS plugins, and a random
//! source that replays the bytes a vector recorded.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use coffer_seal::config::model::{
    EncryptionConfiguration, Key, KeysConfiguration, KmsApiVersion, KmsConfiguration,
    ProviderConfiguration, ResourceConfiguration,
};
use coffer_seal::key_service::{
    DecryptRequest, EncryptResponse, KeyService, KeyServiceError, KeyServiceV1, KeyStatus,
};
use coffer_seal::rng::{RandomError, RandomSource};
use coffer_seal::SecretBytes;
use serde_json::Value;

pub const VECTORS: &str = include_str!("../data/k8s-transformers.json");

pub fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

pub fn vector(id: &str) -> Value {
    vectors().into_iter().find(|v| v["id"] == id).unwrap()
}

pub fn hex_field(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// A vector's `providers` JSON as config model values.
pub fn providers_from_json(list: &Value) -> Vec<ProviderConfiguration> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (kind, body) = p.as_object().unwrap().iter().next().unwrap();
            let keys = || KeysConfiguration {
                keys: body["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| Key {
                        name: k["name"].as_str().unwrap().to_owned(),
                        secret: SecretBytes::new(b64(k["secret"].as_str().unwrap())),
                    })
                    .collect(),
            };
            match kind.as_str() {
                "aesgcm" => ProviderConfiguration::AesGcm(keys()),
                "aescbc" => ProviderConfiguration::AesCbc(keys()),
                "secretbox" => ProviderConfiguration::Secretbox(keys()),
                "identity" => ProviderConfiguration::Identity,
                "kms" => ProviderConfiguration::Kms(KmsConfiguration {
                    api_version: if body["apiVersion"] == "v1" {
                        KmsApiVersion::V1
                    } else {
                        KmsApiVersion::V2
                    },
                    name: body["name"].as_str().unwrap().to_owned(),
                    endpoint: "unix:///tmp/mock.sock".to_owned(),
                    cache_size: None,
                    timeout: std::time::Duration::from_secs(3),
                }),
                other => panic!("unknown provider {other}"),
            }
        })
        .collect()
}

/// A one-rule configuration.
pub fn config(
    resources: &[&str],
    providers: Vec<ProviderConfiguration>,
) -> EncryptionConfiguration {
    EncryptionConfiguration {
        resources: vec![ResourceConfiguration {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            providers,
        }],
    }
}

/// Returns the recorded reads in order; fails on a length mismatch or when empty.
#[derive(Debug, Default)]
pub struct ReplayRandom {
    queue: Mutex<VecDeque<(String, Vec<u8>)>>,
}

impl ReplayRandom {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn push(&self, what: &str, bytes: Vec<u8>) {
        self.queue
            .lock()
            .unwrap()
            .push_back((what.to_owned(), bytes));
    }
    /// Queues a vector's `randomness_reads`.
    pub fn push_vector(&self, v: &Value) {
        for r in v["randomness_reads"].as_array().unwrap() {
            self.push(
                r["use"].as_str().unwrap(),
                hex::decode(r["hex"].as_str().unwrap()).unwrap(),
            );
        }
    }
    pub fn remaining(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

impl RandomSource for ReplayRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        let (what, bytes) = self.queue.lock().unwrap().pop_front().ok_or_else(|| {
            RandomError::new(format!("replay exhausted ({} bytes asked)", buf.len()))
        })?;
        if bytes.len() != buf.len() {
            return Err(RandomError::new(format!(
                "replay mismatch: next recorded read is {what:?} ({} bytes), asked {}",
                bytes.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}

/// The upstream KMS v2 `Base64Plugin` mock and its annotation variants.
#[derive(Debug)]
pub struct Base64MockV2 {
    pub annotations: BTreeMap<String, Vec<u8>>,
}

impl Base64MockV2 {
    pub fn for_plugin(name: &str) -> Self {
        let mut annotations = BTreeMap::new();
        match name {
            "base64-mock-v2" => {
                annotations.insert(
                    "local-kek.kms.kubernetes.io".to_owned(),
                    b"encrypted-local-kek".to_vec(),
                );
            }
            "base64-mock-v2-no-annotations" => {}
            "base64-mock-v2-two-annotations" => {
                annotations.insert("a.example.com".to_owned(), b"alpha".to_vec());
                annotations.insert("z.kms.k8s.io".to_owned(), vec![0x00, 0x01, 0xfe, 0xff]);
            }
            other => panic!("unknown mock {other}"),
        }
        Self { annotations }
    }
}

impl KeyService for Base64MockV2 {
    fn status(&self) -> Result<KeyStatus, KeyServiceError> {
        Ok(KeyStatus {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: "1".into(),
        })
    }
    fn encrypt(&self, _uid: &str, plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError> {
        Ok(EncryptResponse {
            ciphertext: base64::engine::general_purpose::STANDARD
                .encode(plaintext)
                .into_bytes(),
            key_id: "1".into(),
            annotations: self.annotations.clone(),
        })
    }
    fn decrypt(&self, uid: &str, request: &DecryptRequest) -> Result<SecretBytes, KeyServiceError> {
        if uid.is_empty() {
            return Err(KeyServiceError::Failed("uid is required".into()));
        }
        base64::engine::general_purpose::STANDARD
            .decode(&request.ciphertext)
            .map(SecretBytes::new)
            .map_err(|e| KeyServiceError::Failed(format!("illegal base64 data: {e}")))
    }
}

/// The upstream KMS v1beta1 `Base64Plugin` mock.
#[derive(Debug)]
pub struct Base64MockV1;

impl KeyServiceV1 for Base64MockV1 {
    fn decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, KeyServiceError> {
        base64::engine::general_purpose::STANDARD
            .decode(ciphertext)
            .map(SecretBytes::new)
            .map_err(|e| KeyServiceError::Failed(format!("illegal base64 data: {e}")))
    }
}

/// Connects kms entries to the mock named by a vector's `kms_plugin`.
pub struct MockConnector(pub String);

impl coffer_seal::key_service::KmsConnector for MockConnector {
    fn v2(&self, _c: &KmsConfiguration) -> Result<Arc<dyn KeyService>, KeyServiceError> {
        Ok(Arc::new(Base64MockV2::for_plugin(&self.0)))
    }
    fn v1(&self, _c: &KmsConfiguration) -> Result<Arc<dyn KeyServiceV1>, KeyServiceError> {
        Ok(Arc::new(Base64MockV1))
    }
}
