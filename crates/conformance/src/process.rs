//! Real server processes for tests: Debian's `etcd` and `coffer serve`, each on free loopback
//! ports with a fresh temporary data directory, waited on until they answer gRPC, and killed
//! (SIGKILL, then reaped) when dropped.
//!
//! ```no_run
//! use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdProcess};
//!
//! let etcd = EtcdProcess::start()?;            // etcd 3.4.23 from $PATH (or $ETCD_BIN)
//! let mut coffer = CofferProcess::start(CofferOptions::default())?;
//! println!("{} {}", etcd.endpoint(), coffer.endpoint()); // "http://127.0.0.1:PORT"
//! coffer.kill();                               // SIGKILL, like a crash
//! coffer.restart()?;                           // same data dir, same key file, same port
//! # Ok::<(), coffer_conformance::HarnessError>(())
//! ```
//!
//! Both types have the same shape: `start`, `restart` (kill if running, then start again on the
//! same data directory), `kill` (SIGKILL + wait), `terminate` (SIGTERM + wait), `endpoint`,
//! `data_dir`, `pid`, `log` (everything the process wrote to stdout and stderr, across
//! restarts). All temporary files live under one directory removed on drop.
//!
//! Locating binaries: `etcd` is `$ETCD_BIN` or `etcd` on `$PATH`. `coffer` is `$COFFER_BIN`, or
//! `target/<profile>/coffer` next to the running test executable
//! (`target/debug/deps/side_by_side-1234` → `target/debug/coffer`). Cargo does not build another
//! package's binary for a test, so run `cargo build -p coffer` first; a missing binary is an
//! error that says so.
//!
//! TLS: with `tls` in the options the server listens on `https://` with etcd's certificate
//! flags and requires client certificates; the harness's clients then connect with the client
//! certificate (see [`crate::tls`]).
//!
//! Port allocation: a port is taken by binding `127.0.0.1:0` and releasing it, so another
//! process can grab it before the server binds. When a start fails with "address already in
//! use" it is retried on new ports (on `restart` the same ports are kept, since clients hold the
//! endpoint).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::pki::MutualTls;
use crate::HarnessError;

/// How long a server gets to answer its first gRPC request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a start is retried on fresh ports after losing a port race.
const PORT_RETRIES: usize = 5;

/// Options for [`CofferProcess::start`].
#[derive(Debug, Clone, Default)]
pub struct CofferOptions {
    /// `--encryption-provider-config FILE`; none → Coffer's default key.
    pub encryption_provider_config: Option<PathBuf>,
    /// `--default-key-file FILE`; none → `<tempdir>/default.key` (outside the data directory).
    pub default_key_file: Option<PathBuf>,
    /// Extra command-line arguments appended after the standard ones
    /// (e.g. `["--max-txn-ops", "64"]`).
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The binary; none → [`coffer_binary`].
    pub binary: Option<PathBuf>,
    /// Serve `https://` with mutual TLS: these certificates and etcd's flags
    /// ([`MutualTls::server_args`]); the endpoint is registered with [`crate::tls::register`].
    pub tls: Option<MutualTls>,
}

/// Options for [`EtcdProcess::start_with`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Extra command-line arguments appended after the standard ones.
    pub extra_args: Vec<String>,
    /// Serve `https://` with mutual TLS, as [`CofferOptions::tls`].
    pub tls: Option<MutualTls>,
}

/// Which server a process is, for messages and for tests that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Debian's etcd.
    Etcd,
    /// `coffer serve`.
    Coffer,
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Coffer => "coffer",
        })
    }
}

