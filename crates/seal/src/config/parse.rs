//! Strict decoding of an EncryptionConfiguration file into private raw structs, then validation
//! and conversion into the [`model`](super::model) types.
//!
//! Accepted: `apiVersion: apiserver.config.k8s.io/v1` with `kind: EncryptionConfiguration`, and
//! the legacy `apiVersion: v1` with `kind: EncryptionConfig`. Decoding follows kube-apiserver
//! 1.31+ (strict): unknown and duplicated fields are errors naming their full path; `null` means
//! "absent" as in Go; a value of the wrong type is an error naming the path and both types.
//! KMS defaults (`apiVersion` v1, `timeout` 3s, `cachesize` 1000 for v1) are applied before
//! validation, as upstream's defaulting does.

use std::path::Path;

use zeroize::Zeroizing;

use super::duration::parse_go_duration;
use super::error::{ConfigError, DecodeError};
use super::model::{
    EncryptionConfiguration, Key, KeysConfiguration, KmsApiVersion, KmsConfiguration,
    ProviderConfiguration, ResourceConfiguration,
};
use super::node::{read_document, Node};
use super::text::go_quote;
use super::{gobase64, resources, validate};

/// The canonical group/version.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// The canonical kind.
pub const KIND: &str = "EncryptionConfiguration";
/// The legacy alias group/version (core `v1`).
pub const LEGACY_API_VERSION: &str = "v1";
/// The legacy alias kind.
pub const LEGACY_KIND: &str = "EncryptionConfig";

/// Default KMS timeout (`SetDefaults_KMSConfiguration`).
pub const DEFAULT_KMS_TIMEOUT_NANOS: i64 = 3_000_000_000;
/// Default KMS v1 cache size.
pub const DEFAULT_KMS_CACHE_SIZE: i32 = 1000;

/// Reads, decodes, validates and builds a configuration file.
pub fn load(path: &Path) -> Result<EncryptionConfiguration, ConfigError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?);
    parse(&bytes, &path.display().to_string())
}

/// Decodes, validates and builds a configuration from bytes; `source` names them in errors.
pub fn parse(bytes: &[u8], source: &str) -> Result<EncryptionConfiguration, ConfigError> {
    parse_with_reload(bytes, source, false)
}

/// [`parse`] with kube-apiserver's reload semantics when `reload` is true
/// (`--encryption-provider-config-automatic-reload`): KMS v1 names must then be unique too.
pub fn parse_with_reload(
    bytes: &[u8],
    source: &str,
    reload: bool,
) -> Result<EncryptionConfiguration, ConfigError> {
    let raw = decode(bytes, source)?;
    let Some(raw) = raw else {
        return Err(ConfigError::Invalid {
            errors: vec![validate::nil_config()],
        });
    };
    let errors = validate::validate_with_reload(&raw, reload);
    if !errors.is_empty() {
        return Err(ConfigError::Invalid { errors });
    }
    let config = build(raw)?;
    let masked = resources::masking_errors(&config);
    if !masked.is_empty() {
        return Err(ConfigError::Build { errors: masked });
    }
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Raw structs: what the file says, defaults applied, not yet validated.

#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub resources: Vec<RawResource>,
}

#[derive(Debug, Default)]
pub(crate) struct RawResource {
    pub resources: Vec<String>,
    pub providers: Vec<RawProvider>,
}

#[derive(Debug, Default)]
pub(crate) struct RawProvider {
    pub aesgcm: Option<RawKeys>,
    pub aescbc: Option<RawKeys>,
    pub secretbox: Option<RawKeys>,
    pub identity: Option<()>,
    pub kms: Option<RawKms>,
}

impl RawProvider {
    /// The members present, in the order upstream's struct lists them.
    pub fn members(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.kms.is_some() {
            m.push("kms");
        }
        if self.aesgcm.is_some() {
            m.push("aesgcm");
        }
        if self.aescbc.is_some() {
            m.push("aescbc");
        }
        if self.secretbox.is_some() {
            m.push("secretbox");
        }
        if self.identity.is_some() {
            m.push("identity");
        }
        m
    }
}

