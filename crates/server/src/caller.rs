//! Who a request comes from, as the store's [`Caller`]: the one place every service (KV, Watch,
//! Lease, Maintenance, Cluster, Auth) turns a gRPC request into the identity and auth revision
//! its permission checks run against, and the one place a denial is logged.
//!
//! While auth is disabled every request is [`Caller::Anonymous`] and tokens are not looked at
//! (as etcd). While it is enabled the rule of [`crate::auth::identity`] applies (a token, else
//! the client certificate's Common Name, else anonymous) with the server's token provider and
//! the store's current auth revision; a token that is unknown, expired or badly signed ends the
//! request with `UNAUTHENTICATED` `etcdserver: invalid auth token` before anything runs.

use coffer_store::auth::AuthState;
use coffer_store::Caller;
use tonic::Status;

use crate::auth::denial::log_denial;
use crate::auth::identity;
use crate::errors::ServerError;
use crate::state::Shared;

/// The caller of `request`, against the auth state `view`.
pub fn caller_of<T>(
    request: &tonic::Request<T>,
    shared: &Shared,
    view: &AuthState,
) -> Result<Caller, Status> {
    if !view.enabled {
        return Ok(Caller::Anonymous);
    }
    identity::caller_of(
        request,
        &**shared.auth.tokens(),
        shared.client_cert_auth(),
        view.revision,
    )
    .map_err(Status::from)
}

/// Whether `err` is a refusal of the caller (rather than a failure of the request).
fn is_denial(err: &ServerError) -> bool {
    matches!(
        err,
        ServerError::PermissionDenied
            | ServerError::UserEmpty
            | ServerError::UserNotFound
            | ServerError::AuthOldRevision
    )
}

/// The key range a request is about (`key`, `range_end`), kept for the denial log line; taken
/// only while auth is enabled (see [`target`]).
pub type Target = Option<(Vec<u8>, Vec<u8>)>;

/// `(key, range_end)` when `view` has auth enabled (a denial is possible), else nothing.
pub fn target(view: &AuthState, key: &[u8], range_end: &[u8]) -> Target {
    view.enabled.then(|| (key.to_vec(), range_end.to_vec()))
}

/// `err` of a KV, lease or watch request by `caller` on `target`, logged once when it is a
/// refusal (`rpc` names the call).
pub fn refused(caller: &Caller, rpc: &str, target: &Target, err: ServerError) -> ServerError {
    if is_denial(&err) {
        let (key, range_end) = target
            .as_ref()
            .map_or((&[][..], &[][..]), |(k, e)| (k.as_slice(), e.as_slice()));
        log_denial(caller.name(), rpc, key, range_end);
    }
    err
}

/// etcd's admin check (`IsAdminPermitted`) for the admin-only `rpc`: passes while auth is
/// disabled; a refusal is logged.
fn check_admin(view: &AuthState, caller: &Caller, rpc: &str) -> Result<(), coffer_store::Error> {
    view.check_admin(caller).inspect_err(|_| {
        log_denial(caller.name(), rpc, b"", b"");
    })
}

/// [`check_admin`] as etcd's gRPC error (`etcdserver: permission denied`, ...).
pub fn require_admin(view: &AuthState, caller: &Caller, rpc: &str) -> Result<(), Status> {
    check_admin(view, caller, rpc).map_err(|e| ServerError::from(e).into())
}

/// The caller of the admin-only `rpc` `request`, refused unless it is an admin.
pub fn admin<T>(
    request: &tonic::Request<T>,
    shared: &Shared,
    view: &AuthState,
    rpc: &str,
) -> Result<Caller, Status> {
    admin_or(request, shared, view, rpc, |e| ServerError::from(e).into())
}

/// [`admin`] for the Maintenance RPCs, refused as etcd 3.5 refuses them: its maintenance
/// server returns the auth store's error unconverted, so gRPC sends `UNKNOWN` with the raw
/// text (`auth: permission denied`, `auth: user name is empty`; 3.6 converts it).
pub fn maintenance_admin<T>(
    request: &tonic::Request<T>,
    shared: &Shared,
    view: &AuthState,
    rpc: &str,
) -> Result<Caller, Status> {
    admin_or(request, shared, view, rpc, |e| {
        Status::unknown(format!("auth: {e}"))
    })
}

/// The caller of `request` if it is an admin, else `refuse` of the admin check's error.
fn admin_or<T>(
    request: &tonic::Request<T>,
    shared: &Shared,
    view: &AuthState,
    rpc: &str,
    refuse: impl FnOnce(coffer_store::Error) -> Status,
) -> Result<Caller, Status> {
    let caller = caller_of(request, shared, view)?;
    check_admin(view, &caller, rpc).map_err(refuse)?;
    Ok(caller)
}
