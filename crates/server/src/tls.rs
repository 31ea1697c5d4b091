//! TLS for `https://` and `unixs://` listeners: the rustls server configuration built from
//! etcd's flags (certificate, key, client CA bundle and CRLs, cipher suites, versions), and a
//! reloader that re-reads the files when they change. New handshakes use the newest good
//! configuration; established connections keep theirs; a broken new file keeps the old
//! configuration and is logged (file and reason, never its bytes).
//!
//! The crypto provider is rustls's `ring`: measured against aws-lc-rs (docs/tls.md) it does
//! as many X25519 handshakes and as much bulk AES-GCM per second, and it builds in seconds
//! with no C toolchain beyond cc; aws-lc-rs would add the post-quantum X25519MLKEM768 group.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, RootCertStore, ServerConfig as RustlsConfig, SupportedCipherSuite};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{ConfigError, TlsConfig, TlsVersion, DEFAULT_TLS_RELOAD_INTERVAL};

/// IANA / Go names of the suites Coffer offers, and rustls's suite for each. Go also spells
/// the ChaCha20 suites without `_SHA256`.
const SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// The crypto provider with `--cipher-suites` applied. As in Go, the TLS 1.3 suites are
/// always offered unless some are named.
fn provider(config: &TlsConfig) -> Result<CryptoProvider, ConfigError> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; see
    // the module docs for why ring is still the choice.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // X25519 first: ring's list starts with P-384, several times slower per handshake.
    provider.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
        rustls::crypto::ring::kx_group::SECP384R1,
    ];
    if config.cipher_suites.is_empty() {
        return Ok(provider);
    }
    let mut wanted = Vec::new();
    for name in &config.cipher_suites {
        let Some((_, suite)) = SUITES.iter().find(|(n, _)| n == name) else {
            let known: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
            return Err(ConfigError::TlsFlags(format!(
                "--cipher-suites: {name:?} is unknown or not supported; supported: {}",
                known.join(", ")
            )));
        };
        wanted.push(*suite);
    }
    let names_tls13 = wanted.iter().any(|w| {
        provider
            .cipher_suites
            .iter()
            .any(|s| s.suite() == *w && is_tls13(s))
    });
    provider
        .cipher_suites
        .retain(|s| wanted.contains(&s.suite()) || (!names_tls13 && is_tls13(s)));
    Ok(provider)
}

fn is_tls13(suite: &SupportedCipherSuite) -> bool {
    matches!(suite, SupportedCipherSuite::Tls13(_))
}

/// The protocol versions between `--tls-min-version` and `--tls-max-version`.
fn versions(
    config: &TlsConfig,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
    let min = config.min_version.unwrap_or(TlsVersion::Tls12);
    let max = config.max_version.unwrap_or(TlsVersion::Tls13);
    if min > max {
        return Err(ConfigError::TlsFlags(
            "--tls-min-version is above --tls-max-version".to_owned(),
        ));
    }
    if min == TlsVersion::Tls13 && !config.cipher_suites.is_empty() {
        return Err(ConfigError::TlsFlags(
            "--cipher-suites cannot be set when --tls-min-version is TLS1.3: TLS 1.3 suites \
             are not configurable"
                .to_owned(),
        ));
    }
    let mut out = Vec::new();
    if min <= TlsVersion::Tls12 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

/// The bytes of every file the configuration reads, for change detection.
#[derive(Debug, Clone)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, ConfigError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()))
        };
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            return Err(ConfigError::TlsFlags(
                "TLS needs --cert-file and --key-file".to_owned(),
            ));
        };
        Ok(Files {
            cert: read("--cert-file", cert)?,
            key: read("--key-file", key)?,
            ca: match &config.trusted_ca_file {
                Some(p) => Some(read("--trusted-ca-file", p)?),
                None => None,
            },
            crl: match &config.client_crl_file {
                Some(p) => Some(read("--client-crl-file", p)?),
                None => None,
            },
        })
    }

    /// A hash of all contents: the reloader rebuilds only when it changes.
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            Some(&self.cert),
            Some(&self.key),
            self.ca.as_ref(),
            self.crl.as_ref(),
        ] {
            match part {
                Some(bytes) => {
                    h.update([1]);
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
                None => h.update([0]),
            }
        }
        h.finalize().into()
    }
}

fn file_error(flag: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::TlsFile {
        flag,
        path: path.display().to_string(),
        reason,
    }
}

fn path_of(p: &Option<PathBuf>) -> &Path {
    p.as_deref().unwrap_or(Path::new(""))
}

