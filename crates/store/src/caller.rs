//! Who asks: the identity and auth revision a request carries into the store, so permission
//! checks hold at apply time (etcd stamps every request with the auth revision it was checked
//! against and its apply step refuses it if auth changed in between).

use std::sync::Arc;

/// The caller of a store operation.
#[derive(Clone, PartialEq, Eq)]
pub enum Caller {
    /// Coffer itself (in-process tools and tests): never checked against permissions.
    Internal,
    /// A request that named no user: no token and no client certificate Common Name.
    Anonymous,
    /// A named user (from a token or a certificate's Common Name).
    User {
        /// The user name.
        name: Arc<str>,
        /// The auth revision the caller was authenticated at; a request whose revision is
        /// older than the store's when it applies is refused (`auth revision is old`).
        auth_revision: u64,
    },
}

impl Caller {
    /// A named user at `auth_revision`.
    pub fn user(name: impl Into<Arc<str>>, auth_revision: u64) -> Caller {
        Caller::User {
            name: name.into(),
            auth_revision,
        }
    }

    /// The user name, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::User { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Internal => f.write_str("Internal"),
            Caller::Anonymous => f.write_str("Anonymous"),
            Caller::User {
                name,
                auth_revision,
            } => write!(f, "User({name:?} at auth revision {auth_revision})"),
        }
    }
}
