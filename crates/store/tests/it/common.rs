//! Shared helpers and a TEST-ONLY sealer.

use std::path::Path;
use std::sync::Arc;

use coffer_proto::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
};
use coffer_store::{Backend, EmbeddedStore, Sealer, StoreOptions};

/// TEST ONLY, no security: prefixes `xor:` and XORs every byte with a key-dependent byte, so
/// stored bytes differ from the plaintext and a wrong key fails to open.
pub struct XorTestSealer;

fn pad(key: &[u8]) -> u8 {
    key.iter().fold(0xA5u8, |a, b| a.wrapping_add(*b)) | 0x80
}

impl Sealer for XorTestSealer {
    fn seal(&self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let p = pad(key);
        let mut out = b"xor:".to_vec();
        out.push(p);
        out.extend(plaintext.iter().map(|b| b ^ p));
        Ok(out)
    }
    fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        let rest = stored
            .strip_prefix(b"xor:")
            .ok_or_else(|| "not sealed by the test sealer".to_string())?;
        let (&p, body) = rest.split_first().ok_or("truncated")?;
        if p != pad(key) {
            return Err("sealed for another key".into());
        }
        Ok(body.iter().map(|b| b ^ p).collect())
    }
}

pub fn open(dir: &Path) -> EmbeddedStore {
    open_with(dir, StoreOptions::default())
}

pub fn open_with(dir: &Path, opts: StoreOptions) -> EmbeddedStore {
    EmbeddedStore::open(dir, Arc::new(XorTestSealer), opts).unwrap()
}

pub async fn put(s: &impl Backend, k: &str, v: &str) -> PutResponse {
    s.put(
        &coffer_store::Caller::Internal,
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

pub async fn del(s: &impl Backend, k: &str, end: &str) -> DeleteRangeResponse {
    s.delete_range(
        &coffer_store::Caller::Internal,
        DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        },
    )
    .await
    .unwrap()
}

pub fn rr(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

pub async fn get(s: &impl Backend, req: RangeRequest) -> RangeResponse {
    s.range(&coffer_store::Caller::Internal, req).await.unwrap()
}

pub fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

pub fn rev_of(h: &Option<coffer_proto::ResponseHeader>) -> i64 {
    h.as_ref().expect("header").revision
}

/// A real keyspace as `coffer serve` runs with no config: every key sealed with the KMS v2
/// default key (a fixed test KEK here).
pub fn real_keyspace() -> Arc<coffer_seal::Keyspace> {
    let rng: Arc<dyn coffer_seal::RandomSource> =
        Arc::new(coffer_seal::SystemRandom::new().unwrap());
    let service = coffer_seal::LocalKeyService::new(
        &coffer_seal::SecretBytes::new(vec![7u8; 32]),
        Arc::clone(&rng),
    )
    .unwrap();
    let config = coffer_seal::config::model::EncryptionConfiguration { resources: vec![] };
    Arc::new(
        coffer_seal::Keyspace::new(
            &config,
            "/registry",
            Some(Arc::new(service)),
            &coffer_seal::key_service::NoKmsClient,
            rng,
        )
        .unwrap(),
    )
}
