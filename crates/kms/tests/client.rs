//! The KMS gRPC client against [`MockPlugin`] over real unix sockets (socket files and
//! abstract names): round trips, every check of an answer at its limit, timeouts, a plugin
//! that starts late, calls from inside tokio runtimes, metrics, and the zero-calls hot path
//! of a whole keyspace.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_kms::client::{GrpcConnector, CALLER_GRACE};
use coffer_kms::mock::{MockPlugin, MOCK_ANNOTATION_KEY, MOCK_ANNOTATION_VALUE};
use coffer_seal::config::{KmsApiVersion, KmsConfiguration};
use coffer_seal::key_service::{
    DecryptRequest, KeyService, KeyServiceError, KeyServiceV1, KmsConnector,
};
use coffer_seal::providers::kmsv2::KmsV2;
use coffer_seal::providers::Transformer;
use coffer_seal::{Keyspace, SystemRandom};

/// A socket path in a fresh directory (nothing listening yet) and a client connector.
struct Socket {
    dir: tempfile::TempDir,
    endpoint: String,
    connector: GrpcConnector,
}

impl Socket {
    fn new(file: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}", dir.path().join(file).display());
        Self {
            dir,
            endpoint,
            connector: GrpcConnector::new().unwrap(),
        }
    }

    fn config(&self, name: &str, timeout: Duration, v: KmsApiVersion) -> KmsConfiguration {
        KmsConfiguration {
            api_version: v,
            name: name.to_owned(),
            endpoint: self.endpoint.clone(),
            cache_size: None,
            timeout,
        }
    }

    fn start(&self) -> MockPlugin {
        MockPlugin::start(&self.endpoint).unwrap()
    }

    fn v2(&self, name: &str, timeout: Duration) -> Arc<dyn KeyService> {
        let config = self.config(name, timeout, KmsApiVersion::V2);
        self.connector.v2(&config).unwrap()
    }

    fn v1(&self, name: &str) -> Arc<dyn KeyServiceV1> {
        let config = self.config(name, Duration::from_secs(3), KmsApiVersion::V1);
        self.connector.v1(&config).unwrap()
    }
}

/// A mock at a fresh socket file, and a KMS v2 client for it.
struct Setup {
    socket: Socket,
    mock: MockPlugin,
    service: Arc<dyn KeyService>,
}

fn setup_with(name: &str, timeout: Duration) -> Setup {
    let socket = Socket::new("kms.sock");
    let mock = socket.start();
    let service = socket.v2(name, timeout);
    Setup {
        socket,
        mock,
        service,
    }
}

fn setup(name: &str) -> Setup {
    setup_with(name, Duration::from_secs(3))
}

fn failed(r: Result<impl std::fmt::Debug, KeyServiceError>) -> String {
    match r {
        Err(KeyServiceError::Failed(m)) => m,
        other => panic!("expected a Failed error, got {other:?}"),
    }
}

fn unavailable(r: Result<impl std::fmt::Debug, KeyServiceError>) -> String {
    match r {
        Err(KeyServiceError::Unavailable(m)) => m,
        other => panic!("expected an Unavailable error, got {other:?}"),
    }
}

fn b64(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

fn calls_metric(provider: &str, rpc: &str, result: &str) -> u64 {
    coffer_metrics::kms::kms()
        .calls
        .with_label_values(&[provider, rpc, result])
        .get()
}

/// Scheduling slack on a busy machine for the timing bounds: a call returns by its timeout plus
/// `CALLER_GRACE` by construction, plus the time to wake the caller.
const SLACK: Duration = Duration::from_millis(200);

/// A `grpc-timeout` header value (`<digits><unit>`, units H M S m u n) as a duration.
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("{value:?}"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("unit of {value:?}"),
    }
}

fn abstract_endpoint() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "unix:///@coffer-kms-client-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

