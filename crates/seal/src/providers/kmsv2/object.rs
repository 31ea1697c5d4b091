//! The KMS v2 `EncryptedObject` protobuf (kubernetes/apiserver `kmsv2/v2/api.proto`, written
//! here by hand as a prost message so seal does not depend on coffer-proto), its validation
//! (`ValidateEncryptedObject`, with upstream's messages) and the DEK cache key.

use std::collections::BTreeMap;

use crate::error::TransformError;

/// `EncryptedDEKSourceType` value `AES_GCM_KEY`.
pub const AES_GCM_KEY: i32 = 0;
/// `EncryptedDEKSourceType` value `HKDF_SHA256_XNONCE_AES_GCM_SEED`.
pub const HKDF_SHA256_XNONCE_AES_GCM_SEED: i32 = 1;

/// Max size of `encryptedDEKSource` and `keyID`.
pub const MAX_DEK_SOURCE_LEN: usize = 1024;
/// Max size of `keyID`.
pub const MAX_KEY_ID_LEN: usize = 1024;
/// Max total size of annotation keys and values.
pub const MAX_ANNOTATIONS_LEN: usize = 32 * 1024;

/// `message EncryptedObject`. Fields are public metadata or ciphertext, never key material.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptedObject {
    /// The encrypted object (`[info(32) ‖] nonce(12) ‖ ct ‖ tag(16)`).
    #[prost(bytes = "vec", tag = "1")]
    pub encrypted_data: Vec<u8>,
    /// The plugin's key_id at encryption (not authenticated).
    #[prost(string, tag = "2")]
    pub key_id: String,
    /// The wrapped DEK or seed, as the plugin returned it.
    #[prost(bytes = "vec", tag = "3")]
    pub encrypted_dek_source: Vec<u8>,
    /// The plugin's annotations (stored in clear).
    #[prost(btree_map = "string, bytes", tag = "4")]
    pub annotations: BTreeMap<String, Vec<u8>>,
    /// `EncryptedDEKSourceType` (0 is omitted on the wire, proto3).
    #[prost(int32, tag = "5")]
    pub encrypted_dek_source_type: i32,
}

/// Upstream's `ValidateEncryptedObject`, run on every decode and encode.
pub fn validate(o: &EncryptedObject) -> Result<(), TransformError> {
    let invalid = TransformError::InvalidEncryptedObject;
    match o.encrypted_dek_source_type {
        AES_GCM_KEY | HKDF_SHA256_XNONCE_AES_GCM_SEED => {}
        t => return Err(invalid(format!("unknown encryptedDEKSourceType: {t}"))),
    }
    if o.encrypted_data.is_empty() {
        return Err(invalid("encrypted data is empty".to_owned()));
    }
    validate_parts(&o.encrypted_dek_source, &o.key_id, &o.annotations)
}

/// The checks on the plugin-supplied parts (also applied to Encrypt responses).
pub fn validate_parts(
    dek_source: &[u8],
    key_id: &str,
    annotations: &BTreeMap<String, Vec<u8>>,
) -> Result<(), TransformError> {
    let invalid = TransformError::InvalidEncryptedObject;
    if dek_source.is_empty() {
        return Err(invalid(
            "failed to validate encrypted DEK source: encrypted DEK source is empty".to_owned(),
        ));
    }
    if dek_source.len() > MAX_DEK_SOURCE_LEN {
        return Err(invalid(format!(
            "failed to validate encrypted DEK source: encrypted DEK source is {} bytes, which exceeds the max size of {MAX_DEK_SOURCE_LEN}",
            dek_source.len()
        )));
    }
    if let Err(e) = validate_key_id(key_id) {
        return Err(invalid(format!("failed to validate key id: {e}")));
    }
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        if let Err(e) = fully_qualified_domain_name("annotations", k) {
            errs.push(e);
        }
        total = total.saturating_add(k.len()).saturating_add(v.len());
    }
    if total > MAX_ANNOTATIONS_LEN {
        errs.push(format!(
            "total size of annotations is {total}, which exceeds the max size of {MAX_ANNOTATIONS_LEN}"
        ));
    }
    match errs.len() {
        0 => Ok(()),
        1 => Err(invalid(format!(
            "failed to validate annotations: {}",
            errs[0]
        ))),
        _ => Err(invalid(format!(
            "failed to validate annotations: [{}]",
            errs.join(", ")
        ))),
    }
}