/// The common part of both servers: a child process, its ports, its directories, its log.
#[derive(Debug)]
struct Server {
    kind: ServerKind,
    program: PathBuf,
    /// Arguments that do not depend on ports (ports are added by `command`).
    base_args: Vec<String>,
    env: Vec<(String, String)>,
    tls: Option<MutualTls>,
    root: TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Server {
    fn new(
        kind: ServerKind,
        program: PathBuf,
        base_args: Vec<String>,
        env: Vec<(String, String)>,
        tls: Option<MutualTls>,
        root: TempDir,
    ) -> Self {
        let data_dir = root.path().join("data");
        let log_path = root.path().join(format!("{kind}.log"));
        Server {
            kind,
            program,
            base_args,
            env,
            tls,
            root,
            data_dir,
            log_path,
            client_port: 0,
            peer_port: 0,
            child: None,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn command(&self) -> Command {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.program);
        if self.kind == ServerKind::Coffer {
            cmd.arg("serve");
        }
        cmd.arg("--name").arg("conformance");
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd.arg("--listen-client-urls").arg(&client);
        cmd.arg("--advertise-client-urls").arg(&client);
        if self.kind == ServerKind::Etcd {
            cmd.arg("--listen-peer-urls").arg(&peer);
            cmd.arg("--initial-advertise-peer-urls").arg(&peer);
            cmd.arg("--initial-cluster")
                .arg(format!("conformance={peer}"));
        }
        if let Some(tls) = &self.tls {
            cmd.args(tls.server_args());
        }
        cmd.args(&self.base_args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts on fresh ports, retrying when a port was taken meanwhile.
    fn start_fresh_ports(&mut self) -> Result<(), HarnessError> {
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            self.client_port = free_port()?;
            self.peer_port = free_port()?;
            if let Some(tls) = &self.tls {
                crate::tls::register(&self.endpoint(), tls)?;
            }
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(HarnessError::PortTaken { .. }) => {
                    last = Some(self.log_tail());
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(HarnessError::PortTaken {
            server: self.kind,
            log_tail: last.unwrap_or_default(),
        })
    }

    fn spawn_and_wait(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io("open log file", &self.log_path, e))?;
        let log_start = log
            .metadata()
            .map_err(|e| HarnessError::io("stat log file", &self.log_path, e))?
            .len();
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io("clone log file", &self.log_path, e))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd.spawn().map_err(|e| HarnessError::Spawn {
            program: self.program.clone(),
            source: e,
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let tail = self.log_since(log_start);
                    if tail.contains("address already in use") {
                        return Err(HarnessError::PortTaken {
                            server: self.kind,
                            log_tail: tail,
                        });
                    }
                    return Err(HarnessError::Exited {
                        server: self.kind,
                        status: status.to_string(),
                        log_tail: tail,
                    });
                }
            }
            if crate::client::probe(&self.endpoint()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.log_since(log_start);
                self.kill();
                return Err(HarnessError::NotReady {
                    server: self.kind,
                    endpoint: self.endpoint(),
                    waited: READY_TIMEOUT,
                    log_tail: tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .map_err(|e| HarnessError::Spawn {
                program: "kill".into(),
                source: e,
            })?;
        if !status.success() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::StopTimeout {
                    server: self.kind,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.seek(SeekFrom::Start(offset));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            out = String::from_utf8_lossy(&bytes).into_owned();
        }
        out
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), 40)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::Io {
        what: "bind a free loopback port".into(),
        path: PathBuf::from("127.0.0.1:0"),
        source: e,
    })?;
    let port = l
        .local_addr()
        .map_err(|e| HarnessError::Io {
            what: "read a bound port".into(),
            path: PathBuf::from("127.0.0.1:0"),
            source: e,
        })?
        .port();
    Ok(port)
}

fn new_root(kind: ServerKind) -> Result<TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix(&format!("coffer-conformance-{kind}-"))
        .tempdir()
        .map_err(|e| HarnessError::io("create temp dir", Path::new("/tmp"), e))
}

/// The `etcd` binary: `$ETCD_BIN` or `etcd` from `$PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The `coffer` binary: `$COFFER_BIN`, else `target/<profile>/coffer` beside the running test
/// executable. Errors with a message saying how to build it when the file is missing.
pub fn coffer_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("COFFER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(HarnessError::CofferMissing { looked_at: p });
    }
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::io("find the test executable", Path::new("."), e))?;
    // .../target/<profile>/deps/<test> → .../target/<profile>/coffer
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let candidate = profile_dir.join("coffer");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(HarnessError::CofferMissing {
            looked_at: candidate,
        })
    }
}

/// Debian's etcd as a single-member cluster on loopback.
#[derive(Debug)]
pub struct EtcdProcess {
    server: Server,
}

