//! The KMS v2 provider against a plugin whose answers the test controls: the write window and
//! its health rules, seed caching (bounded, LRU, single flight, max age), derived-key reuse,
//! the KMS metrics and the keyspace's KMS API.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use base64::Engine as _;
use coffer_seal::config::model::{
    EncryptionConfiguration, Key, KeysConfiguration, KmsApiVersion, KmsConfiguration,
    ProviderConfiguration, ResourceConfiguration,
};
use coffer_seal::key_service::{
    DecryptRequest, EncryptResponse, KeyService, KeyServiceError, KeyServiceV1, KeyStatus,
    KmsConnector,
};
use coffer_seal::providers::kmsv2::object::EncryptedObject;
use coffer_seal::providers::kmsv2::KmsV2;
use coffer_seal::providers::Transformer;
use coffer_seal::rng::{RandomSource, SystemRandom};
use coffer_seal::{kms_seals_everything, BuildError, Keyspace, SecretBytes, TransformError};
use prost::Message;

const KEY: &[u8] = b"/registry/secrets/ns/a";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What the plugin answers; the test changes it between calls.
#[derive(Debug, Clone)]
struct Answers {
    healthz: String,
    version: String,
    key_id: String,
    /// Encrypt's key_id when it should differ from Status'.
    encrypt_key_id: Option<String>,
    status_fails: bool,
    decrypt_delay: Duration,
}

/// Where a Decrypt reports its arrival, and where it waits for leave to answer.
type Rendezvous = (mpsc::Sender<()>, Arc<Mutex<mpsc::Receiver<()>>>);

/// A KMS v2 plugin in process: wraps by base64 under a `key_id:` prefix (the data keys are test
/// keys), counts its calls, and can make two Decrypts meet before either answers.
#[derive(Debug)]
struct Plugin {
    answers: Mutex<Answers>,
    encrypts: AtomicUsize,
    decrypts: AtomicUsize,
    /// When set, each Decrypt reports on the first channel and waits on the second.
    rendezvous: Mutex<Option<Rendezvous>>,
}

impl Plugin {
    fn new(key_id: &str) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(Answers {
                healthz: "ok".into(),
                version: "v2".into(),
                key_id: key_id.into(),
                encrypt_key_id: None,
                status_fails: false,
                decrypt_delay: Duration::ZERO,
            }),
            encrypts: AtomicUsize::new(0),
            decrypts: AtomicUsize::new(0),
            rendezvous: Mutex::new(None),
        })
    }

    fn set(&self, f: impl FnOnce(&mut Answers)) {
        f(&mut self.answers.lock().unwrap());
    }

    fn encrypts(&self) -> usize {
        self.encrypts.load(Ordering::SeqCst)
    }

    fn decrypts(&self) -> usize {
        self.decrypts.load(Ordering::SeqCst)
    }
}

impl KeyService for Plugin {
    fn status(&self) -> Result<KeyStatus, KeyServiceError> {
        let a = self.answers.lock().unwrap().clone();
        if a.status_fails {
            return Err(KeyServiceError::Unavailable("connection refused".into()));
        }
        Ok(KeyStatus {
            version: a.version,
            healthz: a.healthz,
            key_id: a.key_id,
        })
    }

    fn encrypt(&self, _uid: &str, plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError> {
        self.encrypts.fetch_add(1, Ordering::SeqCst);
        let a = self.answers.lock().unwrap().clone();
        let key_id = a.encrypt_key_id.unwrap_or(a.key_id);
        Ok(EncryptResponse {
            ciphertext: format!("{key_id}:{}", b64().encode(plaintext)).into_bytes(),
            key_id,
            annotations: BTreeMap::new(),
        })
    }

    fn decrypt(&self, _uid: &str, r: &DecryptRequest) -> Result<SecretBytes, KeyServiceError> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        let rendezvous = self.rendezvous.lock().unwrap().clone();
        if let Some((arrived, go)) = rendezvous {
            arrived.send(()).unwrap();
            let go = go.lock().unwrap();
            go.recv_timeout(Duration::from_secs(5))
                .map_err(|_| KeyServiceError::Failed("rendezvous timed out".into()))?;
        }
        std::thread::sleep(self.answers.lock().unwrap().decrypt_delay);
        let text = String::from_utf8(r.ciphertext.clone()).unwrap();
        let (key_id, wrapped) = text.split_once(':').unwrap();
        assert_eq!(key_id, r.key_id);
        Ok(SecretBytes::new(b64().decode(wrapped).unwrap()))
    }
}

