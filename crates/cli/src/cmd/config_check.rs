//! `coffer config check` [offline]: validates an EncryptionConfiguration as kube-apiserver
//! does (strict decoding, every validation rule, the masking check), then shows per rule which
//! provider writes and which can read, and warns about weak or surprising choices.
//! Exit status: 0 valid (warnings do not fail), 1 invalid or unreadable, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use coffer_seal::config::{self, ConfigError, Report};
use serde_json::json;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// One JSON object on stdout, for scripts.
    Json,
}

/// Flags of `coffer config check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  coffer config check /etc/kubernetes/enc.yaml\n  coffer config check enc.yaml --output json | jq .report.warnings",
    after_long_help = concat!(
        "[offline] Validate an EncryptionConfiguration (the file given to kube-apiserver's \
--encryption-provider-config, YAML or JSON) exactly as kube-apiserver 1.31+ does: strict \
decoding (unknown or duplicated fields are errors), every validation rule with the same paths \
and messages, and the check that no resource is masked by an earlier wildcard rule. Coffer also \
requires KMS endpoints of the form unix:///path.\n\n\
For a valid file it prints, per resource rule, the etcd keys it covers, the provider that writes \
and the providers that can read (in the order tried), then warnings: plaintext writes, aescbc, \
keys kept in the file, the aesgcm nonce limit, deprecated KMS v1, resource names that match \
nothing, duplicate key names, kube-bench CIS 1.2.28. Key material is never printed.\n\n\
Exit status: 0 valid (even with warnings), 1 invalid (every error on stderr), 2 usage error.",
        "\n\n",
        "Examples:\n  coffer config check /etc/kubernetes/enc.yaml\n  coffer config check enc.yaml --output json | jq .report.warnings"
    )
)]
pub struct Args {
    /// The EncryptionConfiguration file (YAML or JSON).
    pub file: PathBuf,
    /// Output format: text, or json for scripts (stdout; errors are also on stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// kube-apiserver's --etcd-prefix, used to show which etcd keys each rule covers.
    #[arg(long, default_value = config::DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// A stopped `coffer serve` data directory: also show how many writes each aesgcm key of
    /// the file has sealed there (Kubernetes advises rotating after 200,000; Coffer refuses new
    /// writes under a key before 2^32).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = args.file.display().to_string();
    match config::load(&args.file) {
        Err(err) => {
            let lines = err.lines();
            eprintln!(
                "{file}: invalid encryption configuration ({} {}):",
                lines.len(),
                if lines.len() == 1 { "error" } else { "errors" }
            );
            for line in &lines {
                eprintln!("  {line}");
            }
            if args.output == Output::Json {
                let doc = json!({
                    "file": file,
                    "valid": false,
                    "error": error_kind(&err),
                    "message": err.to_string(),
                    "errors": error_details(&err),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            Ok(ExitCode::from(1))
        }
        Ok(cfg) => {
            let report = config::check(&cfg, &args.etcd_prefix);
            let writes = match &args.data_dir {
                Some(dir) => Some(write_counts(&cfg, &args.etcd_prefix, dir)?),
                None => None,
            };
            match args.output {
                Output::Json => {
                    let mut doc = json!({ "file": file, "valid": true, "report": report });
                    if let (Some(w), Some(o)) = (&writes, doc.as_object_mut()) {
                        o.insert("writes".into(), json!(w));
                    }
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                Output::Text => {
                    print!("{}", render_text(&file, &report));
                    if let Some(w) = &writes {
                        print!("{}", render_writes(w));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes counted per aesgcm key of the file, as persisted in a data directory.
#[derive(Debug, serde::Serialize)]
struct Writes {
    data_dir: String,
    counts: Vec<Count>,
    warnings: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct Count {
    counter: String,
    writes: u64,
}

fn write_counts(
    cfg: &config::model::EncryptionConfiguration,
    etcd_prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Writes> {
    use anyhow::Context;
    let persisted = coffer_store::engine::read_write_counts(dir)
        .with_context(|| format!("--data-dir {}", dir.display()))?;
    let rng: std::sync::Arc<dyn coffer_seal::RandomSource> =
        std::sync::Arc::new(coffer_seal::SystemRandom::new()?);
    let kms = coffer_kms::client::GrpcConnector::new().context("cannot start the KMS client")?;
    let keyspace = coffer_seal::Keyspace::new(cfg, etcd_prefix, None, &kms, rng)
        .context("cannot build the config's providers to match their write counts")?;
    let counts: Vec<coffer_seal::WriteCount> = persisted
        .iter()
        .map(|(id, n)| coffer_seal::WriteCount {
            counter_id: id.clone(),
            writes: *n,
        })
        .collect();
    keyspace.restore_write_counts(&counts);
    Ok(Writes {
        data_dir: dir.display().to_string(),
        counts: keyspace
            .write_counts()
            .into_iter()
            .map(|c| Count {
                counter: c.counter_id,
                writes: c.writes,
            })
            .collect(),
        warnings: keyspace.write_limit_warnings(),
    })
}

fn render_writes(w: &Writes) -> String {
    let mut s = format!(
        "
writes sealed per aesgcm key in {}:
",
        w.data_dir
    );
    if w.counts.is_empty() {
        s += "  (no aesgcm key in this file)
";
    }
    for c in &w.counts {
        s += &format!(
            "  {}: {}
",
            c.counter, c.writes
        );
    }
    for warning in &w.warnings {
        s += &format!(
            "  warning: {warning}
"
        );
    }
    s
}

fn error_kind(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::Read { .. } => "read",
        ConfigError::Empty { .. } => "empty",
        ConfigError::Syntax { .. } => "syntax",
        ConfigError::UnexpectedType { .. } => "type",
        ConfigError::Decode { .. } => "decode",
        ConfigError::Invalid { .. } => "validation",
        ConfigError::Build { .. } => "build",
        _ => "other",
    }
}

fn error_details(err: &ConfigError) -> serde_json::Value {
    let with_message = |v: serde_json::Value, m: String| {
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.insert("message".into(), m.into());
        }
        v
    };
    let list: Vec<serde_json::Value> = match err {
        ConfigError::Invalid { errors } => errors
            .iter()
            .map(|e| with_message(json!(e), e.to_string()))
            .collect(),
        ConfigError::Decode { errors, .. } => errors
            .iter()
            .map(|e| with_message(json!(e), e.to_string()))
            .collect(),
        ConfigError::Build { errors } => errors
            .iter()
            .map(|e| with_message(json!(e), e.to_string()))
            .collect(),
        other => vec![json!({ "message": other.to_string() })],
    };
    serde_json::Value::Array(list)
}

fn render_text(file: &str, report: &Report) -> String {
    let mut s = String::new();
    let n = report.rules.len();
    s += &format!(
        "{file}: valid EncryptionConfiguration, {n} resource {}\n",
        if n == 1 { "rule" } else { "rules" }
    );
    for rule in &report.rules {
        s += &format!(
            "\nresources[{}]: {}\n",
            rule.index,
            rule.resources.join(", ")
        );
        if !rule.etcd_keys.is_empty() {
            s += &format!("  etcd keys: {}\n", rule.etcd_keys.join(", "));
        }
        s += &format!("  writes:    {}\n", rule.write.describe());
        for (k, p) in rule.read.iter().enumerate() {
            let label = if k == 0 {
                "  reads:    "
            } else {
                "            "
            };
            s += &format!("{label} {}. {}\n", k + 1, p.describe());
        }
    }
    for m in &report.merged {
        let entries: Vec<String> = m
            .entries
            .iter()
            .map(|e| format!("resources[{e}]"))
            .collect();
        s += &format!(
            "\n{} is listed in {}: their providers are concatenated\n  writes:    {}\n",
            m.resource,
            entries.join(" and "),
            m.write.describe()
        );
        for (k, p) in m.read.iter().enumerate() {
            let label = if k == 0 {
                "  reads:    "
            } else {
                "            "
            };
            s += &format!("{label} {}. {}\n", k + 1, p.describe());
        }
    }
    s += &format!("\nkeys no rule covers: {}\n", report.uncovered);
    if report.warnings.is_empty() {
        s += "\nno warnings\n";
    } else {
        s += &format!("\n{} warning(s):\n", report.warnings.len());
        for w in &report.warnings {
            s += &format!("  warning[{}] {}: {}\n", w.code, w.path, w.message);
        }
    }
    s
}
