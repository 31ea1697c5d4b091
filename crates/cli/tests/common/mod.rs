//! Helpers shared by the tests that run the `coffer` binary on stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// `coffer <args> --encryption-provider-config <config>` with `stdin`, to the end.
pub fn run(args: &[&str], config: &Path, stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--encryption-provider-config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Its standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
