//! `coffer certs` [offline]: the TLS files for serving etcd's API over HTTPS with client
//! certificates, in kubeadm's layout for an external etcd, so kube-apiserver's flags and
//! health checks stay as kubeadm writes them. `init` makes the etcd CA (10 years), the server
//! certificate and the two client certificates kubeadm makes (1 year); `client` adds a client
//! certificate whose CN is an etcd user; `check` reports expiry and exits 2 when one is near.
//!
//! Names and CNs are kubeadm's (`etcd-ca`, the first host for the server, `kube-etcd-healthcheck-client`,
//! `kube-apiserver-etcd-client`); like current kubeadm no organization is set (older releases
//! set `O=system:masters`, which etcd ignores).
//! Keys are ECDSA P-256 (kubeadm's `ECDSA-P256` encryption algorithm; its default is RSA-2048),
//! written 0600, each file atomically (temp, fsync, rename, fsync of the directory). Existing
//! files are never replaced without `--force`. No key byte is ever printed or logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// kubeadm's certificate directory.
const DEFAULT_DIR: &str = "/etc/kubernetes/pki";
/// kubeadm's `CACertificateValidityPeriod`.
const CA_DAYS: i64 = 10 * 365;
/// kubeadm's `CertificateValidityPeriod`.
const LEAF_DAYS: i64 = 365;
/// kubeadm's `CertificateBackdate`: tolerance for clocks slightly behind.
const BACKDATE: Duration = Duration::minutes(5);
/// The exit status of `check` when a certificate expires within the window or has expired.
pub const EXIT_EXPIRING: u8 = 2;

/// `coffer certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Create the etcd CA, the server certificate and the kube-apiserver and health-check client
    /// certificates, in kubeadm's layout (DIR/etcd/ca.crt, DIR/etcd/server.crt,
    /// DIR/etcd/healthcheck-client.crt, DIR/apiserver-etcd-client.crt, each with its .key).
    #[command(
        after_help = "Example:\n  coffer certs init --dir /etc/kubernetes/pki --hosts etcd.example.com,10.0.0.5"
    )]
    Init(InitArgs),
    /// Add a client certificate signed by the etcd CA (DIR/etcd/client-NAME.crt); its CN is the
    /// etcd user the client authenticates as.
    #[command(after_help = "Example:\n  coffer certs client backup --dir /etc/kubernetes/pki")]
    Client(ClientArgs),
    /// Show each certificate's subject, expiry and days left. Exits 2 when one expires within
    /// --warn-within or has expired, 1 on an error, 0 otherwise.
    #[command(
        after_help = "Examples:\n  coffer certs check\n  coffer certs check --warn-within 60d --output json"
    )]
    Check(CheckArgs),
}

/// Flags of `coffer certs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The certificate directory (kubeadm's is /etc/kubernetes/pki).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Names and addresses clients reach the server by (comma-separated); the server
    /// certificate also always covers localhost, 127.0.0.1 and ::1. The first is its CN.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Replace existing files (clients that trust the old CA stop trusting the server).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `coffer certs client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The etcd user: the certificate's CN (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The certificate directory holding etcd/ca.crt and etcd/ca.key.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = LEAF_DAYS, value_parser = clap::value_parser!(i64).range(1..=CA_DAYS))]
    pub days: i64,
    /// Replace an existing certificate of that name.
    #[arg(long)]
    pub force: bool,
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table.
    Text,
    /// One JSON object.
    Json,
}

/// Flags of `coffer certs check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The certificate directory: every DIR/etcd/*.crt and DIR/apiserver-etcd-client.crt.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Warn (and exit 2) when a certificate expires within this many days (`30d` or `30`).
    #[arg(long, default_value = "30d", value_parser = parse_days)]
    pub warn_within: i64,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn parse_days(text: &str) -> Result<i64, String> {
    let digits = text.strip_suffix('d').unwrap_or(text);
    digits
        .parse::<i64>()
        .ok()
        .filter(|d| *d >= 0)
        .ok_or_else(|| format!("{text:?} is not a number of days such as 30d"))
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::Init(a) => init(&a).map(|()| ExitCode::SUCCESS),
        Args::Client(a) => client(&a).map(|()| ExitCode::SUCCESS),
        Args::Check(a) => check(&a),
    }
}

/// One certificate and its key, as files.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(dir: &Path, base: &str) -> Files {
        Files {
            cert: dir.join(format!("{base}.crt")),
            key: dir.join(format!("{base}.key")),
        }
    }
}

