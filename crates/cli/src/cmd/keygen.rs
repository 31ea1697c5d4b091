//! `coffer keygen` [offline]: a fresh key from the OS CSPRNG, printed as a provider block ready
//! to paste into an EncryptionConfiguration (or, with `--raw`, as the bare base64 secret).
//! The key and its base64 text live in `SecretBytes` and are zeroized when the command ends.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use coffer_seal::SecretBytes;

/// Providers that take a key from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// AES-GCM: authenticated, binds each value to its etcd key; random 96-bit nonces, so rotate
    /// well before 2^32 writes per key.
    Aesgcm,
    /// AES-CBC with PKCS#7: unauthenticated (malleable); only for compatibility.
    Aescbc,
    /// XSalsa20-Poly1305 (NaCl secretbox): authenticated, 32-byte keys only.
    Secretbox,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Aesgcm => "aesgcm",
            Provider::Aescbc => "aescbc",
            Provider::Secretbox => "secretbox",
        }
    }
}

/// Flags of `coffer keygen`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  coffer keygen\n  coffer keygen --provider secretbox --name sb-2026\n  coffer keygen --raw > key.b64",
    after_long_help = concat!(
        "[offline] Generate a fresh key from the operating system's CSPRNG and print it as a \
provider element for an EncryptionConfiguration, ready to paste under `providers:`.\n\n\
The default is aesgcm with a 32-byte key: it is authenticated (a tampered value, or a value \
copied under another etcd key, fails to decrypt, unlike aescbc), fast on every CPU with AES \
instructions, and accepted by every kube-apiserver since 1.13. Its random 96-bit nonce means a \
key must be rotated well before 2^32 writes; secretbox has no such limit (and passes kube-bench's \
CIS 1.2.28 check). Keys in the file sit beside the data: for production prefer a KMS v2 plugin \
(`coffer kms-plugin`).\n\n\
To rotate: put the new key first in the provider's `keys` list (it writes), keep the old key \
after it (it still reads), restart every kube-apiserver, rewrite all objects, then drop the old key.",
        "\n\n",
        "Examples:\n  coffer keygen\n  coffer keygen --provider secretbox --name sb-2026\n  coffer keygen --raw > key.b64"
    )
)]
pub struct Args {
    /// Provider the key is for.
    #[arg(long, value_enum, default_value_t = Provider::Aesgcm)]
    pub provider: Provider,
    /// Key name, stored in clear in every value's prefix (`k8s:enc:aesgcm:v1:<name>:`).
    /// Default: key-<UTC date YYYYMMDD>, which keeps rotated keys apart.
    #[arg(long)]
    pub name: Option<String>,
    /// Key size in bytes: 16, 24 or 32 for aesgcm/aescbc; secretbox takes only 32.
    #[arg(long, default_value_t = 32, value_parser = parse_size)]
    pub size: usize,
    /// Print only the base64 key (no YAML).
    #[arg(long)]
    pub raw: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s {
        "16" => Ok(16),
        "24" => Ok(24),
        "32" => Ok(32),
        _ => Err("must be 16, 24 or 32".to_owned()),
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.provider == Provider::Secretbox && args.size != 32 {
        eprintln!(
            "error: invalid value '{}' for '--size <SIZE>': secretbox keys are exactly 32 bytes\n\nFor more information, try '--help'.",
            args.size
        );
        return Ok(ExitCode::from(2));
    }
    let name = args.name.clone().unwrap_or_else(default_name);
    if name.is_empty() {
        eprintln!("error: invalid value '' for '--name <NAME>': a key name must not be empty\n\nFor more information, try '--help'.");
        return Ok(ExitCode::from(2));
    }

    let mut bytes = vec![0u8; args.size];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading the operating system's random generator: {e}"))?;
    let key = SecretBytes::new(bytes);
    let mut text = vec![0u8; base64::encoded_len(key.len(), true).unwrap_or(0)];
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(key.expose_secret(), &mut text)
        .context("encoding the key")?;
    text.truncate(written);
    let encoded = SecretBytes::new(text);
    drop(key);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.raw {
        out.write_all(encoded.expose_secret())?;
        out.write_all(b"\n")?;
    } else {
        write!(
            out,
            "# {size}-byte {provider} key from `coffer keygen`. Paste under `providers:`; put the new\n\
             # key first in `keys` to write with it and keep older keys after it until every object is rewritten.\n\
             - {provider}:\n    keys:\n      - name: {name}\n        secret: ",
            size = args.size,
            provider = args.provider.name(),
            name = yaml_string(&name),
        )?;
        out.write_all(encoded.expose_secret())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `key-YYYYMMDD` (UTC).
fn default_name() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(days as i64);
    format!("key-{y:04}{m:02}{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The name as a YAML scalar: plain when that is unambiguous, else a JSON (= YAML) quoted string.
fn yaml_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && s.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_665), (2026, 7, 31));
    }

    #[test]
    fn names() {
        assert_eq!(yaml_string("key-20260801"), "key-20260801");
        assert_eq!(yaml_string("a:b"), "\"a:b\"");
        assert_eq!(yaml_string("yes"), "\"yes\"");
        assert_eq!(yaml_string("1key"), "\"1key\"");
    }
}