/// Upstream's `ValidateKeyID`.
pub fn validate_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty() {
        return Err("keyID is empty".to_owned());
    }
    if key_id.len() > MAX_KEY_ID_LEN {
        return Err(format!(
            "keyID is {} bytes, which exceeds the max size of {MAX_KEY_ID_LEN}",
            key_id.len()
        ));
    }
    Ok(())
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(l: &str) -> bool {
    let b = l.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// apimachinery's `IsFullyQualifiedDomainName`, rendered as a field error.
fn fully_qualified_domain_name(path: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{path}: Required value"));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut errs = Vec::new();
    if name.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !name.split('.').all(is_label) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    if !errs.is_empty() {
        return Err(format!(
            "{path}: Invalid value: {name:?}: {}",
            errs.join(",")
        ));
    }
    if name.split('.').count() < 2 {
        return Err(format!(
            "{path}: Invalid value: {name:?}: should be a domain with at least two segments separated by dots"
        ));
    }
    for label in name.split('.') {
        if label.len() > 63 {
            return Err(format!(
                "{path}: Invalid value: {label:?}: must be no more than 63 characters"
            ));
        }
        if !is_label(label) {
            return Err(format!(
                "{path}: Invalid value: {label:?}: {DNS1123_LABEL_MSG}"
            ));
        }
    }
    Ok(())
}

/// Upstream's DEK cache key: SHA-256 of `u32 BE type ‖ u16-len EDEK ‖ u16-len keyID ‖
/// [u32 BE count ‖ per annotation (sorted): u16-len key ‖ u16-len value]`. Lengths fit in u16
/// after validation.
pub fn cache_key(
    source_type: i32,
    dek_source: &[u8],
    key_id: &str,
    annotations: &BTreeMap<String, Vec<u8>>,
) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let put = |ctx: &mut ring::digest::Context, b: &[u8]| {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(b);
    };
    ctx.update(&source_type.to_be_bytes());
    put(&mut ctx, dek_source);
    put(&mut ctx, key_id.as_bytes());
    if !annotations.is_empty() {
        let n = u32::try_from(annotations.len()).unwrap_or(u32::MAX);
        ctx.update(&n.to_be_bytes());
        for (k, v) in annotations {
            put(&mut ctx, k.as_bytes());
            put(&mut ctx, v);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_rules() {
        for ok in [
            "a.b",
            "10.0.0.1",
            "dev.k8s.io.",
            "local-kek.kms.kubernetes.io",
        ] {
            assert!(
                fully_qualified_domain_name("annotations", ok).is_ok(),
                "{ok}"
            );
        }
        let e = fully_qualified_domain_name("annotations", "com").unwrap_err();
        assert!(e.ends_with("should be a domain with at least two segments separated by dots"));
        let e =
            fully_qualified_domain_name("annotations", "local-kek_kms.kubernetes.io").unwrap_err();
        assert_eq!(
            e,
            format!("annotations: Invalid value: \"local-kek_kms.kubernetes.io\": {DNS1123_SUBDOMAIN_MSG}")
        );
        assert!(fully_qualified_domain_name("annotations", "").is_err());
        assert!(fully_qualified_domain_name("annotations", "A.b").is_err());
        let long = format!("{}.io", "a".repeat(64));
        assert!(fully_qualified_domain_name("annotations", &long)
            .unwrap_err()
            .contains("no more than 63"));
    }

    #[test]
    fn limits_are_inclusive() {
        let none = BTreeMap::new();
        assert!(validate_parts(&[1; 1024], &"k".repeat(1024), &none).is_ok());
        assert!(validate_parts(&[1; 1025], "k", &none).is_err());
        assert!(validate_parts(&[1], &"k".repeat(1025), &none).is_err());
        assert!(validate_parts(&[], "k", &none).is_err());
        assert!(validate_parts(&[1], "", &none).is_err());
        let mut big = BTreeMap::new();
        big.insert("a.io".to_owned(), vec![0u8; 32768 - 4]);
        assert!(validate_parts(&[1], "k", &big).is_ok());
        big.insert("a.io".to_owned(), vec![0u8; 32768 - 3]);
        let e = validate_parts(&[1], "k", &big).unwrap_err().to_string();
        assert_eq!(e, "failed to validate annotations: total size of annotations is 32769, which exceeds the max size of 32768");
    }
}
