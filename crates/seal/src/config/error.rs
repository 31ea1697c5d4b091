//! Errors of loading, decoding, validating and building an EncryptionConfiguration.
//!
//! The texts follow kube-apiserver's (`error while loading file: ...`, `strict decoding error:
//! unknown field "..."`, `<path>: Invalid value: "REDACTED": <detail>`, `error while building
//! transformers: ...`) so operators recognise them. No variant ever carries key bytes: secrets
//! render as `"REDACTED"`, and decode errors name types and paths, never values.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Why an EncryptionConfiguration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("error while loading file: error reading encryption provider configuration file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has zero length.
    #[error(
        "error while loading file: encryption provider configuration file {source_name:?} is empty"
    )]
    Empty {
        /// The file (or the name the caller gave the bytes).
        source_name: String,
    },
    /// The bytes are not YAML or JSON (or use a construct the decoder refuses).
    #[error("error decoding encryption provider configuration file {source_name:?}: {message}")]
    Syntax {
        /// The file.
        source_name: String,
        /// The parser's message (position, never content).
        message: String,
    },
    /// `apiVersion`/`kind` missing or not one of the two accepted combinations.
    #[error("error decoding encryption provider configuration file {source_name:?}: {message}")]
    UnexpectedType {
        /// The file.
        source_name: String,
        /// What is wrong, e.g. `no kind "EncryptionConfigurations" is registered for version ...`.
        message: String,
    },
    /// Unknown or duplicated fields, or values of the wrong type, each with its path.
    #[error("error decoding encryption provider configuration file {source_name:?}: {}", render_decode(.errors))]
    Decode {
        /// The file.
        source_name: String,
        /// Every problem found, in file order.
        errors: Vec<DecodeError>,
    },
    /// Validation failed (rules of kube-apiserver's validator plus Coffer's endpoint check).
    #[error("error while parsing file: {}", render_aggregate(.errors))]
    Invalid {
        /// Every failed rule, in upstream's order.
        errors: Vec<FieldError>,
    },
    /// The configuration is valid field by field but cannot be turned into transformers
    /// (a resource masked by an earlier wildcard rule).
    #[error("error while building transformers: {}", render_aggregate(.errors))]
    Build {
        /// Every masked resource, in file order.
        errors: Vec<BuildError>,
    },
}

impl ConfigError {
    /// Each individual problem as one line (for a CLI listing them one per line).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Decode { errors, .. } => errors
                .iter()
                .map(|e| {
                    if e.is_strict() {
                        format!("strict decoding error: {e}")
                    } else {
                        e.to_string()
                    }
                })
                .collect(),
            ConfigError::Invalid { errors } => errors.iter().map(|e| e.to_string()).collect(),
            ConfigError::Build { errors } => errors.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// How a field failed validation (`field.ErrorType` upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// `Required value`.
    Required,
    /// `Invalid value`, with the value already rendered (strings quoted, secrets `"REDACTED"`).
    Invalid {
        /// The rendered value.
        value: String,
    },
}

/// One failed validation rule: where, how, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path from `resources`, e.g. `resources[0].providers[1].aesgcm.keys[0].secret`.
    pub path: String,
    /// Required or Invalid (with the rendered value).
    #[serde(flatten)]
    pub kind: FieldErrorKind,
    /// The upstream detail text, e.g. `secrets must be base64 encoded`.
    pub detail: String,
}

impl FieldError {
    pub(crate) fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(
        path: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
            },
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FieldErrorKind::Required => write!(f, "{}: Required value: {}", self.path, self.detail),
            FieldErrorKind::Invalid { value } => {
                write!(
                    f,
                    "{}: Invalid value: {}: {}",
                    self.path, value, self.detail
                )
            }
        }
    }
}

/// A decoding problem at a path (strict decoding or a wrong type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecodeError {
    /// A field the schema does not have (a typo such as `cacheSize`).
    UnknownField {
        /// Full path including the unknown name.
        path: String,
    },
    /// The same field twice in one object.
    DuplicateField {
        /// Full path of the repeated field.
        path: String,
    },
    /// A value of the wrong type.
    WrongType {
        /// Path of the value.
        path: String,
        /// What the schema wants (`string`, `int32`, `object`, `list`, `duration string`).
        expected: &'static str,
        /// What the file has (`number`, `bool`, `list`, ...). Never the value itself.
        found: &'static str,
    },
    /// A `timeout` that is not a Go duration string.
    InvalidDuration {
        /// Path of the value.
        path: String,
        /// Go's message, e.g. `time: unknown unit "x" in duration "3x"`.
        message: String,
    },
}

impl DecodeError {
    fn is_strict(&self) -> bool {
        matches!(
            self,
            DecodeError::UnknownField { .. } | DecodeError::DuplicateField { .. }
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownField { path } => write!(f, "unknown field \"{path}\""),
            DecodeError::DuplicateField { path } => write!(f, "duplicate field \"{path}\""),
            DecodeError::WrongType {
                path,
                expected,
                found,
            } => write!(f, "{path}: cannot decode a {found} as {expected}"),
            DecodeError::InvalidDuration { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

fn render_decode(errors: &[DecodeError]) -> String {
    let typed: Vec<String> = errors
        .iter()
        .filter(|e| !e.is_strict())
        .map(|e| e.to_string())
        .collect();
    let strict: Vec<String> = errors
        .iter()
        .filter(|e| e.is_strict())
        .map(|e| e.to_string())
        .collect();
    let mut parts = Vec::new();
    if !typed.is_empty() {
        parts.push(typed.join("; "));
    }
    if !strict.is_empty() {
        parts.push(format!("strict decoding error: {}", strict.join(", ")));
    }
    parts.join("; ")
}

/// A transformer-construction error: a resource masked by an earlier wildcard rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildError {
    /// Path of the masked item, e.g. `resources[1].resources[0]`.
    pub path: String,
    /// The masked resource as upstream prints it (`secrets`, `deployments.apps`, `*.apps`).
    pub resource: String,
    /// The earlier rule (`*.`, `*.apps`, `*.*`).
    pub rule: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource {:?} is masked by earlier rule {:?}",
            self.resource, self.rule
        )
    }
}

/// Upstream's aggregate rendering: one error alone, several as `[e1, e2]`.
fn render_aggregate<E: fmt::Display>(errors: &[E]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let parts: Vec<String> = many.iter().map(|e| e.to_string()).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}
