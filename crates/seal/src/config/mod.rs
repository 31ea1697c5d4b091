//! EncryptionConfiguration: strict parsing, validation, resource mapping and checking.
//!
//! - [`parse`]/[`load`] decode a YAML or JSON file strictly (unknown and duplicated fields are
//!   errors with their path), validate it with every rule kube-apiserver applies (same paths and
//!   texts), run the masking check, and return the [`model`] with secrets decoded into
//!   [`SecretBytes`](crate::SecretBytes).
//! - [`GroupResource`], [`EncryptionConfiguration::providers_for`] and [`resource_for_key`] say
//!   which provider list applies to a resource or to an etcd key (exact → `*.<group>` → `*.*`).
//! - [`check`] builds the [`Report`] `coffer config check` prints, with warnings.
//!
//! ```
//! use coffer_seal::config::{parse, GroupResource, DEFAULT_ETCD_PREFIX};
//! let yaml = br#"
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: ["secrets"]
//!     providers:
//!       - aesgcm:
//!           keys: [{name: key1, secret: AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=}]
//!       - identity: {}
//! "#;
//! let config = parse(yaml, "example.yaml").unwrap();
//! let providers = config
//!     .providers_for_key(DEFAULT_ETCD_PREFIX, b"/registry/secrets/default/s1")
//!     .unwrap();
//! assert_eq!(providers.len(), 2);
//! assert!(config.providers_for(&GroupResource::parse("configmaps")).is_none());
//! ```

mod duration;
mod endpoint;
mod error;
mod gobase64;
pub mod model;
mod node;
mod parse;
mod report;
mod resources;
mod text;
mod validate;

pub use duration::{go_duration_string, parse_go_duration};
pub use endpoint::{parse_url as parse_endpoint, ParsedEndpoint};
pub use error::{BuildError, ConfigError, DecodeError, FieldError, FieldErrorKind};
pub use gobase64::{decode_std as decode_go_base64, InvalidBase64};
pub use model::{
    EncryptionConfiguration, Key, KeysConfiguration, KmsApiVersion, KmsConfiguration,
    ProviderConfiguration, ResourceConfiguration,
};
pub use parse::{
    load, parse, parse_with_reload, API_VERSION, DEFAULT_KMS_CACHE_SIZE, DEFAULT_KMS_TIMEOUT_NANOS,
    KIND, LEGACY_API_VERSION, LEGACY_KIND,
};
pub use report::{check, MergedResource, ProviderSummary, Report, RuleReport, Warning};
pub use resources::{
    is_known_builtin, key_prefixes_for, normalize_prefix, resource_for_key, GroupResource,
    RuleMatch, DEFAULT_ETCD_PREFIX,
};
