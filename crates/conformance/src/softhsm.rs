//! A fresh SoftHSM2 token per test: its own configuration file and token directory in a
//! temporary directory, initialised with `softhsm2-util`, so no state is shared between tests.
//! Processes that use it get `SOFTHSM2_CONF` from [`SoftHsmToken::env`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// Where Debian's softhsm2 package puts the PKCS#11 module.
pub const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// An initialised token in its own directory.
#[derive(Debug)]
pub struct SoftHsmToken {
    dir: tempfile::TempDir,
    conf: PathBuf,
    label: String,
    pin: String,
}

fn tool(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Tool {
        program: "softhsm2-util".to_owned(),
        message: format!("{what}: {e} (install Debian's softhsm2 package)"),
    }
}

impl SoftHsmToken {
    /// A new token labelled `label` with user PIN `pin`.
    pub fn new(label: &str, pin: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| tool("create a temporary directory", e))?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).map_err(|e| tool("create the token directory", e))?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| tool("write softhsm2.conf", e))?;
        let token = SoftHsmToken {
            dir,
            conf,
            label: label.to_owned(),
            pin: pin.to_owned(),
        };
        token.util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            "coffer-so-pin",
        ])?;
        Ok(token)
    }

    /// Runs `softhsm2-util` against this token's configuration.
    pub fn util(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .map_err(|e| tool("run", e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(tool(&format!("{args:?} failed"), text));
        }
        Ok(text)
    }

    /// The PKCS#11 module (the first of [`MODULE_CANDIDATES`] that exists).
    pub fn module() -> Result<PathBuf, HarnessError> {
        MODULE_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| tool("no libsofthsm2.so", MODULE_CANDIDATES.join(", ")))
    }

    /// `SOFTHSM2_CONF` for processes that use the token.
    pub fn env(&self) -> (String, String) {
        ("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string())
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Writes the PIN to a 0600 file in the token's directory and returns its path.
    pub fn pin_file(&self) -> Result<PathBuf, HarnessError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join("pin");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| tool("write the PIN file", e))?;
        f.write_all(self.pin.as_bytes())
            .map_err(|e| tool("write the PIN file", e))?;
        Ok(path)
    }

    /// The token's temporary directory (for sockets and files a test puts beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the token (the HSM "disappears" under a running plugin).
    pub fn delete(&self) -> Result<(), HarnessError> {
        self.util(&["--delete-token", "--token", &self.label])
            .map(|_| ())
    }
}
