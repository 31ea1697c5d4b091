//! etcd's auth model, pure: users, roles and their key permissions, the `enabled` switch and the
//! auth revision; the change operations with etcd 3.5's preconditions and errors; and the
//! permission checks the store applies at apply time.
//!
//! How the server uses it (the store does the rest):
//! - **Changes**: build an [`AuthChange`] (passwords as bcrypt hashes, hashed by the server:
//!   the store keeps them as opaque bytes and never logs them) and call
//!   [`crate::Backend::auth_change`]`(caller, change)`. It checks the caller ([`AuthState::check_admin`]:
//!   anyone while auth is disabled, else the root role), applies the change
//!   ([`AuthState::apply`]) and commits it durably through the writer and the log, then answers
//!   [`AuthChanged`] (the new auth revision and the keyspace revision for the header).
//!   Every change that changes something bumps the auth revision; a no-op (enabling when
//!   enabled, disabling when disabled, granting a role the user has) does not.
//! - **Reads**: [`crate::Backend::auth_view`] is an `Arc<AuthState>` snapshot: enabled, revision,
//!   users and roles by name, [`AuthState::is_admin`]. `Authenticate` checks a password against
//!   [`User::password_hash`] and stamps the caller with [`AuthState::revision`].
//! - **Admin-only RPCs** the store does not run (UserList, RoleGet, Defragment, Snapshot, …):
//!   `auth_view().check_admin(&caller)`, etcd's `IsAdminPermitted`.
//! - **Requests**: every KV, lease and watch call takes a [`Caller`]. The writer checks writes
//!   against the auth state *as it applies them* ([`AuthState::subject`] then
//!   [`Subject::allows`]), so a request authenticated before an auth change is refused with
//!   `auth revision is old` ([`Error::AuthOldRevision`]) instead of running on stale rights.
//!
//! Ranges: a permission's empty `range_end` is its single key, `"\0"` is every key from `key`
//! on, anything else `[key, range_end)`. A request's range is covered when the union of the
//! user's intervals of the wanted type contains all of it (a READWRITE permission counts as
//! both). The root role is allowed everything. A request range whose end is at or before its
//! key (it matches nothing) is checked as its key alone.
//!
//! One difference from etcd 3.5: `AuthEnable` bumps the auth revision (etcd's does not); no
//! token exists while auth is disabled, so nothing a client holds is affected.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_proto::authpb;
use prost::Message;

use crate::{Caller, Error};

/// The name of the root user and of the root role.
pub const ROOT: &str = "root";

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermType {
    /// Range, watch, txn compares.
    Read,
    /// Put, delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermType {
    /// From `authpb.Permission.Type` (unknown values are READ, as Go's zero value).
    pub fn from_proto(v: i32) -> PermType {
        match authpb::permission::Type::try_from(v) {
            Ok(authpb::permission::Type::Write) => PermType::Write,
            Ok(authpb::permission::Type::Readwrite) => PermType::ReadWrite,
            _ => PermType::Read,
        }
    }

    /// To `authpb.Permission.Type`.
    pub fn to_proto(self) -> i32 {
        match self {
            PermType::Read => authpb::permission::Type::Read as i32,
            PermType::Write => authpb::permission::Type::Write as i32,
            PermType::ReadWrite => authpb::permission::Type::Readwrite as i32,
        }
    }

    /// Whether a permission of this type grants `want` (Read or Write).
    fn grants(self, want: PermType) -> bool {
        self == PermType::ReadWrite || self == want
    }
}

/// A role's permission on a key or a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// What it allows.
    pub perm_type: PermType,
    /// First key.
    pub key: Vec<u8>,
    /// Empty = only `key`; `"\0"` = every key from `key` on; else the exclusive end.
    pub range_end: Vec<u8>,
}

impl Permission {
    /// etcd 3.5's validity rule: a key, and a range end after it (or `"\0"`, or none).
    pub fn is_valid(&self) -> bool {
        !self.key.is_empty()
            && (self.range_end.is_empty()
                || self.range_end == [0]
                || self.range_end.as_slice() > self.key.as_slice())
    }

    /// To `authpb.Permission`.
    pub fn to_proto(&self) -> authpb::Permission {
        authpb::Permission {
            perm_type: self.perm_type.to_proto(),
            key: self.key.clone(),
            range_end: self.range_end.clone(),
        }
    }

    /// From `authpb.Permission`.
    pub fn from_proto(p: &authpb::Permission) -> Permission {
        Permission {
            perm_type: PermType::from_proto(p.perm_type),
            key: p.key.clone(),
            range_end: p.range_end.clone(),
        }
    }
}

