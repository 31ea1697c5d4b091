//! The KMS v1 client, read only: Version once (must be `v1beta1`), then Decrypt.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use coffer_seal::key_service::{KeyServiceError, KeyServiceV1};
use coffer_seal::SecretBytes;

use super::call::{timed, Target};
use crate::proto::v1beta1 as pb;
use pb::key_management_service_client::KeyManagementServiceClient;

/// The only KMS v1 API version, sent on every request and required of Version.
const API_VERSION: &str = "v1beta1";

/// A KMS v1 plugin behind one provider.
#[derive(Debug)]
pub(crate) struct V1Service {
    target: Target,
    /// Whether Version has answered `v1beta1` (held while asking, so it is asked once).
    version_checked: Mutex<bool>,
}

impl V1Service {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            version_checked: Mutex::new(false),
        }
    }

    fn client(&self) -> KeyManagementServiceClient<tonic::transport::Channel> {
        KeyManagementServiceClient::new(self.target.channel())
    }

    /// Upstream's `checkAPIVersion`, within the Decrypt's deadline.
    fn check_version(&self, deadline: Instant) -> Result<(), KeyServiceError> {
        let mut checked = self
            .version_checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *checked {
            return Ok(());
        }
        let started = Instant::now();
        let client = self.client();
        let answer = self
            .target
            .call(deadline, move |left| {
                let mut c = client.clone();
                let request = timed(
                    pb::VersionRequest {
                        version: API_VERSION.to_owned(),
                    },
                    left,
                );
                async move { c.version(request).await }
            })
            .map_err(|e| match self.target.failed("Version", started, e) {
                KeyServiceError::Unavailable(m) => KeyServiceError::Unavailable(format!(
                    "failed get version from remote KMS provider: {m}"
                )),
                other => KeyServiceError::Failed(format!(
                    "failed get version from remote KMS provider: {other}"
                )),
            })?;
        if answer.version != API_VERSION {
            return Err(self.target.invalid(
                "Version",
                started,
                &format!(
                    "KMS provider api version {} is not supported, only {API_VERSION} is supported now",
                    answer.version
                ),
            ));
        }
        self.target.record("Version", "ok", started);
        *checked = true;
        Ok(())
    }
}

impl KeyServiceV1 for V1Service {
    fn decrypt(&self, ciphertext: &[u8]) -> Result<SecretBytes, KeyServiceError> {
        let deadline = self.target.deadline();
        self.check_version(deadline)?;
        let started = Instant::now();
        let client = self.client();
        let cipher = ciphertext.to_vec();
        let answer = self
            .target
            .call(deadline, move |left| {
                let mut c = client.clone();
                let request = timed(
                    pb::DecryptRequest {
                        version: API_VERSION.to_owned(),
                        cipher: cipher.clone(),
                    },
                    left,
                );
                async move { c.decrypt(request).await }
            })
            .map_err(|e| self.target.failed("Decrypt", started, e))?;
        self.target.unwrapped(started, answer.plain)
    }
}
