//! `coffer serve` as a process: flag errors, the default key printed at start, graceful stop
//! on SIGTERM, and the refusals that protect existing data (missing or different default key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A running `coffer serve` with its stderr collected in the background.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(args: &[&str], env: &[(&str, &Path)]) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        if !args.contains(&"--listen-client-urls") {
            cmd.args(["--listen-client-urls", "http://127.0.0.1:0"]);
        }
        cmd.args(args)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
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
        Serve { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` or the process exits.
    fn wait_for(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return self.log().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs to completion (for starts that must fail) and returns (exit code, stderr).
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code(), self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("coffer serve kept running:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `coffer serve` with `args` on a free loopback port, ready; returns it and its URL.
fn serve_ready(args: &[&str]) -> (Serve, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut all = args.to_vec();
    all.extend(["--listen-client-urls", &url]);
    let mut s = Serve::start(&all, &[]);
    assert!(s.wait_for("ready to serve client requests"), "{}", s.log());
    (s, url)
}

/// etcdctl (API 3) against `url`: (success, stdout and stderr).
fn etcdctl(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .args(["--endpoints", url])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn key_file_inside_the_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = data.join("default.key");
    let s = Serve::start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--default-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let (code, log) = s.finish();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("inside --data-dir"), "{log}");
    assert!(!key.exists(), "no key was created");
}

#[test]
fn default_key_is_printed_kept_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_home = dir.path().join("config");
    let data_arg = data.to_str().unwrap().to_owned();

    // First start: the default key goes to $XDG_CONFIG_HOME/coffer/<name>.key and is printed.
    let mut s = Serve::start(
        &["--name", "node1", "--data-dir", &data_arg],
        &[("XDG_CONFIG_HOME", &config_home)],
    );
    assert!(s.wait_for("ready to serve client requests"), "{}", s.log());
    let key = config_home.join("coffer").join("node1.key");
    let log = s.log();
    assert!(log.contains(key.to_str().unwrap()), "{log}");
    assert!(log.contains("KMS"), "production warning: {log}");
    assert!(key.exists());
    let (status, took) = s.terminate();
    assert!(status.success(), "{}", s.log());
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    assert!(s.log().contains("coffer serve stopped"));
    drop(s);

    // Same key: starts again.
    let mut s = Serve::start(
        &["--name", "node1", "--data-dir", &data_arg],
        &[("XDG_CONFIG_HOME", &config_home)],
    );
    assert!(s.wait_for("ready to serve client requests"), "{}", s.log());
    assert!(s.terminate().0.success());
    drop(s);

    // A missing key file: refused, naming the expected file, and no new key is made.
    let missing = dir.path().join("elsewhere").join("k.key");
    let s = Serve::start(
        &[
            "--data-dir",
            &data_arg,
            "--default-key-file",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    let (code, log) = s.finish();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    assert!(
        log.contains(key.to_str().unwrap()),
        "names the expected file: {log}"
    );
    assert!(!missing.exists());

    // A different key: refused, naming the expected file.
    let other_home = dir.path().join("other");
    let mut o = Serve::start(
        &["--data-dir", dir.path().join("data2").to_str().unwrap()],
        &[("XDG_CONFIG_HOME", &other_home)],
    );
    assert!(o.wait_for("ready to serve client requests"), "{}", o.log());
    assert!(o.terminate().0.success());
    drop(o);
    let other_key = other_home.join("coffer").join("default.key");
    let s = Serve::start(
        &[
            "--data-dir",
            &data_arg,
            "--default-key-file",
            other_key.to_str().unwrap(),
        ],
        &[],
    );
    let (code, log) = s.finish();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("different key"), "{log}");
    assert!(
        log.contains(key.to_str().unwrap()),
        "names the expected file: {log}"
    );
}

#[test]
fn bad_listen_url_and_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let s = Serve::start(
        &[
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--default-key-file",
            key.to_str().unwrap(),
            "--listen-client-urls",
            "127.0.0.1:2379",
        ],
        &[],
    );
    let (code, log) = s.finish();
    assert_eq!(code, Some(1));
    assert!(
        log.contains("127.0.0.1:2379") && log.contains("http://"),
        "{log}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", busy.local_addr().unwrap());
    let s = Serve::start(
        &[
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--default-key-file",
            key.to_str().unwrap(),
            "--listen-client-urls",
            &url,
        ],
        &[],
    );
    let (code, log) = s.finish();
    assert_eq!(code, Some(1));
    assert!(log.contains("address already in use"), "{log}");
}

/// Watch streams never end on their own: without ending them at shutdown, a SIGTERM would wait
/// out the whole drain timeout (10 s) while any client is watching.
#[test]
fn sigterm_ends_open_watch_streams_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_home = dir.path().join("config");
    let data_arg = data.to_str().unwrap().to_owned();
    let mut s = Serve::start(
        &["--data-dir", &data_arg],
        &[("XDG_CONFIG_HOME", &config_home)],
    );
    assert!(s.wait_for("ready to serve client requests"), "{}", s.log());
    let log = s.log();
    let addr = log
        .lines()
        .find(|l| l.contains("ready to serve client requests"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
        .expect("listen address in the log");
    let mut watcher = Command::new("etcdctl")
        .args(["--endpoints", &addr, "watch", "--prefix", "/registry/"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl (Debian's etcd-client) must be installed");
    std::thread::sleep(Duration::from_millis(800));
    let (status, took) = s.terminate();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(status.success(), "{}", s.log());
    assert!(
        took < Duration::from_secs(5),
        "stop with an open watch took {took:?}"
    );
}

/// Sends `kill -TERM` to `child`.
fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Starts a Range whose request message never arrives, so a graceful stop cannot finish;
/// the runtime keeps the call open until it is dropped.
fn open_a_request_that_never_finishes(url: &str) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = url.to_owned();
    rt.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        tokio::spawn(async move {
            let _ = grpc
                .client_streaming(
                    tonic::Request::new(futures::stream::pending::<coffer_proto::RangeRequest>()),
                    tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range"),
                    tonic_prost::ProstCodec::<
                        coffer_proto::RangeRequest,
                        coffer_proto::RangeResponse,
                    >::default(),
                )
                .await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    rt
}

/// A stop that cuts open requests off is no clean stop: a second signal during the drain, or
/// the drain timeout, ends `coffer serve` with a non-zero status and says why.
#[test]
fn a_forced_stop_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("default.key");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--default-key-file",
        key.to_str().unwrap(),
    ];
    let (mut s, url) = serve_ready(&args);
    let _open = open_a_request_that_never_finishes(&url);
    sigterm(&s.child);
    assert!(s.wait_for("SIGTERM received"), "{}", s.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the drain did not wait for the open request:\n{}",
        s.log()
    );
    sigterm(&s.child);
    let (code, log) = s.finish();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("stopped without draining: a second signal arrived"),
        "{log}"
    );

    // The drain timeout (10 s) the same way.
    let (mut s, url) = serve_ready(&args);
    let _open = open_a_request_that_never_finishes(&url);
    let started = Instant::now();
    sigterm(&s.child);
    assert!(s.wait_for("SIGTERM received"), "{}", s.log());
    let (code, log) = s.finish();
    assert!(started.elapsed() >= Duration::from_secs(9), "{log}");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("stopped without draining: open requests did not finish within 10s"),
        "{log}"
    );
}

/// Writes sealed under each aesgcm key are counted durably (in the store's meta, with every
/// commit), carried across restarts, and shown by `coffer config check --data-dir`.
#[test]
fn aesgcm_write_counts_survive_restarts_and_show_in_config_check() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let cfg = dir.path().join("enc.yaml");
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  \
             - resources: ['*.*']\n    providers:\n      - aesgcm:\n          keys:\n            \
             - name: key1\n              secret: {secret}\n"
        ),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let run = |puts: usize| {
        let (mut s, url) = serve_ready(&[
            "--data-dir",
            &data_arg,
            "--encryption-provider-config",
            &cfg_arg,
        ]);
        for i in 0..puts {
            let (ok, out) = etcdctl(&url, &["put", &format!("/registry/secrets/s{i}"), "v"]);
            assert!(ok, "{out}");
        }
        let (status, _) = s.terminate();
        assert!(status.success(), "{}", s.log());
    };
    let writes = || -> u64 {
        let out = Command::new(BIN)
            .args([
                "config",
                "check",
                &cfg_arg,
                "--data-dir",
                &data_arg,
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let counts = v["writes"]["counts"].as_array().unwrap();
        assert_eq!(counts.len(), 1, "{v}");
        let id = counts[0]["counter"].as_str().unwrap();
        assert!(id.starts_with("aesgcm/key1/"), "{id}");
        assert!(!id.contains(&secret), "{id}");
        counts[0]["writes"].as_u64().unwrap()
    };
    run(5);
    assert_eq!(writes(), 5);
    run(2);
    assert_eq!(writes(), 7, "counts carried over the restart");
}

/// A data directory of storage format 1 (no checksums; made by an earlier Coffer and killed
/// with its log holding entries after the last checkpoint) is upgraded in place at start:
/// every acknowledged write, the lease, the compaction and the revision are there, and it
/// opens again afterwards.
#[test]
fn a_format_1_data_directory_is_upgraded_in_place() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format1");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for f in ["coffer.redb", "coffer.wal", "default-key.fingerprint"] {
        std::fs::copy(fixture.join(f), data.join(f)).unwrap();
    }
    let key = dir.path().join("default.key");
    std::fs::copy(fixture.join("default.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data_arg = data.to_str().unwrap().to_owned();
    let key_arg = key.to_str().unwrap().to_owned();
    for round in 0..2 {
        let (mut s, url) = serve_ready(&["--data-dir", &data_arg, "--default-key-file", &key_arg]);
        if round == 0 {
            assert!(
                s.log().contains("upgraded the store to storage format 2"),
                "{}",
                s.log()
            );
        }
        let (ok, out) = etcdctl(&url, &["get", "--prefix", "/registry/", "-w", "json"]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let kvs: Vec<(String, String)> = v["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let d = |f: &str| {
                    use base64::Engine as _;
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD
                            .decode(kv[f].as_str().unwrap())
                            .unwrap(),
                    )
                    .unwrap()
                };
                (d("key"), d("value"))
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("/registry/events/e1", "ev"),
            ("/registry/secrets/s1", "v1b"),
            ("/registry/secrets/s2", "v2"),
            ("/registry/secrets/s3", "v3"),
            ("/registry/secrets/s4", "v4"),
            ("/registry/secrets/s6", "v6"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(kvs, want);
        assert_eq!(v["header"]["revision"].as_i64(), Some(10), "{v}");
        let (ok, out) = etcdctl(&url, &["get", "/registry/secrets/s1", "--rev", "2"]);
        assert!(!ok && out.contains("compacted"), "{out}");
        let (ok, out) = etcdctl(&url, &["lease", "list"]);
        assert!(ok && out.contains("545e69d7a245"), "{out}");
        let (status, _) = s.terminate();
        assert!(status.success(), "{}", s.log());
    }
}

/// Runs `coffer serve` with `args` (and a fresh data directory and key) to its refusal:
/// (exit code, log).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (data, key) = (dir.path().join("d"), dir.path().join("k.key"));
    let mut all = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--default-key-file",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    Serve::start(&all, &[]).finish()
}

#[test]
fn plaintext_on_a_non_loopback_address_needs_its_flag() {
    let (code, log) = refused(&["--listen-client-urls", "http://0.0.0.0:0"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("\"http://0.0.0.0:0\" serves plaintext HTTP on a non-loopback address")
            && log.contains("add --insecure-listen-plaintext"),
        "{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let mut s = Serve::start(
        &[
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--default-key-file",
            key.to_str().unwrap(),
            "--listen-client-urls",
            "http://0.0.0.0:0",
            "--insecure-listen-plaintext",
        ],
        &[],
    );
    assert!(s.wait_for("ready to serve client requests"), "{}", s.log());
    assert!(
        s.wait_for("--insecure-listen-plaintext: serving plaintext HTTP on non-loopback"),
        "{}",
        s.log()
    );
    let (status, _) = s.terminate();
    assert!(status.success(), "{}", s.log());
}

#[test]
fn tls_flags_are_checked_at_start() {
    let (code, log) = refused(&["--client-cert-auth"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--client-cert-auth needs --trusted-ca-file"),
        "{log}"
    );

    let (code, log) = refused(&["--listen-client-urls", "https://127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("\"https://127.0.0.1:0\" serves TLS: --cert-file and --key-file are required"),
        "{log}"
    );

    let pki = tempfile::tempdir().unwrap();
    let ca = coffer_conformance::pki::Ca::new(pki.path(), "main").unwrap();
    let server = ca.server(pki.path(), "server", "server", 1).unwrap();
    let (cert, key) = (
        server.cert_file.to_str().unwrap(),
        server.key_file.to_str().unwrap(),
    );
    let tls = [
        "--listen-client-urls",
        "https://127.0.0.1:0",
        "--cert-file",
        cert,
        "--key-file",
        key,
    ];
    let mut args = tls.to_vec();
    args.extend([
        "--cipher-suites",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_RC4_128_SHA",
    ]);
    let (code, log) = refused(&args);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--cipher-suites: \"TLS_RSA_WITH_RC4_128_SHA\" is unknown or not supported"),
        "{log}"
    );

    // The key of another certificate.
    let other = ca.server(pki.path(), "other", "other", 2).unwrap();
    let mut args = tls.to_vec();
    args[5] = other.key_file.to_str().unwrap();
    let (code, log) = refused(&args);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("does not go with --cert-file"), "{log}");
}