#[test]
fn v2_round_trip_sends_localhost_as_authority_and_counts_metrics() {
    let s = setup("round-trip");
    let status = s.service.status().unwrap();
    assert_eq!(
        (
            status.version.as_str(),
            status.healthz.as_str(),
            status.key_id.as_str()
        ),
        ("v2", "ok", "1")
    );
    let seed = [7u8; 32];
    let wrapped = s.service.encrypt("uid-1", &seed).unwrap();
    assert_eq!(wrapped.ciphertext, b64(&seed));
    assert_eq!(wrapped.key_id, "1");
    assert_eq!(
        wrapped.annotations,
        BTreeMap::from([(
            MOCK_ANNOTATION_KEY.to_owned(),
            MOCK_ANNOTATION_VALUE.to_vec()
        )])
    );
    let request = DecryptRequest {
        ciphertext: wrapped.ciphertext,
        key_id: wrapped.key_id,
        annotations: wrapped.annotations,
    };
    let seed_back = s.service.decrypt("uid-2", &request).unwrap();
    assert_eq!(seed_back.expose_secret(), &seed);
    assert_eq!(s.mock.authorities(), vec!["localhost".to_owned()]);
    // Each request carries the time its caller has left, so the plugin can stop in time.
    let left = grpc_timeout(&s.mock.last_grpc_timeout().expect("a grpc-timeout header"));
    assert!(
        left <= Duration::from_secs(3) && left > Duration::from_secs(1),
        "{left:?}"
    );
    let calls = s.mock.calls();
    assert_eq!((calls.status, calls.encrypt, calls.decrypt), (1, 1, 1));
    for rpc in ["Status", "Encrypt", "Decrypt"] {
        assert_eq!(calls_metric("round-trip", rpc, "ok"), 1, "{rpc}");
    }
    // The client's Debug names the provider and endpoint and nothing secret.
    let shown = format!("{:?}", s.service);
    assert!(
        shown.contains("round-trip") && shown.contains("kms.sock"),
        "{shown}"
    );
}

#[test]
fn v1_checks_the_version_once_and_sends_v1beta1() {
    let socket = Socket::new("v1.sock");
    let mock = socket.start();
    let v1 = socket.v1("v1");
    let dek = [3u8; 32];
    // The mock refuses requests whose version is not v1beta1, so this also shows it is sent.
    assert_eq!(v1.decrypt(&b64(&dek)).unwrap().expose_secret(), &dek);
    assert_eq!(
        v1.decrypt(&b64(&[4u8; 32])).unwrap().expose_secret(),
        &[4u8; 32]
    );
    let calls = mock.calls();
    assert_eq!((calls.version, calls.v1_decrypt), (1, 2));
    assert_eq!(calls_metric("v1", "Version", "ok"), 1);

    // A plugin speaking another version is refused before any Decrypt.
    mock.set_v1_version("v2alpha1");
    let other = socket.v1("v1-other");
    let e = failed(other.decrypt(&b64(&dek)));
    assert!(
        e.contains(
            "KMS provider api version v2alpha1 is not supported, only v1beta1 is supported now"
        ),
        "{e}"
    );
    assert_eq!(mock.calls().v1_decrypt, 2);
    assert_eq!(calls_metric("v1-other", "Version", "invalid"), 1);
    // An empty DEK is refused.
    mock.set_v1_version("v1beta1");
    let e = failed(other.decrypt(b""));
    assert!(e.contains("empty plaintext"), "{e}");
}

#[test]
fn encrypt_ciphertext_limit_is_inclusive() {
    let s = setup("limit-ciphertext");
    s.mock.set_encrypt_ciphertext(Some(vec![b'a'; 1024]));
    assert_eq!(
        s.service.encrypt("u", &[1; 32]).unwrap().ciphertext.len(),
        1024
    );
    s.mock.set_encrypt_ciphertext(Some(vec![b'a'; 1025]));
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(
        e.contains("failed to validate encrypted DEK source: encrypted DEK source is 1025 bytes, which exceeds the max size of 1024"),
        "{e}"
    );
    assert!(
        e.contains("limit-ciphertext") && e.contains("kms.sock"),
        "{e}"
    );
    s.mock.set_encrypt_ciphertext(Some(Vec::new()));
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(e.contains("encrypted DEK source is empty"), "{e}");
    assert_eq!(calls_metric("limit-ciphertext", "Encrypt", "invalid"), 2);
    assert_eq!(calls_metric("limit-ciphertext", "Encrypt", "ok"), 1);
}

