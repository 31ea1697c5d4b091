//! kube-apiserver's own transformer vectors (tests/data/k8s-transformers.json): every value
//! reads exactly as upstream read it (plaintext, stale flag, error text), and every written
//! value re-encrypts to the same bytes from the randomness it recorded.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use coffer_seal::config::model::{KmsApiVersion, ProviderConfiguration};
use coffer_seal::providers::kmsv2::KmsV2;
use coffer_seal::providers::{
    build_provider, NoMatch, PrefixTransformer, PrefixTransformers, Transformer,
};
use coffer_seal::rng::RandomSource;
use coffer_seal::TransformError;
use common::*;
use serde_json::Value;

/// Whether the vector's writer state used the legacy AES_GCM_KEY source type.
fn written_with_aes_gcm_key(v: &Value) -> bool {
    v["layout"]["encrypted_object"]["encryptedDEKSourceType"] == 0
}

/// Builds the provider list of a vector. KMS v2 entries get the mock plugin and a write state
/// (refresh draws the seed from `rng`); `legacy` selects the AES_GCM_KEY writer.
fn chain(
    providers: &[ProviderConfiguration],
    plugin: &str,
    rng: &Arc<dyn RandomSource>,
    legacy: bool,
) -> PrefixTransformers {
    let connector = MockConnector(plugin.to_owned());
    let entries = providers
        .iter()
        .map(|p| match p {
            ProviderConfiguration::Kms(k) if k.api_version == KmsApiVersion::V2 => {
                let svc = Arc::new(Base64MockV2::for_plugin(plugin));
                let t = if legacy {
                    KmsV2::dangerous_legacy_aes_gcm_key_writes(&k.name, svc, rng.clone())
                } else {
                    KmsV2::new(&k.name, svc, rng.clone())
                };
                t.refresh().unwrap();
                t.into_prefix_transformer()
            }
            other => build_provider(other, &connector, rng).unwrap(),
        })
        .collect::<Vec<PrefixTransformer>>();
    PrefixTransformers::new(entries, NoMatch::Prefix)
}

fn plugin_of(v: &Value) -> String {
    v["kms_plugin"]
        .as_str()
        .unwrap_or("base64-mock-v2")
        .to_owned()
}

fn is_written(v: &Value) -> bool {
    !v["randomness_reads"].is_null()
}

fn read_vector(v: &Value) -> Result<coffer_seal::providers::Read, TransformError> {
    let list = if v["read_providers"].is_null() {
        &v["providers"]
    } else {
        &v["read_providers"]
    };
    let providers = providers_from_json(list);
    let rng = ReplayRandom::new();
    // A write state for each kms v2 provider: one seed, drawn by refresh.
    let kms_v2 = providers
        .iter()
        .filter(
            |p| matches!(p, ProviderConfiguration::Kms(k) if k.api_version == KmsApiVersion::V2),
        )
        .count();
    for _ in 0..kms_v2 {
        rng.push("seed", vec![0x5a; 32]);
    }
    let legacy = is_written(v) && written_with_aes_gcm_key(v);
    let dyn_rng: Arc<dyn RandomSource> = rng.clone();
    let chain = chain(&providers, &plugin_of(v), &dyn_rng, legacy);
    let stored = hex_field(v, "stored_hex");
    let out = chain.from_storage(&stored, v["etcd_key"].as_str().unwrap().as_bytes());
    assert_eq!(
        rng.remaining(),
        0,
        "{}: a read consumed randomness",
        v["id"]
    );
    out
}

#[test]
fn every_vector_reads_as_upstream() {
    let all = vectors();
    assert_eq!(all.len(), 101);
    for v in &all {
        let id = v["id"].as_str().unwrap();
        let got = read_vector(v);
        match v["expect"].as_str().unwrap() {
            "ok" => {
                let r = got.unwrap_or_else(|e| panic!("{id}: expected ok, got {e}"));
                assert_eq!(
                    r.plaintext,
                    hex_field(v, "plaintext_hex"),
                    "{id}: plaintext"
                );
                assert_eq!(r.stale, v["expect_stale"].as_bool().unwrap(), "{id}: stale");
            }
            "error" => {
                let e = match got {
                    Ok(r) => panic!("{id}: expected an error, got {} bytes", r.plaintext.len()),
                    Err(e) => e,
                };
                let upstream = v["upstream_error"].as_str().unwrap().replace('\u{a0}', " ");
                if upstream.starts_with("UPSTREAM PANIC") {
                    // Coffer returns an error where upstream panics (checked in detail below).
                    assert!(e.to_string().contains("invalid PKCS7 data"), "{id}: {e}");
                } else {
                    assert_eq!(e.to_string(), upstream, "{id}: error text");
                }
            }
            other => panic!("{id}: unknown expect {other}"),
        }
    }
}

