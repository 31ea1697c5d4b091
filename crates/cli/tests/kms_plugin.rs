//! `coffer kms-plugin` as a real process against a fresh SoftHSM2 token per test (its own
//! `SOFTHSM2_CONF` and token directory in a tempdir), spoken to over its unix socket by a
//! client generated from the KMS v2 proto that checks every field kube-apiserver checks.
//!
//! SoftHSM2 is required: without it (`apt-get install softhsm2 opensc`) these tests fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_kms::endpoint::SocketAddress;
use coffer_kms::plugin::softhsm::{SoftHsmToken, SOFTHSM2_MODULE};
use coffer_kms::proto::v2::key_management_service_client::KeyManagementServiceClient;
use coffer_kms::proto::v2::{
    DecryptRequest, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use tonic::transport::Channel;

const MODULE: &str = SOFTHSM2_MODULE;
const PIN: &str = "24681357";
const SO_PIN: &str = "86421357";
const TOKEN: &str = "coffer-test";
const KEY_LABEL: &str = "coffer-kms-kek";
const FORMAT_ANNOTATION: &str = "format.kms.coffer.dev";

fn coffer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
}

/// A fresh SoftHSM2 token in its own directory.
struct Hsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    slot: Option<u64>,
}

impl Hsm {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = SoftHsmToken::init(dir.path(), TOKEN, PIN, SO_PIN).unwrap();
        Hsm {
            dir,
            conf: token.conf,
            slot: token.slot,
        }
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// `coffer kms-plugin` args naming this token, the PIN in `COFFER_TEST_PIN`.
    fn plugin_cmd(&self, sub: &[&str]) -> Command {
        let mut c = coffer();
        c.env("SOFTHSM2_CONF", &self.conf)
            .env("COFFER_TEST_PIN", PIN)
            .arg("kms-plugin")
            .args(sub)
            .args(["--pkcs11-module", MODULE, "--token-label", TOKEN])
            .args(["--pin-env", "COFFER_TEST_PIN"]);
        c
    }

