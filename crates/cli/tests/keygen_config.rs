//! `coffer keygen` and `coffer config check`, run as the built binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use coffer_seal::config::{self, ProviderConfiguration};

fn coffer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../seal/tests/data/configs")
        .join(rel)
}

/// Wraps a `coffer keygen` block into a whole configuration for `secrets`.
fn wrap(block: &str) -> String {
    let mut s = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n",
    );
    for line in block.lines() {
        s.push_str("      ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("      - identity: {}\n");
    s
}

#[test]
fn keygen_block_is_a_valid_provider_for_every_provider_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str, usize)] = &[
        (&[], "aesgcm", 32),
        (&["--provider", "aesgcm", "--size", "16"], "aesgcm", 16),
        (&["--provider", "aescbc", "--size", "24"], "aescbc", 24),
        (&["--provider", "aescbc"], "aescbc", 32),
        (&["--provider", "secretbox"], "secretbox", 32),
        (&["--name", "rotated:2"], "aesgcm", 32),
    ];
    for (i, (extra, provider, size)) in cases.iter().enumerate() {
        let mut args = vec!["keygen"];
        args.extend_from_slice(extra);
        let out = coffer(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let block = text(&out.stdout);
        let file = dir.path().join(format!("enc{i}.yaml"));
        std::fs::write(&file, wrap(&block)).unwrap();

        let cfg = config::load(&file).unwrap_or_else(|e| panic!("{args:?}: {e}\n{block}"));
        let keys = match &cfg.resources[0].providers[0] {
            ProviderConfiguration::AesGcm(k) if *provider == "aesgcm" => k,
            ProviderConfiguration::AesCbc(k) if *provider == "aescbc" => k,
            ProviderConfiguration::Secretbox(k) if *provider == "secretbox" => k,
            other => panic!("{args:?}: wrong provider {other:?}"),
        };
        assert_eq!(keys.keys[0].secret.len(), *size, "{args:?}");
        if extra.contains(&"--name") {
            assert_eq!(keys.keys[0].name, "rotated:2");
        } else {
            let name = &keys.keys[0].name;
            assert!(
                name.len() == 12
                    && name.starts_with("key-20")
                    && name[4..].bytes().all(|c| c.is_ascii_digit()),
                "default name {name:?}"
            );
        }

        let check = coffer(&["config", "check", file.to_str().unwrap()]);
        assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
        // The secret never appears in the check's output.
        let secret_line = block.lines().find(|l| l.contains("secret:")).unwrap();
        let secret = secret_line.split("secret:").nth(1).unwrap().trim();
        assert!(!text(&check.stdout).contains(secret));
        assert!(!text(&check.stderr).contains(secret));
    }
}

#[test]
fn keygen_raw_is_fresh_base64() {
    let a = text(&coffer(&["keygen", "--raw"]).stdout);
    let b = text(&coffer(&["keygen", "--raw"]).stdout);
    assert_ne!(a, b, "two keys must differ");
    for k in [&a, &b] {
        assert_eq!(k.lines().count(), 1);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(k.trim())
            .unwrap();
        assert_eq!(bytes.len(), 32);
    }
    let short = text(&coffer(&["keygen", "--raw", "--size", "16"]).stdout);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(short.trim())
            .unwrap()
            .len(),
        16
    );
}

#[test]
fn keygen_usage_errors_exit_2() {
    for args in [
        &["keygen", "--provider", "secretbox", "--size", "16"][..],
        &["keygen", "--size", "20"],
        &["keygen", "--provider", "des"],
        &["keygen", "--name", ""],
    ] {
        let out = coffer(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed a key");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn config_check_valid_text_and_json() {
    let f = fixture("valid/wildcards-allowed.yaml");
    let out = coffer(&["config", "check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("valid EncryptionConfiguration, 4 resource rules"),
        "{s}"
    );
    assert!(s.contains("resources[0]: events"), "{s}");
    assert!(s.contains("etcd keys: /registry/events/"), "{s}");
    assert!(s.contains("writes:    identity (plaintext)"), "{s}");
    assert!(
        s.contains("warning[identity-first] resources[0].providers[0]"),
        "{s}"
    );
    assert!(s.contains("warning[cis-1.2.28]"), "{s}");

    let out = coffer(&[
        "config",
        "check",
        f.to_str().unwrap(),
        "--output",
        "json",
        "--etcd-prefix",
        "/kubernetes.io",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    let rules = v["report"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4);
    assert_eq!(rules[1]["write"]["type"], "aesgcm");
    assert_eq!(rules[1]["write"]["keys"][0], "key1");
    assert_eq!(rules[1]["write"]["prefix"], "k8s:enc:aesgcm:v1:key1:");
    assert_eq!(rules[1]["etcd_keys"][0], "/kubernetes.io/secrets/");
    assert!(v["report"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["code"] == "identity-first"));
}

#[test]
fn config_check_invalid_lists_every_error_on_stderr() {
    let f = fixture("invalid/aggregate-many.yaml");
    let out = coffer(&["config", "check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid encryption configuration (6 errors)"),
        "{err}"
    );
    for want in std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
    {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(out.stdout.is_empty());

    let out = coffer(&["config", "check", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["error"], "validation");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 6);
    assert_eq!(
        errors[3]["path"],
        "resources[0].providers[0].aesgcm.keys[0].secret"
    );
    assert_eq!(errors[3]["type"], "invalid");
    assert_eq!(errors[3]["value"], "\"REDACTED\"");
    assert_eq!(
        errors[3]["detail"],
        "secret is not of the expected length, got 7, expected one of [16 24 32]"
    );

    for (rel, want) in [
        (
            "invalid/decode-unknown-field.yaml",
            "strict decoding error: unknown field \"resources[0].providers[0].kms.pandas\"",
        ),
        (
            "invalid/masking-core.yaml",
            "resource \"secrets\" is masked by earlier rule \"*.\"",
        ),
        (
            "invalid/type-wrong-kind.yaml",
            "no kind \"EncryptionConfigurations\" is registered",
        ),
    ] {
        let f = fixture(rel);
        let out = coffer(&["config", "check", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{rel}");
        assert!(
            text(&out.stderr).contains(want),
            "{rel}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn config_check_unreadable_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = coffer(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error reading encryption provider configuration file"));
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let out = coffer(&["config", "check", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is empty"));

    assert_eq!(coffer(&["config", "check"]).status.code(), Some(2));
    assert_eq!(
        coffer(&["config", "check", "x.yaml", "--output", "xml"])
            .status
            .code(),
        Some(2)
    );
    let help = coffer(&["config", "check", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("Exit status"));
}
