//! The KMS v2 client: Status, Encrypt and Decrypt with kube-apiserver's checks on each answer.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use coffer_seal::key_service::{
    DecryptRequest, EncryptResponse, KeyService, KeyServiceError, KeyStatus,
};
use coffer_seal::providers::kmsv2::object;
use coffer_seal::SecretBytes;
use zeroize::Zeroizing;

use super::call::{timed, Target};
use crate::proto::v2 as pb;
use pb::key_management_service_client::KeyManagementServiceClient;

/// Status versions kube-apiserver accepts.
const VERSIONS: [&str; 2] = ["v2", "v2beta1"];

/// A KMS v2 plugin behind one provider.
#[derive(Debug)]
pub(crate) struct V2Service {
    target: Target,
    /// The version of the first valid Status answer; it may not change afterwards.
    version: Mutex<Option<String>>,
}

impl V2Service {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            version: Mutex::new(None),
        }
    }

    fn client(&self) -> KeyManagementServiceClient<tonic::transport::Channel> {
        KeyManagementServiceClient::new(self.target.channel())
    }

    /// Upstream's checks of a Status answer other than `healthz` (seal reports that one).
    fn check_status(&self, s: &pb::StatusResponse) -> Result<(), String> {
        if !VERSIONS.contains(&s.version.as_str()) {
            return Err(format!("expected KMSv2 API version v2, got {}", s.version));
        }
        let mut first = self.version.lock().unwrap_or_else(PoisonError::into_inner);
        match first.as_deref() {
            Some(v) if v != s.version => {
                return Err(format!(
                    "KMSv2 API version should not change after the initial status response version {v}, got {}",
                    s.version
                ))
            }
            Some(_) => {}
            None => *first = Some(s.version.clone()),
        }
        drop(first);
        object::validate_key_id(&s.key_id).map_err(|e| {
            format!(
                "got invalid KMSv2 KeyID hash {:?}: {e}",
                if s.key_id.is_empty() {
                    String::new()
                } else {
                    coffer_metrics::kms::key_id_hash(&s.key_id)
                }
            )
        })
    }
}

impl KeyService for V2Service {
    fn status(&self) -> Result<KeyStatus, KeyServiceError> {
        let started = Instant::now();
        let client = self.client();
        let answer = self
            .target
            .call(self.target.deadline(), move |left| {
                let mut c = client.clone();
                async move { c.status(timed(pb::StatusRequest {}, left)).await }
            })
            .map_err(|e| self.target.failed("Status", started, e))?;
        if let Err(why) = self.check_status(&answer) {
            return Err(self.target.invalid("Status", started, &why));
        }
        self.target.record("Status", "ok", started);
        Ok(KeyStatus {
            version: answer.version,
            healthz: answer.healthz,
            key_id: answer.key_id,
        })
    }

    fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<EncryptResponse, KeyServiceError> {
        let started = Instant::now();
        let client = self.client();
        let seed = Zeroizing::new(plaintext.to_vec());
        let uid = uid.to_owned();
        let answer = self
            .target
            .call(self.target.deadline(), move |left| {
                let mut c = client.clone();
                let request = timed(
                    pb::EncryptRequest {
                        plaintext: seed.to_vec(),
                        uid: uid.clone(),
                    },
                    left,
                );
                async move { c.encrypt(request).await }
            })
            .map_err(|e| self.target.failed("Encrypt", started, e))?;
        let annotations: BTreeMap<String, Vec<u8>> = answer.annotations.into_iter().collect();
        if let Err(e) = object::validate_parts(&answer.ciphertext, &answer.key_id, &annotations) {
            return Err(self.target.invalid("Encrypt", started, &e.to_string()));
        }
        self.target.record("Encrypt", "ok", started);
        Ok(EncryptResponse {
            ciphertext: answer.ciphertext,
            key_id: answer.key_id,
            annotations,
        })
    }

    fn decrypt(&self, uid: &str, request: &DecryptRequest) -> Result<SecretBytes, KeyServiceError> {
        let started = Instant::now();
        let client = self.client();
        let message = pb::DecryptRequest {
            ciphertext: request.ciphertext.clone(),
            uid: uid.to_owned(),
            key_id: request.key_id.clone(),
            annotations: request.annotations.clone().into_iter().collect(),
        };
        let answer = self
            .target
            .call(self.target.deadline(), move |left| {
                let mut c = client.clone();
                let request = timed(message.clone(), left);
                async move { c.decrypt(request).await }
            })
            .map_err(|e| self.target.failed("Decrypt", started, e))?;
        self.target.unwrapped(started, answer.plaintext)
    }
}
