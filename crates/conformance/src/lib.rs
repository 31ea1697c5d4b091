//! Harness for the tests that need real processes: starts Debian's `etcd` and `coffer serve` on
//! loopback ports with fresh data directories ([`process`]), talks to both through a Rust gRPC
//! client that records every answer as normalized JSON ([`client`], [`json`]) and through
//! `etcdctl` ([`etcdctl`]), opens Watch streams ([`watch`]), and compares the two transcripts
//! ([`transcript`], [`runner`]). [`pki`] makes the CAs, certificates and CRLs of the TLS tests;
//! [`tls`] lets all of it talk mutual TLS to a server started with `tls` in its options.
//!
//! The tests live in `tests/`: `side_by_side.rs` (every KV option, error string and etcdctl
//! command on both servers), `auth.rs` (etcdctl's auth flows against a recording of etcd's
//! answers, bcrypt and JWT compatibility with etcd), `tls.rs` (mutual TLS, with auth on too), `kube_replay.rs` (what kube-apiserver sends, its watch cache
//! included), `watch.rs` and `lease.rs`, `request_size.rs` (`--max-request-bytes` at its exact
//! boundaries), `soak.rs` (many writers and watchers, every event
//! checked), and the crash and on-disk marker tests. They need `etcd` and `etcdctl` (Debian's 3.4.23) on `$PATH` and a built
//! `coffer` binary (`cargo build -p coffer`, or `$COFFER_BIN`).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod client;
pub mod etcdctl;
pub mod http;
pub mod json;
pub mod marker;
pub mod pki;
pub mod process;
pub mod runner;
pub mod tls;
pub mod transcript;
pub mod watch;

pub use process::{AnyServer, CofferOptions, CofferProcess, EtcdOptions, EtcdProcess, ServerKind};

/// What went wrong while starting, driving or stopping a server under test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A file-system or socket operation failed.
    #[error("cannot {what} ({path}): {source}")]
    Io {
        /// The operation.
        what: String,
        /// The file or address involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `coffer` binary was not found.
    #[error(
        "coffer binary not found at {looked_at}: build it first (`cargo build -p coffer`, same \
         profile and CARGO_TARGET_DIR as the tests) or set COFFER_BIN to its path"
    )]
    CofferMissing {
        /// Where it was expected.
        looked_at: PathBuf,
    },
    /// The server exited before it answered.
    #[error("{server} exited before it was ready ({status}); its output:\n{log_tail}")]
    Exited {
        /// Which server.
        server: ServerKind,
        /// Its exit status.
        status: String,
        /// The end of its output.
        log_tail: String,
    },
    /// The server did not answer gRPC in time.
    #[error(
        "{server} did not answer gRPC at {endpoint} within {waited:?}; its output:\n{log_tail}"
    )]
    NotReady {
        /// Which server.
        server: ServerKind,
        /// Where it was asked.
        endpoint: String,
        /// How long we waited.
        waited: Duration,
        /// The end of its output.
        log_tail: String,
    },
    /// Every attempt lost the race for a free port.
    #[error("{server} could not bind a free port after several attempts; its output:\n{log_tail}")]
    PortTaken {
        /// Which server.
        server: ServerKind,
        /// The end of its output.
        log_tail: String,
    },
    /// The server did not exit after SIGTERM.
    #[error("{server} did not exit within {waited:?} of SIGTERM (killed)")]
    StopTimeout {
        /// Which server.
        server: ServerKind,
        /// How long we waited.
        waited: Duration,
    },
    /// A Watch stream could not be opened, or it ended or failed while a test used it.
    #[error("watch stream at {endpoint}: {message}")]
    Watch {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// A TLS client could not be set up from the PEM files.
    #[error("TLS client: {message}")]
    Tls {
        /// What failed.
        message: String,
    },
    /// A gRPC connection could not be made.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        message: String,
    },
}

impl HarnessError {
    pub(crate) fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }
}
