//! Mutual TLS side by side: Debian's etcd and `coffer serve` with the same certificates and
//! etcd's flags (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`);
//! etcdctl with `--cacert/--cert/--key` gets the same answers from both, and without a client
//! certificate is refused by both.
//!
//! With auth on (`auth_over_mutual_tls_answers_alike`): a `--no-password` user is named by the
//! Common Name of the client certificate, a certificate naming no user is denied, a password
//! token wins over the certificate, and every etcdctl step (stdout, stderr, exit code) is the
//! same on both servers. `/health` on the TLS client port still answers with auth on.
//! Expected differences from etcd 3.4.23 are listed in [`EXPECTED`].
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test tls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::TcpStream;

use coffer_conformance::etcdctl;
use coffer_conformance::pki::{Ca, Issued};
use coffer_conformance::process::{coffer_binary, etcd_binary, free_port};
use coffer_conformance::transcript::{
    apply_expected, compare, ExpectedDifference, Step, Transcript,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{json, Value};

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

/// Waits until `endpoint` answers `endpoint health`; false if the process exited first.
fn wait_ready(endpoint: &str, tls: &[&str], proc: &mut Proc, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ctl(endpoint, tls, &["endpoint", "health"]).code == 0 {
            return true;
        }
        if let Ok(Some(_)) = proc.0.try_wait() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the server `command(dir, url)` makes on a fresh https port and data directory,
/// again on new ones when a port was taken meanwhile (ports come from [`free_port`]).
fn start_server(
    d: &Path,
    name: &str,
    tls: &[&str],
    command: impl Fn(&Path, &str) -> Command,
) -> (Proc, String) {
    for attempt in 0..5 {
        let url = format!("https://127.0.0.1:{}", free_port().unwrap());
        let log = d.join(format!("{name}-{attempt}.log"));
        let mut proc = spawn(command(&d.join(format!("{name}-{attempt}")), &url), &log);
        if wait_ready(&url, tls, &mut proc, &log) {
            return (proc, url);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("address already in use"),
            "{name} exited:\n{text}"
        );
    }
    panic!("{name}: every port tried was taken");
}

/// etcdctl's TLS flags for a client presenting `cert`.
fn client_flags<'a>(ca: &'a Ca, cert: &'a Issued) -> [&'a str; 6] {
    [
        "--cacert",
        ca.cert_file.to_str().unwrap(),
        "--cert",
        cert.cert_file.to_str().unwrap(),
        "--key",
        cert.key_file.to_str().unwrap(),
    ]
}

/// etcd and Coffer on https with mutual TLS, both ready for `ready_cert`.
struct Pair {
    etcd_url: String,
    coffer_url: String,
    _etcd: Proc,
    _coffer: Proc,
}

fn start_pair(d: &Path, ca: &Ca, ready_cert: &Issued) -> Pair {
    let server = ca.server(d, "server", "server", 1).unwrap();
    let tls_server = [
        "--cert-file",
        server.cert_file.to_str().unwrap(),
        "--key-file",
        server.key_file.to_str().unwrap(),
        "--trusted-ca-file",
        ca.cert_file.to_str().unwrap(),
        "--client-cert-auth",
    ];

    let ready = client_flags(ca, ready_cert);
    let (etcd, etcd_url) = start_server(d, "etcd", &ready, |data, url| {
        let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", "tls", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", url])
            .args(["--advertise-client-urls", url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}")])
            .args(tls_server);
        cmd
    });
    let (coffer, coffer_url) = start_server(d, "coffer", &ready, |data, url| {
        let mut cmd = Command::new(coffer_binary().unwrap());
        cmd.args(["serve", "--name", "tls", "--data-dir"])
            .arg(data)
            .arg("--default-key-file")
            .arg(d.join("coffer.key"))
            .args(["--listen-client-urls", url])
            .args(tls_server);
        cmd
    });
    Pair {
        etcd_url,
        coffer_url,
        _etcd: etcd,
        _coffer: coffer,
    }
}

