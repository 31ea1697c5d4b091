//! What `coffer config check` prints: per resource rule, which provider writes and which
//! providers can read, the etcd keys each rule covers, and warnings about choices that are
//! valid but weak or surprising. The report names providers, key names and paths, and never
//! holds key bytes.

use serde::Serialize;

use super::model::{EncryptionConfiguration, KmsApiVersion, ProviderConfiguration};
use super::resources::{is_known_builtin, key_prefixes_for, normalize_prefix, GroupResource};

/// The result of checking a valid configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The etcd prefix used for the key columns, normalised (`/registry/`).
    pub etcd_prefix: String,
    /// One entry per `resources[i]`, in file order.
    pub rules: Vec<RuleReport>,
    /// Resources listed in more than one entry, with their concatenated provider lists.
    pub merged: Vec<MergedResource>,
    /// What happens to keys that no rule covers.
    pub uncovered: String,
    /// Warnings, in file order (valid configurations may still have them).
    pub warnings: Vec<Warning>,
}

/// One `resources[i]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    /// `i`.
    pub index: usize,
    /// The resource strings as written.
    pub resources: Vec<String>,
    /// The etcd key prefixes of the exact (non-wildcard) resources.
    pub etcd_keys: Vec<String>,
    /// The provider that writes (`providers[0]`, its first key).
    pub write: ProviderSummary,
    /// Every provider that can read, in the order tried.
    pub read: Vec<ProviderSummary>,
}

/// A resource repeated in several entries: kube-apiserver concatenates the provider lists.
#[derive(Debug, Clone, Serialize)]
pub struct MergedResource {
    /// The resource (`secrets`, `deployments.apps`).
    pub resource: String,
    /// The entries whose lists are joined, in order.
    pub entries: Vec<usize>,
    /// The writing provider (first of the first entry).
    pub write: ProviderSummary,
    /// The concatenated read order.
    pub read: Vec<ProviderSummary>,
}

/// A provider, described without its secrets.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderSummary {
    /// Path, `resources[i].providers[j]`.
    pub path: String,
    /// `aesgcm`, `aescbc`, `secretbox`, `identity` or `kms`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Key names in order (first writes); empty for identity and kms.
    pub keys: Vec<String>,
    /// KMS provider name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_name: Option<String>,
    /// KMS apiVersion (`v1`/`v2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_api_version: Option<&'static str>,
    /// KMS endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The stored-value prefix this provider writes (`k8s:enc:aesgcm:v1:key1:`), or `""`.
    pub prefix: String,
}

impl ProviderSummary {
    fn of(p: &ProviderConfiguration, path: String) -> Self {
        let (kind, keys) = match p {
            ProviderConfiguration::AesGcm(k) => ("aesgcm", Some(k)),
            ProviderConfiguration::AesCbc(k) => ("aescbc", Some(k)),
            ProviderConfiguration::Secretbox(k) => ("secretbox", Some(k)),
            ProviderConfiguration::Identity => ("identity", None),
            ProviderConfiguration::Kms(_) => ("kms", None),
        };
        let keys: Vec<String> = keys
            .map(|k| k.keys.iter().map(|k| k.name.clone()).collect())
            .unwrap_or_default();
        let (kms_name, kms_api_version, endpoint, prefix) = match p {
            ProviderConfiguration::Kms(k) => {
                let v = match k.api_version {
                    KmsApiVersion::V1 => "v1",
                    KmsApiVersion::V2 => "v2",
                };
                (
                    Some(k.name.clone()),
                    Some(v),
                    Some(k.endpoint.clone()),
                    format!("k8s:enc:kms:{v}:{}:", k.name),
                )
            }
            ProviderConfiguration::Identity => (None, None, None, String::new()),
            _ => {
                let first = keys.first().map(String::as_str).unwrap_or("");
                (None, None, None, format!("k8s:enc:{kind}:v1:{first}:"))
            }
        };
        Self {
            path,
            kind,
            keys,
            kms_name,
            kms_api_version,
            endpoint,
            prefix,
        }
    }

    /// A one-line description: `aesgcm key "key1" (also reads "key0")`, `kms v2 "vault"
    /// (unix:///run/kms.sock)`, `identity (plaintext)`.
    pub fn describe(&self) -> String {
        match self.kind {
            "identity" => "identity (plaintext)".to_owned(),
            "kms" => format!(
                "kms {} {:?} ({})",
                self.kms_api_version.unwrap_or("?"),
                self.kms_name.as_deref().unwrap_or(""),
                self.endpoint.as_deref().unwrap_or("")
            ),
            kind => {
                let names: Vec<String> = self.keys.iter().map(|k| format!("{k:?}")).collect();
                match names.split_first() {
                    Some((first, [])) => format!("{kind} key {first}"),
                    Some((first, rest)) => {
                        format!("{kind} key {first} (also reads {})", rest.join(", "))
                    }
                    None => kind.to_owned(),
                }
            }
        }
    }
}