/// A bcrypt hash, kept as opaque bytes; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PasswordHash(pub Vec<u8>);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name.
    pub name: String,
    /// The bcrypt hash of the password (empty for a `no_password` user).
    pub password_hash: PasswordHash,
    /// Role names, sorted, no duplicates.
    pub roles: Vec<String>,
    /// The user can only authenticate by a certificate's Common Name.
    pub no_password: bool,
}

impl User {
    /// Whether the user holds the root role.
    pub fn is_root(&self) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(ROOT))
            .is_ok()
    }

    /// To `authpb.User` (the snapshot's `authUsers` value).
    pub fn to_proto(&self) -> authpb::User {
        authpb::User {
            name: self.name.as_bytes().to_vec(),
            password: self.password_hash.0.clone(),
            roles: self.roles.clone(),
            options: Some(authpb::UserAddOptions {
                no_password: self.no_password,
            }),
        }
    }

    /// From `authpb.User`; a name that is not UTF-8 is refused.
    pub fn from_proto(u: authpb::User) -> Result<User, String> {
        let name = String::from_utf8(u.name).map_err(|_| "a user name is not UTF-8".to_string())?;
        let mut roles = u.roles;
        roles.sort();
        roles.dedup();
        Ok(User {
            name,
            password_hash: PasswordHash(u.password),
            roles,
            no_password: u.options.is_some_and(|o| o.no_password),
        })
    }
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The name.
    pub name: String,
    /// Its permissions, sorted by key (as etcd keeps them).
    pub permissions: Vec<Permission>,
}

impl Role {
    /// To `authpb.Role` (the snapshot's `authRoles` value).
    pub fn to_proto(&self) -> authpb::Role {
        authpb::Role {
            name: self.name.as_bytes().to_vec(),
            key_permission: self.permissions.iter().map(Permission::to_proto).collect(),
        }
    }

    /// From `authpb.Role`; a name that is not UTF-8 is refused.
    pub fn from_proto(r: authpb::Role) -> Result<Role, String> {
        let name = String::from_utf8(r.name).map_err(|_| "a role name is not UTF-8".to_string())?;
        Ok(Role {
            name,
            permissions: r
                .key_permission
                .iter()
                .map(Permission::from_proto)
                .collect(),
        })
    }
}

/// One change to the auth state (etcd's Auth RPCs that write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthChange {
    /// `AuthEnable`: needs user `root` holding role `root`.
    Enable,
    /// `AuthDisable`.
    Disable,
    /// `UserAdd`. `password_hash`: the bcrypt hash (`None`/ignored for `no_password`).
    UserAdd {
        /// The name.
        name: String,
        /// The bcrypt hash.
        password_hash: Option<PasswordHash>,
        /// Certificate-only user.
        no_password: bool,
    },
    /// `UserDelete`.
    UserDelete {
        /// The name.
        name: String,
    },
    /// `UserChangePassword` (a `no_password` user keeps no hash).
    UserChangePassword {
        /// The name.
        name: String,
        /// The new bcrypt hash.
        password_hash: Option<PasswordHash>,
    },
    /// `UserGrantRole` (role `root` needs no role entry).
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// `UserRevokeRole`.
    UserRevokeRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// `RoleAdd`.
    RoleAdd {
        /// The name.
        name: String,
    },
    /// `RoleDelete` (also revoked from every user holding it).
    RoleDelete {
        /// The name.
        name: String,
    },
    /// `RoleGrantPermission`: a permission with the same key and range end is replaced.
    RoleGrantPermission {
        /// The role.
        role: String,
        /// `None` is refused (`permission not given`).
        perm: Option<Permission>,
    },
    /// `RoleRevokePermission` of exactly `(key, range_end)`.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The permission's key.
        key: Vec<u8>,
        /// The permission's range end.
        range_end: Vec<u8>,
    },
}

/// What a successful [`crate::Backend::auth_change`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthChanged {
    /// The auth revision after the change.
    pub auth_revision: u64,
    /// The keyspace revision (for the response header).
    pub revision: i64,
}

/// The whole auth state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Bumped by every change (1 in a fresh store, as etcd).
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// Who a request runs as, resolved once against an [`AuthState`].
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Auth disabled, an internal caller or the root role: everything is allowed.
    All,
    /// A user's permissions.
    User(&'a AuthState, &'a User),
}