#[test]
fn etcdctl_over_mutual_tls_answers_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "main").unwrap();
    let user = ca.client(d, "client", "root", 2, false).unwrap();
    let pair = start_pair(d, &ca, &user);
    let full = client_flags(&ca, &user);

    for url in [&pair.etcd_url, &pair.coffer_url] {
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

const SCENARIO: &str = "tls_auth";

/// Where etcd 3.4.23 answers the auth-over-mTLS flow differently from 3.5 (and Coffer).
const EXPECTED: &[ExpectedDifference] = &[
    ExpectedDifference {
        scenario: SCENARIO,
        step: "health with alice certificate",
        issue: "etcd-io/etcd#11983",
        why: "3.5 added `reason` to the /health body",
        expected_from_etcd: health_reason,
    },
    ExpectedDifference {
        scenario: SCENARIO,
        step: "health with stranger certificate",
        issue: "etcd-io/etcd#11983",
        why: "3.5 added `reason` to the /health body",
        expected_from_etcd: health_reason,
    },
    ExpectedDifference {
        scenario: SCENARIO,
        step: "health without certificate refused",
        issue: "golang/go#52113",
        why: "etcd 3.4.23 is built with go1.19, whose TLS 1.3 server answers a missing client \
              certificate with bad_certificate; Go 1.21+ (so etcd 3.5's builds) and Coffer send \
              RFC 8446's certificate_required",
        expected_from_etcd: |v| {
            if v["error"] == "received fatal alert: BadCertificate" {
                v["error"] = json!("received fatal alert: CertificateRequired");
            }
        },
    },
];

/// etcd 3.4's healthy `/health` body as 3.5 writes it.
fn health_reason(v: &mut Value) {
    if v["body"] == r#"{"health":"true"}"# {
        v["body"] = json!(r#"{"health":"true","reason":""}"#);
    }
}

/// The certificates of the auth flow.
struct Clients {
    ready: Issued,
    alice: Issued,
    stranger: Issued,
}

/// Runs etcdctl steps against one endpoint, each with the TLS flags of one client.
struct Flow<'a> {
    endpoint: String,
    ca: &'a Ca,
    transcript: Transcript,
}

impl Flow<'_> {
    /// Runs `etcdctl <tls of cert> args...` (only `--cacert` when `cert` is `None`) and records
    /// the normalized answer under `label`.
    fn run(&mut self, label: &str, cert: Option<&Issued>, args: &[&str]) -> Value {
        let ca_only = ["--cacert", self.ca.cert_file.to_str().unwrap()];
        let with_cert;
        let tls: &[&str] = match cert {
            Some(c) => {
                with_cert = client_flags(self.ca, c);
                &with_cert
            }
            None => &ca_only,
        };
        let out = ctl(&self.endpoint, tls, args);
        let answer = out.normalized(&self.endpoint);
        let cn = match cert {
            Some(c) if c.cert_file.ends_with("alice.pem") => "alice",
            Some(_) => "stranger",
            None => "none",
        };
        self.record(
            label,
            json!({"certificate": cn, "args": args}),
            answer.clone(),
        );
        answer
    }

    fn record(&mut self, label: &str, request: Value, answer: Value) {
        assert!(
            !self.transcript.steps.iter().any(|s| s.label == label),
            "duplicate label {label:?}"
        );
        self.transcript.steps.push(Step {
            label: label.to_owned(),
            request,
            answer,
        });
    }
}

const ROOT: &str = "--user=root:R00t-tls-7";