fn rng() -> Arc<dyn RandomSource> {
    Arc::new(SystemRandom::new().unwrap())
}

fn provider(name: &str, plugin: &Arc<Plugin>) -> KmsV2 {
    let t = KmsV2::with_key_reuse(name, plugin.clone(), rng());
    t.refresh().unwrap();
    t
}

fn seal(t: &KmsV2, plaintext: &[u8]) -> Result<Vec<u8>, TransformError> {
    t.to_storage(plaintext, KEY)
}

fn open(t: &KmsV2, stored: &[u8]) -> Result<Vec<u8>, TransformError> {
    t.from_storage(stored, KEY).map(|r| r.plaintext)
}

fn object(stored: &[u8]) -> EncryptedObject {
    EncryptedObject::decode(stored).unwrap()
}

fn key_id_hash(key_id: &str) -> String {
    coffer_metrics::kms::key_id_hash(key_id)
}

#[test]
fn unhealthy_status_does_not_extend_the_write_window_kubernetes_138950() {
    let plugin = Plugin::new("k1");
    let t = provider("window-138950", &plugin);
    t.set_write_window(Duration::from_millis(400));
    let before = seal(&t, b"before").unwrap();
    // The plugin keeps answering Status, same valid key_id, but reports itself unhealthy.
    plugin.set(|a| a.healthz = "HSM unreachable".into());
    for _ in 0..6 {
        let e = t.refresh().unwrap_err().to_string();
        assert!(
            e.contains("got unexpected healthz status: HSM unreachable"),
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = seal(&t, b"after").unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, TransformError::KmsV2WritesStopped { .. }),
        "{text}"
    );
    assert!(
        text.starts_with("kms v2 provider \"window-138950\": writes stopped: no healthy Status from the plugin for "),
        "{text}"
    );
    assert!(text.contains("(write window 0.4 s)"), "{text}");
    assert!(
        text.ends_with(&format!("; key_id {}", key_id_hash("k1"))),
        "{text}"
    );
    assert!(
        !text.contains("\"k1\""),
        "the key_id only as its hash: {text}"
    );
    // Reads go on.
    assert_eq!(open(&t, &before).unwrap(), b"before");
    // Healthy again, same key_id: the same seed, no new Encrypt, writes resume.
    plugin.set(|a| a.healthz = "ok".into());
    let encrypts = plugin.encrypts();
    assert!(!t.refresh().unwrap(), "no new write state");
    assert_eq!(plugin.encrypts(), encrypts);
    let after = seal(&t, b"after").unwrap();
    assert_eq!(
        object(&after).encrypted_dek_source,
        object(&before).encrypted_dek_source,
        "the same seed"
    );
    assert_eq!(open(&t, &after).unwrap(), b"after");
}

#[test]
fn a_failing_status_closes_the_window_and_reads_go_on_with_cached_and_decrypted_seeds() {
    let plugin = Plugin::new("k1");
    let writer = provider("window-down", &plugin);
    let reader = KmsV2::with_key_reuse("window-down", plugin.clone(), rng());
    writer.set_write_window(Duration::from_millis(200));
    let a = seal(&writer, b"a").unwrap();
    plugin.set(|a| a.status_fails = true);
    assert!(writer.refresh().is_err());
    std::thread::sleep(Duration::from_millis(250));
    assert!(matches!(
        seal(&writer, b"x"),
        Err(TransformError::KmsV2WritesStopped { .. })
    ));
    // The writer's own seed is in memory; another reader asks Decrypt (which still works).
    assert_eq!(open(&writer, &a).unwrap(), b"a");
    assert_eq!(open(&reader, &a).unwrap(), b"a");
    assert_eq!(plugin.decrypts(), 1);
    let h = writer.health();
    assert!(!h.healthy);
    assert!(h.error.unwrap().contains("connection refused"));
    assert_eq!(h.write_window_left, Some(Duration::ZERO));
    assert_eq!(h.key_id_hash, Some(key_id_hash("k1")));
}

