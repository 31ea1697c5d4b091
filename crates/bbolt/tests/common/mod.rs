//! Shared test support: a real etcd process (killed on drop), etcdctl, and small decoders for
//! what etcd keeps in its `key` bucket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running etcd on loopback ports; killed (and waited for) on drop, also on panic.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    pub peer_url: String,
    log: PathBuf,
}

impl Etcd {
    /// Starts a single-member etcd named "default" on `data_dir` with new ports.
    pub fn start(data_dir: &Path) -> Etcd {
        for _ in 0..3 {
            let peer = free_port();
            if let Some(etcd) = Etcd::try_start(data_dir, free_port(), peer) {
                return etcd;
            }
        }
        panic!(
            "etcd did not start (see the logs next to {})",
            data_dir.display()
        );
    }

    /// Starts etcd on `data_dir` with this peer port (a restored data dir knows its peer URL).
    pub fn start_with_peer(data_dir: &Path, peer: u16) -> Etcd {
        for _ in 0..3 {
            if let Some(etcd) = Etcd::try_start(data_dir, free_port(), peer) {
                return etcd;
            }
        }
        panic!(
            "etcd did not start (see the logs next to {})",
            data_dir.display()
        );
    }

    fn try_start(data_dir: &Path, client: u16, peer: u16) -> Option<Etcd> {
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = data_dir.with_extension(format!("etcd-{client}.log"));
        let log_file = File::create(&log).unwrap();
        let child = Command::new("etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("etcd must be installed (Debian package etcd-server)");
        let mut etcd = Etcd {
            child,
            endpoint,
            peer_url,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if etcd.child.try_wait().unwrap().is_some() {
                return None; // exited: most likely a port taken meanwhile
            }
            let out = etcd.ctl_output(&["endpoint", "health", "--command-timeout=1s"], None);
            if out.status.success() {
                return Some(etcd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd not healthy after 30 s; log: {}", etcd.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs etcdctl against this etcd, with `stdin` as input if given.
    pub fn ctl_output(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("etcdctl must be installed");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs etcdctl and returns its stdout; panics with its stderr on failure.
    pub fn ctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let out = self.ctl_output(args, stdin);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\netcd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        out.stdout
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs etcdctl without an endpoint (offline commands: snapshot status/restore).
pub fn etcdctl_offline(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl must be installed")
}

/// An etcd snapshot made by real etcd, and what was put into it.
pub struct EtcdSnapshot {
    /// The file `etcdctl snapshot save` wrote (bbolt data + SHA-256).
    pub path: PathBuf,
    /// The live keys and their values at the time of the snapshot.
    pub expected: BTreeMap<String, Vec<u8>>,
}

/// Name of the key holding the big (multi-page) value.
pub const BIG_KEY: &str = "/registry/test/big";

/// The big value: 12 KiB, more than a page, with a pattern that shows misplaced bytes.
pub fn big_value() -> Vec<u8> {
    (0..12 * 1024).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Starts etcd in `dir`, puts a few hundred keys (overwrites, a delete, a lease, a 12 KiB value)
/// and saves a snapshot; etcd is stopped before returning.
pub fn make_etcd_snapshot(dir: &Path) -> EtcdSnapshot {
    let etcd = Etcd::start(&dir.join("source"));
    let mut expected = BTreeMap::new();
    for i in 0..300 {
        let key = format!("/registry/test/key-{i:04}");
        let value = format!("value-{i}-{}", "x".repeat(i % 50));
        etcd.ctl(&["put", &key, &value], None);
        expected.insert(key, value.into_bytes());
    }
    for i in (0..300).step_by(15) {
        let key = format!("/registry/test/key-{i:04}");
        let value = format!("updated-{i}");
        etcd.ctl(&["put", &key, &value], None);
        expected.insert(key, value.into_bytes());
    }
    for i in [7, 299] {
        let key = format!("/registry/test/key-{i:04}");
        etcd.ctl(&["del", &key], None);
        expected.remove(&key);
    }
    etcd.ctl(&["put", BIG_KEY], Some(&big_value()));
    expected.insert(BIG_KEY.to_string(), big_value());

    let granted = String::from_utf8(etcd.ctl(&["lease", "grant", "3600"], None)).unwrap();
    // "lease 694d7f0a3b5c2a11 granted with TTL(3600s)"
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    etcd.ctl(
        &[
            "put",
            "/registry/test/leased",
            "with-lease",
            &format!("--lease={lease}"),
        ],
        None,
    );
    expected.insert("/registry/test/leased".to_string(), b"with-lease".to_vec());

    let path = dir.join("etcd.snapshot.db");
    etcd.ctl(&["snapshot", "save", path.to_str().unwrap()], None);
    drop(etcd);
    EtcdSnapshot { path, expected }
}

/// Fields of `etcdctl snapshot status -w json`.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    pub hash: u64,
    pub revision: u64,
    pub total_key: u64,
    pub total_size: u64,
}

/// Runs `etcdctl snapshot status -w json` on a file.
pub fn snapshot_status(path: &Path) -> Result<Status, String> {
    let out = etcdctl_offline(&["snapshot", "status", path.to_str().unwrap(), "-w", "json"]);
    if !out.status.success() {
        return Err(format!(
            "snapshot status failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> u64 {
        let at = json
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name} in {json}"));
        json[at + name.len() + 3..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    Ok(Status {
        hash: field("hash"),
        revision: field("revision"),
        total_key: field("totalKey"),
        total_size: field("totalSize"),
    })
}

/// Reads a protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// The fields of an mvccpb.KeyValue this test needs.
#[derive(Debug, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub mod_revision: u64,
    pub value: Vec<u8>,
    pub lease: u64,
}

/// Decodes an mvccpb.KeyValue (1 key, 2 create_revision, 3 mod_revision, 4 version, 5 value,
/// 6 lease).
pub fn decode_key_value(b: &[u8]) -> KeyValue {
    let mut kv = KeyValue::default();
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at);
        match tag & 7 {
            0 => {
                let v = varint(b, &mut at);
                match tag >> 3 {
                    3 => kv.mod_revision = v,
                    6 => kv.lease = v,
                    _ => {}
                }
            }
            2 => {
                let len = varint(b, &mut at) as usize;
                let bytes = b[at..at + len].to_vec();
                at += len;
                match tag >> 3 {
                    1 => kv.key = bytes,
                    5 => kv.value = bytes,
                    _ => {}
                }
            }
            wire => panic!("unexpected wire type {wire} in KeyValue"),
        }
    }
    kv
}

/// A `key` bucket key: 8 bytes main revision (big endian), '_', 8 bytes sub revision, and a
/// trailing 't' for a tombstone. Returns (main revision, tombstone).
pub fn decode_revision(k: &[u8]) -> (u64, bool) {
    assert!(
        k.len() == 17 || k.len() == 18,
        "revision key of {} bytes",
        k.len()
    );
    assert_eq!(k[8], b'_');
    let main = u64::from_be_bytes(k[..8].try_into().unwrap());
    (main, k.len() == 18 && k[17] == b't')
}

/// CRC-32C (Castagnoli), as etcd's snapshot status hash uses.
pub struct Crc32c(u32);

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u32::from(b);
            for _ in 0..8 {
                let mask = (self.0 & 1).wrapping_neg();
                self.0 = (self.0 >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

pub mod layout;
