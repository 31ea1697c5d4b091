//! `etcdserverpb.Auth`: every RPC, over the store's auth state.
//!
//! Changes go to the store as [`AuthChange`]s ([`Backend::auth_change`] checks the caller again
//! and commits durably); passwords are hashed here first, on the blocking pool, outside any
//! lock, and only after the caller passed the admin check (so a non-admin cannot make the
//! server hash). Reads answer from [`Backend::auth_view`]. Admin rules are etcd 3.5's: every
//! RPC but `Authenticate` needs the root role while auth is enabled, except `UserGet` (also the
//! user itself) and `RoleGet` (also a holder of the role). Simple tokens are dropped as etcd
//! drops them: a deleted user's and a user's whose password changed, and all on `AuthDisable`.
//!
//! Headers carry the keyspace revision (etcd's `newHeader`); `AuthStatus` reports the auth
//! revision. Passwords and tokens never reach a log line or an error.

use std::sync::Arc;

use base64::Engine as _;
use coffer_proto::auth_server::{Auth, AuthServer};
use coffer_proto::*;
use coffer_store::auth::{AuthState, PasswordHash, Permission};
use coffer_store::{AuthChange, Backend, Caller};
use tonic::{Request, Response, Status};
use tracing::{debug, info, instrument};

use super::authenticate::StoredUser;
use super::{password, Secret};
use crate::caller::{admin, caller_of, require_admin};
use crate::errors::ServerError;
use crate::peer::Peer;
use crate::state::Shared;

/// The Auth service over a store `B`.
#[derive(Debug)]
pub struct AuthService<B> {
    backend: Arc<B>,
    shared: Arc<Shared>,
}

/// The Auth service as a tonic server, with the configured message size limits.
pub fn server<B: Backend>(backend: Arc<B>, shared: Arc<Shared>) -> AuthServer<AuthService<B>> {
    let (recv, send) = (
        shared.config.max_decoding_message_size(),
        shared.config.max_encoding_message_size(),
    );
    AuthServer::new(AuthService::new(backend, shared))
        .max_decoding_message_size(recv)
        .max_encoding_message_size(send)
}

impl<B: Backend> AuthService<B> {
    /// An Auth service over `backend`.
    pub fn new(backend: Arc<B>, shared: Arc<Shared>) -> Self {
        AuthService { backend, shared }
    }

    /// A header with the current keyspace revision.
    async fn header(&self) -> Result<Option<ResponseHeader>, Status> {
        let revision = match self.backend.revision_now() {
            Some(r) => r,
            None => {
                self.backend
                    .status()
                    .await
                    .map_err(ServerError::from)?
                    .revision
            }
        };
        Ok(Some(self.shared.header(revision)))
    }

    /// The caller of an admin-only `rpc`, with the auth state it was checked against.
    fn admin<T>(
        &self,
        request: &Request<T>,
        rpc: &str,
    ) -> Result<(Caller, Arc<AuthState>), Status> {
        let view = self.backend.auth_view();
        let caller = admin(request, &self.shared, &view, rpc)?;
        Ok((caller, view))
    }

    /// Makes `change` as `caller`; answers the header of the new revision.
    async fn change(
        &self,
        caller: &Caller,
        change: AuthChange,
    ) -> Result<Option<ResponseHeader>, Status> {
        let changed = self
            .backend
            .auth_change(caller, change)
            .await
            .map_err(ServerError::from)?;
        debug!(auth_revision = changed.auth_revision, "auth changed");
        Ok(Some(self.shared.header(changed.revision)))
    }

    /// The hash to store for a password: a new bcrypt hash of `password` at `--bcrypt-cost`,
    /// or, when only `hashed_password` is given, that (etcd 3.5's form: base64 of a bcrypt
    /// hash).
    async fn hash(&self, password: Secret, hashed: &str) -> Result<PasswordHash, Status> {
        if password.expose().is_empty() && !hashed.is_empty() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(hashed)
                .map_err(|_| Status::invalid_argument("coffer: hashed_password is not base64"))?;
            return Ok(PasswordHash(bytes));
        }
        let hash = password::hash(password, self.shared.config.auth.bcrypt_cost).await?;
        Ok(PasswordHash(hash.into_bytes()))
    }
}

/// Names sorted (the state's maps are ordered already).
fn names<'a>(it: impl Iterator<Item = &'a String>) -> Vec<String> {
    it.cloned().collect()
}

