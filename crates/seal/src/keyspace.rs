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
//!   identity transformer that refuses `k8s:enc:` data.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::config::model::EncryptionConfiguration;
use crate::config::{normalize_prefix, resource_for_key, GroupResource};
use crate::default_key::PROVIDER_NAME;
use crate::error::{show_key, BuildError, OpenError, SealError, TransformError};
use crate::key_service::{KeyService, KmsConnector};
use crate::providers::identity::Identity;
use crate::providers::kmsv2::KmsV2;
use crate::providers::{
    build_provider, NoMatch, PrefixTransformer, PrefixTransformers, Transformer,
};
use crate::rng::RandomSource;

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
}

impl Rule {
    fn chain(name: String, entries: Vec<PrefixTransformer>) -> Self {
        let chain = PrefixTransformers::new(entries.clone(), NoMatch::Prefix);
        Self {
            name,
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
        }
    }
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
        // Build each provider once.
        let mut built: Vec<Vec<PrefixTransformer>> = Vec::with_capacity(config.resources.len());
        let mut providers = Vec::new();
        for entry in &config.resources {
            if entry.providers.is_empty() {
                return Err(BuildError::NoProviders {
                    rule: entry.resources.join(","),
                });
            }
            let list = entry
                .providers
                .iter()
                .map(|p| build_provider(p, kms, &rng))
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
        let has_default = default.is_some();
        let uncovered = match default {
            Some(service) => {
                let t = KmsV2::new(PROVIDER_NAME, service, rng.clone());
                t.refresh().map_err(|e| BuildError::Kms {
                    name: PROVIDER_NAME.to_owned(),
                    cause: crate::key_service::KeyServiceError::Failed(e.to_string()),
                })?;
                let entry = t.into_prefix_transformer();
                providers.push(entry.clone());
                Arc::new(Rule::chain(
                    "default (no rule covers this key: Coffer's default key)".to_owned(),
                    vec![entry],
                ))
            }
            None => Arc::new(Rule::bare_identity()),
        };
        Ok(Self {
            etcd_prefix: normalize_prefix(etcd_prefix),
            exact,
            groups,
            all,
            uncovered,
            has_default,
            providers,
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
        let Some(gr) = resource_for_key(&self.etcd_prefix, etcd_key) else {
            return &self.uncovered;
        };
        if let Some(r) = self.exact.get(&gr) {
            return r;
        }
        if let Some(r) = self.groups.get(&gr.group) {
            return r;
        }
        self.all.as_deref().unwrap_or(&self.uncovered)
    }

    /// Whether a resource rule of the configuration covers `etcd_key`.
    pub fn is_covered(&self, etcd_key: &[u8]) -> bool {
        !std::ptr::eq(self.rule(etcd_key), &*self.uncovered)
    }

    /// The name of the rule covering `etcd_key` and the provider that writes it.
    pub fn describe(&self, etcd_key: &[u8]) -> (String, String) {
        let r = self.rule(etcd_key);
        (r.name.clone(), r.write_label.clone())
    }

    /// The value to store for `plaintext` under `etcd_key`.
    pub fn seal(&self, etcd_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let rule = self.rule(etcd_key);
        rule.transformer
            .to_storage(plaintext, etcd_key)
            .map_err(|cause| SealError {
                key: show_key(etcd_key),
                provider: rule.write_label.clone(),
                cause,
            })
    }

    /// Opens the value stored under `etcd_key`.
    pub fn open(&self, etcd_key: &[u8], stored: &[u8]) -> Result<Opened, OpenError> {
        let rule = self.rule(etcd_key);
        match rule.transformer.from_storage(stored, etcd_key) {
            Ok(r) => Ok(Opened {
                plaintext: r.plaintext,
                stale: r.stale,
                provider: r.source,
            }),
            Err(cause) => Err(OpenError {
                key: show_key(etcd_key),
                cause,
            }),
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

    /// Whether a default provider seals uncovered keys.
    pub fn has_default(&self) -> bool {
        self.has_default
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

    #[test]
    fn keyspace_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Keyspace>();
    }
}
