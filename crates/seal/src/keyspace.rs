//! [`Keyspace`]: the one entry point the server and the CLI use to seal and open values.
//!
//! A keyspace is an `EncryptionConfiguration` made into transformer chains once (one chain per
//! distinct resource rule, providers built once and shared when a resource appears in several
//! entries), the etcd prefix, and an optional default provider. Per call it maps the etcd key
//! to its rule (exact `{group, resource}`, then `{group, *}`, then `*.*`) and runs the chain:
//! [`Keyspace::seal`] writes with the first provider's first key, [`Keyspace::open`] reads with
//! every provider whose prefix matches (kube-apiserver's rules, `providers` module docs).
//!
//! Keys no rule covers (including keys outside the etcd prefix, such as `compact_rev_key`):
//! - with a default provider (`coffer serve`): sealed and opened with the default provider
//!   alone, as if the config ended with a `*.*` rule naming it (decisions.md);
//! - without one (`coffer encrypt`/`decrypt`, as kube-apiserver): plaintext, through a bare
//!   identity transformer that refuses `k8s:enc:` data;
//! - with [`Keyspace::new_kms_only`] (a config whose `*.*` rule writes with KMS v2): the `*.*`
//!   rule's chain, so every value is sealed under the KMS and no local key exists.
//!
//! Metric handles (`coffer_seal_operations_total`) are resolved once per rule and per provider
//! key; a read or a write only increments a counter, and opening a value under a cached KMS v2
//! seed takes no exclusive lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::{EncryptionConfiguration, KmsApiVersion, ProviderConfiguration};
use crate::config::{normalize_prefix, resource_for_key, GroupResource};
use crate::default_key::PROVIDER_NAME;
use crate::error::{show_key, BuildError, OpenError, SealError, TransformError};
use crate::key_service::{KeyService, KmsConnector};
use crate::providers::identity::Identity;
use crate::providers::kmsv2::KmsV2;
use crate::providers::{
    build_collecting, NoMatch, PrefixTransformer, PrefixTransformers, Transformer,
};
use crate::rng::RandomSource;
use crate::seal_metrics::RuleCounters;
use crate::write_limit::{WriteCount, WriteCounters, WriteLimits};

/// A successfully opened value.
#[derive(Debug)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Whether it should be rewritten with the current write provider.
    pub stale: bool,
    /// Which provider and key opened it, e.g. `aesgcm key "key1"` or
    /// `kms v2 "coffer-default" key_id "…" (HKDF_SHA256_XNONCE_AES_GCM_SEED)`.
    pub provider: Arc<str>,
}

/// The state of one KMS v2 provider of the configuration ([`Keyspace::kms_health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsHealth {
    /// The provider's `name` in the configuration.
    pub provider: String,
    /// The last refresh succeeded and the write window is open.
    pub healthy: bool,
    /// The last refresh's error, if it failed.
    pub error: Option<String>,
    /// The write state's key_id as `sha256:…` (none before the first healthy Status).
    pub key_id_hash: Option<String>,
    /// Time left before writes stop without a healthy Status (zero once closed; none before
    /// the first healthy Status).
    pub write_window_left: Option<Duration>,
}

/// One provider's part in a [`Diagnosis`].
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The provider (public names only).
    pub provider: String,
    /// What happened.
    pub outcome: AttemptOutcome,
}

/// What a provider did with the value.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// Its prefix does not start the value, so it was not tried.
    PrefixMismatch,
    /// It opened the value.
    Opened {
        /// The read was stale (before the provider-index rule is applied).
        stale: bool,
        /// Which key opened it.
        source: String,
    },
    /// It failed; upstream's error text.
    Failed(String),
}

/// Everything `coffer decrypt` reports about one value.
#[derive(Debug)]
pub struct Diagnosis {
    /// The rule that covers the key (`secrets`, `*.*`, or a note that none does).
    pub rule: String,
    /// Each provider of the rule, in order.
    pub attempts: Vec<Attempt>,
    /// The result, exactly as [`Keyspace::open`] returns it.
    pub result: Result<Opened, OpenError>,
}