impl Subject<'_> {
    /// Whether `[key, range_end)` (etcd's range conventions) is allowed for `want`
    /// ([`PermType::Read`] or [`PermType::Write`]).
    pub fn allows(&self, key: &[u8], range_end: &[u8], want: PermType) -> bool {
        match self {
            Subject::All => true,
            Subject::User(st, user) => {
                let perms = user
                    .roles
                    .iter()
                    .filter_map(|r| st.roles.get(r))
                    .flat_map(|r| r.permissions.iter())
                    .filter(|p| p.perm_type.grants(want))
                    .map(|p| (p.key.as_slice(), p.range_end.as_slice()));
                covers(perms, key, range_end)
            }
        }
    }

    /// [`Subject::allows`] as a `Result` (`permission denied`).
    pub fn check(&self, key: &[u8], range_end: &[u8], want: PermType) -> Result<(), Error> {
        if self.allows(key, range_end, want) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }
}

/// `(key, range_end)` as a half-open interval `[begin, end)`, `None` for an end past every
/// key; a single key `k` is `[k, k\0)`. A range whose end is at or before its key is empty
/// (`None` returned for the whole).
fn interval(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    if range_end.is_empty() {
        let mut succ = key.to_vec();
        succ.push(0);
        Some((key.to_vec(), Some(succ)))
    } else if range_end == [0] {
        Some((key.to_vec(), None))
    } else if range_end > key {
        Some((key.to_vec(), Some(range_end.to_vec())))
    } else {
        None
    }
}

/// Whether the union of the permission ranges `perms` covers the request `(key, range_end)`.
/// A request range that is empty (its end at or before its key) is checked as its key alone.
pub fn covers<'a>(
    perms: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let (begin, want) = interval(key, range_end)
        .or_else(|| interval(key, &[]))
        .unwrap_or_default();
    let mut ivs: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        perms.filter_map(|(k, e)| interval(k, e)).collect();
    ivs.sort();
    // Sweep: `reached` is the end of the covered run that starts at `begin`.
    let mut reached = begin;
    for (b, e) in ivs {
        if b > reached {
            break;
        }
        match e {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
    }
    match want {
        Some(want) => reached >= want,
        None => false,
    }
}

