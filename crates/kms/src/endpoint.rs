//! KMS plugin endpoints: `unix:///path/to.sock` (a socket file) and `unix:///@name` (a Linux
//! abstract socket: no file, no permissions, scoped by network namespace), parsed as
//! kube-apiserver parses them (`coffer_seal::config::parse_endpoint`), then dialled by the
//! client and bound by the plugin.

use std::io;
use std::path::PathBuf;

use tokio::net::{UnixListener, UnixStream};

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not a URL kube-apiserver would accept.
    #[error("KMS endpoint {endpoint:?}: {reason}")]
    Invalid {
        /// The endpoint as written.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading `@`).
    Abstract(Vec<u8>),
}

impl SocketAddress {
    /// Parses `unix:///path` or `unix:///@name`.
    pub fn parse(endpoint: &str) -> Result<Self, EndpointError> {
        let invalid = |reason: String| EndpointError::Invalid {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let parsed = coffer_seal::config::parse_endpoint(endpoint).map_err(invalid)?;
        if parsed.scheme != "unix" {
            return Err(invalid(format!(
                "the scheme must be unix, got {:?}",
                parsed.scheme
            )));
        }
        let address = parsed.socket_address();
        if address.is_empty() {
            return Err(invalid(
                "no socket path (write unix:///path/to/socket or unix:///@abstract-name)"
                    .to_owned(),
            ));
        }
        Ok(match address.strip_prefix('@') {
            Some(name) if !name.is_empty() => SocketAddress::Abstract(name.as_bytes().to_vec()),
            Some(_) => {
                return Err(invalid(
                    "an abstract socket needs a name after @".to_owned(),
                ))
            }
            None => SocketAddress::Path(PathBuf::from(address)),
        })
    }

    /// Connects to the plugin.
    pub async fn connect(&self) -> io::Result<UnixStream> {
        match self {
            SocketAddress::Path(p) => UnixStream::connect(p).await,
            SocketAddress::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                // Connecting to a local socket does not block for long; done on the caller.
                let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
                std.set_nonblocking(true)?;
                UnixStream::from_std(std)
            }
        }
    }

    /// Binds the plugin's listener: a socket file with mode 0600 (a stale file replaced, a
    /// live one refused), or an abstract name.
    pub fn bind(&self) -> io::Result<UnixListener> {
        match self {
            SocketAddress::Path(p) => coffer_authority::unix_socket::bind_private(p),
            SocketAddress::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                std.set_nonblocking(true)?;
                UnixListener::from_std(std)
            }
        }
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Path(p) => write!(f, "unix://{}", p.display()),
            SocketAddress::Abstract(n) => write!(f, "unix:///@{}", String::from_utf8_lossy(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_abstract_names() {
        assert_eq!(
            SocketAddress::parse("unix:///run/kms.sock").unwrap(),
            SocketAddress::Path("/run/kms.sock".into())
        );
        assert_eq!(
            SocketAddress::parse("unix:///@kms-plugin").unwrap(),
            SocketAddress::Abstract(b"kms-plugin".to_vec())
        );
        for bad in ["http://x", "unix://", "unix:///@", "tcp:///x"] {
            let e = SocketAddress::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn abstract_sockets_connect() {
        let name = format!("coffer-kms-endpoint-test-{}", std::process::id());
        let a = SocketAddress::parse(&format!("unix:///@{name}")).unwrap();
        let listener = a.bind().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        a.connect().await.unwrap();
        accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn socket_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let a = SocketAddress::Path(path.clone());
        let _listener = a.bind().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        a.connect().await.unwrap();
    }
}