/// Builds the rustls configuration from the flags and the files' bytes.
fn build(config: &TlsConfig, files: &Files) -> Result<RustlsConfig, ConfigError> {
    let provider = Arc::new(provider(config)?);
    let versions = versions(config)?;
    let cert_path = path_of(&config.cert_file);
    let key_path = path_of(&config.key_file);
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("--cert-file", cert_path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "--cert-file",
            cert_path,
            "no CERTIFICATE block".to_owned(),
        ));
    }
    // The error of a failed key parse names the problem only, never the bytes.
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        file_error(
            "--key-file",
            key_path,
            format!("no usable private key: {e}"),
        )
    })?;
    let verifier = match &files.ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let ca_path = path_of(&config.trusted_ca_file);
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| {
                    file_error("--trusted-ca-file", ca_path, format!("bad PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    file_error(
                        "--trusted-ca-file",
                        ca_path,
                        format!("bad CA certificate: {e}"),
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(file_error(
                    "--trusted-ca-file",
                    ca_path,
                    "no CERTIFICATE block".to_owned(),
                ));
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &files.crl {
                let crl_path = path_of(&config.client_crl_file);
                let crls = CertificateRevocationListDer::pem_slice_iter(crl)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        file_error("--client-crl-file", crl_path, format!("bad PEM: {e}"))
                    })?;
                if crls.is_empty() {
                    return Err(file_error(
                        "--client-crl-file",
                        crl_path,
                        "no X509 CRL block".to_owned(),
                    ));
                }
                // A certificate whose issuer has no CRL in the file is accepted, as etcd does.
                builder = builder.with_crls(crls).allow_unknown_revocation_status();
            }
            builder.build().map_err(|e| {
                file_error(
                    "--trusted-ca-file",
                    ca_path,
                    format!("cannot verify clients with it: {e}"),
                )
            })?
        }
    };
    let mut server = RustlsConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| ConfigError::TlsFlags(format!("TLS versions and cipher suites: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_error(
                "--key-file",
                key_path,
                format!("does not go with --cert-file {}: {e}", cert_path.display()),
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

/// The current TLS configuration, replaced when the files change.
#[derive(Clone)]
pub struct TlsReloader {
    current: watch::Receiver<Arc<RustlsConfig>>,
}

impl std::fmt::Debug for TlsReloader {
    /// Names no certificate or key: only that TLS is configured.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsReloader")
    }
}

impl TlsReloader {
    /// Reads the files and builds the first configuration; an error here stops the start.
    /// Then checks the files every reload interval for as long as a clone of the
    /// reloader lives.
    pub fn start(config: &TlsConfig) -> Result<TlsReloader, ConfigError> {
        let files = Files::read(config)?;
        let first = build(config, &files)?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let interval = config
            .reload_interval
            .unwrap_or(DEFAULT_TLS_RELOAD_INTERVAL);
        tokio::spawn(reload_loop(config.clone(), files.digest(), tx, interval));
        Ok(TlsReloader { current: rx })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<RustlsConfig> {
        self.current.borrow().clone()
    }
}

async fn reload_loop(
    config: TlsConfig,
    mut seen: [u8; 32],
    tx: watch::Sender<Arc<RustlsConfig>>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last failure logged: a file that stays missing is logged once, not every tick.
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        let result = Files::read(&config).and_then(|files| {
            let digest = files.digest();
            if digest == seen {
                return Ok(None);
            }
            seen = digest;
            build(&config, &files).map(Some)
        });
        match result {
            Ok(None) => last_error.clear(),
            Ok(Some(new)) => {
                last_error.clear();
                info!("TLS files changed: new handshakes use the new certificate, key, CA and CRL");
                tx.send_replace(Arc::new(new));
            }
            // The old configuration stays.
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    warn!(error = %text, "TLS files changed but cannot be used; keeping the previous ones");
                    last_error = text;
                }
            }
        }
    }
}

/// The Common Name of the leaf of a verified client certificate chain.
pub fn common_name(chain: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = chain?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suite_names() {
        let mut config = TlsConfig {
            cipher_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()],
            ..TlsConfig::default()
        };
        let p = provider(&config).unwrap();
        let names: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert!(names.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        assert!(names.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(!names.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384));
        config.cipher_suites = vec!["TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()];
        let err = provider(&config).unwrap_err().to_string();
        assert!(
            err.contains("\"TLS_RSA_WITH_AES_128_CBC_SHA\" is unknown"),
            "{err}"
        );
        assert!(err.contains("--cipher-suites"), "{err}");
    }

    #[test]
    fn common_name_of_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = coffer_conformance::pki::Ca::new(dir.path(), "main").unwrap();
        let alice = ca.client(dir.path(), "alice", "alice", 2, false).unwrap();
        let chain = [CertificateDer::from(alice.der)];
        assert_eq!(common_name(Some(&chain)).as_deref(), Some("alice"));
        assert_eq!(common_name(None), None);
        assert_eq!(
            common_name(Some(&[CertificateDer::from(vec![1, 2, 3])])),
            None
        );
    }

    #[test]
    fn version_range() {
        let config = TlsConfig {
            min_version: Some(TlsVersion::Tls13),
            max_version: Some(TlsVersion::Tls12),
            ..TlsConfig::default()
        };
        assert!(versions(&config).is_err());
        let config = TlsConfig {
            max_version: Some(TlsVersion::Tls12),
            ..TlsConfig::default()
        };
        assert_eq!(versions(&config).unwrap().len(), 1);
        assert!(TlsVersion::parse("TLS1.1").is_err());
        assert_eq!(TlsVersion::parse("TLS1.3").unwrap(), TlsVersion::Tls13);
    }
}