#[tonic::async_trait]
impl<B: Backend> Auth for AuthService<B> {
    #[instrument(skip_all, name = "auth.enable")]
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        // Anyone may enable while auth is off; once on, only an admin (a no-op then).
        let (caller, _) = self.admin(&request, "auth_enable")?;
        let header = self.change(&caller, AuthChange::Enable).await?;
        info!("authentication enabled");
        Ok(Response::new(AuthEnableResponse { header }))
    }

    #[instrument(skip_all, name = "auth.disable")]
    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let (caller, _) = self.admin(&request, "auth_disable")?;
        let header = self.change(&caller, AuthChange::Disable).await?;
        self.shared.auth.tokens().disable();
        info!("authentication disabled");
        Ok(Response::new(AuthDisableResponse { header }))
    }

    #[instrument(skip_all, name = "auth.status")]
    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let (_, view) = self.admin(&request, "auth_status")?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header().await?,
            enabled: view.enabled,
            auth_revision: view.revision,
        }))
    }

    #[instrument(skip_all, name = "auth.authenticate")]
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let addr = Peer::of(&request)
            .addr
            .or_else(|| request.remote_addr())
            .map(|a| a.ip());
        let req = request.into_inner();
        let password = Secret::new(req.password);
        let view = self.backend.auth_view();
        if !view.enabled {
            return Err(super::AuthError::NotEnabled.into());
        }
        let stored = match view.user(&req.name) {
            None => StoredUser::Unknown,
            Some(u) if u.no_password => StoredUser::NoPassword,
            Some(u) => StoredUser::Hash(String::from_utf8_lossy(&u.password_hash.0).into_owned()),
        };
        let result = self
            .shared
            .auth
            .authenticate(&req.name, password, addr, stored, view.revision)
            .await;
        let token = match result {
            Ok(token) => token,
            Err(e) => {
                info!(
                    user = %super::denial::describe_user(Some(&req.name)),
                    peer = ?addr,
                    error = %e,
                    "authentication refused"
                );
                return Err(e.into());
            }
        };
        debug!(user = %super::denial::describe_user(Some(&req.name)), "authenticated");
        Ok(Response::new(AuthenticateResponse {
            header: self.header().await?,
            token: token.expose().to_owned(),
        }))
    }

    #[instrument(skip_all, name = "auth.user_add")]
    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (caller, _) = self.admin(&request, "user_add")?;
        let req = request.into_inner();
        let password = Secret::new(req.password);
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(self.hash(password, &req.hashed_password).await?)
        };
        let change = AuthChange::UserAdd {
            name: req.name,
            password_hash,
            no_password,
        };
        let header = self.change(&caller, change).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    #[instrument(skip_all, name = "auth.user_get")]
    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        // Admin, or the user asking about itself.
        if caller.name() != Some(req.name.as_str()) {
            require_admin(&view, &caller, "user_get")?;
        }
        let user = view.user(&req.name).ok_or(ServerError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header().await?,
            roles: user.roles.clone(),
        }))
    }

    #[instrument(skip_all, name = "auth.user_list")]
    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let (_, view) = self.admin(&request, "user_list")?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header().await?,
            users: names(view.users.keys()),
        }))
    }

    #[instrument(skip_all, name = "auth.user_delete")]
    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let (caller, _) = self.admin(&request, "user_delete")?;
        let name = request.into_inner().name;
        let header = self
            .change(&caller, AuthChange::UserDelete { name: name.clone() })
            .await?;
        self.shared.auth.tokens().invalidate_user(&name);
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    #[instrument(skip_all, name = "auth.user_change_password")]
    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (caller, view) = self.admin(&request, "user_change_password")?;
        let req = request.into_inner();
        let password = Secret::new(req.password);
        let no_password = view.user(&req.name).is_some_and(|u| u.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(self.hash(password, &req.hashed_password).await?)
        };
        let change = AuthChange::UserChangePassword {
            name: req.name.clone(),
            password_hash,
        };
        let header = self.change(&caller, change).await?;
        self.shared.auth.tokens().invalidate_user(&req.name);
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    #[instrument(skip_all, name = "auth.user_grant_role")]
    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let (caller, _) = self.admin(&request, "user_grant_role")?;
        let req = request.into_inner();
        let change = AuthChange::UserGrantRole {
            user: req.user,
            role: req.role,
        };
        let header = self.change(&caller, change).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    #[instrument(skip_all, name = "auth.user_revoke_role")]
    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let (caller, _) = self.admin(&request, "user_revoke_role")?;
        let req = request.into_inner();
        let change = AuthChange::UserRevokeRole {
            user: req.name,
            role: req.role,
        };
        let header = self.change(&caller, change).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    #[instrument(skip_all, name = "auth.role_add")]
    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let (caller, _) = self.admin(&request, "role_add")?;
        let name = request.into_inner().name;
        let header = self.change(&caller, AuthChange::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    #[instrument(skip_all, name = "auth.role_get")]
    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        // Admin, or a user holding the role.
        let holder = caller
            .name()
            .and_then(|n| view.user(n))
            .is_some_and(|u| u.roles.binary_search(&req.role).is_ok());
        if !holder {
            require_admin(&view, &caller, "role_get")?;
        }
        let role = view.role(&req.role).ok_or(ServerError::RoleNotFound)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header().await?,
            perm: role.permissions.iter().map(Permission::to_proto).collect(),
        }))
    }

    #[instrument(skip_all, name = "auth.role_list")]
    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let (_, view) = self.admin(&request, "role_list")?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header().await?,
            roles: names(view.roles.keys()),
        }))
    }

    #[instrument(skip_all, name = "auth.role_delete")]
    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let (caller, _) = self.admin(&request, "role_delete")?;
        let name = request.into_inner().role;
        let header = self
            .change(&caller, AuthChange::RoleDelete { name })
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    #[instrument(skip_all, name = "auth.role_grant_permission")]
    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let (caller, _) = self.admin(&request, "role_grant_permission")?;
        let req = request.into_inner();
        let change = AuthChange::RoleGrantPermission {
            role: req.name,
            perm: req.perm.as_ref().map(Permission::from_proto),
        };
        let header = self.change(&caller, change).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    #[instrument(skip_all, name = "auth.role_revoke_permission")]
    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let (caller, _) = self.admin(&request, "role_revoke_permission")?;
        let req = request.into_inner();
        let change = AuthChange::RoleRevokePermission {
            role: req.role,
            key: req.key,
            range_end: req.range_end,
        };
        let header = self.change(&caller, change).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
