//! [`MockPlugin`]: a **test double** of a KMS plugin, never a key service. It behaves like
//! Kubernetes' own test plugins (`Base64Plugin` of `envelope/testing/v1beta1` and `v2`): the
//! "ciphertext" is the standard base64 of the plaintext as ASCII bytes, so anyone can read
//! what it "wraps". Tests use it to drive the client over a real unix socket (a path or an
//! abstract name), and the offline tools' tests use it to read the upstream vectors.
//!
//! It serves both `v2.KeyManagementService` and `v1beta1.KeyManagementService` with tonic on
//! its own runtime thread. KMS v2: Status answers `version` `v2`, `healthz` `ok`, key_id `1`;
//! Encrypt answers base64, key_id `1` and the annotation
//! `local-kek.kms.kubernetes.io: encrypted-local-kek`. KMS v1: Version answers `v1beta1` and
//! requests must carry `version: "v1beta1"`.
//!
//! Everything can be changed while it runs (key_id, healthz, version, annotations, a lying
//! Encrypt, a gRPC error for every call, a delay); it counts the calls of each RPC and records
//! the `:authority` of every request and the `grpc-timeout` of the last one. [`MockPlugin::stop`] (and dropping it) closes the socket
//! and every connection at once, like a killed plugin, and removes the socket file.
//!
//! The server is a plain tonic server: its HTTP/2 layer refuses an `:authority` that is a
//! socket path, so it also shows that the client sends `localhost`.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

use crate::endpoint::SocketAddress;
use crate::proto::{v1beta1, v2};

/// The annotation key of Kubernetes' mock plugin.
pub const MOCK_ANNOTATION_KEY: &str = "local-kek.kms.kubernetes.io";
/// The annotation value of Kubernetes' mock plugin.
pub const MOCK_ANNOTATION_VALUE: &[u8] = b"encrypted-local-kek";

/// How many times each RPC was called (failed calls included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// KMS v2 Status.
    pub status: u64,
    /// KMS v2 Encrypt.
    pub encrypt: u64,
    /// KMS v2 Decrypt.
    pub decrypt: u64,
    /// KMS v1 Version.
    pub version: u64,
    /// KMS v1 Encrypt.
    pub v1_encrypt: u64,
    /// KMS v1 Decrypt.
    pub v1_decrypt: u64,
}

#[derive(Debug)]
struct Settings {
    key_id: String,
    healthz: String,
    version: String,
    v1_version: String,
    annotations: BTreeMap<String, Vec<u8>>,
    encrypt_key_id: Option<String>,
    encrypt_ciphertext: Option<Vec<u8>>,
    fail: Option<Code>,
    delay: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    status: AtomicU64,
    encrypt: AtomicU64,
    decrypt: AtomicU64,
    version: AtomicU64,
    v1_encrypt: AtomicU64,
    v1_decrypt: AtomicU64,
}

#[derive(Debug)]
struct State {
    settings: Mutex<Settings>,
    counters: Counters,
    authorities: Mutex<Vec<String>>,
    grpc_timeout: Mutex<Option<String>>,
}

impl State {
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call, waits the delay, then fails it if asked to.
    async fn enter(&self, counter: &AtomicU64) -> Result<(), Status> {
        counter.fetch_add(1, Ordering::SeqCst);
        let (delay, fail) = {
            let s = self.settings();
            (s.delay, s.fail)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match fail {
            Some(code) => Err(Status::new(
                code,
                "mock plugin: failing every call as asked",
            )),
            None => Ok(()),
        }
    }

    fn record_grpc_timeout(&self, headers: &http::HeaderMap) {
        let value = headers
            .get("grpc-timeout")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        *self
            .grpc_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = value;
    }

    fn record_authority(&self, uri: &http::Uri) {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut seen = self
            .authorities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !seen.contains(&authority) {
            seen.push(authority);
        }
    }
}

fn unbase64(data: &[u8]) -> Result<Vec<u8>, Status> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| Status::invalid_argument("mock plugin: ciphertext is not base64"))
}

