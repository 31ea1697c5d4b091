//! TLS on real sockets: mutual TLS with every refusal's exact alert, HTTP/1.1 and gRPC on one
//! port chosen by ALPN, certificate and CRL reload (and a broken file that keeps the old
//! ones), unix sockets with and without TLS.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_conformance::pki::{Ca, Issued};
use coffer_proto::{kv_client::KvClient, PutRequest, RangeRequest};
use coffer_server::{ServerConfig, TlsConfig};
use coffer_store::EmbeddedStore;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const RELOAD: Duration = Duration::from_millis(100);

/// Two CAs and the certificates of the tests, as files in one directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Issued,
    server_b: Issued,
    alice: Issued,
    bob: Issued,
    expired: Issued,
    stranger: Issued,
    crl_file: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "main").unwrap();
    let other = Ca::new(d, "other").unwrap();
    let crl_file = d.join("crl.pem");
    std::fs::write(&crl_file, ca.crl(1, &[]).unwrap()).unwrap();
    Pki {
        server: ca.server(d, "server", "server-a", 10).unwrap(),
        server_b: ca.server(d, "server-b", "server-b", 11).unwrap(),
        alice: ca.client(d, "alice", "alice", 20, false).unwrap(),
        bob: ca.client(d, "bob", "bob", 21, false).unwrap(),
        expired: ca.client(d, "expired", "carol", 22, true).unwrap(),
        stranger: other.client(d, "stranger", "mallory", 30, false).unwrap(),
        ca,
        crl_file,
        dir,
    }
}

pub(crate) struct Server {
    addr: Option<SocketAddr>,
    _pki: Option<Pki>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), coffer_server::ServeError>>,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(p: &Pki, urls: &[String]) -> Server {
        Server::start_with(p, urls, |_| {}).await
    }

    async fn start_with(
        p: &Pki,
        urls: &[String],
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = super::open_store(dir.path(), 0);
        let mut config = ServerConfig::new(store.cluster_id(), store.member_id());
        config.listen_client_urls = urls.to_vec();
        config.tls = Some(TlsConfig {
            cert_file: Some(p.server.cert_file.clone()),
            key_file: Some(p.server.key_file.clone()),
            trusted_ca_file: Some(p.ca.cert_file.clone()),
            client_cert_auth: true,
            client_crl_file: Some(p.crl_file.clone()),
            reload_interval: Some(RELOAD),
            ..TlsConfig::default()
        });
        configure(&mut config);
        let listeners = coffer_server::bind(&config).await.unwrap();
        let addr = listeners.local_addrs().first().copied();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(coffer_server::serve_on(
            listeners,
            config,
            store.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            _pki: None,
            stop: Some(tx),
            task,
            store,
            _dir: dir,
        }
    }

    async fn tcp(p: &Pki) -> Server {
        Server::start(p, &["https://127.0.0.1:0".to_owned()]).await
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
        self.store.close();
    }
}

/// A mutual-TLS server on a loopback port with its own certificates, changed by `configure`.
pub(crate) async fn tls_server_with(configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let p = pki();
    let mut s = Server::start_with(&p, &["https://127.0.0.1:0".to_owned()], configure).await;
    s._pki = Some(p);
    s
}

/// A client trusting the main CA, presenting `cert` if given, offering `alpn`.
fn client(p: &Pki, cert: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    p.ca.client_config(cert, alpn).unwrap()
}

async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<IO>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    handshake(TcpStream::connect(addr).await?, config).await
}

/// The rustls error inside an I/O error.
fn tls_error(e: io::Error) -> rustls::Error {
    let text = e.to_string();
    match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
        Some(Ok(inner)) => *inner,
        _ => panic!("not a TLS error: {text}"),
    }
}

/// How the server refuses a client: the alert it sends. In TLS 1.3 the client's handshake
/// ends before the server has judged its certificate, so the alert arrives on the first read.
async fn refusal(addr: SocketAddr, config: Arc<ClientConfig>) -> rustls::Error {
    let mut stream = match connect(addr, config).await {
        Ok(s) => s,
        Err(e) => return tls_error(e),
    };
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Err(e)) => tls_error(e),
        Ok(Ok(n)) => panic!("the server answered ({n} bytes) instead of refusing"),
        Err(_) => panic!("the server neither answered nor refused"),
    }
}

