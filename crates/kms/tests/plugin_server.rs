//! The plugin server in process over a real unix socket, with a backend whose calls take
//! time: in-flight calls finish on shutdown while the socket file is removed at once, and the
//! health check is cached 5 s after a success and 1 s after a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_kms::endpoint::SocketAddress;
use coffer_kms::plugin::{Backend, HealthCheck, PluginError, ServeOptions, Wrapped};
use coffer_kms::proto::v2::key_management_service_client::KeyManagementServiceClient;
use coffer_kms::proto::v2::{EncryptRequest, StatusRequest};
use zeroize::Zeroizing;

/// A backend that counts health checks, can be made to fail, and takes `delay` to wrap.
#[derive(Debug, Default)]
struct Slow {
    refreshes: AtomicUsize,
    down: AtomicBool,
    delay: Duration,
}

impl Backend for Slow {
    fn describe(&self) -> String {
        "test backend".to_owned()
    }
    fn format(&self) -> &'static str {
        "test-v1"
    }
    fn accepts_unannotated(&self) -> bool {
        false
    }
    fn refresh(&self) -> Result<String, PluginError> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PluginError::Unavailable(
                "the test backend is down".to_owned(),
            ));
        }
        Ok("k1".to_owned())
    }
    fn current_key_id(&self) -> Option<String> {
        Some("k1".to_owned())
    }
    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, PluginError> {
        std::thread::sleep(self.delay);
        let mut ciphertext = vec![0xaa];
        ciphertext.extend(plaintext.iter().map(|b| b ^ 0x55));
        Ok(Wrapped {
            ciphertext,
            key_id: "k1".to_owned(),
        })
    }
    fn unwrap(&self, _key_id: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        Ok(Zeroizing::new(
            ciphertext[1..].iter().map(|b| b ^ 0x55).collect(),
        ))
    }
}

async fn client(address: SocketAddress) -> KeyManagementServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let address = address.clone();
            async move { address.connect().await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .unwrap();
    KeyManagementServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_finish_on_shutdown_and_the_socket_goes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sock");
    let address = SocketAddress::Path(path.clone());
    let backend = Arc::new(Slow {
        delay: Duration::from_millis(1500),
        ..Slow::default()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coffer_kms::plugin::serve(
        backend,
        ServeOptions {
            listen: address.clone(),
            metrics: vec![],
            drain_timeout: Duration::from_secs(10),
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the socket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = client(address.clone()).await;
    assert_eq!(
        c.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .healthz,
        "ok"
    );
    let started = Instant::now();
    let call = tokio::spawn(async move {
        c.encrypt(EncryptRequest {
            plaintext: vec![7; 32],
            uid: "u".to_owned(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call is still in flight");
    assert!(
        !path.exists(),
        "the socket file is removed when accepting stops"
    );
    assert!(address.connect().await.is_err(), "no new connections");
    let answer = call.await.unwrap().unwrap().into_inner();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(answer.key_id, "k1");
    assert_eq!(answer.annotations["format.kms.coffer.dev"], b"test-v1");
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_is_cached_five_seconds_after_success_and_one_after_failure() {
    let backend = Arc::new(Slow::default());
    let health = HealthCheck::new(backend.clone());
    let count = || backend.refreshes.load(Ordering::SeqCst);
    assert!(health.check().await.healthy);
    for _ in 0..5 {
        assert!(health.check().await.healthy);
    }
    assert_eq!(count(), 1);
    backend.down.store(true, Ordering::SeqCst);
    assert!(health.check().await.healthy, "cached");
    assert_eq!(count(), 1);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let h = health.check().await;
    assert!(!h.healthy);
    assert_eq!(h.reason, "the test backend is down");
    assert_eq!(h.key_id, "k1", "the last key_id through an outage");
    assert_eq!(count(), 2);
    assert!(!health.check().await.healthy);
    assert_eq!(count(), 2, "a failure is cached too");
    backend.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(health.check().await.healthy);
    assert_eq!(count(), 3);
}
