//! `identity`: stores the plaintext unchanged, with no prefix. Refuses values that start with
//! `k8s:enc:` (upstream `identity.go`); inside a provider list that refusal is skipped.

use std::sync::Arc;

use super::{Read, Transformer, ENCRYPTED_PREFIX};
use crate::error::TransformError;

/// The identity transformer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Transformer for Identity {
    fn from_storage(&self, data: &[u8], _etcd_key: &[u8]) -> Result<Read, TransformError> {
        if data.starts_with(ENCRYPTED_PREFIX) {
            return Err(TransformError::IdentityReadEncrypted);
        }
        static LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Ok(Read {
            plaintext: data.to_vec(),
            stale: false,
            source: LABEL.get_or_init(|| Arc::from("identity")).clone(),
        })
    }

    fn to_storage_into(
        &self,
        plaintext: &[u8],
        _etcd_key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        out.extend_from_slice(plaintext);
        Ok(())
    }

    fn overhead(&self) -> usize {
        0
    }
}