/// An HTTP/1.1 connection on `io`.
async fn http1<IO>(io: IO) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET /health` on an HTTP/1.1 connection: (status, body).
async fn get_health(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
) -> (u16, String) {
    let req = http::Request::get("/health")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

const HEALTHY: &str = r#"{"health":"true","reason":""}"#;

#[tokio::test]
async fn mutual_tls_accepts_the_ca_s_clients_and_refuses_the_rest() {
    let p = pki();
    std::fs::write(&p.crl_file, p.ca.crl(2, &[p.bob.serial]).unwrap()).unwrap();
    let s = Server::tcp(&p).await;

    // A client of the CA: HTTP/1.1 chosen by ALPN, /health answered.
    let stream = connect(s.addr(), client(&p, Some(&p.alice), &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1(stream).await;
    assert_eq!(get_health(&mut sender).await, (200, HEALTHY.to_owned()));

    for (who, cert, alert) in [
        (
            "no certificate",
            None,
            AlertDescription::CertificateRequired,
        ),
        ("another CA", Some(&p.stranger), AlertDescription::UnknownCA),
        (
            "expired",
            Some(&p.expired),
            AlertDescription::CertificateExpired,
        ),
        (
            "revoked",
            Some(&p.bob),
            AlertDescription::CertificateRevoked,
        ),
    ] {
        let err = refusal(s.addr(), client(&p, cert, &[b"http/1.1"])).await;
        assert_eq!(err, rustls::Error::AlertReceived(alert), "{who}");
    }

    // A plaintext client on the TLS port: the connection closes without a byte in answer.
    let mut plain = TcpStream::connect(s.addr()).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("plaintext client got {other:?} ({} bytes)", got.len()),
    }
    assert!(got.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn grpc_over_h2_and_http1_share_the_tls_port() {
    let p = pki();
    let s = Server::tcp(&p).await;
    let addr = s.addr();
    let config = client(&p, Some(&p.alice), &[b"h2"]);
    let probe = connect(addr, config.clone()).await.unwrap();
    assert_eq!(probe.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(probe);
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move { connect(addr, config).await.map(TokioIo::new) }
        }))
        .await
        .unwrap();
    let mut kv = KvClient::new(channel);
    kv.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    })
    .await
    .unwrap();
    let got = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"v");

    let stream = connect(addr, client(&p, Some(&p.alice), &[b"http/1.1"]))
        .await
        .unwrap();
    let mut sender = http1(stream).await;
    assert_eq!(get_health(&mut sender).await, (200, HEALTHY.to_owned()));
    s.stop().await;
}

/// The DER of the certificate the server presents to a new handshake.
async fn presented(addr: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let stream = connect(addr, config).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn copy(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

#[tokio::test]
async fn certificate_and_crl_reload() {
    let p = pki();
    let s = Server::tcp(&p).await;
    let alice = client(&p, Some(&p.alice), &[b"http/1.1"]);
    assert_eq!(presented(s.addr(), alice.clone()).await, p.server.der);
    let mut old = http1(connect(s.addr(), alice.clone()).await.unwrap()).await;
    assert_eq!(get_health(&mut old).await.0, 200);
    // bob is fine before the CRL names him.
    let mut bob = http1(
        connect(s.addr(), client(&p, Some(&p.bob), &[b"http/1.1"]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(get_health(&mut bob).await.0, 200);

    // The CRL first, then the certificate: once the new certificate shows, both are in.
    std::fs::write(&p.crl_file, p.ca.crl(2, &[p.bob.serial]).unwrap()).unwrap();
    copy(&p.server_b.key_file, &p.server.key_file);
    copy(&p.server_b.cert_file, &p.server.cert_file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(s.addr(), alice.clone()).await != p.server_b.der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(RELOAD).await;
    }
    // Established connections keep working, bob's too; new handshakes see the new CRL.
    assert_eq!(get_health(&mut old).await.0, 200);
    assert_eq!(get_health(&mut bob).await.0, 200);
    let err = refusal(s.addr(), client(&p, Some(&p.bob), &[b"http/1.1"])).await;
    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)
    );

    // A broken certificate file keeps the previous configuration.
    std::fs::write(&p.server.cert_file, "not a certificate").unwrap();
    tokio::time::sleep(RELOAD * 10).await;
    assert_eq!(presented(s.addr(), alice.clone()).await, p.server_b.der);
    s.stop().await;
}

#[tokio::test]
async fn unix_sockets_plain_and_tls() {
    let p = pki();
    let plain = p.dir.path().join("plain.sock");
    let secure = p.dir.path().join("secure.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&plain).unwrap());
    assert!(plain.exists());
    let s = Server::start(
        &p,
        &[
            format!("unix://{}", plain.display()),
            format!("unixs://{}", secure.display()),
        ],
    )
    .await;
    for path in [&plain, &secure] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let mut sender = http1(UnixStream::connect(&plain).await.unwrap()).await;
    assert_eq!(get_health(&mut sender).await, (200, HEALTHY.to_owned()));

    let tls = handshake(
        UnixStream::connect(&secure).await.unwrap(),
        client(&p, Some(&p.alice), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let mut sender = http1(tls).await;
    assert_eq!(get_health(&mut sender).await, (200, HEALTHY.to_owned()));

    // A second server on a live socket is refused.
    let dir = tempfile::tempdir().unwrap();
    let store = super::open_store(dir.path(), 0);
    let mut config = ServerConfig::new(1, 1);
    config.listen_client_urls = vec![format!("unix://{}", plain.display())];
    let err = coffer_server::bind(&config).await.unwrap_err().to_string();
    assert!(err.contains("another server is listening"), "{err}");
    store.close();

    s.stop().await;
    assert!(!plain.exists() && !secure.exists(), "socket files removed");
}

#[tokio::test]
async fn versions_and_cipher_suites_are_applied() {
    let p = pki();
    let s = Server::start_with(&p, &["https://127.0.0.1:0".to_owned()], |c| {
        let tls = c.tls.as_mut().unwrap();
        tls.max_version = Some(coffer_server::TlsVersion::Tls12);
        tls.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".to_owned()];
    })
    .await;
    let stream = connect(s.addr(), client(&p, Some(&p.alice), &[b"http/1.1"]))
        .await
        .unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    s.stop().await;

    let s = Server::start_with(&p, &["https://127.0.0.1:0".to_owned()], |c| {
        c.tls.as_mut().unwrap().min_version = Some(coffer_server::TlsVersion::Tls13);
    })
    .await;
    let tls12 = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(p.ca.roots().unwrap())
        .with_no_client_auth();
    let err = tls_error(connect(s.addr(), Arc::new(tls12)).await.unwrap_err());
    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
    );
    s.stop().await;
}
