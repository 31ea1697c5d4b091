//! kube-apiserver's validation of an EncryptionConfiguration (`validation_encryption.go`),
//! rule for rule, with the same paths and detail texts (reference §1.2 rules 1–29), plus one
//! Coffer rule: a `unix` KMS endpoint must name a socket path (`unix:///path`), since
//! `unix://kms.sock` validates upstream but dials nothing.
//!
//! Every error is collected; nothing stops at the first. Secrets render as `"REDACTED"`.

use super::endpoint::parse_url;
use super::error::FieldError;
use super::parse::{RawConfig, RawKey, RawKms, RawProvider};
use super::resources::GroupResource;
use super::text::go_quote;
use super::{duration, gobase64};

pub(crate) const BASE64_ERR: &str = "secrets must be base64 encoded";
const AES_SIZES: &[usize] = &[16, 24, 32];
const SECRETBOX_SIZES: &[usize] = &[32];

/// Rule 1: the whole configuration is missing (a document that is only `null`/comments).
pub(crate) fn nil_config() -> FieldError {
    FieldError::required("resources", "EncryptionConfiguration can't be nil")
}

/// Validation as kube-apiserver runs it; `reload` is `--encryption-provider-config-automatic-reload`
/// (it makes KMS v1 names subject to the uniqueness rule too).
pub(crate) fn validate_with_reload(c: &RawConfig, reload: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if c.resources.is_empty() {
        errs.push(FieldError::required(
            "resources",
            "at least one resources is required",
        ));
        return errs;
    }
    let mut kms_names: Vec<String> = Vec::new();
    for (i, conf) in c.resources.iter().enumerate() {
        let r = format!("resources[{i}].resources");
        let p = format!("resources[{i}].providers");
        if conf.resources.is_empty() {
            errs.push(FieldError::required(
                r.clone(),
                format!("at least one {r} is required"),
            ));
        }
        errs.extend(resource_overlap(&conf.resources, &r));
        errs.extend(resource_names(&conf.resources, &r));
        if conf.providers.is_empty() {
            errs.push(FieldError::required(
                p.clone(),
                format!("at least one {p} is required"),
            ));
        }
        for (j, provider) in conf.providers.iter().enumerate() {
            let path = format!("{p}[{j}]");
            errs.extend(single_provider(provider, &path));
            if let Some(kms) = &provider.kms {
                errs.extend(kms_config(kms, &format!("{path}.kms"), &kms_names, reload));
                kms_names.push(kms.name.clone());
            } else if let Some(k) = &provider.aesgcm {
                errs.extend(keys(&k.keys, &format!("{path}.aesgcm.keys"), AES_SIZES));
            } else if let Some(k) = &provider.aescbc {
                errs.extend(keys(&k.keys, &format!("{path}.aescbc.keys"), AES_SIZES));
            } else if let Some(k) = &provider.secretbox {
                errs.extend(keys(
                    &k.keys,
                    &format!("{path}.secretbox.keys"),
                    SECRETBOX_SIZES,
                ));
            }
        }
    }
    errs
}

fn render_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(","))
}

/// Rules 4 and 5, with upstream's exact pairwise loop (including its quirk that a second
/// identical wildcard pair also counts as an overlap).
fn resource_overlap(resources: &[String], path: &str) -> Vec<FieldError> {
    if resources.len() < 2 {
        return Vec::new();
    }
    let grs: Vec<GroupResource> = resources.iter().map(|s| GroupResource::parse(s)).collect();
    let (mut overlap, mut duplicate) = (false, false);
    for (i, r1) in grs.iter().enumerate() {
        for (j, r2) in grs.iter().enumerate() {
            if i == j {
                continue;
            }
            if r1 == r2 && !duplicate {
                duplicate = true;
                continue;
            }
            if overlap {
                continue;
            }
            if r1.is_any_group_any_resource() {
                overlap = true;
                continue;
            }
            if r1.group != r2.group {
                continue;
            }
            if r1.resource == "*" || r2.resource == "*" {
                overlap = true;
            }
        }
    }
    let mut errs = Vec::new();
    if duplicate {
        errs.push(FieldError::invalid(
            path,
            render_list(resources),
            "the same resource cannot be specified multiple times",
        ));
    }
    if overlap {
        errs.push(FieldError::invalid(
            path,
            render_list(resources),
            "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
        ));
    }
    errs
}

fn has_capital(s: &str) -> bool {
    s.chars().any(|c| {
        let mut lower = c.to_lowercase();
        !(lower.len() == 1 && lower.next() == Some(c))
    })
}

/// Rules 6–11, first failing rule per item.
fn resource_names(resources: &[String], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (n, res) in resources.iter().enumerate() {
        let item = format!("{path}[{n}]");
        let gr = GroupResource::parse(res);
        let detail = if has_capital(res) {
            "resource name should not contain capital letters"
        } else if res == "*" {
            "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"
        } else if matches!(
            res.as_str(),
            "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
        ) {
            "resources which do not have REST API/s cannot be encrypted"
        } else if gr.group == "events.k8s.io" {
            "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file"
        } else if gr.group == "extensions" {
            "'extensions' group has been removed and cannot be used for encryption"
        } else if gr.group == "*" && gr.resource != "*" {
            "encrypting the same resource across groups is not supported"
        } else {
            continue;
        };
        errs.push(FieldError::invalid(item, go_quote(res), detail));
    }
    errs
}