struct Rule {
    name: String,
    transformer: Arc<dyn Transformer>,
    entries: Vec<PrefixTransformer>,
    write_label: String,
    counters: RuleCounters,
}

impl Rule {
    fn chain(name: String, entries: Vec<PrefixTransformer>) -> Self {
        let chain = PrefixTransformers::new(entries.clone(), NoMatch::Prefix);
        Self {
            name,
            counters: RuleCounters::new(chain.write_label()),
            write_label: chain.write_label().to_owned(),
            transformer: Arc::new(chain),
            entries,
        }
    }

    fn bare_identity() -> Self {
        Self {
            name: "none (no rule covers this key: plaintext, as kube-apiserver)".to_owned(),
            transformer: Arc::new(Identity),
            entries: vec![PrefixTransformer::new(
                Vec::new(),
                Arc::new(Identity),
                "identity",
            )],
            write_label: "identity".to_owned(),
            counters: RuleCounters::new("identity"),
        }
    }
}

/// What seals keys no rule covers.
enum Uncovered {
    /// Coffer's default key (provider `coffer-default`).
    Default(Arc<dyn KeyService>),
    /// Plaintext, as kube-apiserver.
    Plain,
    /// The `*.*` rule's chain.
    AllRule,
}

/// Seals and opens values for a whole etcd keyspace. Cheap to share (`Send + Sync`).
pub struct Keyspace {
    etcd_prefix: String,
    exact: HashMap<GroupResource, Arc<Rule>>,
    groups: HashMap<String, Arc<Rule>>,
    all: Option<Arc<Rule>>,
    uncovered: Arc<Rule>,
    has_default: bool,
    providers: Vec<PrefixTransformer>,
    counters: WriteCounters,
    /// The configuration's KMS v2 providers (not the default key).
    kms_v2: Vec<Arc<KmsV2>>,
}

impl Keyspace {
    /// Builds the chains of `config` for keys under `etcd_prefix` (e.g. `/registry`).
    /// `default`, if given, is the KMS v2 key service of Coffer's default key (provider
    /// `coffer-default`); `kms` connects each `kms` entry to its plugin.
    pub fn new(
        config: &EncryptionConfiguration,
        etcd_prefix: &str,
        default: Option<Arc<dyn KeyService>>,
        kms: &dyn KmsConnector,
        rng: Arc<dyn RandomSource>,
    ) -> Result<Self, BuildError> {
        let uncovered = match default {
            Some(service) => Uncovered::Default(service),
            None => Uncovered::Plain,
        };
        Self::build(config, etcd_prefix, uncovered, kms, rng)
    }

    /// A keyspace for a configuration whose `*.*` rule writes with a KMS v2 provider: keys no
    /// rule covers (outside the prefix, such as `compact_rev_key`) are sealed and opened with
    /// the `*.*` rule's chain, so no local key is needed. Any other configuration is refused
    /// with [`BuildError::NotKmsOnly`] saying why.
    pub fn new_kms_only(
        config: &EncryptionConfiguration,
        etcd_prefix: &str,
        kms: &dyn KmsConnector,
        rng: Arc<dyn RandomSource>,
    ) -> Result<Keyspace, BuildError> {
        if let Err(reason) = all_rule_writer(config) {
            return Err(BuildError::NotKmsOnly { reason });
        }
        Self::build(config, etcd_prefix, Uncovered::AllRule, kms, rng)
    }