#[derive(Debug, Default)]
pub(crate) struct RawKeys {
    pub keys: Vec<RawKey>,
}

#[derive(Default)]
pub(crate) struct RawKey {
    pub name: String,
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKey")
            .field("name", &self.name)
            .field("secret", &"REDACTED")
            .finish()
    }
}

#[derive(Debug, Default)]
pub(crate) struct RawKms {
    /// Defaulted to "v1" when absent or empty.
    pub api_version: String,
    pub name: String,
    pub endpoint: String,
    /// Defaulted to 1000 when absent and `api_version == "v1"`.
    pub cachesize: Option<i32>,
    /// Nanoseconds; defaulted to 3s when absent.
    pub timeout: i64,
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Decodes the document; `Ok(None)` is a document that is `null` (nothing but comments, `~`).
pub(crate) fn decode(bytes: &[u8], source: &str) -> Result<Option<RawConfig>, ConfigError> {
    if bytes.is_empty() {
        return Err(ConfigError::Empty {
            source_name: source.to_owned(),
        });
    }
    let doc = read_document(bytes).map_err(|message| ConfigError::Syntax {
        source_name: source.to_owned(),
        message,
    })?;
    let entries = match doc {
        Node::Null => return Ok(None),
        Node::Map(entries) => entries,
        other => {
            return Err(ConfigError::Syntax {
                source_name: source.to_owned(),
                message: format!(
                    "the document must be an object, found a {}",
                    other.type_name()
                ),
            })
        }
    };
    check_type(&entries, source)?;

    let mut d = Decoder::default();
    let mut config = RawConfig::default();
    d.object(
        &entries,
        "",
        &["apiVersion", "kind", "resources"],
        |d, key, path, v| {
            if key == "resources" {
                config.resources = d.list(v, path, |d, p, v| d.resource(v, p));
            }
        },
    );
    if d.errors.is_empty() {
        Ok(Some(config))
    } else {
        Err(ConfigError::Decode {
            source_name: source.to_owned(),
            errors: d.errors,
        })
    }
}

/// Checks `apiVersion` and `kind` the way the scheme lookup does.
fn check_type(entries: &[(String, Node)], source: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::UnexpectedType {
        source_name: source.to_owned(),
        message,
    };
    let field = |name: &str| -> Result<Option<String>, ConfigError> {
        match entries.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Str(s)) if s.is_empty() => Ok(None),
            Some(Node::Str(s)) => Ok(Some(s.as_str().to_owned())),
            Some(other) => Err(err(format!(
                "{name}: cannot decode a {} as string",
                other.type_name()
            ))),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let hint = format!(
        "expected apiVersion {} with kind {} (or the legacy apiVersion {} with kind {})",
        go_quote(API_VERSION),
        go_quote(KIND),
        go_quote(LEGACY_API_VERSION),
        go_quote(LEGACY_KIND)
    );
    let (api_version, kind) = match (api_version, kind) {
        (_, None) => return Err(err(format!("Object 'Kind' is missing; {hint}"))),
        (None, Some(_)) => return Err(err(format!("Object 'apiVersion' is missing; {hint}"))),
        (Some(a), Some(k)) => (a, k),
    };
    let ok = (api_version == API_VERSION && kind == KIND)
        || (api_version == LEGACY_API_VERSION && kind == LEGACY_KIND);
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "no kind {} is registered for version {}; {hint}",
            go_quote(&kind),
            go_quote(&api_version)
        )))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks the tree, collecting every decode error with its path.
#[derive(Default)]
struct Decoder {
    errors: Vec<DecodeError>,
}

impl Decoder {
    fn wrong(&mut self, path: &str, expected: &'static str, found: &Node) {
        self.errors.push(DecodeError::WrongType {
            path: path.to_owned(),
            expected,
            found: found.type_name(),
        });
    }

