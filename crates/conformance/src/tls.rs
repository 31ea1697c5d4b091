//! The client side of mutual TLS for the harness: a process-wide table of `https://` endpoints
//! and the client certificate each one expects ([`register`]), so every helper that takes an
//! endpoint string ([`crate::client::connect`], [`crate::client::probe`], `WatchStream::open`,
//! `etcdctl::run`) speaks mutual TLS to a server started with TLS and plaintext to the others;
//! and the connector that gives tonic channels a rustls client ([`TlsConnector`], [`connect`],
//! [`connect_lazy`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pki::MutualTls;
use crate::HarnessError;

/// What a connection to a registered endpoint needs.
#[derive(Clone)]
struct Entry {
    files: MutualTls,
    config: Arc<ClientConfig>,
}

static ENDPOINTS: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

fn table() -> MutexGuard<'static, BTreeMap<String, Entry>> {
    ENDPOINTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Tls {
        message: format!("{what}: {e}"),
    }
}

/// A rustls client trusting `files.ca_file` and presenting the client certificate, offering
/// ALPN `h2`.
pub fn client_config(files: &MutualTls) -> Result<Arc<ClientConfig>, HarnessError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca_file)
        .map_err(|e| tls_error("read the CA file", e))?
    {
        roots
            .add(cert.map_err(|e| tls_error("parse the CA file", e))?)
            .map_err(|e| tls_error("trust the CA", e))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.client_cert)
        .map_err(|e| tls_error("read the client certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("parse the client certificate", e))?;
    let key = PrivateKeyDer::from_pem_file(&files.client_key)
        .map_err(|e| tls_error("read the client key", e))?;
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; the
    // server uses ring too (docs/tls.md).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("choose TLS versions", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error("use the client certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// From now on, connections to `endpoint` (`https://127.0.0.1:PORT`) use mutual TLS with
/// `files`.
pub fn register(endpoint: &str, files: &MutualTls) -> Result<(), HarnessError> {
    let config = client_config(files)?;
    table().insert(
        endpoint.to_string(),
        Entry {
            files: files.clone(),
            config,
        },
    );
    Ok(())
}

/// The TLS files registered for `endpoint`, if any.
pub fn files_for(endpoint: &str) -> Option<MutualTls> {
    table().get(endpoint).map(|e| e.files.clone())
}

/// The connector for `endpoint`, if it was registered.
pub fn connector_for(endpoint: &str) -> Option<TlsConnector> {
    table().get(endpoint).map(|e| TlsConnector {
        config: Arc::clone(&e.config),
    })
}

/// The URI to build a tonic `Endpoint` from for `endpoint`: a registered `https://` endpoint
/// becomes `http://` because TLS happens in [`TlsConnector`] (tonic built with a TLS feature,
/// as the workspace builds it, refuses an `https://` URI that has no tonic TLS config).
pub fn dial_uri(endpoint: &str) -> String {
    match endpoint.strip_prefix("https://") {
        Some(rest) if table().contains_key(endpoint) => format!("http://{rest}"),
        _ => endpoint.to_string(),
    }
}

/// Connects `ep` (made from [`dial_uri`] of `endpoint`): over mutual TLS when `endpoint` is
/// registered, else plaintext.
pub async fn connect(endpoint: &str, ep: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match connector_for(endpoint) {
        Some(c) => ep.connect_with_connector(c).await,
        None => ep.connect().await,
    }
}

/// Like [`connect`], but connecting on first use (and again after a broken connection).
pub fn connect_lazy(endpoint: &str, ep: Endpoint) -> Channel {
    match connector_for(endpoint) {
        Some(c) => ep.connect_with_connector_lazy(c),
        None => ep.connect_lazy(),
    }
}

/// A tonic connector: TCP (no Nagle) to the URI's host and port, then a rustls handshake
/// that checks the server certificate for that host.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?.to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("bad host"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