/// A valid-but-risky choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable identifier (`identity-first`, `aescbc`, `local-keys`, `aesgcm-nonce`, `kms-v1`,
    /// `kms-v1-name-reuse`, `identity-not-last`, `identity-read-fallback`, `unknown-resource`,
    /// `duplicate-key-name`, `cis-1.2.28`, `secrets-not-encrypted`).
    pub code: &'static str,
    /// Where (`resources[0].providers[1]`), or `resources` for whole-file warnings.
    pub path: String,
    /// What and what to do.
    pub message: String,
}

/// Builds the report for a valid configuration.
pub fn check(config: &EncryptionConfiguration, etcd_prefix: &str) -> Report {
    let prefix = normalize_prefix(etcd_prefix);
    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    let warn = |warnings: &mut Vec<Warning>, code, path: String, message: String| {
        warnings.push(Warning {
            code,
            path,
            message,
        })
    };
    let mut kms_names: Vec<String> = Vec::new();

    for (i, entry) in config.resources.iter().enumerate() {
        let read: Vec<ProviderSummary> = entry
            .providers
            .iter()
            .enumerate()
            .map(|(j, p)| ProviderSummary::of(p, format!("resources[{i}].providers[{j}]")))
            .collect();
        let Some(write) = read.first().cloned() else {
            continue; // cannot happen for a validated configuration
        };
        let mut etcd_keys = Vec::new();
        for r in &entry.resources {
            etcd_keys.extend(key_prefixes_for(&prefix, &GroupResource::parse(r)));
        }
        let names = entry.resources.join(", ");

        // Resource names.
        for (n, r) in entry.resources.iter().enumerate() {
            let gr = GroupResource::parse(r);
            if gr.group.is_empty() && !gr.is_wildcard() && !is_known_builtin(&gr) {
                let plural = GroupResource::new("", format!("{}s", gr.resource));
                let hint = if is_known_builtin(&plural) {
                    format!(" (did you mean {:?}?)", plural.resource)
                } else {
                    String::new()
                };
                warn(
                    &mut warnings,
                    "unknown-resource",
                    format!("resources[{i}].resources[{n}]"),
                    format!(
                        "{r:?} is not a built-in resource of the core group: kube-apiserver accepts it, but it matches no stored resource{hint}; resource names are lower-case plurals, with the group for non-core resources (\"deployments.apps\")"
                    ),
                );
            }
        }

        let last = entry.providers.len().saturating_sub(1);
        for (j, p) in entry.providers.iter().enumerate() {
            let path = format!("resources[{i}].providers[{j}]");
            match p {
                ProviderConfiguration::Identity if j == 0 => warn(
                    &mut warnings,
                    "identity-first",
                    path,
                    format!("identity is the first provider: {names} are written in plaintext"),
                ),
                ProviderConfiguration::Identity if j < last => warn(
                    &mut warnings,
                    "identity-not-last",
                    path,
                    format!("identity sits in the middle of the provider list for {names}: plaintext values are accepted on read; list it last while migrating, then remove it"),
                ),
                ProviderConfiguration::Identity => warn(
                    &mut warnings,
                    "identity-read-fallback",
                    path,
                    format!("identity is kept as a read fallback for {names}: plaintext values (including ones written straight into etcd) are accepted on read; once every object has been rewritten (storage version migration, or `kubectl get <resource> -A -o json | kubectl replace -f -`), remove it"),
                ),
                ProviderConfiguration::Kms(k) => {
                    if k.api_version == KmsApiVersion::V1 {
                        warn(
                            &mut warnings,
                            "kms-v1",
                            path.clone(),
                            format!("kms v1 provider {:?} is deprecated: kube-apiserver 1.29+ refuses it unless started with --feature-gates=KMSv1=true, and Coffer only reads it; move to apiVersion: v2", k.name),
                        );
                        if kms_names.contains(&k.name) {
                            warn(
                                &mut warnings,
                                "kms-v1-name-reuse",
                                format!("{path}.kms.name"),
                                format!("kms v1 provider {:?} reuses the name of an earlier kms provider: accepted only while --encryption-provider-config-automatic-reload is off", k.name),
                            );
                        }
                    }
                    kms_names.push(k.name.clone());
                }
                ProviderConfiguration::AesGcm(keys)
                | ProviderConfiguration::AesCbc(keys)
                | ProviderConfiguration::Secretbox(keys) => {
                    let kind = ProviderSummary::of(p, String::new()).kind;
                    warn(
                        &mut warnings,
                        "local-keys",
                        path.clone(),
                        format!("{kind} keys sit in this file, beside the data they protect: whoever can read the file and etcd (or a backup) reads everything; move to a kms v2 provider so the key-encryption key stays in a KMS/HSM"),
                    );
                    if matches!(p, ProviderConfiguration::AesCbc(_)) {
                        warn(
                            &mut warnings,
                            "aescbc",
                            path.clone(),
                            "aescbc is unauthenticated: stored values are malleable and a padding oracle is possible; prefer kms v2 (or secretbox)".to_owned(),
                        );
                    }
                    if matches!(p, ProviderConfiguration::AesGcm(_)) {
                        warn(
                            &mut warnings,
                            "aesgcm-nonce",
                            path.clone(),
                            "aesgcm draws a random 96-bit nonce per write: rotate each key well before 2^32 writes (the Kubernetes docs say every 200,000); Coffer's default key uses the KMS v2 construction (a key derived per write), which has no such limit".to_owned(),
                        );
                    }
                    let mut seen: Vec<&str> = Vec::new();
                    for (k, key) in keys.keys.iter().enumerate() {
                        if seen.contains(&key.name.as_str()) {
                            warn(
                                &mut warnings,
                                "duplicate-key-name",
                                format!("{path}.{kind}.keys[{k}].name"),
                                format!("two keys named {:?} in one provider: both share the stored prefix, only the first writes and reads try them in order; give each key its own name", key.name),
                            );
                        } else {
                            seen.push(&key.name);
                        }
                    }
                }
            }
        }
        rules.push(RuleReport {
            index: i,
            resources: entry.resources.clone(),
            etcd_keys,
            write,
            read,
        });
    }

    // kube-bench CIS 1.2.28 looks at the first provider of the last entry.
    if let Some(last) = config.resources.last() {
        if let Some(p @ (ProviderConfiguration::AesGcm(_) | ProviderConfiguration::Identity)) =
            last.providers.first()
        {
            let kind = ProviderSummary::of(p, String::new()).kind;
            warn(
                &mut warnings,
                "cis-1.2.28",
                format!("resources[{}].providers[0]", config.resources.len() - 1),
                format!("kube-bench's CIS check 1.2.28 reads the first provider of the last entry and accepts only aescbc, kms or secretbox: this file ({kind}) would fail it"),
            );
        }
    }

    // Secrets not encrypted at all.
    let secrets = GroupResource::new("", "secrets");
    match config.rule_for(&secrets) {
        None => warn(
            &mut warnings,
            "secrets-not-encrypted",
            "resources".to_owned(),
            "no rule covers secrets: kube-apiserver stores them in plaintext (coffer serve seals them with its default key); add a rule for \"secrets\" or \"*.\"".to_owned(),
        ),
        Some(m) => {
            let first = m
                .entries
                .first()
                .and_then(|&i| config.resources[i].providers.first());
            if matches!(first, Some(ProviderConfiguration::Identity)) {
                warn(
                    &mut warnings,
                    "secrets-not-encrypted",
                    "resources".to_owned(),
                    format!("secrets are written in plaintext: the rule {:?} that covers them starts with identity", m.rule.to_string()),
                );
            }
        }
    }

    // Resources repeated across entries.
    let mut merged = Vec::new();
    let mut done: Vec<GroupResource> = Vec::new();
    for entry in &config.resources {
        for r in &entry.resources {
            let gr = GroupResource::parse(r);
            if gr.is_wildcard() || done.contains(&gr) {
                continue;
            }
            done.push(gr.clone());
            let Some(m) = config.rule_for(&gr) else {
                continue;
            };
            if m.entries.len() < 2 {
                continue;
            }
            let read: Vec<ProviderSummary> = m
                .entries
                .iter()
                .flat_map(|&i| {
                    config.resources[i]
                        .providers
                        .iter()
                        .enumerate()
                        .map(move |(j, p)| {
                            ProviderSummary::of(p, format!("resources[{i}].providers[{j}]"))
                        })
                })
                .collect();
            if let Some(write) = read.first().cloned() {
                merged.push(MergedResource {
                    resource: gr.to_string(),
                    entries: m.entries.clone(),
                    write,
                    read,
                });
            }
        }
    }

    let any_rule = config.rule_for(&GroupResource::new("some.example.com", "anything"));
    let uncovered = match any_rule {
        Some(_) => format!("Every resource under {prefix} is covered (by *.*). Keys outside {prefix} (e.g. compact_rev_key) are not resources: kube-apiserver never encrypts them; coffer serve seals them with its default key."),
        None => format!("Resources no rule covers are stored in plaintext by kube-apiserver; coffer serve seals them (and keys outside {prefix}, e.g. compact_rev_key) with its default key, as if the file ended with a *.* rule using it."),
    };

    Report {
        etcd_prefix: prefix,
        rules,
        merged,
        uncovered,
        warnings,
    }
}
