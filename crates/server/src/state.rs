//! State the services share: the member's identity for response headers, the limits (with the
//! snapshot semaphore), the shutdown signal, and authentication (the token provider built from
//! `ServerConfig.auth`, the failed-login limit). (Alarms and auth state live in the store.)

use std::sync::Arc;

use coffer_proto::ResponseHeader;
use tonic::Status;

use crate::auth::authenticate::Authenticator;
use crate::auth::ratelimit::FailureLimiter;
use crate::auth::token::{self, TokenInfo, TokenProvider};
use crate::auth::{AuthError, Secret};
use crate::config::ServerConfig;
use crate::errors::ServerError;

/// The raft term a single member reports (etcd shows 2 on a fresh single member).
pub const RAFT_TERM: u64 = 2;

/// Shared by every service of one server.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the server was started with.
    pub config: ServerConfig,
    /// Set once shutdown begins: long-lived streams (Watch, LeaseKeepAlive, Snapshot) end on
    /// it, so a graceful stop does not wait for clients that would never hang up.
    stopping: tokio::sync::watch::Sender<bool>,
    /// One permit per Maintenance.Snapshot that may run (`max_concurrent_snapshots`).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// Password checks, the failed-login limit and the token provider.
    pub auth: Authenticator,
}

impl Shared {
    /// Wraps a configuration.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Shared {
            snapshots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_snapshots)),
            auth: Authenticator::new(
                token_provider(&config),
                FailureLimiter::default(),
                config.auth.bcrypt_cost,
            ),
            config,
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether a verified client certificate's Common Name names the user: client certificate
    /// authentication is on (`--client-cert-auth`, or `--trusted-ca-file`, which turns it on).
    /// The transport puts a Common Name into the request's [`crate::peer::Peer`] only for a
    /// certificate it verified.
    pub fn client_cert_auth(&self) -> bool {
        self.config
            .tls
            .as_ref()
            .is_some_and(|t| t.requires_client_cert())
    }

    /// Starts shutdown: every stream wrapped by [`Shared::until_stopped`] ends.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// `stream`, ended once shutdown begins with etcd's `Unavailable` `etcdserver: server
    /// stopped`, never with a clean end: clientv3 takes a clean end of a Watch or
    /// LeaseKeepAlive stream as final, and a Snapshot cut off must not look complete.
    pub fn until_stopped<T, S>(&self, stream: S) -> impl futures::Stream<Item = Result<T, Status>>
    where
        S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let mut stopping = self.stopping.subscribe();
        end_with(stream, async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopping.wait_for(|s| *s).await;
            Status::from(ServerError::Stopped)
        })
    }

    /// A header with this member's ids, the raft term and `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.member_id,
            revision,
            raft_term: RAFT_TERM,
        }
    }

    /// Fills the ids and term into a header the store returned (keeping its revision).
    pub fn stamp(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}

/// The provider `config.auth` describes. `coffer serve` checks the spec (and reads the key
/// files) before it starts; should the files be unreadable by now, the error is logged and no
/// token is issued or accepted.
fn token_provider(config: &ServerConfig) -> Arc<dyn TokenProvider> {
    match token::new_provider(&config.auth.token, config.auth.token_ttl) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "no auth token provider: Authenticate will fail");
            Arc::new(NoTokens)
        }
    }
}

/// Issues no token and accepts none.
struct NoTokens;

impl TokenProvider for NoTokens {
    fn assign(&self, _user: &str, _auth_revision: u64) -> Result<Secret, AuthError> {
        Err(AuthError::Internal)
    }
    fn info(&self, _token: &str) -> Option<TokenInfo> {
        None
    }
    fn invalidate_user(&self, _user: &str) {}
    fn disable(&self) {}
}

/// `stream` until `end` resolves, then `end`'s status as the last item. `end` is checked
/// first at every step, so a stream that always has items ready still ends.
pub(crate) fn end_with<T, S, E>(stream: S, end: E) -> impl futures::Stream<Item = Result<T, Status>>
where
    S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
    E: std::future::Future<Output = Status> + Send + 'static,
    T: Send + 'static,
{
    let state = Some((Box::pin(stream), Box::pin(end)));
    futures::stream::unfold(state, |state| async move {
        let (mut stream, mut end) = state?;
        tokio::select! {
            biased;
            status = &mut end => Some((Err(status), None)),
            item = futures::StreamExt::next(&mut stream) => {
                item.map(|item| (item, Some((stream, end))))
            }
        }
    })
}