    /// Visits the fields of an object: unknown and duplicate names are reported, `null`
    /// values skipped (Go leaves the zero value), the rest handed to `f`.
    fn object(
        &mut self,
        entries: &[(String, Node)],
        path: &str,
        known: &[&str],
        mut f: impl FnMut(&mut Self, &str, &str, &Node),
    ) {
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in entries {
            let field_path = join(path, key);
            if !known.contains(&key.as_str()) {
                self.errors
                    .push(DecodeError::UnknownField { path: field_path });
                continue;
            }
            if seen.contains(&key.as_str()) {
                self.errors
                    .push(DecodeError::DuplicateField { path: field_path });
                continue;
            }
            seen.push(key);
            if matches!(value, Node::Null) {
                continue;
            }
            f(self, key, &field_path, value);
        }
    }

    /// An object value at `path`; `None` (after reporting) if it is not an object.
    fn as_object<'n>(&mut self, v: &'n Node, path: &str) -> Option<&'n [(String, Node)]> {
        match v {
            Node::Map(entries) => Some(entries),
            Node::Null => Some(&[]),
            other => {
                self.wrong(path, "object", other);
                None
            }
        }
    }

    fn list<T: Default>(
        &mut self,
        v: &Node,
        path: &str,
        mut item: impl FnMut(&mut Self, &str, &Node) -> T,
    ) -> Vec<T> {
        match v {
            Node::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let p = format!("{path}[{i}]");
                    if matches!(n, Node::Null) {
                        T::default()
                    } else {
                        item(self, &p, n)
                    }
                })
                .collect(),
            other => {
                self.wrong(path, "list", other);
                Vec::new()
            }
        }
    }

    fn string(&mut self, v: &Node, path: &str) -> String {
        match v {
            Node::Str(s) => s.as_str().to_owned(),
            other => {
                self.wrong(path, "string", other);
                String::new()
            }
        }
    }

    fn secret(&mut self, v: &Node, path: &str) -> Zeroizing<String> {
        match v {
            Node::Str(s) => s.clone(),
            other => {
                self.wrong(path, "string", other);
                Zeroizing::new(String::new())
            }
        }
    }

    fn resource(&mut self, v: &Node, path: &str) -> RawResource {
        let mut r = RawResource::default();
        let Some(entries) = self.as_object(v, path) else {
            return r;
        };
        self.object(
            entries,
            path,
            &["resources", "providers"],
            |d, key, p, v| {
                if key == "resources" {
                    r.resources = d.list(v, p, |d, p, v| d.string(v, p));
                } else {
                    r.providers = d.list(v, p, |d, p, v| d.provider(v, p));
                }
            },
        );
        r
    }

    fn provider(&mut self, v: &Node, path: &str) -> RawProvider {
        let mut pr = RawProvider::default();
        let Some(entries) = self.as_object(v, path) else {
            return pr;
        };
        let known = ["aesgcm", "aescbc", "secretbox", "identity", "kms"];
        self.object(entries, path, &known, |d, key, p, v| match key {
            "aesgcm" => pr.aesgcm = Some(d.keys(v, p)),
            "aescbc" => pr.aescbc = Some(d.keys(v, p)),
            "secretbox" => pr.secretbox = Some(d.keys(v, p)),
            "identity" => {
                if let Some(entries) = d.as_object(v, p) {
                    d.object(entries, p, &[], |_, _, _, _| {});
                }
                pr.identity = Some(());
            }
            _ => pr.kms = Some(d.kms(v, p)),
        });
        pr
    }

    fn keys(&mut self, v: &Node, path: &str) -> RawKeys {
        let mut k = RawKeys::default();
        let Some(entries) = self.as_object(v, path) else {
            return k;
        };
        self.object(entries, path, &["keys"], |d, _, p, v| {
            k.keys = d.list(v, p, |d, p, v| d.key(v, p));
        });
        k
    }

    fn key(&mut self, v: &Node, path: &str) -> RawKey {
        let mut k = RawKey::default();
        let Some(entries) = self.as_object(v, path) else {
            return k;
        };
        self.object(entries, path, &["name", "secret"], |d, key, p, v| {
            if key == "name" {
                k.name = d.string(v, p);
            } else {
                k.secret = d.secret(v, p);
            }
        });
        k
    }

    fn kms(&mut self, v: &Node, path: &str) -> RawKms {
        let mut k = RawKms::default();
        let mut timeout = None;
        if let Some(entries) = self.as_object(v, path) {
            let known = ["apiVersion", "name", "endpoint", "cachesize", "timeout"];
            self.object(entries, path, &known, |d, key, p, v| match key {
                "apiVersion" => k.api_version = d.string(v, p),
                "name" => k.name = d.string(v, p),
                "endpoint" => k.endpoint = d.string(v, p),
                "cachesize" => match v {
                    Node::Int(i) => match i32::try_from(*i) {
                        Ok(i) => k.cachesize = Some(i),
                        Err(_) => d.errors.push(DecodeError::WrongType {
                            path: p.to_owned(),
                            expected: "int32",
                            found: "number out of range",
                        }),
                    },
                    other => d.wrong(p, "int32", other),
                },
                _ => match v {
                    Node::Str(s) => match parse_go_duration(s) {
                        Ok(n) => timeout = Some(n),
                        Err(message) => d.errors.push(DecodeError::InvalidDuration {
                            path: p.to_owned(),
                            message,
                        }),
                    },
                    other => d.wrong(p, "duration string", other),
                },
            });
        }
        // Defaulting (SetDefaults_KMSConfiguration).
        if k.api_version.is_empty() {
            k.api_version = "v1".to_owned();
        }
        if k.cachesize.is_none() && k.api_version == "v1" {
            k.cachesize = Some(DEFAULT_KMS_CACHE_SIZE);
        }
        k.timeout = timeout.unwrap_or(DEFAULT_KMS_TIMEOUT_NANOS);
        k
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion of a validated raw config into the model.

fn build(raw: RawConfig) -> Result<EncryptionConfiguration, ConfigError> {
    let mut resources = Vec::with_capacity(raw.resources.len());
    let mut errors = Vec::new();
    for (i, entry) in raw.resources.into_iter().enumerate() {
        let mut providers = Vec::with_capacity(entry.providers.len());
        for (j, p) in entry.providers.into_iter().enumerate() {
            let path = format!("resources[{i}].providers[{j}]");
            let keys = |k: RawKeys, kind: &str, errors: &mut Vec<_>| KeysConfiguration {
                keys: k
                    .keys
                    .into_iter()
                    .enumerate()
                    .filter_map(|(n, key)| match gobase64::decode_std(&key.secret) {
                        Ok(secret) => Some(Key {
                            name: key.name,
                            secret,
                        }),
                        Err(_) => {
                            errors.push(super::error::FieldError::invalid(
                                format!("{path}.{kind}.keys[{n}].secret"),
                                "\"REDACTED\"",
                                validate::BASE64_ERR,
                            ));
                            None
                        }
                    })
                    .collect(),
            };
            let provider = if let Some(k) = p.kms {
                ProviderConfiguration::Kms(KmsConfiguration {
                    api_version: if k.api_version == "v1" {
                        KmsApiVersion::V1
                    } else {
                        KmsApiVersion::V2
                    },
                    name: k.name,
                    endpoint: k.endpoint,
                    cache_size: k.cachesize,
                    timeout: std::time::Duration::from_nanos(k.timeout.max(0).unsigned_abs()),
                })
            } else if let Some(k) = p.aesgcm {
                ProviderConfiguration::AesGcm(keys(k, "aesgcm", &mut errors))
            } else if let Some(k) = p.aescbc {
                ProviderConfiguration::AesCbc(keys(k, "aescbc", &mut errors))
            } else if let Some(k) = p.secretbox {
                ProviderConfiguration::Secretbox(keys(k, "secretbox", &mut errors))
            } else {
                ProviderConfiguration::Identity
            };
            providers.push(provider);
        }
        resources.push(ResourceConfiguration {
            resources: entry.resources,
            providers,
        });
    }
    if !errors.is_empty() {
        // Unreachable after validation; kept so a bug there cannot yield a half-built config.
        return Err(ConfigError::Invalid { errors });
    }
    Ok(EncryptionConfiguration { resources })
}
