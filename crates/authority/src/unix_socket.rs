//! Unix sockets for Coffer's servers (`coffer serve`'s `unix://` listeners and
//! `coffer kms-plugin`): bound with mode 0600, never reachable with the umask's mode, a stale
//! socket file replaced and a live one refused.

use std::io;

use tokio::net::UnixListener;
use tracing::info;

/// Binds a unix socket at `path` with mode 0600. A socket file no server answers on is
/// stale and replaced; a live one, or a file that is not a socket, is an error.
pub fn bind_private(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another server is listening on this socket",
                ))
            }
            Err(_) => {
                info!(path = %path.display(), "removing a stale unix socket file");
                std::fs::remove_file(path)?;
            }
        }
    }
    // Bound inside a fresh 0700 directory beside `path`, made 0600 there and then renamed into
    // place, so the socket is never reachable with the umask's mode.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let private = parent.join(format!(
        ".coffer-bind-{}-{}",
        std::process::id(),
        BIND_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&private)?;
    let staged = private.join("socket");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Names the private directories [`bind_private`] binds in.
static BIND_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
