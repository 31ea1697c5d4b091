//! Mutual TLS side by side: Debian's etcd and `coffer serve` with the same certificates and
//! etcd's flags (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`);
//! etcdctl with `--cacert/--cert/--key` gets the same answers from both, and without a client
//! certificate is refused by both.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test tls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_conformance::etcdctl;
use coffer_conformance::pki::Ca;
use coffer_conformance::process::{coffer_binary, etcd_binary, free_port};

/// A server process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    Proc(cmd.spawn().unwrap())
}

/// etcdctl against `endpoint` with the TLS flags `tls`.
fn ctl(endpoint: &str, tls: &[&str], args: &[&str]) -> etcdctl::Output {
    let mut all = tls.to_vec();
    all.extend_from_slice(args);
    etcdctl::run(endpoint, &all, None).unwrap()
}

fn wait_ready(endpoint: &str, tls: &[&str], log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ctl(endpoint, tls, &["endpoint", "health"]).code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn etcdctl_over_mutual_tls_answers_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "main").unwrap();
    let server = ca.server(d, "server", "server", 1).unwrap();
    let user = ca.client(d, "client", "root", 2, false).unwrap();
    let tls_server = [
        "--cert-file",
        server.cert_file.to_str().unwrap(),
        "--key-file",
        server.key_file.to_str().unwrap(),
        "--trusted-ca-file",
        ca.cert_file.to_str().unwrap(),
        "--client-cert-auth",
    ];

    let etcd_url = format!("https://127.0.0.1:{}", free_port().unwrap());
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let mut cmd = Command::new(etcd_binary());
    cmd.args(["--name", "tls", "--data-dir"])
        .arg(d.join("etcd-data"))
        .args(["--listen-client-urls", &etcd_url])
        .args(["--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .args(tls_server);
    let etcd_log = d.join("etcd.log");
    let _etcd = spawn(cmd, &etcd_log);

    let coffer_url = format!("https://127.0.0.1:{}", free_port().unwrap());
    let mut cmd = Command::new(coffer_binary().unwrap());
    cmd.args(["serve", "--name", "tls", "--data-dir"])
        .arg(d.join("coffer-data"))
        .arg("--default-key-file")
        .arg(d.join("coffer.key"))
        .args(["--listen-client-urls", &coffer_url])
        .args(tls_server);
    let coffer_log = d.join("coffer.log");
    let _coffer = spawn(cmd, &coffer_log);

    let full = [
        "--cacert",
        ca.cert_file.to_str().unwrap(),
        "--cert",
        user.cert_file.to_str().unwrap(),
        "--key",
        user.key_file.to_str().unwrap(),
    ];
    wait_ready(&etcd_url, &full, &etcd_log);
    wait_ready(&coffer_url, &full, &coffer_log);

    for url in [&etcd_url, &coffer_url] {
        let put = ctl(url, &full, &["put", "greeting", "hello"]);
        assert_eq!(
            (put.code, put.stdout.as_str()),
            (0, "OK\n"),
            "{url}: {put:?}"
        );
        let get = ctl(url, &full, &["get", "greeting"]);
        assert_eq!(
            (get.code, get.stdout.as_str()),
            (0, "greeting\nhello\n"),
            "{url}: {get:?}"
        );
        // Only the CA: no client certificate, refused at the handshake.
        let ca_only = ["--cacert", ca.cert_file.to_str().unwrap()];
        let get = ctl(url, &ca_only, &["get", "greeting", "--dial-timeout=2s"]);
        assert_ne!(get.code, 0, "{url}: {get:?}");
        assert!(!get.stdout.contains("hello"), "{url}: {get:?}");
    }
}
