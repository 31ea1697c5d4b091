//! The HTTP endpoints of `--listen-metrics-urls`, side by side: a fresh Debian etcd 3.4.23
//! (`--metrics extensive`, so that `grpc_server_handling_seconds` exists) and a fresh
//! `coffer serve`, the same gRPC requests sent to both, then the same HTTP requests.
//!
//! Compared: status codes and bodies where etcd 3.4.23 and 3.5 agree (405 for other methods,
//! 404 for unknown paths, the `/health` verdict), every etcd metric Coffer exports present in
//! both with the same `# TYPE` and `# HELP`, and the values: keys put, a database size above
//! 0, each RPC counted under its code. Then the NOSPACE alarm: `/health` turns 503 on both
//! and back to 200 once disarmed.
//!
//! Expected differences (etcd 3.4.23 against the 3.5 behaviour Coffer implements):
//! - `/health` has no `reason` field in 3.4 (`{"health":"true"}`); 3.5 always sends it
//!   (`{"health":"true","reason":""}`, `{"health":"false","reason":"ALARM NOSPACE"}`).
//! - `/livez` and `/readyz` do not exist in 3.4 (404); their 3.5 answers are checked against
//!   etcd 3.5's handler (`server/etcdserver/api/etcdhttp/health.go`).
//! - `/version` is served on etcd's client port only; Coffer serves it on the metrics port
//!   too. Its shape is compared with etcd's client-port answer.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_conformance::client::connect;
use coffer_conformance::http::http;
use coffer_conformance::process::{
    free_port, CofferOptions, CofferProcess, EtcdOptions, EtcdProcess,
};
use coffer_proto::alarm_request::AlarmAction;
use coffer_proto::kv_client::KvClient;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::watch_client::WatchClient;
use coffer_proto::watch_request::RequestUnion;
use coffer_proto::{
    AlarmRequest, AlarmType, DeleteRangeRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};

/// The etcd metrics Coffer exports under etcd's names.
const ETCD_METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_disk_wal_fsync_duration_seconds",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "grpc_server_started_total",
];

const PUTS: usize = 5;

/// `# TYPE` and `# HELP` of every family, and every sample line, of a scrape.
struct Scrape {
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
    samples: Vec<(String, f64)>,
}

fn scrape(text: &str) -> Scrape {
    let mut s = Scrape {
        types: BTreeMap::new(),
        help: BTreeMap::new(),
        samples: Vec::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            s.types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            s.help.insert(name.to_owned(), help.to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            s.samples.push((series.to_owned(), value.parse().unwrap()));
        }
    }
    s
}

impl Scrape {
    /// The value of the sample named `name` whose labels include every `labels` pair.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find_map(|(series, v)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let ok = n == name
                && labels
                    .iter()
                    .all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")));
            ok.then_some(*v)
        })
    }

    fn handled(&self, method: &str, code: &str) -> f64 {
        self.value(
            "grpc_server_handled_total",
            &[
                ("grpc_method", method),
                ("grpc_service", "etcdserverpb.KV"),
                ("grpc_type", "unary"),
                ("grpc_code", code),
            ],
        )
        .unwrap_or(0.0)
    }
}

