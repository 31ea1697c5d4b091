//! `coffer bench watch` and `coffer bench lease-keepalive` against a real `coffer serve`: the
//! JSON report must show every event delivered to every watcher exactly once, and every
//! keep-alive answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A running `coffer serve` on a free loopback port; killed on drop.
struct Serve {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("default.key");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--default-key-file")
            .arg(&key)
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let found = log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains("ready to serve client requests"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned);
            if let Some(a) = found {
                break a;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("coffer serve did not start: {}", log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Serve {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Runs `coffer bench --output json <args>` against this server.
    fn bench(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let out = Command::new(BIN)
            .args(["bench", "--endpoints", &self.addr, "--output", "json"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "bench {args:?}: no JSON report ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), report)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_delivers_every_event_exactly_once() {
    let s = Serve::start();
    // 3 streams × 20 watchers over 2 keys, 2 concurrent putters.
    let (ok, r) = s.bench(&[
        "--clients",
        "2",
        "watch",
        "--streams",
        "3",
        "--watch-per-stream",
        "20",
        "--watched-key-total",
        "2",
        "--key-space-size",
        "2",
        "--sequential-keys",
        "--put-total",
        "150",
        "--val-size",
        "64",
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["workload"], "watch");
    assert_eq!(r["watchers"], 60);
    assert_eq!(r["watched_keys"], 2);
    assert_eq!(r["puts"], 150);
    // Each watcher sees the puts to its key: 75 each.
    assert_eq!(r["events_expected"], 60 * 75);
    assert_eq!(r["events_delivered"], 60 * 75);
    assert_eq!(r["ok"], 60 * 75);
    let responses = r["event_responses"].as_u64().unwrap();
    assert!((1..=60 * 75).contains(&responses), "{r}");
    assert_eq!(r["missed"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["unexpected"], 0);
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["failed"], false);
    let p50 = r["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = r["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");

    // At a fixed rate, on one stream.
    let (ok, r) = s.bench(&[
        "watch",
        "--streams",
        "1",
        "--watch-per-stream",
        "50",
        "--put-total",
        "40",
        "--put-rate",
        "200",
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["events_delivered"], 50 * 40);
    assert_eq!(r["missed"], 0);
    assert_eq!(r["duplicated"], 0);
    // 40 puts at 200/s take at least 195 ms (the first is due at once).
    assert!(r["put_secs"].as_f64().unwrap() >= 0.19, "{r}");
}

#[test]
fn lease_keepalive_answers_every_request() {
    let s = Serve::start();
    let (ok, r) = s.bench(&[
        "--conns",
        "2",
        "--clients",
        "4",
        "lease-keepalive",
        "--total",
        "400",
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["workload"], "lease-keepalive");
    assert_eq!(r["ok"], 400);
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["failed"], false);
    assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn watch_against_nothing_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "bench",
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "--dial-timeout",
            "500ms",
            "watch",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}
