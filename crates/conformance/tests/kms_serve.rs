//! `coffer serve` over `coffer kms-plugin` on a real SoftHSM2 token, end to end, with real
//! processes and sockets:
//! - every key (outside the etcd prefix too) is sealed under the plugin: no default key file is
//!   created;
//! - the plugin is SIGKILLed under a bounded write load: reads go on, writes go on inside the
//!   write window and then fail cleanly (`Unavailable`, naming the provider), `/readyz` fails on
//!   `kms_providers` while `/livez` stays up, nothing acknowledged is lost, and everything
//!   recovers when the plugin returns;
//! - the KEK is rotated in the token while serving: new writes go under the new key_id, old
//!   values still read and are counted stale;
//! - the on-disk marker scan finds no value, and no log line holds one.
//!
//! Needs Debian's `softhsm2` and a built `coffer` (`cargo build -p coffer`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_conformance::http::http;
use coffer_conformance::marker::{forms, scan, unique_marker};
use coffer_conformance::process::coffer_binary;
use coffer_conformance::{CofferOptions, CofferProcess};
use coffer_kms::plugin::softhsm::{SoftHsmToken, SOFTHSM2_MODULE};
use coffer_proto::kv_client::KvClient;
use coffer_proto::{PutRequest, RangeRequest};
use tonic::transport::Channel;
use tonic::Code;

const WINDOW: Duration = Duration::from_secs(4);

const PIN: &str = "serve-pin-2468";

