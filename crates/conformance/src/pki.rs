//! Certificates for the TLS tests, made with `rcgen`: a CA, server certificates for
//! `localhost` and `127.0.0.1`, client certificates (one expired), a second unrelated CA, and
//! CRLs. Everything is written as PEM files into a directory the caller owns. [`Ca::client_config`]
//! makes a rustls client that trusts the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A certificate authority that can sign certificates and CRLs.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    /// The CA certificate's PEM file.
    pub cert_file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM).
    pub key_file: PathBuf,
    /// The certificate in DER, to compare with what a peer presented.
    pub der: Vec<u8>,
    /// The serial number, for CRLs.
    pub serial: u64,
}

/// What a test needs to fail loudly.
pub type PkiResult<T> = Result<T, rcgen::Error>;

fn write(path: &Path, text: &str) {
    // Tests own the directory; a failed write is a broken test machine.
    if let Err(e) = std::fs::write(path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
}

impl Ca {
    /// A new self-signed CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> PkiResult<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_file = dir.join(format!("{name}-ca.pem"));
        write(&cert_file, &cert.pem());
        Ok(Ca {
            cert,
            key,
            cert_file,
        })
    }

    /// A server certificate for `localhost` and `127.0.0.1` with Common Name `cn`, written
    /// to `dir/<file>.pem` and `dir/<file>-key.pem`. It may also act as a client, as kubeadm's
    /// etcd server certificates do: etcd 3.4's own gateway dials its client port with it.
    pub fn server(&self, dir: &Path, file: &str, cn: &str, serial: u64) -> PkiResult<Issued> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(dir, file, params, serial)
    }

    /// A client certificate with Common Name `cn`; `expired` makes one valid only in 2020.
    pub fn client(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        serial: u64,
        expired: bool,
    ) -> PkiResult<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        self.issue(dir, file, params, serial)
    }

    fn issue(
        &self,
        dir: &Path,
        file: &str,
        mut params: CertificateParams,
        serial: u64,
    ) -> PkiResult<Issued> {
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let cert_file = dir.join(format!("{file}.pem"));
        let key_file = dir.join(format!("{file}-key.pem"));
        write(&cert_file, &cert.pem());
        write(&key_file, &key.serialize_pem());
        Ok(Issued {
            cert_file,
            key_file,
            der: cert.der().to_vec(),
            serial,
        })
    }

    /// The CA as the only trust anchor.
    pub fn roots(&self) -> Result<RootCertStore, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone())?;
        Ok(roots)
    }

    /// A rustls client (ring, TLS 1.2 and 1.3) trusting this CA, presenting `cert` if given,
    /// offering `alpn`.
    pub fn client_config(
        &self,
        cert: Option<&Issued>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        // ring, as the server: its deprecation only notes the missing post-quantum group.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?);
        let mut config = match cert {
            Some(c) => {
                let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(|e| {
                    rustls::Error::General(format!("{}: {e}", c.key_file.display()))
                })?;
                builder.with_client_auth_cert(vec![CertificateDer::from(c.der.clone())], key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A CRL revoking `serials`, as PEM text.
    pub fn crl(&self, number: u64, serials: &[u64]) -> PkiResult<String> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.cert, &self.key)?.pem()
    }
}

/// The files of a mutual-TLS setup: one CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate (Common Name `coffer-test-client`) from the same CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutualTls {
    /// The CA certificate: the servers' `--trusted-ca-file`, the clients' trust root.
    pub ca_file: PathBuf,
    /// The server certificate (`--cert-file`).
    pub server_cert: PathBuf,
    /// The server key (`--key-file`).
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
}

impl MutualTls {
    /// Makes a fresh CA and both certificates in `dir` (which must exist).
    pub fn generate(dir: &Path) -> PkiResult<MutualTls> {
        let ca = Ca::new(dir, "mtls")?;
        let server = ca.server(dir, "mtls-server", "coffer-test-server", 1)?;
        let client = ca.client(dir, "mtls-client", "coffer-test-client", 2, false)?;
        Ok(MutualTls {
            ca_file: ca.cert_file,
            server_cert: server.cert_file,
            server_key: server.key_file,
            client_cert: client.cert_file,
            client_key: client.key_file,
        })
    }

    /// etcd's server flags, the same for etcd and Coffer: certificate, key, CA, and client
    /// certificates required.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            self.server_cert.display().to_string(),
            "--key-file".into(),
            self.server_key.display().to_string(),
            "--trusted-ca-file".into(),
            self.ca_file.display().to_string(),
            "--client-cert-auth".into(),
        ]
    }

    /// etcdctl's flags for this client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.ca_file.display().to_string(),
            "--cert".into(),
            self.client_cert.display().to_string(),
            "--key".into(),
            self.client_key.display().to_string(),
        ]
    }
}