#[test]
fn unhealthy_status_with_a_new_key_id_does_not_rotate_the_seed() {
    let plugin = Plugin::new("k1");
    let t = provider("no-rotate-unhealthy", &plugin);
    let encrypts = plugin.encrypts();
    plugin.set(|a| {
        a.key_id = "k2".into();
        a.healthz = "degraded".into();
    });
    assert!(t.refresh().is_err());
    assert_eq!(
        plugin.encrypts(),
        encrypts,
        "no Encrypt for an unhealthy plugin"
    );
    assert_eq!(t.current_key_id().as_deref(), Some("k1"));
    plugin.set(|a| a.healthz = "ok".into());
    assert!(
        t.refresh().unwrap(),
        "healthy with a new key_id: a new seed"
    );
    assert_eq!(plugin.encrypts(), encrypts + 1);
    assert_eq!(t.current_key_id().as_deref(), Some("k2"));
    assert_eq!(object(&seal(&t, b"v").unwrap()).key_id, "k2");
}

#[test]
fn the_status_version_may_not_change_after_the_first_response() {
    let plugin = Plugin::new("k1");
    let t = provider("version-change", &plugin);
    t.set_write_window(Duration::from_millis(300));
    plugin.set(|a| a.version = "v2beta1".into());
    let e = t.refresh().unwrap_err().to_string();
    assert!(
        e.contains("KMSv2 API version should not change after the initial status response version v2, got v2beta1"),
        "{e}"
    );
    plugin.set(|a| a.version = "v3".into());
    let e = t.refresh().unwrap_err().to_string();
    assert!(e.contains("expected KMSv2 API version v2, got v3"), "{e}");
    std::thread::sleep(Duration::from_millis(350));
    assert!(
        seal(&t, b"v").is_err(),
        "a changed version does not extend the window"
    );
    plugin.set(|a| a.version = "v2".into());
    t.refresh().unwrap();
    seal(&t, b"v").unwrap();
}

#[test]
fn an_encrypt_under_another_key_id_keeps_the_old_state_until_its_window_closes() {
    let plugin = Plugin::new("k1");
    let t = provider("encrypt-mismatch", &plugin);
    t.set_write_window(Duration::from_millis(300));
    plugin.set(|a| {
        a.key_id = "k2".into();
        a.encrypt_key_id = Some("k1".into());
    });
    let e = t.refresh().unwrap_err().to_string();
    assert!(e.contains("failed to rotate DEK"), "{e}");
    assert!(e.contains(&key_id_hash("k2")), "{e}");
    assert_eq!(object(&seal(&t, b"v").unwrap()).key_id, "k1");
    std::thread::sleep(Duration::from_millis(350));
    assert!(seal(&t, b"v").is_err());
}

#[test]
fn before_the_first_status_writes_name_the_reason_and_reads_work() {
    let plugin = Plugin::new("k1");
    let writer = provider("first-status", &plugin);
    let v = seal(&writer, b"v").unwrap();
    plugin.set(|a| a.status_fails = true);
    let t = KmsV2::with_key_reuse("first-status", plugin.clone(), rng());
    assert!(t.refresh().is_err());
    let e = seal(&t, b"v").unwrap_err().to_string();
    assert!(e.contains("has no data key to write with yet"), "{e}");
    assert!(e.contains("connection refused"), "{e}");
    assert_eq!(open(&t, &v).unwrap(), b"v");
    assert_eq!(t.health().write_window_left, None);
}

/// Values under `n` different seeds (one writer per seed, same provider name and plugin).
fn values_under_seeds(name: &str, plugin: &Arc<Plugin>, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| seal(&provider(name, plugin), format!("v{i}").as_bytes()).unwrap())
        .collect()
}