/// kubeadm's files for etcd under `dir`.
struct Layout {
    ca: Files,
    server: Files,
    healthcheck: Files,
    apiserver: Files,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        Layout {
            ca: Files::new(dir, "etcd/ca"),
            server: Files::new(dir, "etcd/server"),
            healthcheck: Files::new(dir, "etcd/healthcheck-client"),
            apiserver: Files::new(dir, "apiserver-etcd-client"),
        }
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let l = Layout::new(&args.dir);
    let all = [&l.ca, &l.server, &l.healthcheck, &l.apiserver];
    if !args.force {
        refuse_existing(all.iter().flat_map(|f| [&f.cert, &f.key]))?;
    }
    let etcd_dir = args.dir.join("etcd");
    coffer_seal::durable::create_dir_all(&etcd_dir)
        .with_context(|| format!("cannot create {}", etcd_dir.display()))?;

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca = params("etcd-ca", Vec::new(), now, CA_DAYS)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;

    let mut sans: Vec<String> = Vec::new();
    for h in args
        .hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .chain(["localhost", "127.0.0.1", "::1"])
    {
        if !sans.iter().any(|s| s == h) {
            sans.push(h.to_owned());
        }
    }
    let server_cn = sans.first().cloned().unwrap_or_else(|| "localhost".into());
    let leaves = [
        (
            &l.server,
            server_cn.as_str(),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ),
        (
            &l.healthcheck,
            "kube-etcd-healthcheck-client",
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
        (
            &l.apiserver,
            "kube-apiserver-etcd-client",
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
    ];
    write_pair(&l.ca, &ca_cert, &ca_key, args.force)?;
    for (files, cn, sans, usages) in leaves {
        let (cert, key) = leaf(cn, sans, usages, now, LEAF_DAYS, &ca_cert, &ca_key)?;
        write_pair(files, &cert, &key, args.force)?;
    }

    let host = args
        .hosts
        .iter()
        .map(|h| h.trim())
        .find(|h| !h.is_empty())
        .unwrap_or("127.0.0.1");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let url = format!("https://{host}:2379");
    let p = |p: &Path| p.display().to_string();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote in {} (kubeadm's layout; keys are mode 0600):\n  {}  (CA, 10 years)\n  {}  (server, 1 year)\n  {}  (health checks, 1 year)\n  {}  (kube-apiserver, 1 year)\n",
        args.dir.display(),
        p(&l.ca.cert),
        p(&l.server.cert),
        p(&l.healthcheck.cert),
        p(&l.apiserver.cert),
    )?;
    writeln!(
        out,
        "Serve over HTTPS, requiring client certificates:\n  coffer serve --listen-client-urls {url} --advertise-client-urls {url} \\\n    --cert-file {} --key-file {} \\\n    --trusted-ca-file {} --client-cert-auth\n",
        p(&l.server.cert),
        p(&l.server.key),
        p(&l.ca.cert),
    )?;
    writeln!(
        out,
        "kube-apiserver:\n  --etcd-servers={url} --etcd-cafile={} \\\n  --etcd-certfile={} --etcd-keyfile={}\n",
        p(&l.ca.cert),
        p(&l.apiserver.cert),
        p(&l.apiserver.key),
    )?;
    writeln!(
        out,
        "Health check:\n  etcdctl --endpoints {url} --cacert {} --cert {} --key {} endpoint health\n\nKeep {} offline if you can: it signs every certificate the server trusts. Check expiry with `coffer certs check --dir {}`.",
        p(&l.ca.cert),
        p(&l.healthcheck.cert),
        p(&l.healthcheck.key),
        p(&l.ca.key),
        args.dir.display(),
    )?;
    Ok(())
}

fn client(args: &ClientArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!(
            "{name:?} is not a usable etcd user name here: use letters, digits, '.', '_' and '-'"
        );
    }
    let l = Layout::new(&args.dir);
    let files = Files::new(&args.dir, &format!("etcd/client-{name}"));
    if !args.force {
        refuse_existing([&files.cert, &files.key])?;
    }
    let ca_pem = std::fs::read_to_string(&l.ca.cert)
        .with_context(|| format!("cannot read the CA certificate {}", l.ca.cert.display()))?;
    let key_pem = std::fs::read_to_string(&l.ca.key)
        .with_context(|| format!("cannot read the CA key {}", l.ca.key.display()))?;
    let ca_key = KeyPair::from_pem(&key_pem)
        .map_err(|_| anyhow::anyhow!("{} is not a PEM private key", l.ca.key.display()))?;
    drop(key_pem);
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .with_context(|| format!("{} is not a CA certificate", l.ca.cert.display()))?
        .self_signed(&ca_key)
        .context("the CA key does not sign for the CA certificate")?;
    let (cert, key) = leaf(
        name,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        OffsetDateTime::now_utc(),
        args.days,
        &ca_cert,
        &ca_key,
    )?;
    write_pair(&files, &cert, &key, args.force)?;
    println!(
        "wrote {} and {} (CN {name}, {} days)\n  etcdctl --cacert {} --cert {} --key {} ...",
        files.cert.display(),
        files.key.display(),
        args.days,
        l.ca.cert.display(),
        files.cert.display(),
        files.key.display(),
    );
    Ok(())
}

/// Parameters with a random serial, CN `cn`, `sans`, valid from `now` (backdated) for `days`.
fn params(
    cn: &str,
    sans: Vec<String>,
    now: OffsetDateTime,
    days: i64,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(sans).context("a host is not a valid DNS name or IP")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = now - BACKDATE;
    p.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(p)
}

/// A leaf certificate and its new key, signed by the CA.
fn leaf(
    cn: &str,
    sans: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    now: OffsetDateTime,
    days: i64,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> anyhow::Result<(Certificate, KeyPair)> {
    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut p = params(cn, sans, now, days)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = usages;
    let cert = p
        .signed_by(&key, ca, ca_key)
        .with_context(|| format!("cannot sign the certificate for {cn}"))?;
    Ok((cert, key))
}

fn refuse_existing<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> anyhow::Result<()> {
    let existing: Vec<String> = paths
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite {}; pass --force to replace them (whatever trusts or uses the \
             old files must then be given the new ones)",
            existing.join(", ")
        );
    }
    Ok(())
}