#[test]
fn key_id_limit_is_inclusive_in_status_and_encrypt() {
    let s = setup("limit-key-id");
    s.mock.set_key_id(&"k".repeat(1024));
    assert_eq!(s.service.status().unwrap().key_id.len(), 1024);
    assert_eq!(s.service.encrypt("u", &[1; 32]).unwrap().key_id.len(), 1024);
    s.mock.set_key_id(&"k".repeat(1025));
    let e = failed(s.service.status());
    assert!(e.contains("got invalid KMSv2 KeyID hash \"sha256:"), "{e}");
    assert!(
        e.contains("keyID is 1025 bytes, which exceeds the max size of 1024"),
        "{e}"
    );
    assert!(
        !e.contains(&"k".repeat(20)),
        "the key_id itself is not shown: {e}"
    );
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(
        e.contains(
            "failed to validate key id: keyID is 1025 bytes, which exceeds the max size of 1024"
        ),
        "{e}"
    );
    s.mock.set_key_id("");
    let e = failed(s.service.status());
    assert!(
        e.contains("got invalid KMSv2 KeyID hash \"\": keyID is empty"),
        "{e}"
    );
    assert_eq!(calls_metric("limit-key-id", "Status", "invalid"), 2);
}

#[test]
fn annotations_must_be_fqdn_and_at_most_32768_bytes() {
    let s = setup("limit-annotations");
    let one = |k: &str, len: usize| BTreeMap::from([(k.to_owned(), vec![0u8; len])]);
    // Key "a.io" (4 bytes) plus the value: 32768 in all is fine, 32769 is not.
    s.mock.set_annotations(one("a.io", 32768 - 4));
    assert!(s.service.encrypt("u", &[1; 32]).is_ok());
    s.mock.set_annotations(one("a.io", 32768 - 3));
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(
        e.contains("failed to validate annotations: total size of annotations is 32769, which exceeds the max size of 32768"),
        "{e}"
    );
    s.mock.set_annotations(one("com", 1));
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(
        e.contains("should be a domain with at least two segments separated by dots"),
        "{e}"
    );
    s.mock.set_annotations(one("Local_KEK.example.com", 1));
    let e = failed(s.service.encrypt("u", &[1; 32]));
    assert!(
        e.contains("failed to validate annotations: annotations: Invalid value"),
        "{e}"
    );
    for ok in ["10.0.0.1", "dev.k8s.io."] {
        s.mock.set_annotations(one(ok, 1));
        assert!(s.service.encrypt("u", &[1; 32]).is_ok(), "{ok}");
    }
    // No annotations at all is fine.
    s.mock.set_annotations(BTreeMap::new());
    assert!(s
        .service
        .encrypt("u", &[1; 32])
        .unwrap()
        .annotations
        .is_empty());
}

#[test]
fn empty_decrypt_answer_is_refused() {
    let s = setup("empty-decrypt");
    let request = DecryptRequest {
        ciphertext: Vec::new(),
        key_id: "1".to_owned(),
        annotations: BTreeMap::new(),
    };
    let e = failed(s.service.decrypt("u", &request));
    assert!(e.contains("empty plaintext"), "{e}");
    assert_eq!(calls_metric("empty-decrypt", "Decrypt", "invalid"), 1);
}

#[test]
fn status_version_must_be_v2_and_never_change() {
    let s = setup("version");
    s.mock.set_version("v3");
    let e = failed(s.service.status());
    assert!(e.contains("expected KMSv2 API version v2, got v3"), "{e}");
    s.mock.set_version("v2beta1");
    assert_eq!(s.service.status().unwrap().version, "v2beta1");
    s.mock.set_version("v2");
    let e = failed(s.service.status());
    assert!(
        e.contains("KMSv2 API version should not change after the initial status response version v2beta1, got v2"),
        "{e}"
    );
    s.mock.set_version("v2beta1");
    assert!(s.service.status().is_ok());
    // healthz is seal's to judge: the answer is passed on.
    s.mock.set_healthz("disk on fire");
    assert_eq!(s.service.status().unwrap().healthz, "disk on fire");
}