#[test]
fn every_written_vector_reencrypts_byte_for_byte() {
    // KMS v2 write states persist across vectors of the same provider and plugin, as in the
    // harness: later vectors record only their own info/nonce reads.
    let mut kms_states: HashMap<(String, String), (Arc<ReplayRandom>, PrefixTransformers)> =
        HashMap::new();
    let mut checked = 0;
    for v in vectors().iter().filter(|v| is_written(v)) {
        let id = v["id"].as_str().unwrap();
        let providers = providers_from_json(&v["providers"]);
        let plaintext = hex_field(v, "plaintext_hex");
        let key = v["written_with_etcd_key"]
            .as_str()
            .or(v["etcd_key"].as_str())
            .unwrap()
            .as_bytes()
            .to_vec();
        let stored = hex_field(v, "stored_hex");
        let (rng, out) = match &providers[0] {
            ProviderConfiguration::Kms(k) if k.api_version == KmsApiVersion::V1 => {
                // Coffer never writes KMS v1 (deprecated; read only). Its reads are checked
                // above; here the write must be refused, not faked.
                let rng = ReplayRandom::new();
                let dyn_rng: Arc<dyn RandomSource> = rng.clone();
                let c = chain(&providers, &plugin_of(v), &dyn_rng, false);
                let e = c.to_storage(&plaintext, &key).unwrap_err();
                assert!(
                    matches!(e, TransformError::KmsV1ReadOnly { .. }),
                    "{id}: {e}"
                );
                continue;
            }
            ProviderConfiguration::Kms(k) => {
                let group = (k.name.clone(), plugin_of(v));
                let (rng, c) = kms_states.entry(group).or_insert_with(|| {
                    let rng = ReplayRandom::new();
                    rng.push_vector(v);
                    let dyn_rng: Arc<dyn RandomSource> = rng.clone();
                    let c = chain(
                        &providers,
                        &plugin_of(v),
                        &dyn_rng,
                        written_with_aes_gcm_key(v),
                    );
                    (rng, c)
                });
                if rng.remaining() == 0 {
                    rng.push_vector(v);
                }
                (rng.clone(), c.to_storage(&plaintext, &key))
            }
            _ => {
                let rng = ReplayRandom::new();
                rng.push_vector(v);
                let dyn_rng: Arc<dyn RandomSource> = rng.clone();
                let c = chain(&providers, &plugin_of(v), &dyn_rng, false);
                (rng, c.to_storage(&plaintext, &key))
            }
        };
        let out = out.unwrap_or_else(|e| panic!("{id}: write failed: {e}"));
        assert_eq!(
            hex::encode(&out),
            hex::encode(&stored),
            "{id}: stored bytes"
        );
        assert_eq!(rng.remaining(), 0, "{id}: recorded randomness left unused");
        checked += 1;
    }
    // 63 written vectors, of which 5 are KMS v1 (read only in Coffer).
    assert_eq!(checked, 58);
}

fn read_id(id: &str) -> Result<coffer_seal::providers::Read, TransformError> {
    read_vector(&vector(id))
}

#[test]
fn aescbc_iv_only_payload_is_an_error_not_a_panic() {
    // neg-aescbc-iv-only: upstream indexes result[-1] and panics.
    let e = read_id("neg-aescbc-iv-only").unwrap_err();
    assert_eq!(e.to_string(), "invalid PKCS7 data (empty or not padded)");
}

#[test]
fn kmsv1_16_byte_payload_is_an_error_not_a_panic() {
    // neg-kmsv1-16-byte-payload: GCM fails, then the CBC fallback sees an IV only.
    let e = read_id("neg-kmsv1-16-byte-payload").unwrap_err();
    assert_eq!(
        e.to_string(),
        "[cipher: message authentication failed, invalid PKCS7 data (empty or not padded)]"
    );
}

/// kmsv1-cbc-fallback-garbage: a KMS v1 GCM value read under another etcd key fails GCM, and
/// the unauthenticated legacy CBC fallback happens to find valid padding, so upstream returns
/// garbage marked stale. Coffer's choice: keep the fallback (pre-1.25 KMS v1 data must stay
/// readable, and CBC cannot tell legacy data from garbage), return exactly what upstream
/// returns, marked stale, and name the unauthenticated fallback in the read's source so
/// `coffer decrypt` shows it.
#[test]
fn kmsv1_cbc_fallback_garbage_is_read_as_stale_legacy_cbc() {
    let v = vector("kmsv1-cbc-fallback-garbage");
    let r = read_vector(&v).unwrap();
    assert_eq!(r.plaintext, hex_field(&v, "plaintext_hex"));
    assert!(r.stale);
    assert!(r.source.contains("legacy AES-CBC fallback"), "{}", r.source);
    // The genuine legacy values read the same way.
    let legacy = read_id("kmsv1-legacy-cbc-secret").unwrap();
    assert!(legacy.stale && legacy.source.contains("legacy AES-CBC"));
}