/// Writes the key (0600) then the certificate (0644).
fn write_pair(files: &Files, cert: &Certificate, key: &KeyPair, force: bool) -> anyhow::Result<()> {
    write_atomic(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_atomic(&files.cert, cert.pem().as_bytes(), 0o644, force)
}

/// Writes `path` through a temporary file in its directory: written, fsynced, then renamed
/// over (with `replace`) or linked into place (failing if the file appeared meanwhile), and
/// the directory fsynced.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)?;
        } else {
            std::fs::hard_link(&tmp, path)?;
            std::fs::remove_file(&tmp)?;
        }
        coffer_seal::durable::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// One certificate's report.
#[derive(Debug, serde::Serialize)]
struct Report {
    file: String,
    subject: String,
    not_after: String,
    days_left: i64,
    status: &'static str,
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = Vec::new();
    let etcd_dir = args.dir.join("etcd");
    if let Ok(entries) = std::fs::read_dir(&etcd_dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "crt") {
                files.push(p);
            }
        }
    }
    let apiserver = args.dir.join("apiserver-etcd-client.crt");
    if apiserver.exists() {
        files.push(apiserver);
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "no certificates in {} (looked for etcd/*.crt and apiserver-etcd-client.crt); \
             create them with `coffer certs init --dir {}`",
            args.dir.display(),
            args.dir.display()
        );
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut reports = Vec::new();
    for f in &files {
        let pem = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", f.display()))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("{} is not an X.509 certificate: {e}", f.display()))?;
        let not_after = cert.validity().not_after.timestamp();
        let left = not_after - now;
        let days_left = left.div_euclid(86_400);
        let status = if left <= 0 {
            "expired"
        } else if days_left < args.warn_within {
            "expires soon"
        } else {
            "ok"
        };
        let not_after = OffsetDateTime::from_unix_timestamp(not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| not_after.to_string());
        reports.push(Report {
            file: f.display().to_string(),
            subject: cert.subject().to_string(),
            not_after,
            days_left,
            status,
        });
    }
    let warn = reports.iter().any(|r| r.status != "ok");
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": args.dir.display().to_string(),
                "warn_within_days": args.warn_within,
                "certificates": reports,
                "ok": !warn,
            }))?
        ),
        Output::Text => {
            for r in &reports {
                println!(
                    "{:<13} {:>5} days  {}  {}  ({})",
                    r.status, r.days_left, r.not_after, r.subject, r.file
                );
            }
        }
    }
    if warn {
        eprintln!(
            "warning: a certificate expires within {} days or has expired; renew it (coffer certs \
             init --force re-creates the set, coffer certs client --force one client)",
            args.warn_within
        );
        return Ok(ExitCode::from(EXIT_EXPIRING));
    }
    Ok(ExitCode::SUCCESS)
}