/// The same gRPC traffic for both servers: PUTS distinct keys, one read, one read of a
/// future revision (OUT_OF_RANGE), one delete.
async fn traffic(endpoint: &str) {
    let mut kv = KvClient::new(connect(endpoint).await.unwrap());
    for i in 0..PUTS {
        kv.put(PutRequest {
            key: format!("/metrics/k{i}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    kv.range(RangeRequest {
        key: b"/metrics/k0".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let future = kv
        .range(RangeRequest {
            key: b"/metrics/k0".to_vec(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::OutOfRange);
    // A deleted key no longer counts in keys_total (etcd counts live keys).
    kv.delete_range(DeleteRangeRequest {
        key: format!("/metrics/k{}", PUTS - 1).into_bytes(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn alarm(endpoint: &str, action: AlarmAction) {
    let mut m = MaintenanceClient::new(connect(endpoint).await.unwrap());
    m.alarm(AlarmRequest {
        action: action as i32,
        member_id: 0,
        alarm: AlarmType::Nospace as i32,
    })
    .await
    .unwrap();
}

/// Opens a Watch stream with one watcher, runs `while_open`, then drops the stream (the client
/// goes away: the call ends `Canceled`).
async fn with_watcher(endpoint: &str, while_open: impl AsyncFnOnce()) {
    let mut w = WatchClient::new(connect(endpoint).await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"/metrics/".to_vec(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    while_open().await;
    drop(stream);
    drop(tx);
    drop(w);
}

/// Checks what both servers must agree on in one scrape, and the values of this traffic
/// (counters as the difference from `before`: the harness reads once to see a server ready).
fn check_scrape(who: &str, before: &Scrape, text: &str) -> Scrape {
    let s = scrape(text);
    assert_eq!(s.value("etcd_server_has_leader", &[]), Some(1.0), "{who}");
    assert_eq!(
        s.value("etcd_debugging_mvcc_keys_total", &[]),
        Some((PUTS - 1) as f64),
        "{who}: keys_total is the number of live keys"
    );
    let size = s.value("etcd_mvcc_db_total_size_in_bytes", &[]).unwrap();
    let in_use = s
        .value("etcd_mvcc_db_total_size_in_use_in_bytes", &[])
        .unwrap();
    assert!(
        size > 0.0 && in_use > 0.0 && in_use <= size,
        "{who}: {size} {in_use}"
    );
    let delta = |f: &dyn Fn(&Scrape) -> f64| f(&s) - f(before);
    assert_eq!(delta(&|x| x.handled("Put", "OK")), PUTS as f64, "{who}");
    assert_eq!(delta(&|x| x.handled("Range", "OK")), 1.0, "{who}");
    assert_eq!(delta(&|x| x.handled("Range", "OutOfRange")), 1.0, "{who}");
    assert_eq!(delta(&|x| x.handled("DeleteRange", "OK")), 1.0, "{who}");
    let started = |x: &Scrape| {
        x.value(
            "grpc_server_started_total",
            &[("grpc_method", "Put"), ("grpc_service", "etcdserverpb.KV")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(delta(&started), PUTS as f64, "{who}");
    let handling = |x: &Scrape| {
        x.value(
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "Range"), ("grpc_type", "unary")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(delta(&handling), 2.0, "{who}: both reads timed");
    let fsyncs = s
        .value("etcd_disk_wal_fsync_duration_seconds_count", &[])
        .unwrap();
    assert!(fsyncs >= 1.0, "{who}: {fsyncs} fsyncs");
    let commits = s
        .value("etcd_disk_backend_commit_duration_seconds_count", &[])
        .unwrap();
    assert!(commits >= 1.0, "{who}: {commits} commits");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_side_by_side() {
    let etcd_port = free_port().unwrap();
    let etcd_metrics = format!("127.0.0.1:{etcd_port}");
    let etcd = EtcdProcess::start_with(EtcdOptions {
        extra_args: vec![
            "--metrics".into(),
            "extensive".into(),
            "--listen-metrics-urls".into(),
            format!("http://{etcd_metrics}"),
        ],
        ..Default::default()
    })
    .unwrap();
    let coffer_port = free_port().unwrap();
    let coffer_metrics = format!("127.0.0.1:{coffer_port}");
    let coffer = CofferProcess::start(CofferOptions {
        extra_args: vec![
            "--listen-metrics-urls".into(),
            format!("http://{coffer_metrics}"),
        ],
        ..Default::default()
    })
    .unwrap();

    let etcd_before = scrape(&http(&etcd_metrics, "GET", "/metrics").body);
    let coffer_before = scrape(&http(&coffer_metrics, "GET", "/metrics").body);
    traffic(&etcd.endpoint()).await;
    traffic(&coffer.endpoint()).await;

    // Metrics: names, types and help texts as etcd's; sane values on both.
    let e = http(&etcd_metrics, "GET", "/metrics");
    let c = http(&coffer_metrics, "GET", "/metrics");
    assert_eq!((e.status, c.status), (200, 200));
    assert_eq!(e.headers["content-type"], c.headers["content-type"]);
    let es = check_scrape("etcd", &etcd_before, &e.body);
    let cs = check_scrape("coffer", &coffer_before, &c.body);
    for name in ETCD_METRICS {
        assert!(es.types.contains_key(*name), "etcd lacks {name}");
        assert_eq!(es.types.get(*name), cs.types.get(*name), "TYPE of {name}");
        assert_eq!(es.help.get(*name), cs.help.get(*name), "HELP of {name}");
    }
    // etcd's disk buckets: the same `le` bounds on both.
    let buckets = |s: &Scrape| -> Vec<String> {
        s.samples
            .iter()
            .filter(|(n, _)| n.starts_with("etcd_disk_wal_fsync_duration_seconds_bucket"))
            .map(|(n, _)| n.clone())
            .collect()
    };
    assert_eq!(buckets(&es), buckets(&cs));
    // Every method and code is there before its first call, as in etcd.
    for (method, code) in [("Compact", "NotFound"), ("Txn", "Unavailable")] {
        assert_eq!(es.handled(method, code), 0.0);
        assert!(cs
            .value(
                "grpc_server_handled_total",
                &[("grpc_method", method), ("grpc_code", code)]
            )
            .is_some());
    }

    // Coffer's own: every put sealed, every read opened, with the default key's name.
    let sealed = cs
        .value(
            "coffer_seal_operations_total",
            &[
                ("operation", "seal"),
                ("provider", "kms v2"),
                ("key", "coffer-default"),
                ("result", "ok"),
            ],
        )
        .unwrap();
    assert!(sealed >= PUTS as f64, "{sealed}");
    assert!(!c.body.contains("/metrics/k"), "no key in a label");
    let groups = cs.value("coffer_commit_group_size_count", &[]).unwrap();
    assert!(groups >= 1.0, "{groups}");

    // A watcher: counted while open (Coffer), and its stream counted when it ends (both).
    let watch_handled = |s: &Scrape| -> f64 {
        s.samples
            .iter()
            .filter(|(n, _)| {
                n.starts_with("grpc_server_handled_total{")
                    && n.contains("grpc_method=\"Watch\"")
                    && n.contains("etcdserverpb.Watch")
            })
            .map(|(_, v)| v)
            .sum()
    };
    for addr in [&etcd_metrics, &coffer_metrics] {
        let before = scrape(&http(addr, "GET", "/metrics").body);
        let endpoint = if addr == &etcd_metrics {
            etcd.endpoint()
        } else {
            coffer.endpoint()
        };
        with_watcher(&endpoint, async || {
            let open = scrape(&http(addr, "GET", "/metrics").body);
            if addr == &coffer_metrics {
                assert_eq!(open.value("coffer_watchers", &[]), Some(1.0));
            }
            let started = |s: &Scrape| {
                s.value(
                    "grpc_server_started_total",
                    &[("grpc_method", "Watch"), ("grpc_type", "bidi_stream")],
                )
                .unwrap_or(0.0)
            };
            assert_eq!(started(&open) - started(&before), 1.0, "{addr}");
            assert_eq!(
                watch_handled(&open),
                watch_handled(&before),
                "{addr}: still open"
            );
        })
        .await;
        let mut ended = 0.0;
        for _ in 0..50 {
            let after = scrape(&http(addr, "GET", "/metrics").body);
            ended = after
                .value(
                    "grpc_server_handled_total",
                    &[("grpc_method", "Watch"), ("grpc_code", "Canceled")],
                )
                .unwrap_or(0.0)
                - before
                    .value(
                        "grpc_server_handled_total",
                        &[("grpc_method", "Watch"), ("grpc_code", "Canceled")],
                    )
                    .unwrap_or(0.0);
            if ended > 0.0 {
                if addr == &coffer_metrics {
                    // The stream is counted when its RPC ends; its watchers leave the hub when
                    // the stream's task drops them, a moment later.
                    let mut watchers = after.value("coffer_watchers", &[]);
                    for _ in 0..50 {
                        if watchers == Some(0.0) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        watchers = scrape(&http(addr, "GET", "/metrics").body)
                            .value("coffer_watchers", &[]);
                    }
                    assert_eq!(watchers, Some(0.0));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            ended, 1.0,
            "{addr}: the dropped Watch stream counts as Canceled"
        );
    }

    // /health: the same status and verdict; 3.4 has no `reason` (see the module docs).
    let e = http(&etcd_metrics, "GET", "/health");
    let c = http(&coffer_metrics, "GET", "/health");
    assert_eq!((e.status, c.status), (200, 200));
    assert_eq!(e.body, r#"{"health":"true"}"#);
    assert_eq!(c.body, r#"{"health":"true","reason":""}"#);

    // Other methods and unknown paths: the same answers.
    for (method, path) in [("POST", "/health"), ("HEAD", "/health"), ("GET", "/nope")] {
        let e = http(&etcd_metrics, method, path);
        let c = http(&coffer_metrics, method, path);
        assert_eq!(e.status, c.status, "{method} {path}");
        assert_eq!(e.body, c.body, "{method} {path}");
        assert_eq!(
            e.headers.get("allow"),
            c.headers.get("allow"),
            "{method} {path}"
        );
        assert_eq!(
            e.headers.get("content-type"),
            c.headers.get("content-type"),
            "{method} {path}"
        );
    }

    // /version: etcd's shape (etcd serves it on its client port).
    let ev = http(
        etcd.endpoint().trim_start_matches("http://"),
        "GET",
        "/version",
    );
    let cv = http(&coffer_metrics, "GET", "/version");
    assert_eq!((ev.status, cv.status), (200, 200));
    let keys = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(keys(&ev.body), keys(&cv.body));
    assert_eq!(cv.body, r#"{"etcdserver":"3.5.21","etcdcluster":"3.5.0"}"#);

    // /livez and /readyz: 404 on 3.4; etcd 3.5's answers on Coffer.
    assert_eq!(http(&etcd_metrics, "GET", "/livez").status, 404);
    let c = http(&coffer_metrics, "GET", "/livez");
    assert_eq!((c.status, c.body.as_str()), (200, "ok\n"));
    let c = http(&coffer_metrics, "GET", "/readyz?verbose");
    assert_eq!(c.status, 200);
    assert_eq!(
        c.body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n\
         [+]non_learner ok\nok\n"
    );
    let c = http(
        &coffer_metrics,
        "GET",
        "/readyz?verbose&exclude=non_learner",
    );
    assert!(!c.body.contains("non_learner"), "{}", c.body);
    let c = http(&coffer_metrics, "GET", "/readyz/linearizable_read");
    assert_eq!((c.status, c.body.as_str()), (200, "ok\n"));
    assert_eq!(http(&coffer_metrics, "POST", "/livez").status, 405);

    // The NOSPACE alarm: /health 503 on both, `?exclude=NOSPACE` still 200, back once disarmed.
    for endpoint in [etcd.endpoint(), coffer.endpoint()] {
        alarm(&endpoint, AlarmAction::Activate).await;
    }
    let e = http(&etcd_metrics, "GET", "/health");
    let c = http(&coffer_metrics, "GET", "/health");
    assert_eq!((e.status, c.status), (503, 503));
    assert_eq!(e.body, "{\"health\":\"false\"}\n");
    assert_eq!(
        c.body,
        "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"
    );
    assert_eq!(e.headers.get("content-type"), c.headers.get("content-type"));
    let e = http(&etcd_metrics, "GET", "/health?exclude=NOSPACE");
    let c = http(&coffer_metrics, "GET", "/health?exclude=NOSPACE");
    assert_eq!((e.status, c.status), (200, 200));
    // NOSPACE is not data corruption: still ready.
    assert_eq!(http(&coffer_metrics, "GET", "/readyz").status, 200);
    for endpoint in [etcd.endpoint(), coffer.endpoint()] {
        alarm(&endpoint, AlarmAction::Deactivate).await;
    }
    let e = http(&etcd_metrics, "GET", "/health");
    let c = http(&coffer_metrics, "GET", "/health");
    assert_eq!((e.status, c.status), (200, 200), "{} / {}", e.body, c.body);
}
