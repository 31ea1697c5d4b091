//! `coffer-lazyfs`: mounts the power-loss test file system and takes commands on a unix
//! socket, one per line, each answered with one line:
//!
//! ```text
//! coffer-lazyfs --backing /tmp/backing --mountpoint /tmp/mnt --control /tmp/lazyfs.sock &
//! echo cut | socat - UNIX-CONNECT:/tmp/lazyfs.sock          # drop every unsynced write
//! echo "cut-prefix 7" | socat - UNIX-CONNECT:/tmp/lazyfs.sock  # keep a seeded random prefix
//! echo sync | socat - UNIX-CONNECT:/tmp/lazyfs.sock         # make everything durable
//! echo unmount | socat - UNIX-CONNECT:/tmp/lazyfs.sock      # unmount and exit
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use coffer_lazyfs::Cut;

#[derive(Parser)]
#[command(
    name = "coffer-lazyfs",
    version,
    about = "A FUSE file system that keeps unsynced writes in memory and drops them on a simulated power cut"
)]
struct Args {
    /// The directory that holds what is durable.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount.
    #[arg(long)]
    mountpoint: PathBuf,
    /// The unix socket that takes commands (cut, cut-prefix SEED, sync, unmount).
    #[arg(long)]
    control: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)
        .with_context(|| format!("cannot listen on {}", args.control.display()))?;
    let fs = coffer_lazyfs::mount(&args.backing, &args.mountpoint)?;
    for conn in listener.incoming() {
        let mut conn = conn.context("control socket")?;
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["cut"] => fs.power_cut(Cut::DropAll).map(|r| format!("ok {r:?}")),
            ["cut-prefix", seed] => match seed.parse() {
                Ok(s) => fs
                    .power_cut(Cut::RandomPrefix(s))
                    .map(|r| format!("ok {r:?}")),
                Err(_) => Ok(format!("error: {seed:?} is not a seed")),
            },
            ["sync"] => fs.sync_all().map(|()| "ok".to_string()),
            ["unmount"] => {
                let _ = writeln!(conn, "ok");
                break;
            }
            _ => Ok(format!(
                "error: unknown command {:?} (cut, cut-prefix SEED, sync, unmount)",
                line.trim()
            )),
        };
        let answer = answer.unwrap_or_else(|e| format!("error: {e}"));
        let _ = writeln!(conn, "{answer}");
    }
    let _ = std::fs::remove_file(&args.control);
    fs.unmount()?;
    Ok(())
}