/// Rules 13 and 14.
fn single_provider(p: &RawProvider, path: &str) -> Option<FieldError> {
    let members = p.members();
    let value = format!("{{{}}}", members.join(", "));
    match members.len() {
        0 => Some(FieldError::invalid(
            path,
            value,
            "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity",
        )),
        1 => None,
        _ => Some(FieldError::invalid(
            path,
            value,
            "more than one provider specified in a single element, should split into different list elements",
        )),
    }
}

/// Rules 15–19.
fn keys(keys: &[RawKey], path: &str, sizes: &[usize]) -> Vec<FieldError> {
    if keys.is_empty() {
        return vec![FieldError::required(path, "at least one keys is required")];
    }
    let mut errs = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let kp = format!("{path}[{k}]");
        if key.name.is_empty() {
            errs.push(FieldError::required(
                format!("{kp}.name"),
                "name is a mandatory field for a key",
            ));
        }
        if key.secret.is_empty() {
            errs.push(FieldError::required(
                format!("{kp}.secret"),
                "secret is a mandatory field for a key",
            ));
            continue;
        }
        match gobase64::decode_std(&key.secret) {
            Err(_) => errs.push(FieldError::invalid(
                format!("{kp}.secret"),
                "\"REDACTED\"",
                BASE64_ERR,
            )),
            Ok(secret) if !sizes.contains(&secret.len()) => {
                let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
                errs.push(FieldError::invalid(
                    format!("{kp}.secret"),
                    "\"REDACTED\"",
                    format!(
                        "secret is not of the expected length, got {}, expected one of [{}]",
                        secret.len(),
                        sizes.join(" ")
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    errs
}

/// Rules 20–29, in upstream's order: name, timeout, endpoint, cachesize, apiVersion.
fn kms_config(c: &RawKms, path: &str, seen: &[String], reload: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name_path = format!("{path}.name");
    if c.name.is_empty() {
        errs.push(FieldError::required(
            name_path.clone(),
            "name is a mandatory field for a provider",
        ));
    }
    if c.api_version != "v1" && c.name.contains(':') {
        errs.push(FieldError::invalid(
            name_path.clone(),
            go_quote(&c.name),
            format!("invalid KMS provider name {}, must not contain ':'", c.name),
        ));
    }
    if (reload || c.api_version != "v1") && seen.contains(&c.name) {
        errs.push(FieldError::invalid(
            name_path,
            go_quote(&c.name),
            format!(
                "duplicate KMS provider name {}, names must be unique",
                c.name
            ),
        ));
    }
    if c.timeout <= 0 {
        errs.push(FieldError::invalid(
            format!("{path}.timeout"),
            go_quote(&duration::go_duration_string(c.timeout)),
            "timeout should be a positive value",
        ));
    }
    errs.extend(endpoint(&c.endpoint, &format!("{path}.endpoint")));
    let cache_path = format!("{path}.cachesize");
    if c.api_version != "v1" {
        if let Some(size) = c.cachesize {
            errs.push(FieldError::invalid(
                cache_path,
                size.to_string(),
                "cachesize is not supported in v2",
            ));
        }
    } else if c.cachesize == Some(0) {
        errs.push(FieldError::invalid(
            cache_path,
            "0",
            "cachesize should be a positive value, or negative to disable",
        ));
    }
    if c.api_version != "v1" && c.api_version != "v2" {
        errs.push(FieldError::invalid(
            format!("{path}.apiVersion"),
            go_quote(&c.api_version),
            "unsupported apiVersion apiVersion for KMS provider, only v1 and v2 are supported",
        ));
    }
    errs
}

/// Rules 24–26, then Coffer's socket-path rule.
fn endpoint(endpoint: &str, path: &str) -> Option<FieldError> {
    if endpoint.is_empty() {
        return Some(FieldError::invalid(
            path,
            "\"\"",
            "endpoint is a mandatory field for a kms",
        ));
    }
    let value = go_quote(endpoint);
    let parsed = match parse_url(endpoint) {
        Ok(p) => p,
        Err(e) => {
            return Some(FieldError::invalid(
                path,
                value,
                format!("invalid endpoint for kms provider, error: {e}"),
            ))
        }
    };
    if parsed.scheme != "unix" {
        return Some(FieldError::invalid(
            path,
            value,
            format!(
                "unsupported scheme {} for KMS provider, only unix is supported",
                go_quote(&parsed.scheme)
            ),
        ));
    }
    // Coffer: kube-apiserver accepts these and then dials the path alone, which is empty or
    // not the socket the operator meant.
    let detail = if !parsed.host.is_empty() {
        let meant = format!("unix:///{}{}", parsed.host, parsed.path);
        Some(format!(
            "the endpoint has a host part {} that kube-apiserver ignores (it would dial {}); a unix endpoint needs three slashes, e.g. {}",
            go_quote(&parsed.host),
            go_quote(parsed.socket_address()),
            go_quote(&meant)
        ))
    } else if parsed.socket_address().is_empty() {
        Some(
            "the endpoint names no socket path; use \"unix:///<absolute path>\" or \"unix:///@<abstract name>\""
                .to_owned(),
        )
    } else {
        None
    };
    detail.map(|d| FieldError::invalid(path, value, d))
}