fn base64(data: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

#[derive(Debug, Clone)]
struct V2Mock(Arc<State>);

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for V2Mock {
    async fn status(
        &self,
        _request: Request<v2::StatusRequest>,
    ) -> Result<Response<v2::StatusResponse>, Status> {
        self.0.enter(&self.0.counters.status).await?;
        let s = self.0.settings();
        Ok(Response::new(v2::StatusResponse {
            version: s.version.clone(),
            healthz: s.healthz.clone(),
            key_id: s.key_id.clone(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        self.0.enter(&self.0.counters.decrypt).await?;
        let plaintext = unbase64(&request.into_inner().ciphertext)?;
        Ok(Response::new(v2::DecryptResponse { plaintext }))
    }

    async fn encrypt(
        &self,
        request: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        self.0.enter(&self.0.counters.encrypt).await?;
        let plaintext = request.into_inner().plaintext;
        let s = self.0.settings();
        Ok(Response::new(v2::EncryptResponse {
            ciphertext: s
                .encrypt_ciphertext
                .clone()
                .unwrap_or_else(|| base64(&plaintext)),
            key_id: s.encrypt_key_id.clone().unwrap_or_else(|| s.key_id.clone()),
            annotations: s.annotations.clone().into_iter().collect(),
        }))
    }
}

#[derive(Debug, Clone)]
struct V1Mock(Arc<State>);

fn check_v1(version: &str) -> Result<(), Status> {
    if version == "v1beta1" {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "mock plugin: unsupported version {version:?}, only v1beta1 is supported"
        )))
    }
}

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for V1Mock {
    async fn version(
        &self,
        request: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        self.0.enter(&self.0.counters.version).await?;
        check_v1(&request.into_inner().version)?;
        Ok(Response::new(v1beta1::VersionResponse {
            version: self.0.settings().v1_version.clone(),
            runtime_name: "coffer-mock-kms".to_owned(),
            runtime_version: "0.1.0".to_owned(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        self.0.enter(&self.0.counters.v1_decrypt).await?;
        let request = request.into_inner();
        check_v1(&request.version)?;
        Ok(Response::new(v1beta1::DecryptResponse {
            plain: unbase64(&request.cipher)?,
        }))
    }

    async fn encrypt(
        &self,
        request: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        self.0.enter(&self.0.counters.v1_encrypt).await?;
        let request = request.into_inner();
        check_v1(&request.version)?;
        Ok(Response::new(v1beta1::EncryptResponse {
            cipher: base64(&request.plain),
        }))
    }
}

/// A running mock plugin (a test double; see the module docs).
#[derive(Debug)]
pub struct MockPlugin {
    state: Arc<State>,
    address: SocketAddress,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockPlugin {
    /// Starts serving at `endpoint` (`unix:///path` or `unix:///@name`).
    pub fn start(endpoint: &str) -> io::Result<Self> {
        let address = SocketAddress::parse(endpoint)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::start_at(address)
    }

    /// Starts serving at `address`. A socket file is created with mode 0600 (a stale one is
    /// replaced, a live one refused).
    pub fn start_at(address: SocketAddress) -> io::Result<Self> {
        let state = Arc::new(State {
            settings: Mutex::new(Settings {
                key_id: "1".to_owned(),
                healthz: "ok".to_owned(),
                version: "v2".to_owned(),
                v1_version: "v1beta1".to_owned(),
                annotations: BTreeMap::from([(
                    MOCK_ANNOTATION_KEY.to_owned(),
                    MOCK_ANNOTATION_VALUE.to_vec(),
                )]),
                encrypt_key_id: None,
                encrypt_ciphertext: None,
                fail: None,
                delay: Duration::ZERO,
            }),
            counters: Counters::default(),
            authorities: Mutex::new(Vec::new()),
            grpc_timeout: Mutex::new(None),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let served = state.clone();
        let bind_at = address.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-kms-mock".to_owned())
            .spawn(move || serve(served, bind_at, stop_rx, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                state,
                address,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the mock plugin's thread exited at start"))
            }
        }
    }

    /// The endpoint to write in an EncryptionConfiguration.
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// The address it listens on.
    pub fn address(&self) -> &SocketAddress {
        &self.address
    }

    /// Sets the key_id that Status and Encrypt report.
    pub fn set_key_id(&self, key_id: &str) {
        self.state.settings().key_id = key_id.to_owned();
    }

    /// Sets Status' `healthz`.
    pub fn set_healthz(&self, healthz: &str) {
        self.state.settings().healthz = healthz.to_owned();
    }

    /// Sets Status' `version` (KMS v2).
    pub fn set_version(&self, version: &str) {
        self.state.settings().version = version.to_owned();
    }

    /// Sets Version's `version` (KMS v1).
    pub fn set_v1_version(&self, version: &str) {
        self.state.settings().v1_version = version.to_owned();
    }

    /// Sets the annotations Encrypt returns (empty: none).
    pub fn set_annotations(&self, annotations: BTreeMap<String, Vec<u8>>) {
        self.state.settings().annotations = annotations;
    }

    /// Makes Encrypt answer this key_id instead of Status' (a lying plugin), or not.
    pub fn set_encrypt_key_id(&self, key_id: Option<&str>) {
        self.state.settings().encrypt_key_id = key_id.map(str::to_owned);
    }

    /// Makes Encrypt answer these bytes instead of the base64 of the plaintext, or not.
    pub fn set_encrypt_ciphertext(&self, ciphertext: Option<Vec<u8>>) {
        self.state.settings().encrypt_ciphertext = ciphertext;
    }

    /// Makes every call fail with `code` (after counting it and waiting the delay), or not.
    pub fn fail_with(&self, code: Option<Code>) {
        self.state.settings().fail = code;
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.settings().delay = delay;
    }

    /// The calls so far.
    pub fn calls(&self) -> Calls {
        let c = &self.state.counters;
        let get = |n: &AtomicU64| n.load(Ordering::SeqCst);
        Calls {
            status: get(&c.status),
            encrypt: get(&c.encrypt),
            decrypt: get(&c.decrypt),
            version: get(&c.version),
            v1_encrypt: get(&c.v1_encrypt),
            v1_decrypt: get(&c.v1_decrypt),
        }
    }

    /// The `grpc-timeout` header of the last request (`None` when it had none), as sent.
    pub fn last_grpc_timeout(&self) -> Option<String> {
        self.state
            .grpc_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every distinct `:authority` requests carried, in order of first appearance.
    pub fn authorities(&self) -> Vec<String> {
        self.state
            .authorities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops serving: the socket and every connection close at once, the socket file is
    /// removed. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let SocketAddress::Path(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for MockPlugin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The mock's thread: binds, reports, serves until told to stop, then drops its runtime (and
/// with it every connection).
fn serve(
    state: Arc<State>,
    address: SocketAddress,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match address.bind() {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let seen = state.clone();
        let record =
            tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
                seen.record_authority(request.uri());
                seen.record_grpc_timeout(request.headers());
                request
            });
        let server = tonic::transport::Server::builder()
            .layer(record)
            .add_service(
                v2::key_management_service_server::KeyManagementServiceServer::new(V2Mock(
                    state.clone(),
                )),
            )
            .add_service(
                v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1Mock(
                    state,
                )),
            )
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "mock KMS plugin stopped serving");
                }
            }
            _ = stop => {}
        }
    });
}