#[test]
fn encrypt_key_id_differing_from_status_is_refused_and_the_old_write_state_kept() {
    let s = setup("lying-encrypt");
    let rng = Arc::new(SystemRandom::new().unwrap());
    let provider = KmsV2::new("lying-encrypt", s.service.clone(), rng);
    assert!(provider.refresh().unwrap());
    assert_eq!(provider.current_key_id().as_deref(), Some("1"));
    s.mock.set_key_id("2");
    s.mock.set_encrypt_key_id(Some("3"));
    let e = provider.refresh().unwrap_err().to_string();
    // key_ids appear hashed, as kube-apiserver logs them.
    let hash = coffer_metrics::kms::key_id_hash("3");
    assert!(
        e.contains(&format!("Encrypt returned key_id hash {hash:?}")),
        "{e}"
    );
    assert_eq!(provider.current_key_id().as_deref(), Some("1"));
    // Writes go on with the old state, and read back.
    let key = b"/registry/secrets/default/a";
    let stored = provider.to_storage(b"still writable", key).unwrap();
    assert_eq!(
        provider.from_storage(&stored, key).unwrap().plaintext,
        b"still writable"
    );
    // Once Encrypt agrees, the new key_id is taken.
    s.mock.set_encrypt_key_id(None);
    assert!(provider.refresh().unwrap());
    assert_eq!(provider.current_key_id().as_deref(), Some("2"));
}

#[test]
fn abstract_sockets_work() {
    let endpoint = abstract_endpoint();
    let mock = MockPlugin::start(&endpoint).unwrap();
    assert_eq!(mock.endpoint(), endpoint);
    let connector = GrpcConnector::new().unwrap();
    let config = KmsConfiguration {
        api_version: KmsApiVersion::V2,
        name: "abstract".to_owned(),
        endpoint,
        cache_size: None,
        timeout: Duration::from_secs(3),
    };
    let service = connector.v2(&config).unwrap();
    let wrapped = service.encrypt("u", &[9; 32]).unwrap();
    assert_eq!(wrapped.ciphertext, b64(&[9; 32]));
    assert_eq!(mock.authorities(), vec!["localhost".to_owned()]);
}