impl EtcdProcess {
    /// Starts etcd with a fresh data directory and waits until it answers gRPC.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(EtcdOptions::default())
    }

    /// Like [`EtcdProcess::start`] with extra flags.
    pub fn start_with(opts: EtcdOptions) -> Result<Self, HarnessError> {
        let root = new_root(ServerKind::Etcd)?;
        let mut server = Server::new(
            ServerKind::Etcd,
            etcd_binary(),
            opts.extra_args,
            Vec::new(),
            opts.tls,
            root,
        );
        server.start_fresh_ports()?;
        Ok(EtcdProcess { server })
    }

    /// Kills etcd if it runs and starts it again on the same data directory and ports.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.server.spawn_and_wait()
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// SIGTERM, wait up to `timeout` for exit (SIGKILL after).
    pub fn terminate(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.server.terminate(timeout)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The data directory (kept across restarts, removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.server.data_dir
    }

    /// The temporary directory holding the data directory and the log.
    pub fn root_dir(&self) -> &Path {
        self.server.root.path()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Everything the process printed, across restarts.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// Always [`ServerKind::Etcd`].
    pub fn kind(&self) -> ServerKind {
        ServerKind::Etcd
    }
}

/// `coffer serve` on loopback, with a default key file outside its data directory.
#[derive(Debug)]
pub struct CofferProcess {
    server: Server,
    key_file: PathBuf,
}

impl CofferProcess {
    /// Starts `coffer serve` with a fresh data directory and waits until it answers gRPC.
    pub fn start(opts: CofferOptions) -> Result<Self, HarnessError> {
        let program = match opts.binary {
            Some(p) => p,
            None => coffer_binary()?,
        };
        let root = new_root(ServerKind::Coffer)?;
        let key_file = match opts.default_key_file {
            Some(k) => k,
            None => {
                let dir = root.path().join("keys");
                create_private_dir(&dir)?;
                dir.join("default.key")
            }
        };
        let mut args = vec![
            "--default-key-file".to_string(),
            key_file.display().to_string(),
        ];
        if let Some(cfg) = &opts.encryption_provider_config {
            args.push("--encryption-provider-config".into());
            args.push(cfg.display().to_string());
        }
        args.extend(opts.extra_args);
        let mut server = Server::new(ServerKind::Coffer, program, args, opts.env, opts.tls, root);
        server.start_fresh_ports()?;
        Ok(CofferProcess { server, key_file })
    }

    /// Kills Coffer if it runs and starts it again on the same data directory, key file and
    /// ports.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.server.spawn_and_wait()
    }

    /// Like [`CofferProcess::restart`] but with other extra arguments (replacing the previous
    /// ones after the standard flags), e.g. to restart with a different key file.
    pub fn restart_with_args(&mut self, args: Vec<String>) -> Result<(), HarnessError> {
        self.server.base_args = args;
        self.server.spawn_and_wait()
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// SIGTERM, wait up to `timeout` for exit (SIGKILL after).
    pub fn terminate(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.server.terminate(timeout)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The data directory (kept across restarts, removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.server.data_dir
    }

    /// The `--default-key-file` path.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The temporary directory holding the data directory, the key file (by default) and the log.
    pub fn root_dir(&self) -> &Path {
        self.server.root.path()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Everything the process printed, across restarts.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// The full argument list after `serve`-independent flags (for messages).
    pub fn args(&self) -> &[String] {
        &self.server.base_args
    }

    /// Always [`ServerKind::Coffer`].
    pub fn kind(&self) -> ServerKind {
        ServerKind::Coffer
    }
}

/// Either server, for code that runs the same scenario on both.
#[derive(Debug)]
pub enum AnyServer {
    /// Debian's etcd.
    Etcd(EtcdProcess),
    /// `coffer serve`.
    Coffer(CofferProcess),
}

impl AnyServer {
    /// Starts a fresh server of the given kind with default options.
    pub fn start(kind: ServerKind) -> Result<Self, HarnessError> {
        Ok(match kind {
            ServerKind::Etcd => AnyServer::Etcd(EtcdProcess::start()?),
            ServerKind::Coffer => {
                AnyServer::Coffer(CofferProcess::start(CofferOptions::default())?)
            }
        })
    }

    /// Starts a fresh server of the given kind with `extra_args` appended to its command line.
    pub fn start_with(kind: ServerKind, extra_args: Vec<String>) -> Result<Self, HarnessError> {
        Self::start_with_tls(kind, extra_args, None)
    }

    /// Like [`AnyServer::start_with`], serving mutual TLS with `tls` when given.
    pub fn start_with_tls(
        kind: ServerKind,
        extra_args: Vec<String>,
        tls: Option<MutualTls>,
    ) -> Result<Self, HarnessError> {
        Ok(match kind {
            ServerKind::Etcd => {
                AnyServer::Etcd(EtcdProcess::start_with(EtcdOptions { extra_args, tls })?)
            }
            ServerKind::Coffer => AnyServer::Coffer(CofferProcess::start(CofferOptions {
                extra_args,
                tls,
                ..Default::default()
            })?),
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        match self {
            AnyServer::Etcd(p) => p.endpoint(),
            AnyServer::Coffer(p) => p.endpoint(),
        }
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        match self {
            AnyServer::Etcd(_) => ServerKind::Etcd,
            AnyServer::Coffer(_) => ServerKind::Coffer,
        }
    }

    /// Everything the process printed.
    pub fn log(&self) -> String {
        match self {
            AnyServer::Etcd(p) => p.log(),
            AnyServer::Coffer(p) => p.log(),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        match self {
            AnyServer::Etcd(p) => p.data_dir(),
            AnyServer::Coffer(p) => p.data_dir(),
        }
    }
}

/// Creates `dir` (and parents) with mode 0700, for tests that place key files themselves.
pub fn create_private_dir(dir: &Path) -> Result<(), HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).map_err(|e| HarnessError::io("create directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| HarnessError::io("chmod directory", dir, e))
}