/// The flow: users and a role set up through the alice certificate while auth is off, then
/// requests as the certificate's Common Name, as an unknown name, with a password token,
/// without a certificate, with a wrong password, and `auth disable`.
fn auth_flow(endpoint: &str, ca: &Ca, c: &Clients) -> Transcript {
    let mut f = Flow {
        endpoint: endpoint.to_owned(),
        ca,
        transcript: Transcript::default(),
    };
    let (alice, stranger) = (Some(&c.alice), Some(&c.stranger));
    f.run("put /a/1", alice, &["put", "/a/1", "one"]);
    f.run("put /b", alice, &["put", "/b", "bee"]);
    f.run("user add root", alice, &["user", "add", "root:R00t-tls-7"]);
    f.run(
        "user add alice --no-password",
        alice,
        &["user", "add", "alice", "--no-password"],
    );
    f.run("role add rw", alice, &["role", "add", "rw"]);
    f.run(
        "grant readwrite /a/ prefix",
        alice,
        &[
            "role",
            "grant-permission",
            "rw",
            "readwrite",
            "/a/",
            "--prefix",
        ],
    );
    f.run(
        "grant-role alice rw",
        alice,
        &["user", "grant-role", "alice", "rw"],
    );
    f.run(
        "grant-role root root",
        alice,
        &["user", "grant-role", "root", "root"],
    );
    f.run("user get alice", alice, &["user", "get", "alice"]);
    f.run("auth enable", alice, &["auth", "enable"]);

    // The certificate names alice: no --user.
    f.run("cn alice put /a/2", alice, &["put", "/a/2", "two"]);
    f.run(
        "cn alice get /a/ prefix",
        alice,
        &["get", "/a/", "--prefix"],
    );
    f.run("cn alice put /b denied", alice, &["put", "/b", "x"]);
    f.run("cn alice get /b denied", alice, &["get", "/b"]);
    f.run("cn alice del /a/1", alice, &["del", "/a/1"]);
    f.run("cn alice user list denied", alice, &["user", "list"]);
    f.run("cn alice auth disable denied", alice, &["auth", "disable"]);

    f.run("cn alice user get alice", alice, &["user", "get", "alice"]);
    f.run("cn alice role get rw", alice, &["role", "get", "rw"]);
    f.run(
        "cn alice endpoint hashkv",
        alice,
        &["endpoint", "hashkv", "-w", "json"],
    );

    // A certificate whose Common Name is no user.
    f.run("cn stranger get /a/2 denied", stranger, &["get", "/a/2"]);
    f.run(
        "cn stranger put /a/3 denied",
        stranger,
        &["put", "/a/3", "x"],
    );
    f.run("cn stranger get /b denied", stranger, &["get", "/b"]);
    f.run(
        "cn stranger user get alice",
        stranger,
        &["user", "get", "alice"],
    );

    // HTTP/1.1 on the TLS client port with auth on: a certificate, no token.
    f.record(
        "health with alice certificate",
        json!({"certificate": "alice", "GET": "/health"}),
        health(
            endpoint,
            ca.client_config(Some(&c.alice), &[b"http/1.1"]).unwrap(),
        ),
    );
    f.record(
        "health with stranger certificate",
        json!({"certificate": "stranger", "GET": "/health"}),
        health(
            endpoint,
            ca.client_config(Some(&c.stranger), &[b"http/1.1"]).unwrap(),
        ),
    );
    f.record(
        "health without certificate refused",
        json!({"certificate": "none", "GET": "/health"}),
        health(endpoint, ca.client_config(None, &[b"http/1.1"]).unwrap()),
    );

    // A password token wins over the certificate's name.
    f.run("root token put /b", alice, &[ROOT, "put", "/b", "root"]);
    f.run("root token get /b", alice, &[ROOT, "get", "/b"]);
    f.run("root token user list", alice, &[ROOT, "user", "list"]);
    f.run(
        "root token with stranger certificate",
        stranger,
        &[ROOT, "get", "/a/2"],
    );
    f.run(
        "alice password refused",
        alice,
        &["--user=alice:anything", "get", "/a/2"],
    );

    // Transport and password failures with auth on.
    f.run(
        "no certificate refused",
        None,
        &["get", "/a/2", "--dial-timeout=2s"],
    );
    f.run(
        "wrong root password",
        alice,
        &["--user=root:wrong", "get", "/b"],
    );
    f.run("unknown user", alice, &["--user=nobody:pw", "get", "/b"]);

    f.run("auth disable", alice, &[ROOT, "auth", "disable"]);
    f.run("stranger after disable", stranger, &["get", "/b"]);
    f.transcript
}

#[test]
fn auth_over_mutual_tls_answers_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "main").unwrap();
    let clients = Clients {
        ready: ca.client(d, "ready", "ready", 2, false).unwrap(),
        alice: ca.client(d, "alice", "alice", 3, false).unwrap(),
        stranger: ca.client(d, "stranger", "stranger", 4, false).unwrap(),
    };
    let pair = start_pair(d, &ca, &clients.ready);

    let etcd = auth_flow(&pair.etcd_url, &ca, &clients);
    let coffer = auth_flow(&pair.coffer_url, &ca, &clients);
    // The flow means something on etcd itself, before it is compared.
    let answer = |label: &str| {
        let step = etcd.steps.iter().find(|s| s.label == label).unwrap();
        (step.answer["exit"].clone(), step.answer["stdout"].clone())
    };
    assert_eq!(answer("cn alice put /a/2"), (json!(0), json!("OK")));
    assert_eq!(answer("cn alice put /b denied").0, json!(1));
    assert_eq!(answer("cn stranger get /a/2 denied").0, json!(1));
    assert_eq!(answer("root token put /b"), (json!(0), json!("OK")));
    assert_eq!(answer("no certificate refused").0, json!(1));
    let health = etcd
        .steps
        .iter()
        .find(|s| s.label.starts_with("health with alice"));
    assert_eq!(health.unwrap().answer["status"], json!(200));

    let expected = apply_expected(SCENARIO, &etcd, EXPECTED).unwrap();
    if let Err(report) = compare(
        SCENARIO,
        "etcd 3.4.23 (3.5-corrected)",
        &expected,
        "coffer",
        &coffer,
    ) {
        panic!("{report}");
    }
}

/// `GET /health` over HTTP/1.1 and TLS at `url` (`https://127.0.0.1:PORT`) with no token:
/// `{"status": 200, "body": ...}`, or `{"error": ...}` when the connection fails (a TLS alert
/// from a refused handshake arrives here, on the first read under TLS 1.3).
fn health(url: &str, config: Arc<ClientConfig>) -> Value {
    let addr = url.trim_start_matches("https://");
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let result = tls
        .write_all(request.as_bytes())
        .and_then(|()| tls.read_to_end(&mut answer));
    if let Err(e) = result {
        return json!({"error": e.to_string()});
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{url}: not an HTTP answer: {text}"));
    json!({"status": status, "body": body.trim_end()})
}
