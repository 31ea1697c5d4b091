//! Snapshots end to end: `etcdctl snapshot save` (Debian's 3.4.23) against `coffer serve`,
//! `etcdctl snapshot status` on the file, `coffer snapshot restore` into a new data directory
//! served again by Coffer with the same key, a restore with the wrong key refused, and
//! `etcdctl snapshot restore` + a real etcd serving the same file (with the sealed values).
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test snapshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_conformance::client::{connect, probe};
use coffer_conformance::etcdctl;
use coffer_conformance::process::{coffer_binary, free_port, CofferOptions, CofferProcess};
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::mvccpb::KeyValue;
use coffer_proto::{
    request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::Message;
use serde_json::Value;
use tonic::transport::Channel;

/// Plaintext that must never appear in a snapshot.
const MARKER: &str = "SNAPSHOT-PLAINTEXT-MARKER-c0ffee";

fn put(key: &str, value: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    }
}

fn all(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

/// What the source server held when the snapshot was taken.
struct Expected {
    revision: i64,
    compacted: i64,
    kvs: Vec<KeyValue>,
    /// A historical view just above the compaction.
    old_rev: i64,
    old_kvs: Vec<KeyValue>,
    /// lease id → (granted TTL, attached keys)
    leases: BTreeMap<i64, (i64, Vec<Vec<u8>>)>,
}

async fn lease_info(ch: &Channel, id: i64) -> (i64, i64, Vec<Vec<u8>>) {
    let r = LeaseClient::new(ch.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    let mut keys = r.keys;
    keys.sort();
    (r.granted_ttl, r.ttl, keys)
}

/// ~1000 keys: secrets with the marker, configmaps written by multi-put txns (sub revisions),
/// leased keys, overwrites, deletes, one physical compaction and writes after it.
async fn populate(ch: &Channel) -> Expected {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let l1 = lease
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let l2 = lease
        .lease_grant(LeaseGrantRequest { ttl: 900, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    for i in 0..400 {
        let l = if i % 40 == 0 { l1 } else { 0 };
        let key = format!("/registry/secrets/default/s{i:04}");
        kv.put(put(&key, &format!("{MARKER}-{i}"), l))
            .await
            .unwrap();
    }
    for b in 0..25 {
        let success = (0..20)
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    &format!("/registry/configmaps/default/c{:04}", b * 20 + j),
                    &format!("configmap {b} {j}"),
                    0,
                ))),
            })
            .collect();
        kv.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in 0..100 {
        kv.put(put(&format!("/leased/k{i:03}"), "leased", l2))
            .await
            .unwrap();
    }
    for i in (0..400).step_by(9) {
        let key = format!("/registry/secrets/default/s{i:04}");
        kv.put(put(&key, &format!("{MARKER}-v2-{i}"), 0))
            .await
            .unwrap();
    }
    for i in (0..400).step_by(13) {
        kv.delete_range(DeleteRangeRequest {
            key: format!("/registry/secrets/default/s{i:04}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    kv.delete_range(DeleteRangeRequest {
        key: "/registry/configmaps/default/c01".into(),
        range_end: "/registry/configmaps/default/c02".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = kv.range(all(0)).await.unwrap().into_inner();
    let compacted = before.header.unwrap().revision - 30;
    kv.compact(CompactionRequest {
        revision: compacted,
        physical: true,
    })
    .await
    .unwrap();
    for i in 0..20 {
        kv.put(put(
            &format!("/registry/secrets/default/after{i:02}"),
            &format!("{MARKER}-after-{i}"),
            0,
        ))
        .await
        .unwrap();
    }
    let now = kv.range(all(0)).await.unwrap().into_inner();
    let old_rev = compacted + 3;
    let old_kvs = kv.range(all(old_rev)).await.unwrap().into_inner().kvs;
    let mut leases = BTreeMap::new();
    for id in [l1, l2] {
        let (granted, _, keys) = lease_info(ch, id).await;
        assert!(!keys.is_empty());
        leases.insert(id, (granted, keys));
    }
    assert!(now.kvs.len() > 850, "{} keys", now.kvs.len());
    Expected {
        revision: now.header.unwrap().revision,
        compacted,
        kvs: now.kvs,
        old_rev,
        old_kvs,
        leases,
    }
}

/// Bucket name → its entries in key order.
type Buckets = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

/// The snapshot's bbolt part, read with coffer-bbolt.
fn read_buckets(snapshot: &[u8]) -> Buckets {
    let body = snapshot[..snapshot.len() - 32].to_vec();
    let mut r = coffer_bbolt::Reader::open(Cursor::new(body)).unwrap();
    let mut out = BTreeMap::new();
    for name in r.buckets().unwrap() {
        let mut entries = Vec::new();
        let found = r
            .for_each(&name, &mut |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert!(found);
        out.insert(name, entries);
    }
    out
}

fn run_coffer(args: &[&str]) -> std::process::Output {
    Command::new(coffer_binary().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn write_key_file(path: &Path) {
    // TEST ONLY: a fixed key, different from the one the server made.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(
        &mut f,
        b"coffer-default-key v1\nQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\n",
    )
    .unwrap();
}

/// A real etcd on a restored data directory; killed on drop.
struct RestoredEtcd {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Drop for RestoredEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_from_snapshot(snapshot: &Path, root: &Path) -> RestoredEtcd {
    let data = root.join("etcd-data");
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let client = format!("http://127.0.0.1:{}", free_port().unwrap());
    let cluster = format!("snap={peer}");
    let out = etcdctl::run(
        &client,
        &[
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--name",
            "snap",
            "--data-dir",
            data.to_str().unwrap(),
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer,
        ],
        None,
    )
    .unwrap();
    assert_eq!(out.code, 0, "etcdctl snapshot restore: {}", out.stderr);
    let log = root.join("etcd.log");
    let logf = fs::File::create(&log).unwrap();
    let child = Command::new(coffer_conformance::process::etcd_binary())
        .args(["--name", "snap", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .spawn()
        .unwrap();
    let mut etcd = RestoredEtcd {
        child,
        endpoint: client,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe(&etcd.endpoint) {
        if let Ok(Some(status)) = etcd.child.try_wait() {
            panic!(
                "etcd on the restored snapshot exited ({status}):\n{}",
                fs::read_to_string(&etcd.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "etcd on the restored snapshot did not answer:\n{}",
            fs::read_to_string(&etcd.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_status_and_restore_into_coffer_and_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let src = CofferProcess::start(CofferOptions::default()).unwrap();
    let ch = connect(&src.endpoint()).await.unwrap();
    let expected = populate(&ch).await;

    // etcdctl snapshot save against Coffer.
    let file = tmp.path().join("snap.db");
    let out = etcdctl::run(
        &src.endpoint(),
        &["snapshot", "save", file.to_str().unwrap()],
        None,
    )
    .unwrap();
    assert_eq!(out.code, 0, "snapshot save: {}\n{}", out.stdout, out.stderr);
    let bytes = fs::read(&file).unwrap();
    assert_eq!(bytes.len() % 512, 32);
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the snapshot holds a plaintext value"
    );

    // What the file holds, read independently of Coffer's store.
    let buckets = read_buckets(&bytes);
    let total_entries: usize = buckets.values().map(Vec::len).sum();
    let mut sealed: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    for (k, v) in &buckets[&b"key".to_vec()] {
        let kv = KeyValue::decode(v.as_slice()).unwrap();
        if k.len() == 18 {
            assert_eq!(k[17], b't');
            sealed.remove(&kv.key);
        } else {
            assert_eq!(k.len(), 17);
            sealed.insert(kv.key.clone(), kv);
        }
    }
    assert_eq!(sealed.len(), expected.kvs.len());
    for want in &expected.kvs {
        let got = &sealed[&want.key];
        assert_eq!(
            (
                got.create_revision,
                got.mod_revision,
                got.version,
                got.lease
            ),
            (
                want.create_revision,
                want.mod_revision,
                want.version,
                want.lease
            )
        );
        assert!(got.value.starts_with(b"k8s:enc:"), "{:?}", want.key);
        assert_ne!(got.value, want.value);
    }
    assert_eq!(buckets[&b"lease".to_vec()].len(), expected.leases.len());

    // etcdctl snapshot status.
    let out = etcdctl::run(
        &src.endpoint(),
        &["snapshot", "status", file.to_str().unwrap(), "-w", "json"],
        None,
    )
    .unwrap();
    assert_eq!(out.code, 0, "snapshot status: {}", out.stderr);
    let status: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(status["revision"], expected.revision, "{status}");
    assert_eq!(status["totalKey"], total_entries as u64, "{status}");
    assert_eq!(status["totalSize"], bytes.len() as u64 - 32, "{status}");

    // A restore with another default key is refused, naming a key, leaving nothing behind.
    let wrong_key = tmp.path().join("wrong.key");
    write_key_file(&wrong_key);
    let wrong_dir = tmp.path().join("wrong-data");
    let out = run_coffer(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        wrong_dir.to_str().unwrap(),
        "--default-key-file",
        wrong_key.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not open with the configured keys") && stderr.contains("/"),
        "{stderr}"
    );
    assert!(!stderr.contains(MARKER));
    assert!(!wrong_dir.exists());

    // coffer snapshot restore with the right key, then serve it.
    let mut dst = CofferProcess::start(CofferOptions {
        default_key_file: Some(src.key_file().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    dst.kill();
    fs::remove_dir_all(dst.data_dir()).unwrap();
    let started = Instant::now();
    let out = run_coffer(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dst.data_dir().to_str().unwrap(),
        "--default-key-file",
        src.key_file().to_str().unwrap(),
    ]);
    let restore_time = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("revision {}", expected.revision)),
        "{summary}"
    );
    eprintln!(
        "snapshot: {} bytes, {} entries; coffer restore took {restore_time:?}",
        bytes.len(),
        total_entries
    );
    dst.restart().unwrap();
    let dch = connect(&dst.endpoint()).await.unwrap();
    let mut dkv = KvClient::new(dch.clone());
    let got = dkv.range(all(0)).await.unwrap().into_inner();
    assert_eq!(got.header.unwrap().revision, expected.revision);
    assert_eq!(got.kvs, expected.kvs, "every key, value and revision");
    let got_old = dkv.range(all(expected.old_rev)).await.unwrap().into_inner();
    assert_eq!(got_old.kvs, expected.old_kvs);
    let err = dkv.range(all(expected.compacted - 1)).await.unwrap_err();
    assert!(err.message().contains("compacted"), "{err:?}");
    for (id, (granted, keys)) in &expected.leases {
        let (g, remaining, k) = lease_info(&dch, *id).await;
        assert_eq!((g, &k), (*granted, keys), "lease {id}");
        assert!(
            remaining > granted - 120 && remaining <= *granted,
            "{remaining}"
        );
    }

    // etcdctl snapshot restore + a real etcd on it: every key, with the sealed value.
    let etcd = etcd_from_snapshot(&file, tmp.path());
    let ech = connect(&etcd.endpoint).await.unwrap();
    let got = KvClient::new(ech.clone())
        .range(all(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.header.unwrap().revision, expected.revision);
    assert_eq!(got.kvs.len(), expected.kvs.len());
    for (g, want) in got.kvs.iter().zip(&expected.kvs) {
        assert_eq!(g.key, want.key);
        assert_eq!(
            (g.create_revision, g.mod_revision, g.version, g.lease),
            (
                want.create_revision,
                want.mod_revision,
                want.version,
                want.lease
            )
        );
        assert_eq!(
            g.value, sealed[&g.key].value,
            "etcd serves the sealed bytes"
        );
    }
    for (id, (granted, keys)) in &expected.leases {
        let (g, _, k) = lease_info(&ech, *id).await;
        assert_eq!((g, &k), (*granted, keys), "lease {id} in etcd");
    }
}

/// `(name, password hash, roles)` of every `authUsers` entry and `(name, permissions)` of every
/// `authRoles` entry, plus `authEnabled` and `authRevision`, read from a snapshot's buckets.
type AuthBuckets = (
    Vec<(Vec<u8>, Vec<u8>, Vec<String>)>,
    Vec<coffer_proto::authpb::Role>,
    Vec<(Vec<u8>, Vec<u8>)>,
);

fn auth_buckets(b: &Buckets) -> AuthBuckets {
    let users = b[&b"authUsers".to_vec()]
        .iter()
        .map(|(k, v)| {
            let u = coffer_proto::authpb::User::decode(v.as_slice()).unwrap();
            assert_eq!(k, &u.name);
            (u.name, u.password, u.roles)
        })
        .collect();
    let roles = b[&b"authRoles".to_vec()]
        .iter()
        .map(|(_, v)| coffer_proto::authpb::Role::decode(v.as_slice()).unwrap())
        .collect();
    (users, roles, b[&b"auth".to_vec()].clone())
}

/// Users, roles and permissions made by etcdctl in a real etcd 3.4.23 survive
/// `etcdctl snapshot save` → `coffer snapshot restore` → a snapshot of that Coffer →
/// `etcdctl snapshot restore` → a real etcd, where the users log in with their passwords
/// (bcrypt hashes carried unchanged) and their permissions hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_etcd_to_coffer_to_etcd_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = coffer_conformance::process::EtcdProcess::start().unwrap();
    let ep = etcd.endpoint();
    let ctl = |ep: &str, args: &[&str]| {
        let out = etcdctl::run(ep, args, None).unwrap();
        assert_eq!(
            out.code, 0,
            "etcdctl {args:?}: {}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    };
    ctl(&ep, &["user", "add", "root:rootpw"]);
    ctl(&ep, &["role", "add", "ra"]);
    ctl(
        &ep,
        &[
            "role",
            "grant-permission",
            "ra",
            "readwrite",
            "/a/",
            "--prefix",
        ],
    );
    ctl(
        &ep,
        &["role", "grant-permission", "ra", "read", "/c", "--from-key"],
    );
    ctl(&ep, &["user", "add", "alice:alicepw"]);
    ctl(&ep, &["user", "grant-role", "alice", "ra"]);
    ctl(&ep, &["auth", "enable"]);
    let from_etcd = tmp.path().join("etcd.db");
    ctl(
        &ep,
        &[
            "--user",
            "root:rootpw",
            "snapshot",
            "save",
            from_etcd.to_str().unwrap(),
        ],
    );
    let etcd_auth = auth_buckets(&read_buckets(&fs::read(&from_etcd).unwrap()));
    assert_eq!(etcd_auth.0.len(), 2, "{:?}", etcd_auth.0);
    assert_eq!(etcd_auth.2[0], (b"authEnabled".to_vec(), vec![1]));

    // Into Coffer.
    let mut coffer = CofferProcess::start(CofferOptions::default()).unwrap();
    coffer.kill();
    fs::remove_dir_all(coffer.data_dir()).unwrap();
    let out = run_coffer(&[
        "snapshot",
        "restore",
        from_etcd.to_str().unwrap(),
        "--data-dir",
        coffer.data_dir().to_str().unwrap(),
        "--default-key-file",
        coffer.key_file().to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("2 users, 2 roles"), "{summary}");
    coffer.restart().unwrap();
    // Auth is enabled in the restored Coffer: a request without a user is refused.
    let mut kv = KvClient::new(connect(&coffer.endpoint()).await.unwrap());
    let err = kv.range(all(0)).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: user name is empty");

    // Out of Coffer: the same users, hashes, roles, permissions, switch and revision.
    let from_coffer = tmp.path().join("coffer.db");
    // Snapshot is an admin RPC: refused without a user, as etcd refuses it.
    let refused = etcdctl::run(
        &coffer.endpoint(),
        &["snapshot", "save", from_coffer.to_str().unwrap()],
        None,
    )
    .unwrap();
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("auth: user name is empty"),
        "{}",
        refused.stderr
    );
    ctl(
        &coffer.endpoint(),
        &[
            "--user",
            "root:rootpw",
            "snapshot",
            "save",
            from_coffer.to_str().unwrap(),
        ],
    );
    let coffer_auth = auth_buckets(&read_buckets(&fs::read(&from_coffer).unwrap()));
    assert_eq!(coffer_auth, etcd_auth);

    // Into a real etcd again: the users log in and their permissions hold.
    let restored = etcd_from_snapshot(&from_coffer, tmp.path());
    let rep = restored.endpoint.as_str();
    let users = ctl(rep, &["--user", "root:rootpw", "user", "list"]);
    assert_eq!(
        users.split_whitespace().collect::<Vec<_>>(),
        ["alice", "root"]
    );
    let role = ctl(rep, &["--user", "root:rootpw", "role", "get", "ra"]);
    assert!(
        role.contains("[/a/, /a0)") && role.contains("[/c, <open ended>"),
        "{role}"
    );
    ctl(rep, &["--user", "alice:alicepw", "put", "/a/k", "v"]);
    let out = etcdctl::run(rep, &["--user", "alice:alicepw", "put", "/b", "v"], None).unwrap();
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    let out = etcdctl::run(rep, &["--user", "alice:wrong", "get", "/a/k"], None).unwrap();
    assert!(
        out.stderr.contains("authentication failed"),
        "{}",
        out.stderr
    );
}