#[test]
fn a_socket_that_appears_late_is_waited_for() {
    let socket = Socket::new("late.sock");
    let service = socket.v2("late", Duration::from_secs(5));
    let started = Instant::now();
    let caller = std::thread::spawn(move || service.status());
    std::thread::sleep(Duration::from_millis(400));
    let _mock = socket.start();
    let status = caller.join().unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(status.key_id, "1");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A plugin still starting up (or dying) accepts connections and closes them before HTTP/2
/// is up: no answer was given, so the call tries again until the plugin answers.
#[test]
fn a_connection_closed_before_any_answer_is_tried_again() {
    let socket = Socket::new("flaky.sock");
    let path = socket.dir.path().join("flaky.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let closer = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(300);
        let mut closed = 0;
        while Instant::now() < until {
            match listener.accept() {
                Ok((conn, _)) => {
                    drop(conn);
                    closed += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        closed
    });
    let service = socket.v2("flaky", Duration::from_secs(5));
    let caller = std::thread::spawn(move || service.status());
    let closed = closer.join().unwrap();
    assert!(closed > 0, "the call never reached the closing listener");
    std::fs::remove_file(&path).unwrap();
    let _mock = socket.start();
    let status = caller.join().unwrap().unwrap();
    assert_eq!(status.key_id, "1");
}

#[test]
fn an_absent_socket_fails_after_the_timeout_naming_provider_and_endpoint() {
    let socket = Socket::new("absent.sock");
    let timeout = Duration::from_millis(500);
    let service = socket.v2("absent", timeout);
    let started = Instant::now();
    let e = unavailable(service.status());
    let took = started.elapsed();
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + CALLER_GRACE + SLACK, "{took:?}");
    assert!(
        e.contains("\"absent\"") && e.contains(&socket.endpoint),
        "{e}"
    );
    assert!(e.contains("code = DeadlineExceeded"), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    assert_eq!(calls_metric("absent", "Status", "deadline_exceeded"), 1);
}

#[test]
fn a_slow_plugin_times_out_within_about_the_timeout() {
    let s = setup_with("slow", Duration::from_millis(300));
    s.mock.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    let e = unavailable(s.service.status());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(300) + CALLER_GRACE + SLACK,
        "{took:?}"
    );
    assert!(
        e.contains("code = DeadlineExceeded") && e.contains("300ms"),
        "{e}"
    );
    // The plugin was reached, so no dial error is reported.
    assert!(!e.contains("never became reachable"), "{e}");
    s.mock.set_delay(Duration::ZERO);
    assert!(s.service.status().is_ok());
}

#[test]
fn plugin_errors_are_answers_not_retried() {
    let s = setup("refusing");
    s.mock.fail_with(Some(tonic::Code::PermissionDenied));
    let e = failed(s.service.status());
    assert!(
        e.contains("code = PermissionDenied desc = mock plugin: failing every call as asked"),
        "{e}"
    );
    assert!(e.contains("\"refusing\"") && e.contains("Status"), "{e}");
    // UNAVAILABLE from the plugin itself is reported as unavailable, and not retried.
    s.mock.fail_with(Some(tonic::Code::Unavailable));
    let e = unavailable(s.service.status());
    assert!(e.contains("code = Unavailable"), "{e}");
    assert_eq!(s.mock.calls().status, 2);
    assert_eq!(calls_metric("refusing", "Status", "permission_denied"), 1);
    assert_eq!(calls_metric("refusing", "Status", "unavailable"), 1);
    s.mock.fail_with(None);
    assert!(s.service.status().is_ok());
}

#[test]
fn a_restarted_plugin_is_dialled_again() {
    let mut s = setup("restart");
    assert!(s.service.status().is_ok());
    s.mock.stop();
    assert!(!s.socket.dir.path().join("kms.sock").exists());
    let mock = s.socket.start();
    mock.set_key_id("after-restart");
    assert_eq!(s.service.status().unwrap().key_id, "after-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_inside_a_tokio_runtime_work() {
    let s = setup("in-runtime");
    // On a worker thread of the caller's runtime (the call blocks it briefly).
    assert_eq!(s.service.status().unwrap().key_id, "1");
    // On a blocking thread.
    let service = s.service.clone();
    let wrapped = tokio::task::spawn_blocking(move || service.encrypt("u", &[5; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wrapped.ciphertext, b64(&[5; 32]));
    // From a spawned task on a worker.
    let service = s.service.clone();
    let status = tokio::spawn(async move { service.status() }).await.unwrap();
    assert!(status.is_ok());
}

#[test]
fn calls_from_a_current_thread_runtime_work() {
    let s = setup("in-current-thread");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async { s.service.status() });
    assert_eq!(status.unwrap().key_id, "1");
}

const HOT_CONFIG: &str = "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: v2
          name: hot
          endpoint: ENDPOINT
          timeout: 3s
";

#[test]
fn hot_path_makes_no_plugin_calls() {
    let socket = Socket::new("hot.sock");
    let mock = socket.start();
    let yaml = HOT_CONFIG.replace("ENDPOINT", &socket.endpoint);
    let cfg = coffer_seal::config::parse(yaml.as_bytes(), "hot.yaml").unwrap();
    let keyspace = |connector: &GrpcConnector| {
        Keyspace::new(
            &cfg,
            "/registry",
            None,
            connector,
            Arc::new(SystemRandom::new().unwrap()),
        )
        .unwrap()
    };
    let first = keyspace(&socket.connector);
    assert!(first.refresh_kms().is_empty());
    let key = |i: usize| format!("/registry/secrets/ns/s{i}");
    let stored: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            first
                .seal(key(i).as_bytes(), format!("value {i}").as_bytes())
                .unwrap()
        })
        .collect();
    assert!(stored.iter().all(|s| s.starts_with(b"k8s:enc:kms:v2:hot:")));
    assert_eq!(mock.calls().encrypt, 1, "one seed for every write");
    for (i, s) in stored.iter().enumerate() {
        assert_eq!(
            first.open(key(i).as_bytes(), s).unwrap().plaintext,
            format!("value {i}").as_bytes()
        );
    }
    assert_eq!(mock.calls().decrypt, 0, "the writer's own seed is cached");

    // A restart: a new keyspace (and client) knows nothing; one Decrypt recovers the seed.
    drop(first);
    let connector = GrpcConnector::new().unwrap();
    let second = keyspace(&connector);
    for _pass in 0..2 {
        for (i, s) in stored.iter().enumerate() {
            let opened = second.open(key(i).as_bytes(), s).unwrap();
            assert_eq!(opened.plaintext, format!("value {i}").as_bytes());
        }
        assert_eq!(mock.calls().decrypt, 1, "one Decrypt per distinct seed");
    }
}
