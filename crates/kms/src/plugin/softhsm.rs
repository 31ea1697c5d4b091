//! A throwaway SoftHSM2 token in a directory of its own (its own `SOFTHSM2_CONF` and token
//! directory), for tests and for trying the PKCS#11 backend out without an HSM.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::PluginError;

/// Where Debian's `softhsm2` package puts the PKCS#11 module.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token initialised under a directory.
#[derive(Debug, Clone)]
pub struct SoftHsmToken {
    /// The configuration file: pass it as `SOFTHSM2_CONF` to every process using the token.
    pub conf: PathBuf,
    /// The token label.
    pub label: String,
    /// The slot SoftHSM2 gave the token (as `softhsm2-util` reported it).
    pub slot: Option<u64>,
}

impl SoftHsmToken {
    /// Writes `dir/softhsm2.conf` with `dir/tokens` as the token directory and initialises a
    /// token labelled `label` with `softhsm2-util` (its PINs are passed on its command line:
    /// for tests only).
    pub fn init(dir: &Path, label: &str, pin: &str, so_pin: &str) -> Result<Self, PluginError> {
        let missing = |what: &str| {
            PluginError::Config(format!(
                "{what} is missing: install SoftHSM2 and OpenSC (apt-get install softhsm2 opensc)"
            ))
        };
        if !Path::new(SOFTHSM2_MODULE).exists() {
            return Err(missing(SOFTHSM2_MODULE));
        }
        let io = |context: String| move |source| PluginError::Io { context, source };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(io(format!("create {}", tokens.display())))?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(io(format!("write {}", conf.display())))?;
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", pin, "--so-pin", so_pin])
            .output()
            .map_err(|_| missing("softhsm2-util"))?;
        if !out.status.success() {
            return Err(PluginError::Config(format!(
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // "The token has been initialized and is reassigned to slot 1496789767"
        let slot = String::from_utf8_lossy(&out.stdout)
            .split_once("reassigned to slot ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
        Ok(Self {
            conf,
            label: label.to_owned(),
            slot,
        })
    }
}
