//! The robustness suite (in the manner of etcd's `tests/robustness` and Jepsen): random
//! concurrent traffic against Coffer or etcd while faults are injected, recorded as a
//! [`history::History`], then checked for linearizability ([`linearizability`]) and for the
//! watch guarantees ([`watch_check`]).
//!
//! The runner side: [`traffic`] generates seeded requests from many clients and watchers and
//! records them; [`faults`] owns the server process and injects crashes, pauses, the quota
//! alarm and a full disk; [`run`] ties one run together and reports; [`expected`] lists the
//! failures etcd 3.4.23 is known to show.
//!
//! ```no_run
//! use coffer_robustness::run::{run, RunConfig};
//! use coffer_robustness::faults::FaultKind;
//!
//! let cfg = RunConfig::new(coffer_conformance::ServerKind::Coffer, 42)
//!     .with_faults(&[FaultKind::Kill, FaultKind::Pause]);
//! let report = tokio::runtime::Runtime::new()?.block_on(run(cfg))?;
//! println!("{}", report.summary());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;

pub mod expected;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod run;
pub mod settle;
pub mod traffic;
pub mod watch_check;

/// What can stop a run before it produces a verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Starting, restarting or stopping the server under test failed.
    #[error("server under test: {0}")]
    Harness(#[from] coffer_conformance::HarnessError),
    /// A fault could not be injected (e.g. the tmpfs for the full-disk fault cannot be mounted).
    #[error("cannot inject the {fault} fault: {reason}")]
    Fault {
        /// Which fault.
        fault: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// A file operation on the run directory or a saved history failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A saved history is not valid JSON of the expected shape.
    #[error("{path} is not a saved history: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column).
        source: serde_json::Error,
    },
    /// The server never answered the final read of the run.
    #[error("the server did not answer the final read after the run: {0}")]
    FinalRead(String),
    /// The certificates for a `--tls` run could not be made.
    #[error("mutual TLS: {0}")]
    Tls(String),
    /// A task of the run panicked or was cancelled.
    #[error("a task of the run failed: {0}")]
    Task(String),
}