    fn build(
        config: &EncryptionConfiguration,
        etcd_prefix: &str,
        uncovered: Uncovered,
        kms: &dyn KmsConnector,
        rng: Arc<dyn RandomSource>,
    ) -> Result<Self, BuildError> {
        // Build each provider once.
        let mut built: Vec<Vec<PrefixTransformer>> = Vec::with_capacity(config.resources.len());
        let mut providers = Vec::new();
        let counters = WriteCounters::default();
        let mut kms_v2 = Vec::new();
        for entry in &config.resources {
            if entry.providers.is_empty() {
                return Err(BuildError::NoProviders {
                    rule: entry.resources.join(","),
                });
            }
            let list = entry
                .providers
                .iter()
                .map(|p| build_collecting(p, kms, &rng, &counters, &mut kms_v2))
                .collect::<Result<Vec<_>, _>>()?;
            providers.extend(list.iter().cloned());
            built.push(list);
        }
        // Resource → entry indices, in file order (repeated exact resources concatenate).
        let mut order: Vec<(GroupResource, String)> = Vec::new();
        let mut entries_of: HashMap<GroupResource, Vec<usize>> = HashMap::new();
        for (i, entry) in config.resources.iter().enumerate() {
            for r in &entry.resources {
                let gr = GroupResource::parse(r);
                let list = entries_of.entry(gr.clone()).or_default();
                if list.is_empty() {
                    order.push((gr, r.clone()));
                }
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        let mut exact = HashMap::new();
        let mut groups = HashMap::new();
        let mut all = None;
        for (gr, name) in order {
            let chain: Vec<PrefixTransformer> = entries_of[&gr]
                .iter()
                .flat_map(|&i| built[i].iter().cloned())
                .collect();
            let rule = Arc::new(Rule::chain(name, chain));
            match (gr.group.as_str(), gr.resource.as_str()) {
                ("*", "*") => all = Some(rule),
                (_, "*") => {
                    groups.insert(gr.group, rule);
                }
                _ => {
                    exact.insert(gr, rule);
                }
            }
        }
        let has_default = matches!(uncovered, Uncovered::Default(_));
        let uncovered = match uncovered {
            Uncovered::Default(service) => {
                let t = Arc::new(KmsV2::with_key_reuse(PROVIDER_NAME, service, rng.clone()));
                t.disable_write_window();
                t.refresh().map_err(|e| BuildError::Kms {
                    name: PROVIDER_NAME.to_owned(),
                    cause: crate::key_service::KeyServiceError::Failed(e.to_string()),
                })?;
                let entry = t.prefix_transformer();
                providers.push(entry.clone());
                Arc::new(Rule::chain(
                    "default (no rule covers this key: Coffer's default key)".to_owned(),
                    vec![entry],
                ))
            }
            Uncovered::Plain => Arc::new(Rule::bare_identity()),
            Uncovered::AllRule => all.clone().ok_or_else(|| BuildError::NotKmsOnly {
                reason: "has no `*.*` rule".to_owned(),
            })?,
        };
        Ok(Self {
            etcd_prefix: normalize_prefix(etcd_prefix),
            exact,
            groups,
            all,
            uncovered,
            has_default,
            providers,
            counters,
            kms_v2,
        })
    }

    /// A keyspace with no configuration: every key sealed with the default key (`coffer serve`
    /// without `--encryption-provider-config`).
    pub fn default_only(
        default: Arc<dyn KeyService>,
        rng: Arc<dyn RandomSource>,
    ) -> Result<Self, BuildError> {
        let empty = EncryptionConfiguration {
            resources: Vec::new(),
        };
        Self::new(
            &empty,
            "/registry",
            Some(default),
            &crate::key_service::NoKmsClient,
            rng,
        )
    }

    fn rule(&self, etcd_key: &[u8]) -> &Rule {
        self.covering_rule(etcd_key).unwrap_or(&self.uncovered)
    }

    /// The configuration's rule for `etcd_key` (exact resource, then group, then `*.*`).
    fn covering_rule(&self, etcd_key: &[u8]) -> Option<&Rule> {
        let gr = resource_for_key(&self.etcd_prefix, etcd_key)?;
        self.exact
            .get(&gr)
            .or_else(|| self.groups.get(&gr.group))
            .or(self.all.as_ref())
            .map(|r| &**r)
    }

    /// Whether a resource rule of the configuration covers `etcd_key`.
    pub fn is_covered(&self, etcd_key: &[u8]) -> bool {
        self.covering_rule(etcd_key).is_some()
    }

    /// The name of the rule covering `etcd_key` and the provider that writes it.
    pub fn describe(&self, etcd_key: &[u8]) -> (String, String) {
        let r = self.rule(etcd_key);
        (r.name.clone(), r.write_label.clone())
    }

    /// The value to store for `plaintext` under `etcd_key`.
    pub fn seal(&self, etcd_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let rule = self.rule(etcd_key);
        let sealed = rule.transformer.to_storage(plaintext, etcd_key);
        match sealed {
            Ok(_) => rule.counters.seal_ok.inc(),
            Err(_) => rule.counters.seal_error.inc(),
        }
        sealed.map_err(|cause| SealError {
            key: show_key(etcd_key),
            provider: rule.write_label.clone(),
            cause,
        })
    }

    /// Opens the value stored under `etcd_key`.
    pub fn open(&self, etcd_key: &[u8], stored: &[u8]) -> Result<Opened, OpenError> {
        let rule = self.rule(etcd_key);
        match rule.transformer.from_storage(stored, etcd_key) {
            Ok(r) => {
                r.counters.record(r.stale);
                Ok(Opened {
                    plaintext: r.plaintext,
                    stale: r.stale,
                    provider: r.source,
                })
            }
            Err(cause) => {
                // No provider opened it: counted under the rule's writing provider.
                rule.counters.open_error.inc();
                coffer_metrics::metrics().decrypt_failures.inc();
                Err(OpenError {
                    key: show_key(etcd_key),
                    cause,
                })
            }
        }
    }

    /// [`Keyspace::open`] plus what each provider of the rule did (for `coffer decrypt`).
    pub fn diagnose(&self, etcd_key: &[u8], stored: &[u8]) -> Diagnosis {
        let rule = self.rule(etcd_key);
        let attempts = rule
            .entries
            .iter()
            .map(|e| {
                let outcome = match stored.strip_prefix(e.prefix()) {
                    None => AttemptOutcome::PrefixMismatch,
                    Some(rest) => match e.transformer().from_storage(rest, etcd_key) {
                        Ok(r) => AttemptOutcome::Opened {
                            stale: r.stale,
                            source: r.source.to_string(),
                        },
                        Err(err) => AttemptOutcome::Failed(err.to_string()),
                    },
                };
                Attempt {
                    provider: e.label().to_owned(),
                    outcome,
                }
            })
            .collect();
        Diagnosis {
            rule: rule.name.clone(),
            attempts,
            result: self.open(etcd_key, stored),
        }
    }

    /// Asks every KMS v2 plugin for its Status and rotates write keys whose key_id changed
    /// (upstream polls every minute). Returns the failures, by provider.
    pub fn refresh_kms(&self) -> Vec<(String, TransformError)> {
        self.providers
            .iter()
            .filter_map(|p| {
                p.transformer()
                    .refresh()
                    .err()
                    .map(|e| (p.label().to_owned(), e))
            })
            .collect()
    }

    /// One entry per KMS v2 provider of the configuration (not Coffer's default key), in
    /// configuration order: healthy when its last refresh succeeded and its write window is
    /// open.
    pub fn kms_health(&self) -> Vec<KmsHealth> {
        self.kms_v2.iter().map(|k| k.health()).collect()
    }

    /// Sets the write window of every KMS v2 provider of the configuration (default 3 min;
    /// Coffer's default key, in process, has none).
    pub fn set_kms_write_window(&self, window: Duration) {
        for k in &self.kms_v2 {
            k.set_write_window(window);
        }
    }

    /// Whether a default provider seals uncovered keys.
    pub fn has_default(&self) -> bool {
        self.has_default
    }

    /// The write count of every aesgcm key of the configuration (one entry per key name and
    /// key; see [`crate::write_limit`]), sorted by counter id. The store persists these.
    pub fn write_counts(&self) -> Vec<WriteCount> {
        self.counters.counts()
    }

    /// Raises each counter named in `counts` to at least the given value (ids of keys no longer
    /// configured are ignored). Call at store start with the persisted counts, before writes.
    pub fn restore_write_counts(&self, counts: &[WriteCount]) {
        self.counters.restore(counts);
    }

    /// One line per aesgcm key at or past the warning threshold (for `coffer config check`
    /// and start-up logs); empty when every key is below it.
    pub fn write_limit_warnings(&self) -> Vec<String> {
        self.counters.warnings()
    }

    /// Replaces the write limits (tests use small ones; an operator may want a stricter limit).
    pub fn set_write_limits(&self, limits: WriteLimits) {
        self.counters.set_limits(limits);
    }

    /// The write limits in force.
    pub fn write_limits(&self) -> WriteLimits {
        self.counters.limits()
    }
}

/// Whether `config`'s `*.*` rule writes with a KMS v2 provider, so that
/// [`Keyspace::new_kms_only`] accepts it and every value (uncovered keys included) can be
/// sealed under the KMS. Rules for particular resources may still choose other providers.
pub fn kms_seals_everything(config: &EncryptionConfiguration) -> bool {
    all_rule_writer(config).is_ok()
}

/// The name of the KMS v2 provider writing the `*.*` rule, or why there is none.
fn all_rule_writer(config: &EncryptionConfiguration) -> Result<&str, String> {
    let entry = config
        .resources
        .iter()
        .find(|e| e.resources.iter().any(|r| r == "*.*"))
        .ok_or_else(|| "has no `*.*` rule".to_owned())?;
    match entry.providers.first() {
        Some(ProviderConfiguration::Kms(k)) if k.api_version == KmsApiVersion::V2 => Ok(&k.name),
        Some(ProviderConfiguration::Kms(k)) => Err(format!(
            "writes `*.*` with kms v1 provider {:?}, which cannot write",
            k.name
        )),
        Some(other) => Err(format!(
            "writes `*.*` with {}, not a kms v2 provider",
            match other {
                ProviderConfiguration::AesGcm(_) => "aesgcm",
                ProviderConfiguration::AesCbc(_) => "aescbc",
                ProviderConfiguration::Secretbox(_) => "secretbox",
                _ => "identity",
            }
        )),
        None => Err("has a `*.*` rule with no providers".to_owned()),
    }
}

impl fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rules: Vec<String> = self
            .exact
            .values()
            .chain(self.groups.values())
            .chain(self.all.iter())
            .map(|r| format!("{} -> {}", r.name, r.write_label))
            .collect();
        rules.sort();
        f.debug_struct("Keyspace")
            .field("etcd_prefix", &self.etcd_prefix)
            .field("rules", &rules)
            .field("uncovered", &self.uncovered.write_label)
            .finish()
    }
}

