//! `coffer certs` as a process: `init` writes kubeadm's layout with private keys, a chain
//! `openssl verify` accepts and the names kubeadm uses; a real Debian etcd serves with the
//! server certificate and `--client-cert-auth`, and etcdctl reaches it with the health-check
//! certificate and with one made by `certs client` (and not without a client certificate);
//! `check` warns with exit 2 on a certificate near expiry; nothing is overwritten without
//! `--force`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

fn coffer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd, killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn init_writes_kubeadms_layout_and_etcd_serves_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    let out = coffer(&[
        "certs",
        "init",
        "--dir",
        d,
        "--hosts",
        "etcd.example,10.9.8.7",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    for flag in [
        "--cert-file",
        "--key-file",
        "--trusted-ca-file",
        "--client-cert-auth",
        "--listen-client-urls https://etcd.example:2379",
        "--etcd-servers=https://etcd.example:2379",
        "--etcd-cafile=",
        "--etcd-certfile=",
        "--etcd-keyfile=",
    ] {
        assert!(printed.contains(flag), "next steps lack {flag}:\n{printed}");
    }

    let f = |p: &str| dir.join(p);
    for base in [
        "etcd/ca",
        "etcd/server",
        "etcd/healthcheck-client",
        "apiserver-etcd-client",
    ] {
        assert_eq!(mode(&f(&format!("{base}.key"))), 0o600, "{base}.key");
        assert_eq!(mode(&f(&format!("{base}.crt"))), 0o644, "{base}.crt");
        let key = std::fs::read_to_string(f(&format!("{base}.key"))).unwrap();
        assert!(
            !printed.contains(key.lines().nth(1).unwrap()),
            "a key was printed"
        );
    }
    let ca = f("etcd/ca.crt");
    let ca = ca.to_str().unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        ca,
        f("etcd/server.crt").to_str().unwrap(),
        f("etcd/healthcheck-client.crt").to_str().unwrap(),
        f("apiserver-etcd-client.crt").to_str().unwrap(),
    ]);
    assert_eq!(verified.matches(": OK").count(), 3, "{verified}");

    let show = |p: &str| openssl(&["x509", "-noout", "-text", "-in", f(p).to_str().unwrap()]);
    let ca_text = show("etcd/ca.crt");
    assert!(ca_text.contains("Subject: CN = etcd-ca"), "{ca_text}");
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign"), "{ca_text}");
    let server = show("etcd/server.crt");
    assert!(server.contains("Subject: CN = etcd.example"), "{server}");
    for san in [
        "DNS:etcd.example",
        "IP Address:10.9.8.7",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(server.contains(san), "server SANs lack {san}:\n{server}");
    }
    assert!(server.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    assert!(!server.contains("CA:TRUE"));
    for (p, cn) in [
        (
            "etcd/healthcheck-client.crt",
            "kube-etcd-healthcheck-client",
        ),
        ("apiserver-etcd-client.crt", "kube-apiserver-etcd-client"),
    ] {
        let t = show(p);
        assert!(t.contains(&format!("Subject: CN = {cn}")), "{t}");
        assert!(t.contains("TLS Web Client Authentication"), "{t}");
        assert!(!t.contains("TLS Web Server Authentication"), "{t}");
    }
    // Validity: the CA 10 years, leaves 1 year (openssl's -checkend takes seconds).
    let ends_after = |p: &str, days: u64| {
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-checkend",
                &(days * 86_400).to_string(),
                "-in",
            ])
            .arg(f(p))
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(ends_after("etcd/ca.crt", 3640) && !ends_after("etcd/ca.crt", 3660));
    assert!(ends_after("etcd/server.crt", 360) && !ends_after("etcd/server.crt", 370));

    // A client for an etcd user.
    let out = coffer(&["certs", "client", "backup", "--dir", d]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&f("etcd/client-backup.key")), 0o600);
    let t = show("etcd/client-backup.crt");
    assert!(t.contains("Subject: CN = backup"), "{t}");
    openssl(&[
        "verify",
        "-CAfile",
        ca,
        f("etcd/client-backup.crt").to_str().unwrap(),
    ]);

    // A real etcd with the server certificate, requiring client certificates.
    let port = free_port();
    let peer = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = tmp.path().join("etcd-data");
    let _etcd = Etcd(
        Command::new("etcd")
            .args(["--name", "certs", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("certs={peer_url}")])
            .arg("--cert-file")
            .arg(f("etcd/server.crt"))
            .arg("--key-file")
            .arg(f("etcd/server.key"))
            .arg("--trusted-ca-file")
            .arg(f("etcd/ca.crt"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed"),
    );
    let etcdctl = |client: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &url,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "3s",
            ])
            .arg("--cacert")
            .arg(f("etcd/ca.crt"));
        if let Some(c) = client {
            cmd.arg("--cert")
                .arg(f(&format!("{c}.crt")))
                .arg("--key")
                .arg(f(&format!("{c}.key")));
        }
        cmd.args(args).output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "health"]);
        if o.status.success() {
            assert!(text(&o).contains("is healthy"), "{}", text(&o));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became healthy: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = etcdctl(Some("etcd/client-backup"), &["put", "/k", "v"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = etcdctl(
        Some("apiserver-etcd-client"),
        &["get", "/k", "--print-value-only"],
    );
    assert!(o.status.success() && text(&o).contains('v'), "{}", text(&o));
    // Without a client certificate etcd refuses: the checks above are not vacuous.
    let o = etcdctl(None, &["get", "/k"]);
    assert!(
        !o.status.success(),
        "etcd served a client without a certificate"
    );
}

#[test]
fn existing_files_are_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(coffer(&["certs", "init", "--dir", d]).status.success());
    let ca = std::fs::read(tmp.path().join("etcd/ca.crt")).unwrap();
    let out = coffer(&["certs", "init", "--dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("refusing to overwrite"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read(tmp.path().join("etcd/ca.crt")).unwrap(), ca);
    assert!(coffer(&["certs", "client", "ops", "--dir", d])
        .status
        .success());
    let out = coffer(&["certs", "client", "ops", "--dir", d]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(tmp.path().join("etcd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");

    let out = coffer(&["certs", "init", "--dir", d, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(std::fs::read(tmp.path().join("etcd/ca.crt")).unwrap(), ca);
    assert_eq!(mode(&tmp.path().join("etcd/ca.key")), 0o600);
}

#[test]
fn check_warns_and_exits_2_when_a_certificate_expires_soon() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(coffer(&["certs", "init", "--dir", d]).status.success());
    let out = coffer(&["certs", "check", "--dir", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out).matches("ok ").count(), 4, "{}", text(&out));

    let out = coffer(&["certs", "client", "short", "--dir", d, "--days", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = coffer(&["certs", "check", "--dir", d, "--warn-within", "30d"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expires soon"), "{}", text(&out));
    assert!(text(&out).contains("warning:"), "{}", text(&out));
    // A narrower window does not warn.
    let out = coffer(&["certs", "check", "--dir", d, "--warn-within", "5d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = coffer(&["certs", "check", "--dir", d, "--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 5);
    let short = certs
        .iter()
        .find(|c| c["subject"] == "CN=short")
        .expect("the short-lived client is listed");
    assert_eq!(short["status"], "expires soon");
    assert!(short["days_left"].as_i64().unwrap() <= 10);
    let ca = certs.iter().find(|c| c["subject"] == "CN=etcd-ca").unwrap();
    assert!(ca["days_left"].as_i64().unwrap() >= 3649);

    // No certificates at all is an error, not a clean bill.
    let empty = tempfile::tempdir().unwrap();
    let out = coffer(&["certs", "check", "--dir", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
