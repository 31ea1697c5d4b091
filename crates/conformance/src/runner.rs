//! Runs one scenario on Debian's etcd and on the server under test, each fresh, and compares
//! the transcripts.
//!
//! The server under test is `coffer serve` unless `COFFER_CONFORMANCE_AGAINST=etcd`, which runs
//! the scenario on a second etcd instead (a self-check of the harness and of the scenario's
//! determinism; expected differences are then applied to both etcd transcripts).

use std::future::Future;

use crate::client::Session;
use crate::process::{AnyServer, ServerKind};
use crate::transcript::{apply_expected, compare, ExpectedDifference, Transcript};

/// Which server the scenarios are compared against.
pub fn server_under_test() -> ServerKind {
    match std::env::var("COFFER_CONFORMANCE_AGAINST").as_deref() {
        Ok("etcd") => ServerKind::Etcd,
        _ => ServerKind::Coffer,
    }
}

/// Starts etcd and the server under test (in parallel).
pub fn start_pair() -> Result<(AnyServer, AnyServer), String> {
    start_pair_with(&[])
}

/// Like [`start_pair`], with `extra_args` appended to both servers' command lines (flags both
/// accept, e.g. `--experimental-watch-progress-notify-interval=500ms`).
pub fn start_pair_with(extra_args: &[&str]) -> Result<(AnyServer, AnyServer), String> {
    let args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
    let other_kind = server_under_test();
    let other_args = args.clone();
    let other = std::thread::spawn(move || AnyServer::start_with(other_kind, other_args));
    let etcd = AnyServer::start_with(ServerKind::Etcd, args).map_err(|e| e.to_string());
    let other = other
        .join()
        .map_err(|_| "starting the server under test panicked".to_string())?
        .map_err(|e| e.to_string());
    Ok((etcd?, other?))
}

/// Runs `scenario` on a fresh server of `kind`, returning its transcript.
pub async fn run_on<F, Fut>(server: &AnyServer, scenario: &F) -> Result<Transcript, String>
where
    F: Fn(Session) -> Fut,
    Fut: Future<Output = Session>,
{
    let session = Session::connect(&server.endpoint())
        .await
        .map_err(|e| e.to_string())?;
    Ok(scenario(session).await.transcript)
}

/// Runs `scenario` on etcd and on the server under test and compares the transcripts after
/// applying `expected` to etcd's. `Err` is a report fit for a test failure.
pub async fn side_by_side<F, Fut>(
    name: &str,
    expected: &[ExpectedDifference],
    scenario: F,
) -> Result<(), String>
where
    F: Fn(Session) -> Fut,
    Fut: Future<Output = Session>,
{
    side_by_side_with(name, expected, &[], scenario).await
}

/// Like [`side_by_side`], with `extra_args` given to both servers (see [`start_pair_with`]).
pub async fn side_by_side_with<F, Fut>(
    name: &str,
    expected: &[ExpectedDifference],
    extra_args: &[&str],
    scenario: F,
) -> Result<(), String>
where
    F: Fn(Session) -> Fut,
    Fut: Future<Output = Session>,
{
    let (etcd, other) = start_pair_with(extra_args)?;
    let etcd_t = run_on(&etcd, &scenario).await?;
    let other_t = run_on(&other, &scenario).await?;
    let etcd_t = apply_expected(name, &etcd_t, expected)?;
    let etcd_name = "etcd 3.4.23 (with expected differences applied)";
    // Self-check mode: the second etcd gets the same corrections, so the comparison checks the
    // harness and the scenario's determinism.
    let other_t = if other.kind() == ServerKind::Etcd {
        apply_expected(name, &other_t, expected)?
    } else {
        other_t
    };
    if std::env::var_os("COFFER_CONFORMANCE_DUMP").is_some() {
        for s in &etcd_t.steps {
            eprintln!("[{name}] {} {} => {}", s.label, s.request, s.answer);
        }
    }
    compare(
        name,
        etcd_name,
        &etcd_t,
        &other.kind().to_string(),
        &other_t,
    )
}
