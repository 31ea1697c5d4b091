//! Who is on the other end of a connection, as the transport learned it: the remote address
//! and, on a TLS connection whose client presented a verified certificate, the Common Name of
//! that certificate. The transport inserts one [`Peer`] into every request's extensions; the
//! services read it to name the caller (etcd's "CN is the user" rule) and to rate-limit
//! failed authentications per address.

use std::net::SocketAddr;
use std::sync::Arc;

/// The connection a request arrived on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The remote TCP address; `None` on a unix socket.
    pub addr: Option<SocketAddr>,
    /// The Common Name of the verified client certificate's leaf, when there is one.
    pub common_name: Option<Arc<str>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Peer {
    /// The peer of `request`, or an anonymous plaintext one when the transport set none
    /// (in-process tests).
    pub fn of<T>(request: &tonic::Request<T>) -> Peer {
        request.extensions().get::<Peer>().cloned().unwrap_or_default()
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("addr", &self.addr)
            .field("common_name", &self.common_name)
            .field("tls", &self.tls)
            .finish()
    }
}