#[cfg(test)]
mod keyspace_tests {
    use super::*;
    use crate::config::model::{
        Key, KeysConfiguration, ProviderConfiguration, ResourceConfiguration,
    };
    use crate::key_service::{LocalKeyService, NoKmsClient};
    use crate::rng::SystemRandom;
    use crate::SecretBytes;
    use crate::{WriteCount, WriteLimits};

    fn rng() -> Arc<dyn RandomSource> {
        Arc::new(SystemRandom::new().unwrap())
    }

    fn gcm(name: &str, byte: u8) -> ProviderConfiguration {
        ProviderConfiguration::AesGcm(KeysConfiguration {
            keys: vec![Key {
                name: name.into(),
                secret: SecretBytes::new(vec![byte; 32]),
            }],
        })
    }

    fn rule(resources: &[&str], providers: Vec<ProviderConfiguration>) -> ResourceConfiguration {
        ResourceConfiguration {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            providers,
        }
    }

    fn default_service(rng: &Arc<dyn RandomSource>) -> Arc<dyn KeyService> {
        Arc::new(LocalKeyService::new(&SecretBytes::new(vec![9; 32]), rng.clone()).unwrap())
    }

    #[test]
    fn rules_select_providers_and_uncovered_keys_use_the_default() {
        let rng = rng();
        let config = EncryptionConfiguration {
            resources: vec![
                rule(&["secrets"], vec![gcm("s", 1)]),
                rule(&["events"], vec![ProviderConfiguration::Identity]),
                rule(&["*.apps"], vec![gcm("apps", 2)]),
                rule(&["secrets"], vec![gcm("s2", 3)]),
            ],
        };
        let ks = Keyspace::new(
            &config,
            "/registry",
            Some(default_service(&rng)),
            &NoKmsClient,
            rng,
        )
        .unwrap();
        let sealed = |k: &str| ks.seal(k.as_bytes(), b"v").unwrap();
        assert!(sealed("/registry/secrets/ns/a").starts_with(b"k8s:enc:aesgcm:v1:s:"));
        assert_eq!(sealed("/registry/events/ns/a"), b"v");
        assert!(sealed("/registry/deployments/ns/a").starts_with(b"k8s:enc:aesgcm:v1:apps:"));
        for uncovered in ["/registry/configmaps/ns/a", "compact_rev_key", "/other/x"] {
            let s = sealed(uncovered);
            assert!(
                s.starts_with(b"k8s:enc:kms:v2:coffer-default:"),
                "{uncovered}"
            );
            let o = ks.open(uncovered.as_bytes(), &s).unwrap();
            assert_eq!(o.plaintext, b"v");
            assert!(!o.stale);
            assert!(o.provider.contains("coffer-default"));
            assert!(!ks.is_covered(uncovered.as_bytes()));
        }
        // The repeated `secrets` entry concatenates: s2 reads, stale (not the first provider).
        let s2 = Keyspace::new(
            &EncryptionConfiguration {
                resources: vec![rule(&["secrets"], vec![gcm("s2", 3)])],
            },
            "/registry",
            None,
            &NoKmsClient,
            Arc::new(SystemRandom::new().unwrap()),
        )
        .unwrap()
        .seal(b"/registry/secrets/ns/a", b"old")
        .unwrap();
        let o = ks.open(b"/registry/secrets/ns/a", &s2).unwrap();
        assert_eq!(o.plaintext, b"old");
        assert!(o.stale);
        assert_eq!(&*o.provider, "aesgcm key \"s2\"");
    }

