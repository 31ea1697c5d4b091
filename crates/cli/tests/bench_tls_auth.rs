//! `coffer bench` with etcd's `--cacert/--cert/--key/--user` against Debian's etcd serving
//! mutual TLS with auth enabled: the client certificate names no user, so only the token from
//! `--user` lets the puts through. Certificates are made with the openssl CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate with CN `nobody`.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=bench test CA",
        ],
    );
    for (name, subject, ext) in [
        (
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "/CN=nobody", "extendedKeyUsage=clientAuth\n"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd on https with --client-cert-auth; killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path());
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let p = |f: &str| dir.path().join(f);
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(p("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .arg("--cert-file")
            .arg(p("server.crt"))
            .arg("--key-file")
            .arg(p("server.key"))
            .arg("--trusted-ca-file")
            .arg(p("ca.crt"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            child,
            endpoint,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcd.ctl(&["endpoint", "health"]).status.success() {
            assert!(Instant::now() < deadline, "etcd over TLS did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        etcd
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcdctl over mutual TLS (with the client certificate).
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .arg("--cacert")
            .arg(self.file("ca.crt"))
            .arg("--cert")
            .arg(self.file("client.crt"))
            .arg("--key")
            .arg(self.file("client.key"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }

    /// `coffer bench --endpoints 127.0.0.1:PORT <tls flags> --output json <args>`.
    fn bench(&self, tls: bool, args: &[&str]) -> Output {
        let host_port = self.endpoint.trim_start_matches("https://");
        let mut cmd = Command::new(BIN);
        cmd.args(["bench", "--endpoints", host_port, "--output", "json"]);
        if tls {
            cmd.arg("--cacert")
                .arg(self.file("ca.crt"))
                .arg("--cert")
                .arg(self.file("client.crt"))
                .arg("--key")
                .arg(self.file("client.key"));
        }
        cmd.args(args).output().unwrap()
    }
}

const PUT: &[&str] = &[
    "put",
    "--total",
    "40",
    "--key-size",
    "8",
    "--val-size",
    "16",
];

#[test]
fn bench_authenticates_over_mutual_tls() {
    let etcd = Etcd::start();
    etcd.ctl_ok(&["user", "add", "root:rootpw"]);
    etcd.ctl_ok(&["user", "add", "bencher:benchpw"]);
    etcd.ctl_ok(&["role", "add", "bench"]);
    etcd.ctl_ok(&[
        "role",
        "grant-permission",
        "bench",
        "readwrite",
        "",
        "--from-key",
    ]);
    etcd.ctl_ok(&["user", "grant-role", "bencher", "bench"]);
    etcd.ctl_ok(&["auth", "enable"]);

    // With a token: every put goes through, over two connections.
    let mut args = vec![
        "--user",
        "bencher:benchpw",
        "--conns",
        "2",
        "--clients",
        "4",
    ];
    args.extend_from_slice(PUT);
    let out = etcd.bench(true, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], 40, "{report}");
    assert_eq!(report["failed"], false, "{report}");
    let out = etcd.ctl(&[
        "--user",
        "root:rootpw",
        "get",
        "",
        "--from-key",
        "--keys-only",
        "-w",
        "json",
    ]);
    let count: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(count["count"].as_u64().unwrap() >= 1, "{count}");

    // Without --user the certificate's CN (no such user) decides: every put is denied.
    let out = etcd.bench(true, PUT);
    assert!(!out.status.success());
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(report["ok"], 0, "{report}");
    assert!(
        report["errors"].to_string().contains("permission denied"),
        "{report}"
    );

    // A wrong password stops the run before any request, with etcd's message.
    let mut args = vec!["--user", "bencher:wrong"];
    args.extend_from_slice(PUT);
    let out = etcd.bench(true, &args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication failed, invalid user ID or password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "the password is not echoed: {stderr}"
    );

    // Plaintext to a TLS port, and a certificate without its key, fail.
    let mut args = vec!["--user", "bencher:benchpw", "--dial-timeout", "1s"];
    args.extend_from_slice(PUT);
    assert!(!etcd.bench(false, &args).status.success());
    let out = Command::new(BIN)
        .args(["bench", "--endpoints", "127.0.0.1:1", "--cert"])
        .arg(etcd.file("client.crt"))
        .args(PUT)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cert and --key go together"),
        "{out:?}"
    );
}

#[test]
fn user_flag_needs_a_password() {
    let out = Command::new(BIN)
        .args(["bench", "--user", "justaname", "put", "--total", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected name:password"),
        "{out:?}"
    );
}