    fn rotate(&self) -> String {
        let out = self.plugin_cmd(&["rotate"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let key_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(key_id.starts_with("coffer-pkcs11-"), "{key_id}");
        key_id
    }

    fn pkcs11_tool(&self, args: &[&str]) -> Output {
        self.tool("pkcs11-tool")
            .args([
                "--module",
                MODULE,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
            ])
            .args(args)
            .output()
            .expect("pkcs11-tool cannot run: apt-get install opensc")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("kms.sock")
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running plugin.
struct Plugin {
    child: Option<Child>,
    endpoint: String,
    metrics_port: u16,
    log: PathBuf,
}

impl Plugin {
    /// Starts `cmd` with `--listen endpoint` and a metrics port, and waits for Status.
    async fn start(mut cmd: Command, endpoint: &str, log: PathBuf) -> Plugin {
        // A port free now (the plugin binds it a moment later).
        let metrics_port = coffer_conformance::process::free_port().unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .args(["--listen", endpoint])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{metrics_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut plugin = Plugin {
            child: Some(child),
            endpoint: endpoint.to_owned(),
            metrics_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = plugin.try_client().await {
                // Any answer of the plugin's own, an error included (a plugin without a key
                // yet answers Unavailable); a transport error carries its cause as source.
                match c.status(StatusRequest {}).await {
                    Ok(_) => return plugin,
                    Err(e) if std::error::Error::source(&e).is_none() => return plugin,
                    Err(_) => {}
                }
            }
            if let Some(status) = plugin.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("plugin exited with {status}: {}", plugin.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "plugin not ready: {}",
                plugin.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn try_client(
        &self,
    ) -> Result<KeyManagementServiceClient<Channel>, tonic::transport::Error> {
        let address = SocketAddress::parse(&self.endpoint).unwrap();
        let channel = tonic::transport::Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let address = address.clone();
                async move { address.connect().await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await?;
        Ok(KeyManagementServiceClient::new(channel))
    }

    async fn client(&self) -> KeyManagementServiceClient<Channel> {
        self.try_client().await.unwrap()
    }

    /// GET on the metrics listener: (status code, body).
    fn get(&self, path: &str) -> (u16, String) {
        let answer = coffer_conformance::http::http(
            &format!("127.0.0.1:{}", self.metrics_port),
            "GET",
            path,
        );
        (answer.status, answer.body)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        child.wait().unwrap()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// kube-apiserver's `IsFullyQualifiedDomainName`: at least two labels, a lower-case RFC 1123
/// subdomain of at most 253 characters, one trailing dot allowed.
fn is_fqdn(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The checks kube-apiserver makes on a Status answer.
fn check_status(s: &StatusResponse) {
    assert_eq!(s.version, "v2");
    assert!(!s.key_id.is_empty() && s.key_id.len() <= 1024, "{s:?}");
}

/// The checks kube-apiserver makes on an Encrypt answer.
fn check_encrypt(r: &EncryptResponse, status_key_id: &str) {
    assert!(!r.ciphertext.is_empty() && r.ciphertext.len() <= 1024);
    assert_eq!(r.key_id, status_key_id, "Encrypt key_id must equal Status'");
    let mut total = 0;
    for (k, v) in &r.annotations {
        assert!(is_fqdn(k), "annotation key {k:?} is not a FQDN");
        total += k.len() + v.len();
    }
    assert!(total <= 32768);
}

async fn status(c: &mut KeyManagementServiceClient<Channel>) -> StatusResponse {
    let s = c.status(StatusRequest {}).await.unwrap().into_inner();
    check_status(&s);
    s
}

async fn encrypt(c: &mut KeyManagementServiceClient<Channel>, plaintext: &[u8]) -> EncryptResponse {
    let s = status(c).await;
    assert_eq!(s.healthz, "ok");
    let r = c
        .encrypt(EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: "test-uid".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    check_encrypt(&r, &s.key_id);
    r
}

fn decrypt_request(r: &EncryptResponse) -> DecryptRequest {
    DecryptRequest {
        ciphertext: r.ciphertext.clone(),
        uid: "test-uid".to_owned(),
        key_id: r.key_id.clone(),
        annotations: r.annotations.clone(),
    }
}

async fn decrypt(c: &mut KeyManagementServiceClient<Channel>, r: &EncryptResponse) -> Vec<u8> {
    c.decrypt(decrypt_request(r))
        .await
        .unwrap()
        .into_inner()
        .plaintext
}

/// Polls Status until `pred` holds (the plugin's health cache is 5 s).
async fn wait_status(
    c: &mut KeyManagementServiceClient<Channel>,
    pred: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(c).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "Status never changed: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn socket_endpoint(hsm: &Hsm) -> String {
    format!("unix://{}", hsm.socket().display())
}

/// The plugin on the token's socket file, ready.
async fn serve(hsm: &Hsm) -> Plugin {
    Plugin::start(
        hsm.plugin_cmd(&[]),
        &socket_endpoint(hsm),
        hsm.dir.path().join("plugin.log"),
    )
    .await
}

#[tokio::test]
async fn generates_wraps_and_unwraps_and_stops_cleanly() {
    let hsm = Hsm::new();
    let key_id = hsm.rotate();
    let plugin = serve(&hsm).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(hsm.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut c = plugin.client().await;
    let s = status(&mut c).await;
    assert_eq!(s.healthz, "ok");
    assert_eq!(s.key_id, key_id);

    let a = encrypt(&mut c, &[1u8; 32]).await;
    let b = encrypt(&mut c, &[2u8; 32]).await;
    let a2 = encrypt(&mut c, &[1u8; 32]).await;
    assert_ne!(a.ciphertext, b.ciphertext);
    assert_ne!(a.ciphertext, a2.ciphertext, "wrapping is randomised");
    assert_eq!(
        a.annotations.get(FORMAT_ANNOTATION).map(Vec::as_slice),
        Some(&b"coffer-pkcs11-aes256gcm-v1"[..])
    );
    assert_eq!(decrypt(&mut c, &a).await, vec![1u8; 32]);
    assert_eq!(decrypt(&mut c, &b).await, vec![2u8; 32]);

    // Refusals, each with a code that means something.
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.unwrap_err().code();
    let mut unknown = decrypt_request(&a);
    unknown.key_id = "coffer-pkcs11-1-00000000000000000000000000000000".to_owned();
    assert_eq!(code(c.decrypt(unknown).await), tonic::Code::NotFound);
    let mut tampered = decrypt_request(&a);
    let last = tampered.ciphertext.len() - 1;
    tampered.ciphertext[last] ^= 1;
    assert_eq!(
        code(c.decrypt(tampered).await),
        tonic::Code::InvalidArgument
    );
    let mut moved = decrypt_request(&a);
    moved.ciphertext = b.ciphertext.clone();
    assert_eq!(decrypt(&mut c, &b).await, vec![2u8; 32]);
    assert_eq!(
        c.decrypt(moved).await.unwrap().into_inner().plaintext,
        vec![2u8; 32]
    );
    let mut other_format = decrypt_request(&a);
    other_format.annotations =
        HashMap::from([(FORMAT_ANNOTATION.to_owned(), b"something-else".to_vec())]);
    assert_eq!(
        code(c.decrypt(other_format).await),
        tonic::Code::InvalidArgument
    );
    let mut unannotated = decrypt_request(&a);
    unannotated.annotations.clear();
    assert_eq!(
        code(c.decrypt(unannotated).await),
        tonic::Code::InvalidArgument
    );
    let empty = EncryptRequest {
        plaintext: vec![],
        uid: "u".to_owned(),
    };
    assert_eq!(
        c.encrypt(empty).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // Metrics and health.
    let (code, body) = plugin.get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, metrics) = plugin.get("/metrics");
    assert_eq!(code, 200);
    for want in [
        "coffer_kms_plugin_requests_total{result=\"ok\",rpc=\"Encrypt\"} 3",
        "coffer_kms_plugin_requests_total{result=\"not_found\",rpc=\"Decrypt\"} 1",
        "coffer_kms_plugin_healthy 1",
        "coffer_kms_plugin_request_duration_seconds_count{rpc=\"Decrypt\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    assert!(!metrics.contains(&key_id), "key_ids only as hashes");

    drop(c);
    let log = plugin.log_text();
    let status = plugin.stop();
    assert!(status.success(), "{status}");
    assert!(!hsm.socket().exists(), "the socket file is removed on stop");
    assert!(!log.contains(PIN), "the PIN is never logged");
    assert!(
        log.contains("uid=test-uid"),
        "calls are logged with their uid: {log}"
    );
}

#[tokio::test]
async fn rotation_is_noticed_and_old_ciphertexts_still_decrypt() {
    let hsm = Hsm::new();
    let first = hsm.rotate();
    let plugin = serve(&hsm).await;
    let mut c = plugin.client().await;
    let old = encrypt(&mut c, &[3u8; 32]).await;
    assert_eq!(old.key_id, first);

    let second = hsm.rotate();
    assert_ne!(second, first);
    let s = wait_status(&mut c, |s| s.key_id == second).await;
    assert_eq!(s.healthz, "ok");
    let new = encrypt(&mut c, &[4u8; 32]).await;
    assert_eq!(new.key_id, second);
    assert_eq!(decrypt(&mut c, &old).await, vec![3u8; 32]);
    assert_eq!(decrypt(&mut c, &new).await, vec![4u8; 32]);

    let keys = hsm.plugin_cmd(&["keys"]).output().unwrap();
    assert!(keys.status.success(), "{}", text(&keys));
    assert_eq!(
        String::from_utf8(keys.stdout).unwrap(),
        format!("{first}\n{second}\n")
    );
}

#[test]
fn the_token_is_found_by_slot_and_a_missing_one_is_named() {
    let hsm = Hsm::new();
    let key_id = hsm.rotate();
    let slot = hsm.slot.expect("softhsm2-util names the slot").to_string();
    let keys = |token: &[&str]| {
        coffer()
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("COFFER_TEST_PIN", PIN)
            .args(["kms-plugin", "keys", "--pkcs11-module", MODULE])
            .args(token)
            .args(["--pin-env", "COFFER_TEST_PIN"])
            .output()
            .unwrap()
    };
    let out = keys(&["--slot", &slot]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{key_id}\n")
    );
    let out = keys(&["--token-label", "no-such-token"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("\"no-such-token\" not found"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn restart_keeps_the_key_id_and_old_values() {
    let hsm = Hsm::new();
    hsm.rotate();
    let endpoint = socket_endpoint(&hsm);
    let log = hsm.dir.path().join("plugin.log");
    let plugin = Plugin::start(hsm.plugin_cmd(&[]), &endpoint, log.clone()).await;
    let mut c = plugin.client().await;
    let sealed = encrypt(&mut c, &[5u8; 32]).await;
    drop(c);
    assert!(plugin.stop().success());

    let plugin = Plugin::start(hsm.plugin_cmd(&[]), &endpoint, log).await;
    let mut c = plugin.client().await;
    assert_eq!(status(&mut c).await.key_id, sealed.key_id);
    assert_eq!(decrypt(&mut c, &sealed).await, vec![5u8; 32]);
}

#[tokio::test]
async fn a_wrong_pin_is_a_clear_error() {
    let hsm = Hsm::new();
    hsm.rotate();
    let wrong = "97531864";
    let out = hsm
        .plugin_cmd(&[])
        .env("COFFER_TEST_PIN", wrong)
        .args(["--listen", &socket_endpoint(&hsm)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("PIN is incorrect"), "{all}");
    assert!(all.contains(TOKEN), "names the token: {all}");
    assert!(!all.contains(wrong) && !all.contains(PIN), "{all}");
    assert!(!hsm.socket().exists());

    // From a file too: first refused for its mode (as written with the default umask), then
    // read and refused by the token.
    let pin_file = hsm.dir.path().join("pin");
    std::fs::write(&pin_file, format!("{wrong}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keys_with_pin_file = || {
        coffer()
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args([
                "kms-plugin",
                "keys",
                "--pkcs11-module",
                MODULE,
                "--token-label",
                TOKEN,
            ])
            .arg("--pin-file")
            .arg(&pin_file)
            .output()
            .unwrap()
    };
    let out = keys_with_pin_file();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("has mode 0644") && all.contains("chmod 600") && !all.contains(wrong),
        "{all}"
    );
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = keys_with_pin_file();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("PIN is incorrect") && !all.contains(wrong),
        "{all}"
    );
}

#[tokio::test]
async fn a_deleted_key_makes_status_unhealthy() {
    let hsm = Hsm::new();
    let key_id = hsm.rotate();
    let plugin = serve(&hsm).await;
    let mut c = plugin.client().await;
    let sealed = encrypt(&mut c, &[6u8; 32]).await;
    let out = hsm.pkcs11_tool(&["--delete-object", "--type", "secrkey", "--label", KEY_LABEL]);
    assert!(out.status.success(), "{}", text(&out));
    let s = wait_status(&mut c, |s| s.healthz != "ok").await;
    assert_eq!(
        s.key_id, key_id,
        "the last key_id is kept through an outage"
    );
    assert!(s.healthz.contains("gone"), "{}", s.healthz);
    let (code, body) = plugin.get("/healthz");
    assert_eq!(code, 503, "{body}");
    let e = c.decrypt(decrypt_request(&sealed)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = c
        .encrypt(EncryptRequest {
            plaintext: vec![1; 32],
            uid: "u".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn a_token_that_disappears_makes_status_and_healthz_unhealthy() {
    let hsm = Hsm::new();
    hsm.rotate();
    let plugin = serve(&hsm).await;
    let mut c = plugin.client().await;
    assert_eq!(status(&mut c).await.healthz, "ok");
    let out = hsm
        .tool("softhsm2-util")
        .args(["--delete-token", "--token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = wait_status(&mut c, |s| s.healthz != "ok").await;
    assert!(!s.healthz.is_empty());
    let (code, body) = plugin.get("/healthz");
    assert_eq!(code, 503);
    assert_eq!(body, s.healthz);
    let (_, metrics) = plugin.get("/metrics");
    assert!(metrics.contains("coffer_kms_plugin_healthy 0"), "{metrics}");
}

/// A plugin started before its HSM (a static pod first, a network HSM still coming up) serves
/// at once: Status fails `Unavailable` saying the token is not found, and turns healthy when
/// the token and its first key appear, without a restart.
#[tokio::test]
async fn a_token_that_appears_after_start_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    // The configuration and another token exist; ours does not yet.
    let other = SoftHsmToken::init(dir.path(), "someone-else", PIN, SO_PIN).unwrap();
    let hsm = Hsm {
        dir,
        conf: other.conf,
        slot: None,
    };
    let plugin = serve(&hsm).await;
    let mut c = plugin.client().await;
    let e = c.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!("\"{TOKEN}\" not found")),
        "{e:?}"
    );
    let (code, body) = plugin.get("/healthz");
    assert_eq!(code, 503, "{body}");
    let e = c
        .encrypt(EncryptRequest {
            plaintext: vec![1; 32],
            uid: "early".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        plugin
            .log_text()
            .contains("no key-encryption key yet: serving"),
        "{}",
        plugin.log_text()
    );

    let out = hsm
        .tool("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--pin", PIN, "--so-pin", SO_PIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let key_id = hsm.rotate();
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        match c.status(StatusRequest {}).await {
            Ok(s) if s.get_ref().healthz == "ok" => break status(&mut c).await,
            other => assert!(Instant::now() < deadline, "still not healthy: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s.key_id, key_id);
    let sealed = encrypt(&mut c, &[9u8; 32]).await;
    assert_eq!(decrypt(&mut c, &sealed).await, vec![9u8; 32]);
    assert_eq!(plugin.get("/healthz").0, 200);
}

/// kube-apiserver before 1.32 sends the socket path as `:authority` (kubernetes #126929),
/// which h2 refuses; the plugin must answer it anyway.
#[tokio::test]
async fn a_socket_path_authority_is_accepted() {
    let hsm = Hsm::new();
    hsm.rotate();
    let plugin = serve(&hsm).await;
    let socket = hsm.socket();
    let authority = socket.display().to_string();
    let answer = tokio::task::spawn_blocking(move || raw_status(&socket, &authority))
        .await
        .unwrap();
    check_status(&answer);
    assert_eq!(answer.healthz, "ok");
    drop(plugin);
}

/// One Status call in hand-made HTTP/2 frames, with the given `:authority`.
fn raw_status(socket: &Path, authority: &str) -> StatusResponse {
    use prost::Message as _;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = |typ: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], typ, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/v2.KeyManagementService/Status"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal header field without indexing, new name, plain strings (short ones).
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    s.write_all(&out).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        match head[3] {
            0x3 => panic!("the stream was reset: {payload:?}"),
            0x7 => panic!("the connection was closed (GOAWAY): {payload:?}"),
            0x4 if head[4] & 1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            0x0 if payload.len() >= 5 => {
                return StatusResponse::decode(&payload[5..]).unwrap();
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_key_file_backend_refuses_open_files_and_has_the_default_keys_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.key");
    let key = coffer_seal::DefaultKey::load_or_create(&path).unwrap();
    let rng: std::sync::Arc<dyn coffer_seal::RandomSource> =
        std::sync::Arc::new(coffer_seal::SystemRandom::new().unwrap());
    let local = key.key_service(rng).unwrap();

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = coffer()
        .args([
            "kms-plugin",
            "--listen",
            "unix:///@coffer-kms-keyfile-refused",
        ])
        .arg("--key-file")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("0644")
            && all.contains("chmod 600")
            && all.contains(&path.display().to_string()),
        "{all}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let endpoint = format!("unix:///@coffer-kms-keyfile-{}", std::process::id());
    let mut cmd = coffer();
    cmd.arg("kms-plugin").arg("--key-file").arg(&path);
    let plugin = Plugin::start(cmd, &endpoint, dir.path().join("plugin.log")).await;
    let mut c = plugin.client().await;
    let s = status(&mut c).await;
    assert_eq!(s.healthz, "ok");
    assert_eq!(s.key_id, local.key_id());
    let r = encrypt(&mut c, &[8u8; 32]).await;
    assert_eq!(decrypt(&mut c, &r).await, vec![8u8; 32]);
    // What coffer serve's default key wrapped (no annotation) opens here.
    use coffer_seal::KeyService as _;
    let served = local.encrypt("u", &[9u8; 32]).unwrap();
    let opened = c
        .decrypt(DecryptRequest {
            ciphertext: served.ciphertext,
            uid: "u".to_owned(),
            key_id: served.key_id,
            annotations: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(opened, vec![9u8; 32]);
}

#[test]
fn help_names_the_flags_and_never_takes_a_pin_value() {
    let out = coffer().args(["kms-plugin", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--listen-metrics-urls",
        "--pkcs11-module",
        "--token-label",
        "--slot",
        "--pin-file",
        "--pin-env",
        "--key-label",
        "--key-file",
        "--old-key-file",
        "rotate",
        "keys",
        "CKM_AES_GCM",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(!help.contains("--pin "), "{help}");
    let out = coffer()
        .args(["kms-plugin", "rotate", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Thales k8s-kms-plugin #67: a token without the mechanism made that plugin panic. Here a real
/// PKCS#11 module whose token has no mechanism at all (p11-kit's read-only trust store, Debian's
/// `p11-kit-modules`) must give a clear error naming the token and the mechanism, for serving
/// and for `rotate`, before any PIN is used.
#[test]
fn an_unsupported_mechanism_is_a_clear_error_not_a_panic_thales_kms_plugin_67() {
    let module = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/pkcs11/p11-kit-trust.so")))
        .find(|p| p.exists())
        .expect("p11-kit-trust.so is missing: apt-get install p11-kit-modules");
    let serve = ["--listen", "unix:///@coffer-kms-no-mechanism"];
    for sub in [&serve[..], &["rotate"][..]] {
        let out = coffer()
            .arg("kms-plugin")
            .args(sub)
            .arg("--pkcs11-module")
            .arg(&module)
            .args([
                "--token-label",
                "System Trust",
                "--pin-env",
                "COFFER_TEST_PIN",
            ])
            .env("COFFER_TEST_PIN", "unused-pin-value")
            .output()
            .unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{sub:?}: {all}");
        assert!(
            all.contains("does not support CKM_AES_GCM") && all.contains("System Trust"),
            "{sub:?}: {all}"
        );
        assert!(!all.contains("panicked"), "{all}");
        assert!(!all.contains("unused-pin-value"), "{all}");
    }
}
