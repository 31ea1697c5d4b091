//! Runs one scenario on Debian's etcd and on the server under test, each fresh, and compares
//! the transcripts.
//!
//! The server under test is `coffer serve` unless `COFFER_CONFORMANCE_AGAINST=etcd`, which runs
//! the scenario on a second etcd instead (a self-check of the harness and of the scenario's
//! determinism; expected differences are then applied to both etcd transcripts).

use std::future::Future;

use crate::client::Session;
use crate::pki::MutualTls;
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
    start_pair_tls(extra_args, None)
}

/// Like [`start_pair_with`], both servers serving mutual TLS with `tls` when given.
pub fn start_pair_tls(
    extra_args: &[&str],
    tls: Option<&MutualTls>,
) -> Result<(AnyServer, AnyServer), String> {
    let args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
    let other_kind = server_under_test();
    let other_args = args.clone();
    let other_tls = tls.cloned();
    let other =
        std::thread::spawn(move || AnyServer::start_with_tls(other_kind, other_args, other_tls));
    let etcd =
        AnyServer::start_with_tls(ServerKind::Etcd, args, tls.cloned()).map_err(|e| e.to_string());
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
    compare_pair(name, expected, start_pair_with(extra_args)?, scenario).await
}

/// Like [`side_by_side_with`], both servers serving mutual TLS (a fresh CA, server and client
/// certificates, client certificates required) and every client connecting with the client
/// certificate.
pub async fn side_by_side_tls<F, Fut>(
    name: &str,
    expected: &[ExpectedDifference],
    extra_args: &[&str],
    scenario: F,
) -> Result<(), String>
where
    F: Fn(Session) -> Fut,
    Fut: Future<Output = Session>,
{
    let dir = tempfile::Builder::new()
        .prefix("coffer-conformance-mtls-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the certificates: {e}"))?;
    let tls = MutualTls::generate(dir.path()).map_err(|e| format!("certificates: {e}"))?;
    let pair = start_pair_tls(extra_args, Some(&tls))?;
    for server in [&pair.0, &pair.1] {
        // The replay must not pass over plaintext: the port answers only TLS.
        let endpoint = server.endpoint();
        let plain = endpoint.replacen("https://", "http://", 1);
        if !endpoint.starts_with("https://") || crate::client::probe(&plain) {
            return Err(format!("{} at {endpoint} answers plaintext", server.kind()));
        }
    }
    compare_pair(name, expected, pair, scenario).await
}

async fn compare_pair<F, Fut>(
    name: &str,
    expected: &[ExpectedDifference],
    (etcd, other): (AnyServer, AnyServer),
    scenario: F,
) -> Result<(), String>
where
    F: Fn(Session) -> Fut,
    Fut: Future<Output = Session>,
{
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