impl AuthState {
    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Whether `user` exists and holds the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(User::is_root)
    }

    /// etcd's admin check (`IsAdminPermitted`): passes while auth is disabled and for
    /// [`Caller::Internal`]; else `user name is empty` (no user), `user name not found`,
    /// `permission denied` (no root role).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        match caller {
            Caller::Internal => Ok(()),
            Caller::Anonymous => Err(Error::UserEmpty),
            Caller::User { name, .. } => match self.users.get(&**name) {
                None => Err(Error::UserNotFound),
                Some(u) if u.is_root() => Ok(()),
                Some(_) => Err(Error::PermissionDenied),
            },
        }
    }

    /// Resolves the caller of a KV/lease/watch request (etcd's `isOpPermitted`, in its
    /// order): auth disabled or [`Caller::Internal`] → everything; no user → `user name is
    /// empty`; a caller authenticated before the last auth change → `auth revision is old`;
    /// an unknown user → `permission denied`; the root role → everything.
    pub fn subject(&self, caller: &Caller) -> Result<Subject<'_>, Error> {
        if !self.enabled {
            return Ok(Subject::All);
        }
        match caller {
            Caller::Internal => Ok(Subject::All),
            Caller::Anonymous => Err(Error::UserEmpty),
            Caller::User {
                name,
                auth_revision,
            } => {
                if *auth_revision < self.revision {
                    return Err(Error::AuthOldRevision);
                }
                match self.users.get(&**name) {
                    None => Err(Error::PermissionDenied),
                    Some(u) if u.is_root() => Ok(Subject::All),
                    Some(u) => Ok(Subject::User(self, u)),
                }
            }
        }
    }

    /// [`AuthState::subject`] then [`Subject::check`].
    pub fn check(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        want: PermType,
    ) -> Result<(), Error> {
        self.subject(caller)?.check(key, range_end, want)
    }

    /// The state after `caller` makes `change`, or `None` for a no-op: the admin check, then
    /// [`AuthState::apply`].
    pub fn changed_by(
        &self,
        caller: &Caller,
        change: &AuthChange,
    ) -> Result<Option<AuthState>, Error> {
        self.check_admin(caller)?;
        let mut next = self.clone();
        Ok(next.apply(change)?.then_some(next))
    }

    /// Applies `change` with etcd 3.5's preconditions; returns whether anything changed (then
    /// the revision was bumped). On error nothing changed.
    pub fn apply(&mut self, change: &AuthChange) -> Result<bool, Error> {
        let enabled = self.enabled;
        match change {
            AuthChange::Enable => {
                if enabled {
                    return Ok(false);
                }
                match self.users.get(ROOT) {
                    None => return Err(Error::RootUserNotExist),
                    Some(u) if !u.is_root() => return Err(Error::RootRoleNotExist),
                    Some(_) => self.enabled = true,
                }
            }
            AuthChange::Disable => {
                if !enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthChange::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(Error::UserAlreadyExist);
                }
                let password_hash = match (no_password, password_hash) {
                    (false, Some(h)) => h.clone(),
                    _ => PasswordHash::default(),
                };
                self.users.insert(
                    name.clone(),
                    User {
                        name: name.clone(),
                        password_hash,
                        roles: Vec::new(),
                        no_password: *no_password,
                    },
                );
            }
            AuthChange::UserDelete { name } => {
                if enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(Error::UserNotFound);
                }
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
                user.password_hash = match (user.no_password, password_hash) {
                    (false, Some(h)) => h.clone(),
                    _ => PasswordHash::default(),
                };
            }
            AuthChange::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(Error::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(Error::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(Error::UserNotFound)?;
                match u.roles.binary_search(role) {
                    Ok(_) => return Ok(false),
                    Err(at) => u.roles.insert(at, role.clone()),
                }
            }
            AuthChange::UserRevokeRole { user, role } => {
                if enabled && user == ROOT && role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(Error::UserNotFound)?;
                match u.roles.binary_search(role) {
                    Ok(at) => drop(u.roles.remove(at)),
                    Err(_) => return Err(Error::RoleNotGranted),
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        permissions: Vec::new(),
                    },
                );
            }
            AuthChange::RoleDelete { name } => {
                if enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.roles.remove(name).is_none() {
                    return Err(Error::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.retain(|r| r != name);
                }
            }
            AuthChange::RoleGrantPermission { role, perm } => {
                let perm = perm.as_ref().ok_or(Error::PermissionNotGiven)?;
                if !perm.is_valid() {
                    return Err(Error::InvalidAuthMgmt);
                }
                let r = self.roles.get_mut(role).ok_or(Error::RoleNotFound)?;
                match r
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        let at = r.permissions.partition_point(|p| p.key <= perm.key);
                        r.permissions.insert(at, perm.clone());
                    }
                }
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(Error::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.permissions.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(true)
    }

    /// The engine row: version, enabled, revision, then each user and role as its etcd proto
    /// (length-prefixed), then a crc32 of everything before it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8, u8::from(self.enabled)];
        out.extend_from_slice(&self.revision.to_be_bytes());
        out.extend_from_slice(&(self.users.len() as u32).to_be_bytes());
        for u in self.users.values() {
            let b = u.to_proto().encode_to_vec();
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&(self.roles.len() as u32).to_be_bytes());
        for r in self.roles.values() {
            let b = r.to_proto().encode_to_vec();
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and checks the engine row; damage is [`Error::Corrupt`].
    pub(crate) fn decode(b: &[u8]) -> Result<AuthState, Error> {
        let bad = |what: &str| Error::Corrupt(format!("the auth state row {what}"));
        if b.len() < 4 {
            return Err(bad("is truncated"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(bad("failed its checksum"));
        }
        let mut r = body;
        let mut take = |n: usize| -> Result<&[u8], Error> {
            if r.len() < n {
                return Err(bad("is truncated"));
            }
            let (h, t) = r.split_at(n);
            r = t;
            Ok(h)
        };
        if take(1)? != [1] {
            return Err(bad("has an unknown version"));
        }
        let enabled = take(1)?[0] == 1;
        let revision = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad("is truncated"))?);
        let mut st = AuthState {
            enabled,
            revision,
            ..AuthState::default()
        };
        let n = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("is truncated"))?);
        for _ in 0..n {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("is truncated"))?);
            let u =
                authpb::User::decode(take(len as usize)?).map_err(|_| bad("holds a bad user"))?;
            let u = User::from_proto(u).map_err(|e| bad(&e))?;
            st.users.insert(u.name.clone(), u);
        }
        let n = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("is truncated"))?);
        for _ in 0..n {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("is truncated"))?);
            let role =
                authpb::Role::decode(take(len as usize)?).map_err(|_| bad("holds a bad role"))?;
            let role = Role::from_proto(role).map_err(|e| bad(&e))?;
            st.roles.insert(role.name.clone(), role);
        }
        Ok(st)
    }
}

/// The cancel reason of a watch create refused by an auth check: the Go text of the gRPC
/// status etcd puts there (`rpc error: code = … desc = etcdserver: …`).
pub fn watch_refusal(e: &Error) -> String {
    let code = match e {
        Error::PermissionDenied => "PermissionDenied",
        _ => "InvalidArgument",
    };
    format!("rpc error: code = {code} desc = etcdserver: {e}")
}

/// A shared, swappable auth state (the writer swaps in a new one after each durable change).
pub(crate) type SharedAuth = std::sync::RwLock<Arc<AuthState>>;

#[cfg(test)]
mod tests;