    #[test]
    fn without_default_uncovered_keys_are_plaintext_and_refuse_encrypted_data() {
        let config = EncryptionConfiguration {
            resources: vec![rule(&["secrets"], vec![gcm("s", 1)])],
        };
        let ks = Keyspace::new(&config, "/registry", None, &NoKmsClient, rng()).unwrap();
        assert_eq!(
            ks.seal(b"/registry/configmaps/a/b", b"plain").unwrap(),
            b"plain"
        );
        let e = ks
            .open(
                b"/registry/configmaps/a/b",
                b"k8s:enc:aesgcm:v1:s:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            )
            .unwrap_err();
        assert_eq!(
            e.cause.to_string(),
            "identity transformer tried to read encrypted data"
        );
    }

    #[test]
    fn diagnose_lists_each_provider() {
        let config = EncryptionConfiguration {
            resources: vec![rule(
                &["secrets"],
                vec![
                    gcm("a", 1),
                    ProviderConfiguration::Identity,
                    gcm("b", 2),
                    ProviderConfiguration::Secretbox(KeysConfiguration {
                        keys: vec![Key {
                            name: "x".into(),
                            secret: SecretBytes::new(vec![4; 32]),
                        }],
                    }),
                ],
            )],
        };
        let ks = Keyspace::new(&config, "/registry", None, &NoKmsClient, rng()).unwrap();
        let other = Keyspace::new(
            &EncryptionConfiguration {
                resources: vec![rule(&["secrets"], vec![gcm("a", 7)])],
            },
            "/registry",
            None,
            &NoKmsClient,
            rng(),
        )
        .unwrap();
        let stored = other.seal(b"/registry/secrets/x/y", b"v").unwrap();
        let d = ks.diagnose(b"/registry/secrets/x/y", &stored);
        assert_eq!(d.rule, "secrets");
        assert_eq!(d.attempts.len(), 4);
        assert!(
            matches!(&d.attempts[0].outcome, AttemptOutcome::Failed(m) if m == "cipher: message authentication failed")
        );
        assert!(
            matches!(&d.attempts[1].outcome, AttemptOutcome::Failed(m) if m.contains("identity"))
        );
        assert!(
            matches!(&d.attempts[2].outcome, AttemptOutcome::Failed(m) if m == "no matching key was found for the provided AES transformer")
        );
        assert!(matches!(
            d.attempts[3].outcome,
            AttemptOutcome::PrefixMismatch
        ));
        assert_eq!(
            d.result.unwrap_err().cause.to_string(),
            "[cipher: message authentication failed, no matching key was found for the provided AES transformer]"
        );
    }

    /// A log sink for one test: the formatted events, as text.
    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
        fn capture<T>(&self, f: impl FnOnce() -> T) -> T {
            let sink = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, f)
        }
    }

    fn gcm_keyspace() -> Keyspace {
        let config = EncryptionConfiguration {
            resources: vec![
                rule(&["secrets"], vec![gcm("k1", 1), gcm("old", 2)]),
                rule(&["configmaps"], vec![gcm("other", 3)]),
            ],
        };
        Keyspace::new(&config, "/registry", None, &NoKmsClient, rng()).unwrap()
    }

    const SECRET: &[u8] = b"/registry/secrets/ns/a";

    fn count_of(ks: &Keyspace, name: &str) -> u64 {
        let prefix = format!("aesgcm/{name}/");
        let found: Vec<_> = ks
            .write_counts()
            .into_iter()
            .filter(|c| c.counter_id.starts_with(&prefix))
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0].writes
    }

    #[test]
    fn aesgcm_writes_are_counted_and_warned_at_the_threshold_then_every_step() {
        let ks = gcm_keyspace();
        ks.set_write_limits(WriteLimits {
            warn_from: 5,
            warn_every: 3,
            refuse_at: 1000,
        });
        let logs = Logs::default();
        logs.capture(|| {
            for _ in 0..4 {
                ks.seal(SECRET, b"v").unwrap();
            }
        });
        assert_eq!(count_of(&ks, "k1"), 4);
        assert_eq!(count_of(&ks, "old"), 0);
        assert!(logs.text().is_empty(), "{}", logs.text());
        assert!(ks.write_limit_warnings().is_empty());
        logs.capture(|| {
            for _ in 0..8 {
                ks.seal(SECRET, b"v").unwrap();
            }
        });
        // Writes 5, 8 and 11 warn; 6, 7, 9, 10 and 12 do not.
        let text = logs.text();
        assert_eq!(text.matches(" WARN ").count(), 3, "{text}");
        for n in [5, 8, 11] {
            assert!(text.contains(&format!("has sealed {n} values")), "{text}");
        }
        assert!(text.contains("aesgcm key \"k1\"") && text.contains("coffer rotate"));
        let warnings = ks.write_limit_warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("\"k1\" has sealed 12 values"),
            "{warnings:?}"
        );
        // Reads and other resources' keys are not counted.
        let stored = ks.seal(b"/registry/configmaps/ns/a", b"v").unwrap();
        ks.open(b"/registry/configmaps/ns/a", &stored).unwrap();
        assert_eq!(count_of(&ks, "other"), 1);
        assert_eq!(count_of(&ks, "k1"), 12);
    }

    #[test]
    fn default_limits_are_kubernetes_advice_and_2_pow_32_minus_margin() {
        let l = WriteLimits::default();
        assert_eq!(l.warn_from, 200_000);
        assert_eq!(l.warn_every, 100_000);
        assert_eq!(l.refuse_at, (1u64 << 32) - (1 << 24));
        assert_eq!(gcm_keyspace().write_limits(), l);
    }

    #[test]
    fn seals_are_refused_at_the_limit_with_the_key_name_and_rotation_steps() {
        let ks = gcm_keyspace();
        ks.set_write_limits(WriteLimits {
            warn_from: 2,
            warn_every: 1,
            refuse_at: 3,
        });
        let mut stored = Vec::new();
        for _ in 0..3 {
            stored.push(ks.seal(SECRET, b"v").unwrap());
        }
        let e = ks.seal(SECRET, b"v").unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e.cause,
                TransformError::WriteLimitReached {
                    writes: 3,
                    limit: 3,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("with aesgcm (keys \"k1\")"), "{text}");
        assert!(text.contains("aesgcm key \"k1\""), "{text}");
        assert!(
            text.contains("FIRST in the aesgcm provider's keys list"),
            "{text}"
        );
        assert!(
            text.contains("coffer rotate") && text.contains("kubectl replace"),
            "{text}"
        );
        assert!(!text.contains(&hex::encode([1u8; 32])) && !text.contains("AQEBAQEB"));
        // Refused writes are not counted; reads still work; other keys still write.
        assert_eq!(count_of(&ks, "k1"), 3);
        for s in &stored {
            assert_eq!(ks.open(SECRET, s).unwrap().plaintext, b"v");
        }
        ks.seal(b"/registry/configmaps/ns/a", b"v").unwrap();
        // After rotation (a new key first), writes go through again.
        let rotated = Keyspace::new(
            &EncryptionConfiguration {
                resources: vec![rule(&["secrets"], vec![gcm("k2", 4), gcm("k1", 1)])],
            },
            "/registry",
            None,
            &NoKmsClient,
            rng(),
        )
        .unwrap();
        rotated.set_write_limits(ks.write_limits());
        rotated.restore_write_counts(&ks.write_counts());
        assert_eq!(count_of(&rotated, "k1"), 3);
        let s = rotated.seal(SECRET, b"v").unwrap();
        assert!(s.starts_with(b"k8s:enc:aesgcm:v1:k2:"));
        assert_eq!(rotated.open(SECRET, &stored[0]).unwrap().plaintext, b"v");
    }

    #[test]
    fn restore_raises_counts_never_lowers_them_and_ignores_unknown_ids() {
        let ks = gcm_keyspace();
        for _ in 0..5 {
            ks.seal(SECRET, b"v").unwrap();
        }
        let mut persisted = ks.write_counts();
        assert_eq!(persisted.len(), 3);
        for c in &mut persisted {
            c.writes = if c.counter_id.starts_with("aesgcm/k1/") {
                2
            } else {
                7
            };
        }
        persisted.push(WriteCount {
            counter_id: "aesgcm/gone/0011223344556677".into(),
            writes: 99,
        });
        ks.restore_write_counts(&persisted);
        assert_eq!(count_of(&ks, "k1"), 5);
        assert_eq!(count_of(&ks, "old"), 7);
        assert_eq!(count_of(&ks, "other"), 7);
        assert_eq!(ks.write_counts().len(), 3);
        // Restored counts count towards the limit.
        ks.set_write_limits(WriteLimits {
            warn_from: 100,
            warn_every: 100,
            refuse_at: 8,
        });
        ks.seal(b"/registry/configmaps/ns/a", b"v").unwrap();
        assert!(ks.seal(b"/registry/configmaps/ns/a", b"v").is_err());
    }

    #[test]
    fn counter_ids_are_stable_distinct_and_reveal_nothing() {
        let a = gcm_keyspace().write_counts();
        let b = gcm_keyspace().write_counts();
        assert_eq!(a, b);
        let ids: Vec<&str> = a.iter().map(|c| c.counter_id.as_str()).collect();
        for id in &ids {
            let parts: Vec<&str> = id.split('/').collect();
            assert_eq!(parts.len(), 3, "{id}");
            assert_eq!(parts[0], "aesgcm");
            assert_eq!(parts[2].len(), 16);
            assert!(parts[2].bytes().all(|c| c.is_ascii_hexdigit()));
        }
        // Same name, other key: another id. Same key bytes, other name: its own id, one count.
        let same_name = crate::write_limit::counter_id("k1", &SecretBytes::new(vec![9; 32]));
        assert!(!ids.contains(&same_name.as_str()));
        let k1 = ids.iter().find(|i| i.starts_with("aesgcm/k1/")).unwrap();
        assert_ne!(&same_name, k1);
        for key in [1u8, 2, 3] {
            let hexkey = hex::encode([key; 32]);
            assert!(ids.iter().all(|id| !hexkey.contains(&id[id.len() - 16..])));
        }
        let config = EncryptionConfiguration {
            resources: vec![
                rule(&["secrets"], vec![gcm("k1", 1)]),
                rule(&["configmaps"], vec![gcm("alias", 1)]),
            ],
        };
        let ks = Keyspace::new(&config, "/registry", None, &NoKmsClient, rng()).unwrap();
        ks.seal(SECRET, b"v").unwrap();
        ks.seal(b"/registry/configmaps/ns/a", b"v").unwrap();
        let counts = ks.write_counts();
        assert_eq!(counts.len(), 2);
        assert!(counts.iter().all(|c| c.writes == 2), "{counts:?}");
        assert_eq!(
            counts
                .iter()
                .find(|c| c.counter_id.starts_with("aesgcm/k1/"))
                .unwrap()
                .counter_id,
            k1.to_string()
        );
    }

    #[test]
    fn keyspace_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Keyspace>();
    }
}