/// `coffer kms-plugin` on a fresh SoftHSM2 token.
struct Plugin {
    dir: tempfile::TempDir,
    token: SoftHsmToken,
    socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Plugin {
    fn new() -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let token = SoftHsmToken::init(dir.path(), "coffer-serve", PIN, "1357").unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, PIN).unwrap();
        std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let socket = dir.path().join("kms.sock");
        let log = dir.path().join("plugin.log");
        let plugin = Plugin {
            dir,
            token,
            socket,
            child: None,
            log,
        };
        let out = plugin.command("rotate");
        assert!(out.status.success(), "first KEK: {out:?}");
        plugin
    }

    fn backend_args(&self) -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            SOFTHSM2_MODULE.into(),
            "--token-label".into(),
            self.token.label.clone(),
            "--pin-file".into(),
            self.dir.path().join("pin").display().to_string(),
        ]
    }

    /// `coffer kms-plugin <sub> <backend flags>` (rotate, keys).
    fn command(&self, sub: &str) -> std::process::Output {
        Command::new(coffer_binary().unwrap())
            .arg("kms-plugin")
            .arg(sub)
            .args(self.backend_args())
            .env("SOFTHSM2_CONF", &self.token.conf)
            .output()
            .unwrap()
    }

    /// The current key_id: the last one `coffer kms-plugin keys` lists.
    fn current_key_id(&self) -> String {
        let out = self.command("keys");
        assert!(out.status.success(), "keys: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .next_back()
            .unwrap_or_else(|| panic!("no key_id in {text:?}"))
            .to_owned()
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(coffer_binary().unwrap())
            .arg("kms-plugin")
            .arg("--listen")
            .arg(format!("unix://{}", self.socket.display()))
            .args(self.backend_args())
            .env("SOFTHSM2_CONF", &self.token.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the plugin did not listen; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, endpoint: &str) -> PathBuf {
    let path = dir.join("encryption.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  \
             - resources: [\"*.*\"]\n    providers:\n      - kms:\n          apiVersion: v2\n          \
             name: hsm\n          endpoint: {endpoint}\n          timeout: 2s\n"
        ),
    )
    .unwrap();
    path
}

async fn kv(coffer: &CofferProcess) -> KvClient<Channel> {
    let ch = Channel::from_shared(coffer.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(ch)
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> Result<(), tonic::Status> {
    kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Result<Option<String>, tonic::Status> {
    let r = kv
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner()
        .kvs
        .pop()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

fn host_port(coffer: &CofferProcess) -> String {
    coffer
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// The sum of the samples of `name` whose labels contain every `labels` pair.
fn metric(coffer: &CofferProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = http(&host_port(coffer), "GET", "/metrics").body;
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A writer that puts `/registry/secrets/load/<n>` as fast as the server answers, recording
/// what was acknowledged and what was refused.
struct Load {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    refused: Arc<Mutex<Vec<(Code, String)>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn start(coffer: &CofferProcess, marker: &str) -> Load {
        let mut kv = kv(coffer).await;
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (a, r, marker) = (acked.clone(), refused.clone(), marker.to_owned());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !*stopped.borrow_and_update() {
                n += 1;
                let key = format!("/registry/secrets/load/{n}");
                let value = format!("{marker}-load-{n}");
                match put(&mut kv, &key, &value).await {
                    Ok(()) => {
                        a.lock().unwrap().insert(key, value);
                    }
                    Err(s) => r.lock().unwrap().push((s.code(), s.message().to_owned())),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Load {
            acked,
            refused,
            stop,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (BTreeMap<String, String>, Vec<(Code, String)>) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        (acked, refused)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_kms_plugin_on_softhsm_rides_out_a_plugin_kill_and_a_kek_rotation() {
    let mut plugin = Plugin::new();
    plugin.start();
    let first_key_id = plugin.current_key_id();
    let config = write_config(plugin.dir.path(), &plugin.endpoint());
    let mut coffer = CofferProcess::start(CofferOptions {
        encryption_provider_config: Some(config),
        extra_args: ["--kms-status-interval", "500ms", "--kms-write-window", "4s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .unwrap();
    assert!(
        !coffer.key_file().exists(),
        "a *.* kms config must not create a local default key ({})",
        coffer.key_file().display()
    );
    let marker = unique_marker("KmsServe");
    let mut client = kv(&coffer).await;
    let mut expect: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..20 {
        let (k, v) = (
            format!("/registry/secrets/default/s{i}"),
            format!("{marker}-{i}"),
        );
        put(&mut client, &k, &v).await.unwrap();
        expect.insert(k, v);
    }
    // A key outside the prefix is sealed under the plugin too (no default key to fall back on).
    put(&mut client, "/outside/prefix", &format!("{marker}-outside"))
        .await
        .unwrap();
    expect.insert("/outside/prefix".into(), format!("{marker}-outside"));
    assert_eq!(
        http(&host_port(&coffer), "GET", "/readyz").status,
        200,
        "ready with the plugin up"
    );

    // The plugin dies under a write load.
    let load = Load::start(&coffer, &marker).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = load.acked();
    assert!(before_kill > 0, "the load writes");
    plugin.kill();
    let killed = Instant::now();
    for (k, v) in &expect {
        assert_eq!(
            get(&mut client, k).await.unwrap().as_ref(),
            Some(v),
            "{k} read with the plugin down"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        load.acked() > before_kill,
        "writes go on inside the write window"
    );
    // Past the window writes stop, cleanly.
    tokio::time::sleep((WINDOW + Duration::from_secs(2)).saturating_sub(killed.elapsed())).await;
    let refused = put(&mut client, "/registry/secrets/default/late", "late")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("KMS provider \"hsm\""),
        "the error names the provider: {}",
        refused.message()
    );
    assert_eq!(
        get(&mut client, "/registry/secrets/default/late")
            .await
            .unwrap(),
        None
    );
    let ready = http(&host_port(&coffer), "GET", "/readyz?verbose");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("[-]kms_providers failed"),
        "{}",
        ready.body
    );
    assert_eq!(
        http(&host_port(&coffer), "GET", "/livez").status,
        200,
        "a KMS outage is not a liveness failure"
    );
    for (k, v) in &expect {
        assert_eq!(
            get(&mut client, k).await.unwrap().as_ref(),
            Some(v),
            "{k} read past the window"
        );
    }

    // The plugin returns: writes resume within a few Status intervals.
    plugin.start();
    let back = Instant::now();
    while put(&mut client, "/registry/secrets/default/back", "back")
        .await
        .is_err()
    {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "writes did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, refused) = load.finish().await;
    assert!(
        !refused.is_empty(),
        "the load saw writes refused past the window"
    );
    for (code, message) in &refused {
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(
            !message.contains(&marker),
            "an error carries a value: {message}"
        );
    }
    for (k, v) in &acked {
        assert_eq!(
            get(&mut client, k).await.unwrap().as_ref(),
            Some(v),
            "acknowledged {k} lost"
        );
    }
    expect.extend(acked);
    assert_eq!(http(&host_port(&coffer), "GET", "/readyz").status, 200);

    // Rotate the KEK in the token while serving.
    let stale_before = metric(
        &coffer,
        "coffer_seal_operations_total",
        &[("key", "hsm"), ("result", "stale")],
    );
    let out = plugin.command("rotate");
    assert!(out.status.success(), "rotate: {out:?}");
    let second_key_id = plugin.current_key_id();
    assert_ne!(second_key_id, first_key_id);
    let new_hash = coffer_metrics::kms::key_id_hash(&second_key_id);
    let rotated = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (k, v) = (
            format!("/registry/secrets/rotated/{n}"),
            format!("{marker}-rotated-{n}"),
        );
        put(&mut client, &k, &v).await.unwrap();
        expect.insert(k, v);
        if metric(
            &coffer,
            "coffer_kms_writes_total",
            &[("key_id_hash", &new_hash)],
        ) > 0.0
        {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(15),
            "no write under the new key_id {new_hash} within 15 s of the rotation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (k, v) in &expect {
        assert_eq!(
            get(&mut client, k).await.unwrap().as_ref(),
            Some(v),
            "{k} after the rotation"
        );
    }
    let stale_after = metric(
        &coffer,
        "coffer_seal_operations_total",
        &[("key", "hsm"), ("result", "stale")],
    );
    assert!(
        stale_after > stale_before,
        "values under the old key_id read as stale"
    );

    // A restart reads everything through the plugin (seeds decrypted anew).
    coffer.restart().unwrap();
    let mut client = kv(&coffer).await;
    for (k, v) in &expect {
        assert_eq!(
            get(&mut client, k).await.unwrap().as_ref(),
            Some(v),
            "{k} after a restart"
        );
    }
    coffer.terminate(Duration::from_secs(10)).unwrap();

    // No value on disk, in any form, and none in the server's or the plugin's log.
    let (hits, files, _) = scan(coffer.data_dir(), &forms(&marker));
    assert!(files > 0);
    assert!(hits.is_empty(), "plaintext on disk: {hits:?}");
    assert!(!coffer.log().contains(&marker), "a value in the server log");
    let plugin_log = std::fs::read_to_string(&plugin.log).unwrap_or_default();
    assert!(!plugin_log.contains(&marker));
    assert!(!plugin_log.contains(PIN), "the PIN in the plugin log");
}

/// Plugin and server may start in either order (aws-encryption-provider #45): `coffer serve`
/// starts while its plugin's socket does not exist yet, is not ready and refuses writes
/// cleanly, and serves them once the plugin (here on a key file) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_before_its_plugin_and_writes_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("kek.key");
    coffer_seal::DefaultKey::load_or_create(&key_file).unwrap();
    let socket = dir.path().join("late.sock");
    let endpoint = format!("unix://{}", socket.display());
    let config = write_config(dir.path(), &endpoint);
    let coffer = CofferProcess::start(CofferOptions {
        encryption_provider_config: Some(config),
        extra_args: ["--kms-status-interval", "300ms", "--kms-write-window", "3s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .unwrap();
    let mut client = kv(&coffer).await;
    let refused = put(&mut client, "/registry/secrets/default/early", "early")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("KMS provider \"hsm\""),
        "{refused:?}"
    );
    let ready = http(&host_port(&coffer), "GET", "/readyz?verbose");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("[-]kms_providers failed: hsm"),
        "{}",
        ready.body
    );

    let log = std::fs::File::create(dir.path().join("plugin.log")).unwrap();
    let mut plugin = Command::new(coffer_binary().unwrap())
        .args(["kms-plugin", "--listen", &endpoint, "--key-file"])
        .arg(&key_file)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while put(&mut client, "/registry/secrets/default/late", "late")
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "writes did not start after the plugin came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&mut client, "/registry/secrets/default/late")
            .await
            .unwrap()
            .as_deref(),
        Some("late")
    );
    assert_eq!(http(&host_port(&coffer), "GET", "/readyz").status, 200);
    plugin.kill().unwrap();
    plugin.wait().unwrap();
}
