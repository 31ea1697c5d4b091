//! Runs Debian's `etcdctl` (API v3) against an endpoint and returns what it printed, with the
//! JSON normalized for comparison (no `cluster_id`, `member_id`, `raft_term`; the endpoint
//! replaced by `<client>`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::json::normalize_etcdctl;
use crate::HarnessError;

/// What one etcdctl run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Exit code (`-1` if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// A normalized JSON view: stdout parsed as JSON (one value, or several lines each a JSON
    /// value) when it parses, else as text; stderr with the endpoint masked.
    pub fn normalized(&self, endpoint: &str) -> Value {
        let mut out = parse_json_stream(&self.stdout)
            .unwrap_or_else(|| Value::String(self.stdout.trim_end().to_string()));
        normalize_etcdctl(&mut out, endpoint);
        json!({"exit": self.code, "stdout": out, "stderr": normalize_stderr(&self.stderr, endpoint)})
    }
}

/// etcdctl's stderr without clientv3's JSON log lines (timestamps, random client ids); the
/// distinct gRPC errors those lines report are kept, since they carry the status code that the
/// final `Error: ...` line omits.
pub fn normalize_stderr(stderr: &str, endpoint: &str) -> Value {
    let mut grpc_errors: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for line in stderr.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) if m.contains_key("level") => {
                if let Some(e) = m.get("error").and_then(Value::as_str) {
                    if !grpc_errors.iter().any(|x| x == e) {
                        grpc_errors.push(e.to_string());
                    }
                }
            }
            _ => lines.push(line.replace(endpoint, "<client>")),
        }
    }
    json!({"text": lines.join("\n"), "grpc_errors": grpc_errors})
}

fn parse_json_stream(s: &str) -> Option<Value> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Some(v);
    }
    let mut values = Vec::new();
    for v in serde_json::Deserializer::from_str(s).into_iter::<Value>() {
        values.push(v.ok()?);
    }
    Some(Value::Array(values))
}

/// The `etcdctl` binary: `$ETCDCTL_BIN` or `etcdctl` from `$PATH`.
pub fn binary() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcdctl"))
}

/// Runs `ETCDCTL_API=3 etcdctl --endpoints <endpoint> <args...>`, feeding `stdin` if given;
/// with `--cacert/--cert/--key` first when `endpoint` is registered for mutual TLS
/// ([`crate::tls::register`]).
pub fn run(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, HarnessError> {
    let mut cmd = Command::new(binary());
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s");
    if let Some(files) = crate::tls::files_for(endpoint) {
        cmd.args(files.etcdctl_args());
    }
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| HarnessError::Spawn {
        program: binary(),
        source: e,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| HarnessError::io("write etcdctl stdin", &binary(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| HarnessError::io("wait for etcdctl", &binary(), e))?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
