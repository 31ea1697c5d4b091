//! The HTTP endpoints over the real store: `/health` turns 503 when the store stops accepting
//! writes (a commit of unknown outcome), while `/livez` and `/readyz` (reads) stay ok.

use std::sync::atomic::Ordering;

use ::http::Method;
use coffer_proto::LeaseGrantRequest;
use coffer_server::http::respond;
use coffer_store::{Backend, EngineFaults, EngineOptions};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_when_writes_stop() {
    let dir = tempfile::tempdir().unwrap();
    let rng: Arc<dyn RandomSource> = Arc::new(SystemRandom::new().unwrap());
    let key = DefaultKey::from_secret(SecretBytes::new(vec![7u8; 32])).unwrap();
    let keyspace =
        Keyspace::default_only(Arc::new(key.key_service(rng.clone()).unwrap()), rng).unwrap();
    let faults = Arc::new(EngineFaults::default());
    let store = EmbeddedStore::open(
        &dir.path().join("data"),
        Arc::new(keyspace),
        StoreOptions {
            engine: EngineOptions {
                faults: Some(Arc::clone(&faults)),
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let shared = coffer_server::state::Shared::new(ServerConfig::new(1, 2));

    let r = respond(&store, &shared, &Method::GET, "/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), r#"{"health":"true","reason":""}"#);

    // A durable commit whose fdatasync fails: outcome unknown, writes stop.
    faults.fail_engine_sync.store(true, Ordering::SeqCst);
    let grant = store
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 7 })
        .await;
    assert!(grant.is_err());
    faults.fail_engine_sync.store(false, Ordering::SeqCst);

    let r = respond(&store, &shared, &Method::GET, "/health").await;
    assert_eq!(r.status(), 503);
    assert!(
        r.body()
            .starts_with(r#"{"health":"false","reason":"the store stopped accepting writes"#),
        "{}",
        r.body()
    );
    assert!(r.body().ends_with("\"}\n"), "{}", r.body());
    // Reads still work: live and ready.
    let r = respond(&store, &shared, &Method::GET, "/livez").await;
    assert_eq!((r.status().as_u16(), r.body().as_str()), (200, "ok\n"));
    let r = respond(&store, &shared, &Method::GET, "/readyz").await;
    assert_eq!(r.status(), 200);
    store.close();
}
