//! `identity`: stores the plaintext unchanged, with no prefix. Refuses values that start with
//! `k8s:enc:` (upstream `identity.go`); inside a provider list that refusal is skipped.

use std::sync::Arc;

use super::{Read, Source, Transformer, ENCRYPTED_PREFIX};
use crate::error::TransformError;

/// The identity transformer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Transformer for Identity {
    fn from_storage(&self, data: &[u8], _etcd_key: &[u8]) -> Result<Read, TransformError> {
        if data.starts_with(ENCRYPTED_PREFIX) {
            return Err(TransformError::IdentityReadEncrypted);
        }
        static SOURCE: std::sync::OnceLock<Source> = std::sync::OnceLock::new();
        Ok(SOURCE
            .get_or_init(|| Source::new(Arc::from("identity")))
            .read(data.to_vec(), false))
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