#[test]
fn the_seed_cache_is_bounded_and_evicts_the_least_recently_used() {
    let plugin = Plugin::new("k1");
    let values = values_under_seeds("lru", &plugin, 3);
    let reader = KmsV2::with_key_reuse("lru", plugin.clone(), rng());
    reader.set_seed_cache_capacity(2);
    let read = |i: usize| {
        assert_eq!(
            open(&reader, &values[i]).unwrap(),
            format!("v{i}").as_bytes()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    read(0);
    read(1);
    read(0);
    assert_eq!(plugin.decrypts(), 2);
    read(2); // evicts 1, the least recently used (0 was used after it)
    assert_eq!(reader.seeds_cached(), 2);
    assert_eq!(plugin.decrypts(), 3);
    read(0);
    assert_eq!(plugin.decrypts(), 3, "0 stayed");
    read(1);
    assert_eq!(plugin.decrypts(), 4, "1 was evicted");
}

#[test]
fn seeds_do_not_expire_by_default_and_a_max_age_decrypts_them_again() {
    let plugin = Plugin::new("k1");
    let values = values_under_seeds("max-age", &plugin, 1);
    let reader = KmsV2::with_key_reuse("max-age", plugin.clone(), rng());
    open(&reader, &values[0]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    open(&reader, &values[0]).unwrap();
    assert_eq!(plugin.decrypts(), 1);
    // Long enough that the "fresh again" read below lands inside it on a busy machine.
    reader.set_seed_max_age(Some(Duration::from_millis(500)));
    std::thread::sleep(Duration::from_millis(600));
    open(&reader, &values[0]).unwrap();
    assert_eq!(plugin.decrypts(), 2, "aged out");
    open(&reader, &values[0]).unwrap();
    assert_eq!(plugin.decrypts(), 2, "fresh again");
}

#[test]
fn the_current_write_seed_is_never_evicted_nor_aged_out() {
    let plugin = Plugin::new("k1");
    let others = values_under_seeds("pinned", &plugin, 3);
    let t = provider("pinned", &plugin);
    t.set_seed_cache_capacity(1);
    t.set_seed_max_age(Some(Duration::from_millis(10)));
    let own = seal(&t, b"own").unwrap();
    for v in &others {
        open(&t, v).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let decrypts = plugin.decrypts();
    // Through the general path too: re-encode the value (fields in another order).
    let obj = object(&own);
    let reencoded = {
        let mut v = Vec::new();
        // encryptedDEKSource (3) first, then the rest: same object, other byte order.
        prost::encoding::bytes::encode(3, &obj.encrypted_dek_source, &mut v);
        prost::encoding::string::encode(2, &obj.key_id, &mut v);
        prost::encoding::bytes::encode(1, &obj.encrypted_data, &mut v);
        prost::encoding::int32::encode(5, &obj.encrypted_dek_source_type, &mut v);
        v
    };
    assert_ne!(reencoded, own);
    assert_eq!(open(&t, &reencoded).unwrap(), b"own");
    assert_eq!(open(&t, &own).unwrap(), b"own");
    assert_eq!(
        plugin.decrypts(),
        decrypts,
        "the write seed needs no Decrypt"
    );
    assert!(t.seeds_cached() <= 1);
}

#[test]
fn concurrent_misses_on_one_seed_make_one_decrypt() {
    let plugin = Plugin::new("k1");
    let values = values_under_seeds("single-flight", &plugin, 1);
    plugin.set(|a| a.decrypt_delay = Duration::from_millis(200));
    let reader = Arc::new(KmsV2::with_key_reuse(
        "single-flight",
        plugin.clone(),
        rng(),
    ));
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (reader, start, v) = (reader.clone(), start.clone(), values[0].clone());
            std::thread::spawn(move || {
                start.wait();
                open(&reader, &v).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), b"v0");
    }
    assert_eq!(plugin.decrypts(), 1);
}

#[test]
fn misses_on_different_seeds_decrypt_in_parallel_and_cached_reads_never_wait_for_the_plugin() {
    let plugin = Plugin::new("k1");
    let values = values_under_seeds("parallel", &plugin, 3);
    let reader = Arc::new(KmsV2::with_key_reuse("parallel", plugin.clone(), rng()));
    assert_eq!(open(&reader, &values[2]).unwrap(), b"v2");
    let (arrived_tx, arrived) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    *plugin.rendezvous.lock().unwrap() = Some((arrived_tx, Arc::new(Mutex::new(go_rx))));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (reader, v) = (reader.clone(), values[i].clone());
            std::thread::spawn(move || open(&reader, &v).unwrap())
        })
        .collect();
    // Both Decrypts reach the plugin before either is answered: they run in parallel.
    for _ in 0..2 {
        arrived
            .recv_timeout(Duration::from_secs(5))
            .expect("both Decrypts in flight at once");
    }
    // While they are in flight, a cached seed reads at once (no lock held across the call).
    let (done_tx, done) = mpsc::channel();
    let (r, v) = (reader.clone(), values[2].clone());
    std::thread::spawn(move || done_tx.send(open(&r, &v).unwrap()).unwrap());
    assert_eq!(
        done.recv_timeout(Duration::from_secs(2)).unwrap(),
        b"v2".to_vec()
    );
    go.send(()).unwrap();
    go.send(()).unwrap();
    let got: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(got, vec![b"v0".to_vec(), b"v1".to_vec()]);
}

fn info(stored: &[u8]) -> Vec<u8> {
    object(stored).encrypted_data[..32].to_vec()
}

fn nonce(stored: &[u8]) -> Vec<u8> {
    object(stored).encrypted_data[32..44].to_vec()
}

#[test]
fn coffers_writer_reuses_a_derived_key_for_n_writes_with_fresh_nonces() {
    let plugin = Plugin::new("k1");
    let t = KmsV2::with_writes_per_derived_key("reuse", plugin.clone(), rng(), 3);
    t.refresh().unwrap();
    let values: Vec<Vec<u8>> = (0..7).map(|i| seal(&t, &[i]).unwrap()).collect();
    let infos: Vec<Vec<u8>> = values.iter().map(|v| info(v)).collect();
    assert!(infos[0] == infos[1] && infos[1] == infos[2]);
    assert_ne!(infos[2], infos[3]);
    assert!(infos[3] == infos[4] && infos[4] == infos[5]);
    assert_ne!(infos[5], infos[6]);
    let nonces: HashSet<Vec<u8>> = values.iter().map(|v| nonce(v)).collect();
    assert_eq!(nonces.len(), 7);
    // Tampered, or moved to another etcd key: refused, also under the derived key in use.
    let mut bad = values[6].clone();
    bad[2 + 32 + 12] ^= 1;
    assert!(matches!(
        t.from_storage(&bad, KEY),
        Err(TransformError::AuthenticationFailed)
    ));
    assert!(matches!(
        t.from_storage(&values[6], b"/registry/secrets/ns/b"),
        Err(TransformError::AuthenticationFailed)
    ));
    // kube-apiserver's reader (one derivation per value) reads them.
    let kube = KmsV2::new("reuse", plugin.clone(), rng());
    for (i, v) in values.iter().enumerate() {
        assert_eq!(open(&kube, v).unwrap(), [i as u8]);
        assert_eq!(open(&t, v).unwrap(), [i as u8]);
    }
    // kube-apiserver's writer: a new info per value.
    kube.refresh().unwrap();
    let a = seal(&kube, b"a").unwrap();
    let b = seal(&kube, b"b").unwrap();
    assert_ne!(info(&a), info(&b));
    assert_eq!(open(&t, &a).unwrap(), b"a");
}

#[test]
fn concurrent_writers_never_exceed_n_writes_per_derived_key() {
    let plugin = Plugin::new("k1");
    let t = Arc::new(KmsV2::with_writes_per_derived_key(
        "reuse-concurrent",
        plugin.clone(),
        rng(),
        10,
    ));
    t.refresh().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                (0..500)
                    .map(|_| seal(&t, b"v").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let values: Vec<Vec<u8>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut per_info: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    let mut nonces = HashSet::new();
    for v in &values {
        *per_info.entry(info(v)).or_default() += 1;
        assert!(nonces.insert(nonce(v)));
        assert_eq!(open(&t, v).unwrap(), b"v");
    }
    assert!(per_info.values().all(|&n| n <= 10), "{per_info:?}");
    assert!(per_info.len() >= 400, "{}", per_info.len());
}

#[test]
fn kms_metrics_follow_health_cache_writes_and_window() {
    let name = "metrics-kms";
    let plugin = Plugin::new("k-metrics");
    let t = provider(name, &plugin);
    t.set_write_window(Duration::from_secs(100));
    for _ in 0..3 {
        seal(&t, b"v").unwrap();
    }
    let text = coffer_metrics::encode();
    let line = |m: &str| format!("{m}{{provider=\"{name}\"}}");
    assert!(
        text.contains(&format!("{} 1\n", line("coffer_kms_healthy"))),
        "{text}"
    );
    assert!(text.contains(&format!("{} 1\n", line("coffer_kms_seeds_cached"))));
    assert!(text.contains(&format!(
        "coffer_kms_writes_total{{key_id_hash=\"{}\",provider=\"{name}\"}} 3\n",
        key_id_hash("k-metrics")
    )));
    let window = text
        .lines()
        .find(|l| l.starts_with(&line("coffer_kms_write_window_seconds")))
        .unwrap();
    let left: i64 = window.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((98..=100).contains(&left), "{window}");
    plugin.set(|a| a.healthz = "no".into());
    assert!(t.refresh().is_err());
    assert!(coffer_metrics::encode().contains(&format!("{} 0\n", line("coffer_kms_healthy"))));
    // A dropped provider's scrape hook does nothing (and does not panic).
    drop(t);
    coffer_metrics::encode();
}

/// Connects every kms v2 entry to one plugin.
struct Connector(Arc<Plugin>);

impl KmsConnector for Connector {
    fn v2(&self, _c: &KmsConfiguration) -> Result<Arc<dyn KeyService>, KeyServiceError> {
        Ok(self.0.clone())
    }
    fn v1(&self, _c: &KmsConfiguration) -> Result<Arc<dyn KeyServiceV1>, KeyServiceError> {
        Err(KeyServiceError::Unavailable(
            "no kms v1 in this test".into(),
        ))
    }
}

fn kms(name: &str) -> ProviderConfiguration {
    ProviderConfiguration::Kms(KmsConfiguration {
        api_version: KmsApiVersion::V2,
        name: name.into(),
        endpoint: "unix:///tmp/unused.sock".into(),
        cache_size: None,
        timeout: Duration::from_secs(3),
    })
}

fn gcm() -> ProviderConfiguration {
    ProviderConfiguration::AesGcm(KeysConfiguration {
        keys: vec![Key {
            name: "k".into(),
            secret: SecretBytes::new(vec![1; 32]),
        }],
    })
}

fn config(rules: Vec<(&[&str], Vec<ProviderConfiguration>)>) -> EncryptionConfiguration {
    EncryptionConfiguration {
        resources: rules
            .into_iter()
            .map(|(r, providers)| ResourceConfiguration {
                resources: r.iter().map(|s| s.to_string()).collect(),
                providers,
            })
            .collect(),
    }
}

#[test]
fn kms_only_keyspace_seals_uncovered_keys_with_the_all_rule() {
    let plugin = Plugin::new("k1");
    let cfg = config(vec![
        (&["secrets"], vec![kms("ks-secrets")]),
        (
            &["*.*"],
            vec![kms("ks-all"), ProviderConfiguration::Identity],
        ),
    ]);
    assert!(kms_seals_everything(&cfg));
    // Building asks the plugin nothing (a Status fails here): writes wait for a first
    // refresh, and no Encrypt was made.
    plugin.set(|a| a.status_fails = true);
    let ks = Keyspace::new_kms_only(&cfg, "/registry", &Connector(plugin.clone()), rng()).unwrap();
    assert!(!ks.has_default());
    assert!(ks.is_covered(b"/registry/configmaps/ns/a"));
    assert!(!ks.is_covered(b"compact_rev_key"));
    assert_eq!(plugin.encrypts.load(Ordering::SeqCst), 0);
    assert!(ks.kms_health().iter().all(|h| !h.healthy));
    assert!(ks.seal(b"compact_rev_key", b"v").is_err());
    assert_eq!(ks.refresh_kms().len(), 2, "both providers ask, both fail");
    plugin.set(|a| a.status_fails = false);
    assert!(ks.refresh_kms().is_empty());
    assert_eq!(
        plugin.encrypts.load(Ordering::SeqCst),
        2,
        "one seed per provider"
    );
    for key in ["compact_rev_key", "/other/x", "/registry/configmaps/ns/a"] {
        let s = ks.seal(key.as_bytes(), b"v").unwrap();
        assert!(s.starts_with(b"k8s:enc:kms:v2:ks-all:"), "{key}");
        assert_eq!(ks.open(key.as_bytes(), &s).unwrap().plaintext, b"v");
    }
    // The all rule's identity entry still reads plaintext left from before.
    assert_eq!(ks.open(b"compact_rev_key", b"7").unwrap().plaintext, b"7");
    let s = ks.seal(KEY, b"v").unwrap();
    assert!(s.starts_with(b"k8s:enc:kms:v2:ks-secrets:"));
    let health = ks.kms_health();
    let names: Vec<&str> = health.iter().map(|h| h.provider.as_str()).collect();
    assert_eq!(names, ["ks-secrets", "ks-all"]);
    for h in &health {
        assert!(h.healthy, "{h:?}");
        assert_eq!(h.error, None);
        assert_eq!(h.key_id_hash, Some(key_id_hash("k1")));
        assert!(h.write_window_left.unwrap() > Duration::from_secs(170));
    }
    ks.set_kms_write_window(Duration::from_millis(50));
    plugin.set(|a| a.healthz = "bad".into());
    let failures = ks.refresh_kms();
    assert_eq!(failures.len(), 2);
    std::thread::sleep(Duration::from_millis(80));
    let h = &ks.kms_health()[1];
    assert!(!h.healthy);
    assert!(h.error.as_ref().unwrap().contains("bad"), "{h:?}");
    assert_eq!(h.write_window_left, Some(Duration::ZERO));
    let e = ks.seal(b"compact_rev_key", b"v").unwrap_err();
    assert!(
        matches!(e.cause, TransformError::KmsV2WritesStopped { .. }),
        "{e}"
    );
}

#[test]
fn kms_only_refuses_other_configurations_saying_why() {
    let plugin = Plugin::new("k1");
    let cases = [
        (
            config(vec![(&["secrets"], vec![kms("a")])]),
            "has no `*.*` rule",
        ),
        (
            config(vec![(&["*.*"], vec![gcm(), kms("b")])]),
            "writes `*.*` with aesgcm, not a kms v2 provider",
        ),
        (
            config(vec![(&["*.*"], vec![ProviderConfiguration::Identity])]),
            "writes `*.*` with identity",
        ),
    ];
    for (cfg, why) in cases {
        assert!(!kms_seals_everything(&cfg));
        let e = Keyspace::new_kms_only(&cfg, "/registry", &Connector(plugin.clone()), rng())
            .unwrap_err();
        assert!(matches!(e, BuildError::NotKmsOnly { .. }), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn the_default_key_is_not_in_kms_health_and_has_no_write_window() {
    let rng = rng();
    let svc =
        coffer_seal::LocalKeyService::new(&SecretBytes::new(vec![3; 32]), rng.clone()).unwrap();
    let plugin = Plugin::new("k1");
    let cfg = config(vec![(&["secrets"], vec![kms("beside-default")])]);
    let ks = Keyspace::new(
        &cfg,
        "/registry",
        Some(Arc::new(svc)),
        &Connector(plugin),
        rng,
    )
    .unwrap();
    let h = ks.kms_health();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].provider, "beside-default");
    // Writes under it once its plugin answered, then stopped by the window alone.
    assert!(ks.refresh_kms().is_empty());
    ks.seal(KEY, b"v").unwrap();
    ks.set_kms_write_window(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(30));
    assert!(ks.seal(KEY, b"v").is_err());
    let s = ks.seal(b"compact_rev_key", b"v").unwrap();
    assert!(s.starts_with(b"k8s:enc:kms:v2:coffer-default:"));
}
